import CQARepFloat

// Batch norm's four passes over NCHW activations, for one range of channels
// over every image: the C kernels in CQARepFloat (batch_norm.c), AVX-512,
// AVX2 or portable. Each gives the bits of the per-plane loops in
// ChannelReductions.swift, applied plane by plane and summed into doubles
// in image order; the tests hold every path to those loops.

/// Where batch norm's kernels read: `batch` images of `channels` planes of
/// `plane` floats each, NCHW.
public struct ChannelPlanes: Sendable {
    public let batch: Int, channels: Int, plane: Int

    public init(batch: Int, channels: Int, plane: Int) {
        // Empty tensors are allowed, as `batchNorm` allowed them before these kernels.
        precondition(batch >= 0 && channels >= 0 && plane >= 0, "negative size: \(batch) x \(channels) x \(plane)")
        self.batch = batch; self.channels = channels; self.plane = plane
    }

    fileprivate func check(_ range: Range<Int>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= channels, "channels \(range) of \(channels)")
    }
}

/// `sums[c]` and `squares[c]`, for c in `range`: the sums of x and x^2 over
/// every image's plane of channel c (`sumAndSumOfSquares` per plane).
public func channelSumsAndSquares(_ x: UnsafePointer<Float>, _ planes: ChannelPlanes, channels range: Range<Int>,
                                  sums: UnsafeMutablePointer<Double>, squares: UnsafeMutablePointer<Double>,
                                  path: FloatKernelPath = .best) {
    planes.check(range)
    qarep_f32_bn_sums(x, Int64(planes.batch), Int64(planes.channels), Int64(planes.plane), Int64(range.lowerBound),
                      Int64(range.count), sums, squares, path.isa)
}

/// `y = (x - mean[c]) * invStd[c] * gamma[c] + beta[c]` (ReLU'd with
/// `relu`) for the channels in `range` (`normalize` per plane).
public func normalizeChannels(_ x: UnsafePointer<Float>, _ planes: ChannelPlanes, channels range: Range<Int>,
                              mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>, gamma: UnsafePointer<Float>,
                              beta: UnsafePointer<Float>, relu: Bool, y: UnsafeMutablePointer<Float>,
                              path: FloatKernelPath = .best) {
    planes.check(range)
    qarep_f32_bn_normalize(x, Int64(planes.batch), Int64(planes.channels), Int64(planes.plane), Int64(range.lowerBound),
                           Int64(range.count), mean, invStd, gamma, beta, relu ? 1 : 0, y, path.isa)
}

/// `sumG[c]` and `sumGH[c]` for c in `range`: the sums of g' and g' * xhat
/// over every image (`sumAndDotNormalized` per plane).
public func channelGradientSums(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ planes: ChannelPlanes,
                                channels range: Range<Int>, mean: UnsafePointer<Float>, invStd: UnsafePointer<Float>,
                                reluOutput: UnsafePointer<Float>?, sumG: UnsafeMutablePointer<Double>,
                                sumGH: UnsafeMutablePointer<Double>, path: FloatKernelPath = .best) {
    planes.check(range)
    qarep_f32_bn_gradient_sums(g, x, reluOutput, Int64(planes.batch), Int64(planes.channels), Int64(planes.plane),
                               Int64(range.lowerBound), Int64(range.count), mean, invStd, sumG, sumGH, path.isa)
}

/// `dx += scale[c] * (g' - meanG[c] - xhat * meanGH[c])` for the channels in
/// `range` (`addNormalizationGradient` per plane).
public func addChannelNormalizationGradient(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ planes: ChannelPlanes,
                                            channels range: Range<Int>, mean: UnsafePointer<Float>,
                                            invStd: UnsafePointer<Float>, reluOutput: UnsafePointer<Float>?,
                                            scale: UnsafePointer<Float>, meanG: UnsafePointer<Float>,
                                            meanGH: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                                            path: FloatKernelPath = .best) {
    planes.check(range)
    qarep_f32_bn_add_input_gradient(g, x, reluOutput, Int64(planes.batch), Int64(planes.channels), Int64(planes.plane),
                                    Int64(range.lowerBound), Int64(range.count), mean, invStd, scale, meanG, meanGH, dx,
                                    path.isa)
}
