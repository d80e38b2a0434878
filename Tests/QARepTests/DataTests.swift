import CZlib
import Foundation
import QARep
import Testing

// MARK: - Helpers

/// A fresh temporary directory, removed by `cleanup()`.
private struct TempDir {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("qarep-data-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }

    func cleanup() { try? FileManager.default.removeItem(at: url) }
}

private func bigEndian(_ values: [UInt32]) -> [UInt8] {
    values.flatMap { v in [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
}

private func idxImages(count: Int, rows: Int, cols: Int, pixels: [UInt8]) -> [UInt8] {
    bigEndian([0x0803, UInt32(count), UInt32(rows), UInt32(cols)]) + pixels
}

private func idxLabels(_ labels: [UInt8]) -> [UInt8] {
    bigEndian([0x0801, UInt32(labels.count)]) + labels
}

private func writePlain(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

private func writeGzip(_ bytes: [UInt8], to path: String) throws {
    let file = try #require(gzopen(path, "wb"))
    let written = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
    #expect(Int(written) == bytes.count)
    #expect(gzclose(file) == Z_OK)
}

/// Deterministic pseudo-random bytes (a simple LCG, independent of the code under test).
private func pattern(_ count: Int, seed: UInt32 = 1) -> [UInt8] {
    var x = seed
    return (0 ..< count).map { _ in
        x = x &* 1_664_525 &+ 1_013_904_223
        return UInt8(x >> 24)
    }
}

/// Error description thrown by `body`, or nil if nothing was thrown.
private func errorText(_ body: () throws -> Void) -> String? {
    do {
        try body()
        return nil
    } catch {
        return String(describing: error)
    }
}

/// A dataset of `count` 28x28 images where image `i` has pixel 0 = `i % 256`,
/// pixel 1 = `i / 256`, and the rest a pattern; label `i % 10`.
private func syntheticDataset(count: Int, height: Int = 28, width: Int = 28) -> FashionMNIST {
    let pixelsPerImage = height * width
    var images = pattern(count * pixelsPerImage, seed: 99)
    for i in 0 ..< count {
        images[i * pixelsPerImage] = UInt8(i % 256)
        images[i * pixelsPerImage + 1] = UInt8(i / 256)
    }
    return FashionMNIST(images: images, labels: (0 ..< count).map { UInt8($0 % 10) }, height: height, width: width)
}

private func allBatches(_ loader: DataLoader, epoch: Int) -> [Batch] {
    Array(loader.batches(epoch: epoch))
}

private let fashionRoot = FashionMNIST.defaultRoot
private let realDataPresent =
    FileManager.default.fileExists(atPath: fashionRoot + "/train-images-idx3-ubyte.gz")
    || FileManager.default.fileExists(atPath: fashionRoot + "/train-images-idx3-ubyte")

// MARK: - IDX

@Suite struct IDXTests {
    @Test(arguments: [false, true])
    func imagesAndLabelsRoundTrip(gzipped: Bool) throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let pixels = pattern(3 * 5 * 4)
        let labels: [UInt8] = [7, 0, 9]
        let imagesPath = dir.path("images" + (gzipped ? ".gz" : ""))
        let labelsPath = dir.path("labels" + (gzipped ? ".gz" : ""))
        let write = gzipped ? writeGzip : writePlain
        try write(idxImages(count: 3, rows: 5, cols: 4, pixels: pixels), imagesPath)
        try write(idxLabels(labels), labelsPath)

        let images = try IDX.readImages(at: imagesPath)
        #expect(images.count == 3)
        #expect(images.rows == 5)
        #expect(images.cols == 4)
        #expect(images.pixels == pixels)
        #expect(try IDX.readLabels(at: labelsPath) == labels)
    }

    @Test func truncatedPlainFileNamesFileAndCounts() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.path("short-images-idx3-ubyte")
        try writePlain(idxImages(count: 3, rows: 5, cols: 4, pixels: pattern(50)), to: path)
        let text = try #require(errorText { _ = try IDX.readImages(at: path) })
        #expect(text == "\(path): truncated: expected 60 bytes of pixel data, found 50")
    }

    @Test func truncatedHeader() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.path("tiny-labels")
        try writePlain([0, 0, 8, 1, 0], to: path)
        let text = try #require(errorText { _ = try IDX.readLabels(at: path) })
        #expect(text.hasPrefix(path + ": truncated"))
        #expect(text.contains("header"))
    }

    @Test func truncatedGzipStream() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let full = dir.path("full.gz"), cut = dir.path("cut-images-idx3-ubyte.gz")
        try writeGzip(idxImages(count: 50, rows: 28, cols: 28, pixels: pattern(50 * 784)), to: full)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: full))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cut))
        let text = try #require(errorText { _ = try IDX.readImages(at: cut) })
        #expect(text.hasPrefix(cut + ": truncated: expected 39200 bytes of pixel data, found "))
    }

    @Test func gzipMissingOnlyItsTrailerIsTruncated() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let full = dir.path("full.gz"), cut = dir.path("notrailer.gz")
        try writeGzip(idxLabels(pattern(1000)), to: full)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: full))
        try bytes.prefix(bytes.count - 4).write(to: URL(fileURLWithPath: cut))  // drop ISIZE
        let text = try #require(errorText { _ = try IDX.readLabels(at: cut) })
        #expect(text.hasPrefix(cut + ": truncated"))
    }

    @Test func corruptGzipStream() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let full = dir.path("good.gz"), bad = dir.path("bad-labels.gz")
        try writeGzip(idxLabels(pattern(5000)), to: full)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: full)))
        for i in stride(from: 20, to: bytes.count - 8, by: 7) { bytes[i] ^= 0x5A }
        try writePlain(bytes, to: bad)
        let text = try #require(errorText { _ = try IDX.readLabels(at: bad) })
        #expect(text.hasPrefix(bad + ": "))
        #expect(!text.contains("\n"))
    }

    @Test func wrongMagic() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.path("labels-not-images")
        try writePlain(idxLabels([1, 2, 3]), to: path)
        let text = try #require(errorText { _ = try IDX.readImages(at: path) })
        #expect(text == "\(path): wrong magic number 0x00000801, expected 0x00000803 (IDX images)")

        let imagesPath = dir.path("images-not-labels")
        try writePlain(idxImages(count: 1, rows: 1, cols: 1, pixels: [0]), to: imagesPath)
        let text2 = try #require(errorText { _ = try IDX.readLabels(at: imagesPath) })
        #expect(text2 == "\(imagesPath): wrong magic number 0x00000803, expected 0x00000801 (IDX labels)")
    }

    @Test func trailingBytes() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        for gzipped in [false, true] {
            let path = dir.path("long-images" + (gzipped ? ".gz" : ""))
            let bytes = idxImages(count: 2, rows: 3, cols: 3, pixels: pattern(18)) + [1, 2, 3]
            try (gzipped ? writeGzip : writePlain)(bytes, path)
            let text = try #require(errorText { _ = try IDX.readImages(at: path) })
            #expect(text == "\(path): 3 unexpected bytes after 18 bytes of pixel data")
        }
    }

    @Test func zeroDimension() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let path = dir.path("empty-images")
        try writePlain(idxImages(count: 0, rows: 28, cols: 28, pixels: []), to: path)
        let text = try #require(errorText { _ = try IDX.readImages(at: path) })
        #expect(text.hasPrefix(path + ": bad header: image count is 0"))
    }

    @Test func missingFile() throws {
        let path = "/nonexistent-qarep-dir/train-images-idx3-ubyte.gz"
        let text = try #require(errorText { _ = try IDX.readImages(at: path) })
        #expect(text == "\(path): no such file")
    }
}

