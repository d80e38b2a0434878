import Foundation
import QARep
import SwiftProtobuf

/// Export of QARep models to ONNX for other runtimes (ONNX Runtime, TensorRT).
///
/// - `int8(_:)`: the folded INT8 network in QDQ form: every convolution's
///   input passes QuantizeLinear/DequantizeLinear with its calibrated scale
///   and zero point; weights are int8 initializers with per-channel
///   DequantizeLinear (axis 0); biases int32 with scale `s_in * s_w`; then
///   Conv, Relu, GlobalAveragePool, Flatten and Gemm, with the head's two
///   activation quantizers. This is the form TensorRT and ONNX Runtime fuse
///   into integer kernels.
/// - `fp32(_:)`: the deployed float network (Conv with bias, Relu, ...).
///
/// The graph input is `input` `[N, C, H, W]` float (normalized images; the
/// networks end in a global average pool, so H and W are symbolic: 28x28 for
/// Fashion-MNIST, 32x32 for CIFAR-10), the output `logits` `[N, classes]`.
public enum ONNXExport {
    public static let opset: Int64 = 13

    /// The graph input: a batch of `channels`-channel images of any size.
    static func imageInput(channels: Int) -> Onnx_ValueInfoProto {
        GraphBuilder.floatValue("input", dims: [nil, channels, nil, nil], symbols: [0: "N", 2: "H", 3: "W"])
    }

    /// How the doc string names the activations: their sign scheme and any width under 8 bits.
    static func activationsDescription(_ scheme: QuantScheme) -> String {
        (scheme.signed ? "int8 symmetric" : "uint8 asymmetric") + " activations"
            + (scheme.bits < 8 ? " of \(scheme.bits) bits, clipped to their range" : "")
    }

    /// The tensors whose codes are not the activation scheme's width (the
    /// first and last layers kept at 8 bits), as `"; codes of another width:
    /// stage0 input 8 bits, ..., linear input 8 bits"`; empty when every
    /// tensor has the scheme's width.
    static func widthOverridesDescription(_ model: Int8Model) -> String {
        var overrides: [String] = []
        for c in model.convs {
            if let bits = c.inputBits { overrides.append("\(c.name) input \(bits) bits") }
            if let bits = c.outputBits { overrides.append("\(c.name) output \(bits) bits") }
        }
        if let bits = model.head.featureBits { overrides.append("pooled features \(bits) bits") }
        if let bits = model.head.inputBits { overrides.append("linear input \(bits) bits") }
        return overrides.isEmpty ? "" : "; codes of another width: " + overrides.joined(separator: ", ")
    }

    /// QuantizeLinear then DequantizeLinear of `x` with one per-tensor scale
    /// and zero point of `scheme`. QuantizeLinear saturates to all of int8 or
    /// uint8, so a narrower scheme first clips `x` to the float range its
    /// codes cover, `[(qmin - z) s, (qmax - z) s]`: rounding that gives
    /// exactly `clamp(round(x / s) + z, qmin, qmax)`, the engine's codes.
    /// (Sub-8-bit weights need nothing: their codes are exact in int8.)
    static func quantizeDequantize(_ x: String, _ prefix: String, scale: Float, zeroPoint: Int32, scheme: QuantScheme,
                                   builder g: inout GraphBuilder) -> String {
        let s = g.floats(prefix + ".scale", [scale], dims: [])
        let z = scheme.signed ? g.int8(prefix + ".zero_point", [Int8(zeroPoint)], dims: [])
                              : g.uint8(prefix + ".zero_point", [UInt8(zeroPoint)], dims: [])
        var input = x
        if scheme.bits < 8 {
            let low = g.floats(prefix + ".clip_min", [Float(scheme.qmin - zeroPoint) * scale], dims: [])
            let high = g.floats(prefix + ".clip_max", [Float(scheme.qmax - zeroPoint) * scale], dims: [])
            input = g.node("Clip", [x, low, high], name: prefix + ".clip")
        }
        let q = g.node("QuantizeLinear", [input, s, z], name: prefix + ".quantize")
        return g.node("DequantizeLinear", [q, s, z], name: prefix + ".dequantize")
    }

