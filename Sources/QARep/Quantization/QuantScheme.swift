import QARepKernels

/// How a tensor is quantized: bit width, signedness, symmetry, granularity.
///
/// Integer range for `bits = b`:
///
/// | signed | narrow | range |
/// |---|---|---|
/// | yes | yes | `[-(2^(b-1) - 1), 2^(b-1) - 1]`, int8: [-127, 127] |
/// | yes | no | `[-2^(b-1), 2^(b-1) - 1]`, int8: [-128, 127] |
/// | no | - | `[0, 2^b - 1]`, uint8: [0, 255] |
///
/// Scale and zero point from a real range `[lo, hi]` (always widened to
/// contain 0, so that 0 is exact):
/// - symmetric: `scale = max(|lo|, |hi|) / qmax`, `zeroPoint = 0` (unsigned
///   symmetric uses `max(hi, 0) / qmax`); the TensorRT convention.
/// - asymmetric: `scale = (hi - lo) / (qmax - qmin)`,
///   `zeroPoint = clamp(qmin - roundHalfEven(lo / scale), qmin, qmax)`.
/// A zero range gives `scale = Float.ulpOfOne` rather than 0.
public struct QuantScheme: Codable, Sendable, Equatable, Hashable {
    public var bits: Int
    public var signed: Bool
    public var symmetric: Bool
    public var narrowRange: Bool
    /// One scale per output channel (axis 0) instead of one per tensor.
    public var perChannel: Bool

    public init(bits: Int = 8, signed: Bool = true, symmetric: Bool = true, narrowRange: Bool = false, perChannel: Bool = false) {
        self.bits = bits; self.signed = signed; self.symmetric = symmetric
        self.narrowRange = narrowRange; self.perChannel = perChannel
    }

    /// TensorRT's weights: int8, symmetric, per output channel, [-127, 127].
    public static let int8Weights = QuantScheme(bits: 8, signed: true, symmetric: true, narrowRange: true, perChannel: true)
    /// TensorRT's activations: int8, symmetric, per tensor, [-128, 127].
    public static let int8Activations = QuantScheme(bits: 8, signed: true, symmetric: true, narrowRange: false, perChannel: false)
    /// Unsigned 8-bit asymmetric activations, per tensor, [0, 255].
    public static let uint8Activations = QuantScheme(bits: 8, signed: false, symmetric: false, narrowRange: false, perChannel: false)

    public var qmin: Int32 {
        signed ? (narrowRange ? -(Int32(1) << (bits - 1)) + 1 : -(Int32(1) << (bits - 1))) : 0
    }
    public var qmax: Int32 { signed ? (Int32(1) << (bits - 1)) - 1 : (Int32(1) << bits) - 1 }

    /// Rejects bit widths outside 2...8.
    public func validate() throws {
        guard (2...8).contains(bits) else { throw QuantizationError("bit width must be between 2 and 8, got \(bits)") }
    }

    /// Scale and zero point for the real range `[lo, hi]`.
    public func qparams(lo: Float, hi: Float) -> (scale: Float, zeroPoint: Int32) {
        let lo = min(lo, 0), hi = max(hi, 0)
        if symmetric {
            let amax = signed ? max(-lo, hi) : hi
            return (max(amax / Float(qmax), Float.ulpOfOne), signed ? 0 : 0)
        }
        let scale = max((hi - lo) / Float(qmax - qmin), Float.ulpOfOne)
        let zp = Int32(Float(qmin) - roundHalfEven(lo / scale))
        return (scale, min(max(zp, qmin), qmax))
    }
}

/// A quantization setting that cannot work, or a quantized model that is inconsistent.
public struct QuantizationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What to quantize how: a weight scheme, an activation scheme and the
/// activation observers' calibrator with its settings, PyTorch's `QConfig`
/// without the factory machinery. Weights are always observed by per-channel
/// min-max on the current weight (what TensorRT and the integer engine use).
/// `.tensorRT` is the default: int8 symmetric per-channel weights in
/// [-127, 127], int8 symmetric per-tensor activations, min-max calibration.
public struct QConfig: Sendable, Equatable {
    public var weight: QuantScheme
    public var activation: QuantScheme
    /// How activation ranges are calibrated (QAT then tracks them by moving averages).
    public var calibrator: Calibrator
    /// The width of the first convolution's and the classifier's weights and
    /// inputs, when it differs from the others': the LSQ paper keeps the
    /// first and last layers at 8 bits while the rest run at 4 or fewer.
    /// `nil`: every layer at `weight.bits` and `activation.bits`.
    public var firstLastBits: Int?

    public init(weight: QuantScheme = .int8Weights, activation: QuantScheme = .int8Activations, calibrator: Calibrator = .minmax,
                firstLastBits: Int? = nil) {
        self.weight = weight; self.activation = activation; self.calibrator = calibrator; self.firstLastBits = firstLastBits
    }

    public static let tensorRT = QConfig()
    /// Unsigned asymmetric activations (PyTorch fbgemm-style), same weights.
    public static let unsignedActivations = QConfig(activation: .uint8Activations)

    /// Both schemes with another bit width.
    public func withBits(_ bits: Int) -> QConfig {
        var c = self
        c.weight.bits = bits; c.activation.bits = bits
        return c
    }

    /// The same schemes with another calibrator.
    public func with(calibrator: Calibrator) -> QConfig {
        var c = self
        c.calibrator = calibrator
        return c
    }

    /// The setting of the first and last layers: both schemes at
    /// `firstLastBits` where it is set, this one otherwise.
    public var forFirstAndLastLayers: QConfig {
        guard let bits = firstLastBits else { return self }
        var c = withBits(bits)
        c.firstLastBits = nil
        return c
    }

    public func validate() throws {
        try weight.validate(); try activation.validate(); try calibrator.validate()
        if let b = firstLastBits, !(2...8).contains(b) {
            throw QuantizationError("the first and last layers' bit width must be between 2 and 8, got \(b)")
        }
        guard weight.signed && weight.symmetric else {
            throw QuantizationError("weights must be signed symmetric (the integer engine has no weight zero point)")
        }
        guard !activation.perChannel else { throw QuantizationError("activations are quantized per tensor") }
    }
}

extension QConfig: Codable {
    private enum CodingKeys: String, CodingKey { case weight, activation, calibrator, firstLastBits }

    /// Files written before the calibrator was part of the qconfig have none:
    /// min-max; files from before `firstLastBits` have every layer at one width.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(weight: try c.decode(QuantScheme.self, forKey: .weight),
                  activation: try c.decode(QuantScheme.self, forKey: .activation),
                  calibrator: try c.decodeIfPresent(Calibrator.self, forKey: .calibrator) ?? .minmax,
                  firstLastBits: try c.decodeIfPresent(Int.self, forKey: .firstLastBits))
    }
}
