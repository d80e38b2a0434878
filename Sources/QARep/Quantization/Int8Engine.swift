import QARepKernels

/// Runs an `Int8Model` (8 bits or fewer) in integer arithmetic: the input image is quantized
/// once, every convolution is an exact int16 x int16 -> int32 GEMM with fused
/// bias, requantization and ReLU, pooling and the linear head work on
/// integer codes, and only the final accumulators are scaled into float
/// logits. Signed activations live in `Int8` buffers, unsigned in `UInt8`.
public final class Int8Engine {
    public let model: Int8Model
    let packed: [PackedInt8Weights]
    /// Worker threads of the convolution kernels.
    public let threads: Int
    /// The integer kernel; every path gives the same logits.
    public let path: IntegerKernelPath

    /// - Parameter path: `.best` unless comparing paths. With `.avx512vnni`
    ///   activations stay in the VNNI kernel's padded NHWC bytes from the first
    ///   convolution to the last, each writing straight into the next one's input.
    public init(_ model: Int8Model, threads: Int = KernelThreads.count, path: IntegerKernelPath = .best) throws {
        try model.validate()
        self.model = model
        self.threads = max(1, threads)
        self.path = path
        packed = model.convs.map {
            PackedInt8Weights(convolution: $0.weight, outChannels: $0.outChannels, inChannels: $0.inChannels,
                              kernelH: $0.kernelSize, kernelW: $0.kernelSize)
        }
    }

    /// The codes of a tensor `bits` wide (`nil`: the model's width), `[qmin, qmax]`:
    /// all of a byte at 8 bits, fewer at lower widths (the containers stay 8-bit).
    func codeRange(bits: Int?) -> QuantRange {
        let scheme = model.activationScheme(bits: bits)
        return QuantRange(min: scheme.qmin, max: scheme.qmax)
    }

