import Foundation
import QARep
import Testing

// Distillation during QAT: the KL term's value and gradient, and a QAT run
// that distills (its loss is the mixture, it resumes bit for bit with the
// teacher read again from the source checkpoint).

@Suite("Distillation during QAT", .serialized)
struct DistillationTests {
    @Test("the KL term: 0 when student and teacher agree, PyTorch's value on a hand case, gradient against finite differences")
    func klTerm() {
        let teacher = Tensor([1, 2, 0.5, -1, 0, 3], shape: [2, 3])
        #expect(abs(distillationLoss(student: Tensor(teacher.data, shape: [2, 3]), teacher: teacher, temperature: 3).item) < 1e-6)
        // One row, T = 2: p = softmax([0, 0] / 2) = (0.5, 0.5), q = softmax([2, 0] / 2) = (e/(e+1), 1/(e+1));
        // T^2 * KL(q || p) = 4 * sum q log(q / p).
        let q0 = exp(1.0) / (exp(1.0) + 1), q1 = 1 / (exp(1.0) + 1)
        let expected = 4 * (q0 * log(q0 / 0.5) + q1 * log(q1 / 0.5))
        let value = distillationLoss(student: Tensor([0, 0], shape: [1, 2]), teacher: Tensor([2, 0], shape: [1, 2]), temperature: 2).item
        #expect(abs(Double(value) - expected) < 1e-6, "\(value) vs \(expected)")
        for temperature: Float in [1, 4] {
            let student = randomTensor([3, 5], seed: 61)
            let t = randomTensor([3, 5], seed: 62, in: -3...3, requiresGrad: false)
            let checks = compareGradients([("student", student)]) {
                distillationLoss(student: student, teacher: t, temperature: temperature)
            }
            for c in checks { #expect(c.error < 1e-2, "T = \(temperature): \(c)") }
        }
    }

    @Test("QAT with --distill: its loss mixes in the teacher, and it resumes mid-epoch bit for bit with the teacher read from the source")
    func distilledRunResumes() throws {
        let (fp32, data) = try smallTrainedQARepVGG()
        let dir = temporaryDirectory(); defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = dir + "/fp32.safetensors"
        try Checkpoint.save(fp32, to: source)
        var options = QATOptions()
        options.epochs = 2; options.warmupEpochs = 1; options.batchSize = 32; options.calibrationImages = 64
        options.distillation = DistillationSettings(temperature: 4, weight: 0.7)
        let quiet = ProgressReporter(enabled: false)
        func start(_ name: String, _ options: QATOptions) throws -> QATRun {
            try QATRun(from: fp32, source: source, options: options, calibration: data.subset(0..<64),
                       trainImages: data.count, directory: dir + "/" + name, progress: quiet)
        }
        let straight = try start("a", options)
        let summaries = try straight.run(train: data, test: nil)
        // Without distillation the same run trains to other weights: the teacher is in the loss.
        var plainOptions = options
        plainOptions.distillation = nil
        let plain = try start("p", plainOptions)
        let plainSummaries = try plain.run(train: data, test: nil)
        #expect(summaries[0].trainLoss != plainSummaries[0].trainLoss)
        #expect(summaries.last!.trainLoss < summaries[0].trainLoss, "the mixed loss falls: \(summaries.map(\.trainLoss))")
        // The teacher did not move: the source model still computes what it did.
        let x = Tensor(data.subset(0..<4).images.map { data.normalize($0, channel: 0) }, shape: [4, 1, 28, 28])
        let fresh = try Checkpoint.loadModel(source)
        fresh.eval(); fp32.eval()
        #expect(noGrad { fp32(x) }.data == noGrad { fresh(x) }.data)

        let first = try start("b", options)
        first.controls.shouldStop = { [unowned first] in first.trainer.step == 11 }
        #expect(throws: RunInterrupted.self) { try first.run(train: data, test: nil) }
        let resumed = try QATRun.resume(from: dir + "/b", progress: quiet)
        #expect(resumed.state.options.distillation == options.distillation)
        try resumed.run(train: data, test: nil)
        for (a, b) in zip(straight.model.stateDict(), resumed.model.stateDict()) {
            #expect(a.tensor.data == b.tensor.data, "\(a.key) differs after resume")
        }
        // A run whose teacher is gone says so in one line.
        let second = try start("c", options)
        second.controls.shouldStop = { [unowned second] in second.trainer.step == 3 }
        #expect(throws: RunInterrupted.self) { try second.run(train: data, test: nil) }
        try FileManager.default.removeItem(atPath: source)
        #expect { _ = try QATRun.resume(from: dir + "/c", progress: quiet) } throws: { "\($0)".contains("distills from") }
    }
}
