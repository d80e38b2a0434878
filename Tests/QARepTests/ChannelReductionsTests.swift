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
        let (sg, dot) = sumAndDot(g, x, count: count)
        #expect(abs(Double(sg) - g.reduce(0.0) { $0 + Double($1) }) < 1e-4)
        #expect(abs(Double(dot) - zip(g, x).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }) < 1e-3)

        var xhat = [Float](repeating: .nan, count: count), y = xhat
        normalize(x, count: count, mean: 0.25, invStd: 2, gamma: 1.5, beta: -0.5, xhat: &xhat, y: &y)
        for i in 0..<count {
            #expect(xhat[i] == (x[i] - 0.25) * 2)
            #expect(y[i] == xhat[i] * 1.5 - 0.5)
        }
        var dx = [Float](repeating: 1, count: count)
        addNormalizationGradient(g, x, count: count, scale: 0.5, meanG: 0.1, meanGH: -0.2, dx: &dx)
        for i in 0..<count { #expect(dx[i] == 1 + 0.5 * (g[i] - 0.1 - x[i] * -0.2)) }
    }
}
