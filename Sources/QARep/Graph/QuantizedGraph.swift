/// A captured graph prepared for quantization, PyTorch's `prepare_fx` /
/// `prepare_qat_fx`: patterns fused, fake quantizers inserted, in one module
/// that trains, calibrates, evaluates and converts like `QuantizedNet`.
///
/// - Fusion: a convolution with the batch norm and ReLU after it (when
///   nothing else reads the values between) is one `QuantGraphConv` (BN
///   folded for PTQ, its fold simulated for QAT); a RepVGG block is one with
///   its own fold rules (QARepVGG's post-BN kept for QAT); a residual add or a
///   linear layer takes the ReLU after it.
/// - Quantizers: one per tensor, at its producer, however many layers read it
///   (a residual's input feeds both a convolution and the add). Convolutions,
///   linear layers, adds, concatenations and global average pooling write a
///   newly quantized tensor (an add or a concatenation requantizes its inputs
///   to one output scale); max pooling, ReLU and flatten pass their input's
///   scale through. The logits of a final linear layer stay float.
/// - Partial quantization: a node whose qconfig is `nil` runs in float
///   between a dequantize and (if a quantized node reads it) a quantize.
///
/// The prepared model owns copies of the quantized layers' parameters; float
/// nodes run the original model's modules.
public final class QuantizedGraph: Module, Layer {
    /// The graph as captured from the float model.
    public let graph: Graph
    public let mode: Mode
    /// The activation scheme of every quantized tensor.
    public let activation: QuantScheme
    let steps: [Step]
    /// The quantizer applied to each tensor (by value id) as it is produced.
    let quantizeAfter: [Int: FakeQuantize]
    /// The quantizer whose scale describes each quantized tensor (pass-through
    /// operations share their input's).
    let describing: [Int: FakeQuantize]

    public enum Mode: String, Sendable {
        /// Post-training quantization: batch norms folded, observers calibrate.
        case ptq
        /// Quantization-aware training: batch norms kept, their fold simulated.
        case qat
    }

    /// One fused operation; values are identified by the graph node that made them.
    struct Step {
        let name: String
        let kind: Kind
        let inputs: [Int]
        let output: Int
    }

    enum Kind {
        case input
        case conv(QuantGraphConv)
        case linear(QuantGraphLinear)
        /// Quantized (add, concatenation, average pooling: a new scale) or
        /// passing its input's scale through (max pooling, ReLU, flatten).
        case function(TensorFunction)
        /// Nodes kept in float, run as captured.
        case float([Graph.Node])
    }

    /// Captures `model` on `example` and prepares it (see the type's description).
    /// - Throws: `GraphError` for an operation the graph or the quantizer cannot
    ///   handle (named), or for qconfigs with different activation schemes.
    public convenience init(_ model: some Layer, example: Tensor, qconfig: QConfigMapping = QConfigMapping(),
                            mode: Mode) throws {
        try self.init(graph: Graph.capture(model, example: example), qconfig: qconfig, mode: mode)
    }

