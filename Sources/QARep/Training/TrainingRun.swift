import Foundation

/// How kernels are regularized: ordinary L2 (`l2`, settings S1-S4) or RepVGG's
/// custom L2 on the equivalent kernel (`custom-l2`, setting S0).
public enum WeightDecayMode: String, Codable, Sendable, CaseIterable {
    case l2
    case customL2 = "custom-l2"
}

/// Everything that defines a new FP32 training run of a RepVGG-family model.
public struct TrainingRunOptions: Sendable {
    public var model: ModelConfig
    public var epochs: Int
    public var batchSize: Int = 64
    public var learningRate: Float = 0.1
    public var warmupEpochs: Int = 0
    public var momentum: Float = 0.9
    public var nesterov: Bool = false
    public var weightDecay: Float = 1e-4
    public var weightDecayMode: WeightDecayMode = .l2
    public var labelSmoothing: Float = 0
    public var augment: Bool = true
    public var seed: UInt64 = 0

    public init(model: ModelConfig, epochs: Int) {
        self.model = model
        self.epochs = epochs
    }

    /// Rejects settings that cannot train, with a message naming the setting.
    public func validate() throws {
        try model.validate()
        guard epochs > 0 else { throw ModelError("--epochs must be positive, got \(epochs)") }
        guard batchSize > 1 else { throw ModelError("--batch-size must be at least 2 (batch norm needs a batch), got \(batchSize)") }
        guard learningRate > 0, learningRate.isFinite else { throw ModelError("--lr must be a positive number, got \(learningRate)") }
        guard warmupEpochs >= 0, warmupEpochs <= epochs else { throw ModelError("--warmup-epochs must be between 0 and --epochs (\(epochs)), got \(warmupEpochs)") }
        guard weightDecay >= 0 else { throw ModelError("--wd must be >= 0, got \(weightDecay)") }
        guard momentum >= 0, momentum < 1 else { throw ModelError("--momentum must be in [0, 1), got \(momentum)") }
        guard labelSmoothing >= 0, labelSmoothing < 1 else { throw ModelError("--label-smoothing must be in [0, 1), got \(labelSmoothing)") }
        if weightDecayMode == .customL2 && !model.block.pointwiseHasBN {
            throw ModelError("custom L2 needs a BN on the 1x1 branch: use --block repvgg or s2, not \(model.block.rawValue)")
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
    public let trainer: Trainer<RepVGGNet>
    public private(set) var state: TrainingState
    public let directory: String?
    let optimizer: SGD

    public static let lastFile = "last.safetensors"
    public static let bestFile = "best.safetensors"

    /// A fresh run. `directory` (created if needed) must not already hold a run.
    public convenience init(options: TrainingRunOptions, trainImages: Int, directory: String?,
                            progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        try Checkpoint.prepareRunDirectory(directory, lastFile: Self.lastFile)
        let stepsPerEpoch = trainImages / options.batchSize
        guard stepsPerEpoch > 0 else {
            throw ModelError("training set of \(trainImages) images is smaller than one batch of \(options.batchSize)")
        }
        let schedule = LearningRateSchedule.warmupCosine(
            base: options.learningRate, warmup: options.warmupEpochs * stepsPerEpoch,
            total: options.epochs * stepsPerEpoch)
        let config = TrainingConfig(epochs: options.epochs, batchSize: options.batchSize, schedule: schedule,
                                    labelSmoothing: options.labelSmoothing, augment: options.augment, seed: options.seed)
        let state = TrainingState(epoch: 0, step: 0, config: config, regularization: options.weightDecayMode.rawValue,
                                  weightDecay: options.weightDecay, momentum: options.momentum, nesterov: options.nesterov)
        try self.init(model: RepVGGNet(config: options.model, seed: options.seed), state: state,
                      directory: directory, progress: progress)
    }

    /// Continues the run saved in `directory`. `epochs`, if given, extends
    /// (or shortens) the planned length; the schedule keeps its shape.
    public static func resume(from directory: String, epochs: Int? = nil,
                              progress: ProgressReporter = ProgressReporter()) throws -> TrainingRun {
        let path = (directory as NSString).appendingPathComponent(lastFile)
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError("\(path): no such file: nothing to resume in \(directory)")
        }
        let checkpoint = try Checkpoint.read(path)
        guard checkpoint.kind == .train, var state = checkpoint.training else {
            throw CheckpointError("\(path): not a training checkpoint (no training state to resume)")
        }
        if let epochs {
            guard epochs >= state.epoch else { throw ModelError("--epochs \(epochs) is less than the \(state.epoch) epochs already done") }
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
        self.state = state
        self.directory = directory
        let mode = WeightDecayMode(rawValue: state.regularization) ?? .l2
        let exclude = mode == .customL2 ? CustomL2.keys(model) : []
        optimizer = SGD(groups: ParameterGroup.standard(model, weightDecay: state.weightDecay, exclude: exclude),
                        learningRate: state.config.schedule.base, momentum: state.momentum, nesterov: state.nesterov)
        let wd = state.weightDecay
        trainer = Trainer(model: model, optimizer: optimizer, config: state.config,
                          regularizer: mode == .customL2 ? { CustomL2.term(model) * (0.5 * wd) } : nil,
                          progress: progress)
        trainer.epoch = state.epoch
        trainer.step = state.step
    }

    /// Trains the remaining epochs (or up to epoch `until`), saving
    /// checkpoints after each.
    @discardableResult
    public func run(train: FashionMNIST, test: FashionMNIST?, until: Int? = nil,
                    onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        try trainer.fit(train: train, test: test, until: until) { summary in
            state.epoch = trainer.epoch
            state.step = trainer.step
            state.lastTop1 = summary.test?.top1
            var improved = false
            if let top1 = summary.test?.top1, top1 > (state.bestTop1 ?? -1) {
                state.bestTop1 = top1
                state.bestEpoch = summary.epoch
                improved = true
            }
            if let directory {
                try Checkpoint.save(model, to: (directory as NSString).appendingPathComponent(Self.lastFile),
                                    training: state, optimizer: optimizer)
                if improved {
                    try Checkpoint.save(model, to: (directory as NSString).appendingPathComponent(Self.bestFile), training: state)
                }
            }
            onEpochEnd(summary)
        }
    }
}
