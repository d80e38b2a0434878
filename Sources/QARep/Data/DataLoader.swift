import Foundation

/// A mini-batch of normalised images and their labels.
public struct Batch: Sendable {
    /// `count * channels * height * width` floats, NCHW, normalised as
    /// `(x / 255 - mean) / std`.
    public let images: [Float]
    /// One class index per sample.
    public let labels: [Int32]
    /// The dataset index of each sample, in batch order (empty for a batch
    /// built by hand without them).
    public let indices: [Int]
    /// Number of samples (N).
    public let count: Int
    /// Channels per image (C).
    public let channels: Int
    /// Image height (H).
    public let height: Int
    /// Image width (W).
    public let width: Int

    /// Creates a batch, for example a synthetic one in a test.
    ///
    /// - Precondition: `images.count == labels.count * channels * height * width`,
    ///   and `indices` is empty or has one entry per label.
    public init(images: [Float], labels: [Int32], indices: [Int] = [], channels: Int, height: Int, width: Int) {
        precondition(channels > 0 && height > 0 && width > 0, "Batch: dimensions must be positive")
        precondition(images.count == labels.count * channels * height * width,
                     "Batch: \(images.count) floats do not make \(labels.count) images of \(channels)x\(height)x\(width)")
        precondition(indices.isEmpty || indices.count == labels.count, "Batch: one index per sample")
        self.images = images
        self.labels = labels
        self.indices = indices
        self.count = labels.count
        self.channels = channels
        self.height = height
        self.width = width
    }
}

/// Cuts a dataset into mini-batches, shuffled and augmented deterministically,
/// prepared on a background thread while the caller computes.
///
/// Everything random depends only on `(seed, epoch)`: the sample order of an
/// epoch comes from `SplitMix64.stream(seed:index:)`, and each batch's
/// augmentation from a stream derived from the epoch and the batch number.
/// Thread timing and `prefetch` never change a batch, so a run resumed at an
/// epoch boundary sees exactly the batches it would have seen.
///
/// Augmentation (when `augment` is true), per sample: pad the raw image with
/// `dataset.cropPadding` pixels of 0 on each side (2 for Fashion-MNIST), take
/// a random `height x width` crop of the padded image (offsets uniform in
/// 0...2p both ways), then flip it horizontally with probability 1/2; every
/// channel gets the same crop and flip. Normalisation comes after, per
/// channel, so padding pixels become `(0 - mean[c]) / std[c]`.
///
/// ```swift
/// let loader = DataLoader(dataset: train, batchSize: 128, shuffle: true, augment: true, seed: 42)
/// for batch in loader.batches(epoch: 0) { ... }
/// ```
public final class DataLoader: Sendable {
    /// The samples.
    public let dataset: any Dataset
    /// Samples per batch (the last batch may be smaller unless `dropLast`).
    public let batchSize: Int
    /// Whether each epoch visits the samples in a new random order.
    public let shuffle: Bool
    /// Whether to apply random crop and horizontal flip.
    public let augment: Bool
    /// Base seed for the order and the augmentation.
    public let seed: UInt64
    /// Whether to skip a final batch smaller than `batchSize`.
    public let dropLast: Bool
    /// How many ready batches the background producer may hold; 0 prepares
    /// each batch on the caller's thread inside `next()`.
    public let prefetch: Int
    /// The part of every batch this loader produces (a data-parallel rank's),
    /// or nil for whole batches.
    public let shard: BatchShard?

    /// Raw byte -> normalised float, 256 entries per channel.
    private let normalized: [Float]

