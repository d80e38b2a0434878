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
    let flag = path.flag
    let layout = PaddedNHWC(g)
    let padded = UnsafeMutablePointer<Int16>.allocate(capacity: layout.count)
    defer { padded.deallocate() }
    layout.fill(padded, from: input, zeroPoint: inputZeroPoint, threads: threads)
    let tapOffsets = layout.tapOffsets, pixelOffsets = layout.pixelOffsets
    var epilogue = qarep_i8_epilogue(
        bias: nil, multiplier: nil, zero_point: outputZeroPoint, min: outputMin, max: outputMax,
        output_signed: Output.isSigned ? 1 : 0, output: UnsafeMutableRawPointer(output),
        plane: Int64(g.outPlane), channel_stride: Int64(g.outPlane), image_stride: Int64(g.outChannels * g.outPlane),
        pixel_offsets: nil, flip: 0)
    bias.withUnsafeBufferPointer { b in
        multipliers.withUnsafeBufferPointer { m in
            weights.storage.withUnsafeBufferPointer { w in
                tapOffsets.withUnsafeBufferPointer { to in
                    pixelOffsets.withUnsafeBufferPointer { po in
                        epilogue.bias = b.baseAddress
                        epilogue.multiplier = m.baseAddress
                        let source = qarep_i8_source(source: padded, tap_offsets: to.baseAddress,
                                                     taps: Int64(to.count), segment: Int64(layout.segment))
                        withUnsafePointer(to: source) { s in
                            withUnsafePointer(to: epilogue) { e in
                                PixelChunks(pixels: g.columns, paddedInputSize: layout.paddedInputSize, threads: threads)
                                    .forEach(outChannels: g.outChannels, reduction: layout.paddedInputSize, threads: threads,
                                             weights: w.baseAddress!, blockElements: 16 * layout.paddedInputSize,
                                             epilogue: e.pointee) { w, outChannels, first, count, e in
                                        qarep_i8_gemm(w, Int64(outChannels), s, po.baseAddress! + first, Int64(first), Int64(count), e, flag)
                                    }
                            }
                        }
                    }
                }
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
                         inputZeroCode: QuantizedBytesLayout.zeroCode(zeroPoint: inputZeroPoint, signed: Input.isSigned),
                         weights: weights, bias: bias, multipliers: multipliers, outputZeroPoint: outputZeroPoint,
                         outputMin: outputMin, outputMax: outputMax, outputSigned: Output.isSigned,
                         output: UnsafeMutableRawPointer(output), outputOffsets: nil, threads: threads, path: path)
}

/// The zero-padded NHWC bytes the VNNI kernel reads: `u = x_q + 128` for
/// int8 codes, `x_q` for uint8 codes, channels padded to a multiple of 4, and
/// the code of real zero (`zeroCode`) in the borders and padding channels.
public struct QuantizedBytesLayout: Sendable {
    let nhwc: PaddedNHWC

    public init(_ g: ConvGeometry) { nhwc = PaddedNHWC(g, channelMultiple: 4) }

    public var geometry: ConvGeometry { nhwc.g }
    /// Bytes of the buffer.
    public var count: Int { nhwc.count }
    /// Channels of a pixel in the buffer (C rounded up to 4).
    public var paddedChannels: Int { nhwc.paddedChannels }
    /// Window origin of every output pixel, pixels in (n, oy, ox) order.
    public var windowOffsets: [Int64] { nhwc.pixelOffsets }

    /// Offset of input pixel (n, y, x) of the unpadded image, channel 0.
    public func offset(image n: Int, y: Int, x: Int) -> Int {
        ((n * nhwc.paddedHeight + y + nhwc.g.padding) * nhwc.paddedWidth + x + nhwc.g.padding) * nhwc.paddedChannels
    }

    /// The byte of real zero for codes with zero point `zeroPoint`.
    public static func zeroCode(zeroPoint: Int32, signed: Bool) -> Int32 { zeroPoint + (signed ? 128 : 0) }

    /// Copies NCHW codes into `buffer` (`count` bytes), borders included.
    public func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<UInt8>, from codes: UnsafePointer<T>,
                                            zeroPoint: Int32, threads: Int) {
        let g = nhwc.g
        parallelFor(g.batch, threads: threads) { _, images in
            qarep_u8_to_padded_nhwc(UnsafeRawPointer(codes), T.isSigned ? 1 : 0, zeroPoint,
                                    Int64(images.lowerBound), Int64(images.count), Int64(g.inChannels),
                                    Int64(g.height), Int64(g.width), Int64(g.padding), Int64(nhwc.paddedChannels), buffer)
        }
    }
}

