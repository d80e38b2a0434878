import Foundation

/// Where a checkpointed run stands and how it has done.
struct RunProgress: Sendable, Equatable {
    /// Epochs completed.
    var epoch = 0
    /// Optimizer steps taken.
    var step = 0
    /// What the epoch in progress has seen (empty at an epoch boundary).
    var totals = EpochTotals()
    /// Test top-1 after the last epoch.
    var lastTop1: Double?
    /// Best validation top-1 so far and the epoch (1-based) it was reached.
    var bestTop1: Double?
    var bestEpoch: Int?
}

/// The saved state of a run (`TrainingState`, `QATState`): the fields it
/// shares with every other kind of run, read and written as one.
protocol RunRecord {
    var epoch: Int { get set }
    var step: Int { get set }
    var lastTop1: Double? { get set }
    var bestTop1: Double? { get set }
    var bestEpoch: Int? { get set }
    var totals: EpochTotals? { get set }
    var data: DataRecord? { get set }
}

extension RunRecord {
    /// Where the run stood when the state was saved.
    var progress: RunProgress {
        RunProgress(epoch: epoch, step: step, totals: totals ?? EpochTotals(),
                    lastTop1: lastTop1, bestTop1: bestTop1, bestEpoch: bestEpoch)
    }

    /// This state with the run's progress and data as they are now.
    func updated(with p: RunProgress, data: DataRecord?) -> Self {
        var s = self
        s.epoch = p.epoch; s.step = p.step
        s.lastTop1 = p.lastTop1; s.bestTop1 = p.bestTop1; s.bestEpoch = p.bestEpoch
        s.totals = p.totals.seen > 0 ? p.totals : nil
        s.data = data
        return s
    }
}

/// What a caller may set on a training or QAT run before calling `run`.
public struct RunControls {
    /// Also write `last.safetensors` every this many optimizer steps, so a
    /// kill loses at most that many; resuming continues from the exact step.
    public var checkpointEvery: Int?
    /// `metrics.jsonl` gets a record every this many steps (0: per epoch only).
    public var metricsEvery = 50
    /// Polled after every step; when it returns true the run writes
    /// `last.safetensors` and throws `RunInterrupted` (a signal handler's flag, say).
    public var shouldStop: () -> Bool = { false }
    /// Called with every `metrics.jsonl` record, with or without a directory
    /// (where a TensorBoard writer, say, listens); on rank 0 only in a data-parallel job.
    public var onMetrics: (MetricsRecord) throws -> Void = { _ in }

    public init() {}
}

/// The files of a run directory.
enum RunFiles {
    /// The latest state, optimizer included: what a resume reads.
    static let last = "last.safetensors"
    /// The epoch with the best validation top-1 so far (written only with validation images).
    static let best = "best.safetensors"
    /// One JSON record per line: every few steps and every epoch.
    static let metrics = "metrics.jsonl"
}

/// A run stopped on request (`RunControls.shouldStop`) before its last epoch; its `last`
/// checkpoint, if it has a directory, continues exactly from there.
public struct RunInterrupted: Error, CustomStringConvertible {
    /// Epochs completed and optimizer steps taken when it stopped.
    public let epoch: Int
    public let step: Int
    /// The run directory holding the checkpoint, if any.
    public let directory: String?

    public var description: String {
        let at = "stopped after step \(step) (\(epoch) epoch(s) complete)"
        guard let directory else { return at + "; the run has no directory, so nothing was saved" }
        return at + "; \(directory)/\(RunFiles.last) continues from there"
    }
}

