import QARepKernels

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
    public let state = OptimizerState()

    public init(groups: [ParameterGroup], learningRate: Float, momentum: Float = 0.9,
                dampening: Float = 0, nesterov: Bool = false) {
        precondition(!nesterov || (momentum > 0 && dampening == 0), "Nesterov momentum needs momentum > 0 and no dampening")
        self.groups = groups; self.learningRate = learningRate
        self.momentum = momentum; self.dampening = dampening; self.nesterov = nesterov
    }

    /// `momentum_buffer`, when there is momentum.
    public func stateEntries(parameterCount: Int) -> [(name: String, count: Int)] {
        momentum != 0 ? [("momentum_buffer", parameterCount)] : []
    }

    public func update(_ w: UnsafeMutableBufferPointer<Float>, gradient grad: [Float],
                       state: inout [String: [Float]], weightDecay wd: Float) {
        let lr = learningRate, (momentum, dampening, nesterov) = (self.momentum, self.dampening, self.nesterov)
        // Elements are independent: large tensors are shared among the kernel threads.
        guard momentum != 0 else {
            parallelChunks(w.count, work: w.count) { range in
                for i in range { w[i] -= lr * (grad[i] + wd * w[i]) }
            }
            return
        }
        let first = state["momentum_buffer"] == nil
        var buf = state.removeValue(forKey: "momentum_buffer") ?? [Float](repeating: 0, count: w.count)
        buf.withUnsafeMutableBufferPointer { buf in
            grad.withUnsafeBufferPointer { grad in
                parallelChunks(w.count, work: w.count) { range in
                    for i in range {
                        var d = grad[i] + wd * w[i]
                        buf[i] = first ? d : momentum * buf[i] + (1 - dampening) * d
                        d = nesterov ? d + momentum * buf[i] : buf[i]
                        w[i] -= lr * d
                    }
                }
            }
        }
        state["momentum_buffer"] = buf
    }
}
