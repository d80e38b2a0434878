import Foundation
import QARepKernels

/// One deployed integer convolution with fused bias, requantization and ReLU:
///
///     acc[o, p] = sum_k (x_q[k, p] - z_in) * w_q[o, k] + bias_q[o]      (int32)
///     y_q[o, p] = clamp(roundHalfEven(acc * M[o]) + z_out, z_out, qmax),  M[o] = s_in * s_w[o] / s_out
///
/// `bias_q = roundHalfEven(b / (s_in * s_w[o]))`; ReLU is the clamp's lower bound.
/// Weights of `weightBits` < 8 bits are codes in `[-(2^(b-1) - 1), 2^(b-1) - 1]`
/// held in `Int8`; `qmax` is the activation scheme's, so a 4-bit activation
/// is a code in `[-8, 7]` (or `[0, 15]`) held in a byte: the arithmetic is the
/// 8-bit one, exactly.
public struct Int8Conv: Sendable, Equatable {
    public var name: String
    public var inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int, padding: Int
    /// `[O, I, k, k]`, in `[-127, 127]`.
    public var weight: [Int8]
    /// Per output channel.
    public var weightScales: [Float]
    /// Per output channel, in units of `s_in * s_w[o]`.
    public var bias: [Int32]
    public var inputScale: Float, inputZeroPoint: Int32
    public var outputScale: Float, outputZeroPoint: Int32
    /// The width of the weight codes, 2 to 8.
    public var weightBits: Int = 8
    /// The widths of the input and output activation codes where they differ
    /// from the model's activation scheme (a first layer kept at 8 bits);
    /// `nil`: the scheme's width.
    public var inputBits: Int? = nil, outputBits: Int? = nil

    /// `M[o] = s_in * s_w[o] / s_out`.
    public var multipliers: [Float] { weightScales.map { inputScale * $0 / outputScale } }
}

/// The integer head: average pooling of the last activation, requantized to
/// the linear layer's input scale, then an int8 linear layer whose int32
/// accumulators are dequantized into float logits:
///
///     pooled_q[n, c] = clamp(roundHalfEven(sum_p (y_q - z_feat) * s_feat / (HW * s_in)) + z_in)
///     logits[n, k]   = (sum_c (pooled_q - z_in) * w_q[k, c] + bias_q[k]) * s_in * s_w[k]
public struct Int8Head: Sendable, Equatable {
    public var featureScale: Float, featureZeroPoint: Int32
    public var inputScale: Float, inputZeroPoint: Int32
    public var inFeatures: Int, classes: Int
    /// `[classes, inFeatures]`, in `[-127, 127]`.
    public var weight: [Int8]
    public var weightScales: [Float]
    public var bias: [Int32]
    /// The width of the weight codes, 2 to 8.
    public var weightBits: Int = 8
    /// The widths of the feature and pooled input codes where they differ
    /// from the model's activation scheme (a classifier kept at 8 bits);
    /// `nil`: the scheme's width.
    public var featureBits: Int? = nil, inputBits: Int? = nil
}

/// A deployable integer RepVGG-family classifier: the input quantization, the
/// folded 3x3 convolutions, and the integer head, at 8 bits or fewer (codes
/// always in 8-bit containers). Produced by
/// `QuantizedNet.convertToInt8()`, run by `Int8Engine`, stored as a native
/// safetensors file (`write(to:)` / `read(from:)`).
public struct Int8Model: Sendable, Equatable {
    public var config: ModelConfig
    /// The activation scheme (signed symmetric or unsigned asymmetric, 2 to 8 bits).
    public var activation: QuantScheme
    public var convs: [Int8Conv]
    public var head: Int8Head

    /// Largest channel count and kernel side a layer may declare: beyond any
    /// real model, small enough that sizes computed from them cannot overflow.
    static let maxChannels = 1 << 20, maxKernel = 64

    /// The activation scheme at `bits` (`nil`: its own width): the codes of one tensor.
    public func activationScheme(bits: Int?) -> QuantScheme {
        var scheme = activation
        scheme.bits = bits ?? activation.bits
        return scheme
    }

