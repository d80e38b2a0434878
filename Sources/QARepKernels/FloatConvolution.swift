import CQARepFloat

// Float convolution as an implicit GEMM: the input is copied once into a
// zero-padded NHWC buffer and the kernel reads every patch in place, one
// contiguous run of kw * C values per kernel row, so no patch matrix is
// written. Bias and ReLU are fused into the store, which writes NCHW (for the
// tensor API) or NHWC (for a chain of convolutions that never leaves NHWC).
//
// The C kernels in CQARepFloat pick AVX-512 or AVX2 + FMA at run time. That
// matters on CPUs OpenBLAS 0.3.21 does not know (it falls back to its SSE3
// "Prescott" kernels on Sapphire and Emerald Rapids), and it removes the
// 9x patch matrix that im2col + sgemm writes and reads.

/// Which float convolution kernel runs.
public enum FloatKernelPath: Sendable, Equatable, CaseIterable {
    /// AVX-512 F, 16 channels x 8 pixels per micro-tile.
    case avx512
    /// AVX2 + FMA, 16 channels x 6 pixels.
    case avx2
    /// Plain C loops (`fmaf`); the same bits, much slower.
    case portable

    /// The widest path this CPU runs.
    public static var best: FloatKernelPath {
        switch qarep_f32_best_isa() {
        case Int32(QAREP_ISA_AVX512): return .avx512
        case Int32(QAREP_ISA_AVX2): return .avx2
        default: return .portable
        }
    }

    /// Every path this CPU runs, widest first.
    public static var available: [FloatKernelPath] {
        allCases.filter { $0.rank <= best.rank }
    }

    private var rank: Int { self == .avx512 ? 2 : self == .avx2 ? 1 : 0 }

    var isa: Int32 {
        precondition(rank <= Self.best.rank, "the \(self) float kernel needs a CPU that runs it")
        return Int32(rank)
    }
}

/// OIHW float weights packed once for `implicitConv2d`: blocks of 16 output
/// channels, each `[kh][kw][C][16]` (for every reduction index, the block's 16
/// weights side by side). Channels past `outChannels` are zero.
public struct PackedFloatWeights: Sendable {
    public let outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int
    /// `ceil(O / 16) * 16 * kh * kw * C` floats.
    public let storage: [Float]

    /// Packs `weights[outChannels, inChannels, kernelH, kernelW]`.
    public init(_ weights: UnsafeBufferPointer<Float>, outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int) {
        precondition(outChannels >= 1 && inChannels >= 1 && kernelH >= 1 && kernelW >= 1,
                     "weights need at least one output channel, input channel and tap")
        precondition(weights.count == outChannels * inChannels * kernelH * kernelW,
                     "\(weights.count) weights for [\(outChannels), \(inChannels), \(kernelH), \(kernelW)]")
        self.outChannels = outChannels; self.inChannels = inChannels
        self.kernelH = kernelH; self.kernelW = kernelW
        let mr = Int(QAREP_F32_MR), taps = kernelH * kernelW, k = taps * inChannels
        let blocks = (outChannels + mr - 1) / mr
        storage = [Float](unsafeUninitializedCapacity: blocks * mr * k) { buf, count in
            buf.initialize(repeating: 0)
            for o in 0..<outChannels {
                let block = buf.baseAddress! + (o / mr) * mr * k + o % mr
                for c in 0..<inChannels {
                    for t in 0..<taps {
                        // Packed reduction index (i, j, c) = t * C + c.
                        block[(t * inChannels + c) * mr] = weights[(o * inChannels + c) * taps + t]
                    }
                }
            }
            count = blocks * mr * k
        }
    }

    /// Packs `weights[outChannels, inChannels, kernelH, kernelW]`.
    public init(_ weights: [Float], outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int) {
        self = weights.withUnsafeBufferPointer {
            PackedFloatWeights($0, outChannels: outChannels, inChannels: inChannels, kernelH: kernelH, kernelW: kernelW)
        }
    }

