import Foundation

/// Writes a float32 `[rows, columns]` array as a NumPy `.npy` file (version 1.0).
public func writeNumPy(_ values: [Float], rows: Int, columns: Int, to path: String) throws {
    var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(rows), \(columns)), }"
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    let total = 10 + header.utf8.count + 1
    header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
    var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
    let length = UInt16(header.utf8.count)
    data.append(contentsOf: [UInt8(length & 0xFF), UInt8(length >> 8)])
    data.append(contentsOf: Array(header.utf8))
    values.withUnsafeBufferPointer { data.append(Data(buffer: $0)) }
    try AtomicFile.write(data, to: path)
}
