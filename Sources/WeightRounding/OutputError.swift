//===--- OutputError.swift - the layer loss tr(ΔW·H·ΔWᵀ) -------------------===//

import TensorCore

extension WeightRounding {
    /// Layer loss tr((Ŵ−W)·H·(Ŵ−W)ᵀ) of integer weights q (Ŵ = q·scale[row]) — the objective AdaRound
    /// and GPTQ minimize. With H the mean of x·xᵀ over input rows x, this is the squared output error
    /// ‖(Ŵ−W)·x‖² summed over output channels and averaged over input rows (BRECQ's "mse" loss).
    ///
    /// - Parameters:
    ///   - weights: `[rows, columns]` row-major fp32; q: `[rows, columns]` integers; scales: `[rows]`.
    ///   - hessian: `[columns, columns]` row-major Float64 (symmetric).
    /// - Returns: the loss in (output units)²; NaN on invalid input. Computed in Float64 (blocked over
    ///   four rows so each row of H is read once per block; two threads over row blocks).
    public static func outputError(weights: [Float], q: [Int8], rows: Int, columns: Int, scales: [Float], hessian: [Double]) -> Double {
        guard (try? validate(weights: weights, rows: rows, columns: columns, scales: scales, hessian: hessian)) != nil,
              q.count == rows * columns else { return .nan }
        let k = columns
        let delta = weightDelta(weights: weights, q: q, rows: rows, columns: columns, scales: scales)
        let blocks = (rows + 3) / 4
        var perBlock = [Double](repeating: 0, count: blocks)
        delta.withUnsafeBufferPointer { d in
            hessian.withUnsafeBufferPointer { h in
                perBlock.withUnsafeMutableBufferPointer { out in
                    let outBase = out.baseAddress!
                    Parallel.forEachChunk(blocks, minChunk: max(1, 32_768 / max(k, 1))) { range in
                        var y = [Double](repeating: 0, count: 4 * k)
                        y.withUnsafeMutableBufferPointer { yp in
                            for b in range {
                                let r0 = 4 * b, nr = min(4, rows - r0)
                                for i in 0..<(4 * k) { yp[i] = 0 }
                                // y_r = Σ_j d[r, j] · H[j, :]  (rows of H = columns, H symmetric)
                                for j in 0..<k {
                                    let a0 = d[r0 * k + j]
                                    let a1 = nr > 1 ? d[(r0 + 1) * k + j] : 0
                                    let a2 = nr > 2 ? d[(r0 + 2) * k + j] : 0
                                    let a3 = nr > 3 ? d[(r0 + 3) * k + j] : 0
                                    if a0 == 0 && a1 == 0 && a2 == 0 && a3 == 0 { continue }
                                    let hj = h.baseAddress! + j * k
                                    let y0 = yp.baseAddress!, y1 = y0 + k, y2 = y1 + k, y3 = y2 + k
                                    for i in 0..<k {
                                        let hv = hj[i]
                                        y0[i] += a0 * hv; y1[i] += a1 * hv; y2[i] += a2 * hv; y3[i] += a3 * hv
                                    }
                                }
                                var sum = 0.0
                                for rr in 0..<nr {
                                    let dr = d.baseAddress! + (r0 + rr) * k, yr = yp.baseAddress! + rr * k
                                    for i in 0..<k { sum += dr[i] * yr[i] }
                                }
                                outBase[b] = sum
                            }
                        }
                    }
                }
            }
        }
        return perBlock.reduce(0, +)
    }

    /// Plain reference for `outputError`: Σ_r Σ_i Σ_j Δ[r,i]·H[i,j]·Δ[r,j] in Float64, no blocking.
    public static func outputErrorReference(weights: [Float], q: [Int8], rows: Int, columns: Int, scales: [Float], hessian: [Double]) -> Double {
        guard weights.count == rows * columns, q.count == rows * columns, scales.count == rows,
              hessian.count == columns * columns else { return .nan }
        let delta = weightDelta(weights: weights, q: q, rows: rows, columns: columns, scales: scales)
        var total = 0.0
        for r in 0..<rows {
            for i in 0..<columns {
                for j in 0..<columns {
                    total += delta[r * columns + i] * hessian[i * columns + j] * delta[r * columns + j]
                }
            }
        }
        return total
    }

    /// ΔW = q·scale[row] − W in Float64, `[rows, columns]`.
    static func weightDelta(weights: [Float], q: [Int8], rows: Int, columns: Int, scales: [Float]) -> [Double] {
        var d = [Double](repeating: 0, count: rows * columns)
        for r in 0..<rows {
            let s = Double(scales[r])
            for c in 0..<columns {
                let i = r * columns + c
                d[i] = Double(q[i]) * s - Double(weights[i])
            }
        }
        return d
    }
}
