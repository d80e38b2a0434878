import Foundation
import QARepKernels

/// FP32 training with checkpoints and exact resume for any
/// `CheckpointableModel` (`ResNet`, a recipe's own network): the run
/// `TrainingRun` is for the RepVGG family, with ordinary L2 on kernels.
/// `last.safetensors` after every epoch (model, optimizer state, epoch, step,
/// schedule, seed), `best.safetensors` when validation top-1 improves, and
/// `resume(from:)` continues bit-identically (for the same thread count).
public final class ModelTrainingRun<Model: CheckpointableModel> {
    public let model: Model
    private let core: CheckpointedRun<Model>
    private let base: TrainingState

    public static var lastFile: String { CheckpointedRun<Model>.lastFile }
    public static var bestFile: String { CheckpointedRun<Model>.bestFile }

    public var trainer: Trainer<Model> { core.trainer }
    public var directory: String? { core.directory }

    /// Where the run stands, as its checkpoints record it.
    public var state: TrainingState { base.updated(with: core.progress, data: core.data) }

    /// Mid-epoch checkpoints, the metrics interval and listener, stop requests.
    public var controls: RunControls {
        get { core.controls }
        set { core.controls = newValue }
    }

    /// A fresh run of the model `config` describes, initialized from `settings.seed`.
    /// `directory` (created if needed) must not already hold a run.
    public convenience init(config: Model.Config, settings: TrainingSettings, trainImages: Int, directory: String?,
                            dataOrigin: DataOrigin? = nil, progress: ProgressReporter = ProgressReporter()) throws {
        try settings.validate()
        let training = try settings.trainingConfig(trainImages: trainImages)
        let model = try Model(config: config, seed: settings.seed)
        try CheckpointedRun<Model>.prepare(directory)
        let state = TrainingState(epoch: 0, step: 0, config: training, regularization: WeightDecayMode.l2.rawValue,
                                  weightDecay: settings.weightDecay, momentum: settings.momentum, nesterov: settings.nesterov,
                                  threads: KernelThreads.count)
        try self.init(model: model, state: state, directory: directory, origin: dataOrigin, progress: progress)
    }

    private init(model: Model, state: TrainingState, directory: String?, origin: DataOrigin?, progress: ProgressReporter) throws {
        self.model = model
        base = state
        core = try CheckpointedRun(
            model: model, groups: ParameterGroup.standard(model, weightDecay: state.weightDecay), config: state.config,
            momentum: state.momentum, nesterov: state.nesterov, progress: state.progress,
            data: state.data, origin: origin, directory: directory, reporter: progress)
    }

    /// The training state and model config of the run `resume(from:)` would
    /// continue: what a caller checks (settings, data, threads) before resuming.
    /// - Throws: `CheckpointError` when the directory holds no run of this model.
    public static func savedState(in directory: String) throws -> (state: TrainingState, config: Model.Config) {
        let path = try CheckpointedRun<Model>.lastCheckpoint(in: directory)
        let (file, name, config) = try Checkpoint.open(path, as: Model.self, kind: CheckpointKind.train.rawValue, hint: "training checkpoint")
        guard let json = file.metadata["training"] else { throw CheckpointError("\(name): not a training checkpoint (no training state to resume)") }
        return (try Checkpoint.decode(TrainingState.self, json, what: "training state", file: name), config)
    }

    /// Continues the run saved in `directory`. `epochs`, if given, extends
    /// (or shortens) the planned length; the schedule keeps its shape.
    public static func resume(from directory: String, epochs: Int? = nil,
                              progress: ProgressReporter = ProgressReporter()) throws -> ModelTrainingRun {
        let path = try CheckpointedRun<Model>.lastCheckpoint(in: directory)
        let (model, training, file) = try Checkpoint.loadModel(path, as: Model.self)
        let name = (path as NSString).lastPathComponent
        guard var state = training else { throw CheckpointError("\(name): not a training checkpoint (no training state to resume)") }
        if let epochs { try state.replan(epochs: epochs) }
        let run = try ModelTrainingRun(model: model, state: state, directory: directory, origin: nil, progress: progress)
        try run.core.optimizer.loadStateDict(Checkpoint.optimizerState(file, source: name))
        return run
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
            try Checkpoint.save(model, to: path, training: state, optimizer: withOptimizer ? core.optimizer : nil)
        }, onEpochEnd: onEpochEnd)
    }
}
