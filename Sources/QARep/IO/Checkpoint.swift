import Foundation

/// What a checkpoint file holds, recorded in `__metadata__["kind"]`.
public enum CheckpointKind: String, Codable, Sendable {
    /// A multi-branch FP32 training checkpoint (optionally with optimizer state).
    case train = "fp32-train"
    /// The folded FP32 deploy form (`rbr_reparam` convolutions).
    case deploy = "fp32-deploy"
}

/// Where a training run stands, for exact resumption.
public struct TrainingState: Codable, Sendable, Equatable {
    /// Epochs completed.
    public var epoch: Int
    /// Optimizer steps taken.
    public var step: Int
    /// The run's hyper-parameters (schedule, batch size, seed: with the epoch
    /// the seed fixes the data order, so it is the run's RNG state).
    public var config: TrainingConfig
    /// `l2` or `custom-l2`.
    public var regularization: String
    public var weightDecay: Float
    public var momentum: Float
    public var nesterov: Bool
    /// Best validation top-1 so far and the epoch it was reached (test top-1
    /// in files written before runs held out a validation split).
    public var bestTop1: Double?
    public var bestEpoch: Int?
    /// Test top-1 after the last epoch.
    public var lastTop1: Double?
    /// The kernel thread count the run started with (results can depend on it).
    public var threads: Int?
    /// What the run trains on.
    public var data: DataRecord?
    /// What the epoch in progress has seen, when the checkpoint was written mid-epoch.
    public var totals: EpochTotals?
}

extension TrainingConfig: Equatable {
    public static func == (a: TrainingConfig, b: TrainingConfig) -> Bool {
        a.epochs == b.epochs && a.batchSize == b.batchSize && a.schedule == b.schedule
            && a.labelSmoothing == b.labelSmoothing && a.augment == b.augment && a.seed == b.seed
    }
}

/// A checkpoint read from disk: the tensors and what the metadata says of them.
public struct ModelCheckpoint: Sendable {
    public var kind: CheckpointKind
    public var config: ModelConfig
    public var training: TrainingState?
    public var file: SafeTensorsFile
    /// The path it was read from (for messages).
    public var source: String
}

/// Reading and writing RepVGG-family checkpoints as safetensors (DESIGN section 6).
///
/// Tensor names are the model's `stateDict()` keys (PyTorch names), plus
/// `<bn>.num_batches_tracked` (int64, as PyTorch writes it) and, in training
/// checkpoints, optimizer state under `optimizer.<parameter key>.<state>`.
/// `__metadata__` holds `format` (`qarep`), `format_version`, `kind`,
/// `model` (the `ModelConfig` as JSON) and `training` (`TrainingState` as JSON).
public enum Checkpoint {
    public static let format = "qarep"
    public static let formatVersion = 1
    static let optimizerPrefix = "optimizer."

    /// Writes `model` (and optimizer state if given) atomically to `path`.
    public static func save(_ model: RepVGGNet, to path: String, training: TrainingState? = nil,
                            optimizer: (any Optimizer)? = nil) throws {
        var tensors = stateTensors(of: model)
        if let optimizer { tensors.merge(optimizerTensors(optimizer)) { $1 } }
        var metadata = try header(kind: (model.isDeployed ? CheckpointKind.deploy : .train).rawValue, config: model.config)
        if let training { metadata["training"] = try jsonString(training) }
        try SafeTensorsFile(tensors: tensors, metadata: metadata).write(to: path)
    }

    /// The model's tensors as safetensors entries, with `num_batches_tracked`.
    public static func stateTensors(of model: Module) -> [String: SafeTensor] {
        var tensors: [String: SafeTensor] = [:]
        for (key, t) in model.stateDict() { tensors[key] = SafeTensor(floats: t.data, shape: t.shape) }
        for (path, m) in model.namedModules() {
            if let bn = m as? BatchNorm2d {
                tensors[(path.isEmpty ? "" : path + ".") + "num_batches_tracked"] = SafeTensor(int64: [bn.numBatchesTracked], shape: [])
            }
        }
        return tensors
    }

    /// Reads a checkpoint. A file without QARep metadata (saved from PyTorch
    /// with `safetensors.torch.save_file(model.state_dict())`) gets its
    /// config from `fallback`, or inferred from its tensor names and shapes.
    /// - Throws: `CheckpointError` naming the file and the problem.
    public static func read(_ path: String, fallback: ModelConfig? = nil) throws -> ModelCheckpoint {
        let file = try SafeTensorsFile.read(from: path)
        let name = (path as NSString).lastPathComponent
        let meta = file.metadata
        // PyTorch's own files have no QARep metadata; anything that claims a format must be ours.
        if meta["format"] != nil || meta["format_version"] != nil { try checkFormat(meta, file: name) }
        try refuseOtherFamily(file, name: name)
        let deployedKeys = file.tensors.keys.contains { $0.hasSuffix("rbr_reparam.weight") }
        var kind: CheckpointKind = deployedKeys ? .deploy : .train
        if let k = meta["kind"] {
            guard let parsed = CheckpointKind(rawValue: k) else {
                throw CheckpointError("\(name): checkpoint kind '\(k)' is not an FP32 model (expected fp32-train or fp32-deploy)")
            }
            kind = parsed
        }
        let config: ModelConfig
        if let json = meta["model"] {
            config = try decode(ModelConfig.self, json, what: "model config", file: name)
        } else if let fallback {
            config = fallback
        } else {
            config = try inferConfig(from: file, name: name)
        }
        let training = try meta["training"].map { try decode(TrainingState.self, $0, what: "training state", file: name) }
        return ModelCheckpoint(kind: kind, config: config, training: training, file: file, source: name)
    }

