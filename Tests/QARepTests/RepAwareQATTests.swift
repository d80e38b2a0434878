import Foundation
import QARep
import Testing

/// Rep-aware QAT (`QuantizedNet.Form.multiBranch`): every block keeps its
/// branches, and the kernel they merge into is what gets fake-quantized.
@Suite("Rep-aware QAT: the multi-branch form", .serialized)
struct RepAwareQATTests {
    @Test("merged branches give every branch parameter its gradient, as finite differences do", arguments: BlockKind.allCases)
    func mergedBranchGradients(kind: BlockKind) {
        var rng = SplitMix64(seed: 5)
        let block = RepVGGBlock(kind: kind, inChannels: 4, outChannels: 4, stride: 1, rng: &rng)
        randomizeBatchNorms(block, seed: 6)
        let branches = MergedBranches(of: block, copying: true)
        // Every parameter of the block but the post-BN's is a parameter of the branches.
        let blockKeys = Set(block.parameters().map(\.key).filter { !$0.hasPrefix("bn.") })
        #expect(Set(branches.parameters().map(\.key)) == blockKeys)
        let x = randomTensor([2, 4, 5, 5], seed: 7)
        let results = compareGradients(branches.parameters().map { ($0.key, $0.tensor) }) {
            let (w, b) = branches.kernelAndBias()
            return conv2d(x, weight: w, bias: b, stride: 1, padding: 1)
        }
        for r in results {
            #expect(r.error < 1e-2, "\(r)")
            #expect(maxAbs(r.analytic) > 0, "\(r.name) gets no gradient")
        }
        // The copy is independent of the block it came from.
        branches.dense.conv.weight.assign([Float](repeating: 0, count: branches.dense.conv.weight.count))
        #expect(maxAbs(block.dense.conv.weight.data) > 0)
    }

    @Test("before any step, the multi-branch form computes exactly what the merged form does", arguments: [BlockKind.repvgg, .qarepvgg])
    func sameAsMergedForm(kind: BlockKind) throws {
        let (fp32, data) = try smallTrainedQARepVGG(block: kind)
        let calibration = data.subset(0..<64)
        let multi = try QuantizedNet(from: fp32, form: .multiBranch), merged = try QuantizedNet(from: fp32, form: .postBN)
        #expect(multi.form == .multiBranch && merged.form == (kind == .qarepvgg ? .postBN : .folded))
        #expect(multi.units.allSatisfy { $0.conv == nil } && multi.hasPostBN == merged.hasPostBN)
        try multi.calibrate(on: calibration)
        try merged.calibrate(on: calibration)
        multi.eval(); merged.eval()
        let batch = try #require(Array(DataLoader(dataset: calibration, batchSize: 16, shuffle: false, augment: false, seed: 0).batches(epoch: 0)).first)
        let x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
        noGrad { #expect(multi(x).data == merged(x).data) }
        #expect(try multi.convertToInt8() == merged.convertToInt8())
    }

    @Test("rep-aware QAT trains every branch with fixed branch statistics; its eval mode equals the converted integer model",
          arguments: [BlockKind.repvgg, .qarepvgg])
    func trainsEveryBranch(kind: BlockKind) throws {
        let (fp32, data) = try smallTrainedQARepVGG(block: kind)
        var options = QATOptions()
        options.epochs = 1; options.warmupEpochs = 0; options.batchSize = 32; options.calibrationImages = 64
        options.form = .multiBranch
        let run = try QATRun(from: fp32, source: "test", options: options, calibration: data.subset(0..<64),
                             trainImages: data.count, directory: nil, progress: ProgressReporter(enabled: false))
        #expect(run.model.form == .multiBranch && run.state.form == .multiBranch)
        let before = run.model.stateDict().map { (key: $0.key, data: $0.tensor.data) }
        try run.run(train: data, test: nil)
        let after = Dictionary(uniqueKeysWithValues: run.model.stateDict().map { ($0.key, $0.tensor.data) })
        let branchEntries = before.filter { $0.key.contains(".branches.") }
        #expect(branchEntries.count > 0)
        for (key, data) in branchEntries {
            // QARepVGG's post-BN normalizes with batch statistics in training,
            // which removes any per-channel shift before it: the 3x3 branch's BN
            // bias gets no gradient (as in FP32 training of the same block).
            if kind == .qarepvgg && key.hasSuffix("rbr_dense.bn.bias") { continue }
            if key.hasSuffix("running_mean") || key.hasSuffix("running_var") {
                #expect(after[key] == data, "\(key): branch BN statistics stay fixed")
            } else {
                #expect(after[key] != data, "\(key) did not train")
            }
        }

        let int8 = try run.model.convertToInt8()
        run.model.eval()
        expectSameCodes(run.model, int8)
        let evalData = syntheticBands(count: 200, seed: 22)
        let fake = evaluate(run.model, on: evalData), engine = evaluate(int8, on: evalData)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(evalData.count) >= 0.99, "agreement \(same)/\(evalData.count)")
    }

