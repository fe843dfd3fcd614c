//===--- CorrectedPredictor.swift - noise prediction with PTQD/D2 correction -===//
//
// PTQD (spec §3.1, §5.3 step 2):  ε̃ = (ε_q − b_t) / (1 + k_t)     (bias subtracted BEFORE the division)
// D2-DPM (D-D²):                  ε̃ = ε_q − (slope_t·ε_q + intercept_{t,c})
// The per-channel terms broadcast over N, H, W of the NHWC output. The correction acts on the guided
// prediction (after classifier-free guidance), the same quantity the statistics were collected on.
//
//===----------------------------------------------------------------------===//

import Diffusion
import TensorCore

/// Wraps any noise predictor (a quantized guided UNet) and corrects its output with a `CorrectionTable`.
///
/// With neither `cnc` nor `bias` on, `predict` returns the inner predictor's tensor itself (same object).
/// The row is chosen by the sampler's loop position, checked against the DDPM timestep (lookup by t if
/// they disagree); a timestep without a row throws.
public final class CorrectedPredictor: NoisePredictor {
    public let inner: NoisePredictor
    public let table: CorrectionTable
    public let settings: CorrectionSettings

    /// - Throws: `CorrectionError.invalidTable` if the table fails `validate()`.
    public init(wrapping inner: NoisePredictor, table: CorrectionTable, settings: CorrectionSettings = CorrectionSettings()) throws {
        try table.validate()
        self.inner = inner; self.table = table; self.settings = settings
    }

    public func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor {
        let out = try inner.predict(x, timestep: timestep, stepIndex: stepIndex, conditioning: conditioning)
        guard settings.correctsPrediction else { return out }
        let row = try table.row(forLoopIndex: stepIndex, timestep: timestep)
        return try correct(out, row: row)
    }

    /// Applies the correction of table row `row` to a guided prediction `eps` `[N, H, W, C]` (C last).
    /// Returns a new tensor, or `eps` itself when no prediction component is on.
    public func correct(_ eps: Tensor, row: Int) throws -> Tensor {
        guard settings.correctsPrediction else { return eps }
        let c = table.channels
        guard eps.shape.last == c, c > 0 else { throw CorrectionError.channelMismatch(expected: c, got: eps.shape.last ?? 0) }
        let useSlope = settings.components.contains(.cnc), useBias = settings.components.contains(.bias)
        let y = Tensor(shape: eps.shape)
        let pixels = eps.count / c
        let src = eps.data, dst = y.data
        switch settings.method {
        case .ptqd:
            let denom: Float = 1 + (useSlope ? table.k[row] : 0)
            let b = useBias ? table.bias[row] : [Float](repeating: 0, count: c)
            b.withUnsafeBufferPointer { b in
                for p in 0..<pixels {
                    let base = p * c
                    for ch in 0..<c { dst[base + ch] = (src[base + ch] - b[ch]) / denom }
                }
            }
        case .d2:
            let slope: Float = useSlope ? table.d2Slope[row] : 0
            let b = useBias ? table.d2Intercept[row] : [Float](repeating: 0, count: c)
            b.withUnsafeBufferPointer { b in
                for p in 0..<pixels {
                    let base = p * c
                    for ch in 0..<c {
                        let e = src[base + ch]
                        dst[base + ch] = e - (slope * e + b[ch])
                    }
                }
            }
        }
        return y
    }
}

extension Sampler {
    /// A sampler whose predictions are corrected by `table` and whose injected noise is recalibrated
    /// (VSC) per `settings`. With `settings` off (or no table) this is `Sampler(scheduler:predictor:)`
    /// unchanged, so sampling is bit-for-bit plain.
    /// - Throws: if the table is invalid, or its timesteps are not exactly the scheduler's (PTQD's k_t, bias and
    ///   σ_q hold only for the schedule they were measured on; a table for a finer schedule that happens to
    ///   contain these timesteps is rejected too, not looked up row by row).
    public static func corrected(scheduler: DiffusionScheduler, predictor: NoisePredictor, table: CorrectionTable?,
                                 settings: CorrectionSettings) throws -> Sampler {
        guard let table, settings.correctsPrediction || settings.calibratesVariance else {
            return Sampler(scheduler: scheduler, predictor: predictor)
        }
        guard table.timesteps == scheduler.timesteps else {
            func span(_ t: [Int]) -> String { "\(t.count) steps (t = \(t.first.map(String.init) ?? "-") … \(t.last.map(String.init) ?? "-"))" }
            throw CorrectionError.invalid("the correction table was measured on \(span(table.timesteps)) but the sampler runs \(span(scheduler.timesteps)); collect statistics for this schedule (ptqd quantize with these sampler settings) or turn the correction off")
        }
        let p: NoisePredictor = settings.correctsPrediction
            ? try CorrectedPredictor(wrapping: predictor, table: table, settings: settings) : predictor
        let scale = try VarianceCalibration.noiseScale(table: table, scheduler: scheduler, settings: settings)
        return Sampler(scheduler: scheduler, predictor: p, noiseScale: scale)
    }
}
