import ArgumentParser
import Foundation
import QARep

/// `qarep train`: FP32 training of a RepVGG-family model with checkpoints.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train a RepVGG-family model in FP32 on Fashion-MNIST.",
        discussion: "Writes DIR/last.safetensors after every epoch and DIR/best.safetensors when test top-1 improves; --resume DIR continues exactly.")

    @Option(help: "Model config: tiny, a0-half or a0.") var config = "tiny"
    @Option(help: "Block kind: repvgg, s2, s3 or qarepvgg.") var block = "qarepvgg"
    @Option(name: .customLong("weight-decay"), help: "Regularization: l2 or custom-l2 (RepVGG's S0).") var weightDecayMode = "l2"
    @Option(help: "Weight decay coefficient.") var wd: Float = 1e-4
    @Option(help: "Epochs (with --resume: the new total).") var epochs: Int?
    @Option(help: "Batch size.") var batchSize = 64
    @Option(help: "Peak learning rate (SGD).") var lr: Float = 0.1
    @Option(help: "Linear warm-up epochs before the cosine decay.") var warmupEpochs = 0
    @Option(help: "SGD momentum.") var momentum: Float = 0.9
    @Flag(help: "Nesterov momentum.") var nesterov = false
    @Option(help: "Label smoothing.") var labelSmoothing: Float = 0
    @Flag(help: "No random crop / flip.") var noAugment = false
    @Option(help: "Seed for initialization, shuffling and augmentation.") var seed: UInt64 = 0
    @Option(help: "Directory for checkpoints.") var out: String?
    @Option(help: "Continue the run saved in this directory.") var resume: String?
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        if out != nil && resume != nil { throw ValidationError("give either --out (a new run) or --resume (continue one), not both") }
        if let e = epochs, e <= 0 { throw ValidationError("--epochs must be positive, got \(e)") }
        guard WeightDecayMode(rawValue: weightDecayMode) != nil else {
            throw ValidationError("--weight-decay must be l2 or custom-l2, got '\(weightDecayMode)'")
        }
    }

    func run() throws {
        runtime.apply()
        let train = try data.train(), test = try data.test()
        let progress = runtime.progress
        let run: TrainingRun
        if let resume {
            run = try TrainingRun.resume(from: resume, epochs: epochs, progress: progress)
            progress.finish("resuming \(resume) at epoch \(run.trainer.epoch + 1) of \(run.trainer.config.epochs)")
        } else {
            var options = TrainingRunOptions(model: try ModelConfig.named(config, block: parseBlock(block)), epochs: epochs ?? 10)
            options.batchSize = batchSize; options.learningRate = lr; options.warmupEpochs = warmupEpochs
            options.momentum = momentum; options.nesterov = nesterov; options.weightDecay = wd
            options.weightDecayMode = WeightDecayMode(rawValue: weightDecayMode)!
            options.labelSmoothing = labelSmoothing; options.augment = !noAugment; options.seed = seed
            run = try TrainingRun(options: options, trainImages: train.count, directory: out, progress: progress)
            let params = run.model.parameters().reduce(0) { $0 + $1.tensor.count }
            progress.finish("training \(config) \(block) (\(params) parameters) on \(train.count) images, testing on \(test.count)")
        }
        let summaries = try run.run(train: train, test: test)
        let state = run.state
        if runtime.json {
            try printJSON(["top1": state.lastTop1 ?? 0, "best_top1": state.bestTop1 ?? 0, "best_epoch": state.bestEpoch ?? 0,
                           "epochs": state.epoch, "steps": state.step,
                           "images_per_second": summaries.last?.imagesPerSecond ?? 0,
                           "train_loss": summaries.last?.trainLoss ?? 0,
                           "checkpoint": run.directory.map { ($0 as NSString).appendingPathComponent(TrainingRun.lastFile) } ?? NSNull()])
        } else {
            print("epoch  train loss  train acc  test top-1  img/s")
            for s in summaries {
                print(String(format: "%5d  %10.4f  %9@  %10@  %5.0f", s.epoch, s.trainLoss, percent(s.trainAccuracy),
                             s.test.map { percent($0.top1) } ?? "-", s.imagesPerSecond))
            }
            if let dir = run.directory { print("checkpoints: \(dir)/\(TrainingRun.lastFile), \(dir)/\(TrainingRun.bestFile)") }
        }
    }
}
