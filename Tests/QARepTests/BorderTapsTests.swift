import QARep
import QARepKernels
import Testing

// Small maps run class by class, each class of output pixels with only the
// kernel taps inside the image (BorderTaps.swift): the classes, when that
// pays, and that the result is the whole kernel's.

@Suite("Convolution class by class, skipping the border's taps")
struct BorderTapsTests {
    private func geometry(_ size: Int, kernel: Int = 3, stride: Int = 1, padding: Int = 1, batch: Int = 1) -> ConvGeometry {
        ConvGeometry(batch: batch, inChannels: 5, height: size, width: size, outChannels: 20, kernelH: kernel,
                     kernelW: kernel, stride: stride, padding: padding)
    }

    @Test("a 2x2 map has four classes of one pixel, 16 of 36 taps inside")
    func twoByTwo() {
        let classes = BorderTapClasses(forward: geometry(2))
        let expected = [BorderTapGroup(taps: 1..<3, outputs: [0]), BorderTapGroup(taps: 0..<2, outputs: [1])]
        #expect(classes.rows == expected && classes.cols == expected)
        #expect(abs(classes.usefulFraction - 16.0 / 36) < 1e-12)
        #expect(classes.worthSplitting)
    }

    @Test("4x4 and larger maps, and outputs that read only border, run whole")
    func notSplit() {
        // 4x4: rows read 2, 3, 3, 2 taps of 3; (10 / 12)^2 = 69% inside.
        let four = BorderTapClasses(forward: geometry(4))
        #expect(four.rows.map(\.outputs) == [[0], [1, 2], [3]])
        #expect(abs(four.usefulFraction - 100.0 / 144) < 1e-12 && !four.worthSplitting)
        #expect(!BorderTapClasses(forward: geometry(28)).worthSplitting)
        // A 1x1 kernel with padding 1: the border ring of outputs reads nothing.
        let ring = BorderTapClasses(forward: geometry(2, kernel: 1))
        #expect(!ring.coversEveryOutput && !ring.worthSplitting)
        // Padding 2: the outer ring's tap bounds cross (no taps), not a trap.
        let deep = BorderTapClasses(forward: geometry(2, kernel: 1, padding: 2))
        #expect(deep.rows == [BorderTapGroup(taps: 0..<1, outputs: [2, 3])] && !deep.worthSplitting)
        // Stride 2 from 2x2 to 1x1 reads taps 1 and 2 of each axis.
        let strided = BorderTapClasses(forward: geometry(2, stride: 2))
        #expect(strided.rows == [BorderTapGroup(taps: 1..<3, outputs: [0])] && strided.worthSplitting)
    }

    @Test("class by class equals the whole kernel on every path", arguments: [(2, 1), (2, 2), (3, 1), (1, 1)])
    func matchesWholeKernel(size: Int, stride: Int) {
        let g = geometry(size, stride: stride, batch: 3)
        var rng = SplitMix64(seed: 4)
        let x = (0..<(g.batch * g.inChannels * size * size)).map { _ in 2 * rng.uniformFloat() - 1 }
        let w = (0..<(g.outChannels * g.patchSize)).map { _ in rng.uniformFloat() - 0.5 }
        let bias = (0..<g.outChannels).map { Float($0) / 10 }
        let layout = PaddedFloatNHWC(g)
        var padded = [Float](repeating: .nan, count: layout.count)
        padded.withUnsafeMutableBufferPointer { p in x.withUnsafeBufferPointer { layout.fill(p.baseAddress!, from: $0.baseAddress!, threads: 1) } }
        let classes = BorderTapClasses(forward: g)
        for path in FloatKernelPath.available {
            for threads in [1, 2] {
                var whole = [Float](repeating: .nan, count: g.batch * g.outChannels * g.outPlane), split = whole
                let packed = PackedFloatWeights(w, outChannels: g.outChannels, inChannels: g.inChannels, kernelH: 3, kernelW: 3)
                implicitConv2d(paddedInput: padded, layout: layout, weights: packed, bias: bias, relu: true, output: &whole,
                               outputOffsets: nchwPixelOffsets(g), channelStride: g.outPlane,
                               windowOffsets: layout.windowOffsets, threads: threads, path: path)
                w.withUnsafeBufferPointer { wp in
                    BorderClassConvolution(
                        layout: layout, classes: classes,
                        weights: { PackedFloatWeights(wp.baseAddress!, outChannels: g.outChannels, inChannels: g.inChannels,
                                                      kernelH: 3, kernelW: 3, rows: $0, cols: $1) },
                        outputOffset: { n, y, x in n * g.outChannels * g.outPlane + y * g.outWidth + x },
                        windowOrigin: { n, y, x in layout.offset(image: n, y: y * stride - 1, x: x * stride - 1) }
                    ).run(paddedInput: padded, bias: bias, relu: true, output: &split, channelStride: g.outPlane,
                          threads: threads, path: path)
                }
                // The skipped terms are products with zero: the same sums (== treats -0 as 0).
                #expect(split == whole, "\(path), \(threads) threads")
            }
        }
    }
}
