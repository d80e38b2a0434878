import ArgumentParser
import Foundation
import QARep

/// `qarep qat`: quantization-aware training from an FP32 checkpoint.
struct QAT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qat",
        abstract: "Quantization-aware training from an FP32 checkpoint; writes DIR/last.safetensors (QAT) and DIR/int8.safetensors.",
        discussion: "QARepVGG keeps its post-BN as a BN during QAT, with BN folding simulated in the fake-quantized weights. Defaults follow the paper: 10 epochs, 3 of warm-up, LR 0.01, then cosine.")

    @Option(help: "FP32 checkpoint to start from.") var from: String?
    @Option(help: "Directory for QAT checkpoints and the INT8 model.") var out: String?
    @Option(help: "Continue the QAT run saved in this directory (no recalibration).") var resume: String?
    @Option(help: "Epochs.") var epochs = 10
    @Option(help: "Linear warm-up epochs.") var warmupEpochs = 3
    @Option(help: "Initial learning rate after warm-up.") var lr: Float = 0.01
    @Option(help: "Batch size.") var batchSize = 64
    @Option(help: "Weight decay.") var wd: Float = 1e-4
    @Option(help: "Freeze BN statistics from this epoch (0-based) on.") var freezeBnAfter: Int?
    @Option(help: "Freeze activation ranges from this epoch (0-based) on.") var freezeObserversAfter: Int?
    @OptionGroup var quantization: QuantizationOptions
    @Option(help: "Seed for shuffling and augmentation.") var seed: UInt64 = 0
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        if (from == nil) == (resume == nil) { throw ValidationError("give either --from FP32_CHECKPOINT (a new run) or --resume DIR") }
        if resume != nil && out != nil { throw ValidationError("--resume continues in its own directory; drop --out") }
    }

    func run() throws {
        runtime.apply()
        let progress = runtime.progress
        let train = try data.train(), test = try data.test()
        let run: QATRun
        var fp32Top1: Double?
        if let resume {
            run = try QATRun.resume(from: resume, progress: progress)
            progress.finish("resuming QAT in \(resume) at epoch \(run.trainer.epoch + 1) of \(run.trainer.config.epochs)")
        } else {
            let checkpoint = try Checkpoint.read(from!, fallback: model.fallback())
            let fp32 = try Checkpoint.makeModel(checkpoint)
            fp32Top1 = evaluate(fp32, on: test).top1
            var options = QATOptions()
            options.epochs = epochs; options.warmupEpochs = warmupEpochs; options.learningRate = lr
            options.batchSize = batchSize; options.weightDecay = wd
            options.calibrationImages = quantization.calibImages; options.freezeBNAfter = freezeBnAfter
            options.freezeObserversAfter = freezeObserversAfter; options.seed = seed
            options.qconfig = quantization.qconfig
            let calibration = try FashionMNIST.load(split: .train, root: data.dataRoot, limit: quantization.calibImages)
            run = try QATRun(from: fp32, source: from!, options: options, calibration: calibration,
                             trainImages: train.count, directory: out, progress: progress)
            let form = run.model.hasPostBN ? "post-BN kept as a BN" : "fully folded"
            progress.finish("QAT of \(fp32.config.name) \(fp32.config.block.rawValue) (\(form)) for \(epochs) epochs, calibrated on \(calibration.count) images")
        }
        try run.run(train: train, test: test)
        let fake = evaluate(run.model, on: test)
        var json: [String: Any] = ["qat_top1": fake.top1, "epochs": run.state.epoch, "images": test.count]
        if let fp32Top1 { json["top1"] = fp32Top1 }
        var rows: [(String, Double)] = fp32Top1.map { [("FP32", $0)] } ?? []
        rows.append(("QAT fake-quant", fake.top1))
        if run.state.options.qconfig.activation.bits == 8 {
            let int8 = try run.model.convertToInt8()
            let engine = evaluate(int8, on: test)
            json["int8_top1"] = engine.top1
            json["engine_agreement"] = agreement(engine, fake)
            rows.append(("QAT INT8 engine", engine.top1))
            if let dir = run.directory { json["int8_model"] = (dir as NSString).appendingPathComponent(QATRun.int8File) }
        }
        if runtime.json {
            try printJSON(json)
        } else {
            for (name, v) in rows { print(String(format: "%-16@ top-1 %@", name, percent(v))) }
            if let dir = run.directory { print("checkpoint: \(dir)/\(QATRun.lastFile), INT8 model: \(dir)/\(QATRun.int8File)") }
        }
    }
}
