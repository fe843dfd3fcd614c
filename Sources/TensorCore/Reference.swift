//===--- Reference.swift - plain reference versions of the fast ops --------===//
//
// Straightforward Double-precision loops that define what the fast paths in Ops.swift must
// compute. Tests compare each fast op with its reference here.
//
//===----------------------------------------------------------------------===//

import Foundation

public enum Reference {
    /// GroupNorm by definition (two passes in Double), optional pre-add `[N, C]` and SiLU.
    public static func groupNorm(_ x: Tensor, groups: Int, gamma: [Float], beta: [Float], eps: Float,
                                 preAdd: Tensor? = nil, silu: Bool = false) -> Tensor {
        let n = x.shape[0], c = x.shape.last!, hw = x.count / (n * c), cg = c / groups
        let y = Tensor(shape: x.shape)
        for b in 0..<n { for g in 0..<groups {
            func v(_ p: Int, _ i: Int) -> Double { Double(x.data[(b * hw + p) * c + i]) + Double(preAdd?.data[b * c + i] ?? 0) }
            var mean = 0.0
            for p in 0..<hw { for i in (g * cg)..<((g + 1) * cg) { mean += v(p, i) } }
            mean /= Double(hw * cg)
            var variance = 0.0
            for p in 0..<hw { for i in (g * cg)..<((g + 1) * cg) { variance += (v(p, i) - mean) * (v(p, i) - mean) } }
            variance /= Double(hw * cg)
            for p in 0..<hw { for i in (g * cg)..<((g + 1) * cg) {
                var o = (v(p, i) - mean) / (variance + Double(eps)).squareRoot() * Double(gamma[i]) + Double(beta[i])
                if silu { o = o / (1 + Foundation.exp(-o)) }
                y.data[(b * hw + p) * c + i] = Float(o)
            } }
        } }
        return y
    }

    /// SiLU by definition.
    public static func silu(_ x: Tensor) -> Tensor {
        let y = Tensor(shape: x.shape)
        for i in 0..<x.count { let v = Double(x.data[i]); y.data[i] = Float(v / (1 + Foundation.exp(-v))) }
        return y
    }

    /// Row-wise softmax of `scale·x`: `[rows, length]`.
    public static func softmaxRows(_ x: [Float], rows: Int, length: Int, scale: Float) -> [Float] {
        var y = x
        for r in 0..<rows {
            let row = (r * length)..<((r + 1) * length)
            let m = row.map { Double(x[$0]) * Double(scale) }.max()!
            let e = row.map { Foundation.exp(Double(x[$0]) * Double(scale) - m) }
            let s = e.reduce(0, +)
            for (j, i) in row.enumerated() { y[i] = Float(e[j] / s) }
        }
        return y
    }

    /// Matrix product `[M, K] · [K, N]` in Double.
    public static func matmul(_ a: [Float], _ b: [Float], m: Int, k: Int, n: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var acc = 0.0
            for p in 0..<k { acc += Double(a[i * k + p]) * Double(b[p * n + j]) }
            c[i * n + j] = Float(acc)
        } }
        return c
    }
}
