/// An inference plan's activation buffers: for each worker, one buffer per
/// layer tensor, each filled once with a value (a zero, or a zero code).
/// The kernels write only interiors, so borders and padding channels keep
/// that value from call to call. Freed with the last plan that holds them.
public final class WorkerBuffers<Element>: @unchecked Sendable {
    private let buffers: [[UnsafeMutablePointer<Element>]]

    /// - Parameters:
    ///   - counts: elements of each buffer, the same for every worker.
    ///   - fills: the value each buffer starts with, one per count.
    public init(workers: Int, counts: [Int], fills: [Element]) {
        precondition(counts.count == fills.count, "\(counts.count) buffers, \(fills.count) fill values")
        buffers = (0..<workers).map { _ in
            zip(counts, fills).map { count, fill in
                let buffer = UnsafeMutablePointer<Element>.allocate(capacity: count)
                buffer.initialize(repeating: fill, count: count)
                return buffer
            }
        }
    }

    deinit { buffers.joined().forEach { $0.deallocate() } }

    /// Worker `worker`'s buffers, in the order of `counts`.
    public subscript(worker: Int) -> [UnsafeMutablePointer<Element>] { buffers[worker] }
}
