import Foundation
import QARep
import QARepKernels
import Testing

// Models outside the RepVGG family through the run API: FP32 training and
// graph QAT with checkpoints and exact resume, and the native INT8 graph file.

private var quiet: ProgressReporter { ProgressReporter(enabled: false) }

/// A ResNet-8 trained for three epochs on synthetic bands (its BN statistics settled), and the data.
private func smallTrainedResNet(seed: UInt64 = 70) throws -> (ResNet, FashionMNIST) {
    let data = syntheticBands(count: 256, seed: seed)
    var settings = TrainingSettings(epochs: 3, batchSize: 32, learningRate: 0.1, warmupEpochs: 0)
    settings.seed = seed
    let run = try ModelTrainingRun<ResNet>(config: ResNetConfig(depth: 8), settings: settings, trainImages: data.count,
                                           directory: nil, progress: quiet)
    try run.run(train: data, test: nil)
    return (run.model, data)
}

private func removing(_ dirs: String...) { for d in dirs { try? FileManager.default.removeItem(atPath: d) } }

private func expectSameState(_ a: Module, _ b: Module, sourceLocation: SourceLocation = #_sourceLocation) {
    let (sa, sb) = (a.stateDict(), b.stateDict())
    #expect(sa.map(\.key) == sb.map(\.key), sourceLocation: sourceLocation)
    for (x, y) in zip(sa, sb) {
        let difference = zip(x.tensor.data, y.tensor.data).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        let same = x.tensor.data == y.tensor.data
        #expect(same, "\(x.key) differs by up to \(difference)", sourceLocation: sourceLocation)
    }
}

@Suite("Runs of any model: ResNet training and graph QAT resume exactly; the INT8 graph file")
struct ModelRunTests {
    @Test("a ResNet's FP32 run resumes bit-identically, at an epoch boundary or mid-epoch", arguments: [false, true])
    func trainingResume(midEpoch: Bool) throws {
        let data = syntheticBands(count: 128, seed: 71)
        var settings = TrainingSettings(epochs: 2, batchSize: 32, learningRate: 0.05, warmupEpochs: 1)
        settings.seed = 72
        let dirA = temporaryDirectory("ra"), dirB = temporaryDirectory("rb")
        defer { removing(dirA, dirB) }
        let config = ResNetConfig(depth: 8)
        let straight = try ModelTrainingRun<ResNet>(config: config, settings: settings, trainImages: data.count, directory: dirA, progress: quiet)
        try straight.run(train: data, test: nil)
        let first = try ModelTrainingRun<ResNet>(config: config, settings: settings, trainImages: data.count, directory: dirB, progress: quiet)
        if midEpoch {
            // 4 steps per epoch: stop after step 6, in the second epoch.
            first.controls.shouldStop = { [unowned first] in first.trainer.step == 6 }
            #expect(throws: RunInterrupted.self) { try first.run(train: data, test: nil) }
        } else {
            try first.run(train: data, test: nil, until: 1)
        }
        let (saved, savedConfig) = try ModelTrainingRun<ResNet>.savedState(in: dirB)
        #expect(savedConfig == config && saved.step == (midEpoch ? 6 : 4))
        let resumed = try ModelTrainingRun<ResNet>.resume(from: dirB, progress: quiet)
        #expect(resumed.trainer.step == (midEpoch ? 6 : 4))
        try resumed.run(train: data, test: nil)
        #expect(resumed.state.epoch == 2 && resumed.state.step == 8)
        expectSameState(straight.model, resumed.model)
        // The checkpoint rebuilds the model it holds, and says what it is.
        let reloaded = try Checkpoint.loadModel(dirB + "/last.safetensors", as: ResNet.self)
        expectSameState(resumed.model, reloaded.model)
        #expect(try Checkpoint.describe(dirB + "/last.safetensors").family == "resnet")
    }

