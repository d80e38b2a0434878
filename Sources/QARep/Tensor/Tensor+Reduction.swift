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
