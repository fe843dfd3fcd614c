import Correction
import Diffusion
import Foundation
import TensorCore
import XCTest

/// Spec §8 synthetic recovery: ε ~ N(m_c, 1), Δ = k·ε + N(μ_c, σ²), several steps.
final class NoiseStatisticsTests: XCTestCase {
    // Per-channel ε means orthogonal to every μ (so the pooled slope is unbiased): m = (0.5, −0.5, 0),
    // μ = (a, a, b).
    static let epsMean: [Float] = [0.5, -0.5, 0]
    static let stepSpecs: [(k: Float, mu: [Float], sigma: Float)] = [
        (0.2, [0.1, 0.1, -0.2], 0.1),
        (0.05, [-0.05, -0.05, 0.02], 0.3),
        (-0.1, [0.3, 0.3, 0.1], 0.05),
    ]
    static let timesteps = [801, 401, 1]
    static let samplesPerStep = 400

    /// All data per step, generated once (deterministic).
    static let data: [(fp: Tensor, q: Tensor)] = {
        var rng = GaussianStream(seed: 7, index: 0)
        return stepSpecs.map { s in
            syntheticPair(samples: samplesPerStep, epsMean: epsMean, k: s.k, mu: s.mu, sigma: s.sigma, rng: &rng)
        }
    }()

    func oneBatchStatistics() -> NoiseStatistics {
        let stats = NoiseStatistics(timesteps: Self.timesteps, channels: 3)
        for (i, d) in Self.data.enumerated() { stats.add(index: i, epsFP: d.fp, epsQ: d.q) }
        return stats
    }

    /// Expected σ_q: E[s²] = σ² + (k − k_applied)² + (population variance over channels of the residual's
    /// channel means)·n/(n−1); E[s] ≈ √E[s²] for n = 192.
    func expectedSigma(_ s: (k: Float, mu: [Float], sigma: Float), kApplied: Float) -> Double {
        let dk = Double(s.k - kApplied)
        let means = (0..<3).map { Double(s.mu[$0]) + dk * Double(Self.epsMean[$0]) }
        let avg = means.reduce(0, +) / 3
        let spread = means.reduce(0) { $0 + ($1 - avg) * ($1 - avg) } / 3 * 192 / 191
        return (Double(s.sigma * s.sigma) + dk * dk + spread).squareRoot()
    }

    func testFitRecoversParametersBothBiasModes() {
        let stats = oneBatchStatistics()
        let residual = stats.fit(FitOptions(biasMode: .residual))
        let total = stats.fit(FitOptions(biasMode: .total))
        XCTAssertEqual(residual.timesteps, Self.timesteps)
        XCTAssertEqual(residual.count, [400, 400, 400])
        for (i, s) in Self.stepSpecs.enumerated() {
            let kApplied = max(s.k, 0)
            XCTAssertEqual(residual.kRaw[i], s.k, accuracy: 0.01, "k at step \(i)")
            XCTAssertEqual(residual.k[i], max(residual.kRaw[i], 0), "clamped k at step \(i)")
            XCTAssertEqual(Double(residual.sigmaQ[i]), expectedSigma(s, kApplied: kApplied),
                           accuracy: 0.02 * expectedSigma(s, kApplied: kApplied), "σ_q at step \(i)")
            // The grid-interpolated σ_q equals the exact mean of per-sample stds.
            let exact = bruteForceSigmaQ([Self.data[i]], k: Double(residual.k[i]))
            XCTAssertEqual(Double(residual.sigmaQ[i]), exact, accuracy: 1e-5 * exact, "σ_q interpolation at step \(i)")
            // Channel means of ε in this sample.
            let fp = Self.data[i].fp
            let perChannel = Double(fp.count / 3)
            let epsChannelMean = (0..<3).map { c in stride(from: c, to: fp.count, by: 3).reduce(0.0) { $0 + Double(fp.data[$1]) } / perChannel }
            for c in 0..<3 {
                // Residual mode: μ_c (+ the unremoved (k − k_applied)·m_c when k was clamped).
                let expectedResidual = s.mu[c] + (s.k - kApplied) * Self.epsMean[c]
                XCTAssertEqual(residual.bias[i][c], expectedResidual, accuracy: 0.01, "residual bias [\(i)][\(c)]")
                // Total mode: μ_c + k·m_c; exactly residual + k_applied·mean_c(ε).
                XCTAssertEqual(total.bias[i][c], s.mu[c] + s.k * Self.epsMean[c], accuracy: 0.01, "total bias [\(i)][\(c)]")
                XCTAssertEqual(Double(total.bias[i][c]), Double(residual.bias[i][c]) + Double(residual.k[i]) * epsChannelMean[c],
                               accuracy: 1e-6, "total − residual = k·mean ε at [\(i)][\(c)]")
            }
            XCTAssertEqual(Double(residual.snrQ[i]), stats.snrQ(at: i), accuracy: 1e-6 * stats.snrQ(at: i))
        }
        XCTAssertEqual(residual.k[2], 0, "negative k clamps to 0")
        XCTAssertEqual(residual.biasMode, .residual)
        XCTAssertEqual(total.biasMode, .total)
    }

