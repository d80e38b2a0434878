import QARepKernels

/// Batch normalization over `x[N, C, H, W]` (or `[N, C]`), per channel.
///
/// Training: normalizes with the batch mean and biased variance, and updates
/// the running statistics in place with PyTorch's rule,
/// `running = (1 - momentum) * running + momentum * batchStat`, where the
/// variance stored is the unbiased one (`* M / (M - 1)`, M = N*H*W).
/// Evaluation: normalizes with the running statistics.
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, then `max(y, 0)` with
/// `relu`: the same values and gradients as `batchNorm(...).relu()`, in one
/// pass less each way. The backward pass recomputes the normalized input
/// from `x` (same arithmetic, same bits) rather than keeping a copy.
/// In a data-parallel job (`DataParallel`) training statistics are those of
/// the whole global batch, as PyTorch's `SyncBatchNorm`.
public func batchNorm(_ x: Tensor, weight: Tensor, bias: Tensor,
                      runningMean: Tensor, runningVar: Tensor,
                      training: Bool, momentum: Float = 0.1, eps: Float = 1e-5, relu: Bool = false) -> Tensor {
    precondition(x.rank == 4 || x.rank == 2, "batchNorm input must be [N, C, H, W] or [N, C], got \(x.shape)")
    let (N, C) = (x.shape[0], x.shape[1])
    let P = x.rank == 4 ? x.shape[2] * x.shape[3] : 1
    precondition(weight.shape == [C] && bias.shape == [C] && runningMean.shape == [C] && runningVar.shape == [C],
                 "batchNorm parameters must be [\(C)]")
    let M = N * P
    let planes = ChannelPlanes(batch: N, channels: C, plane: P)
    precondition(!training || M > 1, "batchNorm in training needs more than one value per channel, input is \(x.shape)")

    var mean = [Float](repeating: 0, count: C)
    var invStd = [Float](repeating: 0, count: C)
    let xd = x.data, total = xd.count
    // Channels are independent: they are shared among the kernel threads,
    // each channel summed by one thread in one order.
    if training {
        // Per-channel sum and sum of squares, then (data-parallel) those of the whole global batch.
        var sums = [Double](repeating: 0, count: 2 * C)
        xd.withUnsafeBufferPointer { xp in
            sums.withUnsafeMutableBufferPointer { sp in
                parallelChunks(C, work: total) { channels in
                    channelSumsAndSquares(xp.baseAddress!, planes, channels: channels, sums: sp.baseAddress!,
                                          squares: sp.baseAddress! + C)
                }
            }
        }
        let count = synchronizedBatchNormSums(&sums, count: M)
        var unbiased = [Float](repeating: 0, count: C)
        for c in 0..<C {
            let m = sums[c] / count
            let v = max(sums[C + c] / count - m * m, 0)
            mean[c] = Float(m)
            invStd[c] = Float(1 / (v + Double(eps)).squareRoot())
            unbiased[c] = Float(v * count / (count - 1))
        }
        for c in 0..<C {
            runningMean.data[c] = (1 - momentum) * runningMean.data[c] + momentum * mean[c]
            runningVar.data[c] = (1 - momentum) * runningVar.data[c] + momentum * unbiased[c]
        }
    } else {
        for c in 0..<C {
            mean[c] = runningMean.data[c]
            invStd[c] = 1 / (runningVar.data[c] + eps).squareRoot()
        }
    }

    let gamma = weight.data, beta = bias.data
    let y = [Float](unsafeUninitializedCapacity: total) { yp, count in
        xd.withUnsafeBufferPointer { xp in
            parallelChunks(C, work: total) { channels in
                normalizeChannels(xp.baseAddress!, planes, channels: channels, mean: mean, invStd: invStd, gamma: gamma,
                                  beta: beta, relu: relu, y: yp.baseAddress!)
            }
        }
        count = total
    }

    return Tensor.result(y, shape: x.shape, inputs: [x, weight, bias]) { g in
        // Per-channel sums of g and g * xhat, channels shared among the threads.
        var sumG = [Double](repeating: 0, count: C), sumGH = [Double](repeating: 0, count: C)
        withReLUOutput(relu ? y : nil) { mask in
            g.withUnsafeBufferPointer { gp in
                xd.withUnsafeBufferPointer { xp in
                    sumG.withUnsafeMutableBufferPointer { sg in
                        sumGH.withUnsafeMutableBufferPointer { sgh in
                            parallelChunks(C, work: total) { channels in
                                channelGradientSums(gp.baseAddress!, xp.baseAddress!, planes, channels: channels,
                                                    mean: mean, invStd: invStd, reluOutput: mask,
                                                    sumG: sg.baseAddress!, sumGH: sgh.baseAddress!)
                            }
                        }
                    }
                }
            }
        }
        // This rank's sums give its share of the parameter gradients (summed over the ranks later with
        // the others); the input gradient needs those of the whole global batch, as the forward's statistics.
        if weight.requiresGrad { weight.accumulateGrad { dw in for c in 0..<C { dw[c] += Float(sumGH[c]) } } }
        if bias.requiresGrad { bias.accumulateGrad { db in for c in 0..<C { db[c] += Float(sumG[c]) } } }
        guard x.requiresGrad else { return }
        var batchCount = Double(M)
        if training && DataParallel.isDistributed {
            var both = sumG + sumGH
            batchCount = synchronizedBatchNormSums(&both, count: M)
            sumG = Array(both[..<C]); sumGH = Array(both[C...])
        }
        let scale = (0..<C).map { gamma[$0] * invStd[$0] }
        let meanG = sumG.map { Float($0 / batchCount) }, meanGH = sumGH.map { Float($0 / batchCount) }
        x.accumulateGrad { dx in
            withReLUOutput(relu ? y : nil) { mask in
                g.withUnsafeBufferPointer { gp in
                    xd.withUnsafeBufferPointer { xp in
                        parallelChunks(C, work: total) { channels in
                            if training {
                                // dx = gamma*invstd/M * (M*g - sum(g) - xhat*sum(g*xhat))
                                addChannelNormalizationGradient(gp.baseAddress!, xp.baseAddress!, planes, channels: channels,
                                                                mean: mean, invStd: invStd, reluOutput: mask, scale: scale,
                                                                meanG: meanG, meanGH: meanGH, dx: dx.baseAddress!)
                                return
                            }
                            for c in channels {
                                for n in 0..<N {
                                    let base = (n * C + c) * P
                                    addScaledGradient(gp.baseAddress! + base, count: P, reluOutput: mask.map { $0 + base },
                                                      scale: scale[c], dx: dx.baseAddress! + base)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Sync BN: replaces per-channel `sums` by their totals over the
/// data-parallel ranks and returns the global batch's value count (`count`
/// alone). The count travels with the sums, so unequal shards are counted right.
private func synchronizedBatchNormSums(_ sums: inout [Double], count: Int) -> Double {
    guard DataParallel.isDistributed else { return Double(count) }
    sums.append(Double(count))
    DataParallel.sum(&sums)
    return sums.removeLast()
}

/// Runs `body` with a pointer to the ReLU output whose positive entries let
/// the gradient through, or nil when there is no ReLU.
private func withReLUOutput<R>(_ y: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let y else { return body(nil) }
    return y.withUnsafeBufferPointer { body($0.baseAddress!) }
}
