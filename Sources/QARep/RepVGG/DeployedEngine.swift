import QARepKernels

/// Runs a deployed `RepVGGNet` (one 3x3 convolution with bias and ReLU per
/// block, global average pooling, linear head) for inference, the float
/// counterpart of `Int8Engine`.
///
/// Weights are packed once. Activations stay in zero-padded NHWC buffers from
/// the first convolution to the last: each convolution writes its
/// bias-and-ReLU'd output straight into the interior of the next one's padded
/// input, so there is no layout copy, patch matrix or separate ReLU pass
/// between layers. On small maps each tile of pixels skips the window taps
/// it would read from the zero border (`BorderTapRuns`). Every value is the
/// same sum, in the same order, as `conv2d` and the module's own forward
/// pass compute (less only products with zero), so the logits are those of
/// `model(x)` bit for bit.
public final class DeployedEngine {
    private struct Layer {
        let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
        let weights: PackedFloatWeights
        let bias: [Float]
    }

    private let layers: [Layer]
    private let linear: Linear
    /// Worker threads of the convolution kernel (results do not depend on it).
    public let threads: Int

    /// Packs the weights of a deployed network.
    /// - Throws: `ModelError` when `model` is still in its multi-branch form.
    public init(_ model: RepVGGNet, threads: Int = KernelThreads.count) throws {
        guard model.isDeployed else {
            throw ModelError("the float engine runs deployed models; fold the network with deployed() first")
        }
        self.threads = max(1, threads)
        layers = model.blocks.map { block in
            let conv = (block as! ReparamBlock).conv
            return Layer(inChannels: conv.inChannels, outChannels: conv.outChannels, kernel: conv.kernelSize,
                         stride: conv.stride, padding: conv.padding,
                         weights: PackedFloatWeights(conv.weight.data, outChannels: conv.outChannels,
                                                     inChannels: conv.inChannels, kernelH: conv.kernelSize,
                                                     kernelW: conv.kernelSize),
                         bias: conv.bias?.data ?? [Float](repeating: 0, count: conv.outChannels))
        }
        linear = model.linear
    }

    /// What one input shape needs, computed once per shape: each layer's
    /// geometry, padded input layout, window origins and output offsets (in
    /// border-class order where skipping the border taps pays), and
    /// activation buffers for each worker that runs the shape. Each
    /// convolution writes only the interior of the next layer's padded input,
    /// so the borders are zeroed once, here, and stay zero for every later call.
    private struct Plan {
        let geometries: [ConvGeometry]
        let layouts: [PaddedFloatNHWC]
        let windows: [[Int64]]
        let outputs: [[Int64]]
        let runs: [BorderTapRuns?]
        /// Per worker: layer i's padded input for each i, then the last layer's NHWC output.
        let buffers: WorkerBuffers<Float>

        init(geometries: [ConvGeometry], layouts: [PaddedFloatNHWC], windows: [[Int64]], outputs: [[Int64]],
             runs: [BorderTapRuns?], workers: Int) {
            (self.geometries, self.layouts, self.windows, self.outputs, self.runs) = (geometries, layouts, windows, outputs, runs)
            let last = geometries.last!
            let counts = layouts.map(\.count) + [last.batch * last.outPlane * last.outChannels]
            buffers = WorkerBuffers(workers: workers, counts: counts, fills: counts.map { _ in 0 })
        }
    }

    private var plans: [[Int]: Plan] = [:]
    /// Input shapes whose plans (and activation buffers) are kept at most.
    private let keptPlans = 6

    private func geometries(batch n: Int, height: Int, width: Int) -> [ConvGeometry] {
        var (h, w) = (height, width)
        return layers.map { layer -> ConvGeometry in
            let g = ConvGeometry(batch: n, inChannels: layer.inChannels, height: h, width: w,
                                 outChannels: layer.outChannels, kernelH: layer.kernel, kernelW: layer.kernel,
                                 stride: layer.stride, padding: layer.padding)
            precondition(g.outHeight >= 1 && g.outWidth >= 1, "input [\(n), \(layers[0].inChannels), \(height), \(width)] is too small for the network")
            (h, w) = (g.outHeight, g.outWidth)
            return g
        }
    }

    private func plan(batch n: Int, height: Int, width: Int, workers: Int) -> Plan {
        let key = [n, height, width, workers]
        if let plan = plans[key] { return plan }
        let geometries = geometries(batch: n, height: height, width: width)
        let layouts = geometries.map(PaddedFloatNHWC.init)
        let outputs = geometries.indices.map { i -> [Int64] in
            let g = geometries[i]
            // The next layer's padded input, or plain NHWC after the last.
            return outputPixelOffsets(g) { image, y, x in
                i + 1 < layouts.count ? layouts[i + 1].offset(image: image, y: y, x: x)
                                      : ((image * g.outHeight + y) * g.outWidth + x) * g.outChannels
            }
        }
        let runs = geometries.map { BorderTapRuns(forward: $0, tilePixels: FloatKernelPath.best.tilePixels) }
        let plan = Plan(geometries: geometries, layouts: layouts,
                        windows: zip(layouts, runs).map { layout, runs in runs?.ordered(layout.windowOffsets) ?? layout.windowOffsets },
                        outputs: zip(outputs, runs).map { offsets, runs in runs?.ordered(offsets) ?? offsets },
                        runs: runs, workers: workers)
        if plans.count >= keptPlans { plans.removeAll() }
        plans[key] = plan
        return plan
    }

