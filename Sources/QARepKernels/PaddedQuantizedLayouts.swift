import CQARepInt8

// The zero-padded NHWC activation layouts the integer kernels read in place
// (implicit GEMM). The engine keeps each layer's input in one of them and
// every convolution writes straight into the next layer's interior, so
// activations are laid out once per image, not once per layer.

/// A zero-padded NHWC copy of a convolution's 8-bit input in the form one
/// integer kernel reads: `QuantizedInt16Layout` for the AVX2 and portable
/// kernels, `QuantizedBytesLayout` for VNNI and AMX.
public protocol PaddedQuantizedLayout: Sendable {
    /// What one channel of one pixel is stored as.
    associatedtype Element: FixedWidthInteger
    init(_ g: ConvGeometry)
    /// The convolution this is the input of.
    var geometry: ConvGeometry { get }
    /// Elements of the buffer.
    var count: Int { get }
    /// Window origin of every output pixel, pixels in (n, oy, ox) order.
    var windowOffsets: [Int64] { get }
    /// Offset of input pixel (n, y, x) of the unpadded image, channel 0.
    func offset(image n: Int, y: Int, x: Int) -> Int
    /// What borders and padding channels hold: real zero for codes with `zeroPoint`.
    static func zeroElement(zeroPoint: Int32, signed: Bool) -> Element
    /// The code a stored element stands for is `Int32(element) + codeOffset`.
    static func codeOffset(zeroPoint: Int32, signed: Bool) -> Int32
    /// Copies NCHW codes into `buffer` (`count` elements), borders included.
    func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<Element>, from codes: UnsafePointer<T>,
                                      zeroPoint: Int32, threads: Int)
    /// `quantizedConv2d`'s arithmetic on an input in this layout, pixel j's
    /// output channels written as this layout's elements from `outputOffsets[j]`
    /// (into the next layer's buffer, or a plain NHWC one).
    func convolve(_ input: UnsafePointer<Element>, windowOffsets: [Int64], inputZeroPoint: Int32, inputSigned: Bool,
                  weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                  outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                  output: UnsafeMutablePointer<Element>, outputOffsets: [Int64], threads: Int, path: IntegerKernelPath)
}

/// The zero-padded NHWC int16 the AVX2 and portable kernels read: `x_q - z_x`
/// (in [-255, 255]), channels padded to even, zero in the borders and padding
/// channels.
public struct QuantizedInt16Layout: PaddedQuantizedLayout {
    let nhwc: PaddedNHWC

    public init(_ g: ConvGeometry) { nhwc = PaddedNHWC(g, channelMultiple: 2) }

    public var geometry: ConvGeometry { nhwc.g }
    public var count: Int { nhwc.count }
    public var windowOffsets: [Int64] { nhwc.pixelOffsets }
    public func offset(image n: Int, y: Int, x: Int) -> Int { nhwc.offset(image: n, y: y, x: x) }
    public static func zeroElement(zeroPoint: Int32, signed: Bool) -> Int16 { 0 }
    public static func codeOffset(zeroPoint: Int32, signed: Bool) -> Int32 { zeroPoint }

    public func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<Int16>, from codes: UnsafePointer<T>,
                                            zeroPoint: Int32, threads: Int) {
        nhwc.fill(buffer, from: codes, zeroPoint: zeroPoint, threads: threads)
    }

    public func convolve(_ input: UnsafePointer<Int16>, windowOffsets: [Int64], inputZeroPoint: Int32, inputSigned: Bool,
                         weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                         outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                         output: UnsafeMutablePointer<Int16>, outputOffsets: [Int64], threads: Int, path: IntegerKernelPath) {
        quantizedConv2dInt16(paddedInput: input, layout: self, windowOffsets: windowOffsets, weights: weights, bias: bias,
                             multipliers: multipliers, outputZeroPoint: outputZeroPoint, outputMin: outputMin,
                             outputMax: outputMax, outputSigned: outputSigned, output: output, outputOffsets: outputOffsets,
                             threads: threads, path: path)
    }
}

/// The zero-padded NHWC bytes the VNNI kernel reads: `u = x_q + 128` for
/// int8 codes, `x_q` for uint8 codes, channels padded to a multiple of 4, and
/// the code of real zero (`zeroCode`) in the borders and padding channels.
public struct QuantizedBytesLayout: PaddedQuantizedLayout {
    let nhwc: PaddedNHWC

