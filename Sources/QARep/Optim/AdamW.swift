import Foundation

/// Adam with decoupled weight decay, PyTorch's `torch.optim.AdamW`:
///
///     p *= 1 - lr * weightDecay
///     m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g²
///     p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
public final class AdamW: Optimizer {
    public var learningRate: Float
    public let groups: [ParameterGroup]
    public let beta1: Float, beta2: Float, eps: Float
    public let state = OptimizerState()

    public init(groups: [ParameterGroup], learningRate: Float = 1e-3,
                beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
        self.groups = groups; self.learningRate = learningRate
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
    }

    /// `exp_avg`, `exp_avg_sq` and the parameter's own `step` count.
    public func stateEntries(parameterCount: Int) -> [(name: String, count: Int)] {
        [("exp_avg", parameterCount), ("exp_avg_sq", parameterCount), ("step", 1)]
    }

    public func update(_ w: UnsafeMutableBufferPointer<Float>, gradient g: [Float],
                       state: inout [String: [Float]], weightDecay: Float) {
        let lr = learningRate
        var m = state.removeValue(forKey: "exp_avg") ?? [Float](repeating: 0, count: w.count)
        var v = state.removeValue(forKey: "exp_avg_sq") ?? [Float](repeating: 0, count: w.count)
        let t = Int(state["step"]?[0] ?? 0) + 1
        let c1 = 1 - Foundation.pow(beta1, Float(t)), c2 = 1 - Foundation.pow(beta2, Float(t))
        let decay = 1 - lr * weightDecay
        for i in 0..<w.count {
            w[i] *= decay
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
            w[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
        }
        state["exp_avg"] = m; state["exp_avg_sq"] = v; state["step"] = [Float(t)]
    }
}
