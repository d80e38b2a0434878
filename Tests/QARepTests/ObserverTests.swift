import Foundation
import QARep
import Testing

/// Gaussian-ish data with a few outliers, fixed by the seed.
func sampleActivations(_ count: Int, seed: UInt64, outliers: Int = 5) -> [Float] {
    var rng = SplitMix64(seed: seed)
    var v = (0..<count).map { _ in
        // Sum of 4 uniforms: bell-shaped on [-2, 2].
        (0..<4).reduce(Float(0)) { acc, _ in acc + rng.uniformFloat() - 0.5 }
    }
    for i in 0..<outliers { v[i * 7] = 6 + Float(i) }
    return v
}

/// Quantization mean squared error of symmetric clipping at `t`, computed on the raw data.
func clippingMSE(_ x: [Float], threshold t: Float, qmax: Float) -> Double {
    let s = t / qmax
    return x.reduce(0.0) { acc, v in
        let q = min(max((v / s).rounded(.toNearestOrEven), -qmax - 1), qmax) * s
        return acc + Double((v - q) * (v - q))
    } / Double(x.count)
}

@Suite("Quantization schemes and observers")
struct ObserverTests {
    @Test("integer ranges of every scheme and bit width")
    func ranges() {
        #expect(QuantScheme.int8Weights.qmin == -127 && QuantScheme.int8Weights.qmax == 127)
        #expect(QuantScheme.int8Activations.qmin == -128 && QuantScheme.int8Activations.qmax == 127)
        #expect(QuantScheme.uint8Activations.qmin == 0 && QuantScheme.uint8Activations.qmax == 255)
        for bits in 2...8 {
            let s = QuantScheme(bits: bits)
            #expect(s.qmin == -(1 << (bits - 1)) && s.qmax == (1 << (bits - 1)) - 1)
            #expect(throws: Never.self) { try s.validate() }
        }
        #expect(throws: QuantizationError.self) { try QuantScheme(bits: 9).validate() }
        #expect(throws: QuantizationError.self) { try QuantScheme(bits: 1).validate() }
    }

    @Test("scale and zero point formulas, symmetric and asymmetric")
    func qparams() {
        let sym = QuantScheme.int8Activations.qparams(lo: -2, hi: 1.27)
        #expect(sym.scale == 2 / 127 && sym.zeroPoint == 0)
        let asym = QuantScheme.uint8Activations.qparams(lo: -1, hi: 3)
        #expect(abs(asym.scale - 4 / 255) < 1e-9)
        #expect(asym.zeroPoint == Int32((1 / (4 / Float(255))).rounded(.toNearestOrEven)))  // 64
        // A range that excludes zero is widened to include it, so 0 is exact.
        let pos = QuantScheme.uint8Activations.qparams(lo: 1, hi: 2)
        #expect(pos.zeroPoint == 0 && abs(pos.scale - 2 / 255) < 1e-9)
        // Zero range: a tiny positive scale, never 0.
        #expect(QuantScheme.int8Activations.qparams(lo: 0, hi: 0).scale > 0)
    }

    @Test("min-max equals the extremes; moving average follows PyTorch's rule")
    func minMax() {
        let x = sampleActivations(1000, seed: 1)
        let o = MinMaxObserver(scheme: .int8Activations)
        o.observe(Array(x[..<500])); o.observe(Array(x[500...]))
        #expect(o.range().lo == x.min()! && o.range().hi == x.max()!)

        let m = MovingAverageMinMaxObserver(scheme: .int8Activations, averagingConstant: 0.1)
        m.observe([-1, 2]); m.observe([-3, 4])
        // First batch sets the range; then r += 0.1 * (batch - r).
        #expect(abs(m.minValue - (-1 + 0.1 * (-3 + 1))) < 1e-6)
        #expect(abs(m.maxValue - (2 + 0.1 * (4 - 2))) < 1e-6)
    }

    @Test("percentile threshold matches the sorted data within one bin")
    func percentile() {
        let x = sampleActivations(20_000, seed: 2)
        for p in [99.0, 99.9, 99.99] {
            let o = PercentileObserver(scheme: .int8Activations, percentile: p)
            // Two batches, the second with a larger maximum, to exercise range growth.
            o.observe(Array(x[1000...])); o.observe(Array(x[..<1000]))
            let sorted = x.map(abs).sorted()
            let reference = sorted[min(Int((Double(sorted.count) * p / 100).rounded(.up)) - 1, sorted.count - 1)]
            let bin = 2 * sorted.last! / 2048  // the histogram's bin width after at most one doubling
            #expect(abs(o.range().hi - reference) <= bin, "p=\(p): \(o.range().hi) vs \(reference)")
        }
    }

    @Test("MSE threshold is as good as a brute-force search on the raw data")
    func mse() {
        let x = sampleActivations(8000, seed: 3)
        let o = MSEObserver(scheme: .int8Activations)
        o.observe(x)
        let t = o.range().hi
        let amax = x.map(abs).max()!
        var best = (err: Double.infinity, t: amax)
        for i in 1...400 {
            let c = amax * Float(i) / 400
            let e = clippingMSE(x, threshold: c, qmax: 127)
            if e < best.err { best = (e, c) }
        }
        let chosen = clippingMSE(x, threshold: t, qmax: 127)
        // The histogram works on bin centres, so allow a few percent over the exact optimum.
        #expect(chosen <= best.err * 1.05, "mse threshold \(t) gives \(chosen), brute force \(best.t) gives \(best.err)")
        #expect(t < amax, "with outliers, clipping below the maximum is better")
    }

