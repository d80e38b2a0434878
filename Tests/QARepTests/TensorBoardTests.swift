import Foundation
import QARepTensorBoard
import Testing

/// CRC-32C, bit by bit: the reference the writer's table-driven CRC is checked against.
private func crc32cReference(_ bytes: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        crc ^= UInt32(b)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
    }
    return ~crc
}

private func masked(_ bytes: [UInt8]) -> UInt32 {
    let c = crc32cReference(bytes)
    return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
}

private func littleEndian<T: FixedWidthInteger>(_ bytes: ArraySlice<UInt8>, as: T.Type) -> T {
    bytes.reversed().reduce(T(0)) { $0 << 8 | T($1) }
}

@Suite("TensorBoard event files")
struct TensorBoardTests {
    @Test("records are framed and checksummed as TFRecords, and carry the scalars")
    func eventFile() throws {
        #expect(crc32cReference(Array("123456789".utf8)) == 0xE306_9283, "the reference is CRC-32C")
        let dir = temporaryDirectory("tb"); defer { try? FileManager.default.removeItem(atPath: dir) }
        let writer = try TensorBoardWriter(directory: dir)
        try writer.add([("train/loss", 0.5), ("train/accuracy", 0.25)], step: 7)
        try writer.add([("epoch/test_top1", 0.875)], step: 12)
        try writer.flush()
        #expect((writer.path as NSString).lastPathComponent.hasPrefix("events.out.tfevents."))

        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: writer.path)))
        var records: [[UInt8]] = []
        var at = 0
        while at < bytes.count {
            let length = Int(littleEndian(bytes[at..<(at + 8)], as: UInt64.self))
            #expect(littleEndian(bytes[(at + 8)..<(at + 12)], as: UInt32.self) == masked(Array(bytes[at..<(at + 8)])))
            let data = Array(bytes[(at + 12)..<(at + 12 + length)])
            #expect(littleEndian(bytes[(at + 12 + length)..<(at + 16 + length)], as: UInt32.self) == masked(data))
            records.append(data)
            at += 16 + length
        }
        #expect(at == bytes.count && records.count == 3)
        func contains(_ record: [UInt8], _ needle: [UInt8]) -> Bool {
            record.count >= needle.count && (0...(record.count - needle.count)).contains { Array(record[$0..<($0 + needle.count)]) == needle }
        }
        #expect(contains(records[0], Array("brain.Event:2".utf8)))
        // step = 7: field 2, varint (0x10 0x07); simple_value 0.5: field 2 fixed32 (0x15) then the float.
        #expect(contains(records[1], [0x10, 0x07]) && contains(records[1], Array("train/loss".utf8)))
        #expect(contains(records[1], [0x15] + withUnsafeBytes(of: Float(0.5).bitPattern.littleEndian, Array.init)))
        #expect(contains(records[2], Array("epoch/test_top1".utf8)) && contains(records[2], [0x10, 0x0C]))
    }
}
