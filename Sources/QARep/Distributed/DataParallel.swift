import Foundation
import QARepKernels

/// The data-parallel job this process belongs to, as torch.distributed's
/// default process group: set once at start-up, then read by the pieces of
/// training that must agree across ranks.
///
/// With N ranks, each step's global batch (`--batch-size`, the same order and
/// augmentation a single process would use) is split into N contiguous
/// shards; each rank runs forward and backward on its shard, and
/// - batch norm in training normalizes with the statistics of the whole
///   global batch (sync BN: the per-channel sums are all-reduced forward, the
///   gradient sums backward),
/// - activation observers' min/max see the whole batch's extremes,
/// - every rank scales its loss by its share of the batch, so the
///   all-reduced (summed) gradients are those of the global batch's mean
///   loss, and every rank applies the same optimizer step to the same weights.
///
/// N ranks therefore compute what one process computes with the whole batch,
/// up to float round-off (sums taken in another order). Without a
/// communicator everything runs as before, bit for bit.
public enum DataParallel {
    // Written once, before training starts, and only read afterwards.
    nonisolated(unsafe) private static var current: (any Communicator)?

    /// The job's communicator; nil when this process runs alone.
    public static var communicator: (any Communicator)? { current }

    /// This process's rank (0 alone).
    public static var rank: Int { current?.rank ?? 0 }

    /// Number of processes (1 alone).
    public static var size: Int { current?.size ?? 1 }

    /// Whether this process writes checkpoints, logs and progress: rank 0, or a process alone.
    public static var isPrimary: Bool { rank == 0 }

    /// Whether there is more than one rank to agree with.
    static var isDistributed: Bool { size > 1 }

    /// Joins `communicator`'s job. Call it once, before building the model.
    public static func start(_ communicator: any Communicator) {
        precondition(current == nil, "DataParallel.start called twice")
        current = communicator.size > 1 ? communicator : nil
    }

    /// Joins the job when this process was started by Open MPI's `mpirun`
    /// with more than one rank, and does nothing otherwise (a plain process,
    /// or `mpirun -np 1`, runs alone without loading MPI). Joining also gives
    /// this rank's kernels an equal part of the machine's cores
    /// (`KernelThreads.count`, which a caller may set again afterwards): ranks
    /// waiting in a collective spin, and a spinning rank beside another
    /// rank's extra threads would take their core.
    /// - Returns: the communicator, or nil when alone.
    /// - Throws: `DistributedError` when started by another MPI's launcher
    ///   or when Open MPI cannot be loaded.
    @discardableResult
    public static func startIfLaunchedByMPI(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> (any Communicator)? {
        if let size = environment["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init) {
            guard size > 1 else { return nil }
            let mpi = try MPICommunicator()
            start(mpi)
            KernelThreads.count = max(1, KernelThreads.count / localSize(environment: environment))
            return mpi
        }
        if let size = (environment["PMI_SIZE"] ?? environment["PMIX_SIZE"]).flatMap(Int.init), size > 1 {
            throw DistributedError("started by an MPI launcher other than Open MPI's mpirun; QARep's data parallelism runs on Open MPI only")
        }
        return nil
    }

    /// Ranks sharing this machine, as mpirun reports them (1 alone): each
    /// rank's kernels take an equal part of the cores by default.
    public static func localSize(environment: [String: String] = ProcessInfo.processInfo.environment) -> Int {
        max(environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1, 1)
    }

    /// Leaves the job cleanly (MPI_Finalize); the communicator is kept so
    /// that nothing after it starts a second job.
    public static func finish() { current?.finalize() }

    /// The items `count` rows of a global batch give to `rank` of `size`:
    /// contiguous, in rank order, sizes differing by at most one.
    public static func shard(of count: Int, rank: Int, size: Int) -> Range<Int> {
        precondition(size > 0 && (0..<size).contains(rank), "rank \(rank) is outside a job of \(size)")
        return (rank * count / size) ..< ((rank + 1) * count / size)
    }

    /// This process's shard of `count` items.
    public static func shard(of count: Int) -> Range<Int> { shard(of: count, rank: rank, size: size) }

    /// Sums `values` over the ranks, in place (nothing alone).
    public static func sum(_ values: inout [Double]) {
        guard let c = current else { return }
        c.allReduce(&values, .sum)
    }

    /// Element-wise maxima over the ranks, in place (nothing alone).
    public static func maximum(_ values: inout [Float]) {
        guard let c = current else { return }
        c.allReduce(&values, .max)
    }

    /// Whether `flag` is true on any rank (itself alone): a stop request
    /// that one rank saw must stop every rank at the same step.
    public static func any(_ flag: Bool) -> Bool {
        guard let c = current else { return flag }
        var v: [Double] = [flag ? 1 : 0]
        c.allReduce(&v, .max)
        return v[0] > 0
    }

    /// Gradients are all-reduced in buckets of about this many floats
    /// (4 MiB, whole parameters): a few large messages per step rather than
    /// one per parameter, each small enough to stay in the caches it is packed from.
    static let bucketElements = 1 << 20

    /// Sums the gradients of every parameter `optimizer` updates over the
    /// ranks: call it between `loss.backward()` and `optimizer.step()` in a
    /// loop of your own, with each rank's loss scaled by its share of the
    /// global batch (`Trainer` does both).
    public static func sumGradients(of optimizer: any Optimizer) {
        sumGradients(optimizer.groups.flatMap { $0.parameters.map(\.1) })
    }

    /// Sums every gradient over the ranks, in place. Parameters without a
    /// gradient are skipped (the same ones on every rank: the ranks run the
    /// same model).
    public static func sumGradients(_ parameters: [Tensor]) {
        guard let c = current else { return }
        var bucket: [Float] = []
        var members: [Tensor] = []
        func flush() {
            guard !members.isEmpty else { return }
            c.allReduce(&bucket, .sum)
            var offset = 0
            for p in members {
                p.grad = Array(bucket[offset ..< offset + p.count])
                offset += p.count
            }
            bucket.removeAll(keepingCapacity: true)
            members.removeAll(keepingCapacity: true)
        }
        for p in parameters {
            guard let g = p.grad else { continue }
            if !members.isEmpty && bucket.count + g.count > bucketElements { flush() }
            bucket.append(contentsOf: g)
            members.append(p)
        }
        flush()
    }
}
