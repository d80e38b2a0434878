import QARep
import QARepKernels
import Testing

// The float implicit-GEMM convolution (CQARepFloat) against the direct
// seven-loop reference, on every path this CPU runs: the shapes of all three
// configs (3x3 and 1x1, strides 1 and 2, channel counts that are and are not
// multiples of the 16-channel block), batch 1 and odd sizes, with and without
// bias and ReLU, NCHW and NHWC outputs.

private struct FloatConvCase: Sendable, CustomTestStringConvertible {
    var batch: Int, inChannels: Int, outChannels: Int, size: Int, kernel: Int, stride: Int
    var padding: Int { kernel / 2 }
    var geometry: ConvGeometry {
        ConvGeometry(batch: batch, inChannels: inChannels, height: size, width: size + (batch == 3 ? 1 : 0),
                     outChannels: outChannels, kernelH: kernel, kernelW: kernel, stride: stride, padding: padding)
    }
    var testDescription: String { "\(kernel)x\(kernel) s\(stride) \(inChannels)->\(outChannels) N\(batch) \(size)" }
}

/// Layer shapes of tiny, a0-half and a0 (28, 14, 7, 4 and 2 pixel planes),
/// plus odd channel counts; batch 1, 3 and 2 in turn.
private let floatConvCases: [FloatConvCase] = {
    var cases: [FloatConvCase] = []
    let shapes = [(1, 16, 28, 1), (16, 16, 28, 2), (16, 32, 14, 2), (32, 32, 7, 1), (64, 128, 4, 2),
                  (1, 24, 28, 1), (24, 24, 14, 1), (48, 96, 7, 2), (96, 96, 4, 1), (96, 640, 4, 2),
                  (48, 48, 28, 2), (192, 192, 4, 1), (3, 10, 5, 1), (5, 17, 6, 2), (7, 33, 9, 1),
                  // One image, 16 pixels: one pixel chunk, so the output channels are split between the
                  // two workers in whole tiles: 48 + 32 channels on AVX2, 64 + a short tail of 16 on AVX-512.
                  (96, 80, 4, 1)]
    for (i, (c, o, size, stride)) in shapes.enumerated() {
        for kernel in [3, 1] {
            cases.append(FloatConvCase(batch: [1, 3, 2][i % 3], inChannels: c, outChannels: o, size: size,
                                       kernel: kernel, stride: stride))
        }
    }
    return cases
}()

private func reference(_ x: [Float], _ w: [Float], _ b: [Float], relu: Bool, _ g: ConvGeometry) -> [Float] {
    var y = [Float](repeating: .nan, count: g.batch * g.outChannels * g.outPlane)
    naiveConv2d(x, w, b, &y, g)
    return relu ? y.map { max($0, 0) } : y
}

private func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    let scale = max(b.map { abs($0) }.max() ?? 0, 1e-6)
    return zip(a, b).map { abs($0 - $1) }.max()! / scale
}

