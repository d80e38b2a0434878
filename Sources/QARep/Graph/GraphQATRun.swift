import Foundation
import QARepKernels

/// Where a QAT run of a captured model stands (its checkpoints'
/// `__metadata__["qat"]`): `QATState` without RepVGG's form, with the input
/// shape the model was captured on.
public struct GraphQATState: Codable, Sendable {
    public var options: QATOptions
    public var training: TrainingConfig
    /// Channels, height and width of one image: what the capture ran on.
    public var inputShape: [Int]
    public var epoch = 0
    public var step = 0
    public var lastTop1: Double?
    /// Best validation top-1 of the fake-quantized model so far and its epoch.
    public var bestTop1: Double?
    public var bestEpoch: Int?
    /// The FP32 checkpoint it started from.
    public var source: String
    /// The kernel thread count the run started with (results can depend on it).
    public var threads: Int?
    /// What the run trains on.
    public var data: DataRecord?
    /// What the epoch in progress has seen, when the checkpoint was written mid-epoch.
    public var totals: EpochTotals?
}

extension GraphQATState: RunRecord {}

/// Quantization-aware training of any `CheckpointableModel` through graph
/// capture: `QATRun`'s loop, checkpoints and exact resume on a
/// `QuantizedGraph` prepared for QAT (batch norms kept with their fold
/// simulated, fake quantizers calibrated, then moving-average ranges or LSQ
/// scales). Checkpoints (kind `qat-graph`) hold the FP32 model's family and
/// config, weights, BN statistics, scales, observer and optimizer state, so
/// `resume(from:)` rebuilds the graph and continues without recalibrating.
public final class GraphQATRun<Model: CheckpointableModel> {
    public let model: QuantizedGraph
    /// The FP32 network the graph was captured from (its config names it in checkpoints).
    public let network: Model
    private let core: CheckpointedRun<QuantizedGraph>
    private let base: GraphQATState

    public static var lastFile: String { CheckpointedRun<QuantizedGraph>.lastFile }
    public static var bestFile: String { CheckpointedRun<QuantizedGraph>.bestFile }
    public static var kind: String { "qat-graph" }
    /// The finished run's integer graph, beside its checkpoints (W8A8 runs).
    public static var int8File: String { QATRun.int8File }

    public var trainer: Trainer<QuantizedGraph> { core.trainer }
    public var directory: String? { core.directory }

    /// Where the run stands, as its checkpoints record it.
    public var state: GraphQATState { base.updated(with: core.progress, data: core.data) }

    /// Mid-epoch checkpoints, the metrics interval and listener, stop requests.
    public var controls: RunControls {
        get { core.controls }
        set { core.controls = newValue }
    }

    /// Captures `fp32` on images shaped like `calibration`'s, prepares it for
    /// QAT with `options.qconfig` on every layer, calibrates, and sets the
    /// scales moving (moving averages, or LSQ with `options.method`).
    /// - Throws: `GraphError` for an operation the quantizer cannot handle;
    ///   `QuantizationError` for invalid options, or a form other than
    ///   `.postBN` (a graph keeps its BNs; it has no branches to keep).
    public convenience init(from fp32: Model, source: String, options: QATOptions, calibration: any Dataset,
                            trainImages: Int, directory: String?, dataOrigin: DataOrigin? = nil,
                            progress: ProgressReporter = ProgressReporter()) throws {
        try options.validate()
        guard options.form == .postBN else {
            throw QuantizationError("graph QAT keeps every BN (the post-bn form); the \(options.form.rawValue) form applies to RepVGG-family models")
        }
        let training = try options.settings.trainingConfig(trainImages: trainImages)
        let inputShape = [calibration.channels, calibration.height, calibration.width]
        let model = try Self.prepare(fp32, inputShape: inputShape, options: options)
        try CheckpointedRun<QuantizedGraph>.prepare(directory)
        try model.calibrate(on: calibration)
        options.method.start(model.fakeQuantizers)
        let state = GraphQATState(options: options, training: training, inputShape: inputShape, source: source,
                                  threads: KernelThreads.count)
        let teacher = try options.distillation.map { _ in try frozenTeacher(copying: fp32, into: Model(config: fp32.config, seed: 0)) }
        try self.init(model: model, network: fp32, state: state, directory: directory, origin: dataOrigin, teacher: teacher,
                      progress: progress)
    }

    /// - Parameter teacher: the FP32 model when the options distill.
    private init(model: QuantizedGraph, network: Model, state: GraphQATState, directory: String?, origin: DataOrigin?,
                 teacher: Model?, progress: ProgressReporter) throws {
        self.model = model
        self.network = network
        base = state
        let settings = state.options.settings
        core = try CheckpointedRun(
            model: model, groups: ParameterGroup.standard(model, weightDecay: settings.weightDecay), config: state.training,
            momentum: settings.momentum, nesterov: settings.nesterov, progress: state.progress,
            data: state.data, origin: origin, directory: directory, reporter: progress)
        if let settings = state.options.distillation, let teacher { core.trainer.batchLoss = settings.batchLoss(teacher: teacher) }
    }

