/// A deployable convolution unit under fake quantization:
///
///     y = ReLU( conv3x3( FQ_in(x); FQ_w(W) ) + b )                   (PTQ, RepVGG QAT)
///     y = ReLU( BN( conv3x3( FQ_in(x); FQ_w(W * t) ) / t + b ) )       (QARepVGG QAT)
///
/// where `t = gamma / sqrt(running_var + eps)` of the kept post-BN. The
/// second form simulates folding that BN into the convolution (Jacob et al.
/// 2018, PyTorch's fused ConvBn QAT modules): in evaluation mode it equals the
/// folded convolution `W * t`, `(b - mean) * t + beta`, whose weight is
/// fake-quantized exactly as the deployed INT8 convolution will be.
///
/// `W` and `b` come from the unit's `source`: one convolution, or, in
/// rep-aware QAT, the block's branches merged on every call
/// (`MergedBranches`), so the trained parameters stay those of the
/// multi-branch block while the kernel quantized is the deployed one.
///
/// Keys: `rbr_reparam.{weight,bias}` (one convolution) or `branches.*`
/// (merged branches), `bn.*`, `input_fake_quant.*`, `weight_fake_quant.*`.
public final class QuantConvUnit: Module, Layer {
    @Key("input_fake_quant") public var inputQuant: FakeQuantize
    @Key("rbr_reparam") public var source: any ConvolutionSource
    @Key("weight_fake_quant") public var weightQuant: FakeQuantize
    @Key("bn") public var postBN: BatchNorm2d?

    /// Activation observers from `qconfig.calibrator`; per-channel min-max
    /// weight observers that track the current weight.
    /// - Parameter source: a `Conv2d` with bias, or `MergedBranches`.
    public init(source: any ConvolutionSource, postBN: BatchNorm2d?, qconfig: QConfig) {
        precondition(!(source is Conv2d) || (source as! Conv2d).bias != nil, "QuantConvUnit needs a convolution with bias")
        _source = Key(wrappedValue: source, source is MergedBranches ? "branches" : "rbr_reparam")
        _postBN.wrappedValue = postBN
        _inputQuant.wrappedValue = FakeQuantize(scheme: qconfig.activation, calibrator: qconfig.calibrator)
        _weightQuant.wrappedValue = FakeQuantize(scheme: qconfig.weight, calibrator: .minmax,
                                                 channels: source.outChannels, tracksCurrentValues: true)
    }

    /// The unit's one convolution; nil when it merges branches instead.
    public var conv: Conv2d? { source as? Conv2d }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        fakeQuantizedConvolution(inputQuant(x), inputQuant: inputQuant, source: source, weightQuant: weightQuant,
                                 postBN: postBN, relu: true)
    }

    /// The weight and bias this unit convolves with outside BN training: the
    /// post-BN folded in, the weight fake-quantized (observing it first when
    /// the weight observer is on) and, once the input is quantized, the bias
    /// quantized to int32 units of `s_in * s_w` as the engine has it. Their
    /// values are `dequantize` of the converted model's codes, element by element.
    public func deployedTensors() -> (weight: Tensor, bias: Tensor) {
        deployedConvolutionTensors(source: source, postBN: postBN, weightQuant: weightQuant, inputQuant: inputQuant)
    }

    /// The deployable weight and bias: the post-BN folded in (if any), by the
    /// same operations as the simulation, so conversion quantizes exactly
    /// the values the simulation does.
    public func foldedWeights() -> (weight: [Float], bias: [Float]) { foldedConvolutionWeights(source: source, postBN: postBN) }
}

// The arithmetic of a fake-quantized convolution with an optional post-BN,
// shared by `QuantConvUnit` (RepVGG) and `QuantGraphConv` (any captured graph).

/// `conv(xq)` under fake quantization (see `QuantConvUnit`): in BN training,
/// the fold simulated with the running scale and undone after the
/// convolution; otherwise exactly the deployed convolution. ReLU when `relu`.
func fakeQuantizedConvolution(_ xq: Tensor, inputQuant: FakeQuantize, source: any ConvolutionSource, weightQuant: FakeQuantize,
                              postBN: BatchNorm2d?, relu: Bool) -> Tensor {
    if let bn = postBN, bn.training && !bn.freezeStatistics {
        // Batch statistics: fold with the running scale, undo it after the
        // convolution, and let the BN normalize with the batch's own.
        let (w, b) = source.kernelAndBias()
        let t = runningStatisticsScale(bn)
        let y = conv2d(xq, weight: weightQuant(scaleChannels(w, by: t)), stride: source.stride, padding: source.padding)
        let invT = Tensor(repeating: 1, shape: [bn.channels]) / t
        return bn(channelAffine(y, scale: invT, shift: b), relu: relu)
    }
    // Running statistics (or no BN): exactly the deployed convolution.
    let (wq, bq) = deployedConvolutionTensors(source: source, postBN: postBN, weightQuant: weightQuant, inputQuant: inputQuant)
    let y = conv2d(xq, weight: wq, bias: bq, stride: source.stride, padding: source.padding)
    return relu ? y.relu() : y
}

