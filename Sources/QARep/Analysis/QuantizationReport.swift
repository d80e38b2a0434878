import Foundation

/// Why a model loses accuracy under quantization, layer by layer: the
/// evidence for the QARepVGG paper's two causes.
///
/// - C1, wide weights: the identity branch's BN and RepVGG's custom L2 leave
///   fused kernels with a few large values, so `max|w| / std(w)` is large and
///   per-channel INT8 rounds the rest coarsely (low weight SQNR).
/// - C2, wide activations: the summed branches make a block's output, the
///   next convolution's input, spread far, so one per-tensor scale clips or
///   rounds it coarsely (large activation max, low activation SQNR).
///
/// Every layer is one deployed 3x3 convolution, named as in the checkpoint
/// (`stage0`, `stage1.0`, ...), in order. Quantization follows the PTQ the
/// `qconfig` describes, calibrated on the same images.
public struct QuantizationReport: Codable, Sendable {
    public var config: String
    public var block: String
    /// Bit widths analysed: 8, and `bits` when another was asked for.
    public var bitWidths: [Int]
    public var calibrationImages: Int
    public var testImages: Int
    /// Test top-1 of the FP32 model and of the PTQ simulation at each width.
    public var fp32Top1: Double
    public var ptqTop1: [String: Double]
    public var layers: [Layer]
    /// The most sensitive layers by SQNR, each confirmed by the PTQ top-1 at
    /// `sensitivityBits` with that layer alone left in float.
    public var sensitivityBits: Int
    public var sensitivity: [Sensitivity]

    public struct Layer: Codable, Sendable {
        public var name: String
        /// Of the fused (deployed) 3x3 kernel, all output channels together.
        public var maxAbsWeight: Double
        public var weightStd: Double
        public var weightMaxOverStd: Double
        /// `gamma / sqrt(running_var + eps)` of each BN of the training-form
        /// block (empty for a model saved deployed).
        public var branchScales: [BranchScale]
        /// Largest |x| at the convolution's input over the calibration images.
        public var activationMax: Double
        /// Signal-to-quantization-noise ratio, `10 log10(sum x^2 / sum (x - q(x))^2)`,
        /// of the weights (per-channel) and of the input activations (the
        /// calibrated per-tensor scale), at 8 bits, capped at 300 dB.
        public var weightSqnrDb: Double
        public var activationSqnrDb: Double
        /// The same at every analysed width, keyed by bit width.
        public var weightSqnrDbByBits: [String: Double]
        public var activationSqnrDbByBits: [String: Double]
        /// Histograms for the page: the fused weight over `[-maxAbsWeight,
        /// maxAbsWeight]`, the input activation over the 8-bit quantizer's
        /// range `[activationLow, activationHigh]` (clipped values in the end bins).
        public var weightHistogram: [Int]
        public var activationHistogram: [Int]
        public var activationLow: Double
        public var activationHigh: Double
    }

    public struct BranchScale: Codable, Sendable {
        /// `dense` (3x3), `pointwise` (1x1), `identity` or `post` (QARepVGG's BN after the sum).
        public var branch: String
        public var identity: Bool
        public var min: Double, mean: Double, max: Double
    }

    public struct Sensitivity: Codable, Sendable {
        public var layer: String
        /// The lower of the layer's weight and activation SQNR at `sensitivityBits`.
        public var sqnrDb: Double
        /// PTQ test top-1 with only this layer in float, and the gain over all quantized.
        public var floatTop1: Double
        public var gain: Double
    }
}

/// Bins of the report's histograms.
public let reportHistogramBins = 48

/// `10 log10(signal / noise)` in dB, capped at 300 dB (noise 0 is exact).
public func sqnrDecibels(signal: Double, noise: Double) -> Double {
    guard noise > 0 else { return 300 }
    guard signal > 0 else { return 0 }
    return min(300, 10 * log10(signal / noise))
}

