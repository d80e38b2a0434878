import Foundation
import QARep
import QARepCLI
import Testing

// CIFAR-10's binary version (3,073-byte records: label, then R, G and B
// planes) written by hand, read back, batched and taken through the commands.

/// `count` colour images whose class lights one horizontal band of one channel
/// (class k: channel k % 3, band k / 3 of four): learnable in a few steps.
func syntheticColourBands(count: Int, seed: UInt64) -> CIFAR10 {
    var rng = SplitMix64(seed: seed)
    var images = [UInt8](repeating: 0, count: count * 3072), labels = [UInt8](repeating: 0, count: count)
    for n in 0..<count {
        let label = Int(rng.next() % 10)
        labels[n] = UInt8(label)
        for c in 0..<3 {
            for p in 0..<1024 {
                let lit = c == label % 3 && (p / 32) / 8 == label / 3
                images[n * 3072 + c * 1024 + p] = (lit ? 200 : 30) &+ UInt8(rng.next() % 40)
            }
        }
    }
    return CIFAR10(images: images, labels: labels)
}

/// The dataset as CIFAR-10 records, label first.
func cifarRecords(_ data: CIFAR10) -> Data {
    var bytes = Data()
    for n in 0..<data.count {
        bytes.append(data.labels[n])
        bytes.append(contentsOf: data.images[(n * 3072)..<((n + 1) * 3072)])
    }
    return bytes
}

/// A data root with the five training files (`perFile` images each) and the test file.
func syntheticCIFARRoot(perFile: Int = 96, test: Int = 100) throws -> (root: String, train: CIFAR10, test: CIFAR10) {
    let dir = temporaryDirectory("cifar-data")
    let train = syntheticColourBands(count: 5 * perFile, seed: 41), testSet = syntheticColourBands(count: test, seed: 42)
    for (i, name) in CIFAR10.trainFiles.enumerated() {
        try cifarRecords(train.subset((i * perFile)..<((i + 1) * perFile))).write(to: URL(fileURLWithPath: dir + "/" + name))
    }
    try cifarRecords(testSet).write(to: URL(fileURLWithPath: dir + "/" + CIFAR10.testFile))
    return (dir, train, testSet)
}

@Suite("CIFAR-10: binary files, batches, the commands")
struct CIFAR10Tests {
    @Test("the five training files are read in order as CHW images; limits keep the first images")
    func readsRecords() throws {
        let (root, train, test) = try syntheticCIFARRoot(perFile: 3, test: 4)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let loaded = try CIFAR10.load(split: .train, root: root)
        #expect(loaded.images == train.images && loaded.labels == train.labels && loaded.count == 15)
        #expect(loaded.channels == 3 && loaded.height == 32 && loaded.width == 32 && loaded.classCount == 10)
        let t = try DatasetName.cifar10.load(.test, root: root, limit: 2)
        #expect(t.labels == Array(test.labels.prefix(2)) && t.images == Array(test.images.prefix(2 * 3072)))
        #expect(loaded.fingerprint != FashionMNIST(images: [UInt8](repeating: 0, count: 784), labels: [0]).fingerprint)
    }