    /// Creates a loader.
    ///
    /// - Parameters:
    ///   - dataset: the samples.
    ///   - batchSize: samples per batch, > 0.
    ///   - shuffle: visit samples in a random order that changes every epoch
    ///     (otherwise in dataset order).
    ///   - augment: random crop with `dataset.cropPadding` pixels of zero padding and horizontal flip.
    ///   - seed: base seed; with the epoch it fixes every random choice.
    ///   - dropLast: skip a final batch smaller than `batchSize`.
    ///   - prefetch: ready batches buffered by the background producer, >= 0
    ///     (0: no background thread).
    ///   - shard: produce only this rank's rows of each batch: the same
    ///     images, labels and augmentation as those rows of the whole batch,
    ///     decoding no other image.
    public init(dataset: any Dataset, batchSize: Int, shuffle: Bool, augment: Bool, seed: UInt64,
                dropLast: Bool = false, prefetch: Int = 2, shard: BatchShard? = nil) {
        precondition(batchSize > 0, "DataLoader: batchSize must be positive, got \(batchSize)")
        precondition(prefetch >= 0, "DataLoader: prefetch must be >= 0, got \(prefetch)")
        self.dataset = dataset
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.dropLast = dropLast
        self.prefetch = prefetch
        self.shard = shard
        self.normalized = (0..<dataset.channels).flatMap { c in (0...255).map { dataset.normalize(UInt8($0), channel: c) } }
    }

    /// Number of batches in one epoch: `count / batchSize`, rounded up unless
    /// `dropLast`.
    public var batchesPerEpoch: Int {
        dropLast ? dataset.count / batchSize : (dataset.count + batchSize - 1) / batchSize
    }

    /// The dataset indices in the order epoch `epoch` visits them (all of
    /// them, including any that `dropLast` skips at the end).
    ///
    /// - Precondition: `epoch >= 0`.
    public func sampleOrder(epoch: Int) -> [Int] {
        precondition(epoch >= 0, "DataLoader: epoch must be >= 0, got \(epoch)")
        var order = Array(0 ..< dataset.count)
        if shuffle {
            var rng = SplitMix64.stream(seed: seed, index: 2 * UInt64(epoch))
            rng.shuffle(&order)
        }
        return order
    }

    /// The batches of epoch `epoch`, in order.
    ///
    /// Iterating starts a background producer (unless `prefetch` is 0) that
    /// stays at most `prefetch` batches ahead. Leaving the loop early is safe:
    /// when the iterator is released the producer is told to stop and is
    /// waited for, so no thread outlives it.
    ///
    /// - Precondition: `epoch >= 0`.
    public func batches(epoch: Int) -> Epoch {
        batches(epoch: epoch, from: 0)
    }

    /// The batches of epoch `epoch` from batch `first` on: exactly the tail
    /// of `batches(epoch:)`, for a run resumed in the middle of an epoch.
    ///
    /// - Precondition: `epoch >= 0` and `0 <= first <= batchesPerEpoch`.
    public func batches(epoch: Int, from first: Int) -> Epoch {
        precondition(epoch >= 0, "DataLoader: epoch must be >= 0, got \(epoch)")
        precondition(first >= 0 && first <= batchesPerEpoch, "DataLoader: batch \(first) is outside an epoch of \(batchesPerEpoch)")
        return Epoch(loader: self, epoch: epoch, first: first)
    }