/// The one epoch loop of FP32 training and QAT: SGD over the model's
/// parameter groups, the trainer, and the run directory's files: `last`
/// (with the optimizer state) after every epoch and every `checkpointEvery`
/// steps, `best` when validation top-1 improves (only with validation
/// images: the test set is reported, never used to select), and `metrics.jsonl`. What differs
/// between the two kinds of run (what a checkpoint holds, freezes before an
/// epoch, what happens at the end) comes in as closures.
final class CheckpointedRun<Model: Layer> {
    let trainer: Trainer<Model>
    let optimizer: SGD
    let directory: String?
    /// Test top-1 bookkeeping; epoch, step and totals live in the trainer.
    private var lastTop1: Double?, bestTop1: Double?, bestEpoch: Int?
    /// The training set the run started on (recorded on the first epoch).
    private(set) var data: DataRecord?
    private let origin: DataOrigin?
    /// Mid-epoch checkpoints, metrics, stop requests.
    var controls = RunControls()

    static var lastFile: String { RunFiles.last }
    static var bestFile: String { RunFiles.best }
    static var metricsFile: String { RunFiles.metrics }

    init(model: Model, groups: [ParameterGroup], config: TrainingConfig, momentum: Float, nesterov: Bool,
         regularizer: (() -> Tensor)? = nil, progress: RunProgress, data: DataRecord?, origin: DataOrigin? = nil,
         directory: String?, reporter: ProgressReporter) throws {
        optimizer = SGD(groups: groups, learningRate: config.schedule.base, momentum: momentum, nesterov: nesterov)
        trainer = Trainer(model: model, optimizer: optimizer, config: config, regularizer: regularizer, progress: reporter)
        trainer.epoch = progress.epoch
        trainer.step = progress.step
        trainer.totals = progress.totals
        lastTop1 = progress.lastTop1; bestTop1 = progress.bestTop1; bestEpoch = progress.bestEpoch
        self.data = data
        self.origin = origin ?? data?.origin
        self.directory = directory
        try MetricsLog(path: path(Self.metricsFile)).keep(upToStep: progress.step)
    }

    /// Where the run stands.
    var progress: RunProgress {
        RunProgress(epoch: trainer.epoch, step: trainer.step, totals: trainer.totals,
                    lastTop1: lastTop1, bestTop1: bestTop1, bestEpoch: bestEpoch)
    }

    /// The path of `file` in the run directory, to write; nil without a
    /// directory, and on every data-parallel rank but 0, which alone writes.
    func path(_ file: String) -> String? {
        guard DataParallel.isPrimary else { return nil }
        return directory.map { ($0 as NSString).appendingPathComponent(file) }
    }

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

    /// Trains up to epoch `until` (default: all), from wherever the run
    /// stands, mid-epoch included. Before each epoch calls
    /// `beforeEpoch(epoch)`; `save(path, withOptimizer)` writes `last` (with
    /// the optimizer) and `best` (without), only with a directory.
    /// - Throws: `RunInterrupted` when `controls.shouldStop` asked for a stop, after
    ///   `last` was written; `ModelError` for a training set other than the run's.
    func run(train: any Dataset, validation: (any Dataset)?, test: (any Dataset)?, until: Int?,
             beforeEpoch: (Int) -> Void = { _ in },
             save: (_ path: String, _ withOptimizer: Bool) throws -> Void,
             onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        if let data { try data.check(train) } else { data = DataRecord(origin: origin, train: train) }
        let log = MetricsLog(path: path(Self.metricsFile))
        func saveLast() throws { if let last = path(Self.lastFile) { try save(last, true) } }
        func interrupted() -> RunInterrupted { RunInterrupted(epoch: trainer.epoch, step: trainer.step, directory: directory) }

        var summaries: [EpochSummary] = []
        while trainer.epoch < min(until ?? trainer.config.epochs, trainer.config.epochs) {
            beforeEpoch(trainer.epoch)
            var stopped = false
            let summary = try trainer.trainEpoch(on: train, validation: validation, test: test) {
                let step = trainer.step
                if controls.metricsEvery > 0, step % controls.metricsEvery == 0 {
                    let record = MetricsRecord.step(epoch: trainer.epoch + 1, step: step, totals: trainer.totals, learningRate: optimizer.learningRate)
                    try log.append(record)
                    if DataParallel.isPrimary { try controls.onMetrics(record) }
                }
                // A stop request (a signal) that reached one rank stops them all after this step.
                if DataParallel.any(controls.shouldStop()) {
                    try saveLast()
                    stopped = true
                    return false
                }
                if let every = controls.checkpointEvery, step % every == 0 { try saveLast() }
                return true
            }
            guard let summary, !stopped else { throw interrupted() }
            summaries.append(summary)
            lastTop1 = summary.test?.top1
            var improved = false
            if let top1 = summary.validation?.top1, top1 > (bestTop1 ?? -1) {
                bestTop1 = top1
                bestEpoch = summary.epoch
                improved = true
            }
            // The log, then `best`, then `last`: a kill in between leaves the previous `last`, whose
            // resume redoes this epoch, drops the log's newer records and writes `best` again.
            let record = MetricsRecord.epoch(summary, step: trainer.step)
            try log.append(record)
            if DataParallel.isPrimary { try controls.onMetrics(record) }
            if improved, let best = path(Self.bestFile) { try save(best, false) }
            try saveLast()
            onEpochEnd(summary)
            if DataParallel.any(controls.shouldStop()) && trainer.epoch < trainer.config.epochs { throw interrupted() }
        }
        return summaries
    }
}

