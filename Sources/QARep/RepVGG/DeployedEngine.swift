import QARepKernels

/// Runs a deployed `RepVGGNet` (one 3x3 convolution with bias and ReLU per
/// block, global average pooling, linear head) for inference, the float
/// counterpart of `Int8Engine`.
///
/// Weights are packed once. Activations stay in zero-padded NHWC buffers from
/// the first convolution to the last: each convolution writes its
/// bias-and-ReLU'd output straight into the interior of the next one's padded
/// input, so there is no layout copy, patch matrix or separate ReLU pass
/// between layers. Every value is computed by the same kernel, in the same
/// order, as `conv2d` and the module's own forward pass, so the logits are
/// those of `model(x)` bit for bit.
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
    /// geometry, padded input layout, window origins and output offsets, and
    /// the activation buffers. Each convolution writes only the interior of
    /// the next layer's padded input, so the borders are zeroed once, here,
    /// and stay zero for every later call.
    private final class Plan {
        let geometries: [ConvGeometry]
        let layouts: [PaddedFloatNHWC]
        let windows: [[Int64]]
        let outputs: [[Int64]]
        /// Layer i's padded input for each i, then the last layer's NHWC output.
        let buffers: [UnsafeMutablePointer<Float>]

        init(geometries: [ConvGeometry], layouts: [PaddedFloatNHWC], windows: [[Int64]], outputs: [[Int64]]) {
            (self.geometries, self.layouts, self.windows, self.outputs) = (geometries, layouts, windows, outputs)
            let last = geometries.last!
            buffers = (layouts.map(\.count) + [last.batch * last.outPlane * last.outChannels]).map { count in
                let buffer = UnsafeMutablePointer<Float>.allocate(capacity: count)
                buffer.initialize(repeating: 0, count: count)
                return buffer
            }
        }

        deinit { buffers.forEach { $0.deallocate() } }
    }

    private var plans: [[Int]: Plan] = [:]
    /// Input shapes whose plans (and activation buffers) are kept at most.
    private let keptPlans = 4

    private func plan(batch n: Int, height: Int, width: Int) -> Plan {
        if let plan = plans[[n, height, width]] { return plan }
        var (h, w) = (height, width)
        let geometries = layers.map { layer -> ConvGeometry in
            let g = ConvGeometry(batch: n, inChannels: layer.inChannels, height: h, width: w,
                                 outChannels: layer.outChannels, kernelH: layer.kernel, kernelW: layer.kernel,
                                 stride: layer.stride, padding: layer.padding)
            precondition(g.outHeight >= 1 && g.outWidth >= 1, "input [\(n), \(layers[0].inChannels), \(height), \(width)] is too small for the network")
            (h, w) = (g.outHeight, g.outWidth)
            return g
        }
        let layouts = geometries.map(PaddedFloatNHWC.init)
        let outputs = geometries.indices.map { i -> [Int64] in
            let g = geometries[i]
            // The next layer's padded input, or plain NHWC after the last.
            return outputPixelOffsets(g) { image, y, x in
                i + 1 < layouts.count ? layouts[i + 1].offset(image: image, y: y, x: x)
                                      : ((image * g.outHeight + y) * g.outWidth + x) * g.outChannels
            }
        }
        let plan = Plan(geometries: geometries, layouts: layouts, windows: layouts.map(\.windowOffsets), outputs: outputs)
        if plans.count >= keptPlans { plans.removeAll() }
        plans[[n, height, width]] = plan
        return plan
    }

    /// Logits `[N, classes]` of normalized images `[N, C, H, W]`. The engine
    /// keeps what each input shape needs between calls, activation buffers
    /// included, so one engine serves one thread at a time.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == layers[0].inChannels,
                     "float engine input must be [N, \(layers[0].inChannels), H, W], got \(images.shape)")
        let n = images.shape[0]
        let plan = plan(batch: n, height: images.shape[2], width: images.shape[3])
        images.data.withUnsafeBufferPointer { plan.layouts[0].fill(plan.buffers[0], from: $0.baseAddress!, threads: threads) }
        for (i, layer) in layers.enumerated() {
            layer.bias.withUnsafeBufferPointer { bias in
                implicitConv2d(paddedInput: plan.buffers[i], layout: plan.layouts[i], weights: layer.weights,
                               bias: bias.baseAddress, relu: true, output: plan.buffers[i + 1],
                               outputOffsets: plan.outputs[i], channelStride: 1, windowOffsets: plan.windows[i],
                               threads: threads)
            }
        }
        let pooled = averagePoolNHWC(plan.buffers[layers.count], geometry: plan.geometries.last!)
        return noGrad { linear(Tensor(pooled, shape: [n, layers.last!.outChannels])) }
    }

    /// Global average pool of `[N, P, C]`, each channel summed in pixel order
    /// and divided by P, as `globalAveragePool` does on NCHW. The channel loop
    /// is innermost (contiguous, vectorized); each sum still adds its pixels
    /// in order.
    private func averagePoolNHWC(_ x: UnsafePointer<Float>, geometry g: ConvGeometry) -> [Float] {
        let (channels, plane) = (g.outChannels, g.outPlane)
        return [Float](unsafeUninitializedCapacity: g.batch * channels) { pooled, count in
            pooled.initialize(repeating: 0)
            for image in 0..<g.batch {
                let sums = pooled.baseAddress! + image * channels
                for p in 0..<plane {
                    let row = x + (image * plane + p) * channels
                    for c in 0..<channels { sums[c] += row[c] }
                }
                for c in 0..<channels { sums[c] /= Float(plane) }
            }
            count = g.batch * channels
        }
    }
}

/// Evaluates a deployed network on the float engine.
public func evaluate(_ engine: DeployedEngine, on dataset: any Dataset, batchSize: Int = 256,
                     keepLogits: Bool = false) -> Evaluation {
    evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { engine.logits($0) }
}