    /// Builds batch `index` of an epoch whose sample order is `order`.
    /// Depends only on its arguments.
    func makeBatch(index: Int, order: [Int], augmentSeed: UInt64) -> Batch {
        let start = index * batchSize
        let whole = Array(order[start ..< min(start + batchSize, order.count)])
        let rows = shard?.rows(of: whole.count) ?? 0 ..< whole.count
        let indices = Array(whole[rows])
        let height = dataset.height, width = dataset.width, channels = dataset.channels
        let plane = height * width, pixelsPerImage = channels * plane, pad = dataset.cropPadding
        var images = [Float](repeating: 0, count: indices.count * pixelsPerImage)
        var rng = SplitMix64.stream(seed: augmentSeed, index: UInt64(index))

        normalized.withUnsafeBufferPointer { luts in
            dataset.images.withUnsafeBufferPointer { source in
                images.withUnsafeMutableBufferPointer { out in
                    for (row, sample) in whole.enumerated() {
                        // Fixed draw order per sample: dy, dx, flip; one draw for all channels.
                        // Every row of the whole batch draws, so a shard's rows get the whole batch's draws.
                        let dy = augment ? rng.uniform(below: 2 * pad + 1) - pad : 0
                        let dx = augment ? rng.uniform(below: 2 * pad + 1) - pad : 0
                        let flip = augment && rng.next() & 1 == 1
                        guard rows.contains(row) else { continue }
                        let n = row - rows.lowerBound
                        for c in 0..<channels {
                            let first = sample * pixelsPerImage + c * plane, to = n * pixelsPerImage + c * plane
                            let src = UnsafeBufferPointer(rebasing: source[first ..< first + plane])
                            let dst = UnsafeMutableBufferPointer(rebasing: out[to ..< to + plane])
                            let lut = UnsafeBufferPointer(rebasing: luts[(c * 256) ..< (c * 256 + 256)])
                            if augment {
                                Self.cropFlip(src, into: dst, height: height, width: width, dy: dy, dx: dx, flip: flip, lut: lut)
                            } else {
                                for i in 0 ..< plane { dst[i] = lut[Int(src[i])] }
                            }
                        }
                    }
                }
            }
        }
        let labels = indices.map { Int32(dataset.labels[$0]) }
        return Batch(images: images, labels: labels, indices: indices,
                     channels: channels, height: height, width: width)
    }

    /// `dst(y, x) = lut[src(y + dy, x' + dx)]` with `x' = flip ? width-1-x : x`,
    /// and `lut[0]` where the source falls outside the image (the zero padding).
    private static func cropFlip(_ src: UnsafeBufferPointer<UInt8>, into dst: UnsafeMutableBufferPointer<Float>,
                                 height: Int, width: Int, dy: Int, dx: Int, flip: Bool,
                                 lut: UnsafeBufferPointer<Float>) {
        let zero = lut[0]
        // Output columns whose source column x + dx (before the flip) is inside the image.
        let validLow = max(0, -dx), validHigh = min(width, width - dx)
        for y in 0 ..< height {
            let row = y * width
            let sy = y + dy
            guard sy >= 0, sy < height else {
                for x in 0 ..< width { dst[row + x] = zero }
                continue
            }
            let srcRow = sy * width
            for x in 0 ..< width {
                let cx = flip ? width - 1 - x : x  // column in the crop before flipping
                dst[row + x] = (cx >= validLow && cx < validHigh) ? lut[Int(src[srcRow + cx + dx])] : zero
            }
        }
    }

    /// The batches of one epoch. Iterate it once or several times; each
    /// iteration yields the same batches.
    public struct Epoch: Sequence, Sendable {
        let loader: DataLoader
        /// The epoch number.
        public let epoch: Int
        /// The index of the first batch this sequence yields.
        public let first: Int

        /// Starts iterating; see `DataLoader.batches(epoch:)`.
        public func makeIterator() -> Iterator {
            Iterator(loader: loader, epoch: epoch, first: first)
        }

        /// The batches left from `first` on.
        public var underestimatedCount: Int { loader.batchesPerEpoch - first }
    }

    /// Yields the batches of one epoch; stops and joins its producer thread
    /// when released, even mid-epoch.
    public struct Iterator: IteratorProtocol {
        private let state: IteratorState

        init(loader: DataLoader, epoch: Int, first: Int) {
            state = IteratorState(loader: loader, epoch: epoch, first: first)
        }

        /// The next batch, or nil after the last one. May block until the
        /// producer has it ready.
        public mutating func next() -> Batch? {
            state.next()
        }
    }
}

extension FashionMNIST {
    /// The normalised value of a raw pixel: `(Float(pixel) / 255 - mean) / std`.
    public static func normalize(_ pixel: UInt8) -> Float {
        normalizedPixel(pixel, mean: mean, std: std)
    }
}

/// Which rows of every batch a data-parallel rank takes: shard `rank` of
/// `ranks` (`DataParallel.shard(of:rank:size:)`).
public struct BatchShard: Sendable, Equatable {
    public let rank: Int
    public let ranks: Int

