import Foundation
import QARepKernels

/// A float32 tensor with define-by-run reverse-mode automatic differentiation.
///
/// Storage is one contiguous row-major array; image tensors are NCHW and
/// convolution weights OIHW, as in PyTorch. A tensor made by an operation on
/// tensors that require gradients remembers its inputs and a closure that
/// propagates its gradient to them; `backward()` runs those closures in
/// reverse topological order and accumulates into each leaf's `grad`.
///
/// Tensors are reference types: a module's parameter is updated in place by the
/// optimizer and by checkpoint loading, and every holder sees the change.
public final class Tensor {
    /// Dimensions, outermost first. A scalar has shape `[]`.
    public private(set) var shape: [Int]
    /// Elements in row-major order; `count == shape.product`.
    public var data: [Float] {
        didSet { precondition(data.count == shape.reduce(1, *), "tensor data count \(data.count) does not match shape \(shape)") }
    }
    /// Accumulated gradient (same count as `data`), or nil before any backward pass.
    public var grad: [Float]?
    /// Whether gradients flow to (and through) this tensor.
    public var requiresGrad: Bool

    /// Inputs of the operation that produced this tensor (empty for leaves).
    var parents: [Tensor] = []
    /// Propagates `grad` (the argument) to `parents`. Nil for leaves.
    var backwardFunction: (([Float]) -> Void)?

    /// A tensor from its elements.
    /// - Parameters:
    ///   - data: elements in row-major order; their count must equal the product of `shape`.
    ///   - shape: dimensions.
    ///   - requiresGrad: true for trainable parameters.
    public init(_ data: [Float], shape: [Int], requiresGrad: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(data.count == shape.reduce(1, *), "tensor data count \(data.count) does not match shape \(shape)")
        self.shape = shape
        self.data = data
        self.requiresGrad = requiresGrad
    }

    /// A tensor filled with one value.
    public convenience init(repeating value: Float, shape: [Int], requiresGrad: Bool = false) {
        self.init([Float](repeating: value, count: shape.reduce(1, *)), shape: shape, requiresGrad: requiresGrad)
    }

    /// A scalar (shape `[]`).
    public convenience init(scalar: Float) { self.init([scalar], shape: []) }

    /// Number of elements.
    public var count: Int { data.count }
    /// Number of dimensions.
    public var rank: Int { shape.count }
    /// The only element of a one-element tensor.
    public var item: Float {
        precondition(data.count == 1, "item needs a one-element tensor, shape is \(shape)")
        return data[0]
    }
    /// True for tensors made by an operation (not leaves).
    public var isLeaf: Bool { backwardFunction == nil }

    /// A copy of the values that is cut from the graph.
    public func detached() -> Tensor { Tensor(data, shape: shape) }

    /// Replaces the values in place, keeping identity (module parameters).
    /// - Precondition: `values.count == count`.
    public func assign(_ values: [Float]) {
        precondition(values.count == data.count, "assign: \(values.count) values for shape \(shape)")
        data = values
    }

    /// Sets the gradient to nil.
    public func zeroGrad() { grad = nil }

    /// Adds `g` to the accumulated gradient.
    func accumulateGrad(_ g: [Float]) {
        if grad == nil {
            grad = g
        } else {
            grad!.withUnsafeMutableBufferPointer { acc in
                g.withUnsafeBufferPointer { accumulate($0.baseAddress!, into: acc.baseAddress!, count: acc.count) }
            }
        }
    }

    /// Adds into the accumulated gradient through a closure that receives a
    /// buffer already holding the gradient so far (zeros the first time).
    func accumulateGrad(_ body: (UnsafeMutableBufferPointer<Float>) -> Void) {
        if grad == nil { grad = [Float](repeating: 0, count: data.count) }
        grad!.withUnsafeMutableBufferPointer { body($0) }
    }

    /// Makes a tensor computed from `inputs`, recording `backward` when any
    /// input requires a gradient and gradient recording is on.
    /// `operation` names the operation for graph capture, which refuses
    /// tensors made outside the operations it knows.
    static func result(_ data: [Float], shape: [Int], inputs: [Tensor], operation: String = #function,
                       backward: @escaping ([Float]) -> Void) -> Tensor {
        let out = Tensor(data, shape: shape)
        GraphTracer.current?.madeTensor(by: operation)
        if GradMode.isEnabled && inputs.contains(where: { $0.requiresGrad }) {
            out.requiresGrad = true
            out.parents = inputs
            out.backwardFunction = backward
        }
        return out
    }

    /// Back-propagates from this tensor. With no `gradient`, the tensor must
    /// have one element and the seed is 1 (a loss). Gradients accumulate into
    /// leaves that require them; the graph behind this tensor is freed.
    public func backward(gradient: [Float]? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require a gradient")
        precondition(gradient != nil || data.count == 1, "backward() without a gradient needs a scalar, shape is \(shape)")
        let order = topologicalOrder()
        accumulateGrad(gradient ?? [1])
        for node in order.reversed() {
            guard let fn = node.backwardFunction, let g = node.grad else { continue }
            fn(g)
            // Free the graph as we go, like PyTorch without retain_graph: it
            // releases activations and breaks reference chains.
            node.backwardFunction = nil
            node.parents = []
            node.grad = nil
        }
    }

    /// Nodes reachable from `self`, every node after all its inputs.
    private func topologicalOrder() -> [Tensor] {
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (node, expanded) = stack.popLast() {
            if expanded { order.append(node); continue }
            if !visited.insert(ObjectIdentifier(node)).inserted { continue }
            stack.append((node, true))
            for p in node.parents where p.requiresGrad && !visited.contains(ObjectIdentifier(p)) {
                stack.append((p, false))
            }
        }
        return order
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let head = data.prefix(8).map { String(format: "%.4g", $0) }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(head)\(data.count > 8 ? ", ..." : "")])"
    }
}