    func matches(_ g: ConvGeometry) -> Bool {
        outChannels == g.outChannels && inChannels == g.inChannels && kernelH == g.kernelH && kernelW == g.kernelW
    }
}

/// Where a convolution's input lives in a zero-padded NHWC buffer
/// `[N][H + 2p][W + 2p][C]` and where each output pixel's window starts.
public struct PaddedFloatNHWC: Sendable {
    public let g: ConvGeometry
    public let paddedHeight: Int, paddedWidth: Int

    public init(_ g: ConvGeometry) {
        self.g = g
        paddedHeight = g.height + 2 * g.padding
        paddedWidth = g.width + 2 * g.padding
    }

    /// Floats of the buffer.
    public var count: Int { g.batch * paddedHeight * paddedWidth * g.inChannels }

    /// Offset of the input pixel (n, y, x) of the unpadded image, channel 0.
    public func offset(image n: Int, y: Int, x: Int) -> Int {
        ((n * paddedHeight + y + g.padding) * paddedWidth + x + g.padding) * g.inChannels
    }

    /// Offsets of window row i from the window origin.
    public var tapOffsets: [Int64] { (0..<g.kernelH).map { Int64($0 * paddedWidth * g.inChannels) } }

    /// Window origin (top-left tap) of each output pixel, pixels in (n, oy, ox) order.
    public var windowOffsets: [Int64] {
        var offsets = [Int64]()
        offsets.reserveCapacity(g.columns)
        for n in 0..<g.batch {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    offsets.append(Int64(((n * paddedHeight + oy * g.stride) * paddedWidth + ox * g.stride) * g.inChannels))
                }
            }
        }
        return offsets
    }

    /// Copies NCHW `x` into `buffer`, borders zero; images shared among `threads`.
    public func fill(_ buffer: UnsafeMutablePointer<Float>, from x: UnsafePointer<Float>, threads: Int) {
        parallelFor(g.batch, threads: threads) { _, images in
            qarep_f32_to_padded_nhwc(x, Int64(images.lowerBound), Int64(images.count), Int64(g.inChannels),
                                     Int64(g.height), Int64(g.width), Int64(g.padding), buffer)
        }
    }
}

/// Output pixel offsets of NCHW `[N, O, OH, OW]`: pixel (n, p) at `n * O * P + p`.
public func nchwPixelOffsets(_ g: ConvGeometry) -> [Int64] {
    var offsets = [Int64]()
    offsets.reserveCapacity(g.columns)
    for n in 0..<g.batch {
        for p in 0..<g.outPlane { offsets.append(Int64(n * g.outChannels * g.outPlane + p)) }
    }
    return offsets
}

