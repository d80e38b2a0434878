import Foundation
import QARep
import Testing

/// Gives every batch norm of `model` non-trivial statistics and affine
/// parameters, so a fold that ignored any of them would show.
func randomizeBatchNorms(_ model: Module, seed: UInt64) {
    var rng = SplitMix64(seed: seed)
    for (_, m) in model.namedModules() {
        guard let bn = m as? BatchNorm2d else { continue }
        let c = bn.channels
        bn.weight.assign(randomFloats(c, rng: &rng, in: 0.5 ... 1.5))
        bn.bias.assign(randomFloats(c, rng: &rng, in: -0.5 ... 0.5))
        bn.runningMean.assign(randomFloats(c, rng: &rng, in: -0.5 ... 0.5))
        bn.runningVar.assign(randomFloats(c, rng: &rng, in: 0.5 ... 2))
    }
}

/// max |a - b| / max |b|: the relative error the reparameterization contract uses (1e-5).
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    let diff = zip(a, b).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
    return diff / max(maxAbs(b), 1e-12)
}

@Suite("RepVGG blocks and reparameterization")
struct RepVGGTests {
    static let shapes: [(inC: Int, outC: Int, stride: Int)] = [(8, 8, 1), (8, 8, 2), (4, 8, 1), (6, 8, 2)]

    @Test("every block kind folds into one 3x3 conv exactly", arguments: BlockKind.allCases)
    func blockFold(kind: BlockKind) {
        for (i, s) in Self.shapes.enumerated() {
            var rng = SplitMix64(seed: UInt64(10 + i))
            let block = RepVGGBlock(kind: kind, inChannels: s.inC, outChannels: s.outC, stride: s.stride, rng: &rng)
            randomizeBatchNorms(block, seed: UInt64(100 + i))
            block.eval()
            let x = randomTensor([2, s.inC, 9, 9], seed: UInt64(200 + i), requiresGrad: false)
            let reference = noGrad { block(x) }
            let deployed = block.deployed()
            let folded = noGrad { deployed(x) }
            #expect(folded.shape == reference.shape)
            let err = relativeError(folded.data, reference.data)
            #expect(err < 1e-5, "\(kind) in=\(s.inC) out=\(s.outC) stride=\(s.stride): relative error \(err)")
        }
    }

    @Test("identity branch exists only when in == out and stride is 1")
    func identityBranch() {
        var rng = SplitMix64(seed: 1)
        #expect(RepVGGBlock(kind: .repvgg, inChannels: 8, outChannels: 8, stride: 1, rng: &rng).hasIdentity)
        #expect(!RepVGGBlock(kind: .repvgg, inChannels: 8, outChannels: 8, stride: 2, rng: &rng).hasIdentity)
        #expect(!RepVGGBlock(kind: .repvgg, inChannels: 4, outChannels: 8, stride: 1, rng: &rng).hasIdentity)
    }

