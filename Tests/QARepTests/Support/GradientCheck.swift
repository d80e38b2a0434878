import QARep

// Shared helpers for the numerical tests: seeded random data, error measures
// and a central finite-difference gradient checker.

/// `count` floats drawn uniformly from `range` with a seeded SplitMix64.
func randomFloats(_ count: Int, seed: UInt64, in range: ClosedRange<Float> = -1 ... 1) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return randomFloats(count, rng: &rng, in: range)
}

/// `count` floats drawn uniformly from `range`, advancing `rng`.
func randomFloats(_ count: Int, rng: inout SplitMix64, in range: ClosedRange<Float> = -1 ... 1) -> [Float] {
    (0 ..< count).map { _ in range.lowerBound + (range.upperBound - range.lowerBound) * rng.uniformFloat() }
}

/// A tensor of uniform random values from a seeded generator.
func randomTensor(_ shape: [Int], seed: UInt64, in range: ClosedRange<Float> = -1 ... 1,
                  requiresGrad: Bool = true) -> Tensor {
    Tensor(randomFloats(shape.reduce(1, *), seed: seed, in: range), shape: shape, requiresGrad: requiresGrad)
}

/// A tensor whose values have magnitudes in `magnitude` and random signs, so
/// that it keeps away from zero (kinks of ReLU, poles of division).
func randomTensorAwayFromZero(_ shape: [Int], seed: UInt64, magnitude: ClosedRange<Float> = 0.2 ... 1,
                              requiresGrad: Bool = true) -> Tensor {
    var rng = SplitMix64(seed: seed)
    let n = shape.reduce(1, *)
    let values = (0 ..< n).map { _ -> Float in
        let m = magnitude.lowerBound + (magnitude.upperBound - magnitude.lowerBound) * rng.uniformFloat()
        return rng.next() & 1 == 0 ? m : -m
    }
    return Tensor(values, shape: shape, requiresGrad: requiresGrad)
}

/// Largest `|a[i] - b[i]| / max(|b[i]|, floor)`; `floor` keeps near-zero
/// entries from dominating. Infinite when the counts differ or a value is NaN.
func maxRelativeError(_ a: [Float], _ b: [Float], floor: Float = 1e-6) -> Float {
    guard a.count == b.count else { return .infinity }
    var worst: Float = 0
    for i in 0 ..< a.count {
        let e = abs(a[i] - b[i]) / max(abs(b[i]), floor)
        if e.isNaN { return .infinity }
        worst = max(worst, e)
    }
    return worst
}

/// Largest absolute value (0 for an empty array).
func maxAbs(_ a: [Float]) -> Float { a.reduce(0) { max($0, abs($1)) } }

/// `sum(a * b)` in double precision.
func dot(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count, "dot of \(a.count) and \(b.count) values")
    var s = 0.0
    for i in 0 ..< a.count { s += Double(a[i]) * Double(b[i]) }
    return s
}

/// The result of comparing one tensor's analytic gradient with finite differences.
struct GradientComparison: CustomStringConvertible {
    var name: String
    var analytic: [Float]
    var numeric: [Float]
    /// `max |analytic - numeric| / max(|numeric|, 0.05 * max|numeric|, 1e-4)`.
    var error: Float

    var description: String {
        "\(name): error \(error)\n  analytic \(analytic.prefix(8))\n  numeric  \(numeric.prefix(8))"
    }
}

/// Compares the gradients that `backward()` gives for each of `inputs` with
/// central finite differences of the random projection loss
/// `L = sum(f() * r)`, `r` fixed and uniform in [-1, 1].
///
/// `f` must recompute its output from the current values of `inputs` on every
/// call. The projection is summed in double precision; the op itself runs in
/// float, so use `h` around 1e-2 and a tolerance around 1e-2.
///
/// - Returns: one comparison per input, in order.
func compareGradients(_ inputs: [(name: String, tensor: Tensor)], h: Float = 1e-2, seed: UInt64 = 99,
                      _ f: () -> Tensor) -> [GradientComparison] {
    // Analytic.
    for (_, t) in inputs { t.zeroGrad() }
    let out = f()
    let r = randomFloats(out.count, seed: seed)
    let loss = (out * Tensor(r, shape: out.shape)).sum()
    loss.backward()
    let analytic = inputs.map { $0.tensor.grad ?? [Float](repeating: 0, count: $0.tensor.count) }

    // Numeric.
    func projected() -> Double { noGrad { dot(f().data, r) } }
    var results: [GradientComparison] = []
    for (k, (name, t)) in inputs.enumerated() {
        var numeric = [Float](repeating: 0, count: t.count)
        for i in 0 ..< t.count {
            let saved = t.data[i]
            t.data[i] = saved + h
            let plus = projected()
            t.data[i] = saved - h
            let minus = projected()
            t.data[i] = saved
            numeric[i] = Float((plus - minus) / (2 * Double(h)))
        }
        let floor = max(0.05 * maxAbs(numeric), 1e-4)
        results.append(GradientComparison(name: name, analytic: analytic[k], numeric: numeric,
                                          error: maxRelativeError(analytic[k], numeric, floor: floor)))
    }
    for (_, t) in inputs { t.zeroGrad() }
    return results
}
