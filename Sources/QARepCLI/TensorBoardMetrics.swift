import QARep
import QARepTensorBoard

/// Routes a run's metrics records to a TensorBoard event file in `directory`:
/// `train/*` every few steps, `epoch/*` (with validation and test top-1) every epoch.
func attachTensorBoard(_ directory: String?, to onMetrics: inout (MetricsRecord) throws -> Void) throws {
    guard let directory else { return }
    let writer = try TensorBoardWriter(directory: directory)
    onMetrics = { record in
        var scalars: [(tag: String, value: Double)]
        if record.kind == "epoch" {
            scalars = [("epoch/train_loss", record.loss), ("epoch/train_accuracy", record.accuracy),
                       ("epoch/images_per_second", record.imagesPerSecond)]
            if let v = record.validationTop1 { scalars.append(("epoch/validation_top1", v)) }
            if let t = record.testTop1 { scalars.append(("epoch/test_top1", t)) }
        } else {
            scalars = [("train/loss", record.loss), ("train/accuracy", record.accuracy),
                       ("train/learning_rate", Double(record.learningRate)), ("train/images_per_second", record.imagesPerSecond)]
        }
        try writer.add(scalars, step: record.step)
        if record.kind == "epoch" { try writer.flush() }
    }
}
