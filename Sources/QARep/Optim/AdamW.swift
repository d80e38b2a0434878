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
    private var moments: [ObjectIdentifier: (m: [Float], v: [Float], t: Int)] = [:]

    public init(groups: [ParameterGroup], learningRate: Float = 1e-3,
                beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
        self.groups = groups; self.learningRate = learningRate
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
    }

    public func step() {
        let lr = learningRate
        for group in groups {
            for (_, p) in group.parameters {
                guard let g = p.grad else { continue }
                let id = ObjectIdentifier(p)
                var (m, v, t) = moments[id] ?? ([Float](repeating: 0, count: p.count), [Float](repeating: 0, count: p.count), 0)
                t += 1
                let c1 = 1 - Foundation.pow(beta1, Float(t)), c2 = 1 - Foundation.pow(beta2, Float(t))
                let decay = 1 - lr * group.weightDecay
                p.data.withUnsafeMutableBufferPointer { w in
                    for i in 0..<w.count {
                        w[i] *= decay
                        m[i] = beta1 * m[i] + (1 - beta1) * g[i]
                        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i]
                        w[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
                    }
                }
                moments[id] = (m, v, t)
            }
        }
    }

    public func stateDict() -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for g in groups {
            for (key, p) in g.parameters {
                guard let s = moments[ObjectIdentifier(p)] else { continue }
                out[key + ".exp_avg"] = s.m
                out[key + ".exp_avg_sq"] = s.v
                out[key + ".step"] = [Float(s.t)]
            }
        }
        return out
    }

    public func loadStateDict(_ state: [String: [Float]]) throws {
        moments = [:]
        for g in groups {
            for (key, p) in g.parameters {
                guard let m = try restore(state, key: key + ".exp_avg", count: p.count) else { continue }
                guard let v = try restore(state, key: key + ".exp_avg_sq", count: p.count),
                      let t = try restore(state, key: key + ".step", count: 1) else {
                    throw OptimizerStateError(description: "optimizer state for \(key) is incomplete")
                }
                moments[ObjectIdentifier(p)] = (m, v, Int(t[0]))
            }
        }
    }
}
