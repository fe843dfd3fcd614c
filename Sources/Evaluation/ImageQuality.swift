//===--- ImageQuality.swift - paired PSNR and SSIM (Wang et al. 2004) ---===//
//
// Both compare images clamped to [−1, 1] and mapped to [0, 1] (data range 1), in Float64.
// SSIM follows skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
// use_sample_covariance=False, data_range=1)`: 11×11 Gaussian window (σ = 1.5, truncated at
// 3.5σ, normalized), K1 = 0.01, K2 = 0.03, and the mean of the SSIM map over the "valid" region
// (the 5-px border, where the window would leave the image, is cropped). Multi-channel images
// average the per-channel SSIM.

import Foundation
import TensorCore

public enum ImageQuality {
    /// The summary value for a PSNR of +∞ (identical images); per-image values keep +∞.
    public static let psnrCap = 100.0

    /// Per-image PSNR in dB: 10·log10(1 / MSE); +∞ for identical images.
    /// - Throws: `.shapeMismatch` (different or non-NHWC shapes), `.nonFinite` (NaN input).
    public static func psnr(_ a: Tensor, _ b: Tensor) throws -> [Double] {
        try check(a, b, minSide: 1)
        let (n, per) = (a.shape[0], a.count / a.shape[0])
        return (0..<n).map { i in
            var s = 0.0
            for k in 0..<per {
                let d = unit(a.data[i * per + k]) - unit(b.data[i * per + k])
                s += d * d
            }
            let mse = s / Double(per)
            return mse == 0 ? .infinity : 10 * Foundation.log10(1 / mse)
        }
    }

    /// Per-image SSIM (see the file comment). Images must be at least 11×11.
    public static func ssim(_ a: Tensor, _ b: Tensor) throws -> [Double] {
        try check(a, b, minSide: window)
        let (n, h, w, c) = (a.shape[0], a.shape[1], a.shape[2], a.shape[3])
        var out = [Double](repeating: 0, count: n)
        out.withUnsafeMutableBufferPointer { res in
            Parallel.forEachChunk(n, minChunk: 4) { range in
                var x = [Double](repeating: 0, count: h * w), y = x
                for i in range {
                    var total = 0.0
                    for ch in 0..<c {
                        for p in 0..<(h * w) {
                            x[p] = unit(a.data[(i * h * w + p) * c + ch])
                            y[p] = unit(b.data[(i * h * w + p) * c + ch])
                        }
                        total += ssimChannel(x, y, h: h, w: w)
                    }
                    res[i] = total / Double(c)
                }
            }
        }
        return out
    }

    /// clamp(v, −1, 1) mapped to [0, 1]; NaN is rejected earlier.
    @inline(__always) static func unit(_ v: Float) -> Double { (Double(min(max(v, -1), 1)) + 1) / 2 }

    static func check(_ a: Tensor, _ b: Tensor, minSide: Int) throws {
        guard a.shape.count == 4, a.shape[0] > 0 else {
            throw EvaluationError.shapeMismatch(what: "paired images", expected: "[N>0, H, W, C]", actual: a.shape)
        }
        guard a.shape == b.shape else {
            throw EvaluationError.shapeMismatch(what: "paired images (second set)", expected: "\(a.shape) like the first set", actual: b.shape)
        }
        guard a.shape[1] >= minSide, a.shape[2] >= minSide else {
            throw EvaluationError.shapeMismatch(what: "paired images", expected: "H, W ≥ \(minSide)", actual: a.shape)
        }
        for (t, what) in [(a, "first images"), (b, "second images")] {
            if let i = (0..<t.count).first(where: { t.data[$0].isNaN }) { throw EvaluationError.nonFinite(what: what, index: i) }
        }
    }

    // MARK: SSIM

    static let window = 11
    static let sigma = 1.5
    static let k1 = 0.01, k2 = 0.03

    /// scipy.ndimage's Gaussian kernel: radius int(3.5·σ + 0.5) = 5, exp(−x²/2σ²), normalized.
    static let kernel: [Double] = {
        let radius = Int(3.5 * sigma + 0.5)
        let raw = (-radius...radius).map { Foundation.exp(-0.5 * Double($0 * $0) / (sigma * sigma)) }
        let s = raw.reduce(0, +)
        return raw.map { $0 / s }
    }()

    /// Separable valid-mode filter: `[h, w] → [h − 10, w − 10]`.
    static func filterValid(_ x: [Double], h: Int, w: Int) -> [Double] {
        let k = kernel, r = window - 1
        let ow = w - r, oh = h - r
        var tmp = [Double](repeating: 0, count: h * ow)
        for yy in 0..<h { for xx in 0..<ow {
            var s = 0.0
            for t in 0..<window { s += k[t] * x[yy * w + xx + t] }
            tmp[yy * ow + xx] = s
        } }
        var out = [Double](repeating: 0, count: oh * ow)
        for yy in 0..<oh { for xx in 0..<ow {
            var s = 0.0
            for t in 0..<window { s += k[t] * tmp[(yy + t) * ow + xx] }
            out[yy * ow + xx] = s
        } }
        return out
    }

    static func ssimChannel(_ x: [Double], _ y: [Double], h: Int, w: Int) -> Double {
        let c1 = k1 * k1, c2 = k2 * k2         // data range 1
        let ux = filterValid(x, h: h, w: w), uy = filterValid(y, h: h, w: w)
        let uxx = filterValid(x.indices.map { x[$0] * x[$0] }, h: h, w: w)
        let uyy = filterValid(y.indices.map { y[$0] * y[$0] }, h: h, w: w)
        let uxy = filterValid(x.indices.map { x[$0] * y[$0] }, h: h, w: w)
        var total = 0.0
        for p in 0..<ux.count {
            let vx = uxx[p] - ux[p] * ux[p], vy = uyy[p] - uy[p] * uy[p], vxy = uxy[p] - ux[p] * uy[p]
            let num = (2 * ux[p] * uy[p] + c1) * (2 * vxy + c2)
            let den = (ux[p] * ux[p] + uy[p] * uy[p] + c1) * (vx + vy + c2)
            total += num / den
        }
        return total / Double(ux.count)
    }

    // MARK: Summaries

    /// Mean and 5th percentile (linear interpolation, as numpy's default) of per-image values.
    public struct Summary: Codable, Equatable, Sendable {
        public var mean: Double
        public var p5: Double
        public var count: Int
        /// How many values were +∞ and replaced by the cap (PSNR of identical images).
        public var cappedCount: Int
    }

    /// Summary with +∞ values replaced by `cap` (so the summary is finite) and counted.
    /// - Throws: `.tooFewSamples` for an empty array, `.nonFinite` for NaN or −∞.
    public static func summary(_ values: [Double], cap: Double = psnrCap) throws -> Summary {
        guard !values.isEmpty else { throw EvaluationError.tooFewSamples(what: "image quality summary", count: 0, minimum: 1) }
        if let i = values.firstIndex(where: { $0.isNaN || $0 == -.infinity }) { throw EvaluationError.nonFinite(what: "image quality values", index: i) }
        let capped = values.map { $0 == .infinity ? cap : min($0, cap) }
        let sorted = capped.sorted()
        let pos = 0.05 * Double(sorted.count - 1)
        let lo = Int(pos.rounded(.down)), hi = min(lo + 1, sorted.count - 1)
        let p5 = sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - Double(lo))
        return Summary(mean: capped.reduce(0, +) / Double(capped.count), p5: p5, count: values.count,
                       cappedCount: values.filter { $0 == .infinity }.count)
    }
}
