import QARep
import QARepKernels
import Testing

@Suite("Fake quantization")
struct FakeQuantizeTests {
    @Test("forward rounds half to even and clamps to the integer range")
    func forward() {
        let x = Tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1000, -1000, 0.26], shape: [8])
        let y = fakeQuantize(x, scales: [1], zeroPoints: [0], qmin: -128, qmax: 127)
        #expect(y.data == [0, 2, 2, -0, -2, 127, -128, 0])
        let u = fakeQuantize(Tensor([-1, 0, 0.3, 10], shape: [4]), scales: [0.1], zeroPoints: [10], qmin: 0, qmax: 255)
        // q = round(x/0.1) + 10, clamped to [0, 255], back to (q - 10) * 0.1.
        #expect(u.data.map { ($0 * 10).rounded() } == [-10, 0, 3, 100])
    }

    @Test("every int8 code survives quantize-dequantize exactly")
    func everyCode() {
        let s: Float = 0.0371
        let codes = (-128...127).map { Float($0) * s }
        let y = fakeQuantize(Tensor(codes, shape: [256]), scales: [s], zeroPoints: [0], qmin: -128, qmax: 127)
        #expect(y.data == codes)
    }

    @Test("straight-through estimator: gradient 1 inside the clipping range, 0 outside")
    func ste() {
        let x = Tensor([-200, -128.4, -127.6, 0, 3.3, 127.4, 127.6, 300], shape: [8], requiresGrad: true)
        let y = fakeQuantize(x, scales: [1], zeroPoints: [0], qmin: -128, qmax: 127)
        y.backward(gradient: [Float](repeating: 2, count: 8))
        // round(-128.4) = -128 is inside; round(127.6) = 128 is outside.
        #expect(x.grad == [0, 2, 2, 2, 2, 2, 0, 0])
    }

    @Test("per-channel: each output channel uses its own scale")
    func perChannel() {
        let w = Tensor([1, 2, 1, 2], shape: [2, 2])
        let y = fakeQuantize(w, scales: [1, 0.3], zeroPoints: [0, 0], qmin: -127, qmax: 127)
        #expect(y.data[0] == 1 && y.data[1] == 2)
        #expect(abs(y.data[2] - 0.9) < 1e-6 && abs(y.data[3] - 2.1) < 1e-6)
    }

    @Test("scaleChannels and channelAffine gradients match finite differences")
    func helperGradients() {
        let w = randomTensor([3, 2, 3, 3], seed: 1)
        let s = randomTensor([3], seed: 2, in: 0.5 ... 1.5)
        for c in compareGradients([("w", w), ("s", s)], { scaleChannels(w, by: s) }) { #expect(c.error < 2e-2, "\(c)") }
        let x = randomTensor([2, 3, 4, 4], seed: 3)
        let a = randomTensor([3], seed: 4, in: 0.5 ... 1.5), b = randomTensor([3], seed: 5)
        for c in compareGradients([("x", x), ("a", a), ("b", b)], { channelAffine(x, scale: a, shift: b) }) { #expect(c.error < 2e-2, "\(c)") }
    }

    @Test("switches: observe only, fake-quantize only, and evaluation never moves activation ranges")
    func switches() {
        let fq = FakeQuantize(scheme: .int8Activations, calibrator: .minmax)
        let x = Tensor([0.1, -2, 3.3], shape: [3])
        #expect(fq(x).data == x.data, "observing alone leaves values alone")
        #expect(fq.scales == [3.3 / 127])
        fq.fakeQuantEnabled = true
        fq.eval()
        _ = fq(Tensor([100], shape: [1]))
        #expect(fq.scales == [3.3 / 127], "evaluation with fake quantization on does not observe")
        fq.train()
        _ = fq(Tensor([100], shape: [1]))
        #expect(fq.scales == [100 / 127], "training observes")
    }
}

@Suite("Fake quantization kernel against its scalar definition")
struct FakeQuantizeKernelTests {
    @Test("every path gives the reference's bits and mask: ties, clips, NaN, infinities, huge values, odd lengths")
    func matchesReference() {
        var rng = SplitMix64(seed: 21)
        let scale: Float = 0.1
        // Ties after the division (0.05 / 0.1, 0.15 / 0.1), both clip edges, and values a clip decides.
        var x: [Float] = [0, 0.05, 0.15, -0.25, 12.7, 12.8, -13.0, 25.5, 25.6, -12.8, -12.9, 1e30, -1e30,
                          .infinity, -.infinity, .nan, 16_777_216, -16_777_218, 1.0e-30, -0.0]
        x += (0..<1000).map { _ in Float(Int(rng.next() % 60_000)) / 1000 - 30 }
        for (qmin, qmax, zeroPoint) in [(Int32(-128), Int32(127), Int32(0)), (0, 255, 37), (-8, 7, -3), (0, 3, 1)] {
            let expected = x.map { fakeQuantizeReference($0, scale: scale, zeroPoint: zeroPoint, qmin: qmin, qmax: qmax) }
            for path in FloatKernelPath.available {
                // Every length up to 40 from every start up to 3 covers the vector bodies and tails.
                for (start, count) in [(0, x.count), (3, x.count - 3), (1, 17), (2, 40), (0, 7)] {
                    var y = [Float](repeating: -1, count: count)
                    var mask = [Bool](repeating: false, count: count)
                    x.withUnsafeBufferPointer { xp in
                        fakeQuantizeValues(xp.baseAddress! + start, count: count, scale: scale, zeroPoint: zeroPoint,
                                           qmin: qmin, qmax: qmax, output: &y, inRange: &mask, path: path)
                    }
                    let reference = expected[start..<(start + count)]
                    #expect(zip(y, reference).allSatisfy { $0.bitPattern == $1.value.bitPattern || ($0.isNaN && $1.value.isNaN) },
                            "\(path) [\(qmin), \(qmax)] z \(zeroPoint) from \(start)")
                    #expect(mask == reference.map(\.inRange), "\(path) [\(qmin), \(qmax)] z \(zeroPoint) mask")
                    // Without a mask, the same values.
                    var unmasked = [Float](repeating: -1, count: count)
                    x.withUnsafeBufferPointer { xp in
                        fakeQuantizeValues(xp.baseAddress! + start, count: count, scale: scale, zeroPoint: zeroPoint,
                                           qmin: qmin, qmax: qmax, output: &unmasked, inRange: nil, path: path)
                    }
                    #expect(unmasked.map(\.bitPattern) == y.map(\.bitPattern))
                }
            }
        }
    }
}