// MARK: - FashionMNIST loading

@Suite struct FashionMNISTLoadTests {
    /// Writes a split into `dir` with the standard file names.
    private func writeSplit(_ prefix: String, in dir: TempDir, images count: Int, labels: [UInt8],
                            gzipped: Bool, rows: Int = 28) throws {
        let write = gzipped ? writeGzip : writePlain
        let suffix = gzipped ? ".gz" : ""
        try write(idxImages(count: count, rows: rows, cols: 28, pixels: pattern(count * rows * 28)),
                  dir.path("\(prefix)-images-idx3-ubyte\(suffix)"))
        try write(idxLabels(labels), dir.path("\(prefix)-labels-idx1-ubyte\(suffix)"))
    }

    @Test(arguments: [false, true])
    func loadsFromRootAndLimits(gzipped: Bool) throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let labels: [UInt8] = [3, 1, 4, 1, 5, 9]
        try writeSplit("t10k", in: dir, images: 6, labels: labels, gzipped: gzipped)

        let all = try FashionMNIST.load(split: .test, root: dir.url.path)
        #expect(all.count == 6)
        #expect(all.labels == labels)
        #expect(all.images == pattern(6 * 784))
        #expect((all.height, all.width, all.channels) == (28, 28, 1))

        let firstFour = try FashionMNIST.load(split: .test, root: dir.url.path, limit: 4)
        #expect(firstFour.count == 4)
        #expect(firstFour.labels == Array(labels.prefix(4)))
        #expect(firstFour.images == Array(pattern(6 * 784).prefix(4 * 784)))