    @Test("a post-BN added to RepVGG starts as the identity of the calibration images, in both forms",
          arguments: [QuantizedNet.Form.postBN, .multiBranch])
    func addedPostBNStartsAsIdentity(form: QuantizedNet.Form) throws {
        let (fp32, data) = try smallTrainedQARepVGG(block: .repvgg)
        let calibration = data.subset(0..<64)
        let plain = try QuantizedNet(from: fp32, form: form)
        let added = try QuantizedNet(from: fp32, form: form, addingPostBN: true)
        #expect(!plain.hasPostBN && added.hasPostBN && added.addedPostBN && added.form == form)
        try added.initializeAddedPostBN(on: calibration)
        for unit in added.units {
            let bn = try #require(unit.postBN)
            // gamma = sqrt(var + eps), beta = mean: the fold scale is 1, the shift 0.
            for c in 0..<bn.channels {
                #expect(abs(bn.weight.data[c] - (bn.runningVar.data[c] + bn.eps).squareRoot()) <= 1e-6 * bn.weight.data[c])
                #expect(bn.bias.data[c] == bn.runningMean.data[c])
            }
            #expect(bn.runningVar.data.contains { $0 > 0 } && bn.runningMean.data.contains { $0 != 0 }, "statistics of real outputs")
        }
        let batch = try #require(Array(DataLoader(dataset: calibration, batchSize: 64, shuffle: false, augment: false, seed: 0).batches(epoch: 0)).first)
        let x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
        noGrad {
            // Quantizers bypassed (as before calibration): evaluation computes the model without the BNs.
            plain.eval(); added.eval()
            let reference = plain(x).data, logits = added(x).data
            #expect(zip(reference, logits).allSatisfy { abs($0 - $1) <= 1e-4 * max(1, abs($0)) })
            // Training normalizes with the batch's own statistics, here exactly
            // the calibration images' (biased variance, as the running copy
            // was set): still the same logits, to rounding.
            added.train()
            let trained = added(x).data
            #expect(zip(reference, trained).allSatisfy { abs($0 - $1) <= 1e-3 * max(1, abs($0)) })
        }
    }

    @Test("QAT with a post-BN added to RepVGG trains it with batch statistics, converts it folded, and resumes bit for bit")
    func addedPostBNRun() throws {
        let (fp32, data) = try smallTrainedQARepVGG(block: .repvgg)
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 0; options.batchSize = 32; options.calibrationImages = 64
        options.form = .multiBranch; options.addsPostBN = true
        let quiet = ProgressReporter(enabled: false)
        let dirA = temporaryDirectory("added-bn-a"), dirB = temporaryDirectory("added-bn-b")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let straight = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                                  trainImages: data.count, directory: dirA, progress: quiet)
        let initial = straight.model.units.map { $0.postBN!.runningMean.data }
        try straight.run(train: data, test: nil)
        #expect(zip(initial, straight.model.units.map { $0.postBN!.runningMean.data }).allSatisfy { $0 != $1 },
                "every added BN tracked batch statistics")
        // The file is the multi-branch form with a BN per unit, folded at conversion.
        let saved = try QATRun.loadModel(from: dirA + "/last.safetensors")
        #expect(saved.addedPostBN && saved.form == .multiBranch)
        let int8 = try Int8Model.read(from: dirA + "/int8.safetensors")
        expectSameCodes(saved, int8)
        let test = syntheticBands(count: 200, seed: 23)
        let fake = evaluate(saved, on: test), engine = evaluate(int8, on: test)
        #expect(zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count >= 198)
        // It keeps what the FP32 model knows of the bands (two epochs at LR 0.01 on 256 images).
        let reference = evaluate(fp32, on: test).top1
        #expect(fake.top1 >= reference - 0.05, "QAT \(fake.top1), FP32 \(reference) on the bands")

        let first = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                               trainImages: data.count, directory: dirB, progress: quiet)
        try first.run(train: data, test: nil, until: 1)
        let resumed = try QATRun.resume(from: dirB, progress: quiet)
        try resumed.run(train: data, test: nil)
        for (a, b) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(a.key == b.key && a.tensor.data == b.tensor.data, "\(a.key) differs after resume")
        }
    }

    @Test("a post-BN is added only where there is none, and not to the folded form")
    func addedPostBNRefusals() throws {
        let (repvgg, _) = try smallTrainedQARepVGG(block: .repvgg)
        #expect { _ = try QuantizedNet(from: repvgg, form: .folded, addingPostBN: true) } throws: { "\($0)".contains("folded form") }
        let (qarepvgg, data) = try smallTrainedQARepVGG(block: .qarepvgg)
        #expect { _ = try QuantizedNet(from: qarepvgg, form: .postBN, addingPostBN: true) } throws: { "\($0)".contains("post-BN already") }
        let own = try QuantizedNet(from: qarepvgg, form: .postBN)
        #expect { try own.initializeAddedPostBN(on: data) } throws: { "\($0)".contains("not added") }
    }

    @Test("a deployed model has no branches to keep, and PTQ's tools refuse the multi-branch form")
    func refusals() throws {
        let (fp32, data) = try smallTrainedQARepVGG(block: .repvgg)
        #expect { _ = try QuantizedNet(from: fp32.deployed(), form: .multiBranch) } throws: { "\($0)".contains("deployed") }
        let multi = try QuantizedNet(from: fp32, form: .multiBranch)
        #expect { try multi.equalizeCrossLayer() } throws: { "\($0)".contains("folded (PTQ) form") }
        try multi.calibrate(on: data.subset(0..<64))
        #expect { _ = try multi.correctBias(on: data.subset(0..<64)) } throws: { "\($0)".contains("multi-branch form") }
        #expect { _ = try multi.adaRound(on: data.subset(0..<64)) } throws: { "\($0)".contains("multi-branch form") }
    }
}
