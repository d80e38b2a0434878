/// Which `QConfig` each node of a captured graph gets, as PyTorch's
/// `QConfigMapping`: one for the whole model, overridden by node name, and
/// `nil` to keep a node in float (partial quantization).
///
///     let mapping = QConfigMapping(.tensorRT)
///         .setting("fc", to: nil)               // the classifier stays float
///         .setting("layer3.*", to: .tensorRT.withBits(6))
///
/// Names are the graph's: a module's state-dict path (`layer1.0.conv1`), or
/// `add_1`, `concat_2`, ... for tensor operations (`Graph.description` lists them).
public struct QConfigMapping: Sendable {
    /// The setting of every node no override names.
    public var global: QConfig?
    /// Overrides in the order given; the last that matches a name wins.
    public private(set) var overrides: [(pattern: String, qconfig: QConfig?)] = []

    public init(_ global: QConfig? = .tensorRT) { self.global = global }

    /// This mapping with `pattern` set to `qconfig`. A pattern is a node name,
    /// or a prefix followed by `*` (`layer2.*`, `*` for everything).
    public func setting(_ pattern: String, to qconfig: QConfig?) -> QConfigMapping {
        var copy = self
        copy.overrides.append((pattern, qconfig))
        return copy
    }

    /// The setting of the node called `name`.
    public func qconfig(for name: String) -> QConfig? {
        for (pattern, qconfig) in overrides.reversed() where Self.matches(pattern, name) { return qconfig }
        return global
    }

    /// The patterns that match no name in `names`: most likely typos.
    public func unmatchedPatterns(in names: [String]) -> [String] {
        overrides.map(\.pattern).filter { p in !names.contains { Self.matches(p, $0) } }
    }

    static func matches(_ pattern: String, _ name: String) -> Bool {
        pattern.hasSuffix("*") ? name.hasPrefix(pattern.dropLast()) : pattern == name
    }
}
