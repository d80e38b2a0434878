import Foundation

/// A model that its checkpoints can rebuild: a small `Codable` config says
/// what it is, and `init(config:seed:)` builds it. `ModelTrainingRun` and
/// `GraphQATRun` save, resume and reload any such model; the checkpoint's
/// `__metadata__` records `family` and the config as `model` (DESIGN
/// section 6). `ResNet` is one; a recipe's own network can be another.
public protocol CheckpointableModel: Module, Layer {
    associatedtype Config: Codable & Sendable & Equatable
    /// Names the architecture in checkpoints (`resnet`); RepVGG-family files have no family entry.
    static var family: String { get }
    var config: Config { get }
    init(config: Config, seed: UInt64) throws
    /// Channels of the images it takes, and classes it predicts: what data it fits.
    var inputChannels: Int { get }
    var classCount: Int { get }
}

extension ResNet: CheckpointableModel {
    public static var family: String { "resnet" }
    public var inputChannels: Int { config.inChannels }
    public var classCount: Int { config.classes }
}

extension Checkpoint {
    /// The `__metadata__` key that names a non-RepVGG architecture.
    static let familyKey = "family"

    /// The architecture a file holds: its `family` entry, or nil for a
    /// RepVGG-family file (QARep's own, or PyTorch's without metadata).
    public static func family(of file: SafeTensorsFile) -> String? { file.metadata[familyKey] }

    /// `family(of:)` of the file at `path`, and its `kind` entry.
    public static func describe(_ path: String) throws -> (family: String?, kind: String?) {
        let file = try SafeTensorsFile.read(from: path)
        return (family(of: file), file.metadata["kind"])
    }

    /// The metadata every file of a `CheckpointableModel` starts with.
    static func header<Model: CheckpointableModel>(kind: String, model: Model) throws -> [String: String] {
        ["format": format, "format_version": String(formatVersion), "kind": kind, familyKey: Model.family,
         "model": try jsonString(model.config)]
    }

    /// Writes `model` (with its training state and optimizer state, if given)
    /// atomically to `path`: the FP32 checkpoint of a `CheckpointableModel`.
    public static func save<Model: CheckpointableModel>(_ model: Model, to path: String, training: TrainingState? = nil,
                                                        optimizer: (any Optimizer)? = nil) throws {
        var tensors = stateTensors(of: model)
        if let optimizer { tensors.merge(optimizerTensors(optimizer)) { $1 } }
        var metadata = try header(kind: CheckpointKind.train.rawValue, model: model)
        if let training { metadata["training"] = try jsonString(training) }
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }

    /// Optimizer state as safetensors entries under `optimizer.`.
    static func optimizerTensors(_ optimizer: any Optimizer) -> [String: SafeTensor] {
        var tensors: [String: SafeTensor] = [:]
        for (key, values) in optimizer.stateDict() {
            tensors[optimizerPrefix + key] = SafeTensor(floats: values, shape: [values.count])
        }
        return tensors
    }

    /// Reads a file of `Model`'s family and `kind`: the file, its name for
    /// messages, and the model's config.
    /// - Throws: `CheckpointError` naming the file when its format, family, kind or config is wrong.
    static func open<Model: CheckpointableModel>(_ path: String, as _: Model.Type, kind: String, hint: String) throws
        -> (file: SafeTensorsFile, name: String, config: Model.Config) {
        let file = try SafeTensorsFile.read(from: path), name = (path as NSString).lastPathComponent
        try checkFormat(file.metadata, file: name)
        guard family(of: file) == Model.family else {
            throw CheckpointError("\(name): holds a \(family(of: file) ?? "RepVGG-family") model, not \(Model.family)")
        }
        guard file.metadata["kind"] == kind else {
            throw CheckpointError("\(name): not a \(hint) (kind is \(file.metadata["kind"] ?? "missing"))")
        }
        guard let json = file.metadata["model"] else { throw CheckpointError("\(name): metadata has no 'model' entry") }
        return (file, name, try decode(Model.Config.self, json, what: "model", file: name))
    }

    /// Reads an FP32 checkpoint of `Model`, builds the model and loads its
    /// weights strictly; also returns the training state if the file has one.
    public static func loadModel<Model: CheckpointableModel>(_ path: String, as type: Model.Type) throws
        -> (model: Model, training: TrainingState?, file: SafeTensorsFile) {
        let (file, name, config) = try open(path, as: type, kind: CheckpointKind.train.rawValue, hint: "FP32 checkpoint")
        let model: Model
        do { model = try Model(config: config, seed: 0) } catch let e as ModelError { throw CheckpointError("\(name): \(e.description)") }
        try load(file, into: model, source: name)
        let training = try file.metadata["training"].map { try decode(TrainingState.self, $0, what: "training state", file: name) }
        return (model, training, file)
    }

    /// The key suffix under which a fake quantizer's observer state is saved.
    static let observerStateSuffix = ".observer_state"

    /// Every fake quantizer's observer state (running ranges, histograms'
    /// summaries), keyed `<quantizer>.observer_state`: what a QAT checkpoint
    /// adds to the state dict so that a resume needs no recalibration.
    static func observerStateTensors(of model: Module) -> [String: SafeTensor] {
        var tensors: [String: SafeTensor] = [:]
        for (key, m) in model.namedModules() {
            guard let fq = m as? FakeQuantize else { continue }
            let values = fq.observers.flatMap(\.state)
            tensors[key + observerStateSuffix] = SafeTensor(floats: values, shape: [values.count])
        }
        return tensors
    }

    /// What a QAT checkpoint holds: the state dict, every quantizer's
    /// observer state and, if given, the optimizer's state.
    static func qatTensors(of model: Module, optimizer: (any Optimizer)?) -> [String: SafeTensor] {
        var tensors = stateTensors(of: model).merging(observerStateTensors(of: model)) { $1 }
        if let optimizer { tensors.merge(optimizerTensors(optimizer)) { $1 } }
        return tensors
    }

    /// Restores what `observerStateTensors(of:)` saved, strictly: every quantizer's entry must be there.
    static func restoreObserverState(_ file: SafeTensorsFile, into model: Module, name: String) throws {
        for (path, m) in model.namedModules() {
            guard let fq = m as? FakeQuantize else { continue }
            let key = path + observerStateSuffix
            guard let t = file.tensors[key] else { throw CheckpointError.missingKey(key, file: name) }
            let values = try t.floats()
            let per = values.count / max(fq.observers.count, 1)
            do {
                for (c, o) in fq.observers.enumerated() { try o.restore(Array(values[(c * per)..<((c + 1) * per)])) }
            } catch { throw CheckpointError("\(name): key \(key): \(error)") }
        }
    }
}