        #expect(try FashionMNIST.load(split: .test, root: dir.url.path, limit: 100).count == 6)
    }

    @Test func countMismatchNamesBothFiles() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try writeSplit("train", in: dir, images: 5, labels: [1, 2, 3, 4], gzipped: true)
        let text = try #require(errorText { _ = try FashionMNIST.load(split: .train, root: dir.url.path) })
        #expect(text.contains("train-labels-idx1-ubyte.gz"))
        #expect(text.contains("train-images-idx3-ubyte.gz"))
        #expect(text.contains("4 labels"))
        #expect(text.contains("5 images"))
    }

    @Test func labelOutOfRange() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try writeSplit("train", in: dir, images: 3, labels: [1, 10, 2], gzipped: false)
        let text = try #require(errorText { _ = try FashionMNIST.load(split: .train, root: dir.url.path) })
        #expect(text.hasPrefix(dir.path("train-labels-idx1-ubyte") + ": label 10 at index 1"))
    }

    @Test func wrongImageSize() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        try writeSplit("train", in: dir, images: 2, labels: [1, 2], gzipped: false, rows: 27)
        let text = try #require(errorText { _ = try FashionMNIST.load(split: .train, root: dir.url.path) })
        #expect(text.hasPrefix(dir.path("train-images-idx3-ubyte") + ": expected 28x28 images"))
    }

    @Test func missingFilesNameTheExpectedPath() throws {
        let dir = try TempDir()
        defer { dir.cleanup() }
        let text = try #require(errorText { _ = try FashionMNIST.load(split: .train, root: dir.url.path) })
        #expect(text.hasPrefix(dir.path("train-images-idx3-ubyte.gz") + ": no such file"))

        // Images present, labels missing.
        try writeGzip(idxImages(count: 1, rows: 28, cols: 28, pixels: pattern(784)),
                      to: dir.path("t10k-images-idx3-ubyte.gz"))
        let text2 = try #require(errorText { _ = try FashionMNIST.load(split: .test, root: dir.url.path) })
        #expect(text2.hasPrefix(dir.path("t10k-labels-idx1-ubyte.gz") + ": no such file"))
    }

    @Test func subsetKeepsSamplesInOrder() {
        let data = syntheticDataset(count: 10)
        let part = data.subset(3 ..< 7)
        #expect(part.count == 4)
        #expect(part.labels == Array(data.labels[3 ..< 7]))
        #expect(part.images == Array(data.images[3 * 784 ..< 7 * 784]))
        #expect(data.subset(5 ..< 5).count == 0)
    }

    @Test(.enabled(if: realDataPresent, "Fashion-MNIST is not installed in \(fashionRoot)"))
    func realDataset() throws {
        let train = try FashionMNIST.load(split: .train)
        let test = try FashionMNIST.load(split: .test)
        #expect(train.count == 60000)
        #expect(test.count == 10000)
        #expect(train.images.count == 60000 * 784)
        #expect(test.images.count == 10000 * 784)
        var histogram = [Int](repeating: 0, count: 10)
        for label in train.labels { histogram[Int(label)] += 1 }
        #expect(histogram == [Int](repeating: 6000, count: 10))

        // The published normalisation constants match the training pixels.
        var pixelCounts = [Int](repeating: 0, count: 256)
        train.images.withUnsafeBufferPointer { pixels in
            for p in pixels { pixelCounts[Int(p)] += 1 }
        }
        let n = Double(train.images.count)
        let mean = pixelCounts.enumerated().reduce(0.0) { $0 + Double($1.offset) / 255 * Double($1.element) } / n
        let meanOfSquares = pixelCounts.enumerated().reduce(0.0) {
            $0 + (Double($1.offset) / 255) * (Double($1.offset) / 255) * Double($1.element)
        } / n
        let std = (meanOfSquares - mean * mean).squareRoot()
        #expect(abs(mean - Double(FashionMNIST.mean)) < 1e-3)
        #expect(abs(std - Double(FashionMNIST.std)) < 1e-3)
    }
}