    /// The INT8 model as a QDQ graph.
    /// Activations narrower than 8 bits pass a Clip to their codes' range
    /// before each QuantizeLinear (`quantizeDequantize`).
    /// - Throws: `QuantizationError` for an invalid model.
    public static func int8(_ model: Int8Model) throws -> Data {
        try model.validate()
        var g = GraphBuilder()
        func qdq(_ x: String, _ prefix: String, scale: Float, zero: Int32, bits: Int?) -> String {
            quantizeDequantize(x, prefix, scale: scale, zeroPoint: zero, scheme: model.activationScheme(bits: bits), builder: &g)
        }
        var x = "input"
        for c in model.convs {
            x = qdq(x, c.name + ".input", scale: c.inputScale, zero: c.inputZeroPoint, bits: c.inputBits)
            let w = g.int8(c.name + ".weight", c.weight, dims: [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize])
            let ws = g.floats(c.name + ".weight_scale", c.weightScales, dims: [c.outChannels])
            let wz = g.int8(c.name + ".weight_zero_point", [Int8](repeating: 0, count: c.outChannels), dims: [c.outChannels])
            let wdq = g.node("DequantizeLinear", [w, ws, wz], name: c.name + ".weight.dequantize", ["axis": .int(0)])
            let b = g.int32(c.name + ".bias", c.bias, dims: [c.outChannels])
            let bs = g.floats(c.name + ".bias_scale", c.weightScales.map { c.inputScale * $0 }, dims: [c.outChannels])
            let bz = g.int32(c.name + ".bias_zero_point", [Int32](repeating: 0, count: c.outChannels), dims: [c.outChannels])
            let bdq = g.node("DequantizeLinear", [b, bs, bz], name: c.name + ".bias.dequantize", ["axis": .int(0)])
            let y = g.node("Conv", [x, wdq, bdq], name: c.name + ".conv", convAttributes(kernel: c.kernelSize, stride: c.stride, padding: c.padding))
            x = g.node("Relu", [y], name: c.name + ".relu")
        }
        let h = model.head
        x = qdq(x, "linear.feature", scale: h.featureScale, zero: h.featureZeroPoint, bits: h.featureBits)
        x = g.node("GlobalAveragePool", [x], name: "pool")
        x = qdq(x, "linear.input", scale: h.inputScale, zero: h.inputZeroPoint, bits: h.inputBits)
        x = g.node("Flatten", [x], name: "flatten", ["axis": .int(1)])
        let w = g.int8("linear.weight", h.weight, dims: [h.classes, h.inFeatures])
        let ws = g.floats("linear.weight_scale", h.weightScales, dims: [h.classes])
        let wz = g.int8("linear.weight_zero_point", [Int8](repeating: 0, count: h.classes), dims: [h.classes])
        let wdq = g.node("DequantizeLinear", [w, ws, wz], name: "linear.weight.dequantize", ["axis": .int(0)])
        let b = g.int32("linear.bias", h.bias, dims: [h.classes])
        let bs = g.floats("linear.bias_scale", h.weightScales.map { h.inputScale * $0 }, dims: [h.classes])
        let bz = g.int32("linear.bias_zero_point", [Int32](repeating: 0, count: h.classes), dims: [h.classes])
        let bdq = g.node("DequantizeLinear", [b, bs, bz], name: "linear.bias.dequantize", ["axis": .int(0)])
        g.node("Gemm", [x, wdq, bdq], name: "linear", output: "logits", ["transB": .int(1)])
        let onnx = g.model(name: "qarep-\(model.config.name)-\(model.config.block.rawValue)-int8",
                           input: imageInput(channels: model.convs[0].inChannels),
                           output: GraphBuilder.floatValue("logits", dims: [nil, h.classes]),
                           docString: "QARep INT8 model in QDQ form (int8 per-channel weights, int32 biases, \(activationsDescription(model.activation))"
                               + widthOverridesDescription(model) + ")")
        return try onnx.serializedData()
    }

    /// The deployed FP32 model (multi-branch models are folded first).
    public static func fp32(_ model: RepVGGNet) throws -> Data {
        let deployed = model.isDeployed ? model : model.deployed()
        var g = GraphBuilder()
        var x = "input"
        for (path, m) in deployed.namedModules() {
            guard let block = m as? ReparamBlock else { continue }
            let c = block.conv
            let w = g.floats(path + ".rbr_reparam.weight", c.weight.data, dims: c.weight.shape)
            let b = g.floats(path + ".rbr_reparam.bias", c.bias!.data, dims: c.bias!.shape)
            let y = g.node("Conv", [x, w, b], name: path + ".conv", convAttributes(kernel: c.kernelSize, stride: c.stride, padding: c.padding))
            x = g.node("Relu", [y], name: path + ".relu")
        }
        x = g.node("GlobalAveragePool", [x], name: "pool")
        x = g.node("Flatten", [x], name: "flatten", ["axis": .int(1)])
        let lw = g.floats("linear.weight", deployed.linear.weight.data, dims: deployed.linear.weight.shape)
        let lb = g.floats("linear.bias", deployed.linear.bias!.data, dims: deployed.linear.bias!.shape)
        g.node("Gemm", [x, lw, lb], name: "linear", output: "logits", ["transB": .int(1)])
        let onnx = g.model(name: "qarep-\(model.config.name)-\(model.config.block.rawValue)-fp32",
                           input: imageInput(channels: model.config.inChannels),
                           output: GraphBuilder.floatValue("logits", dims: [nil, model.config.classes]),
                           docString: "QARep deployed FP32 model (every block folded into one 3x3 convolution)")
        return try onnx.serializedData()
    }

    static func convAttributes(kernel: Int, stride: Int, padding: Int) -> [String: GraphBuilder.Attribute] {
        let p = Int64(padding)
        return ["kernel_shape": .ints([Int64(kernel), Int64(kernel)]), "strides": .ints([Int64(stride), Int64(stride)]),
                "pads": .ints([p, p, p, p])]
    }
}
