// Strict reader and atomic writer for the safetensors checkpoint format.
//
// File layout (https://github.com/huggingface/safetensors):
//
//     [ 8 bytes ]  N, the header length, unsigned 64-bit little-endian
//     [ N bytes ]  UTF-8 JSON object, optionally padded with trailing spaces
//     [ rest    ]  the data buffer: raw little-endian tensor elements
//
// The header maps each tensor name to
// `{"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}`
// (offsets relative to the start of the data buffer, `end` exclusive) and may
// hold one `"__metadata__"` object whose values are all strings.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - Errors

/// An error reading, writing or applying a checkpoint file.
///
/// The message is one line that names the file and the problem, for example
/// `model.safetensors: tensor 'linear.weight': data_offsets [0, 20] span 20 bytes
/// but shape [2, 3] with dtype F32 needs 24`. The same type serves the model
/// checkpoint loader; see ``missingKey(_:file:)``, ``unexpectedKey(_:file:)``,
/// ``shapeMismatch(key:file:fileShape:modelShape:)`` and
/// ``dtypeMismatch(key:file:fileDType:expected:)``.
public struct CheckpointError: Error, CustomStringConvertible, LocalizedError, Sendable, Hashable {
    /// The whole human-readable message, without a trailing newline.
    public let message: String

    /// Creates an error with the given one-line message.
    public init(_ message: String) {
        self.message = message
    }

    /// The message, unchanged.
    public var description: String { message }

    /// The message, unchanged (so that `localizedDescription` prints it).
    public var errorDescription: String? { message }

    /// `"<file>: missing key <key>"`: the model has a tensor the file lacks.
    public static func missingKey(_ key: String, file: String) -> CheckpointError {
        CheckpointError("\(file): missing key \(key)")
    }

    /// `"<file>: unexpected key <key>"`: the file has a tensor the model lacks.
    public static func unexpectedKey(_ key: String, file: String) -> CheckpointError {
        CheckpointError("\(file): unexpected key \(key)")
    }

    /// `"<file>: shape mismatch for key <key>: file has [16, 1, 3, 3], model expects [16, 3, 3, 3]"`.
    public static func shapeMismatch(
        key: String, file: String, fileShape: [Int], modelShape: [Int]
    ) -> CheckpointError {
        CheckpointError(
            "\(file): shape mismatch for key \(key): file has \(formatShape(fileShape)), "
                + "model expects \(formatShape(modelShape))")
    }

    /// `"<file>: dtype mismatch for key <key>: file has I64, model expects F32"`.
    public static func dtypeMismatch(
        key: String, file: String, fileDType: SafeTensorsDType, expected: SafeTensorsDType
    ) -> CheckpointError {
        CheckpointError(
            "\(file): dtype mismatch for key \(key): file has \(fileDType.rawValue), "
                + "model expects \(expected.rawValue)")
    }

    /// Formats a shape as `[16, 3, 3, 3]` (scalars as `[]`), as all messages do.
    public static func formatShape(_ shape: [Int]) -> String {
        "[" + shape.map(String.init).joined(separator: ", ") + "]"
    }
}

// MARK: - Element types

/// The element types QARep reads and writes, spelled as in the safetensors header.
///
/// Other safetensors dtypes (`BF16`, `F64`, `BOOL`, `I16`, `U16`, `U32`, `U64`,
/// the `F8_*` formats) are refused on read with an error that names the tensor
/// and the dtype.
public enum SafeTensorsDType: String, Sendable, Hashable, CaseIterable {
    /// IEEE 754 binary32.
    case f32 = "F32"
    /// IEEE 754 binary16; read into `Float` by ``SafeTensor/floats()``.
    case f16 = "F16"
    /// Signed 64-bit integer (PyTorch's `num_batches_tracked`).
    case i64 = "I64"
    /// Signed 32-bit integer (quantized biases).
    case i32 = "I32"
    /// Signed 8-bit integer (quantized weights).
    case i8 = "I8"
    /// Unsigned 8-bit integer.
    case u8 = "U8"

    /// Bytes per element: 4, 2, 8, 4, 1, 1.
    public var byteSize: Int {
        switch self {
        case .f32: 4
        case .f16: 2
        case .i64: 8
        case .i32: 4
        case .i8: 1
        case .u8: 1
        }
    }
}

/// Safetensors dtypes that exist in the format but that QARep does not handle.
private let unsupportedSafeTensorsDTypes: Set<String> = [
    "BOOL", "BF16", "F64", "I16", "U16", "U32", "U64",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
]

// MARK: - One tensor

