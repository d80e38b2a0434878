import ArgumentParser
import QARep

@main
struct QARepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qarep",
        abstract: "Quantization-aware training for QARepVGG on Linux CPUs.",
        subcommands: [Train.self, Eval.self, PTQ.self, QAT.self, Export.self, Bench.self, Quickstart.self])
}
