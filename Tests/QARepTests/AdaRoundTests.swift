import Foundation
import QARep
import Testing

// AdaRound learns, weight by weight, whether to round down or up. These tests
// check its two derivatives against finite differences, that one layer's
// learned rounding stays on floor or ceiling and reconstructs the layer's
// output better than nearest rounding, and that the whole-model pass leaves a
// model whose simulation and integer engine still agree.

@Suite("AdaRound")
struct AdaRoundTests {
    @Test("h(V) and the rounding regularizer: derivatives match central differences")
    func derivatives() {
        let eps: Float = 1e-3
        // h is clamped at V = +-log(11); differences straddling the kinks are skipped.
        for v in stride(from: -4 as Float, through: 4, by: 0.23) where abs(abs(v) - log(11)) > 0.01 {
            let fd = (AdaRound.rectifiedSigmoid(v + eps) - AdaRound.rectifiedSigmoid(v - eps)) / (2 * eps)
            #expect(abs(fd - AdaRound.rectifiedSigmoidDerivative(v)) <= 2e-3, "h'(\(v))")
            for beta: Float in [20, 8, 2] {
                let fd = (AdaRound.regularizer(v + eps, beta: beta) - AdaRound.regularizer(v - eps, beta: beta)) / (2 * eps)
                let exact = AdaRound.regularizerDerivative(v, beta: beta)
                #expect(abs(fd - exact) <= 2e-2 * max(1, abs(exact)), "regularizer'(\(v)) at beta \(beta): \(fd) vs \(exact)")
            }
        }
        #expect(AdaRound.rectifiedSigmoid(5) == 1 && AdaRound.rectifiedSigmoidDerivative(5) == 0)
        #expect(AdaRound.rectifiedSigmoid(-5) == 0 && AdaRound.regularizer(-5, beta: 2) == 0)
    }

    @Test("one 3-bit convolution: every weight lands on its floor or ceiling level, and the output error falls below nearest rounding's")
    func oneLayer() {
        var rng = SplitMix64(seed: 51)
        let weight = Tensor.uniform([8, 4, 3, 3], bound: 0.5, rng: &rng, requiresGrad: false)
        let bias = Tensor.uniform([8], bound: 0.1, rng: &rng, requiresGrad: false)
        // Smooth inputs: neighbouring taps are correlated, as in images. (With independent
        // inputs the output error is a sum of independent terms and nearest rounding is optimal.)
        let inputs = (0..<4).map { _ in
            var values: [Float] = []
            for _ in 0..<(16 * 4) {
                let (a, b, fy, fx) = (rng.uniformFloat(), rng.uniformFloat() - 0.5, 0.2 + 0.3 * rng.uniformFloat(), 0.2 + 0.3 * rng.uniformFloat())
                for y in 0..<8 { for x in 0..<8 { values.append(a * sin(fy * Float(y) + b) + a * cos(fx * Float(x)) + 0.05 * (rng.uniformFloat() - 0.5)) } }
            }
            return Tensor(values, shape: [16, 4, 8, 8])
        }
        let qmax: Float = 3, per = 36
        let scales = (0..<8).map { c in weight.data[(c * per)..<((c + 1) * per)].map(abs).max()! / qmax }
        let layer = { (x: Tensor, w: Tensor) in conv2d(x, weight: w, bias: bias, stride: 1, padding: 1).relu() }
        var options = AdaRoundOptions()
        options.iterations = 300
        let (rounded, report) = AdaRound.roundLayer(weight: weight, scales: scales, qmax: 3, quantizedInputs: inputs,
                                                    floatInputs: inputs, name: "conv", options: options, layer: layer)
        let nearest = weight.data.indices.map { i in (weight.data[i] / scales[i / per]).rounded(.toNearestOrEven) * scales[i / per] }
        for i in weight.data.indices {
            let x = weight.data[i] / scales[i / per], level = rounded[i] / scales[i / per]
            #expect(abs(level - level.rounded()) < 1e-4 && (level.rounded() == x.rounded(.down) || level.rounded() == x.rounded(.up)),
                    "weight \(i): \(x) went to \(level)")
        }
        // The error, computed here rather than taken from the report.
        func error(_ w: [Float]) -> Double {
            noGrad {
                inputs.reduce(0.0) { sum, x in
                    let a = layer(x, Tensor(w, shape: weight.shape)).data, b = layer(x, weight).data
                    return sum + zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
                }
            }
        }
        #expect(error(rounded) < 0.8 * error(nearest), "AdaRound \(error(rounded)) vs nearest \(error(nearest))")
        #expect(report.flipped > 0 && report.adaRoundError < report.nearestError)
    }

    @Test("a whole QARepVGG at W4A8: every layer reports, rounded weights stay on the grid, simulation and engine agree")
    func wholeModel() throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let calibration = data.subset(0..<64), evalData = syntheticBands(count: 200, seed: 52)
        var qconfig = QConfig.tensorRT
        qconfig.weight.bits = 4
        let learned = try postTrainingQuantize(fp32, calibration: calibration, qconfig: qconfig)
        var options = AdaRoundOptions()
        options.iterations = 200
        let reports = try learned.adaRound(on: calibration, options: options)
        #expect(reports.count == learned.units.count + 1 && reports.last?.layer == "linear")
        #expect(reports.allSatisfy { $0.applied == ($0.adaRoundError <= $0.nearestError) })
        #expect(reports.filter(\.applied).count * 2 >= reports.count, "\(reports)")
        // The rounded weights are on the grid: conversion gives exactly the simulation's codes.
        let int8 = try learned.convertToInt8()
        expectSameCodes(learned, int8)
        let fake = evaluate(learned, on: evalData), engine = evaluate(int8, on: evalData)
        #expect(zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count >= 196)
    }

    @Test("the shipped tiny QARepVGG at W4A8: AdaRound on 128 images gains over nearest rounding on the integer engine",
          .enabled(if: FileManager.default.fileExists(atPath: FashionMNIST.defaultRoot + "/t10k-images-idx3-ubyte.gz")))
    func shippedW4A8() throws {
        let fp32 = try Checkpoint.loadModel(shippedCheckpoints + "/tiny-qarepvgg.safetensors")
        let calibration = try FashionMNIST.load(split: .train, limit: 128)
        let test = try FashionMNIST.load(split: .test, limit: 2000)
        var qconfig = QConfig.tensorRT
        qconfig.weight.bits = 4
        let nearest = try postTrainingQuantize(fp32, calibration: calibration, qconfig: qconfig)
        let learned = try postTrainingQuantize(fp32, calibration: calibration, qconfig: qconfig)
        var options = AdaRoundOptions()
        options.iterations = 300
        try learned.adaRound(on: calibration, options: options)
        let before = evaluate(try nearest.convertToInt8(), on: test).top1, after = evaluate(try learned.convertToInt8(), on: test).top1
        let reference = evaluate(fp32, on: test).top1
        // Measured: FP32 92.13%, nearest 85.68%, AdaRound (1,000 steps, 512 images) 91.88% on all 10,000 test images.
        #expect(after >= before + 0.02 && reference - after <= 0.02, "FP32 \(reference), nearest \(before), AdaRound \(after)")
    }

    @Test("QAT's post-BN form, an uncalibrated model, no images and zero iterations are refused")
    func refused() throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let postBN = try QuantizedNet(from: fp32, form: .postBN)
        try postBN.calibrate(on: data.subset(0..<32))
        #expect(throws: QuantizationError.self) { try postBN.adaRound(on: data.subset(0..<32)) }
        let raw = try QuantizedNet(from: fp32, form: .folded)
        #expect(throws: QuantizationError.self) { try raw.adaRound(on: data.subset(0..<32)) }
        let ptq = try postTrainingQuantize(fp32, calibration: data.subset(0..<32))
        #expect(throws: QuantizationError.self) { try ptq.adaRound(on: data.subset(0..<0)) }
        var options = AdaRoundOptions()
        options.iterations = 0
        #expect(throws: QuantizationError.self) { try ptq.adaRound(on: data.subset(0..<32), options: options) }
    }
}

