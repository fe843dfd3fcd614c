//===--- NoiseStatistics.swift - streaming per-step quantization-noise sums -===//
//
// PTQD spec §3.1–3.3, §5.1: paired guided predictions ε_fp (full precision) and ε_q (quantized) on the
// same x_t; Δ = ε_q − ε_fp. Everything the fit needs is a sum, so trajectories are never stored.
//
// Residual std without storing samples. For sample i (n = H·W·C elements) and a slope k, the unbiased
// variance of r_i = Δ_i − k·ε_i is a quadratic in k built from five per-sample sums:
//     s_i(k)² = a_i + b_i·k + c_i·k²,   a_i = S_ΔΔ/(n−1),  b_i = −2·S_εΔ/(n−1),  c_i = S_εε/(n−1)
// (S_xy = Σxy − ΣxΣy/n, the sample's centred cross sums). σ_q(k) = mean_i s_i(k) is needed at the k
// fitted at the end, so G(k) = Σ_i s_i(k) and its derivative G′(k) = Σ_i (b_i + 2c_i·k)/(2·s_i(k)) are
// accumulated on a fixed grid k_j = lo + j·h and evaluated by cubic Hermite interpolation.
//
// Accuracy. s_i(k) = √(c_i·(k − k̂_i)² + m_i²) (m_i = the sample's smallest residual std over k) is smooth
// and convex; |d⁴s_i/dk⁴| ≤ 3·c_i²/m_i³, so the Hermite error of each term is ≤ h⁴·3·c_i²/(384·m_i³), i.e.
// relative to s_i ≥ m_i at most (h·√c_i/m_i)⁴/128. With the default grid (801 points on [−2, 2],
// h = 0.005) and ε of unit std (c_i ≈ 1): 5e-4 at m = 0.01, 6e-6 at m = 0.03, < 1e-7 for m ≥ 0.1.
// At grid points the value is exact. Outside the grid σ_q falls back to the root mean square
// √(mean_i s_i(k)²), which is exact from the accumulated Σa, Σb, Σc and is ≥ the mean of stds (Jensen);
// the two agree when the per-sample stds are alike.
//
// Reproducibility. Each sample's sums are formed first, in element order, and then added to the step's
// running totals, so splitting a stream into batches of any sizes gives bit-identical sums. `merge`
// adds totals, which equals the single stream up to Float64 rounding. Bit-exact merging instead keeps each
// sample's sums (`recordSamples`, 6 + 2C Float64s per sample and step) and adds them again, in the single
// stream's order, with `add(index:sample:)`: the sharded statistics pass (`ptqd quantize --stats-shard`).
//
//===----------------------------------------------------------------------===//

import Foundation
import TensorCore

/// Streaming Float64 sums of the quantization noise Δ = ε_q − ε_fp, one set per sampling step.
///
/// Memory is O(steps·(C + grid points)), independent of the number of trajectories. Not thread-safe:
/// give each thread or batch its own instance and `merge` them.
public final class NoiseStatistics {
    /// The sums for one step (all Float64; element sums run over every element of every sample).
    public struct StepSums: Equatable, Sendable {
        /// Number of samples (images) added.
        public internal(set) var samples = 0
        /// Number of elements added (Σ over samples of H·W·C).
        public internal(set) var elements = 0
        /// Σε, Σε², ΣΔ, ΣΔ², Σε·Δ over all elements (ε = ε_fp).
        public internal(set) var sumE = 0.0, sumE2 = 0.0, sumD = 0.0, sumD2 = 0.0, sumED = 0.0
        /// Σε and ΣΔ per channel, `[C]`.
        public internal(set) var sumEChannel: [Double]
        public internal(set) var sumDChannel: [Double]
        /// Σ_i a_i, Σ_i b_i, Σ_i c_i of the per-sample variance quadratics s_i(k)² = a_i + b_i·k + c_i·k².
        public internal(set) var sumVarA = 0.0, sumVarB = 0.0, sumVarC = 0.0
        /// G(k_j) = Σ_i s_i(k_j) and G′(k_j) on the grid, `[gridPoints]`.
        var stdGrid: [Double]
        var stdGridSlope: [Double]