/// One dense, row-major tensor as stored in a safetensors file: a dtype, a
/// shape and the raw little-endian bytes of its elements.
///
/// The invariant `bytes.count == product(shape) * dtype.byteSize` with every
/// dimension `>= 0` holds for every tensor produced by the constructors and by
/// the reader. The fields are mutable, so the invariant is checked again by
/// ``validate()``, the typed accessors and the writer. A scalar has shape `[]`
/// and one element.
public struct SafeTensor: Sendable, Hashable {
    /// The element type.
    public var dtype: SafeTensorsDType
    /// The dimensions, outermost first; `[]` for a scalar.
    public var shape: [Int]
    /// The elements, row-major, each little-endian.
    public var bytes: [UInt8]

    /// Creates a tensor from raw little-endian element bytes.
    ///
    /// - Throws: ``CheckpointError`` when a dimension is negative or
    ///   `bytes.count` differs from `product(shape) * dtype.byteSize`.
    public init(dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) throws {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
        try validate()
    }

    /// An `F32` tensor. Precondition: `floats.count == product(shape)`.
    public init(floats: [Float], shape: [Int]) {
        self.init(unchecked: .f32, shape: shape, bytes: stEncode(floats.map(\.bitPattern)), count: floats.count)
    }

    /// An `F16` tensor from `Float` values, each rounded to the nearest
    /// binary16 value (ties to even; beyond ±65504 after rounding gives ±inf;
    /// NaN stays NaN). Precondition: `values.count == product(shape)`.
    public init(float16 values: [Float], shape: [Int]) {
        self.init(unchecked: .f16, shape: shape, bytes: stEncode(values.map(stFloatToHalfBits)), count: values.count)
    }

    /// An `I8` tensor. Precondition: `int8.count == product(shape)`.
    public init(int8: [Int8], shape: [Int]) {
        self.init(unchecked: .i8, shape: shape, bytes: int8.map { UInt8(bitPattern: $0) }, count: int8.count)
    }

    /// A `U8` tensor. Precondition: `uint8.count == product(shape)`.
    public init(uint8: [UInt8], shape: [Int]) {
        self.init(unchecked: .u8, shape: shape, bytes: uint8, count: uint8.count)
    }

    /// An `I32` tensor. Precondition: `int32.count == product(shape)`.
    public init(int32: [Int32], shape: [Int]) {
        self.init(unchecked: .i32, shape: shape, bytes: stEncode(int32), count: int32.count)
    }

    /// An `I64` tensor. Precondition: `int64.count == product(shape)`.
    public init(int64: [Int64], shape: [Int]) {
        self.init(unchecked: .i64, shape: shape, bytes: stEncode(int64), count: int64.count)
    }

    private init(unchecked dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8], count: Int) {
        let expected = stElementCount(shape)
        precondition(
            expected == count,
            "SafeTensor: \(count) values do not fill shape \(CheckpointError.formatShape(shape))")
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// `product(shape)`, or `nil` when a dimension is negative or the product
    /// overflows `Int`.
    public var elementCount: Int? { stElementCount(shape) }

    /// Checks the invariant: no negative dimension, no overflow, and
    /// `bytes.count == product(shape) * dtype.byteSize`.
    ///
    /// - Throws: ``CheckpointError`` naming the shape, dtype and byte counts.
    public func validate() throws {
        if let message = stInvariantProblem(dtype: dtype, shape: shape, byteCount: bytes.count) {
            throw CheckpointError("SafeTensor: \(message)")
        }
    }

    /// The elements as `Float`: `F32` as stored, `F16` converted exactly.
    ///
    /// - Throws: ``CheckpointError`` for any other dtype or a broken invariant.
    public func floats() throws -> [Float] {
        switch dtype {
        case .f32:
            try checkAccess(.f32, asking: "Float")
            return stDecode(bytes, as: UInt32.self).map(Float.init(bitPattern:))
        case .f16:
            try checkAccess(.f16, asking: "Float")
            return stDecode(bytes, as: UInt16.self).map(stHalfBitsToFloat)
        default:
            throw CheckpointError(
                "SafeTensor: dtype mismatch: tensor has dtype \(dtype.rawValue), Float values need F32 or F16")
        }
    }

    /// The elements of an `I8` tensor.
    /// - Throws: ``CheckpointError`` for any other dtype.
    public func int8() throws -> [Int8] {
        try checkAccess(.i8, asking: "Int8")
        return bytes.map { Int8(bitPattern: $0) }
    }

    /// The elements of a `U8` tensor.
    /// - Throws: ``CheckpointError`` for any other dtype.
    public func uint8() throws -> [UInt8] {
        try checkAccess(.u8, asking: "UInt8")
        return bytes
    }

    /// The elements of an `I32` tensor.
    /// - Throws: ``CheckpointError`` for any other dtype.
    public func int32() throws -> [Int32] {
        try checkAccess(.i32, asking: "Int32")
        return stDecode(bytes, as: Int32.self)
    }

    /// The elements of an `I64` tensor.
    /// - Throws: ``CheckpointError`` for any other dtype.
    public func int64() throws -> [Int64] {
        try checkAccess(.i64, asking: "Int64")
        return stDecode(bytes, as: Int64.self)
    }

    private func checkAccess(_ wanted: SafeTensorsDType, asking type: String) throws {
        guard dtype == wanted else {
            throw CheckpointError(
                "SafeTensor: dtype mismatch: tensor has dtype \(dtype.rawValue), \(type) values need \(wanted.rawValue)")
        }
        try validate()
    }
}

