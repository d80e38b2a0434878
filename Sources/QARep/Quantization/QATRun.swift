import Foundation

/// Settings of quantization-aware training. Defaults are the paper's
/// (Table 7): 10 epochs, the first 3 a linear warm-up, initial LR 0.01, then
/// cosine; QARepVGG's post-BN is kept as a BN.
public struct QATOptions: Codable, Sendable, Equatable {
    public var epochs = 10
    public var warmupEpochs = 3
    public var learningRate: Float = 0.01
    public var batchSize = 64
    public var momentum: Float = 0.9
    public var weightDecay: Float = 1e-4
    /// Schemes, and the calibrator that initializes activation ranges before
    /// QAT (they are then tracked by moving averages).
    public var qconfig = QConfig.tensorRT
    public var calibrationImages = 512
    /// From this epoch on (0-based), BN uses and keeps its running statistics.
    public var freezeBNAfter: Int?
    /// From this epoch on, activation ranges stop moving.
    public var freezeObserversAfter: Int?
    public var augment = true
    public var seed: UInt64 = 0

    public init() {}

    public func validate() throws {
        try qconfig.validate()
        guard epochs > 0 else { throw QuantizationError("--epochs must be positive, got \(epochs)") }
        guard (0...epochs).contains(warmupEpochs) else { throw QuantizationError("--warmup-epochs must be between 0 and --epochs, got \(warmupEpochs)") }
        guard learningRate > 0, learningRate.isFinite else { throw QuantizationError("--lr must be a positive number, got \(learningRate)") }
        guard batchSize > 1 else { throw QuantizationError("--batch-size must be at least 2, got \(batchSize)") }
        guard calibrationImages > 0 else { throw QuantizationError("calibration needs at least one image, got \(calibrationImages)") }
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
    /// The FP32 checkpoint it started from.
    public var source: String
}

/// Quantization-aware training from an FP32 model: partial fold (QARepVGG's
/// post-BN kept), calibration to initialize the ranges, fine-tuning with
/// fake quantization, and conversion to INT8 at the end. Checkpoints in a
/// directory (`last.safetensors`, kind `qat`) hold weights, BN statistics,
/// scales, observer state and optimizer state, so `resume(from:)` continues
/// without recalibrating.
public final class QATRun {
    public let model: QuantizedNet
    public let trainer: Trainer<QuantizedNet>
    public private(set) var state: QATState
    public let directory: String?
    let optimizer: SGD

    public static let lastFile = "last.safetensors"
    public static let int8File = "int8.safetensors"
    public static let kind = "qat"

    /// Prepares and calibrates a new QAT run from `fp32`.
    public convenience init(from fp32: RepVGGNet, source: String, options: QATOptions, calibration: FashionMNIST,
                            trainImages: Int, directory: String?, progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        try Checkpoint.prepareRunDirectory(directory, lastFile: Self.lastFile)
        let steps = trainImages / options.batchSize
        guard steps > 0 else { throw QuantizationError("training set of \(trainImages) images is smaller than one batch of \(options.batchSize)") }
        let model = try QuantizedNet(from: fp32, form: .postBN, qconfig: options.qconfig)
        try model.calibrate(on: calibration)
        // After calibration, activation ranges follow the data by moving averages.
        for fq in model.fakeQuantizers where !fq.tracksCurrentValues {
            fq.switchToMovingAverage()
            fq.observerEnabled = true
        }
        let schedule = LearningRateSchedule.warmupCosine(base: options.learningRate, warmup: options.warmupEpochs * steps,
                                                         total: options.epochs * steps)
        let training = TrainingConfig(epochs: options.epochs, batchSize: options.batchSize, schedule: schedule,
                                      augment: options.augment, seed: options.seed)
        let state = QATState(options: options, training: training, form: model.hasPostBN ? .postBN : .folded, source: source)
        self.init(model: model, state: state, directory: directory, progress: progress)
    }

    init(model: QuantizedNet, state: QATState, directory: String?, progress: ProgressReporter) {
        self.model = model
        self.state = state
        self.directory = directory
        optimizer = SGD(groups: ParameterGroup.standard(model, weightDecay: state.options.weightDecay),
                        learningRate: state.training.schedule.base, momentum: state.options.momentum)
        trainer = Trainer(model: model, optimizer: optimizer, config: state.training, progress: progress)
        trainer.epoch = state.epoch
        trainer.step = state.step
    }

