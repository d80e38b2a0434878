import Foundation
import QARepKernels

/// Settings of quantization-aware training: the shared `TrainingSettings`
/// (readable and writable directly, `options.epochs = 5`) plus the
/// quantization. Defaults are the paper's (Table 7): 10 epochs, the first 3 a
/// linear warm-up, initial LR 0.01, then cosine; QARepVGG's post-BN is kept
/// as a BN.
@dynamicMemberLookup
public struct QATOptions: Sendable, Equatable {
    public var settings = TrainingSettings(epochs: 10, batchSize: 64, learningRate: 0.01, warmupEpochs: 3)
    /// Schemes, and the calibrator that initializes activation ranges before
    /// QAT (they are then tracked by moving averages).
    public var qconfig = QConfig.tensorRT
    public var calibrationImages = 512
    /// From this epoch on (0-based), BN uses and keeps its running statistics.
    public var freezeBNAfter: Int?
    /// From this epoch on, activation ranges stop moving.
    public var freezeObserversAfter: Int?
    /// How scales evolve during QAT.
    public var method = QATMethod.observers
    /// With settings: the FP32 model teaches the quantized one on logits.
    public var distillation: DistillationSettings?
    /// The form QAT trains: `.postBN` (the paper's: branches merged,
    /// QARepVGG's post-BN kept), `.multiBranch` (rep-aware: every branch
    /// trained through the kernel it folds into) or `.folded`.
    public var form = QuantizedNet.Form.postBN
    /// Give blocks without a post-BN (RepVGG, S2, S3) one for QAT, set to
    /// the identity of the calibration images and folded in at conversion
    /// (`QuantizedNet.init(from:form:qconfig:addingPostBN:)`).
    public var addsPostBN = false

    public init() {}

    public subscript<T>(dynamicMember keyPath: WritableKeyPath<TrainingSettings, T>) -> T {
        get { settings[keyPath: keyPath] }
        set { settings[keyPath: keyPath] = newValue }
    }

    public func validate() throws {
        try qconfig.validate()
        try settings.validate()
        guard calibrationImages > 0 else { throw QuantizationError("calibrationImages must be at least 1, got \(calibrationImages)") }
        for (name, epoch) in [("freezeBNAfter", freezeBNAfter), ("freezeObserversAfter", freezeObserversAfter)] {
            if let epoch, epoch < 0 { throw QuantizationError("\(name) must be an epoch >= 0, got \(epoch)") }
        }
        try distillation?.validate()
        if method == .lsq && freezeObserversAfter != nil {
            throw QuantizationError("LSQ learns its scales; there are no observers to freeze")
        }
    }
}

extension QATMethod {
    /// Puts calibrated quantizers into QAT: `.observers` lets the activation
    /// quantizers (those not tracking the current weight) follow the data by
    /// moving averages; `.lsq` makes every scale a learned parameter from its
    /// calibrated value. A resumed run calls it before loading the saved
    /// state, so that state has somewhere to go.
    func start(_ quantizers: [FakeQuantize]) {
        switch self {
        case .observers:
            for fq in quantizers where !fq.tracksCurrentValues {
                fq.switchToMovingAverage()
                fq.observerEnabled = true
            }
        case .lsq:
            for fq in quantizers { fq.learnScale() }
        }
    }
}

extension QATOptions {
    /// Applies the freezes due at epoch `e` (0-based): `freezeBatchNorms` once
    /// BN statistics freeze, and the activation observers among `quantizers`
    /// stopped once ranges freeze.
    func applyFreezes(epoch e: Int, quantizers: [FakeQuantize], freezeBatchNorms: () -> Void) {
        if let k = freezeBNAfter, e >= k { freezeBatchNorms() }
        if let k = freezeObserversAfter, e >= k {
            for fq in quantizers where !fq.tracksCurrentValues { fq.observerEnabled = false }
        }
    }
}

/// How a QAT run's scales evolve after calibration.
public enum QATMethod: String, Codable, Sendable, CaseIterable {
    /// Activation ranges tracked by moving-average observers, weight ranges by min-max of the current weights.
    case observers
    /// Every scale a trained parameter from its calibrated value: learned
    /// step size quantization (Esser et al. 2020), with its gradient scaling.
    case lsq
}

extension QATOptions: Codable {
    private enum CodingKeys: String, CodingKey { case qconfig, calibrationImages, freezeBNAfter, freezeObserversAfter, method, distillation, form, addsPostBN }

