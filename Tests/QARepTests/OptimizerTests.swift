import Foundation
import QARep
import Testing

// Optimizers against hand-computed trajectories that follow PyTorch's
// documented update rules, state round trips, and learning-rate schedules.
//
// Every trajectory minimizes L(p) = p0² + 3 p1² from p = [1, -2], so the
// gradient is g = [2 p0, 6 p1] (computed by backward(), not by hand).

private func makeParameter() -> Tensor { Tensor([1, -2], shape: [2], requiresGrad: true) }

/// L = p0² + 3 p1², backward into `p.grad` (cleared first).
private func computeGradient(_ p: Tensor) {
    p.zeroGrad()
    (p.squared() * Tensor([1, 3], shape: [2])).sum().backward()
}

private func expectTrajectory(_ optimizer: any Optimizer, _ p: Tensor, _ expected: [[Float]],
                              tolerance: Float = 2e-6, sourceLocation: SourceLocation = #_sourceLocation) {
    for (t, want) in expected.enumerated() {
        computeGradient(p)
        optimizer.step()
        let ok = zip(p.data, want).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($1)) }
        #expect(ok, "step \(t + 1): \(p.data), expected \(want)", sourceLocation: sourceLocation)
    }
}

@Suite("Optimizers and schedules")
struct OptimizerTests {
    // MARK: - SGD