    /// Builds the model a checkpoint describes and loads its weights strictly.
    public static func makeModel(_ checkpoint: ModelCheckpoint) throws -> RepVGGNet {
        try checkFits(checkpoint.config, checkpoint.file, name: checkpoint.source)
        var model = try RepVGGNet(config: checkpoint.config)
        if checkpoint.kind == .deploy { model = model.deployed() }
        try load(checkpoint.file, into: model, source: checkpoint.source)
        return model
    }

    /// Reads and builds in one call.
    public static func loadModel(_ path: String, fallback: ModelConfig? = nil) throws -> RepVGGNet {
        try makeModel(read(path, fallback: fallback))
    }

    /// Copies the file's tensors into `model`'s state, strictly: every model
    /// key must be present with the same shape, and every file key must be
    /// used (optimizer state and `num_batches_tracked` aside).
    /// - Throws: `CheckpointError` naming the first offending key.
    public static func load(_ file: SafeTensorsFile, into model: Module, source: String, extraSuffixes: [String] = []) throws {
        let state = model.stateDict()
        let modelKeys = Set(state.map(\.key))
        var batchNorms: [String: BatchNorm2d] = [:]
        for (path, m) in model.namedModules() { if let bn = m as? BatchNorm2d { batchNorms[path] = bn } }
        for key in file.tensors.keys.sorted() where !modelKeys.contains(key) && !key.hasPrefix(optimizerPrefix) {
            if extraSuffixes.contains(where: { key.hasSuffix($0) }) { continue }
            if key.hasSuffix("num_batches_tracked"), batchNorms[String(key.dropLast("num_batches_tracked".count + 1))] != nil
                || (key == "num_batches_tracked" && batchNorms[""] != nil) { continue }
            throw CheckpointError.unexpectedKey(key, file: source)
        }
        var values: [(Tensor, [Float])] = []
        for (key, tensor) in state {
            guard let entry = file.tensors[key] else { throw CheckpointError.missingKey(key, file: source) }
            guard entry.shape == tensor.shape else {
                throw CheckpointError.shapeMismatch(key: key, file: source, fileShape: entry.shape, modelShape: tensor.shape)
            }
            let floats: [Float]
            do { floats = try entry.floats() } catch {
                throw CheckpointError("\(source): key \(key): expected F32 or F16 values, file has \(entry.dtype.rawValue)")
            }
            guard floats.allSatisfy({ $0.isFinite }) else {
                throw CheckpointError("\(source): key \(key) holds NaN or infinite values")
            }
            values.append((tensor, floats))
        }
        // Only assign once everything checked out: a failed load leaves the model as it was.
        for (tensor, v) in values { tensor.assign(v) }
        for (path, bn) in batchNorms {
            let key = path.isEmpty ? "num_batches_tracked" : path + ".num_batches_tracked"
            if let n = try? file.tensors[key]?.int64(), n.count == 1 { bn.numBatchesTracked = n[0] }
        }
    }

    /// Optimizer state stored in a training checkpoint.
    public static func optimizerState(_ file: SafeTensorsFile, source: String) throws -> [String: [Float]] {
        var out: [String: [Float]] = [:]
        for (key, t) in file.tensors where key.hasPrefix(optimizerPrefix) {
            out[String(key.dropFirst(optimizerPrefix.count))] = try t.floats()
        }
        return out
    }

    /// How a file without metadata or inferable names is made readable: the
    /// end of the error `read(_:fallback:)` throws for it.
    public static let noConfigHint = "give its model config as the fallback"

