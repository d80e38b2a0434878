import Foundation
import QARep

extension ONNXExport {
    /// A converted graph (`QuantizedGraph.convertToInt8()`) in QDQ form: every
    /// quantized tensor passes QuantizeLinear/DequantizeLinear with its scale
    /// and zero point where it is produced; convolution and linear weights
    /// are int8 initializers with per-channel DequantizeLinear, biases int32
    /// with scale `s_in * s_w`; then the float operators (Conv, Gemm, Add,
    /// Concat, MaxPool, GlobalAveragePool, Flatten, Relu). Nodes kept in float
    /// are exported as float operators. Max pooling, ReLU and flatten repeat
    /// their input's QDQ, which changes no value and lets runtimes keep them
    /// in integers.
    /// Activations narrower than 8 bits are clipped to their codes' range
    /// before each QuantizeLinear.
    /// - Throws: for a graph that is not an image model.
    public static func int8(_ model: Int8Graph) throws -> Data {
        guard model.inputShape.count == 4 else { throw GraphError("ONNX export needs an image input [N, C, H, W], got \(model.inputShape)") }
        var g = GraphBuilder()
        var names: [Int: String] = [:]
        var shapes: [Int: [Int]] = [:]

        func qdq(_ x: String, _ prefix: String, _ p: QuantParams) -> String {
            quantizeDequantize(x, prefix, scale: p.scale, zeroPoint: p.zeroPoint, scheme: model.activation, builder: &g)
        }
        /// Per-channel int8 weights (axis 0) and int32 biases in units of `s_in * s_w`, dequantized.
        func quantizedParameters(_ name: String, weight: [Int8], dims: [Int], scales: [Float], bias: [Int32],
                                 inputScale: Float) -> (String, String) {
            let o = dims[0]
            let w = g.int8(name + ".weight", weight, dims: dims)
            let ws = g.floats(name + ".weight_scale", scales, dims: [o])
            let wz = g.int8(name + ".weight_zero_point", [Int8](repeating: 0, count: o), dims: [o])
            let b = g.int32(name + ".bias", bias, dims: [o])
            let bs = g.floats(name + ".bias_scale", scales.map { inputScale * $0 }, dims: [o])
            let bz = g.int32(name + ".bias_zero_point", [Int32](repeating: 0, count: o), dims: [o])
            return (g.node("DequantizeLinear", [w, ws, wz], name: name + ".weight.dequantize", ["axis": .int(0)]),
                    g.node("DequantizeLinear", [b, bs, bz], name: name + ".bias.dequantize", ["axis": .int(0)]))
        }
        func relu(_ x: String, _ on: Bool, _ name: String) -> String { on ? g.node("Relu", [x], name: name + ".relu") : x }

        for node in model.nodes {
            let inputs = node.inputs.map { names[$0]! }
            var y: String
            switch node.op {
            case .input:
                y = "input"
                shapes[node.output] = model.inputShape
            case .conv(let c, let r):
                let (w, b) = quantizedParameters(node.name, weight: c.weight, dims: [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize],
                                                 scales: c.weightScales, bias: c.bias, inputScale: c.inputScale)
                y = relu(g.node("Conv", [inputs[0], w, b], name: node.name + ".conv",
                                convAttributes(kernel: c.kernelSize, stride: c.stride, padding: c.padding)), r, node.name)
            case .linear(let l, let r):
                let (w, b) = quantizedParameters(node.name, weight: l.weight, dims: [l.outFeatures, l.inFeatures],
                                                 scales: l.weightScales, bias: l.bias, inputScale: l.inputScale)
                y = relu(g.node("Gemm", [inputs[0], w, b], name: node.name + ".gemm", ["transB": .int(1)]), r, node.name)
            case .function(let f):
                y = function(f, inputs, name: node.name, builder: &g)
            case .float(let captured):
                var local = Dictionary(uniqueKeysWithValues: zip(node.inputs, inputs))
                for c in captured { local[c.id] = try floatOperator(c, local: local, builder: &g) }
                y = local[captured.last!.id]!
            }
            if let p = node.outputParams { y = qdq(y, node.name + ".output", p) }
            names[node.output] = y
        }
        g.node("Identity", [names[model.output]!], name: "output", output: "logits")
        let outputDims: [Int?] = [nil] + model.outputShape.dropFirst().map { Optional($0) }
        let onnx = g.model(name: "qarep-graph-int8", input: imageInput(channels: model.inputShape[1]),
                           output: GraphBuilder.floatValue("logits", dims: outputDims),
                           docString: "QARep INT8 graph in QDQ form (int8 per-channel weights, int32 biases, "
                               + "\(activationsDescription(model.activation)))")
        return try onnx.serializedData()
    }

