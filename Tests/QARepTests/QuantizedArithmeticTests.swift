import QARepKernels
import Testing

// Rounding, quantize, requantize and saturate of the INT8 scheme, exhaustively
// where the domain is small, against references that use no floating-point
// rounding of their own (integer arithmetic and floor).

/// Integer model of `requantize`: the product `acc * multiplier` is formed
/// exactly (a 24-bit significand times a 31-bit integer fits 55 bits), rounded
/// to 53 significant bits as the Double product is, then to an integer, both
/// ties to even; zero point and clamp in Int64.
func referenceRequantize(_ acc: Int32, multiplier m: Float, zeroPoint: Int32, min: Int32, max: Int32) -> Int32 {
    let bits = m.bitPattern
    let exponentBits = Int((bits >> 23) & 0xFF), fraction = UInt64(bits & 0x7F_FFFF)
    let significand = exponentBits == 0 ? fraction : fraction | (1 << 23)
    var exponent = exponentBits == 0 ? -149 : exponentBits - 150  // m = significand * 2^exponent
    var a = UInt64(acc.magnitude) * significand
    var magnitude: Int64 = 0
    if a != 0 {
        let width = 64 - a.leadingZeroBitCount
        if width > 53 {
            a = shiftRightRoundingHalfEven(a, by: width - 53)
            exponent += width - 53
        }
        if exponent >= 0 {
            magnitude = (64 - a.leadingZeroBitCount) + exponent > 62 ? Int64.max / 4 : Int64(a << UInt64(exponent))
        } else {
            magnitude = Int64(shiftRightRoundingHalfEven(a, by: -exponent))
        }
    }
    let negative = (acc < 0) != (m.sign == .minus)
    let value = (negative ? -magnitude : magnitude) + Int64(zeroPoint)
    return Int32(Swift.min(Swift.max(value, Int64(min)), Int64(max)))
}

/// `a / 2^s` rounded to the nearest integer, ties to even.
func shiftRightRoundingHalfEven(_ a: UInt64, by s: Int) -> UInt64 {
    if s == 0 { return a }
    if s >= 64 { return 0 }  // a < 2^63 <= 2^(s-1): below one half
    let q = a >> UInt64(s), r = a & ((1 << UInt64(s)) - 1), half = UInt64(1) << UInt64(s - 1)
    return r > half || (r == half && q & 1 == 1) ? q + 1 : q
}

/// Round half to even from `floor` and an exact comparison with one half.
func referenceRoundHalfEven(_ x: Double) -> Double {
    let f = x.rounded(.down), d = x - f  // exact for |x| < 2^52
    if d > 0.5 { return f + 1 }
    if d < 0.5 { return f }
    return f.truncatingRemainder(dividingBy: 2) == 0 ? f : f + 1
}

/// Collects mismatches and reports the first ones with their inputs.
struct Mismatches {
    var count = 0
    var first: [String] = []
    mutating func check(_ ok: Bool, _ describe: @autoclosure () -> String) {
        if ok { return }
        count += 1
        if first.count < 8 { first.append(describe()) }
    }
    var report: Comment { "\(count) mismatches; first: \(first.joined(separator: "; "))" }
}

@Suite("Quantized arithmetic: rounding, quantize, requantize, saturate")
struct QuantizedArithmeticTests {
    @Test("roundHalfEven: the documented table, ties go to the even neighbour")
    func roundingTable() {
        let table: [(Float, Float)] = [(-2.5, -2), (-1.5, -2), (-0.5, -0), (0.5, 0), (1.5, 2), (2.5, 2),
                                       (2.6, 3), (-2.6, -3), (0, 0), (3.5, 4), (-3.5, -4), (127.5, 128), (126.5, 126)]
        for (x, want) in table {
            #expect(roundHalfEven(x) == want, "roundHalfEven(\(x))")
            #expect(roundHalfEven(Double(x)) == Double(want), "roundHalfEven(Double(\(x)))")
        }
        #expect(roundHalfEven(Float(-0.5)).sign == .minus, "-0.5 rounds to -0")
        #expect(roundHalfEven(Float(0x1p23) + 1) == Float(0x1p23) + 1, "integers above 2^23 are fixed points")
        #expect(roundHalfEven(Float.infinity) == .infinity)
    }

