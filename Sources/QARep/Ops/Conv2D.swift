import QARepKernels

/// 2-D convolution of `x[N, C, H, W]` with `weight[O, C, kh, kw]` and an
/// optional `bias[O]`, symmetric zero padding, output `[N, O, OH, OW]`.
///
/// Forward is an implicit GEMM (`implicitConv2d`): the input is copied once
/// to padded NHWC and every patch is read in place, with the bias fused into
/// the store. Backward reads the same padded input: the weight gradient sums
/// dY times each patch in place (`convolutionWeightGradient`), and the input
/// gradient is a convolution of dY on the forward kernel, one per stride
/// phase (`convolutionInputGradient`). No patch matrix anywhere. On maps that
/// are mostly zero border (2x2 under a 3x3 kernel), the forward pass and each
/// input-gradient phase run class by class, each class of pixels with only
/// the taps inside the image (`BorderTapClasses`), and the weight gradient
/// sums each tap over only the pixels that read it inside the image.
public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor? = nil, stride: Int = 1, padding: Int = 0) -> Tensor {
    precondition(x.rank == 4, "conv2d input must be [N, C, H, W], got \(x.shape)")
    precondition(weight.rank == 4 && weight.shape[1] == x.shape[1],
                 "conv2d weight \(weight.shape) does not match input channels of \(x.shape)")
    if let bias { precondition(bias.shape == [weight.shape[0]], "conv2d bias \(bias.shape) must be [\(weight.shape[0])]") }
    let g = ConvGeometry(batch: x.shape[0], inChannels: x.shape[1], height: x.shape[2], width: x.shape[3],
                         outChannels: weight.shape[0], kernelH: weight.shape[2], kernelW: weight.shape[3],
                         stride: stride, padding: padding)
    precondition(g.outHeight > 0 && g.outWidth > 0, "conv2d output would be empty for input \(x.shape) and kernel \(weight.shape)")

    let O = g.outChannels
    let w = weight.data
    // Forward: the implicit GEMM reads patches in place (no patch matrix).
    let layout = PaddedFloatNHWC(g)
    let padded = [Float](unsafeUninitializedCapacity: layout.count) { buf, count in
        x.data.withUnsafeBufferPointer { layout.fill(buf.baseAddress!, from: $0.baseAddress!, threads: KernelThreads.count) }
        count = layout.count
    }
    let windows = layout.windowOffsets
    let classes = BorderTapClasses(forward: g)
    let y = [Float](unsafeUninitializedCapacity: g.batch * O * g.outPlane) { yp, count in
        withOptionalPointer(bias?.data) { b in
            w.withUnsafeBufferPointer { wp in
                if classes.worthSplitting {
                    // A small map: each class of pixels with only the taps inside the image.
                    BorderClassConvolution(
                        layout: layout, classes: classes,
                        weights: { PackedFloatWeights(wp.baseAddress!, outChannels: O, inChannels: g.inChannels,
                                                      kernelH: g.kernelH, kernelW: g.kernelW, rows: $0, cols: $1) },
                        outputOffset: { n, oy, ox in n * O * g.outPlane + oy * g.outWidth + ox },
                        windowOrigin: { n, oy, ox in
                            layout.offset(image: n, y: oy * g.stride - g.padding, x: ox * g.stride - g.padding)
                        }
                    ).run(paddedInput: padded, bias: b, relu: false, output: yp.baseAddress!, channelStride: g.outPlane,
                          threads: KernelThreads.count)
                } else {
                    let packed = PackedFloatWeights(wp, outChannels: O, inChannels: g.inChannels, kernelH: g.kernelH,
                                                    kernelW: g.kernelW)
                    implicitConv2d(paddedInput: padded, layout: layout, weights: packed, bias: b, relu: false,
                                   output: yp.baseAddress!, outputOffsets: nchwPixelOffsets(g), channelStride: g.outPlane,
                                   windowOffsets: windows, threads: KernelThreads.count)
                }
            }
        }
        count = g.batch * O * g.outPlane
    }

    let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
    return Tensor.result(y, shape: [g.batch, O, g.outHeight, g.outWidth], inputs: inputs) { grad in
        grad.withUnsafeBufferPointer { dy in
            if weight.requiresGrad {
                // Read from the forward pass's padded input.
                weight.accumulateGrad { dw in
                    convolutionWeightGradient(paddedInput: padded, layout: layout, windowOffsets: windows,
                                              outputGradient: dy.baseAddress!, weightGradient: dw.baseAddress!)
                }
            }
            if let bias, bias.requiresGrad {
                bias.accumulateGrad { db in
                    for n in 0..<g.batch {
                        for o in 0..<O {
                            var s: Float = 0
                            let row = dy.baseAddress! + (n * O + o) * g.outPlane
                            for i in 0..<g.outPlane { s += row[i] }
                            db[o] += s
                        }
                    }
                }
            }
            if x.requiresGrad {
                // dx is itself a convolution of dy, on the forward kernel.
                x.accumulateGrad([Float](unsafeUninitializedCapacity: x.data.count) { dx, count in
                    w.withUnsafeBufferPointer {
                        convolutionInputGradient(outputGradient: dy.baseAddress!, weights: $0.baseAddress!, geometry: g,
                                                 inputGradient: dx.baseAddress!)
                    }
                    count = x.data.count
                })
            }
        }
    }
}
