import Foundation
import QARep
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A fresh directory under the system's temporary directory.
private func makeTemporaryDirectory() throws -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("qarep-atomicfile-\(UUID().uuidString)", isDirectory: true).path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func contents(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

private func listing(_ directory: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
}

@Suite("AtomicFile")
struct AtomicFileTests {
    @Test("writes the bytes, empty files included, and leaves no temporary file")
    func writesBytes() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }

        try AtomicFile.write([0, 1, 2, 255], to: dir + "/a.bin")
        #expect(try contents(dir + "/a.bin") == [0, 1, 2, 255])
        try AtomicFile.write(Data("onnx".utf8), to: dir + "/b.onnx")
        #expect(try contents(dir + "/b.onnx") == Array("onnx".utf8))
        try AtomicFile.write([], to: dir + "/empty")
        #expect(try contents(dir + "/empty") == [])
        #expect(try listing(dir) == ["a.bin", "b.onnx", "empty"])
    }

    @Test("replaces an existing file and keeps its permission bits")
    func overwrites() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/model.onnx"

        try AtomicFile.write([UInt8](repeating: 7, count: 100), to: path)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: path)
        try AtomicFile.write(Data([1, 2, 3]), to: path)
        #expect(try contents(path) == [1, 2, 3])
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o640)
        #expect(try listing(dir) == ["model.onnx"])
    }

    @Test("a missing directory is one error line naming the path; nothing is created")
    func missingDirectory() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/missing/model.onnx"

        let error = #expect(throws: CheckpointError.self) { try AtomicFile.write([1], to: path) }
        #expect(error?.message == "\(path): cannot create temporary file in \(dir)/missing: No such file or directory")
        #expect(try listing(dir) == [])

        let notAPath = #expect(throws: CheckpointError.self) { try AtomicFile.write([1], to: dir + "/") }
        #expect(notAPath?.message == "\(dir)/: not a file path")
    }

    @Test("a failed rename leaves what was at the path, and no temporary file")
    func pathIsADirectory() throws {
        // Renaming a file over a directory fails (EISDIR) whoever runs the test.
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/out"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        try AtomicFile.write([42], to: path + "/keep")

        let error = #expect(throws: CheckpointError.self) { try AtomicFile.write([1, 2, 3], to: path) }
        #expect(error?.message.hasPrefix("\(path): cannot rename temporary file into place: ") == true)
        #expect(error?.message.contains("\n") == false)
        #expect(try listing(dir) == ["out"])
        #expect(try listing(path) == ["keep"])
        #expect(try contents(path + "/keep") == [42])
    }

    @Test(
        "a directory it may not write to leaves the previous file intact",
        .enabled(if: geteuid() != 0, "root may write into a read-only directory"))
    func readOnlyDirectory() throws {
        let dir = try makeTemporaryDirectory()
        defer {
            try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: dir)
            try? FileManager.default.removeItem(atPath: dir)
        }
        let path = dir + "/model.safetensors"
        try AtomicFile.write([1, 2, 3], to: path)
        try FileManager.default.setAttributes([.posixPermissions: 0o555], ofItemAtPath: dir)

        let error = #expect(throws: CheckpointError.self) { try AtomicFile.write([9, 9], to: path) }
        #expect(error?.message == "\(path): cannot create temporary file in \(dir): Permission denied")
        #expect(try contents(path) == [1, 2, 3])
        #expect(try listing(dir) == ["model.safetensors"])
    }
}
