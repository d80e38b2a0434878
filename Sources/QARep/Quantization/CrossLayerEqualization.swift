/// Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization
/// Through Weight Equalization and Bias Correction", section 4.1): in a
/// chain `conv1 -> ReLU -> conv2`, scaling output channel c of conv1 (weight
/// and bias) by `1 / s_c` and input channel c of conv2 by `s_c` changes
/// nothing, since `ReLU(x / s) = ReLU(x) / s` for `s > 0`. Choosing
/// `s_c = sqrt(r1_c / r2_c)`, with r1 the range of conv1's output channel and
/// r2 that of conv2's input channel, gives both the same range
/// `sqrt(r1_c * r2_c)`: channels with tiny weights next to channels with huge
/// ones (RepVGG's identity-branch BN, the paper's cause C1) stop wasting
/// quantization levels.
extension QuantizedNet {
    /// Equalizes every pair of consecutive units and the last unit with the
    /// linear head (global average pooling is linear, so it passes the scale
    /// through), sweeping the chain `sweeps` times. Call it before
    /// calibration: it changes the activation ranges, never the float outputs.
    /// - Returns: the largest remaining `max(r1/r2, r2/r1)` over all channels
    ///   after the last sweep (1 when fully equalized).
    /// - Throws: `QuantizationError` unless the model is in the folded form
    ///   (PTQ's: no post-BNs, no branches), or if it was already calibrated.
    @discardableResult
    public func equalizeCrossLayer(sweeps: Int = 20) throws -> Float {
        let convs = try foldedConvolutions(for: "cross-layer equalization")
        guard !fakeQuantizers.contains(where: { !$0.tracksCurrentValues && $0.observers.contains(where: \.hasObserved) }) else {
            throw QuantizationError("cross-layer equalization changes activation ranges: equalize before calibrating")
        }
        precondition(sweeps >= 1, "sweeps must be at least 1")
        var imbalance: Float = 1
        for _ in 0..<sweeps {
            imbalance = 1
            for (first, second) in zip(convs, convs.dropFirst()) {
                imbalance = max(imbalance, equalize(first.weight, first.bias!, with: second.weight))
            }
            imbalance = max(imbalance, equalize(convs.last!.weight, convs.last!.bias!, with: linear.weight))
        }
        return imbalance
    }
}

/// One equalization step between `w1 [O, ...]` (with bias `b1 [O]`) and
/// `w2 [P, O, ...]`; returns the largest range ratio it found before scaling.
private func equalize(_ w1: Tensor, _ b1: Tensor, with w2: Tensor) -> Float {
    let channels = w1.shape[0]
    precondition(w2.shape[1] == channels, "layer reads \(w2.shape[1]) channels, the one before writes \(channels)")
    let per1 = w1.count / channels, outer2 = w2.shape[0], per2 = w2.count / (outer2 * channels)
    var a = w1.data, bias = b1.data, c = w2.data
    var worst: Float = 1
    for ch in 0..<channels {
        let r1 = a[(ch * per1)..<((ch + 1) * per1)].reduce(0) { max($0, abs($1)) }
        var r2: Float = 0
        for o in 0..<outer2 {
            let base = (o * channels + ch) * per2
            for i in 0..<per2 { r2 = max(r2, abs(c[base + i])) }
        }
        guard r1 > 0 && r2 > 0 else { continue }  // a dead channel has no range to balance
        worst = max(worst, max(r1 / r2, r2 / r1))
        let s = (r1 / r2).squareRoot()
        for i in (ch * per1)..<((ch + 1) * per1) { a[i] /= s }
        bias[ch] /= s
        for o in 0..<outer2 {
            let base = (o * channels + ch) * per2
            for i in 0..<per2 { c[base + i] *= s }
        }
    }
    w1.assign(a); b1.assign(bias); w2.assign(c)
    return worst
}
