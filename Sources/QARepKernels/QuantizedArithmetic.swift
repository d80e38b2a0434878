// Scalar arithmetic of the INT8 scheme (DESIGN.md section 3). The fake-quant
// simulation and the integer engine both call these, so that they agree to the
// bit; the vector kernels in CQARepInt8 perform the same IEEE operations in the
// same order.

/// Rounds to the nearest integer, ties to the even neighbour (IEEE 754
/// `roundTiesToEven`, ONNX `QuantizeLinear`, `rint` in the default mode).
///
/// The one rounding mode of QARep's quantization:
///
/// | x     | -2.5 | -1.5 | -0.5 | 0.5 | 1.5 | 2.5 | 2.6 | -2.6 |
/// |-------|------|------|------|-----|-----|-----|-----|------|
/// | result| -2   | -2   | -0   | 0   | 2   | 2   | 3   | -3   |
@inline(__always)
public func roundHalfEven(_ x: Float) -> Float { x.rounded(.toNearestOrEven) }

/// `roundHalfEven` in double precision; the same table applies.
@inline(__always)
public func roundHalfEven(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

/// Clamps a wide integer into `[min, max]`: `saturate(300, -128, 127) == 127`.
@inline(__always)
public func saturate(_ x: Int64, min: Int32, max: Int32) -> Int32 {
    Int32(Swift.min(Swift.max(x, Int64(min)), Int64(max)))
}

/// Quantizes a real value: `clamp(roundHalfEven(x / scale) + zeroPoint, min, max)`.
///
/// `x / scale` is a `Float` division (as ONNX `QuantizeLinear`); the zero
/// point is added and the clamp applied in `Double`, where both are exact, so
/// values far outside the range saturate instead of trapping. With
/// `scale = 0.1`, `zeroPoint = 0` and the int8 range:
///
/// | x        | 0.05 | 0.15 | -0.25 | 12.7 | 12.8 | -13.0 | 1e30 |
/// |----------|------|------|-------|------|------|-------|------|
/// | result   | 0    | 2    | -2    | 127  | 127  | -128  | 127  |
///
/// (0.05 / 0.1 and 0.15 / 0.1 are ties after the Float division.)
/// - Precondition: `x` is not NaN and `scale > 0`.
@inline(__always)
public func quantize(_ x: Float, scale: Float, zeroPoint: Int32, min: Int32, max: Int32) -> Int32 {
    precondition(!x.isNaN, "cannot quantize NaN")
    precondition(scale > 0, "quantization scale must be positive, got \(scale)")
    return Int32(clampedLevel(unclampedLevel(x, scale: scale, zeroPoint: zeroPoint), min: min, max: max))
}

/// `roundHalfEven(x / scale) + zeroPoint` before the clamp, in `Double`
/// (exact for every `Float` quotient and `Int32` zero point): the first half
/// of `quantize`, for the simulation, which also needs to know whether the
/// value was clipped. NaN stays NaN.
@inline(__always)
public func unclampedLevel(_ x: Float, scale: Float, zeroPoint: Int32) -> Double {
    Double(roundHalfEven(x / scale)) + Double(zeroPoint)
}

/// The second half of `quantize`: `level` clamped into `[min, max]`.
/// - Precondition: `level` is not NaN.
@inline(__always)
public func clampedLevel(_ level: Double, min: Int32, max: Int32) -> Double {
    Swift.min(Swift.max(level, Double(min)), Double(max))
}

/// Quantizes a bias to int32 in units of `inputScale * weightScale`, the
/// accumulator's unit: `roundHalfEven(Double(b) / (Double(inputScale) * Double(weightScale)))`,
/// saturated to the int32 range. The product of the scales is exact in
/// `Double` (two 24-bit significands), so the only rounding is the final
/// one. The simulation and the engine both take their bias from here:
/// `b = 1`, `inputScale = 0.5`, `weightScale = 0.25` gives 8; `b = 0.3125`
/// gives 2.5, a tie, so 2.
@inline(__always)
public func quantizeBias(_ b: Float, inputScale: Float, weightScale: Float) -> Int32 {
    Int32(clampedLevel(unclampedBiasLevel(b, inputScale: inputScale, weightScale: weightScale),
                       min: Int32.min, max: Int32.max))
}

/// `quantizeBias` before the saturation (NaN stays NaN).
@inline(__always)
public func unclampedBiasLevel(_ b: Float, inputScale: Float, weightScale: Float) -> Double {
    roundHalfEven(Double(b) / (Double(inputScale) * Double(weightScale)))
}

/// The real value of a bias code, `q * inputScale * weightScale`, computed in
/// `Double` and rounded once to `Float`: what the simulation adds to its
/// float accumulator where the engine adds `q` to its integer one.
@inline(__always)
public func dequantizeBias(_ q: Int32, inputScale: Float, weightScale: Float) -> Float {
    Float(Double(q) * (Double(inputScale) * Double(weightScale)))
}

/// Quantizes with the bounds of a `QuantRange`.
@inline(__always)
public func quantize(_ x: Float, scale: Float, zeroPoint: Int32, range: QuantRange) -> Int32 {
    quantize(x, scale: scale, zeroPoint: zeroPoint, min: range.min, max: range.max)
}

/// The real value of a code: `scale * Float(q - zeroPoint)` (the difference is
/// exact in `Int32` for 8-bit codes, the product rounds once).
@inline(__always)
public func dequantize(_ q: Int32, scale: Float, zeroPoint: Int32) -> Float {
    scale * Float(q - zeroPoint)
}

/// Requantizes an int32 accumulator (dot product plus int32 bias) to an output
/// code: `clamp(roundHalfEven(Double(acc) * Double(multiplier)) + zeroPoint, min, max)`,
/// with `multiplier = s_in * s_w[c] / s_out` stored as `Float`.
///
/// The product is rounded to `Double` first (53 bits; it can need 55), then to
/// an integer, ties to even; the zero point and the clamp are applied in
/// `Double`, where they are exact. ReLU is `min = zeroPoint`. With
/// `multiplier = 0.5`, `zeroPoint = 0`, int8 range:
///
/// | acc    | 1 | 3 | 5 | -1 | -3 | 7 | 300 | -300 |
/// |--------|---|---|---|----|----|---|-----|------|
/// | result | 0 | 2 | 2 | 0  | -2 | 4 | 127 | -128 |
/// - Precondition: `multiplier` is finite.
@inline(__always)
public func requantize(_ acc: Int32, multiplier: Float, zeroPoint: Int32, min: Int32, max: Int32) -> Int32 {
    precondition(multiplier.isFinite, "requantization multiplier must be finite, got \(multiplier)")
    let r = roundHalfEven(Double(acc) * Double(multiplier)) + Double(zeroPoint)
    return Int32(Swift.min(Swift.max(r, Double(min)), Double(max)))
}

/// Inclusive bounds of a quantized code.
///
/// | range          | min  | max | used for                                   |
/// |----------------|------|-----|--------------------------------------------|
/// | `.int8Narrow`  | -127 | 127 | weights (symmetric per channel, TensorRT)   |
/// | `.int8`        | -128 | 127 | activations, signed symmetric (zero point 0)|
/// | `.uint8`       | 0    | 255 | activations, unsigned asymmetric            |
public struct QuantRange: Equatable, Hashable, Sendable, CustomStringConvertible {
    public let min: Int32
    public let max: Int32

    public init(min: Int32, max: Int32) {
        precondition(min <= max, "empty quantization range [\(min), \(max)]")
        self.min = min
        self.max = max
    }

    /// [-127, 127]: signed 8-bit without -128, so that the range is symmetric.
    public static let int8Narrow = QuantRange(min: -127, max: 127)
    /// [-128, 127]: every signed 8-bit code.
    public static let int8 = QuantRange(min: -128, max: 127)
    /// [0, 255]: every unsigned 8-bit code.
    public static let uint8 = QuantRange(min: 0, max: 255)

    /// Number of codes, `max - min + 1`.
    public var count: Int { Int(max) - Int(min) + 1 }

    /// `true` when `q` is a code of the range.
    @inline(__always) public func contains(_ q: Int32) -> Bool { q >= min && q <= max }

    /// Saturates a wide integer into the range.
    @inline(__always) public func clamp(_ x: Int64) -> Int32 { saturate(x, min: min, max: max) }

    /// The lower bound after a fused ReLU: the code of real 0 (`zeroPoint`) or
    /// `min`, whichever is larger.
    @inline(__always) public func reluMin(zeroPoint: Int32) -> Int32 { Swift.max(min, zeroPoint) }

    public var description: String { "[\(min), \(max)]" }
}

/// An 8-bit activation storage type: `Int8` holds codes of the signed
/// symmetric scheme, `UInt8` those of the unsigned asymmetric one. Buffers of
/// the integer engine are plain arrays of one of the two.
public protocol QuantizedActivation: FixedWidthInteger, Sendable {
    /// Every code the type can hold: `.int8` or `.uint8`.
    static var codeRange: QuantRange { get }
}

extension Int8: QuantizedActivation {
    public static var codeRange: QuantRange { .int8 }
}

extension UInt8: QuantizedActivation {
    public static var codeRange: QuantRange { .uint8 }
}
