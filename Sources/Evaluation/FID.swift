//===--- FID.swift - Fréchet distance between Gaussian fits of feature sets ---===//
//
// FID = |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr sqrt(Σ1 Σ2), everything in Float64.
// tr sqrt(Σ1 Σ2) is computed without a general matrix square root: with S = sqrt(Σ1) (from a
// symmetric eigendecomposition, negative round-off eigenvalues clamped to 0), Σ1 Σ2 is similar to
// the symmetric PSD matrix M = S Σ2 S, so tr sqrt(Σ1 Σ2) = Σ sqrt(eig(M)).

import CLapack
import Foundation
import SafeTensors
import TensorCore

/// Mean and covariance (Float64) of a set of feature vectors.
public struct FIDStatistics: Equatable, Sendable {
    /// Number of feature vectors the statistics were computed from.
    public let count: Int
    public let dimension: Int
    /// `[dimension]`.
    public let mean: [Double]
    /// `[dimension × dimension]`, row-major, unbiased (divided by count − 1, as `numpy.cov`).
    public let covariance: [Double]

    public init(count: Int, mean: [Double], covariance: [Double]) throws {
        guard count >= 2 else { throw EvaluationError.tooFewSamples(what: "FID statistics", count: count, minimum: 2) }
        guard !mean.isEmpty, covariance.count == mean.count * mean.count else {
            throw EvaluationError.dimensionMismatch(what: "FID statistics covariance", a: mean.count * mean.count, b: covariance.count)
        }
        if let i = mean.firstIndex(where: { !$0.isFinite }) { throw EvaluationError.nonFinite(what: "FID mean", index: i) }
        if let i = covariance.firstIndex(where: { !$0.isFinite }) { throw EvaluationError.nonFinite(what: "FID covariance", index: i) }
        self.count = count
        self.dimension = mean.count
        self.mean = mean
        self.covariance = covariance
    }

    /// Statistics of `features` (`[N, D]`, N ≥ 2).
    /// - Throws: `.shapeMismatch`, `.tooFewSamples`, `.nonFinite` (NaN/inf feature).
    public init(features: Tensor) throws {
        guard features.shape.count == 2, features.shape[1] > 0 else {
            throw EvaluationError.shapeMismatch(what: "FID features", expected: "[N, D]", actual: features.shape)
        }
        try self.init(features: UnsafeBufferPointer(start: features.data, count: features.count), dimension: features.shape[1])
    }

    /// Statistics of `count × dimension` row-major features.
    public init(features: UnsafeBufferPointer<Float>, dimension d: Int) throws {
        guard d > 0, features.count % d == 0 else {
            throw EvaluationError.invalidArgument(what: "FID features", reason: "\(features.count) values is not a multiple of dimension \(d)")
        }
        let n = features.count / d
        guard n >= 2 else { throw EvaluationError.tooFewSamples(what: "FID features", count: n, minimum: 2) }
        if let i = features.firstIndex(where: { !$0.isFinite }) {
            throw EvaluationError.nonFinite(what: "FID features (row \(i / d))", index: i)
        }
        var mean = [Double](repeating: 0, count: d)
        for r in 0..<n { for j in 0..<d { mean[j] += Double(features[r * d + j]) } }
        for j in 0..<d { mean[j] /= Double(n) }
        // Covariance of centered rows, upper triangle accumulated in parallel chunks of rows.
        let chunks = max(1, min(Parallel.threads, n / 256))
        var partial = [[Double]](repeating: [], count: chunks)
        let lock = NSLock()
        Parallel.forEachChunk(chunks) { range in
            for ch in range {
                let lo = n * ch / chunks, hi = n * (ch + 1) / chunks
                var acc = [Double](repeating: 0, count: d * d)
                var row = [Double](repeating: 0, count: d)
                acc.withUnsafeMutableBufferPointer { a in
                    for r in lo..<hi {
                        for j in 0..<d { row[j] = Double(features[r * d + j]) - mean[j] }
                        row.withUnsafeBufferPointer { x in
                            for i in 0..<d {
                                let xi = x[i]
                                let base = i * d
                                for j in i..<d { a[base + j] += xi * x[j] }
                            }
                        }
                    }
                }
                lock.lock(); partial[ch] = acc; lock.unlock()
            }
        }
        var cov = [Double](repeating: 0, count: d * d)
        for p in partial { for i in 0..<(d * d) { cov[i] += p[i] } }
        for i in 0..<d {
            for j in i..<d {
                let v = cov[i * d + j] / Double(n - 1)
                cov[i * d + j] = v
                cov[j * d + i] = v
            }
        }
        try self.init(count: n, mean: mean, covariance: cov)
    }

