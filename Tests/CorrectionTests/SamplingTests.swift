import Correction
import Diffusion
import Foundation
import TensorCore
import XCTest

/// The corrected sampler: off is bit-for-bit plain; on applies exactly spec §5.3.
final class SamplingTests: XCTestCase {
    let shape = [2, 4, 4, 3]
    let fake = AffinePredictor(scale: 0.3, offset: [0.05, -0.1, 0.2])

    func ddim(eta: Float, steps: Int = 10) throws -> DDIMScheduler {
        try DDIMScheduler(config: .ddimDefault, steps: steps, eta: eta)
    }

    func run(_ sampler: Sampler, seed: UInt64 = 5) throws -> [Float] {
        let r = seededRun(shape: shape, seed: seed)
        return try sampler.sample(from: r.xT, conditioning: .none, noise: r.noise).array
    }

    func table(for s: DiffusionScheduler) -> CorrectionTable {
        let n = s.timesteps.count
        return makeTable(timesteps: s.timesteps, k: (0..<n).map { 0.05 + 0.01 * Float($0) },
                         sigmaQ: (0..<n).map { 0.02 + 0.003 * Float($0) },
                         bias: (0..<n).map { i in [0.01, -0.02, 0.03].map { $0 * Float(i + 1) } })
    }

    func testCorrectionOffIsBitForBitPlain() throws {
        for eta: Float in [0, 0.5, 1] {
            let s = try ddim(eta: eta)
            let plain = try run(Sampler(scheduler: s, predictor: fake))
            let t = table(for: s)
            // Settings off: the factory returns the plain sampler.
            XCTAssertEqual(try run(Sampler.corrected(scheduler: s, predictor: fake, table: t, settings: .off)), plain)
            // Wrapped predictor with nothing on, and no noise-scale hook.
            let wrapped = try CorrectedPredictor(wrapping: fake, table: t, settings: .off)
            XCTAssertNil(try VarianceCalibration.noiseScale(table: t, scheduler: s, settings: .off))
            XCTAssertNil(try VarianceCalibration.noiseScale(table: t, scheduler: s, settings: CorrectionSettings(components: [.cnc, .bias])))
            XCTAssertEqual(try run(Sampler(scheduler: s, predictor: wrapped)), plain)
            // Everything on with an all-zero table: identity prediction and σ′ = σ, still bit-for-bit.
            let zero = makeTable(timesteps: s.timesteps, k: s.timesteps.map { _ in 0 }, sigmaQ: s.timesteps.map { _ in 0 },
                                 bias: s.timesteps.map { _ in [0, 0, 0] })
            for mode in VSCMode.allCases {
                let on = try Sampler.corrected(scheduler: s, predictor: fake, table: zero, settings: CorrectionSettings(vscMode: mode))
                XCTAssertNotNil(on.noiseScale)
                XCTAssertEqual(try run(on), plain, "eta \(eta) \(mode)")
            }
        }
    }

    /// A table measured on another schedule is refused even when it holds a row for every timestep of this one
    /// (10 leading steps ⊂ 50 leading steps), unless the correction is off.
    func testTableForAnotherScheduleIsRefused() throws {
        let fine = try ddim(eta: 1, steps: 50), coarse = try ddim(eta: 1, steps: 10)
        XCTAssertTrue(Set(coarse.timesteps).isSubset(of: Set(fine.timesteps)))
        let t = table(for: fine)
        XCTAssertThrowsError(try Sampler.corrected(scheduler: coarse, predictor: fake, table: t, settings: CorrectionSettings())) { error in
            XCTAssertTrue("\(error)".contains("50 steps") && "\(error)".contains("10 steps"), "\(error)")
        }
        XCTAssertNoThrow(try Sampler.corrected(scheduler: coarse, predictor: fake, table: t, settings: .off))
        XCTAssertNoThrow(try Sampler.corrected(scheduler: fine, predictor: fake, table: t, settings: CorrectionSettings()))
    }

    /// A model whose output does not have the sample's shape (e.g. learned-variance out_channels = 2·in_channels)
    /// is a one-line error from the sampler, not a trap in the scheduler step.
    func testOutputOfAnotherShapeIsAnError() throws {
        let wide = ConstantPredictor(Tensor(shape: [2, 4, 4, 6]))
        let r = seededRun(shape: shape, seed: 1)
        XCTAssertThrowsError(try Sampler(scheduler: try ddim(eta: 1), predictor: wide).sample(from: r.xT, conditioning: .none, noise: r.noise)) { error in
            XCTAssertTrue("\(error)".contains("out_channels == in_channels"), "\(error)")
        }
    }

