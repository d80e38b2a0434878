extension Tensor {
    /// Sum of all elements, a scalar.
    public func sum() -> Tensor {
        var s: Double = 0
        for v in data { s += Double(v) }
        let n = count
        return Tensor.result([Float(s)], shape: [], inputs: [self]) { [self] g in
            accumulateGrad { acc in for i in 0..<n { acc[i] += g[0] } }
        }
    }

    /// Mean of all elements, a scalar.
    public func mean() -> Tensor { sum() * (1 / Float(max(count, 1))) }
}

extension Tensor {
    /// Index of the largest value in each row of a `[N, K]` tensor (the first
    /// one on ties): predicted classes from logits.
    public func argmaxRows() -> [Int32] {
        precondition(rank == 2 && shape[1] > 0, "argmaxRows needs an [N, K] tensor with K > 0, got \(shape)")
        let (n, k) = (shape[0], shape[1])
        return data.withUnsafeBufferPointer { d in
            (0..<n).map { r in
                var best = 0
                for c in 1..<k where d[r * k + c] > d[r * k + best] { best = c }
                return Int32(best)
            }
        }
    }
}