/// The folded weight fake-quantized and the bias quantized to int32 units of
/// `s_in * s_w` once the input is quantized.
func deployedConvolutionTensors(source: any ConvolutionSource, postBN: BatchNorm2d?, weightQuant: FakeQuantize,
                                inputQuant: FakeQuantize) -> (weight: Tensor, bias: Tensor) {
    let (w, b) = foldedConvolutionTensors(source: source, postBN: postBN)
    return quantizedWeightAndBias(w, b, weightQuant: weightQuant, inputQuant: inputQuant)
}

/// `FQ_w(w)` and, once the input is quantized, `b` quantized to int32 units
/// of `s_in * s_w[o]`: what a convolution or linear layer multiplies with.
func quantizedWeightAndBias(_ w: Tensor, _ b: Tensor, weightQuant: FakeQuantize,
                            inputQuant: FakeQuantize) -> (weight: Tensor, bias: Tensor) {
    let wq = weightQuant(w)
    let bq = inputQuant.fakeQuantEnabled ? fakeQuantizeBias(b, inputScale: inputQuant.scales[0], weightScales: weightQuant.scales) : b
    return (wq, bq)
}

/// Weight and bias with the post-BN (running statistics) folded in, as
/// differentiable tensors: `W * t`, `(b - mean) * t + beta`.
func foldedConvolutionTensors(source: any ConvolutionSource, postBN: BatchNorm2d?) -> (weight: Tensor, bias: Tensor) {
    let (w, b) = source.kernelAndBias()
    guard let bn = postBN else { return (w, b) }
    return foldBatchNorm(weight: w, bias: b, bn: bn)
}

/// `foldedConvolutionTensors` as plain arrays.
func foldedConvolutionWeights(source: any ConvolutionSource, postBN: BatchNorm2d?) -> (weight: [Float], bias: [Float]) {
    noGrad {
        let (w, b) = foldedConvolutionTensors(source: source, postBN: postBN)
        return (w.data, b.data)
    }
}

/// The head under fake quantization, as the integer engine computes it:
/// the last block's output quantized (`FQ_feat`), averaged per channel,
/// quantized again (`FQ_in`), then `linear(FQ_in(pooled); FQ_w(W)) + b`.
/// Keys: `weight`, `bias`, `feature_fake_quant.*`, `input_fake_quant.*`,
/// `weight_fake_quant.*` (under `linear.`).
public final class QuantLinearHead: Module, Layer {
    public let weight: Tensor
    public let bias: Tensor
    @Key("feature_fake_quant") public var featureQuant: FakeQuantize
    @Key("input_fake_quant") public var inputQuant: FakeQuantize
    @Key("weight_fake_quant") public var weightQuant: FakeQuantize

    public init(linear: Linear, qconfig: QConfig) {
        weight = linear.weight.detachedParameter()
        bias = linear.bias?.detachedParameter() ?? Tensor(repeating: 0, shape: [linear.weight.shape[0]], requiresGrad: true)
        _featureQuant.wrappedValue = FakeQuantize(scheme: qconfig.activation, calibrator: qconfig.calibrator)
        _inputQuant.wrappedValue = FakeQuantize(scheme: qconfig.activation, calibrator: qconfig.calibrator)
        _weightQuant.wrappedValue = FakeQuantize(scheme: qconfig.weight, calibrator: .minmax,
                                                 channels: weight.shape[0], tracksCurrentValues: true)
    }

    /// `[N, C, H, W]` features to `[N, classes]` logits.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let xq = inputQuant(globalAveragePool(featureQuant(x)))
        let (wq, bq) = deployedTensors()
        return linear(xq, weight: wq, bias: bq)
    }

    /// The weight and bias the head multiplies with, as `QuantConvUnit.deployedTensors()`.
    public func deployedTensors() -> (weight: Tensor, bias: Tensor) {
        quantizedWeightAndBias(weight, bias, weightQuant: weightQuant, inputQuant: inputQuant)
    }
}
