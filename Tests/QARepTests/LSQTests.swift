import Foundation
import QARep
import Testing

@Suite("LSQ: learned step size quantization (Esser et al. 2020)", .serialized)
struct LSQTests {
    /// LSQ's step gradient is the exact derivative of the surrogate
    /// `s * (x / s + c)` where the rounded level lies in the range, `c =
    /// round(x / s) - x / s` held at its value (rounding straight-through),
    /// and `s * (qmin - z)` or `s * (qmax - z)` where it is clipped (the range
    /// test on the rounded level, as PyTorch's learnable fake quantization has
    /// it), `z` the fixed zero point. Central differences of that surrogate
    /// check it, for int8 symmetric steps and for unsigned 4-bit codes with
    /// zero points (the `--unsigned-activations` scheme).
    @Test("gradients: straight-through for x, the surrogate's derivative for the step, per tensor and per channel, symmetric and with zero points",
          arguments: [1, 3], [false, true])
    func gradients(channels: Int, unsigned: Bool) {
        let (qmin, qmax): (Int32, Int32) = unsigned ? (0, 15) : (-127, 127)
        let zeroPoints: [Int32]? = unsigned ? (0..<channels).map { Int32(2 * $0 + 1) } : nil
        let x = randomTensor([channels, 40], seed: 60, in: -3 ... 3)
        let base: Float = unsigned ? 0.2 : 0.015
        let step = Tensor((0..<channels).map { base + 0.003 * Float($0) }, shape: [channels], requiresGrad: true)
        let r = randomFloats(x.count, seed: 61)
        let y = learnedStepFakeQuantize(x, step: step, zeroPoints: zeroPoints, qmin: qmin, qmax: qmax, gradScale: 1)
        y.backward(gradient: r)
        let per = x.count / channels
        for c in 0..<channels {
            let s0 = Double(step.data[c]), z = Double(zeroPoints?[c] ?? 0)
            let xs = (0..<per).map { Double(x.data[c * per + $0]) }, rs = (0..<per).map { Double(r[c * per + $0]) }
            // Per element: the held offset inside the range, or the clipped level relative to z.
            let regions = xs.map { v -> (offset: Double, clipped: Double?) in
                let u = v / s0, level = u.rounded(.toNearestOrEven) + z
                return level < Double(qmin) ? (0, Double(qmin) - z) : level > Double(qmax) ? (0, Double(qmax) - z) : (level - z - u, nil)
            }
            func surrogate(_ s: Double) -> Double {
                var sum = 0.0
                for ((v, weight), region) in zip(zip(xs, rs), regions) {
                    sum += weight * s * (region.clipped ?? (v / s + region.offset))
                }
                return sum
            }
            let h = s0 * 1e-4
            let numeric = (surrogate(s0 + h) - surrogate(s0 - h)) / (2 * h)
            let analytic = Double(step.grad![c])
            #expect(abs(numeric - analytic) <= 1e-3 * max(1, abs(numeric)), "channel \(c): \(analytic) vs \(numeric)")
            #expect(regions.contains { $0.clipped != nil } && regions.contains { $0.clipped == nil }, "both regions exercised")
            if unsigned { #expect(regions.contains { $0.clipped == Double(qmin) - z }, "the lower clip exercised") }
            // x: gradient passes inside the range, not where clipped; y is the
            // dequantized level, so real 0 stays exact with any zero point.
            for (k, region) in regions.enumerated() {
                let i = c * per + k
                #expect(x.grad![i] == (region.clipped == nil ? r[i] : 0))
                #expect(abs(Double(y.data[i]) - s0 * (region.clipped ?? (xs[k] / s0 + region.offset))) <= 1e-5)
            }
        }
    }

    @Test("QAT with --method lsq: scales train, the engine follows, and a resumed run ends bit-identical")
    func qatRun() throws {
        let (fp32, data) = try smallTrainedQARepVGG(dataSeed: 62, modelSeed: 63)
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 1; options.batchSize = 32; options.calibrationImages = 64
        options.method = .lsq
        let quiet = ProgressReporter(enabled: false)
        let dirA = temporaryDirectory("lsq-a"), dirB = temporaryDirectory("lsq-b")
        defer { try? FileManager.default.removeItem(atPath: dirA); try? FileManager.default.removeItem(atPath: dirB) }
        let straight = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                                  trainImages: data.count, directory: dirA, progress: quiet)
        let calibrated = straight.model.fakeQuantizers.map(\.scales)
        #expect(straight.model.fakeQuantizers.allSatisfy { $0.learnsScale })
        #expect(straight.model.parameters().contains { $0.key == "stage0.input_fake_quant.scale" }, "the scale is a parameter")
        try straight.run(train: data, test: nil)
        let trained = straight.model.fakeQuantizers.map(\.scales)
        #expect(zip(calibrated, trained).filter { $0 != $1 }.count == calibrated.count, "every quantizer's scale moved")
        // The converted model uses the learned scales: the engine agrees with the simulation.
        let int8 = try Int8Model.read(from: dirA + "/int8.safetensors")
        #expect(int8.convs[1].inputScale == straight.model.units[1].inputQuant.scales[0])
        let fake = evaluate(straight.model, on: data), engine = evaluate(int8, on: data)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(Double(same) / Double(data.count) >= 0.99, "\(same) of \(data.count)")

        let first = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                               trainImages: data.count, directory: dirB, progress: quiet)
        try first.run(train: data, test: nil, until: 1)
        let resumed = try QATRun.resume(from: dirB, progress: quiet)
        #expect(resumed.model.fakeQuantizers.allSatisfy { $0.learnsScale })
        try resumed.run(train: data, test: nil)
        for (a, b) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(a.tensor.data == b.tensor.data, "\(a.key) differs after resume")
        }
    }

    @Test("a 4-bit QAT run, observers or LSQ, signed or unsigned activations, finishes with its checkpoint and a W4A4 integer file whose engine follows the simulation",
          arguments: [QATMethod.observers, .lsq], [false, true])
    func lowBitRun(_ method: QATMethod, unsignedActivations: Bool) throws {
        let (fp32, data) = try smallTrainedQARepVGG(dataSeed: 65, modelSeed: 66)
        var options = QATOptions()
        options.epochs = 1; options.warmupEpochs = 0; options.batchSize = 32; options.calibrationImages = 64
        options.qconfig = (unsignedActivations ? QConfig.unsignedActivations : .tensorRT).withBits(4)
        options.method = method
        let dir = temporaryDirectory("lsq-4bit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try QATRun(from: fp32, source: "t", options: options, calibration: data.subset(0..<64),
                             trainImages: data.count, directory: dir, progress: ProgressReporter(enabled: false))
        let calibratedZeroPoints = run.model.fakeQuantizers.map(\.zeroPoints)
        try run.run(train: data, test: nil)
        if method == .lsq {
            // LSQ learns the steps alone: each zero point stays as calibrated.
            #expect(run.model.fakeQuantizers.map(\.zeroPoints) == calibratedZeroPoints)
        }
        #expect(FileManager.default.fileExists(atPath: dir + "/last.safetensors"))
        let simulated = try QATRun.loadModel(from: dir + "/last.safetensors")
        #expect(simulated.units[0].weightQuant.scheme.bits == 4)
        // LSQ's learned steps are the integer model's scales, at 4 bits as at 8.
        let int8 = try Int8Model.read(from: dir + "/int8.safetensors")
        #expect(int8.activation.bits == 4 && int8.activation.signed == !unsignedActivations)
        #expect(int8.convs.allSatisfy { $0.weightBits == 4 })
        expectSameCodes(simulated, int8)
        let test = syntheticBands(count: 200, seed: 67)
        let fake = evaluate(simulated, on: test), engine = evaluate(int8, on: test)
        #expect(zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count >= 196)
    }
}