    /// Checks every invariant the engine relies on; the message names the layer.
    public func validate() throws {
        do { try activation.validate() } catch let e as QuantizationError { throw QuantizationError("INT8 model: activations: \(e)") }
        guard !convs.isEmpty else { throw QuantizationError("INT8 model has no convolutions") }
        for (i, c) in convs.enumerated() {
            try Self.validate(c, input: try scheme(c.inputBits, "layer \(c.name) input"),
                              output: try scheme(c.outputBits, "layer \(c.name) output"))
            if i > 0 {
                let p = convs[i - 1]
                guard p.outChannels == c.inChannels else {
                    throw QuantizationError("INT8 model: layer \(c.name) takes \(c.inChannels) channels but \(p.name) gives \(p.outChannels)")
                }
                guard p.outputScale == c.inputScale, p.outputZeroPoint == c.inputZeroPoint else {
                    throw QuantizationError("INT8 model: inconsistent scales: \(p.name) writes scale \(p.outputScale) zero point \(p.outputZeroPoint), \(c.name) reads scale \(c.inputScale) zero point \(c.inputZeroPoint)")
                }
                guard activationScheme(bits: p.outputBits) == activationScheme(bits: c.inputBits) else {
                    throw QuantizationError("INT8 model: inconsistent widths: \(p.name) writes \(activationScheme(bits: p.outputBits).bits)-bit codes, \(c.name) reads \(activationScheme(bits: c.inputBits).bits)-bit codes")
                }
            }
        }
        try validateHead()
    }

    /// The activation scheme at `bits`, checked; `what` names the tensor.
    private func scheme(_ bits: Int?, _ what: String) throws -> QuantScheme {
        let scheme = activationScheme(bits: bits)
        do { try scheme.validate() } catch let e as QuantizationError { throw QuantizationError("INT8 model: \(what): \(e)") }
        return scheme
    }

    static func checkScale(_ s: Float, _ what: String) throws {
        guard s.isFinite && s > 0 else { throw QuantizationError("INT8 model: \(what) is \(s), must be a positive finite number") }
    }

    static func checkZero(_ z: Int32, _ what: String, activation: QuantScheme) throws {
        guard z >= activation.qmin && z <= activation.qmax else {
            throw QuantizationError("INT8 model: \(what) \(z) is outside [\(activation.qmin), \(activation.qmax)]")
        }
        if activation.symmetric && z != 0 { throw QuantizationError("INT8 model: \(what) is \(z), must be 0 for symmetric activations") }
    }

    /// Weight codes are narrow-range signed `bits`-bit integers, `bits` in 2...8.
    static func validateWeightCodes(_ w: [Int8], bits: Int, _ error: (String) -> QuantizationError) throws {
        guard (2...8).contains(bits) else { throw error("weight width must be 2 to 8 bits, got \(bits)") }
        let qmax = Int8((1 << (bits - 1)) - 1)
        guard w.allSatisfy({ (-qmax...qmax).contains($0) }) else { throw error("weights must be \(bits)-bit codes in [\(-qmax), \(qmax)]") }
    }

