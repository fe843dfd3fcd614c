//===--- GPTQ.swift - optimal-brain-quantization rounding with fixed scales -===//
//
// Follows the reference `gptq.py` (IST-DASLab/gptq, `fasterquant`) with per-row scales fixed in
// advance and natural column order:
//   dead = diag(H) == 0 → H[dead, dead] = 1, W[:, dead] = 0
//   H += damping · mean(diag H) · I
//   U = upper Cholesky of H⁻¹            (dpotrf → dpotri → dpotrf, LAPACK)
//   for each block of `blockSize` columns, for each column i in it:
//     q_i = RTN(w_i);  e_i = (w_i − q_i·s) / U[i,i];  W[:, i+1..<i2] −= e_i ⊗ U[i, i+1..<i2]
//   then the lazy update W[:, i2...] −= E_block · U[block, i2...].
// Each output row is independent, so rows are split across threads. Float64 throughout except the
// fp32 rounding step (shared with RTN so H = I reproduces RTN exactly).
//
//===----------------------------------------------------------------------===//

import CLapack
import TensorCore

extension WeightRounding {
    /// GPTQ (Frantar et al. 2022) with the same H, fixed per-row scales: damping·mean(diag H) added to the
    /// diagonal, dead columns (H_ii = 0) get H_ii = 1 and zero weight (as in the reference), upper Cholesky
    /// of H⁻¹ through LAPACK (dpotrf/dpotri), lazy block updates of `blockSize` columns, natural column order.
    ///
    /// - Parameters:
    ///   - weights: `[rows, columns]` row-major fp32; scales: `[rows]`; hessian: `[columns, columns]` Float64
    ///     (mean of x·xᵀ over input rows, same K order as the weights).
    ///   - damping: fraction of mean(diag H) added to the diagonal (reference `percdamp`, 0.01).
    ///   - blockSize: columns per lazy-update block (≥ 1; results agree to rounding for any value).
    /// - Returns: `[rows, columns]` integers in [qmin, qmax].
    /// - Throws: `WeightRoundingError` for bad shapes, non-finite values, invalid scales/grid/options, an
    ///   asymmetric H or one with a negative diagonal, and `.singularHessian` when LAPACK cannot factor the
    ///   damped H or its inverse.
    public static func gptq(weights: [Float], rows: Int, columns: Int, scales: [Float], grid: WeightGrid,
                            hessian: [Double], damping: Double = 0.01, blockSize: Int = 128) throws -> [Int8] {
        try validate(weights: weights, rows: rows, columns: columns, scales: scales, grid: grid, hessian: hessian)
        guard damping.isFinite, damping >= 0 else { throw WeightRoundingError.invalidOption("damping = \(damping), need ≥ 0") }
        guard blockSize >= 1 else { throw WeightRoundingError.invalidOption("blockSize = \(blockSize), need ≥ 1") }
        let k = columns
        var w = weights.map { Double($0) }
        let u = try inverseCholeskyUpper(hessian: hessian, columns: k, damping: damping, weights: &w, rows: rows)
        var q = [Int8](repeating: 0, count: rows * k)
        let lo = Float(grid.qmin), hi = Float(grid.qmax)
        let bs = min(blockSize, k)
        w.withUnsafeMutableBufferPointer { wp in u.withUnsafeBufferPointer { up in q.withUnsafeMutableBufferPointer { qp in
            let wp = wp.baseAddress!, up = up.baseAddress!, qp = qp.baseAddress!
            Parallel.forEachChunk(rows, minChunk: max(1, 16_384 / k)) { range in
                var err = [Double](repeating: 0, count: range.count * bs)
                err.withUnsafeMutableBufferPointer { ep in
                    let ep = ep.baseAddress!
                    for i1 in stride(from: 0, to: k, by: bs) {
                        let i2 = min(i1 + bs, k), count = i2 - i1
                        for (ri, r) in range.enumerated() {
                            let row = wp + r * k
                            let s = scales[r], sd = Double(s)
                            for i in i1..<i2 {
                                let qi = quantize(Float(row[i]), scale: s, qmin: lo, qmax: hi)
                                qp[r * k + i] = Int8(qi)
                                let e = (row[i] - Double(qi) * sd) / up[i * k + i]
                                ep[ri * bs + (i - i1)] = e
                                let ui = up + i * k
                                for j in (i + 1)..<i2 { row[j] -= e * ui[j] }
                            }
                        }
                        guard i2 < k else { continue }
                        // Lazy update, block row b outer so U[i1 + b, i2...] stays in cache across rows.
                        for b in 0..<count {
                            let ub = up + (i1 + b) * k
                            for (ri, r) in range.enumerated() {
                                let e = ep[ri * bs + b]
                                if e == 0 { continue }
                                let row = wp + r * k
                                for j in i2..<k { row[j] -= e * ub[j] }
                            }
                        }
                    }
                }
            }
        } } }
        return q
    }

