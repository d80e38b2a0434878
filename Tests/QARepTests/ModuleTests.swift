import QARep
import Testing

// Module reflection: state-dict names (the checkpoint contract, PyTorch's
// state_dict names), parameters versus buffers, recursive train/eval, and the
// standard weight-decay split.

@Suite("Modules: state dicts, parameters, modes")
struct ModuleTests {
    @Test("BatchNorm2d state dict: weight, bias, running_mean, running_var")
    func batchNormKeys() {
        let bn = BatchNorm2d(4)
        #expect(bn.stateDict().map(\.key) == ["weight", "bias", "running_mean", "running_var"])
        #expect(bn.stateDict().allSatisfy { $0.tensor.shape == [4] })
        // Running statistics are buffers, not parameters.
        #expect(bn.parameters().map(\.key) == ["weight", "bias"])
        #expect(!bn.runningMean.requiresGrad && !bn.runningVar.requiresGrad)
        // PyTorch's defaults.
        #expect(bn.weight.data == [1, 1, 1, 1] && bn.bias.data == [0, 0, 0, 0])
        #expect(bn.runningMean.data == [0, 0, 0, 0] && bn.runningVar.data == [1, 1, 1, 1])
        #expect(bn.momentum == 0.1 && bn.eps == 1e-5)
    }

    @Test("Conv2d and Linear: keys, optional bias, PyTorch's init bound")
    func convAndLinearKeys() {
        var rng = SplitMix64(seed: 1)
        let conv = Conv2d(3, 5, kernelSize: 3, padding: 1, rng: &rng)
        #expect(conv.stateDict().map(\.key) == ["weight", "bias"])
        #expect(conv.weight.shape == [5, 3, 3, 3])
        let bound = 1 / Float(27).squareRoot()
        #expect(conv.weight.data.allSatisfy { abs($0) <= bound })
        #expect(maxAbs(conv.weight.data) > bound / 2)
        let noBias = Conv2d(3, 5, kernelSize: 1, bias: false, rng: &rng)
        #expect(noBias.stateDict().map(\.key) == ["weight"])

        let fc = Linear(6, 2, rng: &rng)
        #expect(fc.stateDict().map(\.key) == ["weight", "bias"])
        #expect(fc.weight.shape == [2, 6] && fc.bias?.shape == [2])
        #expect(Linear(6, 2, bias: false, rng: &rng).stateDict().map(\.key) == ["weight"])
    }

