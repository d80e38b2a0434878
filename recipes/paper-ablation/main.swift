// Recipe: the QARepVGG paper's ablation (S0-S4) on Fashion-MNIST, with
// QARep's public API only.
//
//     swift run -c release paper-ablation [--config a0-half] [--epochs 4] [--qat-epochs 1]
//         [--settings s0,s1,s2,s3,s4] [--out runs/ablation] [--results OUT/results.md]
//         [--data-root DIR] [--threads N] [--warmup-epochs 0]
//
// For each setting it trains an FP32 model (or resumes one already in
// OUT/<setting>, so the runs may span several sittings; a finished run is
// only evaluated), then quantizes its best checkpoint (validation top-1):
// PTQ at W8A8 (fake quantization and the integer engine), W6A6 and W8A4
// (simulated), and QAT at W8A8 (resumable too, in OUT/<setting>-qat). It
// writes OUT/results.json, and the Markdown tables (the paper's, and the
// evidence of `qarep report` for its two causes) to --results, from which
// docs/RESULTS.md quotes them.
//
//     S0  RepVGG, custom L2                S3  no BN on identity and 1x1
//     S1  RepVGG, ordinary L2              S4  QARepVGG (S3 + BN after the sum)
//     S2  no BN on the identity branch

import Foundation
import QARep
import QARepKernels

struct Setting {
    let name: String, block: BlockKind, decay: WeightDecayMode, description: String
}

let allSettings = [
    Setting(name: "s0", block: .repvgg, decay: .customL2, description: "RepVGG, custom L2"),
    Setting(name: "s1", block: .repvgg, decay: .l2, description: "RepVGG, ordinary L2"),
    Setting(name: "s2", block: .s2, decay: .l2, description: "no BN on the identity branch"),
    Setting(name: "s3", block: .s3, decay: .l2, description: "no BN on identity and 1x1"),
    Setting(name: "s4", block: .qarepvgg, decay: .l2, description: "QARepVGG (post-BN)"),
]

/// `--name value` pairs from the command line.
func option(_ name: String, _ fallback: String) -> String {
    let args = CommandLine.arguments
    guard let i = args.firstIndex(of: "--" + name), i + 1 < args.count else { return fallback }
    return args[i + 1]
}

func pct(_ v: Double?) -> String { v.map { String(format: "%.2f", 100 * $0) } ?? "-" }

struct Row: Codable {
    var setting: String, description: String, epochs: Int
    var fp32: Double
    var ptq: [String: Double] = [:]
    var ptqEngineW8A8: Double = 0
    var qatW8A8: Double = 0
    var qatEngineW8A8: Double = 0
    var worstWeightLayer = "", worstWeightMaxOverStd = 0.0
    var largestActivationLayer = "", largestActivation = 0.0
    var sensitiveLayers: [String] = []
}

