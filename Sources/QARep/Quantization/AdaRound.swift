import Foundation

/// AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
/// Post-Training Quantization"): rounding each weight to its nearest level is
/// not what minimizes a layer's output error. AdaRound learns, per weight,
/// whether to round down or up, by minimizing the layer's reconstruction
/// error on calibration images:
///
///     W~ = s * clamp(floor(W / s) + h(V), qmin, qmax)
///     h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),  zeta = 1.1, gamma = -0.1
///     loss = sum_c (f(W~; x_q) - f(W; x))^2 / (N * H * W)  +  lambda * sum (1 - |2 h(V) - 1|^beta)
///
/// `f` is the layer with its bias and ReLU; `x_q` the layer's input in the
/// quantized model (earlier layers already rounded, activations
/// fake-quantized), `x` its input in the FP32 model (the paper's asymmetric
/// reconstruction). The regularizer drives every `h(V)` to 0 or 1 while `beta`
/// anneals from 20 to 2 after a warm-up without it; then `h(V) >= 0.5` rounds up.
/// The scales stay the min-max ones, so the rounded weights are stored back
/// as float values on the grid and the rest of the pipeline (simulation,
/// bias correction, conversion, engine) quantizes them to exactly those codes.
public struct AdaRoundOptions: Sendable, Equatable {
    /// Optimization steps per layer (the paper uses 10,000; at 1,000, tiny QARepVGG's W4A8 PTQ gives 91.88% against FP32's 92.13%).
    public var iterations: Int = 1000
    /// Calibration images per step.
    public var batchSize: Int = 32
    /// Adam's learning rate on `V`.
    public var learningRate: Float = 0.01
    /// `lambda`, the weight of the rounding regularizer.
    public var regularization: Float = 0.01
    /// `beta` at the start and the end of its cosine annealing.
    public var betaStart: Float = 20, betaEnd: Float = 2
    /// The fraction of the steps that run without the regularizer.
    public var warmup: Float = 0.2
    /// Seeds the choice of batches.
    public var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        guard iterations >= 1 else { throw QuantizationError("AdaRound needs at least one iteration, got \(iterations)") }
        guard batchSize >= 1 else { throw QuantizationError("AdaRound's batch size must be positive, got \(batchSize)") }
        guard learningRate > 0, learningRate.isFinite else { throw QuantizationError("AdaRound's learning rate must be positive, got \(learningRate)") }
        guard regularization >= 0, regularization.isFinite else { throw QuantizationError("AdaRound's regularization must be >= 0") }
        guard (0..<1).contains(warmup) else { throw QuantizationError("AdaRound's warm-up fraction must be in [0, 1), got \(warmup)") }
        guard betaStart >= betaEnd, betaEnd > 0 else { throw QuantizationError("AdaRound's beta must anneal downward to a positive value") }
    }

    /// `beta` at step `t` of `iterations`, and whether the regularizer is on.
    func beta(at t: Int) -> Float? {
        let start = Int(warmup * Float(iterations))
        guard t >= start else { return nil }
        let progress = Float(t - start) / Float(max(iterations - start, 1))
        return betaEnd + 0.5 * (betaStart - betaEnd) * (1 + cos(Float.pi * progress))
    }
}

extension AdaRoundOptions {
    /// The checks both model kinds make before AdaRound, and the calibration
    /// images as batches: valid options, at least one image, calibrated
    /// activation quantizers, and min-max (not learned) weight scales.
    /// - Throws: `QuantizationError` naming the first check that fails.
    func calibrationBatches(_ images: any Dataset, activations: [FakeQuantize], weights: [FakeQuantize]) throws -> [Tensor] {
        try validate()
        guard images.count > 0 else { throw QuantizationError("AdaRound needs at least one image, got 0") }
        guard activations.allSatisfy({ $0.fakeQuantEnabled && $0.observers.allSatisfy(\.hasObserved) }) else {
            throw QuantizationError("AdaRound needs a calibrated model: calibrate first")
        }
        guard !weights.contains(where: \.learnsScale) else {
            throw QuantizationError("AdaRound rounds against min-max scales; this model learns its weight scales (LSQ)")
        }
        let loader = DataLoader(dataset: images, batchSize: batchSize, shuffle: false, augment: false, seed: 0)
        return loader.batches(epoch: 0).map { Tensor($0.images, shape: [$0.count, $0.channels, $0.height, $0.width]) }
    }
}

/// What AdaRound did to one layer: its reconstruction error (the loss's first
/// term, on all calibration images) with nearest rounding and with the
/// learned rounding, the fraction of weights that round the other way, and
/// whether the learned rounding was kept (it is, unless it reconstructs worse).
public struct AdaRoundLayerReport: Codable, Sendable, Equatable {
    public var layer: String
    public var nearestError: Double
    public var adaRoundError: Double
    public var flipped: Double
    public var applied: Bool
}