/// One line of `metrics.jsonl`: `kind` `step` (running loss, accuracy and
/// images/s of the epoch in progress, every few steps) or `epoch` (the
/// epoch's summary with validation and test top-1).
public struct MetricsRecord: Codable, Sendable, Equatable {
    public var kind: String
    /// 1-based: the epoch in progress, or the one just finished.
    public var epoch: Int
    /// Optimizer steps taken.
    public var step: Int
    /// Mean training loss and accuracy (of the epoch so far, or the whole epoch).
    public var loss: Double
    public var accuracy: Double
    public var learningRate: Float
    public var imagesPerSecond: Double
    public var validationTop1: Double?
    public var testTop1: Double?
    public var seconds: Double?

    static func step(epoch: Int, step: Int, totals: EpochTotals, learningRate: Float) -> MetricsRecord {
        MetricsRecord(kind: "step", epoch: epoch, step: step, loss: totals.meanLoss,
                      accuracy: Double(totals.correct) / Double(max(totals.seen, 1)), learningRate: learningRate,
                      imagesPerSecond: Double(totals.seen) / max(totals.seconds, 1e-9))
    }

    static func epoch(_ s: EpochSummary, step: Int) -> MetricsRecord {
        MetricsRecord(kind: "epoch", epoch: s.epoch, step: step, loss: s.trainLoss, accuracy: s.trainAccuracy,
                      learningRate: s.learningRate, imagesPerSecond: s.imagesPerSecond, validationTop1: s.validation?.top1,
                      testTop1: s.test?.top1, seconds: s.seconds)
    }
}

/// `metrics.jsonl` of a run directory: one `MetricsRecord` per line.
struct MetricsLog {
    let path: String?

    private static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        e.keyEncodingStrategy = .convertToSnakeCase
        return e
    }()

    /// Appends one line (a log, not a checkpoint: appended in place).
    func append(_ record: MetricsRecord) throws {
        guard let path else { return }
        var line = try Self.encoder.encode(record)
        line.append(UInt8(ascii: "\n"))
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: line) else {
                throw CheckpointError("\(path): cannot create the metrics log")
            }
            return
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw CheckpointError("\(path): cannot open the metrics log") }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: line)
    }

    /// Drops the records of steps after `step` (written after the checkpoint
    /// a run resumes from, so the resumed run will log them again); removes
    /// the log of a fresh run (`step` 0).
    func keep(upToStep step: Int) throws {
        guard let path, FileManager.default.fileExists(atPath: path) else { return }
        guard step > 0 else { try FileManager.default.removeItem(atPath: path); return }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        struct StepOnly: Decodable { var step: Int }
        let kept = text.split(separator: "\n").filter { line in
            (try? JSONDecoder().decode(StepOnly.self, from: Data(line.utf8)))?.step ?? Int.max <= step
        }
        try AtomicFile.write(Data(kept.map { $0 + "\n" }.joined().utf8), to: path)
    }
}