    /// Prepares a captured graph.
    public init(graph: Graph, qconfig mapping: QConfigMapping = QConfigMapping(), mode: Mode) throws {
        self.graph = graph
        self.mode = mode
        let unmatched = mapping.unmatchedPatterns(in: graph.nodes.map(\.name))
        guard unmatched.isEmpty else {
            throw GraphError("qconfig names no node of the graph: \(unmatched.joined(separator: ", ")) (nodes: \(graph.nodes.map(\.name).joined(separator: ", ")))")
        }
        let consumers = graph.consumers
        var steps: [Step] = []
        var quantizeAfter: [Int: FakeQuantize] = [:]
        var describing: [Int: FakeQuantize] = [:]
        var activation: QuantScheme?
        var absorbed = Set<Int>()

        /// The only reader of `id`'s output, if it has exactly one and the output is not the model's.
        func soleConsumer(of id: Int) -> Graph.Node? {
            guard consumers[id].count == 1, id != graph.output else { return nil }
            return graph.nodes[consumers[id][0]]
        }
        /// The ReLU that alone reads `id`, absorbed.
        func absorbReLU(after id: Int) -> Int? {
            guard let next = soleConsumer(of: id), case .relu = next.op else { return nil }
            absorbed.insert(next.id)
            return next.id
        }
        /// A fused run kept in float.
        func floatStep(_ name: String, _ chain: [Int]) -> Step {
            Step(name: name, kind: .float(chain.map { graph.nodes[$0] }), inputs: graph.nodes[chain[0]].inputs, output: chain.last!)
        }
        func settings(_ name: String) throws -> QConfig? {
            guard let q = mapping.qconfig(for: name) else { return nil }
            try q.validate()
            if let bits = q.firstLastBits {
                throw GraphError("\(name): first and last layers at \(bits) bits apply to RepVGG-family models; in a graph, set a layer's weight width with a QConfigMapping override")
            }
            if let a = activation, a != q.activation {
                throw GraphError("\(name): every quantized tensor needs one activation scheme; \(q.activation) differs from \(a)")
            }
            activation = q.activation
            return q
        }
        /// The quantizer of value `id`, made (at its producer) if the producer left it float.
        func quantized(_ id: Int, _ q: QConfig) -> FakeQuantize {
            if let fq = describing[id] { return fq }
            let fq = FakeQuantize(scheme: q.activation, calibrator: q.calibrator)
            quantizeAfter[id] = fq
            describing[id] = fq
            return fq
        }

        for node in graph.nodes where !absorbed.contains(node.id) {
            switch node.op {
            case .input:
                steps.append(Step(name: node.name, kind: .input, inputs: [], output: node.id))
            case .conv, .repVGGBlock, .reparamBlock:
                var chain = [node.id], bn: BatchNorm2d?, relu = false
                if case .conv = node.op, let next = soleConsumer(of: node.id), case .batchNorm(let b) = next.op {
                    bn = b; chain.append(next.id); absorbed.insert(next.id)
                }
                if case .conv = node.op, let r = absorbReLU(after: chain.last!) { chain.append(r); relu = true }
                guard let q = try settings(node.name) else { steps.append(floatStep(node.name, chain)); continue }
                let unit = Self.convolutionUnit(node.op, batchNorm: bn, relu: relu, mode: mode, qconfig: q)
                _ = quantized(node.inputs[0], q)
                steps.append(Step(name: node.name, kind: .conv(unit), inputs: node.inputs, output: chain.last!))
                _ = quantized(chain.last!, q)
            case .linear(let layer):
                var chain = [node.id], relu = false
                if let r = absorbReLU(after: node.id) { chain.append(r); relu = true }
                guard let q = try settings(node.name) else { steps.append(floatStep(node.name, chain)); continue }
                let last = chain.last!
                _ = quantized(node.inputs[0], q)
                steps.append(Step(name: node.name, kind: .linear(QuantGraphLinear(layer, relu: relu, qconfig: q)),
                                  inputs: node.inputs, output: last))
                // Logits stay float: the engine scales the last accumulators.
                if last != graph.output { _ = quantized(last, q) }
            case .add, .concat, .globalAveragePool:
                var chain = [node.id], relu = false
                if case .add = node.op, let r = absorbReLU(after: node.id) { chain.append(r); relu = true }
                guard let q = try settings(node.name) else { steps.append(floatStep(node.name, chain)); continue }
                let last = chain.last!
                for i in node.inputs { _ = quantized(i, q) }
                let function: TensorFunction = relu ? .add(relu: true) : node.op.function!
                steps.append(Step(name: node.name, kind: .function(function), inputs: node.inputs, output: last))
                _ = quantized(last, q)
            case .maxPool, .relu, .flatten:
                // Order-preserving: the input's codes and scale pass through.
                if let fq = describing[node.inputs[0]] {
                    describing[node.id] = fq
                    steps.append(Step(name: node.name, kind: .function(node.op.function!), inputs: node.inputs, output: node.id))
                } else {
                    steps.append(Step(name: node.name, kind: .float([node]), inputs: node.inputs, output: node.id))
                }
            case .batchNorm:
                guard try settings(node.name) == nil else {
                    throw GraphError("\(node.name): a batch norm that does not follow a convolution cannot be quantized "
                                     + "(fold it by hand, or keep it float with .setting(\"\(node.name)\", to: nil))")
                }
                steps.append(Step(name: node.name, kind: .float([node]), inputs: node.inputs, output: node.id))
            }
        }
        guard let activation else { throw GraphError("no node of the graph is quantized: the qconfig mapping keeps everything float") }
        self.activation = activation
        self.steps = steps
        self.quantizeAfter = quantizeAfter
        self.describing = describing
    }

    /// The fused convolution of `op` (a convolution, RepVGG block or deployed block).
    private static func convolutionUnit(_ op: GraphOp, batchNorm bn: BatchNorm2d?, relu: Bool, mode: Mode,
                                        qconfig: QConfig) -> QuantGraphConv {
        func parameters(_ w: [Float], _ b: [Float], like conv: (outChannels: Int, inChannels: Int, kernel: Int),
                        stride: Int, padding: Int) -> Conv2d {
            Conv2d(weight: Tensor(w, shape: [conv.outChannels, conv.inChannels, conv.kernel, conv.kernel], requiresGrad: true),
                   bias: Tensor(b, shape: [conv.outChannels], requiresGrad: true), stride: stride, padding: padding)
        }
        switch op {
        case .conv(let c):
            let shape = (c.outChannels, c.inChannels, c.kernelSize)
            let bias = c.bias?.data ?? [Float](repeating: 0, count: c.outChannels)
            if let bn, mode == .ptq {
                let (w, b) = foldBatchNorm(weight: c.weight.data, bias: bias, outChannels: c.outChannels, bn: bn)
                return QuantGraphConv(conv: parameters(w, b, like: shape, stride: c.stride, padding: c.padding),
                                      postBN: nil, relu: relu, qconfig: qconfig)
            }
            return QuantGraphConv(conv: parameters(c.weight.data, bias, like: shape, stride: c.stride, padding: c.padding),
                                  postBN: bn?.copy(), relu: relu, qconfig: qconfig)
        case .repVGGBlock(let block):
            let keepBN = mode == .qat && block.postBN != nil
            let (w, b) = keepBN ? block.mergedBranches() : block.reparameterized()
            return QuantGraphConv(conv: parameters(w, b, like: (block.outChannels, block.inChannels, 3), stride: block.stride, padding: 1),
                                  postBN: keepBN ? block.postBN!.copy() : nil, relu: true, qconfig: qconfig)
        case .reparamBlock(let block):
            let c = block.conv
            return QuantGraphConv(conv: Conv2d(weight: c.weight.detachedParameter(), bias: c.bias!.detachedParameter(),
                                               stride: c.stride, padding: c.padding),
                                  postBN: nil, relu: true, qconfig: qconfig)
        default:
            preconditionFailure("\(op.kind) is not a convolution")
        }
    }