// MARK: - A whole file

/// The contents of one safetensors file: named tensors and string metadata.
///
/// Reading is strict: anything that the format does not allow, or that QARep
/// cannot represent, is refused with a ``CheckpointError`` whose one-line
/// message starts with the file name and names the offending key. The checks:
///
/// - the file has at least 8 bytes; the header length `N` is at most
///   100,000,000 and `8 + N` does not pass the end of the file;
/// - the header is valid UTF-8 and one JSON object (RFC 8259, no duplicate keys;
///   whitespace such as the space padding is allowed around it);
/// - `"__metadata__"`, if present, is an object whose values are all strings;
/// - every other key is a tensor entry: an object with exactly `dtype` (a
///   string naming a supported dtype), `shape` (an array of integers `>= 0`) and
///   `data_offsets` (an array of two integers `0 <= begin <= end <= buffer size`);
///   integers are exact up to `Int.max` (no fractions, no exponents);
/// - `end - begin == product(shape) * dtype size`;
/// - the tensors, sorted by offset, neither overlap nor leave gaps, and cover the
///   data buffer exactly, to the last byte of the file.
///
/// Writing is deterministic and atomic; see ``serialized()`` and ``write(to:)``.
public struct SafeTensorsFile: Sendable, Hashable {
    /// The tensors by name (PyTorch `state_dict` names, for example
    /// `stage0.rbr_dense.conv.weight`).
    public var tensors: [String: SafeTensor]
    /// The `__metadata__` strings; empty when the header has none.
    public var metadata: [String: String]

    /// The largest header accepted, in bytes (as the reference implementation).
    public static let maxHeaderLength = 100_000_000

    /// The reserved header key that holds the metadata.
    public static let metadataKey = "__metadata__"