        init(channels: Int, gridPoints: Int) {
            sumEChannel = [Double](repeating: 0, count: channels)
            sumDChannel = [Double](repeating: 0, count: channels)
            stdGrid = [Double](repeating: 0, count: gridPoints)
            stdGridSlope = [Double](repeating: 0, count: gridPoints)
        }

        mutating func merge(_ o: StepSums) {
            samples += o.samples; elements += o.elements
            sumE += o.sumE; sumE2 += o.sumE2; sumD += o.sumD; sumD2 += o.sumD2; sumED += o.sumED
            for c in sumEChannel.indices { sumEChannel[c] += o.sumEChannel[c]; sumDChannel[c] += o.sumDChannel[c] }
            sumVarA += o.sumVarA; sumVarB += o.sumVarB; sumVarC += o.sumVarC
            for j in stdGrid.indices { stdGrid[j] += o.stdGrid[j]; stdGridSlope[j] += o.stdGridSlope[j] }
        }
    }

    /// One sample's (image's) sums at one step, from which `add` derives everything it accumulates.
    public struct SampleSums: Equatable, Sendable {
        /// H·W·C.
        public var elements: Int
        /// Σε, Σε², ΣΔ, ΣΔ², Σε·Δ over the sample's elements, in element order.
        public var sumE, sumE2, sumD, sumD2, sumED: Double
        /// Σε and ΣΔ per channel, `[C]`.
        public var channelE: [Double]
        public var channelD: [Double]

        public init(elements: Int, sumE: Double, sumE2: Double, sumD: Double, sumD2: Double, sumED: Double, channelE: [Double], channelD: [Double]) {
            self.elements = elements; self.sumE = sumE; self.sumE2 = sumE2; self.sumD = sumD; self.sumD2 = sumD2; self.sumED = sumED
            self.channelE = channelE; self.channelD = channelD
        }

        /// Float64 values per record for C channels: elements, the five sums, Σε per channel, ΣΔ per channel.
        public static func width(channels: Int) -> Int { 6 + 2 * channels }

        /// `[elements, sumE, sumE2, sumD, sumD2, sumED, channelE…, channelD…]` (elements exact below 2^53).
        public var values: [Double] { [Double(elements), sumE, sumE2, sumD, sumD2, sumED] + channelE + channelD }

        /// The inverse of `values` (nil if the count or the element count is not usable).
        public init?(values v: ArraySlice<Double>, channels: Int) {
            guard v.count == Self.width(channels: channels) else { return nil }
            let b = v.startIndex
            guard v[b].isFinite, v[b] >= 2, v[b] < 9.0e15, v[b] == v[b].rounded() else { return nil }
            self.init(elements: Int(v[b]), sumE: v[b + 1], sumE2: v[b + 2], sumD: v[b + 3], sumD2: v[b + 4], sumED: v[b + 5],
                      channelE: Array(v[(b + 6)..<(b + 6 + channels)]), channelD: Array(v[(b + 6 + channels)..<(b + 6 + 2 * channels)]))
        }
    }

    /// DDPM timesteps in sampling order; position `index` of `add` refers to `timesteps[index]`.
    public let timesteps: [Int]
    /// Channel count C (last NHWC dimension).
    public let channels: Int
    /// The k grid for the residual std: `gridPoints` values evenly spaced on `kRange`.
    public let kRange: ClosedRange<Double>
    public let gridPoints: Int
    /// Per-step sums, indexed like `timesteps`.
    public private(set) var steps: [StepSums]

    var gridSpacing: Double { (kRange.upperBound - kRange.lowerBound) / Double(gridPoints - 1) }
    func gridValue(_ j: Int) -> Double { kRange.lowerBound + Double(j) * gridSpacing }

