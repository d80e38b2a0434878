import CQARepFloat

// Float convolution as an implicit GEMM: the input is copied once into a
// zero-padded NHWC buffer and the kernel reads every patch in place, one
// contiguous run of kw * C values per kernel row, so no patch matrix is
// written. Bias and ReLU are fused into the store, which writes NCHW (for the
// tensor API) or NHWC (for a chain of convolutions that never leaves NHWC).
//
// The C kernels in CQARepFloat pick AVX-512 or AVX2 + FMA at run time. That
// matters on CPUs OpenBLAS 0.3.21 does not know (it falls back to its SSE3
// "Prescott" kernels on Sapphire and Emerald Rapids), and it writes no 9x
// patch matrix, as an im2col + sgemm convolution does.

/// Which float convolution kernel runs.
public enum FloatKernelPath: Sendable, Equatable, CaseIterable {
    /// AVX-512 F, 32 channels (two blocks) x 8 pixels per micro-tile.
    case avx512
    /// AVX2 + FMA, 16 channels x 6 pixels.
    case avx2
    /// Plain C loops (`fmaf`); the same bits, much slower.
    case portable

    /// The widest path this CPU runs.
    public static var best: FloatKernelPath {
        switch qarep_f32_best_isa() {
        case Int32(QAREP_ISA_AVX512): return .avx512
        case Int32(QAREP_ISA_AVX2): return .avx2
        default: return .portable
        }
    }

    /// Every path this CPU runs, widest first.
    public static var available: [FloatKernelPath] {
        allCases.filter { $0.rank <= best.rank }
    }

    /// Output pixels of one micro-tile.
    public var tilePixels: Int { Int(qarep_f32_tile_pixels(isa)) }

    private var rank: Int { self == .avx512 ? 2 : self == .avx2 ? 1 : 0 }

    var isa: Int32 {
        precondition(rank <= Self.best.rank, "the \(self) float kernel needs a CPU that runs it")
        return Int32(rank)
    }
}

/// OIHW float weights packed once for `implicitConv2d`: blocks of 16 output
/// channels, each `[kh][kw][C][16]` (for every reduction index, the block's 16
/// weights side by side). Channels past `outChannels` are zero.
public struct PackedFloatWeights: Sendable {
    public let outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int
    /// `ceil(O / 16) * 16 * kh * kw * C` floats.
    public let storage: [Float]

    /// Packs `weights[outChannels, inChannels, kernelH, kernelW]`.
    public init(_ weights: UnsafeBufferPointer<Float>, outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int) {
        precondition(outChannels >= 1 && inChannels >= 1 && kernelH >= 1 && kernelW >= 1,
                     "weights need at least one output channel, input channel and tap")
        precondition(weights.count == outChannels * inChannels * kernelH * kernelW,
                     "\(weights.count) weights for [\(outChannels), \(inChannels), \(kernelH), \(kernelW)]")
        self.outChannels = outChannels; self.inChannels = inChannels
        self.kernelH = kernelH; self.kernelW = kernelW
        let taps = kernelH * kernelW
        storage = Self.pack(weights.baseAddress!, outChannels: outChannels, outStride: inChannels * taps,
                            inChannels: inChannels, inStride: taps, tapOffsets: Array(0..<taps))
    }

    /// The sub-kernel of kernel rows `rows` and columns `cols` of the forward
    /// weights `w[O, C, kh, kw]`: a `[O, C, rows.count, cols.count]` kernel,
    /// packed straight from `w`.
    public init(_ w: UnsafePointer<Float>, outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int,
                rows: Range<Int>, cols: Range<Int>) {
        precondition(rows.lowerBound >= 0 && rows.upperBound <= kernelH && cols.lowerBound >= 0 && cols.upperBound <= kernelW
                     && !rows.isEmpty && !cols.isEmpty, "taps \(rows) x \(cols) of a \(kernelH)x\(kernelW) kernel")
        self.outChannels = outChannels; self.inChannels = inChannels
        self.kernelH = rows.count; self.kernelW = cols.count
        storage = Self.pack(w, outChannels: outChannels, outStride: inChannels * kernelH * kernelW, inChannels: inChannels,
                            inStride: kernelH * kernelW, tapOffsets: rows.flatMap { i in cols.map { i * kernelW + $0 } })
    }

