// Elementwise passes of training (residual sums, ReLU and its gradient,
// gradient accumulation) on 16-lane vectors, their elements shared among the
// kernel threads. Each output element depends on its inputs only, so the bits
// do not depend on the thread count.

/// `out[i] = a[i] + b[i]`.
public func add(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, count: Int) {
    parallelChunks(count, work: count) { range in
        var i = range.lowerBound
        while i + 16 <= range.upperBound {
            store(load(a + i) + load(b + i), out + i)
            i += 16
        }
        while i < range.upperBound { out[i] = a[i] + b[i]; i += 1 }
    }
}

/// `acc[i] += x[i]`.
public func accumulate(_ x: UnsafePointer<Float>, into acc: UnsafeMutablePointer<Float>, count: Int) {
    add(UnsafePointer(acc), x, into: acc, count: count)
}

/// `y[i] = max(x[i], 0)`; NaN stays NaN, as with `Swift.max(x, 0)`.
public func reluForward(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    parallelChunks(count, work: count) { range in
        var i = range.lowerBound
        let zero = SIMD16<Float>()
        while i + 16 <= range.upperBound {
            let v = load(x + i)
            store(v.replacing(with: zero, where: v .< zero), y + i)
            i += 16
        }
        while i < range.upperBound { y[i] = max(x[i], 0); i += 1 }
    }
}

/// The ReLU gradient from its output `y`: `dx[i] = y[i] > 0 ? g[i] : 0`
/// (zero at 0, as in PyTorch), stored or, with `accumulate`, added.
public func reluBackward(output y: UnsafePointer<Float>, gradient g: UnsafePointer<Float>,
                         into dx: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    parallelChunks(count, work: count) { range in
        var i = range.lowerBound
        let zero = SIMD16<Float>()
        while i + 16 <= range.upperBound {
            let masked = zero.replacing(with: load(g + i), where: load(y + i) .> zero)
            store(accumulate ? load(dx + i) + masked : masked, dx + i)
            i += 16
        }
        while i < range.upperBound {
            let masked: Float = y[i] > 0 ? g[i] : 0
            dx[i] = accumulate ? dx[i] + masked : masked
            i += 1
        }
    }
}

@inline(__always) private func load(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always) private func load(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always) private func store(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}
