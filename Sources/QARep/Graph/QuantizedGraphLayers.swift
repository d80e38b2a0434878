/// A convolution of a prepared graph, with whatever batch norm and ReLU
/// followed it fused in:
///
///     y = ReLU?( conv( xq; FQ_w(W) ) + b )                             (PTQ: BN folded)
///     y = ReLU?( BN( conv( xq; FQ_w(W * t) ) / t + b ) )               (QAT: BN fold simulated)
///
/// the arithmetic of `QuantConvUnit`, with the input quantized by the graph
/// (one quantizer per tensor, however many layers read it).
/// Keys: `conv.{weight,bias}`, `bn.*`, `weight_fake_quant.*`.
public final class QuantGraphConv: Module {
    public let conv: Conv2d
    @Key("weight_fake_quant") public var weightQuant: FakeQuantize
    @Key("bn") public var postBN: BatchNorm2d?
    /// Whether a ReLU follows (the clamp's lower bound in the engine).
    public let relu: Bool

    init(conv: Conv2d, postBN: BatchNorm2d?, relu: Bool, qconfig: QConfig) {
        precondition(conv.bias != nil, "QuantGraphConv needs a convolution with bias")
        self.conv = conv
        self.relu = relu
        _postBN.wrappedValue = postBN
        _weightQuant.wrappedValue = FakeQuantize(scheme: qconfig.weight, calibrator: .minmax,
                                                 channels: conv.outChannels, tracksCurrentValues: true)
    }

    func callAsFunction(_ xq: Tensor, inputQuant: FakeQuantize) -> Tensor {
        fakeQuantizedConvolution(xq, inputQuant: inputQuant, source: conv, weightQuant: weightQuant, postBN: postBN, relu: relu)
    }

    /// The deployable weight and bias, any post-BN folded in.
    public func foldedWeights() -> (weight: [Float], bias: [Float]) { foldedConvolutionWeights(source: conv, postBN: postBN) }
}

/// A linear layer of a prepared graph: `ReLU?( linear(xq; FQ_w(W)) + b )`.
/// Keys: `weight`, `bias`, `weight_fake_quant.*`.
public final class QuantGraphLinear: Module {
    public let weight: Tensor
    public let bias: Tensor
    @Key("weight_fake_quant") public var weightQuant: FakeQuantize
    public let relu: Bool

    init(_ layer: Linear, relu: Bool, qconfig: QConfig) {
        weight = layer.weight.detachedParameter()
        bias = layer.bias?.detachedParameter() ?? Tensor(repeating: 0, shape: [layer.weight.shape[0]], requiresGrad: true)
        self.relu = relu
        _weightQuant.wrappedValue = FakeQuantize(scheme: qconfig.weight, calibrator: .minmax,
                                                 channels: weight.shape[0], tracksCurrentValues: true)
    }

    func callAsFunction(_ xq: Tensor, inputQuant: FakeQuantize) -> Tensor {
        let (wq, bq) = quantizedWeightAndBias(weight, bias, weightQuant: weightQuant, inputQuant: inputQuant)
        let y = linear(xq, weight: wq, bias: bq)
        return relu ? y.relu() : y
    }
}
