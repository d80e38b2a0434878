import Foundation
import QARep
import QARepKernels
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
        let quantized = try postTrainingQuantize(model, calibration: calibration)
        let fp32 = evaluate(model, on: test), fake = evaluate(quantized, on: test)
        let engine = evaluate(try quantized.convertToInt8(), on: test)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(test.count) >= 0.999, "engine agrees with the simulation on \(same) of \(test.count)")
        #expect(abs(fake.top1 - engine.top1) <= 0.001)
        #expect(fp32.top1 - engine.top1 <= 0.01, "FP32 \(fp32.top1), INT8 \(engine.top1)")
    }

    func smallTrainedModel() throws -> (RepVGGNet, FashionMNIST) { try smallTrainedQARepVGG() }

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
        // The integer weights and biases are exactly those the fake-quantized
        // model evaluates, with the post-BN folded by its running statistics.
        run.model.eval()
        expectSameCodes(run.model, int8)
        let evalData = syntheticBands(count: 200, seed: 22)
        let fake = evaluate(run.model, on: evalData)
        let engine = evaluate(int8, on: evalData)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(evalData.count) >= 0.99, "agreement \(same)/\(evalData.count)")
        #expect(abs(fake.top1 - engine.top1) <= 0.01)
    }

    @Test("QAT resumes without recalibrating, at an epoch boundary or mid-epoch, merged, multi-branch or with 8-bit first and last layers: bit-identical to a run never stopped",
          arguments: [(false, QuantizedNet.Form.postBN, false), (true, .postBN, false), (true, .multiBranch, false),
                      (true, .postBN, true)])
    func qatResume(midEpoch: Bool, form: QuantizedNet.Form, wideEdges: Bool) throws {
        let (fp32, data) = try smallTrainedModel()
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 1; options.batchSize = 32; options.calibrationImages = 64
        options.form = form
        if wideEdges {
            options.qconfig = QConfig.tensorRT.withBits(4)
            options.qconfig.firstLastBits = 8
        }
        let quiet = ProgressReporter(enabled: false)
        let dirA = temporaryDirectory("qa"), dirB = temporaryDirectory("qb")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let straight = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                                  trainImages: data.count, directory: dirA, progress: quiet)
        try straight.run(train: data, test: nil)
        let first = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                               trainImages: data.count, directory: dirB, progress: quiet)
        if midEpoch {
            // 8 steps per epoch: stop after step 11, in the second epoch (observers and BN mid-flight).
            first.controls.shouldStop = { [unowned first] in first.trainer.step == 11 }
            #expect(throws: RunInterrupted.self) { try first.run(train: data, test: nil) }
        } else {
            try first.run(train: data, test: nil, until: 1)
        }
        #expect(!FileManager.default.fileExists(atPath: dirB + "/int8.safetensors"), "no INT8 model before the last epoch")
        let resumed = try QATRun.resume(from: dirB, progress: quiet)
        #expect(resumed.trainer.epoch == 1 && resumed.trainer.step == (midEpoch ? 11 : 8))
        #expect(resumed.model.form == form && resumed.state.options.form == form)
        // The widths come back from the checkpoint: the first unit and the head at 8 bits, the rest at 4.
        let widths = resumed.model.units.map { [$0.inputQuant.scheme.bits, $0.weightQuant.scheme.bits] }
        #expect(widths == (0..<widths.count).map { $0 == 0 || !wideEdges ? [8, 8] : [4, 4] })
        let head = resumed.model.linear
        #expect([head.featureQuant, head.inputQuant, head.weightQuant].allSatisfy { $0.scheme.bits == 8 })
        try resumed.run(train: data, test: nil)
        #expect(straight.model.stateDict().map(\.key) == resumed.model.stateDict().map(\.key))
        for (a, b) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(a.tensor.data == b.tensor.data, "\(a.key) differs after resume")
        }
        let ia = try Int8Model.read(from: dirA + "/int8.safetensors"), ib = try Int8Model.read(from: dirB + "/int8.safetensors")
        #expect(ia == ib)
        // The QAT reader checks the format version too.
        var file = try SafeTensorsFile.read(from: dirB + "/last.safetensors")
        file.metadata["format_version"] = "2"
        try file.write(to: dirB + "/newer.safetensors")
        #expect {
            _ = try QATRun.loadModel(from: dirB + "/newer.safetensors")
        } throws: { error in "\(error)".contains("newer.safetensors") && "\(error)".contains("format version 2") }
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
        // A newer, missing or malformed format version is refused, naming the file.
        for version in ["2", "", "x", nil] {
            var file = try SafeTensorsFile.read(from: dir + "/m.safetensors")
            file.metadata["format_version"] = version
            try file.write(to: dir + "/v.safetensors")
            #expect {
                _ = try Int8Model.read(from: dir + "/v.safetensors")
            } throws: { error in "\(error)".contains("v.safetensors") && "\(error)".contains("format") }
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

    @Test("lower bit widths quantize to their levels and cost accuracy in order")
    func lowBitWidth() throws {
        let (fp32, data) = try smallTrainedModel()
        let evalData = syntheticBands(count: 400, seed: 24)
        let reference = evaluate(fp32, on: evalData)
        var agreements: [Int: Double] = [:]
        for bits in [8, 4, 2] {
            let q = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: QConfig.tensorRT.withBits(bits))
            let qmax = Float((1 << (bits - 1)) - 1)
            #expect(q.units[0].weightQuant.scheme.qmax == Int32(qmax))
            // Every fake-quantized weight is an integer level in [-qmax, qmax] times its channel's scale.
            for unit in q.units {
                let w = noGrad { unit.deployedTensors().weight }
                let scales = unit.weightQuant.scales, per = w.count / scales.count
                let offLevel = w.data.indices.filter { i in
                    let s = scales[i / per], level = (w.data[i] / s).rounded()
                    return w.data[i] != level * s || abs(level) > qmax
                }
                #expect(offLevel.isEmpty, "\(bits) bits: \(offLevel.count) weights off the grid")
            }
            let e = evaluate(q, on: evalData)
            agreements[bits] = Double(zip(e.predictions, reference.predictions).filter { $0 == $1 }.count) / Double(evalData.count)
        }
        // 8 bits keeps FP32's predictions (this small model has many near ties);
        // 4 and 2 bits lose more and more of them.
        #expect(agreements[8]! >= 0.93, "8-bit agreement with FP32 \(agreements[8]!)")
        #expect(agreements[4]! <= agreements[8]! && agreements[2]! < agreements[4]!, "agreement by bit width: \(agreements)")
    }

    @Test("simulation and engine use identical integer weights and biases on the shipped checkpoints", arguments: ["tiny-qarepvgg", "tiny-repvgg"])
    func shippedCodes(_ name: String) throws {
        let model = try Checkpoint.loadModel(shippedCheckpoints + "/\(name).safetensors")
        let calibration = fashionPresent ? try FashionMNIST.load(split: .train, limit: 256) : syntheticBands(count: 256, seed: 25)
        // PTQ's fully folded form, and QAT's form with QARepVGG's post-BN kept.
        for calibrator in [Calibrator.minmax, .percentile(99.9)] {
            let ptq = try postTrainingQuantize(model, calibration: calibration, qconfig: QConfig.tensorRT.with(calibrator: calibrator))
            expectSameCodes(ptq, try ptq.convertToInt8())
        }
        let qat = try QuantizedNet(from: model, form: .postBN)
        try qat.calibrate(on: calibration)
        qat.eval()
        expectSameCodes(qat, try qat.convertToInt8())
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

/// Checks, element by element and to the bit, that the weights and biases the
/// fake-quantized model computes with (in evaluation mode) are the converted
/// model's integer codes times their scales, for every convolution and the head.
func expectSameCodes(_ model: QuantizedNet, _ int8: Int8Model, sourceLocation: SourceLocation = #_sourceLocation) {
    func check(_ name: String, weight: Tensor, bias: Tensor, codes: [Int8], biasCodes: [Int32], weightScales: [Float], inputScale: Float) {
        let per = codes.count / weightScales.count
        let weightMismatches = codes.indices.filter {
            weight.data[$0].bitPattern != dequantize(Int32(codes[$0]), scale: weightScales[$0 / per], zeroPoint: 0).bitPattern
        }
        let biasMismatches = biasCodes.indices.filter {
            bias.data[$0].bitPattern != dequantizeBias(biasCodes[$0], inputScale: inputScale, weightScale: weightScales[$0]).bitPattern
        }
        #expect(weightMismatches.isEmpty && biasMismatches.isEmpty,
                "\(name): \(weightMismatches.count) weight and \(biasMismatches.count) bias codes differ", sourceLocation: sourceLocation)
    }
    noGrad {
        #expect(model.units.count == int8.convs.count, sourceLocation: sourceLocation)
        for (unit, conv) in zip(model.units, int8.convs) {
            let (w, b) = unit.deployedTensors()
            #expect(unit.weightQuant.scales == conv.weightScales, "\(conv.name): weight scales", sourceLocation: sourceLocation)
            check(conv.name, weight: w, bias: b, codes: conv.weight, biasCodes: conv.bias, weightScales: conv.weightScales, inputScale: conv.inputScale)
        }
        let (w, b) = model.linear.deployedTensors()
        check("head", weight: w, bias: b, codes: int8.head.weight, biasCodes: int8.head.bias,
              weightScales: int8.head.weightScales, inputScale: int8.head.inputScale)
    }
}

/// A small QARepVGG (or another block kind) trained a few steps on
/// synthetic images so its BN statistics are not trivial, and those images.
func smallTrainedQARepVGG(dataSeed: UInt64 = 21, modelSeed: UInt64 = 2, block: BlockKind = .qarepvgg) throws -> (RepVGGNet, FashionMNIST) {
    let data = syntheticBands(count: 256, seed: dataSeed)
    let model = try RepVGGNet(config: ModelConfig(widths: [8, 8, 16, 16, 16], blocks: [1, 1, 2, 1, 1], block: block), seed: modelSeed)
    randomizeBatchNorms(model, seed: modelSeed + 1)
    let trainer = Trainer(model: model, optimizer: SGD(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: 0.05),
                          config: TrainingConfig(epochs: 1, batchSize: 32, schedule: .constant(0.05), seed: 1),
                          progress: ProgressReporter(enabled: false))
    try trainer.trainEpoch(on: data)
    return (model, data)
}
