/// Where a `QuantConvUnit` gets the kernel it fake-quantizes: one
/// convolution with bias (the folded and post-BN forms), or a block's
/// branches merged on the fly (`MergedBranches`, the multi-branch form).
/// Either way the kernel and bias are tensors with gradients to the
/// parameters they come from.
public protocol ConvolutionSource: Module {
    var inChannels: Int { get }
    var outChannels: Int { get }
    var kernelSize: Int { get }
    var stride: Int { get }
    var padding: Int { get }
    /// The `[O, I, k, k]` kernel and `[O]` bias the source convolves with.
    func kernelAndBias() -> (weight: Tensor, bias: Tensor)
}

extension Conv2d: ConvolutionSource {
    /// The weight and bias themselves; a convolution without bias has none to give.
    public func kernelAndBias() -> (weight: Tensor, bias: Tensor) {
        precondition(bias != nil, "a quantized convolution unit needs a convolution with bias")
        return (weight, bias!)
    }
}
