#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import QARep
import Synchronization

/// SIGINT and SIGTERM ask a training run to stop after its current step: it
/// writes its checkpoint and `qarep` says how to resume. A second signal
/// ends the process at once (the handler restores the default action).
enum StopSignals {
    private static let requested = Atomic<Bool>(false)

    /// Installs the handlers; `isRequested` turns true on the first signal.
    static func install() {
        // A parent may have started us with these signals blocked (the mask is
        // inherited across exec); a stop request must get through.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { received in
                StopSignals.requested.store(true, ordering: .relaxed)
                signal(received, SIG_DFL)
            }
        }
    }

    static var isRequested: Bool { requested.load(ordering: .relaxed) }
}

/// Runs `body` with the stop handlers installed; a `RunInterrupted` becomes
/// one line saying how to continue, and exit status 130.
func stoppable<T>(resumeCommand: String, _ body: () throws -> T) throws -> T {
    StopSignals.install()
    do {
        return try body()
    } catch let stop as RunInterrupted {
        let how = stop.directory.map { " Continue with: \(resumeCommand) --resume \($0)" } ?? ""
        throw ExitWithMessage(message: "\(stop.description).\(how)", code: 130)
    }
}

/// An error that `qarep` prints as one line before exiting with `code`.
struct ExitWithMessage: Error, CustomStringConvertible {
    let message: String
    let code: Int32
    var description: String { message }
}