@Suite("Float implicit-GEMM convolution against the direct reference")
struct FloatConvolutionTests {
    @Test("NCHW output, every path", arguments: floatConvCases)
    fileprivate func nchw(_ c: FloatConvCase) {
        let g = c.geometry
        var rng = SplitMix64(seed: UInt64(c.inChannels * 131 + c.outChannels))
        let x = (0..<(g.batch * g.inChannels * g.height * g.width)).map { _ in rng.uniform(-1, 1) }
        let w = (0..<(g.outChannels * g.patchSize)).map { _ in rng.uniform(-0.3, 0.3) }
        let b = (0..<g.outChannels).map { _ in rng.uniform(-0.5, 0.5) }
        let packed = PackedFloatWeights(w, outChannels: g.outChannels, inChannels: g.inChannels,
                                        kernelH: g.kernelH, kernelW: g.kernelW)
        var bits: [[Float]] = []
        for path in FloatKernelPath.available {
            for relu in [false, true] {
                var y = [Float](repeating: .nan, count: g.batch * g.outChannels * g.outPlane)
                x.withUnsafeBufferPointer { xp in
                    b.withUnsafeBufferPointer { bp in
                        y.withUnsafeMutableBufferPointer { yp in
                            implicitConv2d(input: xp.baseAddress!, geometry: g, weights: packed, bias: bp.baseAddress!,
                                           relu: relu, output: yp.baseAddress!, threads: 2, path: path)
                        }
                    }
                }
                let expected = reference(x, w, b, relu: relu, g)
                #expect(maxRelativeError(y, expected) < 1e-5, "\(path) relu \(relu)")
                if relu { #expect(y.allSatisfy { $0 >= 0 }) } else { bits.append(y) }
            }
        }
        // Every path sums each output in the same order with fused multiply-adds.
        #expect(bits.allSatisfy { $0 == bits[0] }, "paths disagree in the last bits")
    }

    @Test("NHWC output into a padded buffer, no bias, one and two threads")
    func nhwc() {
        let g = ConvGeometry(batch: 2, inChannels: 24, height: 7, width: 7, outChannels: 40,
                             kernelH: 3, kernelW: 3, stride: 1, padding: 1)
        var rng = SplitMix64(seed: 9)
        let x = (0..<(g.batch * g.inChannels * 49)).map { _ in rng.uniform(-1, 1) }
        let w = (0..<(g.outChannels * g.patchSize)).map { _ in rng.uniform(-0.3, 0.3) }
        let packed = PackedFloatWeights(w, outChannels: 40, inChannels: 24, kernelH: 3, kernelW: 3)
        let layout = PaddedFloatNHWC(g)
        var padded = [Float](repeating: .nan, count: layout.count)
        padded.withUnsafeMutableBufferPointer { p in x.withUnsafeBufferPointer { layout.fill(p.baseAddress!, from: $0.baseAddress!, threads: 2) } }
        // The output is the padded NHWC input of a following 40-channel 3x3 convolution.
        let next = PaddedFloatNHWC(ConvGeometry(batch: 2, inChannels: 40, height: 7, width: 7, outChannels: 1,
                                                kernelH: 3, kernelW: 3, stride: 1, padding: 1))
        let offsets = (0..<g.columns).map { j in Int64(next.offset(image: j / 49, y: j % 49 / 7, x: j % 7)) }
        let expected = reference(x, w, [Float](repeating: 0, count: 40), relu: false, g)
        for threads in [1, 2] {
            var y = [Float](repeating: 0, count: next.count)
            let windows = layout.windowOffsets
            implicitConv2d(paddedInput: padded, layout: layout, weights: packed, bias: nil, relu: false,
                           output: &y, outputOffsets: offsets, channelStride: 1, windowOffsets: windows, threads: threads)
            var nchw = [Float](repeating: 0, count: expected.count)
            for j in 0..<g.columns { for o in 0..<40 { nchw[(j / 49 * 40 + o) * 49 + j % 49] = y[Int(offsets[j]) + o] } }
            #expect(maxRelativeError(nchw, expected) < 1e-5)
            // The border of the output buffer is untouched (still zero).
            #expect(y[next.offset(image: 0, y: -1, x: 0)] == 0 && y[next.offset(image: 1, y: 7, x: 6) + 39] == 0)
        }
    }

    /// The engines' border skipping: pixels in class order, each micro-tile
    /// reading only the window rows and columns inside the image. Maps of
    /// 2x2 to 7x7 at strides 1 and 2 (a0-half's last three stages), batch 1
    /// to 9, one and two threads (the second splits channels and pixel
    /// chunks, so calls start inside runs).
    @Test("border-skipping runs equal the whole window, every path",
          arguments: [(1, 96, 96, 4, 1), (3, 48, 96, 7, 2), (4, 96, 80, 4, 2), (9, 24, 40, 4, 1), (2, 16, 32, 7, 1),
                      (5, 17, 33, 2, 1), (8, 96, 96, 4, 1)])
    func borderRuns(batch: Int, inChannels: Int, outChannels: Int, size: Int, stride: Int) throws {
        let g = ConvGeometry(batch: batch, inChannels: inChannels, height: size, width: size, outChannels: outChannels,
                             kernelH: 3, kernelW: 3, stride: stride, padding: 1)
        var rng = SplitMix64(seed: UInt64(batch * 1000 + inChannels))
        let x = (0..<(batch * inChannels * size * size)).map { _ in rng.uniform(-1, 1) }
        let w = (0..<(outChannels * g.patchSize)).map { _ in rng.uniform(-0.3, 0.3) }
        let b = (0..<outChannels).map { _ in rng.uniform(-0.5, 0.5) }
        let packed = PackedFloatWeights(w, outChannels: outChannels, inChannels: inChannels, kernelH: 3, kernelW: 3)
        let layout = PaddedFloatNHWC(g)
        var padded = [Float](repeating: .nan, count: layout.count)
        padded.withUnsafeMutableBufferPointer { p in x.withUnsafeBufferPointer { layout.fill(p.baseAddress!, from: $0.baseAddress!, threads: 1) } }
        let outputs = nchwPixelOffsets(g), windows = layout.windowOffsets
        let expected = reference(x, w, b, relu: true, g)
        for path in FloatKernelPath.available {
            let runs = try #require(BorderTapRuns(forward: g, tilePixels: path.tilePixels), "\(path): runs should pay here")
            #expect(runs.order.sorted() == Array(0..<g.columns))
            var whole = [Float](repeating: .nan, count: expected.count)
            implicitConv2d(paddedInput: padded, layout: layout, weights: packed, bias: b, relu: true, output: &whole,
                           outputOffsets: outputs, channelStride: g.outPlane, windowOffsets: windows, threads: 1, path: path)
            for threads in [1, 2] {
                var y = [Float](repeating: .nan, count: expected.count)
                implicitConv2d(paddedInput: padded, layout: layout, weights: packed, bias: b, relu: true, output: &y,
                               outputOffsets: runs.order.map { outputs[$0] }, channelStride: g.outPlane,
                               windowOffsets: runs.order.map { windows[$0] }, threads: threads, path: path, runs: runs)
                // Skipped terms are products with the zero border: the same sums.
                #expect(y == whole, "\(path), \(threads) threads")
                #expect(maxRelativeError(y, expected) < 1e-5)
            }
        }
    }

    @Test("border runs are left out where they would not pay")
    func borderRunsDeclined() {
        let big = ConvGeometry(batch: 4, inChannels: 24, height: 28, width: 28, outChannels: 24,
                               kernelH: 3, kernelW: 3, stride: 1, padding: 1)
        let pointwise = ConvGeometry(batch: 4, inChannels: 24, height: 4, width: 4, outChannels: 24,
                                     kernelH: 1, kernelW: 1, stride: 1, padding: 0)
        #expect(BorderTapRuns(forward: big, tilePixels: 6) == nil)
        #expect(BorderTapRuns(forward: pointwise, tilePixels: 6) == nil)
    }

    /// The copy every forward and input-gradient pass starts with: 8x8 tiles
    /// across image rows, element-by-element edges (channel counts and planes
    /// that are not multiples of 8), any padding.
    @Test("padded NHWC copy moves every value and zeroes the border",
          arguments: [(1, 28, 28, 1), (24, 14, 14, 1), (48, 7, 7, 2), (17, 5, 6, 1), (96, 2, 2, 0), (8, 3, 9, 2),
                      (640, 4, 4, 1)])
    func paddedCopy(channels: Int, height: Int, width: Int, padding: Int) {
        let g = ConvGeometry(batch: 3, inChannels: channels, height: height, width: width, outChannels: 1,
                             kernelH: 2 * padding + 1, kernelW: 2 * padding + 1, stride: 1, padding: padding)
        let x = (0..<(3 * channels * height * width)).map { Float($0) + 0.5 }
        let layout = PaddedFloatNHWC(g)
        var padded = [Float](repeating: .nan, count: layout.count)
        padded.withUnsafeMutableBufferPointer { p in x.withUnsafeBufferPointer { layout.fill(p.baseAddress!, from: $0.baseAddress!, threads: 2) } }
        var expected = [Float](repeating: 0, count: layout.count)
        for n in 0..<3 {
            for c in 0..<channels {
                for y in 0..<height {
                    for i in 0..<width {
                        expected[layout.offset(image: n, y: y, x: i) + c] = x[((n * channels + c) * height + y) * width + i]
                    }
                }
            }
        }
        #expect(padded == expected)
    }
}

/// Every multiply-add of a convolution by its definition: `visit(y, x, w)`
/// with the NCHW index of the output, of the input it reads (in-image taps
/// only) and the OIHW index of the weight.
private func forEachProduct(_ g: ConvGeometry, _ visit: (_ y: Int, _ x: Int, _ w: Int) -> Void) {
    for n in 0..<g.batch {
        for o in 0..<g.outChannels {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    for c in 0..<g.inChannels {
                        for i in 0..<g.kernelH {
                            for j in 0..<g.kernelW {
                                let iy = oy * g.stride - g.padding + i, ix = ox * g.stride - g.padding + j
                                guard iy >= 0, iy < g.height, ix >= 0, ix < g.width else { continue }
                                visit(((n * g.outChannels + o) * g.outHeight + oy) * g.outWidth + ox,
                                      ((n * g.inChannels + c) * g.height + iy) * g.width + ix,
                                      ((o * g.inChannels + c) * g.kernelH + i) * g.kernelW + j)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// dx of a convolution by its definition, in Double.
private func referenceInputGradient(_ dy: [Float], _ w: [Float], _ g: ConvGeometry) -> [Float] {
    var dx = [Double](repeating: 0, count: g.batch * g.inChannels * g.height * g.width)
    forEachProduct(g) { y, x, k in dx[x] += Double(dy[y]) * Double(w[k]) }
    return dx.map { Float($0) }
}

@Suite("Input gradient as convolutions on the forward kernel, one per stride phase")
struct ConvolutionInputGradientTests {
    @Test("equals the definition", arguments: [(3, 1, 1, 16, 16, 14), (3, 1, 1, 24, 48, 7), (1, 1, 0, 32, 64, 4),
                                               (3, 1, 0, 5, 7, 6), (3, 1, 2, 3, 4, 5), (1, 1, 0, 1, 24, 28),
                                               (3, 2, 1, 16, 16, 28), (3, 2, 1, 48, 96, 7), (1, 2, 0, 24, 48, 14),
                                               (1, 2, 0, 5, 9, 7), (3, 2, 0, 4, 6, 9), (3, 3, 1, 3, 5, 10), (1, 1, 1, 2, 3, 4),
                                               (1, 2, 1, 3, 2, 5),
                                               // Maps the input gradient runs class by class (1x2, and 2x3 at stride 2).
                                               (3, 1, 1, 24, 40, 1), (3, 2, 1, 16, 24, 2)])
    func matchesDefinition(_ shape: (kernel: Int, stride: Int, padding: Int, inChannels: Int, outChannels: Int, size: Int)) {
        let g = ConvGeometry(batch: 2, inChannels: shape.inChannels, height: shape.size, width: shape.size + 1,
                             outChannels: shape.outChannels, kernelH: shape.kernel, kernelW: shape.kernel,
                             stride: shape.stride, padding: shape.padding)
        var rng = SplitMix64(seed: UInt64(shape.inChannels * 7 + shape.kernel))
        let dy = (0..<(g.batch * g.outChannels * g.outPlane)).map { _ in rng.uniform(-1, 1) }
        let w = (0..<(g.outChannels * g.patchSize)).map { _ in rng.uniform(-0.5, 0.5) }
        let expected = referenceInputGradient(dy, w, g)
        for path in FloatKernelPath.available {
            var dx = [Float](repeating: .nan, count: expected.count)
            convolutionInputGradient(outputGradient: dy, weights: w, geometry: g, inputGradient: &dx, threads: 2, path: path)
            #expect(maxRelativeError(dx, expected) < 1e-5, "\(path)")
        }
    }
}

/// dw of a convolution by its definition, in Double.
private func referenceWeightGradient(_ x: [Float], _ dy: [Float], _ g: ConvGeometry) -> [Float] {
    var dw = [Double](repeating: 0, count: g.outChannels * g.patchSize)
    forEachProduct(g) { y, i, k in dw[k] += Double(dy[y]) * Double(x[i]) }
    return dw.map { Float($0) }
}

/// `x` (NCHW) in the padded NHWC buffer the forward pass builds, border zeroed.
private func paddedNHWC(_ x: [Float], _ g: ConvGeometry) -> (layout: PaddedFloatNHWC, padded: [Float]) {
    let layout = PaddedFloatNHWC(g)
    var padded = [Float](repeating: .nan, count: layout.count)
    padded.withUnsafeMutableBufferPointer { p in x.withUnsafeBufferPointer { layout.fill(p.baseAddress!, from: $0.baseAddress!, threads: 1) } }
    return (layout, padded)
}

@Suite("Weight gradient read in place from the padded input")
struct ConvolutionWeightGradientTests {
    @Test("equals the definition, added to what is there", arguments: floatConvCases)
    fileprivate func matchesDefinition(_ c: FloatConvCase) {
        let g = c.geometry
        var rng = SplitMix64(seed: UInt64(c.outChannels * 5 + c.kernel))
        let x = (0..<(g.batch * g.inChannels * g.height * g.width)).map { _ in rng.uniform(-1, 1) }
        let dy = (0..<(g.batch * g.outChannels * g.outPlane)).map { _ in rng.uniform(-1, 1) }
        let expected = referenceWeightGradient(x, dy, g).map { $0 + 0.5 }
        let (layout, padded) = paddedNHWC(x, g), windows = layout.windowOffsets
        for path in FloatKernelPath.available {
            for threads in [1, 2] {
                var dw = [Float](repeating: 0.5, count: expected.count)
                convolutionWeightGradient(paddedInput: padded, layout: layout, windowOffsets: windows, outputGradient: dy,
                                          weightGradient: &dw, threads: threads, path: path)
                #expect(maxRelativeError(dw, expected) < 1e-5, "\(path), \(threads) thread(s)")
            }
        }
    }

    /// 3x3, padding 1, on maps that are mostly border: a0-half's 2x2 blocks
    /// (130 images: two workers' pixel ranges), a 1x2 map with odd channels,
    /// and a 1x1 map where only the centre tap reads the image.
    @Test("on small maps, each tap summed over the pixels that read it inside the image gives every tap's sums",
          arguments: [(96, 96, 2, 2, 130), (5, 17, 1, 2, 3), (7, 33, 1, 1, 2)])
    func skipsTheBorder(_ shape: (inChannels: Int, outChannels: Int, height: Int, width: Int, batch: Int)) {
        let g = ConvGeometry(batch: shape.batch, inChannels: shape.inChannels, height: shape.height, width: shape.width,
                             outChannels: shape.outChannels, kernelH: 3, kernelW: 3, stride: 1, padding: 1)
        #expect(BorderTapClasses(forward: g).worthSplitting)
        var rng = SplitMix64(seed: UInt64(shape.inChannels * 3 + shape.width))
        let x = (0..<(g.batch * g.inChannels * g.height * g.width)).map { _ in rng.uniform(-1, 1) }
        let dy = (0..<(g.batch * g.outChannels * g.outPlane)).map { _ in rng.uniform(-1, 1) }
        let expected = referenceWeightGradient(x, dy, g)
        let (layout, padded) = paddedNHWC(x, g), windows = layout.windowOffsets
        for path in FloatKernelPath.available {
            for threads in [1, 2] {
                var skipping = [Float](repeating: 0, count: expected.count), every = skipping
                convolutionWeightGradient(paddedInput: padded, layout: layout, windowOffsets: windows, outputGradient: dy,
                                          weightGradient: &skipping, threads: threads, path: path)
                convolutionWeightGradient(paddedInput: padded, layout: layout, windowOffsets: windows, outputGradient: dy,
                                          weightGradient: &every, threads: threads, path: path, skippingBorder: false)
                // == treats the two zeros alike: the sums may differ only in the sign of an exact zero.
                #expect(skipping == every, "\(path), \(threads) thread(s)")
                #expect(maxRelativeError(skipping, expected) < 1e-5, "\(path), \(threads) thread(s)")
            }
        }
    }
}

private extension SplitMix64 {
    mutating func uniform(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * uniformFloat() }
}
