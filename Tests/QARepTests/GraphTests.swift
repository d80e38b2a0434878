import Foundation
import QARep
import QARepKernels
import Testing

// Graph capture, prepare (fusion and fake quantizers), convert and the graph
// integer engine, on ResNet-20, RepVGG and a model with every supported op.

/// A small network with every operation graph capture supports: conv-BN-ReLU,
/// max pooling, a QARepVGG block, a residual add, a 1x1 branch concatenated
/// to the trunk, a deployed RepVGG block, global average pooling, flatten and
/// a linear layer.
final class EveryOpNet: Module, Layer {
    let stem: Conv2d
    let bn: BatchNorm2d
    let block: RepVGGBlock
    let branch: Conv2d
    let deployed: ReparamBlock
    let fc: Linear

    init(seed: UInt64 = 0) {
        var rng = SplitMix64(seed: seed)
        stem = Conv2d(1, 8, kernelSize: 3, stride: 1, padding: 1, bias: false, rng: &rng)
        bn = BatchNorm2d(8)
        block = RepVGGBlock(kind: .qarepvgg, inChannels: 8, outChannels: 8, stride: 1, rng: &rng)
        branch = Conv2d(8, 4, kernelSize: 1, stride: 1, padding: 0, bias: true, rng: &rng)
        deployed = ReparamBlock(conv: Conv2d(12, 12, kernelSize: 3, stride: 2, padding: 1, bias: true, rng: &rng))
        fc = Linear(12, 10, rng: &rng)
    }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let trunk = maxPool2d(bn(stem(x)).relu(), kernel: 2, stride: 2)
        let residual = (block(trunk) + trunk).relu()
        let joined = concatenateChannels([residual, branch(residual)])
        return fc(globalAveragePool(deployed(joined)).reshaped([x.shape[0], -1]))
    }
}

/// A model whose forward multiplies by a constant: not representable.
final class ScaledNet: Module, Layer {
    let conv: Conv2d
    override init() {
        var rng = SplitMix64(seed: 1)
        conv = Conv2d(1, 2, kernelSize: 3, stride: 1, padding: 1, bias: true, rng: &rng)
    }
    func callAsFunction(_ x: Tensor) -> Tensor { globalAveragePool(conv(x) * 2) }
}

/// Runs `model` in training mode (no gradients) so its BN running statistics follow the data.
func settleBatchNorms(_ model: some Layer, on data: FashionMNIST) {
    model.train()
    noGrad {
        for start in stride(from: 0, to: data.count, by: 64) {
            let batch = data.subset(start..<min(start + 64, data.count))
            _ = model(images(batch))
        }
    }
    model.eval()
}

func images(_ d: FashionMNIST) -> Tensor {
    Tensor(d.images.enumerated().map { d.normalize($1, channel: 0) }, shape: [d.count, 1, d.height, d.width])
}

private func kinds(_ g: Graph) -> [String: Int] {
    g.nodes.reduce(into: [:]) { $0[$1.op.kind, default: 0] += 1 }
}

@Suite("Graph capture, prepare, convert and the graph integer engine")
struct GraphTests {
    @Test("ResNet-20 captures as 21 convolutions, 21 batch norms, 9 residual adds; the graph replays it bit for bit")
    func captureResNet() throws {
        let model = try ResNet(depth: 20, inChannels: 1, classes: 10, seed: 3)
        randomizeBatchNorms(model, seed: 4)
        let x = randomTensor([3, 1, 28, 28], seed: 5, requiresGrad: false)
        let graph = try Graph.capture(model, example: x)
        let k = kinds(graph)
        #expect(k["conv"] == 21 && k["batch_norm"] == 21 && k["add"] == 9 && k["relu"] == 19, "\(k)")
        #expect(k["global_average_pool"] == 1 && k["linear"] == 1 && k["input"] == 1)
        #expect(graph.nodes.contains { $0.name == "layer2.0.downsample.0" }, "module nodes are named by their state-dict path")
        model.eval()
        #expect(noGrad { graph(x).data } == noGrad { model(x).data })
        #expect(model.training == false)
    }

