/// What a run trains on, recorded in its checkpoints so that a resumed run
/// can restore it and check that it is the same data.
public struct DataRecord: Codable, Sendable, Equatable {
    /// Where the data came from, as whoever started the run described it
    /// (`qarep` records its data root and limits); nil when unknown.
    public var origin: DataOrigin?
    /// Number of training images.
    public var trainImages: Int
    /// `Dataset.fingerprint` of the training set.
    public var trainFingerprint: String

    public init(origin: DataOrigin?, train: any Dataset) {
        self.origin = origin
        trainImages = train.count
        trainFingerprint = train.fingerprint
    }

    /// Refuses a training set other than the recorded one.
    /// - Throws: `ModelError` saying how they differ.
    public func check(_ train: any Dataset) throws {
        guard train.count == trainImages, train.fingerprint == trainFingerprint else {
            throw ModelError("the training set (\(train.count) images, fingerprint \(train.fingerprint)) is not the one this run "
                             + "started with (\(trainImages) images, fingerprint \(trainFingerprint)); continuing on other data "
                             + "would not continue the same run")
        }
    }
}

/// A data directory and how much of it a run uses.
public struct DataOrigin: Codable, Sendable, Equatable {
    /// Which dataset (`--dataset`); nil in runs saved before there was a
    /// choice, which all used Fashion-MNIST.
    public var dataset: DatasetName?
    public var root: String
    public var trainLimit: Int?
    public var testLimit: Int?
    /// Training images held out, from the end, for validation.
    public var validationImages: Int?

    public init(dataset: DatasetName? = nil, root: String, trainLimit: Int? = nil, testLimit: Int? = nil,
                validationImages: Int? = nil) {
        self.dataset = dataset; self.root = root; self.trainLimit = trainLimit; self.testLimit = testLimit
        self.validationImages = validationImages
    }
}
