import CQARepInt8
import Dispatch

// Exact integer GEMM of the INT8 engine: int8 weights times activation codes
// minus their zero point, accumulated in int32.
//
// Activations enter as int16 `x_q - z_x` in [-255, 255] and weights as int16
// in [-128, 127], so AVX2's vpmaddwd (16 int16 products, adjacent pairs summed
// into 8 int32 lanes) never saturates: a pair sum is at most 2 * 255 * 128 and
// the whole dot product at most 255 * 128 * K < 2^31 for K <= 65,793. (PyTorch's
// fbgemm instead multiplies uint8 by int8 with vpmaddubsw, whose int16 pair
// sums saturate, hence its `reduce_range`.)
//
// Measured on this project's 2-core AMD EPYC (Zen 3), one thread, a0 layer
// shapes at batch 128: this kernel 105-145 GOPS against OpenBLAS sgemm's
// 70-90 GFLOP/s; quantizedConv2d 120-140 GOPS against 50-60 for float
// im2col + sgemm. The same micro-kernel in Swift SIMD ran 7-15 GOPS (LLVM
// does not form vpmaddwd from it, and Swift builds for baseline x86-64),
// hence the C target.

/// Which integer kernel runs.
public enum IntegerKernelPath: Sendable, Equatable, CaseIterable {
    /// AMX tiles (`tdpbusd`: 16 pixels by 64 bytes of unsigned activations
    /// times 64 by 16 channels of int8 weights, summed into int32 tiles, with
    /// nothing narrowed), then the VNNI path's epilogue; convolutions only,
    /// where the CPU has AMX-INT8 and Linux grants the tile state. Layers
    /// too small to pay for the tiles (one block of 16 output channels, under
    /// 256 bytes of reduction, or under 64 pixels per thread) run the VNNI
    /// kernel; the bits are the same.
    case amx
    /// AVX-512 VNNI (`vpdpbusd`, unsigned activation bytes times int8 weights,
    /// four products summed straight into int32); convolutions only, where
    /// the CPU has it. `int16GEMM` and `requantize` run their AVX2 code on it.
    case avx512vnni
    /// AVX2; only where the CPU has it. `vpmaddwd` on int16 `x_q - z`, and,
    /// for convolutions whose input codes all lie in [0, 127] (every one after
    /// the first under a signed 8-bit scheme with ReLU, and every scheme below
    /// 8 bits), `vpmaddubsw` on their bytes, whose int16 pair sums cannot
    /// saturate there: half the bytes and fewer instructions per product.
    case avx2
    /// Plain C loops any CPU runs; the same results bit for bit, slower.
    case portable

    /// The fastest path this CPU runs.
    public static var best: IntegerKernelPath {
        amxAvailable ? .amx : vnni512Available ? .avx512vnni : avx2Available ? .avx2 : .portable
    }

    /// Every path this CPU runs, fastest first.
    public static var available: [IntegerKernelPath] {
        allCases.filter { $0 != .amx || amxAvailable }.filter { $0 != .avx512vnni || vnni512Available }
            .filter { $0 != .avx2 || avx2Available }
    }

    /// Whether this CPU runs AMX-INT8 (and AVX-512 VNNI) and the OS lets this process use the tiles.
    public static var amxAvailable: Bool { qarep_i8_amx_available() != 0 }

    /// Whether every convolution runs on the byte layout (the VNNI and AMX paths).
    public var usesBytes: Bool { self == .avx512vnni || self == .amx }

    /// Whether the kernel skips the window taps of border runs (`BorderTapRuns`):
    /// the AVX2 and portable tiles; VNNI and AMX read whole windows.
    public var skipsBorderTaps: Bool { !usesBytes }

    /// Output pixels of one micro-tile, on every path.
    public static var tilePixels: Int { Int(QAREP_I8_NR) }

    /// Whether this CPU runs AVX2.
    public static var avx2Available: Bool { qarep_i8_avx2_available() != 0 }

    /// Whether this CPU runs AVX-512 F, BW and VNNI.
    public static var vnni512Available: Bool { qarep_i8_vnni512_available() != 0 }

