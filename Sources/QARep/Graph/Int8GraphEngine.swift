import QARepKernels

/// Runs an `Int8Graph`: convolutions and linear layers as exact integer
/// GEMMs with fused bias, requantization and ReLU; adds, concatenations and
/// average pooling by the simulation's own arithmetic on dequantized codes
/// (so they agree with it bit for bit); max pooling, ReLU and flatten on
/// codes; float nodes between a dequantize and a quantize.
public final class Int8GraphEngine {
    public let model: Int8Graph
    /// Worker threads of the convolution kernels (results do not depend on it).
    public let threads: Int
    private var packed: [Int: PackedInt8Weights] = [:]

    /// - Throws: `QuantizationError` when the graph breaks an invariant the engine relies on (`Int8Graph.validate()`).
    public init(_ model: Int8Graph, threads: Int = KernelThreads.count) throws {
        self.model = model
        self.threads = max(1, threads)
        try model.validate()
        for (i, node) in model.nodes.enumerated() {
            if case .conv(let c, _) = node.op {
                packed[i] = PackedInt8Weights(convolution: c.weight, outChannels: c.outChannels, inChannels: c.inChannels,
                                              kernelH: c.kernelSize, kernelW: c.kernelSize)
            }
        }
    }

    /// A tensor between nodes: codes with their parameters, or floats.
    private enum Value<A: QuantizedActivation> {
        case codes([A], shape: [Int], QuantParams)
        case float([Float], shape: [Int])

        var shape: [Int] {
            switch self {
            case .codes(_, let s, _), .float(_, let s): s
            }
        }
    }

    /// The model's output (logits) for normalized images `[N, C, H, W]`.
    public func callAsFunction(_ images: Tensor) -> Tensor {
        precondition(images.rank == 4 && images.shape[1] == model.inputShape[1],
                     "graph engine input must be [N, \(model.inputShape[1]), H, W], got \(images.shape)")
        return model.activation.signed ? run(Int8.self, images) : run(UInt8.self, images)
    }

