//===--- InceptionScore.swift - IS from the feature network's softmax ---===//

import Foundation
import TensorCore

public enum InceptionScore {
    /// IS = exp(E_x KL(p(y|x) ‖ p(y))) per split, over `splits` splits, in Float64.
    ///
    /// Splits are `[i·N/splits, (i+1)·N/splits)` of the rows after a fixed pseudo-random
    /// permutation (SplitMix64 seeded with `shuffleSeed`): the original implementation splits
    /// contiguously and assumes shuffled input, but evaluation samples are ordered by class, and a
    /// split holding one or two classes would make p(y) ≈ p(y|x) and IS ≈ 1. `shuffleSeed = nil`
    /// splits the rows in the given order (as the original code).
    /// - Parameter logits: `[N, classes]`, N ≥ splits.
    /// - Returns: mean and (population) standard deviation over the splits.
    /// - Throws: `.shapeMismatch`, `.tooFewSamples`, `.nonFinite`, `.invalidArgument`.
    public static func compute(logits: Tensor, splits: Int = 10, shuffleSeed: UInt64? = 0) throws -> (mean: Double, std: Double) {
        guard logits.shape.count == 2, logits.shape[1] >= 2 else {
            throw EvaluationError.shapeMismatch(what: "IS logits", expected: "[N, classes ≥ 2]", actual: logits.shape)
        }
        guard splits >= 1 else { throw EvaluationError.invalidArgument(what: "IS splits", reason: "\(splits) must be ≥ 1") }
        let (n, c) = (logits.shape[0], logits.shape[1])
        guard n >= splits else { throw EvaluationError.tooFewSamples(what: "IS with \(splits) splits", count: n, minimum: splits) }
        if let i = (0..<logits.count).first(where: { !logits.data[$0].isFinite }) {
            throw EvaluationError.nonFinite(what: "IS logits (row \(i / c))", index: i)
        }
        // log p(y|x) per row, stable.
        var logp = [Double](repeating: 0, count: n * c)
        for r in 0..<n {
            let row = logits.data + r * c
            var m = -Double.infinity
            for j in 0..<c { m = max(m, Double(row[j])) }
            var s = 0.0
            for j in 0..<c { s += Foundation.exp(Double(row[j]) - m) }
            let lse = m + Foundation.log(s)
            for j in 0..<c { logp[r * c + j] = Double(row[j]) - lse }
        }
        var order = Array(0..<n)
        if let seed = shuffleSeed {
            var rng = SplitMix64(seed: seed)
            for i in stride(from: n - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        }
        var scores: [Double] = []
        for k in 0..<splits {
            let lo = k * n / splits, hi = (k + 1) * n / splits
            var py = [Double](repeating: 0, count: c)
            for r in order[lo..<hi] { for j in 0..<c { py[j] += Foundation.exp(logp[r * c + j]) } }
            for j in 0..<c { py[j] /= Double(hi - lo) }
            let logpy = py.map { Foundation.log($0) }
            var kl = 0.0
            for r in order[lo..<hi] {
                for j in 0..<c {
                    let p = Foundation.exp(logp[r * c + j])
                    if p > 0 { kl += p * (logp[r * c + j] - logpy[j]) }
                }
            }
            scores.append(Foundation.exp(kl / Double(hi - lo)))
        }
        let mean = scores.reduce(0, +) / Double(splits)
        let variance = scores.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(splits)
        return (mean, variance.squareRoot())
    }
}