    /// The weights of `convolutionInputGradient`'s phase with kernel rows
    /// `rows` and columns `cols` of the forward weights `w[O, C, kh, kw]`:
    /// a `[C, O, rows, cols]` kernel, rotated by 180 degrees,
    ///
    ///     w'[c, o, u', v'] = w[o, c, rows[u - 1 - u'], cols[v - 1 - v']]
    ///
    /// packed straight from `w`.
    init(inputGradientOf w: UnsafePointer<Float>, outChannels o: Int, inChannels c: Int, kernelH kh: Int, kernelW kw: Int,
         rows: [Int], cols: [Int]) {
        let (u, v) = (rows.count, cols.count)
        outChannels = c; inChannels = o; kernelH = u; kernelW = v
        // Forward tap of each packed tap t' = u' * v + v'.
        let source = (0..<(u * v)).map { t in rows[u - 1 - t / v] * kw + cols[v - 1 - t % v] }
        storage = Self.pack(w, outChannels: c, outStride: kh * kw, inChannels: o, inStride: c * kh * kw,
                            tapOffsets: source)
    }

    /// Packed storage of `outChannels` x `inChannels` x taps weights, weight
    /// (o, c, t) at `w[o * outStride + c * inStride + tapOffsets[t]]`: block b
    /// holds `[(t * C + c) * 16 + o % 16]`, written in order, blocks shared
    /// among the kernel threads.
    private static func pack(_ w: UnsafePointer<Float>, outChannels: Int, outStride: Int, inChannels: Int, inStride: Int,
                             tapOffsets: [Int]) -> [Float] {
        let mr = Int(QAREP_F32_MR), taps = tapOffsets.count, k = taps * inChannels
        let blocks = (outChannels + mr - 1) / mr
        return [Float](unsafeUninitializedCapacity: blocks * mr * k) { buf, count in
            let base = buf.baseAddress!
            tapOffsets.withUnsafeBufferPointer { tapOffsets in
                parallelFor(blocks, threads: blocks * mr * k >= 1 << 15 ? KernelThreads.count : 1) { _, range in
                    for b in range {
                        var out = base + b * mr * k
                        let rows = min(mr, outChannels - b * mr), first = w + b * mr * outStride
                        for t in 0..<taps {
                            for c in 0..<inChannels {
                                let source = first + c * inStride + tapOffsets[t]
                                for r in 0..<rows { out[r] = source[r * outStride] }
                                for r in rows..<mr { out[r] = 0 }
                                out += mr
                            }
                        }
                    }
                }
            }
            count = blocks * mr * k
        }
    }

    /// Packs `weights[outChannels, inChannels, kernelH, kernelW]`.
    public init(_ weights: [Float], outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int) {
        self = weights.withUnsafeBufferPointer {
            PackedFloatWeights($0, outChannels: outChannels, inChannels: inChannels, kernelH: kernelH, kernelW: kernelW)
        }
    }

    /// The same weights as a 1x1 convolution over `kh * kw * C` input
    /// channels: the packing is already in (i, j, c) order, so only the shape changes.
    init(flattening w: PackedFloatWeights) {
        outChannels = w.outChannels; inChannels = w.kernelH * w.kernelW * w.inChannels
        kernelH = 1; kernelW = 1
        storage = w.storage
    }

    func matches(_ g: ConvGeometry) -> Bool {
        outChannels == g.outChannels && inChannels == g.inChannels && kernelH == g.kernelH && kernelW == g.kernelW
    }
}

/// Where a convolution's input lives in a zero-padded NHWC buffer
/// `[N][H + 2p][W + 2p][C]` and where each output pixel's window starts.
public struct PaddedFloatNHWC: Sendable {
    public let g: ConvGeometry
    public let paddedHeight: Int, paddedWidth: Int

    public init(_ g: ConvGeometry) {
        self.g = g
        paddedHeight = g.height + 2 * g.padding
        paddedWidth = g.width + 2 * g.padding
    }

    /// Floats of the buffer.
    public var count: Int { g.batch * paddedHeight * paddedWidth * g.inChannels }

