import Foundation

/// Open MPI, loaded at run time with `dlopen`: the `qarep` binary builds and
/// runs without Open MPI installed, and only a process started by `mpirun`
/// loads `libmpi.so.40` (Debian's `libopenmpi3`, which `libopenmpi-dev` and
/// `openmpi-bin` pull in).
///
/// Open MPI's handles (`MPI_COMM_WORLD`, `MPI_FLOAT`, `MPI_SUM`, ...) are the
/// addresses of exported objects (`ompi_mpi_comm_world`, ...), so `dlsym`
/// gives them directly; MPICH's are integer constants from its headers, so
/// this loader is Open MPI's alone, and says so when started by another launcher.
public final class MPICommunicator: Communicator, @unchecked Sendable {
    public let rank: Int
    public let size: Int

    private typealias InitThread = @convention(c) (OpaquePointer?, OpaquePointer?, Int32, UnsafeMutablePointer<Int32>) -> Int32
    private typealias CommQuery = @convention(c) (UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    private typealias AllReduce = @convention(c) (UnsafeRawPointer?, UnsafeMutableRawPointer?, Int32,
                                                  UnsafeMutableRawPointer, UnsafeMutableRawPointer, UnsafeMutableRawPointer) -> Int32
    private typealias Abort = @convention(c) (UnsafeMutableRawPointer, Int32) -> Int32
    private typealias Finalize = @convention(c) () -> Int32

    private let allReduceFunction: AllReduce
    private let abortFunction: Abort
    private let finalizeFunction: Finalize
    private let world: UnsafeMutableRawPointer
    private let floatType: UnsafeMutableRawPointer, doubleType: UnsafeMutableRawPointer
    private let sumOp: UnsafeMutableRawPointer, minOp: UnsafeMutableRawPointer, maxOp: UnsafeMutableRawPointer
    /// Most elements one `MPI_Allreduce` takes: its count is a C `int`.
    private static let maxCount = Int(Int32.max)

    /// Loads Open MPI and joins the job this process was started in
    /// (`MPI_Init_thread`, serialized: QARep calls MPI from one thread at a time).
    /// - Throws: `DistributedError` when the library or one of its symbols is missing.
    public init(library: String = "libmpi.so.40") throws {
        // RTLD_GLOBAL: Open MPI's own plugins, which it loads with dlopen, link against libmpi's symbols.
        guard let handle = dlopen(library, RTLD_NOW | RTLD_GLOBAL) ?? dlopen("libmpi.so", RTLD_NOW | RTLD_GLOBAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "not found"
            throw DistributedError("started by mpirun, but Open MPI's \(library) cannot be loaded (\(why)); install it (Debian: apt-get install libopenmpi-dev openmpi-bin)")
        }
        func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
            guard let s = dlsym(handle, name) else {
                throw DistributedError("\(library) has no \(name): QARep runs on Open MPI 3 or later, not on another MPI")
            }
            return s
        }
        let initThread = unsafeBitCast(try symbol("MPI_Init_thread"), to: InitThread.self)
        let commRank = unsafeBitCast(try symbol("MPI_Comm_rank"), to: CommQuery.self)
        let commSize = unsafeBitCast(try symbol("MPI_Comm_size"), to: CommQuery.self)
        allReduceFunction = unsafeBitCast(try symbol("MPI_Allreduce"), to: AllReduce.self)
        abortFunction = unsafeBitCast(try symbol("MPI_Abort"), to: Abort.self)
        finalizeFunction = unsafeBitCast(try symbol("MPI_Finalize"), to: Finalize.self)
        world = try symbol("ompi_mpi_comm_world")
        floatType = try symbol("ompi_mpi_float")
        doubleType = try symbol("ompi_mpi_double")
        sumOp = try symbol("ompi_mpi_op_sum")
        minOp = try symbol("ompi_mpi_op_min")
        maxOp = try symbol("ompi_mpi_op_max")

        let serialized: Int32 = 2   // MPI_THREAD_SERIALIZED in Open MPI's mpi.h
        var provided: Int32 = 0
        guard initThread(nil, nil, serialized, &provided) == 0 else { throw DistributedError("MPI_Init_thread failed") }
        var r: Int32 = 0, s: Int32 = 0
        _ = commRank(world, &r)
        _ = commSize(world, &s)
        rank = Int(r); size = Int(s)
    }

    public func allReduce(_ values: UnsafeMutableBufferPointer<Float>, _ operation: ReduceOperation) {
        allReduce(UnsafeMutableRawPointer(values.baseAddress), count: values.count, type: floatType,
                  elementSize: MemoryLayout<Float>.stride, operation)
    }

    public func allReduce(_ values: UnsafeMutableBufferPointer<Double>, _ operation: ReduceOperation) {
        allReduce(UnsafeMutableRawPointer(values.baseAddress), count: values.count, type: doubleType,
                  elementSize: MemoryLayout<Double>.stride, operation)
    }

    private func allReduce(_ base: UnsafeMutableRawPointer?, count: Int, type: UnsafeMutableRawPointer, elementSize: Int,
                           _ operation: ReduceOperation) {
        guard let base, count > 0 else { return }
        let op = switch operation { case .sum: sumOp; case .min: minOp; case .max: maxOp }
        let inPlace = UnsafeRawPointer(bitPattern: 1)   // MPI_IN_PLACE in Open MPI's mpi.h
        var done = 0
        while done < count {
            let n = min(count - done, Self.maxCount)
            // Open MPI's default error handler ends the job on a failed collective (a dead peer, say).
            _ = allReduceFunction(inPlace, base + done * elementSize, Int32(n), type, op, world)
            done += n
        }
    }

    public func abort(code: Int32) -> Never {
        _ = abortFunction(world, code)
        exit(code)
    }

    public func finalize() { _ = finalizeFunction() }
}

/// Data-parallel set-up failed (no MPI library, an unsupported launcher).
public struct DistributedError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
