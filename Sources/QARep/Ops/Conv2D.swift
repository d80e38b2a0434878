import QARepKernels

/// 2-D convolution of `x[N, C, H, W]` with `weight[O, C, kh, kw]` and an
/// optional `bias[O]`, symmetric zero padding, output `[N, O, OH, OW]`.
///
/// Forward is an implicit GEMM (`implicitConv2d`): the input is copied once
/// to padded NHWC and every patch is read in place, with the bias fused into
/// the store. Backward is two GEMMs on the patch matrix `col[K, N*OH*OW]`
/// (`K = C*kh*kw`, built by `im2col` only then; a 1x1 stride-1 conv uses the
/// input itself): `dW = dY * colᵀ` and `dcol = Wᵀ * dY`, then `col2im`.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    MemoryTuning.apply()
    precondition(x.rank == 4, "conv2d input must be [N, C, H, W], got \(x.shape)")
    precondition(weight.rank == 4 && weight.shape[1] == x.shape[1],
                 "conv2d weight \(weight.shape) does not match input channels of \(x.shape)")
    if let bias { precondition(bias.shape == [weight.shape[0]], "conv2d bias \(bias.shape) must be [\(weight.shape[0])]") }
    let g = ConvGeometry(batch: x.shape[0], inChannels: x.shape[1], height: x.shape[2], width: x.shape[3],
                         outChannels: weight.shape[0], kernelH: weight.shape[2], kernelW: weight.shape[3],
                         stride: stride, padding: padding)
    precondition(g.outHeight > 0 && g.outWidth > 0, "conv2d output would be empty for input \(x.shape) and kernel \(weight.shape)")

    let (K, NP, O) = (g.patchSize, g.columns, g.outChannels)
    let w = weight.data
    // Forward: the implicit GEMM reads patches in place (no patch matrix).
    let packed = w.withUnsafeBufferPointer {
        PackedFloatWeights($0, outChannels: O, inChannels: g.inChannels, kernelH: g.kernelH, kernelW: g.kernelW)
    }
    let y = [Float](unsafeUninitializedCapacity: g.batch * O * g.outPlane) { yp, count in
        x.data.withUnsafeBufferPointer { xp in
            if let b = bias?.data {
                b.withUnsafeBufferPointer { implicitConv2d(input: xp.baseAddress!, geometry: g, weights: packed, bias: $0.baseAddress!, output: yp.baseAddress!) }
            } else {
                implicitConv2d(input: xp.baseAddress!, geometry: g, weights: packed, bias: nil, output: yp.baseAddress!)
            }
        }
        count = g.batch * O * g.outPlane
    }

    let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
    return Tensor.result(y, shape: [g.batch, O, g.outHeight, g.outWidth], inputs: inputs) { grad in
        let gCM = batchMajorToChannelMajor(grad, batch: g.batch, channels: O, plane: g.outPlane)
        gCM.withUnsafeBufferPointer { gp in
            if weight.requiresGrad {
                // dW needs the patch matrix; it is built here, only when training.
                let col = patchMatrix(x.data, g)
                col.withUnsafeBufferPointer { c in
                    weight.accumulateGrad { dw in
                        sgemm(transB: true, m: O, n: K, k: NP, a: gp.baseAddress!, lda: NP,
                              b: c.baseAddress!, ldb: NP, beta: 1, c: dw.baseAddress!, ldc: K)
                    }
                }
            }
            if let bias, bias.requiresGrad {
                bias.accumulateGrad { db in
                    for o in 0..<O {
                        var s: Float = 0
                        let row = gp.baseAddress! + o * NP
                        for i in 0..<NP { s += row[i] }
                        db[o] += s
                    }
                }
            }
            if x.requiresGrad {
                let dcol = [Float](unsafeUninitializedCapacity: K * NP) { dc, count in
                    w.withUnsafeBufferPointer { wp in
                        sgemm(transA: true, m: K, n: NP, k: O, a: wp.baseAddress!, lda: K,
                              b: gp.baseAddress!, ldb: NP, c: dc.baseAddress!, ldc: NP)
                    }
                    count = K * NP
                }
                if g.isPointwise {
                    x.accumulateGrad(channelMajorToBatchMajor(dcol, batch: g.batch, channels: g.inChannels, plane: g.outPlane))
                } else {
                    x.accumulateGrad { dx in
                        dcol.withUnsafeBufferPointer { dc in col2im(dc.baseAddress!, dx.baseAddress!, g) }
                    }
                }
            }
        }
    }
}

/// The `[K, N*P]` patch matrix of a batch.
private func patchMatrix(_ x: [Float], _ g: ConvGeometry) -> [Float] {
    if g.isPointwise {
        return batchMajorToChannelMajor(x, batch: g.batch, channels: g.inChannels, plane: g.outPlane)
    }
    return [Float](unsafeUninitializedCapacity: g.patchSize * g.columns) { buf, n in
        x.withUnsafeBufferPointer { im2col($0.baseAddress!, buf.baseAddress!, g) }
        n = g.patchSize * g.columns
    }
}

func batchMajorToChannelMajor(_ x: [Float], batch: Int, channels: Int, plane: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: x.count) { buf, n in
        x.withUnsafeBufferPointer { batchToChannelMajor($0.baseAddress!, buf.baseAddress!, batch: batch, channels: channels, plane: plane) }
        n = x.count
    }
}

func channelMajorToBatchMajor(_ x: [Float], batch: Int, channels: Int, plane: Int) -> [Float] {
    [Float](unsafeUninitializedCapacity: x.count) { buf, n in
        x.withUnsafeBufferPointer { channelToBatchMajor($0.baseAddress!, buf.baseAddress!, batch: batch, channels: channels, plane: plane) }
        n = x.count
    }
}
