// A safetensors file in memory: named tensors plus string metadata.
//
// File layout (https://github.com/huggingface/safetensors):
//
//     [ 8 bytes ]  N, the header length, unsigned 64-bit little-endian
//     [ N bytes ]  UTF-8 JSON object, optionally padded with trailing spaces
//     [ rest    ]  the data buffer: raw little-endian tensor elements
//
// The header maps each tensor name to
// `{"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}`
// (offsets relative to the start of the data buffer, `end` exclusive) and may
// hold one `"__metadata__"` object whose values are all strings.
//
// Reading and validation: SafeTensorsFile+Reading.swift (header syntax in
// SafeTensorsHeaderJSON.swift); writing: SafeTensorsFile+Writing.swift.

/// The contents of one safetensors file: named tensors and string metadata.
///
/// Reading is strict: anything that the format does not allow, or that QARep
/// cannot represent, is refused with a ``CheckpointError`` whose one-line
/// message starts with the file name and names the offending key. The checks:
///
/// - the file has at least 8 bytes; the header length `N` is at most
///   100,000,000 and `8 + N` does not pass the end of the file;
/// - the header is valid UTF-8 and one JSON object (RFC 8259, no duplicate keys;
///   whitespace such as the space padding is allowed around it);
/// - `"__metadata__"`, if present, is an object whose values are all strings;
/// - every other key is a tensor entry: an object with exactly `dtype` (a
///   string naming a supported dtype), `shape` (an array of integers `>= 0`) and
///   `data_offsets` (an array of two integers `0 <= begin <= end <= buffer size`);
///   integers are exact up to `Int.max` (no fractions, no exponents);
/// - `end - begin == product(shape) * dtype size`;
/// - the tensors, sorted by offset, neither overlap nor leave gaps, and cover the
///   data buffer exactly, to the last byte of the file.
///
/// Writing is deterministic and atomic; see ``serialized()`` and ``write(to:)``.
public struct SafeTensorsFile: Sendable, Hashable {
    /// The tensors by name (PyTorch `state_dict` names, for example
    /// `stage0.rbr_dense.conv.weight`).
    public var tensors: [String: SafeTensor]
    /// The `__metadata__` strings; empty when the header has none.
    public var metadata: [String: String]

    /// The largest header accepted, in bytes (as the reference implementation).
    public static let maxHeaderLength = 100_000_000

    /// The reserved header key that holds the metadata.
    public static let metadataKey = "__metadata__"

    /// Creates a file in memory.
    public init(tensors: [String: SafeTensor] = [:], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    /// Byte-wise (code point) order, independent of Unicode normalisation: the
    /// order of names in the header and of ties in the data buffer.
    static func utf8Less(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }
}