    /// Quantized layers under their node names, and each quantizer under
    /// `<producer>.output_fake_quant` (`input.output_fake_quant` for the image):
    /// the state-dict keys of checkpoints.
    public override func namedChildren() -> [(name: String, module: Module)] {
        var out: [(name: String, module: Module)] = []
        for step in steps {
            switch step.kind {
            case .conv(let unit): out.append((step.name, unit))
            case .linear(let layer): out.append((step.name, layer))
            case .float(let nodes):
                for node in nodes { if let m = node.op.module { out.append((node.name, m)) } }
            default: break
            }
            if let fq = quantizeAfter[step.output] { out.append((step.name + ".output_fake_quant", fq)) }
        }
        return out
    }

    /// Every fake quantizer: activations, then weights.
    public var fakeQuantizers: [FakeQuantize] { activationQuantizers + weightQuantizers }

    var activationQuantizers: [FakeQuantize] { steps.compactMap { quantizeAfter[$0.output] } }

    var weightQuantizers: [FakeQuantize] {
        steps.compactMap { step in
            switch step.kind {
            case .conv(let unit): unit.weightQuant
            case .linear(let layer): layer.weightQuant
            default: nil
            }
        }
    }

    public func callAsFunction(_ x: Tensor) -> Tensor { values(x, steps: steps.count)[graph.output]! }

    /// Every value the first `count` steps write when the graph runs on `x`.
    func values(_ x: Tensor, steps count: Int) -> [Int: Tensor] {
        var values: [Int: Tensor] = [:]
        for step in steps.prefix(count) {
            let inputs = step.inputs.map { values[$0]! }
            var y: Tensor
            switch step.kind {
            case .input: y = x
            case .conv(let unit): y = unit(inputs[0], inputQuant: describing[step.inputs[0]]!)
            case .linear(let layer): y = layer(inputs[0], inputQuant: describing[step.inputs[0]]!)
            case .function(let f): y = f.apply(inputs)
            case .float(let nodes): y = Self.runFloat(nodes, inputs: Dictionary(uniqueKeysWithValues: zip(step.inputs, inputs)))
            }
            if let fq = quantizeAfter[step.output] { y = fq(y) }
            values[step.output] = y
        }
        return values
    }

    /// Runs captured nodes in order; `inputs` holds the values they read from outside.
    static func runFloat(_ nodes: [Graph.Node], inputs: [Int: Tensor]) -> Tensor {
        var values = inputs
        for node in nodes { values[node.id] = node.op.apply(node.inputs.map { values[$0]! }) }
        return values[nodes.last!.id]!
    }

    /// Sets both switches on every fake quantizer.
    public func setQuantization(observe: Bool, fakeQuantize: Bool) {
        for fq in fakeQuantizers { fq.observerEnabled = observe; fq.fakeQuantEnabled = fakeQuantize }
    }

    /// Post-training calibration, as `QuantizedNet.calibrate(on:)`.
    /// - Throws: `QuantizationError` for an empty calibration set.
    public func calibrate(on images: any Dataset, batchSize: Int = 128) throws {
        try calibrateFakeQuantized(self, quantizers: fakeQuantizers, weightQuantizers: weightQuantizers,
                                   on: images, batchSize: batchSize)
    }

    /// After calibration, for QAT: activation ranges follow the data by moving averages.
    public func trackActivationRanges(averagingConstant: Float = 0.01) {
        for fq in activationQuantizers {
            fq.switchToMovingAverage(averagingConstant: averagingConstant)
            fq.observerEnabled = true
        }
    }

    /// QAT's BN freeze: every batch norm, fused or kept float, uses and keeps its running statistics from now on.
    public func freezeBatchNormStatistics() {
        for (_, m) in namedModules() { (m as? BatchNorm2d)?.freezeStatistics = true }
    }
}
