import ArgumentParser
import Foundation
import QARep

/// `qarep ptq`: post-training quantization of an FP32 checkpoint.
struct PTQ: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ptq",
        abstract: "Post-training quantization: fold, calibrate on a few training images, convert to INT8.")

    @Option(help: "FP32 checkpoint (multi-branch or deployed).") var checkpoint: String
    @OptionGroup var quantization: QuantizationOptions
    @Option(help: "Write the INT8 model (native safetensors) here.") var out: String?
    @Flag(help: "Print each activation quantizer's calibrated range on stderr.") var showRanges = false
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        runtime.apply()
        let net = try Checkpoint.loadModel(checkpoint, fallback: model.fallback())
        let calibration = try FashionMNIST.load(split: .train, root: data.dataRoot, limit: quantization.calibImages)
        let test = try data.test()
        let qconfig = quantization.qconfig, bits = quantization.bits, calibrator = qconfig.calibrator
        let progress = runtime.progress
        progress.finish("calibrating \(calibrator) on \(calibration.count) training images")
        let quantized = try postTrainingQuantize(net, calibration: calibration, qconfig: qconfig)
        if showRanges {
            for (path, m) in quantized.namedModules() {
                guard let fq = m as? FakeQuantize, !fq.tracksCurrentValues, let o = fq.observers.first else { continue }
                let r = o.range()
                writeStandardError(String(format: "%-32@ observed [%.4g, %.4g]  range [%.4g, %.4g]  scale %.4g  zero point %d\n",
                                          path, o.minValue, o.maxValue, r.lo, r.hi, fq.scales[0], fq.zeroPoints[0]))
            }
        }
        let fp32 = evaluate(net, on: test)
        let fake = evaluate(quantized, on: test)
        var json: [String: Any] = ["top1": fp32.top1, "fake_quant_top1": fake.top1, "calibrator": calibrator.method.rawValue,
                                   "calib_images": calibration.count, "bits": bits, "images": test.count]
        var rows = [("FP32", fp32), ("INT8 fake-quant", fake)]
        if bits == 8 {
            let int8 = try quantized.convertToInt8()
            let engine = evaluate(int8, on: test)
            rows.append(("INT8 engine", engine))
            json["int8_top1"] = engine.top1
            json["engine_agreement"] = agreement(engine, fake)
            if let out {
                try int8.write(to: out)
                json["int8_model"] = out
            }
        }
        if runtime.json {
            try printJSON(json)
        } else {
            print("\(checkpoint): \(net.config.name) \(net.config.block.rawValue), \(calibrator) calibration on \(calibration.count) images, \(test.count) test images")
            for (name, e) in rows { print(String(format: "%-16@ top-1 %@", name, percent(e.top1))) }
            if let out, bits == 8 { print("INT8 model: \(out)") }
        }
    }
}

/// Fraction of images on which two evaluations predict the same class.
func agreement(_ a: Evaluation, _ b: Evaluation) -> Double {
    Double(zip(a.predictions, b.predictions).filter { $0 == $1 }.count) / Double(max(a.predictions.count, 1))
}
