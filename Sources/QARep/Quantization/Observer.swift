/// Watches values and proposes a real range to quantize, PyTorch's
/// `ObserverBase`: it only observes and computes. `FakeQuantize` owns one
/// per tensor (or per channel) and turns its range into scale and zero point
/// with `QuantScheme.qparams`. One type per method, each with its own
/// settings; `Calibrator.makeObserver(scheme:)` builds them.
public protocol Observer: AnyObject {
    /// The method and its settings: `calibrator.makeObserver(scheme:)` gives
    /// a fresh observer of the same kind.
    var calibrator: Calibrator { get }
    /// The scheme the range will be quantized with (the MSE and entropy
    /// searches depend on its number of levels).
    var scheme: QuantScheme { get }
    /// Observed minimum and maximum (moving averages for the moving-average
    /// observer); `+inf`, `-inf` before the first finite value.
    var minValue: Float { get }
    var maxValue: Float { get }
    /// Records one batch of values; NaN and infinities are ignored.
    func observe(_ values: UnsafeBufferPointer<Float>)
    /// The real range to quantize, `lo <= 0 <= hi`; `(0, 0)` before any observation.
    func range() -> (lo: Float, hi: Float)
    /// Everything observed, as floats for checkpoints: `[min, max]`, then
    /// whatever else the method keeps (a histogram's range and counts).
    var state: [Float] { get }
    /// Restores what `state` produced.
    /// - Throws: `QuantizationError` for a state of the wrong length.
    func restore(_ state: [Float]) throws
}

extension Observer {
    /// Whether any finite value has been observed.
    public var hasObserved: Bool { minValue <= maxValue }

    /// Records one batch of values.
    public func observe(_ values: [Float]) { values.withUnsafeBufferPointer { observe($0) } }

    /// Scale and zero point for the current range.
    public func qparams() -> (scale: Float, zeroPoint: Int32) {
        let r = range()
        return scheme.qparams(lo: r.lo, hi: r.hi)
    }

    /// The observed extremes widened to contain 0.
    var extremes: (lo: Float, hi: Float) {
        hasObserved ? (min(minValue, 0), max(maxValue, 0)) : (0, 0)
    }
}

/// The finite minimum and maximum of `values`, or `nil` if there is none.
func finiteExtremes(_ values: UnsafeBufferPointer<Float>) -> (lo: Float, hi: Float)? {
    var lo = Float.infinity, hi = -Float.infinity
    for v in values where v.isFinite { lo = min(lo, v); hi = max(hi, v) }
    return lo <= hi ? (lo, hi) : nil
}

/// Restores `[min, max]` from an observer state of exactly `expected` values.
func checkedExtremes(_ s: [Float], expected: Int, for calibrator: Calibrator) throws -> (Float, Float) {
    guard s.count == expected else {
        throw QuantizationError("observer state has \(s.count) values, expected \(expected) for \(calibrator.method.rawValue)")
    }
    return (s[0], s[1])
}

/// Running minimum and maximum (PyTorch's `MinMaxObserver`).
public final class MinMaxObserver: Observer {
    public let scheme: QuantScheme
    public private(set) var minValue = Float.infinity
    public private(set) var maxValue = -Float.infinity
    public var calibrator: Calibrator { .minmax }

    public init(scheme: QuantScheme) { self.scheme = scheme }

    public func observe(_ values: UnsafeBufferPointer<Float>) {
        guard let (lo, hi) = finiteExtremes(values) else { return }
        minValue = min(minValue, lo); maxValue = max(maxValue, hi)
    }

    public func range() -> (lo: Float, hi: Float) { extremes }

    public var state: [Float] { [minValue, maxValue] }

    public func restore(_ s: [Float]) throws { (minValue, maxValue) = try checkedExtremes(s, expected: 2, for: calibrator) }
}

/// Exponential moving average of batch minima and maxima (PyTorch's
/// `MovingAverageMinMaxObserver`): the first batch sets the range, each later
/// one moves it by `averagingConstant * (batch - range)`.
public final class MovingAverageMinMaxObserver: Observer {
    public let scheme: QuantScheme
    public let averagingConstant: Float
    public private(set) var minValue = Float.infinity
    public private(set) var maxValue = -Float.infinity
    public var calibrator: Calibrator { .movingAverage(averagingConstant: averagingConstant) }

    public init(scheme: QuantScheme, averagingConstant: Float = 0.01) {
        self.scheme = scheme; self.averagingConstant = averagingConstant
    }

    public func observe(_ values: UnsafeBufferPointer<Float>) {
        guard let (lo, hi) = finiteExtremes(values) else { return }
        if hasObserved {
            minValue += averagingConstant * (lo - minValue)
            maxValue += averagingConstant * (hi - maxValue)
        } else {
            minValue = lo; maxValue = hi
        }
    }

    public func range() -> (lo: Float, hi: Float) { extremes }

    public var state: [Float] { [minValue, maxValue] }

    public func restore(_ s: [Float]) throws { (minValue, maxValue) = try checkedExtremes(s, expected: 2, for: calibrator) }
}
