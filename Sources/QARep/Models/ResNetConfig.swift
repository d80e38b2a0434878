/// What a `ResNet` is: depth, input channels and classes. Written into its
/// checkpoints' metadata (`model`), so a file rebuilds its own network.
public struct ResNetConfig: Codable, Sendable, Equatable {
    /// 6n + 2 layers: 8, 14, 20, 32, 44, 56, 110, ...
    public var depth: Int
    public var inChannels: Int
    public var classes: Int

    public init(depth: Int = 20, inChannels: Int = 1, classes: Int = 10) {
        self.depth = depth
        self.inChannels = inChannels
        self.classes = classes
    }

    /// `resnet<depth>`, as the command line names it.
    public var name: String { "resnet\(depth)" }

    /// The config a name (`resnet20`, `resnet56`) describes.
    /// - Throws: `ModelError` for a name that is not `resnet` and a valid depth.
    public static func named(_ name: String, inChannels: Int = 1, classes: Int = 10) throws -> ResNetConfig {
        guard name.hasPrefix("resnet"), let depth = Int(name.dropFirst("resnet".count)) else {
            throw ModelError("unknown model '\(name)'; expected resnetN with N = 6n + 2 (resnet20, resnet32, resnet56)")
        }
        let config = ResNetConfig(depth: depth, inChannels: inChannels, classes: classes)
        try config.validate()
        return config
    }

    /// Rejects a depth that is not 6n + 2 (n >= 1) and sizes below 1.
    public func validate() throws {
        guard depth >= 8 && (depth - 2) % 6 == 0 else {
            throw ModelError("ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got \(depth)")
        }
        guard inChannels >= 1 && classes >= 2 else {
            throw ModelError("a ResNet needs at least 1 input channel and 2 classes, got \(inChannels) and \(classes)")
        }
    }
}
