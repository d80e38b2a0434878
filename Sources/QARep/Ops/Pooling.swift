/// Global average pooling: `[N, C, H, W]` to `[N, C]`.
public func globalAveragePool(_ x: Tensor) -> Tensor {
    traced(.globalAveragePool, [x]) { averagePlanes(x) }
}

private func averagePlanes(_ x: Tensor) -> Tensor {
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

/// Max pooling of `x[N, C, H, W]` over `kernel x kernel` windows with
/// `stride` and `padding` (padded positions never win, as in PyTorch's
/// `max_pool2d`), output `[N, C, OH, OW]` with `OH = (H + 2p - k) / s + 1`.
/// The gradient goes to the first maximum of each window in row-major order.
public func maxPool2d(_ x: Tensor, kernel: Int, stride: Int, padding: Int = 0) -> Tensor {
    traced(.maxPool(kernel: kernel, stride: stride, padding: padding), [x]) {
        maxPlanes(x, kernel: kernel, stride: stride, padding: padding)
    }
}

private func maxPlanes(_ x: Tensor, kernel: Int, stride: Int, padding: Int) -> Tensor {
    precondition(x.rank == 4, "maxPool2d input must be [N, C, H, W], got \(x.shape)")
    precondition(kernel >= 1 && stride >= 1 && padding >= 0 && padding <= kernel / 2,
                 "maxPool2d needs kernel >= 1, stride >= 1 and 0 <= padding <= kernel / 2, got \(kernel), \(stride), \(padding)")
    let (N, C, H, W) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let OH = (H + 2 * padding - kernel) / stride + 1, OW = (W + 2 * padding - kernel) / stride + 1
    precondition(OH >= 1 && OW >= 1, "maxPool2d output would be empty for input \(x.shape) and kernel \(kernel)")
    let xd = x.data
    var winners = [Int](repeating: 0, count: N * C * OH * OW)
    var y = [Float](repeating: 0, count: N * C * OH * OW)
    for plane in 0..<(N * C) {
        let base = plane * H * W
        for oy in 0..<OH {
            for ox in 0..<OW {
                var best = -Float.infinity, at = -1
                for i in 0..<kernel {
                    let iy = oy * stride - padding + i
                    guard iy >= 0 && iy < H else { continue }
                    for j in 0..<kernel {
                        let ix = ox * stride - padding + j
                        guard ix >= 0 && ix < W else { continue }
                        // The first NaN wins, as in PyTorch.
                        let v = xd[base + iy * W + ix]
                        if at < 0 || v > best || (v.isNaN && !best.isNaN) { best = v; at = base + iy * W + ix }
                    }
                }
                let o = (plane * OH + oy) * OW + ox
                y[o] = best; winners[o] = at
            }
        }
    }
    return Tensor.result(y, shape: [N, C, OH, OW], inputs: [x]) { g in
        x.accumulateGrad { dx in for o in 0..<g.count { dx[winners[o]] += g[o] } }
    }
}