    /// Infers widths, block counts and block kind from PyTorch names and
    /// shapes (files written without QARep metadata).
    static func inferConfig(from file: SafeTensorsFile, name: String) throws -> ModelConfig {
        let keys = file.tensors.keys
        func shape(_ k: String) -> [Int]? { file.tensors[k]?.shape }
        guard let stem = shape("stage0.rbr_dense.conv.weight") ?? shape("stage0.rbr_reparam.weight"),
              let head = shape("linear.weight"), stem.count == 4, head.count == 2 else {
            throw CheckpointError("\(name): no QARep metadata and no RepVGG stage0/linear tensors to infer the model from; \(noConfigHint)")
        }
        var widths = [stem[0]], blocks = [1]
        for s in 1...4 {
            var b = 0
            var width = 0
            while let w = shape("stage\(s).\(b).rbr_dense.conv.weight") ?? shape("stage\(s).\(b).rbr_reparam.weight") {
                width = w[0]; b += 1
            }
            guard b > 0 else { throw CheckpointError("\(name): no blocks found for stage \(s)") }
            widths.append(width); blocks.append(b)
        }
        let kind: BlockKind
        if keys.contains(where: { $0.hasSuffix(".bn.weight") && !$0.contains("rbr_") }) {
            kind = .qarepvgg
        } else if keys.contains(where: { $0.hasSuffix("rbr_1x1.conv.weight") }) {
            kind = keys.contains(where: { $0.contains("rbr_identity.") }) ? .repvgg : .s2
        } else if keys.contains(where: { $0.hasSuffix("rbr_1x1.weight") }) {
            kind = .s3
        } else {
            kind = .qarepvgg  // a deployed file: the kind no longer matters
        }
        let config = ModelConfig.namedConfigs.first { $0.value.widths == widths && $0.value.blocks == blocks }?.key ?? "custom"
        return ModelConfig(name: config, widths: widths, blocks: blocks, block: kind, classes: head[0], inChannels: stem[1])
    }

    /// The `__metadata__` entries every QARep file starts with: format,
    /// version, kind, and the model config as JSON.
    static func header(kind: String, config: ModelConfig) throws -> [String: String] {
        ["format": format, "format_version": String(formatVersion), "kind": kind, "model": try jsonString(config)]
    }

    /// Reads a QARep file of `kind` whose metadata also holds `section` (JSON):
    /// the file, its name for messages, its model config and that section.
    /// - Throws: `CheckpointError` naming the file when the kind or an entry is wrong.
    static func open(_ path: String, kind: String, section: String, hint: String) throws
        -> (file: SafeTensorsFile, name: String, config: ModelConfig, section: String) {
        try open(SafeTensorsFile.read(from: path), name: (path as NSString).lastPathComponent, kind: kind, section: section, hint: hint)
    }

    /// `open` of a file already parsed.
    static func open(_ file: SafeTensorsFile, name: String, kind: String, section: String, hint: String) throws
        -> (file: SafeTensorsFile, name: String, config: ModelConfig, section: String) {
        guard file.metadata["kind"] == kind, let json = file.metadata[section], let modelJSON = file.metadata["model"] else {
            if file.metadata["format"] == format { try checkFormat(file.metadata, file: name) }
            throw CheckpointError("\(name): not a \(hint) (kind is \(file.metadata["kind"] ?? "missing"))")
        }
        try checkFormat(file.metadata, file: name)
        try refuseOtherFamily(file, name: name)
        return (file, name, try decode(ModelConfig.self, modelJSON, what: "model", file: name), json)
    }

    /// Refuses a file of another architecture where a RepVGG-family one is read.
    static func refuseOtherFamily(_ file: SafeTensorsFile, name: String) throws {
        if let family = family(of: file) {
            throw CheckpointError("\(name): holds a \(family) model; this reads RepVGG-family models only")
        }
    }

    /// Refuses a config that is invalid, or that describes more weights than
    /// the file holds values, before any memory is allocated for the model.
    static func checkFits(_ config: ModelConfig, _ file: SafeTensorsFile, name: String) throws {
        do { try config.validate() } catch let e as ModelError { throw CheckpointError("\(name): \(e.description)") }
        let held = file.tensors.values.reduce(0) { $0 + ($1.elementCount ?? 0) }
        guard config.kernelWeightCount <= held else {
            throw CheckpointError("\(name): its model config needs \(config.kernelWeightCount) kernel weights, the file holds \(held) values")
        }
    }

    /// Refuses metadata that is not QARep's `format`, or whose `format_version`
    /// is missing, not a positive integer, or newer than this build reads.
    static func checkFormat(_ meta: [String: String], file name: String) throws {
        guard meta["format"] == format else {
            throw CheckpointError("\(name): format '\(meta["format"] ?? "missing")' is not a QARep file (expected '\(format)')")
        }
        guard let v = meta["format_version"], let version = Int(v), version >= 1 else {
            throw CheckpointError("\(name): format_version '\(meta["format_version"] ?? "missing")' is not a positive integer")
        }
        guard version <= formatVersion else {
            throw CheckpointError("\(name): format version \(version) is newer than this qarep understands (\(formatVersion))")
        }
    }

    /// A fresh run directory: created if needed, refused if it already holds a run's `last` file.
    static func prepareRunDirectory(_ directory: String?, lastFile: String) throws {
        guard let directory else { return }
        let last = (directory as NSString).appendingPathComponent(lastFile)
        if FileManager.default.fileExists(atPath: last) {
            throw CheckpointError("\(last) already exists: resume that run, or choose another directory")
        }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    static func jsonString<T: Encodable>(_ value: T) throws -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try enc.encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ json: String, what: String, file: String) throws -> T {
        do { return try JSONDecoder().decode(type, from: Data(json.utf8)) } catch {
            throw CheckpointError("\(file): metadata '\(what)' is not valid: \(error)")
        }
    }
}
