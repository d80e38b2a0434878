import CQARepFloat
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Worker threads of QARep's kernels (convolutions, their gradients, layout
/// copies, elementwise passes): the processors this process may run on,
/// unless set. Results are reproducible for a fixed count.
public enum KernelThreads {
    nonisolated(unsafe) public static var count = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}

/// Splits `0..<count` into `min(threads, count)` contiguous ranges and calls
/// `body(worker, range)` for each, worker 0 on the calling thread and the
/// others on `WorkerPool`'s threads. Which range a worker gets depends only
/// on `count` and `threads`, so results that depend on the split (per-worker
/// partial sums) do not depend on timing. When the pool is already busy (a
/// nested call, or two callers at once), the calling thread runs every range
/// itself, in worker order: the same split, so the same bits.
public func parallelFor(_ count: Int, threads: Int, _ body: (_ worker: Int, _ range: Range<Int>) -> Void) {
    guard count > 0 else { return }
    let workers = max(1, min(threads, count))
    func run(_ worker: Int) { body(worker, (count * worker / workers)..<(count * (worker + 1) / workers)) }
    if workers == 1 || !WorkerPool.shared.run(workers: workers, run) {
        for worker in 0..<workers { run(worker) }
    }
}

/// Calls `body(worker, i)` once for every `i` in `0..<count`, the workers
/// (`worker` in `0..<min(threads, count)`, for per-worker scratch) taking the
/// next index as they finish the last, so a worker slowed by its core's other
/// load does not hold the rest up. Which worker runs an index depends on
/// timing: only for work whose every output is computed by one call
/// (convolution output tiles, layout copies), never for per-worker sums.
public func parallelDynamic(_ count: Int, threads: Int, _ body: (_ worker: Int, _ index: Int) -> Void) {
    guard count > 0 else { return }
    let workers = max(1, min(threads, count))
    guard workers > 1 else {
        for i in 0..<count { body(0, i) }
        return
    }
    let next = IndexCounter()
    parallelFor(workers, threads: workers) { worker, _ in
        while true {
            let i = next.value.wrappingAdd(1, ordering: .relaxed).oldValue
            guard i < count else { break }
            body(worker, i)
        }
    }
}

/// The shared next-index counter of `parallelDynamic`.
private final class IndexCounter: Sendable {
    let value = Atomic<Int>(0)
}

/// Runs `body` over `0..<n` split into contiguous chunks, one per worker,
/// when there is enough `work` (elements touched) to pay for the hand-off.
/// Chunks must write disjoint memory.
@inline(__always)
public func parallelChunks(_ n: Int, work: Int, _ body: (Range<Int>) -> Void) {
    guard KernelThreads.count > 1, work >= 1 << 15 else { return body(0..<n) }
    parallelFor(n, threads: KernelThreads.count) { _, range in body(range) }
}

/// Persistent worker threads that wait for jobs by spinning a few tens of
/// microseconds, then sleeping. A training step or a batch-1 inference hands
/// out hundreds of short jobs (one per convolution, batch norm or ReLU pass);
/// waking a sleeping thread through the kernel for each (as
/// `DispatchQueue.concurrentPerform` does) costs more than many of those jobs,
/// and OpenMP runtimes spin for the same reason. Spinning is bounded, so an
/// idle process gives its cores back.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool()

    /// Spin iterations (each one `pause`, tens of cycles) before a worker sleeps.
    private static let spinLimit = 20_000

    /// Whether a job is in flight: a second caller runs serially instead.
    private let busy = Atomic<Bool>(false)
    /// Workers of the current job (other than the caller) still running.
    private let pending = Atomic<Int>(0)
    /// Workers asleep on `wake`.
    private let sleepers = Atomic<Int>(0)
    /// Allocated, not stored inline: pthread objects must not move, and
    /// `&property` on a class may pass a temporary copy.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// One per pool thread; slot i runs worker index i + 1.
    private var slots: [WorkerSlot] = []

    private init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
    }

    /// Runs `body(0)` on this thread and `body(1)...body(workers - 1)` on pool
    /// threads, returning when all are done; false (and nothing run) when the
    /// pool is busy.
    func run(workers: Int, _ body: (Int) -> Void) -> Bool {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        defer { busy.store(false, ordering: .releasing) }
        while slots.count < workers - 1 { slots.append(startThread()) }
        withoutActuallyEscaping(body) { body in
            pending.store(workers - 1, ordering: .relaxed)
            for slot in slots.prefix(workers - 1) {
                // The slot's thread is idle (its last job was waited for), so
                // it reads `job` only after this counter moves.
                slot.job = body
                // Sequentially consistent with the sleepers' check below, so
                // either a worker sees its new job or this thread sees it asleep.
                slot.assigned.wrappingAdd(1, ordering: .sequentiallyConsistent)
            }
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex)
                pthread_cond_broadcast(wake)
                pthread_mutex_unlock(mutex)
            }
            body(0)
            while pending.load(ordering: .acquiring) > 0 { qarep_cpu_relax() }
            for slot in slots.prefix(workers - 1) { slot.job = nil }
        }
        return true
    }

    private func startThread() -> WorkerSlot {
        let slot = WorkerSlot(pool: self, index: slots.count + 1)
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { context in
            Unmanaged<WorkerSlot>.fromOpaque(context!).takeRetainedValue().loop()
        }, Unmanaged.passRetained(slot).toOpaque())
        precondition(started == 0, "could not start a kernel worker thread (pthread_create returned \(started))")
        pthread_detach(thread)
        return slot
    }

    /// One pool thread's mailbox: its job and how many it has been given.
    fileprivate final class WorkerSlot: @unchecked Sendable {
        unowned let pool: WorkerPool
        let index: Int
        let assigned = Atomic<Int>(0)
        var job: ((Int) -> Void)?

        init(pool: WorkerPool, index: Int) { self.pool = pool; self.index = index }

        func loop() -> Never {
            var done = 0
            while true {
                var spins = 0
                while assigned.load(ordering: .acquiring) == done {
                    spins += 1
                    if spins < WorkerPool.spinLimit { qarep_cpu_relax(); continue }
                    pool.sleep { self.assigned.load(ordering: .sequentiallyConsistent) == done }
                }
                job!(index)
                done += 1
                pool.pending.wrappingSubtract(1, ordering: .releasing)
            }
        }
    }

    /// Sleeps on `wake` while `idle()` holds.
    private func sleep(while idle: () -> Bool) {
        pthread_mutex_lock(mutex)
        sleepers.wrappingAdd(1, ordering: .sequentiallyConsistent)
        while idle() { pthread_cond_wait(wake, mutex) }
        sleepers.wrappingSubtract(1, ordering: .relaxed)
        pthread_mutex_unlock(mutex)
    }
}
