import Correction
import Diffusion
import Foundation
import TensorCore
import XCTest

/// The statistics pass against its definition: FP trajectories exactly as the sampler runs them (same per-image
/// noise), every quantized predictor evaluated on the FP model's x_t, and a quantization error of known form
/// recovered by the fit. And the mixed-precision predictor picks the planned predictor at every step.
final class StatisticsPassTests: XCTestCase {
    let shape = [4, 4, 3]
    let fp = AffinePredictor(scale: 0.3, offset: [0, 0, 0])

    /// ε_q = (1 + k)·ε_fp + μ_c, exactly; records the x of every call per step. (With μ = 0, PTQD's least-squares
    /// k = Σ ε·Δ / Σ ε² is exactly k and the residual is 0; a bias is recovered in NoiseStatisticsTests.)
    final class KnownError: NoisePredictor {
        let inner: NoisePredictor, k: Float, mu: [Float]
        var seen: [Int: [Tensor]] = [:]
        init(_ inner: NoisePredictor, k: Float, mu: [Float]) { self.inner = inner; self.k = k; self.mu = mu }
        func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor {
            seen[stepIndex, default: []].append(x.copy())
            let e = try inner.predict(x, timestep: timestep, stepIndex: stepIndex, conditioning: conditioning)
            let y = Tensor(shape: e.shape)
            for i in 0..<e.count { y.data[i] = (1 + k) * e.data[i] + mu[i % mu.count] }
            return y
        }
    }

    func testTrajectoriesAreTheSamplersAndKnownErrorIsRecovered() throws {
        for eta: Float in [0, 1] {
            let s = try DDIMScheduler(config: .ddimDefault, steps: 6, eta: eta)
            let q = KnownError(fp, k: 0.08, mu: [0, 0, 0])
            var o = StatisticsOptions(); o.trajectories = 5; o.batch = 2; o.seed = 3
            var calls: [(Int, Int)] = []
            let stats = try StatisticsPass.collect(scheduler: s, fp: fp, quantized: [q], conditioning: { _ in .none }, shape: shape, options: o) {
                calls.append(($0, $1))
            }
            XCTAssertEqual(calls.last.map { $0.0 }, 5 * 6)
            // The reference trajectories: the plain sampler with the same per-image noise streams.
            let noiseSeed = o.seed ^ 0x57A7_5000_0000_0000
            for start in stride(from: 0, to: 5, by: 2) {
                let range = start..<min(start + 2, 5)
                let noise = BatchNoise(seed: noiseSeed, indices: range)
                let xT = noise.next(shape: [range.count] + shape)
                var states = [xT.array]
                _ = try Sampler(scheduler: s, predictor: fp).sample(from: xT, conditioning: .none, noise: { _, sh in noise.next(shape: sh) },
                                                                   hooks: SamplerHooks(didStep: { _, x in states.append(x.array) }))
                for i in 0..<6 {
                    let got = q.seen[i]![start / 2].array
                    XCTAssertEqual(got, states[i], "eta \(eta) batch at \(start): the quantized predictor saw the FP trajectory at step \(i)")
                }
            }
            let table = stats[0].fit()
            for i in 0..<6 {
                XCTAssertEqual(stats[0].sampleCount(at: i), 5)
                XCTAssertEqual(Double(table.k[i]), 0.08, accuracy: 1e-4, "k at step \(i)")
                XCTAssertLessThan(table.sigmaQ[i], 1e-3, "no residual beyond k·ε + μ")
            }
            // Batching does not change the statistics (to Float64 summation order).
            var o1 = o; o1.batch = 5
            let one = try StatisticsPass.collect(scheduler: s, fp: fp, quantized: [KnownError(fp, k: 0.08, mu: [0, 0, 0])],
                                                 conditioning: { _ in .none }, shape: shape, options: o1)[0].fit()
            for i in 0..<6 { XCTAssertEqual(one.k[i], table.k[i], accuracy: 1e-6); XCTAssertEqual(one.sigmaQ[i], table.sigmaQ[i], accuracy: 1e-6) }
        }
        var bad = StatisticsOptions(); bad.trajectories = 0
        XCTAssertThrowsError(try StatisticsPass.collect(scheduler: try DDIMScheduler(config: .ddimDefault, steps: 2, eta: 0), fp: fp,
                                                        quantized: [fp], conditioning: { _ in .none }, shape: shape, options: bad))
    }

    func testSteppedPredictorFollowsThePlan() throws {
        let a = ConstantPredictor(Tensor(shape: [1, 1, 1, 1], values: [1])), b = ConstantPredictor(Tensor(shape: [1, 1, 1, 1], values: [2]))
        let plan = [0, 0, 1, 1, 0]
        let stepped = SteppedPredictor(predictors: [a, b], plan: plan)
        let x = Tensor(shape: [1, 1, 1, 1])
        for (i, v) in plan.enumerated() {
            XCTAssertEqual(try stepped.predict(x, timestep: 999 - i, stepIndex: i, conditioning: .none).array, [Float(v + 1)], "step \(i)")
        }
        XCTAssertThrowsError(try stepped.predict(x, timestep: 0, stepIndex: plan.count, conditioning: .none)) { e in
            XCTAssertTrue("\(e)".contains("5 steps"), "\(e)")
        }
    }
}
