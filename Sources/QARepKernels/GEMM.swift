import COpenBLAS

/// Row-major single-precision GEMM on OpenBLAS:
/// `C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C[m, n]`.
///
/// `op(X)` is `X` or its transpose; leading dimensions are those of the
/// stored (untransposed) row-major matrices.
@inline(__always)
public func sgemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
) {
    cblas_sgemm(
        CblasRowMajor,
        transA ? CblasTrans : CblasNoTrans,
        transB ? CblasTrans : CblasNoTrans,
        Int32(m), Int32(n), Int32(k),
        alpha, a, Int32(lda), b, Int32(ldb),
        beta, c, Int32(ldc))
}

/// Threads OpenBLAS uses for every GEMM. Results are bit-reproducible for a
/// fixed thread count, so deterministic runs pin it.
public enum BLASThreads {
    public static var count: Int { Int(openblas_get_num_threads()) }
    public static func set(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
}
