import Foundation
import QARep
import Testing

// MARK: - Helpers

/// A file built by hand: the 8-byte little-endian length (of `header`, unless
/// overridden), the header bytes as given, then `data`.
private func rawFile(_ header: String, data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
    rawFile(headerBytes: Array(header.utf8), data: data, length: length)
}

private func rawFile(headerBytes: [UInt8], data: [UInt8] = [], length: UInt64? = nil) -> [UInt8] {
    let n = length ?? UInt64(headerBytes.count)
    var out: [UInt8] = (0..<8).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) }
    out += headerBytes
    out += data
    return out
}

/// The header length field of a file.
private func headerLength(_ bytes: [UInt8]) -> Int {
    (0..<8).reduce(0) { $0 | Int(bytes[$1]) << (8 * $1) }
}

/// The header of a file, parsed by Foundation (an independent JSON reader).
private func foundationHeader(_ bytes: [UInt8]) throws -> [String: Any] {
    let n = headerLength(bytes)
    let json = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)]))
    return try #require(json as? [String: Any])
}

/// The elements of an F16 tensor as raw binary16 bit patterns.
private func halfBits(_ t: SafeTensor) -> [UInt16] {
    stride(from: 0, to: t.bytes.count, by: 2).map { UInt16(t.bytes[$0]) | UInt16(t.bytes[$0 + 1]) << 8 }
}

private func halfBytes(_ values: [UInt16]) -> [UInt8] {
    values.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
}

