import ArgumentParser
import Foundation
import QARep
import QARepKernels

/// Where the data is and how much of it to use.
struct DataOptions: ParsableArguments {
    @Option(help: "Directory with the Fashion-MNIST IDX files (gzipped or not).")
    var dataRoot = FashionMNIST.defaultRoot
    @Option(help: "Use only the first N training images.") var trainLimit: Int?
    @Option(help: "Use only the first N test images.") var testLimit: Int?

    func validate() throws {
        if let n = trainLimit, n <= 0 { throw ValidationError("--train-limit must be positive, got \(n)") }
        if let n = testLimit, n <= 0 { throw ValidationError("--test-limit must be positive, got \(n)") }
    }

    func train() throws -> FashionMNIST { try FashionMNIST.load(split: .train, root: dataRoot, limit: trainLimit) }
    func test() throws -> FashionMNIST { try FashionMNIST.load(split: .test, root: dataRoot, limit: testLimit) }
}

/// Threads and output format shared by every command.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "Worker threads of the convolution kernels (results are reproducible for a fixed count).")
    var threads = KernelThreads.count
    @Flag(help: "Print one JSON object on stdout.") var json = false
    @Flag(help: "No progress lines on stderr.") var quiet = false

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    func apply() { KernelThreads.count = threads }
    var progress: ProgressReporter { ProgressReporter(enabled: !quiet) }
}

/// Model selection for files that carry no QARep metadata.
struct ModelOptions: ParsableArguments {
    @Option(help: "Model config: tiny, a0-half or a0.") var config: String?
    @Option(help: "Block kind: repvgg, s2, s3 or qarepvgg.") var block: String?

    func fallback() throws -> ModelConfig? {
        guard config != nil || block != nil else { return nil }
        return try ModelConfig.named(config ?? "tiny", block: parseBlock(block ?? "qarepvgg"))
    }
}

/// A problem found while running a command: printed as one line, no usage text.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func parseBlock(_ s: String) throws -> BlockKind {
    guard let b = BlockKind(rawValue: s) else {
        throw CommandError("unknown block kind '\(s)'; expected one of \(BlockKind.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return b
}

/// One JSON object on stdout, keys sorted.
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

func percent(_ v: Double) -> String { String(format: "%.2f%%", 100 * v) }

extension Calibrator.Method: ExpressibleByArgument {}

/// The quantization flags PTQ and QAT share, and the `QConfig` they make.
struct QuantizationOptions: ParsableArguments {
    @Option(help: "Activation calibrator: \(Calibrator.Method.allCases.map(\.rawValue).joined(separator: ", ")).")
    var calibrator: Calibrator.Method = .minmax
    @Option(help: "Percentile of |x| for --calibrator percentile, in (0, 100].") var percentile = 99.99
    @Option(help: "Calibration images (the first N training images).") var calibImages = 512
    @Option(help: "Bit width of weights and activations, 2-8 (the integer engine runs 8).") var bits = 8
    @Flag(help: "Unsigned asymmetric activations instead of signed symmetric.") var unsignedActivations = false

    func validate() throws {
        if calibImages <= 0 { throw ValidationError("--calib-images must be at least 1, got \(calibImages)") }
        if !(2...8).contains(bits) { throw ValidationError("--bits must be between 2 and 8, got \(bits)") }
        if !(percentile > 0 && percentile <= 100) { throw ValidationError("--percentile must be in (0, 100], got \(percentile)") }
        if calibrator != .percentile && percentile != 99.99 {
            throw ValidationError("--percentile applies to --calibrator percentile, not \(calibrator.rawValue)")
        }
    }

    /// The activation calibrator with its settings.
    var calibratorSettings: Calibrator { Calibrator(calibrator, percentile: percentile) }

    /// TensorRT's schemes (or unsigned activations) at `--bits`, with the calibrator.
    var qconfig: QConfig {
        (unsignedActivations ? QConfig.unsignedActivations : .tensorRT).withBits(bits).with(calibrator: calibratorSettings)
    }
}