    @Test("a ResNet's graph QAT resumes without recalibrating, bit-identically (distilled or not); the INT8 graph it writes equals the straight run's",
          arguments: [false, true])
    func graphQATResume(distilled: Bool) throws {
        let (fp32, data) = try smallTrainedResNet()
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 1; options.batchSize = 32; options.calibrationImages = 64
        options.freezeBNAfter = 1
        // The resumed run reads its teacher again from fp32File, in evaluation mode.
        options.distillation = distilled ? DistillationSettings(temperature: 2, weight: 0.8) : nil
        let dirA = temporaryDirectory("qa"), dirB = temporaryDirectory("qb")
        defer { removing(dirA, dirB) }
        let fp32File = dirA + "/fp32.safetensors"
        try Checkpoint.save(fp32, to: fp32File)
        func fresh(_ dir: String) throws -> GraphQATRun<ResNet> {
            try GraphQATRun(from: Checkpoint.loadModel(fp32File, as: ResNet.self).model, source: fp32File, options: options,
                            calibration: data.subset(0..<64), trainImages: data.count, directory: dir, progress: quiet)
        }
        let straight = try fresh(dirA)
        try straight.run(train: data, test: nil)
        let first = try fresh(dirB)
        // 8 steps per epoch: stop after step 11, in the second epoch (BN frozen, observers moving).
        first.controls.shouldStop = { [unowned first] in first.trainer.step == 11 }
        #expect(throws: RunInterrupted.self) { try first.run(train: data, test: nil) }
        #expect(!FileManager.default.fileExists(atPath: dirB + "/int8.safetensors"), "no INT8 graph before the last epoch")
        let resumed = try GraphQATRun<ResNet>.resume(from: dirB, progress: quiet)
        #expect(resumed.trainer.step == 11 && resumed.state.inputShape == [1, 28, 28])
        try resumed.run(train: data, test: nil)
        expectSameState(straight.model, resumed.model)

        // The run's INT8 graph: the same in both, and the engine follows the simulation.
        let (ga, gb) = (try Int8Graph.read(from: dirA + "/int8.safetensors"), try Int8Graph.read(from: dirB + "/int8.safetensors"))
        let test = syntheticBands(count: 128, seed: 73)
        let (ea, eb) = (try Int8GraphEngine(ga), try Int8GraphEngine(gb))
        let la = evaluate(on: test, keepLogits: true) { ea($0) }, lb = evaluate(on: test, keepLogits: true) { eb($0) }
        #expect(la.logits! == lb.logits!)
        let simulated = evaluate(try GraphQATRun<ResNet>.loadModel(from: dirB + "/last.safetensors"), on: test)
        let same = zip(simulated.predictions, lb.predictions).filter { $0 == $1 }.count
        #expect(same >= 127, "the engine agrees with the QAT checkpoint's simulation on \(same) of 128")
        // QAT keeps what FP32 training learned (well above chance on these bands, see the command-line test).
        let fp32Top1 = evaluate(fp32, on: test).top1
        #expect(fp32Top1 > 0.2 && lb.top1 >= fp32Top1 - 0.05, "FP32 \(fp32Top1), QAT engine \(lb.top1)")
    }

    @Test("the native INT8 graph file round-trips every operation: the engine's logits are unchanged", arguments: [QConfig.tensorRT, .unsignedActivations])
    func graphFileRoundTrip(_ qconfig: QConfig) throws {
        let data = syntheticBands(count: 96, seed: 74)
        let model = EveryOpNet(seed: 75)
        let example = Tensor([Float](repeating: 0, count: 784), shape: [1, 1, 28, 28])
        let prepared = try QuantizedGraph(model, example: example, qconfig: QConfigMapping(qconfig), mode: .ptq)
        try prepared.calibrate(on: data.subset(0..<64))
        let graph = try prepared.convertToInt8()
        let dir = temporaryDirectory(); defer { removing(dir) }
        try graph.write(to: dir + "/g.safetensors")
        let read = try Int8Graph.read(from: dir + "/g.safetensors")
        #expect(read.nodes.map(\.name) == graph.nodes.map(\.name) && read.activation == graph.activation)
        let test = data.subset(64..<96)
        let (original, reloaded) = (try Int8GraphEngine(graph), try Int8GraphEngine(read))
        let before = evaluate(on: test, keepLogits: true) { original($0) }, after = evaluate(on: test, keepLogits: true) { reloaded($0) }
        #expect(before.logits! == after.logits!)
    }