    private func run<A: QuantizedActivation>(_: A.Type, _ images: Tensor) -> Tensor {
        let range = QuantRange(min: model.activation.qmin, max: model.activation.qmax)
        var values: [Int: Value<A>] = [:]
        func quantized(_ x: [Float], _ shape: [Int], _ p: QuantParams) -> Value<A> {
            .codes(x.map { A(truncatingIfNeeded: quantize($0, scale: p.scale, zeroPoint: p.zeroPoint, range: range)) }, shape: shape, p)
        }
        func floats(_ v: Value<A>) -> [Float] {
            switch v {
            case .float(let x, _): x
            case .codes(let q, _, let p): q.map { dequantize(Int32($0), scale: p.scale, zeroPoint: p.zeroPoint) }
            }
        }
        func codes(_ v: Value<A>) -> ([A], QuantParams) {
            guard case .codes(let q, _, let p) = v else { preconditionFailure("a quantized node reads a float tensor") }
            return (q, p)
        }
        for (index, node) in model.nodes.enumerated() {
            let inputs = node.inputs.map { values[$0]! }
            let result: Value<A>
            switch node.op {
            case .input:
                result = node.outputParams.map { quantized(images.data, images.shape, $0) } ?? .float(images.data, shape: images.shape)
            case .conv(let c, let relu):
                let (x, _) = codes(inputs[0])
                let s = inputs[0].shape
                let g = ConvGeometry(batch: s[0], inChannels: s[1], height: s[2], width: s[3], outChannels: c.outChannels,
                                     kernelH: c.kernelSize, kernelW: c.kernelSize, stride: c.stride, padding: c.padding)
                let count = g.batch * c.outChannels * g.outPlane
                let y = [A](unsafeUninitializedCapacity: count) { buf, n in
                    x.withUnsafeBufferPointer { xp in
                        quantizedConv2d(input: xp.baseAddress!, geometry: g, weights: packed[index]!, bias: c.bias,
                                        multipliers: c.multipliers, inputZeroPoint: c.inputZeroPoint,
                                        outputZeroPoint: c.outputZeroPoint,
                                        outputMin: relu ? range.reluMin(zeroPoint: c.outputZeroPoint) : range.min,
                                        outputMax: range.max, output: buf.baseAddress!, threads: threads)
                    }
                    n = count
                }
                result = .codes(y, shape: [g.batch, c.outChannels, g.outHeight, g.outWidth], node.outputParams!)
            case .linear(let l, let relu):
                let (x, p) = codes(inputs[0])
                let n = x.count / l.inFeatures
                var acc = [Int32](repeating: 0, count: n * l.outFeatures)
                for i in 0..<n {
                    for k in 0..<l.outFeatures {
                        var sum = Int64(l.bias[k])
                        for c in 0..<l.inFeatures {
                            sum += Int64(Int32(x[i * l.inFeatures + c]) - p.zeroPoint) * Int64(l.weight[k * l.inFeatures + c])
                        }
                        acc[i * l.outFeatures + k] = Int32(truncatingIfNeeded: sum)
                    }
                }
                if let o = node.outputParams {
                    let y = acc.enumerated().map { j, a -> A in
                        let m = p.scale * l.weightScales[j % l.outFeatures] / o.scale
                        return A(truncatingIfNeeded: requantize(a, multiplier: m, zeroPoint: o.zeroPoint,
                                                                min: relu ? range.reluMin(zeroPoint: o.zeroPoint) : range.min,
                                                                max: range.max))
                    }
                    result = .codes(y, shape: [n, l.outFeatures], o)
                } else {
                    let y = acc.enumerated().map { j, a -> Float in
                        let v = Float(Double(a) * Double(p.scale) * Double(l.weightScales[j % l.outFeatures]))
                        return relu ? max(v, 0) : v
                    }
                    result = .float(y, shape: [n, l.outFeatures])
                }
            case .function(let f):
                switch f {
                case .add, .concat, .globalAveragePool:
                    // The simulation's own float arithmetic on the dequantized inputs, then one quantize.
                    let y = noGrad { f.apply(inputs.map { Tensor(floats($0), shape: $0.shape) }) }
                    result = quantized(y.data, y.shape, node.outputParams!)
                case .maxPool(let k, let s, let p):
                    let (x, params) = codes(inputs[0])
                    let (y, shape) = Self.maxPoolCodes(x, shape: inputs[0].shape, kernel: k, stride: s, padding: p)
                    result = .codes(y, shape: shape, params)
                case .relu:
                    let (x, p) = codes(inputs[0])
                    let zero = A(truncatingIfNeeded: p.zeroPoint)
                    result = .codes(x.map { max($0, zero) }, shape: inputs[0].shape, p)
                case .flatten:
                    let (x, p) = codes(inputs[0])
                    let s = inputs[0].shape
                    result = .codes(x, shape: [s[0], s.dropFirst().reduce(1, *)], p)
                }
            case .float(let captured):
                let y = noGrad {
                    QuantizedGraph.runFloat(captured, inputs: Dictionary(uniqueKeysWithValues: zip(node.inputs, inputs).map {
                        ($0, Tensor(floats($1), shape: $1.shape))
                    }))
                }
                result = node.outputParams.map { quantized(y.data, y.shape, $0) } ?? .float(y.data, shape: y.shape)
            }
            values[node.output] = result
        }
        let out = values[model.output]!
        return Tensor(floats(out), shape: out.shape)
    }

    /// Max pooling of NCHW codes; padded positions never win.
    private static func maxPoolCodes<A: QuantizedActivation>(_ x: [A], shape s: [Int], kernel: Int, stride: Int,
                                                             padding: Int) -> ([A], [Int]) {
        let (n, c, h, w) = (s[0], s[1], s[2], s[3])
        let oh = (h + 2 * padding - kernel) / stride + 1, ow = (w + 2 * padding - kernel) / stride + 1
        var y = [A](repeating: 0, count: n * c * oh * ow)
        for plane in 0..<(n * c) {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var best = A.min
                    for i in 0..<kernel {
                        let iy = oy * stride - padding + i
                        guard iy >= 0 && iy < h else { continue }
                        for j in 0..<kernel {
                            let ix = ox * stride - padding + j
                            if ix >= 0 && ix < w { best = max(best, x[(plane * h + iy) * w + ix]) }
                        }
                    }
                    y[(plane * oh + oy) * ow + ox] = best
                }
            }
        }
        return (y, [n, c, oh, ow])
    }
}

extension Int8GraphEngine {
    /// Evaluates the engine on `dataset`.
    public func evaluate(on dataset: any Dataset, batchSize: Int = 256, keepLogits: Bool = false) -> Evaluation {
        QARep.evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { self($0) }
    }
}
