import QARepKernels

/// Fake quantization: `y = (clamp(roundHalfEven(x / s) + z, qmin, qmax) - z) * s`,
/// per tensor (one scale) or per channel along axis 0 (one scale per
/// outermost index, for `[O, I, kh, kw]` weights).
///
/// Backward is the straight-through estimator: the gradient passes unchanged
/// where `roundHalfEven(x / s) + z` lies in `[qmin, qmax]` and is zero where
/// the value was clipped, as PyTorch's `fake_quantize_per_*_affine`.
public func fakeQuantize(_ x: Tensor, scales: [Float], zeroPoints: [Int32], qmin: Int32, qmax: Int32) -> Tensor {
    precondition(scales.count == zeroPoints.count && (scales.count == 1 || (x.rank >= 1 && x.shape[0] == scales.count)),
                 "fakeQuantize: \(scales.count) scales for a tensor of shape \(x.shape)")
    let xd = x.data, n = xd.count
    let per = scales.count == 1 ? n : n / scales.count
    var inRange = [Bool](repeating: true, count: x.requiresGrad ? n : 0)
    let y = [Float](unsafeUninitializedCapacity: n) { out, count in
        inRange.withUnsafeMutableBufferPointer { mask in
            // No mask without a gradient (an empty array's buffer may still have an address).
            let out = out.baseAddress!, mask = mask.isEmpty ? nil : mask.baseAddress
            xd.withUnsafeBufferPointer { xd in
                let x = xd.baseAddress  // nil only when empty, and then no chunk runs
                // Every element on its own: contiguous chunks go to the kernel threads,
                // each cut where the channel (and so the scale) changes.
                parallelChunks(n, work: n) { range in
                    var i = range.lowerBound
                    while i < range.upperBound {
                        let c = i / per, end = min(range.upperBound, (c + 1) * per)
                        fakeQuantizeValues(x! + i, count: end - i, scale: scales[c], zeroPoint: zeroPoints[c],
                                           qmin: qmin, qmax: qmax, output: out + i, inRange: mask.map { $0 + i })
                        i = end
                    }
                }
            }
        }
        count = n
    }
    return Tensor.result(y, shape: x.shape, inputs: [x]) { g in
        x.accumulateGrad { dx in
            guard n > 0 else { return }
            inRange.withUnsafeBufferPointer { mask in
                g.withUnsafeBufferPointer { g in
                    let (dx, g, mask) = (dx.baseAddress!, g.baseAddress!, mask.baseAddress!)
                    // A select rather than a branch, so the loop vectorizes; a clipped value's
                    // gradient keeps its bits (no "+ 0", which would turn -0 into +0).
                    parallelChunks(n, work: n) { range in
                        for i in range { let sum = dx[i] + g[i]; dx[i] = mask[i] ? sum : dx[i] }
                    }
                }
            }
        }
    }
}

/// A bias as the integer engine adds it: `quantizeBias` to int32 units of
/// `inputScale * weightScales[o]`, then `dequantizeBias` back to float, per
/// output channel. Straight-through gradient (zero only where the int32 range
/// saturated).
public func fakeQuantizeBias(_ b: Tensor, inputScale: Float, weightScales: [Float]) -> Tensor {
    precondition(b.rank == 1 && b.count == weightScales.count, "fakeQuantizeBias: \(weightScales.count) scales for a bias of shape \(b.shape)")
    let bd = b.data
    var inRange = [Bool](repeating: true, count: b.count)
    let y = (0..<b.count).map { o -> Float in
        let level = unclampedBiasLevel(bd[o], inputScale: inputScale, weightScale: weightScales[o])
        guard !level.isNaN else { return .nan }
        inRange[o] = level >= Double(Int32.min) && level <= Double(Int32.max)
        return dequantizeBias(quantizeBias(bd[o], inputScale: inputScale, weightScale: weightScales[o]),
                              inputScale: inputScale, weightScale: weightScales[o])
    }
    return Tensor.result(y, shape: b.shape, inputs: [b]) { g in
        b.accumulateGrad { db in for o in 0..<db.count where inRange[o] { db[o] += g[o] } }
    }
}

