import QARep
import QARepKernels
import Testing

// The GEMM convolution against the direct seven-loop reference, for every
// shape the RepVGG models use, and im2col/col2im adjointness (col2im is the
// backward pass of im2col, so <col2im(c), x> must equal <c, im2col(x)>).

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
/// batch 1 and 3; 28, 14, 7, 4 and an odd 5x6.
private let modelConvCases: [ConvCase] = {
    var cases: [ConvCase] = []
    for (kernel, padding) in [(3, 1), (1, 0)] {
        for stride in [1, 2] {
            for (inC, outC) in [(8, 8), (3, 10)] {
                for batch in [1, 3] {
                    for (h, w) in [(28, 28), (14, 14), (7, 7), (4, 4), (5, 6)] {
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

@Suite("Convolution: GEMM path against the direct reference")
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

    static let adjointGeometries: [ConvGeometry] = [
        ConvGeometry(batch: 2, inChannels: 3, height: 5, width: 6, outChannels: 1, kernelH: 3, kernelW: 3, stride: 1, padding: 1),
        ConvGeometry(batch: 2, inChannels: 2, height: 7, width: 7, outChannels: 1, kernelH: 3, kernelW: 3, stride: 2, padding: 1),
        ConvGeometry(batch: 1, inChannels: 2, height: 6, width: 5, outChannels: 1, kernelH: 3, kernelW: 3, stride: 2, padding: 0),
        ConvGeometry(batch: 2, inChannels: 3, height: 4, width: 4, outChannels: 1, kernelH: 3, kernelW: 3, stride: 1, padding: 0),
        ConvGeometry(batch: 2, inChannels: 3, height: 5, width: 7, outChannels: 1, kernelH: 1, kernelW: 1, stride: 2, padding: 0),
        ConvGeometry(batch: 1, inChannels: 2, height: 4, width: 5, outChannels: 1, kernelH: 1, kernelW: 1, stride: 1, padding: 1),
        ConvGeometry(batch: 1, inChannels: 1, height: 28, width: 28, outChannels: 1, kernelH: 3, kernelW: 3, stride: 2, padding: 1),
        ConvGeometry(batch: 2, inChannels: 2, height: 6, width: 7, outChannels: 1, kernelH: 5, kernelW: 3, stride: 2, padding: 2),
    ]

    @Test("im2col and col2im are adjoint", arguments: adjointGeometries)
    func adjointness(_ g: ConvGeometry) {
        let xCount = g.batch * g.inChannels * g.height * g.width
        let colCount = g.patchSize * g.columns
        let x = randomFloats(xCount, seed: 51)
        let c = randomFloats(colCount, seed: 52)

        var colOfX = [Float](repeating: .nan, count: colCount)
        x.withUnsafeBufferPointer { xp in colOfX.withUnsafeMutableBufferPointer { im2col(xp.baseAddress!, $0.baseAddress!, g) } }
        var imOfC = [Float](repeating: 0, count: xCount)
        c.withUnsafeBufferPointer { cp in imOfC.withUnsafeMutableBufferPointer { col2im(cp.baseAddress!, $0.baseAddress!, g) } }

        #expect(!colOfX.contains { $0.isNaN }, "im2col left entries unwritten")
        let lhs = dot(imOfC, x), rhs = dot(c, colOfX)
        #expect(abs(lhs - rhs) <= 1e-5 * max(abs(lhs), abs(rhs), 1), "<col2im(c), x> = \(lhs), <c, im2col(x)> = \(rhs)")
    }

    @Test("im2col zero-fills the padding taps")
    func im2colPadding() {
        // One 2x2 image, 3x3 kernel, padding 1: the patch matrix has 9 rows and 4
        // columns; tap (0, 0) sees the image only at output (1, 1).
        let g = ConvGeometry(batch: 1, inChannels: 1, height: 2, width: 2, outChannels: 1,
                             kernelH: 3, kernelW: 3, stride: 1, padding: 1)
        let x: [Float] = [1, 2, 3, 4]
        var col = [Float](repeating: .nan, count: 36)
        x.withUnsafeBufferPointer { xp in col.withUnsafeMutableBufferPointer { im2col(xp.baseAddress!, $0.baseAddress!, g) } }
        #expect(Array(col[0 ..< 4]) == [0, 0, 0, 1])   // tap (0, 0)
        #expect(Array(col[16 ..< 20]) == [1, 2, 3, 4]) // centre tap
        #expect(Array(col[32 ..< 36]) == [4, 0, 0, 0]) // tap (2, 2)
    }

    @Test("batch-major and channel-major layouts are inverse copies")
    func layoutRoundTrip() {
        let (n, c, p) = (3, 4, 5)
        let x = (0 ..< n * c * p).map(Float.init)
        var cm = [Float](repeating: 0, count: x.count), back = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { s in cm.withUnsafeMutableBufferPointer { batchToChannelMajor(s.baseAddress!, $0.baseAddress!, batch: n, channels: c, plane: p) } }
        cm.withUnsafeBufferPointer { s in back.withUnsafeMutableBufferPointer { channelToBatchMajor(s.baseAddress!, $0.baseAddress!, batch: n, channels: c, plane: p) } }
        // Element (n=1, c=2, i=3) moves to (c=2, n=1, i=3).
        #expect(cm[(2 * n + 1) * p + 3] == x[(1 * c + 2) * p + 3])
        #expect(back == x)
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