    /// The flag of the int16 kernels: 1 for AVX2 (which every AVX-512 CPU has).
    var flag: Int32 {
        if self == .avx512vnni { precondition(Self.vnni512Available, "the VNNI integer kernel needs a CPU with AVX-512 VNNI") }
        if self == .amx { precondition(Self.amxAvailable, "the AMX integer kernel needs a CPU with AMX-INT8") }
        if self == .avx2 { precondition(Self.avx2Available, "the AVX2 integer kernel needs a CPU with AVX2") }
        return self == .portable ? 0 : 1
    }
}

/// Largest reduction length whose int32 accumulator cannot overflow:
/// `255 * 128 * K <= Int32.max`.
public let maxIntegerGEMMInputSize = 65_793

/// Int8 weights widened to int16 and packed once for `int16GEMM` and
/// `quantizedConv2d`: blocks of 16 output channels, each `[K' / 2][16][2]`
/// (for each pair (k, k+1), the 16 channels' weight pairs: one vector load).
///
/// The packed reduction order is (i, j, c): kernel tap outer, input channel
/// inner, channels padded to even (`Cp`), so `K' = kh * kw * Cp`. That is what
/// lets the convolution read each tap's channels straight out of an NHWC
/// buffer. A plain `[O, K]` matrix is the 1x1 case (`Cp` = K rounded up to
/// even). Padding channels and padding k are zero.
///
/// QARep quantizes weights to the narrow range [-127, 127]; the kernel is
/// exact for -128 too, so any int8 is accepted.
public struct PackedInt8Weights: Sendable {
    /// O, rows of the weight matrix.
    public let outChannels: Int
    /// C of an OIHW weight (K for a matrix).
    public let inChannels: Int
    /// Kernel height (1 for a matrix).
    public let kernelH: Int
    /// Kernel width (1 for a matrix).
    public let kernelW: Int
    /// The packed values, `ceil(O / 16) * 16 * paddedInputSize` of them.
    public let storage: [Int16]
    /// The byte packing: int8, blocks of 16 channels, each `[K'' / 4][16][4]`
    /// with channels padded to a multiple of 4 and `K'' = kh * kw * quadInChannels`
    /// rounded up to a multiple of 64 (`vnniReduction`: whole AMX tiles);
    /// padding is zero. Built only where the CPU runs a byte kernel (AVX2,
    /// whose `vpmaddubsw` reads it as the VNNI and AMX kernels do).
    public let vnniStorage: [Int8]
    /// Sum of each output channel's weights (for the byte kernels' zero-code correction).
    public let weightSums: [Int32]

    /// K, the reduction length: `inChannels * kernelH * kernelW`.
    public var inputSize: Int { inChannels * kernelH * kernelW }
    /// `inChannels` rounded up to even: the values of one tap.
    public var paddedInChannels: Int { Self.roundedUp(inChannels, to: 2) }
    /// K' = `kernelH * kernelW * paddedInChannels`: the packed reduction length,
    /// and the row length of `int16GEMM`'s pixel-major columns.
    public var paddedInputSize: Int { kernelH * kernelW * paddedInChannels }
    /// `inChannels` rounded up to a multiple of 4: the bytes of one tap in the VNNI packing.
    public var quadInChannels: Int { Self.roundedUp(inChannels, to: 4) }
    /// K'' of one block of the VNNI packing: `kernelH * kernelW * quadInChannels` rounded up to 64.
    public var vnniReduction: Int { Self.vnniReduction(taps: kernelH * kernelW, inChannels: inChannels) }

    static func vnniReduction(taps: Int, inChannels: Int) -> Int { roundedUp(taps * roundedUp(inChannels, to: 4), to: 64) }

    /// `value` rounded up to a multiple of `multiple`, a power of two. The
    /// initializer uses it before `self` is complete, so the padded sizes are
    /// computed here rather than through the properties.
    static func roundedUp(_ value: Int, to multiple: Int) -> Int { (value + multiple - 1) & ~(multiple - 1) }

