import ArgumentParser
import Foundation
import QARep

/// `qarep eval`: test top-1 of a checkpoint, multi-branch or deployed.
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate a checkpoint (multi-branch or deployed) on the Fashion-MNIST test set.")

    @Option(help: "A safetensors FP32 checkpoint.") var checkpoint: String?
    @Option(help: "A native INT8 model (from qarep ptq --out or qarep qat), run on the integer engine.") var int8: String?
    @Flag(help: "Also fold the model into its deploy form and evaluate that.") var deploy = false
    @Option(help: "Write the logits ([images, classes] float32, of the deployed form with --deploy) as a NumPy .npy file.") var logitsOut: String?
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    func validate() throws {
        if (checkpoint == nil) == (int8 == nil) { throw ValidationError("give either --checkpoint FILE or --int8 FILE") }
    }

    func run() throws {
        runtime.apply()
        if let int8 { return try runInt8(int8) }
        let checkpoint = self.checkpoint!
        let net = try Checkpoint.loadModel(checkpoint, fallback: model.fallback())
        let test = try data.test()
        let keep = logitsOut != nil && !deploy
        let result = net.isDeployed ? evaluate(try DeployedEngine(net), on: test, keepLogits: keep)
                                    : evaluate(net, on: test, keepLogits: keep)
        var json: [String: Any] = ["top1": result.top1, "loss": result.loss, "images": result.count,
                                   "config": net.config.name, "block": net.config.block.rawValue,
                                   "form": net.isDeployed ? "deployed" : "multi-branch"]
        var rows = [(net.isDeployed ? "deployed FP32" : "multi-branch FP32", result)]
        if deploy && !net.isDeployed {
            let folded = net.deployed()
            let d = evaluate(try DeployedEngine(folded), on: test, keepLogits: logitsOut != nil)
            if let logitsOut { try writeNumPy(d.logits!, rows: d.count, columns: net.config.classes, to: logitsOut) }
            rows.append(("deployed FP32", d))
            json["deployed_top1"] = d.top1
            json["deployed_agreement"] = zip(d.predictions, result.predictions).filter { $0 == $1 }.count
        }
        if let logitsOut, !(deploy && !net.isDeployed) {
            try writeNumPy(result.logits!, rows: result.count, columns: net.config.classes, to: logitsOut)
        }
        if runtime.json {
            try printJSON(json)
        } else {
            print("\(checkpoint): \(net.config.name) \(net.config.block.rawValue), \(result.count) test images")
            for (name, e) in rows { print(String(format: "%-20@ top-1 %@  loss %.4f", name, percent(e.top1), e.loss)) }
        }
    }

    func runInt8(_ path: String) throws {
        let model = try Int8Model.read(from: path)
        let test = try data.test()
        let result = evaluate(model, on: test, keepLogits: logitsOut != nil)
        if let logitsOut { try writeNumPy(result.logits!, rows: result.count, columns: model.head.classes, to: logitsOut) }
        if runtime.json {
            try printJSON(["int8_top1": result.top1, "images": result.count, "config": model.config.name,
                           "block": model.config.block.rawValue])
        } else {
            print("\(path): INT8 \(model.config.name) \(model.config.block.rawValue), \(result.count) test images")
            print(String(format: "INT8 engine  top-1 %@", percent(result.top1)))
        }
    }
}