    /// Continues the QAT run saved in `directory`, without recalibrating.
    public static func resume(from directory: String, progress: ProgressReporter = ProgressReporter()) throws -> QATRun {
        let path = (directory as NSString).appendingPathComponent(lastFile)
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError("\(path): no such file: nothing to resume in \(directory)")
        }
        let (model, state, file) = try loadCheckpoint(path)
        let run = QATRun(model: model, state: state, directory: directory, progress: progress)
        try run.optimizer.loadStateDict(Checkpoint.optimizerState(file, source: (path as NSString).lastPathComponent))
        run.applyFreezes()
        return run
    }

    static let observerStateSuffix = ".observer_state"

    /// The fake-quantized model of a QAT checkpoint, in evaluation mode:
    /// weights, BN statistics, scales and observer state as saved.
    public static func loadModel(from path: String) throws -> QuantizedNet {
        let model = try loadCheckpoint(path).model
        model.eval()
        return model
    }

    static func loadCheckpoint(_ path: String) throws -> (model: QuantizedNet, state: QATState, file: SafeTensorsFile) {
        let (file, name, config, qatJSON) = try Checkpoint.open(path, kind: kind, section: "qat", hint: "QAT checkpoint")
        let state = try Checkpoint.decode(QATState.self, qatJSON, what: "qat", file: name)
        // The structure from a fresh model; every value comes from the file.
        let model = try QuantizedNet(from: RepVGGNet(config: config), form: state.form,
                                     qconfig: state.options.qconfig.with(calibrator: .movingAverage()))
        guard model.hasPostBN == (state.form == .postBN) else {
            throw CheckpointError("\(name): the checkpoint's form \(state.form.rawValue) does not fit block kind \(config.block.rawValue)")
        }
        try Checkpoint.load(file, into: model, source: name, extraSuffixes: [observerStateSuffix])
        for (path, m) in model.namedModules() {
            guard let fq = m as? FakeQuantize else { continue }
            let key = path + observerStateSuffix
            guard let t = file.tensors[key] else { throw CheckpointError.missingKey(key, file: name) }
            let values = try t.floats()
            let per = values.count / max(fq.observers.count, 1)
            do {
                for (c, o) in fq.observers.enumerated() { try o.restore(Array(values[(c * per)..<((c + 1) * per)])) }
            } catch { throw CheckpointError("\(name): key \(key): \(error)") }
        }
        // As after calibration: every quantizer fake-quantizes and keeps observing.
        model.setQuantization(observe: true, fakeQuantize: true)
        return (model, state, file)
    }

    /// Sets BN and observer freezes for the epoch about to run.
    func applyFreezes() {
        let e = trainer.epoch
        if let k = state.options.freezeBNAfter, e >= k { for u in model.units { u.postBN?.freezeStatistics = true } }
        if let k = state.options.freezeObserversAfter, e >= k {
            for fq in model.fakeQuantizers where !fq.tracksCurrentValues { fq.observerEnabled = false }
        }
    }

    /// Trains the remaining epochs (or up to `until`), checkpointing after
    /// each; when the last epoch is done, converts to INT8 and writes
    /// `int8.safetensors` beside the checkpoint.
    @discardableResult
    public func run(train: FashionMNIST, test: FashionMNIST?, until: Int? = nil) throws -> [EpochSummary] {
        var summaries: [EpochSummary] = []
        while trainer.epoch < min(until ?? state.training.epochs, state.training.epochs) {
            applyFreezes()
            let s = try trainer.trainEpoch(on: train, test: test)
            summaries.append(s)
            state.epoch = trainer.epoch
            state.step = trainer.step
            state.lastTop1 = s.test?.top1
            try saveCheckpoint()
        }
        if trainer.epoch == state.training.epochs, let directory {
            try model.convertToInt8().write(to: (directory as NSString).appendingPathComponent(Self.int8File))
        }
        return summaries
    }

    func saveCheckpoint() throws {
        guard let directory else { return }
        var tensors = Checkpoint.stateTensors(of: model)
        for (path, m) in model.namedModules() {
            guard let fq = m as? FakeQuantize else { continue }
            let values = fq.observers.flatMap(\.state)
            tensors[path + Self.observerStateSuffix] = SafeTensor(floats: values, shape: [values.count])
        }
        for (key, values) in optimizer.stateDict() {
            tensors[Checkpoint.optimizerPrefix + key] = SafeTensor(floats: values, shape: [values.count])
        }
        var metadata = try Checkpoint.header(kind: Self.kind, config: model.config)
        metadata["qat"] = try Checkpoint.jsonString(state)
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: (directory as NSString).appendingPathComponent(Self.lastFile))
    }
}