    /// Packs OIHW convolution weights `[outChannels, inChannels, kernelH, kernelW]`.
    public init(convolution weights: UnsafeBufferPointer<Int8>, outChannels: Int, inChannels: Int,
                kernelH: Int, kernelW: Int) {
        precondition(outChannels >= 1 && inChannels >= 1 && kernelH >= 1 && kernelW >= 1,
                     "weights need at least one output channel, input channel and tap")
        precondition(weights.count == outChannels * inChannels * kernelH * kernelW,
                     "\(weights.count) weights for [\(outChannels), \(inChannels), \(kernelH), \(kernelW)]")
        self.outChannels = outChannels
        self.inChannels = inChannels
        self.kernelH = kernelH
        self.kernelW = kernelW
        // The bound is on K: padding meets zero weights.
        precondition(inChannels * kernelH * kernelW <= maxIntegerGEMMInputSize,
                     "K = \(inChannels * kernelH * kernelW) could overflow the int32 accumulator (at most \(maxIntegerGEMMInputSize))")
        let taps = kernelH * kernelW, cp = Self.roundedUp(inChannels, to: 2), kp = taps * cp
        let mr = Int(QAREP_I8_MR), blocks = (outChannels + mr - 1) / mr
        var packed = [Int16](repeating: 0, count: blocks * mr * kp)
        for o in 0..<outChannels {
            for c in 0..<inChannels {
                for t in 0..<taps {
                    packed[Self.slot(o: o, k: t * cp + c, paddedInputSize: kp)] = Int16(weights[(o * inChannels + c) * taps + t])
                }
            }
        }
        storage = packed
        weightSums = (0..<outChannels).map { o in
            (0..<(inChannels * taps)).reduce(Int32(0)) { $0 + Int32(weights[o * inChannels * taps + $1]) }
        }
        if IntegerKernelPath.avx2Available {
            let cq = Self.roundedUp(inChannels, to: 4), kq = Self.vnniReduction(taps: taps, inChannels: inChannels)
            var quads = [Int8](repeating: 0, count: blocks * mr * kq)
            for o in 0..<outChannels {
                for c in 0..<inChannels {
                    for t in 0..<taps {
                        let k = t * cq + c
                        quads[(o / mr) * mr * kq + (k >> 2) * 4 * mr + (o % mr) * 4 + (k & 3)] = weights[(o * inChannels + c) * taps + t]
                    }
                }
            }
            vnniStorage = quads
        } else {
            vnniStorage = []
        }
    }

    /// Packs OIHW convolution weights `[outChannels, inChannels, kernelH, kernelW]`.
    public init(convolution weights: [Int8], outChannels: Int, inChannels: Int, kernelH: Int, kernelW: Int) {
        self = weights.withUnsafeBufferPointer {
            PackedInt8Weights(convolution: $0, outChannels: outChannels, inChannels: inChannels,
                              kernelH: kernelH, kernelW: kernelW)
        }
    }

    /// Packs a row-major `[outChannels, inputSize]` matrix (the 1x1 case).
    public init(_ weights: [Int8], outChannels: Int, inputSize: Int) {
        self.init(convolution: weights, outChannels: outChannels, inChannels: inputSize, kernelH: 1, kernelW: 1)
    }

    /// The weight of channel `o` at OIHW reduction index `k = (c * kh + i) * kw + j`,
    /// read back from the packing.
    public subscript(o: Int, k: Int) -> Int8 {
        precondition(o >= 0 && o < outChannels && k >= 0 && k < inputSize, "weight index (\(o), \(k)) out of range")
        let taps = kernelH * kernelW
        return Int8(storage[Self.slot(o: o, k: (k % taps) * paddedInChannels + k / taps, paddedInputSize: paddedInputSize)])
    }

    /// Position of (channel o, packed reduction index k) in `storage`.
    @inline(__always)
    static func slot(o: Int, k: Int, paddedInputSize kp: Int) -> Int {
        let mr = Int(QAREP_I8_MR)
        return (o / mr) * mr * kp + (k >> 1) * 2 * mr + (o % mr) * 2 + (k & 1)
    }
}

