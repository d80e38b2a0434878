import CZlib
import Foundation

/// An error reading or validating a data file.
///
/// `description` is one line that starts with the file's path, for example
/// `/data/train-images-idx3-ubyte.gz: truncated: expected 47040000 bytes of pixel data, found 1000`.
public struct DataError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file (or directory) the error is about, as it was given.
    public let path: String
    /// What is wrong, without the path.
    public let reason: String

    /// Creates an error about `path`.
    public init(path: String, reason: String) {
        self.path = path
        self.reason = reason
    }

    /// `"<path>: <reason>"`, on one line.
    public var description: String { "\(path): \(reason)" }
}

/// The pixels of an IDX image file (magic `0x00000803`: unsigned bytes, three
/// dimensions).
public struct IDXImages: Sendable, Equatable {
    /// Number of images.
    public var count: Int
    /// Rows (height) of each image.
    public var rows: Int
    /// Columns (width) of each image.
    public var cols: Int
    /// `count * rows * cols` bytes, image-major then row-major, exactly as in
    /// the file.
    public var pixels: [UInt8]

    /// Creates an image set; `pixels.count` must equal `count * rows * cols`.
    public init(count: Int, rows: Int, cols: Int, pixels: [UInt8]) {
        precondition(count >= 0 && rows >= 0 && cols >= 0 && pixels.count == count * rows * cols,
                     "IDXImages: \(pixels.count) pixels do not make \(count) images of \(rows)x\(cols)")
        self.count = count
        self.rows = rows
        self.cols = cols
        self.pixels = pixels
    }
}

/// Reader for the IDX format of MNIST and Fashion-MNIST
/// (big-endian header: a magic number, then one 32-bit size per dimension,
/// then the raw bytes).
///
/// Files may be gzip-compressed or plain; zlib reads both. Reading is strict:
/// a wrong magic number, a zero or implausible dimension, fewer data bytes
/// than the header promises, any byte after the data, or a corrupt gzip
/// stream (bad header, bad CRC, cut short) each throw a `DataError` naming the
/// file.
public enum IDX {
    /// Magic number of an unsigned-byte, 3-dimensional IDX file (images).
    public static let imagesMagic: UInt32 = 0x0000_0803
    /// Magic number of an unsigned-byte, 1-dimensional IDX file (labels).
    public static let labelsMagic: UInt32 = 0x0000_0801

    /// Largest accepted image side. Larger values in a header mean a corrupt
    /// file, not a real dataset.
    static let maxSide = 1 << 16
    /// Largest accepted number of items.
    static let maxCount = Int(Int32.max)

    /// Reads an IDX image file (`*-images-idx3-ubyte[.gz]`).
    ///
    /// - Parameter path: the file, gzipped or plain.
    /// - Returns: `count` images of `rows x cols` bytes.
    /// - Throws: `DataError` if the file is missing or unreadable, the magic
    ///   is not `0x00000803`, a dimension is 0 or implausible, the pixel data
    ///   is shorter or longer than `count * rows * cols` bytes, or the gzip
    ///   stream is corrupt.
    public static func readImages(at path: String) throws -> IDXImages {
        let file = try GzFile(path: path)
        try checkMagic(file.readHeader(words: 1, of: 4)[0], expected: imagesMagic, kind: "IDX images", path: path)
        let dims = try file.readHeader(words: 3, of: 4)
        let count = Int(dims[0]), rows = Int(dims[1]), cols = Int(dims[2])
        try checkDimension(count, name: "image count", max: maxCount, path: path)
        try checkDimension(rows, name: "row count", max: maxSide, path: path)
        try checkDimension(cols, name: "column count", max: maxSide, path: path)
        // Cannot overflow: maxCount * maxSide * maxSide < Int.max.
        let pixels = try file.readExactly(count * rows * cols, what: "pixel data")
        return IDXImages(count: count, rows: rows, cols: cols, pixels: pixels)
    }

    /// Reads an IDX label file (`*-labels-idx1-ubyte[.gz]`).
    ///
    /// - Parameter path: the file, gzipped or plain.
    /// - Returns: one byte per item, in file order. Values are not range
    ///   checked here (see `FashionMNIST.load`).
    /// - Throws: `DataError` if the file is missing or unreadable, the magic
    ///   is not `0x00000801`, the count is 0 or implausible, the data is
    ///   shorter or longer than the count, or the gzip stream is corrupt.
    public static func readLabels(at path: String) throws -> [UInt8] {
        let file = try GzFile(path: path)
        try checkMagic(file.readHeader(words: 1, of: 2)[0], expected: labelsMagic, kind: "IDX labels", path: path)
        let count = try Int(file.readHeader(words: 1, of: 2)[0])
        try checkDimension(count, name: "label count", max: maxCount, path: path)
        return try file.readExactly(count, what: "label data")
    }

