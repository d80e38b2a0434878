import Foundation
import QARep
import Testing

@Suite("Bias correction (empirical, Nagel et al. 2019)")
struct BiasCorrectionTests {
    /// A small QARepVGG with non-trivial batch norms, its data, and its W4A8 PTQ model.
    func setup() throws -> (RepVGGNet, FashionMNIST, QuantizedNet) {
        let data = syntheticBands(count: 192, seed: 40)
        let model = try RepVGGNet(config: ModelConfig(widths: [8, 8, 16, 16, 16], blocks: [1, 1, 2, 1, 1], block: .qarepvgg), seed: 41)
        randomizeBatchNorms(model, seed: 42)
        var qconfig = QConfig.tensorRT
        qconfig.weight.bits = 4
        return (model, data, try postTrainingQuantize(model, calibration: data, qconfig: qconfig))
    }

    func batch(_ d: FashionMNIST) -> Tensor {
        Tensor(d.images.map { d.normalize($0, channel: 0) }, shape: [d.count, 1, d.height, d.width])
    }

    /// Per-channel means of an `[N, C, H, W]` tensor.
    func channelMeans(_ y: Tensor) -> [Double] {
        let (n, c, per) = (y.shape[0], y.shape[1], y.shape[2] * y.shape[3])
        return (0..<c).map { ch in
            (0..<n).reduce(0.0) { s, i in s + y.data[((i * c + ch) * per)..<((i * c + ch + 1) * per)].reduce(0.0) { $0 + Double($1) } }
                / Double(n * per)
        }
    }

    @Test("the first layer's mean output with quantized weights and the corrected bias equals the float layer's")
    func firstLayerMeans() throws {
        let (_, data, quantized) = try setup()
        let unit = quantized.stage0, conv = try #require(unit.conv)
        let originalBias = conv.bias!.detached()
        let x = noGrad { unit.inputQuant(batch(data)) }
        let corrections = try quantized.correctBias(on: data)
        #expect(corrections.count == quantized.units.count + 1 && corrections[0] > 0)
        let floatMeans = noGrad { channelMeans(conv2d(x, weight: conv.weight, bias: originalBias, stride: conv.stride, padding: conv.padding)) }
        let quantizedMeans = noGrad {
            channelMeans(conv2d(x, weight: unit.weightQuant(conv.weight), bias: conv.bias, stride: conv.stride, padding: conv.padding))
        }
        let before = noGrad {
            channelMeans(conv2d(x, weight: unit.weightQuant(conv.weight), bias: originalBias, stride: conv.stride, padding: conv.padding))
        }
        let after = zip(quantizedMeans, floatMeans).map { abs($0 - $1) }.max()!
        let without = zip(before, floatMeans).map { abs($0 - $1) }.max()!
        #expect(after < 1e-5 && without > 100 * after, "mean shift \(without) without correction, \(after) with")
    }

    @Test("at 4-bit weights the corrected model's logits are closer to FP32's")
    func logitsCloser() throws {
        let (model, data, quantized) = try setup()
        model.eval()
        let x = batch(data)
        let reference = noGrad { model(x).data }
        func error() -> Double {
            let y = noGrad { quantized(x).data }
            var sum = 0.0
            for (a, b) in zip(y, reference) { sum += Double(a - b) * Double(a - b) }
            return sum
        }
        let before = error()
        try quantized.correctBias(on: data)
        let after = error()
        #expect(after < before, "squared logit error \(before) -> \(after)")
    }

    @Test("refused without calibration, on the QAT form, and on no images")
    func refusals() throws {
        let (model, data, _) = try setup()
        #expect(throws: QuantizationError.self) { try QuantizedNet(from: model, form: .folded).correctBias(on: data) }
        let qat = try QuantizedNet(from: model, form: .postBN)
        try qat.calibrate(on: data)
        #expect(throws: QuantizationError.self) { try qat.correctBias(on: data) }
        #expect(throws: QuantizationError.self) { try postTrainingQuantize(model, calibration: data).correctBias(on: data.subset(0..<0)) }
    }
}

@Suite("Cross-layer equalization (Nagel et al. 2019)")
struct CrossLayerEqualizationTests {
    @Test("FP32 outputs unchanged to 1e-5, consecutive layers' channel ranges equal, refused after calibration")
    func equalizes() throws {
        let data = syntheticBands(count: 64, seed: 50)
        // RepVGG with its identity BN: the channel ranges the method exists for.
        let model = try RepVGGNet(config: ModelConfig(widths: [8, 8, 16, 16, 16], blocks: [1, 1, 2, 1, 1], block: .repvgg), seed: 51)
        randomizeBatchNorms(model, seed: 52)
        let net = try QuantizedNet(from: model, form: .folded)
        net.setQuantization(observe: false, fakeQuantize: false)
        net.eval()
        let x = Tensor(data.images.map { data.normalize($0, channel: 0) }, shape: [data.count, 1, 28, 28])
        let before = noGrad { net(x).data }
        let first = try net.equalizeCrossLayer(sweeps: 1)
        let remaining = try net.equalizeCrossLayer(sweeps: 20)
        #expect(first > 2 && remaining < 1.02, "range ratio \(first) before, \(remaining) after")
        #expect(maxRelativeError(noGrad { net(x).data }, before, floor: 1e-3) < 1e-5)
        // Output channel c of a unit and input channel c of the next now share one range.
        let (w1, w2) = (net.units[2].conv!.weight, net.units[3].conv!.weight)
        let channels = w1.shape[0], per1 = w1.count / channels, per2 = w2.count / (w2.shape[0] * channels)
        for c in 0..<channels {
            var r1: Float = 0, r2: Float = 0
            for i in 0..<per1 { r1 = max(r1, abs(w1.data[c * per1 + i])) }
            for o in 0..<w2.shape[0] {
                for i in 0..<per2 { r2 = max(r2, abs(w2.data[(o * channels + c) * per2 + i])) }
            }
            #expect(abs(r1 / r2 - 1) < 1e-2, "channel \(c): \(r1) vs \(r2)")
        }
        net.setQuantization(observe: true, fakeQuantize: false)
        try net.calibrate(on: data)
        #expect(throws: QuantizationError.self) { try net.equalizeCrossLayer() }
    }
}
