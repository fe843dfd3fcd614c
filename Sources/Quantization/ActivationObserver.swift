//===--- ActivationObserver.swift - activation ranges from calibration data -===//

import TensorCore

/// How an activation range is chosen from calibration data.
public enum RangeMethod: Codable, Equatable, Sendable, CustomStringConvertible {
    /// Minimize the squared fake-quantization error over the observed sample (Q-Diffusion / BRECQ "mse").
    case mse
    /// The observed minimum and maximum.
    case minMax
    /// The p-th and (100 − p)-th percentiles of the sample, e.g. 99.99.
    case percentile(Double)

    public init(parsing s: String) throws {
        switch s.lowercased() {
        case "mse": self = .mse
        case "minmax", "min-max": self = .minMax
        default:
            if s.lowercased().hasPrefix("percentile"), let v = Double(s.dropFirst("percentile".count).drop(while: { $0 == ":" || $0 == "=" })),
               v > 50, v <= 100 {
                self = .percentile(v)
            } else {
                throw QuantizationError.invalidRule("--act-range must be mse, minmax or percentile:P (50 < P ≤ 100), got '\(s)'")
            }
        }
    }

    public var description: String {
        switch self {
        case .mse: return "mse"
        case .minMax: return "minmax"
        case let .percentile(p): return "percentile:\(p)"
        }
    }
}

/// Streams a layer input's channel range: exact min/max plus a bounded uniform random sample
/// (at most `perBatch` values from each observed tensor), deterministic for a given seed.
public final class ActivationObserver {
    public let channels: Range<Int>
    public private(set) var minimum = Float.infinity
    public private(set) var maximum = -Float.infinity
    public private(set) var sample: [Float] = []
    public private(set) var observed = 0
    public private(set) var nonFinite = 0
    let perBatch: Int
    private var state: UInt64

    public init(channels: Range<Int>, perBatch: Int = 16384, seed: UInt64 = 0) {
        self.channels = channels; self.perBatch = perBatch
        state = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(channels.lowerBound + 1)
    }

    private func next() -> UInt64 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return state >> 17
    }

    /// Observes `x: [..., C]` (only this observer's channels).
    public func observe(_ x: Tensor) {
        let c = x.shape.last!, rows = x.count / c
        let cp = channels.count, c0 = channels.lowerBound
        var lo = minimum, hi = maximum, bad = 0
        for r in 0..<rows {
            let p = x.data + r * c + c0
            for i in 0..<cp {
                let v = p[i]
                if !v.isFinite { bad += 1; continue }
                lo = min(lo, v); hi = max(hi, v)
            }
        }
        minimum = lo; maximum = hi; nonFinite += bad
        let total = rows * cp
        observed += total
        let take = min(perBatch, total)
        sample.reserveCapacity(sample.count + take)
        for _ in 0..<take {
            let k = Int(next() % UInt64(total))
            let v = x.data[(k / cp) * c + c0 + k % cp]
            if v.isFinite { sample.append(v) }
        }
    }

    /// The quantizer chosen by `method` at `bits`. Throws for NaN/Inf or a constant activation.
    public func quantizer(bits: Int, method: RangeMethod, layer: String) throws -> ActivationQuantization {
        guard nonFinite == 0 else {
            throw QuantizationError.calibration("layer \(layer) saw \(nonFinite) NaN/Inf input values; check the model weights and sampler settings")
        }
        guard observed > 0, maximum > minimum else {
            throw QuantizationError.calibration("layer \(layer) input is constant (\(minimum)) over the calibration set; keep it fp32 with --rule '\(layer)=fp32'")
        }
        switch method {
        case .minMax:
            return try grid(minimum, maximum, bits, layer)
        case let .percentile(p):
            let s = sample.sorted()
            let loIdx = Int((Double(s.count - 1) * (100 - p) / 100).rounded()), hiIdx = Int((Double(s.count - 1) * p / 100).rounded())
            return try grid(s[loIdx], s[hiIdx], bits, layer)
        case .mse:
            return try mseSearch(bits: bits, layer: layer)
        }
    }

    private func grid(_ lo: Float, _ hi: Float, _ bits: Int, _ layer: String) throws -> ActivationQuantization {
        guard let q = ActivationQuantization(lo: lo, hi: hi, bits: bits) else {
            throw QuantizationError.calibration("layer \(layer): empty activation range [\(lo), \(hi)]")
        }
        return q
    }

    /// Squared error of fake-quantizing the sample with `q` (through the quantizer's own kernel).
    func error(_ q: ActivationQuantization) -> Double {
        var fake = sample
        fake.withUnsafeMutableBufferPointer { q.fakeQuantize($0.baseAddress!, count: $0.count) }
        var e = 0.0
        for (f, v) in zip(fake, sample) { let r = f - v; e += Double(r * r) }
        return e
    }

    /// Shrinks [min, max] jointly by (1 − 0.01·i), i < 80 (as Q-Diffusion/BRECQ), then refines each end
    /// alone over the same factors; keeps the range with the least squared error on the sample.
    private func mseSearch(bits: Int, layer: String) throws -> ActivationQuantization {
        var best = try grid(minimum, maximum, bits, layer)
        var bestErr = error(best)
        var bestLo = minimum, bestHi = maximum
        func consider(_ lo: Float, _ hi: Float) {
            guard let q = ActivationQuantization(lo: lo, hi: hi, bits: bits) else { return }
            let e = error(q)
            if e < bestErr { bestErr = e; best = q; bestLo = lo; bestHi = hi }
        }
        for i in 1..<80 { let f = 1 - 0.01 * Float(i); consider(minimum * f, maximum * f) }
        let (jl, jh) = (bestLo, bestHi)
        for i in 1..<80 { let f = 1 - 0.01 * Float(i); consider(jl, jh * f) }
        let h2 = bestHi
        for i in 1..<80 { let f = 1 - 0.01 * Float(i); consider(jl * f, h2) }
        return best
    }
}
