/// Fake quantization of one tensor with its own observer(s), PyTorch's
/// `FakeQuantize`: two independent switches, one to observe (calibrate or
/// keep tracking ranges) and one to fake-quantize, which map onto
/// calibrate -> QAT -> freeze.
///
/// `scale` and `zero_point` are buffers (one entry per channel, or one), so
/// they travel in checkpoints under `<path>.scale` and `<path>.zero_point`.
public final class FakeQuantize: Module, Layer {
    public let scheme: QuantScheme
    /// One observer per tensor, or one per channel (axis 0) for per-channel schemes.
    public private(set) var observers: [Observer]
    /// Observe the values that pass (calibration, QAT range tracking).
    public var observerEnabled = true
    /// Replace the values by their quantized-dequantized version.
    public var fakeQuantEnabled = false
    /// Forget earlier observations before each new one, so the range is that
    /// of the current tensor: for weights, whose range is a function of the
    /// weights alone, so the deployed integers equal those QAT evaluated.
    public let tracksCurrentValues: Bool
    public let scale: Tensor
    @Key("zero_point") public var zeroPoint: Tensor

    public init(scheme: QuantScheme, calibrator: Calibrator, channels: Int = 1, tracksCurrentValues: Bool = false,
                percentile: Double = 99.99) {
        let n = scheme.perChannel ? channels : 1
        self.scheme = scheme
        self.tracksCurrentValues = tracksCurrentValues
        observers = (0..<n).map { _ in Observer(calibrator, scheme: scheme, percentile: percentile) }
        scale = Tensor(repeating: 1, shape: [n])
        _zeroPoint.wrappedValue = Tensor(repeating: 0, shape: [n])
    }

    /// Scales as floats.
    public var scales: [Float] { scale.data }
    /// Zero points as integers.
    public var zeroPoints: [Int32] { zeroPoint.data.map { Int32($0) } }

    /// Observes `values` (all channels), then refreshes `scale` and `zero_point`.
    public func observe(_ values: [Float]) {
        if tracksCurrentValues { resetObservers() }
        let per = values.count / observers.count
        values.withUnsafeBufferPointer { buf in
            for (c, o) in observers.enumerated() {
                o.observe(UnsafeBufferPointer(rebasing: buf[(c * per)..<((c + 1) * per)]))
            }
        }
        updateQParams()
    }

    /// Recomputes `scale` and `zero_point` from the observers.
    public func updateQParams() {
        for (c, o) in observers.enumerated() where o.hasObserved {
            let (s, z) = o.qparams()
            scale.data[c] = s
            zeroPoint.data[c] = Float(z)
        }
    }

    /// Replaces the observers by moving-average ones that start from the
    /// current ranges: QAT keeps tracking activations smoothly after a
    /// calibration with any method.
    public func switchToMovingAverage(averagingConstant: Float = 0.01) {
        observers = observers.map { old in
            let o = Observer(.movingAverage, scheme: scheme, averagingConstant: averagingConstant)
            if old.hasObserved {
                let r = old.range()
                o.observe([r.lo, r.hi])
            }
            return o
        }
        updateQParams()
    }

    func resetObservers() {
        observers = observers.map { Observer($0.calibrator, scheme: scheme, percentile: $0.percentile, averagingConstant: $0.averagingConstant) }
    }

    /// Whether this call observes: when enabled, and either calibrating
    /// (fake quantization off), training, or tracking weights. Evaluating a
    /// fake-quantized model never moves its activation ranges.
    var observesNow: Bool { observerEnabled && (tracksCurrentValues || training || !fakeQuantEnabled) }

    /// Observes (if enabled) and fake-quantizes (if enabled) `x`.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        if observesNow { observe(x.data) }
        guard fakeQuantEnabled else { return x }
        return fakeQuantize(x, scales: scales, zeroPoints: zeroPoints, qmin: scheme.qmin, qmax: scheme.qmax)
    }
}
