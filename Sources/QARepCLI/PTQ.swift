import ArgumentParser
import Foundation
import QARep

/// `qarep ptq`: post-training quantization of an FP32 checkpoint.
public struct PTQ: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ptq",
        abstract: "Post-training quantization: fold, calibrate on a few training images, convert to INT8.",
        discussion: """
            A ResNet checkpoint (qarep train --model resnet20) is captured as a graph, fused, calibrated and converted the same \
            way; --out writes its native INT8 graph file, which qarep eval --int8 and qarep export read.
            """)

    @Option(help: "FP32 checkpoint (multi-branch or deployed).") var checkpoint: String
    @OptionGroup var quantization: QuantizationOptions
    @Option(help: "Write the integer model (native safetensors, at the chosen widths) here.") var out: String?
    @Flag(help: "Print each activation quantizer's calibrated range on stderr.") var showRanges = false
    @Flag(help: "After calibration, take each layer's mean output shift from weight rounding out of its bias, measured on the calibration images (empirical bias correction, Nagel et al. 2019).")
    var biasCorrection = false
    @Flag(help: "Before calibration, equalize the weight ranges of consecutive layers channel by channel (cross-layer equalization, Nagel et al. 2019); the FP32 outputs do not change.")
    var cle = false
    @Flag(help: "After calibration, learn each weight's rounding (up or down) layer by layer against the FP32 model's outputs on the calibration images (AdaRound, Nagel et al. 2020); bias correction, if asked, runs after it.")
    var adaround = false
    @Option(help: "AdaRound optimization steps per layer (default 1000).") var adaroundIterations: Int?
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if let n = adaroundIterations {
            guard adaround else { throw ValidationError("--adaround-iterations applies with --adaround") }
            guard n >= 1 else { throw ValidationError("--adaround-iterations must be at least 1, got \(n)") }
        }
    }

    /// What `qarep ptq --json` prints.
    public struct Report: Codable, Sendable {
        /// FP32 top-1 of the checkpoint, and of its fake-quantized model.
        public var top1: Double
        public var fakeQuantTop1: Double
        /// The integer engine's top-1 at these widths and the fraction of
        /// images on which it predicts what the fake-quantized model does.
        public var int8Top1: Double?
        public var engineAgreement: Double?
        public var calibrator: String
        /// With `--calibrator percentile`.
        public var percentile: Double?
        public var calibImages: Int
        /// `--bits`, and the widths of weights and activations (which default to it).
        public var bits: Int
        public var weightBits: Int
        public var activationBits: Int
        /// With `--first-last-bits`: the first convolution's and the classifier's width.
        public var firstLastBits: Int?
        public var images: Int
        public var int8Model: String?
        /// With `--bias-correction`: the largest bias change of each layer (units, then the head).
        public var biasCorrections: [Float]?
        /// Whether `--cle` equalized the weights before calibration.
        public var crossLayerEqualization: Bool
        /// With `--adaround`: each layer's reconstruction error with nearest and learned rounding.
        public var adaRound: [AdaRoundLayerReport]?
    }

    public func execute() throws -> Report {
        let family = try checkpointFamily(checkpoint)
        try requireKnownFamily(family, of: checkpoint)
        if family == ResNet.family { return try executeGraph(ResNet.self) }
        runtime.apply()
        let net = try model.load(checkpoint)
        let calibration = try data.train(limit: quantization.calibrationImages)
        let test = try data.test()
        try data.check(test, fits: net.config, model: checkpoint)
        let qconfig = quantization.qconfig
        runtime.progress.finish("calibrating \(qconfig.calibrator) on \(calibration.count) training images")
        let quantized = try postTrainingQuantize(net, calibration: calibration, qconfig: qconfig, equalize: cle)
        let rounding = try adaround ? quantized.adaRound(on: calibration, options: adaRoundOptions(images: calibration.count)) : nil
        let corrections = biasCorrection ? try quantized.correctBias(on: calibration) : nil
        if showRanges { printRanges(quantized) }
        let fp32 = evaluate(net, on: test)
        let fake = evaluate(quantized, on: test)
        var report = report(fp32: fp32, fake: fake, calibrationImages: calibration.count)
        report.biasCorrections = corrections
        report.adaRound = rounding
        let int8 = try quantized.convertToInt8()
        try addEngine(evaluate(int8, on: test), fake: fake, to: &report, write: int8.write(to:))
        return report
    }

    /// PTQ of a model outside the RepVGG family through graph capture: conv-BN(-ReLU) fused, one quantizer
    /// per tensor, calibrated, converted, run on the integer graph engine.
    func executeGraph<Model: CheckpointableModel>(_: Model.Type) throws -> Report {
        let name = (checkpoint as NSString).lastPathComponent
        for (flag, given) in [("--bias-correction", biasCorrection), ("--cle", cle), ("--show-ranges", showRanges),
                              ("--config", model.config != nil), ("--block", model.block != nil),
                              ("--first-last-bits", quantization.firstLastBits != nil)] where given {
            throw CommandError("\(flag) works on RepVGG-family models; \(name) holds a \(Model.family) model")
        }
        runtime.apply()
        let net = try Checkpoint.loadModel(checkpoint, as: Model.self).model
        let calibration = try data.train(limit: quantization.calibrationImages)
        let test = try data.test()
        try data.check(test, inChannels: net.inputChannels, classes: net.classCount, model: checkpoint)
        let qconfig = quantization.qconfig
        runtime.progress.finish("capturing \(name) and calibrating \(qconfig.calibrator) on \(calibration.count) training images")
        let example = Tensor([Float](repeating: 0, count: calibration.pixelsPerImage),
                             shape: [1, calibration.channels, calibration.height, calibration.width])
        let fp32 = evaluate(net, on: test)
        let quantized = try QuantizedGraph(net, example: example, qconfig: QConfigMapping(qconfig), mode: .ptq)
        try quantized.calibrate(on: calibration)
        let rounding = try adaround ? quantized.adaRound(on: calibration, options: adaRoundOptions(images: calibration.count)) : nil
        let fake = evaluate(quantized, on: test)
        var report = report(fp32: fp32, fake: fake, calibrationImages: calibration.count)
        report.adaRound = rounding
        let int8 = try quantized.convertToInt8()
        try addEngine(Int8GraphEngine(int8).evaluate(on: test), fake: fake, to: &report, write: int8.write(to:))
        return report
    }

    /// AdaRound's settings from the flags (announced on the progress line).
    func adaRoundOptions(images: Int) -> AdaRoundOptions {
        var options = AdaRoundOptions()
        options.iterations = adaroundIterations ?? options.iterations
        runtime.progress.finish("AdaRound: \(options.iterations) steps per layer on \(images) images")
        return options
    }

    /// The report of a calibrated model: its top-1 beside the FP32 model's, and the settings.
    func report(fp32: Evaluation, fake: Evaluation, calibrationImages: Int) -> Report {
        let qconfig = quantization.qconfig
        var report = Report(top1: fp32.top1, fakeQuantTop1: fake.top1, calibrator: qconfig.calibrator.method.rawValue,
                            calibImages: calibrationImages, bits: quantization.bitWidth,
                            weightBits: quantization.weightBitWidth, activationBits: quantization.activationBitWidth,
                            images: fp32.count, crossLayerEqualization: cle)
        if case .percentile(let p) = qconfig.calibrator { report.percentile = p }
        report.firstLastBits = qconfig.firstLastBits
        return report
    }

    /// Adds the integer engine's top-1 and agreement, and writes the INT8 model to `--out` if given.
    func addEngine(_ engine: Evaluation, fake: Evaluation, to report: inout Report, write: (String) throws -> Void) throws {
        report.int8Top1 = engine.top1
        report.engineAgreement = agreement(engine, fake)
        if let out {
            try write(out)
            report.int8Model = out
        }
    }

    public func run() throws {
        let r = try execute()
        if runtime.json { return try printJSON(r) }
        let refinements = [(cle, ", cross-layer equalization"), (adaround, ", AdaRound"), (biasCorrection, ", bias correction")]
        print("\(checkpoint): \(quantization.calibratorSettings) calibration\(refinements.filter { $0.0 }.map { $0.1 }.joined()) on \(r.calibImages) images, \(r.images) test images")
        var rows = [("FP32", r.top1), ("\(quantization.widthLabel) fake-quant", r.fakeQuantTop1)]
        if let t = r.int8Top1 { rows.append(("\(quantization.widthLabel) engine", t)) }
        for (name, t) in rows { print(String(format: "%-20@ top-1 %@", name, percent(t))) }
        if let path = r.int8Model { print("\(quantization.widthLabel) integer model: \(path)") }
    }

    func printRanges(_ quantized: QuantizedNet) {
        for (path, m) in quantized.namedModules() {
            guard let fq = m as? FakeQuantize, !fq.tracksCurrentValues, let o = fq.observers.first else { continue }
            let r = o.range()
            writeStandardError(String(format: "%-32@ observed [%.4g, %.4g]  range [%.4g, %.4g]  scale %.4g  zero point %d\n",
                                      path, o.minValue, o.maxValue, r.lo, r.hi, fq.scales[0], fq.zeroPoints[0]))
        }
    }
}