    /// One flat object: the training settings' keys beside the quantization's.
    public init(from decoder: any Decoder) throws {
        settings = try TrainingSettings(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        qconfig = try c.decode(QConfig.self, forKey: .qconfig)
        calibrationImages = try c.decode(Int.self, forKey: .calibrationImages)
        freezeBNAfter = try c.decodeIfPresent(Int.self, forKey: .freezeBNAfter)
        freezeObserversAfter = try c.decodeIfPresent(Int.self, forKey: .freezeObserversAfter)
        method = try c.decodeIfPresent(QATMethod.self, forKey: .method) ?? .observers
        distillation = try c.decodeIfPresent(DistillationSettings.self, forKey: .distillation)
        form = try c.decodeIfPresent(QuantizedNet.Form.self, forKey: .form) ?? .postBN
        addsPostBN = try c.decodeIfPresent(Bool.self, forKey: .addsPostBN) ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        try settings.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(qconfig, forKey: .qconfig)
        try c.encode(calibrationImages, forKey: .calibrationImages)
        try c.encodeIfPresent(freezeBNAfter, forKey: .freezeBNAfter)
        try c.encodeIfPresent(freezeObserversAfter, forKey: .freezeObserversAfter)
        try c.encode(method, forKey: .method)
        try c.encodeIfPresent(distillation, forKey: .distillation)
        try c.encode(form, forKey: .form)
        if addsPostBN { try c.encode(addsPostBN, forKey: .addsPostBN) }
    }
}

/// Where a QAT run stands (stored in its checkpoints' `__metadata__["qat"]`).
public struct QATState: Codable, Sendable {
    public var options: QATOptions
    public var training: TrainingConfig
    public var form: QuantizedNet.Form
    public var epoch = 0
    public var step = 0
    public var lastTop1: Double?
    /// Best validation top-1 of the fake-quantized model so far and its epoch.
    public var bestTop1: Double?
    public var bestEpoch: Int?
    /// The FP32 checkpoint it started from.
    public var source: String
    /// The kernel thread count the run started with (results can depend on it).
    public var threads: Int?
    /// What the run trains on.
    public var data: DataRecord?
    /// What the epoch in progress has seen, when the checkpoint was written mid-epoch.
    public var totals: EpochTotals?
}

/// Quantization-aware training from an FP32 model: FP32 training's run
/// (`CheckpointedRun`: the same loop, SGD, schedule, `last`/`best`
/// checkpoints and exact resume) on a prepared model, with three hooks:
/// partial fold and calibration before the first epoch (QARepVGG's post-BN
/// kept), BN and observer freezes before each epoch, and conversion to INT8
/// after the last. Checkpoints (kind `qat`) hold weights, BN statistics,
/// scales, observer state and optimizer state, so `resume(from:)` continues
/// without recalibrating.
public final class QATRun {
    public let model: QuantizedNet
    private let core: CheckpointedRun<QuantizedNet>
    private let base: QATState

    public static let lastFile = CheckpointedRun<QuantizedNet>.lastFile
    public static let bestFile = CheckpointedRun<QuantizedNet>.bestFile
    public static let int8File = "int8.safetensors"
    public static let kind = "qat"

    public var trainer: Trainer<QuantizedNet> { core.trainer }
    public var directory: String? { core.directory }
    var optimizer: SGD { core.optimizer }

    /// Where the run stands, as its checkpoints record it.
    public var state: QATState { base.updated(with: core.progress, data: core.data) }

    /// Mid-epoch checkpoints, the metrics interval and listener, stop requests.
    public var controls: RunControls {
        get { core.controls }
        set { core.controls = newValue }
    }

    /// Prepares and calibrates a new QAT run from `fp32`.
    public convenience init(from fp32: RepVGGNet, source: String, options: QATOptions, calibration: any Dataset,
                            trainImages: Int, directory: String?, dataOrigin: DataOrigin? = nil,
                            progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        let training = try options.settings.trainingConfig(trainImages: trainImages)
        try CheckpointedRun<QuantizedNet>.prepare(directory)
        let model = try QuantizedNet(from: fp32, form: options.form, qconfig: options.qconfig, addingPostBN: options.addsPostBN)
        if options.addsPostBN { try model.initializeAddedPostBN(on: calibration) }
        try model.calibrate(on: calibration)
        options.method.start(model.fakeQuantizers)
        let state = QATState(options: options, training: training, form: model.form, source: source,
                             threads: KernelThreads.count)
        let teacher = try options.distillation.map { _ in
            try frozenTeacher(copying: fp32.deployed(), into: RepVGGNet(config: fp32.config).deployed())
        }
        try self.init(model: model, state: state, directory: directory, origin: dataOrigin, teacher: teacher, progress: progress)
    }

    /// - Parameter teacher: the FP32 model (deployed) when the options distill.
    init(model: QuantizedNet, state: QATState, directory: String?, origin: DataOrigin? = nil, teacher: RepVGGNet?,
         progress: ProgressReporter) throws {
        self.model = model
        base = state
        let settings = state.options.settings
        core = try CheckpointedRun(
            model: model, groups: ParameterGroup.standard(model, weightDecay: settings.weightDecay), config: state.training,
            momentum: settings.momentum, nesterov: settings.nesterov,
            progress: state.progress,
            data: state.data, origin: origin, directory: directory, reporter: progress)
        if let settings = state.options.distillation, let teacher { core.trainer.batchLoss = settings.batchLoss(teacher: teacher) }
    }

