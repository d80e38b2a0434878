// The element types of a safetensors file and their bytes on disk: every
// element little-endian, F32 and F16 as IEEE 754 binary32 and binary16.

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

    /// Dtypes that exist in the format but that QARep does not handle: the
    /// reader calls them unsupported rather than unknown.
    static let unsupportedNames: Set<String> = [
        "BOOL", "BF16", "F64", "I16", "U16", "U32", "U64",
        "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64",
    ]
}

/// Elements to and from their bytes on disk. Decoding reads
/// `bytes.count / element size` elements; callers have checked the count.
enum ElementCodec {
    static func encode<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        #if _endian(big)
        let values = values.map(\.littleEndian)
        #endif
        return values.withUnsafeBytes { Array($0) }
    }

    static func decode<T: FixedWidthInteger>(_ bytes: [UInt8], as type: T.Type) -> [T] {
        let n = bytes.count / MemoryLayout<T>.size
        let values = [T](unsafeUninitializedCapacity: n) { out, initialized in
            bytes.withUnsafeBytes { raw in
                UnsafeMutableRawBufferPointer(out).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: raw.prefix(n * MemoryLayout<T>.size)))
            }
            initialized = n
        }
        #if _endian(big)
        return values.map(T.init(littleEndian:))
        #else
        return values
        #endif
    }

    static func encodeF32(_ values: [Float]) -> [UInt8] { encode(values.map(\.bitPattern)) }

    static func decodeF32(_ bytes: [UInt8]) -> [Float] { decode(bytes, as: UInt32.self).map(Float.init(bitPattern:)) }

    /// Each value rounded to the nearest binary16, ties to even; beyond
    /// ±65504 after rounding gives ±inf; NaN stays NaN.
    static func encodeF16(_ values: [Float]) -> [UInt8] { encode(values.map { Float16($0).bitPattern }) }

    /// Exact: every binary16 value is a `Float`.
    static func decodeF16(_ bytes: [UInt8]) -> [Float] {
        decode(bytes, as: UInt16.self).map { Float(Float16(bitPattern: $0)) }
    }
}
