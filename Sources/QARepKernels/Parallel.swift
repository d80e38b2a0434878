import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Worker threads of QARep's kernels (convolutions, their gradients, layout
/// copies): the processors this process may run on, unless set. Results are
/// reproducible for a fixed count.
public enum KernelThreads {
    nonisolated(unsafe) public static var count = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}

/// Runs `body` over `0..<n` split into contiguous chunks, one per worker,
/// when there is enough `work` (elements touched) to pay for the hand-off.
/// Chunks must write disjoint memory.
@inline(__always)
public func parallelChunks(_ n: Int, work: Int, _ body: (Range<Int>) -> Void) {
    let workers = min(KernelThreads.count, n)
    guard workers > 1, work >= 1 << 16 else { return body(0..<n) }
    // The chunks touch disjoint memory, which the type system cannot see.
    withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let task = body
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            task((w * n / workers)..<((w + 1) * n / workers))
        }
    }
}
