extension QuantizedGraph {
    /// AdaRound (`AdaRound.roundLayer`) for every quantized convolution and
    /// linear layer of a calibrated PTQ graph, in graph order, as
    /// `QuantizedNet.adaRound(on:options:)` does for RepVGG: each layer's
    /// rounding is learned against the float model's output at that layer,
    /// from the inputs the quantized graph gives it (earlier layers already
    /// rounded), and replaces the layer's float weight when it reconstructs
    /// better than nearest rounding.
    /// - Returns: one report per layer, named by its node.
    /// - Throws: `QuantizationError` for a QAT graph (batch norms kept), one
    ///   never calibrated, no images, LSQ scales, or bad options.
    @discardableResult
    public func adaRound(on images: any Dataset, options: AdaRoundOptions = AdaRoundOptions()) throws -> [AdaRoundLayerReport] {
        guard mode == .ptq else { throw QuantizationError("AdaRound applies to a PTQ graph (batch norms folded); this one is prepared for QAT") }
        let batches = try options.calibrationBatches(images, activations: activationQuantizers, weights: weightQuantizers)
        let wasTraining = training
        eval()
        defer { train(wasTraining) }
        var reports: [AdaRoundLayerReport] = []
        var options = options
        for (index, step) in steps.enumerated() {
            let input = step.inputs.first ?? 0
            // The layer's weight, its scheme, and its float function (bias, a constant here, and ReLU included).
            let weight: Tensor, scheme: QuantScheme, layer: (Tensor, Tensor) -> Tensor
            switch step.kind {
            case .conv(let unit):
                let conv = unit.conv, b = conv.bias!.detached(), relu = unit.relu
                (weight, scheme) = (conv.weight, unit.weightQuant.scheme)
                layer = { x, w in
                    let y = conv2d(x, weight: w, bias: b, stride: conv.stride, padding: conv.padding)
                    return relu ? y.relu() : y
                }
            case .linear(let unit):
                let b = unit.bias.detached(), relu = unit.relu
                (weight, scheme) = (unit.weight, unit.weightQuant.scheme)
                layer = { x, w in
                    let y = linear(x, weight: w, bias: b)
                    return relu ? y.relu() : y
                }
            default:
                continue
            }
            let (quantized, float) = noGrad {
                (batches.map { values($0, steps: index)[input]! }, batches.map { graph.value(of: input, on: $0) })
            }
            let scales = minMaxWeightScales(weight.data, channels: weight.shape[0], scheme: scheme)
            options.seed = options.seed &+ 1
            var (w, report) = AdaRound.roundLayer(weight: weight, scales: scales, qmax: scheme.qmax, quantizedInputs: quantized,
                                                  floatInputs: float, name: step.name, options: options, layer: layer)
            report.applied = report.adaRoundError <= report.nearestError
            if report.applied { weight.assign(w) }
            reports.append(report)
        }
        return reports
    }
}
