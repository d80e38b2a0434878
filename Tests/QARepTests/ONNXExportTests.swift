import Foundation
import QARep
import QARepONNX
import Testing

@Suite("ONNX export")
struct ONNXExportTests {
    /// A calibrated INT8 model of a small QARepVGG.
    func smallInt8(_ qconfig: QConfig = .tensorRT) throws -> (RepVGGNet, Int8Model) {
        let model = try RepVGGNet(config: ModelConfig(widths: [4, 4, 8, 8, 8], blocks: [1, 1, 2, 1, 1], block: .qarepvgg), seed: 4)
        randomizeBatchNorms(model, seed: 5)
        let int8 = try postTrainingQuantize(model, calibration: syntheticBands(count: 64, seed: 6), qconfig: qconfig).convertToInt8()
        return (model, int8)
    }

    @Test("the INT8 export is a QDQ graph: int8 per-channel weights, int32 biases, Q/DQ around every conv input")
    func int8Graph() throws {
        let (_, int8) = try smallInt8()
        let model = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(int8))
        #expect(model.opsetImport.first?.version == ONNXExport.opset)
        let ops = model.graph.node.map(\.opType)
        #expect(ops.filter { $0 == "Conv" }.count == int8.convs.count)
        #expect(ops.filter { $0 == "QuantizeLinear" }.count == int8.convs.count + 2, "one per conv input, two in the head")
        #expect(ops.suffix(4) == ["Flatten", "DequantizeLinear", "DequantizeLinear", "Gemm"], "weight and bias dequantized into the Gemm")
        let inits = Dictionary(uniqueKeysWithValues: model.graph.initializer.map { ($0.name, $0) })
        let w = try #require(inits["stage0.weight"])
        #expect(w.dataType == Int32(Onnx_TensorProto.DataType.int8.rawValue))
        #expect(w.rawData == Data(int8.convs[0].weight.map { UInt8(bitPattern: $0) }))
        #expect(inits["stage1.0.bias"]?.dataType == Int32(Onnx_TensorProto.DataType.int32.rawValue))
        #expect(inits["stage0.input.zero_point"]?.dataType == Int32(Onnx_TensorProto.DataType.int8.rawValue))
        let weightDQ = try #require(model.graph.node.first { $0.name == "stage0.weight.dequantize" })
        #expect(weightDQ.attribute.first { $0.name == "axis" }?.i == 0)
        #expect(model.graph.output.first?.name == "logits")
    }

    @Test("a converted graph exports as QDQ: every quantized tensor Q/DQ'd once, float-kept layers as float operators")
    func graphExport() throws {
        let data = syntheticBands(count: 96, seed: 30)
        let net = EveryOpNet(seed: 31)
        randomizeBatchNorms(net, seed: 32)
        let example = Tensor([Float](repeating: 0, count: 28 * 28), shape: [1, 1, 28, 28])
        let prepared = try QuantizedGraph(net, example: example, qconfig: QConfigMapping().setting("branch", to: nil), mode: .ptq)
        try prepared.calibrate(on: data)
        let int8 = try prepared.convertToInt8()
        let model = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(int8))
        let ops = model.graph.node.map(\.opType)
        // Q/DQ after: input, stem, max pool (repeats the stem's), block, add, branch (float, quantized for
        // the concat), concat, deployed block, pool, flatten (repeats the pool's). The logits stay float.
        let quantizedTensors = int8.nodes.filter { $0.outputParams != nil }.count
        #expect(ops.filter { $0 == "QuantizeLinear" }.count == quantizedTensors && quantizedTensors == 10, "\(ops)")
        for op in ["Conv", "Add", "Concat", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm", "Relu"] { #expect(ops.contains(op), "\(op)") }
        let inits = Dictionary(uniqueKeysWithValues: model.graph.initializer.map { ($0.name, $0) })
        #expect(inits["stem.weight"]?.dataType == Int32(Onnx_TensorProto.DataType.int8.rawValue))
        #expect(inits["branch.weight"]?.dataType == Int32(Onnx_TensorProto.DataType.float.rawValue), "the float-kept branch")
        #expect(model.graph.output.first?.name == "logits")
        #expect(model.graph.input.first?.type.tensorType.shape.dim[1].dimValue == 1)
    }

    @Test("unsigned activations export uint8 zero points")
    func unsignedZeroPoints() throws {
        let (_, int8) = try smallInt8(.unsignedActivations)
        let model = try Onnx_ModelProto(serializedBytes: ONNXExport.int8(int8))
        let zp = try #require(model.graph.initializer.first { $0.name == "stage0.input.zero_point" })
        #expect(zp.dataType == Int32(Onnx_TensorProto.DataType.uint8.rawValue))
        #expect(zp.rawData == Data([UInt8(int8.convs[0].inputZeroPoint)]))
    }

    @Test("the FP32 export holds the folded weights")
    func fp32Graph() throws {
        let (net, _) = try smallInt8()
        let model = try Onnx_ModelProto(serializedBytes: ONNXExport.fp32(net))
        let deployed = net.deployed()
        let w = try #require(model.graph.initializer.first { $0.name == "stage2.1.rbr_reparam.weight" })
        let expected = ((deployed.stage2[1] as! ReparamBlock).conv.weight.data)
        #expect(w.rawData == expected.withUnsafeBufferPointer { Data(buffer: $0) })
        #expect(model.graph.node.map(\.opType).suffix(3) == ["GlobalAveragePool", "Flatten", "Gemm"])
    }
}
