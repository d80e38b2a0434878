import Foundation

/// Where a checkpointed run stands and how it has done.
public struct RunProgress: Sendable, Equatable {
    /// Epochs completed.
    public var epoch = 0
    /// Optimizer steps taken.
    public var step = 0
    /// Test top-1 after the last epoch.
    public var lastTop1: Double?
    /// Best test top-1 so far and the epoch (1-based) it was reached.
    public var bestTop1: Double?
    public var bestEpoch: Int?
}

/// The one epoch loop of FP32 training and QAT: SGD over the model's
/// parameter groups, the trainer, and after each epoch the bookkeeping and
/// checkpoints of a run directory (`last` with the optimizer state, `best`
/// when test top-1 improves). What differs between the two kinds of run
/// (what a checkpoint holds, freezes before an epoch, what happens at the
/// end) comes in as closures.
final class CheckpointedRun<Model: Layer> {
    let trainer: Trainer<Model>
    let optimizer: SGD
    let directory: String?
    private(set) var progress: RunProgress

    static var lastFile: String { "last.safetensors" }
    static var bestFile: String { "best.safetensors" }

    init(model: Model, groups: [ParameterGroup], config: TrainingConfig, momentum: Float, nesterov: Bool,
         regularizer: (() -> Tensor)? = nil, progress: RunProgress, directory: String?, reporter: ProgressReporter) {
        optimizer = SGD(groups: groups, learningRate: config.schedule.base, momentum: momentum, nesterov: nesterov)
        trainer = Trainer(model: model, optimizer: optimizer, config: config, regularizer: regularizer, progress: reporter)
        trainer.epoch = progress.epoch
        trainer.step = progress.step
        self.progress = progress
        self.directory = directory
    }

    /// The path of `file` in the run directory.
    func path(_ file: String) -> String? { directory.map { ($0 as NSString).appendingPathComponent(file) } }

    /// A fresh run directory: created if needed, refused if it already holds a run.
    static func prepare(_ directory: String?) throws {
        try Checkpoint.prepareRunDirectory(directory, lastFile: lastFile)
    }

    /// The `last` checkpoint of the run saved in `directory`.
    /// - Throws: `CheckpointError` when there is none.
    static func lastCheckpoint(in directory: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent(lastFile)
        guard FileManager.default.fileExists(atPath: path) else {
            throw CheckpointError("\(path): no such file: nothing to resume in \(directory)")
        }
        return path
    }

    /// Trains up to epoch `until` (default: all). Before each epoch calls
    /// `beforeEpoch(epoch)`; after it updates `progress` and calls
    /// `save(path, withOptimizer)` for `last` and, when test top-1 improved,
    /// for `best` (writes happen only with a directory).
    func run(train: FashionMNIST, test: FashionMNIST?, until: Int?,
             beforeEpoch: (Int) -> Void = { _ in },
             save: (_ path: String, _ withOptimizer: Bool) throws -> Void,
             onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        var summaries: [EpochSummary] = []
        while trainer.epoch < min(until ?? trainer.config.epochs, trainer.config.epochs) {
            beforeEpoch(trainer.epoch)
            let summary = try trainer.trainEpoch(on: train, test: test)
            summaries.append(summary)
            progress.epoch = trainer.epoch
            progress.step = trainer.step
            progress.lastTop1 = summary.test?.top1
            var improved = false
            if let top1 = summary.test?.top1, top1 > (progress.bestTop1 ?? -1) {
                progress.bestTop1 = top1
                progress.bestEpoch = summary.epoch
                improved = true
            }
            if let last = path(Self.lastFile) {
                try save(last, true)
                if improved, let best = path(Self.bestFile) { try save(best, false) }
            }
            onEpochEnd(summary)
        }
        return summaries
    }
}
