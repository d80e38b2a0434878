/// How an inference engine shares a batch among its workers: in chunks of
/// whole images, each run through every layer by one worker, small enough
/// that a layer's input and output activations stay in that core's cache.
///
/// Layer by layer over the whole batch, every convolution pays a hand-off
/// between the workers and sends its output through memory to the next
/// layer; a chunk pays one hand-off per batch and keeps its activations in
/// L2. A batch with fewer images than workers is left to the layer-by-layer
/// schedule, which splits each convolution's pixels instead.
public struct ImageChunks: Sendable, Equatable {
    /// Images of every chunk but the last.
    public let size: Int
    /// Chunks in the batch.
    public let count: Int
    /// Images in the batch.
    public let batch: Int

    /// Activation bytes a chunk may keep hot: half of a typical per-core L2
    /// (1-2 MiB on recent x86), the other half left to the weights.
    public static let cacheBytes = 512 * 1024

    /// `nil` when one worker or fewer images than workers: run layer by layer.
    /// - Parameter bytesPerImage: the largest input plus output activation
    ///   bytes of one layer, for one image; evaluated only when the batch is chunked.
    public init?(batch: Int, threads: Int, bytesPerImage: @autoclosure () -> Int) {
        guard threads > 1 && batch >= threads else { return nil }
        // At most an equal share per worker, so every worker gets a chunk.
        size = max(1, min(Self.cacheBytes / max(1, bytesPerImage()), (batch + threads - 1) / threads))
        count = (batch + size - 1) / size
        self.batch = batch
    }

    /// Images in the last chunk (`size` unless the batch is not a multiple).
    public var last: Int { batch - (count - 1) * size }

    /// First image and image count of chunk `index`.
    public func images(_ index: Int) -> Range<Int> {
        index * size ..< min(batch, (index + 1) * size)
    }
}

extension ImageChunks {
    /// Runs a batch the way both inference engines do. With one worker or
    /// fewer images than workers, `whole` runs the batch layer by layer with
    /// each layer shared among the workers; otherwise the batch is cut into
    /// chunks and `chunk` runs each one on a worker, through every layer, on
    /// that worker's buffers.
    ///
    /// - Parameters:
    ///   - plan: the plan for a batch size and a number of worker buffer
    ///     sets, made here on the caller's thread (workers only read plans):
    ///     `(batch, 1)` for `whole`, `(chunk size, threads)` for chunks.
    ///   - whole: runs the whole batch with its plan.
    ///   - chunk: runs `images` of the batch with their chunk's plan on `worker`.
    public static func run<Plan>(batch: Int, threads: Int, bytesPerImage: @autoclosure () -> Int,
                                 plan: (_ batch: Int, _ workers: Int) -> Plan,
                                 whole: (Plan) -> Void,
                                 chunk: (Plan, _ worker: Int, _ images: Range<Int>) -> Void) {
        guard let chunks = ImageChunks(batch: batch, threads: threads, bytesPerImage: bytesPerImage()) else {
            whole(plan(batch, 1))
            return
        }
        let full = plan(chunks.size, threads), last = plan(chunks.last, threads)
        parallelDynamic(chunks.count, threads: threads) { worker, c in
            let images = chunks.images(c)
            chunk(images.count == chunks.size ? full : last, worker, images)
        }
    }
}
