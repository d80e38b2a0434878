/// Shape of a RepVGG-family network (DESIGN section 4): stage widths and
/// block counts, the block kind, classes and input channels.
public struct ModelConfig: Codable, Sendable, Equatable {
    /// Config name (`tiny`, `a0-half`, `a0`, or `custom`).
    public var name: String
    /// Output channels of stages 0...4.
    public var widths: [Int]
    /// Blocks in stages 0...4 (stage 0 has exactly one).
    public var blocks: [Int]
    public var block: BlockKind
    public var classes: Int
    public var inChannels: Int

    public init(name: String = "custom", widths: [Int], blocks: [Int], block: BlockKind,
                classes: Int = 10, inChannels: Int = 1) {
        self.name = name; self.widths = widths; self.blocks = blocks; self.block = block
        self.classes = classes; self.inChannels = inChannels
    }

    /// The named configs of DESIGN section 4.
    public static let namedConfigs: [String: (widths: [Int], blocks: [Int])] = [
        "tiny": ([16, 16, 32, 64, 128], [1, 1, 2, 2, 1]),
        "a0-half": ([24, 24, 48, 96, 640], [1, 2, 4, 14, 1]),
        "a0": ([48, 48, 96, 192, 1280], [1, 2, 4, 14, 1]),
    ]

    /// A named config.
    /// - Throws: `ModelError` for an unknown name.
    public static func named(_ name: String, block: BlockKind, classes: Int = 10, inChannels: Int = 1) throws -> ModelConfig {
        guard let c = namedConfigs[name] else {
            throw ModelError("unknown model config '\(name)'; expected one of \(namedConfigs.keys.sorted().joined(separator: ", "))")
        }
        return ModelConfig(name: name, widths: c.widths, blocks: c.blocks, block: block, classes: classes, inChannels: inChannels)
    }

    /// Checks the config describes a buildable network.
    public func validate() throws {
        guard widths.count == 5, blocks.count == 5 else { throw ModelError("a model has 5 stages; config has \(widths.count) widths and \(blocks.count) block counts") }
        guard blocks[0] == 1 else { throw ModelError("stage 0 has exactly one block, config has \(blocks[0])") }
        guard widths.allSatisfy({ $0 > 0 }), blocks.allSatisfy({ $0 > 0 }), classes > 0, inChannels > 0 else {
            throw ModelError("widths, block counts, classes and input channels must be positive")
        }
        // Far beyond any real model; keeps the sizes computed from a corrupt file's config from overflowing.
        guard widths.allSatisfy({ $0 <= 1 << 16 }), blocks.allSatisfy({ $0 <= 1 << 10 }), classes <= 1 << 20, inChannels <= 1 << 16 else {
            throw ModelError("widths (at most 65536), block counts (1024), classes and input channels are implausibly large: \(widths), \(blocks)")
        }
    }

    /// Number of 3x3 kernel weights (one equivalent kernel per block): every
    /// file of the model holds at least this many values, whatever its form.
    public var kernelWeightCount: Int {
        var channels = inChannels, total = 0
        for (width, count) in zip(widths, blocks) {
            total += 9 * width * channels + (count - 1) * 9 * width * width
            channels = width
        }
        return total
    }
}

/// A model that cannot be built or does not match its weights.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
