//===--- TransformerOps.swift - LayerNorm and GEGLU for transformer blocks -----===//
//
// Row-wise ops over the last dimension of a tensor, as diffusers' BasicTransformerBlock uses them:
// LayerNorm (biased variance, affine) and GEGLU (x · GELU(gate) with the erf GELU, erf vectorized in CKernels).
// Rows are split across threads; each row is one C call (`ptqd_layer_norm_row`: two passes, float sums over 16
// lanes; `ptqd_geglu`). Plain references:
// `Reference.layerNorm`, `Reference.geglu`.
//
//===----------------------------------------------------------------------===//

import CKernels
import Foundation

extension Ops {
    /// LayerNorm over the last dimension: `y = (x − mean) / √(var + eps) · gamma + beta`.
    /// - x: `[..., D]`; gamma, beta: `[D]`. Returns a new tensor of x's shape.
    public static func layerNorm(_ x: Tensor, gamma: [Float], beta: [Float], eps: Float) -> Tensor {
        let d = x.shape.last!
        precondition(gamma.count == d && beta.count == d, "LayerNorm parameters must be [\(d)]")
        let rows = x.count / d
        let y = Tensor(uninitialized: x.shape)
        let src = UnsafePointer(x.data), dst = y.data
        gamma.withUnsafeBufferPointer { g in
            beta.withUnsafeBufferPointer { b in
                let g = g.baseAddress!, b = b.baseAddress!
                Parallel.forEachChunk(rows, minChunk: 8) { range in
                    for r in range { ptqd_layer_norm_row(src + r * d, dst + r * d, d, g, b, eps) }
                }
            }
        }
        return y
    }

    /// GEGLU: `x [..., 2F]` split into (h, gate) halves on the last dimension → `h · GELU(gate)` `[..., F]`,
    /// GELU(g) = ½·g·(1 + erf(g/√2)) (PyTorch's default, the erf form), erf vectorized in the C kernels
    /// (`ptqd_geglu`: 1 + erf within 2e-7 absolute, like PyTorch's own CPU erf).
    public static func geglu(_ x: Tensor) -> Tensor {
        let two = x.shape.last!
        precondition(two % 2 == 0, "GEGLU needs an even last dimension")
        let f = two / 2, rows = x.count / two
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [f])
        let src = UnsafePointer(x.data), dst = y.data
        Parallel.forEachChunk(rows, minChunk: 8) { range in
            for r in range {
                let row = src + r * two
                ptqd_geglu(row, row + f, dst + r * f, f)
            }
        }
        return y
    }
}

extension Reference {
    /// LayerNorm by definition in Double.
    public static func layerNorm(_ x: Tensor, gamma: [Float], beta: [Float], eps: Float) -> Tensor {
        let d = x.shape.last!, rows = x.count / d
        let y = Tensor(shape: x.shape)
        for r in 0..<rows {
            let v = (0..<d).map { Double(x.data[r * d + $0]) }
            let mean = v.reduce(0, +) / Double(d)
            let variance = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(d)
            for i in 0..<d { y.data[r * d + i] = Float((v[i] - mean) / (variance + Double(eps)).squareRoot() * Double(gamma[i]) + Double(beta[i])) }
        }
        return y
    }

    /// GEGLU by definition in Double.
    public static func geglu(_ x: Tensor) -> Tensor {
        let two = x.shape.last!, f = two / 2, rows = x.count / two
        let y = Tensor(shape: Array(x.shape.dropLast()) + [f])
        for r in 0..<rows {
            for i in 0..<f {
                let h = Double(x.data[r * two + i]), g = Double(x.data[r * two + f + i])
                y.data[r * f + i] = Float(h * 0.5 * g * (1 + Foundation.erf(g / 2.0.squareRoot())))
            }
        }
        return y
    }
}
