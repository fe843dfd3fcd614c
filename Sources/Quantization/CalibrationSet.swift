//===--- CalibrationSet.swift - timestep-aware calibration inputs ------------===//
//
// Q-Diffusion-style calibration: run the full-precision sampler for a number of trajectories at
// the sampler settings the model will be used with, keep x_t before every step, and draw records
// (x_t, t, class) uniformly across steps. Under classifier-free guidance each record is two UNet
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

/// UNet input rows for calibration: `x: [R, H, W, C]`, one timestep and (optional) label per row.
public struct CalibrationSet {
    public let x: Tensor
    public let timesteps: [Float]
    public let labels: [Int]?
    public var rows: Int { x.shape[0] }

    public init(x: Tensor, timesteps: [Float], labels: [Int]?) {
        self.x = x; self.timesteps = timesteps; self.labels = labels
    }

    /// Rows `range` as a UNet call.
    func batch(_ range: Range<Int>) -> (Tensor, [Float], ClassCondition) {
        (x.slice(batch: range), Array(timesteps[range]), labels.map { .labels(Array($0[range])) } ?? .none)
    }

    /// Runs the FP sampler and draws the calibration records.
    /// - progress: called with (images·steps done, total).
    public static func collect(model: DiffusionModel, options o: CalibrationOptions,
                               progress: ((Int, Int) -> Void)? = nil) throws -> CalibrationSet {
        try o.validate()
        let unet = model.unet, cfg = unet.config
        let guided = try GuidedUNet(unet: unet, guidance: unet.isClassConditional ? o.settings.guidance : 1, nullClass: o.settings.nullClass)
        let scheduler = try Sampler.makeScheduler(o.settings, config: model.scheduler)
        let sampler = Sampler(scheduler: scheduler, predictor: guided)
        let steps = scheduler.timesteps.count
        let (h, w, c) = (cfg.sampleHeight, cfg.sampleWidth, cfg.inChannels)
        let per = h * w * c
        let labels = unet.isClassConditional ? balancedLabels(o.trajectories, classes: unet.realClassCount(nullClass: guided.nullClass)) : nil
        // states[step] = x_t of every trajectory at that step, [T · per]
        var states = [[Float]](repeating: [Float](repeating: 0, count: o.trajectories * per), count: steps)
        let noiseSeed = o.seed ^ 0x00CA_11B7_A710_0000  // calibration noise never equals evaluation noise of the same seed
        var done = 0
        for start in stride(from: 0, to: o.trajectories, by: o.batch) {
            let range = start..<min(start + o.batch, o.trajectories)
            let noise = BatchNoise(seed: noiseSeed, indices: range)
            let xT = noise.next(shape: [range.count, h, w, c])
            func store(_ step: Int, _ x: Tensor) {
                states[step].withUnsafeMutableBufferPointer { p in
                    (p.baseAddress! + range.lowerBound * per).update(from: x.data, count: range.count * per)
                }
            }
            store(0, xT)
            _ = try sampler.sample(from: xT, labels: labels.map { Array($0[range]) }, noise: { _, s in noise.next(shape: s) },
                                   onStep: { i, x in
                                       if i + 1 < steps { store(i + 1, x) }
                                       done += range.count
                                       progress?(done, o.trajectories * steps)
                                   })
        }
        // Draw records stratified over steps, trajectories at random (seeded).
        var rng = GaussianStream(seed: o.seed, index: 0xCA11B)
        let twoHalves = unet.isClassConditional && guided.guidance != 1
        let rowsPerRecord = twoHalves ? 2 : 1
        let x = Tensor(shape: [o.samples * rowsPerRecord, h, w, c])
        var ts = [Float](repeating: 0, count: x.shape[0])
        var rowLabels: [Int]? = labels == nil ? nil : [Int](repeating: 0, count: x.shape[0])
        for r in 0..<o.samples {
            let step = stepOfRecord(r, records: o.samples, steps: steps)
            let traj = Int(rng.nextUInt64() % UInt64(o.trajectories))
            for half in 0..<rowsPerRecord {
                let row = half * o.samples + r   // unconditional halves first, as the guided sampler batches them
                states[step].withUnsafeBufferPointer { p in
                    (x.data + row * per).update(from: p.baseAddress! + traj * per, count: per)
                }
                ts[row] = Float(scheduler.timesteps[step])
                if let l = labels { rowLabels![row] = (twoHalves && half == 0) ? guided.nullClass! : l[traj] }
            }
        }
        return CalibrationSet(x: x, timesteps: ts, labels: rowLabels)
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
