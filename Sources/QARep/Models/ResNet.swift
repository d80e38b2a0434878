/// A ResNet basic block (He et al. 2016): two 3x3 convolutions with batch
/// norm, a residual add and ReLU,
///
///     y = ReLU( BN2(conv2( ReLU(BN1(conv1 x)) )) + shortcut(x) )
///
/// where the shortcut is the identity, or a strided 1x1 convolution with batch
/// norm when the shape changes (option B). Keys as torchvision's
/// (`conv1`, `bn1`, `conv2`, `bn2`, `downsample.0`, `downsample.1`).
public final class BasicBlock: Module, Layer {
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    /// The 1x1 convolution and batch norm of a projection shortcut, or nil for the identity.
    public let downsample: Sequential?

    public init(inChannels: Int, outChannels: Int, stride: Int, rng: inout SplitMix64) {
        conv1 = Conv2d(inChannels, outChannels, kernelSize: 3, stride: stride, padding: 1, bias: false, rng: &rng)
        bn1 = BatchNorm2d(outChannels)
        conv2 = Conv2d(outChannels, outChannels, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng)
        bn2 = BatchNorm2d(outChannels)
        downsample = stride != 1 || inChannels != outChannels
            ? Sequential([Conv2d(inChannels, outChannels, kernelSize: 1, stride: stride, padding: 0, bias: false, rng: &rng),
                          BatchNorm2d(outChannels)])
            : nil
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = bn2(conv2(bn1(conv1(x), relu: true)))
        return (y + (downsample.map { $0(x) } ?? x)).relu()
    }
}

/// CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 stem with 16
/// channels, three stages of basic blocks with 16, 32 and 64 channels (the
/// first block of the second and third stage with stride 2 and a projection
/// shortcut), global average pooling and a linear classifier. `ResNet(depth:
/// 20)` is ResNet-20: 3 blocks per stage, 19 convolutions and the classifier.
public final class ResNet: Module, Layer {
    public let config: ResNetConfig
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    @Key("layer1") public var layer1: [BasicBlock]
    @Key("layer2") public var layer2: [BasicBlock]
    @Key("layer3") public var layer3: [BasicBlock]
    @Key("fc") public var linear: Linear

    /// - Parameters:
    ///   - depth: 6n + 2 layers (20, 32, 44, 56, 110).
    ///   - inChannels: channels of the input images (1 for Fashion-MNIST, 3 for CIFAR-10).
    public convenience init(depth: Int = 20, inChannels: Int = 1, classes: Int = 10, seed: UInt64 = 0) throws {
        try self.init(config: ResNetConfig(depth: depth, inChannels: inChannels, classes: classes), seed: seed)
    }

    /// The network `config` describes, initialized from `seed`.
    /// - Throws: `ModelError` for an invalid config.
    public init(config: ResNetConfig, seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        let perStage = (config.depth - 2) / 6
        var rng = SplitMix64(seed: seed)
        conv1 = Conv2d(config.inChannels, 16, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng)
        bn1 = BatchNorm2d(16)
        var channels = 16
        func stage(_ width: Int, stride: Int) -> [BasicBlock] {
            (0..<perStage).map { i in
                defer { channels = width }
                return BasicBlock(inChannels: channels, outChannels: width, stride: i == 0 ? stride : 1, rng: &rng)
            }
        }
        _layer1.wrappedValue = stage(16, stride: 1)
        _layer2.wrappedValue = stage(32, stride: 2)
        _layer3.wrappedValue = stage(64, stride: 2)
        _linear.wrappedValue = Linear(64, config.classes, rng: &rng)
    }

    public var blocks: [BasicBlock] { layer1 + layer2 + layer3 }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let features = blocks.reduce(bn1(conv1(x), relu: true)) { $1($0) }
        return linear(globalAveragePool(features))
    }
}
