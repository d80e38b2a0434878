import Foundation
import QARep
import Testing

/// `Tests/Fuzz/corpus`, the fuzzers' seeds (written by `qarep-fuzz seeds`).
private let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fuzz/corpus").path

private func seeds(_ target: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: corpus + "/" + target).sorted().map { corpus + "/\(target)/" + $0 }
}

/// A seed the reader refuses would start the fuzzer in the error paths only:
/// after a format change, regenerate them with `qarep-fuzz seeds Tests/Fuzz/corpus`.
@Suite("Fuzz seed corpus: every seed is a valid file for its reader")
struct FuzzCorpusTests {
    @Test("safetensors seeds parse") func safetensors() throws {
        let files = try seeds("safetensors")
        #expect(files.count >= 3)
        for f in files { #expect(throws: Never.self) { _ = try SafeTensorsFile.read(from: f) } }
    }

    @Test("IDX seeds parse as images and labels") func idx() throws {
        _ = try IDX.readImages(at: corpus + "/idx/images")
        #expect(try IDX.readLabels(at: corpus + "/idx/labels") == [1, 2, 9])
    }

    @Test("the INT8 seed is a valid INT8 model, the QAT seed a valid QAT checkpoint, the graph seed a valid INT8 graph")
    func models() throws {
        for f in try seeds("int8") { #expect(throws: Never.self) { _ = try Int8Model.read(from: f) } }
        for f in try seeds("qat") { #expect(throws: Never.self) { _ = try QATRun.loadModel(from: f) } }
        for f in try seeds("int8graph") { #expect(throws: Never.self) { _ = try Int8GraphEngine(Int8Graph.read(from: f)) } }
    }

    @Test("the CIFAR-10 seed is a valid test batch") func cifar10() throws {
        #expect(try CIFAR10.load(split: .test, root: corpus + "/cifar10").labels == [3, 8])
    }
}

/// Inputs that once crashed a reader (found by fuzzing or crafted after it):
/// each must now be refused with an error.
@Suite("Fuzz regressions: inputs that once crashed are refused")
struct FuzzRegressionTests {
    private static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/regressions").path

    @Test("an INT8 layer of 0 x 2^62 channels: refused, no overflow trap")
    func int8Geometry() throws {
        #expect(throws: CheckpointError.self) { _ = try Int8Model.read(from: Self.root + "/int8/zero-by-2e62-channels.safetensors") }
    }

    @Test("a config asking for widths of 60000 is refused before any allocation", arguments: [
        "qat/widths-60000.safetensors", "safetensors/fp32-widths-60000.safetensors"])
    func hugeConfig(_ file: String) throws {
        #expect {
            if file.hasPrefix("qat") { _ = try QATRun.loadModel(from: Self.root + "/" + file) }
            else { _ = try Checkpoint.loadModel(Self.root + "/" + file) }
        } throws: { error in "\(error)".contains("kernel weights") }
    }
}
