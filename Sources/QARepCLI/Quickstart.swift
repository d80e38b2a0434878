import ArgumentParser
import Foundation
import QARep
import QARepONNX

/// `qarep quickstart`: the whole pipeline on the real data, small enough to
/// finish in a few minutes on two cores: train, fold, PTQ, QAT, export.
public struct Quickstart: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Train tiny QARepVGG on Fashion-MNIST, quantize it (PTQ and QAT), export it, and print FP32 vs INT8 top-1.")

    @Option(help: "FP32 training epochs.") var epochs = 2
    @Option(help: "QAT epochs.") var qatEpochs = 1
    @Option(help: "Training images QAT fine-tunes on (the first N).") var qatImages = 20_000
    @Option(help: "Directory for the run's files (replaced).") var out = "runs/quickstart"
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    /// Everything the quickstart writes under `--out`.
    static let outputs = ["fp32", "qat", "fp32-deploy.safetensors", "ptq-int8.safetensors", "qat-int8.onnx", "fp32.onnx"]

    public init() {}

    public func validate() throws {
        for (flag, value) in [("--epochs", epochs), ("--qat-epochs", qatEpochs), ("--qat-images", qatImages)] where value < 1 {
            throw ValidationError("\(flag) must be at least 1, got \(value)")
        }
    }

    /// What `qarep quickstart --json` prints.
    public struct Report: Codable, Sendable {
        public var top1: Double
        public var deployedTop1: Double
        public var ptqInt8Top1: Double
        public var qatInt8Top1: Double
        public var seconds: Double
        public var directory: String
    }

    public func run() throws {
        runtime.apply()
        let progress = runtime.progress
        let clock = ContinuousClock(), start = clock.now
        let train = try data.train(), test = try data.test()
        func path(_ name: String) -> String { (out as NSString).appendingPathComponent(name) }
        // Start clean, removing only what an earlier quickstart wrote here.
        for entry in Self.outputs { try? FileManager.default.removeItem(atPath: path(entry)) }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)

        progress.finish("1/5 training tiny QARepVGG (FP32, multi-branch) for \(epochs) epoch(s) on \(train.count) images")
        var options = TrainingRunOptions(model: try ConfigName.tiny.config(block: .qarepvgg, inChannels: train.channels,
                                                                         classes: train.classCount), epochs: epochs)
        options.batchSize = 64
        options.learningRate = 0.1
        let fp32Run = try TrainingRun(options: options, trainImages: train.count, directory: path("fp32"), progress: progress)
        try fp32Run.run(train: train, test: nil)
        let model = fp32Run.model
        let fp32 = evaluate(model, on: test)

        progress.finish("2/5 folding every block into one 3x3 convolution")
        let deployed = model.deployed()
        let folded = evaluate(try DeployedEngine(deployed), on: test)
        try Checkpoint.save(deployed, to: path("fp32-deploy.safetensors"))

        progress.finish("3/5 PTQ: calibrating on 512 training images, converting to INT8")
        let ptq = try postTrainingQuantize(model, calibration: train.subset(0..<min(512, train.count)))
        let ptqInt8 = try ptq.convertToInt8()
        try ptqInt8.write(to: path("ptq-int8.safetensors"))
        let ptqEngine = evaluate(ptqInt8, on: test)

        progress.finish("4/5 QAT: post-BN kept, fake quantization, \(qatEpochs) epoch(s) on \(min(qatImages, train.count)) images at LR 0.01")
        var qat = QATOptions()
        qat.epochs = qatEpochs
        qat.warmupEpochs = 0
        let qatTrain = train.subset(0..<min(qatImages, train.count))
        let qatRun = try QATRun(from: model, source: path("fp32/last.safetensors"), options: qat,
                                calibration: train.subset(0..<min(512, train.count)), trainImages: qatTrain.count,
                                directory: path("qat"), progress: progress)
        try qatRun.run(train: qatTrain, test: nil)
        let qatInt8 = try Int8Model.read(from: path("qat/\(QATRun.int8File)"))
        let qatEngine = evaluate(qatInt8, on: test)

        progress.finish("5/5 exporting ONNX (INT8 QDQ and FP32)")
        try AtomicFile.write(ONNXExport.int8(qatInt8), to: path("qat-int8.onnx"))
        try AtomicFile.write(ONNXExport.fp32(deployed), to: path("fp32.onnx"))
        let elapsed = start.duration(to: clock.now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18

        if runtime.json {
            try printJSON(Report(top1: fp32.top1, deployedTop1: folded.top1, ptqInt8Top1: ptqEngine.top1,
                                 qatInt8Top1: qatEngine.top1, seconds: seconds, directory: out))
        } else {
            print("")
            print("tiny QARepVGG on Fashion-MNIST, \(test.count) test images (\(String(format: "%.0f", seconds)) s)")
            print("model                                  top-1    vs FP32")
            let rows: [(String, Double)] = [("FP32 multi-branch (\(epochs) epoch(s))", fp32.top1), ("FP32 deployed (folded)", folded.top1),
                                            ("INT8 PTQ (min-max, 512 images)", ptqEngine.top1),
                                            ("INT8 QAT (\(qatEpochs) epoch(s))", qatEngine.top1)]
            for (name, top1) in rows {
                print(pad(name, 39) + pad(percent(top1), 9) + String(format: "%+.2f pp", 100 * (top1 - fp32.top1)))
            }
            print("INT8 rows run on qarep's integer engine. Files in \(out)/: fp32/, qat/, ptq-int8.safetensors, qat-int8.onnx, fp32.onnx")
        }
    }
}
