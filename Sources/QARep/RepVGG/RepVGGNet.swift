/// A RepVGG-family classifier: five stages of blocks, global average
/// pooling and a linear head (DESIGN section 4). Stage 0 is one block from
/// the input channels with stride 1; the first block of stages 1...4 has
/// stride 2. Keys follow the public RepVGG code: `stage0.*`, `stage1.0.*`, ...,
/// `linear.*`.
///
/// The same class holds the training form (`RepVGGBlock`s) and the deployed
/// form (`ReparamBlock`s, see `deployed()`).
public final class RepVGGNet: Module, Layer {
    public let config: ModelConfig
    @Key("stage0") public var stage0: any Layer
    @Key("stage1") public var stage1: [any Layer]
    @Key("stage2") public var stage2: [any Layer]
    @Key("stage3") public var stage3: [any Layer]
    @Key("stage4") public var stage4: [any Layer]
    public let linear: Linear

    /// A freshly initialized training-form network (PyTorch's default
    /// initialization, drawn from `seed`).
    public convenience init(config: ModelConfig, seed: UInt64 = 0) throws {
        try config.validate()
        var rng = SplitMix64(seed: seed)
        var stages: [[any Layer]] = []
        var channels = config.inChannels
        for s in 0..<5 {
            var stage: [any Layer] = []
            for b in 0..<config.blocks[s] {
                let stride = (s > 0 && b == 0) ? 2 : 1
                stage.append(RepVGGBlock(kind: config.block, inChannels: channels, outChannels: config.widths[s], stride: stride, rng: &rng))
                channels = config.widths[s]
            }
            stages.append(stage)
        }
        self.init(config: config, stages: stages, linear: Linear(channels, config.classes, rng: &rng))
    }

    /// A network from its parts: `stages[0]` has one block.
    public init(config: ModelConfig, stages: [[any Layer]], linear: Linear) {
        precondition(stages.count == 5 && stages[0].count == 1, "RepVGGNet needs 5 stages and one block in stage 0")
        self.config = config
        self.linear = linear
        _stage0.wrappedValue = stages[0][0]
        _stage1.wrappedValue = stages[1]
        _stage2.wrappedValue = stages[2]
        _stage3.wrappedValue = stages[3]
        _stage4.wrappedValue = stages[4]
    }

    /// Every block in order, stage 0 first.
    public var blocks: [any Layer] { [stage0] + stage1 + stage2 + stage3 + stage4 }

    /// Stages as arrays (stage 0 as a one-element array).
    public var stages: [[any Layer]] { [[stage0], stage1, stage2, stage3, stage4] }

    /// True when every block is a deployed `ReparamBlock`.
    public var isDeployed: Bool { blocks.allSatisfy { $0 is ReparamBlock } }

    /// Features before the head: `[N, C, H, W]` after the last stage.
    public func features(_ x: Tensor) -> Tensor { blocks.reduce(x) { $1($0) } }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        linear(globalAveragePool(features(x)))
    }
}
