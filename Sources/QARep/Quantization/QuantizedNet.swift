/// A RepVGG-family network prepared for quantization: every block a
/// `QuantConvUnit` (fake quantization on each convolution's input and
/// weight), then a `QuantLinearHead`. Built for PTQ from the fully folded
/// model; for QAT with QARepVGG's post-BN kept as a trainable BN, or in the
/// multi-branch form, where every block keeps its branches and the kernel it
/// folds into is fake-quantized (rep-aware QAT).
public final class QuantizedNet: Module, Layer {
    public let config: ModelConfig
    public let qconfig: QConfig
    /// The form the units were built in (`.postBN` asked of a kind without
    /// a post-BN, or of a deployed model, gives `.folded`).
    public let form: Form
    @Key("stage0") public var stage0: QuantConvUnit
    @Key("stage1") public var stage1: [QuantConvUnit]
    @Key("stage2") public var stage2: [QuantConvUnit]
    @Key("stage3") public var stage3: [QuantConvUnit]
    @Key("stage4") public var stage4: [QuantConvUnit]
    public let linear: QuantLinearHead

    public enum Form: String, Codable, Sendable, CaseIterable {
        /// Every block folded completely: what PTQ quantizes.
        case folded
        /// Branches merged, QARepVGG's post-BN kept as a BN: what QAT trains.
        case postBN = "post-bn"
        /// Every branch kept and trained, merged (each branch BN with its
        /// running statistics) into the kernel that is fake-quantized on
        /// every step; QARepVGG's post-BN kept as a BN: rep-aware QAT.
        case multiBranch = "multi-branch"
    }

    /// Prepares `model` (multi-branch or deployed) for quantization.
    /// - Parameters:
    ///   - form: `.postBN` keeps QARepVGG's post-BN (ignored for kinds
    ///     without one); `.multiBranch` needs the training form.
    ///   - qconfig: schemes, and the activation observers' calibrator.
    /// - Throws: `QuantizationError` for an invalid qconfig, or the
    ///   multi-branch form of a deployed model.
    public init(from model: RepVGGNet, form: Form, qconfig: QConfig = .tensorRT) throws {
        try qconfig.validate()
        config = model.config
        self.qconfig = qconfig
        let blocks = model.stages.joined()
        if form == .multiBranch && !blocks.allSatisfy({ $0 is RepVGGBlock }) {
            throw QuantizationError("the multi-branch form needs the training-form model; this one is deployed (folded blocks)")
        }
        let keepsBN = form != .folded && blocks.contains { ($0 as? RepVGGBlock)?.postBN != nil }
        self.form = form == .multiBranch ? .multiBranch : keepsBN ? .postBN : .folded
        let units: [[QuantConvUnit]] = model.stages.enumerated().map { s, stage in
            // stage0 is the first layer; `firstLastBits` may keep it wider.
            let qconfig = s == 0 ? qconfig.forFirstAndLastLayers : qconfig
            return stage.map { layer in
                guard let block = layer as? RepVGGBlock else {
                    return QuantConvUnit(source: (layer as! ReparamBlock).conv.copy(), postBN: nil, qconfig: qconfig)
                }
                let postBN = keepsBN ? block.postBN?.copy() : nil
                if form == .multiBranch {
                    return QuantConvUnit(source: MergedBranches(of: block, copying: true), postBN: postBN, qconfig: qconfig)
                }
                let (w, b) = keepsBN ? block.mergedBranches() : block.reparameterized()
                let conv = Conv2d(weight: Tensor(w, shape: [block.outChannels, block.inChannels, 3, 3], requiresGrad: true),
                                  bias: Tensor(b, shape: [block.outChannels], requiresGrad: true), stride: block.stride, padding: 1)
                return QuantConvUnit(source: conv, postBN: postBN, qconfig: qconfig)
            }
        }
        _stage0.wrappedValue = units[0][0]
        _stage1.wrappedValue = units[1]
        _stage2.wrappedValue = units[2]
        _stage3.wrappedValue = units[3]
        _stage4.wrappedValue = units[4]
        linear = QuantLinearHead(linear: model.linear, qconfig: qconfig.forFirstAndLastLayers)
    }

    /// Units in order, stage 0 first.
    public var units: [QuantConvUnit] { [stage0] + stage1 + stage2 + stage3 + stage4 }

    /// Every fake-quantizer, inputs and weights.
    public var fakeQuantizers: [FakeQuantize] {
        units.flatMap { [$0.inputQuant, $0.weightQuant] } + [linear.featureQuant, linear.inputQuant, linear.weightQuant]
    }

    /// Whether any unit still has a BN to fold.
    public var hasPostBN: Bool { units.contains { $0.postBN != nil } }

    /// Each unit's one convolution, for the PTQ tools that edit them in
    /// place (bias correction, cross-layer equalization, AdaRound).
    /// - Throws: `QuantizationError` naming `tool` unless the model is in the folded form.
    func foldedConvolutions(for tool: String) throws -> [Conv2d] {
        guard form == .folded else {
            throw QuantizationError("\(tool) applies to the folded (PTQ) form; this model is in the \(form.rawValue) form")
        }
        return units.compactMap(\.conv)
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        linear(units.reduce(x) { $1($0) })
    }

    /// Sets both switches on every fake-quantizer.
    public func setQuantization(observe: Bool, fakeQuantize: Bool) {
        for fq in fakeQuantizers { fq.observerEnabled = observe; fq.fakeQuantEnabled = fakeQuantize }
    }

    /// Runs `images` through the model in evaluation mode with observers on
    /// and fake quantization off, then turns fake quantization on and
    /// observers off: post-training calibration.
    /// - Throws: `QuantizationError` for an empty calibration set.
    public func calibrate(on images: any Dataset, batchSize: Int = 128) throws {
        try calibrateFakeQuantized(self, quantizers: fakeQuantizers,
                                   weightQuantizers: units.map(\.weightQuant) + [linear.weightQuant],
                                   on: images, batchSize: batchSize)
    }
}

/// Post-training calibration of a fake-quantized model: runs `images`
/// through it in evaluation mode with observers on and fake quantization
/// off, then turns fake quantization on and observers off, except the weight
/// observers, which keep tracking the weights (they change in QAT).
func calibrateFakeQuantized(_ model: some Layer, quantizers: [FakeQuantize], weightQuantizers: [FakeQuantize],
                            on images: any Dataset, batchSize: Int) throws {
    guard images.count > 0 else { throw QuantizationError("calibration needs at least one image, got 0") }
    let wasTraining = model.training
    model.eval()
    for fq in quantizers { fq.observerEnabled = true; fq.fakeQuantEnabled = false }
    let loader = DataLoader(dataset: images, batchSize: batchSize, shuffle: false, augment: false, seed: 0)
    noGrad {
        for batch in loader.batches(epoch: 0) {
            _ = model(Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width]))
        }
    }
    for fq in quantizers { fq.observerEnabled = false; fq.fakeQuantEnabled = true }
    for fq in weightQuantizers { fq.observerEnabled = true }
    model.train(wasTraining)
}

extension BatchNorm2d {
    /// An independent copy with the same parameters and statistics.
    public func copy() -> BatchNorm2d {
        let bn = BatchNorm2d(channels, momentum: momentum, eps: eps)
        bn.weight.assign(weight.data); bn.bias.assign(bias.data)
        bn.runningMean.assign(runningMean.data); bn.runningVar.assign(runningVar.data)
        bn.numBatchesTracked = numBatchesTracked
        return bn
    }
}
