import ArgumentParser
import Foundation
import QARep
import QARepKernels

/// Where the data is and how much of it to use.
struct DataOptions: ParsableArguments {
    @Option(help: "Dataset: fashion-mnist (IDX files) or cifar10 (the binary version's .bin files) (default fashion-mnist).")
    var dataset: DatasetName?
    @Option(name: .customLong("data-root"), help: """
        Directory with the dataset's files (default \(FashionMNIST.defaultRoot) for fashion-mnist, \
        ./\(CIFAR10.defaultRoot) for cifar10).
        """)
    var givenRoot: String?
    @Option(help: "Use only the first N training images.") var trainLimit: Int?
    @Option(help: "Use only the first N test images.") var testLimit: Int?

    func validate() throws {
        if let n = trainLimit, n <= 0 { throw ValidationError("--train-limit must be positive, got \(n)") }
        if let n = testLimit, n <= 0 { throw ValidationError("--test-limit must be positive, got \(n)") }
    }

    var datasetName: DatasetName { dataset ?? .fashionMNIST }
    var dataRoot: String { givenRoot ?? datasetName.defaultRoot }

    func train(limit: Int? = nil) throws -> any Dataset { try datasetName.load(.train, root: dataRoot, limit: limit ?? trainLimit) }
    func test() throws -> any Dataset { try datasetName.load(.test, root: dataRoot, limit: testLimit) }

    /// Refuses data the model cannot take: other input channels or more classes.
    func check(_ data: any Dataset, fits config: ModelConfig, model: String) throws {
        try check(data, inChannels: config.inChannels, classes: config.classes, model: model)
    }

    /// `check(_:fits:model:)` for a model of any family.
    func check(_ data: any Dataset, inChannels: Int, classes: Int, model: String) throws {
        guard data.channels == inChannels else {
            throw CommandError("\(model) takes \(inChannels)-channel images; \(datasetName.rawValue) has \(data.channels) "
                               + "(use the --dataset it was trained on)")
        }
        guard data.classCount <= classes else {
            throw CommandError("\(model) has \(classes) classes; \(datasetName.rawValue) has \(data.classCount)")
        }
    }
}

extension DatasetName: ExpressibleByArgument {}

/// The data of a training run: `DataOptions` plus the validation split.
struct RunDataOptions: ParsableArguments {
    @OptionGroup var data: DataOptions
    @Option(help: """
        Hold out the last N training images for validation, which selects best.safetensors (the test set is only \
        reported); 0 disables (then no best.safetensors). Default 5000, or a tenth of the training images when fewer \
        than 50,000 are used.
        """)
    var valSplit: Int?

    func validate() throws {
        if let n = valSplit, n < 0 { throw ValidationError("--val-split must be >= 0, got \(n)") }
    }

    /// The training images, split into training and validation parts, and the test images.
    func load() throws -> (train: any Dataset, validation: (any Dataset)?, test: any Dataset, origin: DataOrigin) {
        let all = try data.train()
        let held = valSplit ?? (all.count >= 50_000 ? 5000 : all.count / 10)
        guard held < all.count else {
            throw CommandError("--val-split \(held) leaves no training images out of \(all.count)")
        }
        // An absolute path, so that a resume from another directory finds the same files.
        let origin = DataOrigin(dataset: data.datasetName, root: absolutePath(data.dataRoot), trainLimit: data.trainLimit, testLimit: data.testLimit,
                                validationImages: held)
        let train = held == 0 ? all : all.subset(0..<(all.count - held))
        let validation = held == 0 ? nil : all.subset((all.count - held)..<all.count)
        return (train, validation, try data.test(), origin)
    }

    /// On resume: the saved run's data, refusing flags that contradict it.
    func resumed(from saved: DataOrigin?, _ check: inout ResumeCheck) -> RunDataOptions {
        guard let saved else { return self }
        // Runs saved before --dataset existed trained on Fashion-MNIST.
        check.compare("--dataset", data.dataset?.rawValue, (saved.dataset ?? .fashionMNIST).rawValue)
        check.compare("--data-root", data.givenRoot.map(absolutePath), saved.root)
        check.compare("--train-limit", data.trainLimit, saved.trainLimit)
        check.compare("--test-limit", data.testLimit, saved.testLimit)
        check.compare("--val-split", valSplit, saved.validationImages)
        var d = self
        d.data.dataset = saved.dataset ?? .fashionMNIST
        d.data.givenRoot = saved.root; d.data.trainLimit = saved.trainLimit; d.data.testLimit = saved.testLimit
        d.valSplit = saved.validationImages ?? 0
        return d
    }
}

