import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import QARep
import QARepCLI
import Testing

// The report's figures against direct computations written here from the
// definitions (per-channel symmetric weights over max|w_o| / 127, per-tensor
// symmetric activations over max|x| / 127, SQNR in dB), on a small RepVGG.

@Suite("qarep report: per-layer figures, the page and the JSON")
struct QuantizationReportTests {
    /// `10 log10(sum x^2 / sum (x - q)^2)`.
    func sqnr(_ x: [Float], _ q: [Float]) -> Double {
        let s = x.reduce(0.0) { $0 + Double($1) * Double($1) }
        let e = zip(x, q).reduce(0.0) { $0 + (Double($1.0) - Double($1.1)) * (Double($1.0) - Double($1.1)) }
        return 10 * log10(s / e)
    }

    /// Symmetric fake quantization with one scale over `count` values.
    func fakeQuantized(_ x: ArraySlice<Float>, scale: Float, qmin: Double, qmax: Double) -> [Float] {
        x.map { scale * Float(min(max((Double($0) / Double(scale)).rounded(.toNearestOrEven), qmin), qmax)) }
    }

    @Test("weight statistics, BN scales, activation ranges and SQNR match direct computations")
    func figures() throws {
        let config = ModelConfig(widths: [4, 4, 8, 8, 8], blocks: [1, 1, 2, 1, 1], block: .repvgg)
        let model = try RepVGGNet(config: config, seed: 3)
        randomizeBatchNorms(model, seed: 4)
        model.eval()
        let data = syntheticBands(count: 40, seed: 5)
        let report = try quantizationReport(model, calibration: data, test: data, bits: 6, confirm: 2)
        #expect(report.bitWidths == [8, 6] && report.layers.map(\.name) == ["stage0", "stage1.0", "stage2.0", "stage2.1", "stage3.0", "stage4.0"])

        let deployed = model.deployed()
        var x = Tensor(Array(DataLoader(dataset: data, batchSize: 40, shuffle: false, augment: false, seed: 0,
                                        prefetch: 0).batches(epoch: 0)).first!.images, shape: [40, 1, 28, 28])
        for (i, (layer, block)) in zip(report.layers, deployed.blocks).enumerated() {
            let w = (block as! ReparamBlock).conv.weight.data
            let maxAbs = w.map { abs(Double($0)) }.max()!
            let mean = w.reduce(0.0) { $0 + Double($1) } / Double(w.count)
            let std = (w.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(w.count)).squareRoot()
            #expect(abs(layer.maxAbsWeight - maxAbs) < 1e-7 && abs(layer.weightStd - std) < 1e-6 * std)
            #expect(abs(layer.weightMaxOverStd - maxAbs / std) < 1e-4)
            for bits in [8, 6] {
                let qmax = Double((1 << (bits - 1)) - 1), perChannel = w.count / (block as! ReparamBlock).conv.outChannels
                var q: [Float] = []
                for o in 0..<(w.count / perChannel) {
                    let slice = w[(o * perChannel)..<((o + 1) * perChannel)]
                    q += fakeQuantized(slice, scale: slice.map(abs).max()! / Float(qmax), qmin: -qmax, qmax: qmax)
                }
                #expect(abs(layer.weightSqnrDbByBits["\(bits)"]! - sqnr(w, q)) < 1e-6, "\(layer.name) W\(bits)")
                let xs = x.data, amax = xs.map(abs).max()!
                let qa = fakeQuantized(xs[...], scale: amax / Float(qmax), qmin: -qmax - 1, qmax: qmax)
                #expect(abs(layer.activationSqnrDbByBits["\(bits)"]! - sqnr(xs, qa)) < 1e-6, "\(layer.name) A\(bits)")
                if bits == 8 { #expect(abs(layer.activationMax - Double(amax)) < 1e-7) }
            }
            #expect(layer.weightHistogram.reduce(0, +) == w.count)
            #expect(layer.activationHistogram.reduce(0, +) == x.count)

            // BN scales of the training-form block, the identity BN marked.
            let original = model.blocks[i] as! RepVGGBlock
            var expected: [(String, BatchNorm2d)] = [("dense", original.dense.bn), ("pointwise", (original.pointwise as! ConvBN).bn)]
            if let id = original.identityBN { expected.append(("identity", id)) }
            #expect(layer.branchScales.map(\.branch) == expected.map(\.0))
            for (scale, (branch, bn)) in zip(layer.branchScales, expected) {
                let direct = (0..<bn.channels).map { Double(bn.weight.data[$0]) / (Double(bn.runningVar.data[$0]) + 1e-5).squareRoot() }
                #expect(abs(scale.max - direct.max()!) < 1e-5 && abs(scale.min - direct.min()!) < 1e-5)
                #expect(scale.identity == (branch == "identity"))
            }
            x = noGrad { block(x) }
        }

        // Sensitivity: the two lowest-SQNR layers at 6 bits, each confirmed by a top-1.
        let key = "6"
        let lowest = report.layers.sorted {
            min($0.weightSqnrDbByBits[key]!, $0.activationSqnrDbByBits[key]!) < min($1.weightSqnrDbByBits[key]!, $1.activationSqnrDbByBits[key]!)
        }.prefix(2).map(\.name)
        #expect(report.sensitivity.map(\.layer) == lowest && report.sensitivityBits == 6)
        for s in report.sensitivity { #expect(abs(s.gain - (s.floatTop1 - report.ptqTop1[key]!)) < 1e-12) }
    }

    @Test("the page is well-formed XML naming every layer; --json has the documented keys")
    func pageAndJSON() throws {
        let data = try syntheticDataRoot(), out = temporaryDirectory("report")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: out) }
        let output = try ReportCommand.parse(["--checkpoint", shippedCheckpoints + "/tiny-repvgg.safetensors",
                                              "--compare", shippedCheckpoints + "/tiny-qarepvgg.safetensors",
                                              "--calib-images", "64", "--confirm", "1", "--data-root", data,
                                              "--out", out, "--quiet"]).execute()
        let page = try String(contentsOfFile: out + "/report.html", encoding: .utf8)
        let parser = XMLParser(data: Data(page.utf8))
        #expect(parser.parse(), "report.html does not parse: \(String(describing: parser.parserError))")
        for layer in output.report.layers { #expect(page.contains(">\(layer.name)<")) }
        #expect(page.contains("identity BN") && page.contains("tiny-qarepvgg.safetensors"))

        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/report.json"))) as! [String: Any]
        let layers = try #require(json["layers"] as? [[String: Any]])
        #expect(layers.count == 7)
        for key in ["name", "max_abs_weight", "weight_std", "activation_max", "weight_sqnr_db", "activation_sqnr_db"] {
            #expect(layers.allSatisfy { $0[key] != nil }, "layers lack \(key)")
        }
        #expect((json["compare"] as? [String: Any])?["layers"] != nil && json["fp32_top1"] != nil)
    }
}
