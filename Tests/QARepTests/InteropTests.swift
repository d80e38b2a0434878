import Foundation
import QARep
import Testing

// PyTorch interoperability: checkpoints saved the way PyTorch users save them
// (`safetensors.numpy.save_file(state_dict)`, no `__metadata__`, PyTorch
// `state_dict` names, `num_batches_tracked` as 0-dim int64) load with their
// config inferred from names and shapes, and give the logits of an
// independent numpy reference (scripts/interop.py, eval mode).
//
// Regenerate the fixtures with
//     python3 scripts/interop.py generate Tests/QARepTests/Fixtures

@Suite("Interop: PyTorch-style safetensors checkpoints")
struct InteropTests {
    struct Fixture: CustomTestStringConvertible, Sendable {
        var name: String
        var block: BlockKind
        var deployed: Bool
        var testDescription: String { name }
    }

    static let fixtures: [Fixture] = [
        Fixture(name: "repvgg", block: .repvgg, deployed: false),
        Fixture(name: "s2", block: .s2, deployed: false),
        Fixture(name: "s3", block: .s3, deployed: false),
        Fixture(name: "qarepvgg", block: .qarepvgg, deployed: false),
        // A deployed file carries no block kind; the loader reports qarepvgg.
        Fixture(name: "qarepvgg_deployed", block: .qarepvgg, deployed: true),
    ]

    static let widths = [4, 4, 8, 8, 16]
    static let blocks = [1, 1, 2, 1, 1]
    /// Every BN's `num_batches_tracked` in the fixtures.
    static let batchesTracked: Int64 = 123

    static func fixturePath(_ file: String) throws -> String {
        let dir = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil),
                               "Fixtures missing from the test bundle")
        return dir.appendingPathComponent(file).path
    }

    /// The stored input tensor and reference logits of a fixture.
    static func io(_ name: String) throws -> (input: Tensor, logits: [Float], shape: [Int]) {
        let file = try SafeTensorsFile.read(from: fixturePath(name + ".io.safetensors"))
        let input = try #require(file.tensors["input"]), logits = try #require(file.tensors["logits"])
        return (Tensor(try input.floats(), shape: input.shape), try logits.floats(), logits.shape)
    }

    /// max |a - b| / max |b|.
    static func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        return diff / max(b.map { abs($0) }.max() ?? 0, .leastNormalMagnitude)
    }

    @Test("Fixtures have no QARep metadata (the PyTorch case)", arguments: fixtures)
    func noMetadata(_ fixture: Fixture) throws {
        let file = try SafeTensorsFile.read(from: Self.fixturePath(fixture.name + ".safetensors"))
        #expect(file.metadata["model"] == nil && file.metadata["format"] == nil)
        let nbt = file.tensors.keys.filter { $0.hasSuffix(".num_batches_tracked") }
        #expect(nbt.isEmpty == fixture.deployed)
        for key in nbt { #expect(file.tensors[key]?.dtype == .i64 && file.tensors[key]?.shape == []) }
    }

    @Test("Config is inferred from PyTorch names and shapes", arguments: fixtures)
    func inferredConfig(_ fixture: Fixture) throws {
        let model = try Checkpoint.loadModel(Self.fixturePath(fixture.name + ".safetensors"))
        #expect(model.config.widths == Self.widths)
        #expect(model.config.blocks == Self.blocks)
        #expect(model.config.block == fixture.block)
        #expect(model.config.classes == 10)
        #expect(model.config.inChannels == 1)
        #expect(model.config.name == "custom")
        #expect(model.isDeployed == fixture.deployed)
        if !fixture.deployed {
            let bns = model.namedModules().compactMap { $0.module as? BatchNorm2d }
            #expect(!bns.isEmpty)
            #expect(bns.allSatisfy { $0.numBatchesTracked == Self.batchesTracked })
        }
    }

    @Test("Eval-mode logits equal the numpy reference (1e-4 relative)", arguments: fixtures)
    func logitsMatchReference(_ fixture: Fixture) throws {
        let model = try Checkpoint.loadModel(Self.fixturePath(fixture.name + ".safetensors"))
        model.eval()
        let (input, expected, shape) = try Self.io(fixture.name)
        let out = noGrad { model(input) }
        #expect(out.shape == shape)
        let err = Self.relativeError(out.data, expected)
        #expect(err <= 1e-4, "\(fixture.name): relative error \(err)")
    }

    @Test("Deploying keeps the reference logits (1e-4 relative)", arguments: fixtures)
    func deployedLogitsMatchReference(_ fixture: Fixture) throws {
        let model = try Checkpoint.loadModel(Self.fixturePath(fixture.name + ".safetensors"))
        model.eval()
        let deployed = model.deployed()
        #expect(deployed.isDeployed)
        let (input, expected, _) = try Self.io(fixture.name)
        let out = noGrad { deployed(input) }
        let err = Self.relativeError(out.data, expected)
        #expect(err <= 1e-4, "\(fixture.name) deployed: relative error \(err)")
    }

    @Test("Round trip: a re-saved fixture reloads (with metadata) to the same logits", arguments: fixtures)
    func roundTrip(_ fixture: Fixture) throws {
        let model = try Checkpoint.loadModel(Self.fixturePath(fixture.name + ".safetensors"))
        model.eval()
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("interop-\(fixture.name)-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Checkpoint.save(model, to: path)
        let reloaded = try Checkpoint.loadModel(path)
        reloaded.eval()
        #expect(reloaded.config == model.config)
        let (input, expected, _) = try Self.io(fixture.name)
        let out = noGrad { reloaded(input) }
        #expect(Self.relativeError(out.data, expected) <= 1e-4)
    }
}
