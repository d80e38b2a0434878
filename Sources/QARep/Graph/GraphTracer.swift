import Foundation
import Synchronization

/// Records the operations of one model run for `Graph.capture`.
///
/// Operations QARep knows announce themselves through `traced`: module
/// operations (a convolution, a batch norm, a RepVGG block) as one node,
/// whatever they compute inside; tensor operations (`+`, `relu()`, pooling,
/// concatenation, flattening) as theirs. Any other operation that makes a
/// tensor outside such a node is an operation the graph cannot represent, and
/// the capture fails with its name.
final class GraphTracer {
    private static let key = "QARep.GraphTracer"
    /// Tracers alive in the process: the hook costs one atomic load when 0.
    private static let live = Atomic<Int>(0)

    /// The tracer recording on this thread, if any.
    static var current: GraphTracer? {
        guard live.load(ordering: .relaxed) > 0 else { return nil }
        return Thread.current.threadDictionary[key] as? GraphTracer
    }

    private(set) var nodes: [Graph.Node] = []
    private var ids: [ObjectIdentifier: Int] = [:]
    /// Every traced tensor stays alive until the capture ends, so no two share an identifier.
    private var kept: [Tensor] = []
    /// Nesting of traced operations: only the outermost becomes a node.
    private var depth = 0
    private(set) var failure: GraphError?
    private let moduleNames: [ObjectIdentifier: String]
    private var counters: [String: Int] = [:]

    init(root: Module) {
        var names: [ObjectIdentifier: String] = [:]
        for (path, module) in root.namedModules() where names[ObjectIdentifier(module)] == nil {
            names[ObjectIdentifier(module)] = path
        }
        moduleNames = names
    }

    /// Runs `body` with this tracer recording on the calling thread.
    func recording<T>(_ body: () throws -> T) rethrows -> T {
        let dictionary = Thread.current.threadDictionary
        precondition(dictionary[Self.key] == nil, "graph captures cannot nest")
        dictionary[Self.key] = self
        Self.live.add(1, ordering: .relaxed)
        defer {
            dictionary[Self.key] = nil
            Self.live.subtract(1, ordering: .relaxed)
        }
        return try body()
    }

    func addInput(_ x: Tensor) {
        record(.input, inputs: [], output: x, name: "input")
    }

    func id(of t: Tensor) -> Int? { ids[ObjectIdentifier(t)] }

    /// Runs a known operation; the outermost becomes a node.
    func scope(_ op: () -> GraphOp, _ inputs: () -> [Tensor], _ body: () -> Tensor) -> Tensor {
        guard depth == 0 else { return body() }
        depth += 1
        let out = body()
        depth -= 1
        record(op(), inputs: inputs(), output: out, name: nil)
        return out
    }

    /// An operation made a tensor: outside a known operation, that is one the graph cannot hold.
    func madeTensor(by operation: String) {
        guard depth == 0, failure == nil else { return }
        failure = GraphError("graph capture does not support the operation \(operation) (after \(nodes.last?.name ?? "the input")); "
                             + "quantizable models use convolutions, batch norm, ReLU, residual adds, concatenation, "
                             + "max and global average pooling, flatten, linear layers and RepVGG blocks")
    }

    private func record(_ op: GraphOp, inputs: [Tensor], output: Tensor, name given: String?) {
        guard failure == nil else { return }
        let name = given ?? op.module.flatMap { moduleNames[ObjectIdentifier($0)] }.map { $0.isEmpty ? op.kind : $0 }
            ?? { counters[op.kind, default: 0] += 1; return "\(op.kind)_\(counters[op.kind]!)" }()
        var inputIds: [Int] = []
        for t in inputs {
            guard let id = ids[ObjectIdentifier(t)] else {
                failure = GraphError("\(name) (\(op.kind)) reads a tensor that does not come from the model input "
                                     + "through operations graph capture supports (a constant, or the result of an unsupported operation)")
                return
            }
            inputIds.append(id)
        }
        let node = Graph.Node(id: nodes.count, name: name, op: op, inputs: inputIds, shape: output.shape)
        nodes.append(node)
        ids[ObjectIdentifier(output)] = node.id
        kept.append(output)
    }
}

/// Runs a known operation, as one graph node when a capture is recording.
@inline(__always)
func traced(_ op: @autoclosure () -> GraphOp, _ inputs: @autoclosure () -> [Tensor], _ body: () -> Tensor) -> Tensor {
    guard let tracer = GraphTracer.current else { return body() }
    return tracer.scope(op, inputs, body)
}

extension Graph {
    /// Captures `model` by running it once on `example` (one image is
    /// enough) in evaluation mode without gradients, then restores its mode.
    /// Nothing in the model changes: running statistics are not updated.
    /// - Throws: `GraphError` naming the first operation the graph cannot
    ///   hold, or a tensor that does not come from the input.
    public static func capture(_ model: some Layer, example: Tensor) throws -> Graph {
        let tracer = GraphTracer(root: model)
        let wasTraining = model.training
        model.eval()
        defer { model.train(wasTraining) }
        let output = noGrad {
            tracer.recording {
                tracer.addInput(example)
                return model(example)
            }
        }
        if let failure = tracer.failure { throw failure }
        guard let id = tracer.id(of: output) else {
            throw GraphError("the model's output does not come from its input through operations graph capture supports")
        }
        return Graph(nodes: tracer.nodes, output: id)
    }
}