    func testNegativeKKeptWithoutClamp() {
        let stats = oneBatchStatistics()
        let t = stats.fit(FitOptions(biasMode: .residual, clampK: false))
        let s = Self.stepSpecs[2]
        XCTAssertEqual(t.k[2], s.k, accuracy: 0.01)
        XCTAssertEqual(t.k[2], t.kRaw[2])
        XCTAssertFalse(t.clampK)
        XCTAssertEqual(Double(t.sigmaQ[2]), expectedSigma(s, kApplied: s.k), accuracy: 0.02 * Double(s.sigma))
        for c in 0..<3 { XCTAssertEqual(t.bias[2][c], s.mu[c], accuracy: 0.01) }
    }

    func testStreamingBatchesEqualOneBatchAndMergeMatches() {
        let one = oneBatchStatistics()
        let sizes = [1, 13, 50, 2, 100, 34, 200]   // 7 uneven batches, 400 samples
        XCTAssertEqual(sizes.reduce(0, +), Self.samplesPerStep)
        let streamed = NoiseStatistics(timesteps: Self.timesteps, channels: 3)
        let left = NoiseStatistics(timesteps: Self.timesteps, channels: 3)
        let right = NoiseStatistics(timesteps: Self.timesteps, channels: 3)
        for (i, d) in Self.data.enumerated() {
            var start = 0
            for (b, n) in sizes.enumerated() {
                let fp = d.fp.slice(batch: start..<(start + n)), q = d.q.slice(batch: start..<(start + n))
                streamed.add(index: i, epsFP: fp, epsQ: q)
                (b < 3 ? left : right).add(index: i, epsFP: fp, epsQ: q)
                start += n
            }
        }
        // Per-sample sums are added in the same order, so batching changes nothing, bit for bit.
        XCTAssertEqual(streamed.steps, one.steps)
        XCTAssertEqual(streamed.fit(FitOptions(biasMode: .residual)), one.fit(FitOptions(biasMode: .residual)))
        left.merge(right)
        let a = left.fit(FitOptions(biasMode: .residual)), b = one.fit(FitOptions(biasMode: .residual))
        XCTAssertEqual(left.steps.map(\.samples), one.steps.map(\.samples))
        func flat(_ t: CorrectionTable) -> [Double] {
            (t.k + t.sigmaQ + t.bias.flatMap { $0 } + t.snrQ + t.d2Slope + t.d2Sigma + t.d2Intercept.flatMap { $0 }).map(Double.init)
        }
        for (x, y) in zip(flat(a), flat(b)) { XCTAssertEqual(x, y, accuracy: 1e-5 * max(abs(y), 1e-3)) }
    }

