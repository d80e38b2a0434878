/// Concatenation of `[N, C_i, H, W]` tensors along the channel axis, output
/// `[N, sum C_i, H, W]`; each input gets its slice of the gradient.
public func concatenateChannels(_ xs: [Tensor]) -> Tensor {
    traced(.concat, xs) { concatenate(xs) }
}

private func concatenate(_ xs: [Tensor]) -> Tensor {
    precondition(!xs.isEmpty, "concatenateChannels needs at least one tensor")
    let first = xs[0]
    precondition(xs.allSatisfy { $0.rank == 4 && $0.shape[0] == first.shape[0] && $0.shape[2...] == first.shape[2...] },
                 "concatenateChannels needs [N, C, H, W] tensors that differ only in C, got \(xs.map(\.shape))")
    let (N, P) = (first.shape[0], first.shape[2] * first.shape[3])
    let channels = xs.map { $0.shape[1] }, total = channels.reduce(0, +)
    var y = [Float](repeating: 0, count: N * total * P)
    for n in 0..<N {
        var offset = 0
        for (x, c) in zip(xs, channels) {
            let source = x.data[(n * c * P)..<((n + 1) * c * P)]
            y.replaceSubrange(((n * total + offset) * P)..<((n * total + offset + c) * P), with: source)
            offset += c
        }
    }
    return Tensor.result(y, shape: [N, total, first.shape[2], first.shape[3]], inputs: xs) { g in
        var offset = 0
        for (x, c) in zip(xs, channels) {
            if x.requiresGrad {
                x.accumulateGrad { dx in
                    for n in 0..<N {
                        for i in 0..<(c * P) { dx[n * c * P + i] += g[(n * total + offset) * P + i] }
                    }
                }
            }
            offset += c
        }
    }
}