/// The VNNI integer convolution on an input already in `QuantizedBytesLayout`
/// (`windowOffsets` usually `layout.windowOffsets`), with the arithmetic of
/// `quantizedConv2d`: the kernel sums `w * u`, and `inputZeroCode` times each
/// channel's weight sum leaves through the bias, which makes the accumulator
/// `bias + sum w * (x_q - z_x)` exactly (wrapping int32 arithmetic, exact
/// whenever that fits). Outputs go to NCHW codes (`outputOffsets` nil; `Int8`
/// when `outputSigned`, else `UInt8`), or, with `outputOffsets`, as the bytes
/// of the next layer's `QuantizedBytesLayout`: pixel j's channels from
/// `outputOffsets[j]`, int8 codes + 128.
public func quantizedConv2dBytes(paddedInput: UnsafePointer<UInt8>, layout: QuantizedBytesLayout, windowOffsets: [Int64],
                                 inputZeroCode: Int32, weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                                 outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                                 output: UnsafeMutableRawPointer, outputOffsets: [Int64]?, threads: Int,
                                 path: IntegerKernelPath = .best) {
    let g = layout.geometry
    precondition(path.usesBytes, "the byte layout runs on the VNNI or AMX kernel, not \(path)")
    precondition(IntegerKernelPath.vnni512Available, "the VNNI integer kernel needs a CPU with AVX-512 VNNI")
    if path == .amx { precondition(IntegerKernelPath.amxAvailable, "the AMX integer kernel needs a CPU with AMX-INT8") }
    precondition(weights.outChannels == g.outChannels && weights.inChannels == g.inChannels
                     && weights.kernelH == g.kernelH && weights.kernelW == g.kernelW, "weights do not fit the convolution")
    precondition(windowOffsets.count == g.columns && (outputOffsets?.count ?? g.columns) == g.columns,
                 "one window and one output offset per output pixel")
    let shiftedBias = zip(bias, weights.weightSums).map { $0 &- inputZeroCode &* $1 }
    let tapOffsets = layout.nhwc.tapOffsets
    var epilogue = qarep_i8_epilogue(
        bias: nil, multiplier: nil, zero_point: outputZeroPoint, min: outputMin, max: outputMax,
        output_signed: outputSigned ? 1 : 0, output: output,
        plane: Int64(g.outPlane), channel_stride: Int64(g.outPlane), image_stride: Int64(g.outChannels * g.outPlane),
        pixel_offsets: nil, flip: outputOffsets != nil && outputSigned ? 0x80 : 0)
    withOptionalPointer(outputOffsets) { oo in
        shiftedBias.withUnsafeBufferPointer { b in
            multipliers.withUnsafeBufferPointer { m in
                weights.vnniStorage.withUnsafeBufferPointer { w in
                    tapOffsets.withUnsafeBufferPointer { to in
                        windowOffsets.withUnsafeBufferPointer { po in
                            epilogue.bias = b.baseAddress
                            epilogue.multiplier = m.baseAddress
                            epilogue.pixel_offsets = oo
                            var source = qarep_u8_source(source: paddedInput, tap_offsets: to.baseAddress,
                                                         taps: Int64(to.count), segment: Int64(layout.nhwc.segment))
                            let k = layout.nhwc.paddedInputSize, amx: Int32 = path == .amx ? 1 : 0
                            PixelChunks(pixels: g.columns, paddedInputSize: k, threads: threads)
                                .forEach(outChannels: g.outChannels, reduction: k, threads: threads, weights: w.baseAddress!,
                                         blockElements: 16 * weights.vnniReduction, epilogue: epilogue) { w, outChannels, first, count, e in
                                    qarep_u8s8_gemm(w, Int64(outChannels), &source, po.baseAddress! + first, Int64(first),
                                                    Int64(count), e, amx)
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

/// The zero-padded NHWC copy of a convolution's input,
/// `[N][H + 2p][W + 2p][Cp]` with `Cp` = C rounded up to a multiple of
/// `channelMultiple` (2 for the int16 kernels' pairs, 4 for the VNNI quads),
/// and where the implicit GEMM finds each patch in it. Offsets count elements.
struct PaddedNHWC {
    let g: ConvGeometry
    let paddedChannels: Int, paddedHeight: Int, paddedWidth: Int

    init(_ g: ConvGeometry, channelMultiple: Int = 2) {
        self.g = g
        paddedChannels = (g.inChannels + channelMultiple - 1) / channelMultiple * channelMultiple
        paddedHeight = g.height + 2 * g.padding
        paddedWidth = g.width + 2 * g.padding
    }

    /// Int16 elements of the buffer.
    var count: Int { g.batch * paddedHeight * paddedWidth * paddedChannels }
    /// K' = kh * kw * Cp.
    var paddedInputSize: Int { g.kernelH * g.kernelW * paddedChannels }

    /// Values the kernel reads contiguously per window row: taps (i, 0..<kw)
    /// are adjacent in NHWC, and so are their weights in the (i, j, c) order.
    var segment: Int { g.kernelW * paddedChannels }

    /// Offset of window row i from its pixel's window origin.
    var tapOffsets: [Int64] { (0..<g.kernelH).map { i in Int64(i * paddedWidth * paddedChannels) } }

    /// Offset of each output pixel's window origin (top-left tap), pixels in
    /// (n, oy, ox) order.
    var pixelOffsets: [Int64] {
        var offsets = [Int64]()
        offsets.reserveCapacity(g.columns)
        for n in 0..<g.batch {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    offsets.append(Int64(((n * paddedHeight + oy * g.stride) * paddedWidth + ox * g.stride) * paddedChannels))
                }
            }
        }
        return offsets
    }

    /// Copies NCHW codes into `buffer` as `x_q - zeroPoint`, borders and
    /// padding channels zero; images are shared among `threads` workers.
    func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<Int16>, from x: UnsafePointer<T>,
                                      zeroPoint: Int32, threads: Int) {
        precondition(T.self == Int8.self || T.self == UInt8.self, "8-bit activations are Int8 or UInt8")
        parallelFor(g.batch, threads: threads) { _, images in
            qarep_i8_to_padded_nhwc(UnsafeRawPointer(x), T.isSigned ? 1 : 0, zeroPoint,
                                    Int64(images.lowerBound), Int64(images.count), Int64(g.inChannels),
                                    Int64(g.height), Int64(g.width), Int64(g.padding), Int64(paddedChannels), buffer)
        }
    }
}
