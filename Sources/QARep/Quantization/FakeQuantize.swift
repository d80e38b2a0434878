/// Fake quantization of one tensor with its own observer(s), PyTorch's
/// `FakeQuantize`: two independent switches, one to observe (calibrate or
/// keep tracking ranges) and one to fake-quantize, which map onto
/// calibrate -> QAT -> freeze.
///
/// `scale` and `zero_point` are buffers (one entry per channel, or one), so
/// they travel in checkpoints under `<path>.scale` and `<path>.zero_point`.
/// They are computed from the observers on demand (when read, or when the
/// module's state is read), not after every observation: a histogram
/// calibrator's threshold search runs once per calibration, not per batch.
public final class FakeQuantize: Module, Layer {
    public let scheme: QuantScheme
    /// One observer per tensor, or one per channel (axis 0) for per-channel schemes.
    public private(set) var observers: [any Observer]
    /// Observe the values that pass (calibration, QAT range tracking).
    public var observerEnabled = true
    /// Replace the values by their quantized-dequantized version.
    public var fakeQuantEnabled = false
    /// Forget earlier observations before each new one, so the range is that
    /// of the current tensor: for weights, whose range is a function of the
    /// weights alone, so the deployed integers equal those QAT evaluated.
    public let tracksCurrentValues: Bool
    let scale: Tensor
    @Key("zero_point") var zeroPoint: Tensor
    /// Observations since `scale` and `zero_point` were last computed.
    private var qparamsStale = false
    /// Whether `scale` is a trained parameter (LSQ) instead of an observer's output.
    public private(set) var learnsScale = false
    /// The smallest each learned step may become: 1% of its calibrated value.
    /// A buffer (`step_floor`) of LSQ quantizers only, so a resumed run keeps it.
    @Key("step_floor") private var stepFloor: Tensor? = nil

    /// - Parameters:
    ///   - calibrator: the observers' method and settings.
    ///   - channels: the size of axis 0, for a per-channel scheme.
    public init(scheme: QuantScheme, calibrator: Calibrator, channels: Int = 1, tracksCurrentValues: Bool = false) {
        let n = scheme.perChannel ? channels : 1
        self.scheme = scheme
        self.tracksCurrentValues = tracksCurrentValues
        observers = (0..<n).map { _ in calibrator.makeObserver(scheme: scheme) }
        scale = Tensor(repeating: 1, shape: [n])
        _zeroPoint.wrappedValue = Tensor(repeating: 0, shape: [n])
    }

    /// The observers' method and settings.
    public var calibrator: Calibrator { observers[0].calibrator }

    /// Scales as floats, current with every observation so far (learned
    /// steps below their floor read as the floor, as the forward pass uses them).
    public var scales: [Float] {
        updateQParamsIfStale()
        guard let stepFloor else { return scale.data }
        return zip(scale.data, stepFloor.data).map { max($0, $1) }
    }

    /// Turns the scale into a trainable parameter, starting from its current
    /// (calibrated) value, for learned step size quantization (LSQ, Esser et
    /// al. 2020): the observers stop, and the forward pass gives the scale a
    /// gradient (`learnedStepFakeQuantize`). Checkpoints keep it under the
    /// same `scale` key. A step is kept at or above 1% of its starting value:
    /// at 8 bits a step is about 1/127 of its weights' range, and one SGD step
    /// at a QAT learning rate can drive it through zero, which would silence
    /// its channel and leave its bias no int32 code. An asymmetric scheme's
    /// zero point stays at its calibrated value (0 after a ReLU, as the
    /// paper's unsigned activations have it), so the step alone learns.
    public func learnScale() {
        updateQParamsIfStale()
        learnsScale = true
        stepFloor = Tensor(scale.data.map { max($0 * 0.01, 1e-8) }, shape: scale.shape)
        observerEnabled = false
        scale.requiresGrad = true
    }

    /// Zero points as integers, current with every observation so far.
    public var zeroPoints: [Int32] {
        updateQParamsIfStale()
        return zeroPoint.data.map { Int32($0) }
    }

    /// Observes `values` (all channels); `scale` and `zero_point` follow when next read.
    /// In a data-parallel job, activation ranges tracked by min/max observers
    /// are those of the whole global batch, so every rank keeps the same
    /// scales (weights are the same on every rank and need no exchange).
    public func observe(_ values: [Float]) {
        if tracksCurrentValues { resetObservers() }
        let per = values.count / observers.count
        if DataParallel.isDistributed && !tracksCurrentValues && observersKeepOnlyExtremes {
            observeGlobalExtremes(values, per: per)
            qparamsStale = true
            return
        }
        forEachChannel(of: values, per: per) { c, channel in observers[c].observe(channel) }
        qparamsStale = true
    }

