/// The invariants `Int8GraphEngine` relies on, checked before it runs a
/// graph: a converted model always meets them; a graph read from a file is
/// refused with the first node that breaks one, rather than crashing the engine.
extension Int8Graph {
    /// The largest image side a graph may declare.
    static let maxSide = 1 << 14

    /// - Throws: `QuantizationError` naming the node and the problem: an
    ///   input read before it is written, a code tensor read as float, a
    ///   scale that differs from its producer's, sizes that do not fit, an
    ///   accumulator that could overflow.
    public func validate() throws {
        do { try activation.validate() } catch let e as QuantizationError { throw QuantizationError("INT8 graph: activations: \(e)") }
        guard inputShape.count == 4, inputShape.dropFirst().allSatisfy({ (1...Self.maxSide).contains($0) }),
              inputShape[1] <= Int8Model.maxChannels else {
            throw QuantizationError("INT8 graph: input shape \(inputShape) is not [N, C, H, W] of a sensible size")
        }
        guard let first = nodes.first, case .input = first.op, first.inputs.isEmpty else {
            throw QuantizationError("INT8 graph: the first node must be the input")
        }
        // Shapes of one image (batch 1) and the parameters of every value written so far.
        var shapes: [Int: [Int]] = [:], params: [Int: QuantParams?] = [:]
        for node in nodes {
            func fail(_ why: String) -> QuantizationError { QuantizationError("INT8 graph: node \(node.name): \(why)") }
            guard params[node.output] == nil else { throw fail("writes value \(node.output) a second time") }
            for id in node.inputs where shapes[id] == nil { throw fail("reads value \(id) before any node writes it") }
            let inShapes = node.inputs.map { shapes[$0]! }
            let inParams = node.inputs.map { params[$0]! }
            if let p = node.outputParams { try checkParams(p, fail) }
            func arity(_ n: ClosedRange<Int>) throws {
                guard n.contains(node.inputs.count) else { throw fail("takes \(n) inputs, has \(node.inputs.count)") }
            }
            /// The codes of input `i` (a float input cannot be read as codes).
            func codes(_ i: Int) throws -> QuantParams {
                guard let p = inParams[i] else { throw fail("reads the float value \(node.inputs[i]) as int8 codes") }
                return p
            }
            func quantizedOutput() throws {
                guard node.outputParams != nil else { throw fail("must write int8 codes (it has no output scale)") }
            }
            func passesScaleThrough() throws {
                guard node.outputParams == (try codes(0)) else { throw fail("must keep its input's scale and zero point") }
            }
            func planes(_ s: [Int]) throws -> (c: Int, h: Int, w: Int) {
                guard s.count == 4 else { throw fail("needs a [N, C, H, W] input, gets rank \(s.count)") }
                return (s[1], s[2], s[3])
            }
            func pooled(_ side: Int, kernel: Int, stride: Int, padding: Int) throws -> Int {
                let out = (side + 2 * padding - kernel) / stride + 1
                guard side + 2 * padding >= kernel, out >= 1 else { throw fail("a \(kernel)x\(kernel) window does not fit a side of \(side)") }
                return out
            }
            let shape: [Int]
            switch node.op {
            case .input:
                guard node.output == nodes[0].output, node.inputs.isEmpty else { throw fail("a graph has one input, the first node") }
                shape = inputShape
            case .conv(let c, _):
                try arity(1...1); try quantizedOutput()
                guard [c.inputBits, c.outputBits].allSatisfy({ ($0 ?? activation.bits) == activation.bits }) else {
                    throw fail("a graph's activations are all \(activation.bits)-bit codes")
                }
                try Int8Model.validate(c, input: activation, output: activation)
                let p = try codes(0)
                guard p == QuantParams(scale: c.inputScale, zeroPoint: c.inputZeroPoint) else {
                    throw fail("reads scale \(c.inputScale) zero point \(c.inputZeroPoint); its input is written with \(p.scale), \(p.zeroPoint)")
                }
                guard node.outputParams == QuantParams(scale: c.outputScale, zeroPoint: c.outputZeroPoint) else {
                    throw fail("the convolution's output scale differs from the node's")
                }
                let (ch, h, w) = try planes(inShapes[0])
                guard ch == c.inChannels else { throw fail("takes \(c.inChannels) channels, its input has \(ch)") }
                shape = [1, c.outChannels, try pooled(h, kernel: c.kernelSize, stride: c.stride, padding: c.padding),
                         try pooled(w, kernel: c.kernelSize, stride: c.stride, padding: c.padding)]
            case .linear(let l, _):
                try arity(1...1)
                let p = try codes(0)
                try validate(l, input: p, fail)
                guard inShapes[0].count == 2, inShapes[0][1] == l.inFeatures else {
                    throw fail("takes [N, \(l.inFeatures)], its input is \(inShapes[0])")
                }
                shape = [1, l.outFeatures]
            case .function(let f):
                switch f {
                case .add:
                    try arity(2...2); try quantizedOutput()
                    guard inShapes[0] == inShapes[1] else { throw fail("adds \(inShapes[0]) to \(inShapes[1])") }
                    shape = inShapes[0]
                case .concat:
                    try arity(1...4096); try quantizedOutput()
                    let all = try inShapes.map(planes)
                    guard all.allSatisfy({ $0.h == all[0].h && $0.w == all[0].w }) else { throw fail("concatenates planes of different sizes") }
                    shape = [1, all.reduce(0) { $0 + $1.c }, all[0].h, all[0].w]
                case .globalAveragePool:
                    try arity(1...1); try quantizedOutput()
                    shape = [1, try planes(inShapes[0]).c]
                case .maxPool(let k, let s, let pad):
                    try arity(1...1); try passesScaleThrough()
                    guard (1...Int8Model.maxKernel).contains(k), (1...Int8Model.maxKernel).contains(s), (0...(k / 2)).contains(pad) else {
                        throw fail("bad max pooling: kernel \(k), stride \(s), padding \(pad)")
                    }
                    let (ch, h, w) = try planes(inShapes[0])
                    shape = [1, ch, try pooled(h, kernel: k, stride: s, padding: pad), try pooled(w, kernel: k, stride: s, padding: pad)]
                case .relu:
                    try arity(1...1); try passesScaleThrough()
                    shape = inShapes[0]
                case .flatten:
                    try arity(1...1); try passesScaleThrough()
                    shape = [1, inShapes[0].dropFirst().reduce(1, *)]
                }
            case .float(let captured):
                guard !captured.isEmpty, !node.inputs.isEmpty else { throw fail("a float node runs at least one captured operation on an input") }
                shape = [1] + captured.last!.shape.dropFirst()
            }
            shapes[node.output] = shape
            params[node.output] = node.outputParams
        }
        guard let out = shapes[output] else { throw QuantizationError("INT8 graph: no node writes the output value \(output)") }
        guard outputShape.count == out.count, Array(outputShape.dropFirst()) == Array(out.dropFirst()) else {
            throw QuantizationError("INT8 graph: the output is \(out.dropFirst()) per image, the graph declares \(outputShape.dropFirst())")
        }
    }

