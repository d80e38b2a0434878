/// RepVGG's "custom L2" (setting S0): weight decay on the equivalent fused
/// kernel rather than on each branch. Per block,
///
///     sum(K3²) - sum(K3_centre²) + sum((K3_centre * t3 + K1 * t1)² / (t3² + t1²))
///
/// with `t = gamma / sqrt(running_var + eps)` of each branch's BN treated as
/// a constant. The training loss adds `0.5 * weightDecay * sum over blocks`,
/// and those kernels get no ordinary decay (`customL2Keys`).
public enum CustomL2 {
    /// The regularization term of `model` (a scalar with a graph to the kernels).
    /// - Precondition: every block's 1x1 branch has a BN (`repvgg` or `s2`).
    public static func term(_ model: RepVGGNet) -> Tensor {
        var total: Tensor?
        for case let block as RepVGGBlock in model.blocks {
            guard let pw = block.pointwise as? ConvBN else {
                preconditionFailure("custom L2 needs a BN on the 1x1 branch (block kinds repvgg and s2)")
            }
            let k3 = block.dense.conv.weight, k1 = pw.conv.weight
            let (O, I) = (block.outChannels, block.inChannels)
            let t3 = broadcastRows(block.dense.bn.scale, columns: I)
            let t1 = broadcastRows(pw.bn.scale, columns: I)
            let centre = k3.kernelCenter()
            let circle = k3.squared().sum() - centre.squared().sum()
            let eq = centre * t3 + k1.reshaped([O, I]) * t1
            let norm = Tensor(zip(t3.data, t1.data).map { $0 * $0 + $1 * $1 }, shape: [O, I])
            let term = circle + (eq.squared() / norm).sum()
            total = total.map { $0 + term } ?? term
        }
        return total ?? Tensor(scalar: 0)
    }

    /// State-dict keys of the kernels the custom L2 covers (to exclude from ordinary decay).
    public static func keys(_ model: RepVGGNet) -> Set<String> {
        var out = Set<String>()
        for (path, module) in model.namedModules() where module is RepVGGBlock {
            out.insert(path + ".rbr_dense.conv.weight")
            out.insert(path + ".rbr_1x1.conv.weight")
        }
        return out
    }

    private static func broadcastRows(_ v: [Float], columns: Int) -> Tensor {
        Tensor(v.flatMap { [Float](repeating: $0, count: columns) }, shape: [v.count, columns])
    }
}
