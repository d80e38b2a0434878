import Foundation
import QARep
import Testing

/// The repository's `checkpoints/` folder, found from this file's path.
let shippedCheckpoints = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("checkpoints").path
private let fashionPresent = FileManager.default.fileExists(atPath: FashionMNIST.defaultRoot + "/t10k-images-idx3-ubyte.gz")

@Suite("Quantization pipeline: PTQ, QAT, conversion, integer engine", .serialized)
struct QuantizationPipelineTests {
    /// The contract's check: on the shipped tiny QARepVGG over all 10,000 test
    /// images, the fake-quant simulation and the integer engine predict the
    /// same class on >= 99.9% of images and their top-1 differ by <= 0.1 pp;
    /// PTQ stays within 1 pp of FP32.
    @Test("PTQ on the shipped tiny QARepVGG: simulation equals the engine, INT8 within 1 pp of FP32",
          .enabled(if: fashionPresent))
    func ptqShipped() throws {
        let model = try Checkpoint.loadModel(shippedCheckpoints + "/tiny-qarepvgg.safetensors")
        let calibration = try FashionMNIST.load(split: .train, limit: 512)
        let test = try FashionMNIST.load(split: .test)
        let quantized = try postTrainingQuantize(model, calibration: calibration, calibrator: .minmax)
        let fp32 = evaluate(model, on: test), fake = evaluate(quantized, on: test)
        let engine = evaluate(try quantized.convertToInt8(), on: test)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(test.count) >= 0.999, "engine agrees with the simulation on \(same) of \(test.count)")
        #expect(abs(fake.top1 - engine.top1) <= 0.001)
        #expect(fp32.top1 - engine.top1 <= 0.01, "FP32 \(fp32.top1), INT8 \(engine.top1)")
    }

    /// A small QARepVGG trained a few steps so its BN statistics are not trivial.
    func smallTrainedModel() throws -> (RepVGGNet, FashionMNIST) {
        let data = syntheticBands(count: 256, seed: 21)
        let model = try RepVGGNet(config: ModelConfig(widths: [8, 8, 16, 16, 16], blocks: [1, 1, 2, 1, 1], block: .qarepvgg), seed: 2)
        randomizeBatchNorms(model, seed: 3)
        let trainer = Trainer(model: model, optimizer: SGD(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: 0.05),
                              config: TrainingConfig(epochs: 1, batchSize: 32, schedule: .constant(0.05), seed: 1),
                              progress: ProgressReporter(enabled: false))
        try trainer.trainEpoch(on: data)
        return (model, data)
    }

    @Test("QAT keeps the post-BN; its eval mode equals the converted INT8 model (BN folding simulated)")
    func qatFoldSimulation() throws {
        let (fp32, data) = try smallTrainedModel()
        var options = QATOptions()
        options.epochs = 1; options.warmupEpochs = 0; options.batchSize = 32; options.calibrationImages = 64
        let run = try QATRun(from: fp32, source: "test", options: options, calibration: data.subset(0..<64),
                             trainImages: data.count, directory: nil, progress: ProgressReporter(enabled: false))
        #expect(run.model.hasPostBN, "QARepVGG's post-BN is kept as a BN during QAT")
        try run.run(train: data, test: nil)

        let int8 = try run.model.convertToInt8()
        // The integer weights are exactly those the fake-quantized model evaluates.
        run.model.eval()
        let evalData = syntheticBands(count: 200, seed: 22)
        let fake = evaluate(run.model, on: evalData)
        for (unit, conv) in zip(run.model.units, int8.convs) {
            // The weight quantizer observed the folded weight during the evaluation above.
            let scales = unit.weightQuant.scales
            #expect(scales == conv.weightScales, "\(conv.name): weight scales differ between QAT and conversion")
        }
        let engine = evaluate(int8, on: evalData)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(evalData.count) >= 0.99, "agreement \(same)/\(evalData.count)")
        #expect(abs(fake.top1 - engine.top1) <= 0.01)
    }

    @Test("QAT resumes without recalibrating: 2 epochs straight equal 1 + resume + 1")
    func qatResume() throws {
        let (fp32, data) = try smallTrainedModel()
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 1; options.batchSize = 32; options.calibrationImages = 64
        let quiet = ProgressReporter(enabled: false)
        let dirA = temporaryDirectory("qa"), dirB = temporaryDirectory("qb")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let straight = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                                  trainImages: data.count, directory: dirA, progress: quiet)
        try straight.run(train: data, test: nil)
        let first = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                               trainImages: data.count, directory: dirB, progress: quiet)
        try first.run(train: data, test: nil, until: 1)
        #expect(!FileManager.default.fileExists(atPath: dirB + "/int8.safetensors"), "no INT8 model before the last epoch")
        let resumed = try QATRun.resume(from: dirB, progress: quiet)
        #expect(resumed.trainer.epoch == 1)
        try resumed.run(train: data, test: nil)
        for (a, b) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(a.tensor.data == b.tensor.data, "\(a.key) differs after resume")
        }
        let ia = try Int8Model.read(from: dirA + "/int8.safetensors"), ib = try Int8Model.read(from: dirB + "/int8.safetensors")
        #expect(ia == ib)
    }

    @Test("the native INT8 file round-trips and refuses inconsistent scales")
    func int8File() throws {
        let (fp32, data) = try smallTrainedModel()
        let model = try postTrainingQuantize(fp32, calibration: data.subset(0..<64)).convertToInt8()
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try model.write(to: dir + "/m.safetensors")
        #expect(try Int8Model.read(from: dir + "/m.safetensors") == model)

        // Layer 2 reads another scale than layer 1 writes.
        var file = try SafeTensorsFile.read(from: dir + "/m.safetensors")
        file.metadata["int8"] = file.metadata["int8"]!.replacingOccurrences(
            of: "\"inputScale\":\(model.convs[1].inputScale)", with: "\"inputScale\":\(model.convs[1].inputScale * 2)")
        try file.write(to: dir + "/bad.safetensors")
        #expect {
            _ = try Int8Model.read(from: dir + "/bad.safetensors")
        } throws: { error in
            "\(error)".contains("inconsistent scales") && "\(error)".contains("bad.safetensors")
        }
        // A negative scale and an int8 weight of -128 are refused too.
        var broken = model
        broken.convs[0].weightScales[0] = -1
        #expect(throws: QuantizationError.self) { try broken.validate() }
        broken = model
        broken.convs[0].weight[0] = -128
        #expect(throws: QuantizationError.self) { try broken.validate() }
        // An FP32 checkpoint is not an INT8 model, and an INT8 model is not an FP32 checkpoint.
        try Checkpoint.save(fp32, to: dir + "/fp32.safetensors")
        #expect(throws: CheckpointError.self) { try Int8Model.read(from: dir + "/fp32.safetensors") }
        #expect {
            _ = try Checkpoint.read(dir + "/m.safetensors")
        } throws: { error in "\(error)".contains("not an FP32 model") }
    }

    @Test("calibration with zero images and an uncalibrated conversion are refused")
    func badCalibration() throws {
        let (fp32, _) = try smallTrainedModel()
        let empty = FashionMNIST(images: [], labels: [])
        #expect(throws: QuantizationError.self) { try postTrainingQuantize(fp32, calibration: empty) }
        let raw = try QuantizedNet(from: fp32, form: .folded)
        #expect(throws: QuantizationError.self) { try raw.convertToInt8() }
        #expect(throws: QuantizationError.self) { try QuantizedNet(from: fp32, form: .folded, qconfig: QConfig.tensorRT.withBits(9)) }
    }

    @Test("4-bit fake quantization runs, and the engine refuses what it cannot run")
    func lowBitWidth() throws {
        let (fp32, data) = try smallTrainedModel()
        let q4 = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: QConfig.tensorRT.withBits(4))
        #expect(q4.units[0].weightQuant.scheme.qmax == 7)
        let out = noGrad { q4(Tensor([Float](repeating: 0.5, count: 784), shape: [1, 1, 28, 28])) }
        let finite = out.data.allSatisfy { $0.isFinite }
        #expect(finite)
        #expect(throws: QuantizationError.self) { try q4.convertToInt8() }
    }

    @Test("unsigned asymmetric activations: simulation and engine agree")
    func unsignedActivations() throws {
        let (fp32, data) = try smallTrainedModel()
        let q = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: .unsignedActivations)
        #expect(q.units[0].inputQuant.zeroPoints[0] > 0, "the image has negative values: a non-zero zero point")
        let evalData = syntheticBands(count: 200, seed: 23)
        let fake = evaluate(q, on: evalData), engine = evaluate(try q.convertToInt8(), on: evalData)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(same >= 198, "agreement \(same)/200")
    }
}
