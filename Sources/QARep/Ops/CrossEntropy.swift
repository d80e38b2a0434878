import Foundation

/// Mean softmax cross-entropy of `logits[N, classes]` against integer labels.
///
/// With label smoothing `ε` the target is `(1 - ε) * onehot + ε / classes`,
/// as in PyTorch's `cross_entropy(label_smoothing=ε)`. The gradient is
/// `(softmax - target) / N`.
public func crossEntropy(_ logits: Tensor, labels: [Int32], labelSmoothing: Float = 0) -> Tensor {
    precondition(logits.rank == 2 && logits.shape[0] == labels.count,
                 "crossEntropy: logits \(logits.shape) do not match \(labels.count) labels")
    precondition(labelSmoothing >= 0 && labelSmoothing < 1, "label smoothing must be in [0, 1)")
    let (N, K) = (logits.shape[0], logits.shape[1])
    let z = logits.data
    var probs = [Float](repeating: 0, count: N * K)
    var loss: Double = 0
    let off = labelSmoothing / Float(K), on = 1 - labelSmoothing + off
    for n in 0..<N {
        let label = Int(labels[n])
        precondition(label >= 0 && label < K, "label \(label) out of range for \(K) classes")
        let row = z[(n * K)..<(n * K + K)]
        let mx = row.max()!
        var se: Double = 0
        for v in row { se += Foundation.exp(Double(v - mx)) }
        let logZ = Double(mx) + Foundation.log(se)
        for k in 0..<K {
            let logp = Double(z[n * K + k]) - logZ
            probs[n * K + k] = Float(Foundation.exp(logp))
            loss -= Double(k == label ? on : off) * logp
        }
    }
    return Tensor.result([Float(loss / Double(N))], shape: [], inputs: [logits]) { g in
        logits.accumulateGrad { dz in
            let scale = g[0] / Float(N)
            for n in 0..<N {
                let label = Int(labels[n])
                for k in 0..<K { dz[n * K + k] += scale * (probs[n * K + k] - (k == label ? on : off)) }
            }
        }
    }
}