    /// The sharded statistics merge: shards record each sample's sums; replaying them in order, shard after shard,
    /// gives the single stream's sums bit for bit (unlike `merge`, which adds totals), and the records survive
    /// `values` / `init(values:)` unchanged.
    func testRecordedSamplesReplayedInOrderEqualOneStreamBitForBit() {
        let one = oneBatchStatistics()
        let cuts = [0, 133, 134, 266, 400]   // 4 shards of uneven size
        let shards = (0..<4).map { _ in NoiseStatistics(timesteps: Self.timesteps, channels: 3, recordSamples: true) }
        for (i, d) in Self.data.enumerated() {
            for (s, shard) in shards.enumerated() {
                let r = cuts[s]..<cuts[s + 1]
                shard.add(index: i, epsFP: d.fp.slice(batch: r), epsQ: d.q.slice(batch: r))
            }
        }
        let replayed = NoiseStatistics(timesteps: Self.timesteps, channels: 3)
        for i in Self.timesteps.indices {
            for shard in shards {
                XCTAssertEqual(shard.samples(at: i).count, shard.sampleCount(at: i))
                for x in shard.samples(at: i) {
                    let back = NoiseStatistics.SampleSums(values: x.values[...], channels: 3)
                    XCTAssertEqual(back, x)
                    replayed.add(index: i, sample: back!)
                }
            }
        }
        XCTAssertEqual(replayed.steps, one.steps)
        for mode in BiasMode.allCases { XCTAssertEqual(replayed.fit(FitOptions(biasMode: mode)), one.fit(FitOptions(biasMode: mode))) }
        XCTAssertTrue(one.samples(at: 0).isEmpty, "no records unless asked")
        XCTAssertNil(NoiseStatistics.SampleSums(values: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][...], channels: 3), "one element is not a sample")
    }

    func testResidualStdOutsideGridFallsBackToRMS() {
        let stats = oneBatchStatistics()
        for k in [-3.0, 2.5] {
            let rms = bruteForceRMSSigma([Self.data[0]], k: k)
            XCTAssertEqual(stats.residualStd(at: 0, k: k), rms, accuracy: 1e-9 * rms)
            XCTAssertGreaterThanOrEqual(rms, bruteForceSigmaQ([Self.data[0]], k: k))
        }
        // Grid points and interior points agree with the exact mean of stds.
        for k in [-2.0, -0.7321, 0.0, 0.2, 1.99999, 2.0] {
            let exact = bruteForceSigmaQ([Self.data[1]], k: k)
            XCTAssertEqual(stats.residualStd(at: 1, k: k), exact, accuracy: 1e-6 * exact, "k = \(k)")
        }
    }

    /// The documented Hermite bound (h·√c/m)⁴/128 holds for a small residual std (m = 0.01 → 4.9e-4).
    func testResidualStdAccuracyForSmallResidual() {
        var rng = GaussianStream(seed: 21, index: 0)
        let d = syntheticPair(samples: 50, epsMean: [0, 0, 0], k: 0.1234, mu: [0, 0, 0], sigma: 0.01, rng: &rng)
        let stats = NoiseStatistics(timesteps: [10], channels: 3)
        stats.add(index: 0, epsFP: d.fp, epsQ: d.q)
        var worst = 0.0
        for k in stride(from: 0.1, through: 0.15, by: 0.0007) {
            let exact = bruteForceSigmaQ([d], k: k)
            worst = max(worst, abs(stats.residualStd(at: 0, k: k) - exact) / exact)
        }
        XCTAssertLessThan(worst, 0.5 * 0.5 * 0.5 * 0.5 / 128)
        let fitted = stats.fit()
        XCTAssertEqual(fitted.k[0], 0.1234, accuracy: 0.002)
        XCTAssertEqual(fitted.sigmaQ[0], 0.01, accuracy: 0.0002)
    }

    func testEmptyStepAndSNRF() throws {
        let stats = NoiseStatistics(timesteps: [900, 500], channels: 3)
        stats.add(index: 0, epsFP: Self.data[0].fp, epsQ: Self.data[0].q)
        let ac = SchedulerConfig.ddimDefault.alphasCumprod()
        let t = stats.fit(FitOptions(alphasCumprod: ac))
        XCTAssertEqual(t.count, [400, 0])
        XCTAssertEqual(t.k[1], 0); XCTAssertEqual(t.sigmaQ[1], 0); XCTAssertEqual(t.bias[1], [0, 0, 0]); XCTAssertEqual(t.snrQ[1], 0)
        XCTAssertEqual(Double(t.snrF![0]), Double(ac[900]) / (1 - Double(ac[900])), accuracy: 1e-9)
        XCTAssertNoThrow(try t.validate())
    }
}