    /// Calls `body` with each channel's `per` values of `values` (one channel
    /// for a per-tensor scheme), in order.
    private func forEachChannel(of values: [Float], per: Int, _ body: (Int, UnsafeBufferPointer<Float>) -> Void) {
        values.withUnsafeBufferPointer { buf in
            for c in 0..<observers.count { body(c, UnsafeBufferPointer(rebasing: buf[(c * per)..<((c + 1) * per)])) }
        }
    }

    /// Whether observing a batch's finite minimum and maximum is the same as
    /// observing the batch (true of the min/max observers, not of histograms,
    /// which only calibrate, on the same images on every rank).
    private var observersKeepOnlyExtremes: Bool {
        observers[0] is MinMaxObserver || observers[0] is MovingAverageMinMaxObserver
    }

    /// Observes each channel's extremes over every rank's `values`.
    private func observeGlobalExtremes(_ values: [Float], per: Int) {
        let n = observers.count
        // [-min..., max...], so one all-reduce (max) gives both.
        var extremes = [Float](repeating: -.infinity, count: 2 * n)
        forEachChannel(of: values, per: per) { c, channel in
            if let (lo, hi) = finiteExtremes(channel) { extremes[c] = -lo; extremes[n + c] = hi }
        }
        DataParallel.maximum(&extremes)
        for (c, o) in observers.enumerated() where -extremes[c] <= extremes[n + c] {
            o.observe([-extremes[c], extremes[n + c]])
        }
    }

    /// Recomputes `scale` and `zero_point` from the observers that have seen values.
    public func updateQParams() {
        guard !learnsScale else { qparamsStale = false; return }
        for (c, o) in observers.enumerated() where o.hasObserved {
            let (s, z) = o.qparams()
            scale.data[c] = s
            zeroPoint.data[c] = Float(z)
        }
        qparamsStale = false
    }

    private func updateQParamsIfStale() { if qparamsStale { updateQParams() } }

    /// Checkpoints read `scale` and `zero_point` as tensors: bring them up to date first.
    public override func namedTensors() -> [(name: String, tensor: Tensor)] {
        updateQParamsIfStale()
        return super.namedTensors()
    }

    /// Replaces the observers by moving-average ones that start from the
    /// current ranges: QAT keeps tracking activations smoothly after a
    /// calibration with any method.
    public func switchToMovingAverage(averagingConstant: Float = 0.01) {
        updateQParamsIfStale()
        observers = observers.map { old in
            let o = MovingAverageMinMaxObserver(scheme: scheme, averagingConstant: averagingConstant)
            if old.hasObserved {
                let r = old.range()
                o.observe([r.lo, r.hi])
            }
            return o
        }
        updateQParams()
    }

    func resetObservers() {
        observers = observers.map { $0.calibrator.makeObserver(scheme: scheme) }
    }

    /// Whether this call observes: when enabled, and either calibrating
    /// (fake quantization off), training, or tracking weights. Evaluating a
    /// fake-quantized model never moves its activation ranges.
    var observesNow: Bool { !learnsScale && observerEnabled && (tracksCurrentValues || training || !fakeQuantEnabled) }

    /// Observes (if enabled) and fake-quantizes (if enabled) `x`.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        if observesNow { observe(x.data) }
        guard fakeQuantEnabled else { return x }
        if learnsScale {
            // Training keeps every step at or above its floor, in place (as
            // PyTorch's learnable fake quantization clamps its scale);
            // evaluation reads the floored steps and changes nothing.
            let floored = scales
            if training && floored != scale.data { scale.data = floored }
            let step = training ? scale : Tensor(floored, shape: scale.shape)
            // The paper's gradient scale: 1 / sqrt(N * Q_P), N the weights of a
            // channel, or an activation's features per example; Q_P the levels
            // above the zero point (qmax for symmetric and post-ReLU schemes).
            let served = tracksCurrentValues ? x.count / scale.count : x.count / max(x.shape.first ?? 1, 1)
            let zeroPoints = zeroPoints, positiveLevels = max(scheme.qmax - zeroPoints[0], 1)
            return learnedStepFakeQuantize(x, step: step, zeroPoints: scheme.symmetric ? nil : zeroPoints,
                                           qmin: scheme.qmin, qmax: scheme.qmax,
                                           gradScale: 1 / (Float(served) * Float(positiveLevels)).squareRoot())
        }
        return fakeQuantize(x, scales: scales, zeroPoints: zeroPoints, qmin: scheme.qmin, qmax: scheme.qmax)
    }
}