    /// The invariants of one convolution the integer kernels rely on, with
    /// its input and output activation schemes.
    static func validate(_ c: Int8Conv, input: QuantScheme, output: QuantScheme) throws {
        // Bounds first, so that no product below can overflow on a corrupt file.
        guard (1...Self.maxChannels).contains(c.inChannels), (1...Self.maxChannels).contains(c.outChannels),
              (1...Self.maxKernel).contains(c.kernelSize), (1...Self.maxKernel).contains(c.stride),
              (0...Self.maxKernel).contains(c.padding) else {
            throw QuantizationError("INT8 model: layer \(c.name): bad geometry (\(c.inChannels) -> \(c.outChannels) channels, "
                                    + "kernel \(c.kernelSize), stride \(c.stride), padding \(c.padding))")
        }
        let k = c.inChannels * c.kernelSize * c.kernelSize
        guard c.weight.count == c.outChannels * k, c.weightScales.count == c.outChannels, c.bias.count == c.outChannels else {
            throw QuantizationError("INT8 model: layer \(c.name): weight, scale or bias sizes do not match \(c.outChannels) output channels")
        }
        try validateWeightCodes(c.weight, bits: c.weightBits) { QuantizationError("INT8 model: layer \(c.name): \($0)") }
        // The int32 accumulator holds the bias plus at most K products of |x - z| <= 255 and |w| <= 127.
        let headroom = Int64(Int32.max) - 255 * 127 * Int64(k)
        if let big = c.bias.first(where: { Int64($0).magnitude > headroom }) {
            throw QuantizationError("INT8 model: layer \(c.name): bias \(big) leaves no int32 headroom for \(k) products (input scale \(c.inputScale) too small for this layer)")
        }
        guard c.stride >= 1, c.padding >= 0, c.kernelSize >= 1 else { throw QuantizationError("INT8 model: layer \(c.name): bad geometry") }
        try checkScale(c.inputScale, "layer \(c.name) input scale")
        try checkScale(c.outputScale, "layer \(c.name) output scale")
        for s in c.weightScales { try checkScale(s, "layer \(c.name) weight scale") }
        try checkZero(c.inputZeroPoint, "layer \(c.name) input zero point", activation: input)
        try checkZero(c.outputZeroPoint, "layer \(c.name) output zero point", activation: output)
    }

    private func validateHead() throws {
        func checkScale(_ s: Float, _ what: String) throws { try Self.checkScale(s, what) }
        let last = convs.last!, h = head
        let features = try scheme(h.featureBits, "head features"), input = try scheme(h.inputBits, "head input")
        guard (1...Self.maxChannels).contains(h.classes) else { throw QuantizationError("INT8 model: head has \(h.classes) classes") }
        guard h.inFeatures == last.outChannels, h.weight.count == h.classes * h.inFeatures,
              h.weightScales.count == h.classes, h.bias.count == h.classes else {
            throw QuantizationError("INT8 model: head sizes do not match \(last.outChannels) features and \(h.classes) classes")
        }
        try Self.validateWeightCodes(h.weight, bits: h.weightBits) { QuantizationError("INT8 model: head: \($0)") }
        guard h.featureScale == last.outputScale, h.featureZeroPoint == last.outputZeroPoint else {
            throw QuantizationError("INT8 model: inconsistent scales: \(last.name) writes scale \(last.outputScale), the head reads \(h.featureScale)")
        }
        guard activationScheme(bits: last.outputBits) == features else {
            throw QuantizationError("INT8 model: inconsistent widths: \(last.name) writes \(activationScheme(bits: last.outputBits).bits)-bit codes, the head reads \(features.bits)-bit codes")
        }
        try checkScale(h.inputScale, "head input scale")
        try Self.checkZero(h.inputZeroPoint, "head input zero point", activation: input)
        for s in h.weightScales { try checkScale(s, "head weight scale") }
    }
}

/// Per-channel symmetric quantization of a weight to `scheme`'s codes
/// (`[-127, 127]` at 8 bits) in `Int8`: the min-max scale of each output channel and `quantize` of every element, as
/// the simulation's weight quantizer has them. A quantizer that learns its
/// scale (LSQ) gives its own scales instead of the min-max ones.
func quantizeWeights(_ w: [Float], channels: Int, scheme: QuantScheme, quantizer: FakeQuantize? = nil) -> (values: [Int8], scales: [Float]) {
    let per = w.count / channels
    var q = [Int8](repeating: 0, count: w.count)
    let scales = quantizer.flatMap { $0.learnsScale ? $0.scales : nil } ?? minMaxWeightScales(w, channels: channels, scheme: scheme)
    for c in 0..<channels {
        let s = scales[c]
        for i in (c * per)..<((c + 1) * per) {
            q[i] = Int8(quantize(w[i], scale: s, zeroPoint: 0, min: scheme.qmin, max: scheme.qmax))
        }
    }
    return (q, scales)
}

