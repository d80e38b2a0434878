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

    /// Rows of the patch matrix: `inChannels * kernelH * kernelW`.
    public var patchSize: Int { inChannels * kernelH * kernelW }
    /// Output pixels of one image: `outHeight * outWidth`.
    public var outPlane: Int { outHeight * outWidth }
    /// Columns of the patch matrix over the whole batch: `batch * outPlane`.
    public var columns: Int { batch * outPlane }
    /// Multiply-adds of the forward pass, times two.
    public var flops: Double { 2 * Double(outChannels) * Double(patchSize) * Double(columns) }
    /// A 1x1, stride-1, unpadded convolution needs no patch matrix: the input
    /// in channel-major order already is one.
    public var isPointwise: Bool { kernelH == 1 && kernelW == 1 && stride == 1 && padding == 0 }
}

/// Patch matrix of a whole batch: `col[K, N*P]` from `x[N, C, H, W]`, with
/// `K = C*kh*kw` rows ordered (c, i, j) like an OIHW weight's columns and
/// columns ordered (n, oy, ox). Out-of-image taps are zero.
public func im2col(_ x: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
    // Input channels write disjoint row blocks: split them over the cores.
    parallelChunks(g.inChannels, work: g.patchSize * g.columns) { channels in
        im2col(x, col, g, channels: channels)
    }
}

private func im2col(_ x: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>, _ g: ConvGeometry, channels: Range<Int>) {
    let (H, W, OH, OW, s, p) = (g.height, g.width, g.outHeight, g.outWidth, g.stride, g.padding)
    let np = g.columns, plane = g.outPlane
    for c in channels {
        for i in 0..<g.kernelH {
            for j in 0..<g.kernelW {
                let row = col + ((c * g.kernelH + i) * g.kernelW + j) * np
                // Output columns whose input column ix = ox*s - p + j lies inside [0, W).
                let oxLo = max(0, (p - j + s - 1) / s)
                let oxHi = min(OW, (W - 1 + p - j) / s + 1)
                for n in 0..<g.batch {
                    let src = x + (n * g.inChannels + c) * H * W
                    let dstImage = row + n * plane
                    for oy in 0..<OH {
                        let dst = dstImage + oy * OW
                        let iy = oy * s - p + i
                        if iy < 0 || iy >= H || oxLo >= oxHi {
                            dst.update(repeating: 0, count: OW)
                            continue
                        }
                        if oxLo > 0 { dst.update(repeating: 0, count: oxLo) }
                        if oxHi < OW { (dst + oxHi).update(repeating: 0, count: OW - oxHi) }
                        let srcRow = src + iy * W - p + j
                        if s == 1 {
                            (dst + oxLo).update(from: srcRow + oxLo, count: oxHi - oxLo)
                        } else {
                            for ox in oxLo..<oxHi { dst[ox] = srcRow[ox * s] }
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of `im2col`: scatters-and-adds `col[K, N*P]` back into
/// `dx[N, C, H, W]`, which must be zeroed by the caller.
public func col2im(_ col: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
    // Each input channel's plane only receives its own rows: channels split over the cores.
    parallelChunks(g.inChannels, work: g.patchSize * g.columns) { channels in
        col2im(col, dx, g, channels: channels)
    }
}

private func col2im(_ col: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, _ g: ConvGeometry, channels: Range<Int>) {
    let (H, W, OH, OW, s, p) = (g.height, g.width, g.outHeight, g.outWidth, g.stride, g.padding)
    let np = g.columns, plane = g.outPlane
    for c in channels {
        for i in 0..<g.kernelH {
            for j in 0..<g.kernelW {
                let row = col + ((c * g.kernelH + i) * g.kernelW + j) * np
                let oxLo = max(0, (p - j + s - 1) / s)
                let oxHi = min(OW, (W - 1 + p - j) / s + 1)
                if oxLo >= oxHi { continue }
                for n in 0..<g.batch {
                    let dstImage = dx + (n * g.inChannels + c) * H * W
                    let srcImage = row + n * plane
                    for oy in 0..<OH {
                        let iy = oy * s - p + i
                        if iy < 0 || iy >= H { continue }
                        let src = srcImage + oy * OW
                        let dstRow = dstImage + iy * W - p + j
                        if s == 1 {
                            for ox in oxLo..<oxHi { dstRow[ox] += src[ox] }
                        } else {
                            for ox in oxLo..<oxHi { dstRow[ox * s] += src[ox] }
                        }
                    }
                }
            }
        }
    }
}
