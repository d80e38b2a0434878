import QARepKernels

/// Runs an `Int8Model` in integer arithmetic: the input image is quantized
/// once, every convolution is an exact int16 x int16 -> int32 GEMM with fused
/// bias, requantization and ReLU, pooling and the linear head work on
/// integer codes, and only the final accumulators are scaled into float
/// logits. Signed activations live in `Int8` buffers, unsigned in `UInt8`.
public final class Int8Engine {
    public let model: Int8Model
    let packed: [PackedInt8Weights]
    /// Worker threads of the convolution kernels.
    public let threads: Int

    public init(_ model: Int8Model, threads: Int = BLASThreads.count) throws {
        try model.validate()
        self.model = model
        self.threads = max(1, threads)
        packed = model.convs.map {
            PackedInt8Weights(convolution: $0.weight, outChannels: $0.outChannels, inChannels: $0.inChannels,
                              kernelH: $0.kernelSize, kernelW: $0.kernelSize)
        }
    }

    /// Logits `[N, classes]` of normalized float images `[N, C, H, W]`.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == model.convs[0].inChannels,
                     "INT8 engine input must be [N, \(model.convs[0].inChannels), H, W], got \(images.shape)")
        let out = model.activation.signed ? run(Int8.self, images) : run(UInt8.self, images)
        return Tensor(out, shape: [images.shape[0], model.head.classes])
    }

    private func run<A: QuantizedActivation>(_: A.Type, _ images: Tensor) -> [Float] {
        let (N, C) = (images.shape[0], images.shape[1])
        var (H, W) = (images.shape[2], images.shape[3])
        let first = model.convs[0]
        let range = A.codeRange
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
                                    outputMax: range.max, output: buf.baseAddress!, threads: threads)
                }
                count = N * conv.outChannels * g.outPlane
            }
            x = y
            (H, W, channels) = (g.outHeight, g.outWidth, conv.outChannels)
        }
        return head(x, batch: N, channels: channels, plane: H * W)
    }

    /// Average pooling on codes, requantized to the linear input scale, then
    /// the int8 linear layer; the int32 accumulators become float logits.
    private func head<A: QuantizedActivation>(_ x: [A], batch N: Int, channels C: Int, plane P: Int) -> [Float] {
        let h = model.head
        let range = A.codeRange
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
public func evaluate(_ model: Int8Model, on dataset: FashionMNIST, batchSize: Int = 256, keepLogits: Bool = false) -> Evaluation {
    let engine = try! Int8Engine(model)  // models reach here validated (convert or read)
    return evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { engine.logits($0) }
}
