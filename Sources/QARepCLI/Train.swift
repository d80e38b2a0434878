import ArgumentParser
import Foundation
import QARep

/// `qarep train`: FP32 training of a RepVGG-family model, or a ResNet (`--model`), with checkpoints.
public struct Train: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Train a RepVGG-family model (--config, --block) or a ResNet (--model resnet20) in FP32.",
        discussion: """
            Writes DIR/last.safetensors after every epoch (and every --checkpoint-every steps), DIR/best.safetensors when \
            test top-1 improves, and DIR/metrics.jsonl. --resume DIR continues exactly where the run stopped, with the \
            run's own data, limits, threads and settings; only --epochs (to extend it) may be given again. SIGINT or \
            SIGTERM stops after the current step with a checkpoint.
            """)

    static let defaults = SGDOptions.Defaults(epochs: 10, learningRate: 0.1, warmupEpochs: 0)

    @Option(help: "Model config: \(ConfigName.allValueStrings.joined(separator: ", ")) (default tiny).") var config: ConfigName?
    @Option(name: .customLong("model"), help: "Train a model outside the RepVGG family instead: resnetN, N = 6n + 2 (resnet20, resnet56): CIFAR-style ResNet, quantized through graph capture.")
    var architecture: String?
    @Option(help: "Block kind: \(BlockKind.allValueStrings.joined(separator: ", ")) (default qarepvgg).") var block: BlockKind?
    @Option(name: .customLong("weight-decay"), help: "Regularization: l2 or custom-l2, RepVGG's S0 (default l2).")
    var weightDecayMode: WeightDecayMode?
    @OptionGroup(title: "Training (defaults: 10 epochs, LR 0.1, no warm-up)") var sgd: SGDOptions
    @Option(help: "Directory for checkpoints.") var out: String?
    @Option(help: "Continue the run saved in this directory.") var resume: String?
    @OptionGroup var data: RunDataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if out != nil && resume != nil { throw ValidationError("give either --out (a new run) or --resume (continue one), not both") }
        try sgd.validate(Self.defaults)
        if let architecture {
            do { _ = try ResNetConfig.named(architecture) } catch let e as ModelError { throw ValidationError(e.description) }
            for (flag, given) in [("--config", config != nil), ("--block", block != nil), ("--weight-decay", weightDecayMode != nil)] where given {
                throw ValidationError("\(flag) configures a RepVGG-family model; --model \(architecture) has none")
            }
        }
        if (weightDecayMode ?? .l2) == .customL2 && !(block ?? .qarepvgg).pointwiseHasBN {
            throw ValidationError("--weight-decay custom-l2 needs a BN on the 1x1 branch: use --block repvgg or s2, not \((block ?? .qarepvgg).rawValue)")
        }
        try validateFreshRunDirectory(out)
    }

    /// What `qarep train --json` prints.
    public struct Report: Codable, Sendable {
        /// Test top-1 after the last epoch.
        public var top1: Double?
        /// The best validation top-1 and its epoch: `best.safetensors`.
        public var bestValidationTop1: Double?
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
    /// - Throws: `ExitWithMessage` when a signal stopped the run (after its checkpoint).
    public func execute() throws -> Report {
        let progress = runtime.progress
        let run: any FP32TrainingRun, train: any Dataset, validation: (any Dataset)?, test: any Dataset
        if let resume {
            var check = ResumeCheck(directory: resume)
            let state: TrainingState
            let family = try runFamily(in: resume)
            try requireKnownFamily(family, of: resume)
            if family == ResNet.family {
                let (saved, model) = try ModelTrainingRun<ResNet>.savedState(in: resume)
                check.compare("--model", architecture, model.name)
                check.refuse("--config", given: config != nil, "a \(model.name) run")
                check.refuse("--block", given: block != nil, "a \(model.name) run")
                state = saved
            } else {
                let saved = try TrainingRun.checkpointToResume(in: resume)
                guard let s = saved.training else { throw CommandError("\(saved.source): not a training checkpoint (no training state to resume)") }
                check.refuse("--model", given: architecture != nil, "a RepVGG-family run")
                check.compare("--config", config?.rawValue, saved.config.name)
                check.compare("--block", block, saved.config.block)
                state = s
            }
            check.compare("--weight-decay", weightDecayMode?.rawValue, state.regularization)
            sgd.compare(with: state.settings, epochsMayChange: true, &check)
            let data = self.data.resumed(from: state.data?.origin, &check)
            runtime.applyResumed(saved: state.threads, &check)
            try check.verify()
            (train, validation, test, _) = try data.load()
            run = family == ResNet.family ? try ModelTrainingRun<ResNet>.resume(from: resume, epochs: sgd.epochs, progress: progress)
                                          : try TrainingRun.resume(from: resume, epochs: sgd.epochs, progress: progress)
            let now = run.state
            progress.finish("resuming \(resume) at epoch \(now.epoch + 1) of \(now.config.epochs), step \(now.step)")
        } else {
            runtime.apply()
            let origin: DataOrigin
            (train, validation, test, origin) = try data.load()
            let description: String
            // The model takes its input channels and classes from the data.
            if let architecture {
                let config = try ResNetConfig.named(architecture, inChannels: train.channels, classes: train.classCount)
                let resnet = try ModelTrainingRun<ResNet>(config: config, settings: sgd.settings(Self.defaults), trainImages: train.count,
                                                          directory: out, dataOrigin: origin, progress: progress)
                (run, description) = (resnet, "\(config.name) (\(resnet.model.parameterCount) parameters)")
            } else {
                let modelConfig = try (config ?? .tiny).config(block: block ?? .qarepvgg, inChannels: train.channels,
                                                               classes: train.classCount)
                var options = TrainingRunOptions(model: modelConfig, epochs: 1)
                options.settings = sgd.settings(Self.defaults)
                options.weightDecayMode = weightDecayMode ?? .l2
                let repvgg = try TrainingRun(options: options, trainImages: train.count, directory: out, dataOrigin: origin, progress: progress)
                (run, description) = (repvgg, "\(modelConfig.name) \(modelConfig.block.rawValue) (\(repvgg.model.parameterCount) parameters)")
            }
            progress.finish("training \(description) on \(train.count) images, validating on \(validation?.count ?? 0), testing on \(test.count)")
        }
        run.controls = try sgd.runControls()
        let summaries = try stoppable(resumeCommand: "qarep train") {
            try run.run(train: train, validation: validation, test: test, until: nil, onEpochEnd: { _ in })
        }
        let state = run.state
        return Report(top1: state.lastTop1, bestValidationTop1: state.bestTop1, bestEpoch: state.bestEpoch, epochs: state.epoch, steps: state.step,
                      imagesPerSecond: summaries.last?.imagesPerSecond, trainLoss: summaries.last?.trainLoss,
                      checkpoint: run.directory.map { ($0 as NSString).appendingPathComponent(TrainingRun.lastFile) },
                      summaries: summaries)
    }

    public func run() throws {
        let report = try execute()
        guard DataParallel.isPrimary else { return }   // rank 0 reports for the job
        if runtime.json { return try printJSON(report) }
        print("epoch  train loss  train acc  val top-1  test top-1  img/s")
        for s in report.summaries {
            print(String(format: "%5d  %10.4f  %9@  %9@  %10@  %5.0f", s.epoch, s.trainLoss, percent(s.trainAccuracy),
                         s.validation.map { percent($0.top1) } ?? "-", s.test.map { percent($0.top1) } ?? "-", s.imagesPerSecond))
        }
        if let dir = out ?? resume {
            // best.safetensors exists only when the run validates (--val-split > 0).
            let files = [TrainingRun.lastFile, TrainingRun.bestFile].filter { FileManager.default.fileExists(atPath: "\(dir)/\($0)") }
            print("checkpoints: " + files.map { "\(dir)/\($0)" }.joined(separator: ", "))
        }
    }
}
