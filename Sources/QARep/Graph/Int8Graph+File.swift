import Foundation

/// The native file of a converted graph: safetensors with, for every
/// convolution and linear node, `<node>.weight` (I8), `<node>.bias` (I32)
/// and `<node>.weight_scale` (F32 `[O]`); `__metadata__` holds `format` =
/// `qarep`, `kind` = `int8-graph` and `int8_graph` (the nodes in order, with
/// their operation, inputs, geometry, scales, zero points and weight bit
/// widths, as JSON; the activation scheme with its width).
/// What `qarep ptq --out` and `qarep qat` write for a ResNet, and what
/// `qarep eval --int8` and `qarep export` read.
extension Int8Graph {
    struct NodeRecord: Codable {
        var name: String
        /// input, conv, linear, add, concat, global_average_pool, max_pool, relu or flatten.
        var op: String
        var inputs: [Int]
        var output: Int
        var outputScale: Float?, outputZeroPoint: Int32?
        var relu: Bool?
        var inChannels: Int?, outChannels: Int?, kernelSize: Int?, stride: Int?, padding: Int?
        var inputScale: Float?, inputZeroPoint: Int32?
        var inFeatures: Int?, outFeatures: Int?
        /// Of a convolution or linear node; absent in files written before sub-8-bit weights: 8.
        var weightBits: Int?

        init(name: String, op: String, inputs: [Int], output: Int, outputParams: QuantParams?) {
            self.name = name; self.op = op; self.inputs = inputs; self.output = output
            outputScale = outputParams?.scale; outputZeroPoint = outputParams?.zeroPoint
        }
    }

    struct Layout: Codable {
        var activation: QuantScheme
        var nodes: [NodeRecord]
        var output: Int
        var inputShape: [Int], outputShape: [Int]
    }

    public static let kind = "int8-graph"

    /// Writes the native file atomically.
    /// - Throws: `QuantizationError` for a graph the engine would refuse, or
    ///   one with nodes kept in float (partial quantization: export those as ONNX).
    public func write(to path: String) throws {
        try validate()
        var tensors: [String: SafeTensor] = [:]
        var records: [NodeRecord] = []
        for node in nodes {
            var r = NodeRecord(name: node.name, op: "", inputs: node.inputs, output: node.output, outputParams: node.outputParams)
            func weights(_ w: [Int8], _ shape: [Int], _ scales: [Float], _ bias: [Int32]) {
                tensors[node.name + ".weight"] = SafeTensor(int8: w, shape: shape)
                tensors[node.name + ".weight_scale"] = SafeTensor(floats: scales, shape: [scales.count])
                tensors[node.name + ".bias"] = SafeTensor(int32: bias, shape: [bias.count])
            }
            switch node.op {
            case .input: r.op = "input"
            case .conv(let c, let relu):
                r.op = "conv"; r.relu = relu
                r.inChannels = c.inChannels; r.outChannels = c.outChannels
                r.kernelSize = c.kernelSize; r.stride = c.stride; r.padding = c.padding
                r.inputScale = c.inputScale; r.inputZeroPoint = c.inputZeroPoint; r.weightBits = c.weightBits
                weights(c.weight, [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize], c.weightScales, c.bias)
            case .linear(let l, let relu):
                r.op = "linear"; r.relu = relu
                r.inFeatures = l.inFeatures; r.outFeatures = l.outFeatures; r.inputScale = l.inputScale; r.weightBits = l.weightBits
                weights(l.weight, [l.outFeatures, l.inFeatures], l.weightScales, l.bias)
            case .function(let f):
                switch f {
                case .add(let relu): r.op = "add"; r.relu = relu
                case .concat: r.op = "concat"
                case .globalAveragePool: r.op = "global_average_pool"
                case .maxPool(let k, let s, let p): r.op = "max_pool"; r.kernelSize = k; r.stride = s; r.padding = p
                case .relu: r.op = "relu"
                case .flatten: r.op = "flatten"
                }
            case .float:
                throw QuantizationError("node \(node.name) is kept in float; the native INT8 file holds fully quantized graphs (export this one as ONNX)")
            }
            records.append(r)
        }
        guard Set(nodes.map(\.name)).count == nodes.count else { throw QuantizationError("INT8 graph: node names must be unique") }
        let layout = Layout(activation: activation, nodes: records, output: output, inputShape: inputShape, outputShape: outputShape)
        let metadata = ["format": Checkpoint.format, "format_version": String(Checkpoint.formatVersion), "kind": Self.kind,
                        "int8_graph": try Checkpoint.jsonString(layout)]
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }

    /// Reads and validates a native INT8 graph file.
    /// - Throws: `CheckpointError` naming the file and the problem (a missing
    ///   tensor, a wrong dtype or shape, a node the engine could not run, ...).
    public static func read(from path: String) throws -> Int8Graph {
        try read(SafeTensorsFile.read(from: path), name: (path as NSString).lastPathComponent)
    }

