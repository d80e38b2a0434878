/// How `Communicator.allReduce` combines the ranks' values, element by element.
public enum ReduceOperation: Sendable {
    case sum, min, max
}

/// The ranks of a data-parallel job and the collective operations they run
/// together (the subset of MPI that data-parallel training needs).
///
/// Every rank must call the same collectives in the same order with the
/// same counts, as with MPI itself: a rank that skips one leaves the others
/// waiting. QARep's training code guarantees it by running the same graph,
/// the same number of steps and the same checks on every rank.
public protocol Communicator: AnyObject, Sendable {
    /// This process's index, `0 ..< size`; rank 0 writes files and prints progress.
    var rank: Int { get }
    /// Number of processes in the job.
    var size: Int { get }
    /// Replaces `values` on every rank by the element-wise combination of all
    /// ranks' `values`.
    func allReduce(_ values: UnsafeMutableBufferPointer<Float>, _ operation: ReduceOperation)
    /// The same for doubles (statistics and counters).
    func allReduce(_ values: UnsafeMutableBufferPointer<Double>, _ operation: ReduceOperation)
    /// Ends the whole job at once, every rank, with `code`: what a rank does
    /// when it cannot go on, so that the others do not wait for it forever.
    func abort(code: Int32) -> Never
    /// Leaves the job cleanly, after the last collective.
    func finalize()
}

extension Communicator {
    /// All-reduces an array in place.
    public func allReduce(_ values: inout [Double], _ operation: ReduceOperation) {
        values.withUnsafeMutableBufferPointer { allReduce($0, operation) }
    }

    /// All-reduces an array in place.
    public func allReduce(_ values: inout [Float], _ operation: ReduceOperation) {
        values.withUnsafeMutableBufferPointer { allReduce($0, operation) }
    }
}
