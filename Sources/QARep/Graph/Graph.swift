/// A model as a list of operations in the order it ran them, captured by
/// running it once (`Graph.capture`), as torch.fx's symbolic trace or
/// PyTorch 2's export do: what quantization prepares, converts and exports.
public struct Graph {
    /// One operation and where its inputs come from.
    public struct Node {
        /// Index in `nodes`.
        public let id: Int
        /// The module's state-dict path (`layer1.0.conv1`) for module
        /// operations; `add_1`, `relu_2`, ... for the others.
        public let name: String
        public let op: GraphOp
        /// Ids of the nodes whose outputs this one reads, in argument order.
        public let inputs: [Int]
        /// The output's shape in the capture run (its batch size included).
        public let shape: [Int]
    }

    /// Operations in execution order; node 0 is the input.
    public internal(set) var nodes: [Node]
    /// The node whose output the model returned.
    public internal(set) var output: Int

    /// Ids of the nodes that read each node's output.
    public var consumers: [[Int]] {
        var out = [[Int]](repeating: [], count: nodes.count)
        for node in nodes { for i in node.inputs { out[i].append(node.id) } }
        return out
    }

    /// Runs the captured operations on `x`: the model's own output, bit for bit.
    public func callAsFunction(_ x: Tensor) -> Tensor {
        var values = [Tensor?](repeating: nil, count: nodes.count)
        values[0] = x
        let uses = consumers.map(\.count)
        var remaining = uses
        for node in nodes.dropFirst() {
            values[node.id] = node.op.apply(node.inputs.map { values[$0]! })
            // Free what no later node reads.
            for i in node.inputs {
                remaining[i] -= 1
                if remaining[i] == 0 && i != output { values[i] = nil }
            }
        }
        return values[output]!
    }

    /// The value of node `id` when the captured operations run on `x`, with
    /// every module in evaluation mode (restored after): what the float model
    /// computes there.
    func value(of id: Int, on x: Tensor) -> Tensor {
        let modules = nodes.compactMap(\.op.module)
        let wasTraining = modules.map(\.training)
        modules.forEach { $0.eval() }
        defer { for (m, t) in zip(modules, wasTraining) { m.train(t) } }
        var values = [Tensor?](repeating: nil, count: id + 1)
        values[0] = x
        for node in nodes[1..<(id + 1)] { values[node.id] = node.op.apply(node.inputs.map { values[$0]! }) }
        return values[id]!
    }

    /// One line per node: `id name = kind(inputs) shape`.
    public var description: String {
        nodes.map { n in
            "%\(n.id) \(n.name) = \(n.op.kind)(\(n.inputs.map { "%\($0)" }.joined(separator: ", "))) \(n.shape)"
        }.joined(separator: "\n") + "\nreturn %\(output)"
    }
}

/// Why a model could not be captured or quantized, naming the operation.
public struct GraphError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
