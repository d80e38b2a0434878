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
        /// Branches merged, QARepVGG's post-BN kept as a BN (or one added to
        /// RepVGG, `addingPostBN`): what QAT trains.
        case postBN = "post-bn"
        /// Every branch kept and trained, merged (each branch BN with its
        /// running statistics) into the kernel that is fake-quantized on
        /// every step; QARepVGG's post-BN (or an added one) kept as a BN:
        /// rep-aware QAT.
        case multiBranch = "multi-branch"
    }

    /// Prepares `model` (multi-branch or deployed) for quantization.
    /// - Parameters:
    ///   - form: `.postBN` keeps QARepVGG's post-BN (ignored for kinds
    ///     without one); `.multiBranch` needs the training form.
    ///   - qconfig: schemes, and the activation observers' calibrator.
    ///   - addingPostBN: give every unit of a model without a post-BN
    ///     (RepVGG, S2, S3) a BN after its convolution for QAT, as QARepVGG
    ///     has one: trained with batch statistics, its fold simulated, folded
    ///     into the kernel at conversion. It starts as `BatchNorm2d(channels)`;
    ///     `initializeAddedPostBN(on:)` makes it the identity of the data.
    /// - Throws: `QuantizationError` for an invalid qconfig, the multi-branch
    ///   form of a deployed model, or a post-BN added to the folded form or
    ///   to a model that has one.
    public init(from model: RepVGGNet, form: Form, qconfig: QConfig = .tensorRT, addingPostBN: Bool = false) throws {
        try qconfig.validate()
        config = model.config
        self.qconfig = qconfig
        let blocks = model.stages.joined()
        if form == .multiBranch && !blocks.allSatisfy({ $0 is RepVGGBlock }) {
            throw QuantizationError("the multi-branch form needs the training-form model; this one is deployed (folded blocks)")
        }
        let hasPostBN = blocks.contains { ($0 as? RepVGGBlock)?.postBN != nil }
        if addingPostBN && form == .folded { throw QuantizationError("the folded form has no BN; a post-BN is added to the post-bn or multi-branch form") }
        if addingPostBN && hasPostBN {
            throw QuantizationError("\(model.config.block.rawValue) blocks have a post-BN already; adding one is for kinds without (repvgg, s2, s3)")
        }
        let keepsBN = form != .folded && (hasPostBN || addingPostBN)
        self.form = form == .multiBranch ? .multiBranch : keepsBN ? .postBN : .folded
        addedPostBN = addingPostBN
        let units: [[QuantConvUnit]] = model.stages.enumerated().map { s, stage in
            // stage0 is the first layer; `firstLastBits` may keep it wider.
            let qconfig = s == 0 ? qconfig.forFirstAndLastLayers : qconfig
            return stage.map { layer in
                guard let block = layer as? RepVGGBlock else {
                    let conv = (layer as! ReparamBlock).conv
                    return QuantConvUnit(source: conv.copy(), postBN: addingPostBN ? BatchNorm2d(conv.outChannels) : nil, qconfig: qconfig)
                }
                let postBN = keepsBN ? block.postBN?.copy() ?? BatchNorm2d(block.outChannels) : nil
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

    /// Whether every unit's post-BN was added for QAT (`addingPostBN`)
    /// rather than copied from QARepVGG's blocks.
    public let addedPostBN: Bool

    /// Makes each added post-BN the identity of `images`' statistics, before
    /// calibration: running mean and (biased) variance those of its input,
    /// the convolution's output over the images (every earlier BN already
    /// the identity, every quantizer bypassed), `gamma = sqrt(var + eps)` and
    /// `beta = mean`. Evaluation then computes the model without the BNs (to
    /// rounding), and a training batch like the images is barely changed;
    /// from there QAT trains them with batch statistics.
    /// - Throws: `QuantizationError` for no images, or a model without added BNs.
    public func initializeAddedPostBN(on images: any Dataset, batchSize: Int = 128) throws {
        guard addedPostBN else { throw QuantizationError("this model's post-BN is QARepVGG's own, not added for QAT") }
        guard images.count > 0 else { throw QuantizationError("the added post-BN needs at least one image, got 0") }
        let units = self.units
        var sums = units.map { [Double](repeating: 0, count: $0.source.outChannels) }, squares = sums
        var pixels = [Double](repeating: 0, count: units.count)
        let loader = DataLoader(dataset: images, batchSize: batchSize, shuffle: false, augment: false, seed: 0)
        noGrad {
            for batch in loader.batches(epoch: 0) {
                var x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
                for (u, unit) in units.enumerated() {
                    let (w, b) = unit.source.kernelAndBias()
                    let y = conv2d(x, weight: w, bias: b, stride: unit.source.stride, padding: unit.source.padding)
                    let channels = y.shape[1], plane = y.shape[2] * y.shape[3]
                    y.data.withUnsafeBufferPointer { v in
                        for n in 0..<y.shape[0] {
                            for c in 0..<channels {
                                var s = 0.0, q = 0.0
                                for i in ((n * channels + c) * plane)..<((n * channels + c + 1) * plane) {
                                    let d = Double(v[i]); s += d; q += d * d
                                }
                                sums[u][c] += s; squares[u][c] += q
                            }
                        }
                    }
                    pixels[u] += Double(y.shape[0] * plane)
                    x = y.relu()
                }
            }
        }
        for (u, unit) in units.enumerated() {
            guard let bn = unit.postBN else { continue }
            let mean = sums[u].map { $0 / pixels[u] }
            let variance = zip(squares[u], mean).map { max($0 / pixels[u] - $1 * $1, 0) }
            bn.runningMean.assign(mean.map(Float.init))
            bn.runningVar.assign(variance.map(Float.init))
            bn.weight.assign(variance.map { Float(($0 + Double(bn.eps)).squareRoot()) })
            bn.bias.assign(mean.map(Float.init))
        }
    }

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
