import CQARepInt8

// INT8 convolution as an implicit GEMM: the input is copied once into a
// zero-padded NHWC int16 buffer of `x_q - z_x`; the integer kernel then reads
// every patch in place, one contiguous run of kw * C values per kernel row, so
// no patch matrix is written. A fused epilogue adds the int32 bias, requantizes
// per channel, clamps (ReLU) and writes 8-bit NCHW codes.
//
// Storage convention of 8-bit activations: NCHW, codes of the signed
// symmetric scheme in `Int8` buffers, codes of the unsigned asymmetric scheme
// in `UInt8` buffers (the `QuantizedActivation` types). Input and output types
// are independent, so a layer may read int8 and write uint8 or the reverse.

/// Explicit patch matrix of a batch of 8-bit activations, the `columns`
/// operand of `int16GEMM` for convolution weights packed with
/// `PackedInt8Weights(convolution:...)`: pixel-major `[N * OH * OW, K']`,
/// pixel = (n, oy, ox), each row the patch in the packed (i, j, c) order with
/// channels padded to even (`K' = kh * kw * Cp`), values `x_q - zeroPoint` in
/// [-255, 255]. Out-of-image taps and padding channels are 0: real zero.
/// (`quantizedConv2d` reads the same values in place instead.)
///
/// - Parameters:
///   - x: `[N, C, H, W]` codes.
///   - zeroPoint: the input zero point, a code of `T`.
///   - columns: `g.columns * kh * kw * Cp` int16.
public func quantizedIm2col<T: QuantizedActivation>(_ x: UnsafePointer<T>, zeroPoint: Int32, _ g: ConvGeometry,
                                                    columns: UnsafeMutablePointer<Int16>) {
    precondition(T.codeRange.contains(zeroPoint), "input zero point \(zeroPoint) is not a \(T.self) code")
    let layout = PaddedNHWC(g)
    let buffer = UnsafeMutablePointer<Int16>.allocate(capacity: layout.count)
    defer { buffer.deallocate() }
    layout.fill(buffer, from: x, zeroPoint: zeroPoint, threads: 1)
    let segment = layout.segment, kp = layout.paddedInputSize, rows = layout.tapOffsets
    for (j, base) in layout.pixelOffsets.enumerated() {
        for (i, offset) in rows.enumerated() {
            (columns + j * kp + i * segment).update(from: buffer + Int(base + offset), count: segment)
        }
    }
}

/// INT8 2-D convolution with fused bias, requantization and clamp:
///
///     acc[n, o, p] = bias[o] + sum_k w[o, k] * (x_q[n, k @ p] - inputZeroPoint)    (int32, exact)
///     y_q[n, o, p] = clamp(roundHalfEven(Double(acc) * Double(multipliers[o])) + outputZeroPoint,
///                          outputMin, outputMax)
///
/// with `multipliers[o] = s_in * s_w[o] / s_out` and `bias[o] = round(b[o] / (s_in * s_w[o]))`.
/// Padding taps contribute real zero. A fused ReLU is
/// `outputMin = outputZeroPoint`. Same bits as `naiveQuantizedConv2d` on every
/// path and thread count.
///
/// - Parameters:
///   - input: `[N, C, H, W]` codes.
///   - geometry: the shape; `weights` must be packed from `[O, C, kh, kw]`
///     with `PackedInt8Weights(convolution:...)`.
///   - weights: packed int8 OIHW weights.
///   - bias: int32, one per output channel.
///   - multipliers: finite, one per output channel.
///   - inputZeroPoint: a code of `Input` (0 for the signed scheme).
///   - outputZeroPoint, outputMin, outputMax: codes of `Output`, `outputMin <= outputMax`.
///   - output: `[N, O, OH, OW]` codes.
///   - threads: worker threads (over images for the layout copy, over pixel
///     chunks for the GEMM).
///   - path: the kernel; `.best` unless testing the fallback.
/// - Precondition: `bias[o]` plus the dot product fits in Int32 (the int32
///   accumulator wraps otherwise; the naive reference traps).
public func quantizedConv2d<Input: QuantizedActivation, Output: QuantizedActivation>(
    input: UnsafePointer<Input>, geometry g: ConvGeometry, weights: PackedInt8Weights,
    bias: [Int32], multipliers: [Float], inputZeroPoint: Int32,
    outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32,
    output: UnsafeMutablePointer<Output>, threads: Int = 1, path: IntegerKernelPath = .best
) {
    precondition(weights.inChannels == g.inChannels && weights.kernelH == g.kernelH && weights.kernelW == g.kernelW,
                 "weights packed for [\(weights.outChannels), \(weights.inChannels), \(weights.kernelH), \(weights.kernelW)], "
                     + "convolution needs [\(g.outChannels), \(g.inChannels), \(g.kernelH), \(g.kernelW)]")
    checkQuantizedConv(Input.self, Output.self, g, outChannels: weights.outChannels, inputSize: weights.inputSize,
                       bias: bias, multipliers: multipliers, inputZeroPoint: inputZeroPoint,
                       outputZeroPoint: outputZeroPoint, outputMin: outputMin, outputMax: outputMax)
    if path.usesBytes {
        return quantizedConv2dVNNI(input: input, geometry: g, weights: weights, bias: bias, multipliers: multipliers,
                                   inputZeroPoint: inputZeroPoint, outputZeroPoint: outputZeroPoint,
                                   outputMin: outputMin, outputMax: outputMax, output: output, threads: threads, path: path)
    }
    let layout = PaddedNHWC(g)
    let padded = UnsafeMutablePointer<Int16>.allocate(capacity: layout.count)
    defer { padded.deallocate() }
    layout.fill(padded, from: input, zeroPoint: inputZeroPoint, threads: threads)
    let epilogue = qarep_i8_epilogue(
        bias: nil, multiplier: nil, zero_point: outputZeroPoint, min: outputMin, max: outputMax,
        output_signed: Output.isSigned ? 1 : 0, output: UnsafeMutableRawPointer(output),
        plane: Int64(g.outPlane), channel_stride: Int64(g.outPlane), image_stride: Int64(g.outChannels * g.outPlane),
        pixel_offsets: nil, flip: 0, output_int16: 0)
    int16Convolution(padded, layout: layout, windowOffsets: layout.pixelOffsets, weights: weights, bias: bias,
                     multipliers: multipliers, epilogue: epilogue, outputOffsets: nil, threads: threads, path: path)
}