    /// `read(from:)` of a file already parsed; `name` names it in errors.
    public static func read(_ file: SafeTensorsFile, name: String) throws -> Int8Graph {
        let meta = file.metadata
        guard meta["kind"] == kind, let json = meta["int8_graph"] else {
            if meta["format"] == Checkpoint.format { try Checkpoint.checkFormat(meta, file: name) }
            throw CheckpointError("\(name): not a QARep INT8 graph (kind is \(meta["kind"] ?? "missing"))")
        }
        try Checkpoint.checkFormat(meta, file: name)
        let layout = try Checkpoint.decode(Layout.self, json, what: "int8_graph", file: name)
        var used = Set<String>()
        func tensor(_ key: String, _ shape: [Int]) throws -> SafeTensor {
            guard let t = file.tensors[key] else { throw CheckpointError.missingKey(key, file: name) }
            guard t.shape == shape else { throw CheckpointError.shapeMismatch(key: key, file: name, fileShape: t.shape, modelShape: shape) }
            used.insert(key)
            return t
        }
        func typed<T>(_ key: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch { throw CheckpointError("\(name): key \(key): \(error)") }
        }
        /// Weight, scales and bias of a node with `outputs` channels and a weight of `shape`.
        func weights(_ node: String, _ shape: [Int]) throws -> (w: [Int8], s: [Float], b: [Int32]) {
            guard shape.allSatisfy({ (1...Int8Model.maxChannels).contains($0) }) else {
                throw CheckpointError("\(name): node \(node): bad weight shape \(shape)")
            }
            let (wk, sk, bk) = (node + ".weight", node + ".weight_scale", node + ".bias")
            let w = try tensor(wk, shape), s = try tensor(sk, [shape[0]]), b = try tensor(bk, [shape[0]])
            return (try typed(wk) { try w.int8() }, try typed(sk) { try s.floats() }, try typed(bk) { try b.int32() })
        }
        var nodes: [Node] = []
        for r in layout.nodes {
            func field<T>(_ value: T?, _ what: String) throws -> T {
                guard let value else { throw CheckpointError("\(name): node \(r.name) (\(r.op)) has no \(what)") }
                return value
            }
            let op: Int8Op
            switch r.op {
            case "input": op = .input
            case "conv":
                let (i, o, k) = (try field(r.inChannels, "inChannels"), try field(r.outChannels, "outChannels"), try field(r.kernelSize, "kernelSize"))
                guard (1...Int8Model.maxKernel).contains(k) else { throw CheckpointError("\(name): node \(r.name): kernel size \(k)") }
                let (w, s, b) = try weights(r.name, [o, i, k, k])
                let conv = Int8Conv(name: r.name, inChannels: i, outChannels: o, kernelSize: k, stride: try field(r.stride, "stride"),
                                    padding: try field(r.padding, "padding"), weight: w, weightScales: s, bias: b,
                                    inputScale: try field(r.inputScale, "inputScale"), inputZeroPoint: try field(r.inputZeroPoint, "inputZeroPoint"),
                                    outputScale: try field(r.outputScale, "outputScale"), outputZeroPoint: try field(r.outputZeroPoint, "outputZeroPoint"),
                                    weightBits: r.weightBits ?? 8)
                op = .conv(conv, relu: r.relu ?? false)
            case "linear":
                let (i, o) = (try field(r.inFeatures, "inFeatures"), try field(r.outFeatures, "outFeatures"))
                let (w, s, b) = try weights(r.name, [o, i])
                op = .linear(Int8Linear(inFeatures: i, outFeatures: o, weight: w, weightScales: s, bias: b,
                                        inputScale: try field(r.inputScale, "inputScale"), weightBits: r.weightBits ?? 8), relu: r.relu ?? false)
            case "add": op = .function(.add(relu: r.relu ?? false))
            case "concat": op = .function(.concat)
            case "global_average_pool": op = .function(.globalAveragePool)
            case "max_pool":
                op = .function(.maxPool(kernel: try field(r.kernelSize, "kernelSize"), stride: try field(r.stride, "stride"),
                                        padding: try field(r.padding, "padding")))
            case "relu": op = .function(.relu)
            case "flatten": op = .function(.flatten)
            default: throw CheckpointError("\(name): node \(r.name): unknown operation '\(r.op)'")
            }
            var params: QuantParams?
            switch (r.outputScale, r.outputZeroPoint) {
            case (let s?, let z?): params = QuantParams(scale: s, zeroPoint: z)
            case (nil, nil): params = nil
            default: throw CheckpointError("\(name): node \(r.name) has an output scale or zero point without the other")
            }
            nodes.append(Node(name: r.name, op: op, inputs: r.inputs, output: r.output, outputParams: params))
        }
        if let extra = file.tensors.keys.sorted().first(where: { !used.contains($0) }) {
            throw CheckpointError.unexpectedKey(extra, file: name)
        }
        let graph = Int8Graph(activation: layout.activation, nodes: nodes, output: layout.output,
                              inputShape: layout.inputShape, outputShape: layout.outputShape)
        do { try graph.validate() } catch let e as QuantizationError { throw CheckpointError("\(name): \(e.description)") }
        return graph
    }
}
