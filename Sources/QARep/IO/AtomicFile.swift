// The one way QARep puts a whole file on disk: write beside it, fsync, rename.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Whole-file writes that never leave a partial file at the destination.
///
/// The bytes go to a new temporary file in the same directory
/// (`.<name>.tmp-<pid>-<random>`), which is `fsync`ed, then renamed over the
/// path; then the directory is `fsync`ed so that the rename itself is durable.
/// A crash at any point leaves either the previous file or the new one at the
/// path. On failure the temporary file is removed and whatever was at the path
/// is left as it was. An existing file's permission bits are kept; a new file
/// gets 0644 less the umask. If the path is a symbolic link, the link itself
/// is replaced.
///
/// Failures throw a ``CheckpointError`` whose one-line message starts with the
/// path and ends with the system's reason, for example
/// `out/model.onnx: write to temporary file out/.model.onnx.tmp-41-9f3c… failed: No space left on device`.
public enum AtomicFile {
    /// Replaces the file at `path` with `bytes`, atomically.
    /// - Throws: ``CheckpointError`` whose message starts with `path`.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path) { emit in try bytes.withUnsafeBytes(emit) }
    }

    /// Replaces the file at `path` with `data`, atomically.
    /// - Throws: ``CheckpointError`` whose message starts with `path`.
    public static func write(_ data: Data, to path: String) throws {
        try write(to: path) { emit in try data.withUnsafeBytes(emit) }
    }

    /// Replaces the file at `path` with the chunks that `body` passes to
    /// `emit`, in order, so that large files need not be joined in memory first.
    static func write(
        to path: String, body: (_ emit: (UnsafeRawBufferPointer) throws -> Void) throws -> Void
    ) throws {
        try atomicWrite(path: path, body: body)
    }
}

// Free functions, so that `write` below is the POSIX call and not
// AtomicFile.write.

private func errnoText() -> String {
    String(cString: strerror(errno))
}

private func atomicWrite(path: String, body: (_ emit: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
    guard !path.isEmpty, !path.hasSuffix("/") else {
        throw CheckpointError("\(path.isEmpty ? "\"\"" : path): not a file path")
    }
    let directory: String
    let baseName: String
    if let slash = path.lastIndex(of: "/") {
        let dir = String(path[..<slash])
        directory = dir.isEmpty ? "/" : dir
        baseName = String(path[path.index(after: slash)...])
    } else {
        directory = "."
        baseName = path
    }
    let tempPath =
        (directory == "/" ? "/" : directory + "/")
        + ".\(baseName).tmp-\(getpid())-\(String(UInt64.random(in: 0...UInt64.max), radix: 16))"

    let fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
        throw CheckpointError("\(path): cannot create temporary file in \(directory): \(errnoText())")
    }
    var fdOpen = true
    var renamed = false
    defer {
        if fdOpen { _ = close(fd) }
        if !renamed { _ = unlink(tempPath) }
    }

    // Keep the permission bits of the file being replaced.
    var existing = stat()
    if stat(path, &existing) == 0 && (existing.st_mode & S_IFMT) == S_IFREG {
        _ = fchmod(fd, existing.st_mode & 0o7777)
    }

    try body { chunk in
        var written = 0
        while written < chunk.count {
            let n = write(fd, chunk.baseAddress! + written, min(chunk.count - written, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                throw CheckpointError("\(path): write to temporary file \(tempPath) failed: \(errnoText())")
            }
            written += n
        }
    }
    guard fsync(fd) == 0 else { throw CheckpointError("\(path): fsync of temporary file failed: \(errnoText())") }
    fdOpen = false
    guard close(fd) == 0 else { throw CheckpointError("\(path): close of temporary file failed: \(errnoText())") }
    guard rename(tempPath, path) == 0 else {
        throw CheckpointError("\(path): cannot rename temporary file into place: \(errnoText())")
    }
    renamed = true

    // Make the rename durable. Some file systems cannot fsync a directory
    // (EINVAL); there is nothing more to do on those.
    let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0 else {
        throw CheckpointError("\(path): cannot open directory \(directory) to fsync it: \(errnoText())")
    }
    defer { _ = close(dirFD) }
    if fsync(dirFD) != 0 && errno != EINVAL && errno != ENOTSUP {
        throw CheckpointError("\(path): fsync of directory \(directory) failed: \(errnoText())")
    }
}