    @Test("entropy threshold minimizes KL against a direct brute-force computation")
    func entropy() {
        let x = sampleActivations(20_000, seed: 4).map { abs($0) }
        let o = EntropyObserver(scheme: .int8Activations)
        o.observe(x)
        let t = o.range().hi
        // Brute force: rebuild the 2048-bin histogram and evaluate KL at every cut with a plain
        // implementation of TensorRT's definition: P = first `cut` bins plus the outliers in the
        // last; Q = the first `cut` bins WITHOUT outliers merged into 128 levels and spread back.
        let amax = x.max()!, bins = 2048
        var hist = [Double](repeating: 0, count: bins)
        for v in x { hist[min(Int(v / amax * Float(bins)), bins - 1)] += 1 }
        hist[0] = hist[1]  // NVIDIA's treatment of the zero bin
        func kl(_ cut: Int) -> Double {
            var p = Array(hist[0..<cut]); p[cut - 1] += hist[cut...].reduce(0, +)
            var q = [Double](repeating: 0, count: cut)
            for l in 0..<128 {
                let a = l * cut / 128, b = (l + 1) * cut / 128
                let nz = (a..<b).filter { hist[$0] > 0 }
                let total = nz.reduce(0.0) { $0 + hist[$1] }
                for j in nz { q[j] = total / Double(nz.count) }
            }
            let ps = p.reduce(0, +), qs = q.reduce(0, +)
            var d = 0.0
            for j in 0..<cut where p[j] > 0 { d += (p[j] / ps) * log((p[j] / ps) / max(q[j] / qs, 1e-12)) }
            return d
        }
        var best = (kl: Double.infinity, cut: bins)
        for cut in stride(from: 128, through: bins, by: 1) { let k = kl(cut); if k < best.kl { best = (k, cut) } }
        let reference = Float(best.cut) * amax / Float(bins)
        #expect(abs(t - reference) <= amax / Float(bins) * 1.01, "entropy threshold \(t), brute force \(reference)")
    }

    @Test("per-channel fake quantizer keeps one scale per output channel")
    func perChannel() {
        let fq = FakeQuantize(scheme: .int8Weights, calibrator: .minmax, channels: 3, tracksCurrentValues: true)
        fq.observe([1, -2, 0.5, 0.1, 4, -8])  // channels of 2 values each
        let expected: [Float] = [2, 0.5, 8].map { $0 / 127 }
        #expect(fq.scales == expected)
        #expect(fq.zeroPoints == [0, 0, 0])
    }

    @Test("observer state round-trips (for QAT checkpoints)", arguments: Calibrator.allDefaults)
    func stateRoundTrip(_ calibrator: Calibrator) throws {
        let a = calibrator.makeObserver(scheme: .int8Activations)
        a.observe(sampleActivations(3000, seed: 5))
        let b = calibrator.makeObserver(scheme: .int8Activations)
        #expect(b.calibrator == calibrator)
        try b.restore(a.state)
        #expect(a.range() == b.range())
        #expect(throws: QuantizationError.self) { try b.restore([1, 2, 3]) }
    }

    @Test("a calibrator's settings reach its observer: percentile 90 clips below 99.99")
    func percentileSetting() throws {
        let x = sampleActivations(20_000, seed: 6)
        let fq90 = FakeQuantize(scheme: .int8Activations, calibrator: .percentile(90))
        let fq9999 = FakeQuantize(scheme: .int8Activations, calibrator: .percentile(99.99))
        fq90.observe(x); fq9999.observe(x)
        #expect(fq90.scales[0] < fq9999.scales[0] * 0.8, "90th percentile \(fq90.scales[0]) vs 99.99th \(fq9999.scales[0])")
        #expect(fq90.calibrator == .percentile(90))
        #expect(throws: QuantizationError.self) { try Calibrator.percentile(0).validate() }
        #expect(throws: QuantizationError.self) { try QConfig.tensorRT.with(calibrator: .percentile(101)).validate() }
    }

    @Test("calibrators encode their settings and read the bare names older files hold", arguments: Calibrator.allDefaults + [.percentile(90), .movingAverage(averagingConstant: 0.1)])
    func calibratorCoding(_ calibrator: Calibrator) throws {
        let data = try JSONEncoder().encode(QConfig.tensorRT.with(calibrator: calibrator))
        #expect(try JSONDecoder().decode(QConfig.self, from: data).calibrator == calibrator)
        let legacy = try JSONDecoder().decode(Calibrator.self, from: Data("\"\(calibrator.method.rawValue)\"".utf8))
        #expect(legacy == Calibrator(calibrator.method))
        // A qconfig without a calibrator (written before it had one) means min-max.
        let old = #"{"weight":{"bits":8,"signed":true,"symmetric":true,"narrowRange":true,"perChannel":true},"activation":{"bits":8,"signed":true,"symmetric":true,"narrowRange":false,"perChannel":false}}"#
        #expect(try JSONDecoder().decode(QConfig.self, from: Data(old.utf8)) == .tensorRT)
    }

    @Test("scale and zero point are computed when read, after any number of observations")
    func qparamsOnDemand() {
        let fq = FakeQuantize(scheme: .int8Activations, calibrator: .mse)
        let x = sampleActivations(4000, seed: 7)
        for k in 0..<4 { fq.observe(Array(x[(k * 1000)..<((k + 1) * 1000)])) }
        let direct = MSEObserver(scheme: .int8Activations)
        direct.observe(x)
        #expect(fq.scales == [direct.qparams().scale])
        // The state dict (what checkpoints save) is current too.
        fq.observe(x.map { $0 * 3 })
        let saved = fq.stateDict().first { $0.key == "scale" }!.tensor.data
        #expect(saved == fq.scales)
    }
}