/// `w[o, ...] * s[o]`: scales each slice along axis 0 by a per-channel factor.
/// Gradients flow to both.
public func scaleChannels(_ w: Tensor, by s: Tensor) -> Tensor {
    precondition(s.rank == 1 && w.rank >= 1 && w.shape[0] == s.count, "scaleChannels: \(s.shape) does not match \(w.shape)")
    let C = s.count, per = w.count / C, wd = w.data, sd = s.data
    var y = wd
    for c in 0..<C { for i in (c * per)..<((c + 1) * per) { y[i] *= sd[c] } }
    return Tensor.result(y, shape: w.shape, inputs: [w, s]) { g in
        if w.requiresGrad {
            w.accumulateGrad { dw in for c in 0..<C { for i in (c * per)..<((c + 1) * per) { dw[i] += g[i] * sd[c] } } }
        }
        if s.requiresGrad {
            s.accumulateGrad { ds in
                for c in 0..<C {
                    var acc: Float = 0
                    for i in (c * per)..<((c + 1) * per) { acc += g[i] * wd[i] }
                    ds[c] += acc
                }
            }
        }
    }
}

/// `x[n, c, ...] * scale[c] + shift[c]` over an `[N, C, ...]` tensor.
/// Gradients flow to all three.
public func channelAffine(_ x: Tensor, scale: Tensor, shift: Tensor?) -> Tensor {
    precondition(x.rank >= 2 && scale.shape == [x.shape[1]] && (shift == nil || shift!.shape == [x.shape[1]]),
                 "channelAffine: scale \(scale.shape) does not match \(x.shape)")
    let (N, C) = (x.shape[0], x.shape[1])
    let P = x.count / (N * C)
    let xd = x.data, sd = scale.data, bd = shift?.data
    // Rows of P values share a channel; rows (forward, dx) and channels (the
    // scale and shift sums, each in (n, i) order) go to the kernel threads,
    // every value computed as one thread would.
    let y = [Float](unsafeUninitializedCapacity: xd.count) { y, count in
        xd.withUnsafeBufferPointer { xd in
            parallelChunks(N * C, work: xd.count) { rows in
                for row in rows {
                    let c = row % C, s = sd[c], b = bd?[c] ?? 0
                    let (src, dst) = (xd.baseAddress! + row * P, y.baseAddress! + row * P)
                    for i in 0..<P { dst[i] = src[i] * s + b }
                }
            }
        }
        count = xd.count
    }
    let inputs = shift.map { [x, scale, $0] } ?? [x, scale]
    return Tensor.result(y, shape: x.shape, inputs: inputs) { g in
        if x.requiresGrad {
            x.accumulateGrad { dx in
                g.withUnsafeBufferPointer { g in
                    parallelChunks(N * C, work: dx.count) { rows in
                        for row in rows {
                            let s = sd[row % C], (gr, dxr) = (g.baseAddress! + row * P, dx.baseAddress! + row * P)
                            for i in 0..<P { dxr[i] += gr[i] * s }
                        }
                    }
                }
            }
        }
        guard scale.requiresGrad || shift?.requiresGrad == true else { return }
        let (gs, gb) = channelSums(gradient: g, input: xd, batch: N, channels: C, plane: P)
        if scale.requiresGrad { scale.accumulateGrad { ds in for c in 0..<C { ds[c] += gs[c] } } }
        if let shift, shift.requiresGrad { shift.accumulateGrad { db in for c in 0..<C { db[c] += gb[c] } } }
    }
}