    /// One captured float node as ONNX float operators (a RepVGG block folded first).
    private static func floatOperator(_ node: Graph.Node, local: [Int: String], builder g: inout GraphBuilder) throws -> String {
        let x = node.inputs.map { local[$0]! }
        let name = node.name
        func conv(_ weight: [Float], _ shape: [Int], _ bias: [Float]?, stride: Int, padding: Int, relu: Bool) -> String {
            let w = g.floats(name + ".weight", weight, dims: shape)
            let inputs = [x[0], w] + (bias.map { [g.floats(name + ".bias", $0, dims: [shape[0]])] } ?? [])
            let y = g.node("Conv", inputs, name: name + ".conv", convAttributes(kernel: shape[2], stride: stride, padding: padding))
            return relu ? g.node("Relu", [y], name: name + ".relu") : y
        }
        switch node.op {
        case .input: return "input"
        case .conv(let c):
            return conv(c.weight.data, c.weight.shape, c.bias?.data, stride: c.stride, padding: c.padding, relu: false)
        case .repVGGBlock(let b):
            let (w, bias) = b.reparameterized()
            return conv(w, [b.outChannels, b.inChannels, 3, 3], bias, stride: b.stride, padding: 1, relu: true)
        case .reparamBlock(let b):
            return conv(b.conv.weight.data, b.conv.weight.shape, b.conv.bias?.data, stride: b.conv.stride, padding: b.conv.padding, relu: true)
        case .batchNorm(let bn):
            let c = [bn.channels]
            return g.node("BatchNormalization", [x[0], g.floats(name + ".weight", bn.weight.data, dims: c),
                                                 g.floats(name + ".bias", bn.bias.data, dims: c),
                                                 g.floats(name + ".running_mean", bn.runningMean.data, dims: c),
                                                 g.floats(name + ".running_var", bn.runningVar.data, dims: c)],
                          name: name, ["epsilon": .float(bn.eps)])
        case .linear(let l):
            let w = g.floats(name + ".weight", l.weight.data, dims: l.weight.shape)
            let b = g.floats(name + ".bias", l.bias?.data ?? [Float](repeating: 0, count: l.weight.shape[0]), dims: [l.weight.shape[0]])
            return g.node("Gemm", [x[0], w, b], name: name, ["transB": .int(1)])
        case .relu, .add, .concat, .maxPool, .globalAveragePool, .flatten:
            return function(node.op.function!, x, name: name, builder: &g)
        }
    }

    /// A parameter-free operation as ONNX float operators (the graph's
    /// average pooling gives `[N, C]`, so GlobalAveragePool is flattened).
    private static func function(_ f: TensorFunction, _ x: [String], name: String, builder g: inout GraphBuilder) -> String {
        switch f {
        case .add(let relu):
            let y = g.node("Add", x, name: name)
            return relu ? g.node("Relu", [y], name: name + ".relu") : y
        case .concat: return g.node("Concat", x, name: name, ["axis": .int(1)])
        case .globalAveragePool:
            return g.node("Flatten", [g.node("GlobalAveragePool", x, name: name)], name: name + ".flatten", ["axis": .int(1)])
        case .maxPool(let k, let s, let p): return g.node("MaxPool", x, name: name, poolAttributes(kernel: k, stride: s, padding: p))
        case .relu: return g.node("Relu", x, name: name)
        case .flatten: return g.node("Flatten", x, name: name, ["axis": .int(1)])
        }
    }

    static func poolAttributes(kernel: Int, stride: Int, padding: Int) -> [String: GraphBuilder.Attribute] {
        let p = Int64(padding)
        return ["kernel_shape": .ints([Int64(kernel), Int64(kernel)]), "strides": .ints([Int64(stride), Int64(stride)]),
                "pads": .ints([p, p, p, p])]
    }
}
