import CQARepFloat
import CQARepRuns

// Small feature maps are mostly zero border: a 3x3 convolution, padding 1,
// on a 2x2 map reads 36 taps per output channel and input channel, of which
// 16 are inside the image, and a0-half runs 14 blocks at 2x2. These types
// split a convolution's output pixels into classes that read the same
// kernel taps inside the image (top row, interior, bottom row, times the
// same for columns), so each class runs as an implicit GEMM with only its
// own taps and the border is never multiplied. Skipped terms are products
// with a zero input: the sums are those of the whole kernel, up to the sign
// of an exact zero.
//
// Training pays (conv2d's forward pass and input gradient run all 128
// images of a batch at once, so each class still has hundreds of pixels to
// reuse its weights on); the weight gradient sums each tap over the pixels
// that read it inside the image (`BorderTapPixels`). The float engine runs
// its chunks of a few images, where classes are a few pixels each, a
// tile at a time instead (`BorderTapRuns`): classes as sub-kernels there
// measured slower (a0-half 2,524 -> 2,356 img/s at batch 128), runs of
// tiles faster (1,770 -> 2,232).

/// The output positions along one axis (rows or columns) that read the same
/// kernel taps inside the image.
public struct BorderTapGroup: Sendable, Equatable {
    /// Kernel taps (rows or columns) inside the image.
    public let taps: Range<Int>
    /// Output positions with exactly those taps, in the order given.
    public let outputs: [Int]

    public init(taps: Range<Int>, outputs: [Int]) { self.taps = taps; self.outputs = outputs }

    /// Groups `outputs` by the taps inside `0 ..< size`, where output `o`'s
    /// tap t reads input position `origin(o) + t`; outputs that read no input
    /// at all are dropped (their sums are zero).
    public static func groups(outputs: [Int], kernel: Int, size: Int, origin: (Int) -> Int) -> [BorderTapGroup] {
        var groups: [(taps: Range<Int>, outputs: [Int])] = []
        for o in outputs {
            let first = origin(o), (lo, hi) = (max(0, -first), min(kernel, size - first))
            // Deep in the padding (a 1x1 kernel with padding 2) the bounds cross: no tap inside.
            guard lo < hi else { continue }
            let taps = lo..<hi
            if let i = groups.firstIndex(where: { $0.taps == taps }) { groups[i].outputs.append(o) } else { groups.append((taps, [o])) }
        }
        return groups.map { BorderTapGroup(taps: $0.taps, outputs: $0.outputs) }
    }
}

/// Output pixels of a convolution in classes by the kernel taps they read
/// inside the image: every row group by every column group.
public struct BorderTapClasses: Sendable {
    public let rows: [BorderTapGroup], cols: [BorderTapGroup]
    /// Taps read inside the image over all taps of every output pixel.
    public let usefulFraction: Double
    /// Whether every output pixel reads the image somewhere (one that reads
    /// only border belongs to no class, and class by class would not write it).
    public let coversEveryOutput: Bool

    public init(rows: [BorderTapGroup], cols: [BorderTapGroup], kernelH: Int, kernelW: Int, outHeight: Int, outWidth: Int) {
        self.rows = rows; self.cols = cols
        coversEveryOutput = rows.reduce(0) { $0 + $1.outputs.count } == outHeight
            && cols.reduce(0) { $0 + $1.outputs.count } == outWidth
        let inside = rows.reduce(0) { $0 + $1.taps.count * $1.outputs.count }
            * cols.reduce(0) { $0 + $1.taps.count * $1.outputs.count }
        usefulFraction = Double(inside) / Double(kernelH * kernelW * outHeight * outWidth)
    }

    /// The classes of a forward convolution: output (oy, ox) reads input
    /// rows from oy * stride - padding, likewise columns.
    public init(forward g: ConvGeometry) {
        let rows = BorderTapGroup.groups(outputs: Array(0..<g.outHeight), kernel: g.kernelH, size: g.height) {
            $0 * g.stride - g.padding
        }
        let cols = BorderTapGroup.groups(outputs: Array(0..<g.outWidth), kernel: g.kernelW, size: g.width) {
            $0 * g.stride - g.padding
        }
        self.init(rows: rows, cols: cols, kernelH: g.kernelH, kernelW: g.kernelW, outHeight: g.outHeight, outWidth: g.outWidth)
    }

    /// Whether running class by class pays: at least half the taps are
    /// border. A 3x3 kernel, padding 1, on a 2x2 map reads 44% inside (four
    /// classes); on 4x4, 69%, and nine smaller GEMMs measured no faster.
    public var worthSplitting: Bool { coversEveryOutput && usefulFraction <= 0.5 }
}

/// A convolution class by class, prepared once: each class's pixels, over
/// every image, with the sub-kernel of its taps (`weights(rows, cols)`, the
/// kernel rows and columns inside the image) and windows that start at its
/// first tap. `layout` describes the whole kernel's buffer;
/// `windowOrigin(n, y, x)` is the buffer offset of tap (0, 0) of output
/// (y, x) of image n and `outputOffset(n, y, x)` where that pixel's channel 0
/// is stored.
public struct BorderClassConvolution: Sendable {
    private struct Part: Sendable {
        let layout: PaddedFloatNHWC
        let weights: PackedFloatWeights
        let windows: [Int64], outputs: [Int64]
    }
    private let parts: [Part]

