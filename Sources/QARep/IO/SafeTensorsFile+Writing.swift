// Writing a safetensors file: one deterministic byte layout for given
// contents, put on disk by AtomicFile.

extension SafeTensorsFile {
    /// The complete file as bytes, deterministic for given contents.
    ///
    /// Layout: the 8-byte header length; the header, compact JSON with
    /// `"__metadata__"` first (omitted when ``metadata`` is empty; its keys sorted),
    /// then the tensor entries sorted by name (UTF-8 byte order), each as
    /// `{"dtype":…,"shape":[…],"data_offsets":[b,e]}`, padded with spaces to a
    /// multiple of 8 bytes; then the data. In the data buffer the tensors are
    /// placed by descending element size, then by name, as the reference
    /// implementation does, so that every tensor starts at a multiple of its
    /// element size (the buffer itself starts at a multiple of 8).
    ///
    /// - Throws: ``CheckpointError`` when a tensor breaks its invariant (see
    ///   ``SafeTensor/validate()``) or is named `"__metadata__"`.
    public func serialized() throws -> [UInt8] {
        let plan = try layout(source: "cannot serialize safetensors")
        var out: [UInt8] = []
        out.reserveCapacity(plan.prefix.count + plan.dataSize)
        out.append(contentsOf: plan.prefix)
        for name in plan.dataOrder { out.append(contentsOf: tensors[name]!.bytes) }
        return out
    }

    /// Writes ``serialized()`` to `path` atomically with ``AtomicFile``: a
    /// crash or an error leaves the previous file or the new one at `path`,
    /// never a partial file. The tensors are streamed, not copied into one
    /// buffer first.
    ///
    /// - Throws: ``CheckpointError`` whose message starts with `path`.
    public func write(to path: String) throws {
        let plan = try layout(source: path)
        try AtomicFile.write(to: path) { emit in
            try plan.prefix.withUnsafeBytes(emit)
            for name in plan.dataOrder { try tensors[name]!.bytes.withUnsafeBytes(emit) }
        }
    }

    /// Header length, header and the order of the tensors in the data buffer.
    private func layout(source: String) throws -> (prefix: [UInt8], dataOrder: [String], dataSize: Int) {
        for (name, tensor) in tensors {
            if name == Self.metadataKey {
                throw CheckpointError("\(source): a tensor may not be named \(Self.metadataKey)")
            }
            if let problem = SafeTensor.invariantProblem(dtype: tensor.dtype, shape: tensor.shape, byteCount: tensor.bytes.count) {
                throw CheckpointError("\(source): tensor '\(name)': \(problem)")
            }
        }
        let dataOrder = tensors.keys.sorted { a, b in
            let sa = tensors[a]!.dtype.byteSize, sb = tensors[b]!.dtype.byteSize
            return sa != sb ? sa > sb : Self.utf8Less(a, b)
        }
        var offsets: [String: (Int, Int)] = [:]
        var offset = 0
        for name in dataOrder {
            let n = tensors[name]!.bytes.count
            offsets[name] = (offset, offset + n)
            offset += n
        }

        var json = "{"
        var first = true
        if !metadata.isEmpty {
            json += jsonString(Self.metadataKey) + ":{"
            for (i, key) in metadata.keys.sorted(by: Self.utf8Less).enumerated() {
                if i > 0 { json += "," }
                json += jsonString(key) + ":" + jsonString(metadata[key]!)
            }
            json += "}"
            first = false
        }
        for name in tensors.keys.sorted(by: Self.utf8Less) {
            let tensor = tensors[name]!
            let (begin, end) = offsets[name]!
            if !first { json += "," }
            first = false
            json += jsonString(name) + ":{\"dtype\":\"" + tensor.dtype.rawValue + "\",\"shape\":["
                + tensor.shape.map(String.init).joined(separator: ",") + "],\"data_offsets\":[\(begin),\(end)]}"
        }
        json += "}"
        var header = Array(json.utf8)
        header.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - header.count % 8) % 8))

        var prefix: [UInt8] = []
        prefix.reserveCapacity(8 + header.count)
        let n = UInt64(header.count)
        for i in 0..<8 { prefix.append(UInt8(truncatingIfNeeded: n >> (8 * UInt64(i)))) }
        prefix.append(contentsOf: header)
        return (prefix, dataOrder, offset)
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped,
/// everything else as UTF-8. Written out rather than left to JSONEncoder so
/// that the bytes of a file are fixed here, not by the Foundation release
/// (JSONEncoder, for one, escapes `/` unless told not to).
private func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16, uppercase: false)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    out += "\""
    return out
}
