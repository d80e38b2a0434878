/// A small, fast, seedable random number generator (SplitMix64, Steele, Lea and
/// Flood 2014), used wherever QARep needs reproducible randomness: shuffling,
/// augmentation, weight initialisation.
///
/// The whole state is one public `UInt64`, so a checkpoint can store it and a
/// resumed run continues the exact same stream. The generator is `Codable`
/// (encodes as `{"state": ...}`).
///
/// The stream of values, and the results of `uniform(below:)` and
/// `shuffle(_:)`, are defined here and do not depend on the Swift standard
/// library's `random(in:using:)` / `shuffled(using:)` algorithms, which are not
/// guaranteed to stay the same across toolchain versions.
public struct SplitMix64: RandomNumberGenerator, Codable, Sendable, Hashable {
    /// The generator's entire state. Advanced by a fixed odd constant on every
    /// call to `next()`.
    public var state: UInt64

    /// Creates a generator whose stream is fully determined by `seed`.
    public init(seed: UInt64) {
        state = seed
    }

    /// Returns the next 64 random bits and advances the state.
    @inlinable
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// The SplitMix64 output function: a bijective 64-bit mixer (a good hash
    /// of a counter or of a seed).
    @inlinable
    public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Derives an independent stream from a base seed and an index (an epoch,
    /// a batch number, a layer number...). The result depends only on
    /// `(seed, index)`; for a fixed seed, distinct indices give distinct
    /// starting states.
    public static func stream(seed: UInt64, index: UInt64) -> SplitMix64 {
        // mix is a bijection and the odd multiplier makes `index -> state` injective
        // for a fixed seed; the outer mix decorrelates neighbouring indices.
        SplitMix64(seed: mix(mix(seed) &+ index &* 0xD1B5_4A32_D192_ED03))
    }

    /// A uniformly distributed integer in `0..<bound` (Lemire's multiply-shift
    /// method with rejection, so there is no modulo bias).
    ///
    /// - Precondition: `bound > 0`.
    public mutating func uniform(below bound: Int) -> Int {
        precondition(bound > 0, "uniform(below:) needs a positive bound, got \(bound)")
        let n = UInt64(bound)
        var product = next().multipliedFullWidth(by: n)
        if product.low < n {
            let threshold = (0 &- n) % n
            while product.low < threshold {
                product = next().multipliedFullWidth(by: n)
            }
        }
        return Int(product.high)
    }

    /// A uniformly distributed `Float` in `[0, 1)` with 24 random bits.
    public mutating func uniformFloat() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// Shuffles `elements` in place with the Fisher–Yates algorithm, drawing
    /// from this generator (one `uniform(below:)` call per position from the
    /// end down to index 1).
    public mutating func shuffle<T>(_ elements: inout [T]) {
        var i = elements.count - 1
        while i > 0 {
            let j = uniform(below: i + 1)
            elements.swapAt(i, j)
            i -= 1
        }
    }
}
