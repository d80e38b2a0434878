/// A plain VGG-style network: stages of conv3x3-BN-ReLU, the first of each
/// stage after the first with stride 2, then global average pooling and a
/// linear classifier. The baseline the RepVGG models are compared with.
public final class PlainConvNet: Module, Layer {
    @Key("") public var layers: [any Layer]
    public let linear: Linear

    /// - Parameters:
    ///   - widths: output channels of each stage.
    ///   - blocks: conv-BN-ReLU units in each stage.
    public init(inChannels: Int = 1, widths: [Int] = [16, 32, 64], blocks: [Int] = [1, 1, 1],
                classes: Int = 10, seed: UInt64 = 0) {
        precondition(widths.count == blocks.count && !widths.isEmpty, "one block count per stage width")
        var rng = SplitMix64(seed: seed)
        var layers: [any Layer] = []
        var channels = inChannels
        for (s, (width, count)) in zip(widths, blocks).enumerated() {
            for b in 0..<count {
                let stride = (s > 0 && b == 0) ? 2 : 1
                layers.append(Conv2d(channels, width, kernelSize: 3, stride: stride, padding: 1, bias: false, rng: &rng))
                layers.append(BatchNorm2d(width))
                layers.append(ReLU())
                channels = width
            }
        }
        layers.append(GlobalAveragePool())
        _layers.wrappedValue = layers
        self.linear = Linear(channels, classes, rng: &rng)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        linear(layers.reduce(x) { $1($0) })
    }
}