    /// Logits `[N, classes]` of normalized float images `[N, C, H, W]`.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == model.convs[0].inChannels,
                     "INT8 engine input must be [N, \(model.convs[0].inChannels), H, W], got \(images.shape)")
        let out = model.activation.signed ? run(Int8.self, images) : run(UInt8.self, images)
        return Tensor(out, shape: [images.shape[0], model.head.classes])
    }

    private func run<A: QuantizedActivation>(_: A.Type, _ images: Tensor) -> [Float] {
        if path == .avx512vnni { return runChained(A.self, images) }
        let (N, C) = (images.shape[0], images.shape[1])
        var (H, W) = (images.shape[2], images.shape[3])
        let first = model.convs[0]
        let range = codeRange(bits: first.inputBits)
        var x: [A] = images.data.map {
            A(truncatingIfNeeded: quantize($0, scale: first.inputScale, zeroPoint: first.inputZeroPoint, range: range))
        }
        var channels = C
        for (conv, weights) in zip(model.convs, packed) {
            let g = ConvGeometry(batch: N, inChannels: channels, height: H, width: W, outChannels: conv.outChannels,
                                 kernelH: conv.kernelSize, kernelW: conv.kernelSize, stride: conv.stride, padding: conv.padding)
            let y = [A](unsafeUninitializedCapacity: N * conv.outChannels * g.outPlane) { buf, count in
                x.withUnsafeBufferPointer { xp in
                    // ReLU is the clamp's lower bound: the code of real 0.
                    quantizedConv2d(input: xp.baseAddress!, geometry: g, weights: weights, bias: conv.bias,
                                    multipliers: conv.multipliers, inputZeroPoint: conv.inputZeroPoint,
                                    outputZeroPoint: conv.outputZeroPoint, outputMin: conv.outputZeroPoint,
                                    outputMax: codeRange(bits: conv.outputBits).max, output: buf.baseAddress!,
                                    threads: threads, path: path)
                }
                count = N * conv.outChannels * g.outPlane
            }
            x = y
            (H, W, channels) = (g.outHeight, g.outWidth, conv.outChannels)
        }
        return head(x, batch: N, channels: channels, plane: H * W)
    }

    /// Each layer's byte layout, window origins and output offsets (into the
    /// next layer's padded input, or plain NHWC after the last) for one input shape.
    private struct Plan {
        let layouts: [QuantizedBytesLayout]
        let windows: [[Int64]]
        let outputs: [[Int64]]
    }

    private var plans: [[Int]: Plan] = [:]

    private func plan(batch n: Int, height: Int, width: Int) -> Plan {
        if let plan = plans[[n, height, width]] { return plan }
        var (h, w, channels) = (height, width, model.convs[0].inChannels)
        let layouts = model.convs.map { conv -> QuantizedBytesLayout in
            let g = ConvGeometry(batch: n, inChannels: channels, height: h, width: w, outChannels: conv.outChannels,
                                 kernelH: conv.kernelSize, kernelW: conv.kernelSize, stride: conv.stride, padding: conv.padding)
            (h, w, channels) = (g.outHeight, g.outWidth, conv.outChannels)
            return QuantizedBytesLayout(g)
        }
        let outputs = layouts.indices.map { i -> [Int64] in
            let g = layouts[i].geometry
            return outputPixelOffsets(g) { image, y, x in
                i + 1 < layouts.count ? layouts[i + 1].offset(image: image, y: y, x: x)
                                      : ((image * g.outHeight + y) * g.outWidth + x) * g.outChannels
            }
        }
        let plan = Plan(layouts: layouts, windows: layouts.map(\.windowOffsets), outputs: outputs)
        plans[[n, height, width]] = plan
        return plan
    }

    /// The VNNI path: the input is quantized and laid out once, then every
    /// convolution reads and writes padded NHWC bytes.
    private func runChained<A: QuantizedActivation>(_: A.Type, _ images: Tensor) -> [Float] {
        let n = images.shape[0]
        let plan = plan(batch: n, height: images.shape[2], width: images.shape[3])
        let first = model.convs[0], range = codeRange(bits: first.inputBits)
        let codes: [A] = images.data.map {
            A(truncatingIfNeeded: quantize($0, scale: first.inputScale, zeroPoint: first.inputZeroPoint, range: range))
        }
        func zeroCode(_ zeroPoint: Int32) -> Int32 { QuantizedBytesLayout.zeroCode(zeroPoint: zeroPoint, signed: A.isSigned) }
        var input = [UInt8](repeating: 0, count: plan.layouts[0].count)
        plan.layouts[0].fill(&input, from: codes, zeroPoint: first.inputZeroPoint, threads: threads)
        for (i, (conv, weights)) in zip(model.convs, packed).enumerated() {
            let last = i == model.convs.count - 1
            // Borders and padding channels of the next input hold its zero code.
            var output = [UInt8](repeating: last ? 0 : UInt8(zeroCode(model.convs[i + 1].inputZeroPoint)),
                                 count: last ? n * plan.layouts[i].geometry.outPlane * conv.outChannels : plan.layouts[i + 1].count)
            output.withUnsafeMutableBytes { out in
                quantizedConv2dBytes(paddedInput: input, layout: plan.layouts[i], windowOffsets: plan.windows[i],
                                     inputZeroCode: zeroCode(conv.inputZeroPoint), weights: weights, bias: conv.bias,
                                     multipliers: conv.multipliers, outputZeroPoint: conv.outputZeroPoint,
                                     outputMin: conv.outputZeroPoint, outputMax: codeRange(bits: conv.outputBits).max,
                                     outputSigned: A.isSigned,
                                     output: out.baseAddress!, outputOffsets: plan.outputs[i], threads: threads)
            }
            input = output
        }
        // The last layer's NHWC bytes back to NCHW codes for the head.
        let g = plan.layouts.last!.geometry
        let (channels, pixels) = (g.outChannels, g.outPlane)
        let shift: Int32 = A.isSigned ? 128 : 0
        var features = [A](repeating: A(truncatingIfNeeded: 0), count: n * channels * pixels)
        for image in 0..<n {
            for p in 0..<pixels {
                for c in 0..<channels {
                    features[(image * channels + c) * pixels + p] =
                        A(truncatingIfNeeded: Int32(input[(image * pixels + p) * channels + c]) - shift)
                }
            }
        }
        return head(features, batch: n, channels: channels, plane: pixels)
    }

    /// Average pooling on codes, requantized to the linear input scale, then
    /// the int8 linear layer; the int32 accumulators become float logits.
    private func head<A: QuantizedActivation>(_ x: [A], batch N: Int, channels C: Int, plane P: Int) -> [Float] {
        let h = model.head
        let range = codeRange(bits: h.inputBits)
        let poolMultiplier = Float(Double(h.featureScale) / (Double(P) * Double(h.inputScale)))
        var pooled = [Int32](repeating: 0, count: N * C)
        for r in 0..<(N * C) {
            var sum: Int32 = 0
            for i in 0..<P { sum += Int32(x[r * P + i]) - h.featureZeroPoint }
            pooled[r] = requantize(sum, multiplier: poolMultiplier, zeroPoint: h.inputZeroPoint,
                                   min: range.min, max: range.max) - h.inputZeroPoint
        }
        var logits = [Float](repeating: 0, count: N * h.classes)
        for n in 0..<N {
            for k in 0..<h.classes {
                var acc = h.bias[k]
                for c in 0..<C { acc += pooled[n * C + c] * Int32(h.weight[k * C + c]) }
                logits[n * h.classes + k] = Float(Double(acc) * Double(h.inputScale) * Double(h.weightScales[k]))
            }
        }
        return logits
    }
}

/// Evaluates an INT8 model on the integer engine.
public func evaluate(_ model: Int8Model, on dataset: any Dataset, batchSize: Int = 256, keepLogits: Bool = false) -> Evaluation {
    let engine = try! Int8Engine(model)  // models reach here validated (convert or read)
    return evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { engine.logits($0) }
}
