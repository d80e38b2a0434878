import QARep
import Testing

// Batch normalization against hand-computed numbers: batch statistics with the
// biased variance in training, PyTorch's running-statistics rule (momentum
// 0.1, unbiased variance stored), running statistics in evaluation.

/// x[N=2, C=2, H=1, W=2]:
///   channel 0: image 0 [1, 2], image 1 [3, 6]
///   channel 1: image 0 [0, 0], image 1 [-2, 2]
private let firstBatch: [Float] = [1, 2, 0, 0, 3, 6, -2, 2]
/// Second batch, same layout:
///   channel 0: [0, 4], [2, -2];  channel 1: [1, 1], [3, -1]
private let secondBatch: [Float] = [0, 4, 1, 1, 2, -2, 3, -1]

/// BatchNorm2d(2) with weight [2, 0.5] and bias [1, -1].
private func makeLayer() -> BatchNorm2d {
    let bn = BatchNorm2d(2)
    bn.weight.assign([2, 0.5])
    bn.bias.assign([1, -1])
    return bn
}

private func expectClose(_ a: [Float], _ b: [Float], tolerance: Float = 1e-5,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.count == b.count, sourceLocation: sourceLocation)
    let close = zip(a, b).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($1)) }
    #expect(close, "\(a) vs \(b)", sourceLocation: sourceLocation)
}

@Suite("BatchNorm: hand-computed statistics")
struct BatchNormTests {
    @Test("training mode normalizes with the batch mean and the biased variance")
    func trainingOutput() {
        // Channel 0: mean (1+2+3+6)/4 = 3; deviations -2, -1, 0, 3; biased var 14/4 = 3.5.
        //   y = (x - 3) / sqrt(3.5 + 1e-5) * 2 + 1, sqrt(3.50001) = 1.8708313
        //   x=1: -2/1.8708313*2+1 = -1.1380869   x=2: -0.0690434   x=3: 1   x=6: 4.2071303
        // Channel 1: mean 0; deviations 0, 0, -2, 2; biased var 8/4 = 2.
        //   y = x / sqrt(2.00001) * 0.5 - 1, sqrt(2.00001) = 1.4142171
        //   x=0: -1   x=-2: -1.7071050   x=2: -0.2928950
        let bn = makeLayer()
        let y = bn(Tensor(firstBatch, shape: [2, 2, 1, 2]))
        #expect(y.shape == [2, 2, 1, 2])
        expectClose(y.data, [-1.1380869, -0.0690434, -1, -1, 1, 4.2071303, -1.7071050, -0.2928950])
    }

    @Test("running statistics follow PyTorch: momentum 0.1, unbiased variance")
    func runningStatistics() {
        let bn = makeLayer()
        #expect(bn.runningMean.data == [0, 0] && bn.runningVar.data == [1, 1])
        _ = bn(Tensor(firstBatch, shape: [2, 2, 1, 2]))
        // running_mean = 0.9 * 0 + 0.1 * [3, 0] = [0.3, 0]
        // running_var  = 0.9 * 1 + 0.1 * unbiased, unbiased = [14/3, 8/3] (M = 4, divide by M - 1)
        //              = [0.9 + 0.4666667, 0.9 + 0.2666667] = [1.3666667, 1.1666667]
        expectClose(bn.runningMean.data, [0.3, 0])
        expectClose(bn.runningVar.data, [1.3666667, 1.1666667])

        _ = bn(Tensor(secondBatch, shape: [2, 2, 1, 2]))
        // Second batch: mean [1, 1]; channel 0 deviations -1, 3, 1, -3 -> sum of squares 20,
        // unbiased 20/3; channel 1 deviations 0, 0, 2, -2 -> 8, unbiased 8/3.
        // running_mean = 0.9 * [0.3, 0] + 0.1 * [1, 1] = [0.37, 0.1]
        // running_var  = 0.9 * [1.3666667, 1.1666667] + 0.1 * [6.6666667, 2.6666667] = [1.8966667, 1.3166667]
        expectClose(bn.runningMean.data, [0.37, 0.1])
        expectClose(bn.runningVar.data, [1.8966667, 1.3166667])
    }

