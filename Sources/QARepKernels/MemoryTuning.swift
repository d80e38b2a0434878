import COpenBLAS

/// Large tensors (patch matrices, activations) are allocated and freed at
/// every step. By default glibc serves blocks above 32 MiB with mmap and
/// returns freed heap tops to the kernel, so each step page-faults its
/// buffers in again. Serving everything from the heap and never trimming it
/// keeps those pages mapped and reused.
///
/// A process-wide setting, so the library never applies it by itself: an
/// executable opts in once at start-up (`qarep` does), a recipe may too.
public enum MemoryTuning {
    /// Applies the allocator settings once per process; later calls do nothing.
    public static func apply() { _ = applied }

    private static let applied: Bool = {
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_MAX, 0)
        _ = mallopt(M_TRIM_THRESHOLD, Int32.max)
        return true
        #else
        return false
        #endif
    }()
}
