/// Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization
/// Through Weight Equalization and Bias Correction", section 4.2, in the
/// empirical form AIMET also ships): rounding the weights shifts each output
/// channel's mean by `E[(W_q - W) x]`, which the next layers read as a bias
/// error. Taking that shift, measured on calibration images, out of the bias
/// removes it; at low weight bits it is most of the error a layer adds.
extension QuantizedNet {
    /// Corrects every unit's bias and the head's, in order: for each layer,
    /// the calibration images as they reach it (earlier layers already
    /// corrected, activations fake-quantized) run through the convolution
    /// with quantized and with float weights, and the per-channel mean of the
    /// difference is subtracted from the bias. The converted INT8 model
    /// quantizes the corrected bias.
    /// - Returns: the largest correction of each layer (units, then the head).
    /// - Throws: `QuantizationError` unless the model is in the folded form
    ///   (PTQ's: no post-BNs, no branches), if it was never calibrated, or `images` is empty.
    @discardableResult
    public func correctBias(on images: any Dataset, batchSize: Int = 128) throws -> [Float] {
        let convs = try foldedConvolutions(for: "bias correction")
        guard images.count > 0 else { throw QuantizationError("bias correction needs at least one image, got 0") }
        let activations = units.map(\.inputQuant) + [linear.featureQuant, linear.inputQuant]
        guard activations.allSatisfy({ $0.fakeQuantEnabled && $0.observers.allSatisfy(\.hasObserved) }) else {
            throw QuantizationError("bias correction needs a calibrated model: calibrate first")
        }
        let wasTraining = training
        eval()
        defer { train(wasTraining) }
        let loader = DataLoader(dataset: images, batchSize: batchSize, shuffle: false, augment: false, seed: 0)
        return noGrad {
            var xs = loader.batches(epoch: 0).map { Tensor($0.images, shape: [$0.count, $0.channels, $0.height, $0.width]) }
            var corrections: [Float] = []
            for (unit, conv) in zip(units, convs) {
                let inputs = xs.map { unit.inputQuant($0) }
                let shift = meanShift(inputs, float: conv.weight, quantized: unit.weightQuant(conv.weight)) {
                    conv2d($0, weight: $1, stride: conv.stride, padding: conv.padding)
                }
                conv.bias!.assign(zip(conv.bias!.data, shift).map { $0 - $1 })
                corrections.append(shift.map(abs).max() ?? 0)
                // The unit's own forward pass (folded: no post-BN) on the inputs already quantized.
                xs = inputs.map {
                    fakeQuantizedConvolution($0, inputQuant: unit.inputQuant, source: conv, weightQuant: unit.weightQuant,
                                             postBN: nil, relu: true)
                }
            }
            let pooled = xs.map { linear.inputQuant(globalAveragePool(linear.featureQuant($0))) }
            let shift = meanShift(pooled, float: linear.weight, quantized: linear.weightQuant(linear.weight)) {
                QARep.linear($0, weight: $1, bias: nil)
            }
            linear.bias.assign(zip(linear.bias.data, shift).map { $0 - $1 })
            corrections.append(shift.map(abs).max() ?? 0)
            return corrections
        }
    }
}

/// Per output channel (axis 1), the mean over the batches of
/// `apply(x, quantized) - apply(x, float)`, summed in Double.
private func meanShift(_ xs: [Tensor], float: Tensor, quantized: Tensor, _ apply: (Tensor, Tensor) -> Tensor) -> [Float] {
    let channels = float.shape[0]
    var sums = [Double](repeating: 0, count: channels)
    var count = 0
    for x in xs {
        let yq = apply(x, quantized).data, yf = apply(x, float).data
        let n = x.shape[0], per = yq.count / (n * channels)
        for i in 0..<n {
            for c in 0..<channels {
                let base = (i * channels + c) * per
                for p in 0..<per { sums[c] += Double(yq[base + p]) - Double(yf[base + p]) }
            }
        }
        count += n * per
    }
    return sums.map { Float($0 / Double(max(count, 1))) }
}
