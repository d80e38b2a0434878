import Foundation
import QARep
import QARepKernels
import QARepONNX
import Testing

// The integer engine below 8 bits: codes of 2 to 8 bits live in 8-bit
// containers, so the arithmetic is the 8-bit engine's; what changes is the
// clamp of every activation (the scheme's [qmin, qmax]) and the range of the
// weight codes. These tests hold the converted model to the simulation at
// each width, and the native files to the widths they record.

/// (weight bits, activation bits) pairs: every width from 2 to 8 on one side or both.
private let widths: [(Int, Int)] = [(8, 8), (7, 7), (6, 6), (5, 5), (4, 8), (8, 4), (4, 4), (3, 3), (2, 2), (2, 8), (8, 2)]

private func qconfig(_ w: Int, _ a: Int, signed: Bool = true) -> QConfig {
    var q = signed ? QConfig.tensorRT : .unsignedActivations
    q.weight.bits = w
    q.activation.bits = a
    return q
}

@Suite("Integer engine below 8 bits", .serialized)
struct LowBitEngineTests {
    @Test("W2A2 to W8A8, signed and unsigned: integer weights equal the simulation's, the engine follows it on every kernel path")
    func engineFollowsSimulation() throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let evalData = syntheticBands(count: 200, seed: 41)
        var rng = SplitMix64(seed: 44)
        for (w, a) in widths {
            for signed in [true, false] {
                let q = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: qconfig(w, a, signed: signed))
                let int8 = try q.convertToInt8()
                let label = "W\(w)A\(a) \(signed ? "signed" : "unsigned")"
                #expect(int8.activation.bits == a && int8.convs.allSatisfy { $0.weightBits == w } && int8.head.weightBits == w, "\(label)")
                // The codes use the width: at 8 bits a channel's largest weight is 127; below, 2^(w-1) - 1.
                let qmax = Int8((1 << (w - 1)) - 1)
                #expect(int8.convs.allSatisfy { c in c.weight.allSatisfy { abs($0) <= qmax } && c.weight.contains { abs($0) == qmax } }, "\(label)")
                expectSameCodes(q, int8)
                let fake = evaluate(q, on: evalData), engine = evaluate(int8, on: evalData)
                let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
                #expect(same >= 196, "\(label): engine agrees with the simulation on \(same)/200")
                // Every kernel path gives the same bits at this width.
                let x = Tensor.uniform([3, 1, 28, 28], bound: 2, rng: &rng, requiresGrad: false)
                let logits = try IntegerKernelPath.available.map { try Int8Engine(int8, threads: 2, path: $0).logits(x).data }
                #expect(logits.allSatisfy { $0 == logits[0] }, "\(label): \(IntegerKernelPath.available)")
            }
        }
    }

    @Test("the native file records the widths and refuses codes wider than a layer's")
    func fileRecordsWidths() throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let int8 = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: qconfig(4, 6)).convertToInt8()
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try int8.write(to: dir + "/w4a6.safetensors")
        let back = try Int8Model.read(from: dir + "/w4a6.safetensors")
        #expect(back == int8 && back.activation.bits == 6 && back.convs[1].weightBits == 4)
        // A weight code of 8 in a 4-bit layer, and a width outside 2...8.
        var broken = int8
        broken.convs[1].weight[0] = 8
        #expect { try broken.validate() } throws: { "\($0)".contains("stage1.0") && "\($0)".contains("4-bit codes in [-7, 7]") }
        broken = int8
        broken.head.weightBits = 9
        #expect { try broken.validate() } throws: { "\($0)".contains("head") }
        // A file from before the widths were recorded reads as 8 bits.
        let w8 = try postTrainingQuantize(fp32, calibration: data.subset(0..<64)).convertToInt8()
        try w8.write(to: dir + "/w8.safetensors")
        var file = try SafeTensorsFile.read(from: dir + "/w8.safetensors")
        file.metadata["int8"] = file.metadata["int8"]!.replacingOccurrences(of: ",\"weightBits\":8", with: "")
        #expect(!file.metadata["int8"]!.contains("weightBits"))
        try file.write(to: dir + "/old.safetensors")
        #expect(try Int8Model.read(from: dir + "/old.safetensors") == w8)
    }

    @Test("first and last layers at 8 bits (W4A4 elsewhere): the simulation, the integer model, its file and its ONNX graph all keep them wider",
          arguments: [false, true])
    func firstAndLastLayersWider(unsigned: Bool) throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        var q = qconfig(4, 4, signed: !unsigned)
        q.firstLastBits = 8
        let model = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: q)
        let units = model.units, head = model.linear
        #expect(units[0].inputQuant.scheme.bits == 8 && units[0].weightQuant.scheme.bits == 8)
        #expect(units.dropFirst().allSatisfy { $0.inputQuant.scheme.bits == 4 && $0.weightQuant.scheme.bits == 4 })
        #expect([head.featureQuant, head.inputQuant, head.weightQuant].allSatisfy { $0.scheme.bits == 8 })

        let int8 = try model.convertToInt8()
        let first = int8.convs[0], last = int8.convs[int8.convs.count - 1]
        #expect(int8.activation.bits == 4 && first.weightBits == 8 && first.inputBits == 8 && first.outputBits == nil)
        #expect(first.weight.contains { abs($0) == 127 }, "the first layer's codes use all 8 bits")
        #expect(int8.convs.dropFirst().allSatisfy { $0.weightBits == 4 && $0.weight.allSatisfy { abs($0) <= 7 } })
        #expect(int8.convs.dropFirst().dropLast().allSatisfy { $0.inputBits == nil && $0.outputBits == nil })
        #expect(last.outputBits == 8 && int8.head.featureBits == 8 && int8.head.inputBits == 8 && int8.head.weightBits == 8)
        expectSameCodes(model, int8)
        let evalData = syntheticBands(count: 200, seed: 41)
        let fake = evaluate(model, on: evalData), engine = evaluate(int8, on: evalData)
        let same = zip(fake.predictions, engine.predictions).filter { $0 == $1 }.count
        #expect(same >= 196, "engine agrees with the simulation on \(same)/200")
        var rng = SplitMix64(seed: 45)
        let x = Tensor.uniform([3, 1, 28, 28], bound: 2, rng: &rng, requiresGrad: false)
        let logits = try IntegerKernelPath.available.map { try Int8Engine(int8, threads: 2, path: $0).logits(x).data }
        #expect(logits.allSatisfy { $0 == logits[0] }, "every kernel path: \(IntegerKernelPath.available)")

        // The file keeps every width; a layer that reads other codes than its producer writes is refused.
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try int8.write(to: dir + "/edges.safetensors")
        #expect(try Int8Model.read(from: dir + "/edges.safetensors") == int8)
        var broken = int8
        broken.convs[1].inputBits = 8
        #expect { try broken.validate() } throws: { "\($0)".contains("inconsistent widths") && "\($0)".contains("stage1.0") }
        broken = int8
        broken.head.featureBits = nil
        #expect { try broken.validate() } throws: { "\($0)".contains("inconsistent widths") && "\($0)".contains("head") }

        // ONNX: only the 4-bit tensors are clipped (the inputs of every layer but the first).
        let onnx = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(int8))
        let clipped = Set(onnx.graph.node.filter { $0.opType == "Clip" }.map { String($0.name.dropLast(".clip".count)) })
        #expect(clipped == Set(int8.convs.dropFirst().map { $0.name + ".input" }))
        #expect(onnx.docString.contains("of 4 bits"))
        #expect(onnx.docString.contains("\(int8.convs[0].name) input 8 bits") && onnx.docString.contains("linear input 8 bits"),
                "\(onnx.docString)")
        #expect(!onnx.docString.contains("\(int8.convs[1].name) input"), "\(onnx.docString)")
    }

    @Test("QConfig.firstLastBits: saved and read back, absent in older files, 2 to 8 bits, refused by graph capture")
    func firstLastBitsSetting() throws {
        var q = qconfig(4, 4)
        q.firstLastBits = 8
        let json = try JSONEncoder().encode(q)
        #expect(try JSONDecoder().decode(QConfig.self, from: json) == q)
        #expect(try JSONDecoder().decode(QConfig.self, from: JSONEncoder().encode(qconfig(4, 4))).firstLastBits == nil)
        #expect(q.forFirstAndLastLayers == qconfig(8, 8))
        q.firstLastBits = 9
        #expect { try q.validate() } throws: { "\($0)".contains("between 2 and 8, got 9") }
        q.firstLastBits = 8
        let data = syntheticBands(count: 8, seed: 42)
        let model = try ResNet(depth: 8, seed: 43)
        #expect { _ = try QuantizedGraph(model, example: images(data.subset(0..<1)), qconfig: QConfigMapping(q), mode: .ptq) }
            throws: { "\($0)".contains("RepVGG-family") }
    }

    @Test("a captured ResNet at W4A4 and W3A6: graph engine follows the simulation, the graph file keeps the widths")
    func graphBelow8Bits() throws {
        let data = syntheticBands(count: 160, seed: 42)
        let model = try ResNet(depth: 8, seed: 43)
        settleBatchNorms(model, on: data.subset(0..<96))
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        for (w, a) in [(4, 4), (3, 6)] {
            let prepared = try QuantizedGraph(model, example: images(data.subset(0..<1)), qconfig: QConfigMapping(qconfig(w, a)), mode: .ptq)
            try prepared.calibrate(on: data.subset(0..<96))
            prepared.eval()
            let graph = try prepared.convertToInt8()
            for node in graph.nodes {
                if case .conv(let c, _) = node.op { #expect(c.weightBits == w && c.weight.allSatisfy { abs(Int($0)) < 1 << (w - 1) }) }
                if case .linear(let l, _) = node.op { #expect(l.weightBits == w) }
            }
            let test = images(data.subset(96..<160))
            let simulated = noGrad { prepared(test) }, integer = try Int8GraphEngine(graph)(test)
            let same = zip(simulated.argmaxRows(), integer.argmaxRows()).filter { $0 == $1 }.count
            #expect(same >= 63, "W\(w)A\(a): \(same)/64")
            try graph.write(to: dir + "/g.safetensors")
            let back = try Int8Graph.read(from: dir + "/g.safetensors")
            #expect(back.activation.bits == a)
            #expect(try Int8GraphEngine(back)(test).data == integer.data, "W\(w)A\(a): the file runs to the same logits")
        }
    }

    @Test("ONNX export clips activations narrower than a byte to their codes' range before each QuantizeLinear",
          arguments: [false, true])
    func onnxSubByteActivations(unsigned: Bool) throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let narrow = qconfig(8, 4, signed: !unsigned)
        let w4a8 = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: qconfig(4, 8)).convertToInt8()
        let bytes = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(w4a8))
        #expect(!bytes.graph.node.contains { $0.opType == "Clip" }, "8-bit activations need no clip; 4-bit weights are exact in int8")

        let w8a4 = try postTrainingQuantize(fp32, calibration: data.subset(0..<64), qconfig: narrow).convertToInt8()
        let model = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(w8a4))
        let inits = Dictionary(uniqueKeysWithValues: model.graph.initializer.map { ($0.name, $0) })
        func scalar(_ name: String) throws -> Float {
            let raw = try #require(inits[name]).rawData
            return Float(bitPattern: raw.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        }
        let quantizers = model.graph.node.filter { $0.opType == "QuantizeLinear" }
        #expect(quantizers.count == w8a4.convs.count + 2)
        for q in quantizers {
            let clip = try #require(model.graph.node.first { $0.output.first == q.input[0] }, "\(q.name) has an input")
            #expect(clip.opType == "Clip", "\(q.name) reads a Clip")
            let prefix = String(q.name.dropLast(".quantize".count))
            let conv = w8a4.convs.first { $0.name + ".input" == prefix }
            let (s, z) = conv.map { ($0.inputScale, $0.inputZeroPoint) }
                ?? (prefix == "linear.feature" ? (w8a4.head.featureScale, w8a4.head.featureZeroPoint)
                                                : (w8a4.head.inputScale, w8a4.head.inputZeroPoint))
            // Signed 4-bit codes are [-8, 7]; unsigned [0, 15] around the zero point.
            #expect(try scalar(prefix + ".clip_min") == Float(w8a4.activation.qmin - z) * s)
            #expect(try scalar(prefix + ".clip_max") == Float(w8a4.activation.qmax - z) * s)
            #expect(try scalar(prefix + ".scale") == s)
        }
    }
}
