import QARep
import QARepKernels
import Testing

// The int16 GEMM and the INT8 convolution against plain Int64 loops: bit for
// bit, on every kernel path and thread count, for random and edge shapes, and
// at the accumulator's limits.

private func randomInts<T: FixedWidthInteger>(_ count: Int, in range: ClosedRange<T>, seed: UInt64) -> [T] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in T.random(in: range, using: &rng) }
}

/// `int16GEMM` on a dense pixel-major `[N, K]` matrix (copied here into rows
/// of the packed length K', the odd K's padding slot filled with garbage that
/// must meet a zero weight).
private func gemm(_ w: [Int8], o: Int, k: Int, _ x: [Int16], n: Int,
                  path: IntegerKernelPath, threads: Int = 1) -> [Int32] {
    let packed = PackedInt8Weights(w, outChannels: o, inputSize: k)
    let kp = packed.paddedInputSize
    var columns = [Int16](repeating: 255, count: n * kp)
    for j in 0..<n { for i in 0..<k { columns[j * kp + i] = x[j * k + i] } }
    var out = [Int32](repeating: 0, count: o * n)
    int16GEMM(weights: packed, columns: columns, n: n, output: &out, threads: threads, path: path)
    return out
}

private func naive(_ w: [Int8], o: Int, k: Int, _ plain: [Int16], n: Int) -> [Int32] {
    var out = [Int32](repeating: 0, count: o * n)
    naiveInt16GEMM(weights: w, outChannels: o, inputSize: k, columns: plain, n: n, output: &out)
    return out
}

/// Compares two `[O, N]` results and describes the first differences.
private func compare(_ got: [Int32], _ want: [Int32], n: Int, _ label: String) -> Mismatches {
    var bad = Mismatches()
    for i in 0..<want.count {
        bad.check(got[i] == want[i], "\(label) o=\(i / n) j=\(i % n) got \(got[i]) want \(want[i])")
    }
    return bad
}

struct GEMMShape: Sendable, CustomTestStringConvertible {
    var o: Int, k: Int, n: Int
    var testDescription: String { "O=\(o) K=\(k) N=\(n)" }
}

/// Edge shapes (K odd or not a multiple of the 16-lane vector, one channel,
/// one pixel, partial 16-channel x 6-pixel tiles) and layer-like ones.
private let gemmShapes: [GEMMShape] = [
    (1, 1, 1), (1, 9, 1), (1, 11, 1), (1, 2, 16), (6, 16, 16), (7, 17, 17), (5, 2, 33), (13, 9, 100),
    (12, 31, 48), (2, 33, 15), (1, 11520, 1), (3, 11520, 20), (48, 432, 200), (64, 576, 47), (17, 1728, 37),
    // 16 pixels, one chunk: with 2 threads the 80 output channels are split in whole blocks (48 + 32).
    (80, 900, 16),
].map { GEMMShape(o: $0.0, k: $0.1, n: $0.2) }

