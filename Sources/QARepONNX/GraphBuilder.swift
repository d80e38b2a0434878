import Foundation
import SwiftProtobuf

/// Builds an ONNX graph node by node: initializers with raw little-endian
/// data, nodes with fresh output names, attributes by kind.
struct GraphBuilder {
    var nodes: [Onnx_NodeProto] = []
    var initializers: [Onnx_TensorProto] = []
    private var counter = 0

    enum Attribute {
        case int(Int64)
        case ints([Int64])
        case float(Float)
    }

    /// A float initializer (`dims` [] for a scalar).
    mutating func floats(_ name: String, _ values: [Float], dims: [Int]) -> String {
        tensor(name, .float, dims, values.withUnsafeBufferPointer { Data(buffer: $0) })
    }

    mutating func int8(_ name: String, _ values: [Int8], dims: [Int]) -> String {
        tensor(name, .int8, dims, values.withUnsafeBufferPointer { Data(buffer: $0) })
    }

    mutating func uint8(_ name: String, _ values: [UInt8], dims: [Int]) -> String {
        tensor(name, .uint8, dims, Data(values))
    }

    mutating func int32(_ name: String, _ values: [Int32], dims: [Int]) -> String {
        tensor(name, .int32, dims, values.withUnsafeBufferPointer { Data(buffer: $0) })
    }

    private mutating func tensor(_ name: String, _ type: Onnx_TensorProto.DataType, _ dims: [Int], _ raw: Data) -> String {
        var t = Onnx_TensorProto()
        t.name = name
        t.dataType = Int32(type.rawValue)
        t.dims = dims.map(Int64.init)
        t.rawData = raw  // x86-64 is little-endian, as ONNX's raw_data requires
        initializers.append(t)
        return name
    }

    /// Appends a node; returns its (first) output name.
    @discardableResult
    mutating func node(_ op: String, _ inputs: [String], name: String? = nil, output: String? = nil,
                       _ attributes: [String: Attribute] = [:]) -> String {
        counter += 1
        let nodeName = name ?? "\(op)_\(counter)"
        var n = Onnx_NodeProto()
        n.opType = op
        n.name = nodeName
        n.input = inputs
        n.output = [output ?? nodeName + "_out"]
        for (key, value) in attributes.sorted(by: { $0.key < $1.key }) {
            var a = Onnx_AttributeProto()
            a.name = key
            switch value {
            case .int(let i): a.type = .int; a.i = i
            case .ints(let v): a.type = .ints; a.ints = v
            case .float(let f): a.type = .float; a.f = f
            }
            n.attribute.append(a)
        }
        nodes.append(n)
        return n.output[0]
    }

    /// A float tensor value with a symbolic batch dimension `N`.
    /// A float value's declaration; a nil dimension is symbolic, named by
    /// `symbols` at its index (`N` for the batch by default).
    static func floatValue(_ name: String, dims: [Int?], symbols: [Int: String] = [:]) -> Onnx_ValueInfoProto {
        var shape = Onnx_TensorShapeProto()
        shape.dim = dims.enumerated().map { i, d in
            var dim = Onnx_TensorShapeProto.Dimension()
            if let d { dim.dimValue = Int64(d) } else { dim.dimParam = symbols[i] ?? "N" }
            return dim
        }
        var tensorType = Onnx_TypeProto.Tensor()
        tensorType.elemType = Int32(Onnx_TensorProto.DataType.float.rawValue)
        tensorType.shape = shape
        var type = Onnx_TypeProto()
        type.tensorType = tensorType
        var v = Onnx_ValueInfoProto()
        v.name = name
        v.type = type
        return v
    }

    /// The finished model: opset 13 (per-axis QuantizeLinear/DequantizeLinear), IR version 7.
    func model(name: String, input: Onnx_ValueInfoProto, output: Onnx_ValueInfoProto, docString: String) -> Onnx_ModelProto {
        var graph = Onnx_GraphProto()
        graph.name = name
        graph.node = nodes
        graph.initializer = initializers
        graph.input = [input]
        graph.output = [output]
        var opset = Onnx_OperatorSetIdProto()
        opset.domain = ""
        opset.version = ONNXExport.opset
        var model = Onnx_ModelProto()
        model.irVersion = 7
        model.opsetImport = [opset]
        model.producerName = "qarep"
        model.producerVersion = "1"
        model.docString = docString
        model.graph = graph
        return model
    }
}
