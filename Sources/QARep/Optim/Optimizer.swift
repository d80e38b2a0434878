/// Parameters that share optimizer hyper-parameters.
public struct ParameterGroup {
    /// Parameters with their state-dict keys (the keys name optimizer state in checkpoints).
    public var parameters: [(key: String, tensor: Tensor)]
    /// L2 penalty (SGD) or decoupled decay (AdamW) for this group.
    public var weightDecay: Float

    public init(parameters: [(key: String, tensor: Tensor)], weightDecay: Float) {
        self.parameters = parameters
        self.weightDecay = weightDecay
    }

    /// The usual split: decay on weights of rank >= 2 (conv and linear kernels),
    /// none on batch-norm parameters and biases. Keys in `exclude` get no decay
    /// either (kernels a custom regularizer already covers).
    public static func standard(_ model: Module, weightDecay: Float, exclude: Set<String> = []) -> [ParameterGroup] {
        let params = model.parameters()
        let decayed = params.filter { $0.tensor.rank >= 2 && !exclude.contains($0.key) }
        let plain = params.filter { $0.tensor.rank < 2 || exclude.contains($0.key) }
        return [ParameterGroup(parameters: decayed, weightDecay: weightDecay),
                ParameterGroup(parameters: plain, weightDecay: 0)]
    }
}

/// An optimizer updates parameters in place from their accumulated gradients.
///
/// Per-parameter state (momentum buffers, moments) is named
/// `<parameter key>.<state name>` so a checkpoint can store and restore it.
public protocol Optimizer: AnyObject {
    /// Learning rate of the next `step()`; schedules set it.
    var learningRate: Float { get set }
    /// The groups being optimized.
    var groups: [ParameterGroup] { get }
    /// Applies one update from the current gradients. Parameters without a
    /// gradient are left untouched.
    func step()
    /// Per-parameter state tensors and scalar counters, for checkpoints.
    func stateDict() -> [String: [Float]]
    /// Restores what `stateDict()` produced. Throws on a missing or misshapen entry.
    func loadStateDict(_ state: [String: [Float]]) throws
}

extension Optimizer {
    /// Clears the gradients of all parameters.
    public func zeroGrad() {
        for g in groups { for p in g.parameters { p.tensor.grad = nil } }
    }
}

/// Failure to restore optimizer state.
public struct OptimizerStateError: Error, CustomStringConvertible {
    public let description: String
}

func restore(_ state: [String: [Float]], key: String, count: Int) throws -> [Float]? {
    guard let v = state[key] else { return nil }
    guard v.count == count else {
        throw OptimizerStateError(description: "optimizer state \(key) has \(v.count) values, expected \(count)")
    }
    return v
}
