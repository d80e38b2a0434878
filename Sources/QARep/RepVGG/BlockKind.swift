/// The paper's block settings (DESIGN section 1, Table 3).
///
/// | kind | 3x3 | 1x1 | identity | post-BN |
/// |---|---|---|---|---|
/// | `repvgg` (S0/S1) | conv+BN | conv+BN | BN | - |
/// | `s2` | conv+BN | conv+BN | plain | - |
/// | `s3` | conv+BN | conv | plain | - |
/// | `qarepvgg` (S4) | conv+BN | conv | plain | BN |
///
/// S0 and S1 differ only in the weight decay (custom L2 or ordinary L2).
public enum BlockKind: String, Codable, Sendable, CaseIterable {
    case repvgg, s2, s3, qarepvgg

    /// The 1x1 branch has its own batch norm.
    public var pointwiseHasBN: Bool { self == .repvgg || self == .s2 }
    /// The identity branch (where it exists) has its own batch norm.
    public var identityHasBN: Bool { self == .repvgg }
    /// A batch norm follows the sum of the branches.
    public var hasPostBN: Bool { self == .qarepvgg }
}
