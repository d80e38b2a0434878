import QARepKernels
import Testing

// The vectorized elementwise passes against plain loops, on lengths around
// the 16-lane vector and one long enough (over 2^15) to be shared among the
// kernel threads.

@Suite("Elementwise passes against plain loops")
struct ElementwiseTests {
    static let counts = [1, 15, 16, 33, 100_003]

    func values(_ count: Int, _ a: Int, _ b: Int) -> [Float] {
        (0..<count).map { Float(($0 * a) % b) / 7 - Float(b) / 14 }
    }

    @Test("add and accumulate", arguments: counts)
    func addAndAccumulate(_ count: Int) {
        let a = values(count, 37, 23), b = values(count, 11, 19)
        var out = [Float](repeating: .nan, count: count)
        add(a, b, into: &out, count: count)
        #expect(out == zip(a, b).map { $0 + $1 })
        var acc = a
        accumulate(b, into: &acc, count: count)
        #expect(acc == out)
    }

    @Test("ReLU forward, and its gradient stored and added", arguments: counts)
    func relu(_ count: Int) {
        var x = values(count, 37, 23)
        x[0] = .nan  // NaN must reach the loss, so training can stop on it.
        if count > 2 { x[1] = 0; x[2] = -0.0 }
        var y = [Float](repeating: .nan, count: count)
        reluForward(x, into: &y, count: count)
        for i in 0..<count {
            let expected = max(x[i], 0)
            #expect(y[i] == expected || (y[i].isNaN && expected.isNaN))
        }
        let g = values(count, 11, 19)
        var dx = [Float](repeating: .nan, count: count)
        reluBackward(output: y, gradient: g, into: &dx, count: count, accumulate: false)
        #expect(dx == (0..<count).map { y[$0] > 0 ? g[$0] : 0 })
        var sum = [Float](repeating: 0.5, count: count)
        reluBackward(output: y, gradient: g, into: &sum, count: count, accumulate: true)
        #expect(sum == (0..<count).map { 0.5 + (y[$0] > 0 ? g[$0] : 0) })
    }
}