/// The AVX2 (or portable) int16 integer convolution on an input already in
/// `QuantizedInt16Layout` (`windowOffsets` usually `layout.windowOffsets`),
/// with the arithmetic of `quantizedConv2d`. Pixel j's output channels go to
/// consecutive elements of `output` from `outputOffsets[j]`, stored as
/// `outputElement`: the next layer's padded input, or plain NHWC values.
/// `outputSigned` says which code range `outputMin` and `outputMax` lie in.
/// With `runs`, `windowOffsets` and `outputOffsets` list the pixels in
/// `runs.order` and each skips the window taps its class reads from the
/// border, whose int16 elements are zero: the same sums exactly.
public func quantizedConv2dInt16(paddedInput: UnsafePointer<Int16>, layout: QuantizedInt16Layout, windowOffsets: [Int64],
                                 weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                                 outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                                 output: UnsafeMutableRawPointer, outputElement: QuantizedElement = .int16,
                                 outputOffsets: [Int64], threads: Int, path: IntegerKernelPath = .best,
                                 runs: BorderTapRuns? = nil) {
    let g = layout.geometry
    precondition(path == .avx2 || path == .portable, "the int16 layout runs on the AVX2 or portable kernel, not \(path)")
    precondition(weights.outChannels == g.outChannels && weights.inChannels == g.inChannels
                     && weights.kernelH == g.kernelH && weights.kernelW == g.kernelW, "weights do not fit the convolution")
    precondition(windowOffsets.count == g.columns && outputOffsets.count == g.columns && (runs?.order.count ?? g.columns) == g.columns,
                 "one window, one output offset and one run pixel per output pixel")
    let epilogue = chainedEpilogue(outputZeroPoint: outputZeroPoint, outputMin: outputMin, outputMax: outputMax,
                                   outputSigned: outputSigned, output: output, element: outputElement, plane: g.outPlane)
    int16Convolution(paddedInput, layout: layout.nhwc, windowOffsets: windowOffsets, weights: weights, bias: bias,
                     multipliers: multipliers, epilogue: epilogue, outputOffsets: outputOffsets, threads: threads, path: path,
                     runs: runs)
}

