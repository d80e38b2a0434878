import QARepKernels
import Testing

// The kernel threads' work sharing: every index once, the same contiguous
// split whatever runs it, and no deadlock when jobs nest or callers race.

@Suite("Kernel worker pool")
struct ParallelTests {
    /// The ranges `parallelFor` hands each worker, recorded by worker.
    func split(_ count: Int, threads: Int) -> [[Int]] {
        let workers = max(1, min(threads, count))
        let hits = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
        defer { hits.deallocate() }
        hits.initialize(repeating: -1, count: max(count, 1))
        parallelFor(count, threads: threads) { worker, range in
            for i in range { hits[i] = worker }
        }
        return (0..<workers).map { w in (0..<count).filter { hits[$0] == w } }
    }

    @Test("each index once, contiguous ranges by worker", arguments: [(1, 2), (7, 2), (7, 3), (1000, 4), (5, 8)])
    func coversEveryIndex(_ count: Int, _ threads: Int) {
        let ranges = split(count, threads: threads)
        #expect(ranges.flatMap { $0 } == Array(0..<count))
        let workers = ranges.count
        for (w, r) in ranges.enumerated() {
            #expect(r == Array((count * w / workers)..<(count * (w + 1) / workers)))
        }
    }

    @Test("a nested job runs on its caller with the same split")
    func nested() {
        let inner = UnsafeMutablePointer<Int>.allocate(capacity: 2 * 6)
        defer { inner.deallocate() }
        inner.initialize(repeating: -1, count: 12)
        parallelFor(2, threads: 2) { outer, _ in
            parallelFor(6, threads: 3) { worker, range in
                for i in range { inner[outer * 6 + i] = worker }
            }
        }
        #expect(Array(UnsafeBufferPointer(start: inner, count: 12)) == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2])
    }

    @Test("callers on several threads at once all finish with correct sums")
    func concurrentCallers() async {
        let sums = await withTaskGroup(of: Int.self) { group in
            for caller in 0..<8 {
                group.addTask {
                    var total = 0
                    for _ in 0..<200 {
                        let partial = UnsafeMutablePointer<Int>.allocate(capacity: 2)
                        partial.initialize(repeating: 0, count: 2)
                        parallelFor(100, threads: 2) { worker, range in partial[worker] = range.reduce(0, +) + caller }
                        total += partial[0] + partial[1] - 2 * caller
                        partial.deallocate()
                    }
                    return total
                }
            }
            return await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(sums == [Int](repeating: 200 * 4950, count: 8))
    }
}

@Suite("Image chunks of an inference batch")
struct ImageChunksTests {
    @Test("chunks cover the batch once, in order, within the cache budget and at most an equal share each")
    func coverage() throws {
        for (batch, threads, bytesPerImage) in [(128, 2, 74_000), (128, 2, 1), (3, 2, 10), (7, 3, 200_000), (256, 2, 111_000),
                                                (5, 2, 10_000_000)] {
            let chunks = try #require(ImageChunks(batch: batch, threads: threads, bytesPerImage: bytesPerImage))
            let ranges = (0..<chunks.count).map(chunks.images)
            #expect(ranges.first?.lowerBound == 0 && ranges.last?.upperBound == batch)
            #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
            #expect(ranges.dropLast().allSatisfy { $0.count == chunks.size } && ranges.last?.count == chunks.last)
            #expect(chunks.size == 1 || chunks.size * bytesPerImage <= ImageChunks.cacheBytes)
            #expect(chunks.size <= (batch + threads - 1) / threads)
            #expect(chunks.count >= threads, "\(batch) images, \(threads) threads: every worker gets a chunk")
        }
        // tiny at 28x28 (74 KB an image): 7 images a chunk, 19 chunks, the last of 2.
        let tiny = try #require(ImageChunks(batch: 128, threads: 2, bytesPerImage: 74_000))
        #expect(tiny.size == 7 && tiny.count == 19 && tiny.last == 2)
    }

    @Test("one worker, or fewer images than workers, runs layer by layer")
    func layerByLayer() {
        #expect(ImageChunks(batch: 128, threads: 1, bytesPerImage: 1000) == nil)
        #expect(ImageChunks(batch: 1, threads: 2, bytesPerImage: 1000) == nil)
        #expect(ImageChunks(batch: 3, threads: 4, bytesPerImage: 1000) == nil)
    }
}
