/// Base class of every layer and model.
///
/// A module finds its parameters, buffers and children by reflection over its
/// stored properties: a `Tensor` property is a state entry (a trainable
/// parameter when it requires a gradient, a buffer otherwise), a `Module`
/// property is a child, and an array of modules is a list of children named
/// `0`, `1`, .... Names are the Swift property names unless a `@Key` wrapper
/// gives the on-disk name, so checkpoint keys match PyTorch's `state_dict`
/// (`stage1.0.rbr_dense.bn.running_mean`).
open class Module {
    /// Training mode (batch statistics in batch norm) or evaluation mode.
    public private(set) var training = true

    public init() {}

    /// Direct children with their names, in declaration order.
    public func namedChildren() -> [(name: String, module: Module)] {
        reflectedMembers().compactMap { name, value in (value as? Module).map { (name, $0) } }
    }

    /// Tensors held directly by this module (not its children), in declaration order.
    public func namedTensors() -> [(name: String, tensor: Tensor)] {
        reflectedMembers().compactMap { name, value in (value as? Tensor).map { (name, $0) } }
    }

    /// Every tensor of this module and its descendants, keyed by dotted path:
    /// PyTorch's `state_dict` order and names.
    public func stateDict() -> [(key: String, tensor: Tensor)] {
        var out = namedTensors().map { (key: $0.name, tensor: $0.tensor) }
        for (name, child) in namedChildren() {
            out += child.stateDict().map { (key: name + "." + $0.key, tensor: $0.tensor) }
        }
        return out
    }

    /// Trainable parameters (tensors that require a gradient), keyed like `stateDict()`.
    public func parameters() -> [(key: String, tensor: Tensor)] {
        stateDict().filter { $0.tensor.requiresGrad }
    }

    /// How many trainable values the module has (the sum of its parameters' sizes).
    public var parameterCount: Int { parameters().reduce(0) { $0 + $1.tensor.count } }

    /// All modules of the tree, this one first, with dotted paths ("" for self).
    public func namedModules() -> [(path: String, module: Module)] {
        var out: [(path: String, module: Module)] = [("", self)]
        for (name, child) in namedChildren() {
            out += child.namedModules().map { (path: $0.path.isEmpty ? name : name + "." + $0.path, module: $0.module) }
        }
        return out
    }

    /// Sets training mode on this module and all its descendants.
    public func train(_ on: Bool = true) {
        for (_, m) in namedModules() { m.training = on }
    }

    /// Sets evaluation mode on this module and all its descendants.
    public func eval() { train(false) }

    /// Clears the gradient of every parameter.
    public func zeroGrad() {
        for (_, t) in stateDict() { t.grad = nil }
    }

    /// Stored properties of the whole class chain (base first), with `@Key`
    /// names applied, optionals unwrapped and module arrays flattened into
    /// indexed entries.
    private func reflectedMembers() -> [(String, Any)] {
        var mirrors: [Mirror] = []
        var m: Mirror? = Mirror(reflecting: self)
        while let current = m { mirrors.append(current); m = current.superclassMirror }
        var out: [(String, Any)] = []
        for mirror in mirrors.reversed() {
            for child in mirror.children {
                guard var name = child.label else { continue }
                var value = child.value
                if let keyed = value as? KeyedProperty {
                    name = keyed.key
                    value = keyed.anyValue
                }
                guard let unwrapped = Self.unwrapOptional(value) else { continue }
                if let modules = unwrapped as? [Module] {
                    // `@Key("")` on a module array names the elements by index alone (nn.Sequential).
                    for (i, mod) in modules.enumerated() { out.append((name.isEmpty ? String(i) : name + "." + String(i), mod)) }
                } else if unwrapped is Tensor || unwrapped is Module {
                    out.append((name, unwrapped))
                }
            }
        }
        return out
    }

    private static func unwrapOptional(_ value: Any) -> Any? {
        let mirror = Mirror(reflecting: value)
        guard mirror.displayStyle == .optional else { return value }
        return mirror.children.first.map { $0.value }
    }
}

/// Gives a module member its on-disk (PyTorch) name:
/// `@Key("running_mean") var runningMean: Tensor`, set in `init` through
/// `_runningMean.wrappedValue = ...` or given an initial value.
@propertyWrapper
public struct Key<Value> {
    private var value: Value?
    public let key: String

    public init(_ key: String) { self.key = key }

    public init(wrappedValue: Value, _ key: String) {
        self.value = wrappedValue
        self.key = key
    }

    public var wrappedValue: Value {
        get {
            guard let value else { preconditionFailure("module member '\(key)' read before it was set in init") }
            return value
        }
        set { value = newValue }
    }
}

protocol KeyedProperty {
    var key: String { get }
    var anyValue: Any { get }
}

extension Key: KeyedProperty {
    var anyValue: Any { wrappedValue as Any }
}

/// A module that maps one tensor to one tensor.
public protocol Layer: Module {
    func callAsFunction(_ x: Tensor) -> Tensor
}