/// `path` made absolute against the working directory, `.` and `..` resolved.
func absolutePath(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

/// Collects the flags given with `--resume` that contradict the saved run.
struct ResumeCheck {
    let directory: String
    private(set) var problems: [String] = []

    init(directory: String) { self.directory = directory }

    /// Notes `flag` when it was given (`given` not nil) with another value than the run's.
    mutating func compare<T: Equatable>(_ flag: String, _ given: T?, _ saved: T?) {
        guard let given, given != saved else { return }
        problems.append("\(flag) \(given) (the run has \(saved.map { "\($0)" } ?? "none"))")
    }

    /// Notes a flag that cannot be given with `--resume` at all.
    mutating func refuse(_ flag: String, given: Bool, _ why: String) {
        if given { problems.append("\(flag) (\(why))") }
    }

    func verify() throws {
        guard !problems.isEmpty else { return }
        throw CommandError("\(directory) holds a run started with other settings: \(problems.joined(separator: "; ")); "
                           + "drop these flags to continue it, or start a new run with --out")
    }
}

/// Threads and output format shared by every command.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "Worker threads of the convolution kernels (default \(KernelThreads.count); results are reproducible for a fixed count).")
    var threads: Int?
    @Flag(help: "Print one JSON object on stdout.") var json = false
    @Flag(help: "No progress lines on stderr.") var quiet = false

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    func apply() { if let threads { KernelThreads.count = threads } }

    /// On resume: the run's own thread count (weight gradients are summed per
    /// thread, so another count would not continue it bit for bit).
    /// In a data-parallel job the sums run over the ranks as well, so no
    /// thread count continues a run bit for bit: each rank takes `--threads`
    /// or its share of the cores, whatever the run started with.
    func applyResumed(saved: Int?, _ check: inout ResumeCheck) {
        guard DataParallel.size == 1 else { return apply() }
        check.compare("--threads", threads, saved)
        KernelThreads.count = saved ?? threads ?? KernelThreads.count
    }
    var progress: ProgressReporter { ProgressReporter(enabled: !quiet) }
}

/// The named model configs of `ModelConfig.namedConfigs`.
enum ConfigName: String, ExpressibleByArgument, CaseIterable, Codable {
    case tiny
    case a0Half = "a0-half"
    case a0

    /// The named config for images with `inChannels` channels and `classes` classes.
    func config(block: BlockKind, inChannels: Int = 1, classes: Int = 10) throws -> ModelConfig {
        try ModelConfig.named(rawValue, block: block, classes: classes, inChannels: inChannels)
    }
}

extension BlockKind: ExpressibleByArgument {}
extension QATMethod: ExpressibleByArgument {}
extension QuantizedNet.Form: ExpressibleByArgument {}
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

/// The training flags FP32 training and QAT share, with the same defaults
/// in both except the schedule's (`Defaults`). Every value is optional here,
/// so that `--resume` can tell a flag that was given from a default.
struct SGDOptions: ParsableArguments {
    @Option(help: "Epochs.") var epochs: Int?
    @Option(help: "Peak learning rate (SGD), after the warm-up.") var lr: Float?
    @Option(help: "Linear warm-up epochs before the cosine decay.") var warmupEpochs: Int?
    @Option(help: "Batch size (default 64).") var batchSize: Int?
    @Option(help: "SGD momentum, in [0, 1) (default 0.9).") var momentum: Float?
    @Flag(help: "Nesterov momentum.") var nesterov = false
    @Option(help: "Weight decay coefficient, kernels only (default 1e-4).") var wd: Float?
    @Option(help: "Label smoothing, in [0, 1) (default 0).") var labelSmoothing: Float?
    @Flag(help: "No random crop / flip.") var noAugment = false
    @Option(help: "Seed for initialization, shuffling and augmentation (default 0).") var seed: UInt64?
    @Option(help: "Also checkpoint every N optimizer steps (mid-epoch), so a kill loses at most N steps.")
    var checkpointEvery: Int?
    @Option(help: "Also write TensorBoard event files (the metrics.jsonl scalars) into this directory.")
    var tensorboard: String?