    public init(_ g: ConvGeometry) { nhwc = PaddedNHWC(g, channelMultiple: 4) }

    public var geometry: ConvGeometry { nhwc.g }
    public var count: Int { nhwc.count }
    /// Channels of a pixel in the buffer (C rounded up to 4).
    public var paddedChannels: Int { nhwc.paddedChannels }
    public var windowOffsets: [Int64] { nhwc.pixelOffsets }
    public func offset(image n: Int, y: Int, x: Int) -> Int { nhwc.offset(image: n, y: y, x: x) }

    /// The byte of real zero for codes with zero point `zeroPoint`.
    public static func zeroCode(zeroPoint: Int32, signed: Bool) -> Int32 { zeroPoint + (signed ? 128 : 0) }
    public static func zeroElement(zeroPoint: Int32, signed: Bool) -> UInt8 {
        UInt8(zeroCode(zeroPoint: zeroPoint, signed: signed))
    }
    public static func codeOffset(zeroPoint: Int32, signed: Bool) -> Int32 { signed ? -128 : 0 }

    public func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<UInt8>, from codes: UnsafePointer<T>,
                                            zeroPoint: Int32, threads: Int) {
        let g = nhwc.g
        parallelFor(g.batch, threads: threads) { _, images in
            qarep_u8_to_padded_nhwc(UnsafeRawPointer(codes), T.isSigned ? 1 : 0, zeroPoint,
                                    Int64(images.lowerBound), Int64(images.count), Int64(g.inChannels),
                                    Int64(g.height), Int64(g.width), Int64(g.padding), Int64(nhwc.paddedChannels), buffer)
        }
    }

    public func convolve(_ input: UnsafePointer<UInt8>, windowOffsets: [Int64], inputZeroPoint: Int32, inputSigned: Bool,
                         weights: PackedInt8Weights, bias: [Int32], multipliers: [Float],
                         outputZeroPoint: Int32, outputMin: Int32, outputMax: Int32, outputSigned: Bool,
                         output: UnsafeMutablePointer<UInt8>, outputOffsets: [Int64], threads: Int, path: IntegerKernelPath) {
        quantizedConv2dBytes(paddedInput: input, layout: self, windowOffsets: windowOffsets,
                             inputZeroCode: Self.zeroCode(zeroPoint: inputZeroPoint, signed: inputSigned),
                             weights: weights, bias: bias, multipliers: multipliers, outputZeroPoint: outputZeroPoint,
                             outputMin: outputMin, outputMax: outputMax, outputSigned: outputSigned,
                             output: UnsafeMutableRawPointer(output), outputOffsets: outputOffsets, threads: threads, path: path)
    }
}

/// The zero-padded NHWC copy of a convolution's input,
/// `[N][H + 2p][W + 2p][Cp]` with `Cp` = C rounded up to a multiple of
/// `channelMultiple` (2 for the int16 kernels' pairs, 4 for the VNNI quads),
/// and where the implicit GEMM finds each patch in it. Offsets count elements.
struct PaddedNHWC: Sendable {
    let g: ConvGeometry
    let paddedChannels: Int, paddedHeight: Int, paddedWidth: Int

    init(_ g: ConvGeometry, channelMultiple: Int = 2) {
        self.g = g
        paddedChannels = (g.inChannels + channelMultiple - 1) / channelMultiple * channelMultiple
        paddedHeight = g.height + 2 * g.padding
        paddedWidth = g.width + 2 * g.padding
    }

    /// Elements of the buffer.
    var count: Int { g.batch * paddedHeight * paddedWidth * paddedChannels }
    /// K' = kh * kw * Cp.
    var paddedInputSize: Int { g.kernelH * g.kernelW * paddedChannels }

    /// Values the kernel reads contiguously per window row: taps (i, 0..<kw)
    /// are adjacent in NHWC, and so are their weights in the (i, j, c) order.
    var segment: Int { g.kernelW * paddedChannels }

    /// Offset of window row i from its pixel's window origin.
    var tapOffsets: [Int64] { (0..<g.kernelH).map { i in Int64(i * paddedWidth * paddedChannels) } }

    /// Offset of input pixel (n, y, x) of the unpadded image, channel 0.
    func offset(image n: Int, y: Int, x: Int) -> Int {
        ((n * paddedHeight + y + g.padding) * paddedWidth + x + g.padding) * paddedChannels
    }

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