    public init(layout: PaddedFloatNHWC, classes: BorderTapClasses,
                weights: (_ rows: Range<Int>, _ cols: Range<Int>) -> PackedFloatWeights,
                outputOffset: (_ image: Int, _ y: Int, _ x: Int) -> Int,
                windowOrigin: (_ image: Int, _ y: Int, _ x: Int) -> Int) {
        let g = layout.g
        var parts: [Part] = []
        for rowGroup in classes.rows {
            for colGroup in classes.cols {
                let sub = PaddedFloatNHWC(ConvGeometry(batch: g.batch, inChannels: g.inChannels, height: g.height,
                                                       width: g.width, outChannels: g.outChannels,
                                                       kernelH: rowGroup.taps.count, kernelW: colGroup.taps.count,
                                                       stride: 1, padding: g.padding))
                let shift = (rowGroup.taps.lowerBound * layout.paddedWidth + colGroup.taps.lowerBound) * g.inChannels
                let count = g.batch * rowGroup.outputs.count * colGroup.outputs.count
                var windows = [Int64](), outputs = [Int64]()
                windows.reserveCapacity(count); outputs.reserveCapacity(count)
                for n in 0..<g.batch {
                    for y in rowGroup.outputs {
                        for x in colGroup.outputs {
                            windows.append(Int64(windowOrigin(n, y, x) + shift))
                            outputs.append(Int64(outputOffset(n, y, x)))
                        }
                    }
                }
                parts.append(Part(layout: sub, weights: weights(rowGroup.taps, colGroup.taps), windows: windows,
                                  outputs: outputs))
            }
        }
        self.parts = parts
    }

    /// `implicitConv2d` of every class, in turn, on `paddedInput`.
    public func run(paddedInput: UnsafePointer<Float>, bias: UnsafePointer<Float>?, relu: Bool,
                    output: UnsafeMutablePointer<Float>, channelStride: Int, threads: Int, path: FloatKernelPath = .best) {
        for part in parts {
            implicitConv2d(paddedInput: paddedInput, layout: part.layout, weights: part.weights, bias: bias, relu: relu,
                           output: output, outputOffsets: part.outputs, channelStride: channelStride,
                           windowOffsets: part.windows, threads: threads, path: path)
        }
    }
}

/// The output pixels of a forward convolution reordered class by class
/// (`BorderTapClasses`) for the engines' convolutions (`implicitConv2d`,
/// `quantizedConv2dInt16` and `quantizedConv2dBytes`, `runs:`), so that each
/// micro-tile of pixels reads only the window rows and columns its pixels
/// read inside the image, from the weights as packed. On a0-half's 4x4 maps
/// 31% of the taps are zero padding. Unlike `BorderClassConvolution`, there
/// are no sub-kernels and no short classes: the tiles stay full (a tile
/// whose pixels come from two classes reads the taps of both), and each tile
/// streams only the weights of its taps, so small batches gain too.
public struct BorderTapRuns: Sendable {
    /// Output pixel indices, in (image, y, x) order of the output, in run order.
    public let order: [Int]
    /// Per run of tiles with the same window: where it ends in `order`, its
    /// tap rows and its window columns, each as [first, end).
    let ends: [Int64], rows: [Int32], cols: [Int32]
    let kernelW: Int

    /// The runs of `g`'s output pixels for tiles of `tilePixels`, or nil when
    /// they would save less than a tenth of the multiply-adds.
    public init?(forward g: ConvGeometry, tilePixels: Int) {
        let classes = BorderTapClasses(forward: g)
        guard classes.coversEveryOutput, classes.rows.count * classes.cols.count > 1 else { return nil }
        var order: [Int] = [], windows: [(rows: Range<Int>, cols: Range<Int>)] = []
        order.reserveCapacity(g.batch * g.outPlane)
        for r in classes.rows {
            for c in classes.cols {
                for n in 0..<g.batch {
                    for y in r.outputs {
                        for x in c.outputs {
                            order.append((n * g.outHeight + y) * g.outWidth + x)
                            windows.append((r.taps, c.taps))
                        }
                    }
                }
            }
        }
        var ends: [Int64] = [], rows: [Int32] = [], cols: [Int32] = [], taps = 0
        for first in stride(from: 0, to: order.count, by: tilePixels) {
            let tile = windows[first..<min(first + tilePixels, order.count)]
            let r = tile.map(\.rows.lowerBound).min()!..<tile.map(\.rows.upperBound).max()!
            let c = tile.map(\.cols.lowerBound).min()!..<tile.map(\.cols.upperBound).max()!
            taps += r.count * c.count
            if let last = rows.indices.last, rows[last - 1] == r.lowerBound, rows[last] == r.upperBound,
               cols[last - 1] == c.lowerBound, cols[last] == c.upperBound {
                ends[ends.count - 1] = Int64(tile.endIndex)
            } else {
                ends.append(Int64(tile.endIndex))
                rows += [Int32(r.lowerBound), Int32(r.upperBound)]
                cols += [Int32(c.lowerBound), Int32(c.upperBound)]
            }
        }
        let tiles = (order.count + tilePixels - 1) / tilePixels
        guard Double(taps) <= 0.9 * Double(tiles * g.kernelH * g.kernelW) else { return nil }
        (self.order, self.ends, self.rows, self.cols, kernelW) = (order, ends, rows, cols, g.kernelW)
    }

