import Foundation
import QARepKernels

/// How kernels are regularized: ordinary L2 (`l2`, settings S1-S4) or RepVGG's
/// custom L2 on the equivalent kernel (`custom-l2`, setting S0).
public enum WeightDecayMode: String, Codable, Sendable, CaseIterable {
    case l2
    case customL2 = "custom-l2"
}

/// Everything that defines a new FP32 training run of a RepVGG-family model:
/// the model, the shared `TrainingSettings` (readable and writable directly,
/// `options.batchSize = 32`), and the regularization.
@dynamicMemberLookup
public struct TrainingRunOptions: Sendable {
    public var model: ModelConfig
    public var settings: TrainingSettings
    public var weightDecayMode: WeightDecayMode = .l2

    public init(model: ModelConfig, epochs: Int) {
        self.model = model
        settings = TrainingSettings(epochs: epochs)
    }

    public subscript<T>(dynamicMember keyPath: WritableKeyPath<TrainingSettings, T>) -> T {
        get { settings[keyPath: keyPath] }
        set { settings[keyPath: keyPath] = newValue }
    }

    /// Rejects settings that cannot train, with a message naming the setting.
    public func validate() throws {
        try model.validate()
        try settings.validate()
        if weightDecayMode == .customL2 && !model.block.pointwiseHasBN {
            throw ModelError("custom L2 needs a BN on the 1x1 branch: use block repvgg or s2, not \(model.block.rawValue)")
        }
    }
}

/// A training run with checkpoints in a directory: `last.safetensors` after
/// every epoch (model, optimizer state, epoch, step, schedule, seed) and
/// `best.safetensors` whenever validation top-1 improves (when the run is
/// given validation images; the test set is only reported). Writes are atomic, so an
/// interrupted run loses at most the epoch in progress, and `resume(from:)`
/// continues bit-identically to a run that was never stopped.
public final class TrainingRun {
    public let model: RepVGGNet
    private let core: CheckpointedRun<RepVGGNet>
    private let base: TrainingState

    public static let lastFile = CheckpointedRun<RepVGGNet>.lastFile
    public static let bestFile = CheckpointedRun<RepVGGNet>.bestFile

    public var trainer: Trainer<RepVGGNet> { core.trainer }
    public var directory: String? { core.directory }
    var optimizer: SGD { core.optimizer }

    /// Where the run stands, as its checkpoints record it.
    public var state: TrainingState { base.updated(with: core.progress, data: core.data) }

    /// Mid-epoch checkpoints, the metrics interval and listener, stop requests.
    public var controls: RunControls {
        get { core.controls }
        set { core.controls = newValue }
    }

    /// A fresh run. `directory` (created if needed) must not already hold a run.
    /// `dataOrigin`, if given, is recorded so that a resume can reload the same data.
    public convenience init(options: TrainingRunOptions, trainImages: Int, directory: String?, dataOrigin: DataOrigin? = nil,
                            progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        let config = try options.settings.trainingConfig(trainImages: trainImages)
        try CheckpointedRun<RepVGGNet>.prepare(directory)
        let state = TrainingState(epoch: 0, step: 0, config: config, regularization: options.weightDecayMode.rawValue,
                                  weightDecay: options.weightDecay, momentum: options.momentum, nesterov: options.nesterov,
                                  threads: KernelThreads.count)
        try self.init(model: RepVGGNet(config: options.model, seed: options.seed), state: state,
                      directory: directory, origin: dataOrigin, progress: progress)
    }

    /// The checkpoint `resume(from:)` would continue: what a caller checks
    /// (settings, data, threads) before resuming.
    /// - Throws: `CheckpointError` when the directory holds no run.
    public static func checkpointToResume(in directory: String) throws -> ModelCheckpoint {
        try Checkpoint.read(CheckpointedRun<RepVGGNet>.lastCheckpoint(in: directory))
    }

    /// Continues the run saved in `directory`. `epochs`, if given, extends
    /// (or shortens) the planned length; the schedule keeps its shape.
    public static func resume(from directory: String, epochs: Int? = nil,
                              progress: ProgressReporter = ProgressReporter()) throws -> TrainingRun {
        let checkpoint = try checkpointToResume(in: directory)
        guard checkpoint.kind == .train, var state = checkpoint.training else {
            throw CheckpointError("\(checkpoint.source): not a training checkpoint (no training state to resume)")
        }
        if let epochs { try state.replan(epochs: epochs) }
        let model = try Checkpoint.makeModel(checkpoint)
        let run = try TrainingRun(model: model, state: state, directory: directory, progress: progress)
        try run.optimizer.loadStateDict(Checkpoint.optimizerState(checkpoint.file, source: checkpoint.source))
        return run
    }

    init(model: RepVGGNet, state: TrainingState, directory: String?, origin: DataOrigin? = nil, progress: ProgressReporter) throws {
        self.model = model
        base = state
        let mode = WeightDecayMode(rawValue: state.regularization) ?? .l2
        let exclude = mode == .customL2 ? CustomL2.keys(model) : []
        let wd = state.weightDecay
        core = try CheckpointedRun(
            model: model, groups: ParameterGroup.standard(model, weightDecay: wd, exclude: exclude), config: state.config,
            momentum: state.momentum, nesterov: state.nesterov,
            regularizer: mode == .customL2 ? { CustomL2.term(model) * (0.5 * wd) } : nil,
            progress: state.progress,
            data: state.data, origin: origin, directory: directory, reporter: progress)
    }

    /// Trains the remaining epochs (or up to epoch `until`), from the exact
    /// step the run stands at, saving checkpoints after each epoch (and every
    /// `controls.checkpointEvery` steps).
    /// - Throws: `RunInterrupted` when `controls.shouldStop` stopped it; `ModelError`
    ///   for a training set other than the one the run started on.
    @discardableResult
    public func run(train: any Dataset, validation: (any Dataset)? = nil, test: (any Dataset)?, until: Int? = nil,
                    onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        try core.run(train: train, validation: validation, test: test, until: until, save: { path, withOptimizer in
            try Checkpoint.save(model, to: path, training: state, optimizer: withOptimizer ? optimizer : nil)
        }, onEpochEnd: onEpochEnd)
    }
}

extension TrainingState {
    /// Plans the run for `epochs` in all (more or fewer than before, not fewer
    /// than done); the schedule keeps its shape.
    /// - Throws: `ModelError` when `epochs` is below the epochs already done.
    mutating func replan(epochs: Int) throws {
        guard epochs >= epoch else { throw ModelError("epochs \(epochs) is less than the \(epoch) epochs already done") }
        if config.schedule.kind == .warmupCosine, epochs > 0 {
            // Stretch the cosine over the new length, as a run planned that long would have.
            let perEpoch = config.schedule.total / max(config.epochs, 1)
            config.schedule.total = perEpoch * epochs
        }
        config.epochs = epochs
    }

    /// The settings the run was started with (`epochs` as now planned).
    public var settings: TrainingSettings {
        let schedule = config.schedule
        let stepsPerEpoch = max(schedule.total / max(config.epochs, 1), 1)
        var s = TrainingSettings(epochs: config.epochs, batchSize: config.batchSize, learningRate: schedule.base,
                                 warmupEpochs: schedule.warmup / stepsPerEpoch)
        s.momentum = momentum; s.nesterov = nesterov; s.weightDecay = weightDecay
        s.labelSmoothing = config.labelSmoothing; s.augment = config.augment; s.seed = config.seed
        return s
    }
}

extension TrainingState: RunRecord {}
