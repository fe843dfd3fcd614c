//===--- RoundToNearest.swift - RTN and the MSE scale search ---------------===//
//
// Rounding rule everywhere in this module: round half to even (`torch.round`), then clamp to
// [qmin, qmax]. `w / s` is always evaluated in fp32 so RTN, GPTQ (with H = I) and AdaRound's
// floor agree bit for bit.
//
//===----------------------------------------------------------------------===//

/// Weight rounding for per-output-channel symmetric integer quantization: round-to-nearest with
/// MSE-searched scales (the baseline), AdaRound and GPTQ on the layer loss tr((Ŵ−W)·H·(Ŵ−W)ᵀ).
public enum WeightRounding {
    /// One weight to the grid: clamp(round_half_even(w / s), qmin, qmax).
    @inline(__always)
    static func quantize(_ w: Float, scale s: Float, qmin: Float, qmax: Float) -> Float {
        min(max((w / s).rounded(.toNearestOrEven), qmin), qmax)
    }

    /// Round-to-nearest with the given per-row scales, clamped to the grid.
    ///
    /// - Parameters:
    ///   - weights: `[rows, columns]` row-major fp32 (rows = output channels; columns = K = Cin·KH·KW in
    ///     PyTorch OIHW flattening order, or in_features).
    ///   - scales: `[rows]`, weight units per integer step (finite, > 0).
    /// - Returns: `[rows, columns]` integers in [qmin, qmax] (ties round to even); `[]` on invalid input
    ///   (see `validate` for the reason).
    public static func roundToNearest(weights: [Float], rows: Int, columns: Int, scales: [Float], grid: WeightGrid) -> [Int8] {
        guard (try? validate(weights: weights, rows: rows, columns: columns, scales: scales, grid: grid)) != nil else { return [] }
        return roundToNearestUnchecked(weights: weights, rows: rows, columns: columns, scales: scales, grid: grid)
    }

    static func roundToNearestUnchecked(weights: [Float], rows: Int, columns: Int, scales: [Float], grid: WeightGrid) -> [Int8] {
        var q = [Int8](repeating: 0, count: rows * columns)
        let lo = Float(grid.qmin), hi = Float(grid.qmax)
        weights.withUnsafeBufferPointer { w in
            q.withUnsafeMutableBufferPointer { qp in
                for r in 0..<rows {
                    let s = scales[r]
                    for c in 0..<columns {
                        qp[r * columns + c] = Int8(quantize(w[r * columns + c], scale: s, qmin: lo, qmax: hi))
                    }
                }
            }
        }
        return q
    }

    /// Number of candidate clipping ratios in `mseScales`.
    public static let mseSearchSteps = 100

    /// Per-row scale minimizing ‖W_row − q·s‖² (q = RTN of W_row at scale s) over
    /// s = max|W_row|·α/qmax for α = 1 − 0.8·i/99, i = 0…99 (100 values in [0.2, 1], α = 1 first, so
    /// ties keep the larger range and the result is never worse than the max-abs scale).
    ///
    /// - Parameter weights: `[rows, columns]` row-major fp32.
    /// - Returns: `[rows]` scales (weight units per integer step). An all-zero row gets scale 1 (any
    ///   scale represents it exactly). `[]` on invalid input.
    public static func mseScales(weights: [Float], rows: Int, columns: Int, grid: WeightGrid) -> [Float] {
        guard (try? validate(weights: weights, rows: rows, columns: columns, grid: grid)) != nil else { return [] }
        let lo = Float(grid.qmin), hi = Float(grid.qmax)
        var scales = [Float](repeating: 1, count: rows)
        weights.withUnsafeBufferPointer { w in
            for r in 0..<rows {
                let row = UnsafeBufferPointer(rebasing: w[(r * columns)..<((r + 1) * columns)])
                var maxAbs: Float = 0
                for x in row { maxAbs = max(maxAbs, abs(x)) }
                guard maxAbs > 0 else { continue }
                var best = Double.infinity, bestScale: Float = maxAbs / hi
                for i in 0..<mseSearchSteps {
                    let alpha = 1 - 0.8 * Double(i) / Double(mseSearchSteps - 1)
                    let s = Float(Double(maxAbs) * alpha / Double(grid.qmax))
                    guard s > 0, s.isFinite else { continue }
                    var err: Double = 0
                    for x in row {
                        let d = x - quantize(x, scale: s, qmin: lo, qmax: hi) * s
                        err += Double(d * d)
                    }
                    if err < best { best = err; bestScale = s }
                }
                scales[r] = bestScale
            }
        }
        return scales
    }
}
