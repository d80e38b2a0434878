import Foundation
import QARep
import Testing

/// A fresh temporary directory, removed by the caller.
func temporaryDirectory(_ name: String = #function) -> String {
    let dir = NSTemporaryDirectory() + "qarep-\(name.filter(\.isLetter))-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// A synthetic ten-class dataset of `count` 28x28 images whose class sets
/// the brightness of one of ten horizontal bands: learnable in a few steps.
func syntheticBands(count: Int, seed: UInt64) -> FashionMNIST {
    var rng = SplitMix64(seed: seed)
    var images = [UInt8](repeating: 0, count: count * 784), labels = [UInt8](repeating: 0, count: count)
    for n in 0..<count {
        let label = Int(rng.next() % 10)
        labels[n] = UInt8(label)
        for p in 0..<784 {
            let band = (p / 28) * 10 / 28
            let base: UInt8 = band == label ? 200 : 30
            images[n * 784 + p] = base &+ UInt8(rng.next() % 40)
        }
    }
    return FashionMNIST(images: images, labels: labels)
}

@Suite("Checkpoints: save, strict load, resume")
struct CheckpointTests {
    let config = ModelConfig(widths: [4, 4, 8, 8, 8], blocks: [1, 1, 2, 1, 1], block: .qarepvgg)

    @Test("save and load round-trips every tensor and the config", arguments: BlockKind.allCases)
    func roundTrip(kind: BlockKind) throws {
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        var cfg = config; cfg.block = kind
        let model = try RepVGGNet(config: cfg, seed: 1)
        randomizeBatchNorms(model, seed: 2)
        let path = dir + "/m.safetensors"
        try Checkpoint.save(model, to: path)
        let loaded = try Checkpoint.loadModel(path)
        #expect(loaded.config == cfg)
        let a = model.stateDict(), b = loaded.stateDict()
        #expect(a.map(\.key) == b.map(\.key))
        for (x, y) in zip(a, b) { #expect(x.tensor.data == y.tensor.data, "\(x.key)") }

        // The deployed form round-trips too, and is recognised as deployed.
        let deployed = model.deployed()
        try Checkpoint.save(deployed, to: dir + "/d.safetensors")
        let d = try Checkpoint.loadModel(dir + "/d.safetensors")
        #expect(d.isDeployed)
        #expect(d.stateDict().map(\.tensor.data) == deployed.stateDict().map(\.tensor.data))
    }

    @Test("PyTorch's num_batches_tracked is written as int64 and read back")
    func numBatchesTracked() throws {
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try RepVGGNet(config: config, seed: 1)
        (model.stage0 as! RepVGGBlock).postBN!.numBatchesTracked = 7
        try Checkpoint.save(model, to: dir + "/m.safetensors")
        let file = try SafeTensorsFile.read(from: dir + "/m.safetensors")
        #expect(try file.tensors["stage0.bn.num_batches_tracked"]?.int64() == [7])
        let loaded = try Checkpoint.loadModel(dir + "/m.safetensors")
        #expect((loaded.stage0 as! RepVGGBlock).postBN!.numBatchesTracked == 7)
    }

    /// Saves a valid checkpoint, lets `edit` damage its tensors, and returns the load error.
    func loadError(_ edit: (inout SafeTensorsFile) -> Void) throws -> String {
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try RepVGGNet(config: config, seed: 1)
        let path = dir + "/bad.safetensors"
        try Checkpoint.save(model, to: path)
        var file = try SafeTensorsFile.read(from: path)
        edit(&file)
        try file.write(to: path)
        do {
            _ = try Checkpoint.loadModel(path)
        } catch {
            return String(describing: error)
        }
        Issue.record("loading the damaged checkpoint did not fail")
        return ""
    }

    @Test("a missing key is an error that names it")
    func missingKey() throws {
        let msg = try loadError { $0.tensors["stage2.1.rbr_dense.bn.running_var"] = nil }
        #expect(msg.contains("missing key stage2.1.rbr_dense.bn.running_var"), "\(msg)")
    }

    @Test("an unexpected key is an error that names it")
    func unexpectedKey() throws {
        let msg = try loadError { $0.tensors["stage9.rbr_dense.conv.weight"] = SafeTensor(floats: [1], shape: [1]) }
        #expect(msg.contains("unexpected key stage9.rbr_dense.conv.weight"), "\(msg)")
    }

    @Test("a shape mismatch is an error that names the key and both shapes")
    func shapeMismatch() throws {
        let msg = try loadError { $0.tensors["linear.weight"] = SafeTensor(floats: [Float](repeating: 0, count: 90), shape: [10, 9]) }
        #expect(msg.contains("linear.weight") && msg.contains("[10, 9]") && msg.contains("[10, 8]"), "\(msg)")
    }

    @Test("a config that does not match the weights is refused")
    func configMismatch() throws {
        let msg = try loadError { file in
            var wrong = config
            wrong.widths = [4, 4, 8, 8, 16]
            file.metadata["model"] = String(decoding: try! JSONEncoder().encode(wrong), as: UTF8.self)
        }
        #expect(msg.contains("shape mismatch") || msg.contains("missing key"), "\(msg)")
    }

    @Test("NaN weights and wrong dtypes are refused")
    func badValues() throws {
        let nan = try loadError { $0.tensors["linear.bias"] = SafeTensor(floats: [Float](repeating: .nan, count: 10), shape: [10]) }
        #expect(nan.contains("linear.bias") && nan.contains("NaN"), "\(nan)")
        let dtype = try loadError { $0.tensors["linear.bias"] = SafeTensor(int32: [Int32](repeating: 0, count: 10), shape: [10]) }
        #expect(dtype.contains("linear.bias") && dtype.contains("I32"), "\(dtype)")
    }

    @Test("a truncated file is refused with its name; a failed load changes nothing")
    func truncated() throws {
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try RepVGGNet(config: config, seed: 1)
        let path = dir + "/t.safetensors"
        try Checkpoint.save(model, to: path)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: path))
        #expect(throws: CheckpointError.self) { try Checkpoint.loadModel(path) }
        do { _ = try Checkpoint.loadModel(path) } catch { #expect(String(describing: error).contains("t.safetensors")) }

        // Strict load is all-or-nothing: a file with one bad key leaves the model untouched.
        let target = try RepVGGNet(config: config, seed: 2)
        let before = target.stateDict().map(\.tensor.data)
        var file = SafeTensorsFile(tensors: Checkpoint.stateTensors(of: try RepVGGNet(config: config, seed: 3)))
        file.tensors["linear.bias"] = nil
        #expect(throws: CheckpointError.self) { try Checkpoint.load(file, into: target, source: "x") }
        #expect(target.stateDict().map(\.tensor.data) == before)
    }

    @Test("2 epochs straight equal 1 epoch, resume, 1 epoch: bit-identical weights and optimizer state")
    func resumeIsExact() throws {
        let train = syntheticBands(count: 96, seed: 11), test = syntheticBands(count: 32, seed: 12)
        var options = TrainingRunOptions(model: config, epochs: 2)
        options.batchSize = 16
        options.learningRate = 0.05
        options.warmupEpochs = 1
        options.seed = 5
        let quiet = ProgressReporter(enabled: false)

        let dirA = temporaryDirectory("a"), dirB = temporaryDirectory("b")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let straight = try TrainingRun(options: options, trainImages: train.count, directory: dirA, progress: quiet)
        try straight.run(train: train, test: test)

        let interrupted = try TrainingRun(options: options, trainImages: train.count, directory: dirB, progress: quiet)
        try interrupted.run(train: train, test: test, until: 1)
        let resumed = try TrainingRun.resume(from: dirB, progress: quiet)
        #expect(resumed.trainer.epoch == 1)
        try resumed.run(train: train, test: test)

        let a = straight.model.stateDict(), b = resumed.model.stateDict()
        for (x, y) in zip(a, b) { #expect(x.tensor.data == y.tensor.data, "\(x.key) differs after resume") }
        #expect(straight.state.step == resumed.state.step)
        let fa = try SafeTensorsFile.read(from: dirA + "/last.safetensors"), fb = try SafeTensorsFile.read(from: dirB + "/last.safetensors")
        #expect(fa.tensors == fb.tensors, "final checkpoints (weights and optimizer state) differ")
    }

    @Test("a run stopped mid-epoch (checkpoints every 4 steps, stop after step 9) resumes bit-identically, epoch summary and metrics log included")
    func midEpochResume() throws {
        let train = syntheticBands(count: 96, seed: 13), test = syntheticBands(count: 32, seed: 14)
        var options = TrainingRunOptions(model: config, epochs: 2)
        options.batchSize = 16; options.learningRate = 0.05; options.warmupEpochs = 1; options.seed = 6
        let quiet = ProgressReporter(enabled: false)
        let dirA = temporaryDirectory("ma"), dirB = temporaryDirectory("mb")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }

        let straight = try TrainingRun(options: options, trainImages: train.count, directory: dirA, progress: quiet)
        straight.controls.metricsEvery = 2
        let all = try straight.run(train: train, test: test)

        // 6 steps per epoch: step 9 is in the middle of epoch 2.
        let first = try TrainingRun(options: options, trainImages: train.count, directory: dirB, progress: quiet)
        first.controls.metricsEvery = 2
        first.controls.checkpointEvery = 4
        first.controls.shouldStop = { [unowned first] in first.trainer.step == 9 }
        #expect(throws: RunInterrupted.self) { try first.run(train: train, test: test) }
        let saved = try #require(try Checkpoint.read(dirB + "/last.safetensors").training)
        #expect(saved.step == 9 && saved.epoch == 1 && saved.totals?.seen == 3 * 16, "checkpoint at the stop: \(saved.step)")
        #expect(saved.data?.trainFingerprint == train.fingerprint)

        let resumed = try TrainingRun.resume(from: dirB, progress: quiet)
        resumed.controls.metricsEvery = 2
        #expect(resumed.trainer.step == 9 && resumed.trainer.epoch == 1)
        let rest = try resumed.run(train: train, test: test)
        for (x, y) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(x.tensor.data == y.tensor.data, "\(x.key) differs after a mid-epoch resume")
        }
        let fa = try SafeTensorsFile.read(from: dirA + "/last.safetensors"), fb = try SafeTensorsFile.read(from: dirB + "/last.safetensors")
        #expect(fa.tensors == fb.tensors, "final checkpoints (weights and optimizer state) differ")
        // The resumed epoch reports what the uninterrupted one did (its time aside).
        #expect(rest.count == 1 && rest[0].trainLoss == all[1].trainLoss && rest[0].trainAccuracy == all[1].trainAccuracy)
        #expect(rest[0].test?.top1 == all[1].test?.top1)
        // The metrics logs hold the same records, one per step logged and per epoch, none twice.
        func records(_ dir: String) throws -> [String] {
            try String(contentsOfFile: dir + "/metrics.jsonl", encoding: .utf8).split(separator: "\n").map { line in
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
                return "\(object["kind"]!) \(object["step"]!) \(object["loss"]!)"
            }
        }
        #expect(try records(dirA) == records(dirB))
        // Steps 2, 4, 8 and 10 (6 and 12 end their epochs, which have a record of their own).
        let logged = try records(dirA)
        #expect(logged.count == 4 + 2, "\(logged)")
    }

    @Test("best.safetensors is the epoch with the best validation top-1; the test set only reports; no validation, no best")
    func bestByValidation() throws {
        let train = syntheticBands(count: 96, seed: 17), validation = syntheticBands(count: 40, seed: 18)
        let test = syntheticBands(count: 40, seed: 19)
        var options = TrainingRunOptions(model: config, epochs: 3)
        options.batchSize = 16; options.learningRate = 0.05
        let quiet = ProgressReporter(enabled: false)
        let dir = temporaryDirectory("bv"), plain = temporaryDirectory("bn")
        defer { try? FileManager.default.removeItem(atPath: dir); try? FileManager.default.removeItem(atPath: plain) }
        let run = try TrainingRun(options: options, trainImages: train.count, directory: dir, progress: quiet)
        let summaries = try run.run(train: train, validation: validation, test: test)
        let best = summaries.max { ($0.validation!.top1, -$0.epoch) < ($1.validation!.top1, -$1.epoch) }!
        #expect(run.state.bestEpoch == best.epoch && run.state.bestTop1 == best.validation!.top1)
        #expect(run.state.lastTop1 == summaries.last!.test!.top1)
        let saved = try #require(try Checkpoint.read(dir + "/best.safetensors").training)
        #expect(saved.epoch == best.epoch)

        let noValidation = try TrainingRun(options: options, trainImages: train.count, directory: plain, progress: quiet)
        try noValidation.run(train: train, test: test)
        #expect(!FileManager.default.fileExists(atPath: plain + "/best.safetensors"))
        #expect(noValidation.state.bestEpoch == nil)
    }

    @Test("resuming on another training set is refused")
    func resumeChecksData() throws {
        let train = syntheticBands(count: 64, seed: 15)
        var options = TrainingRunOptions(model: config, epochs: 2)
        options.batchSize = 16
        let dir = temporaryDirectory("md"); defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try TrainingRun(options: options, trainImages: train.count, directory: dir, progress: ProgressReporter(enabled: false))
        try run.run(train: train, test: nil, until: 1)
        let resumed = try TrainingRun.resume(from: dir, progress: ProgressReporter(enabled: false))
        #expect {
            try resumed.run(train: syntheticBands(count: 64, seed: 16), test: nil)
        } throws: { error in "\(error)".contains("not the one this run started with") }
    }

    @Test("a new run refuses a directory that already holds one")
    func refusesOverwrite() throws {
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try RepVGGNet(config: config)
        try Checkpoint.save(model, to: dir + "/last.safetensors")
        #expect(throws: CheckpointError.self) {
            _ = try TrainingRun(options: TrainingRunOptions(model: config, epochs: 1), trainImages: 100, directory: dir)
        }
    }
}
