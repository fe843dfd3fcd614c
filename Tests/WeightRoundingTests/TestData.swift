import Foundation
import TensorCore
@testable import WeightRounding

/// Deterministic test data: an LCG, Gaussian samples and layers with correlated-input Hessians.
struct LCG {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1 }
    mutating func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return state >> 11
    }
    /// Uniform in [0, 1).
    mutating func uniform() -> Double { Double(next()) / Double(1 << 53) }
    /// Standard normal (Box–Muller).
    mutating func normal() -> Double {
        let u1 = max(uniform(), 1e-300), u2 = uniform()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
}

/// A layer: weights [rows, K], input rows X [n, K] with correlated features, H = XᵀX/n (Float64).
struct TestLayer {
    let rows: Int, k: Int
    let weights: [Float]
    let hessian: [Double]

    /// X = SiLU(Z·M + b) with Z [n, K] iid normal, M = I + mixing/√K, b a per-feature offset: features
    /// are correlated and have non-zero mean, like post-activation inputs. Weights are N(0, 1/K) with
    /// per-row gains in [0.5, 2] and a few outliers.
    init(rows: Int, k: Int, samples n: Int, mixing: Double = 2.0, seed: UInt64) {
        var rng = LCG(seed: seed)
        self.rows = rows; self.k = k
        var w = [Float](repeating: 0, count: rows * k)
        for r in 0..<rows {
            let gain = 0.5 + 1.5 * rng.uniform()
            for c in 0..<k {
                var v = rng.normal() * gain / Double(k).squareRoot()
                if rng.uniform() < 0.01 { v *= 4 }
                w[r * k + c] = Float(v)
            }
        }
        weights = w
        var m = [Double](repeating: 0, count: k * k)
        for i in 0..<k { for j in 0..<k { m[i * k + j] = (i == j ? 1 : 0) + mixing * rng.normal() / Double(k).squareRoot() } }
        let bias = (0..<k).map { _ in 0.5 * rng.normal() }
        var x = [Double](repeating: 0, count: n * k)
        var z = [Double](repeating: 0, count: k)
        for s in 0..<n {
            for i in 0..<k { z[i] = rng.normal() }
            for j in 0..<k {
                var a = bias[j]
                for i in 0..<k { a += z[i] * m[i * k + j] }
                x[s * k + j] = a / (1 + Foundation.exp(-a))
            }
        }
        hessian = TestLayer.gram(x, n: n, k: k)
    }

    init(rows: Int, k: Int, weights: [Float], hessian: [Double]) {
        self.rows = rows; self.k = k; self.weights = weights; self.hessian = hessian
    }

    /// H = XᵀX / n in Float64, exactly symmetric.
    static func gram(_ x: [Double], n: Int, k: Int) -> [Double] {
        var h = [Double](repeating: 0, count: k * k)
        for s in 0..<n {
            let row = s * k
            for i in 0..<k {
                let xi = x[row + i] / Double(n)
                if xi == 0 { continue }
                for j in i..<k { h[i * k + j] += xi * x[row + j] }
            }
        }
        for i in 0..<k { for j in 0..<i { h[i * k + j] = h[j * k + i] } }
        return h
    }

    func error(_ q: [Int8], _ scales: [Float]) -> Double {
        WeightRounding.outputError(weights: weights, q: q, rows: rows, columns: k, scales: scales, hessian: hessian)
    }
}