// MARK: - Random numbers

@Suite struct SplitMix64Tests {
    @Test func referenceValues() {
        // Reference outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        var rng = SplitMix64(seed: 0)
        #expect(rng.next() == 0xE220_A839_7B1D_CDAF)
        #expect(rng.next() == 0x6E78_9E6A_A1B9_65F4)
        #expect(rng.next() == 0x06C4_5D18_8009_454F)
    }

    @Test func codableRoundTripContinuesTheStream() throws {
        var rng = SplitMix64(seed: 12345)
        _ = rng.next()
        let data = try JSONEncoder().encode(rng)
        var restored = try JSONDecoder().decode(SplitMix64.self, from: data)
        #expect(restored.state == rng.state)
        #expect((0 ..< 5).map { _ in restored.next() } == (0 ..< 5).map { _ in rng.next() })
    }

    @Test func streamsAreDeterministicAndDistinct() {
        var a = SplitMix64.stream(seed: 1, index: 0)
        var b = SplitMix64.stream(seed: 1, index: 0)
        #expect(a.next() == b.next())
        let firsts = Set((0 ..< 1000 as Range<UInt64>).map { i -> UInt64 in
            var r = SplitMix64.stream(seed: 1, index: i)
            return r.next()
        })
        #expect(firsts.count == 1000)
        var c = SplitMix64.stream(seed: 2, index: 0)
        var d = SplitMix64.stream(seed: 1, index: 0)
        #expect(c.next() != d.next())
    }

    @Test func uniformStaysInRangeAndCoversIt() {
        var rng = SplitMix64(seed: 3)
        var counts = [Int](repeating: 0, count: 5)
        for _ in 0 ..< 5000 { counts[rng.uniform(below: 5)] += 1 }
        #expect(counts.allSatisfy { $0 > 850 && $0 < 1150 })
        let f = rng.uniformFloat()
        #expect(f >= 0 && f < 1)
    }
}

// MARK: - DataLoader

@Suite struct DataLoaderTests {
    @Test func sameSeedAndEpochGiveIdenticalBatches() {
        let data = syntheticDataset(count: 100)
        for prefetch in [0, 1, 3] {
            let a = DataLoader(dataset: data, batchSize: 16, shuffle: true, augment: true, seed: 5, prefetch: prefetch)
            let b = DataLoader(dataset: data, batchSize: 16, shuffle: true, augment: true, seed: 5, prefetch: 2)
            let batchesA = allBatches(a, epoch: 3), batchesB = allBatches(b, epoch: 3)
            #expect(batchesA.count == batchesB.count)
            for (x, y) in zip(batchesA, batchesB) {
                #expect(x.images == y.images)
                #expect(x.labels == y.labels)
                #expect(x.indices == y.indices)
            }
        }
    }