    // MARK: Files

    public static let kindKey = "kind"
    public static let kindValue = "ptqd-fid-statistics"

    /// Writes `mean` (F64 `[D]`) and `covariance` (F64 `[D, D]`) to a safetensors file, atomically,
    /// with `metadata` plus `kind`, `count` and `dimension`.
    public func save(to path: String, metadata: [String: String] = [:]) throws {
        var w = SafeTensorsWriter(metadata: [:])
        do {
            try add(to: &w, metadata: metadata)
            try w.write(to: path)
        } catch let e as SafeTensorsError {
            throw EvaluationError.writeFailed(path: path, reason: "\(e)")
        }
    }

    /// Adds the `mean` and `covariance` tensors and the metadata keys to a writer (for files that
    /// hold more than the statistics).
    public func add(to w: inout SafeTensorsWriter, metadata: [String: String] = [:]) throws {
        for (k, v) in metadata { w.metadata[k] = v }
        w.metadata[Self.kindKey] = Self.kindValue
        w.metadata["count"] = String(count)
        w.metadata["dimension"] = String(dimension)
        func bytes(_ v: [Double]) -> [UInt8] {
            var out = [UInt8](); out.reserveCapacity(v.count * 8)
            for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
            return out
        }
        try w.add("mean", dtype: .f64, shape: [dimension], bytes: bytes(mean))
        try w.add("covariance", dtype: .f64, shape: [dimension, dimension], bytes: bytes(covariance))
    }

    /// Reads statistics written by ``save(to:metadata:)``; returns them with the file's metadata.
    /// - Throws: `.statisticsFile` (missing, not safetensors, wrong kind/dtype/shape, NaN).
    public static func load(path: String) throws -> (FIDStatistics, [String: String]) {
        func bad(_ r: String) -> EvaluationError { .statisticsFile(path: path, reason: r) }
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(path: path) } catch { throw bad("\(error)") }
        guard file.metadata[kindKey] == kindValue else { throw bad("metadata kind is not '\(kindValue)'") }
        guard let count = file.metadata["count"].flatMap(Int.init), count >= 2 else { throw bad("metadata 'count' missing or < 2") }
        func doubles(_ name: String, _ shape: [Int]?) throws -> [Double] {
            guard let info = try? file.info(name) else { throw bad("no tensor '\(name)'") }
            guard info.dtype == .f64 else { throw bad("tensor '\(name)' is \(info.dtype.rawValue), expected F64") }
            if let shape, info.shape != shape { throw bad("tensor '\(name)' has shape \(info.shape), expected \(shape)") }
            return try file.withRawBytes(name) { raw in
                (0..<info.elementCount).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
            }
        }
        let mean = try doubles("mean", nil)
        guard let info = try? file.info("mean"), info.shape.count == 1, !mean.isEmpty else { throw bad("tensor 'mean' must be 1-D and non-empty") }
        let cov = try doubles("covariance", [mean.count, mean.count])
        do { return (try FIDStatistics(count: count, mean: mean, covariance: cov), file.metadata) } catch {
            throw bad("\(error)")
        }
    }
}

public enum FID {
    /// FID between two sets of statistics.
    /// - Throws: `.dimensionMismatch`, `.lapackFailed`.
    public static func compute(_ a: FIDStatistics, _ b: FIDStatistics) throws -> Double {
        guard a.dimension == b.dimension else { throw EvaluationError.dimensionMismatch(what: "FID", a: a.dimension, b: b.dimension) }
        let d = a.dimension
        var meanTerm = 0.0
        for i in 0..<d { let t = a.mean[i] - b.mean[i]; meanTerm += t * t }
        var trA = 0.0, trB = 0.0
        for i in 0..<d { trA += a.covariance[i * d + i]; trB += b.covariance[i * d + i] }
        let trSqrt = try traceSqrtProduct(a.covariance, b.covariance, dimension: d)
        return meanTerm + trA + trB - 2 * trSqrt
    }

