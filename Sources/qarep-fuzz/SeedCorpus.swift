import Foundation
import QARep

/// The small valid files the fuzzers start from, made by QARep itself:
/// `qarep-fuzz seeds DIR` (re)writes `DIR/<target>/`. The committed corpus in
/// `Tests/Fuzz/corpus` was made this way.
enum SeedCorpus {
    static func write(to root: String) throws {
        func directory(_ target: FuzzTarget) throws -> String {
            let dir = root + "/" + target.rawValue
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            return dir
        }
        // A small model and data: widths 4, one block per stage, 16 images of 28x28.
        let config = ModelConfig(widths: [4, 4, 4, 4, 8], blocks: [1, 1, 1, 1, 1], block: .qarepvgg)
        var pixels = [UInt8](repeating: 0, count: 16 * 784), labels = [UInt8](repeating: 0, count: 16)
        for n in 0..<16 {
            labels[n] = UInt8(n % 10)
            for i in 0..<784 where (i / 28) / 3 == n % 10 { pixels[n * 784 + i] = 200 }
        }
        let data = FashionMNIST(images: pixels, labels: labels)
        let model = try RepVGGNet(config: config, seed: 1)

        let safetensors = try directory(.safetensors)
        try Checkpoint.save(model, to: safetensors + "/fp32-train.safetensors")
        try Checkpoint.save(model.deployed(), to: safetensors + "/fp32-deploy.safetensors")
        try SafeTensorsFile(tensors: ["a": SafeTensor(float16: [1, -2, 0.5], shape: [3]), "b": SafeTensor(int64: [7], shape: [])],
                            metadata: ["note": "seed"]).write(to: safetensors + "/mixed.safetensors")

        let int8 = try postTrainingQuantize(model, calibration: data).convertToInt8()
        try int8.write(to: try directory(.int8) + "/int8.safetensors")

        var options = QATOptions()
        options.epochs = 1; options.warmupEpochs = 0; options.batchSize = 8; options.calibrationImages = 8
        let qatDirectory = root + "/.qat-run"
        try? FileManager.default.removeItem(atPath: qatDirectory)
        let run = try QATRun(from: model, source: "seed", options: options, calibration: data, trainImages: data.count,
                             directory: qatDirectory, progress: ProgressReporter(enabled: false))
        try run.run(train: data, test: nil)
        let qatSeed = try directory(.qat) + "/qat.safetensors"
        try? FileManager.default.removeItem(atPath: qatSeed)   // rewriting a corpus: copyItem does not replace
        try FileManager.default.copyItem(atPath: qatDirectory + "/last.safetensors", toPath: qatSeed)
        try FileManager.default.removeItem(atPath: qatDirectory)

        // A ResNet-8 captured, calibrated and converted: the native INT8 graph file.
        let resnet = try ResNet(depth: 8, seed: 2)
        let prepared = try QuantizedGraph(resnet, example: Tensor([Float](repeating: 0, count: 784), shape: [1, 1, 28, 28]), mode: .ptq)
        try prepared.calibrate(on: data)
        try prepared.convertToInt8().write(to: try directory(.int8graph) + "/graph.safetensors")

        // IDX: 2 images of 4x4 and a gzip-free label file; the reader takes either.
        func bigEndian(_ values: [UInt32]) -> [UInt8] {
            values.flatMap { v in [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
        }
        let idx = try directory(.idx)
        try Data(bigEndian([0x0803, 2, 4, 4]) + (0..<32).map { UInt8($0 * 7 % 256) }).write(to: URL(fileURLWithPath: idx + "/images"))
        try Data(bigEndian([0x0801, 3]) + [1, 2, 9]).write(to: URL(fileURLWithPath: idx + "/labels"))

        // CIFAR-10: two records (labels 3 and 8) of a 3x32x32 gradient.
        let record = { (label: UInt8) in [label] + (0..<3072).map { UInt8(($0 * 5 + Int(label)) % 256) } }
        try Data(record(3) + record(8)).write(to: URL(fileURLWithPath: try directory(.cifar10) + "/" + CIFAR10.testFile))
    }
}