private func makeTemporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("qarep-safetensors-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A file with one tensor of every dtype, a scalar and an empty tensor.
private func sampleFile() -> SafeTensorsFile {
    SafeTensorsFile(
        tensors: [
            "stage0.rbr_dense.conv.weight": SafeTensor(floats: [1, -2, 3.5, .pi, -0.0, 1e-30], shape: [2, 3]),
            "half": SafeTensor(float16: [1.0, -2.5, 65504, 0.5], shape: [4]),
            "stage0.rbr_dense.bn.num_batches_tracked": SafeTensor(int64: [Int64.max], shape: []),
            "bias.q": SafeTensor(int32: [Int32.min, 0, Int32.max], shape: [3]),
            "weight.q": SafeTensor(int8: [-128, -1, 0, 127], shape: [2, 2]),
            "bytes": SafeTensor(uint8: [0, 1, 128, 254, 255], shape: [5]),
            "empty": SafeTensor(floats: [], shape: [0, 3]),
        ],
        metadata: ["format": "qarep-checkpoint", "epoch": "3"])
}

// MARK: - Round trips

@Suite("SafeTensors")
struct SafeTensorsTests {
    @Test("every dtype survives serialize -> parse")
    func roundTripAllDTypes() throws {
        let original = sampleFile()
        let bytes = try original.serialized()
        let parsed = try SafeTensorsFile(parsing: bytes, source: "sample.safetensors")
        #expect(parsed == original)

        let t = parsed.tensors
        #expect(try t["stage0.rbr_dense.conv.weight"]!.floats() == [1, -2, 3.5, .pi, -0.0, 1e-30])
        #expect(try t["stage0.rbr_dense.conv.weight"]!.floats()[4].sign == .minus)
        #expect(try t["half"]!.floats() == [1.0, -2.5, 65504, 0.5])
        #expect(try t["stage0.rbr_dense.bn.num_batches_tracked"]!.int64() == [Int64.max])
        #expect(t["stage0.rbr_dense.bn.num_batches_tracked"]!.shape == [])
        #expect(try t["bias.q"]!.int32() == [Int32.min, 0, Int32.max])
        #expect(try t["weight.q"]!.int8() == [-128, -1, 0, 127])
        #expect(try t["bytes"]!.uint8() == [0, 1, 128, 254, 255])
        #expect(try t["empty"]!.floats() == [])
        #expect(t["empty"]!.shape == [0, 3])
        #expect(parsed.metadata == ["format": "qarep-checkpoint", "epoch": "3"])
    }

    @Test("elements are little-endian on disk")
    func littleEndianBytes() throws {
        #expect(SafeTensor(floats: [1.0], shape: [1]).bytes == [0x00, 0x00, 0x80, 0x3F])
        #expect(SafeTensor(int32: [0x0102_0304], shape: [1]).bytes == [0x04, 0x03, 0x02, 0x01])
        #expect(SafeTensor(int64: [-2], shape: [1]).bytes == [0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(SafeTensor(int8: [-1], shape: [1]).bytes == [0xFF])
    }

    @Test("F16 values convert exactly or to the nearest binary16")
    func float16Conversion() throws {
        let t = SafeTensor(float16: [1.0, -2.5, 65504, 0.0001, 65520, -1e9, 1e-8, 0x1p-24], shape: [8])
        #expect(t.dtype == .f16)
        let bits = halfBits(t)
        // 1.0, -2.5, 65504 (largest finite), 0.0001 -> 0x068E, 65520 rounds to +inf,
        // -1e9 overflows to -inf, 1e-8 underflows to +0, 2^-24 is the smallest subnormal.
        #expect(bits == [0x3C00, 0xC100, 0x7BFF, 0x068E, 0x7C00, 0xFC00, 0x0000, 0x0001])
        let back = try t.floats()
        #expect(back[0] == 1.0)
        #expect(back[1] == -2.5)
        #expect(back[2] == 65504)
        #expect(abs(back[3] - 0.0001) < 0.0001 * 1e-3)
        #expect(back[4] == .infinity)
        #expect(back[5] == -.infinity)
        #expect(back[6] == 0)
        #expect(back[7] == 0x1p-24)

        // Hand-written F16 bytes read back as Float.
        let raw = try SafeTensor(dtype: .f16, shape: [3], bytes: [0x00, 0x3C, 0x00, 0xC1, 0xFF, 0x7B])
        #expect(try raw.floats() == [1.0, -2.5, 65504])
        let nan = try SafeTensor(dtype: .f16, shape: [1], bytes: [0x00, 0x7E]).floats()
        #expect(nan[0].isNaN)
    }

    @Test("every finite binary16 value survives F16 -> Float -> F16")
    func float16Exhaustive() throws {
        let all = (0...UInt16.max).filter { ($0 & 0x7C00) != 0x7C00 || ($0 & 0x3FF) == 0 }  // no NaNs
        let t = try SafeTensor(dtype: .f16, shape: [all.count], bytes: halfBytes(all))
        let floats = try t.floats()
        let again = halfBits(SafeTensor(float16: floats, shape: t.shape))
        let wrong = all.indices.filter { again[$0] != all[$0] }
        #expect(wrong.count == 0, "\(wrong.count) values differ, first: 0x\(String(all[wrong.first ?? 0], radix: 16))")
    }

    #if os(Linux)
    /// `Float16` is unavailable on macOS x86_64; on Linux it is the reference.
    @Test("Float -> F16 rounding agrees with Swift's Float16 at every tie and on a sweep")
    func float16MatchesStandardLibrary() throws {
        var values: [Float] = []
        // Every midpoint between neighbouring finite binary16 values (ties go to even),
        // one Float ulp either side of it, and the overflow threshold 65520.
        for h in UInt16(0)..<0x7BFF {
            let lo = Float(Float16(bitPattern: h)), hi = Float(Float16(bitPattern: h + 1))
            let mid = (lo + hi) / 2
            values += [mid, mid.nextDown, mid.nextUp]
        }
        values += [65504, 65519.996, 65520, 65536, 1e-8, .infinity]
        // A deterministic sweep over magnitudes from 2^-31 to 2^17.
        values += stride(from: UInt32(0x3000_0000), through: 0x4800_0000, by: 4099).map { Float(bitPattern: $0) }
        values += values.map { -$0 }

        let ours = halfBits(SafeTensor(float16: values, shape: [values.count]))
        let reference = values.map { Float16($0).bitPattern }
        let wrong = values.indices.filter { ours[$0] != reference[$0] }
        let first = wrong.first ?? 0
        let ourBits = String(ours[first], radix: 16), referenceBits = String(reference[first], radix: 16)
        #expect(
            wrong.count == 0,
            "\(wrong.count) values differ, first: \(values[first]) -> 0x\(ourBits), Float16 gives 0x\(referenceBits)")
    }
    #endif

    @Test("metadata with quotes, escapes and Unicode round-trips")
    func metadataRoundTrip() throws {
        let metadata = [
            "format": "qarep",
            "config": #"{"model":"tiny","block":"qarepvgg","lr":0.01}"#,
            "path\\with\"quotes": "line1\nline2\ttab\u{01}",
            "unicode": "é e\u{301} 日本 🙂",
            "": "empty key",
        ]
        let file = SafeTensorsFile(tensors: ["x": SafeTensor(floats: [1], shape: [1])], metadata: metadata)
        let bytes = try file.serialized()
        let parsed = try SafeTensorsFile(parsing: bytes, source: "m.safetensors")
        #expect(parsed.metadata == metadata)
        // Foundation's JSON reader agrees on the header.
        let header = try foundationHeader(bytes)
        #expect(header["__metadata__"] as? [String: String] == metadata)
    }

    @Test("a file without tensors or metadata round-trips")
    func emptyFile() throws {
        let bytes = try SafeTensorsFile().serialized()
        #expect(bytes == rawFile("{}      "))
        let parsed = try SafeTensorsFile(parsing: bytes, source: "e")
        #expect(parsed.tensors.isEmpty && parsed.metadata.isEmpty)
    }

    @Test("integers beyond 2^31 in the header are read exactly")
    func largeIntegers() throws {
        let bytes = rawFile(#"{"big":{"dtype":"F32","shape":[3000000000,0,5000000000],"data_offsets":[0,0]}}"#)
        let parsed = try SafeTensorsFile(parsing: bytes, source: "big")
        #expect(parsed.tensors["big"]!.shape == [3_000_000_000, 0, 5_000_000_000])
    }

    @Test("integers beyond 2^53 are exact, never rounded through Double")
    func integersBeyondDouble() throws {
        // 2^53 + 1 and Int.max have no Double; the leading 0 keeps the tensor empty.
        let bytes = rawFile(#"{"e":{"dtype":"U8","shape":[0,9007199254740993,9223372036854775807],"data_offsets":[0,0]}}"#)
        let parsed = try SafeTensorsFile(parsing: bytes, source: "e")
        #expect(parsed.tensors["e"]!.shape == [0, 9_007_199_254_740_993, Int.max])
    }

    @Test("the reader accepts what other writers produce: any order, whitespace, escapes")
    func foreignLayout() throws {
        // Data order differs from key order; the header has whitespace and escapes.
        let header = """
             { "b" : {"data_offsets":[0,4], "shape":[1], "dtype":"I32"},
              "\\u0061" : {"dtype":"U8","shape":[2],"data_offsets":[4,6]} ,
              "__metadata__": {"k": "v\\/w"} }\u{20}\u{20}
            """
        let bytes = rawFile(header, data: [7, 0, 0, 0, 9, 10])
        let parsed = try SafeTensorsFile(parsing: bytes, source: "f")
        #expect(try parsed.tensors["b"]!.int32() == [7])
        #expect(try parsed.tensors["a"]!.uint8() == [9, 10])
        #expect(parsed.metadata == ["k": "v/w"])
    }

    // MARK: Determinism and layout

    @Test("serialization is deterministic and independent of insertion order")
    func deterministic() throws {
        let a = try sampleFile().serialized()
        let b = try sampleFile().serialized()
        #expect(a == b)

        var reversed = SafeTensorsFile()
        for (name, tensor) in sampleFile().tensors.sorted(by: { $0.key > $1.key }) { reversed.tensors[name] = tensor }
        for (key, value) in sampleFile().metadata.sorted(by: { $0.key > $1.key }) { reversed.metadata[key] = value }
        #expect(try reversed.serialized() == a)
    }

    @Test("header is padded to 8 bytes, metadata first, names sorted, tensors aligned")
    func headerLayout() throws {
        let bytes = try sampleFile().serialized()
        let n = headerLength(bytes)
        #expect(n % 8 == 0)
        let text = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
        #expect(text.hasPrefix(#"{"__metadata__":{"epoch":"3","format":"qarep-checkpoint"},"bias.q":{"#))
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        #expect(trimmed.hasSuffix("}"))
        #expect(text.dropFirst(trimmed.count).allSatisfy { $0 == " " })

        // Tensor names appear in sorted order in the header.
        let names = sampleFile().tensors.keys.sorted()
        let positions = names.map { text.range(of: "\"\($0)\":{")!.lowerBound }
        #expect(positions == positions.sorted())

        // Each tensor starts at a multiple of its element size; coverage is exact.
        let header = try foundationHeader(bytes)
        var total = 0
        for (name, tensor) in sampleFile().tensors {
            let entry = try #require(header[name] as? [String: Any])
            let offsets = try #require(entry["data_offsets"] as? [Int])
            #expect(offsets[0] % tensor.dtype.byteSize == 0, "\(name) at \(offsets[0])")
            #expect(offsets[1] - offsets[0] == tensor.bytes.count)
            #expect(entry["dtype"] as? String == tensor.dtype.rawValue)
            #expect(entry["shape"] as? [Int] == tensor.shape)
            total += tensor.bytes.count
        }
        #expect(bytes.count == 8 + n + total)
    }

    // MARK: Files on disk

    @Test("atomic write replaces an existing file and leaves no temporary file")
    func atomicWrite() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("model.safetensors").path

        let first = SafeTensorsFile(tensors: ["w": SafeTensor(floats: [1, 2], shape: [2])], metadata: ["step": "1"])
        try first.write(to: path)
        #expect(try SafeTensorsFile.read(from: path) == first)

        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        let second = SafeTensorsFile(tensors: ["w": SafeTensor(floats: [3, 4, 5], shape: [3])], metadata: ["step": "2"])
        try second.write(to: path)
        #expect(try SafeTensorsFile.read(from: path) == second)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(try second.serialized()))

        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["model.safetensors"])
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test("a write that cannot happen names the path and leaves nothing behind")
    func failedWrite() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("missing/model.safetensors").path
        let error = #expect(throws: CheckpointError.self) { try SafeTensorsFile().write(to: path) }
        #expect(error?.message.hasPrefix(path) == true)
        #expect(error?.message.contains("No such file or directory") == true)

        // An invalid tensor is refused before anything is created.
        var file = SafeTensorsFile(tensors: ["w": SafeTensor(floats: [1, 2], shape: [2])])
        file.tensors["w"]!.shape = [3]
        let target = dir.appendingPathComponent("bad.safetensors").path
        let invalid = #expect(throws: CheckpointError.self) { try file.write(to: target) }
        #expect(invalid?.message.contains("tensor 'w'") == true)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
    }

    @Test("reading a missing file or a directory names the path")
    func readErrors() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let missing = dir.appendingPathComponent("nope.safetensors").path
        let e1 = #expect(throws: CheckpointError.self) { try SafeTensorsFile.read(from: missing) }
        #expect(e1?.message == "\(missing): cannot open: No such file or directory")
        let e2 = #expect(throws: CheckpointError.self) { try SafeTensorsFile.read(from: dir.path) }
        #expect(e2?.message == "\(dir.path): not a regular file")

        // A truncated file on disk: the last tensor runs past the end.
        let path = dir.appendingPathComponent("cut.safetensors").path
        try sampleFile().write(to: path)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes.removeLast()
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let e3 = #expect(throws: CheckpointError.self) { try SafeTensorsFile.read(from: path) }
        #expect(e3?.message.hasPrefix("\(path): tensor '") == true)
        #expect(e3?.message.contains("run past the end of the data buffer") == true)
    }

    // MARK: Tensor API

    @Test("typed accessors refuse the wrong dtype")
    func accessorMismatch() throws {
        let f = SafeTensor(floats: [1], shape: [1])
        let e = #expect(throws: CheckpointError.self) { try f.int8() }
        #expect(e?.message == "SafeTensor: dtype mismatch: tensor has dtype F32, Int8 values need I8")
        #expect(throws: CheckpointError.self) { try f.int32() }
        #expect(throws: CheckpointError.self) { try f.int64() }
        #expect(throws: CheckpointError.self) { try f.uint8() }
        let i = SafeTensor(int64: [1], shape: [1])
        let e2 = #expect(throws: CheckpointError.self) { try i.floats() }
        #expect(e2?.message.contains("tensor has dtype I64, Float values need F32 or F16") == true)
    }

    @Test("raw construction and mutation are checked against the shape")
    func invariantChecks() throws {
        let e = #expect(throws: CheckpointError.self) {
            try SafeTensor(dtype: .f32, shape: [2, 3], bytes: [UInt8](repeating: 0, count: 20))
        }
        #expect(e?.message == "SafeTensor: 20 bytes of data but shape [2, 3] with dtype F32 needs 24")
        let e2 = #expect(throws: CheckpointError.self) { try SafeTensor(dtype: .u8, shape: [-1], bytes: []) }
        #expect(e2?.message.contains("negative dimension -1") == true)

        var t = SafeTensor(int32: [1, 2], shape: [2])
        #expect(t.elementCount == 2)
        t.bytes.removeLast()
        #expect(throws: CheckpointError.self) { try t.int32() }
        let file = SafeTensorsFile(tensors: ["broken": t])
        let e3 = #expect(throws: CheckpointError.self) { try file.serialized() }
        #expect(e3?.message.contains("tensor 'broken': 7 bytes of data but shape [2] with dtype I32 needs 8") == true)

        let reserved = SafeTensorsFile(tensors: ["__metadata__": SafeTensor(uint8: [1], shape: [1])])
        let e4 = #expect(throws: CheckpointError.self) { try reserved.serialized() }
        #expect(e4?.message.contains("may not be named __metadata__") == true)
    }

    @Test("checkpoint errors for the model loader")
    func loaderErrors() {
        #expect(
            CheckpointError.missingKey("stage0.rbr_dense.conv.weight", file: "m.safetensors").description
                == "m.safetensors: missing key stage0.rbr_dense.conv.weight")
        #expect(
            CheckpointError.unexpectedKey("foo", file: "m.safetensors").message
                == "m.safetensors: unexpected key foo")
        #expect(
            CheckpointError.shapeMismatch(
                key: "stage0.rbr_dense.conv.weight", file: "m.safetensors",
                fileShape: [16, 1, 3, 3], modelShape: [16, 3, 3, 3]
            ).message
                == "m.safetensors: shape mismatch for key stage0.rbr_dense.conv.weight: "
                + "file has [16, 1, 3, 3], model expects [16, 3, 3, 3]")
        #expect(
            CheckpointError.dtypeMismatch(key: "k", file: "m", fileDType: .i64, expected: .f32).message
                == "m: dtype mismatch for key k: file has I64, model expects F32")
        #expect(CheckpointError("x").localizedDescription == "x")
    }

    // MARK: Malformed files

    @Test("malformed files are refused with a one-line message naming the problem", arguments: malformedCases)
    func malformed(_ c: MalformedCase) {
        let error = #expect(throws: CheckpointError.self) {
            try SafeTensorsFile(parsing: c.bytes, source: "bad.safetensors")
        }
        guard let message = error?.message else { return }
        #expect(message.hasPrefix("bad.safetensors: "), "\(message)")
        #expect(!message.contains("\n"), "\(message)")
        for fragment in c.fragments {
            #expect(message.contains(fragment), "message was: \(message)")
        }
    }
}

