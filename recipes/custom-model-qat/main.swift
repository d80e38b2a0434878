// Recipe: define your own network, train it in FP32, then quantize it with
// PTQ and QAT through graph capture, convert it to integers and run it on
// QARep's integer engine, and export it to ONNX (QDQ) for ONNX Runtime or
// TensorRT. Only QARep's public API is used.
//
//     swift run -c release custom-model-qat [--model custom|resnet20] [--epochs N] [--qat-epochs N]
//                                           [--train-limit N] [--out DIR]
//
// The FP32 weights are saved to DIR/<model>-fp32.safetensors and reused when
// the recipe runs again; delete the file to retrain. The QAT model is
// exported to DIR/<model>-int8.onnx, with the integer engine's test-set
// logits in DIR/<model>-int8-logits.npy (scripts/check_onnx.py compares them
// with ONNX Runtime's).

import Foundation
import QARep
import QARepONNX

/// A small residual network of our own: conv-BN-ReLU stem, max pooling, a
/// residual block, a strided conv-BN-ReLU, global average pooling and a
/// classifier. Nothing here is RepVGG: graph capture finds the structure.
final class SmallResidualNet: Module, Layer {
    let stem: Conv2d, stemBN: BatchNorm2d
    let conv1: Conv2d, bn1: BatchNorm2d
    let conv2: Conv2d, bn2: BatchNorm2d
    let down: Conv2d, downBN: BatchNorm2d
    let classifier: Linear

    init(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        stem = Conv2d(1, 32, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng); stemBN = BatchNorm2d(32)
        conv1 = Conv2d(32, 32, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng); bn1 = BatchNorm2d(32)
        conv2 = Conv2d(32, 32, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng); bn2 = BatchNorm2d(32)
        down = Conv2d(32, 64, kernelSize: 3, stride: 2, padding: 1, bias: false, rng: &rng); downBN = BatchNorm2d(64)
        classifier = Linear(64, 10, rng: &rng)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let trunk = maxPool2d(stemBN(stem(x), relu: true), kernel: 2, stride: 2)          // 14x14
        let residual = (bn2(conv2(bn1(conv1(trunk), relu: true))) + trunk).relu()
        let features = downBN(down(residual), relu: true)                                   // 7x7
        return classifier(globalAveragePool(features))
    }
}

/// A command-line mistake, reported as one line.
struct UsageError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

struct Options {
    var model = "custom", epochs = 3, qatEpochs = 1, trainLimit: Int?, out = "runs/custom-model-qat"

    init(_ arguments: [String]) throws {
        var i = 1
        func value() throws -> String {
            i += 1
            guard i < arguments.count else { throw UsageError("\(arguments[i - 1]) needs a value") }
            return arguments[i]
        }
        func positive(_ flag: String) throws -> Int {
            guard let n = Int(try value()), n >= 1 else { throw UsageError("\(flag) must be a positive integer") }
            return n
        }
        while i < arguments.count {
            switch arguments[i] {
            case "--model":
                model = try value()
                guard ["custom", "resnet20"].contains(model) else { throw UsageError("--model must be custom or resnet20, got \(model)") }
            case "--epochs": epochs = try positive("--epochs")
            case "--qat-epochs": qatEpochs = try positive("--qat-epochs")
            case "--train-limit": trainLimit = try positive("--train-limit")
            case "--out": out = try value()
            default: throw UsageError("unknown argument \(arguments[i]) (see the comment at the top of recipes/custom-model-qat/main.swift)")
            }
            i += 1
        }
    }
}

func percent(_ x: Double) -> String { String(format: "%.2f%%", 100 * x) }

/// Trains `model` with SGD (momentum 0.9, weight decay on kernels) under a warm-up cosine schedule.
func fit(_ model: some Layer, on data: any Dataset, epochs: Int, learningRate: Float, warmupEpochs: Double) throws {
    let batch = 128, steps = data.count / batch * epochs
    let optimizer = SGD(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: learningRate, momentum: 0.9)
    let schedule = LearningRateSchedule.warmupCosine(base: learningRate, warmup: Int(Double(steps) * warmupEpochs / Double(epochs)),
                                                     total: steps)
    let trainer = Trainer(model: model, optimizer: optimizer,
                          config: TrainingConfig(epochs: epochs, batchSize: batch, schedule: schedule, seed: 1))
    for epoch in 0..<epochs {
        let summary = try trainer.trainEpoch(on: data)
        print(String(format: "  epoch %d/%d  loss %.4f  train top-1 %@  %.0f img/s", epoch + 1, epochs, summary.trainLoss,
                     percent(summary.trainAccuracy), summary.imagesPerSecond))
    }
}

