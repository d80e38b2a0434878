import QARepKernels

/// The scale and zero point of a quantized tensor.
public struct QuantParams: Sendable, Equatable {
    public var scale: Float
    public var zeroPoint: Int32
}

/// An integer linear layer (weights of 8 bits or fewer, in `Int8`): `acc[k] = sum_c (x_q[c] - z_in) * w_q[k, c] + bias_q[k]`
/// (int32), then requantized like a convolution, or, for the logits,
/// `acc * s_in * s_w[k]` in float.
public struct Int8Linear: Sendable, Equatable {
    public var inFeatures: Int, outFeatures: Int
    /// `[outFeatures, inFeatures]`, in `[-127, 127]`.
    public var weight: [Int8]
    public var weightScales: [Float]
    /// In units of `s_in * s_w[k]`.
    public var bias: [Int32]
    /// The scale of the input codes.
    public var inputScale: Float
    /// The width of the weight codes, 2 to 8.
    public var weightBits: Int = 8
}

/// One operation of a converted graph.
public enum Int8Op {
    /// The float image, quantized when the node has output parameters.
    case input
    /// An integer convolution (`Int8Conv`'s arithmetic), ReLU as the clamp's lower bound.
    case conv(Int8Conv, relu: Bool)
    case linear(Int8Linear, relu: Bool)
    /// An add (inputs dequantized, summed in float, ReLU'd, quantized: the
    /// simulation's arithmetic, bit for bit), a concatenation (each input
    /// requantized to the output's scale), average pooling (planes of
    /// dequantized values averaged in float, quantized), or max pooling, ReLU
    /// (`max(code, zero point)`) and flatten on codes.
    case function(TensorFunction)
    /// Captured float operations, on the dequantized input; quantized after
    /// when the node has output parameters.
    case float([Graph.Node])
}

/// A captured model converted to integer arithmetic, PyTorch's `convert_fx`:
/// what `Int8GraphEngine` runs. Every tensor between nodes is int8 (or
/// uint8) codes with one scale and zero point, except where a node was kept
/// float, and the logits of a final linear layer.
public struct Int8Graph {
    public struct Node {
        public var name: String
        public var op: Int8Op
        /// Value ids of the inputs.
        public var inputs: [Int]
        /// The value id this node writes.
        public var output: Int
        /// The parameters of the codes it writes; nil for a float output.
        public var outputParams: QuantParams?
    }

    /// The activation scheme of every quantized tensor.
    public var activation: QuantScheme
    public var nodes: [Node]
    /// The value id of the model's output.
    public var output: Int
    /// Shapes of the input and the output in the capture run (batch included).
    public var inputShape: [Int], outputShape: [Int]
}

extension QuantizedGraph {
    /// Converts the calibrated (or QAT-trained) model to integer arithmetic:
    /// post-BNs folded, weights quantized per channel to each layer's width
    /// (2 to 8 bits, in int8) with the simulation's own scales, biases to int32.
    /// - Throws: `QuantizationError` if an activation quantizer never observed data.
    public func convertToInt8() throws -> Int8Graph {
        guard activationQuantizers.allSatisfy({ $0.observers.allSatisfy(\.hasObserved) }) else {
            throw QuantizationError("the model has not been calibrated: run calibration (PTQ) or QAT first")
        }
        func params(_ fq: FakeQuantize?) -> QuantParams? { fq.map { QuantParams(scale: $0.scales[0], zeroPoint: $0.zeroPoints[0]) } }
        func input(_ step: Step) -> QuantParams { params(describing[step.inputs[0]])! }
        var nodes: [Int8Graph.Node] = []
        for step in steps {
            let out = params(describing[step.output])
            let op: Int8Op
            switch step.kind {
            case .input: op = .input
            case .conv(let unit):
                let scheme = unit.weightQuant.scheme
                let (w, b) = unit.foldedWeights()
                let c = unit.conv, (i, o) = (input(step), out!)
                let (wq, ws) = quantizeWeights(w, channels: c.outChannels, scheme: scheme, quantizer: unit.weightQuant)
                op = .conv(Int8Conv(name: step.name, inChannels: c.inChannels, outChannels: c.outChannels, kernelSize: c.kernelSize,
                                    stride: c.stride, padding: c.padding, weight: wq, weightScales: ws,
                                    bias: quantizeBias(b, inputScale: i.scale, weightScales: ws),
                                    inputScale: i.scale, inputZeroPoint: i.zeroPoint,
                                    outputScale: o.scale, outputZeroPoint: o.zeroPoint, weightBits: scheme.bits), relu: unit.relu)
            case .linear(let layer):
                let scheme = layer.weightQuant.scheme
                let (k, c) = (layer.weight.shape[0], layer.weight.shape[1])
                let (wq, ws) = quantizeWeights(layer.weight.data, channels: k, scheme: scheme, quantizer: layer.weightQuant)
                op = .linear(Int8Linear(inFeatures: c, outFeatures: k, weight: wq, weightScales: ws,
                                        bias: quantizeBias(layer.bias.data, inputScale: input(step).scale, weightScales: ws),
                                        inputScale: input(step).scale, weightBits: scheme.bits),
                             relu: layer.relu)
            case .function(let f): op = .function(f)
            case .float(let captured): op = .float(captured)
            }
            nodes.append(Int8Graph.Node(name: step.name, op: op, inputs: step.inputs, output: step.output, outputParams: out))
        }
        return Int8Graph(activation: activation, nodes: nodes, output: graph.output,
                         inputShape: graph.nodes[0].shape, outputShape: graph.nodes[graph.output].shape)
    }
}
