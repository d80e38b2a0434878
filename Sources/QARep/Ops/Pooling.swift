/// Global average pooling: `[N, C, H, W]` to `[N, C]`.
public func globalAveragePool(_ x: Tensor) -> Tensor {
    precondition(x.rank == 4, "globalAveragePool input must be [N, C, H, W], got \(x.shape)")
    let (N, C, P) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
    let xd = x.data
    var y = [Float](repeating: 0, count: N * C)
    for r in 0..<(N * C) {
        var s: Float = 0
        for i in 0..<P { s += xd[r * P + i] }
        y[r] = s / Float(P)
    }
    return Tensor.result(y, shape: [N, C], inputs: [x]) { g in
        x.accumulateGrad { dx in
            for r in 0..<(N * C) {
                let v = g[r] / Float(P)
                for i in 0..<P { dx[r * P + i] += v }
            }
        }
    }
}
