import ArgumentParser
import Foundation
import QARep

/// `qarep eval`: test top-1 of a checkpoint, multi-branch or deployed, or of an INT8 model.
public struct Eval: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint (multi-branch or deployed) or an INT8 model on the Fashion-MNIST test set.")

    @Option(help: "A safetensors FP32 checkpoint.") var checkpoint: String?
    @Option(help: "A native INT8 model or graph (from qarep ptq --out or qarep qat), run on the integer engine.") var int8: String?
    @Flag(help: "Also fold the model into its deploy form and evaluate that.") var deploy = false
    @Option(help: "Write the logits ([images, classes] float32, of the deployed form with --deploy) as a NumPy .npy file.") var logitsOut: String?
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if (checkpoint == nil) == (int8 == nil) { throw ValidationError("give either --checkpoint FILE or --int8 FILE") }
        if int8 != nil && deploy { throw ValidationError("--deploy folds an FP32 checkpoint; an INT8 model is already deployed") }
    }

    /// What `qarep eval --json` prints. `top1` and `loss` are those of the
    /// file as given (FP32), `int8Top1` that of an INT8 model.
    public struct Report: Codable, Sendable {
        public var images: Int
        public var config: String
        public var block: String
        /// `multi-branch`, `deployed` or `int8`; `fp32` for a model outside the RepVGG family (its block is `-`).
        public var form: String
        public var top1: Double?
        public var loss: Double?
        /// With `--deploy`: the folded model's top-1, and the fraction of images
        /// on which it predicts what the multi-branch model does.
        public var deployedTop1: Double?
        public var deployedAgreement: Double?
        public var int8Top1: Double?
    }

    public func execute() throws -> Report {
        runtime.apply()
        let test = try data.test()
        if let int8, try Checkpoint.describe(int8).kind == Int8Graph.kind {
            return try evaluateGraph(Int8Graph.read(from: int8), on: test)
        }
        if let int8 {
            let model = try Int8Model.read(from: int8)
            try data.check(test, fits: model.config, model: int8)
            let result = evaluate(model, on: test, keepLogits: logitsOut != nil)
            if let logitsOut { try writeNumPy(result.logits!, rows: result.count, columns: model.head.classes, to: logitsOut) }
            return Report(images: result.count, config: model.config.name, block: model.config.block.rawValue, form: "int8",
                          int8Top1: result.top1)
        }
        if let family = try checkpointFamily(checkpoint!) {
            try requireKnownFamily(family, of: checkpoint!)
            return try evaluateFP32(ResNet.self, on: test)
        }
        let net = try model.load(checkpoint!)
        try data.check(test, fits: net.config, model: checkpoint!)
        let foldHere = deploy && !net.isDeployed
        let result = net.isDeployed ? evaluate(try DeployedEngine(net), on: test, keepLogits: logitsOut != nil)
                                    : evaluate(net, on: test, keepLogits: logitsOut != nil && !foldHere)
        var report = Report(images: result.count, config: net.config.name, block: net.config.block.rawValue,
                            form: net.isDeployed ? "deployed" : "multi-branch", top1: result.top1, loss: result.loss)
        var logits = result
        if foldHere {
            let folded = evaluate(try DeployedEngine(net.deployed()), on: test, keepLogits: logitsOut != nil)
            report.deployedTop1 = folded.top1
            report.deployedAgreement = agreement(folded, result)
            logits = folded
        }
        if let logitsOut { try writeNumPy(logits.logits!, rows: logits.count, columns: net.config.classes, to: logitsOut) }
        return report
    }

    /// A native INT8 graph (a ResNet's, from qarep ptq --out or qarep qat) on the graph engine.
    func evaluateGraph(_ graph: Int8Graph, on test: any Dataset) throws -> Report {
        let name = (int8! as NSString).lastPathComponent
        for (flag, given) in [("--config", model.config != nil), ("--block", model.block != nil)] where given {
            throw CommandError("\(flag) applies to RepVGG-family models; \(name) is an INT8 graph")
        }
        let expected = Array(graph.inputShape.dropFirst()), given = [test.channels, test.height, test.width]
        guard expected == given else {
            throw CommandError("\(name) takes images of \(expected.map(String.init).joined(separator: "x")); "
                               + "\(data.datasetName.rawValue) has \(given.map(String.init).joined(separator: "x")) (use the --dataset it was trained on)")
        }
        let classes = graph.outputShape.last ?? 0
        guard graph.outputShape.count == 2, test.classCount <= classes else {
            throw CommandError("\(name) has \(classes) outputs; \(data.datasetName.rawValue) has \(test.classCount) classes")
        }
        let result = try Int8GraphEngine(graph).evaluate(on: test, keepLogits: logitsOut != nil)
        if let logitsOut { try writeNumPy(result.logits!, rows: result.count, columns: classes, to: logitsOut) }
        return Report(images: result.count, config: "graph", block: "-", form: "int8", int8Top1: result.top1)
    }

    /// An FP32 checkpoint of a model outside the RepVGG family, as it is.
    func evaluateFP32<Model: CheckpointableModel>(_: Model.Type, on test: any Dataset) throws -> Report {
        let name = (checkpoint! as NSString).lastPathComponent
        for (flag, given) in [("--deploy", deploy), ("--config", model.config != nil), ("--block", model.block != nil)] where given {
            throw CommandError("\(flag) applies to RepVGG-family models; \(name) holds a \(Model.family) model")
        }
        let net = try Checkpoint.loadModel(checkpoint!, as: Model.self).model
        try data.check(test, inChannels: net.inputChannels, classes: net.classCount, model: checkpoint!)
        let result = evaluate(net, on: test, keepLogits: logitsOut != nil)
        if let logitsOut { try writeNumPy(result.logits!, rows: result.count, columns: net.classCount, to: logitsOut) }
        let config = (net as? ResNet)?.config.name ?? Model.family
        return Report(images: result.count, config: config, block: "-", form: "fp32", top1: result.top1, loss: result.loss)
    }

    public func run() throws {
        let r = try execute()
        if runtime.json { return try printJSON(r) }
        let file = checkpoint ?? int8!
        print("\(file): \(r.form == "int8" ? "INT8 " : "")\(r.config)\(r.block == "-" ? "" : " " + r.block), \(r.images) test images")
        if let t = r.int8Top1 { print(String(format: "INT8 engine  top-1 %@", percent(t))) }
        if let t = r.top1, let loss = r.loss {
            print(String(format: "%-20@ top-1 %@  loss %.4f", ["deployed": "deployed FP32", "fp32": "FP32"][r.form] ?? "multi-branch FP32", percent(t), loss))
        }
        if let t = r.deployedTop1, let a = r.deployedAgreement {
            print(String(format: "%-20@ top-1 %@  (same prediction on %@ of images)", "deployed FP32", percent(t), percent(a)))
        }
    }
}