/// The epilogue of a convolution whose pixel j goes to `outputOffsets[j]` as
/// `element`s (the pixel offsets are set by the caller).
private func chainedEpilogue(outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                             output: UnsafeMutableRawPointer, element: QuantizedElement, plane: Int) -> qarep_i8_epilogue {
    let r: QuantRange = outputSigned ? .int8 : .uint8
    precondition(outputMin <= outputMax && outputMin >= r.min && outputMax <= r.max && r.min...r.max ~= outputZeroPoint,
                 "output range [\(outputMin), \(outputMax)] or zero point \(outputZeroPoint) outside [\(r.min), \(r.max)]")
    precondition(element.holds(QuantRange(min: min(outputMin, outputZeroPoint), max: max(outputMax, outputZeroPoint))),
                 "codes [\(outputMin), \(outputMax)] do not fit \(element) elements")
    return qarep_i8_epilogue(
        bias: nil, multiplier: nil, zero_point: outputZeroPoint, min: outputMin, max: outputMax,
        output_signed: outputSigned ? 1 : 0, output: output, plane: Int64(plane), channel_stride: 1, image_stride: 0,
        pixel_offsets: nil, flip: element == .shiftedByte && outputSigned ? 0x80 : 0,
        output_int16: element == .int16 ? 1 : 0)
}

/// Runs qarep_i8_gemm over every output pixel of `layout`'s convolution,
/// shared among `threads` workers, with `epilogue` (its bias, multipliers and
/// pixel offsets filled in here).
private func int16Convolution(_ padded: UnsafePointer<Int16>, layout: PaddedNHWC, windowOffsets: [Int64],
                              weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                              epilogue: qarep_i8_epilogue, outputOffsets: [Int64]?, threads: Int, path: IntegerKernelPath,
                              runs: BorderTapRuns? = nil) {
    let g = layout.g, flag = path.flag, tapOffsets = layout.tapOffsets
    withArrays(of: epilogue, bias: bias, multipliers: multipliers, outputOffsets: outputOffsets) { epilogue in
        weights.storage.withUnsafeBufferPointer { w in
            tapOffsets.withUnsafeBufferPointer { to in
                windowOffsets.withUnsafeBufferPointer { po in
                    let source = qarep_i8_source(source: padded, tap_offsets: to.baseAddress,
                                                 taps: Int64(to.count), segment: Int64(layout.segment))
                    // One pointer to the source and the runs for every worker (an inout per call would race).
                    withUnsafePointer(to: source) { s in
                        BorderTapRuns.withUnsafeRuns(runs) { runs in
                            PixelChunks(pixels: g.columns, paddedInputSize: layout.paddedInputSize, threads: threads)
                                .forEach(outChannels: g.outChannels, reduction: layout.paddedInputSize, threads: threads,
                                         weights: w.baseAddress!, blockElements: 16 * layout.paddedInputSize,
                                         epilogue: epilogue) { w, outChannels, first, count, e in
                                    qarep_i8_gemm(w, Int64(outChannels), s, po.baseAddress! + first, Int64(first),
                                                  Int64(count), e, runs, flag)
                                }
                        }
                    }
                }
            }
        }
    }
}

/// Calls `body` with `epilogue`'s bias, multipliers and output pixel offsets
/// pointing into these arrays (no pixel offsets when `outputOffsets` is nil).
private func withArrays(of epilogue: qarep_i8_epilogue, bias: [Int32], multipliers: [Float], outputOffsets: [Int64]?,
                        _ body: (qarep_i8_epilogue) -> Void) {
    withOptionalPointer(outputOffsets) { oo in
        bias.withUnsafeBufferPointer { b in
            multipliers.withUnsafeBufferPointer { m in
                var e = epilogue
                e.bias = b.baseAddress
                e.multiplier = m.baseAddress
                e.pixel_offsets = oo
                body(e)
            }
        }
    }
}

/// Reference for `quantizedConv2d`: seven plain loops, the dot product
/// accumulated in `Int64` and checked to fit `Int32`, then the scalar
/// `requantize`. `weights` is int8 `[O, C, kh, kw]`; every other argument as
/// in `quantizedConv2d`.
public func naiveQuantizedConv2d<Input: QuantizedActivation, Output: QuantizedActivation>(
    input: UnsafePointer<Input>, geometry g: ConvGeometry, weights: UnsafePointer<Int8>,
    bias: [Int32], multipliers: [Float], inputZeroPoint: Int32,
    outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32,
    output: UnsafeMutablePointer<Output>
) {
    checkQuantizedConv(Input.self, Output.self, g, outChannels: g.outChannels, inputSize: g.patchSize,
                       bias: bias, multipliers: multipliers, inputZeroPoint: inputZeroPoint,
                       outputZeroPoint: outputZeroPoint, outputMin: outputMin, outputMax: outputMax)
    for n in 0..<g.batch {
        for o in 0..<g.outChannels {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    var acc = Int64(bias[o])
                    for c in 0..<g.inChannels {
                        for i in 0..<g.kernelH {
                            let iy = oy * g.stride - g.padding + i
                            if iy < 0 || iy >= g.height { continue }
                            for j in 0..<g.kernelW {
                                let ix = ox * g.stride - g.padding + j
                                if ix < 0 || ix >= g.width { continue }
                                let xq = Int64(input[((n * g.inChannels + c) * g.height + iy) * g.width + ix])
                                let wq = Int64(weights[((o * g.inChannels + c) * g.kernelH + i) * g.kernelW + j])
                                acc += (xq - Int64(inputZeroPoint)) * wq
                            }
                        }
                    }
                    precondition(acc >= Int64(Int32.min) && acc <= Int64(Int32.max),
                                 "accumulator \(acc) of channel \(o) overflows Int32")
                    let q = requantize(Int32(acc), multiplier: multipliers[o], zeroPoint: outputZeroPoint,
                                       min: outputMin, max: outputMax)
                    output[((n * g.outChannels + o) * g.outHeight + oy) * g.outWidth + ox] = Output(q)
                }
            }
        }
    }
}

