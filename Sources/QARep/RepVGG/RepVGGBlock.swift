/// A training-time RepVGG-family block of any `BlockKind`:
///
///     repvgg     y = ReLU( BN(conv3x3 x) + BN(conv1x1 x) + BN_id(x) )
///     s2         y = ReLU( BN(conv3x3 x) + BN(conv1x1 x) + x )
///     s3         y = ReLU( BN(conv3x3 x) + conv1x1 x + x )
///     qarepvgg   y = ReLU( BN_post( BN(conv3x3 x) + conv1x1 x + x ) )
///
/// The identity branch exists only when `in == out` and `stride == 1`.
/// Member names are those of the public RepVGG and YOLOv6 code
/// (`rbr_dense`, `rbr_1x1`, `rbr_identity`, `bn`), so checkpoints move both ways.
public final class RepVGGBlock: Module, Layer {
    public let kind: BlockKind
    public let stride: Int
    @Key("rbr_dense") public var dense: ConvBN
    /// `ConvBN` for `repvgg` and `s2`, a plain `Conv2d` for `s3` and `qarepvgg`.
    @Key("rbr_1x1") public var pointwise: any Layer
    /// Batch norm of the identity branch (`repvgg` only, where the branch exists).
    @Key("rbr_identity") public var identityBN: BatchNorm2d?
    /// Whether the identity branch exists.
    public let hasIdentity: Bool
    /// QARepVGG's batch norm after the sum.
    @Key("bn") public var postBN: BatchNorm2d?

    public init(kind: BlockKind, inChannels: Int, outChannels: Int, stride: Int, rng: inout SplitMix64) {
        self.kind = kind
        self.stride = stride
        hasIdentity = inChannels == outChannels && stride == 1
        _dense.wrappedValue = ConvBN(
            conv: Conv2d(inChannels, outChannels, kernelSize: 3, stride: stride, padding: 1, bias: false, rng: &rng),
            bn: BatchNorm2d(outChannels))
        let conv1x1 = Conv2d(inChannels, outChannels, kernelSize: 1, stride: stride, padding: 0, bias: false, rng: &rng)
        _pointwise.wrappedValue = kind.pointwiseHasBN ? ConvBN(conv: conv1x1, bn: BatchNorm2d(outChannels)) : conv1x1
        _identityBN.wrappedValue = hasIdentity && kind.identityHasBN ? BatchNorm2d(inChannels) : nil
        _postBN.wrappedValue = kind.hasPostBN ? BatchNorm2d(outChannels) : nil
    }

    public var inChannels: Int { dense.conv.inChannels }
    public var outChannels: Int { dense.conv.outChannels }

    public func callAsFunction(_ x: Tensor) -> Tensor { traced(.repVGGBlock(self), [x]) { forward(x) } }

    private func forward(_ x: Tensor) -> Tensor {
        var y = dense(x) + pointwise(x)
        if hasIdentity { y = y + (identityBN.map { $0(x) } ?? x) }
        if let postBN { return postBN(y, relu: true) }
        return y.relu()
    }
}

/// A deployed block: one 3x3 convolution with bias, then ReLU. The
/// convolution is named `rbr_reparam`, as in RepVGG's deploy mode.
public final class ReparamBlock: Module, Layer {
    @Key("rbr_reparam") public var conv: Conv2d

    public init(conv: Conv2d) { _conv.wrappedValue = conv }

    public func callAsFunction(_ x: Tensor) -> Tensor { traced(.reparamBlock(self), [x]) { conv(x).relu() } }
}
