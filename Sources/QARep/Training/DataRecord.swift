/// What a run trains on, recorded in its checkpoints so that a resumed run
/// can restore it and check that it is the same data.
public struct DataRecord: Codable, Sendable, Equatable {
    /// Where the data came from, as whoever started the run described it
    /// (`qarep` records its data root and limits); nil when unknown.
    public var origin: DataOrigin?
    /// Number of training images.
    public var trainImages: Int
    /// `FashionMNIST.fingerprint` of the training set.
    public var trainFingerprint: String

    public init(origin: DataOrigin?, train: FashionMNIST) {
        self.origin = origin
        trainImages = train.count
        trainFingerprint = train.fingerprint
    }

    /// Refuses a training set other than the recorded one.
    /// - Throws: `ModelError` saying how they differ.
    public func check(_ train: FashionMNIST) throws {
        guard train.count == trainImages, train.fingerprint == trainFingerprint else {
            throw ModelError("the training set (\(train.count) images, fingerprint \(train.fingerprint)) is not the one this run "
                             + "started with (\(trainImages) images, fingerprint \(trainFingerprint)); continuing on other data "
                             + "would not continue the same run")
        }
    }
}

/// A data directory and how much of it a run uses.
public struct DataOrigin: Codable, Sendable, Equatable {
    public var root: String
    public var trainLimit: Int?
    public var testLimit: Int?
    /// Training images held out, from the end, for validation.
    public var validationImages: Int?

    public init(root: String, trainLimit: Int? = nil, testLimit: Int? = nil, validationImages: Int? = nil) {
        self.root = root; self.trainLimit = trainLimit; self.testLimit = testLimit
        self.validationImages = validationImages
    }
}

extension FashionMNIST {
    /// A 64-bit FNV-1a hash of the image size, pixels and labels, in hex:
    /// equal for the same images in the same order, different (with
    /// overwhelming probability) for anything else.
    public var fingerprint: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ bytes: UnsafeBufferPointer<UInt8>) {
            for b in bytes { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        }
        withUnsafeBytes(of: (UInt64(height), UInt64(width), UInt64(count))) { mix($0.bindMemory(to: UInt8.self)) }
        images.withUnsafeBufferPointer(mix)
        labels.withUnsafeBufferPointer(mix)
        return String(hash, radix: 16)
    }
}