    private func checkParams(_ p: QuantParams, _ fail: (String) -> QuantizationError) throws {
        guard p.scale.isFinite && p.scale > 0 else { throw fail("output scale \(p.scale) must be a positive finite number") }
        guard (activation.qmin...activation.qmax).contains(p.zeroPoint), !activation.symmetric || p.zeroPoint == 0 else {
            throw fail("output zero point \(p.zeroPoint) does not fit \(activation.symmetric ? "symmetric " : "")\(activation.bits)-bit codes")
        }
    }

    /// A linear layer's sizes, weights, scales, and the headroom of its int32 accumulator.
    private func validate(_ l: Int8Linear, input p: QuantParams, _ fail: (String) -> QuantizationError) throws {
        guard (1...Int8Model.maxChannels).contains(l.inFeatures), (1...Int8Model.maxChannels).contains(l.outFeatures),
              l.weight.count == l.inFeatures * l.outFeatures, l.weightScales.count == l.outFeatures, l.bias.count == l.outFeatures else {
            throw fail("linear sizes do not match \(l.inFeatures) -> \(l.outFeatures)")
        }
        try Int8Model.validateWeightCodes(l.weight, bits: l.weightBits, fail)
        guard l.inputScale == p.scale else { throw fail("reads scale \(l.inputScale); its input is written with \(p.scale)") }
        for s in l.weightScales where !(s.isFinite && s > 0) { throw fail("weight scale \(s) must be a positive finite number") }
        let headroom = Int64(Int32.max) - 255 * 127 * Int64(l.inFeatures)
        guard l.bias.allSatisfy({ abs(Int64($0)) <= headroom }) else { throw fail("a bias leaves its int32 accumulator no headroom") }
    }
}
