//===--- CalibrationSet.swift - timestep-aware calibration inputs ------------===//
//
// Q-Diffusion-style calibration: run the full-precision sampler for a number of trajectories at
// the sampler settings the model will be used with, keep x_t before every step, and draw records
// (x_t, t, conditioning) uniformly across steps. Under classifier-free guidance each record is two network
// rows, the unconditional and the conditional half, as the sampler runs them.
//
//===----------------------------------------------------------------------===//

import Diffusion
import Foundation
import TensorCore

/// Calibration settings.
public struct CalibrationOptions: Codable, Equatable, Sendable {
    /// FP sampler trajectories to run.
    public var trajectories: Int = 256
    /// (x_t, t, class) records drawn from them, stratified over steps (×2 UNet rows with guidance).
    public var samples: Int = 256
    /// Sampler the model is calibrated for.
    public var settings: SamplerSettings = SamplerSettings()
    public var seed: UInt64 = 0
    /// UNet rows per forward pass.
    public var batch: Int = 64
    /// Layers quantized per sequential pass (inputs of a layer come from the network quantized up to its group).
    public var groupSize: Int = 4
    /// im2col rows (output positions / tokens) per UNet row used for the Hessian XXᵀ of AdaRound/GPTQ.
    public var hessianPositions: Int = 32

    public init() {}

    public func validate() throws {
        guard trajectories >= 1 else { throw QuantizationError.calibration("--calib must be >= 1") }
        guard samples >= 1 else { throw QuantizationError.calibration("--calib-samples must be >= 1") }
        guard batch >= 1, groupSize >= 1, hessianPositions >= 1 else { throw QuantizationError.calibration("batch, group size and Hessian positions must be >= 1") }
    }
}

/// Network input rows for calibration: `x: [R, H, W, C]`, one timestep and one conditioning row per row.
public struct CalibrationSet {
    public let x: Tensor
    public let timesteps: [Float]
    /// `.none`, `.classes` ([R]) or `.context` ([R, L, D]).
    public let conditioning: Conditioning
    public var rows: Int { x.shape[0] }
    /// x_0 of every FP trajectory `[trajectories, H, W, C]` (the final latents a first-stage decoder calibrates on);
    /// nil when the set was built from records alone.
    public let finalSamples: Tensor?

    public init(x: Tensor, timesteps: [Float], conditioning: Conditioning, finalSamples: Tensor? = nil) {
        self.x = x; self.timesteps = timesteps; self.conditioning = conditioning; self.finalSamples = finalSamples
    }

    /// Class labels of the rows (nil unless class-conditioned).
    public var labels: [Int]? { if case let .classes(l) = conditioning { return l }; return nil }

    /// Rows `range` as a network call.
    func batch(_ range: Range<Int>) -> (Tensor, [Float], Conditioning) {
        (x.slice(batch: range), Array(timesteps[range]), conditioning.slice(range))
    }

