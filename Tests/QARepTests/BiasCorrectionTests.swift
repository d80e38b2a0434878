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
        let unit = quantized.stage0, conv = unit.conv
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