    /// - Parameters:
    ///   - timesteps: DDPM timesteps in sampling order (distinct).
    ///   - channels: C, the predictions' last dimension.
    ///   - kRange, gridPoints: the grid on which σ_q(k) is tabulated (see the file header for accuracy).
    ///   - recordSamples: keep every sample's sums as well (`samples(at:)`): steps·samples·(C·2 + 6) Float64s.
    public init(timesteps: [Int], channels: Int, kRange: ClosedRange<Double> = -2...2, gridPoints: Int = 801, recordSamples: Bool = false) {
        precondition(channels >= 1, "NoiseStatistics needs at least one channel")
        precondition(Set(timesteps).count == timesteps.count, "timesteps must be distinct: \(timesteps)")
        precondition(gridPoints >= 2 && kRange.upperBound > kRange.lowerBound, "the k grid needs >= 2 points on a non-empty range")
        self.timesteps = timesteps
        self.channels = channels
        self.kRange = kRange
        self.gridPoints = gridPoints
        steps = timesteps.map { _ in StepSums(channels: channels, gridPoints: gridPoints) }
        recordsSamples = recordSamples
        log = timesteps.map { _ in [] }
    }

    /// Adds one batch of paired guided predictions at loop position `index`.
    /// - Parameters:
    ///   - epsFP: full-precision prediction `[N, H, W, C]` (any rank ≥ 2 with C last; dim 0 = samples).
    ///   - epsQ: quantized prediction on the same x_t, same shape.
    public func add(index: Int, epsFP: Tensor, epsQ: Tensor) {
        precondition(steps.indices.contains(index), "step index \(index) is outside 0..<\(steps.count)")
        precondition(epsFP.shape == epsQ.shape, "ε_fp \(epsFP.shape) and ε_q \(epsQ.shape) differ in shape")
        precondition(epsFP.shape.count >= 2 && epsFP.shape.last == channels,
                     "predictions \(epsFP.shape) must have \(channels) channels last")
        let n = epsFP.shape[0]
        guard n > 0 else { return }
        let per = epsFP.count / n
        precondition(per >= 2, "a sample needs at least 2 elements for an unbiased std")
        let pixels = per / channels
        var ce = [Double](repeating: 0, count: channels)
        var cd = [Double](repeating: 0, count: channels)
        for b in 0..<n {
            let pe = epsFP.data + b * per, pq = epsQ.data + b * per
            for c in 0..<channels { ce[c] = 0; cd[c] = 0 }
            var se2 = 0.0, sd2 = 0.0, sed = 0.0
            for p in 0..<pixels {
                let base = p * channels
                for c in 0..<channels {
                    let e = Double(pe[base + c])
                    let d = Double(pq[base + c]) - e
                    ce[c] += e; cd[c] += d
                    se2 += e * e; sd2 += d * d; sed += e * d
                }
            }
            var se = 0.0, sd = 0.0
            for c in 0..<channels { se += ce[c]; sd += cd[c] }
            add(index: index, sample: SampleSums(elements: per, sumE: se, sumE2: se2, sumD: sd, sumD2: sd2, sumED: sed,
                                                 channelE: ce, channelD: cd))
        }
    }

    /// Adds one sample's sums at loop position `index` (what `add(index:epsFP:epsQ:)` does per sample). Adding the
    /// `samples(at:)` of other instances in their order reproduces their sums bit for bit (the sharded statistics merge).
    public func add(index: Int, sample x: SampleSums) {
        precondition(steps.indices.contains(index), "step index \(index) is outside 0..<\(steps.count)")
        precondition(x.channelE.count == channels && x.channelD.count == channels && x.elements >= 2,
                     "a sample record needs \(channels) channel sums and >= 2 elements")
        let nn = Double(x.elements), dof = Double(x.elements - 1)
        // Per-sample variance quadratic of r = Δ − k·ε.
        let a = max(x.sumD2 - x.sumD * x.sumD / nn, 0) / dof
        let bq = -2 * (x.sumED - x.sumE * x.sumD / nn) / dof
        let cq = max(x.sumE2 - x.sumE * x.sumE / nn, 0) / dof
        steps[index].accumulate(elements: x.elements, sumE: x.sumE, sumE2: x.sumE2, sumD: x.sumD, sumD2: x.sumD2, sumED: x.sumED,
                                channelE: x.channelE, channelD: x.channelD, a: a, b: bq, c: cq, gridLow: kRange.lowerBound, gridStep: gridSpacing)
        if recordsSamples { log[index].append(x) }
    }

    /// Whether `add` keeps every sample's sums (`samples(at:)`), for a statistics shard whose merge replays them.
    public let recordsSamples: Bool
    private var log: [[SampleSums]]

