/// Geometry of a 2-D convolution over a batch, shared by the fast and the
/// naive kernels. Padding is symmetric; no dilation, no groups.
public struct ConvGeometry: Equatable, Sendable {
    public let batch, inChannels, height, width: Int
    public let outChannels, kernelH, kernelW, stride, padding: Int
    public let outHeight, outWidth: Int

    public init(batch: Int, inChannels: Int, height: Int, width: Int,
                outChannels: Int, kernelH: Int, kernelW: Int, stride: Int, padding: Int) {
        precondition(stride >= 1 && padding >= 0 && kernelH >= 1 && kernelW >= 1, "invalid convolution geometry")
        self.batch = batch; self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels; self.kernelH = kernelH; self.kernelW = kernelW
        self.stride = stride; self.padding = padding
        self.outHeight = (height + 2 * padding - kernelH) / stride + 1
        self.outWidth = (width + 2 * padding - kernelW) / stride + 1
    }

    /// Values in one output pixel's patch, the reduction length K: `inChannels * kernelH * kernelW`.
    public var patchSize: Int { inChannels * kernelH * kernelW }
    /// Output pixels of one image: `outHeight * outWidth`.
    public var outPlane: Int { outHeight * outWidth }
    /// Output pixels of the whole batch: `batch * outPlane`.
    public var columns: Int { batch * outPlane }
    /// Multiply-adds of the forward pass, times two.
    public var flops: Double { 2 * Double(outChannels) * Double(patchSize) * Double(columns) }
}
