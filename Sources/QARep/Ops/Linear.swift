import QARepKernels

/// Fully connected layer: `y[N, out] = x[N, in] * weightᵀ + bias`, with
/// `weight[out, in]` (PyTorch layout).
public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
    precondition(x.rank == 2 && weight.rank == 2 && weight.shape[1] == x.shape[1],
                 "linear: input \(x.shape) does not match weight \(weight.shape)")
    let (N, I, O) = (x.shape[0], x.shape[1], weight.shape[0])
    if let bias { precondition(bias.shape == [O], "linear bias \(bias.shape) must be [\(O)]") }
    let xd = x.data, w = weight.data
    var y = [Float](repeating: 0, count: N * O)
    if let b = bias?.data { for n in 0..<N { for o in 0..<O { y[n * O + o] = b[o] } } }
    xd.withUnsafeBufferPointer { xp in
        w.withUnsafeBufferPointer { wp in
            y.withUnsafeMutableBufferPointer { yp in
                sgemm(transB: true, m: N, n: O, k: I, a: xp.baseAddress!, lda: I, b: wp.baseAddress!, ldb: I,
                      beta: 1, c: yp.baseAddress!, ldc: O)
            }
        }
    }
    let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
    return Tensor.result(y, shape: [N, O], inputs: inputs) { g in
        g.withUnsafeBufferPointer { gp in
            if weight.requiresGrad {
                xd.withUnsafeBufferPointer { xp in
                    weight.accumulateGrad { dw in
                        sgemm(transA: true, m: O, n: I, k: N, a: gp.baseAddress!, lda: O, b: xp.baseAddress!, ldb: I,
                              beta: 1, c: dw.baseAddress!, ldc: I)
                    }
                }
            }
            if let bias, bias.requiresGrad {
                bias.accumulateGrad { db in for n in 0..<N { for o in 0..<O { db[o] += gp[n * O + o] } } }
            }
            if x.requiresGrad {
                w.withUnsafeBufferPointer { wp in
                    x.accumulateGrad { dx in
                        sgemm(m: N, n: I, k: O, a: gp.baseAddress!, lda: O, b: wp.baseAddress!, ldb: I,
                              beta: 1, c: dx.baseAddress!, ldc: I)
                    }
                }
            }
        }
    }
}