/// The float convolution on an input already in padded NHWC:
///
///     y[p, o] = relu?(bias[o] + sum_k w[o, k] * x[p, k])
///
/// stored at `output[outputOffsets[p] + o * channelStride]` (1 for NHWC
/// outputs, the plane for NCHW). Pixels are split among `threads`; every
/// output is summed by one thread in one order, so the bits do not depend on
/// the thread count or the path.
public func implicitConv2d(paddedInput: UnsafePointer<Float>, layout: PaddedFloatNHWC, weights: PackedFloatWeights,
                           bias: UnsafePointer<Float>?, relu: Bool,
                           output: UnsafeMutablePointer<Float>, outputOffsets: UnsafePointer<Int64>, channelStride: Int,
                           windowOffsets: UnsafePointer<Int64>, threads: Int, path: FloatKernelPath = .best) {
    let g = layout.g
    precondition(weights.matches(g), "weights packed for [\(weights.outChannels), \(weights.inChannels), \(weights.kernelH), "
                 + "\(weights.kernelW)], convolution needs [\(g.outChannels), \(g.inChannels), \(g.kernelH), \(g.kernelW)]")
    let isa = path.isa, tapOffsets = layout.tapOffsets
    let segment = g.kernelW * g.inChannels
    // Chunks of about 64 KiB of patches per worker turn, at least one tile.
    let chunk = max(8, (64 * 1024) / (g.kernelH * segment * 4) / 8 * 8)
    let chunks = (g.columns + chunk - 1) / chunk
    weights.storage.withUnsafeBufferPointer { w in
        tapOffsets.withUnsafeBufferPointer { to in
            let source = qarep_f32_source(source: paddedInput, tap_offsets: to.baseAddress, taps: Int64(g.kernelH),
                                          segment: Int64(segment))
            parallelFor(chunks, threads: threads) { _, range in
                for c in range {
                    let first = c * chunk, count = min(chunk, g.columns - first)
                    var epilogue = qarep_f32_epilogue(bias: bias, relu: relu ? 1 : 0, output: output,
                                                      pixel_offsets: outputOffsets + first,
                                                      channel_stride: Int64(channelStride))
                    var s = source
                    qarep_f32_conv(w.baseAddress, Int64(g.outChannels), &s, windowOffsets + first, Int64(count),
                                   &epilogue, isa)
                }
            }
        }
    }
}

/// The float convolution of NCHW `input[N, C, H, W]` into NCHW
/// `output[N, O, OH, OW]`, with optional bias and fused ReLU (see
/// `implicitConv2d(paddedInput:...)`). Matches `naiveConv2d` to float
/// round-off.
public func implicitConv2d(input: UnsafePointer<Float>, geometry g: ConvGeometry, weights: PackedFloatWeights,
                           bias: UnsafePointer<Float>?, relu: Bool = false, output: UnsafeMutablePointer<Float>,
                           threads: Int = KernelThreads.count, path: FloatKernelPath = .best) {
    precondition(g.outHeight >= 1 && g.outWidth >= 1, "the kernel does not fit the padded input")
    let layout = PaddedFloatNHWC(g)
    let padded = UnsafeMutablePointer<Float>.allocate(capacity: layout.count)
    defer { padded.deallocate() }
    layout.fill(padded, from: input, threads: threads)
    let windows = layout.windowOffsets, outputs = nchwPixelOffsets(g)
    windows.withUnsafeBufferPointer { wo in
        outputs.withUnsafeBufferPointer { oo in
            implicitConv2d(paddedInput: padded, layout: layout, weights: weights, bias: bias, relu: relu,
                           output: output, outputOffsets: oo.baseAddress!, channelStride: g.outPlane,
                           windowOffsets: wo.baseAddress!, threads: threads, path: path)
        }
    }
}

/// Gradient of a stride-1 convolution with respect to its input, itself a
/// convolution run on the same implicit-GEMM kernel:
///
///     dx[n, c, iy, ix] = sum over o, i, j of w[o, c, i, j] * dy[n, o, iy + p - i, ix + p - j]
///
/// is `dy` (NHWC, padded by kh - 1 - p) convolved with the weights rotated
/// by 180 degrees and transposed to `[C, O, kh, kw]`. No patch matrix and no
/// col2im. `dy` is `[N, O, OH, OW]`, `dx` is `[N, C, H, W]` and is
/// overwritten. Needs stride 1 and `padding <= kernel - 1`.
public func convolutionInputGradient(outputGradient dy: UnsafePointer<Float>, weights w: UnsafePointer<Float>,
                                     geometry g: ConvGeometry, inputGradient dx: UnsafeMutablePointer<Float>,
                                     threads: Int = KernelThreads.count, path: FloatKernelPath = .best) {
    precondition(g.stride == 1 && g.padding <= g.kernelH - 1 && g.padding <= g.kernelW - 1,
                 "convolutionInputGradient needs stride 1 and padding below the kernel size")
    let (kh, kw, taps) = (g.kernelH, g.kernelW, g.kernelH * g.kernelW)
    // w'[c, o, i, j] = w[o, c, kh-1-i, kw-1-j]
    let flipped = [Float](unsafeUninitializedCapacity: g.outChannels * g.patchSize) { buf, count in
        for o in 0..<g.outChannels {
            for c in 0..<g.inChannels {
                for t in 0..<taps {
                    buf[(c * g.outChannels + o) * taps + (taps - 1 - t)] = w[(o * g.inChannels + c) * taps + t]
                }
            }
        }
        count = g.outChannels * g.patchSize
    }
    let packed = PackedFloatWeights(flipped, outChannels: g.inChannels, inChannels: g.outChannels, kernelH: kh, kernelW: kw)
    let back = ConvGeometry(batch: g.batch, inChannels: g.outChannels, height: g.outHeight, width: g.outWidth,
                            outChannels: g.inChannels, kernelH: kh, kernelW: kw, stride: 1,
                            padding: kh - 1 - g.padding)
    precondition(back.outHeight == g.height && back.outWidth == g.width, "geometry \(g) has no stride-1 adjoint")
    implicitConv2d(input: dy, geometry: back, weights: packed, bias: nil, output: dx, threads: threads, path: path)
}