    @Test("roundHalfEven: every tie k + 0.5 and both neighbours, |k| <= 2^20, against floor")
    func roundingTies() {
        var bad = Mismatches()
        for k in -(1 << 20)...(1 << 20) {
            let tie = Float(k) + 0.5
            for x in [tie, tie.nextUp, tie.nextDown] {
                let want = referenceRoundHalfEven(Double(x))
                bad.check(roundHalfEven(x) == Float(want), "x=\(x) got \(roundHalfEven(x)) want \(want)")
                bad.check(roundHalfEven(Double(x)) == want, "Double x=\(x)")
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("saturate clamps at both ends, and QuantRange's helpers")
    func saturation() {
        for r in [QuantRange.int8Narrow, .int8, .uint8] {
            #expect(saturate(Int64.min, min: r.min, max: r.max) == r.min)
            #expect(saturate(Int64.max, min: r.min, max: r.max) == r.max)
            #expect(r.clamp(Int64(r.min) - 1) == r.min && r.clamp(Int64(r.min)) == r.min)
            #expect(r.clamp(Int64(r.max) + 1) == r.max && r.clamp(Int64(r.max)) == r.max)
            for v in Int64(r.min)...Int64(r.max) { #expect(r.clamp(v) == Int32(v)) }
        }
        #expect(QuantRange.int8Narrow.count == 255 && QuantRange.int8.count == 256 && QuantRange.uint8.count == 256)
        #expect(QuantRange.int8.reluMin(zeroPoint: 0) == 0 && QuantRange.uint8.reluMin(zeroPoint: 37) == 37)
        #expect(!QuantRange.int8Narrow.contains(-128) && QuantRange.int8.contains(-128))
        #expect(Int8.codeRange == .int8 && UInt8.codeRange == .uint8)
    }

    @Test("quantize: the documented table (scale 0.1, int8) and saturation of infinities")
    func quantizeTable() {
        let table: [(Float, Int32)] = [(0.05, 0), (0.15, 2), (-0.25, -2), (12.7, 127), (12.8, 127), (-13, -128), (1e30, 127)]
        for (x, want) in table {
            #expect(quantize(x, scale: 0.1, zeroPoint: 0, range: .int8) == want, "x=\(x) x/scale=\(x / 0.1)")
        }
        #expect(quantize(.infinity, scale: 0.1, zeroPoint: 0, range: .int8) == 127)
        #expect(quantize(-.infinity, scale: 0.1, zeroPoint: 0, range: .int8) == -128)
        #expect(quantize(-.greatestFiniteMagnitude, scale: 1e-30, zeroPoint: 3, range: .uint8) == 0)
        #expect(quantize(-0.0, scale: 0.1, zeroPoint: 128, range: .uint8) == 128)
        #expect(quantize(-0.3, scale: 1, zeroPoint: 0, range: .int8Narrow) == 0)
        #expect(quantize(-200, scale: 1, zeroPoint: 0, range: .int8Narrow) == -127)
    }

    @Test("quantize(dequantize(q)) == q for every code of every scheme")
    func quantizeRoundTrip() {
        var bad = Mismatches()
        let scales: [Float] = [1, 0.1, 1.0 / 127, 0.0123, 3.7, 1e-4, 2.5e-6, 0x1p-7]
        let schemes: [(QuantRange, Int32)] = [(.int8, 0), (.int8Narrow, 0), (.uint8, 0), (.uint8, 1), (.uint8, 128), (.uint8, 255)]
        for s in scales {
            for (r, z) in schemes {
                for q in r.min...r.max {
                    let x = dequantize(q, scale: s, zeroPoint: z)
                    let back = quantize(x, scale: s, zeroPoint: z, range: r)
                    bad.check(back == q, "q=\(q) scale=\(s) zp=\(z) x=\(x) back=\(back)")
                }
            }
        }
        #expect(bad.count == 0, bad.report)
        #expect(dequantize(-128, scale: 0.5, zeroPoint: 0) == -64 && dequantize(255, scale: 0.5, zeroPoint: 255) == 0)
    }

    @Test("quantize equals floor-based rounding + clamp over a sweep of floats and every tie")
    func quantizeAgainstReference() {
        var bad = Mismatches()
        func expectMatch(_ x: Float, _ s: Float, _ z: Int32, _ r: QuantRange) {
            let v = Double(x / s)
            let want = Int32(Swift.min(Swift.max(referenceRoundHalfEven(v) + Double(z), Double(r.min)), Double(r.max)))
            let got = quantize(x, scale: s, zeroPoint: z, range: r)
            bad.check(got == want, "x=\(x) scale=\(s) zp=\(z) range=\(r) got \(got) want \(want)")
        }
        // Every Float bit pattern in (-512, 512) with a stride, both signs.
        var bits: UInt32 = 0
        while Float(bitPattern: bits) < 512 {
            let x = Float(bitPattern: bits)
            for (s, z, r) in [(Float(1), Int32(0), QuantRange.int8), (1, 128, .uint8), (0.1, 0, .int8Narrow)] {
                expectMatch(x, s, z, r)
                expectMatch(-x, s, z, r)
            }
            bits &+= 4093
        }
        for k in -600...600 {
            let tie = Float(k) + 0.5
            for x in [tie, tie.nextUp, tie.nextDown] {
                expectMatch(x, 1, 0, .int8)
                expectMatch(x, 1, 200, .uint8)
                expectMatch(x * 0.25, 0.25, 7, .uint8)
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("requantize: the documented table")
    func requantizeTable() {
        let table: [(Int32, Int32)] = [(1, 0), (3, 2), (5, 2), (-1, 0), (-3, -2), (7, 4), (300, 127), (-300, -128)]
        for (acc, want) in table {
            #expect(requantize(acc, multiplier: 0.5, zeroPoint: 0, min: -128, max: 127) == want, "acc=\(acc)")
        }
        // ReLU is the lower bound at the zero point.
        #expect(requantize(-1000, multiplier: 0.01, zeroPoint: 20, min: 20, max: 255) == 20)
        #expect(requantize(Int32.min, multiplier: 1, zeroPoint: 0, min: Int32.min, max: Int32.max) == Int32.min)
        #expect(requantize(Int32.max, multiplier: 1, zeroPoint: 0, min: Int32.min, max: Int32.max) == Int32.max)
        #expect(requantize(Int32.max, multiplier: 65504, zeroPoint: 5, min: Int32.min, max: Int32.max) == Int32.max)
    }

    /// Accumulators: every one in [-65,536, 65,536] (where real layers live),
    /// every 16,411th over the whole Int32 range, and the edges.
    static let sweepAccumulators: [Int32] = {
        var accs = Array(Int32(-65536)...Int32(65536))
        accs += stride(from: Int64(Int32.min), through: Int64(Int32.max), by: 16411).map { Int32($0) }
        for e in 0..<31 {
            let p = Int64(1) << Int64(e)
            for v in [p - 1, p, p + 1, -p - 1, -p, -p + 1] where v >= Int64(Int32.min) && v <= Int64(Int32.max) {
                accs.append(Int32(v))
            }
        }
        accs += [Int32.min, Int32.min + 1, Int32.max - 1, Int32.max]
        return accs
    }()

    static let sweepMultipliers: [Float] = [1, 0.5, 0.25, 1.0 / 3, 0.0123, 0x1p-20, 1.5e-7, 0.99999994, 3.7,
                                            .leastNonzeroMagnitude, 65504, 2.5e-10, 0.001953125, 7.62939453e-06, -0.37]

    /// (zero point, min, max) of an int8 output, a ReLU, uint8 outputs and the whole Int32 range.
    static let sweepRanges: [(Int32, Int32, Int32)] = [(0, -128, 127), (0, 0, 127), (0, -127, 127), (0, 0, 255),
                                                       (128, 0, 255), (255, 0, 255), (37, 37, 255), (-5, -128, 127),
                                                       (0, Int32.min, Int32.max)]

    @Test("requantize equals the integer model for a sweep of accumulators, multipliers and ranges")
    func requantizeSweep() {
        var bad = Mismatches()
        for m in Self.sweepMultipliers {
            for (z, lo, hi) in Self.sweepRanges {
                for acc in Self.sweepAccumulators {
                    let got = requantize(acc, multiplier: m, zeroPoint: z, min: lo, max: hi)
                    let want = referenceRequantize(acc, multiplier: m, zeroPoint: z, min: lo, max: hi)
                    bad.check(got == want, "acc=\(acc) M=\(m) zp=\(z) [\(lo), \(hi)] got \(got) want \(want)")
                }
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("requantize ties: odd multiples of one half go to the even neighbour")
    func requantizeTies() {
        var bad = Mismatches()
        for shift in 1...20 {
            let m = Float(sign: .plus, exponent: -shift, significand: 1)  // 2^-shift
            let half = Int64(1) << Int64(shift - 1)
            for k in Int64(-200)...200 {
                let acc = Int32((2 * k + 1) * half)  // acc * m = k + 0.5
                let want = Int32(k & 1 == 0 ? k : k + 1)
                let got = requantize(acc, multiplier: m, zeroPoint: 0, min: Int32.min, max: Int32.max)
                bad.check(got == want, "acc=\(acc) M=2^-\(shift) got \(got) want \(want)")
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("batched requantize (C, every kernel path, with bias) equals the integer model",
          arguments: integerKernelPaths)
    func batchedRequantize(path: IntegerKernelPath) {
        var bad = Mismatches()
        let accs = Self.sweepAccumulators
        var signedOut = [Int8](repeating: 0, count: accs.count), unsignedOut = [UInt8](repeating: 0, count: accs.count)
        for m in Self.sweepMultipliers {
            for (z, lo, hi) in Self.sweepRanges {
                for bias: Int32 in [0, -12345, 2_000_000_000] {
                    if Int8.codeRange.contains(z) && Int8.codeRange.contains(lo) && Int8.codeRange.contains(hi) {
                        requantize(accs, count: accs.count, bias: bias, multiplier: m, zeroPoint: z, min: lo, max: hi,
                                   output: &signedOut, path: path)
                        for (i, acc) in accs.enumerated() {
                            let want = referenceRequantize(acc &+ bias, multiplier: m, zeroPoint: z, min: lo, max: hi)
                            bad.check(Int32(signedOut[i]) == want,
                                      "int8 acc=\(acc) bias=\(bias) M=\(m) zp=\(z) [\(lo), \(hi)] got \(signedOut[i]) want \(want)")
                        }
                    }
                    if UInt8.codeRange.contains(z) && UInt8.codeRange.contains(lo) && UInt8.codeRange.contains(hi) {
                        requantize(accs, count: accs.count, bias: bias, multiplier: m, zeroPoint: z, min: lo, max: hi,
                                   output: &unsignedOut, path: path)
                        for (i, acc) in accs.enumerated() {
                            let want = referenceRequantize(acc &+ bias, multiplier: m, zeroPoint: z, min: lo, max: hi)
                            bad.check(Int32(unsignedOut[i]) == want,
                                      "uint8 acc=\(acc) bias=\(bias) M=\(m) zp=\(z) [\(lo), \(hi)] got \(unsignedOut[i]) want \(want)")
                        }
                    }
                }
            }
        }
        #expect(bad.count == 0, bad.report)
    }

    @Test("the integer model itself: hand-computed products that need more than 53 bits")
    func referenceModel() {
        // 0.99999994 = (2^24 - 1) * 2^-24; times 2^31 - 1 the exact product
        // 2147483519.00000006... needs 55 bits, and it rounds to 2147483519.
        #expect(referenceRequantize(Int32.max, multiplier: 0.99999994, zeroPoint: 0, min: Int32.min, max: Int32.max)
                == 2_147_483_519)
        #expect(referenceRequantize(3, multiplier: 0.5, zeroPoint: 0, min: -128, max: 127) == 2)
        #expect(referenceRequantize(-5, multiplier: 0.5, zeroPoint: 1, min: -128, max: 127) == -1)
        #expect(referenceRequantize(1, multiplier: .leastNonzeroMagnitude, zeroPoint: 0, min: -128, max: 127) == 0)
        #expect(shiftRightRoundingHalfEven(0b1011, by: 1) == 0b110 && shiftRightRoundingHalfEven(0b1001, by: 1) == 0b100)
    }
}

/// The kernel paths this CPU runs.
let integerKernelPaths: [IntegerKernelPath] = IntegerKernelPath.available