    /// - Precondition: `0 <= rank < ranks`.
    public init(rank: Int, of ranks: Int) {
        precondition(ranks > 0 && (0..<ranks).contains(rank), "BatchShard: rank \(rank) is outside \(ranks) ranks")
        self.rank = rank; self.ranks = ranks
    }

    /// This process's shard in the current data-parallel job, nil alone.
    public static var current: BatchShard? {
        DataParallel.size > 1 ? BatchShard(rank: DataParallel.rank, of: DataParallel.size) : nil
    }

    /// The rows of a batch of `count` this shard takes.
    public func rows(of count: Int) -> Range<Int> { DataParallel.shard(of: count, rank: rank, size: ranks) }
}

/// What one epoch's batches need, computed once: the order and the
/// augmentation seed.
private struct EpochPlan: Sendable {
    let loader: DataLoader
    let order: [Int]
    let augmentSeed: UInt64
    let batchCount: Int

    init(loader: DataLoader, epoch: Int) {
        self.loader = loader
        order = loader.sampleOrder(epoch: epoch)
        var seeder = SplitMix64.stream(seed: loader.seed, index: 2 * UInt64(epoch) + 1)
        augmentSeed = seeder.next()
        batchCount = loader.batchesPerEpoch
    }

    func batch(_ index: Int) -> Batch {
        loader.makeBatch(index: index, order: order, augmentSeed: augmentSeed)
    }
}

/// The consumer side of one iteration. Owned by `DataLoader.Iterator` (and its
/// copies) only; the producer thread never references it, so its deinit runs
/// when the consumer lets go and can stop the producer.
private final class IteratorState {
    private let plan: EpochPlan
    private let capacity: Int
    private var nextIndex: Int
    private var queue: PrefetchQueue?

    init(loader: DataLoader, epoch: Int, first: Int) {
        plan = EpochPlan(loader: loader, epoch: epoch)
        capacity = loader.prefetch
        nextIndex = first
    }

    func next() -> Batch? {
        guard nextIndex < plan.batchCount else { return nil }
        defer { nextIndex += 1 }
        if capacity == 0 {
            return plan.batch(nextIndex)
        }
        if queue == nil {
            queue = PrefetchQueue.start(plan: plan, from: nextIndex, capacity: capacity)
        }
        return queue!.take()
    }

    deinit {
        queue?.cancelAndJoin()
    }
}

/// A bounded FIFO between one producer thread and one consumer, guarded by a
/// condition lock. Batches come out in production order, which is batch order.
private final class PrefetchQueue: @unchecked Sendable {
    // All mutable fields are guarded by `condition`.
    private let condition = NSCondition()
    private var ready: [Batch] = []  // at most `capacity` entries
    private let capacity: Int
    private var cancelled = false
    private var producerDone = false

    private init(capacity: Int) {
        self.capacity = capacity
    }

    static func start(plan: EpochPlan, from first: Int, capacity: Int) -> PrefetchQueue {
        let queue = PrefetchQueue(capacity: capacity)
        let thread = Thread { queue.produce(plan, from: first) }
        thread.name = "QARep.DataLoader"
        thread.start()
        return queue
    }

    private func produce(_ plan: EpochPlan, from first: Int) {
        for index in first ..< plan.batchCount {
            condition.lock()
            while ready.count >= capacity && !cancelled { condition.wait() }
            let stop = cancelled
            condition.unlock()
            if stop { break }

            let batch = plan.batch(index)  // the work, outside the lock

            condition.lock()
            ready.append(batch)
            condition.broadcast()
            condition.unlock()
        }
        condition.lock()
        producerDone = true
        condition.broadcast()
        condition.unlock()
    }

    /// The next batch; the caller knows one more is due.
    func take() -> Batch {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty {
            precondition(!producerDone, "DataLoader: producer finished early")
            condition.wait()
        }
        let batch = ready.removeFirst()
        condition.broadcast()
        return batch
    }

    /// Tells the producer to stop and waits until it has (at most the batch
    /// it is building).
    func cancelAndJoin() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        while !producerDone { condition.wait() }
        ready.removeAll()
        condition.unlock()
    }
}
