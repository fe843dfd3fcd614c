//===--- PrecisionRecall.swift - k-NN manifold precision and recall (Kynkäänniemi et al. 2019) ---===//
//
// The real manifold is the union of balls around each real feature with radius = distance to its
// k-th nearest real neighbour (self excluded); precision = fraction of generated features inside
// it. Recall swaps the roles. All comparisons are on squared Euclidean distances (as the authors'
// code), and the answer is the Float64 answer:
//
// - Fast path: squared distances in fp32 blocks, ‖a‖² + ‖b‖² − 2·a·b with the a·b matrix from a
//   oneDNN matmul (`FloatLinear` with the other set as its weight matrix).
// - The fp32 value differs from the exact one by at most e = (D + 4)·2⁻²³·(‖a‖² + ‖b‖²_max) (a
//   standard dot-product rounding bound with a 4× margin). Every decision within e of its threshold
//   (k-th neighbour selection, ball membership) is redone with Float64 distances, so the result
//   equals a brute-force Float64 computation.

import Foundation
import TensorCore

public enum PrecisionRecall {
    public struct Result: Codable, Equatable, Sendable {
        public var precision: Double
        public var recall: Double
        public var k: Int
        /// Comparisons that fell within the fp32 error bound and were redone in Float64 (diagnostic).
        public var exactRechecks: Int
    }

    /// Precision and recall of `generated` against `real` (`[N, D]` each).
    /// - Throws: `.shapeMismatch`, `.dimensionMismatch`, `.tooFewSamples` (each set needs > k rows),
    ///   `.nonFinite`, `.invalidArgument` (k < 1).
    public static func compute(real: Tensor, generated: Tensor, k: Int = 3, blockRows: Int = 512) throws -> Result {
        guard k >= 1 else { throw EvaluationError.invalidArgument(what: "k", reason: "\(k) must be ≥ 1") }
        let r = try FeatureSet(real, "real features"), g = try FeatureSet(generated, "generated features")
        guard r.d == g.d else { throw EvaluationError.dimensionMismatch(what: "precision/recall", a: r.d, b: g.d) }
        guard r.n > k else { throw EvaluationError.tooFewSamples(what: "real features for k = \(k)", count: r.n, minimum: k + 1) }
        guard g.n > k else { throw EvaluationError.tooFewSamples(what: "generated features for k = \(k)", count: g.n, minimum: k + 1) }
        var rechecks = 0
        let rRadii = kthNeighbourRadii(r, k: k, blockRows: blockRows, rechecks: &rechecks)
        let gRadii = kthNeighbourRadii(g, k: k, blockRows: blockRows, rechecks: &rechecks)
        let precision = fractionInside(queries: g, manifold: r, radii: rRadii, blockRows: blockRows, rechecks: &rechecks)
        let recall = fractionInside(queries: r, manifold: g, radii: gRadii, blockRows: blockRows, rechecks: &rechecks)
        return Result(precision: precision, recall: recall, k: k, exactRechecks: rechecks)
    }

    /// Brute-force Float64 reference (O(N²·D), for tests on small sets).
    public static func reference(real: Tensor, generated: Tensor, k: Int = 3) throws -> Result {
        let r = try FeatureSet(real, "real features"), g = try FeatureSet(generated, "generated features")
        func radii(_ s: FeatureSet) -> [Double] {
            (0..<s.n).map { i in
                var d = (0..<s.n).filter { $0 != i }.map { exact(s, i, s, $0) }
                d.sort()
                return d[k - 1]
            }
        }
        func inside(_ q: FeatureSet, _ m: FeatureSet, _ rad: [Double]) -> Double {
            let hits = (0..<q.n).filter { i in (0..<m.n).contains { exact(q, i, m, $0) <= rad[$0] } }.count
            return Double(hits) / Double(q.n)
        }
        return Result(precision: inside(g, r, radii(r)), recall: inside(r, g, radii(g)), k: k, exactRechecks: 0)
    }

    // MARK: - Internals

    struct FeatureSet {
        let t: Tensor
        let n: Int, d: Int
        /// ‖x_i‖² in Float64.
        let norms: [Double]
        let maxNorm: Double
        /// The matmul with this set as the right-hand side (created lazily).
        let linear: FloatLinear

        init(_ t: Tensor, _ what: String) throws {
            guard t.shape.count == 2, t.shape[0] > 0, t.shape[1] > 0 else {
                throw EvaluationError.shapeMismatch(what: what, expected: "[N, D]", actual: t.shape)
            }
            if let i = (0..<t.count).first(where: { !t.data[$0].isFinite }) {
                throw EvaluationError.nonFinite(what: "\(what) (row \(i / t.shape[1]))", index: i)
            }
            self.t = t
            n = t.shape[0]; d = t.shape[1]
            var norms = [Double](repeating: 0, count: n)
            for i in 0..<n {
                var s = 0.0
                for j in 0..<d { let v = Double(t.data[i * d + j]); s += v * v }
                norms[i] = s
            }
            self.norms = norms
            maxNorm = norms.max() ?? 0
            linear = FloatLinear(inFeatures: d, outFeatures: n, weights: t.array, bias: nil)
        }