    @Test("every supported operation is captured, named and replayed exactly")
    func captureEveryOp() throws {
        let model = EveryOpNet()
        randomizeBatchNorms(model, seed: 6)
        let x = randomTensor([2, 1, 12, 12], seed: 7, requiresGrad: false)
        let graph = try Graph.capture(model, example: x)
        #expect(graph.nodes.map(\.op.kind) == ["input", "conv", "batch_norm", "relu", "max_pool", "repvgg_block", "add", "relu",
                                              "conv", "concat", "reparam_block", "global_average_pool", "flatten", "linear"],
                "\(graph.description)")
        #expect(graph.nodes.map(\.name).contains("block") && graph.nodes.map(\.name).contains("add_1"))
        // A fused batch-norm-ReLU is captured as two nodes with the same values.
        model.eval()
        #expect(noGrad { graph(x).data } == noGrad { model(x).data })
    }

    @Test("an unsupported operation is named in the error, never left out")
    func unsupportedOperation() throws {
        let x = randomTensor([1, 1, 8, 8], seed: 8, requiresGrad: false)
        #expect {
            _ = try Graph.capture(ScaledNet(), example: x)
        } throws: { error in
            "\(error)".contains("*(_:_:)") && "\(error)".contains("conv")
        }
    }

    @Test("with fake quantization off, the fused model equals the float model to 1e-5", arguments: [QuantizedGraph.Mode.ptq, .qat])
    func fusionPreservesValues(_ mode: QuantizedGraph.Mode) throws {
        for model in [try ResNet(depth: 20, seed: 9) as any Layer, EveryOpNet(seed: 10)] {
            randomizeBatchNorms(model, seed: 11)
            let x = randomTensor([2, 1, 16, 16], seed: 12, requiresGrad: false)
            let prepared = try QuantizedGraph(model, example: x, mode: mode)
            prepared.setQuantization(observe: false, fakeQuantize: false)
            prepared.eval(); model.eval()
            let want = noGrad { model(x).data }, got = noGrad { prepared(x).data }
            #expect(maxRelativeError(got, want, floor: 1e-3) < 1e-5, "\(type(of: model))")
        }
    }

    @Test("one quantizer per tensor: a residual input read by a convolution and an add is quantized once")
    func sharedQuantizers() throws {
        let model = try ResNet(depth: 20, seed: 13)
        let prepared = try QuantizedGraph(model, example: randomTensor([1, 1, 8, 8], seed: 14, requiresGrad: false), mode: .ptq)
        // Input, 19 fused conv-BN(-ReLU), 2 downsample convs, 9 adds, the pool; the logits stay float.
        #expect(prepared.fakeQuantizers.count - 22 == 1 + 21 + 9 + 1, "\(prepared.fakeQuantizers.count)")
        let keys = prepared.stateDict().map(\.key)
        #expect(keys.contains("layer1.0.conv1.conv.weight") && keys.contains("layer1.0.conv1.weight_fake_quant.scale"))
        #expect(keys.contains("add_9.output_fake_quant.scale") && keys.contains("input.output_fake_quant.scale"))
        #expect(!keys.contains { $0.contains("bn1") }, "PTQ folds every batch norm: \(keys.filter { $0.contains("bn") })")
    }

    @Test("prepare, calibrate, convert: the graph engine agrees with the simulation on ResNet-20 and every op")
    func engineAgrees() throws {
        let data = syntheticBands(count: 192, seed: 15)
        for (i, model) in [try ResNet(depth: 20, seed: 16) as any Layer, EveryOpNet(seed: 17)].enumerated() {
            settleBatchNorms(model, on: data)
            let x = images(data.subset(0..<1))
            for qconfig in [QConfig.tensorRT, .unsignedActivations] {
                let prepared = try QuantizedGraph(model, example: x, qconfig: QConfigMapping(qconfig), mode: .ptq)
                try prepared.calibrate(on: data.subset(0..<128))
                prepared.eval()
                let engine = try Int8GraphEngine(prepared.convertToInt8())
                let test = images(data.subset(128..<192))
                let simulated = noGrad { prepared(test) }, integer = engine(test)
                #expect(simulated.argmaxRows() == integer.argmaxRows(), "model \(i) \(qconfig.activation)")
                // Logits within a few output steps of each other.
                let scale = maxAbs(simulated.data)
                #expect(zip(simulated.data, integer.data).allSatisfy { abs($0 - $1) <= 0.05 * scale }, "model \(i)")
            }
        }
    }

    @Test("partial quantization: a layer set to nil runs in float in the simulation and the engine")
    func partialQuantization() throws {
        let data = syntheticBands(count: 160, seed: 18)
        let model = EveryOpNet(seed: 19)
        settleBatchNorms(model, on: data)
        let mapping = QConfigMapping().setting("fc", to: nil).setting("branch", to: nil)
        let prepared = try QuantizedGraph(model, example: images(data.subset(0..<1)), qconfig: mapping, mode: .ptq)
        try prepared.calibrate(on: data.subset(0..<128))
        prepared.eval()
        let int8 = try prepared.convertToInt8()
        let floatNodes = int8.nodes.filter { if case .float = $0.op { true } else { false } }.map(\.name)
        #expect(floatNodes == ["branch", "fc"])
        // The float branch's output is quantized for the concatenation; the float classifier's logits are not.
        #expect(int8.nodes.first { $0.name == "branch" }?.outputParams != nil)
        #expect(int8.nodes.first { $0.name == "fc" }?.outputParams == nil)
        let test = images(data.subset(128..<160))
        let simulated = noGrad { prepared(test) }, integer = try Int8GraphEngine(int8)(test)
        #expect(simulated.argmaxRows() == integer.argmaxRows())
        #expect(throws: GraphError.self) { try QuantizedGraph(model, example: test, qconfig: QConfigMapping().setting("fcc", to: nil), mode: .ptq) }
    }

    @Test("RepVGG through the graph gives QuantizedNet's simulated logits bit for bit, PTQ and QAT forms")
    func repVGGIsOneClient() throws {
        let data = syntheticBands(count: 160, seed: 20)
        let model = try RepVGGNet(config: ModelConfig(widths: [8, 8, 16, 16, 16], blocks: [1, 1, 2, 1, 1], block: .qarepvgg), seed: 21)
        randomizeBatchNorms(model, seed: 22)
        let calibration = data.subset(0..<128), test = images(data.subset(128..<160))
        for (mode, form) in [(QuantizedGraph.Mode.ptq, QuantizedNet.Form.folded), (.qat, .postBN)] {
            let net = try QuantizedNet(from: model, form: form)
            try net.calibrate(on: calibration)
            net.eval()
            let graph = try QuantizedGraph(model, example: test, mode: mode)
            try graph.calibrate(on: calibration)
            graph.eval()
            #expect(noGrad { graph(test).data } == noGrad { net(test).data }, "\(mode)")
        }
    }

    @Test("QAT on the prepared graph: loss falls and the converted engine follows the simulation")
    func qatOnGraph() throws {
        let data = syntheticBands(count: 256, seed: 23)
        let model = try ResNet(depth: 8, seed: 24)
        settleBatchNorms(model, on: data)
        let prepared = try QuantizedGraph(model, example: images(data.subset(0..<1)), mode: .qat)
        try prepared.calibrate(on: data.subset(0..<64))
        prepared.trackActivationRanges()
        let trainer = Trainer(model: prepared, optimizer: SGD(groups: ParameterGroup.standard(prepared, weightDecay: 0), learningRate: 0.05,
                                                              momentum: 0.9),
                              config: TrainingConfig(epochs: 2, batchSize: 32, schedule: .constant(0.05), seed: 2),
                              progress: ProgressReporter(enabled: false))
        let first = try trainer.trainEpoch(on: data), second = try trainer.trainEpoch(on: data)
        #expect(second.trainLoss < first.trainLoss, "\(first.trainLoss) -> \(second.trainLoss)")
        prepared.eval()
        let test = images(data.subset(0..<64))
        let integer = try Int8GraphEngine(prepared.convertToInt8())(test)
        let agree = zip(noGrad { prepared(test) }.argmaxRows(), integer.argmaxRows()).filter { $0 == $1 }.count
        #expect(agree >= 62, "\(agree) of 64")
    }
}