@Suite("AdaRound on a captured graph")
struct GraphAdaRoundTests {
    @Test("a ResNet-8 at W3A8: every convolution and the linear layer report, the rounded weights convert to the simulation's codes, the engine agrees")
    func resnet() throws {
        let data = syntheticBands(count: 160, seed: 53)
        let model = try ResNet(depth: 8, seed: 54)
        settleBatchNorms(model, on: data.subset(0..<96))
        var qconfig = QConfig.tensorRT
        qconfig.weight.bits = 3
        let prepared = try QuantizedGraph(model, example: images(data.subset(0..<1)), qconfig: QConfigMapping(qconfig), mode: .ptq)
        try prepared.calibrate(on: data.subset(0..<64))
        let float = noGrad { model(images(data.subset(96..<160))) }
        var options = AdaRoundOptions()
        options.iterations = 100
        let reports = try prepared.adaRound(on: data.subset(0..<64), options: options)
        #expect(reports.count == 10 && reports.filter(\.applied).count >= 5, "\(reports.map { ($0.layer, $0.nearestError, $0.adaRoundError) })")
        // The float model is untouched: AdaRound changed the prepared copies only.
        #expect(noGrad { model(images(data.subset(96..<160))) }.data == float.data)
        // Every applied layer's float weight is on its grid: its integer codes times their scales give it back.
        let graph = try prepared.convertToInt8()
        let units = Dictionary(uniqueKeysWithValues: prepared.namedChildren().compactMap { c in (c.module as? QuantGraphConv).map { (c.name, $0) } })
        var checked = 0
        for node in graph.nodes {
            guard case .conv(let c, _) = node.op, reports.first(where: { $0.layer == node.name })?.applied == true,
                  let unit = units[node.name] else { continue }
            let per = c.weight.count / c.outChannels, w = unit.conv.weight.data
            let off = w.indices.filter { abs(w[$0] - Float(c.weight[$0]) * c.weightScales[$0 / per]) > 1e-5 * max(abs(w[$0]), 1e-6) }
            #expect(off.isEmpty, "\(node.name): \(off.count) weights off the grid")
            checked += 1
        }
        #expect(checked >= 4)
        let test = images(data.subset(96..<160))
        let simulated = noGrad { prepared(test) }, integer = try Int8GraphEngine(graph)(test)
        #expect(zip(simulated.argmaxRows(), integer.argmaxRows()).filter { $0 == $1 }.count >= 63)
        // A QAT graph is refused.
        let qat = try QuantizedGraph(model, example: images(data.subset(0..<1)), qconfig: QConfigMapping(qconfig), mode: .qat)
        try qat.calibrate(on: data.subset(0..<32))
        #expect(throws: QuantizationError.self) { try qat.adaRound(on: data.subset(0..<32)) }
    }
}
