import Foundation

/// Writes a live progress line to standard error: a carriage-return updated
/// line on a terminal, a plain line every few seconds otherwise (logs, CI).
/// In a data-parallel job only rank 0 prints.
public final class ProgressReporter {
    private let isTerminal = isatty(STDERR_FILENO) != 0
    private var lastPrint = Date.distantPast
    private let interval: TimeInterval
    public var enabled: Bool

    public init(enabled: Bool = true, interval: TimeInterval? = nil) {
        self.enabled = enabled && DataParallel.isPrimary
        self.interval = interval ?? (isatty(STDERR_FILENO) != 0 ? 0.2 : 5)
    }

    /// Shows `line` if enough time has passed since the last one (or `force`).
    public func update(_ line: String, force: Bool = false) {
        guard enabled else { return }
        let now = Date()
        guard force || now.timeIntervalSince(lastPrint) >= interval else { return }
        lastPrint = now
        writeStandardError(isTerminal ? "\r\u{1B}[K" + line : line + "\n")
    }

    /// Clears a live line on a terminal (before an error message); elsewhere nothing.
    public func clearLine() {
        guard enabled, isTerminal else { return }
        writeStandardError("\r\u{1B}[K")
    }

    /// Ends the live line and prints `line` on its own.
    public func finish(_ line: String) {
        guard enabled else { return }
        writeStandardError((isTerminal ? "\r\u{1B}[K" : "") + line + "\n")
        lastPrint = .distantPast
    }
}

/// Writes text to standard error, unbuffered.
public func writeStandardError(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}

/// `h:mm:ss` or `m:ss`.
func formatDuration(_ seconds: Double) -> String {
    guard seconds.isFinite, seconds >= 0 else { return "--:--" }
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
}