    /// Offset of the input pixel (n, y, x) of the unpadded image, channel 0.
    public func offset(image n: Int, y: Int, x: Int) -> Int {
        ((n * paddedHeight + y + g.padding) * paddedWidth + x + g.padding) * g.inChannels
    }

    /// Offsets of window row i from the window origin.
    public var tapOffsets: [Int64] { (0..<g.kernelH).map { Int64($0 * paddedWidth * g.inChannels) } }

    /// Window origin (top-left tap) of each output pixel, pixels in (n, oy, ox) order.
    public var windowOffsets: [Int64] {
        var offsets = [Int64]()
        offsets.reserveCapacity(g.columns)
        for n in 0..<g.batch {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    offsets.append(Int64(((n * paddedHeight + oy * g.stride) * paddedWidth + ox * g.stride) * g.inChannels))
                }
            }
        }
        return offsets
    }

    /// Zeroes the border of `buffer` (padding rows and columns), the only
    /// part a convolution writing the interior leaves untouched.
    public func zeroBorder(_ buffer: UnsafeMutablePointer<Float>) {
        let (c, p, wp) = (g.inChannels, g.padding, paddedWidth)
        guard p > 0 else { return }
        for n in 0..<g.batch {
            let image = buffer + n * paddedHeight * wp * c
            image.update(repeating: 0, count: p * wp * c)
            (image + (p + g.height) * wp * c).update(repeating: 0, count: p * wp * c)
            for y in p..<(p + g.height) {
                let row = image + y * wp * c
                row.update(repeating: 0, count: p * c)
                (row + (p + g.width) * c).update(repeating: 0, count: p * c)
            }
        }
    }

    /// Copies NCHW `x` into `buffer`, borders zero; images shared among `threads`.
    public func fill(_ buffer: UnsafeMutablePointer<Float>, from x: UnsafePointer<Float>, threads: Int) {
        parallelDynamic(g.batch, threads: threads) { _, image in
            qarep_f32_to_padded_nhwc(x, Int64(image), 1, Int64(g.inChannels), Int64(g.height), Int64(g.width),
                                     Int64(g.padding), buffer)
        }
    }
}

/// Where each output pixel of `g` is stored, pixels in (n, oy, ox) order:
/// `offset(n, oy, ox)` for each.
public func outputPixelOffsets(_ g: ConvGeometry, _ offset: (_ image: Int, _ y: Int, _ x: Int) -> Int) -> [Int64] {
    var offsets = [Int64]()
    offsets.reserveCapacity(g.columns)
    for n in 0..<g.batch {
        for y in 0..<g.outHeight {
            for x in 0..<g.outWidth { offsets.append(Int64(offset(n, y, x))) }
        }
    }
    return offsets
}

/// Output pixel offsets of NCHW `[N, O, OH, OW]`: pixel (n, p) at `n * O * P + p`.
public func nchwPixelOffsets(_ g: ConvGeometry) -> [Int64] {
    outputPixelOffsets(g) { n, y, x in n * g.outChannels * g.outPlane + y * g.outWidth + x }
}

