import Foundation

/// The Fashion-MNIST dataset (Xiao, Rasul and Vollgraf 2017): 28x28 grey
/// images of clothing in 10 classes, 60,000 for training and 10,000 for test.
///
/// Pixels are kept as raw bytes; `DataLoader` normalises them per batch with
/// `mean` and `std`.
public struct FashionMNIST: Dataset {
    /// Where Debian's `dataset-fashion-mnist` package installs the files.
    public static let defaultRoot = "/usr/share/datasets/fashion-mnist"

    /// Mean of the training pixels scaled to [0, 1].
    public static let mean: Float = 0.2860
    /// Standard deviation of the training pixels scaled to [0, 1].
    public static let std: Float = 0.3530

    /// Number of classes.
    public static let classCount = 10

    /// Class names, indexed by label.
    public static let classNames = [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ]

    /// Which half of the dataset to load: `train` (60,000 images, files
    /// `train-*`) or `test` (10,000 images, files `t10k-*`).
    public typealias Split = DatasetSplit

    /// Raw pixels, `count * channels * height * width` bytes, sample-major
    /// then row-major (NCHW with C = 1).
    public let images: [UInt8]
    /// One label in `0..<classCount` per image.
    public let labels: [UInt8]
    /// Image height in pixels (28 for the real data).
    public let height: Int
    /// Image width in pixels (28 for the real data).
    public let width: Int
    /// Channels per image: always 1 (grey).
    public var channels: Int { 1 }
    public var classCount: Int { Self.classCount }
    public var channelMeans: [Float] { [Self.mean] }
    public var channelStds: [Float] { [Self.std] }
    public var cropPadding: Int { 2 }

    /// Creates a dataset from raw pixels and labels, for example a tiny
    /// synthetic one in a test.
    ///
    /// - Parameters:
    ///   - images: `labels.count * height * width` bytes, sample-major, row-major.
    ///   - labels: one label per image, each `< classCount`.
    ///   - height: image height, > 0.
    ///   - width: image width, > 0.
    /// - Precondition: the sizes agree and every label is `< classCount`.
    public init(images: [UInt8], labels: [UInt8], height: Int = 28, width: Int = 28) {
        precondition(height > 0 && width > 0, "FashionMNIST: image size must be positive, got \(height)x\(width)")
        precondition(images.count == labels.count * height * width,
                     "FashionMNIST: \(images.count) pixels do not make \(labels.count) images of \(height)x\(width)")
        precondition(labels.allSatisfy { Int($0) < FashionMNIST.classCount },
                     "FashionMNIST: labels must be < \(FashionMNIST.classCount)")
        self.images = images
        self.labels = labels
        self.height = height
        self.width = width
    }

    /// Loads one split from `root`.
    ///
    /// Looks for `{train,t10k}-images-idx3-ubyte` and
    /// `{train,t10k}-labels-idx1-ubyte` in `root`, each either plain or with a
    /// `.gz` suffix (the plain file is used when both exist).
    ///
    /// - Parameters:
    ///   - split: `.train` or `.test`.
    ///   - root: directory holding the IDX files.
    ///   - limit: if given, keep only the first `limit` samples (all of them
    ///     if the split has fewer). The whole files are still validated.
    /// - Throws: `DataError` naming the file if a file is missing (the path
    ///   of the expected `.gz` file), unreadable, corrupt or truncated (see
    ///   `IDX`); if the images are not 28x28; if the numbers of labels and
    ///   images differ (naming both files); if a label is 10 or more; or if
    ///   `limit` is negative.
    public static func load(split: Split, root: String = defaultRoot, limit: Int? = nil) throws -> FashionMNIST {
        if let limit, limit < 0 {
            throw DataError(path: root, reason: "sample limit must be >= 0, got \(limit)")
        }
        let imagesPath = try locate("\(filePrefix(split))-images-idx3-ubyte", in: root)
        let labelsPath = try locate("\(filePrefix(split))-labels-idx1-ubyte", in: root)

        let images = try IDX.readImages(at: imagesPath)
        guard images.rows == 28, images.cols == 28 else {
            throw DataError(path: imagesPath, reason: "expected 28x28 images, found \(images.rows)x\(images.cols)")
        }
        let labels = try IDX.readLabels(at: labelsPath)
        guard labels.count == images.count else {
            throw DataError(path: labelsPath,
                            reason: "has \(labels.count) labels but \(imagesPath) has \(images.count) images")
        }
        if let bad = labels.firstIndex(where: { Int($0) >= classCount }) {
            throw DataError(path: labelsPath,
                            reason: "label \(labels[bad]) at index \(bad) is out of range 0..<\(classCount)")
        }

        let dataset = FashionMNIST(validatedImages: images.pixels, labels: labels, height: 28, width: 28)
        if let limit, limit < dataset.count {
            return dataset.subset(0 ..< limit)
        }
        return dataset
    }

    /// The samples in `range`, in order, as a new dataset.
    ///
    /// - Precondition: `range` lies within `0...count`.
    public func subset(_ range: Range<Int>) -> FashionMNIST {
        precondition(range.lowerBound >= 0 && range.upperBound <= count,
                     "FashionMNIST.subset: \(range) is outside 0..<\(count)")
        return FashionMNIST(
            validatedImages: Array(images[range.lowerBound * pixelsPerImage ..< range.upperBound * pixelsPerImage]),
            labels: Array(labels[range]),
            height: height, width: width)
    }

    /// Skips the label scan of the public init for data already checked.
    private init(validatedImages images: [UInt8], labels: [UInt8], height: Int, width: Int) {
        self.images = images
        self.labels = labels
        self.height = height
        self.width = width
    }

    /// The file-name prefix of a split (`train` or `t10k`).
    private static func filePrefix(_ split: Split) -> String { split == .train ? "train" : "t10k" }

    /// `root/name` if it exists, else `root/name.gz` if that exists.
    private static func locate(_ name: String, in root: String) throws -> String {
        let plain = (root as NSString).appendingPathComponent(name)
        let gzipped = plain + ".gz"
        let fileManager = FileManager.default
        if fileManager.fileExists(atPath: plain) { return plain }
        if fileManager.fileExists(atPath: gzipped) { return gzipped }
        throw DataError(path: gzipped, reason: "no such file (nor \(name) without .gz)")
    }
}
