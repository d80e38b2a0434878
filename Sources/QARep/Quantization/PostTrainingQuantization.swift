/// Post-training quantization: fold the whole model, put fake quantization
/// on every convolution and linear input and weight, and calibrate the
/// activation observers on a few training images.
///
/// - Parameters:
///   - model: an FP32 model, multi-branch or deployed.
///   - calibration: the calibration images (the first `N` training images, say).
/// - Returns: the calibrated fake-quantized model, in evaluation mode, ready
///   for `convertToInt8()`.
public func postTrainingQuantize(_ model: RepVGGNet, calibration: FashionMNIST, qconfig: QConfig = .tensorRT,
                                 calibrator: Calibrator = .minmax) throws -> QuantizedNet {
    let quantized = try QuantizedNet(from: model, form: .folded, qconfig: qconfig, calibrator: calibrator)
    try quantized.calibrate(on: calibration)
    quantized.eval()
    return quantized
}
