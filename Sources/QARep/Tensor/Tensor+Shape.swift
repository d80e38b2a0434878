extension Tensor {
    /// The same elements under another shape; one dimension may be -1 (inferred).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var dims = newShape
        if let k = dims.firstIndex(of: -1) {
            let known = dims.enumerated().filter { $0.offset != k }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            dims[k] = count / known
        }
        precondition(dims.reduce(1, *) == count, "cannot reshape \(shape) (\(count) elements) to \(newShape)")
        // [N, ...] to [N, rest] is a graph's flatten; other reshapes it does not hold.
        if rank >= 2 && dims == [shape[0], count / max(shape[0], 1)] {
            return traced(.flatten, [self]) { Tensor.result(data, shape: dims, inputs: [self]) { [self] g in accumulateGrad(g) } }
        }
        return Tensor.result(data, shape: dims, inputs: [self]) { [self] g in accumulateGrad(g) }
    }

    /// The centre tap `w[:, :, kh/2, kw/2]` of an `[O, I, kh, kw]` kernel with
    /// odd sides, shape `[O, I]`. RepVGG's custom L2 regularizes it apart
    /// from the rest of the kernel.
    public func kernelCenter() -> Tensor {
        precondition(rank == 4 && shape[2] % 2 == 1 && shape[3] % 2 == 1, "kernelCenter needs an [O, I, kh, kw] kernel with odd sides, got \(shape)")
        let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3])
        let center = (kh / 2) * kw + kw / 2
        let area = kh * kw
        var out = [Float](repeating: 0, count: o * i)
        for r in 0..<(o * i) { out[r] = data[r * area + center] }
        return Tensor.result(out, shape: [o, i], inputs: [self]) { [self] g in
            accumulateGrad { acc in for r in 0..<(o * i) { acc[r * area + center] += g[r] } }
        }
    }

    /// The inverse of `kernelCenter()`: an `[O, I]` or `[O, I, 1, 1]` kernel
    /// placed at the centre of an `[O, I, size, size]` one (odd `size`),
    /// zeros around it; RepVGG pads its 1x1 branch to 3x3 this way.
    public func paddedKernel(to size: Int) -> Tensor {
        precondition(size % 2 == 1 && (rank == 2 || (rank == 4 && shape[2] == 1 && shape[3] == 1)),
                     "paddedKernel needs an [O, I] or [O, I, 1, 1] kernel and an odd size, got \(shape) and \(size)")
        let (o, i) = (shape[0], shape[1])
        let area = size * size, center = (size / 2) * size + size / 2
        var out = [Float](repeating: 0, count: o * i * area)
        for r in 0..<(o * i) { out[r * area + center] = data[r] }
        return Tensor.result(out, shape: [o, i, size, size], inputs: [self]) { [self] g in
            accumulateGrad { acc in for r in 0..<(o * i) { acc[r] += g[r * area + center] } }
        }
    }
}