    /// A command's defaults for the schedule.
    struct Defaults { var epochs: Int, learningRate: Float, warmupEpochs: Int }

    func validate() throws {
        if let e = epochs, e <= 0 { throw ValidationError("--epochs must be positive, got \(e)") }
        if let lr, !(lr > 0 && lr.isFinite) { throw ValidationError("--lr must be a positive number, got \(lr)") }
        if let w = warmupEpochs, w < 0 { throw ValidationError("--warmup-epochs must be >= 0, got \(w)") }
        if let b = batchSize, b < 2 { throw ValidationError("--batch-size must be at least 2 (batch norm needs a batch), got \(b)") }
        if let m = momentum, !(m >= 0 && m < 1) { throw ValidationError("--momentum must be in [0, 1), got \(m)") }
        if nesterov && momentum == 0 { throw ValidationError("--nesterov needs --momentum above 0") }
        if let wd, !(wd >= 0 && wd.isFinite) { throw ValidationError("--wd must be a number >= 0, got \(wd)") }
        if let l = labelSmoothing, !(l >= 0 && l < 1) { throw ValidationError("--label-smoothing must be in [0, 1), got \(l)") }
        if let n = checkpointEvery, n < 1 { throw ValidationError("--checkpoint-every must be at least 1, got \(n)") }
    }

    /// Validation that needs the command's defaults: the warm-up within the run.
    func validate(_ defaults: Defaults) throws {
        let e = epochs ?? defaults.epochs, w = warmupEpochs ?? defaults.warmupEpochs
        if w > e { throw ValidationError("--warmup-epochs (\(w)) must not exceed --epochs (\(e))") }
    }

    /// The settings of a new run.
    func settings(_ defaults: Defaults) -> TrainingSettings {
        var s = TrainingSettings(epochs: epochs ?? defaults.epochs, batchSize: batchSize ?? 64,
                                 learningRate: lr ?? defaults.learningRate, warmupEpochs: warmupEpochs ?? defaults.warmupEpochs)
        s.momentum = momentum ?? 0.9; s.nesterov = nesterov; s.weightDecay = wd ?? 1e-4
        s.labelSmoothing = labelSmoothing ?? 0; s.augment = !noAugment; s.seed = seed ?? 0
        return s
    }

    /// What these flags ask of a run as it trains: mid-epoch checkpoints,
    /// TensorBoard event files, and a stop (with a checkpoint) on SIGINT or SIGTERM.
    func runControls() throws -> RunControls {
        var controls = RunControls()
        controls.checkpointEvery = checkpointEvery
        controls.shouldStop = { StopSignals.isRequested }
        // Rank 0 alone reports in a data-parallel job.
        if DataParallel.isPrimary { try attachTensorBoard(tensorboard, to: &controls.onMetrics) }
        return controls
    }

    /// On resume: notes every given flag that contradicts `saved` (`--epochs`
    /// only when `epochsMayChange` is false).
    func compare(with saved: TrainingSettings, epochsMayChange: Bool, _ check: inout ResumeCheck) {
        if !epochsMayChange { check.compare("--epochs", epochs, saved.epochs) }
        check.compare("--lr", lr, saved.learningRate)
        check.compare("--warmup-epochs", warmupEpochs, saved.warmupEpochs)
        check.compare("--batch-size", batchSize, saved.batchSize)
        check.compare("--momentum", momentum, saved.momentum)
        check.compare("--nesterov", nesterov ? true : nil, saved.nesterov)
        check.compare("--wd", wd, saved.weightDecay)
        check.compare("--label-smoothing", labelSmoothing, saved.labelSmoothing)
        check.compare("--no-augment", noAugment ? true : nil, !saved.augment)
        check.compare("--seed", seed, saved.seed)
    }
}