/// D2-DPM's joint-Gaussian conditional-mean correction.
final class D2RegressionTests: XCTestCase {
    func testConditionalMeanMatchesAnalyticRegressionAndReducesError() throws {
        let a: Float = 0.15, sigma: Float = 0.2, mu: [Float] = [0.05, -0.1, 0.2]
        var rng = GaussianStream(seed: 11, index: 3)
        let d = syntheticPair(samples: 600, epsMean: [0, 0, 0], k: a, mu: mu, sigma: sigma, rng: &rng)
        let stats = NoiseStatistics(timesteps: [500], channels: 3)
        stats.add(index: 0, epsFP: d.fp, epsQ: d.q)
        let table = stats.fit(FitOptions(biasMode: .residual))

        // Analytic: x = ε_q = (1+a)ε + μ_c + σz, y = Δ = aε + μ_c + σz.
        let A = Double(a), S2 = Double(sigma * sigma)
        let cov = A * (1 + A) + S2, varX = (1 + A) * (1 + A) + S2, varY = A * A + S2
        let beta = cov / varX
        let condStd = (varY - cov * cov / varX).squareRoot()
        XCTAssertEqual(Double(table.d2Slope[0]), beta, accuracy: 0.01)
        XCTAssertEqual(Double(table.d2Sigma[0]), condStd, accuracy: 0.02 * condStd)
        for c in 0..<3 { XCTAssertEqual(Double(table.d2Intercept[0][c]), Double(mu[c]) * (1 - beta), accuracy: 0.01) }

        // Exact pooled within-channel OLS from the raw data.
        var sxx = 0.0, sxy = 0.0, syy = 0.0
        var xs = [Double](repeating: 0, count: 3), ys = [Double](repeating: 0, count: 3)
        for i in 0..<d.fp.count {
            let x = Double(d.q.data[i]), y = Double(d.q.data[i]) - Double(d.fp.data[i])
            sxx += x * x; sxy += x * y; syy += y * y; xs[i % 3] += x; ys[i % 3] += y
        }
        let nc = Double(d.fp.count / 3)
        for c in 0..<3 { sxx -= xs[c] * xs[c] / nc; sxy -= xs[c] * ys[c] / nc; syy -= ys[c] * ys[c] / nc }
        let exactBeta = sxy / sxx
        XCTAssertEqual(Double(table.d2Slope[0]), exactBeta, accuracy: 1e-6)
        for c in 0..<3 { XCTAssertEqual(Double(table.d2Intercept[0][c]), (ys[c] - exactBeta * xs[c]) / nc, accuracy: 1e-6) }
        let exactStd = ((syy - exactBeta * sxy) / (Double(d.fp.count) - 4)).squareRoot()
        XCTAssertEqual(Double(table.d2Sigma[0]), exactStd, accuracy: 1e-6 * exactStd)

        // Applying it lowers E‖ε̃ − ε_fp‖² from E‖Δ‖² to about d2Sigma².
        let p = try CorrectedPredictor(wrapping: ConstantPredictor(d.q), table: table,
                                       settings: CorrectionSettings(method: .d2, components: [.cnc, .bias]))
        let corrected = try p.predict(d.q, timestep: 500, stepIndex: 0, conditioning: .none)
        var before = 0.0, after = 0.0
        for i in 0..<d.fp.count {
            let e = Double(d.fp.data[i])
            before += (Double(d.q.data[i]) - e) * (Double(d.q.data[i]) - e)
            after += (Double(corrected.data[i]) - e) * (Double(corrected.data[i]) - e)
        }
        before /= Double(d.fp.count); after /= Double(d.fp.count)
        XCTAssertLessThan(after, 0.5 * before)
        XCTAssertEqual(after, Double(table.d2Sigma[0] * table.d2Sigma[0]), accuracy: 1e-3 * after)

        // One-intercept variant: plain OLS slope.
        let single = stats.fit(FitOptions(d2PerChannelIntercept: false))
        XCTAssertEqual(Double(single.d2Slope[0]), beta, accuracy: 0.02)
        XCTAssertEqual(Set(single.d2Intercept[0]).count, 1)
        XCTAssertGreaterThanOrEqual(single.d2Sigma[0], table.d2Sigma[0])
    }
}
