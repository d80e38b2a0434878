import Foundation
import QARep
import Testing

// Every differentiable op's backward pass against central finite differences
// of a random projection loss `sum(out * r)` (see Support/GradientCheck.swift).
// Ops run in float, the projection is summed in double; h = 1e-2 and a 1e-2
// relative tolerance leave room for float rounding while any wrong term,
// missing factor or transposed index shows up as an error of order 1.

/// Checks every input's gradient and that the check is not vacuous (the
/// output really depends on each input).
private func expectGradients(_ inputs: [(name: String, tensor: Tensor)], h: Float = 1e-2, tolerance: Float = 1e-2,
                             sourceLocation: SourceLocation = #_sourceLocation, _ f: () -> Tensor) {
    for c in compareGradients(inputs, h: h, f) {
        #expect(maxAbs(c.numeric) > 1e-3, "\(c.name): output does not depend on it, the check is vacuous",
                sourceLocation: sourceLocation)
        #expect(c.error < tolerance, "\(c)", sourceLocation: sourceLocation)
    }
}

// MARK: - Convolution

struct ConvGradientCase: Sendable, CustomTestStringConvertible {
    var batch: Int, inChannels: Int, outChannels: Int, height: Int, width: Int
    var kernel: Int, stride: Int, padding: Int, bias: Bool

    var testDescription: String {
        "\(kernel)x\(kernel) s\(stride) p\(padding) \(inChannels)->\(outChannels) \(batch)x\(height)x\(width)\(bias ? " +bias" : "")"
    }
}

