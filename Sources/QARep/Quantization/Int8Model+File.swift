import Foundation

/// The native deployable INT8 file: safetensors with
/// `<layer>.rbr_reparam.weight` (I8 `[O, I, k, k]`), `.bias` (I32),
/// `.weight_scale` (F32 `[O]`), `linear.weight` (I8), `linear.bias` (I32),
/// `linear.weight_scale` (F32); `__metadata__` holds `format` = `qarep`,
/// `kind` = `int8`, `model` (config JSON) and `int8` (the activation scheme,
/// its bit width included, and the layer list with geometry, scales, zero
/// points and weight bit widths, JSON, and the activation widths of the
/// layers whose codes differ from the scheme's). Codes narrower than 8 bits
/// are stored in I8 tensors.
extension Int8Model {
    struct LayerRecord: Codable {
        var name: String
        var inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int, padding: Int
        var inputScale: Float, inputZeroPoint: Int32, outputScale: Float, outputZeroPoint: Int32
        /// Absent in files written before sub-8-bit weights: 8.
        var weightBits: Int?
        /// Absent where they are the activation scheme's width.
        var inputBits: Int?, outputBits: Int?
    }
    struct HeadRecord: Codable {
        var featureScale: Float, featureZeroPoint: Int32, inputScale: Float, inputZeroPoint: Int32
        var inFeatures: Int, classes: Int
        var weightBits: Int?
        var featureBits: Int?, inputBits: Int?
    }
    struct Layout: Codable {
        var activation: QuantScheme
        var layers: [LayerRecord]
        var head: HeadRecord
    }

    public static let kind = "int8"

    /// Writes the native file atomically.
    public func write(to path: String) throws {
        try validate()
        var tensors: [String: SafeTensor] = [:]
        for c in convs {
            tensors[c.name + ".rbr_reparam.weight"] = SafeTensor(int8: c.weight, shape: [c.outChannels, c.inChannels, c.kernelSize, c.kernelSize])
            tensors[c.name + ".rbr_reparam.bias"] = SafeTensor(int32: c.bias, shape: [c.outChannels])
            tensors[c.name + ".rbr_reparam.weight_scale"] = SafeTensor(floats: c.weightScales, shape: [c.outChannels])
        }
        tensors["linear.weight"] = SafeTensor(int8: head.weight, shape: [head.classes, head.inFeatures])
        tensors["linear.bias"] = SafeTensor(int32: head.bias, shape: [head.classes])
        tensors["linear.weight_scale"] = SafeTensor(floats: head.weightScales, shape: [head.classes])
        let layout = Layout(
            activation: activation,
            layers: convs.map { LayerRecord(name: $0.name, inChannels: $0.inChannels, outChannels: $0.outChannels, kernelSize: $0.kernelSize,
                                            stride: $0.stride, padding: $0.padding, inputScale: $0.inputScale, inputZeroPoint: $0.inputZeroPoint,
                                            outputScale: $0.outputScale, outputZeroPoint: $0.outputZeroPoint, weightBits: $0.weightBits,
                                            inputBits: $0.inputBits, outputBits: $0.outputBits) },
            head: HeadRecord(featureScale: head.featureScale, featureZeroPoint: head.featureZeroPoint, inputScale: head.inputScale,
                             inputZeroPoint: head.inputZeroPoint, inFeatures: head.inFeatures, classes: head.classes,
                             weightBits: head.weightBits, featureBits: head.featureBits, inputBits: head.inputBits))
        var metadata = try Checkpoint.header(kind: Self.kind, config: config)
        metadata["int8"] = try Checkpoint.jsonString(layout)
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }

    /// Reads and validates a native INT8 file.
    /// - Throws: `CheckpointError` naming the file and the problem (a missing
    ///   tensor, a wrong dtype or shape, inconsistent scales, ...).
    public static func read(from path: String) throws -> Int8Model {
        try read(SafeTensorsFile.read(from: path), name: (path as NSString).lastPathComponent)
    }

    /// Validates a native INT8 file already parsed; `name` names it in errors.
    public static func read(_ file: SafeTensorsFile, name: String) throws -> Int8Model {
        let (file, name, config, layoutJSON) = try Checkpoint.open(
            file, name: name, kind: kind, section: "int8", hint: "QARep INT8 model")
        let layout = try Checkpoint.decode(Layout.self, layoutJSON, what: "int8", file: name)
        func tensor(_ key: String, _ shape: [Int]) throws -> SafeTensor {
            guard let t = file.tensors[key] else { throw CheckpointError.missingKey(key, file: name) }
            guard t.shape == shape else { throw CheckpointError.shapeMismatch(key: key, file: name, fileShape: t.shape, modelShape: shape) }
            return t
        }
        func typed<T>(_ key: String, _ body: () throws -> T) throws -> T {
            do { return try body() } catch { throw CheckpointError("\(name): key \(key): \(error)") }
        }
        var used = Set<String>()
        var convs: [Int8Conv] = []
        for l in layout.layers {
            let wk = l.name + ".rbr_reparam.weight", bk = l.name + ".rbr_reparam.bias", sk = l.name + ".rbr_reparam.weight_scale"
            let w = try tensor(wk, [l.outChannels, l.inChannels, l.kernelSize, l.kernelSize])
            let b = try tensor(bk, [l.outChannels]), s = try tensor(sk, [l.outChannels])
            used.formUnion([wk, bk, sk])
            convs.append(Int8Conv(name: l.name, inChannels: l.inChannels, outChannels: l.outChannels, kernelSize: l.kernelSize,
                                  stride: l.stride, padding: l.padding, weight: try typed(wk) { try w.int8() },
                                  weightScales: try typed(sk) { try s.floats() }, bias: try typed(bk) { try b.int32() },
                                  inputScale: l.inputScale, inputZeroPoint: l.inputZeroPoint,
                                  outputScale: l.outputScale, outputZeroPoint: l.outputZeroPoint, weightBits: l.weightBits ?? 8,
                                  inputBits: l.inputBits, outputBits: l.outputBits))
        }
        let h = layout.head
        let hw = try tensor("linear.weight", [h.classes, h.inFeatures]), hb = try tensor("linear.bias", [h.classes])
        let hs = try tensor("linear.weight_scale", [h.classes])
        used.formUnion(["linear.weight", "linear.bias", "linear.weight_scale"])
        if let extra = file.tensors.keys.sorted().first(where: { !used.contains($0) }) {
            throw CheckpointError.unexpectedKey(extra, file: name)
        }
        let head = Int8Head(featureScale: h.featureScale, featureZeroPoint: h.featureZeroPoint, inputScale: h.inputScale,
                            inputZeroPoint: h.inputZeroPoint, inFeatures: h.inFeatures, classes: h.classes,
                            weight: try typed("linear.weight") { try hw.int8() }, weightScales: try typed("linear.weight_scale") { try hs.floats() },
                            bias: try typed("linear.bias") { try hb.int32() }, weightBits: h.weightBits ?? 8,
                            featureBits: h.featureBits, inputBits: h.inputBits)
        let model = Int8Model(config: config, activation: layout.activation, convs: convs, head: head)
        do { try model.validate() } catch let e as QuantizationError { throw CheckpointError("\(name): \(e.description)") }
        return model
    }
}
