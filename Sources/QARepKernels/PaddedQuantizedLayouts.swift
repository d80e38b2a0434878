import CQARepInt8

// The zero-padded NHWC activation layouts the integer kernels read in place
// (implicit GEMM). The engine keeps each layer's input in one of them and
// every convolution writes straight into the next layer's interior, so
// activations are laid out once per image, not once per layer.

/// What a padded activation buffer stores for each code `x_q` (zero point `z`).
public enum QuantizedElement: Sendable, Equatable {
    /// int16 `x_q - z`; real zero is 0. What the AVX2 and portable int16 kernels read.
    case int16
    /// One byte: `x_q + 128` for int8 codes, `x_q` for uint8. What VNNI and AMX read.
    case shiftedByte
    /// The code's own byte, for codes in [0, 127]: what AVX2's vpmaddubsw
    /// reads exactly (a code outside that range is not representable).
    case rawByte

    /// Bytes of one element.
    public var size: Int { self == .int16 ? 2 : 1 }

    /// The element of real zero, which borders and padding channels hold, as
    /// its bit pattern (an int16 or a byte).
    public func zero(zeroPoint: Int32, signed: Bool) -> Int32 {
        switch self {
        case .int16: 0
        case .shiftedByte: zeroPoint + (signed ? 128 : 0)
        case .rawByte: zeroPoint
        }
    }

    /// The code a stored element stands for is `element + codeOffset` (an
    /// int16 read as signed, a byte as unsigned).
    public func codeOffset(zeroPoint: Int32, signed: Bool) -> Int32 {
        switch self {
        case .int16: zeroPoint
        case .shiftedByte: signed ? -128 : 0
        case .rawByte: 0
        }
    }

    /// Whether codes in `range` fit the element (always, but for `rawByte`: [0, 127]).
    public func holds(_ range: QuantRange) -> Bool { self != .rawByte || (range.min >= 0 && range.max <= 127) }
}

/// The zero-padded NHWC int16 the AVX2 and portable kernels read: `x_q - z_x`
/// (in [-255, 255]), channels padded to even, zero in the borders and padding
/// channels.
public struct QuantizedInt16Layout: Sendable {
    let nhwc: PaddedNHWC

    public init(_ g: ConvGeometry) { nhwc = PaddedNHWC(g, channelMultiple: 2) }

    /// The convolution this is the input of.
    public var geometry: ConvGeometry { nhwc.g }
    /// Int16 elements of the buffer.
    public var count: Int { nhwc.count }
    /// Window origin of every output pixel, pixels in (n, oy, ox) order.
    public var windowOffsets: [Int64] { nhwc.pixelOffsets }
    /// Offset of input pixel (n, y, x) of the unpadded image, channel 0.
    public func offset(image n: Int, y: Int, x: Int) -> Int { nhwc.offset(image: n, y: y, x: x) }

    /// Copies NCHW codes into `buffer` (`count` elements), borders included.
    public func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<Int16>, from codes: UnsafePointer<T>,
                                            zeroPoint: Int32, threads: Int) {
        nhwc.fill(buffer, from: codes, zeroPoint: zeroPoint, threads: threads)
    }
}

/// The zero-padded NHWC bytes the byte kernels read, channels padded to a
/// multiple of 4, the byte of real zero in the borders and padding channels:
/// `.shiftedByte` elements for VNNI and AMX, `.rawByte` for AVX2.
public struct QuantizedBytesLayout: Sendable {
    let nhwc: PaddedNHWC
    /// `.shiftedByte` or `.rawByte`.
    public let element: QuantizedElement

    public init(_ g: ConvGeometry, element: QuantizedElement = .shiftedByte) {
        precondition(element != .int16, "a byte layout stores bytes")
        nhwc = PaddedNHWC(g, channelMultiple: 4)
        self.element = element
    }

    /// The convolution this is the input of.
    public var geometry: ConvGeometry { nhwc.g }
    /// Bytes of the buffer.
    public var count: Int { nhwc.count }
    /// Channels of a pixel in the buffer (C rounded up to 4).
    public var paddedChannels: Int { nhwc.paddedChannels }
    /// Window origin of every output pixel, pixels in (n, oy, ox) order.
    public var windowOffsets: [Int64] { nhwc.pixelOffsets }
    /// Offset of input pixel (n, y, x) of the unpadded image, channel 0.
    public func offset(image n: Int, y: Int, x: Int) -> Int { nhwc.offset(image: n, y: y, x: x) }

    /// The byte of real zero for codes with zero point `zeroPoint`.
    public func zeroCode(zeroPoint: Int32, signed: Bool) -> Int32 { element.zero(zeroPoint: zeroPoint, signed: signed) }

    /// Copies NCHW codes into `buffer` (`count` bytes), borders included.
    /// With `.rawByte` every code must lie in [0, 127].
    public func fill<T: QuantizedActivation>(_ buffer: UnsafeMutablePointer<UInt8>, from codes: UnsafePointer<T>,
                                            zeroPoint: Int32, threads: Int) {
        let g = nhwc.g
        // A raw byte is the code itself: the copy of a uint8 code.
        let shifted: Int32 = element == .shiftedByte && T.isSigned ? 1 : 0
        parallelFor(g.batch, threads: threads) { _, images in
            qarep_u8_to_padded_nhwc(UnsafeRawPointer(codes), shifted, zeroPoint,
                                    Int64(images.lowerBound), Int64(images.count), Int64(g.inChannels),
                                    Int64(g.height), Int64(g.width), Int64(g.padding), Int64(nhwc.paddedChannels), buffer)
        }
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
