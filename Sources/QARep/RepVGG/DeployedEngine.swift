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
    /// geometry, padded input layout, window origins and output offsets.
    private struct Plan {
        let geometries: [ConvGeometry]
        let layouts: [PaddedFloatNHWC]
        let windows: [[Int64]]
        let outputs: [[Int64]]
    }

    private var plans: [[Int]: Plan] = [:]

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
        plans[[n, height, width]] = plan
        return plan
    }

    /// Logits `[N, classes]` of normalized images `[N, C, H, W]`. The engine
    /// keeps what each input shape needs between calls, so one engine serves
    /// one thread at a time.
    public func logits(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == layers[0].inChannels,
                     "float engine input must be [N, \(layers[0].inChannels), H, W], got \(images.shape)")
        let n = images.shape[0]
        let plan = plan(batch: n, height: images.shape[2], width: images.shape[3])
        let first = plan.layouts[0]
        var input = [Float](unsafeUninitializedCapacity: first.count) { buffer, count in
            images.data.withUnsafeBufferPointer { first.fill(buffer.baseAddress!, from: $0.baseAddress!, threads: threads) }
            count = first.count
        }
        for (i, (layer, g)) in zip(layers, plan.geometries).enumerated() {
            let next = i + 1 < layers.count ? plan.layouts[i + 1] : nil
            var output = [Float](unsafeUninitializedCapacity: next?.count ?? g.batch * g.outPlane * g.outChannels) { buf, count in
                // The convolution writes every interior value; the next input's border is zero.
                next?.zeroBorder(buf.baseAddress!)
                count = buf.count
            }
            layer.bias.withUnsafeBufferPointer { bias in
                implicitConv2d(paddedInput: input, layout: plan.layouts[i], weights: layer.weights, bias: bias.baseAddress,
                               relu: true, output: &output, outputOffsets: plan.outputs[i], channelStride: 1,
                               windowOffsets: plan.windows[i], threads: threads)
            }
            input = output
        }
        return noGrad { linear(Tensor(averagePoolNHWC(input, geometry: plan.geometries.last!), shape: [n, layers.last!.outChannels])) }
    }

    /// Global average pool of `[N, P, C]`, each channel summed in pixel order
    /// and divided by P, as `globalAveragePool` does on NCHW.
    private func averagePoolNHWC(_ x: [Float], geometry g: ConvGeometry) -> [Float] {
        let (channels, plane) = (g.outChannels, g.outPlane)
        var pooled = [Float](repeating: 0, count: g.batch * channels)
        for image in 0..<g.batch {
            for c in 0..<channels {
                var sum: Float = 0
                for p in 0..<plane { sum += x[(image * plane + p) * channels + c] }
                pooled[image * channels + c] = sum / Float(plane)
            }
        }
        return pooled
    }
}

/// Evaluates a deployed network on the float engine.
public func evaluate(_ engine: DeployedEngine, on dataset: any Dataset, batchSize: Int = 256,
                     keepLogits: Bool = false) -> Evaluation {
    evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { engine.logits($0) }
}