/// The pieces of AdaRound: the rectified sigmoid `h`, the rounding
/// regularizer, their derivatives, and the rounding of one layer.
public enum AdaRound {
    /// The stretch of the rectified sigmoid: `h` reaches 0 and 1 at finite `V`.
    public static let zeta: Float = 1.1, gamma: Float = -0.1

    /// `h(V)`, the fraction of a level added to `floor(W / s)`.
    public static func rectifiedSigmoid(_ v: Float) -> Float { min(max(sigmoid(v) * (zeta - gamma) + gamma, 0), 1) }

    /// `dh/dV`: zero where `h` is clamped.
    public static func rectifiedSigmoidDerivative(_ v: Float) -> Float {
        let s = sigmoid(v), h = s * (zeta - gamma) + gamma
        return h > 0 && h < 1 ? (zeta - gamma) * s * (1 - s) : 0
    }

    /// `1 - |2 h(V) - 1|^beta`: 0 when `h` is 0 or 1, 1 when it is one half.
    public static func regularizer(_ v: Float, beta: Float) -> Float { 1 - Foundation.pow(abs(2 * rectifiedSigmoid(v) - 1), beta) }

    /// The regularizer's derivative in `V`.
    public static func regularizerDerivative(_ v: Float, beta: Float) -> Float {
        let e = 2 * rectifiedSigmoid(v) - 1
        guard e != 0 else { return 0 }
        return -beta * Foundation.pow(abs(e), beta - 1) * (e > 0 ? 1 : -1) * 2 * rectifiedSigmoidDerivative(v)
    }

    private static func sigmoid(_ v: Float) -> Float { 1 / (1 + exp(-v)) }
}

extension AdaRound {
    /// Learns the rounding of one layer's weight.
    /// - Parameters:
    ///   - weight: the float weight, output channels on axis 0.
    ///   - scales: its per-channel scales; `qmax` its largest code (narrow range: `qmin = -qmax`).
    ///   - quantizedInputs, floatInputs: the layer's inputs in the quantized and the FP32 model, batch by batch.
    ///   - layer: the layer's float function of an input and a weight (bias and ReLU included).
    /// - Returns: the rounded weight (codes times scales), and the report.
    public static func roundLayer(weight: Tensor, scales: [Float], qmax: Int32, quantizedInputs: [Tensor], floatInputs: [Tensor],
                                  name: String, options: AdaRoundOptions,
                                  layer: (Tensor, Tensor) -> Tensor) -> (weight: [Float], report: AdaRoundLayerReport) {
        let channels = scales.count, per = weight.count / channels
        let w = weight.data, q = Float(qmax)
        // floor(W / s), and V initialized so that h(V) is the remainder: at the
        // start W~ = W (up to the clamp). The weight that sets a channel's scale
        // (|W / s| = qmax) keeps its level, so that the scale does not move.
        var floors = [Float](repeating: 0, count: w.count), v = [Float](repeating: 0, count: w.count)
        for c in 0..<channels {
            let s = scales[c]
            let extreme = (c * per..<(c + 1) * per).max { abs(w[$0]) < abs(w[$1]) }!
            for i in c * per..<(c + 1) * per {
                let x = min(max(w[i] / s, -q), q)
                if i == extreme {
                    floors[i] = x.rounded(.toNearestOrEven); v[i] = -20     // h = 0, no gradient
                    continue
                }
                floors[i] = x.rounded(.down)
                let rest = min(max(x - floors[i], 0.01), 0.99)
                v[i] = -log((zeta - gamma) / (rest - gamma) - 1)
            }
        }
        let floorTensor = Tensor(floors, shape: weight.shape), scaleTensor = Tensor(scales, shape: [channels])
        let targets = noGrad { floatInputs.map { layer($0, weight) } }
        /// `s * (floor + h)` (levels stay in [-qmax, qmax]: floor + h <= qmax except at the kept extremes).
        func rounded(_ h: Tensor) -> Tensor { scaleChannels(floorTensor + h, by: scaleTensor) }
        func reconstructionError(_ wq: Tensor) -> Double {
            noGrad {
                var sum = 0.0, count = 0
                for (x, t) in zip(quantizedInputs, targets) {
                    let d = layer(x, wq).data
                    for (a, b) in zip(d, t.data) { sum += Double(a - b) * Double(a - b) }
                    count += t.count / channels
                }
                return sum / Double(max(count, 1))
            }
        }
        let nearest = Tensor(zip(w.indices, w).map { i, x in
            min(max((x / scales[i / per]).rounded(.toNearestOrEven), -q), q) * scales[i / per]
        }, shape: weight.shape)

        let parameter = Tensor(v, shape: weight.shape, requiresGrad: true)
        let adam = AdamW(groups: [ParameterGroup(parameters: [("v", parameter)], weightDecay: 0)], learningRate: options.learningRate)
        var rng = SplitMix64(seed: options.seed)
        let batches = quantizedInputs.count
        for t in 0..<options.iterations {
            let b = Int(rng.next() % UInt64(batches))
            let h = parameter.map(rectifiedSigmoid, derivative: rectifiedSigmoidDerivative)
            let y = layer(quantizedInputs[b], rounded(h))
            let d = y - targets[b]
            // Squares summed over channels, averaged over images and pixels.
            var loss = (d * d).sum() * (Float(channels) / Float(d.count))
            if let beta = options.beta(at: t), options.regularization > 0 {
                let reg = parameter.map({ regularizer($0, beta: beta) }, derivative: { regularizerDerivative($0, beta: beta) })
                loss = loss + reg.sum() * options.regularization
            }
            adam.zeroGrad()
            loss.backward()
            adam.step()
        }
        let hard = Tensor(parameter.data.map { rectifiedSigmoid($0) >= 0.5 ? 1 : 0 }, shape: weight.shape)
        let result = noGrad { rounded(hard) }
        let flipped = zip(result.data, nearest.data).filter { $0 != $1 }.count
        let report = AdaRoundLayerReport(layer: name, nearestError: reconstructionError(nearest),
                                         adaRoundError: reconstructionError(result), flipped: Double(flipped) / Double(w.count),
                                         applied: true)
        return (result.data, report)
    }
}