    /// Activation bytes of one image that a worker keeps hot while it runs a
    /// chunk through the network: the largest padded input and output of one
    /// layer together.
    private func workingSetPerImage(height: Int, width: Int) -> Int {
        let geometries = geometries(batch: 1, height: height, width: width)
        let layouts = geometries.map(PaddedFloatNHWC.init)
        return geometries.indices.map { i in
            let output = i + 1 < layouts.count ? layouts[i + 1].count : geometries[i].outPlane * geometries[i].outChannels
            return (layouts[i].count + output) * MemoryLayout<Float>.size
        }.max()!
    }

    /// Logits `[N, classes]` of normalized images `[N, C, H, W]`. The engine
    /// keeps what each input shape needs between calls, activation buffers
    /// included, so one engine serves one thread at a time.
    ///
    /// With at least one image per worker, the batch is cut into chunks of
    /// images small enough that a layer's input and output stay in the core's
    /// cache, and each worker runs whole chunks through every layer (one
    /// hand-off per call, no activation round trips through memory between
    /// layers). A single image runs layer by layer, each convolution shared
    /// among the workers. Either way every value comes from the same kernel in
    /// the same order, so the logits do not depend on the split.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == layers[0].inChannels,
                     "float engine input must be [N, \(layers[0].inChannels), H, W], got \(images.shape)")
        let (n, height, width) = (images.shape[0], images.shape[2], images.shape[3])
        let channels = layers.last!.outChannels, imageSize = images.shape[1] * height * width
        var pooled = [Float](repeating: 0, count: n * channels)
        images.data.withUnsafeBufferPointer { x in
            pooled.withUnsafeMutableBufferPointer { pooled in
                ImageChunks.run(
                    batch: n, threads: threads, bytesPerImage: workingSetPerImage(height: height, width: width),
                    plan: { plan(batch: $0, height: height, width: width, workers: $1) },
                    whole: { run($0, worker: 0, images: x.baseAddress!, pooled: pooled.baseAddress!, threads: threads) },
                    chunk: { plan, worker, images in
                        run(plan, worker: worker, images: x.baseAddress! + images.lowerBound * imageSize,
                            pooled: pooled.baseAddress! + images.lowerBound * channels, threads: 1)
                    })
            }
        }
        return noGrad { linear(Tensor(pooled, shape: [n, channels])) }
    }

    /// Runs the images of `plan`'s batch through every convolution on
    /// `worker`'s buffers and writes their pooled features.
    private func run(_ plan: Plan, worker: Int, images: UnsafePointer<Float>, pooled: UnsafeMutablePointer<Float>,
                     threads: Int) {
        let buffers = plan.buffers[worker]
        plan.layouts[0].fill(buffers[0], from: images, threads: threads)
        for (i, layer) in layers.enumerated() {
            layer.bias.withUnsafeBufferPointer { bias in
                implicitConv2d(paddedInput: buffers[i], layout: plan.layouts[i], weights: layer.weights,
                               bias: bias.baseAddress, relu: true, output: buffers[i + 1],
                               outputOffsets: plan.outputs[i], channelStride: 1, windowOffsets: plan.windows[i],
                               threads: threads, runs: plan.runs[i])
            }
        }
        averagePoolNHWC(buffers[layers.count], geometry: plan.geometries.last!, into: pooled)
    }

    /// Global average pool of `[N, P, C]`, each channel summed in pixel order
    /// and divided by P, as `globalAveragePool` does on NCHW. The channel loop
    /// is innermost (contiguous, vectorized); each sum still adds its pixels
    /// in order.
    private func averagePoolNHWC(_ x: UnsafePointer<Float>, geometry g: ConvGeometry, into pooled: UnsafeMutablePointer<Float>) {
        let (channels, plane) = (g.outChannels, g.outPlane)
        pooled.update(repeating: 0, count: g.batch * channels)
        for image in 0..<g.batch {
            let sums = pooled + image * channels
            for p in 0..<plane {
                let row = x + (image * plane + p) * channels
                for c in 0..<channels { sums[c] += row[c] }
            }
            for c in 0..<channels { sums[c] /= Float(plane) }
        }
    }
}

/// Evaluates a deployed network on the float engine.
public func evaluate(_ engine: DeployedEngine, on dataset: any Dataset, batchSize: Int = 256,
                     keepLogits: Bool = false) -> Evaluation {
    evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { engine.logits($0) }
}