    /// FID between two feature sets (`[N, D]` each).
    public static func compute(features a: Tensor, _ b: Tensor) throws -> Double {
        try compute(FIDStatistics(features: a), FIDStatistics(features: b))
    }

    /// tr sqrt(A·B) for symmetric PSD A, B (row-major `d × d`).
    public static func traceSqrtProduct(_ a: [Double], _ b: [Double], dimension d: Int) throws -> Double {
        let s = try symmetricSqrt(a, dimension: d)
        let m = symmetrize(matmul(matmul(s, b, d), s, d), d)
        let (values, _) = try SymmetricEigen.decompose(m, dimension: d, vectors: false)
        return values.reduce(0) { $0 + Swift.max($1, 0).squareRoot() }
    }

    /// sqrt(A) = V·sqrt(max(Λ, 0))·Vᵀ for symmetric PSD A.
    public static func symmetricSqrt(_ a: [Double], dimension d: Int) throws -> [Double] {
        let (values, v) = try SymmetricEigen.decompose(a, dimension: d, vectors: true)
        // V is row-major with eigenvectors in columns: S[i][j] = Σ_k V[i][k] sqrt(λ_k) V[j][k].
        let r = values.map { Swift.max($0, 0).squareRoot() }
        var s = [Double](repeating: 0, count: d * d)
        for i in 0..<d {
            for j in i..<d {
                var acc = 0.0
                for k in 0..<d { acc += v[i * d + k] * r[k] * v[j * d + k] }
                s[i * d + j] = acc
                s[j * d + i] = acc
            }
        }
        return s
    }

    static func matmul(_ a: [Double], _ b: [Double], _ d: Int) -> [Double] {
        var c = [Double](repeating: 0, count: d * d)
        a.withUnsafeBufferPointer { a in b.withUnsafeBufferPointer { b in c.withUnsafeMutableBufferPointer { c in
            for i in 0..<d {
                for k in 0..<d {
                    let aik = a[i * d + k]
                    if aik == 0 { continue }
                    for j in 0..<d { c[i * d + j] += aik * b[k * d + j] }
                }
            }
        } } }
        return c
    }

    static func symmetrize(_ m: [Double], _ d: Int) -> [Double] {
        var s = m
        for i in 0..<d { for j in (i + 1)..<Swift.max(i + 1, d) {
            let v = 0.5 * (m[i * d + j] + m[j * d + i])
            s[i * d + j] = v; s[j * d + i] = v
        } }
        return s
    }
}

/// Symmetric eigendecomposition through LAPACK (`dsyevd`).
public enum SymmetricEigen {
    /// Eigenvalues (ascending) and, if `vectors`, the row-major matrix whose columns are the
    /// orthonormal eigenvectors. Only the upper triangle of `matrix` is read.
    /// - Throws: `.lapackFailed`.
    public static func decompose(_ matrix: [Double], dimension d: Int, vectors: Bool) throws -> ([Double], [Double]) {
        precondition(matrix.count == d * d, "SymmetricEigen: \(matrix.count) values for \(d)x\(d)")
        var a = matrix
        var w = [Double](repeating: 0, count: d)
        let info = a.withUnsafeMutableBufferPointer { ap in
            w.withUnsafeMutableBufferPointer { wp in
                LAPACKE_dsyevd(LAPACK_ROW_MAJOR, CChar(UInt8(ascii: vectors ? "V" : "N")), CChar(UInt8(ascii: "U")),
                               Int32(d), ap.baseAddress, Int32(d), wp.baseAddress)
            }
        }
        guard info == 0 else { throw EvaluationError.lapackFailed(routine: "dsyevd", info: Int(info)) }
        return (w, vectors ? a : [])
    }
}
