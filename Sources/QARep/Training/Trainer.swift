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
    public var test: Evaluation?
    public var imagesPerSecond: Double
    public var seconds: Double
    public var learningRate: Float
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
    /// Epochs completed so far (the next epoch index).
    public var epoch = 0
    /// Optimizer steps taken so far.
    public var step = 0
    public let progress: ProgressReporter

    public init(model: Model, optimizer: any Optimizer, config: TrainingConfig,
                regularizer: (() -> Tensor)? = nil, progress: ProgressReporter = ProgressReporter()) {
        self.model = model; self.optimizer = optimizer; self.config = config
        self.regularizer = regularizer; self.progress = progress
    }

    /// Trains one epoch on `train` and evaluates on `test` if given.
    /// - Throws: `TrainingError` when the loss becomes NaN or infinite; the
    ///   model is then left as it was before the failing step's update.
    @discardableResult
    public func trainEpoch(on train: FashionMNIST, test: FashionMNIST? = nil) throws -> EpochSummary {
        let loader = DataLoader(dataset: train, batchSize: config.batchSize, shuffle: true,
                                augment: config.augment, seed: config.seed, dropLast: true)
        let steps = loader.batchesPerEpoch
        guard steps > 0 else {
            throw TrainingError(description: "training set of \(train.count) images is smaller than one batch of \(config.batchSize)")
        }
        model.train()
        let clock = ContinuousClock(), start = clock.now
        func secondsSinceStart() -> Double {
            let d = start.duration(to: clock.now)
            return Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        }
        var seen = 0, correct = 0, lossSum = 0.0
        for (i, batch) in loader.batches(epoch: epoch).enumerated() {
            let lr = config.schedule.learningRate(step: step, stepsPerEpoch: steps)
            optimizer.learningRate = lr
            let x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
            let logits = model(x)
            var loss = crossEntropy(logits, labels: batch.labels, labelSmoothing: config.labelSmoothing)
            if let regularizer { loss = loss + regularizer() }
            guard loss.item.isFinite else {
                progress.clearLine()
                throw TrainingError(description: "loss became \(loss.item) at epoch \(epoch + 1), step \(i + 1); stopping (saved checkpoints are untouched)")
            }
            optimizer.zeroGrad()
            loss.backward()
            if let bad = firstNonFiniteGradient() {
                progress.clearLine()
                throw TrainingError(description: "gradient of \(bad) became NaN or infinite at epoch \(epoch + 1), step \(i + 1); stopping before the update (saved checkpoints are untouched)")
            }
            optimizer.step()
            step += 1

            correct += zip(logits.argmaxRows(), batch.labels).filter { $0 == $1 }.count
            seen += batch.count
            lossSum += Double(loss.item) * Double(batch.count)
            let elapsed = secondsSinceStart()
            let rate = Double(seen) / max(elapsed, 1e-9)
            let eta = Double((steps - i - 1) * config.batchSize) / rate
            progress.update(String(format: "epoch %d/%d  step %d/%d  loss %.4f  lr %.4g  %.0f img/s  ETA %@",
                                   epoch + 1, config.epochs, i + 1, steps, lossSum / Double(seen), lr, rate, formatDuration(eta)))
        }
        let seconds = secondsSinceStart()
        let lastLR = optimizer.learningRate
        epoch += 1
        let testEval = test.map { evaluate(model, on: $0) }
        let summary = EpochSummary(epoch: epoch, trainLoss: lossSum / Double(max(seen, 1)),
                                   trainAccuracy: Double(correct) / Double(max(seen, 1)), test: testEval,
                                   imagesPerSecond: Double(seen) / max(seconds, 1e-9), seconds: seconds, learningRate: lastLR)
        var line = String(format: "epoch %d/%d  loss %.4f  train acc %.2f%%  %.0f img/s  %.1fs",
                          epoch, config.epochs, summary.trainLoss, 100 * summary.trainAccuracy, summary.imagesPerSecond, seconds)
        if let t = testEval { line += String(format: "  test top-1 %.2f%%", 100 * t.top1) }
        progress.finish(line)
        return summary
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
    public func fit(train: FashionMNIST, test: FashionMNIST? = nil, until: Int? = nil,
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