    @Test("SGD with momentum 0.9, lr 0.1")
    func sgdMomentum() {
        // buf = g on the first step, then buf = 0.9 buf + g; p -= 0.1 buf.
        // 1: g = [2, -12];     buf = [2, -12];                          p = [0.8, -0.8]
        // 2: g = [1.6, -4.8];  buf = [1.8 + 1.6, -10.8 - 4.8] = [3.4, -15.6];   p = [0.46, 0.76]
        // 3: g = [0.92, 4.56]; buf = [3.06 + 0.92, -14.04 + 4.56] = [3.98, -9.48]; p = [0.062, 1.708]
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)], learningRate: 0.1, momentum: 0.9)
        expectTrajectory(sgd, p, [[0.8, -0.8], [0.46, 0.76], [0.062, 1.708]])
    }

    @Test("SGD with Nesterov momentum")
    func sgdNesterov() {
        // buf as above; the step uses d = g + 0.9 buf.
        // 1: g = [2, -12];          buf = [2, -12];         d = [3.8, -22.8];      p = [0.62, 0.28]
        // 2: g = [1.24, 1.68];      buf = [3.04, -9.12];    d = [3.976, -6.528];   p = [0.2224, 0.9328]
        // 3: g = [0.4448, 5.5968];  buf = [3.1808, -2.6112]; d = [3.30752, 3.24672]; p = [-0.108352, 0.608128]
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)], learningRate: 0.1,
                      momentum: 0.9, nesterov: true)
        expectTrajectory(sgd, p, [[0.62, 0.28], [0.2224, 0.9328], [-0.108352, 0.608128]])
    }

    @Test("SGD with weight decay (L2 added to the gradient) and momentum, per group")
    func sgdWeightDecay() {
        // Group with weight decay 0.1: d = g + 0.1 p, then momentum as above.
        // 1: d = [2 + 0.1, -12 - 0.2] = [2.1, -12.2];            buf = d;                   p = [0.79, -0.78]
        // 2: g = [1.58, -4.68];   d = [1.659, -4.758];   buf = [1.89 + 1.659, -10.98 - 4.758] = [3.549, -15.738]
        //                                                                                    p = [0.4351, 0.7938]
        // 3: g = [0.8702, 4.7628]; d = [0.91371, 4.84218]; buf = [4.10781, -9.32202];       p = [0.024319, 1.726002]
        // A parameter in a group without decay follows the plain momentum trajectory.
        let decayed = makeParameter(), plain = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("a", decayed)], weightDecay: 0.1),
                               ParameterGroup(parameters: [("b", plain)], weightDecay: 0)],
                      learningRate: 0.1, momentum: 0.9)
        let expectedDecayed: [[Float]] = [[0.79, -0.78], [0.4351, 0.7938], [0.024319, 1.726002]]
        let expectedPlain: [[Float]] = [[0.8, -0.8], [0.46, 0.76], [0.062, 1.708]]
        for t in 0 ..< 3 {
            computeGradient(decayed)
            computeGradient(plain)
            sgd.step()
            #expect(zip(decayed.data, expectedDecayed[t]).allSatisfy { abs($0 - $1) < 2e-6 }, "step \(t + 1): \(decayed.data)")
            #expect(zip(plain.data, expectedPlain[t]).allSatisfy { abs($0 - $1) < 2e-6 }, "step \(t + 1): \(plain.data)")
        }
    }

    @Test("SGD without momentum, with weight decay 0.5")
    func sgdPlain() {
        // p -= 0.1 (g + 0.5 p)
        // 1: d = [2.5, -13];         p = [0.75, -0.7]
        // 2: d = [1.875, -4.55];     p = [0.5625, -0.245]
        // 3: d = [1.40625, -1.5925]; p = [0.421875, -0.08575]
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0.5)], learningRate: 0.1, momentum: 0)
        expectTrajectory(sgd, p, [[0.75, -0.7], [0.5625, -0.245], [0.421875, -0.08575]])
        #expect(sgd.stateDict().isEmpty, "no momentum buffer without momentum")
    }

    @Test("SGD with dampening 0.5: the first step takes the raw gradient")
    func sgdDampening() {
        // buf = g first (PyTorch does not dampen the first step), then buf = 0.9 buf + 0.5 g.
        // 1: buf = [2, -12];                                   p = [0.8, -0.8]
        // 2: g = [1.6, -4.8];  buf = [1.8 + 0.8, -10.8 - 2.4] = [2.6, -13.2];   p = [0.54, 0.52]
        // 3: g = [1.08, 3.12]; buf = [2.34 + 0.54, -11.88 + 1.56] = [2.88, -10.32]; p = [0.252, 1.552]
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)], learningRate: 0.1,
                      momentum: 0.9, dampening: 0.5)
        expectTrajectory(sgd, p, [[0.8, -0.8], [0.54, 0.52], [0.252, 1.552]])
    }

    @Test("a parameter without a gradient is left alone and gets no state")
    func skipsParametersWithoutGradient() {
        let p = makeParameter(), idle = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("p", p), ("idle", idle)], weightDecay: 0.1)], learningRate: 0.1)
        computeGradient(p)
        sgd.step()
        #expect(idle.data == [1, -2])
        #expect(Set(sgd.stateDict().keys) == ["p.momentum_buffer"])
    }

    // MARK: - AdamW

    @Test("AdamW: lr 0.1, betas (0.9, 0.999), eps 1e-8, decoupled weight decay 0.01")
    func adamW() {
        // p *= 1 - lr*wd; m = 0.9 m + 0.1 g; v = 0.999 v + 0.001 g²;
        // p -= lr * (m / (1 - 0.9^t)) / (sqrt(v / (1 - 0.999^t)) + eps)
        // 1: g = [2, -12]; p -> [0.999, -1.998]; m = [0.2, -1.2]; v = [0.004, 0.144];
        //    m̂ = [2, -12], sqrt(v̂) = [2, 12]: the step is lr * sign(g);  p = [0.899, -1.898]
        // 2: g = [1.798, -11.388]; p -> [0.898101, -1.896102]; m = [0.3598, -2.2188];
        //    v = [0.0072288, 0.27354254]; m̂ = [1.8936842, -11.677895]; sqrt(v̂) = [1.9016335, 11.697850]
        //    p = [0.7985190, -1.7962726]
        // 3: g = [1.5970381, -10.777636]; p -> [0.7977205, -1.7944763]; m = [0.4835238, -3.0746836];
        //    v = [0.0097721, 0.3894264]; m̂ = [1.7842207, -11.345696]; sqrt(v̂) = [1.8057209, 11.399066]
        //    p = [0.6989112, -1.6949445]
        // Without decay (second group): [0.9, -1.9], [0.8004122, -1.8001665], [0.7015863, -1.7006234].
        let decayed = makeParameter(), plain = makeParameter()
        let adam = AdamW(groups: [ParameterGroup(parameters: [("a", decayed)], weightDecay: 0.01),
                                  ParameterGroup(parameters: [("b", plain)], weightDecay: 0)], learningRate: 0.1)
        #expect(adam.beta1 == 0.9 && adam.beta2 == 0.999 && adam.eps == 1e-8)
        let expectedDecayed: [[Float]] = [[0.899, -1.898], [0.7985190, -1.7962726], [0.6989112, -1.6949445]]
        let expectedPlain: [[Float]] = [[0.9, -1.9], [0.8004122, -1.8001665], [0.7015863, -1.7006234]]
        for t in 0 ..< 3 {
            computeGradient(decayed)
            computeGradient(plain)
            adam.step()
            #expect(zip(decayed.data, expectedDecayed[t]).allSatisfy { abs($0 - $1) < 3e-6 }, "step \(t + 1): \(decayed.data)")
            #expect(zip(plain.data, expectedPlain[t]).allSatisfy { abs($0 - $1) < 3e-6 }, "step \(t + 1): \(plain.data)")
        }
        let state = adam.stateDict()
        #expect(state["a.step"] == [3] && state["b.step"] == [3])
        #expect(zip(state["a.exp_avg"] ?? [], [0.4835238, -3.0746836] as [Float]).allSatisfy { abs($0 - $1) < 1e-5 })
    }

    // MARK: - State round trips

    /// Runs `steps` updates of a fresh optimizer on a fresh parameter, saves the
    /// state, and checks that a second optimizer loaded from it continues
    /// bit-identically while one that was not loaded diverges.
    private func expectResumesIdentically(_ make: (Tensor) -> any Optimizer,
                                          sourceLocation: SourceLocation = #_sourceLocation) throws {
        let p = makeParameter()
        let original = make(p)
        for _ in 0 ..< 2 { computeGradient(p); original.step() }
        let state = original.stateDict()
        #expect(!state.isEmpty, sourceLocation: sourceLocation)

        let resumedParameter = Tensor(p.data, shape: [2], requiresGrad: true)
        let resumed = make(resumedParameter)
        try resumed.loadStateDict(state)
        let freshParameter = Tensor(p.data, shape: [2], requiresGrad: true)
        let fresh = make(freshParameter)

        for _ in 0 ..< 3 {
            for (opt, q) in [(original, p), (resumed, resumedParameter), (fresh, freshParameter)] {
                computeGradient(q)
                opt.step()
            }
            #expect(resumedParameter.data.map(\.bitPattern) == p.data.map(\.bitPattern), sourceLocation: sourceLocation)
        }
        #expect(freshParameter.data != p.data, "state made no difference: the round trip test is vacuous",
                sourceLocation: sourceLocation)
        // The state itself round-trips.
        #expect(resumed.stateDict() == original.stateDict(), sourceLocation: sourceLocation)
    }

    @Test("SGD state dict round trip continues identically")
    func sgdRoundTrip() throws {
        try expectResumesIdentically { p in
            SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0.01)], learningRate: 0.05,
                momentum: 0.9, nesterov: true)
        }
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)], learningRate: 0.1)
        computeGradient(p); sgd.step()
        #expect(Array(sgd.stateDict().keys) == ["w.momentum_buffer"])
    }

    @Test("AdamW state dict round trip continues identically")
    func adamWRoundTrip() throws {
        try expectResumesIdentically { p in
            AdamW(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0.05)], learningRate: 0.01)
        }
        let p = makeParameter()
        let adam = AdamW(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)])
        computeGradient(p); adam.step()
        #expect(Set(adam.stateDict().keys) == ["w.exp_avg", "w.exp_avg_sq", "w.step"])
    }

    @Test("loading malformed optimizer state throws")
    func malformedState() {
        let p = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)], learningRate: 0.1)
        #expect(throws: OptimizerStateError.self) { try sgd.loadStateDict(["w.momentum_buffer": [1, 2, 3]]) }
        let adam = AdamW(groups: [ParameterGroup(parameters: [("w", p)], weightDecay: 0)])
        #expect(throws: OptimizerStateError.self) { try adam.loadStateDict(["w.exp_avg": [0, 0]]) }
        #expect(throws: OptimizerStateError.self) {
            try adam.loadStateDict(["w.exp_avg": [0, 0], "w.exp_avg_sq": [0], "w.step": [1]])
        }
        // Missing state for a parameter is fine (it starts fresh).
        #expect(throws: Never.self) { try adam.loadStateDict([:]) }
    }

    @Test("Optimizer.zeroGrad clears every group's gradients")
    func optimizerZeroGrad() {
        let a = makeParameter(), b = makeParameter()
        let sgd = SGD(groups: [ParameterGroup(parameters: [("a", a)], weightDecay: 0),
                               ParameterGroup(parameters: [("b", b)], weightDecay: 0)], learningRate: 0.1)
        computeGradient(a); computeGradient(b)
        sgd.zeroGrad()
        #expect(a.grad == nil && b.grad == nil)
    }

    // MARK: - Learning-rate schedules

    private func expectRate(_ s: LearningRateSchedule, step: Int, stepsPerEpoch: Int = 1, _ want: Float,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        let got = s.learningRate(step: step, stepsPerEpoch: stepsPerEpoch)
        #expect(abs(got - want) <= 1e-6 * max(1, abs(want)), "step \(step): \(got), expected \(want)",
                sourceLocation: sourceLocation)
    }

    @Test("warmupCosine: start, mid and end of warm-up, middle and end of the cosine")
    func warmupCosine() {
        // base 0.1, warm-up 10 steps from 0.1 * base, cosine to 0.001 at step 110.
        let s = LearningRateSchedule.warmupCosine(base: 0.1, warmup: 10, total: 110, minimum: 0.001, warmupStartFactor: 0.1)
        expectRate(s, step: 0, 0.01)            // base * 0.1
        expectRate(s, step: 5, 0.055)           // base * (0.1 + 0.9 * 5/10)
        expectRate(s, step: 10, 0.1)            // end of warm-up: base
        expectRate(s, step: 60, 0.0505)         // half way: min + (base - min) / 2
        expectRate(s, step: 85, 0.0154982143)   // 3/4: min + (base - min) * (1 + cos(3π/4)) / 2
        expectRate(s, step: 110, 0.001)         // end: minimum
        expectRate(s, step: 500, 0.001)         // and it stays there
        // Rising through the warm-up, falling after it.
        let rates = (0 ... 110).map { s.learningRate(step: $0, stepsPerEpoch: 1) }
        #expect(zip(rates[0 ..< 10], rates[1 ... 10]).allSatisfy { $0 < $1 })
        #expect(zip(rates[10 ..< 110], rates[11 ... 110]).allSatisfy { $0 >= $1 })

        // Default start factor 0 and no warm-up.
        let zeroStart = LearningRateSchedule.warmupCosine(base: 0.2, warmup: 4, total: 8)
        expectRate(zeroStart, step: 0, 0)
        expectRate(zeroStart, step: 2, 0.1)
        expectRate(zeroStart, step: 6, 0.1)
        let noWarmup = LearningRateSchedule.warmupCosine(base: 0.2, warmup: 0, total: 8)
        expectRate(noWarmup, step: 0, 0.2)
        expectRate(noWarmup, step: 8, 0)
    }

    @Test("warmupCosine with epoch units is constant within an epoch")
    func epochUnit() {
        // 3 warm-up epochs of 50 steps, 10 epochs in all, base 0.01 (the paper's QAT recipe).
        let s = LearningRateSchedule.warmupCosine(base: 0.01, warmup: 3, total: 10, unit: .epoch)
        expectRate(s, step: 0, stepsPerEpoch: 50, 0)
        expectRate(s, step: 49, stepsPerEpoch: 50, 0)
        expectRate(s, step: 50, stepsPerEpoch: 50, 0.01 / 3)
        expectRate(s, step: 149, stepsPerEpoch: 50, 0.02 / 3)
        expectRate(s, step: 150, stepsPerEpoch: 50, 0.01)
        expectRate(s, step: 199, stepsPerEpoch: 50, 0.01)
        expectRate(s, step: 200, stepsPerEpoch: 50, 0.01 * Float(0.5 * (1 + cos(Double.pi / 7))))
        expectRate(s, step: 500, stepsPerEpoch: 50, 0)
        // The same schedule in steps moves every step.
        let perStep = LearningRateSchedule.warmupCosine(base: 0.01, warmup: 3, total: 10, unit: .step)
        #expect(perStep.learningRate(step: 1, stepsPerEpoch: 50) != perStep.learningRate(step: 0, stepsPerEpoch: 50))
    }

    @Test("step schedule: base * gamma^floor(t / stepSize)")
    func stepSchedule() {
        let byEpoch = LearningRateSchedule.step(base: 0.1, stepSize: 3, gamma: 0.5)
        #expect(byEpoch.unit == .epoch)
        expectRate(byEpoch, step: 0, stepsPerEpoch: 10, 0.1)
        expectRate(byEpoch, step: 29, stepsPerEpoch: 10, 0.1)   // epoch 2
        expectRate(byEpoch, step: 30, stepsPerEpoch: 10, 0.05)  // epoch 3
        expectRate(byEpoch, step: 59, stepsPerEpoch: 10, 0.05)
        expectRate(byEpoch, step: 60, stepsPerEpoch: 10, 0.025)
        expectRate(byEpoch, step: 95, stepsPerEpoch: 10, 0.0125)

        let bySteps = LearningRateSchedule.step(base: 1, stepSize: 2, gamma: 0.1, unit: .step)
        expectRate(bySteps, step: 1, 1)
        expectRate(bySteps, step: 2, 0.1)
        expectRate(bySteps, step: 4, 0.01)
    }

    @Test("constant schedule, and schedules survive JSON")
    func constantAndCodable() throws {
        let c = LearningRateSchedule.constant(0.3)
        expectRate(c, step: 0, 0.3)
        expectRate(c, step: 12345, stepsPerEpoch: 7, 0.3)
        let s = LearningRateSchedule.warmupCosine(base: 0.1, warmup: 5, total: 50, minimum: 1e-4,
                                                  warmupStartFactor: 0.01, unit: .epoch)
        let json = try JSONEncoder().encode(s)
        #expect(String(decoding: json, as: UTF8.self).contains("warmup-cosine"))
        let back = try JSONDecoder().decode(LearningRateSchedule.self, from: json)
        #expect(back == s)
        #expect(back.learningRate(step: 77, stepsPerEpoch: 9) == s.learningRate(step: 77, stepsPerEpoch: 9))
    }
}
