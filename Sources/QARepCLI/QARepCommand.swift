import ArgumentParser
import Foundation
import QARep
import QARepKernels

/// `qarep`: the command-line interface. `main()` is what the executable runs;
/// tests parse and run the subcommands in-process.
public struct QARepCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "qarep",
        abstract: "Quantization-aware training for QARepVGG on Linux CPUs.",
        subcommands: [Train.self, Eval.self, PTQ.self, QAT.self, Export.self, ReportCommand.self, Bench.self, Quickstart.self])

    public init() {}

    /// Runs the command line of this process, after the process-wide settings
    /// a library never changes by itself: OpenBLAS's core type and threads,
    /// and glibc's allocator tuning.
    public static func main() {
        selectBLASCore()
        // Only the small linear head still runs on OpenBLAS; QARep's kernels
        // thread themselves. OpenBLAS's idle workers spin for a while after
        // each call and would take a core from them.
        BLASThreads.set(1)
        MemoryTuning.apply()
        do {
            var command = try parseAsRoot()
            try joinDataParallelJob(running: command)
            try command.run()
            DataParallel.finish()
        } catch let stop as ExitWithMessage {
            // A run stopped by a signal: its checkpoint is written; say how to go on.
            // (Every rank stopped at the same step; rank 0 wrote the checkpoint and says so.)
            if DataParallel.isPrimary { writeStandardError("\(stop.message)\n") }
            DataParallel.finish()
            Foundation.exit(stop.code)
        } catch {
            if let job = DataParallel.communicator {
                // One rank cannot go on: say why, then end every rank rather than leave them waiting.
                writeStandardError("qarep rank \(job.rank) of \(job.size): \(fullMessage(for: error))\n")
                let code = exitCode(for: error).rawValue
                job.abort(code: code == 0 ? 1 : code)
            }
            exit(withError: error)
        }
    }

    /// Under `mpirun -np N` (N > 1): joins the job (each rank takes an equal
    /// part of this machine's cores unless `--threads` says otherwise) and
    /// refuses the commands that do not train.
    private static func joinDataParallelJob(running command: any ParsableCommand) throws {
        guard let job = try DataParallel.startIfLaunchedByMPI() else { return }
        guard command is Train || command is QAT else {
            throw CommandError("qarep \(type(of: command)._commandName) runs in one process; "
                               + "only train and qat are data-parallel under mpirun (\(job.size) ranks were started)")
        }
    }

    /// Re-executes this process once with OPENBLAS_CORETYPE set when OpenBLAS
    /// fell back to its generic kernels on a CPU that runs its AVX2 or AVX-512
    /// ones (`BLASCore`). The variable is read when the library loads, so it
    /// cannot be set any later. A user's own OPENBLAS_CORETYPE is left alone.
    private static func selectBLASCore() {
        guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
              let core = BLASCore.betterCoreTypeHere else { return }
        setenv("OPENBLAS_CORETYPE", core, 1)
        let argv = CommandLine.unsafeArgv
        execv("/proc/self/exe", argv)
        // execv returned: keep running on OpenBLAS's own choice.
    }
}
