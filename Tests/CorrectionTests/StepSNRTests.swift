import Correction
import Diffusion
import XCTest

/// SNR^F and the step-aware mixed-precision rule.
final class StepSNRTests: XCTestCase {
    let snrF: [Double] = [0.01, 0.1, 1, 5, 20, 100, 400]

    func testSingleSwitchAtFirstFailure() {
        let p = StepSNR.plan(cheapSNRQ: [10, 10, 10, 10, 10, 10, 10], snrF: snrF, strongSNRQ: [1000, 1000, 1000, 1000, 1000, 1000, 300])
        XCTAssertEqual(p.schemes, [0, 0, 0, 0, 1, 1, 1])
        XCTAssertEqual(p.switchIndex, 4)
        XCTAssertEqual(p.rho, 1)
        XCTAssertFalse(p.generalized)
        XCTAssertEqual(p.strongDeficit, [6])
        // One switch only: a later step that would pass again stays strong.
        let q = StepSNR.plan(cheapSNRQ: [10, 0.05, 10, 10, 1000, 1000, 1000], snrF: snrF)
        XCTAssertEqual(q.schemes, [0, 1, 1, 1, 1, 1, 1])
        // Equality counts as cheap.
        XCTAssertEqual(StepSNR.switchIndex(snrQ: [0.01, 0.1, 1, 4.9, 20, 100, 400], snrF: snrF), 3)
    }

    func testThresholdGeneralizationHitsRequestedFraction() {
        // Cheap SNR^Q always above SNR^F: ρ = 1 never switches.
        let cheap: [Double] = [50, 60, 70, 80, 300, 1000, 3000]   // ratios 5000, 600, 70, 16, 15, 10, 7.5
        XCTAssertEqual(StepSNR.plan(cheapSNRQ: cheap, snrF: snrF).switchIndex, 7)
        let half = StepSNR.plan(cheapSNRQ: cheap, snrF: snrF, targetCheapFraction: 0.5)   // round(3.5) = 4
        XCTAssertTrue(half.generalized)
        XCTAssertEqual(half.switchIndex, 4)
        XCTAssertEqual(half.schemes, [0, 0, 0, 0, 1, 1, 1])
        XCTAssertEqual(half.cheapFraction, 4.0 / 7.0)
        XCTAssertEqual(half.rho, 16)                          // min over the first 4 ratios (80/5)
        XCTAssertEqual(StepSNR.plan(cheapSNRQ: cheap, snrF: snrF, rho: half.rho), StepSNR.plan(cheapSNRQ: cheap, snrF: snrF, rho: 16))
        for (f, n) in [(0.0, 0), (1.0, 7), (0.3, 2), (0.86, 6)] {
            XCTAssertEqual(StepSNR.plan(cheapSNRQ: cheap, snrF: snrF, targetCheapFraction: f).switchIndex, n, "fraction \(f)")
        }
        // Degenerate the other way: the cheap scheme fails at step 0.
        let low = [Double](repeating: 1e-3, count: 10), f10 = (0..<10).map { Double($0 + 1) }
        XCTAssertEqual(StepSNR.plan(cheapSNRQ: low, snrF: f10).switchIndex, 0)
        XCTAssertEqual(StepSNR.plan(cheapSNRQ: low, snrF: f10, targetCheapFraction: 0.3).switchIndex, 3)
        // A non-degenerate rule is kept as is.
        XCTAssertFalse(StepSNR.plan(cheapSNRQ: [10, 10, 10, 10, 10, 10, 10], snrF: snrF, targetCheapFraction: 0.9).generalized)
        // Ties: equal leading ratios cannot be split, the next achievable count is used.
        XCTAssertEqual(StepSNR.plan(cheapSNRQ: [5, 5, 5, 1], snrF: [1, 1, 1, 1], targetCheapFraction: 0.25).switchIndex, 3)
    }

    func testSNRFFromScheduler() throws {
        let s = try DDIMScheduler(config: .ddimDefault, steps: 20, eta: 0)
        let f = StepSNR.snrF(scheduler: s)
        let ac = SchedulerConfig.ddimDefault.alphasCumprod()
        XCTAssertEqual(f.count, 20)
        XCTAssertEqual(f[0], Double(ac[s.timesteps[0]]) / (1 - Double(ac[s.timesteps[0]])))
        XCTAssertEqual(f, f.sorted(), "SNR^F grows along the sampling order")
    }
}
