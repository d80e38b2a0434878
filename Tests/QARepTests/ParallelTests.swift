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