    /// The QAT graph of `fp32`: captured on a zero image of `inputShape`, every layer with `options.qconfig`.
    static func prepare(_ fp32: Model, inputShape: [Int], options: QATOptions) throws -> QuantizedGraph {
        let example = Tensor([Float](repeating: 0, count: inputShape.reduce(1, *)), shape: [1] + inputShape)
        return try QuantizedGraph(fp32, example: example, qconfig: QConfigMapping(options.qconfig), mode: .qat)
    }

    /// The state and FP32 model config of the run `resume(from:)` would
    /// continue: what a caller checks (settings, data, threads) before resuming.
    /// - Throws: `CheckpointError` when the directory holds no QAT run of this model.
    public static func savedState(in directory: String) throws -> (state: GraphQATState, config: Model.Config) {
        let (_, name, config, json) = try open(CheckpointedRun<QuantizedGraph>.lastCheckpoint(in: directory))
        return (try Checkpoint.decode(GraphQATState.self, json, what: "qat", file: name), config)
    }

    /// Continues the QAT run saved in `directory`, without recalibrating.
    public static func resume(from directory: String, progress: ProgressReporter = ProgressReporter()) throws -> GraphQATRun {
        let path = try CheckpointedRun<QuantizedGraph>.lastCheckpoint(in: directory)
        let (model, network, state, file) = try loadCheckpoint(path)
        let teacher = try state.options.distillation.map { _ in
            try rereadTeacher(state.source) { try Checkpoint.loadModel(state.source, as: Model.self).model }
        }
        let run = try GraphQATRun(model: model, network: network, state: state, directory: directory, origin: nil, teacher: teacher,
                                  progress: progress)
        try run.core.optimizer.loadStateDict(Checkpoint.optimizerState(file, source: (path as NSString).lastPathComponent))
        run.applyFreezes(epoch: state.epoch)
        return run
    }

    /// The fake-quantized graph of a QAT checkpoint, in evaluation mode:
    /// weights, BN statistics, scales and observer state as saved.
    public static func loadModel(from path: String) throws -> QuantizedGraph {
        let model = try loadCheckpoint(path).model
        model.eval()
        return model
    }

    private static func open(_ path: String) throws -> (file: SafeTensorsFile, name: String, config: Model.Config, qat: String) {
        let (file, name, config) = try Checkpoint.open(path, as: Model.self, kind: kind, hint: "QAT checkpoint")
        guard let json = file.metadata["qat"] else { throw CheckpointError("\(name): metadata has no 'qat' entry") }
        return (file, name, config, json)
    }

    static func loadCheckpoint(_ path: String) throws
        -> (model: QuantizedGraph, network: Model, state: GraphQATState, file: SafeTensorsFile) {
        let (file, name, config, json) = try open(path)
        let state = try Checkpoint.decode(GraphQATState.self, json, what: "qat", file: name)
        guard state.inputShape.count == 3, state.inputShape.allSatisfy({ $0 >= 1 && $0 <= 4096 }) else {
            throw CheckpointError("\(name): metadata 'qat' has an invalid input shape \(state.inputShape)")
        }
        // The structure from a fresh network; every value comes from the file.
        let network: Model
        do { network = try Model(config: config, seed: 0) } catch let e as ModelError { throw CheckpointError("\(name): \(e.description)") }
        let model: QuantizedGraph
        do {
            model = try prepare(network, inputShape: state.inputShape, options: state.options)
        } catch let e as GraphError { throw CheckpointError("\(name): \(e.description)") }
        // Observers switched to moving averages (or LSQ quantizers made) first, so the saved state has somewhere to load into.
        state.options.method.start(model.fakeQuantizers)
        try Checkpoint.load(file, into: model, source: name, extraSuffixes: [Checkpoint.observerStateSuffix])
        try Checkpoint.restoreObserverState(file, into: model, name: name)
        // As after calibration: every quantizer fake-quantizes and keeps observing.
        model.setQuantization(observe: true, fakeQuantize: true)
        return (model, network, state, file)
    }

    /// Sets BN and observer freezes for the epoch about to run.
    func applyFreezes(epoch e: Int) {
        base.options.applyFreezes(epoch: e, quantizers: model.fakeQuantizers) { model.freezeBatchNormStatistics() }
    }

    /// Trains the remaining epochs (or up to `until`), checkpointing after
    /// each; when the last epoch is done, converts to integers and writes
    /// `int8.safetensors` (the native graph file, at the run's widths) beside the checkpoint.
    @discardableResult
    public func run(train: any Dataset, validation: (any Dataset)? = nil, test: (any Dataset)?, until: Int? = nil,
                    onEpochEnd: (EpochSummary) -> Void = { _ in }) throws -> [EpochSummary] {
        let summaries = try core.run(train: train, validation: validation, test: test, until: until, beforeEpoch: applyFreezes(epoch:),
                                     save: saveCheckpoint(to:withOptimizer:), onEpochEnd: onEpochEnd)
        if trainer.epoch == base.training.epochs, let path = core.path(Self.int8File) {
            try model.convertToInt8().write(to: path)
        }
        return summaries
    }

    func saveCheckpoint(to path: String, withOptimizer: Bool) throws {
        let tensors = Checkpoint.qatTensors(of: model, optimizer: withOptimizer ? core.optimizer : nil)
        var metadata = try Checkpoint.header(kind: Self.kind, model: network)
        metadata["qat"] = try Checkpoint.jsonString(state)
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }
}
