import ArgumentParser
import Foundation
import QARep

/// `qarep qat`: quantization-aware training from an FP32 checkpoint.
public struct QAT: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "qat",
        abstract: "Quantization-aware training from an FP32 checkpoint; writes DIR/last.safetensors, DIR/best.safetensors (QAT) and DIR/int8.safetensors.",
        discussion: "QARepVGG keeps its post-BN as a BN during QAT, with BN folding simulated in the fake-quantized weights. Defaults follow the paper: 10 epochs, 3 of warm-up, LR 0.01, then cosine.")

    @Option(help: "FP32 checkpoint to start from.") var from: String?
    @Option(help: "Directory for QAT checkpoints and the INT8 model.") var out: String?
    @Option(help: "Continue the QAT run saved in this directory (no recalibration).") var resume: String?
    @Option(help: "Epochs (default 10).") var epochs: Int?
    @Option(help: "Linear warm-up epochs.") var warmupEpochs = 3
    @Option(help: "Initial learning rate after warm-up.") var lr: Float = 0.01
    @OptionGroup var sgd: SGDOptions
    @Option(help: "Freeze BN statistics from this epoch (0-based) on.") var freezeBnAfter: Int?
    @Option(help: "Freeze activation ranges from this epoch (0-based) on.") var freezeObserversAfter: Int?
    @OptionGroup var quantization: QuantizationOptions
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if (from == nil) == (resume == nil) { throw ValidationError("give either --from FP32_CHECKPOINT (a new run) or --resume DIR") }
        if resume != nil && out != nil { throw ValidationError("--resume continues in its own directory; drop --out") }
        if resume != nil && epochs != nil { throw ValidationError("--epochs is fixed by the saved QAT run; drop it with --resume") }
        try validateSchedule(epochs: epochs ?? 10, lr: lr, warmupEpochs: warmupEpochs)
        for (flag, value) in [("--freeze-bn-after", freezeBnAfter), ("--freeze-observers-after", freezeObserversAfter)] {
            if let v = value, v < 0 { throw ValidationError("\(flag) must be an epoch >= 0, got \(v)") }
        }
        try validateFreshRunDirectory(out)
    }

    /// What `qarep qat --json` prints.
    public struct Report: Codable, Sendable {
        /// The FP32 checkpoint's top-1 (new runs only).
        public var top1: Double?
        /// The fake-quantized model's top-1 after the last epoch.
        public var qatTop1: Double
        /// At 8 bits: the integer engine's top-1 and its agreement with the simulation.
        public var int8Top1: Double?
        public var engineAgreement: Double?
        public var epochs: Int
        public var images: Int
        public var checkpoint: String?
        public var int8Model: String?
        public var summaries: [EpochSummary]
    }

    public func execute() throws -> Report {
        runtime.apply()
        let progress = runtime.progress
        let train = try data.train(), test = try data.test()
        let run: QATRun
        var fp32Top1: Double?
        if let resume {
            run = try QATRun.resume(from: resume, progress: progress)
            progress.finish("resuming QAT in \(resume) at epoch \(run.trainer.epoch + 1) of \(run.trainer.config.epochs)")
        } else {
            let fp32 = try model.load(from!)
            fp32Top1 = evaluate(fp32, on: test).top1
            var options = QATOptions()
            options.settings = sgd.settings(epochs: epochs ?? 10, learningRate: lr, warmupEpochs: warmupEpochs)
            options.calibrationImages = quantization.calibImages
            options.freezeBNAfter = freezeBnAfter
            options.freezeObserversAfter = freezeObserversAfter
            options.qconfig = quantization.qconfig
            let calibration = try FashionMNIST.load(split: .train, root: data.dataRoot, limit: quantization.calibImages)
            run = try QATRun(from: fp32, source: from!, options: options, calibration: calibration,
                             trainImages: train.count, directory: out, progress: progress)
            let form = run.model.hasPostBN ? "post-BN kept as a BN" : "fully folded"
            progress.finish("QAT of \(fp32.config.name) \(fp32.config.block.rawValue) (\(form)) for \(options.epochs) epochs, calibrated on \(calibration.count) images")
        }
        let summaries = try run.run(train: train, test: test)
        let fake = evaluate(run.model, on: test)
        var report = Report(top1: fp32Top1, qatTop1: fake.top1, epochs: run.state.epoch, images: test.count,
                            checkpoint: run.directory.map { ($0 as NSString).appendingPathComponent(QATRun.lastFile) },
                            summaries: summaries)
        if run.state.options.qconfig.activation.bits == 8 {
            let int8 = try run.model.convertToInt8()
            let engine = evaluate(int8, on: test)
            report.int8Top1 = engine.top1
            report.engineAgreement = agreement(engine, fake)
            if let dir = run.directory { report.int8Model = (dir as NSString).appendingPathComponent(QATRun.int8File) }
        }
        return report
    }

    public func run() throws {
        let r = try execute()
        if runtime.json { return try printJSON(r) }
        var rows: [(String, Double)] = r.top1.map { [("FP32", $0)] } ?? []
        rows.append(("QAT fake-quant", r.qatTop1))
        if let t = r.int8Top1 { rows.append(("QAT INT8 engine", t)) }
        for (name, v) in rows { print(String(format: "%-16@ top-1 %@", name, percent(v))) }
        if let c = r.checkpoint { print("checkpoint: \(c)" + (r.int8Model.map { ", INT8 model: \($0)" } ?? "")) }
    }
}