    @Test("eval mode normalizes with the running statistics and leaves them alone")
    func evalMode() {
        let bn = makeLayer()
        _ = bn(Tensor(firstBatch, shape: [2, 2, 1, 2]))
        _ = bn(Tensor(secondBatch, shape: [2, 2, 1, 2]))
        bn.eval()
        #expect(!bn.training)
        let y = bn(Tensor(firstBatch, shape: [2, 2, 1, 2]))
        // y = (x - [0.37, 0.1]) / sqrt([1.8966667, 1.3166667] + 1e-5) * [2, 0.5] + [1, -1]
        //   channel 0, sqrt(1.8966767) = 1.3771989: x=1 -> 0.63/1.3771989*2+1 = 1.9149006, x=2 -> 3.3671237,
        //              x=3 -> 4.8193468, x=6 -> 9.1760161
        //   channel 1, sqrt(1.3166767) = 1.1474653: x=0 -> -0.1/1.1474653*0.5-1 = -1.0435743,
        //              x=-2 -> -1.9150603, x=2 -> -0.1720883
        expectClose(y.data, [1.9149006, 3.3671237, -1.0435743, -1.0435743, 4.8193468, 9.1760161, -1.9150603, -0.1720883])
        expectClose(bn.runningMean.data, [0.37, 0.1])
        expectClose(bn.runningVar.data, [1.8966667, 1.3166667])

        // Each sample is normalized on its own: the second image alone gives the same numbers.
        let single = bn(Tensor(Array(firstBatch[4...]), shape: [1, 2, 1, 2]))
        #expect(single.data == Array(y.data[4...]))

        // Back in training mode the batch statistics return.
        bn.train()
        expectClose(bn(Tensor(firstBatch, shape: [2, 2, 1, 2])).data,
                    [-1.1380869, -0.0690434, -1, -1, 1, 4.2071303, -1.7071050, -0.2928950])
    }

    @Test("[N, C] input and a custom momentum")
    func rank2AndMomentum() {
        // Columns are channels. Channel 0: 1, 3, 5 -> mean 3, biased var 8/3, unbiased 4.
        // Channel 1: 10, 20, 60 -> mean 30, biased var 1400/3, unbiased 700.
        let x = Tensor([1, 10, 3, 20, 5, 60], shape: [3, 2])
        let weight = Tensor(repeating: 1, shape: [2]), bias = Tensor(repeating: 0, shape: [2])
        let rm = Tensor([1, 2], shape: [2]), rv = Tensor([1, 1], shape: [2])
        let y = batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: true, momentum: 0.5)
        // y0 = (x - 3) / sqrt(8/3 + 1e-5): -1.2247426, 0, 1.2247426
        // y1 = (x - 30) / sqrt(1400/3 + 1e-5): -0.9258201, -0.4629100, 1.3887301
        expectClose(y.data, [-1.2247426, -0.9258201, 0, -0.4629100, 1.2247426, 1.3887301])
        // running = 0.5 * old + 0.5 * batch: mean [0.5 + 1.5, 1 + 15], var [0.5 + 2, 0.5 + 350]
        expectClose(rm.data, [2, 16])
        expectClose(rv.data, [2.5, 350.5])
    }

    @Test("training output has zero mean and unit variance per channel before the affine part")
    func standardizes() {
        let x = randomTensor([4, 3, 5, 5], seed: 60, in: -3 ... 7, requiresGrad: false)
        let y = BatchNorm2d(3)(x)
        for c in 0 ..< 3 {
            var values: [Double] = []
            for n in 0 ..< 4 { for i in 0 ..< 25 { values.append(Double(y.data[(n * 3 + c) * 25 + i])) } }
            let mean = values.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            #expect(abs(mean) < 1e-5)
            #expect(abs(variance - 1) < 1e-3) // eps = 1e-5 against a variance of about 8
        }
    }

    @Test("scale is weight / sqrt(running_var + eps)")
    func foldScale() {
        let bn = makeLayer()
        bn.runningVar.assign([3, 0.25])
        expectClose(bn.scale, [2 / (3 + 1e-5 as Float).squareRoot(), 0.5 / (0.25 + 1e-5 as Float).squareRoot()])
    }
}

@Suite("Batch norm fused with ReLU")
struct FusedBatchNormReLUTests {
    /// Output and the gradients of x, weight and bias for the upstream
    /// gradient `g`, fused or as batch norm then ReLU.
    func run(fused: Bool, training: Bool, shape: [Int]) -> [[Float]] {
        let x = randomTensor(shape, seed: 31)
        let weight = randomTensor([shape[1]], seed: 32, in: 0.5 ... 1.5)
        let bias = randomTensor([shape[1]], seed: 33)
        let rm = randomTensor([shape[1]], seed: 34, requiresGrad: false)
        let rv = randomTensor([shape[1]], seed: 35, in: 0.5 ... 2, requiresGrad: false)
        let y = fused
            ? batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: training, relu: true)
            : batchNorm(x, weight: weight, bias: bias, runningMean: rm, runningVar: rv, training: training).relu()
        let out = y.data
        y.backward(gradient: randomFloats(y.count, seed: 36, in: -1 ... 1))
        return [out, x.grad!, weight.grad!, bias.grad!, rm.data, rv.data]
    }

    // Bit for bit: the fused pass computes the same expressions in the same order.
    @Test("the same values, gradients and running statistics as batchNorm then relu, bit for bit",
          arguments: [true, false], [[4, 3, 5, 7], [2, 16, 9, 9], [6, 5]])
    func matchesUnfused(_ training: Bool, _ shape: [Int]) {
        let fused = run(fused: true, training: training, shape: shape)
        let unfused = run(fused: false, training: training, shape: shape)
        #expect(fused == unfused)
        #expect(fused[0].contains(0) && fused[0].contains { $0 > 0 }, "both sides of the ReLU are covered")
    }
}