    @Test("a corrupt INT8 graph file is refused with one error naming the file and the node")
    func corruptGraphFile() throws {
        let data = syntheticBands(count: 64, seed: 76)
        let model = try ResNet(depth: 8, seed: 77)
        let example = Tensor([Float](repeating: 0, count: 784), shape: [1, 1, 28, 28])
        let prepared = try QuantizedGraph(model, example: example, mode: .ptq)
        try prepared.calibrate(on: data)
        let dir = temporaryDirectory(); defer { removing(dir) }
        let good = dir + "/good.safetensors"
        try prepared.convertToInt8().write(to: good)
        let file = try SafeTensorsFile.read(from: good)
        let layout = file.metadata["int8_graph"]!
        /// Writes `good` with its layout JSON edited (first match replaced) and returns the read error.
        func error(layout edit: (String) -> String = { $0 }, tensors: (inout [String: SafeTensor]) -> Void = { _ in }) -> String {
            var f = file
            f.metadata["int8_graph"] = edit(layout)
            tensors(&f.tensors)
            let path = dir + "/bad.safetensors"
            do { try f.write(to: path); _ = try Int8Graph.read(from: path) } catch { return "\(error)" }
            return "no error"
        }
        func replacing(_ a: String, _ b: String) -> (String) -> String {
            { s in
                guard let r = s.range(of: a) else { Issue.record("\(a) not in the layout"); return s }
                return s.replacingCharacters(in: r, with: b)
            }
        }
        #expect(error().contains("no error"))
        #expect(error(layout: replacing("\"inChannels\":16", "\"inChannels\":8")).contains("layer1.0.conv1.weight"))
        // Sizes that agree with the tensors but not with the producer: the shape check names the node.
        let narrowed = error(layout: replacing("\"inChannels\":16", "\"inChannels\":8")) {
            $0["layer1.0.conv1.weight"] = SafeTensor(int8: [Int8](repeating: 1, count: 16 * 8 * 9), shape: [16, 8, 3, 3])
        }
        #expect(narrowed.contains("node layer1.0.conv1: takes 8 channels, its input has 16"), "\(narrowed)")
        #expect(error(layout: replacing("\"inputs\":[0]", "\"inputs\":[99]")).contains("reads value 99 before any node writes it"))
        #expect(error(layout: replacing("\"kernelSize\":3", "\"kernelSize\":1")).contains("conv1.weight"))
        #expect(error(layout: replacing("\"op\":\"add\"", "\"op\":\"softmax\"")).contains("unknown operation 'softmax'"))
        #expect(error(layout: replacing("\"outputScale\":", "\"outputScale\":-")).contains("must be a positive finite number"))
        #expect(error(tensors: { $0["conv1.weight"] = nil }).contains("conv1.weight"))
        #expect(error(tensors: { $0["extra"] = SafeTensor(floats: [1], shape: [1]) }).contains("extra"))
        #expect(error(layout: { _ in "{" }).contains("int8_graph"))
    }

    @Test("a graph with a float-kept layer is refused by the native file, with the node named")
    func floatNodeRefused() throws {
        let data = syntheticBands(count: 64, seed: 78)
        let example = Tensor([Float](repeating: 0, count: 784), shape: [1, 1, 28, 28])
        let prepared = try QuantizedGraph(EveryOpNet(seed: 79), example: example, qconfig: QConfigMapping(.tensorRT).setting("fc", to: nil),
                                          mode: .ptq)
        try prepared.calibrate(on: data)
        let dir = temporaryDirectory(); defer { removing(dir) }
        #expect { try prepared.convertToInt8().write(to: dir + "/g.safetensors") } throws: { "\($0)".contains("fc") && "\($0)".contains("float") }
    }

    @Test("each reader refuses the other family's checkpoint with one clear line")
    func familiesKeptApart() throws {
        let dir = temporaryDirectory(); defer { removing(dir) }
        let resnet = dir + "/resnet.safetensors"
        try Checkpoint.save(try ResNet(depth: 8), to: resnet)
        #expect { _ = try Checkpoint.loadModel(resnet) } throws: { "\($0)".contains("holds a resnet model") }
        let repvgg = shippedCheckpoints + "/tiny-qarepvgg.safetensors"
        #expect { _ = try Checkpoint.loadModel(repvgg, as: ResNet.self) } throws: { "\($0)".contains("RepVGG-family model, not resnet") }
        #expect(try Checkpoint.describe(repvgg).family == nil)
    }
}
