import QARep
import QARepKernels
import Testing

// The integer engine on every kernel path this CPU runs: the VNNI path keeps
// activations in padded NHWC bytes from layer to layer, the others go through
// NCHW codes; the logits must be the same bits.

/// A tiny QARepVGG with random weights, calibrated on 32 random images.
private func quantizedTiny(seed: UInt64, qconfig: QConfig, rng: inout SplitMix64) throws -> Int8Model {
    let model = try RepVGGNet(config: .named("tiny", block: .qarepvgg), seed: seed)
    model.eval()
    let calibration = FashionMNIST(images: (0..<(32 * 784)).map { _ in UInt8(rng.next() % 256) },
                                   labels: [UInt8](repeating: 0, count: 32))
    return try postTrainingQuantize(model.deployed(), calibration: calibration, qconfig: qconfig).convertToInt8()
}

@Suite("Integer engine: every kernel path gives the same logits")
struct Int8EnginePathTests {
    @Test("signed and unsigned activations, batch 1 and 3, 28x28 and an odd size",
          arguments: [QConfig.tensorRT, QConfig.unsignedActivations])
    func pathsAgree(_ qconfig: QConfig) throws {
        var rng = SplitMix64(seed: 8)
        let int8 = try quantizedTiny(seed: 7, qconfig: qconfig, rng: &rng)
        for shape in [[1, 1, 28, 28], [3, 1, 28, 28], [2, 1, 19, 23]] {
            let x = Tensor.uniform(shape, bound: 2, rng: &rng, requiresGrad: false)
            let logits = try IntegerKernelPath.available.map { try Int8Engine(int8, threads: 2, path: $0).logits(x).data }
            #expect(logits.allSatisfy { $0 == logits[0] }, "\(shape): \(IntegerKernelPath.available)")
        }
    }

    /// 64 images of tiny: 64 x 128 channels x 10 classes is past the bound from
    /// which the head (pooling and linear layer) is split between the workers.
    @Test("one thread and two give the same logits, the head split by image on two")
    func threadsAgree() throws {
        var rng = SplitMix64(seed: 12)
        let int8 = try quantizedTiny(seed: 11, qconfig: .tensorRT, rng: &rng)
        let x = Tensor.uniform([64, 1, 14, 14], bound: 2, rng: &rng, requiresGrad: false)
        for path in IntegerKernelPath.available {
            let one = try Int8Engine(int8, threads: 1, path: path).logits(x).data
            let two = try Int8Engine(int8, threads: 2, path: path).logits(x).data
            #expect(one == two, "\(path)")
            #expect(Set(one).count > 64, "\(path): logits differ between images")
        }
    }

    @Test("one engine reused across shapes and inputs gives a fresh engine's logits (kept buffers, their zero codes intact)",
          arguments: [QConfig.tensorRT, QConfig.unsignedActivations])
    func reusedAcrossCalls(_ qconfig: QConfig) throws {
        var rng = SplitMix64(seed: 10)
        let int8 = try quantizedTiny(seed: 9, qconfig: qconfig, rng: &rng)
        for path in IntegerKernelPath.available {
            let engine = try Int8Engine(int8, threads: 2, path: path)
            // More shapes than the engine keeps plans for, then the first shapes again with new values.
            for shape in [[4, 1, 28, 28], [1, 1, 28, 28], [2, 1, 19, 23], [3, 1, 28, 28], [5, 1, 14, 14],
                          [4, 1, 28, 28], [1, 1, 28, 28], [4, 1, 28, 28]] {
                let x = Tensor.uniform(shape, bound: 2, rng: &rng, requiresGrad: false)
                let fresh = try Int8Engine(int8, threads: 2, path: path).logits(x).data
                #expect(engine.logits(x).data == fresh, "\(path) \(shape)")
            }
        }
    }
}