    /// Runs the FP sampler and draws the calibration records.
    /// - Parameters:
    ///   - network / scheduler: the FP model and its scheduler config.
    ///   - conditioning: conditioning of FP trajectories `range` (nil: class-balanced labels for class-label models,
    ///     none for unconditional ones).
    ///   - progress: called with (images·steps done, total).
    ///   - nullContext: `[1, L, D]`, the unconditional context of a context-conditioned network (for guidance).
    public static func collect(network: Denoiser, scheduler schedulerConfig: SchedulerConfig, options o: CalibrationOptions,
                               conditioning: ((Range<Int>) throws -> Conditioning)? = nil, nullContext: Tensor? = nil,
                               progress: ((Int, Int) -> Void)? = nil) throws -> CalibrationSet {
        try o.validate()
        let guided = try GuidedDenoiser(network: network, guidance: o.settings.guidance, nullClass: o.settings.nullClass, nullContext: nullContext)
        let scheduler = try Sampler.makeScheduler(o.settings, config: schedulerConfig)
        let sampler = Sampler(scheduler: scheduler, predictor: guided)
        let steps = scheduler.timesteps.count
        let shape = network.sampleShape
        let per = shape.reduce(1, *)
        let trajectoryConditioning = try conditioning ?? defaultConditioning(guided.space, trajectories: o.trajectories)
        // states[step] = x_t of every trajectory at that step, [T · per]
        var states = [[Float]](repeating: [Float](repeating: 0, count: o.trajectories * per), count: steps)
        var trajectoryRows: [Conditioning] = []
        let noiseSeed = o.seed ^ 0x00CA_11B7_A710_0000  // calibration noise never equals evaluation noise of the same seed
        var done = 0
        let finals = Tensor(shape: [o.trajectories] + shape)
        try sampler.generate(images: 0..<o.trajectories, batch: o.batch, seed: noiseSeed, shape: shape,
                             conditioning: { r in let c = try trajectoryConditioning(r); trajectoryRows.append(c); return c },
                             hooks: { range in
                                 SamplerHooks(willPredict: { info, x in
                                     states[info.index].withUnsafeMutableBufferPointer { p in
                                         (p.baseAddress! + range.lowerBound * per).update(from: x.data, count: range.count * per)
                                     }
                                 }, didStep: { _, _ in
                                     done += range.count
                                     progress?(done, o.trajectories * steps)
                                 })
                             }, onBatch: { range, x0 in (finals.data + range.lowerBound * per).update(from: x0.data, count: range.count * per) })
        let all = try Conditioning.concatenate(trajectoryRows)
        // Draw records stratified over steps, trajectories at random (seeded).
        var rng = GaussianStream(seed: o.seed, index: 0xCA11B)
        let twoHalves = guided.guidance != 1 && guided.space.null != nil
        let rowsPerRecord = twoHalves ? 2 : 1
        let x = Tensor(shape: [o.samples * rowsPerRecord] + shape)
        var ts = [Float](repeating: 0, count: x.shape[0])
        var picks = [Int](repeating: 0, count: o.samples)
        for r in 0..<o.samples {
            let step = stepOfRecord(r, records: o.samples, steps: steps)
            let traj = Int(rng.nextUInt64() % UInt64(o.trajectories))
            picks[r] = traj
            for half in 0..<rowsPerRecord {
                let row = half * o.samples + r   // unconditional halves first, as the guided sampler batches them
                states[step].withUnsafeBufferPointer { p in
                    (x.data + row * per).update(from: p.baseAddress! + traj * per, count: per)
                }
                ts[row] = Float(scheduler.timesteps[step])
            }
        }
        let conditional = try gather(all, rows: picks)
        let rowConditioning = twoHalves ? try Conditioning.concatenate([guided.space.null!.rows(o.samples), conditional]) : conditional
        return CalibrationSet(x: x, timesteps: ts, conditioning: rowConditioning, finalSamples: finals)
    }

    /// Class-balanced labels (trajectory i gets class i mod K) for class-label models; `.none` otherwise.
    /// A context model needs its contexts from the caller.
    static func defaultConditioning(_ space: ConditioningSpace, trajectories: Int) throws -> (Range<Int>) throws -> Conditioning {
        switch space.kind {
        case .unconditional: return { _ in .none }
        case .classLabels:
            let labels = balancedLabels(trajectories, classes: space.realClasses)
            return { r in .classes(Array(labels[r])) }
        case .context:
            throw QuantizationError.calibration("calibrating a cross-attention model needs contexts (--calib-context FILE)")
        case .classEmbeddings:
            throw QuantizationError.calibration("this model's class embedding is 'identity' (embedding vectors, not labels): calibration cannot choose its conditioning")
        }
    }

    /// Rows `rows` of `c` (in that order).
    static func gather(_ c: Conditioning, rows: [Int]) throws -> Conditioning {
        switch c {
        case .none: return .none
        case let .classes(l): return .classes(rows.map { l[$0] })
        case let .context(t): return .context(t.gather(batch: rows))
        case let .embeddings(t): return .embeddings(t.gather(batch: rows))
        }
    }

    /// The sampler step (index into the schedule's timesteps) of calibration record `r` of `records`.
    ///
    /// With at least as many records as steps: `r % steps`, so every step is seen and step counts differ by at most
    /// one. With fewer records than steps: the records sit on `records` distinct steps spread evenly over the whole
    /// trajectory, the first and the last step included (a single record takes the middle step), so calibration
    /// never sees only the early, high-noise steps.
    public static func stepOfRecord(_ r: Int, records: Int, steps: Int) -> Int {
        precondition(steps >= 1 && records >= 1 && (0..<records).contains(r), "record \(r) of \(records) over \(steps) steps")
        if records >= steps { return r % steps }
        if records == 1 { return (steps - 1) / 2 }
        return (2 * r * (steps - 1) + (records - 1)) / (2 * (records - 1))  // round(r·(steps − 1)/(records − 1))
    }

    /// `n` labels cycling through `classes` (equal counts when n is a multiple).
    static func balancedLabels(_ n: Int, classes: Int) -> [Int] { (0..<n).map { $0 % max(classes, 1) } }
}
