//===--- VarianceCalibration.swift - PTQD variance schedule calibration ----===//
//
// Spec §3.4. Written as x_prev = a_t·x_t + c_t(σ)·ε̃ + σ·z, the corrected prediction still carries a
// residual error of std s_t, which adds variance c_t²·s_t². (For v- or sample-prediction models ε̃ is the
// corrected model output and c_t the scheduler's `outputCoefficient` for that prediction type; the
// statistics are measured on the model output, so s_t is in its units.) VSC shrinks the injected noise std σ_t to σ′:
//   code : c = |c_t(σ_t)| with the ORIGINAL σ_t;  σ′ = √(σ_t² − c²s²) if c²s² < σ_t² (strict), else 0.
//   exact: σ′ solves σ′² + c_t(σ′)²·s² = σ_t² (0 if even σ′ = 0 overshoots).
// DDIM (any η, epsilon prediction): c_t(σ) = √(1 − ᾱ_prev − σ²) − √(ᾱ_prev(1 − ᾱ_t)/ᾱ_t) ≤ 0 (v and sample prediction in
// `DDIMScheduler.outputCoefficient`), and |c_t| grows with σ in every case, so
// the exact equation's left side is strictly increasing in σ′ and has one root in [0, σ_t].
// DDPM: c_t does not depend on σ, so both modes give √(σ_t² − c_t²s²). σ_t = 0 (η = 0) → σ′ = 0.
//
//===----------------------------------------------------------------------===//

import Diffusion

/// σ′ for PTQD's variance schedule calibration and the `Sampler.noiseScale` hook built from it.
public enum VarianceCalibration {
    /// σ′ at loop position `index` of `scheduler`.
    /// - Parameter s: std of the residual error in the corrected prediction (units of ε), ≥ 0.
    public static func calibratedSigma(scheduler: DiffusionScheduler, index: Int, residualStd s: Float, mode: VSCMode) -> Float {
        calibratedSigma(sigma: scheduler.sigma(at: index), residualStd: s, mode: mode) {
            scheduler.outputCoefficient(at: index, sigma: $0)
        }
    }

    /// σ′ from σ_t, s_t and the model-output coefficient c_t(σ) of the update (computed in Float64).
    public static func calibratedSigma(sigma: Float, residualStd s: Float, mode: VSCMode,
                                       coefficient: (Float) -> Float) -> Float {
        precondition(s >= 0 && sigma >= 0, "stds must be >= 0 (sigma \(sigma), residual \(s))")
        guard sigma > 0 else { return 0 }
        let sd = Double(sigma), ss = Double(s)
        switch mode {
        case .code:
            let extra = Double(abs(coefficient(sigma))) * ss
            return extra * extra < sd * sd ? Float((sd * sd - extra * extra).squareRoot()) : 0
        case .exact:
            guard s > 0 else { return sigma }
            func f(_ x: Double) -> Double {
                let c = Double(coefficient(Float(x)))
                return x * x + c * c * ss * ss - sd * sd
            }
            if f(0) >= 0 { return 0 }
            var lo = 0.0, hi = sd            // f(lo) < 0 ≤ f(hi) = c(σ)²s²
            var iterations = 0
            while hi - lo > 1e-7 * hi && iterations < 200 {   // relative bracket width 1e-7
                let mid = 0.5 * (lo + hi)
                if f(mid) < 0 { lo = mid } else { hi = mid }
                iterations += 1
            }
            return Float(0.5 * (lo + hi))
        }
    }

    /// σ′ for every loop position of `scheduler`, using the table row of each step's timestep.
    /// - Throws: `CorrectionError.timestepNotInTable` if a scheduler timestep has no row.
    public static func calibratedSigmas(table: CorrectionTable, scheduler: DiffusionScheduler,
                                        settings: CorrectionSettings) throws -> [Float] {
        try scheduler.timesteps.enumerated().map { i, t in
            let row = try table.row(forLoopIndex: i, timestep: t)
            return calibratedSigma(scheduler: scheduler, index: i,
                                   residualStd: table.residualStd(row: row, settings: settings), mode: settings.vscMode)
        }
    }

    /// The `Sampler.noiseScale` closure: σ′ per loop position, precomputed. Nil when `vsc` is off, so the
    /// sampler keeps calling the plain scheduler step (bit-for-bit unchanged).
    public static func noiseScale(table: CorrectionTable, scheduler: DiffusionScheduler,
                                  settings: CorrectionSettings) throws -> ((Int) -> Float?)? {
        guard settings.calibratesVariance else { return nil }
        let sigmas = try calibratedSigmas(table: table, scheduler: scheduler, settings: settings)
        return { i in sigmas.indices.contains(i) ? sigmas[i] : nil }
    }
}
