import Foundation
import QARep
import Testing

// End-to-end training: the loss falls on a toy problem, a small network
// learns real Fashion-MNIST, runs are reproducible bit for bit, and bad
// numbers stop training with an error.

private let fashionTrainImages = FashionMNIST.defaultRoot + "/train-images-idx3-ubyte.gz"
private let fashionPresent = FileManager.default.fileExists(atPath: fashionTrainImages)

/// `count` 8x8 images of 4 classes: class k is a bright horizontal band on
/// rows 2k and 2k+1 over a noisy dark background.
private func bandDataset(count: Int, seed: UInt64) -> FashionMNIST {
    var rng = SplitMix64(seed: seed)
    var images: [UInt8] = [], labels: [UInt8] = []
    for i in 0 ..< count {
        let label = i % 4
        labels.append(UInt8(label))
        for y in 0 ..< 8 {
            for _ in 0 ..< 8 {
                let base = (y / 2 == label) ? 180 : 30
                images.append(UInt8(base + rng.uniform(below: 60)))
            }
        }
    }
    return FashionMNIST(images: images, labels: labels, height: 8, width: 8)
}

private func smallNet(seed: UInt64 = 3) -> PlainConvNet {
    PlainConvNet(widths: [8, 16], blocks: [1, 1], seed: seed)
}

private func sgd(_ model: Module, lr: Float = 0.05) -> SGD {
    SGD(groups: ParameterGroup.standard(model, weightDecay: 5e-4), learningRate: lr, momentum: 0.9)
}

private func quiet() -> ProgressReporter { ProgressReporter(enabled: false) }

@Suite("Training end to end")
struct TrainingTests {
    @Test("loss falls on a tiny synthetic problem (manual loop)")
    func lossFallsManualLoop() {
        // Three Gaussian blobs in 4-D, centred at 2 * e_k.
        var rng = SplitMix64(seed: 7)
        let n = 48
        var xs: [Float] = [], labels: [Int32] = []
        for i in 0 ..< n {
            let k = i % 3
            labels.append(Int32(k))
            for d in 0 ..< 4 { xs.append((d == k ? 2 : 0) + randomFloats(1, rng: &rng, in: -0.7 ... 0.7)[0]) }
        }
        let x = Tensor(xs, shape: [n, 4])
        let model = Sequential([Linear(4, 8, rng: &rng), ReLU(), Linear(8, 3, rng: &rng)])
        let opt = SGD(groups: ParameterGroup.standard(model, weightDecay: 0), learningRate: 0.1, momentum: 0.9)
        var losses: [Float] = []
        for _ in 0 ..< 30 {
            let loss = crossEntropy(model(x), labels: labels)
            losses.append(loss.item)
            opt.zeroGrad()
            loss.backward()
            opt.step()
        }
        #expect(losses.last! < 0.2 * losses.first!, "losses \(losses)")
        let logits = noGrad { model(x) }
        let correct = (0 ..< n).filter { i in
            let row = Array(logits.data[i * 3 ..< i * 3 + 3])
            return row.firstIndex(of: row.max()!) == Int(labels[i])
        }.count
        #expect(correct == n)
    }

