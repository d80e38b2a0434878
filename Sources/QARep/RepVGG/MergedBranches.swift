/// A RepVGG-family block's branches, without its post-BN, merged into one
/// 3x3 kernel and bias on every call: each branch's BN folded with its
/// running statistics (which stay fixed), the 1x1 kernel padded to 3x3, the
/// identity as a centred kernel. The merge is made of tensor operations, so
/// gradients reach every branch's convolution weights and BN `weight` and
/// `bias`. Rep-aware QAT (`QuantizedNet.Form.multiBranch`) fake-quantizes
/// this kernel and runs one convolution with it; `RepVGGBlock.mergedBranches()`
/// is the same merge as plain arrays.
///
/// Keys as in `RepVGGBlock`: `rbr_dense.*`, `rbr_1x1.*`, `rbr_identity.*`.
public final class MergedBranches: Module, ConvolutionSource {
    @Key("rbr_dense") public var dense: ConvBN
    /// `ConvBN` for `repvgg` and `s2`, a plain `Conv2d` for `s3` and `qarepvgg`.
    @Key("rbr_1x1") public var pointwise: any Layer
    @Key("rbr_identity") public var identityBN: BatchNorm2d?
    /// Whether the identity branch exists.
    public let hasIdentity: Bool
    public let stride: Int

    /// The branches of `block`: its own modules, or independent copies (a
    /// quantized model must not train the FP32 model's parameters).
    public init(of block: RepVGGBlock, copying: Bool) {
        hasIdentity = block.hasIdentity
        stride = block.stride
        guard copying else {
            _dense.wrappedValue = block.dense
            _pointwise.wrappedValue = block.pointwise
            _identityBN.wrappedValue = block.identityBN
            return
        }
        _dense.wrappedValue = block.dense.copy()
        if let convBN = block.pointwise as? ConvBN {
            _pointwise.wrappedValue = convBN.copy()
        } else {
            _pointwise.wrappedValue = (block.pointwise as! Conv2d).copy()
        }
        _identityBN.wrappedValue = block.identityBN?.copy()
    }

    public var inChannels: Int { dense.conv.inChannels }
    public var outChannels: Int { dense.conv.outChannels }
    public var kernelSize: Int { 3 }
    public var padding: Int { 1 }

    /// The merged `[O, I, 3, 3]` kernel and `[O]` bias.
    public func kernelAndBias() -> (weight: Tensor, bias: Tensor) {
        var (w, b) = foldBatchNorm(weight: dense.conv.weight, bias: nil, bn: dense.bn)
        if let convBN = pointwise as? ConvBN {
            let (k, kb) = foldBatchNorm(weight: convBN.conv.weight, bias: nil, bn: convBN.bn)
            (w, b) = (w + k.paddedKernel(to: 3), b + kb)
        } else {
            w = w + (pointwise as! Conv2d).weight.paddedKernel(to: 3)
        }
        if hasIdentity {
            let identity = Tensor(identityKernel(channels: outChannels), shape: [outChannels, outChannels, 3, 3])
            if let identityBN {
                let (k, kb) = foldBatchNorm(weight: identity, bias: nil, bn: identityBN)
                (w, b) = (w + k, b + kb)
            } else {
                w = w + identity
            }
        }
        return (w, b)
    }
}

extension ConvBN {
    /// An independent copy with the same weights and BN state.
    public func copy() -> ConvBN { ConvBN(conv: conv.copy(), bn: bn.copy()) }
}

extension Conv2d {
    /// An independent copy: fresh parameter tensors with the same values.
    public func copy() -> Conv2d {
        Conv2d(weight: weight.detachedParameter(), bias: bias?.detachedParameter(), stride: stride, padding: padding)
    }
}
