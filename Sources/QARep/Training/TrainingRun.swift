import Foundation

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
/// `best.safetensors` whenever test top-1 improves. Writes are atomic, so an
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
    public var state: TrainingState {
        var s = base
        let p = core.progress
        s.epoch = p.epoch; s.step = p.step
        s.lastTop1 = p.lastTop1; s.bestTop1 = p.bestTop1; s.bestEpoch = p.bestEpoch
        return s
    }

    /// A fresh run. `directory` (created if needed) must not already hold a run.
    public convenience init(options: TrainingRunOptions, trainImages: Int, directory: String?,
                            progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        let config = try options.settings.trainingConfig(trainImages: trainImages)
        try CheckpointedRun<RepVGGNet>.prepare(directory)
        let state = TrainingState(epoch: 0, step: 0, config: config, regularization: options.weightDecayMode.rawValue,
                                  weightDecay: options.weightDecay, momentum: options.momentum, nesterov: options.nesterov)
        try self.init(model: RepVGGNet(config: options.model, seed: options.seed), state: state,
                      directory: directory, progress: progress)
    }

    /// Continues the run saved in `directory`. `epochs`, if given, extends
    /// (or shortens) the planned length; the schedule keeps its shape.
    public static func resume(from directory: String, epochs: Int? = nil,
                              progress: ProgressReporter = ProgressReporter()) throws -> TrainingRun {
        let path = try CheckpointedRun<RepVGGNet>.lastCheckpoint(in: directory)
        let checkpoint = try Checkpoint.read(path)
        guard checkpoint.kind == .train, var state = checkpoint.training else {
            throw CheckpointError("\(path): not a training checkpoint (no training state to resume)")
        }
        if let epochs {
            guard epochs >= state.epoch else { throw ModelError("epochs \(epochs) is less than the \(state.epoch) epochs already done") }
            state.config.epochs = epochs
            if state.config.schedule.kind == .warmupCosine, state.config.epochs > 0 {
                // Stretch the cosine over the new length, as a run planned that long would have.
                let perEpoch = state.config.schedule.total / max(checkpoint.training!.config.epochs, 1)
                state.config.schedule.total = perEpoch * epochs
            }
        }
        let model = try Checkpoint.makeModel(checkpoint)
        let run = try TrainingRun(model: model, state: state, directory: directory, progress: progress)
        try run.optimizer.loadStateDict(Checkpoint.optimizerState(checkpoint.file, source: checkpoint.source))
        return run
    }

    init(model: RepVGGNet, state: TrainingState, directory: String?, progress: ProgressReporter) throws {
        self.model = model
        base = state
        let mode = WeightDecayMode(rawValue: state.regularization) ?? .l2
        let exclude = mode == .customL2 ? CustomL2.keys(model) : []
        let wd = state.weightDecay
        core = CheckpointedRun(
            model: model, groups: ParameterGroup.standard(model, weightDecay: wd, exclude: exclude), config: state.config,
            momentum: state.momentum, nesterov: state.nesterov,
            regularizer: mode == .customL2 ? { CustomL2.term(model) * (0.5 * wd) } : nil,
            progress: RunProgress(epoch: state.epoch, step: state.step, lastTop1: state.lastTop1,
                                  bestTop1: state.bestTop1, bestEpoch: state.bestEpoch),
            directory: directory, reporter: progress)
    }

    /// Trains the remaining epochs (or up to epoch `until`), saving
    /// checkpoints after each.
    @discardableResult
    public func run(train: FashionMNIST, test: FashionMNIST?, until: Int? = nil,
                    onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        try core.run(train: train, test: test, until: until, save: { path, withOptimizer in
            try Checkpoint.save(model, to: path, training: state, optimizer: withOptimizer ? optimizer : nil)
        }, onEpochEnd: onEpochEnd)
    }
}