    @Test("state-dict names follow the public RepVGG and YOLOv6 code")
    func keyNames() throws {
        let repvgg = try RepVGGNet(config: ModelConfig.named("tiny", block: .repvgg))
        let keys = Set(repvgg.stateDict().map(\.key))
        for k in ["stage0.rbr_dense.conv.weight", "stage0.rbr_dense.bn.running_var", "stage0.rbr_1x1.conv.weight",
                  "stage0.rbr_1x1.bn.weight", "stage2.1.rbr_identity.running_mean", "stage1.0.rbr_dense.bn.bias",
                  "linear.weight", "linear.bias"] {
            #expect(keys.contains(k), "missing \(k)")
        }
        #expect(!keys.contains("stage1.0.rbr_identity.weight"), "a stride-2 block has no identity branch")

        let qa = try RepVGGNet(config: ModelConfig.named("tiny", block: .qarepvgg))
        let qaKeys = Set(qa.stateDict().map(\.key))
        for k in ["stage0.rbr_dense.conv.weight", "stage0.rbr_1x1.weight", "stage0.bn.weight", "stage0.bn.running_var",
                  "stage2.1.bn.bias"] {
            #expect(qaKeys.contains(k), "missing \(k)")
        }
        #expect(!qaKeys.contains { $0.contains("rbr_identity") }, "QARepVGG's identity has no parameters")

        let deployed = qa.deployed()
        let dKeys = Set(deployed.stateDict().map(\.key))
        #expect(dKeys == Set(["stage0.rbr_reparam.weight", "stage0.rbr_reparam.bias", "stage1.0.rbr_reparam.weight",
                              "stage1.0.rbr_reparam.bias", "stage2.0.rbr_reparam.weight", "stage2.0.rbr_reparam.bias",
                              "stage2.1.rbr_reparam.weight", "stage2.1.rbr_reparam.bias", "stage3.0.rbr_reparam.weight",
                              "stage3.0.rbr_reparam.bias", "stage3.1.rbr_reparam.weight", "stage3.1.rbr_reparam.bias",
                              "stage4.0.rbr_reparam.weight", "stage4.0.rbr_reparam.bias", "linear.weight", "linear.bias"]))
    }

    @Test("whole networks fold exactly", arguments: BlockKind.allCases)
    func networkFold(kind: BlockKind) throws {
        let config = ModelConfig(widths: [8, 8, 16, 16, 24], blocks: [1, 2, 2, 1, 1], block: kind)
        let model = try RepVGGNet(config: config, seed: 3)
        randomizeBatchNorms(model, seed: 4)
        model.eval()
        let x = randomTensor([3, 1, 28, 28], seed: 5, requiresGrad: false)
        let reference = noGrad { model(x) }
        let deployed = model.deployed()
        #expect(deployed.isDeployed)
        let err = relativeError(noGrad { deployed(x) }.data, reference.data)
        #expect(err < 1e-5, "\(kind): relative error \(err)")
    }

    @Test("custom L2 equals the formula written out by hand")
    func customL2Value() throws {
        let config = ModelConfig(widths: [4, 4, 8, 8, 8], blocks: [1, 1, 1, 1, 1], block: .repvgg)
        let model = try RepVGGNet(config: config, seed: 6)
        randomizeBatchNorms(model, seed: 7)
        var expected = 0.0
        for case let b as RepVGGBlock in model.blocks {
            let pw = b.pointwise as! ConvBN
            let k3 = b.dense.conv.weight.data, k1 = pw.conv.weight.data
            let t3 = b.dense.bn.scale, t1 = pw.bn.scale
            let I = b.inChannels
            for o in 0..<b.outChannels {
                for i in 0..<I {
                    for tap in 0..<9 {
                        let v = Double(k3[(o * I + i) * 9 + tap])
                        if tap != 4 { expected += v * v }
                    }
                    let eq = Double(k3[(o * I + i) * 9 + 4]) * Double(t3[o]) + Double(k1[o * I + i]) * Double(t1[o])
                    expected += eq * eq / (Double(t3[o] * t3[o]) + Double(t1[o] * t1[o]))
                }
            }
        }
        let term = CustomL2.term(model)
        #expect(abs(Double(term.item) - expected) / expected < 1e-5)
        // Its gradient reaches exactly the two kernels of each block.
        term.backward()
        for case let b as RepVGGBlock in model.blocks {
            #expect(b.dense.conv.weight.grad != nil)
            #expect((b.pointwise as! ConvBN).conv.weight.grad != nil)
            #expect(b.dense.bn.weight.grad == nil, "t is a constant: no gradient to gamma")
        }
    }

    @Test("custom L2 gradient matches finite differences")
    func customL2Gradient() throws {
        let config = ModelConfig(widths: [3, 3, 4, 4, 4], blocks: [1, 1, 1, 1, 1], block: .repvgg)
        let model = try RepVGGNet(config: config, seed: 8)
        randomizeBatchNorms(model, seed: 9)
        let block = model.stage0 as! RepVGGBlock
        let k3 = block.dense.conv.weight, k1 = (block.pointwise as! ConvBN).conv.weight
        for c in compareGradients([("K3", k3), ("K1", k1)], h: 1e-2, { CustomL2.term(model) }) {
            #expect(c.error < 2e-2, "\(c)")
        }
    }
}
