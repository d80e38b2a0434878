import Foundation

/// Whether operations record the graph for backward. Off inside `noGrad`,
/// for evaluation and for in-place updates such as the optimizer step.
///
/// The switch is per thread, so a background data loader or a parallel
/// evaluation cannot flip it for the training thread.
public enum GradMode {
    private static let key = "QARep.GradMode.disabled"

    /// True unless inside `noGrad` on this thread.
    public static var isEnabled: Bool {
        Thread.current.threadDictionary[key] == nil
    }

    /// Runs `body` with graph recording off on this thread.
    public static func noGrad<T>(_ body: () throws -> T) rethrows -> T {
        let dict = Thread.current.threadDictionary
        let previous = dict[key]
        dict[key] = true
        defer { dict[key] = previous }
        return try body()
    }
}

/// Runs `body` without recording operations for backward.
public func noGrad<T>(_ body: () throws -> T) rethrows -> T { try GradMode.noGrad(body) }
