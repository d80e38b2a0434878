import Foundation

/// CIFAR-10 (Krizhevsky 2009): 32x32 colour images in 10 classes, 50,000 for
/// training and 10,000 for test, read from the "binary version" the dataset's
/// page distributes (`cifar-10-binary.tar.gz`, which unpacks to
/// `cifar-10-batches-bin/`).
///
/// Each file is a run of 3,073-byte records: the label (0...9), then the
/// 1,024 red, 1,024 green and 1,024 blue pixels of the image, row-major, so
/// the pixels are already CHW. Training reads `data_batch_1.bin` ...
/// `data_batch_5.bin` in that order, test reads `test_batch.bin`.
public struct CIFAR10: Dataset {
    /// Where the files are looked for by default: the directory the official
    /// archive unpacks to, relative to the working directory.
    public static let defaultRoot = "cifar-10-batches-bin"
    /// Training files, in the order their images are concatenated.
    public static let trainFiles = (1...5).map { "data_batch_\($0).bin" }
    public static let testFile = "test_batch.bin"

    /// Bytes of one record: a label and a 3x32x32 image.
    public static let recordSize = 1 + 3 * 32 * 32
    public static let classCount = 10
    /// Class names, indexed by label.
    public static let classNames = ["airplane", "automobile", "bird", "cat", "deer",
                                    "dog", "frog", "horse", "ship", "truck"]
    /// Per-channel (R, G, B) mean and standard deviation of the 50,000
    /// training images scaled to [0, 1] (over all pixels of a channel).
    public static let means: [Float] = [0.4914, 0.4822, 0.4465]
    public static let stds: [Float] = [0.2470, 0.2435, 0.2616]

    public let images: [UInt8]
    public let labels: [UInt8]
    public var channels: Int { 3 }
    public var height: Int { 32 }
    public var width: Int { 32 }
    public var classCount: Int { Self.classCount }
    public var channelMeans: [Float] { Self.means }
    public var channelStds: [Float] { Self.stds }
    public var cropPadding: Int { 4 }

    /// A dataset from raw CHW pixels and labels, for example a synthetic one in a test.
    /// - Precondition: `images.count == labels.count * 3072` and every label is `< 10`.
    public init(images: [UInt8], labels: [UInt8]) {
        precondition(images.count == labels.count * 3 * 32 * 32,
                     "CIFAR10: \(images.count) bytes do not make \(labels.count) images of 3x32x32")
        precondition(labels.allSatisfy { Int($0) < Self.classCount }, "CIFAR10: labels must be < \(Self.classCount)")
        self.images = images
        self.labels = labels
    }

    private init(validatedImages images: [UInt8], labels: [UInt8]) {
        self.images = images
        self.labels = labels
    }

    /// Loads one split from `root` (the `cifar-10-batches-bin` directory).
    ///
    /// - Parameters:
    ///   - limit: keep only the first `limit` images (all files are still read and checked).
    /// - Throws: `DataError` naming the file if it is missing or unreadable,
    ///   if its size is not a whole number of records, or if a label is 10 or
    ///   more (with its record index); or if `limit` is negative.
    public static func load(split: DatasetSplit, root: String = defaultRoot, limit: Int? = nil) throws -> CIFAR10 {
        if let limit, limit < 0 {
            throw DataError(path: root, reason: "sample limit must be >= 0, got \(limit)")
        }
        var images: [UInt8] = [], labels: [UInt8] = []
        for name in split == .train ? trainFiles : [testFile] {
            let path = (root as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: path) else {
                throw DataError(path: path, reason: "no such file (CIFAR-10 binary version: \(trainFiles.joined(separator: ", ")) and \(testFile))")
            }
            let bytes: [UInt8]
            do { bytes = try readWholeFile(path) } catch { throw DataError(path: path, reason: error.reason) }
            guard !bytes.isEmpty, bytes.count % recordSize == 0 else {
                throw DataError(path: path, reason: "has \(bytes.count) bytes, not a whole number of \(recordSize)-byte records "
                                + "(a label and a 3x32x32 image each); the file is truncated or not CIFAR-10's binary version")
            }
            let records = bytes.count / recordSize
            images.reserveCapacity(images.count + records * (recordSize - 1))
            try bytes.withUnsafeBufferPointer { b in
                for r in 0..<records {
                    let label = b[r * recordSize]
                    guard Int(label) < classCount else {
                        throw DataError(path: path, reason: "record \(r) has label \(label), outside 0..<\(classCount)")
                    }
                    labels.append(label)
                    images.append(contentsOf: b[(r * recordSize + 1)..<((r + 1) * recordSize)])
                }
            }
        }
        let dataset = CIFAR10(validatedImages: images, labels: labels)
        if let limit, limit < dataset.count { return dataset.subset(0..<limit) }
        return dataset
    }

    public func subset(_ range: Range<Int>) -> CIFAR10 {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "CIFAR10.subset: \(range) is outside 0..<\(count)")
        return CIFAR10(validatedImages: Array(images[(range.lowerBound * pixelsPerImage)..<(range.upperBound * pixelsPerImage)]),
                       labels: Array(labels[range]))
    }
}
