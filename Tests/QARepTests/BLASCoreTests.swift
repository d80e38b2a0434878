import QARepKernels
import Testing

@Suite("OpenBLAS kernel selection")
struct BLASCoreTests {
    @Test("a generic fallback is replaced by the widest kernels the CPU runs, and only then")
    func choice() {
        #expect(BLASCore.betterCoreType(current: "Prescott", hasAVX512: true, hasAVX2FMA: true) == "SkylakeX")
        #expect(BLASCore.betterCoreType(current: "Prescott", hasAVX512: false, hasAVX2FMA: true) == "Haswell")
        #expect(BLASCore.betterCoreType(current: "Core2", hasAVX512: false, hasAVX2FMA: false) == nil)
        #expect(BLASCore.betterCoreType(current: "Zen", hasAVX512: false, hasAVX2FMA: true) == nil)
        #expect(BLASCore.betterCoreType(current: "SkylakeX", hasAVX512: true, hasAVX2FMA: true) == nil)
        #expect(!BLASCore.name.isEmpty)
    }
}
