import Foundation
import QARepKernels

/// An observer that keeps a histogram of `|x|` besides the extremes and
/// chooses a symmetric clipping threshold `T` from it. For an asymmetric
/// scheme the range is the observed `[min, max]` clipped to `[-T, T]`.
/// Subclasses choose the threshold; the threshold search runs only when the
/// range is asked for, never per batch.
public class HistogramObserver: Observer {
    public let scheme: QuantScheme
    public private(set) var minValue = Float.infinity
    public private(set) var maxValue = -Float.infinity
    var histogram = AbsHistogram()
    public var calibrator: Calibrator { fatalError("HistogramObserver is abstract") }

    init(scheme: QuantScheme) { self.scheme = scheme }

    /// The clipping threshold on `|x|` for a histogram with at least one count.
    func threshold() -> Float { fatalError("HistogramObserver is abstract") }

    public func observe(_ values: UnsafeBufferPointer<Float>) {
        guard let (lo, hi) = finiteExtremes(values) else { return }
        minValue = min(minValue, lo); maxValue = max(maxValue, hi)
        histogram.add(values, absMax: max(-lo, hi))
    }

    public func range() -> (lo: Float, hi: Float) {
        let (lo, hi) = extremes
        guard histogram.total > 0 else { return (lo, hi) }
        let t = threshold()
        return (max(lo, -t), min(hi, t))
    }

    /// `[min, max, histogram range, counts...]`.
    public var state: [Float] { [minValue, maxValue, histogram.range] + histogram.counts.map(Float.init) }

    public func restore(_ s: [Float]) throws {
        (minValue, maxValue) = try checkedExtremes(s, expected: 3 + AbsHistogram.binCount, for: calibrator)
        histogram.range = s[2]
        histogram.counts = s[3...].map(Double.init)
    }
}

/// Clips at a percentile of `|x|` (the upper edge of the first histogram bin
/// at which the cumulative share reaches it).
public final class PercentileObserver: HistogramObserver {
    /// In percent, (0, 100].
    public let percentile: Double
    public override var calibrator: Calibrator { .percentile(percentile) }

    public init(scheme: QuantScheme, percentile: Double = 99.99) {
        self.percentile = percentile
        super.init(scheme: scheme)
    }

    override func threshold() -> Float { histogram.percentileThreshold(percentile) }
}

/// The threshold minimizing the quantization mean squared error of the
/// histogram (the paper's metric).
public final class MSEObserver: HistogramObserver {
    public override var calibrator: Calibrator { .mse }
    public override init(scheme: QuantScheme) { super.init(scheme: scheme) }
    override func threshold() -> Float { histogram.mseThreshold(scheme: scheme) }
}

/// TensorRT's entropy calibration (see `AbsHistogram.entropyThreshold`).
public final class EntropyObserver: HistogramObserver {
    public override var calibrator: Calibrator { .entropy }
    public override init(scheme: QuantScheme) { super.init(scheme: scheme) }
    override func threshold() -> Float { histogram.entropyThreshold(quantizedBins: Int(scheme.qmax) + 1) }
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
                let q = min(roundHalfEven(x / s), qmax) * s
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