/// `output[O, N] = weights[O, K'] * columns[N, K']^T` in int32, exactly.
///
/// - Parameters:
///   - weights: packed int8 weights; `O = weights.outChannels`.
///   - columns: pixel-major `[n, K']` int16, `K' = weights.paddedInputSize`:
///     row j is the patch of pixel j in the packed (i, j, c) order
///     (`quantizedIm2col` writes it for a convolution; for a matrix packing it
///     is the K values, then one padding slot if K is odd, which meets a zero
///     weight). Values in [-255, 255] keep the int32 accumulator exact.
///   - n: the pixels (rows of `columns`).
///   - output: row-major `[O, n]` int32.
///   - threads: worker threads over pixel chunks (the results do not depend on it).
///   - path: the kernel; `.best` unless testing the fallback.
public func int16GEMM(weights: PackedInt8Weights, columns: UnsafePointer<Int16>, n: Int,
                      output: UnsafeMutablePointer<Int32>, threads: Int = 1,
                      path: IntegerKernelPath = .best) {
    precondition(n >= 0, "negative pixel count")
    guard n > 0 else { return }
    let flag = path.flag, kp = weights.paddedInputSize
    let epilogue = qarep_i8_epilogue(bias: nil, multiplier: nil, zero_point: 0, min: 0, max: 0, output_signed: 0,
                                     output: UnsafeMutableRawPointer(output),
                                     plane: Int64(n), channel_stride: Int64(n), image_stride: 0,
                                     pixel_offsets: nil, flip: 0, output_int16: 0)
    let pixelOffsets = (0..<n).map { Int64($0 * kp) }
    let tapOffsets: [Int64] = [0]
    weights.storage.withUnsafeBufferPointer { w in
        pixelOffsets.withUnsafeBufferPointer { po in
            tapOffsets.withUnsafeBufferPointer { to in
                let source = qarep_i8_source(source: columns, tap_offsets: to.baseAddress, taps: 1, segment: Int64(kp))
                withUnsafePointer(to: source) { s in
                    withUnsafePointer(to: epilogue) { e in
                        PixelChunks(pixels: n, paddedInputSize: kp, threads: threads)
                            .forEach(outChannels: weights.outChannels, reduction: kp, threads: threads, weights: w.baseAddress!,
                                     blockElements: 16 * kp, epilogue: e.pointee) { w, outChannels, first, count, e in
                                qarep_i8_gemm(w, Int64(outChannels), s, po.baseAddress! + first, Int64(first), Int64(count), e, nil, flag)
                            }
                    }
                }
            }
        }
    }
}

/// Reference for `int16GEMM`: three loops over a dense pixel-major `[n, K]`
/// matrix (no padding), accumulated in `Int64`, with a check that every result
/// fits `Int32`. `weights` is row-major `[outChannels, inputSize]`.
public func naiveInt16GEMM(weights: UnsafePointer<Int8>, outChannels: Int, inputSize: Int,
                           columns: UnsafePointer<Int16>, n: Int, output: UnsafeMutablePointer<Int32>) {
    for o in 0..<outChannels {
        for j in 0..<n {
            var acc: Int64 = 0
            for k in 0..<inputSize { acc += Int64(weights[o * inputSize + k]) * Int64(columns[j * inputSize + k]) }
            precondition(acc >= Int64(Int32.min) && acc <= Int64(Int32.max), "accumulator \(acc) overflows Int32")
            output[o * n + j] = Int32(acc)
        }
    }
}

/// Requantizes `count` accumulators of one channel to 8-bit codes:
/// `output[i] = requantize(acc[i] + bias, multiplier:, zeroPoint:, min:, max:)`
/// (the sum wraps like the int32 accumulator it extends). `[min, max]` must lie
/// inside `Output.codeRange`.
public func requantize<Output: QuantizedActivation>(
    _ acc: UnsafePointer<Int32>, count: Int, bias: Int32 = 0, multiplier: Float,
    zeroPoint: Int32, min: Int32, max: Int32, output: UnsafeMutablePointer<Output>,
    path: IntegerKernelPath = .best
) {
    precondition(multiplier.isFinite, "requantization multiplier must be finite, got \(multiplier)")
    precondition(min <= max && Output.codeRange.contains(min) && Output.codeRange.contains(max),
                 "output range [\(min), \(max)] outside \(Output.self)'s \(Output.codeRange)")
    qarep_i8_requantize(acc, Int64(count), bias, multiplier, zeroPoint, min, max,
                        UnsafeMutableRawPointer(output), Output.isSigned ? 1 : 0, path.flag)
}

