import Foundation
import QARepKernels

// Elementwise operations. Binary operations take tensors of the same shape, or
// a one-element tensor on either side (broadcast as a scalar).

extension Tensor {
    /// `a + b`.
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        guard a.shape == b.shape else { return binary(a, b, { $0 + $1 }, da: { g, _, _ in g }, db: { g, _, _ in g }) }
        return traced(.add, [a, b]) { sum(a, b) }
    }

    private static func sum(_ a: Tensor, _ b: Tensor) -> Tensor {
        // The residual sums of every block: one vector pass, and the gradient passes through unchanged.
        let n = a.count
        let out = [Float](unsafeUninitializedCapacity: n) { buf, count in
            a.data.withUnsafeBufferPointer { x in
                b.data.withUnsafeBufferPointer { y in add(x.baseAddress!, y.baseAddress!, into: buf.baseAddress!, count: n) }
            }
            count = n
        }
        return Tensor.result(out, shape: a.shape, inputs: [a, b]) { g in
            if a.requiresGrad { a.accumulateGrad(g) }
            if b.requiresGrad { b.accumulateGrad(g) }
        }
    }

    /// `a - b`.
    public static func - (a: Tensor, b: Tensor) -> Tensor {
        binary(a, b, { $0 - $1 }, da: { g, _, _ in g }, db: { g, _, _ in -g })
    }

    /// `a * b`, elementwise.
    public static func * (a: Tensor, b: Tensor) -> Tensor {
        binary(a, b, { $0 * $1 }, da: { g, _, y in g * y }, db: { g, x, _ in g * x })
    }

    /// `a / b`, elementwise.
    public static func / (a: Tensor, b: Tensor) -> Tensor {
        binary(a, b, { $0 / $1 }, da: { g, _, y in g / y }, db: { g, x, y in -g * x / (y * y) })
    }

    /// `a * s` for a constant `s`.
    public static func * (a: Tensor, s: Float) -> Tensor { a.map({ $0 * s }, derivative: { _ in s }) }
    /// `s * a` for a constant `s`.
    public static func * (s: Float, a: Tensor) -> Tensor { a * s }
    /// `a + s` for a constant `s`.
    public static func + (a: Tensor, s: Float) -> Tensor { a.map({ $0 + s }, derivative: { _ in 1 }) }
    /// `a / s` for a constant `s`.
    public static func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }
    /// `-a`.
    public static prefix func - (a: Tensor) -> Tensor { a * -1 }

    /// `x * x`, elementwise.
    public func squared() -> Tensor { map({ $0 * $0 }, derivative: { 2 * $0 }) }

    /// `x ** p`, elementwise, for a constant exponent.
    public func pow(_ p: Float) -> Tensor {
        map({ Foundation.pow($0, p) }, derivative: { p * Foundation.pow($0, p - 1) })
    }

    /// `max(x, 0)`; the gradient at 0 is 0, as in PyTorch.
    public func relu() -> Tensor { traced(.relu, [self]) { reluOp() } }

    private func reluOp() -> Tensor {
        let n = count
        let out = [Float](unsafeUninitializedCapacity: n) { buf, count in
            data.withUnsafeBufferPointer { reluForward($0.baseAddress!, into: buf.baseAddress!, count: n) }
            count = n
        }
        return Tensor.result(out, shape: shape, inputs: [self]) { [self] g in
            let first = grad == nil
            if first { grad = [Float](unsafeUninitializedCapacity: n) { _, count in count = n } }
            // A first gradient is stored, not added: it needs no zero-filled buffer.
            grad!.withUnsafeMutableBufferPointer { dx in
                out.withUnsafeBufferPointer { y in
                    g.withUnsafeBufferPointer { g in
                        reluBackward(output: y.baseAddress!, gradient: g.baseAddress!, into: dx.baseAddress!,
                                     count: n, accumulate: !first)
                    }
                }
            }
        }
    }

    /// Applies `f` elementwise; `derivative(x)` is `f'(x)` at the input value.
    /// `operation` is the public operation's name, for graph capture's errors.
    func map(_ f: (Float) -> Float, derivative: @escaping (Float) -> Float, operation: String = #function) -> Tensor {
        let x = data
        return Tensor.result(x.map(f), shape: shape, inputs: [self], operation: operation) { [self] g in
            guard requiresGrad else { return }
            accumulateGrad { acc in
                for i in 0..<acc.count { acc[i] += g[i] * derivative(x[i]) }
            }
        }
    }

    /// Elementwise binary operation with scalar broadcasting on either side.
    /// `da(g, x, y)` and `db(g, x, y)` give the gradient contributions.
    static func binary(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float,
                       da: @escaping (Float, Float, Float) -> Float,
                       db: @escaping (Float, Float, Float) -> Float, operation: String = #function) -> Tensor {
        let aScalar = a.count == 1 && b.count != 1
        let bScalar = b.count == 1 && a.count != 1
        precondition(aScalar || bScalar || a.shape == b.shape,
                     "elementwise operation on shapes \(a.shape) and \(b.shape): shapes must match or one side must be a scalar")
        let shape = aScalar ? b.shape : a.shape
        let n = shape.reduce(1, *)
        let x = a.data, y = b.data
        var out = [Float](repeating: 0, count: n)
        for i in 0..<n { out[i] = f(x[aScalar ? 0 : i], y[bScalar ? 0 : i]) }
        return Tensor.result(out, shape: shape, inputs: [a, b], operation: operation) { g in
            if a.requiresGrad {
                a.accumulateGrad { acc in
                    for i in 0..<n { acc[aScalar ? 0 : i] += da(g[i], x[aScalar ? 0 : i], y[bScalar ? 0 : i]) }
                }
            }
            if b.requiresGrad {
                b.accumulateGrad { acc in
                    for i in 0..<n { acc[bScalar ? 0 : i] += db(g[i], x[aScalar ? 0 : i], y[bScalar ? 0 : i]) }
                }
            }
        }
    }
}