/// The float convolution on an input already in padded NHWC:
///
///     y[p, o] = relu?(bias[o] + sum_k w[o, k] * x[p, k])
///
/// for every window p in `windowOffsets` (window origins in the buffer `layout`
/// describes, usually `layout.windowOffsets`), stored at
/// `output[outputOffsets[p] + o * channelStride]` (1 for NHWC
/// outputs, the plane for NCHW). Pixels are split among `threads`; every
/// output is summed by one thread in one order, so the bits do not depend on
/// the thread count or the path. With `runs`, `windowOffsets` and
/// `outputOffsets` list the pixels in `runs.order`, and each pixel skips the
/// taps its class reads from the zero border.
public func implicitConv2d(paddedInput: UnsafePointer<Float>, layout: PaddedFloatNHWC, weights: PackedFloatWeights,
                           bias: UnsafePointer<Float>?, relu: Bool,
                           output: UnsafeMutablePointer<Float>, outputOffsets: [Int64], channelStride: Int,
                           windowOffsets: [Int64], threads: Int, path: FloatKernelPath = .best,
                           runs: BorderTapRuns? = nil) {
    let g = layout.g
    precondition(weights.matches(g), "weights packed for [\(weights.outChannels), \(weights.inChannels), \(weights.kernelH), "
                 + "\(weights.kernelW)], convolution needs [\(g.outChannels), \(g.inChannels), \(g.kernelH), \(g.kernelW)]")
    precondition(windowOffsets.count == outputOffsets.count, "\(windowOffsets.count) windows for \(outputOffsets.count) outputs")
    let segment = g.kernelW * g.inChannels, k = g.kernelH * segment, pixels = windowOffsets.count
    if let runs {
        precondition(runs.order.count == pixels, "runs of \(runs.order.count) pixels for \(pixels) windows")
    }
    if runs == nil && g.kernelH > 1 && segment < 16 && qarep_f32_reads_short_windows(Int64(g.kernelH), Int64(segment), path.isa) == 0 {
        // Window rows this short (the first layer of a grey-image model: 3
        // floats) leave the tile's inner loop little to do per pixel. Unless
        // the kernel unrolls the whole reduction (AVX2, AVX-512), copy each
        // pixel's patch into one row of K floats and run one long tap.
        let patches = UnsafeMutablePointer<Float>.allocate(capacity: max(1, pixels * k))
        defer { patches.deallocate() }
        layout.tapOffsets.withUnsafeBufferPointer { to in
            windowOffsets.withUnsafeBufferPointer { wo in
                let source = qarep_f32_source(source: paddedInput, tap_offsets: to.baseAddress, taps: Int64(g.kernelH),
                                              segment: Int64(segment))
                parallelFor(pixels, threads: threads) { _, range in
                    var s = source
                    qarep_f32_gather_patches(&s, wo.baseAddress! + range.lowerBound, Int64(range.count),
                                             patches + range.lowerBound * k)
                }
            }
        }
        let rows = ConvGeometry(batch: 1, inChannels: k, height: 1, width: pixels, outChannels: g.outChannels,
                                kernelH: 1, kernelW: 1, stride: 1, padding: 0)
        let flat = PackedFloatWeights(flattening: weights)
        return implicitConv2d(paddedInput: patches, layout: PaddedFloatNHWC(rows), weights: flat, bias: bias, relu: relu,
                              output: output, outputOffsets: outputOffsets, channelStride: channelStride,
                              windowOffsets: (0..<pixels).map { Int64($0 * k) }, threads: threads, path: path)
    }
    let isa = path.isa, tapOffsets = layout.tapOffsets
    // Chunks of about 64 KiB of patches per worker turn, at least one tile;
    // no more workers than there are 64K multiply-adds to share: a hand-off
    // costs about a microsecond, 64K multiply-adds about two on one core
    // (tiny at batch 1 ran 25% faster than with 256K, the earlier bound).
    // With runs, chunks start on a tile of every path (4, 6 or 8 pixels), as the runs' tiles do.
    let unit = runs == nil ? 8 : 24
    let chunk = max(unit, (64 * 1024) / (k * 4) / unit * unit)
    let chunks = (pixels + chunk - 1) / chunk
    let workers = max(1, min(threads, (pixels * k * g.outChannels) >> 16))
    let split = ChannelSplit(outChannels: g.outChannels, chunks: chunks, workers: workers,
                             blockChannels: path == .avx512 ? 32 : 16)
    weights.storage.withUnsafeBufferPointer { w in
        tapOffsets.withUnsafeBufferPointer { to in
            windowOffsets.withUnsafeBufferPointer { wo in
                outputOffsets.withUnsafeBufferPointer { oo in
                    let source = qarep_f32_source(source: paddedInput, tap_offsets: to.baseAddress,
                                                  taps: Int64(g.kernelH), segment: Int64(segment))
                    BorderTapRuns.withUnsafeRuns(runs) { runs in
                        // Each output value is one item's alone: workers may take items in any order.
                        parallelDynamic(chunks * split.parts, threads: workers) { _, item in
                            let (c, channels) = (item / split.parts, split.range(item % split.parts))
                            let first = c * chunk, count = min(chunk, pixels - first)
                            var epilogue = qarep_f32_epilogue(bias: bias.map { $0 + channels.lowerBound },
                                                              relu: relu ? 1 : 0,
                                                              output: output + channels.lowerBound * channelStride,
                                                              pixel_offsets: oo.baseAddress! + first,
                                                              channel_stride: Int64(channelStride))
                            var s = source
                            // Packed weights are blocks of 16 channels by K; a part starts on a block.
                            qarep_f32_conv(w.baseAddress! + channels.lowerBound * k, Int64(channels.count), &s,
                                           wo.baseAddress! + first, Int64(count), &epilogue, runs, Int64(first), isa)
                        }
                    }
                }
            }
        }
    }
}

