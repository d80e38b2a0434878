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
/// Every optimizer shares one loop (`step()`: each group, each parameter
/// that has a gradient) and one state-dict path: a conforming type says
/// which state a parameter carries (`stateEntries(parameterCount:)`) and how
/// one parameter is updated (`update`). State is named
/// `<parameter key>.<state name>` (PyTorch's names: `momentum_buffer`,
/// `exp_avg`, ...) so a checkpoint can store and restore it.
public protocol Optimizer: AnyObject {
    /// Learning rate of the next `step()`; schedules set it.
    var learningRate: Float { get set }
    /// The groups being optimized.
    var groups: [ParameterGroup] { get }
    /// Per-parameter state, filled in by the first update of each parameter.
    var state: OptimizerState { get }
    /// The state entries a parameter of `parameterCount` values carries
    /// after its first update: names and lengths.
    func stateEntries(parameterCount: Int) -> [(name: String, count: Int)]
    /// Updates one parameter in place. `state` is empty before the
    /// parameter's first update; the update fills it.
    func update(_ parameter: UnsafeMutableBufferPointer<Float>, gradient: [Float],
                state: inout [String: [Float]], weightDecay: Float)
}

/// Named state of each parameter, keyed by the parameter's identity.
public final class OptimizerState {
    var entries: [ObjectIdentifier: [String: [Float]]] = [:]
    public init() {}
}

extension Optimizer {
    /// Applies one update from the current gradients. Parameters without a
    /// gradient are left untouched.
    public func step() {
        for group in groups {
            for (_, p) in group.parameters {
                guard let grad = p.grad else { continue }
                let id = ObjectIdentifier(p)
                // Taken out of the table so the update mutates it without a copy.
                var entry = state.entries.removeValue(forKey: id) ?? [:]
                p.data.withUnsafeMutableBufferPointer { update($0, gradient: grad, state: &entry, weightDecay: group.weightDecay) }
                if !entry.isEmpty { state.entries[id] = entry }
            }
        }
    }

    /// Clears the gradients of all parameters.
    public func zeroGrad() {
        for g in groups { for p in g.parameters { p.tensor.grad = nil } }
    }

    /// Per-parameter state as `<parameter key>.<state name>`, for checkpoints.
    public func stateDict() -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for g in groups {
            for (key, p) in g.parameters {
                for (name, values) in state.entries[ObjectIdentifier(p)] ?? [:] { out[key + "." + name] = values }
            }
        }
        return out
    }

    /// Restores what `stateDict()` produced. A parameter with none of its
    /// entries has not been updated yet; one with only some of them, or with
    /// an entry of the wrong length, is an error.
    public func loadStateDict(_ saved: [String: [Float]]) throws {
        var entries: [ObjectIdentifier: [String: [Float]]] = [:]
        for g in groups {
            for (key, p) in g.parameters {
                let expected = stateEntries(parameterCount: p.count)
                let present = expected.filter { saved[key + "." + $0.name] != nil }
                if present.isEmpty { continue }
                guard present.count == expected.count else {
                    throw OptimizerStateError(description: "optimizer state for \(key) is incomplete")
                }
                var entry: [String: [Float]] = [:]
                for (name, count) in expected {
                    let v = saved[key + "." + name]!
                    guard v.count == count else {
                        throw OptimizerStateError(description: "optimizer state \(key).\(name) has \(v.count) values, expected \(count)")
                    }
                    entry[name] = v
                }
                entries[ObjectIdentifier(p)] = entry
            }
        }
        state.entries = entries
    }
}

/// Failure to restore optimizer state.
public struct OptimizerStateError: Error, CustomStringConvertible {
    public let description: String
}