        /// Error bound of an fp32 squared distance between row i of `q` and any row of this set.
        @inline(__always) func bound(_ qNorm: Double) -> Double { Double(d + 4) * 1.1920929e-7 * (qNorm + maxNorm) }
    }

    /// Exact squared distance (Float64) between row i of a and row j of b.
    @inline(__always)
    static func exact(_ a: FeatureSet, _ i: Int, _ b: FeatureSet, _ j: Int) -> Double {
        let p = a.t.data + i * a.d, q = b.t.data + j * b.d
        var s = 0.0
        for k in 0..<a.d { let t = Double(p[k]) - Double(q[k]); s += t * t }
        return s
    }

    /// Calls `body(rows, d2)` for blocks of query rows; `d2` holds fp32 squared distances
    /// `[rows.count × m.n]` to every row of `m`.
    static func forEachBlock(_ q: FeatureSet, _ m: FeatureSet, blockRows: Int,
                             _ body: (Range<Int>, UnsafeMutablePointer<Float>) -> Void) {
        let bs = max(1, blockRows)
        let mNorms = m.norms.map(Float.init)
        var start = 0
        while start < q.n {
            let end = min(q.n, start + bs)
            let dots = m.linear.forward(q.t.slice(batch: start..<end))     // [rows, m.n]
            let p = dots.data
            mNorms.withUnsafeBufferPointer { mn in
                Parallel.forEachChunk(end - start, minChunk: 16) { rr in
                    for r in rr {
                        let qn = Float(q.norms[start + r])
                        let row = p + r * m.n
                        for j in 0..<m.n { row[j] = qn + mn[j] - 2 * row[j] }
                    }
                }
            }
            body(start..<end, p)
            start = end
        }
    }

    /// Squared distance from each row to its k-th nearest other row (Float64-exact).
    static func kthNeighbourRadii(_ s: FeatureSet, k: Int, blockRows: Int, rechecks: inout Int) -> [Double] {
        var radii = [Double](repeating: 0, count: s.n)
        var extra = [Int](repeating: 0, count: s.n)
        radii.withUnsafeMutableBufferPointer { rad in
            extra.withUnsafeMutableBufferPointer { ex in
                forEachBlock(s, s, blockRows: blockRows) { rows, d2 in
                    Parallel.forEachChunk(rows.count, minChunk: 8) { rr in
                        var best = [Float](repeating: .infinity, count: k)
                        var cand: [Double] = []
                        for r in rr {
                            let i = rows.lowerBound + r
                            let row = d2 + r * s.n
                            for t in 0..<k { best[t] = .infinity }
                            for j in 0..<s.n where j != i {
                                let v = row[j]
                                if v < best[k - 1] {
                                    var t = k - 1
                                    while t > 0 && best[t - 1] > v { best[t] = best[t - 1]; t -= 1 }
                                    best[t] = v
                                }
                            }
                            // Every true k-nearest has fp32 distance ≤ (fp32 k-th) + 2e.
                            let e = s.bound(s.norms[i])
                            let limit = Double(best[k - 1]) + 2 * e
                            cand.removeAll(keepingCapacity: true)
                            for j in 0..<s.n where j != i && Double(row[j]) <= limit { cand.append(exact(s, i, s, j)) }
                            cand.sort()
                            rad[i] = cand[k - 1]
                            ex[i] = cand.count - k
                        }
                    }
                }
            }
        }
        rechecks += extra.reduce(0, +)
        return radii
    }

    /// Fraction of `queries` rows within `radii[j]` (squared) of some row j of `manifold`.
    static func fractionInside(queries q: FeatureSet, manifold m: FeatureSet, radii: [Double], blockRows: Int,
                               rechecks: inout Int) -> Double {
        var inside = [Bool](repeating: false, count: q.n)
        var checks = [Int](repeating: 0, count: q.n)
        inside.withUnsafeMutableBufferPointer { ins in
            checks.withUnsafeMutableBufferPointer { ch in
                radii.withUnsafeBufferPointer { rad in
                    forEachBlock(q, m, blockRows: blockRows) { rows, d2 in
                        Parallel.forEachChunk(rows.count, minChunk: 8) { rr in
                            for r in rr {
                                let i = rows.lowerBound + r
                                let row = d2 + r * m.n
                                let e = m.bound(q.norms[i])
                                var found = false, n = 0
                                for j in 0..<m.n {
                                    let v = Double(row[j])
                                    if v <= rad[j] - e { found = true; break }
                                    if v > rad[j] + e { continue }
                                    n += 1
                                    if exact(q, i, m, j) <= rad[j] { found = true; break }
                                }
                                ins[i] = found
                                ch[i] = n
                            }
                        }
                    }
                }
            }
        }
        rechecks += checks.reduce(0, +)
        return Double(inside.filter { $0 }.count) / Double(q.n)
    }
}
