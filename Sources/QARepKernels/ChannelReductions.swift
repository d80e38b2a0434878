// Per-plane reductions and maps of batch norm, on 16-lane vectors: the
// reference that batch norm's C kernels (batch_norm.c, BatchNormKernels.swift),
// which `batchNorm` runs, are held to bit for bit. LLVM keeps
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

/// `(sum g', sum g' * h)` of `count` floats, where `h = (x - mean) * invStd`
/// is recomputed from `x` with the forward pass's arithmetic (so the same
/// bits as a stored copy) and `g' = g` masked to 0 where `reluOutput <= 0`
/// when a ReLU output is given.
@inline(__always)
public func sumAndDotNormalized(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, mean: Float,
                                invStd: Float, reluOutput: UnsafePointer<Float>?) -> (Float, Float) {
    var s = SIMD16<Float>(), d = SIMD16<Float>()
    var i = 0
    let zero = SIMD16<Float>()
    while i + 16 <= count {
        var gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
        if let reluOutput { gv = zero.replacing(with: gv, where: UnsafeRawPointer(reluOutput + i).loadUnaligned(as: SIMD16<Float>.self) .> zero) }
        let h = (UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - mean) * invStd
        s += gv
        d += gv * h
        i += 16
    }
    var a = s.sum(), b = d.sum()
    while i < count {
        let gi: Float = reluOutput.map { $0[i] > 0 ? g[i] : 0 } ?? g[i]
        a += gi; b += gi * ((x[i] - mean) * invStd); i += 1
    }
    return (a, b)
}

/// `y[i] = ((x[i] - mean) * invStd) * gamma + beta`, then `max(y, 0)` with `relu`.
@inline(__always)
public func normalize(_ x: UnsafePointer<Float>, count: Int, mean: Float, invStd: Float, gamma: Float, beta: Float,
                      relu: Bool, y: UnsafeMutablePointer<Float>) {
    var i = 0
    let zero = SIMD16<Float>()
    while i + 16 <= count {
        let h = (UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - mean) * invStd
        var v = h * gamma + beta
        if relu { v = v.replacing(with: zero, where: v .< zero) }
        UnsafeMutableRawPointer(y + i).storeBytes(of: v, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count { let v = ((x[i] - mean) * invStd) * gamma + beta; y[i] = relu ? max(v, 0) : v; i += 1 }
}

/// `dx[i] += scale * (g'[i] - meanG - h[i] * meanGH)`, with `h` and `g'` as
/// in `sumAndDotNormalized`.
@inline(__always)
public func addNormalizationGradient(_ g: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, mean: Float,
                                     invStd: Float, reluOutput: UnsafePointer<Float>?, scale: Float,
                                     meanG: Float, meanGH: Float, dx: UnsafeMutablePointer<Float>) {
    var i = 0
    let zero = SIMD16<Float>()
    while i + 16 <= count {
        var gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
        if let reluOutput { gv = zero.replacing(with: gv, where: UnsafeRawPointer(reluOutput + i).loadUnaligned(as: SIMD16<Float>.self) .> zero) }
        let hv = (UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - mean) * invStd
        let d = UnsafeRawPointer(dx + i).loadUnaligned(as: SIMD16<Float>.self) + scale * (gv - meanG - hv * meanGH)
        UnsafeMutableRawPointer(dx + i).storeBytes(of: d, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count {
        let gi: Float = reluOutput.map { $0[i] > 0 ? g[i] : 0 } ?? g[i]
        dx[i] += scale * (gi - meanG - ((x[i] - mean) * invStd) * meanGH); i += 1
    }
}

/// `dx[i] += scale * g'[i]` (batch norm in evaluation mode), `g'` as in
/// `sumAndDotNormalized`.
@inline(__always)
public func addScaledGradient(_ g: UnsafePointer<Float>, count: Int, reluOutput: UnsafePointer<Float>?, scale: Float,
                              dx: UnsafeMutablePointer<Float>) {
    for i in 0..<count {
        let gi: Float = reluOutput.map { $0[i] > 0 ? g[i] : 0 } ?? g[i]
        dx[i] += scale * gi
    }
}