/// Per channel of `[N, C, P]` tensors: the sum of `g * x` and the sum of `g`,
/// each summed in (n, p) order. Channels are shared among the kernel threads.
private func channelSums(gradient g: [Float], input x: [Float], batch N: Int, channels C: Int, plane P: Int)
    -> (gx: [Float], g: [Float]) {
    var gx = [Float](repeating: 0, count: C), gSum = [Float](repeating: 0, count: C)
    g.withUnsafeBufferPointer { g in
        x.withUnsafeBufferPointer { x in
            gx.withUnsafeMutableBufferPointer { gx in
                gSum.withUnsafeMutableBufferPointer { gSum in
                    parallelChunks(C, work: x.count) { channels in
                        for c in channels {
                            var (sumGX, sumG): (Float, Float) = (0, 0)
                            for n in 0..<N {
                                let base = (n * C + c) * P
                                for i in base..<(base + P) { sumGX += g[i] * x[i]; sumG += g[i] }
                            }
                            (gx[c], gSum[c]) = (sumGX, sumG)
                        }
                    }
                }
            }
        }
    }
    return (gx, gSum)
}

/// Learned step size quantization (LSQ, Esser et al. 2020): fake
/// quantization `y = (clamp(roundHalfEven(x / s) + z, qmin, qmax) - z) * s`
/// with a gradient to the step size `s` (per tensor, or per channel along
/// axis 0) and the zero point `z` held fixed (0 for symmetric schemes; for
/// unsigned activations the calibrated one, 0 after a ReLU, so real 0 stays
/// exact while the step learns):
///
///     dy/dx = 1 inside the range, 0 where clipped (straight-through)
///     dy/ds = roundHalfEven(x / s) - x / s inside, qmin - z or qmax - z where clipped
///
/// and the step's gradient scaled by `gradScale` (the paper's
/// `1 / sqrt(N * Q_P)`, N the elements one step size serves), so that steps
/// and weights learn at comparable rates. A step at or below 1e-8 is used as
/// 1e-8, so a step the optimizer drove to zero cannot divide by it.
/// `zeroPoints`: one per step, or nil for zeros.
public func learnedStepFakeQuantize(_ x: Tensor, step: Tensor, zeroPoints: [Int32]? = nil, qmin: Int32, qmax: Int32,
                                    gradScale: Float) -> Tensor {
    precondition(step.rank == 1 && (step.count == 1 || (x.rank >= 1 && x.shape[0] == step.count)),
                 "learnedStepFakeQuantize: \(step.count) steps for a tensor of shape \(x.shape)")
    precondition(zeroPoints.map { $0.count == step.count } ?? true, "learnedStepFakeQuantize: one zero point per step")
    let xd = x.data, n = xd.count, channels = step.count, per = n / channels
    let steps = step.data.map { Swift.max($0, 1e-8) }
    // Per element: the gradient factor of the step, and whether x passes.
    var stepFactor = [Float](repeating: 0, count: n), inRange = [Bool](repeating: false, count: n)
    let y = [Float](unsafeUninitializedCapacity: n) { out, count in
        for c in 0..<channels {
            let s = steps[c], z = zeroPoints?[c] ?? 0
            for i in (c * per)..<((c + 1) * per) {
                let level = unclampedLevel(xd[i], scale: s, zeroPoint: z)
                guard !level.isNaN else { out[i] = .nan; continue }
                let clamped = clampedLevel(level, min: qmin, max: qmax)
                inRange[i] = level == clamped
                stepFactor[i] = inRange[i] ? Float(level - Double(z)) - xd[i] / s : Float(Int32(clamped) - z)
                out[i] = dequantize(Int32(clamped), scale: s, zeroPoint: z)
            }
        }
        count = n
    }
    return Tensor.result(y, shape: x.shape, inputs: [x, step]) { g in
        if x.requiresGrad { x.accumulateGrad { dx in for i in 0..<n where inRange[i] { dx[i] += g[i] } } }
        if step.requiresGrad {
            step.accumulateGrad { ds in
                for c in 0..<channels {
                    var sum: Double = 0
                    for i in (c * per)..<((c + 1) * per) { sum += Double(g[i]) * Double(stepFactor[i]) }
                    ds[c] += Float(sum) * gradScale
                }
            }
        }
    }
}
