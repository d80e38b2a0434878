/// A labelled image-classification dataset held in memory as raw bytes: what
/// the data loader, training, evaluation, calibration, PTQ and QAT take.
///
/// `FashionMNIST` and `CIFAR10` are the two QARep ships; a user's own data
/// only needs to provide its bytes, labels, shape and normalization. Models
/// take their input channels from `channels`; RepVGG-family networks end in
/// a global average pool, so any image size works.
public protocol Dataset: Sendable {
    /// Raw pixels, `count * channels * height * width` bytes, NCHW
    /// (image-major, then channel planes, then rows).
    var images: [UInt8] { get }
    /// One label in `0..<classCount` per image.
    var labels: [UInt8] { get }
    /// Channels per image (C).
    var channels: Int { get }
    /// Image height (H).
    var height: Int { get }
    /// Image width (W).
    var width: Int { get }
    /// Number of classes.
    var classCount: Int { get }
    /// Per-channel mean and standard deviation of the training pixels scaled
    /// to [0, 1]; the loader feeds `(x / 255 - mean[c]) / std[c]`.
    var channelMeans: [Float] { get }
    var channelStds: [Float] { get }
    /// Pixels of zero padding on each side before a random crop, when the
    /// loader augments (2 for 28x28 Fashion-MNIST, 4 for 32x32 CIFAR-10).
    var cropPadding: Int { get }
    /// The images in `range`, in order, as a dataset of the same kind.
    func subset(_ range: Range<Int>) -> Self
}

extension Dataset {
    /// Number of images.
    public var count: Int { labels.count }

    /// Bytes of one image.
    public var pixelsPerImage: Int { channels * height * width }

    /// The normalized value of raw pixel `pixel` in channel `channel`.
    public func normalize(_ pixel: UInt8, channel: Int) -> Float {
        normalizedPixel(pixel, mean: channelMeans[channel], std: channelStds[channel])
    }

    /// A 64-bit FNV-1a hash of the image shape, pixels and labels, in hex:
    /// equal for the same images in the same order, different (with
    /// overwhelming probability) for anything else. Grey images hash as they
    /// did before datasets had channels, so older runs still resume.
    public var fingerprint: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ bytes: UnsafeBufferPointer<UInt8>) {
            for b in bytes { hash = (hash ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        }
        if channels != 1 { withUnsafeBytes(of: UInt64(channels)) { mix($0.bindMemory(to: UInt8.self)) } }
        withUnsafeBytes(of: (UInt64(height), UInt64(width), UInt64(count))) { mix($0.bindMemory(to: UInt8.self)) }
        images.withUnsafeBufferPointer(mix)
        labels.withUnsafeBufferPointer(mix)
        return String(hash, radix: 16)
    }
}

/// `(pixel / 255 - mean) / std`: what the loader feeds for a raw byte.
func normalizedPixel(_ pixel: UInt8, mean: Float, std: Float) -> Float {
    (Float(pixel) / 255 - mean) / std
}

/// The datasets the command line knows, by the name `--dataset` takes.
public enum DatasetName: String, CaseIterable, Codable, Sendable {
    case fashionMNIST = "fashion-mnist"
    case cifar10

    /// Where the files are looked for without `--data-root`.
    public var defaultRoot: String {
        switch self {
        case .fashionMNIST: FashionMNIST.defaultRoot
        case .cifar10: CIFAR10.defaultRoot
        }
    }

    /// Loads one split from `root`, the first `limit` images if given.
    /// - Throws: `DataError` naming the file at fault.
    public func load(_ split: DatasetSplit, root: String, limit: Int? = nil) throws -> any Dataset {
        switch self {
        case .fashionMNIST: try FashionMNIST.load(split: split, root: root, limit: limit)
        case .cifar10: try CIFAR10.load(split: split, root: root, limit: limit)
        }
    }
}

/// Which half of a dataset to load.
public enum DatasetSplit: String, Sendable, CaseIterable {
    /// The training images.
    case train
    /// The test images.
    case test
}