do {
    let config = option("config", "a0-half"), epochs = Int(option("epochs", "4"))!, qatEpochs = Int(option("qat-epochs", "1"))!
    // FP32 warm-up (linear, then cosine): 0 for the runs in docs/RESULTS.md, but S3, with no BN
    // after its branches' sum, diverges at LR 0.1 from the first step and needs one.
    let warmupEpochs = Int(option("warmup-epochs", "0"))!
    let out = option("out", "runs/ablation"), resultsPath = option("results", out + "/results.md")
    let root = option("data-root", FashionMNIST.defaultRoot)
    KernelThreads.count = Int(option("threads", "\(KernelThreads.count)"))!
    let chosen = option("settings", "s0,s1,s2,s3,s4").split(separator: ",").map(String.init)
    let settings = try chosen.map { name in
        guard let s = allSettings.first(where: { $0.name == name }) else { throw ModelError("unknown setting \(name); s0...s4") }
        return s
    }

    // 55,000 training images, the last 5,000 for validation (best.safetensors), as `qarep train`.
    let all = try FashionMNIST.load(split: .train, root: root)
    let train = all.subset(0..<55_000), validation = all.subset(55_000..<60_000)
    let test = try FashionMNIST.load(split: .test, root: root)
    let calibration = train.subset(0..<512)
    let progress = ProgressReporter()

    var rows: [Row] = []
    for s in settings {
        let dir = out + "/" + s.name
        let run: TrainingRun
        if FileManager.default.fileExists(atPath: dir + "/" + TrainingRun.lastFile) {
            run = try TrainingRun.resume(from: dir, progress: progress)
        } else {
            var options = TrainingRunOptions(model: try ModelConfig.named(config, block: s.block), epochs: epochs)
            options.weightDecayMode = s.decay
            options.warmupEpochs = warmupEpochs
            run = try TrainingRun(options: options, trainImages: train.count, directory: dir,
                                  dataOrigin: DataOrigin(dataset: .fashionMNIST, root: root, validationImages: 5000), progress: progress)
        }
        progress.finish("\(s.name) (\(s.description)): training to epoch \(run.trainer.config.epochs)")
        _ = try run.run(train: train, validation: validation, test: test)
        let best = try Checkpoint.loadModel(dir + "/" + TrainingRun.bestFile)
        best.eval()
        var row = Row(setting: s.name.uppercased(), description: s.description, epochs: run.trainer.config.epochs,
                      fp32: evaluate(best, on: test).top1)

        // PTQ: min-max calibration on 512 training images, TensorRT's scheme.
        for (label, weightBits, activationBits) in [("W8A8", 8, 8), ("W6A6", 6, 6), ("W8A4", 8, 4)] {
            var qconfig = QConfig.tensorRT
            qconfig.weight.bits = weightBits; qconfig.activation.bits = activationBits
            let quantized = try postTrainingQuantize(best, calibration: calibration, qconfig: qconfig)
            row.ptq[label] = evaluate(quantized, on: test).top1
            if label == "W8A8" { row.ptqEngineW8A8 = evaluate(try quantized.convertToInt8(), on: test).top1 }
        }

        // QAT at W8A8 from the best FP32 checkpoint (post-BN kept for S4).
        let qatDir = dir + "-qat"
        let qat: QATRun
        if FileManager.default.fileExists(atPath: qatDir + "/" + QATRun.lastFile) {
            qat = try QATRun.resume(from: qatDir, progress: progress)
        } else {
            var options = QATOptions()
            options.epochs = qatEpochs; options.warmupEpochs = 0
            qat = try QATRun(from: best, source: dir + "/" + TrainingRun.bestFile, options: options, calibration: calibration,
                             trainImages: train.count, directory: qatDir, progress: progress)
        }
        _ = try qat.run(train: train, validation: validation, test: test)
        row.qatW8A8 = evaluate(qat.model, on: test).top1
        row.qatEngineW8A8 = evaluate(try qat.model.convertToInt8(), on: test).top1

        // The report's evidence: the widest fused weights (C1), the widest inputs (C2), the layers to blame.
        let report = try quantizationReport(best, calibration: calibration, test: test.subset(0..<2000), bits: 8, confirm: 3)
        let worst = report.layers.max { $0.weightMaxOverStd < $1.weightMaxOverStd }!
        let widest = report.layers.max { $0.activationMax < $1.activationMax }!
        row.worstWeightLayer = worst.name; row.worstWeightMaxOverStd = worst.weightMaxOverStd
        row.largestActivationLayer = widest.name; row.largestActivation = widest.activationMax
        row.sensitiveLayers = report.sensitivity.map { String(format: "%@ (%+.2f pp)", $0.layer, 100 * $0.gain) }
        rows.append(row)
        progress.finish("\(s.name): FP32 \(pct(row.fp32)), PTQ W8A8 \(pct(row.ptq["W8A8"])), QAT W8A8 \(pct(row.qatW8A8))")
    }

    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try AtomicFile.write(try encoder.encode(rows), to: out + "/results.json")

    var md = "| setting | blocks | epochs | FP32 | PTQ W8A8 | PTQ W8A8 engine | PTQ W6A6 | PTQ W8A4 | QAT W8A8 | QAT W8A8 engine |\n"
    md += "|---|---|---|---|---|---|---|---|---|---|\n"
    for r in rows {
        md += "| \(r.setting) | \(r.description) | \(r.epochs) | \(pct(r.fp32)) | \(pct(r.ptq["W8A8"])) | \(pct(r.ptqEngineW8A8)) "
            + "| \(pct(r.ptq["W6A6"])) | \(pct(r.ptq["W8A4"])) | \(pct(r.qatW8A8)) | \(pct(r.qatEngineW8A8)) |\n"
    }
    md += "\n| setting | widest fused weights (max\\|w\\|/std) | widest conv input (max\\|x\\|) | lowest-SQNR layers, PTQ W8A8 gain with each in float |\n"
    md += "|---|---|---|---|\n"
    for r in rows {
        md += "| \(r.setting) | \(r.worstWeightLayer) \(String(format: "%.1f", r.worstWeightMaxOverStd)) "
            + "| \(r.largestActivationLayer) \(String(format: "%.3g", r.largestActivation)) | \(r.sensitiveLayers.joined(separator: ", ")) |\n"
    }
    try AtomicFile.write(Data(md.utf8), to: resultsPath)
    print(md)
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
