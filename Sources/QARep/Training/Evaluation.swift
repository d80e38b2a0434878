/// Accuracy and loss of a classifier on a dataset.
public struct Evaluation: Sendable, Codable {
    /// Fraction of images whose arg-max logit is the label.
    public var top1: Double
    /// Mean cross-entropy.
    public var loss: Double
    /// Images evaluated.
    public var count: Int
    /// Predicted class of each image, in dataset order.
    public var predictions: [Int32]
    /// Logits `[count, classes]`, row-major, when asked for.
    public var logits: [Float]? = nil
}

/// Evaluates `model` in evaluation mode, without recording gradients, and
/// restores the previous mode afterwards.
public func evaluate(_ model: some Layer, on dataset: any Dataset, batchSize: Int = 256, keepLogits: Bool = false) -> Evaluation {
    let wasTraining = model.training
    model.eval()
    defer { model.train(wasTraining) }
    return evaluate(on: dataset, batchSize: batchSize, keepLogits: keepLogits) { x in noGrad { model(x) } }
}

/// Evaluates any logits function (a float model, a fake-quantized model, an
/// integer engine) over `dataset` in order.
public func evaluate(on dataset: any Dataset, batchSize: Int = 256, keepLogits: Bool = false,
                     logits: (Tensor) -> Tensor) -> Evaluation {
    let loader = DataLoader(dataset: dataset, batchSize: batchSize, shuffle: false, augment: false, seed: 0)
    var correct = 0, lossSum = 0.0
    var predictions: [Int32] = []
    predictions.reserveCapacity(dataset.count)
    var allLogits: [Float]? = keepLogits ? [] : nil
    for batch in loader.batches(epoch: 0) {
        let x = Tensor(batch.images, shape: [batch.count, batch.channels, batch.height, batch.width])
        let out = logits(x)
        let loss = noGrad { crossEntropy(out, labels: batch.labels) }
        lossSum += Double(loss.item) * Double(batch.count)
        allLogits?.append(contentsOf: out.data)
        let predicted = out.argmaxRows()
        predictions += predicted
        correct += zip(predicted, batch.labels).filter { $0 == $1 }.count
    }
    let n = max(predictions.count, 1)
    return Evaluation(top1: Double(correct) / Double(n), loss: lossSum / Double(n), count: predictions.count,
                      predictions: predictions, logits: allLogits)
}
