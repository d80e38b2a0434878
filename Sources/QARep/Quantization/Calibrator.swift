/// How an activation quantizer calibrates its range, with that method's
/// settings: what PyTorch spells as an observer class and its arguments
/// (`MinMaxObserver`, `MovingAverageMinMaxObserver(averaging_constant=)`,
/// `HistogramObserver`, ...). A `QConfig` carries one; `makeObserver(scheme:)`
/// builds the observer.
public enum Calibrator: Hashable, Sendable {
    /// Running minimum and maximum.
    case minmax
    /// Exponential moving average of batch minima and maxima (PyTorch's
    /// `MovingAverageMinMaxObserver`).
    case movingAverage(averagingConstant: Float = 0.01)
    /// Clip at a percentile of `|x|` (in percent, (0, 100]), from a histogram.
    case percentile(Double = 99.99)
    /// The clipping threshold that minimizes the quantization mean squared
    /// error over a histogram of `|x|` (the paper's metric).
    case mse
    /// TensorRT's entropy calibration: the threshold minimizing the KL
    /// divergence between the histogram and its quantized version.
    case entropy

    /// The method's name, as the command line and files spell it.
    public var method: Method {
        switch self {
        case .minmax: .minmax
        case .movingAverage: .movingAverage
        case .percentile: .percentile
        case .mse: .mse
        case .entropy: .entropy
        }
    }

    /// The calibration methods, without settings.
    public enum Method: String, Codable, Sendable, CaseIterable {
        case minmax
        case movingAverage = "moving-average"
        case percentile
        case mse
        case entropy
    }

    /// The calibrator of `method` with the given settings (each used only by
    /// the method it belongs to).
    public init(_ method: Method, percentile: Double = 99.99, averagingConstant: Float = 0.01) {
        switch method {
        case .minmax: self = .minmax
        case .movingAverage: self = .movingAverage(averagingConstant: averagingConstant)
        case .percentile: self = .percentile(percentile)
        case .mse: self = .mse
        case .entropy: self = .entropy
        }
    }

    /// Every method with its default settings.
    public static var allDefaults: [Calibrator] { Method.allCases.map { Calibrator($0) } }

    /// Rejects settings outside their domain, naming the setting.
    public func validate() throws {
        switch self {
        case .percentile(let p):
            guard p > 0, p <= 100 else { throw QuantizationError("percentile must be in (0, 100], got \(p)") }
        case .movingAverage(let c):
            guard c > 0, c <= 1 else { throw QuantizationError("averaging constant must be in (0, 1], got \(c)") }
        default: break
        }
    }

    /// A fresh observer of this kind for values quantized with `scheme`.
    public func makeObserver(scheme: QuantScheme) -> any Observer {
        switch self {
        case .minmax: MinMaxObserver(scheme: scheme)
        case .movingAverage(let c): MovingAverageMinMaxObserver(scheme: scheme, averagingConstant: c)
        case .percentile(let p): PercentileObserver(scheme: scheme, percentile: p)
        case .mse: MSEObserver(scheme: scheme)
        case .entropy: EntropyObserver(scheme: scheme)
        }
    }
}

extension Calibrator: CustomStringConvertible {
    /// `minmax`, `percentile 99.9`, `moving-average 0.01`.
    public var description: String {
        switch self {
        case .percentile(let p): "percentile \(p)"
        case .movingAverage(let c): "moving-average \(c)"
        default: method.rawValue
        }
    }
}

extension Calibrator: Codable {
    private enum CodingKeys: String, CodingKey { case method, percentile, averagingConstant = "averaging_constant" }

    /// `{"method": "percentile", "percentile": 99.9}`; a bare method name (as
    /// files written before the settings existed have it) means its defaults.
    public init(from decoder: any Decoder) throws {
        if let name = try? decoder.singleValueContainer().decode(Method.self) {
            self = Calibrator(name)
            return
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self = Calibrator(try c.decode(Method.self, forKey: .method),
                          percentile: try c.decodeIfPresent(Double.self, forKey: .percentile) ?? 99.99,
                          averagingConstant: try c.decodeIfPresent(Float.self, forKey: .averagingConstant) ?? 0.01)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(method, forKey: .method)
        switch self {
        case .percentile(let p): try c.encode(p, forKey: .percentile)
        case .movingAverage(let a): try c.encode(a, forKey: .averagingConstant)
        default: break
        }
    }
}