    @Test func differentEpochOrSeedGivesDifferentOrder() {
        let data = syntheticDataset(count: 100)
        let loader = DataLoader(dataset: data, batchSize: 10, shuffle: true, augment: false, seed: 5)
        let epoch0 = allBatches(loader, epoch: 0).flatMap(\.indices)
        let epoch1 = allBatches(loader, epoch: 1).flatMap(\.indices)
        #expect(epoch0 != epoch1)
        #expect(epoch0 != Array(0 ..< 100))
        let otherSeed = DataLoader(dataset: data, batchSize: 10, shuffle: true, augment: false, seed: 6)
        #expect(allBatches(otherSeed, epoch: 0).flatMap(\.indices) != epoch0)
        #expect(loader.sampleOrder(epoch: 1) == epoch1)
    }

    @Test func noShuffleKeepsDatasetOrder() {
        let data = syntheticDataset(count: 25)
        let loader = DataLoader(dataset: data, batchSize: 10, shuffle: false, augment: false, seed: 5)
        #expect(allBatches(loader, epoch: 7).flatMap(\.indices) == Array(0 ..< 25))
    }

    @Test func everySampleOncePerEpoch() {
        let data = syntheticDataset(count: 103)
        let loader = DataLoader(dataset: data, batchSize: 10, shuffle: true, augment: false, seed: 9)
        #expect(loader.batchesPerEpoch == 11)
        let batches = allBatches(loader, epoch: 2)
        #expect(batches.count == 11)
        #expect(batches.map(\.count) == [Int](repeating: 10, count: 10) + [3])
        #expect(batches.flatMap(\.indices).sorted() == Array(0 ..< 103))
        // The content agrees with the indices: pixels 0 and 1 encode the sample number.
        for batch in batches {
            for n in 0 ..< batch.count {
                let i = batch.indices[n]
                #expect(batch.images[n * 784] == FashionMNIST.normalize(UInt8(i % 256)))
                #expect(batch.images[n * 784 + 1] == FashionMNIST.normalize(UInt8(i / 256)))
                #expect(batch.labels[n] == Int32(i % 10))
            }
        }
    }

    @Test func dropLastSkipsThePartialBatch() {
        let data = syntheticDataset(count: 103)
        let loader = DataLoader(dataset: data, batchSize: 10, shuffle: true, augment: false, seed: 9, dropLast: true)
        #expect(loader.batchesPerEpoch == 10)
        let batches = allBatches(loader, epoch: 0)
        #expect(batches.count == 10)
        #expect(batches.allSatisfy { $0.count == 10 })
        #expect(batches.flatMap(\.indices) == Array(loader.sampleOrder(epoch: 0).prefix(100)))
    }

    @Test func normalizationOfKnownPixels() {
        #expect(FashionMNIST.normalize(0) == (0 - Float(0.2860)) / Float(0.3530))
        #expect(abs(FashionMNIST.normalize(255) - (1 - 0.2860) / 0.3530) < 1e-6)
        #expect(abs(FashionMNIST.normalize(0) - (-0.810198)) < 1e-5)

        let images: [UInt8] = [0, 51, 128, 255]
        let data = FashionMNIST(images: images, labels: [4], height: 2, width: 2)
        let batch = allBatches(DataLoader(dataset: data, batchSize: 4, shuffle: false, augment: false, seed: 0),
                               epoch: 0)[0]
        #expect((batch.count, batch.channels, batch.height, batch.width) == (1, 1, 2, 2))
        #expect(batch.labels == [4])
        #expect(batch.images == images.map { (Float($0) / 255 - 0.2860) / 0.3530 })
        #expect(abs(batch.images[1] - (0.2 - 0.2860) / 0.3530) < 1e-6)
    }

    @Test func withoutAugmentationBatchesAreNormalizedImagesInShuffledOrder() {
        let data = syntheticDataset(count: 40)
        let loader = DataLoader(dataset: data, batchSize: 16, shuffle: true, augment: false, seed: 1)
        for batch in allBatches(loader, epoch: 0) {
            let expected = batch.indices.flatMap { i in
                data.images[i * 784 ..< (i + 1) * 784].map(FashionMNIST.normalize)
            }
            #expect(batch.images == expected)
            #expect(batch.images.count == batch.count * 784)
        }
    }

