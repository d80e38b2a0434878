import ArgumentParser
import Foundation
import QARep

/// `qarep ptq`: post-training quantization of an FP32 checkpoint.
public struct PTQ: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ptq",
        abstract: "Post-training quantization: fold, calibrate on a few training images, convert to INT8.")

    @Option(help: "FP32 checkpoint (multi-branch or deployed).") var checkpoint: String
    @OptionGroup var quantization: QuantizationOptions
    @Option(help: "Write the INT8 model (native safetensors) here.") var out: String?
    @Flag(help: "Print each activation quantizer's calibrated range on stderr.") var showRanges = false
    @Flag(help: "After calibration, take each layer's mean output shift from weight rounding out of its bias, measured on the calibration images (empirical bias correction, Nagel et al. 2019).")
    var biasCorrection = false
    @Flag(help: "Before calibration, equalize the weight ranges of consecutive layers channel by channel (cross-layer equalization, Nagel et al. 2019); the FP32 outputs do not change.")
    var cle = false
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if out != nil && !quantization.isInt8 {
            throw ValidationError("--out writes an INT8 model, which needs 8-bit weights and activations, got \(quantization.widthLabel)")
        }
    }

    /// What `qarep ptq --json` prints.
    public struct Report: Codable, Sendable {
        /// FP32 top-1 of the checkpoint, and of its fake-quantized model.
        public var top1: Double
        public var fakeQuantTop1: Double
        /// At 8 bits: the integer engine's top-1 and the fraction of images on
        /// which it predicts what the fake-quantized model does.
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
        public var images: Int
        public var int8Model: String?
        /// With `--bias-correction`: the largest bias change of each layer (units, then the head).
        public var biasCorrections: [Float]?
        /// Whether `--cle` equalized the weights before calibration.
        public var crossLayerEqualization: Bool
    }

    public func execute() throws -> Report {
        runtime.apply()
        let net = try model.load(checkpoint)
        let calibration = try data.train(limit: quantization.calibrationImages)
        let test = try data.test()
        try data.check(test, fits: net.config, model: checkpoint)
        let qconfig = quantization.qconfig
        runtime.progress.finish("calibrating \(qconfig.calibrator) on \(calibration.count) training images")
        let quantized = try postTrainingQuantize(net, calibration: calibration, qconfig: qconfig, equalize: cle)
        let corrections = biasCorrection ? try quantized.correctBias(on: calibration) : nil
        if showRanges { printRanges(quantized) }
        let fp32 = evaluate(net, on: test)
        let fake = evaluate(quantized, on: test)
        var report = Report(top1: fp32.top1, fakeQuantTop1: fake.top1, calibrator: qconfig.calibrator.method.rawValue,
                            calibImages: calibration.count, bits: quantization.bitWidth,
                            weightBits: quantization.weightBitWidth, activationBits: quantization.activationBitWidth, images: test.count,
                            crossLayerEqualization: cle)
        if case .percentile(let p) = qconfig.calibrator { report.percentile = p }
        report.biasCorrections = corrections
        if quantization.isInt8 {
            let int8 = try quantized.convertToInt8()
            let engine = evaluate(int8, on: test)
            report.int8Top1 = engine.top1
            report.engineAgreement = agreement(engine, fake)
            if let out {
                try int8.write(to: out)
                report.int8Model = out
            }
        }
        return report
    }

    public func run() throws {
        let r = try execute()
        if runtime.json { return try printJSON(r) }
        print("\(checkpoint): \(quantization.calibratorSettings) calibration\(cle ? ", cross-layer equalization" : "")\(biasCorrection ? ", bias correction" : "") on \(r.calibImages) images, \(r.images) test images")
        var rows = [("FP32", r.top1), ("\(quantization.widthLabel) fake-quant", r.fakeQuantTop1)]
        if let t = r.int8Top1 { rows.append(("INT8 engine", t)) }
        for (name, t) in rows { print(String(format: "%-20@ top-1 %@", name, percent(t))) }
        if let path = r.int8Model { print("INT8 model: \(path)") }
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
