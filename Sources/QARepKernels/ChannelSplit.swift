/// How a convolution's output channels are shared out when its pixels are too
/// few to give every worker a chunk (a single image's late layers: a0-half's
/// 4x4 stage 3 is one chunk of 16 pixels). Parts are multiples of 32
/// channels, the AVX-512 tiles' two weight blocks, and every output value is
/// still one tile's whole reduction, so the results do not change a bit.
/// Float and integer convolutions both use it.
struct ChannelSplit {
    let outChannels: Int
    /// Channel parts per pixel chunk (1: no split).
    let parts: Int
    private let perPart: Int

    init(outChannels: Int, chunks: Int, workers: Int) {
        self.outChannels = outChannels
        let pairs = (outChannels + 31) / 32
        let wanted = chunks >= workers ? 1 : min(pairs, (workers + chunks - 1) / chunks)
        let pairsPerPart = (pairs + wanted - 1) / wanted
        perPart = pairsPerPart * 32
        parts = (pairs + pairsPerPart - 1) / pairsPerPart
    }

    /// The channels of part `i`; the last may be short, never empty.
    func range(_ i: Int) -> Range<Int> { (i * perPart)..<min((i + 1) * perPart, outChannels) }
}