// MARK: - Work splitting

/// Pixels per chunk: a multiple of the 6-pixel tile whose patches (K' int16
/// each) fill about 128 KiB, so that they stay in L2 while every group of
/// channel blocks passes over them.
func pixelChunk(paddedInputSize kp: Int) -> Int {
    let nr = Int(QAREP_I8_NR)
    return Swift.max(1, (128 * 1024) / (kp * 2 * nr)) * nr
}

/// How a run over `pixels` output pixels is cut: chunks of `chunk` pixels (a
/// multiple of 6, see `pixelChunk`), taken by up to `workers` threads as they
/// finish the last (every output pixel belongs to one chunk, so the order
/// does not change a bit).
struct PixelChunks {
    let pixels: Int, chunk: Int, chunks: Int, workers: Int

    init(pixels: Int, paddedInputSize kp: Int, threads: Int) {
        precondition(threads >= 1, "threads must be at least 1, got \(threads)")
        self.pixels = pixels
        chunk = pixelChunk(paddedInputSize: kp)
        chunks = (pixels + chunk - 1) / chunk
        workers = Swift.max(1, Swift.min(threads, chunks))
    }

    /// Calls `body(worker, first, count)` once for every chunk, on `workers` threads.
    func forEach(_ body: (_ worker: Int, _ first: Int, _ count: Int) -> Void) {
        parallelDynamic(chunks, threads: workers) { worker, c in
            let first = c * chunk
            body(worker, first, Swift.min(chunk, pixels - first))
        }
    }

    /// Calls `body(first, count, epilogue)` once for every chunk and part of
    /// the output channels: when the chunks are fewer than the threads and
    /// there are at least 256K multiply-adds per extra worker (a single
    /// image's late layers), the channels are split as well (`ChannelSplit`),
    /// each part with `epilogue` moved to its first channel and `weights` to
    /// its first block (`blockElements` per 16 channels); `pairedBlocks` for
    /// kernels whose tile is two blocks (VNNI, AMX). Integer sums do not
    /// depend on the split.
    func forEach<Weight>(outChannels: Int, reduction k: Int, threads: Int, weights: UnsafePointer<Weight>, blockElements: Int,
                         pairedBlocks: Bool = false, epilogue: qarep_i8_epilogue,
                         _ body: (_ weights: UnsafePointer<Weight>, _ outChannels: Int, _ first: Int, _ count: Int,
                                  _ epilogue: UnsafePointer<qarep_i8_epilogue>) -> Void) {
        let wanted = Swift.max(1, Swift.min(threads, (pixels * k * outChannels) >> 18))
        let split = ChannelSplit(outChannels: outChannels, chunks: chunks, workers: Swift.max(workers, wanted),
                                 blockChannels: pairedBlocks ? 32 : 16)
        parallelDynamic(chunks * split.parts, threads: Swift.max(workers, Swift.min(wanted, chunks * split.parts))) { _, item in
            let first = item / split.parts * chunk, channels = split.range(item % split.parts)
            var part = epilogue.channels(from: channels.lowerBound)
            body(weights + channels.lowerBound / 16 * blockElements, channels.count, first, Swift.min(chunk, pixels - first), &part)
        }
    }
}

extension qarep_i8_epilogue {
    /// This epilogue for the output channels from `c0` on: the per-channel
    /// bias and multipliers and the output's start moved there (int32
    /// accumulators without multipliers, one-byte codes or int16 values with
    /// them; NHWC when there are pixel offsets, channel planes otherwise).
    func channels(from c0: Int) -> qarep_i8_epilogue {
        var e = self
        e.bias = bias.map { $0 + c0 }
        e.multiplier = multiplier.map { $0 + c0 }
        let elementSize = multiplier == nil ? 4 : output_int16 != 0 ? 2 : 1
        e.output = output + c0 * (pixel_offsets == nil ? Int(channel_stride) : 1) * elementSize
        return e
    }
}
