//===--- CorrectionError.swift - errors of the noise-correction module -----===//

/// Errors raised when a correction table does not fit the model, schedule or data it is used with.
/// Every description is one line.
public enum CorrectionError: Error, CustomStringConvertible, Equatable {
    /// The table's arrays are inconsistent or hold unusable values (reason names the field).
    case invalidTable(String)
    /// The sampler asked for a DDPM timestep the table has no row for.
    case timestepNotInTable(Int)
    /// The prediction's channel count (last NHWC dimension) differs from the table's.
    case channelMismatch(expected: Int, got: Int)
    /// A statistics pass or correction setting that cannot run (reason says what to change).
    case invalid(String)

    public var description: String {
        switch self {
        case let .invalidTable(reason): return "invalid correction table: \(reason)"
        case let .timestepNotInTable(t):
            return "correction table has no row for timestep \(t); it was collected for a different step schedule"
        case let .channelMismatch(expected, got):
            return "correction table has \(expected) channels but the prediction has \(got)"
        case let .invalid(reason): return reason
        }
    }
}