// MARK: - Implementation

/// `quantizedConv2d` on the VNNI kernel, NCHW codes in and out.
private func quantizedConv2dVNNI<Input: QuantizedActivation, Output: QuantizedActivation>(
    input: UnsafePointer<Input>, geometry g: ConvGeometry, weights: PackedInt8Weights,
    bias: [Int32], multipliers: [Float], inputZeroPoint: Int32,
    outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32,
    output: UnsafeMutablePointer<Output>, threads: Int, path: IntegerKernelPath
) {
    let layout = QuantizedBytesLayout(g)
    let padded = UnsafeMutablePointer<UInt8>.allocate(capacity: layout.count)
    defer { padded.deallocate() }
    layout.fill(padded, from: input, zeroPoint: inputZeroPoint, threads: threads)
    quantizedConv2dBytes(paddedInput: padded, layout: layout, windowOffsets: layout.windowOffsets,
                         inputZeroCode: layout.zeroCode(zeroPoint: inputZeroPoint, signed: Input.isSigned),
                         weights: weights, bias: bias, multipliers: multipliers, outputZeroPoint: outputZeroPoint,
                         outputMin: outputMin, outputMax: outputMax, outputSigned: Output.isSigned,
                         output: UnsafeMutableRawPointer(output), outputOffsets: nil, threads: threads, path: path)
}