    @Test("a missing, truncated or mislabelled file is one error naming the file")
    func badFiles() throws {
        let (root, _, _) = try syntheticCIFARRoot(perFile: 2, test: 2)
        defer { try? FileManager.default.removeItem(atPath: root) }
        func message(_ split: DatasetSplit) -> String {
            do { _ = try CIFAR10.load(split: split, root: root); return "" } catch { return "\(error)" }
        }
        let third = root + "/data_batch_3.bin", testFile = root + "/test_batch.bin"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: third))
        try bytes.prefix(bytes.count - 5).write(to: URL(fileURLWithPath: third))
        #expect(message(.train).contains(third) && message(.train).contains("3073-byte records"))
        try FileManager.default.removeItem(atPath: third)
        #expect(message(.train).contains(third) && message(.train).contains("no such file"))
        var test = try Data(contentsOf: URL(fileURLWithPath: testFile))
        test[3073] = 10  // the second record's label
        try test.write(to: URL(fileURLWithPath: testFile))
        #expect(message(.test).contains(testFile) && message(.test).contains("record 1 has label 10"))
        // Fuzzing found Foundation's Data(contentsOf:) leaking on an empty file; it is read with POSIX calls now.
        try Data().write(to: URL(fileURLWithPath: testFile))
        #expect(message(.test).contains(testFile) && message(.test).contains("has 0 bytes"))
        try FileManager.default.createDirectory(atPath: testFile + ".d", withIntermediateDirectories: true)
        try FileManager.default.removeItem(atPath: testFile)
        try FileManager.default.moveItem(atPath: testFile + ".d", toPath: testFile)
        #expect(message(.test).contains(testFile) && message(.test).contains("not a regular file"))
    }

    @Test("batches are 3-channel, normalized per channel, and every channel gets the same crop and flip")
    func batches() throws {
        // Three identical planes: after augmentation, un-normalizing each
        // channel must give the same raw byte at every pixel.
        var images = [UInt8](repeating: 0, count: 4 * 3072)
        for n in 0..<4 { for p in 0..<1024 { for c in 0..<3 { images[n * 3072 + c * 1024 + p] = UInt8((p * 7 + n) % 251) } } }
        let data = CIFAR10(images: images, labels: [1, 2, 3, 4])
        for augment in [false, true] {
            let loader = DataLoader(dataset: data, batchSize: 4, shuffle: false, augment: augment, seed: 5, prefetch: 0)
            let batch = try #require(Array(loader.batches(epoch: 0)).first)
            #expect(batch.channels == 3 && batch.height == 32 && batch.width == 32 && batch.images.count == 4 * 3072)
            var moved = 0
            for n in 0..<4 {
                for p in 0..<1024 {
                    let raw = (0..<3).map { c in
                        ((batch.images[n * 3072 + c * 1024 + p] * CIFAR10.stds[c] + CIFAR10.means[c]) * 255).rounded()
                    }
                    #expect(raw[0] == raw[1] && raw[1] == raw[2])
                    if raw[0] != Float(images[n * 3072 + p]) { moved += 1 }
                }
            }
            #expect(augment ? moved > 0 : moved == 0)
        }
    }

    @Test("train --dataset cifar10 builds a 3-channel model; ptq and eval --int8 run on it; other data is refused")
    func commands() throws {
        let (root, _, _) = try syntheticCIFARRoot()
        let dir = temporaryDirectory("cifar-run")
        defer { try? FileManager.default.removeItem(atPath: root); try? FileManager.default.removeItem(atPath: dir) }
        let common = ["--dataset", "cifar10", "--data-root", root, "--quiet"]
        let train = try Train.parse(["--config", "tiny", "--epochs", "2", "--batch-size", "32", "--val-split", "64",
                                     "--out", dir + "/fp32"] + common).execute()
        #expect(train.summaries.count == 2 && train.summaries[1].trainLoss < train.summaries[0].trainLoss, "training loss falls")
        #expect((train.top1 ?? 0) > 0.3, "colour bands are learnable: top-1 \(train.top1 ?? 0)")
        let last = try #require(train.checkpoint)
        #expect(try Checkpoint.loadModel(last).config.inChannels == 3)

        let ptq = try PTQ.parse(["--checkpoint", last, "--calib-images", "64", "--out", dir + "/int8.safetensors"] + common).execute()
        #expect(ptq.top1 == train.top1 && ptq.engineAgreement ?? 0 >= 0.99)
        let int8 = try Eval.parse(["--int8", dir + "/int8.safetensors"] + common).execute()
        #expect(int8.int8Top1 == ptq.int8Top1)

        // Resuming under another dataset contradicts the run.
        #expect(throws: (any Error).self) { _ = try Train.parse(["--resume", dir + "/fp32", "--dataset", "fashion-mnist", "--quiet"]).execute() }
        // A grey model on colour images: one clear line, naming both.
        #expect {
            _ = try Eval.parse(["--checkpoint", shippedCheckpoints + "/tiny-qarepvgg.safetensors"] + common).execute()
        } throws: { error in
            let text = "\(error)"
            return text.contains("1-channel") && text.contains("cifar10 has 3")
        }
    }
}
