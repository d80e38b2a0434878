import QARep
import QARepKernels
import Testing

// conv2d (the implicit-GEMM kernel) against the direct seven-loop reference,
// for every shape the RepVGG models use, and the sgemm wrapper.

struct ConvCase: Sendable, CustomTestStringConvertible {
    var batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int
    var kernel: Int, stride: Int, padding: Int, bias: Bool

    var geometry: ConvGeometry {
        ConvGeometry(batch: batch, inChannels: inChannels, height: height, width: width,
                     outChannels: outChannels, kernelH: kernel, kernelW: kernel, stride: stride, padding: padding)
    }

    var testDescription: String {
        "\(kernel)x\(kernel) s\(stride) p\(padding) \(inChannels)->\(outChannels) N\(batch) \(height)x\(width)\(bias ? " +bias" : "")"
    }
}

/// Kernel 3 pad 1 and kernel 1 pad 0; strides 1 and 2; in == out and in != out;
/// batch 1 and 3; 28, 14, 7, 4, an odd 5x6, and the small maps conv2d runs
/// class by class (4x4 and smaller, skipping the border's taps).
private let modelConvCases: [ConvCase] = {
    var cases: [ConvCase] = []
    for (kernel, padding) in [(3, 1), (1, 0)] {
        for stride in [1, 2] {
            for (inC, outC) in [(8, 8), (3, 10)] {
                for batch in [1, 3] {
                    for (h, w) in [(28, 28), (14, 14), (7, 7), (4, 4), (5, 6), (2, 2), (3, 2), (1, 1)] {
                        cases.append(ConvCase(batch: batch, inChannels: inC, outChannels: outC, height: h, width: w,
                                              kernel: kernel, stride: stride, padding: padding, bias: batch == 3))
                    }
                }
            }
        }
    }
    return cases
}()

/// The direct convolution from QARepKernels.
private func referenceConv(_ x: [Float], _ w: [Float], _ b: [Float]?, _ g: ConvGeometry) -> [Float] {
    var y = [Float](repeating: .nan, count: g.batch * g.outChannels * g.outPlane)
    x.withUnsafeBufferPointer { xp in
        w.withUnsafeBufferPointer { wp in
            y.withUnsafeMutableBufferPointer { yp in
                if let b {
                    b.withUnsafeBufferPointer { naiveConv2d(xp.baseAddress!, wp.baseAddress!, $0.baseAddress!, yp.baseAddress!, g) }
                } else {
                    naiveConv2d(xp.baseAddress!, wp.baseAddress!, nil, yp.baseAddress!, g)
                }
            }
        }
    }
    return y
}

@Suite("Convolution: conv2d against the direct reference")
struct ConvolutionTests {
    @Test("conv2d equals naiveConv2d", arguments: modelConvCases)
    func gemmMatchesNaive(_ c: ConvCase) {
        let g = c.geometry
        var rng = SplitMix64(seed: UInt64(c.height * 1000 + c.width * 10 + c.kernel + c.stride * 7 + c.inChannels))
        let x = randomFloats(c.batch * c.inChannels * c.height * c.width, rng: &rng)
        let w = randomFloats(c.outChannels * c.inChannels * c.kernel * c.kernel, rng: &rng)
        let b = c.bias ? randomFloats(c.outChannels, rng: &rng) : nil

        let y = conv2d(Tensor(x, shape: [c.batch, c.inChannels, c.height, c.width]),
                       weight: Tensor(w, shape: [c.outChannels, c.inChannels, c.kernel, c.kernel]),
                       bias: b.map { Tensor($0, shape: [c.outChannels]) }, stride: c.stride, padding: c.padding)
        let outH = (c.height + 2 * c.padding - c.kernel) / c.stride + 1
        let outW = (c.width + 2 * c.padding - c.kernel) / c.stride + 1
        #expect(y.shape == [c.batch, c.outChannels, outH, outW])
        #expect(g.outHeight == outH && g.outWidth == outW)

        let ref = referenceConv(x, w, b, g)
        let err = maxRelativeError(y.data, ref, floor: 1e-2 * maxAbs(ref))
        #expect(err < 1e-4, "max relative error \(err)")
    }

    @Test("conv2d on a hand example: 3x3 all-ones kernel sums each padded neighbourhood")
    func handExample() {
        // x = 1 2 3 / 4 5 6 / 7 8 9; a 3x3 ones kernel with padding 1 gives the
        // neighbourhood sums, plus the bias 0.5.
        let x = Tensor((1 ... 9).map(Float.init), shape: [1, 1, 3, 3])
        let w = Tensor(repeating: 1, shape: [1, 1, 3, 3])
        let y = conv2d(x, weight: w, bias: Tensor([0.5], shape: [1]), padding: 1)
        #expect(y.data == [12, 21, 16, 27, 45, 33, 24, 39, 28].map { $0 + 0.5 })
        // Stride 2 keeps the corners.
        let s = conv2d(x, weight: w, stride: 2, padding: 1)
        #expect(s.shape == [1, 1, 2, 2])
        #expect(s.data == [12, 16, 24, 28])
    }

    @Test("sgemm with every transpose combination and beta accumulation")
    func sgemmTransposes() {
        let (m, n, k) = (3, 4, 5)
        let a = randomFloats(m * k, seed: 53), b = randomFloats(k * n, seed: 54), c0 = randomFloats(m * n, seed: 55)
        // Reference C = 2 * A B + 0.5 * C0 in double.
        var ref = [Float](repeating: 0, count: m * n)
        for i in 0 ..< m {
            for j in 0 ..< n {
                var s = 0.0
                for l in 0 ..< k { s += Double(a[i * k + l]) * Double(b[l * n + j]) }
                ref[i * n + j] = Float(2 * s + 0.5 * Double(c0[i * n + j]))
            }
        }
        // Transposed copies: aT is [k, m], bT is [n, k].
        let aT = (0 ..< k * m).map { a[($0 % m) * k + $0 / m] }
        let bT = (0 ..< n * k).map { b[($0 % k) * n + $0 / k] }
        for (transA, transB) in [(false, false), (true, false), (false, true), (true, true)] {
            var c = c0
            let aa = transA ? aT : a, bb = transB ? bT : b
            aa.withUnsafeBufferPointer { ap in
                bb.withUnsafeBufferPointer { bp in
                    c.withUnsafeMutableBufferPointer { cp in
                        sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 2,
                              a: ap.baseAddress!, lda: transA ? m : k, b: bp.baseAddress!, ldb: transB ? k : n,
                              beta: 0.5, c: cp.baseAddress!, ldc: n)
                    }
                }
            }
            #expect(maxRelativeError(c, ref, floor: 1) < 1e-5, "transA \(transA) transB \(transB)")
        }
    }
}