    @Test("Sequential names children 0, 1, ... and skips modules without state")
    func sequentialKeys() {
        var rng = SplitMix64(seed: 2)
        let seq = Sequential([Conv2d(1, 2, kernelSize: 3, bias: false, rng: &rng), BatchNorm2d(2), ReLU(),
                              GlobalAveragePool(), Linear(2, 3, rng: &rng)])
        #expect(seq.stateDict().map(\.key) == [
            "0.weight",
            "1.weight", "1.bias", "1.running_mean", "1.running_var",
            "4.weight", "4.bias",
        ])
        #expect(seq.parameters().map(\.key) == ["0.weight", "1.weight", "1.bias", "4.weight", "4.bias"])
        #expect(seq.namedChildren().map(\.name) == ["0", "1", "2", "3", "4"])
        #expect(seq.namedModules().map(\.path) == ["", "0", "1", "2", "3", "4"])
        // Nesting adds a prefix per level.
        let outer = Sequential([seq])
        #expect(outer.stateDict().first?.key == "0.0.weight")
        #expect(outer.stateDict().last?.key == "0.4.bias")
    }

    @Test("state dict entries are the live tensors, not copies")
    func stateDictIdentity() throws {
        var rng = SplitMix64(seed: 3)
        let seq = Sequential([Conv2d(1, 2, kernelSize: 1, rng: &rng), BatchNorm2d(2)])
        let entry = try #require(seq.stateDict().first { $0.key == "1.running_var" })
        let bn = try #require(seq.layers[1] as? BatchNorm2d)
        #expect(entry.tensor === bn.runningVar)
        entry.tensor.assign([5, 6])
        #expect(bn.runningVar.data == [5, 6])
    }

    @Test("PlainConvNet state dict, shapes and output")
    func plainConvNetKeys() {
        let model = PlainConvNet(widths: [16, 32, 64], blocks: [1, 1, 1], seed: 0)
        let bnKeys = { (i: Int) in ["weight", "bias", "running_mean", "running_var"].map { "\(i).\($0)" } }
        let expected = ["0.weight"] + bnKeys(1) + ["3.weight"] + bnKeys(4) + ["6.weight"] + bnKeys(7)
            + ["linear.weight", "linear.bias"]
        let state = model.stateDict()
        #expect(state.map(\.key) == expected)
        let shapes = Dictionary(uniqueKeysWithValues: state.map { ($0.key, $0.tensor.shape) })
        #expect(shapes["0.weight"] == [16, 1, 3, 3])
        #expect(shapes["3.weight"] == [32, 16, 3, 3])
        #expect(shapes["6.weight"] == [64, 32, 3, 3])
        #expect(shapes["7.running_var"] == [64])
        #expect(shapes["linear.weight"] == [10, 64] && shapes["linear.bias"] == [10])
        #expect(model.parameters().count == 3 + 3 * 2 + 2)
        #expect(!model.parameters().contains { $0.key.hasSuffix("running_mean") || $0.key.hasSuffix("running_var") })

        // The same seed builds the same weights; another seed does not.
        let same = PlainConvNet(widths: [16, 32, 64], blocks: [1, 1, 1], seed: 0)
        let other = PlainConvNet(widths: [16, 32, 64], blocks: [1, 1, 1], seed: 1)
        #expect(zip(state, same.stateDict()).allSatisfy { $0.tensor.data == $1.tensor.data })
        #expect(state[0].tensor.data != other.stateDict()[0].tensor.data)

        // 28x28 in, 10 logits out (a training-mode forward also moves the running statistics).
        let y = noGrad { model(randomTensor([2, 1, 28, 28], seed: 4, requiresGrad: false)) }
        #expect(y.shape == [2, 10])
        #expect(y.data.allSatisfy { $0.isFinite })
        #expect(model.stateDict()[3].tensor.data != same.stateDict()[3].tensor.data, "running_mean did not move")
    }

    @Test("train() and eval() reach every descendant")
    func modesAreRecursive() {
        let model = Sequential([PlainConvNet(widths: [4, 8], blocks: [2, 1], seed: 0), ReLU()])
        let all = model.namedModules()
        #expect(all.count == 1 + 1 + (3 * 3 + 1 + 1) + 1) // outer, net, 3 conv-bn-relu units + pool + linear, relu
        #expect(all.allSatisfy { $0.module.training })
        model.eval()
        #expect(all.allSatisfy { !$0.module.training }, "still training: \(all.filter { $0.module.training }.map(\.path))")
        model.train()
        #expect(all.allSatisfy { $0.module.training })
        model.train(false)
        #expect(all.allSatisfy { !$0.module.training })

        // Eval mode changes what batch norm computes, through the whole tree.
        model.train()
        let x = randomTensor([3, 1, 8, 8], seed: 5, requiresGrad: false)
        let trainOut = noGrad { model(x) }
        model.eval()
        let evalOut = noGrad { model(x) }
        let evalAgain = noGrad { model(x) }
        #expect(trainOut.data != evalOut.data)
        #expect(evalOut.data == evalAgain.data, "eval mode must not depend on or change running statistics")
    }

    @Test("zeroGrad clears every parameter's gradient")
    func zeroGrad() {
        let model = PlainConvNet(widths: [4], blocks: [1], seed: 0)
        let x = randomTensor([2, 1, 6, 6], seed: 6, requiresGrad: false)
        crossEntropy(model(x), labels: [1, 2]).backward()
        #expect(model.parameters().allSatisfy { $0.tensor.grad != nil })
        model.zeroGrad()
        #expect(model.stateDict().allSatisfy { $0.tensor.grad == nil })
    }

    @Test("ParameterGroup.standard decays rank >= 2 tensors only, minus exclusions")
    func standardGroups() {
        let model = PlainConvNet(widths: [16, 32, 64], blocks: [1, 1, 1], seed: 0)
        let groups = ParameterGroup.standard(model, weightDecay: 5e-4)
        #expect(groups.count == 2)
        #expect(groups[0].weightDecay == 5e-4 && groups[1].weightDecay == 0)
        #expect(groups[0].parameters.map(\.key) == ["0.weight", "3.weight", "6.weight", "linear.weight"])
        #expect(groups[1].parameters.map(\.key) == ["1.weight", "1.bias", "4.weight", "4.bias", "7.weight", "7.bias", "linear.bias"])
        #expect(groups[0].parameters.allSatisfy { $0.tensor.rank >= 2 })
        #expect(groups[1].parameters.allSatisfy { $0.tensor.rank < 2 })
        // Together they are exactly the parameters, each once.
        let all = groups.flatMap { $0.parameters.map(\.key) }
        #expect(Set(all) == Set(model.parameters().map(\.key)) && all.count == model.parameters().count)

        let excluded = ParameterGroup.standard(model, weightDecay: 1e-4, exclude: ["3.weight"])
        #expect(excluded[0].parameters.map(\.key) == ["0.weight", "6.weight", "linear.weight"])
        #expect(excluded[1].parameters.map(\.key).contains("3.weight"))
    }
}
