import Foundation

/// The calibration methods an observer can use.
public enum Calibrator: String, Codable, Sendable, CaseIterable {
    /// Running minimum and maximum.
    case minmax
    /// Exponential moving average of batch minima and maxima (PyTorch's
    /// `MovingAverageMinMaxObserver`, averaging constant 0.01).
    case movingAverage = "moving-average"
    /// Clip at a percentile (default 99.99) of `|x|`, from a histogram.
    case percentile
    /// The clipping threshold that minimizes the quantization mean squared
    /// error over a histogram of `|x|` (the paper's metric).
    case mse
    /// TensorRT's entropy calibration: the threshold minimizing the KL
    /// divergence between the histogram and its quantized version.
    case entropy
}

/// Watches values and proposes a real range to quantize; it only observes
/// and computes. `FakeQuantize` owns one and turns its range into scale and
/// zero point with `QuantScheme.qparams`.
///
/// Histogram-based observers choose a symmetric threshold `T` on `|x|`; for an
/// asymmetric scheme the range is the observed `[min, max]` clipped to `[-T, T]`.
public final class Observer {
    public let calibrator: Calibrator
    public let scheme: QuantScheme
    /// Percentile used by `.percentile`, in percent.
    public let percentile: Double
    /// Averaging constant of `.movingAverage`.
    public let averagingConstant: Float

    /// Observed minimum and maximum (moving averages for `.movingAverage`).
    public private(set) var minValue = Float.infinity
    public private(set) var maxValue = -Float.infinity
    var histogram: AbsHistogram?

    public init(_ calibrator: Calibrator, scheme: QuantScheme, percentile: Double = 99.99, averagingConstant: Float = 0.01) {
        self.calibrator = calibrator; self.scheme = scheme
        self.percentile = percentile; self.averagingConstant = averagingConstant
        if [.percentile, .mse, .entropy].contains(calibrator) { histogram = AbsHistogram() }
    }

    /// Whether any value has been observed.
    public var hasObserved: Bool { minValue <= maxValue }

    /// Records one batch of values.
    public func observe(_ values: UnsafeBufferPointer<Float>) {
        guard !values.isEmpty else { return }
        var lo = Float.infinity, hi = -Float.infinity
        for v in values where v.isFinite { lo = min(lo, v); hi = max(hi, v) }
        guard lo <= hi else { return }
        if calibrator == .movingAverage && hasObserved {
            minValue += averagingConstant * (lo - minValue)
            maxValue += averagingConstant * (hi - maxValue)
        } else {
            minValue = min(minValue, lo)
            maxValue = max(maxValue, hi)
        }
        histogram?.add(values, absMax: max(-lo, hi))
    }

    /// Records one batch of values.
    public func observe(_ values: [Float]) { values.withUnsafeBufferPointer { observe($0) } }

    /// The real range to quantize, `lo <= 0 <= hi`.
    public func range() -> (lo: Float, hi: Float) {
        guard hasObserved else { return (0, 0) }
        let lo = min(minValue, 0), hi = max(maxValue, 0)
        guard let histogram, histogram.total > 0 else { return (lo, hi) }
        let t: Float
        switch calibrator {
        case .percentile: t = histogram.percentileThreshold(percentile)
        case .mse: t = histogram.mseThreshold(scheme: scheme)
        case .entropy: t = histogram.entropyThreshold(quantizedBins: Int(scheme.qmax) + 1)
        default: t = max(-lo, hi)
        }
        return (max(lo, -t), min(hi, t))
    }

    /// Scale and zero point for the current range.
    public func qparams() -> (scale: Float, zeroPoint: Int32) {
        let r = range()
        return scheme.qparams(lo: r.lo, hi: r.hi)
    }

    /// Observer state for checkpoints: `[min, max]`, then the histogram's
    /// range and counts for histogram observers.
    public var state: [Float] {
        var s = [minValue, maxValue]
        if let histogram { s += [histogram.range] + histogram.counts.map(Float.init) }
        return s
    }

    /// Restores what `state` produced.
    public func restore(_ s: [Float]) throws {
        let expected = 2 + (histogram.map { 1 + $0.counts.count } ?? 0)
        guard s.count == expected else {
            throw QuantizationError("observer state has \(s.count) values, expected \(expected) for \(calibrator.rawValue)")
        }
        minValue = s[0]; maxValue = s[1]
        if histogram != nil {
            histogram!.range = s[2]
            histogram!.counts = s[3...].map(Double.init)
        }
    }
}

