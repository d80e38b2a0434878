/// Structural reparameterization: folding a multi-branch block into one 3x3
/// convolution with bias. Pure functions on weights; the folded convolution
/// equals the block in evaluation mode (batch norms use running statistics).

/// Folds batch norm into the convolution before it (PyTorch's
/// `fuse_conv_bn_weights`): with `t = gamma / sqrt(running_var + eps)`,
/// `W' = W * t[o]` and `b' = beta + (b - running_mean) * t`.
/// - Returns: the folded `[O, I, kh, kw]` weight and `[O]` bias.
public func foldBatchNorm(weight: [Float], bias: [Float]?, outChannels: Int, bn: BatchNorm2d) -> (weight: [Float], bias: [Float]) {
    precondition(bn.channels == outChannels, "batch norm has \(bn.channels) channels, convolution \(outChannels)")
    let t = bn.scale
    let per = weight.count / outChannels
    var w = weight
    var b = [Float](repeating: 0, count: outChannels)
    for o in 0..<outChannels {
        for i in 0..<per { w[o * per + i] *= t[o] }
        b[o] = bn.bias.data[o] + ((bias?[o] ?? 0) - bn.runningMean.data[o]) * t[o]
    }
    return (w, b)
}

/// `foldBatchNorm` as tensor operations, with gradients to `weight`,
/// `bias` and the BN's `weight` and `bias` (its running statistics are constants).
func foldBatchNorm(weight: Tensor, bias: Tensor?, bn: BatchNorm2d) -> (weight: Tensor, bias: Tensor) {
    let t = runningStatisticsScale(bn)
    let centered = bias.map { $0 - bn.runningMean.detached() } ?? Tensor(bn.runningMean.data.map { 0 - $0 }, shape: [bn.channels])
    return (scaleChannels(weight, by: t), centered * t + bn.bias)
}

/// Per-channel `gamma / sqrt(running_var + eps)` as a tensor with a gradient
/// to gamma (the running variance is a constant).
func runningStatisticsScale(_ bn: BatchNorm2d) -> Tensor {
    let std = Tensor(bn.runningVar.data.map { ($0 + bn.eps).squareRoot() }, shape: [bn.channels])
    return bn.weight / std
}

/// The identity as a `[C, C, 3, 3]` kernel: 1 at the centre of channel c's own tap.
public func identityKernel(channels: Int) -> [Float] {
    var out = [Float](repeating: 0, count: channels * channels * 9)
    for c in 0..<channels { out[(c * channels + c) * 9 + 4] = 1 }
    return out
}

extension RepVGGBlock {
    /// The branches merged into one 3x3 convolution with bias, the post-BN
    /// (QARepVGG) left out: what QAT trains, with the post-BN kept as a BN.
    /// `MergedBranches.kernelAndBias()` on the block's own branches.
    public func mergedBranches() -> (weight: [Float], bias: [Float]) {
        noGrad {
            let (w, b) = MergedBranches(of: self, copying: false).kernelAndBias()
            return (w.data, b.data)
        }
    }

    /// The whole block as one 3x3 convolution with bias (post-BN folded too).
    public func reparameterized() -> (weight: [Float], bias: [Float]) {
        let merged = mergedBranches()
        guard let postBN else { return merged }
        return foldBatchNorm(weight: merged.weight, bias: merged.bias, outChannels: outChannels, bn: postBN)
    }

    /// The deployed block: `ReLU(conv3x3(x; K) + b)`.
    public func deployed() -> ReparamBlock {
        let (w, b) = reparameterized()
        return ReparamBlock(conv: Conv2d(weight: Tensor(w, shape: [outChannels, inChannels, 3, 3], requiresGrad: true),
                                         bias: Tensor(b, shape: [outChannels], requiresGrad: true),
                                         stride: stride, padding: 1))
    }
}

extension RepVGGNet {
    /// The deploy form: every block folded into a 3x3 conv + ReLU; the head
    /// is shared by value (copied). Already deployed blocks are kept.
    public func deployed() -> RepVGGNet {
        let stages = self.stages.map { $0.map { ($0 as? RepVGGBlock)?.deployed() ?? $0 } }
        let head = Linear(weight: linear.weight.detachedParameter(), bias: linear.bias?.detachedParameter())
        let net = RepVGGNet(config: config, stages: stages, linear: head)
        net.eval()
        return net
    }
}

extension Tensor {
    /// A copy that is a fresh leaf with the same `requiresGrad`.
    func detachedParameter() -> Tensor { Tensor(data, shape: shape, requiresGrad: requiresGrad) }
}