    /// The samples added at loop position `index`, in the order they were added (empty unless `recordsSamples`).
    public func samples(at index: Int) -> [SampleSums] { log[index] }

    /// Adds another instance's sums (same timesteps, channels and grid) into this one.
    public func merge(_ other: NoiseStatistics) {
        precondition(other.timesteps == timesteps && other.channels == channels
                     && other.kRange == kRange && other.gridPoints == gridPoints,
                     "merge needs statistics with the same timesteps, channels and k grid")
        for i in steps.indices { steps[i].merge(other.steps[i]) }
    }

    /// Number of samples added at loop position `index`.
    public func sampleCount(at index: Int) -> Int { steps[index].samples }

    /// The least-squares slope (with intercept) of Δ on ε_fp over all elements of step `index`, like
    /// scipy's `linregress(ε_fp, Δ).slope`; 0 when ε_fp has no spread.
    public func slope(at index: Int) -> Double {
        let s = steps[index]
        guard s.elements > 1 else { return 0 }
        let n = Double(s.elements)
        let sxx = s.sumE2 - s.sumE * s.sumE / n
        let sxy = s.sumED - s.sumE * s.sumD / n
        return sxx > 0 ? sxy / sxx : 0
    }

    /// σ_q(k): mean over the samples of step `index` of the unbiased std (over all H·W·C elements of the
    /// sample, its own global mean removed) of Δ − k·ε_fp. Interpolated on the k grid, with the
    /// root-mean-square fallback outside it (accuracy in the file header); 0 with no samples.
    public func residualStd(at index: Int, k: Double) -> Double {
        let s = steps[index]
        guard s.samples > 0 else { return 0 }
        let m = Double(s.samples)
        let lo = kRange.lowerBound, h = gridSpacing
        guard k >= lo, k <= kRange.upperBound else {
            return (max(s.sumVarA + k * (s.sumVarB + k * s.sumVarC), 0) / m).squareRoot()
        }
        let j = min(max(Int(((k - lo) / h).rounded(.down)), 0), gridPoints - 2)
        let t = min(max((k - gridValue(j)) / h, 0), 1)
        let t2 = t * t, t3 = t2 * t
        let h00 = 2 * t3 - 3 * t2 + 1, h10 = t3 - 2 * t2 + t, h01 = -2 * t3 + 3 * t2, h11 = t3 - t2
        let g = h00 * s.stdGrid[j] + h10 * h * s.stdGridSlope[j] + h01 * s.stdGrid[j + 1] + h11 * h * s.stdGridSlope[j + 1]
        return max(g, 0) / m
    }

    /// SNR^Q of step `index`: Σ‖ε_fp‖² / Σ‖Δ‖² (+∞ when Δ ≡ 0, 0 with no samples).
    public func snrQ(at index: Int) -> Double {
        let s = steps[index]
        guard s.samples > 0 else { return 0 }
        return s.sumD2 > 0 ? s.sumE2 / s.sumD2 : .infinity
    }
}

extension NoiseStatistics.StepSums {
    /// Adds one sample's sums (its grid terms are evaluated here).
    mutating func accumulate(elements per: Int, sumE se: Double, sumE2 se2: Double, sumD sd: Double, sumD2 sd2: Double,
                             sumED sed: Double, channelE: [Double], channelD: [Double],
                             a: Double, b: Double, c: Double, gridLow: Double, gridStep: Double) {
        samples += 1
        elements += per
        sumE += se; sumE2 += se2; sumD += sd; sumD2 += sd2; sumED += sed
        for ch in sumEChannel.indices { sumEChannel[ch] += channelE[ch]; sumDChannel[ch] += channelD[ch] }
        sumVarA += a; sumVarB += b; sumVarC += c
        let count = stdGrid.count
        stdGrid.withUnsafeMutableBufferPointer { g in
            stdGridSlope.withUnsafeMutableBufferPointer { gs in
                for j in 0..<count {
                    let k = gridLow + Double(j) * gridStep
                    let v = a + k * (b + k * c)
                    guard v > 0 else { continue }
                    let s = v.squareRoot()
                    g[j] += s
                    gs[j] += (b + 2 * c * k) / (2 * s)
                }
            }
        }
    }
}
