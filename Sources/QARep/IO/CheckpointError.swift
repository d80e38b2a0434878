// The one error type of QARep's file I/O: every problem reading, validating,
// writing or applying a checkpoint is one line that starts with the file name.

import Foundation

/// An error reading, writing or applying a checkpoint file.
///
/// The message is one line that names the file and the problem, for example
/// `model.safetensors: tensor 'linear.weight': data_offsets [0, 20] span 20 bytes
/// but shape [2, 3] with dtype F32 needs 24`. The same type serves the model
/// checkpoint loader; see ``missingKey(_:file:)``, ``unexpectedKey(_:file:)``,
/// ``shapeMismatch(key:file:fileShape:modelShape:)`` and
/// ``dtypeMismatch(key:file:fileDType:expected:)``. ``AtomicFile`` throws it
/// too, for any file it writes.
public struct CheckpointError: Error, CustomStringConvertible, LocalizedError, Sendable, Hashable {
    /// The whole human-readable message, without a trailing newline.
    public let message: String

    /// Creates an error with the given one-line message.
    public init(_ message: String) {
        self.message = message
    }

    /// The message, unchanged.
    public var description: String { message }

    /// The message, unchanged (so that `localizedDescription` prints it).
    public var errorDescription: String? { message }

    /// `"<file>: missing key <key>"`: the model has a tensor the file lacks.
    public static func missingKey(_ key: String, file: String) -> CheckpointError {
        CheckpointError("\(file): missing key \(key)")
    }

    /// `"<file>: unexpected key <key>"`: the file has a tensor the model lacks.
    public static func unexpectedKey(_ key: String, file: String) -> CheckpointError {
        CheckpointError("\(file): unexpected key \(key)")
    }

    /// `"<file>: shape mismatch for key <key>: file has [16, 1, 3, 3], model expects [16, 3, 3, 3]"`.
    public static func shapeMismatch(
        key: String, file: String, fileShape: [Int], modelShape: [Int]
    ) -> CheckpointError {
        CheckpointError(
            "\(file): shape mismatch for key \(key): file has \(formatShape(fileShape)), "
                + "model expects \(formatShape(modelShape))")
    }

    /// `"<file>: dtype mismatch for key <key>: file has I64, model expects F32"`.
    public static func dtypeMismatch(
        key: String, file: String, fileDType: SafeTensorsDType, expected: SafeTensorsDType
    ) -> CheckpointError {
        CheckpointError(
            "\(file): dtype mismatch for key \(key): file has \(fileDType.rawValue), "
                + "model expects \(expected.rawValue)")
    }

    /// Formats a shape as `[16, 3, 3, 3]` (scalars as `[]`), as all messages do.
    public static func formatShape(_ shape: [Int]) -> String {
        "[" + shape.map(String.init).joined(separator: ", ") + "]"
    }
}