/// A histogram of `|x|` over `[0, range]` in a fixed number of bins. When a
/// larger value arrives the range doubles (as often as needed) and pairs of
/// bins merge, so earlier counts are never re-spread by guesswork.
struct AbsHistogram {
    static let binCount = 2048
    var counts = [Double](repeating: 0, count: binCount)
    var range: Float = 0

    var total: Double { counts.reduce(0, +) }
    var binWidth: Float { range / Float(Self.binCount) }

    mutating func add(_ values: UnsafeBufferPointer<Float>, absMax: Float) {
        guard absMax.isFinite, absMax > 0 else {
            counts[0] += Double(values.count)
            return
        }
        if range == 0 { range = absMax }
        while absMax > range {
            // Merge bin pairs: bin i of the doubled range holds old bins 2i and 2i+1.
            var merged = [Double](repeating: 0, count: Self.binCount)
            for i in 0..<Self.binCount { merged[i / 2] += counts[i] }
            counts = merged
            range *= 2
        }
        let scale = Float(Self.binCount) / range
        for v in values where v.isFinite {
            counts[min(Int(abs(v) * scale), Self.binCount - 1)] += 1
        }
    }

    /// Upper edge of the first bin at which the cumulative share reaches `p` percent.
    func percentileThreshold(_ p: Double) -> Float {
        let target = total * p / 100
        var cum = 0.0
        for (i, c) in counts.enumerated() {
            cum += c
            if cum >= target { return Float(i + 1) * binWidth }
        }
        return range
    }

    /// The threshold (a bin edge) minimizing the mean squared quantization
    /// error of the bin centres, weighted by counts.
    func mseThreshold(scheme: QuantScheme) -> Float {
        let w = binWidth, qmax = Float(scheme.qmax)
        var best = (error: Double.infinity, t: range)
        for edge in stride(from: 8, through: Self.binCount, by: 1) {
            let t = Float(edge) * w
            let s = t / qmax
            var err = 0.0
            for (i, c) in counts.enumerated() where c > 0 {
                let x = (Float(i) + 0.5) * w
                let q = min((x / s).rounded(.toNearestOrEven), qmax) * s
                let d = Double(x - q)
                err += c * d * d
            }
            if err < best.error { best = (err, t) }
        }
        return best.t
    }

    /// TensorRT's entropy calibration: for each candidate cut `i`, the
    /// reference P is the first `i` bins with all outliers added to the last;
    /// the candidate Q merges the first `i` bins (without the outliers) into
    /// `quantizedBins` levels and spreads each level evenly over its non-empty
    /// bins. The cut with the smallest KL(P || Q) wins; the threshold is its
    /// upper edge. As in NVIDIA's implementation, the first bin's count is
    /// replaced by the second's first: after a ReLU it holds every exact zero,
    /// a spike that would otherwise decide the divergence.
    func entropyThreshold(quantizedBins: Int) -> Float {
        var counts = self.counts
        counts[0] = counts[1]
        var best = (kl: Double.infinity, i: Self.binCount)
        var suffix = [Double](repeating: 0, count: Self.binCount + 1)
        for i in stride(from: Self.binCount - 1, through: 0, by: -1) { suffix[i] = suffix[i + 1] + counts[i] }
        for i in stride(from: quantizedBins, through: Self.binCount, by: 1) {
            let kl = entropyCost(counts: counts, cut: i, outliers: suffix[i], levels: quantizedBins)
            if kl < best.kl { best = (kl, i) }
        }
        return Float(best.i) * binWidth
    }
}

/// KL(P || Q) of one entropy-calibration candidate (see `entropyThreshold`).
/// Bins where P has mass but Q has none get a tiny Q (1e-12), a large but
/// finite penalty.
func entropyCost(counts: [Double], cut: Int, outliers: Double, levels: Int) -> Double {
    var p = Array(counts[0..<cut])
    p[cut - 1] += outliers
    var q = [Double](repeating: 0, count: cut)
    for l in 0..<levels {
        let start = l * cut / levels, end = (l + 1) * cut / levels
        guard start < end else { continue }
        var sum = 0.0, nonzero = 0
        for j in start..<end where counts[j] > 0 { sum += counts[j]; nonzero += 1 }
        guard nonzero > 0 else { continue }
        for j in start..<end where counts[j] > 0 { q[j] = sum / Double(nonzero) }
    }
    let ps = p.reduce(0, +), qs = q.reduce(0, +)
    guard ps > 0, qs > 0 else { return .infinity }
    var kl = 0.0
    for j in 0..<cut where p[j] > 0 {
        let pj = p[j] / ps, qj = max(q[j] / qs, 1e-12)
        kl += pj * log(pj / qj)
    }
    return kl
}
