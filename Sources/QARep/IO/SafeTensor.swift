// One tensor of a safetensors file: dtype, shape and raw element bytes, with
// the size invariant that ties them together.

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
        self.init(unchecked: .f32, shape: shape, bytes: ElementCodec.encodeF32(floats), count: floats.count)
    }

    /// An `F16` tensor from `Float` values, each rounded to the nearest
    /// binary16 value (ties to even; beyond ±65504 after rounding gives ±inf;
    /// NaN stays NaN). Precondition: `values.count == product(shape)`.
    public init(float16 values: [Float], shape: [Int]) {
        self.init(unchecked: .f16, shape: shape, bytes: ElementCodec.encodeF16(values), count: values.count)
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
        self.init(unchecked: .i32, shape: shape, bytes: ElementCodec.encode(int32), count: int32.count)
    }

    /// An `I64` tensor. Precondition: `int64.count == product(shape)`.
    public init(int64: [Int64], shape: [Int]) {
        self.init(unchecked: .i64, shape: shape, bytes: ElementCodec.encode(int64), count: int64.count)
    }

    private init(unchecked dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8], count: Int) {
        let expected = Self.elementCount(of: shape)
        precondition(
            expected == count,
            "SafeTensor: \(count) values do not fill shape \(CheckpointError.formatShape(shape))")
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// `product(shape)`, or `nil` when a dimension is negative or the product
    /// overflows `Int`.
    public var elementCount: Int? { Self.elementCount(of: shape) }

    /// Checks the invariant: no negative dimension, no overflow, and
    /// `bytes.count == product(shape) * dtype.byteSize`.
    ///
    /// - Throws: ``CheckpointError`` naming the shape, dtype and byte counts.
    public func validate() throws {
        if let message = Self.invariantProblem(dtype: dtype, shape: shape, byteCount: bytes.count) {
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
            return ElementCodec.decodeF32(bytes)
        case .f16:
            try checkAccess(.f16, asking: "Float")
            return ElementCodec.decodeF16(bytes)
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
        return ElementCodec.decode(bytes, as: Int32.self)
    }

    /// The elements of an `I64` tensor.
    /// - Throws: ``CheckpointError`` for any other dtype.
    public func int64() throws -> [Int64] {
        try checkAccess(.i64, asking: "Int64")
        return ElementCodec.decode(bytes, as: Int64.self)
    }

    private func checkAccess(_ wanted: SafeTensorsDType, asking type: String) throws {
        guard dtype == wanted else {
            throw CheckpointError(
                "SafeTensor: dtype mismatch: tensor has dtype \(dtype.rawValue), \(type) values need \(wanted.rawValue)")
        }
        try validate()
    }
}

extension SafeTensor {
    /// For the reader, which has already checked the invariant.
    init(unvalidatedDType dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// `product(shape)`, or `nil` when a dimension is negative or the product
    /// overflows `Int`.
    static func elementCount(of shape: [Int]) -> Int? {
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
    static func invariantProblem(dtype: SafeTensorsDType, shape: [Int], byteCount: Int) -> String? {
        let shapeText = CheckpointError.formatShape(shape)
        if let d = shape.first(where: { $0 < 0 }) {
            return "negative dimension \(d) in shape \(shapeText)"
        }
        guard let count = elementCount(of: shape) else {
            return "shape \(shapeText) has too many elements"
        }
        let (needed, overflow) = count.multipliedReportingOverflow(by: dtype.byteSize)
        if overflow { return "shape \(shapeText) with dtype \(dtype.rawValue) is too large" }
        if needed != byteCount {
            return "\(byteCount) bytes of data but shape \(shapeText) with dtype \(dtype.rawValue) needs \(needed)"
        }
        return nil
    }
}
