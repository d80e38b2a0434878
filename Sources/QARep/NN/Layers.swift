/// 2-D convolution layer, PyTorch's `nn.Conv2d` without groups or dilation.
/// `weight[out, in, k, k]`, optional `bias[out]`; default initialization is
/// PyTorch's (uniform in ±1/sqrt(fan_in) for both).
public final class Conv2d: Module, Layer {
    public let weight: Tensor
    public let bias: Tensor?
    public let stride: Int
    public let padding: Int

    /// A convolution from existing tensors.
    public init(weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) {
        precondition(weight.rank == 4, "Conv2d weight must be [out, in, kh, kw], got \(weight.shape)")
        self.weight = weight; self.bias = bias; self.stride = stride; self.padding = padding
    }

    /// A convolution with PyTorch's default initialization.
    public convenience init(_ inChannels: Int, _ outChannels: Int, kernelSize: Int, stride: Int = 1,
                            padding: Int = 0, bias: Bool = true, rng: inout SplitMix64) {
        let fanIn = inChannels * kernelSize * kernelSize
        let bound = 1 / Float(fanIn).squareRoot()
        let w = Tensor.uniform([outChannels, inChannels, kernelSize, kernelSize], bound: bound, rng: &rng)
        let b = bias ? Tensor.uniform([outChannels], bound: bound, rng: &rng) : nil
        self.init(weight: w, bias: b, stride: stride, padding: padding)
    }

    public var inChannels: Int { weight.shape[1] }
    public var outChannels: Int { weight.shape[0] }
    public var kernelSize: Int { weight.shape[2] }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        traced(.conv(self), [x]) { conv2d(x, weight: weight, bias: bias, stride: stride, padding: padding) }
    }
}

/// Batch normalization over channels, PyTorch's `nn.BatchNorm2d`: momentum
/// 0.1, eps 1e-5, `weight` ones, `bias` zeros, running mean 0 and variance 1.
/// Batch statistics in training mode, running statistics in evaluation mode.
public final class BatchNorm2d: Module, Layer {
    public let weight: Tensor
    public let bias: Tensor
    @Key("running_mean") public var runningMean: Tensor
    @Key("running_var") public var runningVar: Tensor
    public let momentum: Float
    public let eps: Float
    /// Training-mode forward passes so far (PyTorch's `num_batches_tracked`).
    public var numBatchesTracked: Int64 = 0
    /// Use (and keep) the running statistics even in training mode: QAT's
    /// "freeze BN statistics" after some epochs.
    public var freezeStatistics = false

    public init(_ channels: Int, momentum: Float = 0.1, eps: Float = 1e-5) {
        weight = Tensor(repeating: 1, shape: [channels], requiresGrad: true)
        bias = Tensor(repeating: 0, shape: [channels], requiresGrad: true)
        _runningMean.wrappedValue = Tensor(repeating: 0, shape: [channels])
        _runningVar.wrappedValue = Tensor(repeating: 1, shape: [channels])
        self.momentum = momentum; self.eps = eps
    }

    public var channels: Int { weight.count }

    /// Per-channel `weight / sqrt(running_var + eps)`: the factor a fold
    /// multiplies into the preceding convolution.
    public var scale: [Float] {
        (0..<channels).map { weight.data[$0] / (runningVar.data[$0] + eps).squareRoot() }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { callAsFunction(x, relu: false) }

    /// Batch norm, then ReLU when `relu` is set, in one fused operation.
    public func callAsFunction(_ x: Tensor, relu: Bool) -> Tensor {
        // A captured graph holds the two operations apart; the values are the same bits.
        if relu && GraphTracer.current != nil { return callAsFunction(x, relu: false).relu() }
        return traced(.batchNorm(self), [x]) { normalize(x, relu: relu) }
    }

    private func normalize(_ x: Tensor, relu: Bool) -> Tensor {
        let batchStatistics = training && !freezeStatistics
        if batchStatistics { numBatchesTracked += 1 }
        return batchNorm(x, weight: weight, bias: bias, runningMean: runningMean, runningVar: runningVar,
                         training: batchStatistics, momentum: momentum, eps: eps, relu: relu)
    }
}

/// Fully connected layer, PyTorch's `nn.Linear`.
public final class Linear: Module, Layer {
    public let weight: Tensor
    public let bias: Tensor?

    public init(weight: Tensor, bias: Tensor?) {
        precondition(weight.rank == 2, "Linear weight must be [out, in], got \(weight.shape)")
        self.weight = weight; self.bias = bias
    }

    /// A linear layer with PyTorch's default initialization.
    public convenience init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, rng: inout SplitMix64) {
        let bound = 1 / Float(inFeatures).squareRoot()
        self.init(weight: Tensor.uniform([outFeatures, inFeatures], bound: bound, rng: &rng),
                  bias: bias ? Tensor.uniform([outFeatures], bound: bound, rng: &rng) : nil)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { traced(.linear(self), [x]) { linear(x, weight: weight, bias: bias) } }
}

/// `max(x, 0)`.
public final class ReLU: Module, Layer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) -> Tensor { x.relu() }
}

/// `[N, C, H, W]` to `[N, C]` by averaging each plane.
public final class GlobalAveragePool: Module, Layer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) -> Tensor { globalAveragePool(x) }
}

/// Max pooling over `kernel x kernel` windows (see `maxPool2d`).
public final class MaxPool2d: Module, Layer {
    public let kernel: Int, stride: Int, padding: Int
    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel; self.stride = stride ?? kernel; self.padding = padding
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { maxPool2d(x, kernel: kernel, stride: stride, padding: padding) }
}

/// `[N, ...]` to `[N, product of the rest]`.
public final class Flatten: Module, Layer {
    public override init() {}
    public func callAsFunction(_ x: Tensor) -> Tensor { x.reshaped([x.shape[0], -1]) }
}

/// Layers applied in order; children are named `0`, `1`, ... like PyTorch's
/// `nn.Sequential`.
public final class Sequential: Module, Layer {
    @Key("") public var layers: [any Layer]

    public init(_ layers: [any Layer]) { _layers.wrappedValue = layers }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        layers.reduce(x) { $1($0) }
    }
}

extension Tensor {
    /// Uniform values in `[-bound, bound)`, drawn from `rng`.
    public static func uniform(_ shape: [Int], bound: Float, rng: inout SplitMix64, requiresGrad: Bool = true) -> Tensor {
        let n = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: n)
        // SplitMix64's own float draw: stable across toolchains, so a seed always gives the same model.
        for i in 0..<n { values[i] = (2 * rng.uniformFloat() - 1) * bound }
        return Tensor(values, shape: shape, requiresGrad: requiresGrad)
    }
}