    /// Every augmented image must be some crop (offsets -2...2) of the zero-padded
    /// source, possibly flipped; across an epoch, flips and shifts both occur.
    @Test func augmentationIsACropAndMaybeAFlip() {
        let (height, width) = (6, 5)
        let data = syntheticDataset(count: 60, height: height, width: width)
        let loader = DataLoader(dataset: data, batchSize: 8, shuffle: true, augment: true, seed: 11)
        var flips = 0, shifts = 0, identities = 0
        for batch in allBatches(loader, epoch: 0) {
            #expect((batch.height, batch.width, batch.channels) == (height, width, 1))
            for n in 0 ..< batch.count {
                let i = batch.indices[n]
                let source = Array(data.images[i * height * width ..< (i + 1) * height * width])
                let output = Array(batch.images[n * height * width ..< (n + 1) * height * width])
                var matches: [(dy: Int, dx: Int, flip: Bool)] = []
                for dy in -2 ... 2 {
                    for dx in -2 ... 2 {
                        for flip in [false, true] {
                            var candidate = [Float]()
                            for y in 0 ..< height {
                                for x in 0 ..< width {
                                    let cx = flip ? width - 1 - x : x
                                    let sy = y + dy, sx = cx + dx
                                    let raw: UInt8 = (0 ..< height).contains(sy) && (0 ..< width).contains(sx)
                                        ? source[sy * width + sx] : 0
                                    candidate.append(FashionMNIST.normalize(raw))
                                }
                            }
                            if candidate == output { matches.append((dy, dx, flip)) }
                        }
                    }
                }
                #expect(!matches.isEmpty, "sample \(i) is not a crop/flip of its source")
                if let m = matches.first {
                    if m.flip { flips += 1 }
                    if m.dy != 0 || m.dx != 0 { shifts += 1 }
                    if !m.flip && m.dy == 0 && m.dx == 0 { identities += 1 }
                }
            }
        }
        #expect(flips > 10 && flips < 50)
        #expect(shifts > 30)
        #expect(identities < 20)
    }

    @Test func augmentationDiffersBetweenEpochs() {
        let data = syntheticDataset(count: 20)
        let loader = DataLoader(dataset: data, batchSize: 20, shuffle: false, augment: true, seed: 4)
        let a = allBatches(loader, epoch: 0)[0], b = allBatches(loader, epoch: 1)[0]
        #expect(a.indices == b.indices)
        #expect(a.images != b.images)
    }

    @Test(.timeLimit(.minutes(1)))
    func breakingOutEarlyDoesNotHang() {
        let data = syntheticDataset(count: 500)
        for prefetch in [1, 2, 8] {
            let loader = DataLoader(dataset: data, batchSize: 4, shuffle: true, augment: true, seed: 2,
                                    prefetch: prefetch)
            for round in 0 ..< 50 {
                var taken = 0
                for _ in loader.batches(epoch: round) {
                    taken += 1
                    if taken == round % 5 + 1 { break }
                }
                #expect(taken == round % 5 + 1)
            }
            // An iterator made and dropped without being advanced, and one left
            // after its producer has filled the buffer.
            _ = loader.batches(epoch: 0).makeIterator()
            var iterator = loader.batches(epoch: 0).makeIterator()
            _ = iterator.next()
            Thread.sleep(forTimeInterval: 0.01)
        }
        // A full epoch still works after all that.
        let loader = DataLoader(dataset: data, batchSize: 64, shuffle: true, augment: false, seed: 2)
        #expect(Array(loader.batches(epoch: 0)).count == 8)
    }

    @Test func emptyDatasetHasNoBatches() {
        let data = FashionMNIST(images: [], labels: [], height: 28, width: 28)
        let loader = DataLoader(dataset: data, batchSize: 8, shuffle: true, augment: true, seed: 0)
        #expect(loader.batchesPerEpoch == 0)
        #expect(allBatches(loader, epoch: 0).isEmpty)
    }
}
