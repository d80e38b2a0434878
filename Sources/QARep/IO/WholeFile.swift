// Reading a whole file with POSIX calls. Foundation's Data(contentsOf:) leaks
// a page on an empty file (LeakSanitizer, found by fuzzing the CIFAR-10
// reader), and the readers of untrusted files want a plain reason to wrap in
// their own error anyway.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a file could not be read, without the path ("cannot open: No such file or directory").
struct FileReadError: Error {
    let reason: String
}

/// The bytes of the regular file at `path`.
/// - Throws: `FileReadError` if it cannot be opened, is not a regular file, or a read fails.
func readWholeFile(_ path: String) throws(FileReadError) -> [UInt8] {
    func reason() -> String { String(cString: strerror(errno)) }
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(reason: "cannot open: \(reason())") }
    defer { _ = close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw FileReadError(reason: "cannot stat: \(reason())") }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw FileReadError(reason: "not a regular file") }
    let expected = Int(info.st_size)
    var bytes = [UInt8](repeating: 0, count: expected)
    var filled = 0
    var failure: String? = nil
    bytes.withUnsafeMutableBytes { buffer in
        while filled < expected {
            let n = read(fd, buffer.baseAddress! + filled, min(expected - filled, 1 << 30))
            if n < 0 {
                if errno == EINTR { continue }
                failure = reason()
                return
            }
            if n == 0 { break }  // the file shrank while we read it
            filled += n
        }
    }
    if let failure { throw FileReadError(reason: "read failed: \(failure)") }
    if filled < expected { bytes.removeSubrange(filled...) }
    return bytes
}
