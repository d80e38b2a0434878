import ArgumentParser
import Foundation
import QARep

/// `qarep quickstart`: the main job end to end on the real data, small
/// enough to finish in a few minutes on two cores.
struct Quickstart: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Train tiny QARepVGG on Fashion-MNIST, fold it for deployment and print a summary table.")

    @Option(help: "Training epochs.") var epochs = 2
    @Option(help: "Directory for the run's files.") var out = "runs/quickstart"
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    func run() throws {
        runtime.apply()
        let progress = runtime.progress
        let train = try data.train(), test = try data.test()
        // A fresh run each time: the quickstart's directory is its own scratch space.
        let runDir = (out as NSString).appendingPathComponent("fp32")
        try? FileManager.default.removeItem(atPath: (runDir as NSString).appendingPathComponent(TrainingRun.lastFile))
        var options = TrainingRunOptions(model: try ModelConfig.named("tiny", block: .qarepvgg), epochs: epochs)
        options.batchSize = 64
        options.learningRate = 0.1
        progress.finish("1/2 training tiny QARepVGG for \(epochs) epoch(s) on \(train.count) images")
        let run = try TrainingRun(options: options, trainImages: train.count, directory: runDir, progress: progress)
        let summaries = try run.run(train: train, test: test)

        progress.finish("2/2 folding into deployable 3x3 convolutions")
        let model = run.model
        let multiBranch = evaluate(model, on: test)
        let deployed = model.deployed()
        let folded = evaluate(deployed, on: test)
        let agreement = Double(zip(multiBranch.predictions, folded.predictions).filter { $0 == $1 }.count) / Double(max(test.count, 1))
        let deployPath = (out as NSString).appendingPathComponent("tiny-qarepvgg-deploy.safetensors")
        try Checkpoint.save(deployed, to: deployPath)

        if runtime.json {
            try printJSON(["top1": multiBranch.top1, "deployed_top1": folded.top1, "agreement": agreement,
                           "train_images_per_second": summaries.last?.imagesPerSecond ?? 0,
                           "checkpoint": (runDir as NSString).appendingPathComponent(TrainingRun.lastFile), "deployed": deployPath])
        } else {
            print("")
            print("tiny QARepVGG, \(epochs) epoch(s), \(test.count) test images")
            print("model                   top-1     same prediction as FP32")
            print(String(format: "FP32 multi-branch       %-9@ -", percent(multiBranch.top1)))
            print(String(format: "FP32 deployed (folded)  %-9@ %@", percent(folded.top1), percent(agreement)))
            print("files: \(runDir)/\(TrainingRun.lastFile), \(deployPath)")
        }
    }
}
