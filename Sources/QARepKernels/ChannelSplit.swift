/// How a convolution's output channels are shared out when its pixels are too
/// few to give every worker a chunk (a single image's late layers: a0-half's
/// 4x4 stage 3 is one chunk of 16 pixels). Parts are whole multiples of the
/// kernel's tile: `blockChannels` is 16 (one weight block) for the AVX2 and
/// portable tiles, 32 for the AVX-512 tiles that take two blocks at once
/// (a0-half's 96 channels split 48 + 48 on AVX2, not 64 + 32). Every
/// output value is still one tile's whole reduction, so the results do not
/// change a bit. Float and integer convolutions both use it.
struct ChannelSplit {
    let outChannels: Int
    /// Channel parts per pixel chunk (1: no split).
    let parts: Int
    private let perPart: Int

    init(outChannels: Int, chunks: Int, workers: Int, blockChannels: Int) {
        precondition(blockChannels == 16 || blockChannels == 32, "parts are whole tiles of 16 or 32 channels")
        self.outChannels = outChannels
        let blocks = (outChannels + blockChannels - 1) / blockChannels
        let wanted = chunks >= workers ? 1 : min(blocks, (workers + chunks - 1) / chunks)
        let blocksPerPart = (blocks + wanted - 1) / wanted
        perPart = blocksPerPart * blockChannels
        parts = (blocks + blocksPerPart - 1) / blocksPerPart
    }

    /// The channels of part `i`; the last may be short, never empty.
    func range(_ i: Int) -> Range<Int> { (i * perPart)..<min((i + 1) * perPart, outChannels) }
}
