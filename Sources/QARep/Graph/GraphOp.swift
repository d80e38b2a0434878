/// One operation of a captured `Graph`. Module operations hold the module
/// itself (its parameters are the model's, not copies).
public enum GraphOp {
    /// The graph's input image batch `[N, C, H, W]`.
    case input
    /// `Conv2d`: any kernel, stride and padding.
    case conv(Conv2d)
    /// `BatchNorm2d`, in whatever mode the model is in.
    case batchNorm(BatchNorm2d)
    /// `max(x, 0)`.
    case relu
    /// The elementwise sum of two tensors of one shape (a residual add).
    case add
    /// Concatenation along the channel axis.
    case concat
    /// Max pooling.
    case maxPool(kernel: Int, stride: Int, padding: Int)
    /// `[N, C, H, W]` to `[N, C]` by averaging each plane.
    case globalAveragePool
    /// `[N, ...]` to `[N, rest]`.
    case flatten
    /// `Linear`.
    case linear(Linear)
    /// A RepVGG-family block in its training form (folds to one 3x3 convolution and a ReLU).
    case repVGGBlock(RepVGGBlock)
    /// A deployed RepVGG block: one 3x3 convolution with bias, then ReLU.
    case reparamBlock(ReparamBlock)

    /// A short name for messages and node names: `conv`, `add`, ...
    public var kind: String {
        switch self {
        case .input: "input"
        case .conv: "conv"
        case .batchNorm: "batch_norm"
        case .relu: "relu"
        case .add: "add"
        case .concat: "concat"
        case .maxPool: "max_pool"
        case .globalAveragePool: "global_average_pool"
        case .flatten: "flatten"
        case .linear: "linear"
        case .repVGGBlock: "repvgg_block"
        case .reparamBlock: "reparam_block"
        }
    }

    /// The module this operation runs, if it is a module's.
    public var module: Module? {
        switch self {
        case .conv(let m): m
        case .batchNorm(let m): m
        case .linear(let m): m
        case .repVGGBlock(let m): m
        case .reparamBlock(let m): m
        default: nil
        }
    }

    /// Runs the operation on float tensors, exactly as the model did.
    func apply(_ inputs: [Tensor]) -> Tensor {
        switch self {
        case .input: inputs[0]
        case .conv(let m): m(inputs[0])
        case .batchNorm(let m): m(inputs[0])
        case .relu, .add, .concat, .maxPool, .globalAveragePool, .flatten: function!.apply(inputs)
        case .linear(let m): m(inputs[0])
        case .repVGGBlock(let m): m(inputs[0])
        case .reparamBlock(let m): m(inputs[0])
        }
    }

    /// The operation as a parameter-free function; nil for the input and module operations.
    public var function: TensorFunction? {
        switch self {
        case .relu: .relu
        case .add: .add(relu: false)
        case .concat: .concat
        case .maxPool(let k, let s, let p): .maxPool(kernel: k, stride: s, padding: p)
        case .globalAveragePool: .globalAveragePool
        case .flatten: .flatten
        case .input, .conv, .batchNorm, .linear, .repVGGBlock, .reparamBlock: nil
        }
    }
}

/// The graph operations without parameters, as captured, prepared and
/// converted graphs all hold them (a prepared add may carry the ReLU after it).
public enum TensorFunction: Sendable, Equatable {
    /// The elementwise sum of two tensors of one shape, then ReLU if `relu`.
    case add(relu: Bool)
    /// Concatenation along the channel axis.
    case concat
    /// `[N, C, H, W]` to `[N, C]` by averaging each plane.
    case globalAveragePool
    case maxPool(kernel: Int, stride: Int, padding: Int)
    case relu
    /// `[N, ...]` to `[N, rest]`.
    case flatten

    /// Runs it on float tensors: the float model's arithmetic, and the fake-quantized simulation's.
    public func apply(_ inputs: [Tensor]) -> Tensor {
        switch self {
        case .add(let relu): relu ? (inputs[0] + inputs[1]).relu() : inputs[0] + inputs[1]
        case .concat: concatenateChannels(inputs)
        case .globalAveragePool: QARep.globalAveragePool(inputs[0])
        case .maxPool(let k, let s, let p): maxPool2d(inputs[0], kernel: k, stride: s, padding: p)
        case .relu: inputs[0].relu()
        case .flatten: inputs[0].reshaped([inputs[0].shape[0], -1])
        }
    }
}