/// Counts of `values` in `bins` equal bins over `[low, high]`, values outside in the end bins.
public func histogram(_ values: [Float], low: Double, high: Double, bins: Int = reportHistogramBins) -> [Int] {
    var counts = [Int](repeating: 0, count: bins)
    let width = max(high - low, .leastNonzeroMagnitude)
    for v in values {
        let b = Int(((Double(v) - low) / width * Double(bins)).rounded(.down))
        counts[Swift.min(bins - 1, Swift.max(0, b))] += 1
    }
    return counts
}

/// Builds the report for `model` (training or deployed form): PTQ with
/// `qconfig` at 8 bits and at `bits`, calibrated on `calibration`, evaluated
/// on `test`; the `confirm` layers of lowest SQNR at `bits` get a float-layer
/// top-1 each.
public func quantizationReport(_ model: RepVGGNet, calibration: any Dataset, test: any Dataset, bits: Int = 8,
                               qconfig: QConfig = .tensorRT, confirm: Int = 3) throws -> QuantizationReport {
    guard (2...8).contains(bits) else { throw QuantizationError("bit width must be between 2 and 8, got \(bits)") }
    let widths = bits == 8 ? [8] : [8, bits]
    var quantized: [Int: QuantizedNet] = [:]
    for b in widths { quantized[b] = try postTrainingQuantize(model, calibration: calibration, qconfig: qconfig.withBits(b)) }
    let deployed = model.isDeployed ? model : model.deployed()
    deployed.eval()
    let names = quantized[8]!.unitNames
    let convs = deployed.blocks.map { ($0 as! ReparamBlock).conv }

    // Weights: fused kernel statistics and SQNR against each width's fake quantization.
    var layers: [QuantizationReport.Layer] = []
    for (i, conv) in convs.enumerated() {
        let w = conv.weight.data
        let n = Double(w.count)
        let mean = w.reduce(0.0) { $0 + Double($1) } / n
        let std = (w.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / n).squareRoot()
        let maxAbs = w.reduce(0.0) { max($0, abs(Double($1))) }
        var weightSqnr: [String: Double] = [:]
        for b in widths {
            let unit = quantized[b]!.units[i]
            let original = unit.foldedWeights().weight
            let q = noGrad { unit.deployedTensors().weight.data }
            weightSqnr["\(b)"] = sqnr(original, q)
        }
        layers.append(.init(name: names[i], maxAbsWeight: maxAbs, weightStd: std, weightMaxOverStd: std > 0 ? maxAbs / std : 0,
                            branchScales: model.isDeployed ? [] : branchScales(model.blocks[i]), activationMax: 0,
                            weightSqnrDb: weightSqnr["8"]!, activationSqnrDb: 0, weightSqnrDbByBits: weightSqnr,
                            activationSqnrDbByBits: [:],
                            weightHistogram: histogram(w, low: -maxAbs, high: maxAbs), activationHistogram: [],
                            activationLow: 0, activationHigh: 0))
    }

    // Activations: stream the calibration images through the FP32 deployed
    // model, quantizing each convolution's input with each width's calibrated scale.
    var signal = [Double](repeating: 0, count: convs.count)
    var noise = [[Double]](repeating: [Double](repeating: 0, count: convs.count), count: widths.count)
    var activationMax = [Double](repeating: 0, count: convs.count)
    var activationHistograms = [[Int]](repeating: [Int](repeating: 0, count: reportHistogramBins), count: convs.count)
    let ranges: [(low: Double, high: Double)] = quantized[8]!.units.map { u in
        let s = Double(u.inputQuant.scales[0]), z = Double(u.inputQuant.zeroPoints[0])
        return ((Double(u.inputQuant.scheme.qmin) - z) * s, (Double(u.inputQuant.scheme.qmax) - z) * s)
    }
    let loader = DataLoader(dataset: calibration, batchSize: 128, shuffle: false, augment: false, seed: 0)
    noGrad {
        for batch in loader.batches(epoch: 0) {
            var x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
            for (i, block) in deployed.blocks.enumerated() {
                let xd = x.data
                signal[i] += xd.reduce(0.0) { $0 + Double($1) * Double($1) }
                activationMax[i] = xd.reduce(activationMax[i]) { max($0, abs(Double($1))) }
                let h = histogram(xd, low: ranges[i].low, high: ranges[i].high)
                for b in 0..<h.count { activationHistograms[i][b] += h[b] }
                for (k, width) in widths.enumerated() {
                    let fq = quantized[width]!.units[i].inputQuant
                    let q = fakeQuantize(x, scales: fq.scales, zeroPoints: fq.zeroPoints, qmin: fq.scheme.qmin, qmax: fq.scheme.qmax).data
                    noise[k][i] += zip(xd, q).reduce(0.0) { $0 + (Double($1.0) - Double($1.1)) * (Double($1.0) - Double($1.1)) }
                }
                x = block(x)
            }
        }
    }
    for i in layers.indices {
        layers[i].activationMax = activationMax[i]
        for (k, width) in widths.enumerated() {
            layers[i].activationSqnrDbByBits["\(width)"] = sqnrDecibels(signal: signal[i], noise: noise[k][i])
        }
        layers[i].activationSqnrDb = layers[i].activationSqnrDbByBits["8"]!
        layers[i].activationHistogram = activationHistograms[i]
        (layers[i].activationLow, layers[i].activationHigh) = ranges[i]
    }

    // Sensitivity: rank by SQNR (cheap), confirm the worst few with top-1 (one evaluation each).
    let fp32Top1 = evaluate(deployed, on: test).top1
    var ptqTop1: [String: Double] = [:]
    for b in widths { ptqTop1["\(b)"] = evaluate(quantized[b]!, on: test).top1 }
    let key = "\(bits)"
    let ranked = layers.indices.sorted {
        min(layers[$0].weightSqnrDbByBits[key]!, layers[$0].activationSqnrDbByBits[key]!)
            < min(layers[$1].weightSqnrDbByBits[key]!, layers[$1].activationSqnrDbByBits[key]!)
    }
    let net = quantized[bits]!
    var sensitivity: [QuantizationReport.Sensitivity] = []
    for i in ranked.prefix(max(0, confirm)) {
        let unit = net.units[i]
        unit.inputQuant.fakeQuantEnabled = false; unit.weightQuant.fakeQuantEnabled = false
        let top1 = evaluate(net, on: test).top1
        unit.inputQuant.fakeQuantEnabled = true; unit.weightQuant.fakeQuantEnabled = true
        sensitivity.append(.init(layer: names[i],
                                 sqnrDb: min(layers[i].weightSqnrDbByBits[key]!, layers[i].activationSqnrDbByBits[key]!),
                                 floatTop1: top1, gain: top1 - ptqTop1[key]!))
    }
    return QuantizationReport(config: model.config.name, block: model.config.block.rawValue, bitWidths: widths,
                              calibrationImages: calibration.count, testImages: test.count, fp32Top1: fp32Top1,
                              ptqTop1: ptqTop1, layers: layers, sensitivityBits: bits, sensitivity: sensitivity)
}

/// SQNR in dB of `quantized` against `original`.
func sqnr(_ original: [Float], _ quantized: [Float]) -> Double {
    var s = 0.0, e = 0.0
    for (x, q) in zip(original, quantized) {
        s += Double(x) * Double(x)
        e += (Double(x) - Double(q)) * (Double(x) - Double(q))
    }
    return sqnrDecibels(signal: s, noise: e)
}

/// The BN scales of one training-form block, identity BN marked.
func branchScales(_ layer: any Layer) -> [QuantizationReport.BranchScale] {
    guard let block = layer as? RepVGGBlock else { return [] }
    func summary(_ branch: String, _ bn: BatchNorm2d, identity: Bool = false) -> QuantizationReport.BranchScale {
        let s = bn.scale.map(Double.init)
        return .init(branch: branch, identity: identity, min: s.min()!, mean: s.reduce(0, +) / Double(s.count), max: s.max()!)
    }
    var scales = [summary("dense", block.dense.bn)]
    if let pointwise = block.pointwise as? ConvBN { scales.append(summary("pointwise", pointwise.bn)) }
    if let identity = block.identityBN { scales.append(summary("identity", identity, identity: true)) }
    if let post = block.postBN { scales.append(summary("post", post)) }
    return scales
}