    /// Creates a file in memory.
    public init(tensors: [String: SafeTensor] = [:], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    // MARK: Reading

    /// Reads and validates the file at `path` (see the type's documentation for
    /// the checks).
    ///
    /// - Throws: ``CheckpointError`` whose message starts with `path`, for I/O
    ///   errors as well as for malformed contents.
    public static func read(from path: String) throws -> SafeTensorsFile {
        let bytes = try stReadWholeFile(path)
        return try SafeTensorsFile(parsing: bytes, source: path)
    }

    /// Parses and validates a complete safetensors file held in memory.
    ///
    /// - Parameters:
    ///   - bytes: the whole file, from the 8-byte length on.
    ///   - source: a name for the bytes (usually the file name), put at the start
    ///     of every error message.
    /// - Throws: ``CheckpointError`` naming `source` and the problem.
    public init(parsing bytes: [UInt8], source: String) throws {
        func fail(_ message: String) -> CheckpointError { CheckpointError("\(source): \(message)") }

        guard bytes.count >= 8 else {
            throw fail("file is \(bytes.count) bytes, shorter than the 8-byte header length")
        }
        var headerLength64: UInt64 = 0
        for i in 0..<8 { headerLength64 |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard headerLength64 <= UInt64(Self.maxHeaderLength) else {
            throw fail("header length \(headerLength64) is larger than the limit of \(Self.maxHeaderLength) bytes")
        }
        let headerLength = Int(headerLength64)
        guard headerLength <= bytes.count - 8 else {
            throw fail("header length \(headerLength) runs past the end of the file (\(bytes.count) bytes)")
        }
        let headerBytes = bytes[8..<(8 + headerLength)]
        let dataStart = 8 + headerLength
        let bufferSize = bytes.count - dataStart

        guard String(validating: headerBytes, as: UTF8.self) != nil else {
            throw fail("header is not valid UTF-8")
        }
        let root: STJSON
        do {
            var parser = STJSONParser(bytes: Array(headerBytes))
            root = try parser.parseDocument()
        } catch let error as STJSONParseError {
            throw fail("header is not valid JSON: \(error.message) at byte \(error.offset) of the header")
        }
        guard case .object(let members) = root else {
            throw fail("header is not a JSON object (found \(root.kind))")
        }

        var metadata: [String: String] = [:]
        var entries: [(name: String, dtype: SafeTensorsDType, shape: [Int], begin: Int, end: Int)] = []
        entries.reserveCapacity(members.count)

        for (key, value) in members {
            if key == Self.metadataKey {
                guard case .object(let pairs) = value else {
                    throw fail("__metadata__ must be an object of strings, found \(value.kind)")
                }
                for (metaKey, metaValue) in pairs {
                    guard case .string(let text) = metaValue else {
                        throw fail("__metadata__ value for '\(metaKey)' must be a string, found \(metaValue.kind)")
                    }
                    metadata[metaKey] = text
                }
                continue
            }
            let entry = try Self.parseEntry(name: key, value: value, bufferSize: bufferSize, fail: fail)
            entries.append(entry)
        }

        // The tensors must tile the data buffer: sorted by offsets, each starts
        // where the previous one ended, the first at 0 and the last at the end.
        let ordered = entries.sorted {
            ($0.begin, $0.end) < ($1.begin, $1.end)
                || (($0.begin, $0.end) == ($1.begin, $1.end) && stUTF8Less($0.name, $1.name))
        }
        var covered = 0
        var previous: String? = nil
        for entry in ordered {
            if entry.begin < covered {
                throw fail(
                    "tensors '\(previous!)' and '\(entry.name)' overlap: '\(entry.name)' begins at byte \(entry.begin)"
                        + " of the data buffer, before '\(previous!)' ends at byte \(covered)")
            }
            if entry.begin > covered {
                let place = previous.map { "gap in the data buffer after tensor '\($0)'" }
                    ?? "gap at the start of the data buffer"
                throw fail(
                    "\(place): bytes \(covered)..<\(entry.begin) belong to no tensor (next is '\(entry.name)')")
            }
            covered = entry.end
            previous = entry.name
        }
        if covered != bufferSize {
            throw fail(
                "data buffer has \(bufferSize) bytes but the tensors cover only \(covered);"
                    + " bytes \(covered)..<\(bufferSize) belong to no tensor")
        }

        var tensors: [String: SafeTensor] = [:]
        tensors.reserveCapacity(entries.count)
        for entry in entries {
            let range = (dataStart + entry.begin)..<(dataStart + entry.end)
            tensors[entry.name] = SafeTensor(
                unvalidatedDType: entry.dtype, shape: entry.shape, bytes: Array(bytes[range]))
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    private static func parseEntry(
        name: String, value: STJSON, bufferSize: Int, fail: (String) -> CheckpointError
    ) throws -> (name: String, dtype: SafeTensorsDType, shape: [Int], begin: Int, end: Int) {
        func entryFail(_ message: String) -> CheckpointError { fail("tensor '\(name)': \(message)") }

        guard case .object(let fields) = value else {
            throw entryFail("entry must be an object with dtype, shape and data_offsets, found \(value.kind)")
        }
        var dtypeValue: STJSON? = nil
        var shapeValue: STJSON? = nil
        var offsetsValue: STJSON? = nil
        for (field, fieldValue) in fields {
            switch field {
            case "dtype": dtypeValue = fieldValue
            case "shape": shapeValue = fieldValue
            case "data_offsets": offsetsValue = fieldValue
            default: throw entryFail("unexpected field \"\(field)\" (allowed: dtype, shape, data_offsets)")
            }
        }

        // dtype
        guard let dtypeValue else { throw entryFail("missing \"dtype\"") }
        guard case .string(let dtypeName) = dtypeValue else {
            throw entryFail("\"dtype\" must be a string, found \(dtypeValue.kind)")
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            let supported = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            if unsupportedSafeTensorsDTypes.contains(dtypeName) {
                throw entryFail("dtype \(dtypeName) is not supported by QARep (supported: \(supported))")
            }
            throw entryFail("unknown dtype \"\(dtypeName)\" (supported: \(supported))")
        }

        // shape
        guard let shapeValue else { throw entryFail("missing \"shape\"") }
        guard case .array(let dims) = shapeValue else {
            throw entryFail("\"shape\" must be an array of integers, found \(shapeValue.kind)")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        for (i, dim) in dims.enumerated() {
            let d = try integer(dim, what: "shape[\(i)]", fail: entryFail)
            guard d >= 0 else { throw entryFail("negative dimension \(d) in shape[\(i)]") }
            shape.append(d)
        }
        guard let elementCount = stElementCount(shape) else {
            throw entryFail("shape \(CheckpointError.formatShape(shape)) has too many elements")
        }
        let (byteCount, overflow) = elementCount.multipliedReportingOverflow(by: dtype.byteSize)
        guard !overflow else {
            throw entryFail("shape \(CheckpointError.formatShape(shape)) with dtype \(dtype.rawValue) is too large")
        }

        // data_offsets
        guard let offsetsValue else { throw entryFail("missing \"data_offsets\"") }
        guard case .array(let offsets) = offsetsValue else {
            throw entryFail("\"data_offsets\" must be an array of two integers, found \(offsetsValue.kind)")
        }
        guard offsets.count == 2 else {
            throw entryFail("\"data_offsets\" must have exactly two integers [begin, end], found \(offsets.count)")
        }
        let begin = try integer(offsets[0], what: "data_offsets[0]", fail: entryFail)
        let end = try integer(offsets[1], what: "data_offsets[1]", fail: entryFail)
        guard begin >= 0, end >= 0 else {
            throw entryFail("negative data offset in data_offsets [\(begin), \(end)]")
        }
        guard begin <= end else {
            throw entryFail("data_offsets [\(begin), \(end)] have begin > end")
        }
        guard end <= bufferSize else {
            throw entryFail(
                "data_offsets [\(begin), \(end)] run past the end of the data buffer (\(bufferSize) bytes)")
        }

        guard end - begin == byteCount else {
            throw entryFail(
                "data_offsets [\(begin), \(end)] span \(end - begin) bytes but shape "
                    + "\(CheckpointError.formatShape(shape)) with dtype \(dtype.rawValue) needs \(byteCount)")
        }
        return (name, dtype, shape, begin, end)
    }

    /// Reads an exact JSON integer: the literal must be `-?digits` and fit in `Int`.
    private static func integer(
        _ value: STJSON, what: String, fail: (String) -> CheckpointError
    ) throws -> Int {
        guard case .number(let literal) = value else {
            throw fail("\(what) must be an integer, found \(value.kind)")
        }
        let digits = literal.hasPrefix("-") ? literal.dropFirst() : Substring(literal)
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }) else {
            throw fail("\(what) must be an integer, found \(literal)")
        }
        guard let n = Int(literal) else {
            throw fail("\(what) = \(literal) does not fit in a 64-bit integer")
        }
        return n
    }

    // MARK: Writing

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

    /// Writes ``serialized()`` to `path` atomically.
    ///
    /// The bytes go to a new temporary file in the same directory
    /// (`.<name>.tmp-<pid>-<random>`), which is `fsync`ed, then renamed over
    /// `path`, and then the directory is `fsync`ed so that the rename itself is
    /// durable. A crash at any point leaves either the previous file or the new
    /// one at `path`, never a partial file. On failure the temporary file is
    /// removed. An existing file's permission bits are kept; a new file gets
    /// 0644 less the umask. If `path` is a symbolic link, the link itself is
    /// replaced.
    ///
    /// - Throws: ``CheckpointError`` whose message starts with `path`.
    public func write(to path: String) throws {
        let plan = try layout(source: path)
        try stAtomicWrite(path: path) { emit in
            try emit(plan.prefix)
            for name in plan.dataOrder { try emit(tensors[name]!.bytes) }
        }
    }

    /// Header length, header and the order of the tensors in the data buffer.
    private func layout(source: String) throws -> (prefix: [UInt8], dataOrder: [String], dataSize: Int) {
        for (name, tensor) in tensors {
            if name == Self.metadataKey {
                throw CheckpointError("\(source): a tensor may not be named \(Self.metadataKey)")
            }
            if let problem = stInvariantProblem(dtype: tensor.dtype, shape: tensor.shape, byteCount: tensor.bytes.count) {
                throw CheckpointError("\(source): tensor '\(name)': \(problem)")
            }
        }
        let dataOrder = tensors.keys.sorted { a, b in
            let sa = tensors[a]!.dtype.byteSize, sb = tensors[b]!.dtype.byteSize
            return sa != sb ? sa > sb : stUTF8Less(a, b)
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
            json += stJSONString(Self.metadataKey) + ":{"
            for (i, key) in metadata.keys.sorted(by: stUTF8Less).enumerated() {
                if i > 0 { json += "," }
                json += stJSONString(key) + ":" + stJSONString(metadata[key]!)
            }
            json += "}"
            first = false
        }
        for name in tensors.keys.sorted(by: stUTF8Less) {
            let tensor = tensors[name]!
            let (begin, end) = offsets[name]!
            if !first { json += "," }
            first = false
            json += stJSONString(name) + ":{\"dtype\":\"" + tensor.dtype.rawValue + "\",\"shape\":["
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

extension SafeTensor {
    /// For the reader, which has already checked the invariant.
    fileprivate init(unvalidatedDType dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

// MARK: - Element encoding (little-endian on disk)

private func stElementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

/// `nil` when `byteCount` bytes hold exactly a `shape` tensor of `dtype`, else the problem.
private func stInvariantProblem(dtype: SafeTensorsDType, shape: [Int], byteCount: Int) -> String? {
    let shapeText = CheckpointError.formatShape(shape)
    if let d = shape.first(where: { $0 < 0 }) {
        return "negative dimension \(d) in shape \(shapeText)"
    }
    guard let count = stElementCount(shape) else {
        return "shape \(shapeText) has too many elements"
    }
    let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
    if overflow { return "shape \(shapeText) with dtype \(dtype.rawValue) is too large" }
    if needed != byteCount {
        return "\(byteCount) bytes of data but shape \(shapeText) with dtype \(dtype.rawValue) needs \(needed)"
    }
    return nil
}

private func stEncode<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    let size = MemoryLayout<T>.size
    return [UInt8](unsafeUninitializedCapacity: values.count * size) { out, initialized in
        values.withUnsafeBufferPointer { src in
            #if _endian(little)
            if let base = src.baseAddress, let dst = out.baseAddress {
                UnsafeMutableRawPointer(dst).copyMemory(from: base, byteCount: values.count * size)
            }
            #else
            for (i, v) in src.enumerated() {
                withUnsafeBytes(of: v.littleEndian) { raw in
                    for j in 0..<size { out[i * size + j] = raw[j] }
                }
            }
            #endif
        }
        initialized = values.count * size
    }
}

/// Decodes `bytes.count / size` little-endian integers (callers check the count).
private func stDecode<T: FixedWidthInteger>(_ bytes: [UInt8], as type: T.Type) -> [T] {
    let size = MemoryLayout<T>.size
    let n = bytes.count / size
    return [T](unsafeUninitializedCapacity: n) { out, initialized in
        bytes.withUnsafeBytes { raw in
            if n > 0 {
                UnsafeMutableRawBufferPointer(out).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<(n * size)]))
            }
        }
        #if _endian(big)
        for i in 0..<n { out[i] = T(littleEndian: out[i]) }
        #endif
        initialized = n
    }
}

/// IEEE 754 binary16 bits to `Float` (exact: every binary16 value is a `Float`).
private func stHalfBitsToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = UInt32((h >> 10) & 0x1F)
    let mantissa = UInt32(h & 0x3FF)
    switch exponent {
    case 0:
        // Zero or subnormal: mantissa * 2^-24, exact in Float.
        let magnitude = Float(mantissa) * 0x1p-24
        return Float(bitPattern: sign | magnitude.bitPattern)
    case 0x1F:
        // Infinity or NaN (payload kept).
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    default:
        return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
    }
}

/// `Float` to binary16 bits, rounding to nearest, ties to even.
private func stFloatToHalfBits(_ f: Float) -> UInt16 {
    let bits = f.bitPattern
    let sign = UInt16(truncatingIfNeeded: (bits >> 16) & 0x8000)
    let exponent = Int((bits >> 23) & 0xFF)
    let mantissa = bits & 0x7F_FFFF
    if exponent == 0xFF {
        if mantissa == 0 { return sign | 0x7C00 }  // infinity
        return sign | 0x7E00 | UInt16(truncatingIfNeeded: mantissa >> 13)  // quiet NaN
    }
    let e = exponent - 127 + 15  // biased binary16 exponent
    if e >= 0x1F { return sign | 0x7C00 }  // |f| >= 65536: overflow
    if e <= 0 {
        // Subnormal binary16 (or zero): value / 2^-24 = significand >> (14 - e).
        if e < -10 { return sign }  // below half the smallest subnormal: rounds to 0
        let significand = mantissa | 0x80_0000
        let shift = UInt32(14 - e)
        var h = significand >> shift
        let remainder = significand & ((1 << shift) - 1)
        let halfway = UInt32(1) << (shift - 1)
        if remainder > halfway || (remainder == halfway && h & 1 == 1) { h += 1 }
        return sign | UInt16(h)  // a carry into bit 10 is the smallest normal, correctly
    }
    var h = (UInt32(e) << 10) | (mantissa >> 13)
    let remainder = mantissa & 0x1FFF
    if remainder > 0x1000 || (remainder == 0x1000 && h & 1 == 1) { h += 1 }  // a carry may reach inf, correctly
    return sign | UInt16(h)
}

/// Byte-wise (code point) order, independent of Unicode normalisation.
private func stUTF8Less(_ a: String, _ b: String) -> Bool {
    a.utf8.lexicographicallyPrecedes(b.utf8)
}

// MARK: - JSON (strict RFC 8259 subset reader and string writer)

/// A parsed JSON value. Numbers keep their literal text so that integers are
/// read exactly, with no trip through `Double`; objects keep their order.
private indirect enum STJSON {
    case object([(key: String, value: STJSON)])
    case array([STJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null

    var kind: String {
        switch self {
        case .object: "an object"
        case .array: "an array"
        case .string(let s): "the string \"\(s.count > 40 ? String(s.prefix(40)) + "..." : s)\""
        case .number(let n): "the number \(n)"
        case .bool(let b): b ? "true" : "false"
        case .null: "null"
        }
    }
}

private struct STJSONParseError: Error {
    let message: String
    let offset: Int
}

/// Recursive-descent parser over UTF-8 bytes that the caller has validated.
private struct STJSONParser {
    let bytes: [UInt8]
    var index = 0
    var depth = 0
    static let maxDepth = 64

    init(bytes: [UInt8]) { self.bytes = bytes }

    mutating func parseDocument() throws -> STJSON {
        skipWhitespace()
        let value = try parseValue()
        skipWhitespace()
        if index != bytes.count { throw error("unexpected \(describeCurrent()) after the JSON value") }
        return value
    }

    private func error(_ message: String) -> STJSONParseError {
        STJSONParseError(message: message, offset: index)
    }

    private func describeCurrent() -> String {
        guard index < bytes.count else { return "end of header" }
        let b = bytes[index]
        if b >= 0x21 && b < 0x7F { return "character '\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x" + String(b, radix: 16, uppercase: true)
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws -> STJSON {
        guard index < bytes.count else { throw error("unexpected end of header, expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try parseNumber())
        default: throw error("unexpected \(describeCurrent()), expected a value")
        }
    }

    private mutating func expectLiteral(_ word: String) throws {
        for c in word.utf8 {
            guard index < bytes.count, bytes[index] == c else { throw error("invalid literal, expected \(word)") }
            index += 1
        }
    }

    private mutating func enter() throws {
        depth += 1
        if depth > Self.maxDepth { throw error("nesting deeper than \(Self.maxDepth) levels") }
    }

    private mutating func parseObject() throws -> STJSON {
        try enter()
        defer { depth -= 1 }
        index += 1  // {
        var members: [(key: String, value: STJSON)] = []
        var seen = Set<String>()
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
                throw error("unexpected \(describeCurrent()), expected a string key")
            }
            let keyOffset = index
            let key = try parseString()
            guard seen.insert(key).inserted else {
                throw STJSONParseError(message: "duplicate key \"\(key)\"", offset: keyOffset)
            }
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else {
                throw error("unexpected \(describeCurrent()), expected ':'")
            }
            index += 1
            skipWhitespace()
            members.append((key, try parseValue()))
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of header, expected ',' or '}'") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            throw error("unexpected \(describeCurrent()), expected ',' or '}'")
        }
    }

    private mutating func parseArray() throws -> STJSON {
        try enter()
        defer { depth -= 1 }
        index += 1  // [
        var elements: [STJSON] = []
        skipWhitespace()
        if index < bytes.count && bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(elements)
        }
        while true {
            skipWhitespace()
            elements.append(try parseValue())
            skipWhitespace()
            guard index < bytes.count else { throw error("unexpected end of header, expected ',' or ']'") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(elements) }
            throw error("unexpected \(describeCurrent()), expected ',' or ']'")
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, returned as written.
    private mutating func parseNumber() throws -> String {
        let start = index
        func digits(_ p: inout STJSONParser) -> Int {
            let s = p.index
            while p.index < p.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p.bytes[p.index]) {
                p.index += 1
            }
            return p.index - s
        }
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        let intStart = index
        let intDigits = digits(&self)
        if intDigits == 0 { throw error("invalid number: expected a digit") }
        if intDigits > 1 && bytes[intStart] == UInt8(ascii: "0") {
            index = intStart
            throw error("invalid number: leading zero")
        }
        if index < bytes.count && bytes[index] == UInt8(ascii: ".") {
            index += 1
            if digits(&self) == 0 { throw error("invalid number: expected a digit after '.'") }
        }
        if index < bytes.count && (bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E")) {
            index += 1
            if index < bytes.count && (bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-")) {
                index += 1
            }
            if digits(&self) == 0 { throw error("invalid number: expected a digit in the exponent") }
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    private mutating func parseString() throws -> String {
        index += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let b = bytes[index]
            switch b {
            case UInt8(ascii: "\""):
                index += 1
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                index += 1
                guard index < bytes.count else { throw error("unterminated string") }
                let e = bytes[index]
                index += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try parseHex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw error("unpaired UTF-16 surrogate in \\u escape") }
                        index += 2
                        let low = try parseHex4()
                        guard (0xDC00...0xDFFF).contains(low) else {
                            throw error("unpaired UTF-16 surrogate in \\u escape")
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw error("unpaired UTF-16 surrogate in \\u escape")
                    }
                    out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
                default:
                    index -= 1
                    throw error("invalid escape '\\\(Character(Unicode.Scalar(e)))' in string")
                }
            case 0x00..<0x20:
                throw error("unescaped control character 0x\(String(b, radix: 16, uppercase: true)) in string")
            default:
                out.append(b)
                index += 1
            }
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[index]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            v = v << 4 | d
            index += 1
        }
        return v
    }
}

/// A JSON string literal: quotes, backslashes and control characters escaped,
/// everything else as UTF-8.
private func stJSONString(_ s: String) -> String {
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

// MARK: - POSIX file I/O

private func stErrno() -> String {
    String(cString: strerror(errno))
}

/// Reads the whole regular file at `path`.
private func stReadWholeFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw CheckpointError("\(path): cannot open: \(stErrno())") }
    defer { _ = close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw CheckpointError("\(path): cannot stat: \(stErrno())") }
    guard (info.st_mode & S_IFMT) == S_IFREG else {
        throw CheckpointError("\(path): not a regular file")
    }
    let expected = Int(info.st_size)
    var bytes = [UInt8](repeating: 0, count: expected)
    var filled = 0
    var failure: String? = nil
    bytes.withUnsafeMutableBytes { buffer in
        while filled < expected {
            let n = read(fd, buffer.baseAddress! + filled, min(expected - filled, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                failure = stErrno()
                return
            }
            if n == 0 { break }  // the file shrank while we read it
            filled += n
        }
    }
    if let failure { throw CheckpointError("\(path): read failed: \(failure)") }
    if filled < expected { bytes.removeSubrange(filled...) }
    return bytes
}

/// Creates a unique temporary file beside `path`, lets `body` fill it, then
/// fsync + rename + directory fsync. Removes the temporary file on failure.
private func stAtomicWrite(path: String, body: (_ emit: ([UInt8]) throws -> Void) throws -> Void) throws {
    guard !path.isEmpty, !path.hasSuffix("/") else {
        throw CheckpointError("\(path.isEmpty ? "\"\"" : path): not a file path")
    }
    let directory: String
    let baseName: String
    if let slash = path.lastIndex(of: "/") {
        let dir = String(path[..<slash])
        directory = dir.isEmpty ? "/" : dir
        baseName = String(path[path.index(after: slash)...])
    } else {
        directory = "."
        baseName = path
    }
    let tempPath =
        (directory == "/" ? "/" : directory + "/")
        + ".\(baseName).tmp-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"

    let fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        throw CheckpointError("\(path): cannot create temporary file in \(directory): \(stErrno())")
    }
    var fdOpen = true
    var renamed = false
    defer {
        if fdOpen { _ = close(fd) }
        if !renamed { _ = unlink(tempPath) }
    }

    // Keep the permission bits of the file being replaced.
    var existing = stat()
    if stat(path, &existing) == 0 && (existing.st_mode & S_IFMT) == S_IFREG {
        _ = fchmod(fd, existing.st_mode & 0o7777)
    }

    try body { chunk in
        var written = 0
        var failure: String? = nil
        chunk.withUnsafeBytes { buffer in
            while written < buffer.count {
                let n = write(fd, buffer.baseAddress! + written, min(buffer.count - written, 1 << 30))
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = stErrno()
                    return
                }
                written += n
            }
        }
        if let failure { throw CheckpointError("\(path): write to temporary file \(tempPath) failed: \(failure)") }
    }
    guard fsync(fd) == 0 else { throw CheckpointError("\(path): fsync of temporary file failed: \(stErrno())") }
    fdOpen = false
    guard close(fd) == 0 else { throw CheckpointError("\(path): close of temporary file failed: \(stErrno())") }
    guard rename(tempPath, path) == 0 else {
        throw CheckpointError("\(path): cannot rename temporary file into place: \(stErrno())")
    }
    renamed = true

    // Make the rename durable. Some file systems cannot fsync a directory
    // (EINVAL); there is nothing more to do on those.
    let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0 else { throw CheckpointError("\(path): cannot open directory \(directory) to fsync it: \(stErrno())") }
    defer { _ = close(dirFD) }
    if fsync(dirFD) != 0 && errno != EINVAL && errno != ENOTSUP {
        throw CheckpointError("\(path): fsync of directory \(directory) failed: \(stErrno())")
    }
}
