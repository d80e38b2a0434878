/// Distillation during QAT: the FP32 model the run started from teaches the
/// fake-quantized one on logits, as YOLOv6's QAT does on features. The loss of
/// a batch becomes
///
///     (1 - weight) * crossEntropy(student, labels) + weight * distillationLoss(student, teacher, temperature)
///
/// The teacher is a copy of the FP32 model in evaluation mode (its running
/// BN statistics, no gradients); on resume it is read again from the run's
/// source checkpoint.
public struct DistillationSettings: Codable, Sendable, Equatable {
    /// Softens both distributions (Hinton et al. 2015); 4 is common.
    public var temperature: Float
    /// The distillation term's share of the loss, in [0, 1].
    public var weight: Float

    public init(temperature: Float = 4, weight: Float = 0.5) {
        self.temperature = temperature; self.weight = weight
    }

    public func validate() throws {
        guard temperature > 0, temperature.isFinite else { throw QuantizationError("distillation temperature must be positive, got \(temperature)") }
        guard (0...1).contains(weight) else { throw QuantizationError("distillation weight must be in [0, 1], got \(weight)") }
    }

    /// The trainer's batch loss (`Trainer.batchLoss`) with `teacher`.
    func batchLoss(teacher: some Layer) -> (Tensor, Tensor, Tensor) -> Tensor {
        let (temperature, weight) = (self.temperature, self.weight)
        return { images, logits, crossEntropy in
            let taught = noGrad { teacher(images) }
            return crossEntropy * (1 - weight) + distillationLoss(student: logits, teacher: taught, temperature: temperature) * weight
        }
    }
}

/// A teacher that QAT cannot move: `model`'s state copied into `fresh` (a
/// model of the same structure with its own tensors), in evaluation mode.
func frozenTeacher<M: Module>(copying model: some Module, into fresh: M) throws -> M {
    let values = Dictionary(model.stateDict().map { ($0.key, $0.tensor) }, uniquingKeysWith: { a, _ in a })
    for (key, tensor) in fresh.stateDict() {
        guard let value = values[key], value.shape == tensor.shape else {
            throw QuantizationError("distillation: the teacher's \(key) does not match the model's")
        }
        tensor.assign(value.data)
    }
    fresh.eval()
    return fresh
}

/// Reads a run's teacher again from its source checkpoint, in evaluation
/// mode, with one clear error when the file is gone.
func rereadTeacher<M: Module>(_ source: String, _ read: () throws -> M) throws -> M {
    let teacher: M
    do { teacher = try read() } catch {
        throw QuantizationError("this QAT run distills from \(source), which cannot be read: \(error)")
    }
    teacher.eval()
    return teacher
}