/// The float convolution of NCHW `input[N, C, H, W]` into NCHW
/// `output[N, O, OH, OW]`, with optional bias and fused ReLU (see
/// `implicitConv2d(paddedInput:...)`). Matches `naiveConv2d` to float
/// round-off.
public func implicitConv2d(input: UnsafePointer<Float>, geometry g: ConvGeometry, weights: PackedFloatWeights,
                           bias: UnsafePointer<Float>?, relu: Bool = false, output: UnsafeMutablePointer<Float>,
                           threads: Int = KernelThreads.count, path: FloatKernelPath = .best) {
    precondition(g.outHeight >= 1 && g.outWidth >= 1, "the kernel does not fit the padded input")
    let layout = PaddedFloatNHWC(g)
    let padded = UnsafeMutablePointer<Float>.allocate(capacity: layout.count)
    defer { padded.deallocate() }
    layout.fill(padded, from: input, threads: threads)
    implicitConv2d(paddedInput: padded, layout: layout, weights: weights, bias: bias, relu: relu, output: output,
                   outputOffsets: nchwPixelOffsets(g), channelStride: g.outPlane, windowOffsets: layout.windowOffsets,
                   threads: threads, path: path)
}

/// Gradient of a convolution with respect to its input, itself computed as
/// convolutions on the same implicit-GEMM kernel:
///
///     dx[n, c, iy, ix] = sum of w[o, c, i, j] * dy[n, o, oy, ox] over oy*s - p + i = iy, ox*s - p + j = ix
///
/// The output pixels split into s x s phases by (iy + p) mod s and
/// (ix + p) mod s; each phase reads only the taps i = a, a + s, ... and
/// j = b, b + s, ..., and is a stride-1 correlation of dy (NHWC, padded by
/// kh - 1) with that sub-kernel rotated by 180 degrees and transposed to
/// `[C, O, ...]`. For stride 1 there is one phase, the whole kernel. No patch
/// matrix, no col2im, and no multiplication by an inserted zero; on maps
/// mostly border (a 2x2 `dy` padded by 2), a phase runs class by class,
/// with only the taps inside `dy` (`BorderTapClasses`). `dy` is
/// `[N, O, OH, OW]`, `dx` is `[N, C, H, W]` and is overwritten.
public func convolutionInputGradient(outputGradient dy: UnsafePointer<Float>, weights w: UnsafePointer<Float>,
                                     geometry g: ConvGeometry, inputGradient dx: UnsafeMutablePointer<Float>,
                                     threads: Int = KernelThreads.count, path: FloatKernelPath = .best) {
    let (kh, kw, s, p) = (g.kernelH, g.kernelW, g.stride, g.padding)
    let (padY, padX) = (kh - 1, kw - 1)
    // dy padded by kernel - 1 on every side holds every window of every phase:
    // a window spans dy rows q - u + 1 ... q with 0 <= q <= (H - 1 + p) / s,
    // which is at most OH - 1 + ceil((kh - 1 - p) / s).
    let dyLayout = PaddedFloatNHWC(ConvGeometry(batch: g.batch, inChannels: g.outChannels, height: g.outHeight,
                                                width: g.outWidth, outChannels: g.inChannels, kernelH: kh, kernelW: kw,
                                                stride: 1, padding: max(padY, padX)))
    let padded = UnsafeMutablePointer<Float>.allocate(capacity: dyLayout.count)
    defer { padded.deallocate() }
    dyLayout.fill(padded, from: dy, threads: threads)
    // A stride larger than the kernel (a 1x1 convolution of stride 2) leaves
    // phases no tap reaches: their gradient is zero. One parallel fill of dx
    // costs less than picking those pixels out one by one.
    if s > kh || s > kw {
        let count = g.batch * g.inChannels * g.height * g.width
        parallelChunks(count, work: count) { range in (dx + range.lowerBound).update(repeating: 0, count: range.count) }
    }
    for a in 0..<s {
        for b in 0..<s {
            let rows = Array(stride(from: a, to: kh, by: s)), cols = Array(stride(from: b, to: kw, by: s))
            // Output pixels of this phase: iy = q*s + a - p inside [0, H), likewise ix.
            let qs = (0..<g.height).filter { (($0 + p) % s) == a }, rs = (0..<g.width).filter { (($0 + p) % s) == b }
            if qs.isEmpty || rs.isEmpty { continue }
            // No tap reaches these pixels: dx was zeroed above.
            if rows.isEmpty || cols.isEmpty { continue }
            let (u, v) = (rows.count, cols.count)
            let phase = PaddedFloatNHWC(ConvGeometry(batch: g.batch, inChannels: g.outChannels, height: g.outHeight,
                                                     width: g.outWidth, outChannels: g.inChannels, kernelH: u, kernelW: v,
                                                     stride: 1, padding: max(padY, padX)))
            // Window of dx pixel (iy, ix): dy rows q - u + 1 ... q, q = (iy + p - a) / s; likewise columns.
            let firstRow = { (iy: Int) in (iy + p - a) / s - u + 1 }, firstCol = { (ix: Int) in (ix + p - b) / s - v + 1 }
            let classes = BorderTapClasses(
                rows: BorderTapGroup.groups(outputs: qs, kernel: u, size: g.outHeight, origin: firstRow),
                cols: BorderTapGroup.groups(outputs: rs, kernel: v, size: g.outWidth, origin: firstCol),
                kernelH: u, kernelW: v, outHeight: qs.count, outWidth: rs.count)
            if classes.worthSplitting {
                // A small map: each class of dx pixels with only the dy taps inside the map. Packed
                // tap t' of the phase reads forward row rows[u - 1 - t'], so taps lo ..< hi are
                // the phase of rows[u - hi ..< u - lo].
                BorderClassConvolution(
                    layout: phase, classes: classes,
                    weights: { taps, tapCols in
                        PackedFloatWeights(inputGradientOf: w, outChannels: g.outChannels, inChannels: g.inChannels,
                                           kernelH: kh, kernelW: kw,
                                           rows: Array(rows[(u - taps.upperBound)..<(u - taps.lowerBound)]),
                                           cols: Array(cols[(v - tapCols.upperBound)..<(v - tapCols.lowerBound)]))
                    },
                    outputOffset: { n, iy, ix in n * g.inChannels * g.height * g.width + iy * g.width + ix },
                    windowOrigin: { n, iy, ix in dyLayout.offset(image: n, y: firstRow(iy), x: firstCol(ix)) }
                ).run(paddedInput: padded, bias: nil, relu: false, output: dx, channelStride: g.height * g.width,
                      threads: threads, path: path)
                continue
            }
            let packed = PackedFloatWeights(inputGradientOf: w, outChannels: g.outChannels, inChannels: g.inChannels,
                                            kernelH: kh, kernelW: kw, rows: rows, cols: cols)
            // Filled image by image on the kernel threads: at batch 128 these
            // are 100K offsets per phase, rebuilt every backward pass.
            let perImage = qs.count * rs.count, total = g.batch * perImage
            var windows = [Int64](repeating: 0, count: total), outputs = [Int64](repeating: 0, count: total)
            windows.withUnsafeMutableBufferPointer { wo in
                outputs.withUnsafeMutableBufferPointer { oo in
                    parallelFor(g.batch, threads: total >= 1 << 14 ? threads : 1) { _, images in
                        var i = images.lowerBound * perImage
                        for n in images {
                            for iy in qs {
                                // dy rows q - u + 1 ... q, with q = (iy + p - a) / s.
                                let q = (iy + p - a) / s
                                for ix in rs {
                                    let r = (ix + p - b) / s
                                    wo[i] = Int64(dyLayout.offset(image: n, y: q - u + 1, x: r - v + 1))
                                    oo[i] = Int64(n * g.inChannels * g.height * g.width + iy * g.width + ix)
                                    i += 1
                                }
                            }
                        }
                    }
                }
            }
            implicitConv2d(paddedInput: padded, layout: phase, weights: packed, bias: nil, relu: false, output: dx,
                           outputOffsets: outputs, channelStride: g.height * g.width, windowOffsets: windows,
                           threads: threads, path: path)
        }
    }
}

