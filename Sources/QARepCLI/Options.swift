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

/// The named model configs of `ModelConfig.namedConfigs`.
enum ConfigName: String, ExpressibleByArgument, CaseIterable, Codable {
    case tiny
    case a0Half = "a0-half"
    case a0

    func config(block: BlockKind) throws -> ModelConfig { try ModelConfig.named(rawValue, block: block) }
}

extension BlockKind: ExpressibleByArgument {}
extension WeightDecayMode: ExpressibleByArgument {}
extension Calibrator.Method: ExpressibleByArgument {}

/// Model selection for files that carry no QARep metadata.
struct ModelOptions: ParsableArguments {
    @Option(help: "Model config: \(ConfigName.allValueStrings.joined(separator: ", ")).") var config: ConfigName?
    @Option(help: "Block kind: \(BlockKind.allValueStrings.joined(separator: ", ")).") var block: BlockKind?

    func fallback() throws -> ModelConfig? {
        guard config != nil || block != nil else { return nil }
        return try (config ?? .tiny).config(block: block ?? .qarepvgg)
    }

    /// Reads an FP32 checkpoint, with `--config`/`--block` as the fallback
    /// for files that carry no QARep metadata.
    func read(_ path: String) throws -> ModelCheckpoint {
        do {
            return try Checkpoint.read(path, fallback: fallback())
        } catch let error as CheckpointError where error.message.hasSuffix(Checkpoint.noConfigHint) {
            throw CommandError(error.message.replacingOccurrences(of: Checkpoint.noConfigHint, with: "pass --config and --block"))
        }
    }

    /// `read`, then the model with its weights.
    func load(_ path: String) throws -> RepVGGNet { try Checkpoint.makeModel(read(path)) }
}

/// The SGD and data settings FP32 training and QAT share, with the same
/// defaults in both (length and learning rate differ, so each command has its own).
struct SGDOptions: ParsableArguments {
    @Option(help: "Batch size.") var batchSize = 64
    @Option(help: "SGD momentum, in [0, 1).") var momentum: Float = 0.9
    @Flag(help: "Nesterov momentum.") var nesterov = false
    @Option(help: "Weight decay coefficient (kernels only).") var wd: Float = 1e-4
    @Option(help: "Label smoothing, in [0, 1).") var labelSmoothing: Float = 0
    @Flag(help: "No random crop / flip.") var noAugment = false
    @Option(help: "Seed for initialization, shuffling and augmentation.") var seed: UInt64 = 0

    func validate() throws {
        if batchSize < 2 { throw ValidationError("--batch-size must be at least 2 (batch norm needs a batch), got \(batchSize)") }
        if !(momentum >= 0 && momentum < 1) { throw ValidationError("--momentum must be in [0, 1), got \(momentum)") }
        if nesterov && momentum == 0 { throw ValidationError("--nesterov needs --momentum above 0") }
        if !(wd >= 0 && wd.isFinite) { throw ValidationError("--wd must be a number >= 0, got \(wd)") }
        if !(labelSmoothing >= 0 && labelSmoothing < 1) { throw ValidationError("--label-smoothing must be in [0, 1), got \(labelSmoothing)") }
    }

    /// The training settings of a run of `epochs` epochs at learning rate `lr`.
    func settings(epochs: Int, learningRate: Float, warmupEpochs: Int) -> TrainingSettings {
        var s = TrainingSettings(epochs: epochs, batchSize: batchSize, learningRate: learningRate, warmupEpochs: warmupEpochs)
        s.momentum = momentum; s.nesterov = nesterov; s.weightDecay = wd
        s.labelSmoothing = labelSmoothing; s.augment = !noAugment; s.seed = seed
        return s
    }
}

/// Checks the length and learning-rate flags every training command has.
func validateSchedule(epochs: Int?, lr: Float, warmupEpochs: Int) throws {
    if let e = epochs, e <= 0 { throw ValidationError("--epochs must be positive, got \(e)") }
    if !(lr > 0 && lr.isFinite) { throw ValidationError("--lr must be a positive number, got \(lr)") }
    if warmupEpochs < 0 { throw ValidationError("--warmup-epochs must be >= 0, got \(warmupEpochs)") }
    if let e = epochs, warmupEpochs > e { throw ValidationError("--warmup-epochs (\(warmupEpochs)) must not exceed --epochs (\(e))") }
}

/// Refuses `--out DIR` when DIR already holds a run, before any work starts.
func validateFreshRunDirectory(_ out: String?) throws {
    guard let out, FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent("last.safetensors")) else { return }
    throw ValidationError("\(out) already holds a run: continue it with --resume \(out), or choose another --out")
}

/// The quantization flags PTQ and QAT share, and the `QConfig` they make.
struct QuantizationOptions: ParsableArguments {
    @Option(help: "Activation calibrator: \(Calibrator.Method.allValueStrings.joined(separator: ", ")).")
    var calibrator: Calibrator.Method = .minmax
    @Option(help: "Percentile of |x| for --calibrator percentile, in (0, 100].") var percentile: Double?
    @Option(help: "Calibration images (the first N training images).") var calibImages = 512
    @Option(help: "Bit width of weights and activations, 2-8 (the integer engine runs 8).") var bits = 8
    @Flag(help: "Unsigned asymmetric activations instead of signed symmetric.") var unsignedActivations = false

    func validate() throws {
        if calibImages <= 0 { throw ValidationError("--calib-images must be at least 1, got \(calibImages)") }
        if !(2...8).contains(bits) { throw ValidationError("--bits must be between 2 and 8, got \(bits)") }
        if let p = percentile {
            if !(p > 0 && p <= 100) { throw ValidationError("--percentile must be in (0, 100], got \(p)") }
            if calibrator != .percentile { throw ValidationError("--percentile applies to --calibrator percentile, not \(calibrator.rawValue)") }
        }
    }

    /// The activation calibrator with its settings.
    var calibratorSettings: Calibrator { Calibrator(calibrator, percentile: percentile ?? 99.99) }

    /// TensorRT's schemes (or unsigned activations) at `--bits`, with the calibrator.
    var qconfig: QConfig {
        (unsignedActivations ? QConfig.unsignedActivations : .tensorRT).withBits(bits).with(calibrator: calibratorSettings)
    }
}

/// A problem found while running a command: printed as one line, no usage text.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One JSON object on stdout: keys sorted and in snake case (`fake_quant_top1`).
func printJSON<T: Encodable>(_ value: T) throws {
    print(try jsonString(value))
}

/// The JSON `printJSON` prints.
func jsonString<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// Fraction of images on which two evaluations predict the same class.
func agreement(_ a: Evaluation, _ b: Evaluation) -> Double {
    Double(zip(a.predictions, b.predictions).filter { $0 == $1 }.count) / Double(max(a.predictions.count, 1))
}

func percent(_ v: Double) -> String { String(format: "%.2f%%", 100 * v) }
