/// Stochastic gradient descent with momentum, exactly PyTorch's `torch.optim.SGD`:
///
///     d = grad + weightDecay * p
///     buf = d                                  (first step)
///     buf = momentum * buf + (1 - dampening) * d  (later steps)
///     d = nesterov ? d + momentum * buf : buf
///     p -= lr * d
public final class SGD: Optimizer {
    public var learningRate: Float
    public let groups: [ParameterGroup]
    public let momentum: Float
    public let dampening: Float
    public let nesterov: Bool
    private var buffers: [ObjectIdentifier: [Float]] = [:]

    public init(groups: [ParameterGroup], learningRate: Float, momentum: Float = 0.9,
                dampening: Float = 0, nesterov: Bool = false) {
        precondition(!nesterov || (momentum > 0 && dampening == 0), "Nesterov momentum needs momentum > 0 and no dampening")
        self.groups = groups; self.learningRate = learningRate
        self.momentum = momentum; self.dampening = dampening; self.nesterov = nesterov
    }

    public func step() {
        let lr = learningRate
        for group in groups {
            let wd = group.weightDecay
            for (_, p) in group.parameters {
                guard let grad = p.grad else { continue }
                let id = ObjectIdentifier(p)
                let first = buffers[id] == nil
                var buf = buffers[id] ?? [Float](repeating: 0, count: p.count)
                p.data.withUnsafeMutableBufferPointer { w in
                    for i in 0..<w.count {
                        var d = grad[i] + wd * w[i]
                        if momentum != 0 {
                            buf[i] = first ? d : momentum * buf[i] + (1 - dampening) * d
                            d = nesterov ? d + momentum * buf[i] : buf[i]
                        }
                        w[i] -= lr * d
                    }
                }
                if momentum != 0 { buffers[id] = buf }
            }
        }
    }

    public func stateDict() -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for g in groups { for (key, p) in g.parameters { if let b = buffers[ObjectIdentifier(p)] { out[key + ".momentum_buffer"] = b } } }
        return out
    }

    public func loadStateDict(_ state: [String: [Float]]) throws {
        buffers = [:]
        for g in groups {
            for (key, p) in g.parameters {
                if let b = try restore(state, key: key + ".momentum_buffer", count: p.count) { buffers[ObjectIdentifier(p)] = b }
            }
        }
    }
}
