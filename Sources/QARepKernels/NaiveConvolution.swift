/// Direct convolution, seven nested loops and nothing clever: the reference the
/// GEMM path is tested against, and a fallback. `x[N, C, H, W]`,
/// `w[O, C, kh, kw]`, optional `bias[O]`, `y[N, O, OH, OW]`.
public func naiveConv2d(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ bias: UnsafePointer<Float>?,
                        _ y: UnsafeMutablePointer<Float>, _ g: ConvGeometry) {
    for n in 0..<g.batch {
        for o in 0..<g.outChannels {
            for oy in 0..<g.outHeight {
                for ox in 0..<g.outWidth {
                    var acc: Double = bias.map { Double($0[o]) } ?? 0
                    for c in 0..<g.inChannels {
                        for i in 0..<g.kernelH {
                            let iy = oy * g.stride - g.padding + i
                            if iy < 0 || iy >= g.height { continue }
                            for j in 0..<g.kernelW {
                                let ix = ox * g.stride - g.padding + j
                                if ix < 0 || ix >= g.width { continue }
                                let xv = x[((n * g.inChannels + c) * g.height + iy) * g.width + ix]
                                let wv = w[((o * g.inChannels + c) * g.kernelH + i) * g.kernelW + j]
                                acc += Double(xv) * Double(wv)
                            }
                        }
                    }
                    y[((n * g.outChannels + o) * g.outHeight + oy) * g.outWidth + ox] = Float(acc)
                }
            }
        }
    }
}
