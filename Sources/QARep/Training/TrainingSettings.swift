/// The hyper-parameters every training run shares, FP32 training and QAT
/// alike: length, batch, SGD with momentum, the warm-up + cosine schedule,
/// label smoothing, augmentation and the seed.
public struct TrainingSettings: Sendable, Equatable {
    public var epochs: Int
    public var batchSize: Int
    /// The schedule's peak, reached after the warm-up.
    public var learningRate: Float
    /// Linear warm-up epochs before the cosine decay.
    public var warmupEpochs: Int
    public var momentum: Float = 0.9
    public var nesterov = false
    /// L2 penalty on kernels (not on BN parameters and biases).
    public var weightDecay: Float = 1e-4
    public var labelSmoothing: Float = 0
    /// Random crop and flip.
    public var augment = true
    /// Seeds initialization, shuffling and augmentation.
    public var seed: UInt64 = 0

    public init(epochs: Int, batchSize: Int = 64, learningRate: Float = 0.1, warmupEpochs: Int = 0) {
        self.epochs = epochs; self.batchSize = batchSize
        self.learningRate = learningRate; self.warmupEpochs = warmupEpochs
    }

    /// Rejects settings that cannot train, with a message naming the setting.
    public func validate() throws {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw ModelError(message()) }
        }
        try check(epochs > 0, "epochs must be positive, got \(epochs)")
        try check(batchSize > 1, "batchSize must be at least 2 (batch norm needs a batch), got \(batchSize)")
        try check(learningRate > 0 && learningRate.isFinite, "learningRate must be a positive number, got \(learningRate)")
        try check(warmupEpochs >= 0 && warmupEpochs <= epochs, "warmupEpochs must be between 0 and epochs (\(epochs)), got \(warmupEpochs)")
        try check(momentum >= 0 && momentum < 1, "momentum must be in [0, 1), got \(momentum)")
        try check(!nesterov || momentum > 0, "nesterov needs a momentum above 0")
        try check(weightDecay >= 0 && weightDecay.isFinite, "weightDecay must be a number >= 0, got \(weightDecay)")
        try check(labelSmoothing >= 0 && labelSmoothing < 1, "labelSmoothing must be in [0, 1), got \(labelSmoothing)")
    }

    /// The trainer's configuration for a training set of `trainImages`:
    /// warm-up then cosine over whole epochs of `trainImages / batchSize` steps.
    public func trainingConfig(trainImages: Int) throws -> TrainingConfig {
        let steps = trainImages / batchSize
        guard steps > 0 else { throw ModelError("training set of \(trainImages) images is smaller than one batch of \(batchSize)") }
        let schedule = LearningRateSchedule.warmupCosine(base: learningRate, warmup: warmupEpochs * steps, total: epochs * steps)
        return TrainingConfig(epochs: epochs, batchSize: batchSize, schedule: schedule,
                              labelSmoothing: labelSmoothing, augment: augment, seed: seed)
    }
}

extension TrainingSettings: Codable {
    private enum CodingKeys: String, CodingKey {
        case epochs, batchSize, learningRate, warmupEpochs, momentum, nesterov, weightDecay, labelSmoothing, augment, seed
    }

    /// Keys a file written before a setting existed lacks take their defaults.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(epochs: try c.decode(Int.self, forKey: .epochs))
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T { try c.decodeIfPresent(T.self, forKey: key) ?? fallback }
        batchSize = try value(.batchSize, batchSize); learningRate = try value(.learningRate, learningRate)
        warmupEpochs = try value(.warmupEpochs, warmupEpochs); momentum = try value(.momentum, momentum)
        nesterov = try value(.nesterov, nesterov); weightDecay = try value(.weightDecay, weightDecay)
        labelSmoothing = try value(.labelSmoothing, labelSmoothing); augment = try value(.augment, augment)
        seed = try value(.seed, seed)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(epochs, forKey: .epochs); try c.encode(batchSize, forKey: .batchSize)
        try c.encode(learningRate, forKey: .learningRate); try c.encode(warmupEpochs, forKey: .warmupEpochs)
        try c.encode(momentum, forKey: .momentum); try c.encode(nesterov, forKey: .nesterov)
        try c.encode(weightDecay, forKey: .weightDecay); try c.encode(labelSmoothing, forKey: .labelSmoothing)
        try c.encode(augment, forKey: .augment); try c.encode(seed, forKey: .seed)
    }
}
