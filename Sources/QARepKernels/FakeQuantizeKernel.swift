import CQARepFloat

/// Fake quantization of `count` floats that share one scale and zero point,
/// the simulation's quantize-then-dequantize:
///
///     level     = roundHalfEven(x / scale) + zeroPoint
///     output[i] = scale * (clamp(level, qmin, qmax) - zeroPoint)
///     inRange[i] = qmin <= level <= qmax   (the straight-through gradient's mask)
///
/// exactly as `quantize` and `dequantize` compute it, one value at a time
/// (`fakeQuantizeReference`); NaN stays NaN and counts as in range. The
/// AVX2 and AVX-512 paths give the same bits.
public func fakeQuantizeValues(_ x: UnsafePointer<Float>, count: Int, scale: Float, zeroPoint: Int32,
                               qmin: Int32, qmax: Int32, output: UnsafeMutablePointer<Float>,
                               inRange: UnsafeMutablePointer<Bool>?, path: FloatKernelPath = .best) {
    qarep_f32_fake_quantize(x, Int64(count), scale, Float(zeroPoint), Float(qmin), Float(qmax), output, inRange, path.isa)
}

/// The definition `fakeQuantizeValues` is held to: the engine's `quantize`,
/// split so the clip is visible, then `dequantize`, in `Double` where the
/// zero point is added.
public func fakeQuantizeReference(_ x: Float, scale: Float, zeroPoint: Int32, qmin: Int32, qmax: Int32)
    -> (value: Float, inRange: Bool) {
    let level = unclampedLevel(x, scale: scale, zeroPoint: zeroPoint)
    guard !level.isNaN else { return (.nan, true) }
    return (dequantize(Int32(clampedLevel(level, min: qmin, max: qmax)), scale: scale, zeroPoint: zeroPoint),
            level >= Double(qmin) && level <= Double(qmax))
}
