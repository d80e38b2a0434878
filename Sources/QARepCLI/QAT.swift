import ArgumentParser
import Foundation
import QARep

/// `qarep qat`: quantization-aware training from an FP32 checkpoint.
public struct QAT: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "qat",
        abstract: "Quantization-aware training from an FP32 checkpoint; writes DIR/last.safetensors, DIR/best.safetensors (QAT), DIR/metrics.jsonl and DIR/int8.safetensors.",
        discussion: """
            QARepVGG keeps its post-BN as a BN during QAT, with BN folding simulated in the fake-quantized weights. --form \
            multi-branch trains every branch of every block instead (RepVGG and QARepVGG alike): each step merges the \
            branches, each BN with its running statistics, into the 3x3 kernel that is fake-quantized. A ResNet \
            checkpoint (qarep train --model resnet20) is captured as a graph and keeps every BN the same way; its INT8 model \
            is the native graph file DIR/int8.safetensors. Defaults \
            follow the paper: 10 epochs, 3 of warm-up, LR 0.01, then cosine. --resume DIR continues with the run's own data, \
            threads and settings (no recalibration); SIGINT or SIGTERM stops after the current step with a checkpoint.
            """)

    static let defaults = SGDOptions.Defaults(epochs: 10, learningRate: 0.01, warmupEpochs: 3)

    @Option(help: "FP32 checkpoint to start from.") var from: String?
    @Option(help: "Directory for QAT checkpoints and the INT8 model.") var out: String?
    @Option(help: "Continue the QAT run saved in this directory (no recalibration).") var resume: String?
    @OptionGroup(title: "Training (defaults: 10 epochs, 3 of warm-up, LR 0.01)") var sgd: SGDOptions
    @Option(help: "Freeze BN statistics from this epoch (0-based) on.") var freezeBnAfter: Int?
    @Option(help: "Freeze activation ranges from this epoch (0-based) on.") var freezeObserversAfter: Int?
    @Option(help: "How scales evolve after calibration: observers (moving-average activation ranges, min-max weights) or lsq (every scale learned, Esser et al. 2020; with --unsigned-activations each zero point stays as calibrated).")
    var method: QATMethod?
    @Option(help: "What QAT trains: post-bn (the paper's: branches merged, QARepVGG's post-BN kept as a BN), multi-branch (rep-aware: every branch and its BN trained, merged on each step into the 3x3 kernel that is fake-quantized; RepVGG-family models only) or folded (default post-bn).")
    var form: QuantizedNet.Form?
    @Flag(help: "Give RepVGG's blocks (and S2's, S3's) a BN after the merged convolution for QAT, as QARepVGG's post-BN: set to the identity of the calibration images, trained with batch statistics (fold simulated), folded into the kernel at conversion. With the post-bn or multi-branch form.")
    var addPostBn = false
    @Flag(help: "Distill from the FP32 checkpoint: its logits teach the quantized model (KL divergence at --distill-temperature, mixed with the cross-entropy by --distill-weight).")
    var distill = false
    @Option(help: "Distillation temperature (default 4).") var distillTemperature: Float?
    @Option(help: "The distillation term's share of the loss, in [0, 1] (default 0.5).") var distillWeight: Float?
    @OptionGroup var quantization: QuantizationOptions
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: RunDataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if (from == nil) == (resume == nil) { throw ValidationError("give either --from FP32_CHECKPOINT (a new run) or --resume DIR") }
        if resume != nil && out != nil { throw ValidationError("--resume continues in its own directory; drop --out") }
        if resume != nil && sgd.epochs != nil { throw ValidationError("--epochs is fixed by the saved QAT run; drop it with --resume") }
        try sgd.validate(Self.defaults)
        for (flag, value) in [("--freeze-bn-after", freezeBnAfter), ("--freeze-observers-after", freezeObserversAfter)] {
            if let v = value, v < 0 { throw ValidationError("\(flag) must be an epoch >= 0, got \(v)") }
        }
        if method == .lsq && freezeObserversAfter != nil {
            throw ValidationError("--method lsq learns its scales; --freeze-observers-after has nothing to freeze")
        }
        for (flag, given) in [("--distill-temperature", distillTemperature != nil), ("--distill-weight", distillWeight != nil)] where given && !distill {
            throw ValidationError("\(flag) applies with --distill")
        }
        if let t = distillTemperature, !(t > 0 && t.isFinite) { throw ValidationError("--distill-temperature must be positive, got \(t)") }
        if let w = distillWeight, !(0...1).contains(w) { throw ValidationError("--distill-weight must be in [0, 1], got \(w)") }
        try validateFreshRunDirectory(out)
    }

    /// The distillation settings of a new run, from the flags.
    var distillation: DistillationSettings? {
        guard distill else { return nil }
        let defaults = DistillationSettings()
        return DistillationSettings(temperature: distillTemperature ?? defaults.temperature, weight: distillWeight ?? defaults.weight)
    }

    /// What `qarep qat --json` prints.
    public struct Report: Codable, Sendable {
        /// The FP32 checkpoint's top-1 (new runs only).
        public var top1: Double?
        /// The fake-quantized model's top-1 after the last epoch.
        public var qatTop1: Double
        /// The integer engine's top-1 at the run's widths and its agreement with the simulation.
        public var int8Top1: Double?
        public var engineAgreement: Double?
        public var epochs: Int
        public var images: Int
        public var checkpoint: String?
        public var int8Model: String?
        public var summaries: [EpochSummary]
    }

    /// Runs (or resumes) QAT and returns what was done.
    /// - Throws: `ExitWithMessage` when a signal stopped the run (after its checkpoint).
    public func execute() throws -> Report {
        let family = try resume.map(runFamily(in:)) ?? checkpointFamily(from!)
        try requireKnownFamily(family, of: resume ?? from!)
        if family == ResNet.family { return try executeGraph(ResNet.self) }
        let progress = runtime.progress
        let run: QATRun, train: any Dataset, validation: (any Dataset)?, test: any Dataset
        var fp32Top1: Double?
        if let resume {
            let (state, _) = try QATRun.savedState(in: resume)
            let data = try checkResume(state.options, data: state.data, threads: state.threads, directory: resume)
            (train, validation, test, _) = try data.load()
            run = try QATRun.resume(from: resume, progress: progress)
            progress.finish("resuming QAT in \(resume) at epoch \(run.trainer.epoch + 1) of \(run.trainer.config.epochs), step \(run.trainer.step)")
        } else {
            runtime.apply()
            let origin: DataOrigin
            (train, validation, test, origin) = try data.load()
            let fp32 = try model.load(from!)
            try data.data.check(train, fits: fp32.config, model: from!)
            fp32Top1 = evaluate(fp32, on: test).top1
            let options = qatOptions()
            let calibration = train.subset(0..<min(quantization.calibrationImages, train.count))
            run = try QATRun(from: fp32, source: from!, options: options, calibration: calibration,
                             trainImages: train.count, directory: out, dataOrigin: origin, progress: progress)
            let form = switch run.model.form {
            case .postBN: run.model.addedPostBN ? "post-BN added for QAT" : "post-BN kept as a BN"
            case .folded: "fully folded"
            case .multiBranch: "multi-branch, rep-aware" + (run.model.addedPostBN ? ", post-BN added for QAT" : "")
            }
            progress.finish("QAT of \(fp32.config.name) \(fp32.config.block.rawValue) (\(form)) for \(options.epochs) epochs, calibrated on \(calibration.count) images")
        }
        run.controls = try sgd.runControls()
        let summaries = try stoppable(resumeCommand: "qarep qat") { try run.run(train: train, validation: validation, test: test) }
        let fake = evaluate(run.model, on: test)
        var report = Report(top1: fp32Top1, qatTop1: fake.top1, epochs: run.state.epoch, images: test.count,
                            checkpoint: run.directory.map { ($0 as NSString).appendingPathComponent(QATRun.lastFile) },
                            summaries: summaries)
        let engine = evaluate(try run.model.convertToInt8(), on: test)
        report.int8Top1 = engine.top1
        report.engineAgreement = agreement(engine, fake)
        if let dir = run.directory { report.int8Model = (dir as NSString).appendingPathComponent(QATRun.int8File) }
        return report
    }

    /// The options of a new run, from the flags.
    func qatOptions() -> QATOptions {
        var options = QATOptions()
        options.settings = sgd.settings(Self.defaults)
        options.calibrationImages = quantization.calibrationImages
        options.freezeBNAfter = freezeBnAfter
        options.freezeObserversAfter = freezeObserversAfter
        options.method = method ?? .observers
        options.form = form ?? .postBN
        options.addsPostBN = addPostBn
        options.qconfig = quantization.qconfig
        options.distillation = distillation
        return options
    }

    /// On resume: refuses flags that contradict the saved run, applies its
    /// threads, and gives its data.
    func checkResume(_ options: QATOptions, data saved: DataRecord?, threads: Int?, directory: String) throws -> RunDataOptions {
        var check = ResumeCheck(directory: directory)
        sgd.compare(with: options.settings, epochsMayChange: false, &check)
        quantization.compare(with: options, &check)
        check.compare("--freeze-bn-after", freezeBnAfter, options.freezeBNAfter)
        check.compare("--freeze-observers-after", freezeObserversAfter, options.freezeObserversAfter)
        check.compare("--method", method, options.method)
        check.compare("--form", form, options.form)
        check.compare("--add-post-bn", addPostBn ? true : nil, options.addsPostBN)
        if distill { check.compare("--distill", distillation, options.distillation) }
        check.refuse("--config", given: model.config != nil, "the model comes from the run")
        check.refuse("--block", given: model.block != nil, "the model comes from the run")
        let data = self.data.resumed(from: saved?.origin, &check)
        runtime.applyResumed(saved: threads, &check)
        try check.verify()
        return data
    }

    /// QAT of a model outside the RepVGG family, through graph capture (`GraphQATRun`).
    func executeGraph<Model: CheckpointableModel>(_: Model.Type) throws -> Report {
        let progress = runtime.progress
        let run: GraphQATRun<Model>, train: any Dataset, validation: (any Dataset)?, test: any Dataset
        var fp32Top1: Double?
        if let resume {
            let (state, _) = try GraphQATRun<Model>.savedState(in: resume)
            let data = try checkResume(state.options, data: state.data, threads: state.threads, directory: resume)
            (train, validation, test, _) = try data.load()
            run = try GraphQATRun<Model>.resume(from: resume, progress: progress)
            progress.finish("resuming QAT in \(resume) at epoch \(run.state.epoch + 1) of \(run.state.training.epochs), step \(run.state.step)")
        } else {
            let name = (from! as NSString).lastPathComponent
            if model.config != nil || model.block != nil {
                throw CommandError("--config and --block describe RepVGG-family models; \(name) holds a \(Model.family) model")
            }
            if quantization.firstLastBits != nil || addPostBn {
                let flag = addPostBn ? "--add-post-bn" : "--first-last-bits"
                throw CommandError("\(flag) works on RepVGG-family models; \(name) holds a \(Model.family) model")
            }
            runtime.apply()
            let origin: DataOrigin
            (train, validation, test, origin) = try data.load()
            let fp32 = try Checkpoint.loadModel(from!, as: Model.self).model
            try data.data.check(train, inChannels: fp32.inputChannels, classes: fp32.classCount, model: from!)
            fp32Top1 = evaluate(fp32, on: test).top1
            let options = qatOptions()
            let calibration = train.subset(0..<min(quantization.calibrationImages, train.count))
            run = try GraphQATRun(from: fp32, source: from!, options: options, calibration: calibration,
                                  trainImages: train.count, directory: out, dataOrigin: origin, progress: progress)
            progress.finish("QAT of \(name) (captured graph, batch norms kept with their fold simulated) for \(options.epochs) epochs, "
                            + "calibrated on \(calibration.count) images")
        }
        run.controls = try sgd.runControls()
        let summaries = try stoppable(resumeCommand: "qarep qat") {
            try run.run(train: train, validation: validation, test: test)
        }
        let fake = evaluate(run.model, on: test)
        let state = run.state
        var report = Report(top1: fp32Top1, qatTop1: fake.top1, epochs: state.epoch, images: test.count,
                            checkpoint: run.directory.map { ($0 as NSString).appendingPathComponent(GraphQATRun<Model>.lastFile) },
                            summaries: summaries)
        let engine = try Int8GraphEngine(try run.model.convertToInt8()).evaluate(on: test)
        report.int8Top1 = engine.top1
        report.engineAgreement = agreement(engine, fake)
        if let dir = run.directory { report.int8Model = (dir as NSString).appendingPathComponent(GraphQATRun<Model>.int8File) }
        return report
    }

    public func run() throws {
        let r = try execute()
        guard DataParallel.isPrimary else { return }   // rank 0 reports for the job
        if runtime.json { return try printJSON(r) }
        var rows: [(String, Double)] = r.top1.map { [("FP32", $0)] } ?? []
        rows.append(("QAT fake-quant", r.qatTop1))
        if let t = r.int8Top1 { rows.append(("QAT engine", t)) }
        for (name, v) in rows { print(String(format: "%-16@ top-1 %@", name, percent(v))) }
        if let c = r.checkpoint { print("checkpoint: \(c)" + (r.int8Model.map { ", integer model: \($0)" } ?? "")) }
    }
}
