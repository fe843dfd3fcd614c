import Correction
import Diffusion
import Foundation
import TensorCore
import XCTest

/// VSC: η = 0 no-op, the clamp, the exact equation and the DDIM(η = 1) ≡ DDPM identity.
final class VarianceCalibrationTests: XCTestCase {
    func testEtaZeroGivesZeroInBothModes() throws {
        let s = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: 0)
        for i in s.timesteps.indices {
            for mode in VSCMode.allCases {
                XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0.1, mode: mode), 0)
                XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0, mode: mode), 0)
            }
        }
    }

    func testClampTriggersWhenResidualVarianceReachesSigma() throws {
        // Boundary with a constant coefficient: c²s² = σ² exactly → 0 (strict "<").
        for mode in VSCMode.allCases {
            XCTAssertEqual(VarianceCalibration.calibratedSigma(sigma: 1, residualStd: 2, mode: mode) { _ in -0.5 }, 0)
            XCTAssertEqual(VarianceCalibration.calibratedSigma(sigma: 1, residualStd: 1.9, mode: mode) { _ in -0.5 },
                           Float((1 - 0.95 * 0.95).squareRoot()), accuracy: 1e-6)
        }
        let s = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: 1)
        for i in s.timesteps.indices where s.sigma(at: i) > 0 {
            let sigma = Double(s.sigma(at: i))
            // Code mode: clamp iff (|c(σ)|·s)² ≥ σ²; choose s just above that limit.
            let c = Double(abs(s.outputCoefficient(at: i, sigma: s.sigma(at: i))))
            let over = Float(sigma / c * 1.001)
            XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: over, mode: .code), 0)
            XCTAssertGreaterThan(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: Float(sigma / c * 0.99), mode: .code), 0)
            // Exact mode: clamp iff c(0)²s² ≥ σ².
            let c0 = Double(abs(s.outputCoefficient(at: i, sigma: 0)))
            XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: Float(sigma / c0 * 1.001), mode: .exact), 0)
            XCTAssertGreaterThan(VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: Float(sigma / c0 * 0.99), mode: .exact), 0)
        }
    }

    func testExactModeSatisfiesItsEquation() throws {
        for eta: Float in [0.3, 1] {
            let s = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: eta)
            for i in s.timesteps.indices where s.sigma(at: i) > 0 {
                for res: Float in [0.05, 0.3, 1] {
                    let sp = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: res, mode: .exact)
                    let code = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: res, mode: .code)
                    let sigma = Double(s.sigma(at: i))
                    if sp > 0 {
                        let c = Double(s.outputCoefficient(at: i, sigma: sp))
                        let lhs = Double(sp) * Double(sp) + c * c * Double(res * res)
                        XCTAssertEqual(lhs, sigma * sigma, accuracy: 1e-5 * sigma * sigma, "η \(eta) step \(i) s \(res)")
                    }
                    // |c| grows with σ, so the first-order code value never exceeds the exact one.
                    XCTAssertGreaterThanOrEqual(sp, code * (1 - 1e-6))
                }
            }
        }
        // No residual → σ unchanged.
        let s = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: 1)
        XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: 3, residualStd: 0, mode: .exact), s.sigma(at: 3))
        XCTAssertEqual(VarianceCalibration.calibratedSigma(scheduler: s, index: 3, residualStd: 0, mode: .code), s.sigma(at: 3))
    }

    /// `outputCoefficient` is the derivative of each scheduler's own step with respect to the model output, for
    /// every prediction type (the update is affine in the output without clipping), and exact-mode VSC solves its
    /// equation with it, so VSC is calibrated for v- and sample-prediction models too.
    func testOutputCoefficientIsTheStepsDerivativeForEveryPredictionType() throws {
        for prediction in [SchedulerConfig.Prediction.epsilon, .sample, .vPrediction] {
            var config = SchedulerConfig.ddimDefault
            config.clipSample = false
            config.predictionType = prediction
            var schedulers: [DiffusionScheduler] = try [Float(0), 0.5, 1].map { try DDIMScheduler(config: config, steps: 20, eta: $0) }
            schedulers.append(try DDPMScheduler(config: config, steps: 20))
            // DPM-Solver++: multistep (the coefficient of the current output, with the history of earlier steps fixed).
            schedulers.append(try DPMSolverMultistepScheduler(config: config, steps: 20))
            var heun = config
            heun.dpm.solverType = .heun
            heun.dpm.finalSigmasType = .sigmaMin
            schedulers.append(try DPMSolverMultistepScheduler(config: heun, steps: 20))
            for s in schedulers {
                for i in s.timesteps.indices {
                    let x = Tensor(shape: [1, 1, 1, 2]), out = Tensor(shape: [1, 1, 1, 2]), noise = Tensor(shape: [1, 1, 1, 2])
                    (x.data[0], x.data[1], out.data[0], out.data[1], noise.data[0], noise.data[1]) = (0.3, -0.7, 0.2, 0.4, 0.5, -1.1)
                    let sigma = s.sigma(at: i), h: Float = 0.05
                    let moved = out.copy()
                    for j in 0..<2 { moved.data[j] += h }
                    var history = SchedulerState()
                    for k in 0..<i {  // earlier steps with another output, so the multistep history is not the current one
                        let earlier = Tensor(shape: [1, 1, 1, 2], values: [Float(k) * 0.01 - 0.1, 0.3])
                        _ = s.step(modelOutput: earlier, index: k, sample: x, noise: s.injectsNoise(at: k) ? noise : nil, state: &history)
                    }
                    var h1 = history, h2 = history
                    let z = s.injectsNoise(at: i) ? noise : nil
                    let base = s.step(modelOutput: out, index: i, sample: x, noise: z, sigma: sigma, state: &h1)
                    let stepped = s.step(modelOutput: moved, index: i, sample: x, noise: z, sigma: sigma, state: &h2)
                    let c = Double(s.outputCoefficient(at: i, sigma: sigma))
                    for j in 0..<2 {
                        let slope = Double(stepped.data[j] - base.data[j]) / Double(h)
                        XCTAssertEqual(slope, c, accuracy: 1e-3 * max(1, abs(c)), "\(prediction) \(type(of: s)) step \(i)")
                    }
                    guard sigma > 0 else { continue }
                    let sp = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0.2, mode: .exact)
                    if sp > 0 {
                        let cp = Double(s.outputCoefficient(at: i, sigma: sp))
                        XCTAssertEqual(Double(sp * sp) + cp * cp * 0.04, Double(sigma * sigma), accuracy: 1e-5 * Double(sigma * sigma),
                                       "\(prediction) \(type(of: s)) step \(i)")
                    }
                }
            }
        }
    }

    /// DDIM with η = 1 on the consecutive 1000-step grid has the DDPM ε-coefficient
    /// −β_t/(√α_t·√(1−ᾱ_t)), so the DDIM and DDPM forms of VSC agree.
    ///
    /// The identity is checked three ways: (1) the DDIM formula evaluated in Float64 on the schedule's
    /// ᾱ matches to 1e-9; (2) the schedulers' own float32 `outputCoefficient` match within 1e-4 for
    /// every t ≥ 25, and for t < 25 within 1e-4 plus the float32 rounding of 1 − ᾱ_t/ᾱ_prev
    /// (4·2⁻²⁴/β_t, up to 2e-4 at t = 2); (3) the resulting σ′ of both schedulers agree to 1e-4.
    func testDDIMEtaOneFullGridMatchesDDPMCoefficient() throws {
        let config = SchedulerConfig.ddimDefault   // leading spacing, steps_offset 0
        let ddim = try DDIMScheduler(config: config, steps: 1000, eta: 1)
        let ddpm = try DDPMScheduler(config: config, steps: 1000)
        XCTAssertEqual(ddim.timesteps, Array((0..<1000).reversed()))
        let ac = config.alphasCumprod().map(Double.init)
        var worstAlgebra = 0.0, worstLate = 0.0, worstSigma = 0.0
        for (i, t) in ddim.timesteps.enumerated() {
            let abar = ac[t], prev = t > 0 ? ac[t - 1] : 1
            let beta = 1 - abar / prev, alpha = 1 - beta
            let ref = -beta / (alpha.squareRoot() * (1 - abar).squareRoot())
            // (1) DDIM's c_t(σ_t) in Float64.
            let sigma2 = (1 - prev) / (1 - abar) * (1 - abar / prev)
            let c64 = (1 - prev - sigma2).squareRoot() - (prev * (1 - abar) / abar).squareRoot()
            worstAlgebra = max(worstAlgebra, abs(c64 - ref) / abs(ref))
            // (2) The schedulers' float32 coefficients.
            let cDDIM = Double(ddim.outputCoefficient(at: i, sigma: ddim.sigma(at: i)))
            let cDDPM = Double(ddpm.outputCoefficient(at: i, sigma: ddpm.sigma(at: i)))
            let rel = max(abs(cDDIM - ref), abs(cDDPM - ref)) / abs(ref)
            if t >= 25 { worstLate = max(worstLate, rel) }
            XCTAssertLessThan(rel, 1e-4 + 4 * 0x1p-24 / beta, "t \(t)")
            // (3) The two VSC forms give the same σ′ (DDPM's fixed_small σ is DDIM's η = 1 σ).
            for mode in VSCMode.allCases {
                let a = Double(VarianceCalibration.calibratedSigma(scheduler: ddim, index: i, residualStd: 0.05, mode: mode))
                let b = Double(VarianceCalibration.calibratedSigma(scheduler: ddpm, index: i, residualStd: 0.05, mode: mode))
                worstSigma = max(worstSigma, abs(a - b) / max(b, 1e-30))
            }
            if t > 0 {
                let sigma = Double(ddpm.sigma(at: i))
                let closed = (max(sigma * sigma - ref * ref * 0.0025, 0)).squareRoot()
                XCTAssertEqual(Double(VarianceCalibration.calibratedSigma(scheduler: ddpm, index: i, residualStd: 0.05, mode: .code)),
                               closed, accuracy: 1e-4 * sigma)
            }
        }
        XCTAssertLessThan(worstAlgebra, 1e-9)
        XCTAssertLessThan(worstLate, 1e-4, "worst relative difference of the float32 ε-coefficients for t ≥ 25")
        XCTAssertLessThan(worstSigma, 1e-4, "worst relative difference of σ′")
    }

    func testDDPMModesAgree() throws {
        let s = try DDPMScheduler(config: .ddimDefault, steps: 50)
        for i in s.timesteps.indices {
            let a = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0.2, mode: .code)
            let b = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0.2, mode: .exact)
            XCTAssertEqual(a, b, accuracy: 1e-6 * max(s.sigma(at: i), 1e-6))
        }
    }

    func testNoiseScaleClosureAndMissingRows() throws {
        let s = try DDIMScheduler(config: .ddimDefault, steps: 10, eta: 1)
        let t = makeTable(timesteps: s.timesteps, k: s.timesteps.map { _ in 0.1 }, sigmaQ: s.timesteps.map { _ in 0.2 },
                          bias: s.timesteps.map { _ in [0, 0, 0] })
        let scale = try XCTUnwrap(VarianceCalibration.noiseScale(table: t, scheduler: s, settings: CorrectionSettings()))
        for i in s.timesteps.indices {
            XCTAssertEqual(scale(i), VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: 0.2 / 1.1, mode: .code))
        }
        let other = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: 1)
        XCTAssertThrowsError(try VarianceCalibration.noiseScale(table: t, scheduler: other, settings: CorrectionSettings())) {
            guard case .timestepNotInTable = $0 as? CorrectionError else { return XCTFail("\($0)") }
        }
    }
}