/// The byte integer convolution on an input already in `QuantizedBytesLayout`
/// (`windowOffsets` usually `layout.windowOffsets`), with the arithmetic of
/// `quantizedConv2d`: the kernel sums `w * u`, and `inputZeroCode` (the
/// layout's byte of real zero) times each channel's weight sum leaves through
/// the bias, which makes the accumulator `bias + sum w * (x_q - z_x)` exactly
/// (wrapping int32 arithmetic, exact whenever that fits). Outputs go to NCHW
/// codes (`outputOffsets` nil; `Int8` when `outputSigned`, else `UInt8`), or,
/// with `outputOffsets`, pixel j's channels from `outputOffsets[j]` as
/// `outputElement`s: the next layer's padded input, or plain NHWC values.
///
/// Runs on VNNI or AMX (any byte), or on AVX2 with a `.rawByte` layout, whose
/// bytes must all lie in [0, 127]: vpmaddubsw's int16 pair sums are then at
/// most 2 * 127 * 128 and never saturate.
///
/// With `runs` (only for `inputZeroCode` 0, when the border bytes add
/// nothing), `windowOffsets` and `outputOffsets` list the pixels in
/// `runs.order` and the AVX2 kernel skips the window taps each class reads
/// from the border; VNNI and AMX read whole windows. The same sums exactly.
public func quantizedConv2dBytes(paddedInput: UnsafePointer<UInt8>, layout: QuantizedBytesLayout, windowOffsets: [Int64],
                                 inputZeroCode: Int32, weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                                 outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                                 output: UnsafeMutableRawPointer, outputElement: QuantizedElement = .shiftedByte,
                                 outputOffsets: [Int64]?, threads: Int, path: IntegerKernelPath = .best,
                                 runs: BorderTapRuns? = nil) {
    let g = layout.geometry
    precondition(runs == nil || (inputZeroCode == 0 && outputOffsets != nil && runs!.order.count == g.columns),
                 "border runs need border bytes of 0 (not \(inputZeroCode)), output offsets, and one run pixel per output")
    let kernel: Int32
    switch path {
    case .amx:
        precondition(IntegerKernelPath.amxAvailable, "the AMX integer kernel needs a CPU with AMX-INT8")
        kernel = QAREP_U8S8_AMX
    case .avx512vnni:
        precondition(IntegerKernelPath.vnni512Available, "the VNNI integer kernel needs a CPU with AVX-512 VNNI")
        kernel = QAREP_U8S8_VNNI
    case .avx2:
        precondition(IntegerKernelPath.avx2Available, "the AVX2 integer kernel needs a CPU with AVX2")
        precondition(layout.element == .rawByte && (0...127).contains(inputZeroCode),
                     "AVX2 reads bytes exactly only in [0, 127]: a .rawByte layout")
        kernel = QAREP_U8S8_AVX2
    case .portable:
        preconditionFailure("the byte layout runs on the AMX, VNNI or AVX2 kernel, not \(path)")
    }
    precondition(weights.outChannels == g.outChannels && weights.inChannels == g.inChannels
                     && weights.kernelH == g.kernelH && weights.kernelW == g.kernelW, "weights do not fit the convolution")
    precondition(windowOffsets.count == g.columns && (outputOffsets?.count ?? g.columns) == g.columns,
                 "one window and one output offset per output pixel")
    let shiftedBias = zip(bias, weights.weightSums).map { $0 &- inputZeroCode &* $1 }
    let tapOffsets = layout.nhwc.tapOffsets
    let epilogue = outputOffsets != nil
        ? chainedEpilogue(outputZeroPoint: outputZeroPoint, outputMin: outputMin, outputMax: outputMax,
                          outputSigned: outputSigned, output: output, element: outputElement, plane: g.outPlane)
        : qarep_i8_epilogue(
            bias: nil, multiplier: nil, zero_point: outputZeroPoint, min: outputMin, max: outputMax,
            output_signed: outputSigned ? 1 : 0, output: output,
            plane: Int64(g.outPlane), channel_stride: Int64(g.outPlane), image_stride: Int64(g.outChannels * g.outPlane),
            pixel_offsets: nil, flip: 0, output_int16: 0)
    precondition(epilogue.output_int16 == 0 || path == .avx2, "int16 outputs come from the AVX2 store, not \(path)'s")
    withArrays(of: epilogue, bias: shiftedBias, multipliers: multipliers, outputOffsets: outputOffsets) { epilogue in
        weights.vnniStorage.withUnsafeBufferPointer { w in
            tapOffsets.withUnsafeBufferPointer { to in
                windowOffsets.withUnsafeBufferPointer { po in
                    let source = qarep_u8_source(source: paddedInput, tap_offsets: to.baseAddress,
                                                 taps: Int64(to.count), segment: Int64(layout.nhwc.segment))
                    let k = layout.nhwc.paddedInputSize
                    withUnsafePointer(to: source) { s in
                        BorderTapRuns.withUnsafeRuns(runs) { runs in
                            PixelChunks(pixels: g.columns, paddedInputSize: k, threads: threads)
                                .forEach(outChannels: g.outChannels, reduction: k, threads: threads, weights: w.baseAddress!,
                                         blockElements: 16 * weights.vnniReduction,
                                         pairedBlocks: kernel != QAREP_U8S8_AVX2, epilogue: epilogue) { w, outChannels, first, count, e in
                                    qarep_u8s8_gemm(w, Int64(outChannels), s, po.baseAddress! + first, Int64(first),
                                                    Int64(count), e, runs, kernel)
                                }
                        }
                    }
                }
            }
        }
    }
}

private func checkQuantizedConv<Input: QuantizedActivation, Output: QuantizedActivation>(
    _: Input.Type, _: Output.Type, _ g: ConvGeometry, outChannels: Int, inputSize: Int,
    bias: [Int32], multipliers: [Float], inputZeroPoint: Int32,
    outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32
) {
    precondition(outChannels == g.outChannels && inputSize == g.patchSize,
                 "weights [\(outChannels), \(inputSize)] do not fit the convolution [\(g.outChannels), \(g.patchSize)]")
    precondition(g.outHeight >= 1 && g.outWidth >= 1, "the kernel does not fit the padded input")
    precondition(bias.count == g.outChannels, "\(bias.count) biases for \(g.outChannels) output channels")
    precondition(multipliers.count == g.outChannels, "\(multipliers.count) multipliers for \(g.outChannels) output channels")
    precondition(multipliers.allSatisfy(\.isFinite), "requantization multipliers must be finite")
    precondition(Input.codeRange.contains(inputZeroPoint), "input zero point \(inputZeroPoint) is not a \(Input.self) code")
    let r = Output.codeRange
    precondition(r.contains(outputZeroPoint), "output zero point \(outputZeroPoint) is not a \(Output.self) code")
    precondition(outputMin <= outputMax && r.contains(outputMin) && r.contains(outputMax),
                 "output range [\(outputMin), \(outputMax)] outside \(Output.self)'s \(r)")
}