/// The min-max scale of each output channel (axis 0) of a weight, as the simulation's weight observer computes it.
func minMaxWeightScales(_ w: [Float], channels: Int, scheme: QuantScheme) -> [Float] {
    let per = w.count / channels
    return (0..<channels).map { c in
        let o = MinMaxObserver(scheme: scheme)
        o.observe(Array(w[(c * per)..<((c + 1) * per)]))
        return o.qparams().scale
    }
}

/// `quantizeBias` of each output channel.
func quantizeBias(_ b: [Float], inputScale: Float, weightScales: [Float]) -> [Int32] {
    zip(b, weightScales).map { quantizeBias($0, inputScale: inputScale, weightScale: $1) }
}

extension QuantizedNet {
    /// Folds any remaining post-BN into its convolution and quantizes weights
    /// (per channel, int8), biases (int32) and requantization parameters,
    /// using the observers' current scales. The integer weights are exactly
    /// those the fake-quantized model evaluates in evaluation mode, at the
    /// qconfig's widths (2 to 8 bits, in 8-bit containers).
    /// - Throws: `QuantizationError` if the model was never calibrated.
    public func convertToInt8() throws -> Int8Model {
        let activationQuants = units.map(\.inputQuant) + [linear.featureQuant, linear.inputQuant]
        guard activationQuants.allSatisfy({ $0.observers.allSatisfy(\.hasObserved) }) else {
            throw QuantizationError("the model has not been calibrated: run calibration (PTQ) or QAT first")
        }
        // A tensor at the activation scheme's width records none (`nil`), as files without per-layer widths have it.
        func distinctWidth(_ quantizer: FakeQuantize) -> Int? {
            quantizer.scheme.bits == qconfig.activation.bits ? nil : quantizer.scheme.bits
        }
        var convs: [Int8Conv] = []
        let list = units
        for (i, unit) in list.enumerated() {
            let (w, b) = unit.foldedWeights()
            let geometry = unit.source, O = geometry.outChannels
            let (wq, ws) = quantizeWeights(w, channels: O, scheme: unit.weightQuant.scheme, quantizer: unit.weightQuant)
            let inQ = unit.inputQuant
            let outQ = i + 1 < list.count ? list[i + 1].inputQuant : linear.featureQuant
            convs.append(Int8Conv(
                name: unitNames[i], inChannels: geometry.inChannels, outChannels: O, kernelSize: geometry.kernelSize,
                stride: geometry.stride, padding: geometry.padding, weight: wq, weightScales: ws,
                bias: quantizeBias(b, inputScale: inQ.scales[0], weightScales: ws),
                inputScale: inQ.scales[0], inputZeroPoint: inQ.zeroPoints[0],
                outputScale: outQ.scales[0], outputZeroPoint: outQ.zeroPoints[0], weightBits: unit.weightQuant.scheme.bits,
                inputBits: distinctWidth(inQ), outputBits: distinctWidth(outQ)))
        }
        let classes = linear.weight.shape[0], features = linear.weight.shape[1]
        let (hw, hs) = quantizeWeights(linear.weight.data, channels: classes, scheme: linear.weightQuant.scheme, quantizer: linear.weightQuant)
        let head = Int8Head(featureScale: linear.featureQuant.scales[0], featureZeroPoint: linear.featureQuant.zeroPoints[0],
                            inputScale: linear.inputQuant.scales[0], inputZeroPoint: linear.inputQuant.zeroPoints[0],
                            inFeatures: features, classes: classes, weight: hw, weightScales: hs,
                            bias: quantizeBias(linear.bias.data, inputScale: linear.inputQuant.scales[0], weightScales: hs),
                            weightBits: linear.weightQuant.scheme.bits,
                            featureBits: distinctWidth(linear.featureQuant), inputBits: distinctWidth(linear.inputQuant))
        let model = Int8Model(config: config, activation: qconfig.activation, convs: convs, head: head)
        try model.validate()
        return model
    }

    /// `stage0`, `stage1.0`, ...: the state-dict paths of the units.
    var unitNames: [String] {
        ["stage0"] + (1...4).flatMap { s in (0..<[stage1, stage2, stage3, stage4][s - 1].count).map { "stage\(s).\($0)" } }
    }
}