    @Test("Trainer: loss falls and the network learns a synthetic image task")
    func trainerLearnsBands() throws {
        let train = bandDataset(count: 128, seed: 1), test = bandDataset(count: 64, seed: 2)
        let model = smallNet()
        let before = evaluate(model, on: test)
        let config = TrainingConfig(epochs: 3, batchSize: 16, schedule: .constant(0.05), augment: false, seed: 1)
        let trainer = Trainer(model: model, optimizer: sgd(model), config: config, progress: quiet())
        var seen: [Int] = []
        let summaries = try trainer.fit(train: train, test: test) { seen.append($0.epoch) }
        #expect(seen == [1, 2, 3])
        #expect(trainer.epoch == 3 && trainer.step == 3 * 8)
        #expect(summaries.last!.trainLoss < 0.5 * summaries.first!.trainLoss,
                "train losses \(summaries.map(\.trainLoss))")
        let after = try #require(summaries.last?.test)
        #expect(after.count == 64)
        #expect(after.top1 > 0.9, "test top-1 \(after.top1) (before training \(before.top1))")
        #expect(after.loss < before.loss)
        // evaluate() restores training mode.
        #expect(model.training)
    }

    /// The bar: one epoch on the first 2,000 training images beats 70%
    /// top-1 on the first 1,000 test images. The small conv net is tiny
    /// QARepVGG (164k parameters) with AdamW, batch 16 (125 steps, 12 of
    /// warm-up, then cosine), no augmentation; seed 0 scores 0.79. A plain
    /// three-layer conv net tops out near 0.65 in the same budget (it needs
    /// about 6,000 images or 3 epochs to pass 0.70), so it is not used here.
    @Test("Fashion-MNIST: tiny QARepVGG beats 70% after one epoch on 2,000 images",
          .enabled(if: fashionPresent, "Fashion-MNIST is not installed at \(FashionMNIST.defaultRoot)"))
    func realFashionMNIST() throws {
        let train = try FashionMNIST.load(split: .train, limit: 2000)
        let test = try FashionMNIST.load(split: .test, limit: 1000)
        #expect(train.count == 2000 && test.count == 1000)
        let model = try RepVGGNet(config: ModelConfig.named("tiny", block: .qarepvgg), seed: 0)
        let before = evaluate(model, on: test)
        let config = TrainingConfig(epochs: 1, batchSize: 16,
                                    schedule: .warmupCosine(base: 3e-3, warmup: 12, total: 125),
                                    augment: false, seed: 0)
        let optimizer = AdamW(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: 3e-3)
        let trainer = Trainer(model: model, optimizer: optimizer, config: config, progress: quiet())
        let summary = try trainer.trainEpoch(on: train, test: test)
        let result = try #require(summary.test)
        #expect(trainer.step == 125)
        #expect(result.count == 1000)
        #expect(result.top1 > 0.70, "top-1 \(result.top1) (before training \(before.top1)), train loss \(summary.trainLoss)")
        #expect(result.loss < 0.75 * before.loss, "test loss \(result.loss), before training \(before.loss)")
    }

    @Test("two runs with the same seed give bit-identical weights")
    func determinism() throws {
        let train = bandDataset(count: 96, seed: 4)
        func run(seed: UInt64) throws -> (state: [[UInt32]], losses: [Double]) {
            let model = smallNet(seed: seed)
            // Augmentation and shuffling both draw from the seed.
            let config = TrainingConfig(epochs: 2, batchSize: 16,
                                        schedule: .warmupCosine(base: 0.05, warmup: 3, total: 12),
                                        augment: true, seed: seed)
            let trainer = Trainer(model: model, optimizer: sgd(model), config: config, progress: quiet())
            let summaries = try trainer.fit(train: train)
            return (model.stateDict().map { $0.tensor.data.map(\.bitPattern) }, summaries.map(\.trainLoss))
        }
        let a = try run(seed: 11), b = try run(seed: 11), c = try run(seed: 12)
        #expect(a.state == b.state)
        #expect(a.losses == b.losses)
        #expect(a.state != c.state, "a different seed should give different weights")
    }

    @Test("a NaN loss stops trainEpoch with TrainingError before the update")
    func nanRegularizerThrows() throws {
        let train = bandDataset(count: 32, seed: 5)
        let model = smallNet()
        let before = model.parameters().map { $0.tensor.data }
        let config = TrainingConfig(epochs: 1, batchSize: 16, schedule: .constant(0.05), augment: false)
        let trainer = Trainer(model: model, optimizer: sgd(model), config: config,
                              regularizer: { Tensor(scalar: .nan) }, progress: quiet())
        let error = try #require(throws: TrainingError.self) { try trainer.trainEpoch(on: train) }
        #expect(error.description.contains("nan"), "message: \(error.description)")
        #expect(model.parameters().map { $0.tensor.data } == before, "parameters changed by the failing step")
        #expect(trainer.step == 0 && trainer.epoch == 0)

        // An infinite loss is refused as well.
        trainer.regularizer = { Tensor(scalar: .infinity) }
        #expect(throws: TrainingError.self) { try trainer.trainEpoch(on: train) }
    }

    @Test("a huge learning rate blows up and is caught")
    func hugeLearningRateThrows() {
        let train = bandDataset(count: 256, seed: 6)
        let model = smallNet()
        let config = TrainingConfig(epochs: 1, batchSize: 16, schedule: .constant(1e9), augment: false)
        let trainer = Trainer(model: model, optimizer: sgd(model, lr: 1e9), config: config, progress: quiet())
        #expect(throws: TrainingError.self) { try trainer.trainEpoch(on: train) }
        #expect(model.parameters().allSatisfy { $0.tensor.data.allSatisfy { !$0.isNaN } },
                "the failing step must not write its NaN update")
    }

    @Test("a training set smaller than one batch is an error, not an empty epoch")
    func tooSmallForABatch() {
        let model = smallNet()
        let config = TrainingConfig(epochs: 1, batchSize: 64, schedule: .constant(0.05))
        let trainer = Trainer(model: model, optimizer: sgd(model), config: config, progress: quiet())
        #expect(throws: TrainingError.self) { try trainer.trainEpoch(on: bandDataset(count: 10, seed: 7)) }
    }
}