    /// Plain reference for `gptq`: the same algorithm column by column with the full (non-lazy) update
    /// W[:, i+1...] −= e_i ⊗ U[i, i+1...], single-threaded.
    public static func gptqReference(weights: [Float], rows: Int, columns k: Int, scales: [Float], grid: WeightGrid,
                                     hessian: [Double], damping: Double = 0.01) throws -> [Int8] {
        try validate(weights: weights, rows: rows, columns: k, scales: scales, grid: grid, hessian: hessian)
        var w = weights.map { Double($0) }
        let u = try inverseCholeskyUpper(hessian: hessian, columns: k, damping: damping, weights: &w, rows: rows)
        var q = [Int8](repeating: 0, count: rows * k)
        let lo = Float(grid.qmin), hi = Float(grid.qmax)
        for i in 0..<k {
            for r in 0..<rows {
                let qi = quantize(Float(w[r * k + i]), scale: scales[r], qmin: lo, qmax: hi)
                q[r * k + i] = Int8(qi)
                let e = (w[r * k + i] - Double(qi) * Double(scales[r])) / u[i * k + i]
                for j in (i + 1)..<k { w[r * k + j] -= e * u[i * k + j] }
            }
        }
        return q
    }

    /// Dead-column handling, damping and U = upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), `[K, K]` row-major
    /// with the strict lower triangle zero. Zeroes the weights of dead columns in `w` ([rows, K]).
    static func inverseCholeskyUpper(hessian: [Double], columns k: Int, damping: Double,
                                     weights w: inout [Double], rows: Int) throws -> [Double] {
        var h = hessian
        for i in 0..<k where h[i * k + i] == 0 {
            h[i * k + i] = 1
            for r in 0..<rows { w[r * k + i] = 0 }
        }
        var meanDiag = 0.0
        for i in 0..<k { meanDiag += h[i * k + i] }
        meanDiag /= Double(k)
        let damp = damping * meanDiag
        for i in 0..<k { h[i * k + i] += damp }
        // A row-major symmetric matrix read column-major is itself, and row-major "upper" is column-major
        // "lower", so column-major 'L' calls give row-major upper factors with no transposition copies.
        let n = Int32(k), lower = CChar(UInt8(ascii: "L"))
        var info = h.withUnsafeMutableBufferPointer { LAPACKE_dpotrf(LAPACK_COL_MAJOR, lower, n, $0.baseAddress, n) }
        guard info == 0 else {
            throw WeightRoundingError.singularHessian(info > 0
                ? "dpotrf: leading minor \(info) of H + \(damp)·I is not positive definite"
                : "dpotrf: argument \(-info) invalid")
        }
        info = h.withUnsafeMutableBufferPointer { LAPACKE_dpotri(LAPACK_COL_MAJOR, lower, n, $0.baseAddress, n) }
        guard info == 0 else { throw WeightRoundingError.singularHessian("dpotri: H is singular (info \(info))") }
        // H⁻¹'s upper triangle (row-major) is filled; mirror it into the lower one.
        for i in 0..<k { for j in (i + 1)..<max(i + 1, k) { h[j * k + i] = h[i * k + j] } }
        info = h.withUnsafeMutableBufferPointer { LAPACKE_dpotrf(LAPACK_COL_MAJOR, lower, n, $0.baseAddress, n) }
        guard info == 0 else { throw WeightRoundingError.singularHessian("dpotrf of H⁻¹ failed (info \(info)): H is too ill-conditioned") }
        for i in 0..<k { for j in 0..<i { h[i * k + j] = 0 } }
        if let bad = h.firstIndex(where: { !$0.isFinite }) {
            throw WeightRoundingError.singularHessian("non-finite Cholesky factor at [\(bad / k), \(bad % k)]")
        }
        return h
    }
}
