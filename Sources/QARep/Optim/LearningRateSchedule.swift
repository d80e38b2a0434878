import Foundation

/// A learning-rate schedule: a pure function of the position in training,
/// so a resumed run gets exactly the rates it would have had.
///
/// - `constant`: `base`.
/// - `warmupCosine`: linear from `base * warmupStartFactor` to `base` over
///   `warmup` units, then cosine from `base` down to `minimum` at `total`.
/// - `step`: `base * gamma^(floor(t / stepSize))`.
///
/// The unit is steps or epochs; with epochs the rate is constant within an
/// epoch (PyTorch's schedulers stepped once per epoch).
public struct LearningRateSchedule: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case constant, warmupCosine = "warmup-cosine", step }
    public enum Unit: String, Codable, Sendable { case step, epoch }

    public var kind: Kind
    public var unit: Unit
    public var base: Float
    public var minimum: Float = 0
    public var warmup: Int = 0
    public var warmupStartFactor: Float = 0
    public var total: Int = 0
    public var stepSize: Int = 1
    public var gamma: Float = 0.1

    public static func constant(_ lr: Float) -> Self { .init(kind: .constant, unit: .step, base: lr) }

    public static func warmupCosine(base: Float, warmup: Int, total: Int, minimum: Float = 0,
                                    warmupStartFactor: Float = 0, unit: Unit = .step) -> Self {
        precondition(total > 0 && warmup >= 0 && warmup <= total, "warm-up must lie within the schedule")
        return .init(kind: .warmupCosine, unit: unit, base: base, minimum: minimum, warmup: warmup,
                     warmupStartFactor: warmupStartFactor, total: total)
    }

    public static func step(base: Float, stepSize: Int, gamma: Float, unit: Unit = .epoch) -> Self {
        precondition(stepSize > 0, "step size must be positive")
        return .init(kind: .step, unit: unit, base: base, stepSize: stepSize, gamma: gamma)
    }

    /// The rate for global step `step` (0-based) with `stepsPerEpoch` steps an epoch.
    public func learningRate(step: Int, stepsPerEpoch: Int) -> Float {
        let t: Double = unit == .step ? Double(step) : Double(step / max(stepsPerEpoch, 1))
        switch kind {
        case .constant:
            return base
        case .step:
            return base * Foundation.pow(gamma, Float(Int(t) / stepSize))
        case .warmupCosine:
            if t < Double(warmup) {
                // Linear from base*startFactor at t=0 toward base at t=warmup.
                let f = Double(warmupStartFactor) + (1 - Double(warmupStartFactor)) * t / Double(warmup)
                return Float(Double(base) * f)
            }
            let span = Double(max(total - warmup, 1))
            let progress = min(max((t - Double(warmup)) / span, 0), 1)
            return minimum + (base - minimum) * Float(0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}
