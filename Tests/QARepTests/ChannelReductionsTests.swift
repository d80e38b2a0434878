import QARep
import QARepKernels
import Testing

// The vectorized batch-norm loops against plain Double loops, on lengths
// below, at and around the 16-lane vector (the tail runs in scalar code).

@Suite("Batch-norm reductions and maps against plain loops")
struct ChannelReductionsTests {
    @Test("sums, dots, normalize and its gradient", arguments: [1, 7, 16, 17, 49, 196, 784])
    func matchesPlainLoops(_ count: Int) {
        let x = (0..<count).map { Float(($0 * 37) % 23) / 7 - 1.5 }
        let g = (0..<count).map { Float(($0 * 11) % 19) / 5 - 1.8 }
        let (s, ss) = sumAndSumOfSquares(x, count: count)
        #expect(abs(Double(s) - x.reduce(0.0) { $0 + Double($1) }) < 1e-4)
        #expect(abs(Double(ss) - x.reduce(0.0) { $0 + Double($1) * Double($1) }) < 1e-3)
        // The backward sums recompute xhat = (x - mean) * invStd; with a ReLU
        // output, the gradient passes only where it is positive.
        let (mean, invStd): (Float, Float) = (0.25, 2)
        let xhat = x.map { ($0 - mean) * invStd }
        let (sg, dot) = sumAndDotNormalized(g, x, count: count, mean: mean, invStd: invStd, reluOutput: nil)
        #expect(abs(Double(sg) - g.reduce(0.0) { $0 + Double($1) }) < 1e-4)
        #expect(abs(Double(dot) - zip(g, xhat).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }) < 1e-3)
        let relu = (0..<count).map { Float($0 % 3) - 1 }
        let masked = zip(g, relu).map { $1 > 0 ? $0 : 0 }
        let (msg, mdot) = sumAndDotNormalized(g, x, count: count, mean: mean, invStd: invStd, reluOutput: relu)
        #expect(abs(Double(msg) - masked.reduce(0.0) { $0 + Double($1) }) < 1e-4)
        #expect(abs(Double(mdot) - zip(masked, xhat).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }) < 1e-3)

        for fused in [false, true] {
            var y = [Float](repeating: .nan, count: count)
            normalize(x, count: count, mean: mean, invStd: invStd, gamma: 1.5, beta: -0.5, relu: fused, y: &y)
            for i in 0..<count { #expect(y[i] == (fused ? max(xhat[i] * 1.5 - 0.5, 0) : xhat[i] * 1.5 - 0.5)) }
        }
        for (mask, gradient) in [(nil, g), (relu, masked)] as [([Float]?, [Float])] {
            var dx = [Float](repeating: 1, count: count)
            addNormalizationGradient(g, x, count: count, mean: mean, invStd: invStd, reluOutput: mask, scale: 0.5,
                                     meanG: 0.1, meanGH: -0.2, dx: &dx)
            for i in 0..<count { #expect(dx[i] == 1 + 0.5 * (gradient[i] - 0.1 - xhat[i] * -0.2)) }
            var de = [Float](repeating: 1, count: count)
            addScaledGradient(g, count: count, reluOutput: mask, scale: 0.5, dx: &de)
            for i in 0..<count { #expect(de[i] == 1 + 0.5 * gradient[i]) }
        }
    }
}

/// A channel count and plane size for the batch-norm kernels over NCHW.
private struct PlanesCase: Sendable, CustomTestStringConvertible {
    var channels: Int, plane: Int
    var testDescription: String { "\(channels) channels of \(plane)" }
}

// The C kernels (BatchNormKernels.swift) against the per-plane loops above,
// bit for bit, on every path: planes under, at and past the 16-lane vector
// (the 2x2, 4x4, 7x7 and 14x14 stages), channel counts that do and do not
// fill 16-channel groups, a channel range that starts mid-tensor, -0 and
// values the ReLU clips.
@Suite("Batch-norm kernels against the per-plane loops")
struct BatchNormKernelTests {
    @Test("an empty batch normalizes to an empty output in evaluation mode, as before the kernels")
    func emptyBatch() {
        let ones = Tensor([1, 1, 1], shape: [3]), zeros = Tensor([0, 0, 0], shape: [3])
        let y = batchNorm(Tensor([], shape: [0, 3, 2, 2]), weight: ones, bias: zeros, runningMean: zeros,
                          runningVar: ones, training: false)
        #expect(y.shape == [0, 3, 2, 2] && y.data.isEmpty)
    }

    @Test("sums, normalize and gradients, every path, bit for bit",
          arguments: [PlanesCase(channels: 40, plane: 4), PlanesCase(channels: 17, plane: 1), PlanesCase(channels: 5, plane: 15),
                      PlanesCase(channels: 33, plane: 16), PlanesCase(channels: 18, plane: 49), PlanesCase(channels: 3, plane: 196)])
    fileprivate func matchesPlaneLoops(_ shape: PlanesCase) {
        let (n, c, p) = (3, shape.channels, shape.plane)
        let planes = ChannelPlanes(batch: n, channels: c, plane: p)
        let count = n * c * p
        var x = (0..<count).map { Float(($0 * 37) % 23) / 7 - 1.5 }
        x[0] = -0.0
        let g = (0..<count).map { Float(($0 * 11) % 19) / 5 - 1.8 }
        let relu = (0..<count).map { Float($0 % 3) - 1 }
        // Means hit some x exactly; a negative gamma and beta -0 then give
        // -0 before the ReLU, which the lanes keep and the tail makes +0.
        let mean = (0..<c).map { x[$0 * p] }, invStd = (0..<c).map { 0.5 + Float($0 % 4) }
        let gamma = (0..<c).map { $0 % 2 == 0 ? -1.25 : 0.75 as Float }, beta = (0..<c).map { $0 % 3 == 0 ? -0.0 : 0.1 as Float }
        let scale = (0..<c).map { Float($0 + 1) / 8 }, meanG = (0..<c).map { Float($0) / 20 - 0.3 }
        let meanGH = (0..<c).map { 0.2 - Float($0) / 30 }
        let base = { (image: Int, channel: Int) in (image * c + channel) * p }

        var sums = [Double](repeating: 0, count: c), squares = sums, sumG = sums, sumGH = sums, maskedG = sums, maskedGH = sums
        for ch in 0..<c {
            for i in 0..<n {
                x.withUnsafeBufferPointer { xp in
                    g.withUnsafeBufferPointer { gp in
                        relu.withUnsafeBufferPointer { rp in
                            let o = base(i, ch)
                            let (a, b) = sumAndSumOfSquares(xp.baseAddress! + o, count: p)
                            sums[ch] += Double(a); squares[ch] += Double(b)
                            let (d, e) = sumAndDotNormalized(gp.baseAddress! + o, xp.baseAddress! + o, count: p, mean: mean[ch],
                                                             invStd: invStd[ch], reluOutput: nil)
                            sumG[ch] += Double(d); sumGH[ch] += Double(e)
                            let (f, h) = sumAndDotNormalized(gp.baseAddress! + o, xp.baseAddress! + o, count: p, mean: mean[ch],
                                                             invStd: invStd[ch], reluOutput: rp.baseAddress! + o)
                            maskedG[ch] += Double(f); maskedGH[ch] += Double(h)
                        }
                    }
                }
            }
        }
        func planeMap(_ body: (_ offset: Int, _ channel: Int) -> Void) {
            for i in 0..<n { for ch in 0..<c { body(base(i, ch), ch) } }
        }
        var normalized = [[Float]](repeating: [Float](repeating: .nan, count: count), count: 2)
        for fused in [false, true] {
            planeMap { o, ch in
                x.withUnsafeBufferPointer { xp in
                    normalize(xp.baseAddress! + o, count: p, mean: mean[ch], invStd: invStd[ch], gamma: gamma[ch],
                              beta: beta[ch], relu: fused, y: &normalized[fused ? 1 : 0][o])
                }
            }
        }
        var gradients = [[Float]](repeating: [Float](repeating: 1, count: count), count: 2)
        for masked in [false, true] {
            planeMap { o, ch in
                x.withUnsafeBufferPointer { xp in
                    g.withUnsafeBufferPointer { gp in
                        relu.withUnsafeBufferPointer { rp in
                            gradients[masked ? 1 : 0].withUnsafeMutableBufferPointer { dx in
                                addNormalizationGradient(gp.baseAddress! + o, xp.baseAddress! + o, count: p, mean: mean[ch],
                                                         invStd: invStd[ch], reluOutput: masked ? rp.baseAddress! + o : nil,
                                                         scale: scale[ch], meanG: meanG[ch], meanGH: meanGH[ch],
                                                         dx: dx.baseAddress! + o)
                            }
                        }
                    }
                }
            }
        }
        // -0 reaches the ReLU; the lanes (planes of 16 and more) pass it through.
        #expect(normalized[0].contains { $0 == 0 && $0.sign == .minus })
        #expect(normalized[1].contains { $0 == 0 && $0.sign == .minus } == (p >= 16))

        let bits = { (v: [Float]) in v.map(\.bitPattern) }
        for path in FloatKernelPath.available {
            // Two calls, as two threads would split the channels.
            let halves = [0..<(c / 2), (c / 2)..<c]
            var s = [Double](repeating: .nan, count: c), q = s, sg = s, sgh = s, mg = s, mgh = s
            var y = [[Float]](repeating: [Float](repeating: .nan, count: count), count: 2)
            var dx = [[Float]](repeating: [Float](repeating: 1, count: count), count: 2)
            for range in halves {
                channelSumsAndSquares(x, planes, channels: range, sums: &s, squares: &q, path: path)
                channelGradientSums(g, x, planes, channels: range, mean: mean, invStd: invStd, reluOutput: nil,
                                    sumG: &sg, sumGH: &sgh, path: path)
                channelGradientSums(g, x, planes, channels: range, mean: mean, invStd: invStd, reluOutput: relu,
                                    sumG: &mg, sumGH: &mgh, path: path)
                for fused in [false, true] {
                    normalizeChannels(x, planes, channels: range, mean: mean, invStd: invStd, gamma: gamma, beta: beta,
                                      relu: fused, y: &y[fused ? 1 : 0], path: path)
                }
                for masked in [false, true] {
                    addChannelNormalizationGradient(g, x, planes, channels: range, mean: mean, invStd: invStd,
                                                    reluOutput: masked ? relu : nil, scale: scale, meanG: meanG,
                                                    meanGH: meanGH, dx: &dx[masked ? 1 : 0], path: path)
                }
            }
            #expect(s == sums && q == squares, "\(path) sums")
            #expect(sg == sumG && sgh == sumGH && mg == maskedG && mgh == maskedGH, "\(path) gradient sums")
            #expect(bits(y[0]) == bits(normalized[0]) && bits(y[1]) == bits(normalized[1]), "\(path) normalize")
            #expect(bits(dx[0]) == bits(gradients[0]) && bits(dx[1]) == bits(gradients[1]), "\(path) input gradient")
        }
    }
}