/// Adds the weight gradient of a convolution to `dw` (OIHW):
///
///     dw[o, c, i, j] += sum over n, oy, ox of dy[n, o, oy, ox] * x[n, c, oy*s - p + i, ox*s - p + j]
///
/// reading x in place from its padded NHWC copy (`paddedInput`, laid out by
/// `layout`, as the forward pass built it), so no patch matrix is written.
/// Pixels are split among `threads`, each summing into its own buffer; the
/// buffers are added in worker order, so the bits depend on the thread count
/// but not on timing.
public func convolutionWeightGradient(paddedInput: UnsafePointer<Float>, layout: PaddedFloatNHWC,
                                      windowOffsets: UnsafePointer<Int64>, outputGradient dy: UnsafePointer<Float>,
                                      weightGradient dw: UnsafeMutablePointer<Float>,
                                      threads: Int = KernelThreads.count, path: FloatKernelPath = .best) {
    let g = layout.g
    let isa = path.isa, stride = (g.outChannels + 15) / 16 * 16
    let taps = g.kernelH * g.kernelW, k = taps * g.inChannels
    let rows = UnsafeMutablePointer<Float>.allocate(capacity: g.columns * stride)
    defer { rows.deallocate() }
    qarep_f32_to_pixel_major(dy, Int64(g.batch), Int64(g.outChannels), Int64(g.outPlane), Int64(stride), rows)
    let workers = max(1, min(threads, g.columns / 256))
    let partial = UnsafeMutablePointer<Float>.allocate(capacity: workers * k * stride)
    defer { partial.deallocate() }
    partial.initialize(repeating: 0, count: workers * k * stride)
    let tapOffsets = layout.tapOffsets
    tapOffsets.withUnsafeBufferPointer { to in
        let source = qarep_f32_source(source: paddedInput, tap_offsets: to.baseAddress, taps: Int64(g.kernelH),
                                      segment: Int64(g.kernelW * g.inChannels))
        parallelFor(g.columns, threads: workers) { worker, pixels in
            var s = source
            qarep_f32_weight_gradient(rows + pixels.lowerBound * stride, Int64(stride), &s,
                                      windowOffsets + pixels.lowerBound, Int64(pixels.count),
                                      partial + worker * k * stride, isa)
        }
    }
    for worker in 1..<workers {
        let src = partial + worker * k * stride
        for i in 0..<(k * stride) { partial[i] += src[i] }
    }
    // dwt[(t * C + c)][o] -> dw[o][c][t]
    for o in 0..<g.outChannels {
        for c in 0..<g.inChannels {
            for t in 0..<taps { dw[(o * g.inChannels + c) * taps + t] += partial[(t * g.inChannels + c) * stride + o] }
        }
    }
}
