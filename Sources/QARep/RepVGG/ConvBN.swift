/// A bias-free convolution followed by batch norm: RepVGG's `conv_bn`,
/// whose children are named `conv` and `bn`.
public final class ConvBN: Module, Layer {
    public let conv: Conv2d
    public let bn: BatchNorm2d

    public init(conv: Conv2d, bn: BatchNorm2d) {
        precondition(conv.bias == nil, "ConvBN's convolution has no bias")
        self.conv = conv; self.bn = bn
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { bn(conv(x)) }
}