    /// A file whose per-variant tables (or mixed table) describe different schedules is refused on load.
    func testDocumentWithTablesOfDifferentSchedulesIsRefused() throws {
        let a = table(for: try ddim(eta: 1, steps: 10)), b = table(for: try ddim(eta: 1, steps: 20))
        let settings = SamplerSettings(kind: .ddim, steps: 10, eta: 1, guidance: 1)
        let good = CorrectionDocument(settings: settings, statistics: StatisticsOptions(), biasMode: .total, clampK: true,
                                      defaultCorrection: CorrectionSettings(), tables: [a, a])
        XCTAssertEqual(try CorrectionDocument(json: try good.json()), good)
        var bad = good
        bad.tables = [a, b]
        XCTAssertThrowsError(try CorrectionDocument(json: try bad.json())) { XCTAssertTrue("\($0)".contains("different step schedules"), "\($0)") }
        bad = good
        bad.mixedTable = b
        XCTAssertThrowsError(try CorrectionDocument(json: try bad.json()))
    }

    func testOffReturnsInnerTensorItself() throws {
        let out = Tensor(shape: [1, 2, 2, 3], repeating: 0.5)
        let t = makeTable(timesteps: [10], k: [0.1], sigmaQ: [0.1], bias: [[0.1, 0.1, 0.1]])
        let p = try CorrectedPredictor(wrapping: ConstantPredictor(out), table: t, settings: CorrectionSettings(components: .vsc))
        XCTAssertTrue(try p.predict(out, timestep: 10, stepIndex: 0, conditioning: .none) === out)
    }

    func testCorrectedStepMatchesSpecFormula() throws {
        for eta: Float in [0, 1] {
            let s = try ddim(eta: eta)
            let t = table(for: s)
            for mode in VSCMode.allCases {
                let settings = CorrectionSettings(method: .ptqd, components: .all, vscMode: mode)
                let corrected = try run(Sampler.corrected(scheduler: s, predictor: fake, table: t, settings: settings))
                // Manual loop: ε̃ = (ε − b)/(1 + k); σ′ from s_t = σ_q/(1 + k).
                let r = seededRun(shape: shape, seed: 5)
                var x = r.xT
                for (i, ts) in s.timesteps.enumerated() {
                    let eps = try fake.predict(x, timestep: ts, stepIndex: i, conditioning: .none)
                    let e2 = Tensor(shape: eps.shape)
                    for j in 0..<eps.count { e2.data[j] = (eps.data[j] - t.bias[i][j % 3]) / (1 + t.k[i]) }
                    let z: Tensor? = s.injectsNoise(at: i) ? r.noise(i, x.shape) : nil
                    let sig = VarianceCalibration.calibratedSigma(scheduler: s, index: i, residualStd: t.sigmaQ[i] / (1 + t.k[i]), mode: mode)
                    if s.sigma(at: i) == 0 { XCTAssertEqual(sig, 0) } else { XCTAssertLessThan(sig, s.sigma(at: i)) }
                    x = s.step(modelOutput: e2, index: i, sample: x, noise: z, sigma: sig)
                }
                XCTAssertEqual(corrected, x.array, "eta \(eta) \(mode)")
                let plain = try run(Sampler(scheduler: s, predictor: fake))
                XCTAssertNotEqual(corrected, plain)
            }
        }
    }

    func testComponentsAndD2Formula() throws {
        let eps = Tensor(shape: [2, 2, 2, 3], values: (0..<24).map { Float($0) * 0.1 - 1 })
        var t = makeTable(timesteps: [7], k: [0.25], sigmaQ: [0.1], bias: [[0.1, -0.2, 0.3]])
        t.d2Slope = [0.2]; t.d2Intercept = [[0.01, 0.02, -0.03]]; t.d2Sigma = [0.05]
        func apply(_ settings: CorrectionSettings) throws -> [Float] {
            try CorrectedPredictor(wrapping: ConstantPredictor(eps), table: t, settings: settings)
                .predict(eps, timestep: 7, stepIndex: 0, conditioning: .none).array
        }
        let e = eps.array
        XCTAssertEqual(try apply(CorrectionSettings(components: [.cnc, .bias])), e.indices.map { (e[$0] - t.bias[0][$0 % 3]) / 1.25 })
        XCTAssertEqual(try apply(CorrectionSettings(components: [.cnc])), e.map { $0 / 1.25 })
        XCTAssertEqual(try apply(CorrectionSettings(components: [.bias])), e.indices.map { e[$0] - t.bias[0][$0 % 3] })
        XCTAssertEqual(try apply(CorrectionSettings(method: .d2, components: [.cnc, .bias])),
                       e.indices.map { e[$0] - (0.2 * e[$0] + t.d2Intercept[0][$0 % 3]) })
        // Residual std for VSC.
        XCTAssertEqual(t.residualStd(row: 0, settings: CorrectionSettings()), 0.1 / 1.25)
        XCTAssertEqual(t.residualStd(row: 0, settings: CorrectionSettings(components: [.bias, .vsc])), 0.1)
        XCTAssertEqual(t.residualStd(row: 0, settings: CorrectionSettings(method: .d2)), 0.05)
        // Channel mismatch throws.
        let wrong = Tensor(shape: [1, 2, 2, 4])
        XCTAssertThrowsError(try CorrectedPredictor(wrapping: ConstantPredictor(wrong), table: t).predict(wrong, timestep: 7, stepIndex: 0, conditioning: .none)) {
            XCTAssertEqual($0 as? CorrectionError, .channelMismatch(expected: 3, got: 4))
        }
    }
}
