import Foundation

/// Hyper-parameters of a training run.
public struct TrainingConfig: Codable, Sendable {
    public var epochs: Int
    public var batchSize: Int
    public var schedule: LearningRateSchedule
    public var labelSmoothing: Float = 0
    public var augment: Bool = true
    /// Seeds shuffling and augmentation (and, through the model builder, initialization).
    public var seed: UInt64 = 0

    public init(epochs: Int, batchSize: Int, schedule: LearningRateSchedule,
                labelSmoothing: Float = 0, augment: Bool = true, seed: UInt64 = 0) {
        self.epochs = epochs; self.batchSize = batchSize; self.schedule = schedule
        self.labelSmoothing = labelSmoothing; self.augment = augment; self.seed = seed
    }
}

/// What one epoch did.
public struct EpochSummary: Sendable, Codable {
    public var epoch: Int
    public var trainLoss: Double
    public var trainAccuracy: Double
    /// On the validation images, when the run holds some out: what selects
    /// the best epoch.
    public var validation: Score?
    /// On the test images: reported, never used to select.
    public var test: Score?
    public var imagesPerSecond: Double
    public var seconds: Double
    public var learningRate: Float
}

/// Top-1 and loss of one evaluation, without its predictions.
public struct Score: Sendable, Codable, Equatable {
    public var top1: Double
    public var loss: Double
    public var count: Int

    public init(_ e: Evaluation) { top1 = e.top1; loss = e.loss; count = e.count }
    public init(top1: Double, loss: Double, count: Int) { self.top1 = top1; self.loss = loss; self.count = count }
}

/// Running totals of the epoch in progress: kept in mid-epoch checkpoints so
/// that a resumed epoch reports what an uninterrupted one would.
public struct EpochTotals: Codable, Sendable, Equatable {
    public var seen = 0
    public var correct = 0
    public var lossSum = 0.0
    /// Training time so far (the parts before and after an interruption).
    public var seconds = 0.0
    public init() {}
    /// Mean loss per image so far.
    public var meanLoss: Double { lossSum / Double(max(seen, 1)) }
}

/// Training stopped on bad numbers.
public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
}

/// Runs epochs of minibatch training: forward, loss (+ regularization),
/// backward, schedule, optimizer step; evaluates on the test set at each
/// epoch's end. Deterministic for a given seed and BLAS thread count: the
/// data order depends only on (seed, epoch) and the schedule only on the
/// global step, so a run resumed at an epoch boundary continues exactly.
public final class Trainer<Model: Layer> {
    public let model: Model
    public let optimizer: any Optimizer
    public let config: TrainingConfig
    /// Extra loss terms added to the cross-entropy each step (RepVGG's custom L2, for instance).
    public var regularizer: (() -> Tensor)?
    /// The loss of a batch from its images, the model's logits and their
    /// cross-entropy, in place of the cross-entropy alone (distillation mixes
    /// in a teacher's logits). Nil: the cross-entropy.
    public var batchLoss: ((_ images: Tensor, _ logits: Tensor, _ crossEntropy: Tensor) -> Tensor)?
    /// Epochs completed so far (the next epoch index).
    public var epoch = 0
    /// Optimizer steps taken so far. Every epoch takes the same number, so
    /// `step - epoch * stepsPerEpoch` is how far the epoch in progress is.
    public var step = 0
    /// What the epoch in progress has seen so far.
    public var totals = EpochTotals()
    public let progress: ProgressReporter

    public init(model: Model, optimizer: any Optimizer, config: TrainingConfig,
                regularizer: (() -> Tensor)? = nil, progress: ProgressReporter = ProgressReporter()) {
        self.model = model; self.optimizer = optimizer; self.config = config
        self.regularizer = regularizer; self.progress = progress
    }

    /// Trains one epoch on `train` and evaluates on `validation` and `test` if given.
    /// - Throws: `TrainingError` when the loss becomes NaN or infinite; the
    ///   model is then left as it was before the failing step's update.
    @discardableResult
    public func trainEpoch(on train: any Dataset, validation: (any Dataset)? = nil, test: (any Dataset)? = nil) throws -> EpochSummary {
        try trainEpoch(on: train, validation: validation, test: test, afterStep: { true })!
    }

