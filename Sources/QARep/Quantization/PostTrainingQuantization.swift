/// Post-training quantization: fold the whole model, put fake quantization
/// on every convolution and linear input and weight, and calibrate the
/// activation observers on a few training images.
///
/// - Parameters:
///   - model: an FP32 model, multi-branch or deployed.
///   - calibration: the calibration images (the first `N` training images, say).
///   - qconfig: schemes and the activation calibrator (`.minmax` by default).
///   - equalize: cross-layer equalization of the folded weights before
///     calibration (`QuantizedNet.equalizeCrossLayer()`).
/// - Returns: the calibrated fake-quantized model, in evaluation mode, ready
///   for `convertToInt8()`.
public func postTrainingQuantize(_ model: RepVGGNet, calibration: any Dataset, qconfig: QConfig = .tensorRT,
                                 equalize: Bool = false) throws -> QuantizedNet {
    let quantized = try QuantizedNet(from: model, form: .folded, qconfig: qconfig)
    if equalize { try quantized.equalizeCrossLayer() }
    try quantized.calibrate(on: calibration)
    quantized.eval()
    return quantized
}
