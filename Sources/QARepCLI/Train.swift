import ArgumentParser
import Foundation
import QARep

/// `qarep train`: FP32 training of a RepVGG-family model with checkpoints.
public struct Train: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Train a RepVGG-family model in FP32 on Fashion-MNIST.",
        discussion: "Writes DIR/last.safetensors after every epoch and DIR/best.safetensors when test top-1 improves; --resume DIR continues exactly.")

    @Option(help: "Model config: \(ConfigName.allValueStrings.joined(separator: ", ")).") var config: ConfigName = .tiny
    @Option(help: "Block kind: \(BlockKind.allValueStrings.joined(separator: ", ")).") var block: BlockKind = .qarepvgg
    @Option(name: .customLong("weight-decay"), help: "Regularization: l2 or custom-l2 (RepVGG's S0).") var weightDecayMode: WeightDecayMode = .l2
    @Option(help: "Epochs (with --resume: the new total).") var epochs: Int?
    @Option(help: "Peak learning rate (SGD).") var lr: Float = 0.1
    @Option(help: "Linear warm-up epochs before the cosine decay.") var warmupEpochs = 0
    @OptionGroup var sgd: SGDOptions
    @Option(help: "Directory for checkpoints.") var out: String?
    @Option(help: "Continue the run saved in this directory.") var resume: String?
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if out != nil && resume != nil { throw ValidationError("give either --out (a new run) or --resume (continue one), not both") }
        try validateSchedule(epochs: resume == nil ? epochs ?? 10 : epochs, lr: lr, warmupEpochs: warmupEpochs)
        if weightDecayMode == .customL2 && !block.pointwiseHasBN {
            throw ValidationError("--weight-decay custom-l2 needs a BN on the 1x1 branch: use --block repvgg or s2, not \(block.rawValue)")
        }
        try validateFreshRunDirectory(out)
    }

    /// What `qarep train --json` prints.
    public struct Report: Codable, Sendable {
        /// Test top-1 after the last epoch, and the best one with its epoch.
        public var top1: Double?
        public var bestTop1: Double?
        public var bestEpoch: Int?
        public var epochs: Int
        public var steps: Int
        /// Of the last epoch trained in this call.
        public var imagesPerSecond: Double?
        public var trainLoss: Double?
        /// `last.safetensors` of the run, when it has a directory.
        public var checkpoint: String?
        /// Every epoch trained in this call.
        public var summaries: [EpochSummary]
    }

    /// Trains (or resumes) and returns what was done.
    public func execute() throws -> Report {
        runtime.apply()
        let train = try data.train(), test = try data.test()
        let progress = runtime.progress
        let run: TrainingRun
        if let resume {
            run = try TrainingRun.resume(from: resume, epochs: epochs, progress: progress)
            progress.finish("resuming \(resume) at epoch \(run.trainer.epoch + 1) of \(run.trainer.config.epochs)")
        } else {
            var options = TrainingRunOptions(model: try config.config(block: block), epochs: epochs ?? 10)
            options.settings = sgd.settings(epochs: epochs ?? 10, learningRate: lr, warmupEpochs: warmupEpochs)
            options.weightDecayMode = weightDecayMode
            run = try TrainingRun(options: options, trainImages: train.count, directory: out, progress: progress)
            let params = run.model.parameters().reduce(0) { $0 + $1.tensor.count }
            progress.finish("training \(config.rawValue) \(block.rawValue) (\(params) parameters) on \(train.count) images, testing on \(test.count)")
        }
        let summaries = try run.run(train: train, test: test)
        let state = run.state
        return Report(top1: state.lastTop1, bestTop1: state.bestTop1, bestEpoch: state.bestEpoch, epochs: state.epoch, steps: state.step,
                      imagesPerSecond: summaries.last?.imagesPerSecond, trainLoss: summaries.last?.trainLoss,
                      checkpoint: run.directory.map { ($0 as NSString).appendingPathComponent(TrainingRun.lastFile) },
                      summaries: summaries)
    }

    public func run() throws {
        let report = try execute()
        if runtime.json { return try printJSON(report) }
        print("epoch  train loss  train acc  test top-1  img/s")
        for s in report.summaries {
            print(String(format: "%5d  %10.4f  %9@  %10@  %5.0f", s.epoch, s.trainLoss, percent(s.trainAccuracy),
                         s.test.map { percent($0.top1) } ?? "-", s.imagesPerSecond))
        }
        if let dir = out ?? resume { print("checkpoints: \(dir)/\(TrainingRun.lastFile), \(dir)/\(TrainingRun.bestFile)") }
    }
}
