// Reading a safetensors file: the strict validator behind every checkpoint
// QARep loads. Each problem is one CheckpointError line naming the file and
// the offending key; nothing in a corrupt file can make it trap.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension SafeTensorsFile {
    /// Reads and validates the file at `path` (see the type's documentation for
    /// the checks).
    ///
    /// - Throws: ``CheckpointError`` whose message starts with `path`, for I/O
    ///   errors as well as for malformed contents.
    public static func read(from path: String) throws -> SafeTensorsFile {
        let bytes: [UInt8]
        do { bytes = try readWholeFile(path) } catch { throw CheckpointError("\(path): \(error.reason)") }
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
        let root: HeaderJSON
        do {
            var parser = HeaderJSONParser(bytes: Array(headerBytes))
            root = try parser.parseDocument()
        } catch let error as HeaderJSONParser.Failure {
            throw fail("header is not valid JSON: \(error.message) at byte \(error.offset) of the header")
        }
        guard case .object(let members) = root else {
            throw fail("header is not a JSON object (found \(root.kind))")
        }

        var metadata: [String: String] = [:]
        var entries: [Entry] = []
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
            entries.append(try Entry(name: key, value: value, bufferSize: bufferSize, fail: fail))
        }

        // The tensors must tile the data buffer: sorted by offsets, each starts
        // where the previous one ended, the first at 0 and the last at the end.
        let ordered = entries.sorted {
            ($0.begin, $0.end) < ($1.begin, $1.end)
                || (($0.begin, $0.end) == ($1.begin, $1.end) && Self.utf8Less($0.name, $1.name))
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
}

/// One validated tensor entry of the header: its own fields are consistent
/// and its bytes lie inside the data buffer (the caller checks the tiling).
private struct Entry {
    let name: String
    let dtype: SafeTensorsDType
    let shape: [Int]
    let begin: Int
    let end: Int

    init(name: String, value: HeaderJSON, bufferSize: Int, fail: (String) -> CheckpointError) throws {
        func entryFail(_ message: String) -> CheckpointError { fail("tensor '\(name)': \(message)") }

        guard case .object(let fields) = value else {
            throw entryFail("entry must be an object with dtype, shape and data_offsets, found \(value.kind)")
        }
        var dtypeValue: HeaderJSON? = nil
        var shapeValue: HeaderJSON? = nil
        var offsetsValue: HeaderJSON? = nil
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
            if SafeTensorsDType.unsupportedNames.contains(dtypeName) {
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
            let d = try Self.integer(dim, what: "shape[\(i)]", fail: entryFail)
            guard d >= 0 else { throw entryFail("negative dimension \(d) in shape[\(i)]") }
            shape.append(d)
        }
        guard let elementCount = SafeTensor.elementCount(of: shape) else {
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
        let begin = try Self.integer(offsets[0], what: "data_offsets[0]", fail: entryFail)
        let end = try Self.integer(offsets[1], what: "data_offsets[1]", fail: entryFail)
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
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.begin = begin
        self.end = end
    }

    /// Reads an exact JSON integer: the literal must be `-?digits` and fit in
    /// `Int`, so `2.0`, `1e3` and `2^64` are refused, never rounded.
    private static func integer(_ value: HeaderJSON, what: String, fail: (String) -> CheckpointError) throws -> Int {
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
}
