// Per-plane reductions and maps of batch norm, on 16-lane vectors. LLVM keeps
// a float sum in order and so does not vectorize a plain loop; these sum 16
// interleaved partial sums (then the lanes, then the tail), a fixed order that
// does not depend on the thread count or the call site. Products are a
// multiply then an add: Swift builds for baseline x86-64, where `addProduct`
// becomes a call to `fmaf` per lane.

/// `(sum x, sum x^2)` of `count` floats.
@inline(__always)
public func sumAndSumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> (Float, Float) {
    var s = SIMD16<Float>(), ss = SIMD16<Float>()
    var i = 0
    while i + 16 <= count {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
        s += v
        ss += v * v
        i += 16
    }
    var a = s.sum(), b = ss.sum()
    while i < count { let v = x[i]; a += v; b += v * v; i += 1 }
    return (a, b)
}

/// `(sum g, sum g * h)` of `count` floats.
@inline(__always)
public func sumAndDot(_ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>, count: Int) -> (Float, Float) {
    var s = SIMD16<Float>(), d = SIMD16<Float>()
    var i = 0
    while i + 16 <= count {
        let gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
        s += gv
        d += gv * UnsafeRawPointer(h + i).loadUnaligned(as: SIMD16<Float>.self)
        i += 16
    }
    var a = s.sum(), b = d.sum()
    while i < count { a += g[i]; b += g[i] * h[i]; i += 1 }
    return (a, b)
}

/// `xhat[i] = (x[i] - mean) * invStd`, `y[i] = xhat[i] * gamma + beta`.
@inline(__always)
public func normalize(_ x: UnsafePointer<Float>, count: Int, mean: Float, invStd: Float, gamma: Float, beta: Float,
                      xhat: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>) {
    var i = 0
    while i + 16 <= count {
        let h = (UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - mean) * invStd
        UnsafeMutableRawPointer(xhat + i).storeBytes(of: h, as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(y + i).storeBytes(of: h * gamma + beta, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count { let h = (x[i] - mean) * invStd; xhat[i] = h; y[i] = h * gamma + beta; i += 1 }
}

/// `dx[i] += scale * (g[i] - meanG - h[i] * meanGH)`.
@inline(__always)
public func addNormalizationGradient(_ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>, count: Int, scale: Float,
                                     meanG: Float, meanGH: Float, dx: UnsafeMutablePointer<Float>) {
    var i = 0
    while i + 16 <= count {
        let gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
        let hv = UnsafeRawPointer(h + i).loadUnaligned(as: SIMD16<Float>.self)
        let d = UnsafeRawPointer(dx + i).loadUnaligned(as: SIMD16<Float>.self) + scale * (gv - meanG - hv * meanGH)
        UnsafeMutableRawPointer(dx + i).storeBytes(of: d, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count { dx[i] += scale * (g[i] - meanG - h[i] * meanGH); i += 1 }
}
