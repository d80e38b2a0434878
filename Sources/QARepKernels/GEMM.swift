import COpenBLAS
import CQARepFloat

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

/// OpenBLAS's choice of kernels. A DYNAMIC_ARCH build picks them from the CPU
/// model at load time; OpenBLAS 0.3.21 (Debian 12) does not know Sapphire or
/// Emerald Rapids and falls back to its SSE3 "Prescott" kernels there, which
/// run sgemm 3-4x slower than its SkylakeX kernels on the same CPU. The choice
/// can only be forced before the library loads, through OPENBLAS_CORETYPE;
/// the `qarep` executable does that by re-executing itself once.
public enum BLASCore {
    /// The kernel family OpenBLAS is running ("SkylakeX", "Haswell", "Zen", "Prescott", ...).
    public static var name: String { String(cString: openblas_get_corename()) }

    /// OpenBLAS's kernel families that use no AVX: what it falls back to on
    /// CPUs it does not recognize.
    static let genericCores: Set<String> = ["prescott", "core2", "penryn", "dunnington", "nehalem", "atom",
                                            "northwood", "katmai", "coppermine", "banias", "unknown"]

    /// The core type to force, or nil to keep OpenBLAS's own choice: only
    /// when it fell back to a generic kernel on a CPU with AVX-512 (SkylakeX)
    /// or AVX2 + FMA (Haswell).
    public static func betterCoreType(current: String, hasAVX512: Bool, hasAVX2FMA: Bool) -> String? {
        guard genericCores.contains(current.lowercased()) else { return nil }
        return hasAVX512 ? "SkylakeX" : hasAVX2FMA ? "Haswell" : nil
    }

    /// `betterCoreType` for this process and CPU.
    public static var betterCoreTypeHere: String? {
        betterCoreType(current: name, hasAVX512: qarep_cpu_has_avx512_skx() != 0,
                       hasAVX2FMA: qarep_f32_best_isa() >= Int32(QAREP_ISA_AVX2))
    }
}