/// Adds the weight gradient of a convolution to `dw` (OIHW):
///
///     dw[o, c, i, j] += sum over n, oy, ox of dy[n, o, oy, ox] * x[n, c, oy*s - p + i, ox*s - p + j]
///
/// reading x in place from its padded NHWC copy (`paddedInput`, laid out by
/// `layout`, as the forward pass built it), so no patch matrix is written.
/// Pixels are split among `threads`, each summing into its own buffer; the
/// buffers are added in worker order, so the bits depend on the thread count
/// but not on timing.
///
/// `windowOffsets` are `layout.windowOffsets` (pixel j is output pixel j in
/// (image, y, x) order). On maps where most taps read the zero border
/// (`BorderTapClasses.worthSplitting`: 3x3 on 2x2), each tap sums only the
/// pixels that read it inside the image, in the same order, so the result
/// is the same as over every pixel up to the sign of an exact zero;
/// `skippingBorder: false` sums every tap over every pixel.
public func convolutionWeightGradient(paddedInput: UnsafePointer<Float>, layout: PaddedFloatNHWC,
                                      windowOffsets: UnsafePointer<Int64>, outputGradient dy: UnsafePointer<Float>,
                                      weightGradient dw: UnsafeMutablePointer<Float>,
                                      threads: Int = KernelThreads.count, path: FloatKernelPath = .best,
                                      skippingBorder: Bool = true) {
    let g = layout.g
    let isa = path.isa, stride = (g.outChannels + 15) / 16 * 16
    let taps = g.kernelH * g.kernelW, k = taps * g.inChannels
    let rows = UnsafeMutablePointer<Float>.allocate(capacity: g.columns * stride)
    defer { rows.deallocate() }
    parallelDynamic(g.batch, threads: threads) { _, image in
        qarep_f32_to_pixel_major(dy + image * g.outChannels * g.outPlane, 1, Int64(g.outChannels), Int64(g.outPlane),
                                 Int64(stride), rows + image * g.outPlane * stride)
    }
    let workers = max(1, min(threads, g.columns / 256))
    let partial = UnsafeMutablePointer<Float>.allocate(capacity: workers * k * stride)
    defer { partial.deallocate() }
    partial.initialize(repeating: 0, count: workers * k * stride)
    let classes = BorderTapClasses(forward: g)
    if skippingBorder && classes.worthSplitting {
        let taps = BorderTapPixels(classes, geometry: g)
        parallelFor(g.columns, threads: workers) { worker, pixels in
            taps.weightGradient(paddedInput: paddedInput, paddedWidth: layout.paddedWidth, windowOffsets: windowOffsets,
                                pixelMajorGradient: rows, rowStride: stride, pixels: pixels,
                                into: partial + worker * k * stride, isa: isa)
        }
    } else {
        layout.tapOffsets.withUnsafeBufferPointer { to in
            let source = qarep_f32_source(source: paddedInput, tap_offsets: to.baseAddress, taps: Int64(g.kernelH),
                                          segment: Int64(g.kernelW * g.inChannels))
            parallelFor(g.columns, threads: workers) { worker, pixels in
                var s = source
                qarep_f32_weight_gradient(rows + pixels.lowerBound * stride, Int64(stride), &s,
                                          windowOffsets + pixels.lowerBound, Int64(pixels.count),
                                          partial + worker * k * stride, isa)
            }
        }
    }
    // Worker sums added in worker order, then dwt[(t * C + c)][o] -> dw[o][c][t];
    // each output channel's sums are one worker's alone.
    parallelFor(g.outChannels, threads: g.outChannels * k >= 1 << 14 ? threads : 1) { _, channels in
        for t in 0..<taps {
            for c in 0..<g.inChannels {
                let row = partial + (t * g.inChannels + c) * stride, target = dw + c * taps + t
                for o in channels {
                    var sum = row[o]
                    for worker in 1..<workers { sum += row[worker * k * stride + o] }
                    target[o * g.inChannels * taps] += sum
                }
            }
        }
    }
}