/// Refuses `--out DIR` when DIR already holds a run, before any work starts.
func validateFreshRunDirectory(_ out: String?) throws {
    guard let out, FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent("last.safetensors")) else { return }
    throw ValidationError("\(out) already holds a run: continue it with --resume \(out), or choose another --out")
}

/// The quantization flags PTQ and QAT share, and the `QConfig` they make.
struct QuantizationOptions: ParsableArguments {
    @Option(help: "Activation calibrator: \(Calibrator.Method.allValueStrings.joined(separator: ", ")) (default minmax).")
    var calibrator: Calibrator.Method?
    @Option(help: "Percentile of |x| for --calibrator percentile, in (0, 100] (default 99.99).") var percentile: Double?
    @Option(help: "Calibration images, the first N training images (default 512).") var calibImages: Int?
    @Option(help: "Bit width of weights and activations, 2-8; the integer engine runs 8 (default 8).") var bits: Int?
    @Option(help: "Bit width of the weights alone, 2-8 (default --bits).") var weightBits: Int?
    @Option(help: "Bit width of the activations alone, 2-8 (default --bits).") var activationBits: Int?
    @Option(help: "Bit width of the first convolution's and the classifier's weights and inputs, 2-8, as the LSQ paper keeps them at 8 (default: the others'; RepVGG-family models).")
    var firstLastBits: Int?
    @Flag(help: "Unsigned asymmetric activations instead of signed symmetric.") var unsignedActivations = false

    func validate() throws {
        if let n = calibImages, n <= 0 { throw ValidationError("--calib-images must be at least 1, got \(n)") }
        for (flag, value) in [("--bits", bits), ("--weight-bits", weightBits), ("--activation-bits", activationBits),
                              ("--first-last-bits", firstLastBits)] {
            if let b = value, !(2...8).contains(b) { throw ValidationError("\(flag) must be between 2 and 8, got \(b)") }
        }
        if let p = percentile {
            if !(p > 0 && p <= 100) { throw ValidationError("--percentile must be in (0, 100], got \(p)") }
            if method != .percentile { throw ValidationError("--percentile applies to --calibrator percentile, not \(method.rawValue)") }
        }
    }

    var method: Calibrator.Method { calibrator ?? .minmax }
    var bitWidth: Int { bits ?? 8 }
    var weightBitWidth: Int { weightBits ?? bitWidth }
    var activationBitWidth: Int { activationBits ?? bitWidth }
    /// `W8A8`, `W4A8`, ..., `W4A4 (first/last 8)`.
    var widthLabel: String {
        "W\(weightBitWidth)A\(activationBitWidth)" + (firstLastBits.map { " (first/last \($0))" } ?? "")
    }
    var calibrationImages: Int { calibImages ?? 512 }

    /// The activation calibrator with its settings.
    var calibratorSettings: Calibrator { Calibrator(method, percentile: percentile ?? 99.99) }

    /// TensorRT's schemes (or unsigned activations) at the asked widths, with the calibrator.
    var qconfig: QConfig {
        var q = (unsignedActivations ? QConfig.unsignedActivations : .tensorRT).with(calibrator: calibratorSettings)
        q.weight.bits = weightBitWidth
        q.activation.bits = activationBitWidth
        q.firstLastBits = firstLastBits
        return q
    }

    /// On resume: notes every given flag that contradicts the saved run's settings.
    func compare(with saved: QATOptions, _ check: inout ResumeCheck) {
        check.compare("--calibrator", calibrator, saved.qconfig.calibrator.method)
        if case .percentile(let p) = saved.qconfig.calibrator { check.compare("--percentile", percentile, p) }
        else { check.compare("--percentile", percentile, nil) }
        check.compare("--calib-images", calibImages, saved.calibrationImages)
        check.compare("--bits", bits, saved.qconfig.activation.bits)
        check.compare("--bits", bits, saved.qconfig.weight.bits)
        check.compare("--weight-bits", weightBits, saved.qconfig.weight.bits)
        check.compare("--activation-bits", activationBits, saved.qconfig.activation.bits)
        check.compare("--first-last-bits", firstLastBits, saved.qconfig.firstLastBits)
        check.compare("--unsigned-activations", unsignedActivations ? true : nil, !saved.qconfig.activation.signed)
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
