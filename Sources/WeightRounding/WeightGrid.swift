//===--- WeightGrid.swift - the integer grid, errors and input validation --===//
//
// Shape legend for the whole module: rows = output channels (O), columns = K = Cin·KH·KW in
// PyTorch OIHW flattening order (or in_features of a Linear). Weights are [rows, columns]
// row-major fp32; scales are [rows] fp32 (one per output channel); integer weights are
// [rows, columns] row-major Int8; the Hessian H is [columns, columns] row-major Float64.
//
//===----------------------------------------------------------------------===//

/// Integer grid of `bits`-bit symmetric weights: q ∈ [qmin, qmax] = [−2^(b−1), 2^(b−1)−1];
/// the represented value is `q · scale[row]`.
///
/// `qmin`/`qmax` are mutable so a caller can narrow the grid (e.g. the "restricted" [−7, 7] range);
/// every entry point checks `2 ≤ bits ≤ 8` and `−128 ≤ qmin < qmax ≤ 127` (see `WeightRounding.validate`).
public struct WeightGrid: Equatable, Sendable {
    /// Bit width b (2…8 accepted by the algorithms).
    public let bits: Int
    /// Smallest integer, −2^(b−1) by default.
    public var qmin: Int
    /// Largest integer, 2^(b−1) − 1 by default.
    public var qmax: Int

    /// The full symmetric two's-complement grid of `bits` bits. Never traps: an out-of-range
    /// `bits` yields a grid that `validate` rejects.
    public init(bits: Int) {
        self.bits = bits
        let half = (bits >= 1 && bits <= 32) ? 1 << (bits - 1) : 0
        self.qmin = -half
        self.qmax = half - 1
    }

    /// Number of integer levels, qmax − qmin + 1.
    public var levels: Int { qmax - qmin + 1 }
}

/// Why a weight-rounding call refused its input. `description` is one line naming the input.
public enum WeightRoundingError: Error, Equatable, CustomStringConvertible, Sendable {
    /// An array's size does not match the stated rows/columns.
    case shapeMismatch(String)
    /// NaN or ±∞ in an input (which input and the first index).
    case nonFinite(String)
    /// A per-row scale that is not finite and > 0.
    case invalidScale(row: Int, value: Float)
    /// A grid outside 2…8 bits or with qmin ≥ qmax.
    case invalidGrid(String)
    /// H is not a symmetric matrix with a non-negative diagonal.
    case invalidHessian(String)
    /// LAPACK could not factor the damped Hessian (it is not positive definite).
    case singularHessian(String)
    /// An option out of its range (iterations < 0, block size < 1, …).
    case invalidOption(String)

    public var description: String {
        switch self {
        case .shapeMismatch(let s): return "weight rounding: shape mismatch: \(s)"
        case .nonFinite(let s): return "weight rounding: non-finite value in \(s)"
        case .invalidScale(let row, let value): return "weight rounding: scale of row \(row) is \(value), must be finite and > 0"
        case .invalidGrid(let s): return "weight rounding: invalid grid: \(s)"
        case .invalidHessian(let s): return "weight rounding: invalid Hessian: \(s)"
        case .singularHessian(let s): return "weight rounding: Hessian cannot be factored: \(s)"
        case .invalidOption(let s): return "weight rounding: invalid option: \(s)"
        }
    }
}

extension WeightRounding {
    /// Checks the inputs shared by every entry point and throws the first problem found.
    ///
    /// - weights: `[rows, columns]`, finite; rows, columns ≥ 1.
    /// - scales (if given): `[rows]`, finite and > 0.
    /// - grid (if given): 2…8 bits, −128 ≤ qmin < qmax ≤ 127.
    /// - hessian (if given): `[columns, columns]`, finite, diagonal ≥ 0, symmetric to 1e-5 of max diag.
    ///
    /// The non-throwing entry points (`roundToNearest`, `mseScales`, `outputError`, `adaRound`) run the
    /// same check and return an empty array (or NaN) instead of trapping; call this first to learn why.
    public static func validate(weights: [Float], rows: Int, columns: Int, scales: [Float]? = nil,
                                grid: WeightGrid? = nil, hessian: [Double]? = nil) throws {
        guard rows >= 1, columns >= 1 else {
            throw WeightRoundingError.shapeMismatch("rows \(rows), columns \(columns) must be ≥ 1")
        }
        let (n, overflow) = rows.multipliedReportingOverflow(by: columns)
        guard !overflow, weights.count == n else {
            throw WeightRoundingError.shapeMismatch("weights have \(weights.count) values, expected rows·columns = \(rows)·\(columns)")
        }
        if let bad = weights.firstIndex(where: { !$0.isFinite }) {
            throw WeightRoundingError.nonFinite("weights[\(bad / columns), \(bad % columns)] = \(weights[bad])")
        }
        if let scales {
            guard scales.count == rows else {
                throw WeightRoundingError.shapeMismatch("scales have \(scales.count) values, expected rows = \(rows)")
            }
            if let bad = scales.firstIndex(where: { !($0.isFinite && $0 > 0) }) {
                throw WeightRoundingError.invalidScale(row: bad, value: scales[bad])
            }
        }
        if let grid {
            guard (2...8).contains(grid.bits) else { throw WeightRoundingError.invalidGrid("bits = \(grid.bits), supported 2…8") }
            guard grid.qmin >= -128, grid.qmax <= 127, grid.qmin < grid.qmax else {
                throw WeightRoundingError.invalidGrid("[qmin, qmax] = [\(grid.qmin), \(grid.qmax)] must satisfy −128 ≤ qmin < qmax ≤ 127")
            }
        }
        if let hessian { try validateHessian(hessian, columns: columns) }
    }

    static func validateHessian(_ h: [Double], columns k: Int) throws {
        let (n, overflow) = k.multipliedReportingOverflow(by: k)
        guard !overflow, h.count == n else {
            throw WeightRoundingError.shapeMismatch("hessian has \(h.count) values, expected columns² = \(k)·\(k) (square [K, K])")
        }
        if let bad = h.firstIndex(where: { !$0.isFinite }) {
            throw WeightRoundingError.nonFinite("hessian[\(bad / k), \(bad % k)] = \(h[bad])")
        }
        var maxDiag = 0.0
        for i in 0..<k {
            let d = h[i * k + i]
            guard d >= 0 else { throw WeightRoundingError.invalidHessian("H[\(i), \(i)] = \(d) < 0") }
            maxDiag = max(maxDiag, d)
        }
        let tol = 1e-5 * maxDiag
        try h.withUnsafeBufferPointer { p in
            for i in 0..<k {
                for j in (i + 1)..<k where abs(p[i * k + j] - p[j * k + i]) > tol {
                    throw WeightRoundingError.invalidHessian(
                        "not symmetric: H[\(i), \(j)] = \(p[i * k + j]) vs H[\(j), \(i)] = \(p[j * k + i])")
                }
            }
        }
    }
}
