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
