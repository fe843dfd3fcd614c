//===--- Synthetic.swift - deterministic test data and fake predictors -----===//

import Correction
import Diffusion
import Foundation
import TensorCore

/// Paired predictions for one step: ε_fp with per-channel means `epsMean` and unit variance,
/// Δ = k·ε_fp + μ_c + σ·z, ε_q = ε_fp + Δ (all `[N, H, W, C]`).
func syntheticPair(samples n: Int, h: Int = 8, w: Int = 8, epsMean: [Float], k: Float, mu: [Float], sigma: Float,
                   rng: inout GaussianStream) -> (fp: Tensor, q: Tensor) {
    let c = mu.count
    let fp = Tensor(shape: [n, h, w, c]), q = Tensor(shape: [n, h, w, c])
    for i in 0..<fp.count {
        let ch = i % c
        let e = epsMean[ch] + rng.nextNormal()
        let d = k * e + mu[ch] + sigma * rng.nextNormal()
        fp.data[i] = e
        q.data[i] = e + d
    }
    return (fp, q)
}

/// Mean over samples of the unbiased per-sample std of Δ − k·ε_fp, in Float64, from the raw tensors.
func bruteForceSigmaQ(_ pairs: [(fp: Tensor, q: Tensor)], k: Double) -> Double {
    var total = 0.0, count = 0
    for (fp, q) in pairs {
        let n = fp.shape[0], per = fp.count / n
        for b in 0..<n {
            var r = [Double](repeating: 0, count: per)
            for j in 0..<per {
                let e = Double(fp.data[b * per + j]), d = Double(q.data[b * per + j]) - e
                r[j] = d - k * e
            }
            let mean = r.reduce(0, +) / Double(per)
            let v = r.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(per - 1)
            total += v.squareRoot(); count += 1
        }
    }
    return total / Double(count)
}

/// Root mean square of the per-sample stds (what `residualStd` falls back to outside its grid).
func bruteForceRMSSigma(_ pairs: [(fp: Tensor, q: Tensor)], k: Double) -> Double {
    var total = 0.0, count = 0
    for (fp, q) in pairs {
        let n = fp.shape[0], per = fp.count / n
        for b in 0..<n {
            var r = [Double](repeating: 0, count: per)
            for j in 0..<per {
                let e = Double(fp.data[b * per + j]), d = Double(q.data[b * per + j]) - e
                r[j] = d - k * e
            }
            let mean = r.reduce(0, +) / Double(per)
            total += r.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(per - 1); count += 1
        }
    }
    return (total / Double(count)).squareRoot()
}

/// ε = scale·x + offset_c: a deterministic stand-in for a guided UNet.
final class AffinePredictor: NoisePredictor {
    let scale: Float
    let offset: [Float]
    init(scale: Float = 0.3, offset: [Float]) { self.scale = scale; self.offset = offset }
    func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor {
        let y = Tensor(shape: x.shape), c = offset.count
        for i in 0..<x.count { y.data[i] = scale * x.data[i] + offset[i % c] }
        return y
    }
}

/// Returns the same tensor for every call.
final class ConstantPredictor: NoisePredictor {
    let output: Tensor
    init(_ output: Tensor) { self.output = output }
    func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor { output }
}

/// A table with the given per-row values (all rows alike unless arrays are passed).
func makeTable(timesteps: [Int], k: [Float], sigmaQ: [Float], bias: [[Float]]) -> CorrectionTable {
    CorrectionTable(timesteps: timesteps, k: k, sigmaQ: sigmaQ, bias: bias, count: timesteps.map { _ in 1 })
}

/// A fresh x_T and noise source for a seeded sampling run.
func seededRun(shape: [Int], seed: UInt64) -> (xT: Tensor, noise: (Int, [Int]) -> Tensor) {
    let xT = BatchNoise(seed: seed, indices: 0..<shape[0]).next(shape: shape)
    let stepNoise = BatchNoise(seed: seed &+ 1000, indices: 0..<shape[0])
    return (xT, { _, s in stepNoise.next(shape: s) })
}

func maxRelativeDifference(_ a: [Double], _ b: [Double]) -> Double {
    zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-300) }.max() ?? 0
}
