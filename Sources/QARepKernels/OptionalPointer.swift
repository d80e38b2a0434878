/// Calls `body` with a pointer to `values`' elements, or with nil when there
/// are none: an optional array handed to a C kernel.
@inline(__always)
public func withOptionalPointer<T, R>(_ values: [T]?, _ body: (UnsafePointer<T>?) -> R) -> R {
    guard let values else { return body(nil) }
    return values.withUnsafeBufferPointer { body($0.baseAddress) }
}
