import QARep
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