    /// Trains the epoch in progress from where it stands (`step` says how many
    /// of its batches are done: a run resumed mid-epoch continues with the
    /// next one, and `totals` carries what the epoch had seen), calling
    /// `afterStep` after every optimizer step. When `afterStep` returns
    /// false the epoch stops there, still in progress, and the result is nil;
    /// otherwise it ends as `trainEpoch(on:test:)` does.
    public func trainEpoch(on train: any Dataset, validation: (any Dataset)? = nil, test: (any Dataset)?,
                           afterStep: () throws -> Bool) throws -> EpochSummary? {
        // In a data-parallel job each rank loads its rows of every global batch.
        let loader = DataLoader(dataset: train, batchSize: config.batchSize, shuffle: true,
                                augment: config.augment, seed: config.seed, dropLast: true, shard: BatchShard.current)
        let steps = loader.batchesPerEpoch
        guard steps > 0 else {
            throw TrainingError(description: "training set of \(train.count) images is smaller than one batch of \(config.batchSize)")
        }
        let first = step - epoch * steps
        guard (0..<steps).contains(first) else {
            throw TrainingError(description: "step \(step) is not inside epoch \(epoch + 1) of \(steps) steps (a different training set or batch size than the run's?)")
        }
        model.train()
        let clock = ContinuousClock(), start = clock.now
        let earlierSeconds = totals.seconds
        func seconds() -> Double {
            let d = start.duration(to: clock.now)
            return earlierSeconds + Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }
        for (offset, batch) in loader.batches(epoch: epoch, from: first).enumerated() {
            let i = first + offset
            let lr = config.schedule.learningRate(step: step, stepsPerEpoch: steps)
            optimizer.learningRate = lr
            let x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
            let logits = model(x)
            var loss = crossEntropy(logits, labels: batch.labels, labelSmoothing: config.labelSmoothing)
            if let batchLoss { loss = batchLoss(x, logits, loss) }
            let correct = zip(logits.argmaxRows(), batch.labels).filter { $0 == $1 }.count
            // In a data-parallel job each rank takes its share of the global batch's mean loss, and the
            // regularizer counts once (on rank 0, as alone), so the gradients summed over the ranks are
            // those of the whole batch's loss.
            if DataParallel.isDistributed { loss = loss * (Float(batch.count) / Float(config.batchSize)) }
            if let regularizer, DataParallel.isPrimary { loss = loss + regularizer() }
            var sums = [Double(loss.item), Double(correct), Double(batch.count)]
            DataParallel.sum(&sums)
            let (stepLoss, stepCorrect, seen) = (sums[0], Int(sums[1]), Int(sums[2]))
            // Every rank sees the same summed loss, so every rank stops here together.
            guard stepLoss.isFinite else {
                progress.clearLine()
                throw TrainingError(description: "loss became \(Float(stepLoss)) at epoch \(epoch + 1), step \(i + 1); stopping (saved checkpoints are untouched)")
            }
            optimizer.zeroGrad()
            loss.backward()
            DataParallel.sumGradients(of: optimizer)
            if let bad = firstNonFiniteGradient() {
                progress.clearLine()
                throw TrainingError(description: "gradient of \(bad) became NaN or infinite at epoch \(epoch + 1), step \(i + 1); stopping before the update (saved checkpoints are untouched)")
            }
            optimizer.step()
            step += 1

            totals.correct += stepCorrect
            totals.seen += seen
            totals.lossSum += stepLoss * Double(seen)
            totals.seconds = seconds()
            let rate = Double(totals.seen) / max(totals.seconds, 1e-9)
            let eta = Double((steps - i - 1) * config.batchSize) / rate
            progress.update(String(format: "epoch %d/%d  step %d/%d  loss %.4f  lr %.4g  %.0f img/s  ETA %@",
                                   epoch + 1, config.epochs, i + 1, steps, totals.meanLoss, lr, rate, formatDuration(eta)))
            if i + 1 < steps, try !afterStep() {
                progress.clearLine()
                return nil
            }
        }
        let done = totals
        totals = EpochTotals()
        let lastLR = optimizer.learningRate
        epoch += 1
        let validationScore = validation.map { score(on: $0) }
        let testScore = test.map { score(on: $0) }
        let summary = EpochSummary(epoch: epoch, trainLoss: done.meanLoss,
                                   trainAccuracy: Double(done.correct) / Double(max(done.seen, 1)),
                                   validation: validationScore, test: testScore,
                                   imagesPerSecond: Double(done.seen) / max(done.seconds, 1e-9), seconds: done.seconds, learningRate: lastLR)
        var line = String(format: "epoch %d/%d  loss %.4f  train acc %.2f%%  %.0f img/s  %.1fs",
                          epoch, config.epochs, summary.trainLoss, 100 * summary.trainAccuracy, summary.imagesPerSecond, done.seconds)
        if let v = validationScore { line += String(format: "  val top-1 %.2f%%", 100 * v.top1) }
        if let t = testScore { line += String(format: "  test top-1 %.2f%%", 100 * t.top1) }
        progress.finish(line)
        return summary
    }

    /// Top-1 and loss of the model on `dataset`; in a data-parallel job each
    /// rank evaluates its contiguous part and the totals are summed.
    func score(on dataset: any Dataset) -> Score {
        guard DataParallel.isDistributed else { return Score(evaluate(model, on: dataset)) }
        let part = evaluate(model, on: dataset.subset(DataParallel.shard(of: dataset.count)))
        var sums = [part.top1 * Double(part.count), part.loss * Double(part.count), Double(part.count)]
        DataParallel.sum(&sums)
        let n = max(sums[2], 1)
        return Score(top1: sums[0] / n, loss: sums[1] / n, count: Int(sums[2]))
    }

    /// The key of the first parameter whose gradient holds NaN or infinity.
    func firstNonFiniteGradient() -> String? {
        for group in optimizer.groups {
            for (key, p) in group.parameters {
                if let g = p.grad, !g.allSatisfy({ $0.isFinite }) { return key }
            }
        }
        return nil
    }

    /// Trains from the current epoch to `config.epochs` (or to `until`, to
    /// stop early and resume later), calling `onEpochEnd` after each epoch.
    public func fit(train: any Dataset, test: (any Dataset)? = nil, until: Int? = nil,
                    onEpochEnd: (EpochSummary) throws -> Void = { _ in }) throws -> [EpochSummary] {
        var out: [EpochSummary] = []
        while epoch < min(until ?? config.epochs, config.epochs) {
            let s = try trainEpoch(on: train, test: test)
            out.append(s)
            try onEpochEnd(s)
        }
        return out
    }
}
