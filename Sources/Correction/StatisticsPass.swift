//===--- StatisticsPass.swift - paired FP/quantized predictions on FP trajectories ---===//
//
// PTQD's statistics collection (spec §5.1): run the full-precision sampler; at every step evaluate
// the FP and each quantized predictor on the same x_t (same labels, same guidance: both guided),
// accumulate (ε_fp, Δ = ε_q − ε_fp) per step, and advance the trajectory with ε_fp. Streaming:
// memory does not grow with the number of trajectories. Trajectory noise is seeded per image.
//
//===----------------------------------------------------------------------===//

import Diffusion
import Foundation
import TensorCore

/// Settings of one statistics pass.
public struct StatisticsOptions: Codable, Equatable, Sendable {
    /// FP trajectories (images) to run.
    public var trajectories: Int = 256
    /// Images per batch.
    public var batch: Int = 32
    public var seed: UInt64 = 0
    public init() {}
}

public enum StatisticsPass {
    /// Collects noise statistics of each quantized predictor against the FP predictor.
    /// - Parameters:
    ///   - scheduler: the sampler the statistics are for (its timesteps are the table's rows); a multistep solver
    ///     runs its FP trajectory with its own history, as sampling does.
    ///   - fp / quantized: guided predictors (same guidance scale and null form).
    ///   - conditioning: conditioning of trajectories `range`.
    ///   - shape: `[H, W, C]` of one sample.
    ///   - images: the trajectories to run (default: all, `0..<options.trajectories`); a sub-range runs exactly those
    ///     trajectories of the whole pass (same noise and conditioning: both depend only on the trajectory index).
    ///   - recordSamples: keep every sample's sums (`NoiseStatistics.samples(at:)`) for a bit-exact merge.
    ///   - progress: (images·steps done, total), over `images`.
    /// - Returns: one `NoiseStatistics` per quantized predictor.
    public static func collect(scheduler: DiffusionScheduler, fp: NoisePredictor, quantized: [NoisePredictor],
                               conditioning: (Range<Int>) throws -> Conditioning, shape: [Int], options: StatisticsOptions,
                               images: Range<Int>? = nil, recordSamples: Bool = false,
                               progress: ((Int, Int) -> Void)? = nil) throws -> [NoiseStatistics] {
        guard options.trajectories >= 1, options.batch >= 1 else {
            throw CorrectionError.invalid("statistics need --stats-trajectories >= 1 and a batch >= 1")
        }
        let images = images ?? 0..<options.trajectories
        guard images.lowerBound >= 0, images.upperBound <= options.trajectories else {
            throw CorrectionError.invalid("statistics trajectories \(images) are outside 0..<\(options.trajectories)")
        }
        let steps = scheduler.timesteps.count
        let stats = quantized.map { _ in NoiseStatistics(timesteps: scheduler.timesteps, channels: shape[2], recordSamples: recordSamples) }
        let noiseSeed = options.seed ^ 0x57A7_5000_0000_0000  // distinct from evaluation and calibration noise
        var done = 0
        let sampler = Sampler(scheduler: scheduler, predictor: fp)
        try sampler.generate(images: images, batch: options.batch, seed: noiseSeed, shape: shape,
                             conditioning: conditioning, hooks: { range in
            let c = (try? conditioning(range)) ?? .none
            return SamplerHooks(modelOutput: { info, x, epsFP in
                for (s, q) in zip(stats, quantized) {
                    let epsQ = try q.predict(x, timestep: info.timestep, stepIndex: info.index, conditioning: c)
                    guard epsQ.isFinite else { throw CorrectionError.invalid("the quantized model produced NaN/Inf at step \(info.index) (t = \(info.timestep))") }
                    s.add(index: info.index, epsFP: epsFP, epsQ: epsQ)
                }
                return epsFP
            }, didStep: { _, _ in
                done += range.count
                progress?(done, images.count * steps)
            })
        }, onBatch: { _, _ in })
        return stats
    }
}
