import QARep
import Testing

// The float engine (NHWC from the first convolution to the last, fused bias
// and ReLU) against the deployed module's own forward pass.

@Suite("Float engine for deployed networks")
struct DeployedEngineTests {
    @Test("logits equal the deployed module's bit for bit", arguments: ["tiny", "a0-half"])
    func matchesModule(_ name: String) throws {
        let model = try RepVGGNet(config: .named(name, block: .qarepvgg), seed: 3)
        model.eval()
        let deployed = model.deployed()
        var rng = SplitMix64(seed: 4)
        for batch in [1, 3] {
            let x = Tensor.uniform([batch, 1, 28, 28], bound: 2, rng: &rng, requiresGrad: false)
            let expected = noGrad { deployed(x) }
            for threads in [1, 2] {
                let logits = try DeployedEngine(deployed, threads: threads).logits(x)
                #expect(logits.shape == [batch, 10])
                #expect(logits.data == expected.data, "batch \(batch), \(threads) thread(s)")
            }
        }
    }

    @Test("one engine reused across shapes and inputs keeps matching (buffers and their zero borders are reused)")
    func reusedAcrossCalls() throws {
        let model = try RepVGGNet(config: .named("tiny", block: .qarepvgg), seed: 7)
        model.eval()
        let deployed = model.deployed()
        let engine = try DeployedEngine(deployed, threads: 2)
        var rng = SplitMix64(seed: 8)
        // Six shapes, more than the engine keeps plans for, then the first again with new values.
        let shapes = [[4, 1, 28, 28], [1, 1, 28, 28], [2, 1, 21, 19], [3, 1, 28, 28], [5, 1, 14, 14], [4, 1, 28, 28],
                      [1, 1, 28, 28], [4, 1, 28, 28]]
        for shape in shapes {
            let x = Tensor.uniform(shape, bound: 2, rng: &rng, requiresGrad: false)
            #expect(engine.logits(x).data == noGrad { deployed(x) }.data, "input \(shape)")
        }
    }

    @Test("an odd input size runs and matches")
    func oddInput() throws {
        let model = try RepVGGNet(config: .named("tiny", block: .repvgg), seed: 5)
        model.eval()
        let deployed = model.deployed()
        var rng = SplitMix64(seed: 6)
        let x = Tensor.uniform([2, 1, 21, 19], bound: 1, rng: &rng, requiresGrad: false)
        #expect(try DeployedEngine(deployed).logits(x).data == noGrad { deployed(x) }.data)
    }

    @Test("a multi-branch model is refused with a clear error")
    func refusesTrainingForm() throws {
        let model = try RepVGGNet(config: .named("tiny", block: .qarepvgg), seed: 0)
        #expect(throws: ModelError.self) { try DeployedEngine(model) }
    }
}