private let convGradientCases: [ConvGradientCase] = [
    // 1x1, stride 1, no padding: the pointwise path without a patch matrix.
    .init(batch: 2, inChannels: 3, outChannels: 4, height: 5, width: 7, kernel: 1, stride: 1, padding: 0, bias: true),
    .init(batch: 2, inChannels: 3, outChannels: 2, height: 5, width: 7, kernel: 1, stride: 1, padding: 0, bias: false),
    .init(batch: 2, inChannels: 3, outChannels: 4, height: 5, width: 7, kernel: 1, stride: 2, padding: 0, bias: true),
    .init(batch: 1, inChannels: 2, outChannels: 3, height: 4, width: 5, kernel: 1, stride: 1, padding: 1, bias: false),
    .init(batch: 1, inChannels: 2, outChannels: 2, height: 2, width: 3, kernel: 1, stride: 1, padding: 2, bias: true),
    .init(batch: 2, inChannels: 3, outChannels: 4, height: 5, width: 7, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(batch: 2, inChannels: 4, outChannels: 2, height: 5, width: 7, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(batch: 2, inChannels: 2, outChannels: 3, height: 5, width: 6, kernel: 3, stride: 1, padding: 0, bias: true),
    .init(batch: 1, inChannels: 3, outChannels: 2, height: 7, width: 5, kernel: 3, stride: 2, padding: 0, bias: false),
    .init(batch: 1, inChannels: 3, outChannels: 3, height: 4, width: 4, kernel: 3, stride: 1, padding: 1, bias: true),
    // Maps small enough that conv2d runs class by class, skipping the border's taps.
    .init(batch: 2, inChannels: 3, outChannels: 4, height: 2, width: 2, kernel: 3, stride: 1, padding: 1, bias: true),
    .init(batch: 2, inChannels: 4, outChannels: 3, height: 2, width: 3, kernel: 3, stride: 2, padding: 1, bias: false),
    .init(batch: 1, inChannels: 2, outChannels: 3, height: 1, width: 1, kernel: 3, stride: 1, padding: 1, bias: false),
    .init(batch: 2, inChannels: 3, outChannels: 2, height: 3, width: 3, kernel: 3, stride: 1, padding: 1, bias: true),
]

@Suite("Gradients: finite differences")
struct GradientTests {
    @Test("conv2d: input, weight and bias", arguments: convGradientCases)
    func conv2dGradients(_ c: ConvGradientCase) {
        let x = randomTensor([c.batch, c.inChannels, c.height, c.width], seed: 1)
        let w = randomTensor([c.outChannels, c.inChannels, c.kernel, c.kernel], seed: 2)
        let b = c.bias ? randomTensor([c.outChannels], seed: 3) : nil
        var inputs = [(name: "x", tensor: x), (name: "weight", tensor: w)]
        if let b { inputs.append((name: "bias", tensor: b)) }
        expectGradients(inputs) { conv2d(x, weight: w, bias: b, stride: c.stride, padding: c.padding) }
    }

    // MARK: - Batch normalization

    @Test("batchNorm, training mode, NCHW: input, weight, bias")
    func batchNormTraining4D() {
        let x = randomTensor([3, 2, 2, 3], seed: 4)
        let weight = randomTensor([2], seed: 5, in: 0.5 ... 1.5)
        let bias = randomTensor([2], seed: 6)
        let rm = Tensor(repeating: 0, shape: [2]), rv = Tensor(repeating: 1, shape: [2])
        expectGradients([("x", x), ("weight", weight), ("bias", bias)]) {
            batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: true)
        }
    }

    @Test("batchNorm, training mode, [N, C]: input, weight, bias")
    func batchNormTraining2D() {
        let x = randomTensor([5, 3], seed: 7)
        let weight = randomTensor([3], seed: 8, in: 0.5 ... 1.5)
        let bias = randomTensor([3], seed: 9)
        let rm = Tensor(repeating: 0, shape: [3]), rv = Tensor(repeating: 1, shape: [3])
        expectGradients([("x", x), ("weight", weight), ("bias", bias)]) {
            batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: true)
        }
    }

    @Test("batchNorm, eval mode: input, weight, bias (running statistics are constants)")
    func batchNormEval() {
        let x = randomTensor([2, 3, 2, 2], seed: 10)
        let weight = randomTensor([3], seed: 11, in: 0.5 ... 1.5)
        let bias = randomTensor([3], seed: 12)
        let rm = randomTensor([3], seed: 13, requiresGrad: false)
        let rv = randomTensor([3], seed: 14, in: 0.5 ... 2, requiresGrad: false)
        expectGradients([("x", x), ("weight", weight), ("bias", bias)]) {
            batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: false)
        }
    }

    // MARK: - Elementwise

    @Test("relu (inputs kept away from the kink)")
    func reluGradient() {
        let x = randomTensorAwayFromZero([3, 4], seed: 15)
        expectGradients([("x", x)]) { x.relu() }
        // Both sides of the kink are present, so the check covers the zero branch.
        #expect(x.data.contains { $0 < 0 } && x.data.contains { $0 > 0 })
    }

    enum BinaryOp: String, CaseIterable, Sendable {
        case add = "+", subtract = "-", multiply = "*", divide = "/"

        func callAsFunction(_ a: Tensor, _ b: Tensor) -> Tensor {
            switch self {
            case .add: a + b
            case .subtract: a - b
            case .multiply: a * b
            case .divide: a / b
            }
        }
    }

    @Test("binary op, same shapes", arguments: BinaryOp.allCases)
    func binarySameShape(_ op: BinaryOp) {
        let a = randomTensorAwayFromZero([2, 3], seed: 16, magnitude: 0.5 ... 1.5)
        let b = randomTensorAwayFromZero([2, 3], seed: 17, magnitude: 0.5 ... 1.5)
        expectGradients([("a", a), ("b", b)]) { op(a, b) }
    }

    @Test("binary op, tensor with a one-element tensor on the right", arguments: BinaryOp.allCases)
    func binaryScalarRight(_ op: BinaryOp) {
        let a = randomTensorAwayFromZero([2, 3], seed: 18, magnitude: 0.5 ... 1.5)
        let s = Tensor([0.75], shape: [1], requiresGrad: true)
        expectGradients([("a", a), ("scalar", s)]) { op(a, s) }
        #expect(op(a, s).shape == [2, 3])
    }

    @Test("binary op, rank-0 scalar on the left", arguments: BinaryOp.allCases)
    func binaryScalarLeft(_ op: BinaryOp) {
        let a = randomTensorAwayFromZero([3, 2], seed: 19, magnitude: 0.5 ... 1.5)
        let s = Tensor([-1.25], shape: [], requiresGrad: true)
        expectGradients([("scalar", s), ("a", a)]) { op(s, a) }
        #expect(op(s, a).shape == [3, 2])
    }

    @Test("constant scalar ops: a*s, s*a, a+s, a/s, -a")
    func constantScalarOps() {
        let a = randomTensor([2, 3], seed: 20)
        expectGradients([("a", a)]) { a * 2.5 }
        expectGradients([("a", a)]) { -1.5 * a }
        expectGradients([("a", a)]) { a + 3 }
        expectGradients([("a", a)]) { a / 4 }
        expectGradients([("a", a)]) { -a }
    }

    @Test("squared and pow")
    func squaredAndPow() {
        let a = randomTensor([2, 3], seed: 21)
        expectGradients([("a", a)]) { a.squared() }
        expectGradients([("a", a)]) { a.pow(3) }
        let positive = randomTensor([2, 3], seed: 22, in: 0.5 ... 2)
        expectGradients([("a", positive)]) { positive.pow(0.5) }
        expectGradients([("a", positive)]) { positive.pow(-1.5) }
    }

    // MARK: - Reductions and shape

    @Test("sum and mean")
    func sumAndMean() {
        let a = randomTensor([3, 4], seed: 23)
        expectGradients([("a", a)]) { a.sum() }
        expectGradients([("a", a)]) { a.mean() }
        // Through a nonlinearity, so the gradient is not constant.
        expectGradients([("a", a)]) { a.squared().mean() }
        #expect(a.sum().shape == [] && a.mean().shape == [])
    }

    @Test("reshaped, with an inferred dimension")
    func reshapedGradient() {
        let a = randomTensor([2, 3, 4], seed: 24)
        let b = randomTensor([4, 6], seed: 25)
        // Multiplying by b after the reshape makes the gradient depend on the element order.
        expectGradients([("a", a), ("b", b)]) { a.reshaped([4, -1]) * b }
        #expect(a.reshaped([4, -1]).shape == [4, 6])
    }

    @Test("kernelCenter", arguments: [[3, 2, 3, 3], [2, 3, 5, 3], [2, 2, 1, 1]])
    func kernelCenterGradient(_ shape: [Int]) {
        let w = randomTensor(shape, seed: 26)
        let y = randomTensor([shape[0], shape[1]], seed: 27)
        expectGradients([("w", w)]) { w.kernelCenter() * y }
        let grad = compareGradients([("w", w)]) { w.kernelCenter() }[0].analytic
        // Only the centre taps get a gradient.
        let area = shape[2] * shape[3], center = (shape[2] / 2) * shape[3] + shape[3] / 2
        for (i, g) in grad.enumerated() where i % area != center { #expect(g == 0) }
    }

    @Test("globalAveragePool")
    func globalAveragePoolGradient() {
        let x = randomTensor([2, 3, 4, 5], seed: 28)
        expectGradients([("x", x)]) { globalAveragePool(x) }
        expectGradients([("x", x)]) { globalAveragePool(x.squared()) }
    }

    @Test("maxPool2d, with and without padding and overlap", arguments: [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
    func maxPoolGradient(_ shape: (kernel: Int, stride: Int, padding: Int)) {
        // Values 0.05 apart: no window changes its winner within the finite-difference step.
        var rng = SplitMix64(seed: 41)
        var values = (0..<180).map { (i: Int) -> Float in Float(i) * 0.05 - 4 }
        for i in stride(from: values.count - 1, to: 0, by: -1) { values.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let x = Tensor(values, shape: [2, 3, 6, 5], requiresGrad: true)
        expectGradients([("x", x)]) { maxPool2d(x, kernel: shape.kernel, stride: shape.stride, padding: shape.padding) }
    }

    @Test("concatenateChannels")
    func concatenateGradient() {
        let a = randomTensor([2, 3, 4, 5], seed: 42, requiresGrad: true)
        let b = randomTensor([2, 1, 4, 5], seed: 43, requiresGrad: true)
        expectGradients([("a", a), ("b", b)]) { concatenateChannels([a, b.squared()]) }
    }

    // MARK: - Linear and loss

    @Test("linear with bias")
    func linearWithBias() {
        let x = randomTensor([4, 5], seed: 29)
        let w = randomTensor([3, 5], seed: 30)
        let b = randomTensor([3], seed: 31)
        expectGradients([("x", x), ("weight", w), ("bias", b)]) { linear(x, weight: w, bias: b) }
    }

    @Test("linear without bias")
    func linearWithoutBias() {
        let x = randomTensor([3, 2], seed: 32)
        let w = randomTensor([4, 2], seed: 33)
        expectGradients([("x", x), ("weight", w)]) { linear(x, weight: w, bias: nil) }
    }

    @Test("crossEntropy", arguments: [Float(0), 0.1, 0.3])
    func crossEntropyGradient(_ smoothing: Float) {
        let logits = randomTensor([4, 5], seed: 34, in: -2 ... 2)
        let labels: [Int32] = [0, 3, 4, 1]
        expectGradients([("logits", logits)]) { crossEntropy(logits, labels: labels, labelSmoothing: smoothing) }
    }

    @Test("crossEntropy value: PyTorch's formula with label smoothing")
    func crossEntropyValue() {
        let logits = randomTensor([3, 4], seed: 35, in: -3 ... 3, requiresGrad: false)
        let labels: [Int32] = [2, 0, 3]
        for eps in [0.0, 0.2] {
            // loss = mean_n sum_k -((1-eps)*[k==y] + eps/K) * log_softmax(z_n)_k
            var expected = 0.0
            for n in 0 ..< 3 {
                let z = (0 ..< 4).map { Double(logits.data[n * 4 + $0]) }
                let logZ = log(z.map { exp($0) }.reduce(0, +))
                for k in 0 ..< 4 {
                    let target = (k == Int(labels[n]) ? 1 - eps : 0) + eps / 4
                    expected -= target * (z[k] - logZ)
                }
            }
            expected /= 3
            let got = crossEntropy(logits, labels: labels, labelSmoothing: Float(eps)).item
            #expect(abs(Double(got) - expected) < 1e-5 * max(1, abs(expected)), "eps \(eps): \(got) vs \(expected)")
        }
    }

    @Test("a small network end to end: conv, BN, ReLU, pool, linear, cross-entropy")
    func networkEndToEnd() {
        let x = randomTensor([2, 2, 5, 5], seed: 36)
        let w1 = randomTensor([3, 2, 3, 3], seed: 37)
        let gamma = randomTensor([3], seed: 38, in: 0.5 ... 1.5)
        let beta = randomTensor([3], seed: 39)
        let w2 = randomTensor([4, 3], seed: 40)
        let b2 = randomTensor([4], seed: 41)
        let rm = Tensor(repeating: 0, shape: [3]), rv = Tensor(repeating: 1, shape: [3])
        let f = {
            let h = batchNorm(conv2d(x, weight: w1, stride: 2, padding: 1), weight: gamma, bias: beta,
                              runningMean: rm, runningVar: rv, training: true).relu()
            return crossEntropy(linear(globalAveragePool(h), weight: w2, bias: b2), labels: [1, 3])
        }
        // The pre-ReLU values must stay clear of the kink by more than h.
        let pre = noGrad {
            batchNorm(conv2d(x, weight: w1, stride: 2, padding: 1), weight: gamma, bias: beta,
                      runningMean: rm, runningVar: rv, training: true)
        }
        let h: Float = 1e-3
        #expect(pre.data.allSatisfy { abs($0) > 20 * h }, "pick another seed: a pre-activation sits on the ReLU kink")
        expectGradients([("x", x), ("conv", w1), ("gamma", gamma), ("beta", beta), ("fc", w2), ("fc bias", b2)],
                        h: h, tolerance: 2e-2, f)
    }

    @Test("the checker itself flags a wrong gradient")
    func checkerCatchesErrors() {
        // A copy cut from the graph hides one of the two paths of x * x: the
        // analytic gradient is x where the true one is 2x.
        let x = randomTensorAwayFromZero([4], seed: 51)
        let c = compareGradients([("x", x)]) { Tensor(x.data, shape: [4]) * x }[0]
        #expect(c.error > 0.4, "\(c)")
        #expect(maxRelativeError(c.analytic.map { 2 * $0 }, c.numeric, floor: 1e-3) < 1e-2)
    }

    // MARK: - Graph mechanics

    @Test("a tensor used twice in one graph gets both contributions")
    func reuseInGraph() throws {
        let x = randomTensor([5], seed: 42)
        (x * x + x).sum().backward()
        let grad = try #require(x.grad)
        for i in 0 ..< 5 { #expect(abs(grad[i] - (2 * x.data[i] + 1)) < 1e-6) }
    }

    @Test("gradients accumulate over backward passes until zeroGrad")
    func accumulation() throws {
        let x = randomTensor([2, 3], seed: 43)
        let w = randomTensor([4, 3], seed: 44)
        let loss = { crossEntropy(linear(x, weight: w, bias: nil), labels: [1, 2]) }
        loss().backward()
        let g1 = try #require(w.grad), gx1 = try #require(x.grad)
        loss().backward()
        let g2 = try #require(w.grad), gx2 = try #require(x.grad)
        // The second pass adds the same contribution again: twice the first.
        #expect(maxRelativeError(g2, g1.map { 2 * $0 }, floor: 1e-3) < 1e-6)
        #expect(maxRelativeError(gx2, gx1.map { 2 * $0 }, floor: 1e-3) < 1e-6)
        #expect(maxAbs(g1) > 1e-3)

        // Two different losses add up.
        w.zeroGrad()
        #expect(w.grad == nil)
        (w.squared().sum()).backward()
        let gSquare = try #require(w.grad)
        loss().backward()
        let gBoth = try #require(w.grad)
        for i in 0 ..< gBoth.count { #expect(abs(gBoth[i] - (gSquare[i] + g1[i])) < 1e-6) }
    }

    @Test("backward frees the graph and leaves leaves' gradients only")
    func backwardFreesGraph() {
        let x = randomTensor([3], seed: 45)
        let y = x.squared()
        let loss = y.sum()
        #expect(!y.isLeaf && y.requiresGrad)
        loss.backward()
        #expect(x.grad != nil)
        #expect(y.isLeaf, "intermediate keeps its backward closure after backward()")
        #expect(y.grad == nil, "intermediate keeps a gradient after backward()")
    }

    @Test("noGrad records no graph")
    func noGradRecordsNothing() {
        let x = randomTensor([2, 3], seed: 46)
        let w = randomTensor([4, 3], seed: 47)
        #expect(GradMode.isEnabled)
        let y = noGrad { () -> Tensor in
            #expect(!GradMode.isEnabled)
            // Nested noGrad leaves recording off when it returns.
            _ = noGrad { x.squared() }
            #expect(!GradMode.isEnabled)
            return linear(x, weight: w, bias: nil).relu().sum()
        }
        #expect(!y.requiresGrad)
        #expect(y.isLeaf)
        #expect(GradMode.isEnabled)
        // Recording is back on afterwards.
        let z = (x * 2).sum()
        #expect(z.requiresGrad && !z.isLeaf)
    }

    @Test("operations on tensors that need no gradient record no graph")
    func constantsRecordNothing() {
        let a = randomTensor([2, 2], seed: 48, requiresGrad: false)
        let b = randomTensor([2, 2], seed: 49, requiresGrad: false)
        let y = (a * b + a).squared().sum()
        #expect(!y.requiresGrad && y.isLeaf)
        // Only the side that requires a gradient gets one.
        let p = randomTensor([2, 2], seed: 50)
        (p * a).sum().backward()
        #expect(p.grad != nil)
        #expect(a.grad == nil)
    }
}
