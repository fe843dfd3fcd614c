import Correction
import Diffusion
import Foundation
import TensorCore
import XCTest

/// Row order, the released code's ascending-t convention, JSON and validation.
final class CorrectionTableTests: XCTestCase {
    /// LDM-style 20-step DDIM (timesteps 951, 901, …, 1) with a distinct bias per step.
    func ldmTable() throws -> (DDIMScheduler, CorrectionTable) {
        var config = SchedulerConfig.ddimDefault
        config.stepsOffset = 1
        let s = try DDIMScheduler(config: config, steps: 20, eta: 0)
        XCTAssertEqual(s.timesteps.first, 951); XCTAssertEqual(s.timesteps.last, 1)
        let stats = NoiseStatistics(timesteps: s.timesteps, channels: 3)
        var rng = GaussianStream(seed: 3, index: 0)
        for i in s.timesteps.indices {
            let d = syntheticPair(samples: 2, h: 2, w: 2, epsMean: [0, 0, 0], k: 0,
                                  mu: [Float(i), Float(-i), Float(s.timesteps[i])], sigma: 0, rng: &rng)
            stats.add(index: i, epsFP: d.fp, epsQ: d.q)
        }
        return (s, stats.fit(FitOptions(alphasCumprod: config.alphasCumprod())))
    }

    func testRowsAreInSamplingOrderAndMapToReleasedAscendingOrder() throws {
        let (s, t) = try ldmTable()
        XCTAssertEqual(t.timesteps, s.timesteps)
        // The last sampling step is the smallest t, and the released code's row 0.
        XCTAssertEqual(t.row(forTimestep: 1), 19)
        XCTAssertEqual(t.row(forTimestep: 951), 0)
        XCTAssertNil(t.row(forTimestep: 2))
        XCTAssertEqual(CorrectionTable.releasedCodeRow(forLoopIndex: 19, steps: 20), 0)
        XCTAssertEqual(CorrectionTable.releasedCodeRow(forLoopIndex: 0, steps: 20), 19)
        XCTAssertEqual(t.rowsInAscendingT, Array((0..<20).reversed()))
        XCTAssertEqual(t.biasAscendingT[0], t.bias[19])
        for i in 0..<20 {
            XCTAssertEqual(t.bias[i][0], Float(i), accuracy: 1e-5)
            XCTAssertEqual(t.bias[i][2], Float(s.timesteps[i]), accuracy: 1e-3)
            XCTAssertEqual(t.biasAscendingT[CorrectionTable.releasedCodeRow(forLoopIndex: i, steps: 20)], t.bias[i])
        }
        // Import from the released code's layout reproduces the rows.
        let kDict = Dictionary(uniqueKeysWithValues: s.timesteps.enumerated().map { ($1, Float($0) * 0.01 - 0.05) })
        let sDict = Dictionary(uniqueKeysWithValues: s.timesteps.enumerated().map { ($1, Float($0) * 0.001) })
        let imported = try CorrectionTable(releasedCode: s.timesteps, k: kDict, sigmaQ: sDict, biasAscendingT: t.biasAscendingT)
        XCTAssertEqual(imported.bias, t.bias)
        XCTAssertEqual(imported.k[0], 0, "k ≤ 0 is applied as 0")
        XCTAssertEqual(imported.k[19], 0.14, accuracy: 1e-6)
        XCTAssertEqual(imported.sigmaQ[19], 0.019, accuracy: 1e-7)
        // The predictor picks the row by loop position and falls back to the timestep.
        let eps = Tensor(shape: [1, 1, 1, 3], values: [0, 0, 0])
        let p = try CorrectedPredictor(wrapping: ConstantPredictor(eps), table: t, settings: CorrectionSettings(components: .bias))
        XCTAssertEqual(try p.predict(eps, timestep: 1, stepIndex: 19, conditioning: .none).array, t.bias[19].map { -$0 })
        XCTAssertEqual(try p.predict(eps, timestep: 1, stepIndex: 0, conditioning: .none).array, t.bias[19].map { -$0 })
        XCTAssertThrowsError(try p.predict(eps, timestep: 2, stepIndex: 19, conditioning: .none)) {
            XCTAssertEqual($0 as? CorrectionError, .timestepNotInTable(2))
        }
    }

    func testJSONRoundTripAndValidation() throws {
        let (_, t) = try ldmTable()
        XCTAssertNotNil(t.snrF)
        let back = try CorrectionTable(jsonData: t.jsonData())
        XCTAssertEqual(back, t)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("ptqd-table-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: url) }
        try t.write(to: url)
        XCTAssertEqual(try CorrectionTable(contentsOf: url), t)

        var bad = t
        bad.k.removeLast()
        XCTAssertThrowsError(try CorrectionTable(jsonData: bad.jsonData())) { XCTAssertFalse("\($0)".contains("\n")); XCTAssertTrue("\($0)".contains("k has 19")) }
        bad = t; bad.k[0] = -1
        XCTAssertThrowsError(try bad.validate())
        bad = t; bad.bias[3] = [0, 0]
        XCTAssertThrowsError(try bad.validate())
        bad = t; bad.sigmaQ[0] = .nan
        XCTAssertThrowsError(try CorrectedPredictor(wrapping: ConstantPredictor(Tensor(shape: [1, 1, 1, 3])), table: bad))
    }
}
