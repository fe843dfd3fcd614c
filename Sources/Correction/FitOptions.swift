//===--- FitOptions.swift - how noise statistics become a correction table -===//

/// Which mean the bias correction subtracts (PTQD spec §3.2).
public enum BiasMode: String, Codable, Sendable, CaseIterable {
    /// b_{t,c} = mean of the total error Δ = ε_q − ε_fp over samples, H and W: what the released
    /// PTQD code (`analyze_error.py`) computes.
    case total
    /// b_{t,c} = mean of the residual Δ′ = Δ − k_t·ε_fp (k_t as applied, i.e. after clamping): what the
    /// paper describes, and the quantity that makes (ε_q − b)/(1 + k) unbiased.
    case residual
}

/// Options of `NoiseStatistics.fit(_:)`.
public struct FitOptions: Equatable, Sendable {
    /// Bias definition; `.total` reproduces the released code.
    public var biasMode: BiasMode
    /// Clamp the correlation coefficient at 0 (k < 0 → 0), as the released code does. The residual std
    /// σ_q and the residual-mode bias are then computed with the clamped k.
    public var clampK: Bool
    /// D2-DPM regression of Δ on ε_q: true fits one intercept per channel with a common (pooled
    /// within-channel) slope; false fits a single intercept per step (plain OLS).
    ///
    /// Per-channel intercepts model ε_q and Δ per channel as a joint Gaussian with channel-specific
    /// means and a shared covariance. That is the same assumption PTQD's per-channel bias already
    /// makes, costs C extra numbers per step, and never fits worse than one intercept.
    public var d2PerChannelIntercept: Bool
    /// ᾱ indexed by DDPM timestep (`SchedulerConfig.alphasCumprod()`); if set, the table's `snrF` is
    /// filled with ᾱ_t/(1 − ᾱ_t). Nil leaves `snrF` nil.
    public var alphasCumprod: [Float]?

    public init(biasMode: BiasMode = .total, clampK: Bool = true, d2PerChannelIntercept: Bool = true,
                alphasCumprod: [Float]? = nil) {
        self.biasMode = biasMode; self.clampK = clampK
        self.d2PerChannelIntercept = d2PerChannelIntercept; self.alphasCumprod = alphasCumprod
    }
}