@Suite("Integer GEMM: exact against the Int64 reference")
struct IntegerGEMMTests {
    @Test("every int8 weight times every activation difference in [-255, 255]", arguments: integerKernelPaths)
    func everyProduct(path: IntegerKernelPath) {
        // K = 1: out[o, j] = w_o * x_j for all 256 x 511 pairs (O and N are not
        // multiples of the tile, K is odd so the padding row is exercised).
        let w = (-128...127).map { Int8($0) }, x = (-255...255).map { Int16($0) }
        let out = gemm(w, o: 256, k: 1, x, n: 511, path: path)
        var bad = Mismatches()
        for o in 0..<256 {
            for j in 0..<511 {
                bad.check(out[o * 511 + j] == Int32(w[o]) * Int32(x[j]), "w=\(w[o]) x=\(x[j]) got \(out[o * 511 + j])")
            }
        }
        // K = 2: both halves of vpmaddwd's pair, (w, w) * (x, -x + 1).
        let w2 = w.flatMap { [$0, $0] }, x2 = x.flatMap { [$0, 1 - $0] }
        let out2 = gemm(w2, o: 256, k: 2, x2, n: 511, path: path)
        for o in 0..<256 {
            for j in 0..<511 {
                bad.check(out2[o * 511 + j] == Int32(w[o]) * (Int32(x[j]) + 1 - Int32(x[j])),
                          "pair w=\(w[o]) x=\(x[j]) got \(out2[o * 511 + j])")
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("random shapes equal the reference on every path and thread count", arguments: gemmShapes)
    func randomShapes(shape s: GEMMShape) {
        let seed = UInt64(s.o * 1_000_003 + s.k * 1009 + s.n)
        let w: [Int8] = randomInts(s.o * s.k, in: -127...127, seed: seed)
        let x: [Int16] = randomInts(s.k * s.n, in: -255...255, seed: seed + 1)
        let want = naive(w, o: s.o, k: s.k, x, n: s.n)
        for path in integerKernelPaths {
            for threads in [1, 2, 3] {
                let got = gemm(w, o: s.o, k: s.k, x, n: s.n, path: path, threads: threads)
                let bad = compare(got, want, n: s.n, "\(s.testDescription) \(path) threads=\(threads)")
                #expect(bad.count == 0, bad.report)
            }
        }
    }

    @Test("K = 11520 with all-extreme weights (+-127) and activations (+-255): no overflow", arguments: integerKernelPaths)
    func extremes(path: IntegerKernelPath) {
        let o = 7, k = 11520, n = 17
        // Channel parity picks the weight sign, pixel parity the activation's
        // (x_q = 0 or 255 with zero point 255 or 0).
        let w = (0..<o * k).map { Int8(($0 / k) % 2 == 0 ? -127 : 127) }
        let x = (0..<n * k).map { Int16(($0 / k) % 2 == 0 ? -255 : 255) }
        let got = gemm(w, o: o, k: k, x, n: n, path: path, threads: 2)
        #expect(compare(got, naive(w, o: o, k: k, x, n: n), n: n, "extremes").count == 0)
        #expect(got[0] == 11520 * 127 * 255 && got[1] == -11520 * 127 * 255, "got \(got[0]), \(got[1])")
    }

    @Test("K at the limit (65,793) with -128 weights: the accumulator reaches +-2,147,483,520 exactly",
          arguments: integerKernelPaths)
    func accumulatorLimit(path: IntegerKernelPath) {
        let k = maxIntegerGEMMInputSize, n = 16
        #expect(Int64(k) * 255 * 128 <= Int64(Int32.max) && Int64(k + 1) * 255 * 128 > Int64(Int32.max))
        let w = [Int8](repeating: -128, count: k)
        let x = (0..<n * k).map { Int16(($0 / k) < 8 ? -255 : 255) }
        let got = gemm(w, o: 1, k: k, x, n: n, path: path)
        for j in 0..<n { #expect(got[j] == (j < 8 ? 2_147_483_520 : -2_147_483_520), "pixel \(j): \(got[j])") }
    }

    @Test("packing: every weight reads back, padding is zero, for matrices and OIHW kernels")
    func packing() {
        for (o, c, kh, kw) in [(13, 7, 1, 1), (1, 1, 1, 1), (17, 3, 3, 3), (16, 4, 3, 3), (5, 5, 1, 3)] {
            let w: [Int8] = randomInts(o * c * kh * kw, in: -128...127, seed: UInt64(o * 100 + c))
            let packed = kh == 1 && kw == 1 ? PackedInt8Weights(w, outChannels: o, inputSize: c)
                : PackedInt8Weights(convolution: w, outChannels: o, inChannels: c, kernelH: kh, kernelW: kw)
            let cp = (c + 1) / 2 * 2
            #expect(packed.paddedInputSize == kh * kw * cp && packed.inputSize == c * kh * kw)
            #expect(packed.storage.count == (o + 15) / 16 * 16 * kh * kw * cp, "channels padded to 16")
            for oc in 0..<o { for k in 0..<c * kh * kw { #expect(packed[oc, k] == w[oc * c * kh * kw + k]) } }
            #expect(packed.storage.map { Int($0.magnitude) }.reduce(0, +) == w.map { Int($0.magnitude) }.reduce(0, +),
                    "padding is zero")
        }
    }
}

// MARK: - Convolution

struct QConvCase: Sendable, CustomTestStringConvertible {
    var batch = 2, inChannels = 5, outChannels = 7, height = 9, width = 11
    var kernel: Int, stride: Int, padding: Int
    var signedInput: Bool, signedOutput: Bool, relu: Bool
    var path: IntegerKernelPath, threads: Int

    var geometry: ConvGeometry {
        ConvGeometry(batch: batch, inChannels: inChannels, height: height, width: width, outChannels: outChannels,
                     kernelH: kernel, kernelW: kernel, stride: stride, padding: padding)
    }

    var testDescription: String {
        "\(kernel)x\(kernel) s\(stride) p\(padding) \(inChannels)->\(outChannels) N\(batch) \(height)x\(width) "
            + "\(signedInput ? "i8" : "u8")->\(signedOutput ? "i8" : "u8")\(relu ? " relu" : "") \(path) t\(threads)"
    }
}

/// Kernels 1/3 x strides 1/2 x padding 0/1 x signed/unsigned input and output
/// x with/without ReLU, paths and threads alternating; then larger images
/// (14x14: 196 pixels, so tiles cross image boundaries).
private let qconvCases: [QConvCase] = {
    var cases: [QConvCase] = []
    var i = 0
    for kernel in [1, 3] {
        for stride in [1, 2] {
            for padding in [0, 1] {
                for signedInput in [true, false] {
                    for signedOutput in [true, false] {
                        for relu in [false, true] {
                            let path = integerKernelPaths[i % integerKernelPaths.count]
                            cases.append(QConvCase(kernel: kernel, stride: stride, padding: padding, signedInput: signedInput,
                                                   signedOutput: signedOutput, relu: relu, path: path, threads: 1 + (i / 2) % 2))
                            i += 1
                        }
                    }
                }
            }
        }
    }
    for (kernel, stride, padding) in [(3, 1, 1), (3, 2, 1), (1, 1, 0)] {
        for path in integerKernelPaths {
            cases.append(QConvCase(batch: 3, inChannels: 16, outChannels: 24, height: 14, width: 14, kernel: kernel,
                                   stride: stride, padding: padding, signedInput: false, signedOutput: true, relu: true,
                                   path: path, threads: 2))
        }
    }
    // Three channel blocks (a 32-channel pair, then one), a channel count that
    // is not a multiple of 4, signed input: the VNNI kernel's zero code is 128.
    for path in integerKernelPaths {
        cases.append(QConvCase(batch: 2, inChannels: 45, outChannels: 40, height: 7, width: 7, kernel: 3,
                               stride: 1, padding: 1, signedInput: true, signedOutput: true, relu: true,
                               path: path, threads: 2))
    }
    // Layers large enough for the AMX tiles (two channel blocks, a reduction of
    // four 64-byte tiles, 64 pixels on a thread): 162 pixels (five 32-pixel
    // steps, then 2 on one activation tile) with an odd block count; 108
    // pixels at stride 2 (a last step of 12); 84 pixels (a last step of 20,
    // both activation tiles). Other paths run them too.
    for path in integerKernelPaths {
        cases.append(QConvCase(batch: 2, inChannels: 45, outChannels: 40, height: 9, width: 9, kernel: 3,
                               stride: 1, padding: 1, signedInput: true, signedOutput: false, relu: true,
                               path: path, threads: 1))
        cases.append(QConvCase(batch: 3, inChannels: 36, outChannels: 64, height: 11, width: 11, kernel: 3,
                               stride: 2, padding: 1, signedInput: false, signedOutput: true, relu: false,
                               path: path, threads: 1))
        cases.append(QConvCase(batch: 1, inChannels: 32, outChannels: 32, height: 7, width: 12, kernel: 3,
                               stride: 1, padding: 1, signedInput: true, signedOutput: true, relu: true,
                               path: path, threads: 1))
    }
    // One image of 4x4 pixels (a0-half's stage 3 at batch 1): one pixel chunk, so two threads
    // split the 80 output channels into 64 and 16.
    for path in integerKernelPaths {
        cases.append(QConvCase(batch: 1, inChannels: 96, outChannels: 80, height: 4, width: 4, kernel: 3,
                               stride: 1, padding: 1, signedInput: true, signedOutput: true, relu: true,
                               path: path, threads: 2))
    }
    return cases
}()

/// Random codes, weights, biases and multipliers for a case; the multipliers
/// mix powers of two (ties are frequent) with values that saturate some
/// outputs and keep others inside the range.
private struct QConvData {
    var input: [Int16]  // codes, stored as Int8 or UInt8 by the caller
    var inputZeroPoint: Int32, outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32
    var weights: [Int8], bias: [Int32], multipliers: [Float]

    init(_ c: QConvCase, seed: UInt64) {
        let g = c.geometry
        let inRange: ClosedRange<Int16> = c.signedInput ? -128...127 : 0...255
        input = randomInts(g.batch * g.inChannels * g.height * g.width, in: inRange, seed: seed)
        inputZeroPoint = c.signedInput ? 0 : 131
        weights = randomInts(g.outChannels * g.patchSize, in: -127...127, seed: seed + 1)
        bias = randomInts(g.outChannels, in: -20000...20000, seed: seed + 2)
        let scale = 1 / (73 * 147 * Float(g.patchSize).squareRoot())  // about one over the accumulator's spread
        let shapes: [Float] = [60, 140, 400, 97.3, 233.1]
        multipliers = (0..<g.outChannels).map { o in
            o % 3 == 0 ? Float(sign: .plus, exponent: -(7 + o % 5), significand: 1) : scale * shapes[o % shapes.count]
        }
        outputZeroPoint = c.signedOutput ? 0 : 100
        let r = c.signedOutput ? QuantRange.int8 : .uint8
        outputMin = c.relu ? r.reluMin(zeroPoint: outputZeroPoint) : r.min
        outputMax = r.max
    }
}

/// Runs `quantizedConv2d` and `naiveQuantizedConv2d` with 8-bit storage types
/// chosen by the case, returning both outputs as Int32 codes.
private func runBoth(_ c: QConvCase, _ d: QConvData) -> (fast: [Int32], naive: [Int32]) {
    func run<I: QuantizedActivation, O: QuantizedActivation>(_: I.Type, _: O.Type) -> ([Int32], [Int32]) {
        let g = c.geometry
        let x = d.input.map { I(truncatingIfNeeded: $0) }
        let packed = PackedInt8Weights(convolution: d.weights, outChannels: g.outChannels, inChannels: g.inChannels,
                                       kernelH: g.kernelH, kernelW: g.kernelW)
        let count = g.batch * g.outChannels * g.outPlane
        var fast = [O](repeating: 0, count: count), slow = [O](repeating: 0, count: count)
        quantizedConv2d(input: x, geometry: g, weights: packed, bias: d.bias, multipliers: d.multipliers,
                        inputZeroPoint: d.inputZeroPoint, outputZeroPoint: d.outputZeroPoint,
                        outputMin: d.outputMin, outputMax: d.outputMax, output: &fast, threads: c.threads, path: c.path)
        naiveQuantizedConv2d(input: x, geometry: g, weights: d.weights, bias: d.bias, multipliers: d.multipliers,
                             inputZeroPoint: d.inputZeroPoint, outputZeroPoint: d.outputZeroPoint,
                             outputMin: d.outputMin, outputMax: d.outputMax, output: &slow)
        return (fast.map { Int32($0) }, slow.map { Int32($0) })
    }
    switch (c.signedInput, c.signedOutput) {
    case (true, true): return run(Int8.self, Int8.self)
    case (true, false): return run(Int8.self, UInt8.self)
    case (false, true): return run(UInt8.self, Int8.self)
    case (false, false): return run(UInt8.self, UInt8.self)
    }
}

/// The case through `quantizedConv2dInt16` (the engine's chained AVX2 and
/// portable convolution) on its padded int16 input, writing `code - z` into a
/// padded NHWC buffer like the next layer's; returns NCHW codes, or nil on the
/// byte paths, which read another layout.
private func runInt16Layout(_ c: QConvCase, _ d: QConvData) -> [Int32]? {
    guard !c.path.usesBytes else { return nil }
    let g = c.geometry
    let layout = QuantizedInt16Layout(g)
    var padded = [Int16](repeating: 7, count: layout.count)  // fill overwrites everything
    let packed = PackedInt8Weights(convolution: d.weights, outChannels: g.outChannels, inChannels: g.inChannels,
                                   kernelH: g.kernelH, kernelW: g.kernelW)
    if c.signedInput {
        layout.fill(&padded, from: d.input.map { Int8(truncatingIfNeeded: $0) }, zeroPoint: d.inputZeroPoint, threads: 1)
    } else {
        layout.fill(&padded, from: d.input.map { UInt8(truncatingIfNeeded: $0) }, zeroPoint: d.inputZeroPoint, threads: 1)
    }
    // The output as the padded input of a 3x3 convolution over it, with a
    // sentinel in the border that the convolution must leave alone.
    let next = QuantizedInt16Layout(ConvGeometry(batch: g.batch, inChannels: g.outChannels, height: g.outHeight,
                                                 width: g.outWidth, outChannels: 1, kernelH: 3, kernelW: 3,
                                                 stride: 1, padding: 1))
    let sentinel: Int16 = -999
    var out = [Int16](repeating: sentinel, count: next.count)
    let offsets = (0..<g.columns).map { j in
        Int64(next.offset(image: j / g.outPlane, y: j % g.outPlane / g.outWidth, x: j % g.outWidth))
    }
    quantizedConv2dInt16(paddedInput: padded, layout: layout, windowOffsets: layout.windowOffsets, weights: packed,
                         bias: d.bias, multipliers: d.multipliers, outputZeroPoint: d.outputZeroPoint,
                         outputMin: d.outputMin, outputMax: d.outputMax, outputSigned: c.signedOutput,
                         output: &out, outputOffsets: offsets, threads: c.threads, path: c.path)
    var codes = [Int32](repeating: 0, count: g.batch * g.outChannels * g.outPlane)
    var written = 0
    for (j, offset) in offsets.enumerated() {
        for o in 0..<g.outChannels {
            codes[(j / g.outPlane * g.outChannels + o) * g.outPlane + j % g.outPlane] = Int32(out[Int(offset) + o]) + d.outputZeroPoint
        }
        written += g.outChannels
    }
    // Only real channels of interior pixels were written.
    return out.count(where: { $0 != sentinel }) <= written ? codes : []
}

@Suite("Quantized convolution: fused GEMM path against the naive reference")
struct QuantizedConvolutionTests {
    @Test("quantizedConv2d equals naiveQuantizedConv2d bit for bit", arguments: qconvCases)
    func matchesNaive(_ c: QConvCase) {
        let d = QConvData(c, seed: UInt64(c.kernel * 100 + c.stride * 10 + c.padding + c.height * 1000))
        let (fast, slow) = runBoth(c, d)
        var bad = Mismatches()
        let g = c.geometry
        for i in slow.indices {
            let o = (i / g.outPlane) % g.outChannels
            bad.check(fast[i] == slow[i], "index \(i) (n \(i / (g.outChannels * g.outPlane)), o \(o), pixel \(i % g.outPlane)) "
                        + "M=\(d.multipliers[o]) bias=\(d.bias[o]) got \(fast[i]) want \(slow[i])")
        }
        #expect(bad.count == 0, bad.report)
        if let chained = runInt16Layout(c, d) {
            #expect(chained == slow, "quantizedConv2dInt16: codes equal the reference, nothing written outside the interior")
        }
        // The data must exercise both clamp bounds and the inside of the range.
        #expect(slow.contains(d.outputMin) && slow.contains(d.outputMax), "clamp bounds reached")
        #expect(slow.contains { $0 > d.outputMin && $0 < d.outputMax }, "unsaturated outputs")
        #expect(slow.allSatisfy { $0 >= d.outputMin && $0 <= d.outputMax })
    }

    @Test("naiveQuantizedConv2d equals requantize(naiveConv2d) on the float reference")
    func naiveAgainstFloatConv() {
        for c in qconvCases where c.threads == 1 {
            let d = QConvData(c, seed: 77)
            let g = c.geometry
            // Every value is an integer below 2^24 in magnitude, so float
            // convolution (Double accumulation) is exact.
            let x = d.input.map { Float(Int32($0) - d.inputZeroPoint) }, w = d.weights.map { Float($0) }
            let b = d.bias.map { Float($0) }
            var y = [Float](repeating: 0, count: g.batch * g.outChannels * g.outPlane)
            naiveConv2d(x, w, b, &y, g)
            let (_, slow) = runBoth(c, d)
            var bad = Mismatches()
            for i in y.indices {
                let o = (i / g.outPlane) % g.outChannels
                let want = requantize(Int32(y[i]), multiplier: d.multipliers[o], zeroPoint: d.outputZeroPoint,
                                      min: d.outputMin, max: d.outputMax)
                bad.check(slow[i] == want, "\(c.testDescription) index \(i) acc \(y[i]) got \(slow[i]) want \(want)")
            }
            #expect(bad.count == 0, bad.report)
        }
    }

    @Test("quantizedIm2col writes x_q - z_x per tap in (i, j, c) order, zero for padding taps and channels")
    func im2colLayout() {
        for (kernel, stride, padding, channels) in [(3, 1, 1, 3), (3, 2, 1, 4), (3, 2, 0, 3), (1, 1, 0, 5), (1, 2, 1, 2)] {
            let g = ConvGeometry(batch: 2, inChannels: channels, height: 6, width: 7, outChannels: 1,
                                 kernelH: kernel, kernelW: kernel, stride: stride, padding: padding)
            let x: [UInt8] = randomInts(g.batch * g.inChannels * g.height * g.width, in: 0...255, seed: 9)
            let z: Int32 = 200
            let cp = (channels + 1) / 2 * 2, kp = kernel * kernel * cp
            var cols = [Int16](repeating: 999, count: g.columns * kp)
            quantizedIm2col(x, zeroPoint: z, g, columns: &cols)
            var bad = Mismatches()
            for pixel in 0..<g.columns {
                let (b, oy, ox) = (pixel / g.outPlane, (pixel % g.outPlane) / g.outWidth, pixel % g.outWidth)
                for i in 0..<kernel {
                    for j in 0..<kernel {
                        for c in 0..<cp {
                            let iy = oy * stride - padding + i, ix = ox * stride - padding + j
                            let inside = c < channels && iy >= 0 && iy < g.height && ix >= 0 && ix < g.width
                            let want = inside ? Int16(x[((b * channels + c) * g.height + iy) * g.width + ix]) - Int16(z) : 0
                            let got = cols[pixel * kp + (i * kernel + j) * cp + c]
                            bad.check(got == want, "k\(kernel) s\(stride) p\(padding) pixel \(pixel) tap (\(i), \(j)) c \(c) got \(got) want \(want)")
                        }
                    }
                }
            }
            #expect(bad.count == 0, bad.report)
        }
    }

    @Test("int16GEMM over quantizedIm2col's patches, then requantize, equals quantizedConv2d", arguments: integerKernelPaths)
    func explicitPatchesAgree(path: IntegerKernelPath) {
        let c = QConvCase(batch: 2, inChannels: 5, outChannels: 19, height: 8, width: 9, kernel: 3, stride: 2, padding: 1,
                          signedInput: false, signedOutput: false, relu: true, path: path, threads: 1)
        let d = QConvData(c, seed: 5), g = c.geometry
        let x = d.input.map { UInt8($0) }
        let packed = PackedInt8Weights(convolution: d.weights, outChannels: g.outChannels, inChannels: g.inChannels,
                                       kernelH: 3, kernelW: 3)
        var cols = [Int16](repeating: 0, count: g.columns * packed.paddedInputSize)
        quantizedIm2col(x, zeroPoint: d.inputZeroPoint, g, columns: &cols)
        var acc = [Int32](repeating: 0, count: g.outChannels * g.columns)
        int16GEMM(weights: packed, columns: cols, n: g.columns, output: &acc, path: path)
        var y = [UInt8](repeating: 0, count: acc.count)
        quantizedConv2d(input: x, geometry: g, weights: packed, bias: d.bias, multipliers: d.multipliers,
                        inputZeroPoint: d.inputZeroPoint, outputZeroPoint: d.outputZeroPoint,
                        outputMin: d.outputMin, outputMax: d.outputMax, output: &y, path: path)
        var bad = Mismatches()
        for n in 0..<g.batch {
            for o in 0..<g.outChannels {
                for p in 0..<g.outPlane {
                    let want = requantize(acc[o * g.columns + n * g.outPlane + p] &+ d.bias[o], multiplier: d.multipliers[o],
                                          zeroPoint: d.outputZeroPoint, min: d.outputMin, max: d.outputMax)
                    let got = Int32(y[(n * g.outChannels + o) * g.outPlane + p])
                    bad.check(got == want, "n \(n) o \(o) pixel \(p) got \(got) want \(want)")
                }
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("a hand example: 3x3 all-ones weights, multiplier 1, sums each padded neighbourhood")
    func handExample() {
        // 1x1x3x3 input 1...9 (uint8, zero point 1, so values 0...8), pad 1.
        let g = ConvGeometry(batch: 1, inChannels: 1, height: 3, width: 3, outChannels: 1,
                             kernelH: 3, kernelW: 3, stride: 1, padding: 1)
        let x: [UInt8] = Array(1...9)
        let packed = PackedInt8Weights(convolution: [Int8](repeating: 1, count: 9), outChannels: 1, inChannels: 1,
                                       kernelH: 3, kernelW: 3)
        var y = [Int8](repeating: 0, count: 9)
        quantizedConv2d(input: x, geometry: g, weights: packed, bias: [-10], multipliers: [1], inputZeroPoint: 1,
                        outputZeroPoint: 0, outputMin: -128, outputMax: 127, output: &y)
        // Neighbourhood sums of [[0,1,2],[3,4,5],[6,7,8]], minus 10.
        #expect(y == [8, 15, 12, 21, 36, 27, 20, 33, 24].map { Int8($0 - 10) })
    }
}

/// Shapes for the AVX2 byte kernel: a0-half's and odd ones, strides 1 and 2,
/// batch 1 and 3, channels not a multiple of 4 or 16.
private let byteKernelCases: [QConvCase] = [
    QConvCase(batch: 3, inChannels: 24, outChannels: 24, height: 14, width: 14, kernel: 3, stride: 1, padding: 1,
              signedInput: true, signedOutput: true, relu: true, path: .avx2, threads: 1),
    QConvCase(batch: 1, inChannels: 96, outChannels: 640, height: 4, width: 4, kernel: 3, stride: 2, padding: 1,
              signedInput: true, signedOutput: true, relu: true, path: .avx2, threads: 2),
    QConvCase(batch: 3, inChannels: 5, outChannels: 7, height: 9, width: 11, kernel: 3, stride: 2, padding: 1,
              signedInput: false, signedOutput: false, relu: true, path: .avx2, threads: 1),
    QConvCase(batch: 2, inChannels: 33, outChannels: 20, height: 7, width: 5, kernel: 1, stride: 1, padding: 0,
              signedInput: false, signedOutput: true, relu: false, path: .avx2, threads: 3),
]

@Suite("AVX2 byte convolution: vpmaddubsw is exact for input codes in [0, 127]",
       .enabled(if: IntegerKernelPath.avx2Available))
struct AVX2ByteConvolutionTests {
    /// `quantizedConv2dBytes` on `.avx2` with a `.rawByte` layout against the
    /// naive reference, NCHW codes out. `extreme`: every input code 127 and
    /// every weight -128 or 127 by channel, so every vpmaddubsw pair sum is
    /// 2 * 127 * 127 or -2 * 127 * 128, the most an int16 lane gets.
    func check(_ c: QConvCase, extreme: Bool) {
        let g = c.geometry
        var d = QConvData(c, seed: UInt64(g.inChannels * 7 + g.outChannels))
        // Signed codes from the ReLU'd range [0, 127]; unsigned codes with zero point 5.
        d.inputZeroPoint = c.signedInput ? 0 : 5
        d.input = extreme ? [Int16](repeating: 127, count: d.input.count)
                          : randomInts(d.input.count, in: 0...127, seed: UInt64(g.height))
        if extreme {
            d.weights = (0..<d.weights.count).map { Int8($0 / g.patchSize % 2 == 0 ? -128 : 127) }
        }
        func run<I: QuantizedActivation, O: QuantizedActivation>(_: I.Type, _: O.Type) -> (fast: [Int32], naive: [Int32]) {
            let x = d.input.map { I(truncatingIfNeeded: $0) }
            let packed = PackedInt8Weights(convolution: d.weights, outChannels: g.outChannels, inChannels: g.inChannels,
                                           kernelH: g.kernelH, kernelW: g.kernelW)
            let layout = QuantizedBytesLayout(g, element: .rawByte)
            var padded = [UInt8](repeating: 200, count: layout.count)  // fill overwrites everything
            layout.fill(&padded, from: x, zeroPoint: d.inputZeroPoint, threads: 1)
            #expect(padded.allSatisfy { $0 <= 127 }, "every byte the kernel reads is in [0, 127]")
            let count = g.batch * g.outChannels * g.outPlane
            var fast = [O](repeating: 0, count: count), slow = [O](repeating: 0, count: count)
            quantizedConv2dBytes(paddedInput: padded, layout: layout, windowOffsets: layout.windowOffsets,
                                 inputZeroCode: layout.zeroCode(zeroPoint: d.inputZeroPoint, signed: I.isSigned),
                                 weights: packed, bias: d.bias, multipliers: d.multipliers,
                                 outputZeroPoint: d.outputZeroPoint, outputMin: d.outputMin, outputMax: d.outputMax,
                                 outputSigned: O.isSigned, output: &fast, outputOffsets: nil, threads: c.threads, path: .avx2)
            naiveQuantizedConv2d(input: x, geometry: g, weights: d.weights, bias: d.bias, multipliers: d.multipliers,
                                 inputZeroPoint: d.inputZeroPoint, outputZeroPoint: d.outputZeroPoint,
                                 outputMin: d.outputMin, outputMax: d.outputMax, output: &slow)
            return (fast.map { Int32($0) }, slow.map { Int32($0) })
        }
        let (fast, slow) = switch (c.signedInput, c.signedOutput) {
        case (true, true): run(Int8.self, Int8.self)
        case (true, false): run(Int8.self, UInt8.self)
        case (false, true): run(UInt8.self, Int8.self)
        case (false, false): run(UInt8.self, UInt8.self)
        }
        var bad = Mismatches()
        for i in slow.indices { bad.check(fast[i] == slow[i], "index \(i): got \(fast[i]) want \(slow[i])") }
        #expect(bad.count == 0, "\(c.testDescription) extreme=\(extreme): \(bad.report)")
        #expect(Set(slow).count > 1 || extreme, "the outputs vary")
    }

    @Test("random codes in [0, 127]", arguments: byteKernelCases)
    func random(_ c: QConvCase) { check(c, extreme: false) }

    @Test("every pair sum at the int16 bound", arguments: byteKernelCases)
    func extreme(_ c: QConvCase) { check(c, extreme: true) }
}

/// The engine's border skipping on the integer kernels: with runs, each
/// micro-tile skips the window taps its pixels read from the border, whose
/// elements are zero (int16 `x - z`; bytes when the zero code is 0). The
/// outputs must equal the whole window's exactly: a0-half's small maps,
/// strides 1 and 2, batch 1 to 8, one and two threads (calls that start
/// inside runs), int16 on AVX2 and portable, bytes on AVX2.
@Suite("Integer border runs: skipping the zero border's taps changes no output")
struct IntegerBorderRunsTests {
    @Test("int16 and byte kernels, with and without runs",
          arguments: [(1, 96, 96, 4, 1), (3, 48, 96, 7, 2), (8, 96, 40, 4, 1), (2, 24, 48, 7, 1), (5, 18, 33, 2, 1)])
    func sameOutputs(batch: Int, inChannels: Int, outChannels: Int, size: Int, stride: Int) throws {
        let g = ConvGeometry(batch: batch, inChannels: inChannels, height: size, width: size, outChannels: outChannels,
                             kernelH: 3, kernelW: 3, stride: stride, padding: 1)
        let c = QConvCase(batch: batch, inChannels: inChannels, outChannels: outChannels, height: size, width: size,
                          kernel: 3, stride: stride, padding: 1, signedInput: true, signedOutput: true, relu: true,
                          path: .portable, threads: 1)
        var d = QConvData(c, seed: UInt64(batch * 100 + inChannels))
        d.input = randomInts(d.input.count, in: 0...127, seed: UInt64(size))  // ReLU'd signed codes: raw bytes fit
        let x = d.input.map { Int8(truncatingIfNeeded: $0) }
        let packed = PackedInt8Weights(convolution: d.weights, outChannels: outChannels, inChannels: inChannels,
                                       kernelH: 3, kernelW: 3)
        let runs = try #require(BorderTapRuns(forward: g, tilePixels: IntegerKernelPath.tilePixels))
        let nhwc = (0..<g.columns).map { Int64($0 * outChannels) }
        let count = g.columns * outChannels
        for threads in [1, 2] {
            // int16 input, int16 output (the next layer's elements).
            let int16Layout = QuantizedInt16Layout(g)
            var int16Input = [Int16](repeating: 0, count: int16Layout.count)
            int16Layout.fill(&int16Input, from: x, zeroPoint: 0, threads: 1)
            let int16Windows = int16Layout.windowOffsets
            for path in IntegerKernelPath.available where !path.usesBytes {
                func conv(_ runs: BorderTapRuns?) -> [Int16] {
                    var y = [Int16](repeating: -999, count: count)
                    let order = runs?.order ?? Array(0..<g.columns)
                    quantizedConv2dInt16(paddedInput: int16Input, layout: int16Layout,
                                         windowOffsets: order.map { int16Windows[$0] }, weights: packed,
                                         bias: d.bias, multipliers: d.multipliers, outputZeroPoint: d.outputZeroPoint,
                                         outputMin: d.outputMin, outputMax: d.outputMax, outputSigned: true, output: &y,
                                         outputElement: .int16, outputOffsets: order.map { nhwc[$0] }, threads: threads,
                                         path: path, runs: runs)
                    return y
                }
                let whole = conv(nil)
                #expect(conv(runs) == whole, "int16 \(path), \(threads) threads")
                #expect(Set(whole).count > 1 && !whole.contains(-999))
            }
            // Raw bytes (zero code 0) on AVX2, byte output.
            guard IntegerKernelPath.avx2Available else { continue }
            let byteLayout = QuantizedBytesLayout(g, element: .rawByte)
            var byteInput = [UInt8](repeating: 200, count: byteLayout.count)
            byteLayout.fill(&byteInput, from: x, zeroPoint: 0, threads: 1)
            let byteWindows = byteLayout.windowOffsets
            func conv(_ runs: BorderTapRuns?) -> [UInt8] {
                var y = [UInt8](repeating: 255, count: count)
                let order = runs?.order ?? Array(0..<g.columns)
                quantizedConv2dBytes(paddedInput: byteInput, layout: byteLayout,
                                     windowOffsets: order.map { byteWindows[$0] },
                                     inputZeroCode: byteLayout.zeroCode(zeroPoint: 0, signed: true), weights: packed,
                                     bias: d.bias, multipliers: d.multipliers, outputZeroPoint: d.outputZeroPoint,
                                     outputMin: d.outputMin, outputMax: d.outputMax, outputSigned: true, output: &y,
                                     outputElement: .rawByte, outputOffsets: order.map { nhwc[$0] }, threads: threads,
                                     path: .avx2, runs: runs)
                return y
            }
            let whole = conv(nil)
            #expect(conv(runs) == whole, "bytes avx2, \(threads) threads")
            #expect(Set(whole).count > 1)
        }
    }
}