    /// Per-pixel values (window or output offsets, in the output's pixel order) in run order.
    public func ordered<T>(_ values: [T]) -> [T] { order.map { values[$0] } }

    /// `body` with `runs` as the C kernels take them (CQARepRuns.h); nil
    /// stands for whole windows. Built once per convolution, read by every worker.
    static func withUnsafeRuns<R>(_ runs: BorderTapRuns?, _ body: (UnsafePointer<qarep_tap_runs>?) -> R) -> R {
        guard let runs else { return body(nil) }
        return runs.ends.withUnsafeBufferPointer { e in
            runs.rows.withUnsafeBufferPointer { r in
                runs.cols.withUnsafeBufferPointer { c in
                    var view = qarep_tap_runs(count: Int64(e.count), ends: e.baseAddress!, rows: r.baseAddress!,
                                              cols: c.baseAddress!, columns: Int64(runs.kernelW))
                    return body(&view)
                }
            }
        }
    }
}

/// The weight gradient tap by tap, each tap summed over only the output
/// pixels that read it inside the image. The weight gradient's sums run
/// over pixels in order, one accumulator per (tap, input channel, output
/// channel), so dropping the pixels whose product is with the zero border
/// leaves every sum as it was, up to the sign of an exact zero.
struct BorderTapPixels: Sendable {
    private let g: ConvGeometry
    /// The kernel rows inside the image of each output row, the columns of each output column.
    private let rowTaps: [Range<Int>], colTaps: [Range<Int>]

    /// - Precondition: `classes.coversEveryOutput` (every output pixel has a row and a column group).
    init(_ classes: BorderTapClasses, geometry: ConvGeometry) {
        precondition(classes.coversEveryOutput, "every output pixel must read the image somewhere")
        g = geometry
        func byOutput(_ groups: [BorderTapGroup], _ count: Int) -> [Range<Int>] {
            var taps = [Range<Int>](repeating: 0..<0, count: count)
            for group in groups { for o in group.outputs { taps[o] = group.taps } }
            return taps
        }
        rowTaps = byOutput(classes.rows, geometry.outHeight)
        colTaps = byOutput(classes.cols, geometry.outWidth)
    }

    /// Adds, for every tap (i, j) and input channel c, the sum over the
    /// output pixels in `pixels` (indices in (image, y, x) order) that read
    /// tap (i, j) inside the image of `x[window + tap, c] * dy[pixel]` to
    /// `dwt[(i * kw + j) * C + c]`, rows of `rowStride` floats: the layout and
    /// the sums of `qarep_f32_weight_gradient` over every tap and pixel.
    ///
    /// - Parameters:
    ///   - windowOffsets: each output pixel's window origin in `paddedInput`.
    ///   - pixelMajorGradient: dy as rows of `rowStride` floats, one per output pixel.
    func weightGradient(paddedInput: UnsafePointer<Float>, paddedWidth: Int, windowOffsets: UnsafePointer<Int64>,
                        pixelMajorGradient dy: UnsafePointer<Float>, rowStride: Int, pixels: Range<Int>,
                        into dwt: UnsafeMutablePointer<Float>, isa: Int32) {
        // One tap's pixels, their dy rows gathered in order, and their windows.
        let gathered = UnsafeMutablePointer<Float>.allocate(capacity: max(1, pixels.count) * rowStride)
        defer { gathered.deallocate() }
        var windows = [Int64](repeating: 0, count: pixels.count)
        windows.withUnsafeMutableBufferPointer { windows in
            for i in 0..<g.kernelH {
                for j in 0..<g.kernelW {
                    var count = 0
                    for p in pixels {
                        let yx = p % g.outPlane
                        guard rowTaps[yx / g.outWidth].contains(i) && colTaps[yx % g.outWidth].contains(j) else { continue }
                        windows[count] = windowOffsets[p]
                        (gathered + count * rowStride).update(from: dy + p * rowStride, count: rowStride)
                        count += 1
                    }
                    guard count > 0 else { continue }
                    var tapOffset = Int64((i * paddedWidth + j) * g.inChannels)
                    withUnsafePointer(to: &tapOffset) { tapOffset in
                        var source = qarep_f32_source(source: paddedInput, tap_offsets: tapOffset, taps: 1,
                                                      segment: Int64(g.inChannels))
                        qarep_f32_weight_gradient(gathered, Int64(rowStride), &source, windows.baseAddress!, Int64(count),
                                                  dwt + (i * g.kernelW + j) * g.inChannels * rowStride, isa)
                    }
                }
            }
        }
    }
}