    /// The state and model config of the run `resume(from:)` would continue:
    /// what a caller checks (settings, data, threads) before resuming.
    /// - Throws: `CheckpointError` when the directory holds no QAT run.
    public static func savedState(in directory: String) throws -> (state: QATState, model: ModelConfig) {
        let path = try CheckpointedRun<QuantizedNet>.lastCheckpoint(in: directory)
        let (_, name, config, qatJSON) = try Checkpoint.open(path, kind: kind, section: "qat", hint: "QAT checkpoint")
        return (try Checkpoint.decode(QATState.self, qatJSON, what: "qat", file: name), config)
    }

    /// Continues the QAT run saved in `directory`, without recalibrating.
    public static func resume(from directory: String, progress: ProgressReporter = ProgressReporter()) throws -> QATRun {
        let path = try CheckpointedRun<QuantizedNet>.lastCheckpoint(in: directory)
        let (model, state, file) = try loadCheckpoint(path)
        let teacher = try state.options.distillation.map { _ in
            try rereadTeacher(state.source) { try Checkpoint.loadModel(state.source).deployed() }
        }
        let run = try QATRun(model: model, state: state, directory: directory, teacher: teacher, progress: progress)
        try run.optimizer.loadStateDict(Checkpoint.optimizerState(file, source: (path as NSString).lastPathComponent))
        run.applyFreezes(epoch: state.epoch)
        return run
    }

    /// The fake-quantized model of a QAT checkpoint, in evaluation mode:
    /// weights, BN statistics, scales and observer state as saved.
    public static func loadModel(from path: String) throws -> QuantizedNet {
        try loadModel(SafeTensorsFile.read(from: path), name: (path as NSString).lastPathComponent)
    }

    /// `loadModel(from:)` of a file already parsed; `name` names it in errors.
    public static func loadModel(_ file: SafeTensorsFile, name: String) throws -> QuantizedNet {
        let model = try loadCheckpoint(file, name: name).model
        model.eval()
        return model
    }

    static func loadCheckpoint(_ path: String) throws -> (model: QuantizedNet, state: QATState, file: SafeTensorsFile) {
        try loadCheckpoint(SafeTensorsFile.read(from: path), name: (path as NSString).lastPathComponent)
    }

    static func loadCheckpoint(_ file: SafeTensorsFile, name: String) throws -> (model: QuantizedNet, state: QATState, file: SafeTensorsFile) {
        let (file, name, config, qatJSON) = try Checkpoint.open(file, name: name, kind: kind, section: "qat", hint: "QAT checkpoint")
        let state = try Checkpoint.decode(QATState.self, qatJSON, what: "qat", file: name)
        try Checkpoint.checkFits(config, file, name: name)
        // The structure from a fresh model; every value comes from the file.
        let model = try QuantizedNet(from: RepVGGNet(config: config), form: state.form,
                                     qconfig: state.options.qconfig.with(calibrator: .movingAverage()),
                                     addingPostBN: state.options.addsPostBN)
        guard model.form == state.form else {
            throw CheckpointError("\(name): the checkpoint's form \(state.form.rawValue) does not fit block kind \(config.block.rawValue)")
        }
        // LSQ quantizers first, so their step floors have somewhere to load into.
        if state.options.method == .lsq { for fq in model.fakeQuantizers { fq.learnScale() } }
        try Checkpoint.load(file, into: model, source: name, extraSuffixes: [Checkpoint.observerStateSuffix])
        try Checkpoint.restoreObserverState(file, into: model, name: name)
        // As after calibration: every quantizer fake-quantizes and keeps
        // observing (LSQ quantizers ignore the observer switch).
        model.setQuantization(observe: true, fakeQuantize: true)
        return (model, state, file)
    }

    /// Sets BN and observer freezes for the epoch about to run.
    func applyFreezes(epoch e: Int) {
        base.options.applyFreezes(epoch: e, quantizers: model.fakeQuantizers) {
            for u in model.units { u.postBN?.freezeStatistics = true }
        }
    }

    /// Trains the remaining epochs (or up to `until`), checkpointing after
    /// each; when the last epoch is done, converts to integers (at the
    /// run's widths) and writes `int8.safetensors` beside the checkpoint.
    @discardableResult
    public func run(train: any Dataset, validation: (any Dataset)? = nil, test: (any Dataset)?, until: Int? = nil,
                    onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        let summaries = try core.run(train: train, validation: validation, test: test, until: until, beforeEpoch: applyFreezes(epoch:),
                                     save: saveCheckpoint(to:withOptimizer:), onEpochEnd: onEpochEnd)
        if trainer.epoch == base.training.epochs, let path = core.path(Self.int8File) {
            try model.convertToInt8().write(to: path)
        }
        return summaries
    }

    func saveCheckpoint(to path: String, withOptimizer: Bool) throws {
        let tensors = Checkpoint.qatTensors(of: model, optimizer: withOptimizer ? optimizer : nil)
        var metadata = try Checkpoint.header(kind: Self.kind, config: model.config)
        metadata["qat"] = try Checkpoint.jsonString(state)
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }
}

extension QATState: RunRecord {}