/// A hand-made broken file and the phrases its error message must contain.
struct MalformedCase: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: [UInt8]
    let fragments: [String]
    var testDescription: String { name }

    init(_ name: String, _ bytes: [UInt8], _ fragments: String...) {
        self.name = name
        self.bytes = bytes
        self.fragments = fragments
    }

    /// One tensor entry `{"w": <entry>}` followed by `data`.
    init(_ name: String, entry: String, data: [UInt8] = [], _ fragments: String...) {
        self.name = name
        self.bytes = rawFile(#"{"w":"# + entry + "}", data: data)
        self.fragments = fragments
    }
}

private let f32x2 = #""dtype":"F32","shape":[2]"#

let malformedCases: [MalformedCase] = [
    // Length field
    MalformedCase("empty file", [], "file is 0 bytes, shorter than the 8-byte header length"),
    MalformedCase("5 bytes", [1, 0, 0, 0, 0], "shorter than the 8-byte header length"),
    MalformedCase("header past end", rawFile("{}", length: 100), "header length 100 runs past the end of the file (10 bytes)"),
    MalformedCase("absurd header", rawFile("{}", length: 200_000_000), "header length 200000000 is larger than the limit"),
    MalformedCase("u64 max header", rawFile("{}", length: UInt64.max), "is larger than the limit of 100000000 bytes"),
    MalformedCase(
        "length edited into the data",
        {
            // A valid file whose length field is edited to swallow 8 data bytes.
            var b = (try? SafeTensorsFile(tensors: ["w": SafeTensor(uint8: Array(1...8), shape: [8])]).serialized()) ?? []
            b[0] &+= 8
            return b
        }(), "header is not valid JSON", "unexpected byte 0x1 after the JSON value"),
    MalformedCase(
        "length edited shorter",
        {
            // Dropping the last header byte (a space or '}') breaks JSON or coverage.
            var b = rawFile(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [7])
            b[0] &-= 1
            return b
        }(), "header is not valid JSON", "unexpected end of header"),

    // Header text
    MalformedCase("invalid UTF-8", rawFile(headerBytes: [0x7B, 0xFF, 0x7D]), "header is not valid UTF-8"),
    MalformedCase("truncated JSON", rawFile(#"{"a": "#), "header is not valid JSON", "unexpected end of header"),
    MalformedCase("trailing comma", rawFile(#"{"a":{},}"#), "header is not valid JSON", "expected a string key"),
    MalformedCase("garbage after", rawFile(#"{} x"#), "header is not valid JSON", "after the JSON value"),
    MalformedCase("NUL padding", rawFile(headerBytes: Array("{}".utf8) + [0, 0]), "header is not valid JSON", "byte 0x0"),
    MalformedCase("single quotes", rawFile("{'a':1}"), "header is not valid JSON"),
    MalformedCase("control char", rawFile("{\"a\u{01}\":1}"), "unescaped control character"),
    MalformedCase("lone surrogate", rawFile(#"{"\ud800":1}"#), "unpaired UTF-16 surrogate"),
    MalformedCase("leading zero", rawFile(#"{"w":{"dtype":"U8","shape":[01],"data_offsets":[0,1]}}"#), "leading zero"),
    MalformedCase("deep nesting", rawFile("{\"a\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"), "nesting deeper than 64"),
    MalformedCase("not an object", rawFile("[1, 2]"), "header is not a JSON object (found an array)"),
    MalformedCase("duplicate key", rawFile(#"{"w":{},"w":{}}"#), "duplicate key \"w\""),
    // Inputs that Foundation's JSON readers accept (see SafeTensorsHeaderJSON.swift).
    MalformedCase("trailing comma in array", entry: #"{"dtype":"F32","shape":[0,],"data_offsets":[0,0]}"#, "header is not valid JSON", "unexpected character ']', expected a value"),
    MalformedCase("byte-order mark", rawFile("\u{FEFF}{}"), "header is not valid JSON", "unexpected byte 0xEF, expected a value"),
    MalformedCase("escaped duplicate key", rawFile(#"{"w":{},"\u0077":{}}"#), "duplicate key \"w\""),
    MalformedCase("duplicate field", entry: #"{"dtype":"F32","shape":[0],"dtype":"F32","data_offsets":[0,0]}"#, "duplicate key \"dtype\""),
    MalformedCase("duplicate metadata key", rawFile(#"{"__metadata__":{"a":"1","a":"2"}}"#), "duplicate key \"a\""),

    // Metadata
    MalformedCase("metadata not object", rawFile(#"{"__metadata__":"x"}"#), "__metadata__ must be an object of strings"),
    MalformedCase("metadata number", rawFile(#"{"__metadata__":{"epoch":3}}"#), "__metadata__ value for 'epoch' must be a string, found the number 3"),
    MalformedCase("metadata null", rawFile(#"{"__metadata__":{"a":null}}"#), "__metadata__ value for 'a' must be a string, found null"),

    // Entry structure
    MalformedCase("entry not object", entry: "3", "tensor 'w': entry must be an object"),
    MalformedCase("missing dtype", entry: #"{"shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': missing \"dtype\""),
    MalformedCase("missing shape", entry: #"{"dtype":"F32","data_offsets":[0,0]}"#, "tensor 'w': missing \"shape\""),
    MalformedCase("missing offsets", entry: #"{"dtype":"F32","shape":[0]}"#, "tensor 'w': missing \"data_offsets\""),
    MalformedCase("unexpected field", entry: #"{"dtype":"F32","shape":[0],"offsets":[0,0]}"#, "tensor 'w': unexpected field \"offsets\""),
    MalformedCase("dtype not string", entry: #"{"dtype":32,"shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': \"dtype\" must be a string, found the number 32"),
    MalformedCase("shape not array", entry: #"{"dtype":"F32","shape":"2x3","data_offsets":[0,0]}"#, "tensor 'w': \"shape\" must be an array of integers"),
    MalformedCase("shape string dim", entry: #"{"dtype":"F32","shape":[2,"3"],"data_offsets":[0,24]}"#, "tensor 'w': shape[1] must be an integer, found the string \"3\""),
    MalformedCase("offsets not array", entry: #"{"dtype":"F32","shape":[0],"data_offsets":{"a":0}}"#, "\"data_offsets\" must be an array of two integers, found an object"),
    MalformedCase("one offset", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0]}"#, "\"data_offsets\" must have exactly two integers [begin, end], found 1"),
    MalformedCase("bool offset", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0,true]}"#, "data_offsets[1] must be an integer, found true"),

    // dtype
    MalformedCase("unknown dtype", entry: #"{"dtype":"F99","shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': unknown dtype \"F99\""),
    MalformedCase("BF16", entry: #"{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': dtype BF16 is not supported by QARep"),
    MalformedCase("F64", entry: #"{"dtype":"F64","shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': dtype F64 is not supported"),
    MalformedCase("BOOL", entry: #"{"dtype":"BOOL","shape":[0],"data_offsets":[0,0]}"#, "tensor 'w': dtype BOOL is not supported"),

    // Numbers
    MalformedCase("negative dim", entry: #"{"dtype":"F32","shape":[-2],"data_offsets":[0,0]}"#, "tensor 'w': negative dimension -2 in shape[0]"),
    MalformedCase("fractional dim", entry: #"{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}"#, data: [UInt8](repeating: 0, count: 8), "shape[0] must be an integer, found 2.0"),
    MalformedCase("exponent offset", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0,1e3]}"#, "data_offsets[1] must be an integer, found 1e3"),
    MalformedCase("offset beyond Int64", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0,99999999999999999999]}"#, "data_offsets[1] = 99999999999999999999 does not fit in a 64-bit integer"),
    MalformedCase("fractional offset", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0,0.0]}"#, "data_offsets[1] must be an integer, found 0.0"),
    MalformedCase("offset beyond 2^53", entry: #"{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,9007199254740993]}"#, "data_offsets [0, 9007199254740993] run past the end of the data buffer (0 bytes)"),
    MalformedCase("offset beyond 2^32", entry: #"{"dtype":"F32","shape":[0],"data_offsets":[0,5000000000]}"#, "data_offsets [0, 5000000000] run past the end of the data buffer (0 bytes)"),
    MalformedCase("shape overflow", entry: #"{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}"#, "tensor 'w': shape [4611686018427387904, 4] has too many elements"),
    MalformedCase("bytes overflow", entry: #"{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,0]}"#, "tensor 'w': shape [4611686018427387904] with dtype I64 is too large"),

    // Offsets
    MalformedCase("negative offset", entry: #"{"#+f32x2+#","data_offsets":[-8,0]}"#, "tensor 'w': negative data offset in data_offsets [-8, 0]"),
    MalformedCase("begin > end", entry: #"{"#+f32x2+#","data_offsets":[8,0]}"#, data: [UInt8](repeating: 0, count: 8), "tensor 'w': data_offsets [8, 0] have begin > end"),
    MalformedCase("out of buffer", entry: #"{"#+f32x2+#","data_offsets":[0,8]}"#, data: [1, 2, 3, 4], "tensor 'w': data_offsets [0, 8] run past the end of the data buffer (4 bytes)"),
    MalformedCase("size mismatch", entry: #"{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}"#, data: [UInt8](repeating: 0, count: 20), "tensor 'w': data_offsets [0, 20] span 20 bytes but shape [2, 3] with dtype F32 needs 24"),
    MalformedCase(
        "overlap",
        rawFile(#"{"a":{"#+f32x2+#","data_offsets":[0,8]},"b":{"#+f32x2+#","data_offsets":[4,12]}}"#, data: [UInt8](repeating: 0, count: 12)),
        "tensors 'a' and 'b' overlap"),
    MalformedCase(
        "duplicate range",
        rawFile(#"{"a":{"#+f32x2+#","data_offsets":[0,8]},"b":{"#+f32x2+#","data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)),
        "tensors 'a' and 'b' overlap"),
    MalformedCase(
        "gap between",
        rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, data: [UInt8](repeating: 0, count: 12)),
        "gap in the data buffer after tensor 'a': bytes 4..<8 belong to no tensor"),
    MalformedCase(
        "gap at start",
        rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, data: [UInt8](repeating: 0, count: 8)),
        "gap at the start of the data buffer: bytes 0..<4 belong to no tensor (next is 'a')"),
    MalformedCase(
        "trailing bytes",
        rawFile(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, data: [UInt8](repeating: 0, count: 9)),
        "data buffer has 9 bytes but the tensors cover only 4"),
    MalformedCase("data without tensors", rawFile("{}", data: [1]), "data buffer has 1 bytes but the tensors cover only 0"),
]