extension QuantizedNet {
    /// AdaRound for every unit and the head, in order, on a calibrated PTQ
    /// model: each layer's rounding is learned against the FP32 model's
    /// output with the inputs the quantized model gives it (earlier layers
    /// already rounded), and the rounded weight replaces the float one. A
    /// layer whose learned rounding reconstructs worse than nearest rounding
    /// on the calibration images keeps nearest rounding. Run bias correction
    /// after it, not before.
    /// - Returns: one report per layer (units, then `linear`).
    /// - Throws: `QuantizationError` for a model not in the folded form (PTQ's:
    ///   no post-BNs, no branches), one never calibrated, no images, or bad options.
    @discardableResult
    public func adaRound(on images: any Dataset, options: AdaRoundOptions = AdaRoundOptions()) throws -> [AdaRoundLayerReport] {
        let convs = try foldedConvolutions(for: "AdaRound")
        let batches = try options.calibrationBatches(images, activations: units.map(\.inputQuant) + [linear.featureQuant, linear.inputQuant],
                                                     weights: units.map(\.weightQuant) + [linear.weightQuant])
        let wasTraining = training
        eval()
        defer { train(wasTraining) }
        var quantized = batches, float = batches
        var reports: [AdaRoundLayerReport] = []
        var options = options
        for (i, unit) in units.enumerated() {
            // The bias as a constant: learning the rounding must leave no gradient on the model.
            let conv = convs[i], bias = conv.bias!.detached()
            let inputs = noGrad { quantized.map { unit.inputQuant($0) } }
            let layer = { (x: Tensor, w: Tensor) in conv2d(x, weight: w, bias: bias, stride: conv.stride, padding: conv.padding).relu() }
            let next = noGrad { float.map { layer($0, conv.weight) } }
            let scales = minMaxWeightScales(conv.weight.data, channels: conv.outChannels, scheme: unit.weightQuant.scheme)
            options.seed = options.seed &+ 1
            var (w, report) = AdaRound.roundLayer(weight: conv.weight, scales: scales, qmax: unit.weightQuant.scheme.qmax, quantizedInputs: inputs,
                                       floatInputs: float, name: unitNames[i], options: options, layer: layer)
            report.applied = report.adaRoundError <= report.nearestError
            if report.applied { conv.weight.assign(w) }
            reports.append(report)
            float = next
            quantized = noGrad {
                inputs.map {
                    fakeQuantizedConvolution($0, inputQuant: unit.inputQuant, source: conv, weightQuant: unit.weightQuant, postBN: nil, relu: true)
                }
            }
        }
        let pooledQuantized = noGrad { quantized.map { linear.inputQuant(globalAveragePool(linear.featureQuant($0))) } }
        let pooledFloat = noGrad { float.map { globalAveragePool($0) } }
        let headBias = linear.bias.detached()
        let head = { (x: Tensor, w: Tensor) in QARep.linear(x, weight: w, bias: headBias) }
        let scales = minMaxWeightScales(linear.weight.data, channels: linear.weight.shape[0], scheme: linear.weightQuant.scheme)
        options.seed = options.seed &+ 1
        var (w, report) = AdaRound.roundLayer(weight: linear.weight, scales: scales, qmax: linear.weightQuant.scheme.qmax,
                                   quantizedInputs: pooledQuantized, floatInputs: pooledFloat, name: "linear", options: options, layer: head)
        report.applied = report.adaRoundError <= report.nearestError
        if report.applied { linear.weight.assign(w) }
        reports.append(report)
        return reports
    }
}