do {
    let options = try Options(CommandLine.arguments)
    let train = try FashionMNIST.load(split: .train, limit: options.trainLimit)
    let test = try FashionMNIST.load(split: .test)
    let calibration = train.subset(0..<min(512, train.count))
    let example = Tensor([Float](repeating: 0, count: 28 * 28), shape: [1, 1, 28, 28])

    let model: any Layer = options.model == "resnet20" ? try ResNet(depth: 20, inChannels: 1, classes: 10, seed: 0)
                                                       : SmallResidualNet(seed: 0)
    // 1. FP32: train, or reuse the weights of an earlier run.
    try FileManager.default.createDirectory(atPath: options.out, withIntermediateDirectories: true)
    let weights = "\(options.out)/\(options.model)-fp32.safetensors"
    if FileManager.default.fileExists(atPath: weights) {
        try Checkpoint.load(SafeTensorsFile.read(from: weights), into: model, source: weights)
        print("FP32 weights from \(weights)")
    } else {
        print("training \(options.model) in FP32 for \(options.epochs) epoch(s) on \(train.count) images")
        try fit(model, on: train, epochs: options.epochs, learningRate: 0.1, warmupEpochs: 0.5)
        try SafeTensorsFile(tensors: Checkpoint.stateTensors(of: model)).write(to: weights)
    }
    model.eval()
    let fp32 = evaluate(model, on: test)

    // The classifier of our own network stays float (partial quantization);
    // ResNet-20 is quantized whole.
    let mapping = options.model == "custom" ? QConfigMapping(.tensorRT).setting("classifier", to: nil) : QConfigMapping(.tensorRT)
    print(try Graph.capture(model, example: example).description)

    // 2. PTQ: fuse, insert fake quantizers, calibrate on 512 training images, convert.
    let ptq = try QuantizedGraph(model, example: example, qconfig: mapping, mode: .ptq)
    try ptq.calibrate(on: calibration)
    ptq.eval()
    let ptqSimulated = evaluate(ptq, on: test)
    let ptqEngine = try Int8GraphEngine(ptq.convertToInt8()).evaluate(on: test)

    // 3. QAT: batch norms kept (their fold simulated), calibrated, then
    // fine-tuned with a short warm-up to LR 0.01 while activation ranges
    // follow the data by moving averages.
    let qat = try QuantizedGraph(model, example: example, qconfig: mapping, mode: .qat)
    try qat.calibrate(on: calibration)
    qat.trackActivationRanges()
    print("QAT for \(options.qatEpochs) epoch(s)")
    try fit(qat, on: train, epochs: options.qatEpochs, learningRate: 0.01, warmupEpochs: 0.1)
    qat.eval()
    let qatSimulated = evaluate(qat, on: test)
    let int8 = try qat.convertToInt8()
    let qatEngine = try Int8GraphEngine(int8).evaluate(on: test, keepLogits: true)

    // 4. Export: the QDQ graph, and the engine's logits to check a runtime against.
    let onnx = "\(options.out)/\(options.model)-int8.onnx"
    try ONNXExport.int8(int8).write(to: URL(fileURLWithPath: onnx))
    try writeNumPy(qatEngine.logits!, rows: test.count, columns: 10, to: "\(options.out)/\(options.model)-int8-logits.npy")
    print("exported \(onnx)")

    func agreement(_ a: Evaluation, _ b: Evaluation) -> String {
        percent(Double(zip(a.predictions, b.predictions).filter { $0 == $1 }.count) / Double(a.count))
    }
    print("\n\(options.model), Fashion-MNIST test top-1 (\(test.count) images)")
    print("  FP32                 \(percent(fp32.top1))")
    print("  PTQ  simulated       \(percent(ptqSimulated.top1))   integer engine \(percent(ptqEngine.top1))   agree \(agreement(ptqSimulated, ptqEngine))")
    print("  QAT  simulated       \(percent(qatSimulated.top1))   integer engine \(percent(qatEngine.top1))   agree \(agreement(qatSimulated, qatEngine))")
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    exit(1)
}
