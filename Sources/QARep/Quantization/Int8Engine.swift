import QARepKernels

/// Runs an `Int8Model` (8 bits or fewer) in integer arithmetic: the input image is quantized
/// once, every convolution is an exact integer GEMM (int32 accumulators) with fused
/// bias, requantization and ReLU, pooling and the linear head work on
/// integer codes, and only the final accumulators are scaled into float
/// logits. Activations stay in the kernels' padded NHWC layouts from the first
/// convolution to the last, each writing straight into the next one's input:
/// bytes on VNNI and AMX, int16 `x_q - z_x` on the portable path, and on AVX2
/// bytes for every convolution whose input codes lie in [0, 127], int16 for
/// the others.
public final class Int8Engine {
    public let model: Int8Model
    let packed: [PackedInt8Weights]
    /// Worker threads of the convolution kernels.
    public let threads: Int
    /// The integer kernel; every path gives the same logits.
    public let path: IntegerKernelPath

    /// - Parameter path: `.best` unless comparing paths; every path gives the same logits.
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

    /// Logits `[N, classes]` of normalized float images `[N, C, H, W]`. The
    /// engine keeps what each input shape needs between calls, activation
    /// buffers included, so one engine serves one thread at a time.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == model.convs[0].inChannels,
                     "INT8 engine input must be [N, \(model.convs[0].inChannels), H, W], got \(images.shape)")
        let out = model.activation.signed ? run(Int8.self, images) : run(UInt8.self, images)
        return Tensor(out, shape: [images.shape[0], model.head.classes])
    }

    /// One convolution's padded input: int16 for the int16 kernels, bytes for the byte kernels.
    private enum LayerInput {
        case int16(QuantizedInt16Layout)
        case bytes(QuantizedBytesLayout)

        var geometry: ConvGeometry {
            switch self { case .int16(let l): l.geometry; case .bytes(let l): l.geometry }
        }
        var element: QuantizedElement {
            switch self { case .int16: .int16; case .bytes(let l): l.element }
        }
        /// Bytes of the buffer.
        var bytes: Int {
            switch self { case .int16(let l): 2 * l.count; case .bytes(let l): l.count }
        }
        var windowOffsets: [Int64] {
            switch self { case .int16(let l): l.windowOffsets; case .bytes(let l): l.windowOffsets }
        }
        func offset(image n: Int, y: Int, x: Int) -> Int {
            switch self { case .int16(let l): l.offset(image: n, y: y, x: x); case .bytes(let l): l.offset(image: n, y: y, x: x) }
        }
    }

    /// How each convolution's input is stored on this engine's path: bytes on
    /// VNNI and AMX; int16 on the portable path; on AVX2, raw bytes where the
    /// input's codes (and so every byte the kernel reads) lie in [0, 127],
    /// int16 elsewhere (the first layer's image codes under a signed scheme).
    /// Fixed by the model and the path, so found once.
    private lazy var inputElements: [QuantizedElement] = makeInputElements()

    private func makeInputElements() -> [QuantizedElement] {
        model.convs.indices.map { i -> QuantizedElement in
            switch path {
            case .amx, .avx512vnni: return .shiftedByte
            case .portable: return .int16
            case .avx2:
                let conv = model.convs[i]
                // A convolution after the first reads its predecessor's ReLU outputs.
                let codes = i == 0 ? codeRange(bits: conv.inputBits)
                                   : QuantRange(min: model.convs[i - 1].outputZeroPoint,
                                                max: codeRange(bits: model.convs[i - 1].outputBits).max)
                let zero = QuantRange(min: conv.inputZeroPoint, max: conv.inputZeroPoint)
                return QuantizedElement.rawByte.holds(codes) && QuantizedElement.rawByte.holds(zero) ? .rawByte : .int16
            }
        }
    }

    /// What the last convolution writes for the head: plain NHWC elements.
    private var lastOutputElement: QuantizedElement { path.usesBytes ? .shiftedByte : .int16 }

    /// Each layer's padded input layout, window origins and output offsets
    /// (into the next layer's padded input, or plain NHWC after the last) for
    /// one input shape, and activation buffers for each worker that runs the
    /// shape. Borders and padding channels of each layer's input hold that
    /// input's zero element; the convolutions write only real channels of
    /// interior pixels, so the buffers are filled once, here.
    private final class Plan {
        let inputs: [LayerInput]
        let windows: [[Int64]]
        let outputs: [[Int64]]
        /// Layers whose border elements add nothing (int16, or bytes whose
        /// zero is 0) skip the border's taps on the AVX2 and portable kernels.
        let runs: [BorderTapRuns?]
        /// Per worker: layer i's padded input for each i, then the last layer's
        /// NHWC output, as raw bytes; int16 buffers are bound to Int16.
        let buffers: WorkerBuffers<UInt8>

        init(inputs: [LayerInput], zeroBytes: [UInt8], lastOutputElement: QuantizedElement, skipsBorders: Bool,
             workers: Int) {
            self.inputs = inputs
            let runs = zip(inputs, zeroBytes).map { input, zero in
                skipsBorders && zero == 0 ? BorderTapRuns(forward: input.geometry, tilePixels: IntegerKernelPath.tilePixels) : nil
            }
            windows = zip(inputs, runs).map { input, runs in runs?.ordered(input.windowOffsets) ?? input.windowOffsets }
            outputs = inputs.indices.map { i -> [Int64] in
                let g = inputs[i].geometry
                let offsets = outputPixelOffsets(g) { image, y, x in
                    i + 1 < inputs.count ? inputs[i + 1].offset(image: image, y: y, x: x)
                                         : ((image * g.outHeight + y) * g.outWidth + x) * g.outChannels
                }
                return runs[i]?.ordered(offsets) ?? offsets
            }
            self.runs = runs
            let last = inputs.last!.geometry
            let counts = inputs.map(\.bytes) + [last.batch * last.outPlane * last.outChannels * lastOutputElement.size]
            // An int16 buffer's zero element is two zero bytes.
            buffers = WorkerBuffers(workers: workers, counts: counts, fills: zeroBytes + [0])
            for worker in 0..<workers {
                for (buffer, (count, element)) in zip(buffers[worker], zip(counts, inputs.map(\.element) + [lastOutputElement]))
                where element == .int16 {
                    _ = UnsafeMutableRawPointer(buffer).bindMemory(to: Int16.self, capacity: count / 2)
                }
            }
        }
    }

    /// Plans by `[batch, height, width, workers]`.
    private var plans: [[Int]: Plan] = [:]
    /// Input shapes whose plans (and activation buffers) are kept at most.
    private let keptPlans = 6

    private func inputs(batch n: Int, height: Int, width: Int) -> [LayerInput] {
        var (h, w, channels) = (height, width, model.convs[0].inChannels)
        return zip(model.convs, inputElements).map { conv, element -> LayerInput in
            let g = ConvGeometry(batch: n, inChannels: channels, height: h, width: w, outChannels: conv.outChannels,
                                 kernelH: conv.kernelSize, kernelW: conv.kernelSize, stride: conv.stride, padding: conv.padding)
            (h, w, channels) = (g.outHeight, g.outWidth, conv.outChannels)
            return element == .int16 ? .int16(QuantizedInt16Layout(g)) : .bytes(QuantizedBytesLayout(g, element: element))
        }
    }

    private func plan(batch n: Int, height: Int, width: Int, workers: Int) -> Plan {
        let key = [n, height, width, workers]
        if let plan = plans[key] { return plan }
        let signed = model.activation.signed
        let zeroBytes = zip(model.convs, inputElements).map { conv, element in
            UInt8(element.zero(zeroPoint: conv.inputZeroPoint, signed: signed))
        }
        let plan = Plan(inputs: inputs(batch: n, height: height, width: width), zeroBytes: zeroBytes,
                        lastOutputElement: lastOutputElement, skipsBorders: path.skipsBorderTaps, workers: workers)
        if plans.count >= keptPlans { plans.removeAll() }
        plans[key] = plan
        return plan
    }

    /// Activation bytes of one image that a worker keeps hot while it runs a
    /// chunk: the largest padded input and output of one layer together.
    private func workingSetPerImage(height: Int, width: Int) -> Int {
        let inputs = inputs(batch: 1, height: height, width: width)
        return inputs.indices.map { i in
            let g = inputs[i].geometry
            return inputs[i].bytes + (i + 1 < inputs.count ? inputs[i + 1].bytes
                                                           : g.outPlane * g.outChannels * lastOutputElement.size)
        }.max()!
    }

    /// Each image is quantized and laid out once, then every convolution reads
    /// its padded input and writes the next one's. Batches of at least one
    /// image per worker run in `ImageChunks`, smaller ones layer by layer with
    /// each convolution shared among the workers; every value is the same
    /// either way.
    private func run<A: QuantizedActivation>(_: A.Type, _ images: Tensor) -> [Float] {
        let (n, height, width) = (images.shape[0], images.shape[2], images.shape[3])
        let last = model.convs.last!, channels = last.outChannels, imageSize = images.shape[1] * height * width
        var sums = [Int32](repeating: 0, count: n * channels)
        var pixels = 0
        images.data.withUnsafeBufferPointer { x in
            sums.withUnsafeMutableBufferPointer { sums in
                ImageChunks.run(
                    batch: n, threads: threads, bytesPerImage: workingSetPerImage(height: height, width: width),
                    plan: {
                        let plan = plan(batch: $0, height: height, width: width, workers: $1)
                        pixels = plan.inputs.last!.geometry.outPlane
                        return plan
                    },
                    whole: { run(A.self, $0, worker: 0, images: x.baseAddress!, sums: sums.baseAddress!, threads: threads) },
                    chunk: { plan, worker, images in
                        run(A.self, plan, worker: worker, images: x.baseAddress! + images.lowerBound * imageSize,
                            sums: sums.baseAddress! + images.lowerBound * channels, threads: 1)
                    })
            }
        }
        let codeOffset = lastOutputElement.codeOffset(zeroPoint: last.outputZeroPoint, signed: A.isSigned)
        return head(sums, codeOffset: codeOffset, batch: n, channels: channels, plane: pixels)
    }

    /// Runs the images of `plan`'s batch through every convolution on
    /// `worker`'s buffers and adds each image's last-layer elements, summed
    /// over its pixels, to `sums` (zero on entry).
    private func run<A: QuantizedActivation>(_: A.Type, _ plan: Plan, worker: Int, images: UnsafePointer<Float>,
                                             sums: UnsafeMutablePointer<Int32>, threads: Int) {
        let buffers = plan.buffers[worker]
        let first = model.convs[0], range = codeRange(bits: first.inputBits)
        let g0 = plan.inputs[0].geometry
        let count = g0.batch * g0.inChannels * g0.height * g0.width
        let codes = [A](unsafeUninitializedCapacity: count) { codes, initialized in
            for i in 0..<count {
                codes[i] = A(truncatingIfNeeded: quantize(images[i], scale: first.inputScale,
                                                          zeroPoint: first.inputZeroPoint, range: range))
            }
            initialized = count
        }
        switch plan.inputs[0] {
        case .int16(let layout):
            layout.fill(UnsafeMutableRawPointer(buffers[0]).assumingMemoryBound(to: Int16.self), from: codes,
                        zeroPoint: first.inputZeroPoint, threads: threads)
        case .bytes(let layout):
            layout.fill(buffers[0], from: codes, zeroPoint: first.inputZeroPoint, threads: threads)
        }
        for (i, (conv, weights)) in zip(model.convs, packed).enumerated() {
            let outputElement = i + 1 < plan.inputs.count ? plan.inputs[i + 1].element : lastOutputElement
            let output = UnsafeMutableRawPointer(buffers[i + 1])
            // ReLU is the clamp's lower bound: the code of real 0.
            let (outputMin, outputMax) = (conv.outputZeroPoint, codeRange(bits: conv.outputBits).max)
            switch plan.inputs[i] {
            case .int16(let layout):
                quantizedConv2dInt16(paddedInput: UnsafeRawPointer(buffers[i]).assumingMemoryBound(to: Int16.self),
                                     layout: layout, windowOffsets: plan.windows[i], weights: weights, bias: conv.bias,
                                     multipliers: conv.multipliers, outputZeroPoint: conv.outputZeroPoint,
                                     outputMin: outputMin, outputMax: outputMax, outputSigned: A.isSigned,
                                     output: output, outputElement: outputElement, outputOffsets: plan.outputs[i],
                                     threads: threads, path: path, runs: plan.runs[i])
            case .bytes(let layout):
                quantizedConv2dBytes(paddedInput: buffers[i], layout: layout, windowOffsets: plan.windows[i],
                                     inputZeroCode: layout.zeroCode(zeroPoint: conv.inputZeroPoint, signed: A.isSigned),
                                     weights: weights, bias: conv.bias, multipliers: conv.multipliers,
                                     outputZeroPoint: conv.outputZeroPoint, outputMin: outputMin, outputMax: outputMax,
                                     outputSigned: A.isSigned, output: output, outputElement: outputElement,
                                     outputOffsets: plan.outputs[i], threads: threads, path: path, runs: plan.runs[i])
            }
        }
        // The last layer's NHWC elements, summed over each image's pixels for
        // the head: a pixel's channels are consecutive, so the adds run
        // across channels. The head adds the element's codeOffset.
        let g = plan.inputs.last!.geometry
        let last = UnsafeRawPointer(buffers[model.convs.count])
        switch lastOutputElement {
        case .int16: sumPixels(last.assumingMemoryBound(to: Int16.self), g, into: sums)
        case .shiftedByte, .rawByte: sumPixels(last.assumingMemoryBound(to: UInt8.self), g, into: sums)
        }
    }

    /// Adds each image's `[pixels][channels]` elements, summed over its pixels, to `sums`.
    private func sumPixels<E: FixedWidthInteger>(_ last: UnsafePointer<E>, _ g: ConvGeometry,
                                                 into sums: UnsafeMutablePointer<Int32>) {
        let (channels, pixels) = (g.outChannels, g.outPlane)
        for image in 0..<g.batch {
            let sum = sums + image * channels
            for p in 0..<pixels {
                let row = last + (image * pixels + p) * channels
                for c in 0..<channels { sum[c] &+= Int32(row[c]) }
            }
        }
    }

    /// Average pooling on codes, requantized to the linear input scale, then
    /// the int8 linear layer; the int32 accumulators become float logits.
    /// `sums[n * C + c]` is the sum over the plane of image n's channel c,
    /// each code counted as `stored + codeOffset`.
    private func head(_ sums: [Int32], codeOffset: Int32, batch N: Int, channels C: Int, plane P: Int) -> [Float] {
        let h = model.head
        let range = codeRange(bits: h.inputBits)
        let poolMultiplier = Float(Double(h.featureScale) / (Double(P) * Double(h.inputScale)))
        // sum_p (code_p - z_feat) = sum_p stored_p + P * (codeOffset - z_feat)
        let shift = Int32(P) &* (codeOffset &- h.featureZeroPoint)
        var logits = [Float](repeating: 0, count: N * h.classes)
        // Images are independent: shared between the workers (at batch 128 on
        // one thread the head was 3% of a0-half's INT8 time, the other core idle).
        sums.withUnsafeBufferPointer { sums in
            h.weight.withUnsafeBufferPointer { weight in
                logits.withUnsafeMutableBufferPointer { logits in
                    parallelFor(N, threads: N * C * h.classes >= 1 << 16 ? threads : 1) { _, images in
                        let pooled = UnsafeMutablePointer<Int32>.allocate(capacity: C)
                        defer { pooled.deallocate() }
                        for n in images {
                            for c in 0..<C {
                                pooled[c] = requantize(sums[n * C + c] &+ shift, multiplier: poolMultiplier,
                                                       zeroPoint: h.inputZeroPoint, min: range.min, max: range.max)
                                    - h.inputZeroPoint
                            }
                            for k in 0..<h.classes {
                                var acc = h.bias[k]
                                for c in 0..<C { acc &+= pooled[c] &* Int32(weight[k * C + c]) }
                                logits[n * h.classes + k] = Float(Double(acc) * Double(h.inputScale)
                                                                  * Double(h.weightScales[k]))
                            }
                        }
                    }
                }
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