    private static func checkMagic(_ magic: UInt32, expected: UInt32, kind: String, path: String) throws {
        guard magic == expected else {
            throw DataError(path: path, reason: "wrong magic number \(hex(magic)), expected \(hex(expected)) (\(kind))")
        }
    }

    private static func checkDimension(_ value: Int, name: String, max: Int, path: String) throws {
        guard value > 0, value <= max else {
            throw DataError(path: path, reason: "bad header: \(name) is \(value), expected 1...\(max)")
        }
    }

    static func hex(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return "0x" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
    }
}

/// A file opened through zlib, which decompresses gzip and passes plain files
/// through unchanged. Closed on deinit. Used by one thread at a time.
private final class GzFile {
    let path: String
    private let handle: gzFile
    /// Set when a gzip stream ended before its end marker and CRC trailer.
    private(set) var cutShort = false

    init(path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw DataError(path: path, reason: "no such file")
        }
        guard !isDirectory.boolValue else {
            throw DataError(path: path, reason: "is a directory, expected a file")
        }
        guard let handle = gzopen(path, "rb") else {
            throw DataError(path: path, reason: "cannot open: \(String(cString: strerror(errno)))")
        }
        self.path = path
        self.handle = handle
        gzbuffer(handle, 1 << 17)
    }

    deinit {
        gzclose(handle)
    }

    private var headerBytesRead = 0

    /// Reads the next `words` big-endian 32-bit words of a header that is
    /// `headerWords` words long in all (the total is for the error message).
    func readHeader(words: Int, of headerWords: Int) throws -> [UInt32] {
        let bytes = try read(upTo: 4 * words)
        headerBytesRead += bytes.count
        guard bytes.count == 4 * words else {
            throw DataError(path: path, reason:
                "truncated: expected a \(4 * headerWords)-byte IDX header, found \(headerBytesRead) bytes")
        }
        return (0..<words).map { w in
            bytes[4 * w ..< 4 * w + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        }
    }

    /// Reads exactly `count` bytes and checks that nothing follows them.
    func readExactly(_ count: Int, what: String) throws -> [UInt8] {
        let data = try read(upTo: count)
        guard data.count == count else {
            throw DataError(path: path, reason: "truncated: expected \(count) bytes of \(what), found \(data.count)")
        }
        let extra = try countRemainingBytes()
        guard !cutShort else {
            throw DataError(path: path, reason: "truncated: gzip stream ends before its end marker and checksum")
        }
        guard extra == 0 else {
            throw DataError(path: path, reason: "\(extra) unexpected bytes after \(count) bytes of \(what)")
        }
        return data
    }

    /// Reads up to `count` bytes; fewer only at end of file.
    private func read(upTo count: Int) throws -> [UInt8] {
        // Grow geometrically from 16 MiB rather than trusting the header's size
        // up front, so a corrupt header cannot make us allocate gigabytes for a
        // small file. Bytes are read straight into uninitialised storage (no
        // per-byte work, which matters in debug builds).
        var data = [UInt8]()
        while data.count < count {
            let want = min(max(data.count, 1 << 24), count - data.count)
            let previous = data
            data = try [UInt8](unsafeUninitializedCapacity: previous.count + want) { buffer, initialized in
                let raw = UnsafeMutableRawBufferPointer(buffer)
                previous.withUnsafeBytes { raw.copyMemory(from: $0) }
                initialized = previous.count
                initialized += try readInto(UnsafeMutableRawBufferPointer(rebasing: raw[previous.count...]))
            }
            if data.count < previous.count + want { break }
        }
        return data
    }

    /// Counts (and discards) the bytes left in the file.
    private func countRemainingBytes() throws -> Int {
        var scratch = [UInt8](repeating: 0, count: 1 << 16)
        var total = 0
        while true {
            let got = try scratch.withUnsafeMutableBytes { try readInto($0) }
            total += got
            if got < scratch.count { return total }
        }
    }

    /// Fills `buffer` as far as the file allows; returns the bytes read.
    private func readInto(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let want = UInt32(min(buffer.count - filled, 1 << 30))
            let n = gzread(handle, buffer.baseAddress! + filled, want)
            if n < 0 { throw zlibError() }
            if n == 0 {
                // gzread returns 0 both at a clean end and at a gzip stream cut
                // off early; the latter leaves Z_BUF_ERROR in gzerror. Reported
                // by the caller as "truncated" with the byte counts.
                var code: Int32 = 0
                _ = gzerror(handle, &code)
                if code == Z_BUF_ERROR {
                    cutShort = true
                } else if code != Z_OK {
                    throw zlibError()
                }
                break
            }
            filled += Int(n)
        }
        return filled
    }

    private func zlibError() -> DataError {
        var code: Int32 = 0
        let message = gzerror(handle, &code).map { String(cString: $0) } ?? "unknown error"
        if code == Z_ERRNO {
            return DataError(path: path, reason: "read error: \(String(cString: strerror(errno)))")
        }
        return DataError(path: path, reason: "corrupt gzip stream: \(message)")
    }
}
