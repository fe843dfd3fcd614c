//===--- StepSNR.swift - step-aware mixed precision (PTQD spec §3.5) --------===//
//
// SNR^F(t) = ᾱ_t/(1 − ᾱ_t) is the signal-to-noise ratio of x_t; SNR^Q(t) = Σ‖ε_fp‖²/Σ‖Δ‖² that of a
// quantized network's prediction (`CorrectionTable.snrQ`). PTQD runs the cheap (low-bit) network in
// the early, noisy steps while SNR^Q_cheap ≥ SNR^F and switches ONCE, at the first step (sampling
// order, large t → small t) where that fails, to the strong network for every later step.
//
// Threshold generalization (ours). When that rule is degenerate (it switches at the first step or
// never), a factor ρ replaces 1: a step stays cheap while SNR^Q_cheap/SNR^F ≥ ρ, the switch is the first
// step where it fails, and ρ is chosen for a requested number K = round(f·S) of cheap steps. With
// r_i = SNR^Q_i/SNR^F_i and prefix minima m_j = min_{i≤j} r_i, exactly the steps j with m_j ≥ ρ are
// cheap, so ρ = m_{K−1} (the largest factor keeping ≥ K cheap steps; K = 0 takes the next Double above
// m_0). The count is exactly K unless m_K = m_{K−1} (a tie), in which case it is the next achievable
// count above K. ρ = 1 is PTQD's rule; ρ < 1 tolerates more quantization noise than the image noise.
// The comparison is always made on the ratio r_i.
//
//===----------------------------------------------------------------------===//

import Diffusion

/// A per-step choice between a cheap (index 0) and a strong (index 1) quantized network.
public struct MixedPrecisionPlan: Codable, Equatable, Sendable {
    /// Scheme per loop position (sampling order): 0 = cheap, 1 = strong.
    public var schemes: [Int]
    /// First loop position on the strong scheme (`schemes.count` when the cheap one runs throughout).
    public var switchIndex: Int
    /// The threshold factor used (1 = PTQD's rule).
    public var rho: Double
    /// True when ρ was chosen for a target fraction because ρ = 1 was degenerate.
    public var generalized: Bool
    /// Loop positions where even the strong scheme has SNR^Q < SNR^F (diagnostic; empty if not given).
    public var strongDeficit: [Int]

    /// Fraction of steps on the cheap scheme.
    public var cheapFraction: Double { schemes.isEmpty ? 0 : Double(switchIndex) / Double(schemes.count) }
}

/// SNR^F per step and the step-aware mixed-precision rule.
public enum StepSNR {
    /// ᾱ/(1 − ᾱ), in Float64.
    public static func signalToNoise(alphaCumprod a: Float) -> Double { Double(a) / (1 - Double(a)) }

    /// SNR^F for `timesteps` (DDPM indices into `alphasCumprod`), in the same order.
    public static func snrF(alphasCumprod: [Float], timesteps: [Int]) -> [Double] {
        timesteps.map { signalToNoise(alphaCumprod: alphasCumprod[$0]) }
    }

    /// SNR^F for a scheduler's timesteps, in sampling order.
    public static func snrF(scheduler: DiffusionScheduler) -> [Double] {
        snrF(alphasCumprod: scheduler.config.alphasCumprod(), timesteps: scheduler.timesteps)
    }

    /// The first loop position where SNR^Q/SNR^F < ρ (`snrQ.count` if none).
    public static func switchIndex(snrQ: [Double], snrF: [Double], rho: Double = 1) -> Int {
        precondition(snrQ.count == snrF.count, "SNR^Q has \(snrQ.count) steps, SNR^F \(snrF.count)")
        return snrQ.indices.first { !(snrQ[$0] / snrF[$0] >= rho) } ?? snrQ.count
    }

    /// The largest ρ that keeps at least `cheapSteps` leading steps cheap (see the file header).
    public static func rho(cheapSteps: Int, snrQ: [Double], snrF: [Double]) -> Double {
        precondition(snrQ.count == snrF.count && !snrQ.isEmpty, "need matching, non-empty SNR arrays")
        precondition((0...snrQ.count).contains(cheapSteps), "cheapSteps \(cheapSteps) outside 0...\(snrQ.count)")
        var m = Double.infinity
        for i in 0..<max(cheapSteps, 1) { m = min(m, snrQ[i] / snrF[i]) }
        return cheapSteps == 0 ? m.nextUp : m
    }

    /// The plan for an explicit threshold factor ρ.
    public static func plan(cheapSNRQ: [Double], snrF: [Double], rho: Double, strongSNRQ: [Double]? = nil) -> MixedPrecisionPlan {
        let s = switchIndex(snrQ: cheapSNRQ, snrF: snrF, rho: rho)
        var deficit: [Int] = []
        if let q = strongSNRQ {
            precondition(q.count == snrF.count, "strong SNR^Q has \(q.count) steps, SNR^F \(snrF.count)")
            deficit = q.indices.filter { !(q[$0] / snrF[$0] >= 1) }
        }
        return MixedPrecisionPlan(schemes: cheapSNRQ.indices.map { $0 < s ? 0 : 1 }, switchIndex: s, rho: rho,
                                  generalized: false, strongDeficit: deficit)
    }

    /// PTQD's rule (ρ = 1). If it is degenerate (switch at step 0 or never) and `targetCheapFraction` is
    /// given, ρ is chosen to keep round(fraction·S) leading steps cheap instead.
    /// - Parameters:
    ///   - cheapSNRQ: SNR^Q of the cheap scheme per loop position (sampling order).
    ///   - snrF: SNR^F per loop position (`snrF(scheduler:)`).
    ///   - strongSNRQ: optional SNR^Q of the strong scheme, only for `strongDeficit`.
    public static func plan(cheapSNRQ: [Double], snrF: [Double], strongSNRQ: [Double]? = nil,
                            targetCheapFraction: Double? = nil) -> MixedPrecisionPlan {
        var p = plan(cheapSNRQ: cheapSNRQ, snrF: snrF, rho: 1, strongSNRQ: strongSNRQ)
        let n = cheapSNRQ.count
        guard let f = targetCheapFraction, n > 0, p.switchIndex == 0 || p.switchIndex == n else { return p }
        let k = min(max(Int((f * Double(n)).rounded()), 0), n)
        p = plan(cheapSNRQ: cheapSNRQ, snrF: snrF, rho: rho(cheapSteps: k, snrQ: cheapSNRQ, snrF: snrF), strongSNRQ: strongSNRQ)
        p.generalized = true
        return p
    }
}
