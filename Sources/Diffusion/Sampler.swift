//===--- Sampler.swift - the one sampling loop, with classifier-free guidance ---===//
//
// Every trajectory ptqd runs goes through `Sampler.sample` (one batch) or `Sampler.generate` (n images in
// batches, per-image noise): `ptqd sample` and `evaluate`, calibration (which observes x_t), the PTQD statistics
// pass (which evaluates quantized networks on the FP trajectory through the model-output hook) and the ablation.
// No other code calls a scheduler's `step`.
//
//===----------------------------------------------------------------------===//

import Foundation
import TensorCore

/// Sampler settings: scheduler, step count, eta, guidance scale, null class.
public struct SamplerSettings: Equatable, Sendable, Codable {
    public var kind: SamplerKind
    public var steps: Int
    /// DDIM's η (ignored by DDPM and DPM-Solver++).
    public var eta: Float
    /// Classifier-free guidance scale s: ε = ε_u + s·(ε_c − ε_u). 1 disables guidance.
    public var guidance: Float
    /// The label used for the unconditional half (default: the last class embedding).
    public var nullClass: Int?

    public init(kind: SamplerKind = .ddim, steps: Int = 20, eta: Float = 0, guidance: Float = 3, nullClass: Int? = nil) {
        self.kind = kind; self.steps = steps; self.eta = eta; self.guidance = guidance; self.nullClass = nullClass
    }

    /// "ddim 20 steps, eta 0.0, guidance 3.0".
    public var summary: String { "\(kind.rawValue) \(steps) steps, eta \(eta), guidance \(guidance)" }
}

/// Computes the (guided) model output for a batch at one step. `GuidedDenoiser` wraps a network; PTQD's
/// correction and the mixed-precision switch are predictors wrapping predictors.
public protocol NoisePredictor: AnyObject {
    /// - x: `[N, H, W, C]`; timestep: the DDPM timestep; stepIndex: loop position (0 = first, noisiest);
    ///   conditioning: for the N rows (`.none` for unconditional models).
    /// - Returns: guided model output `[N, H, W, C]`.
    func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor
}

/// A network with classifier-free guidance as one batched forward of 2N rows (unconditional half first).
public final class GuidedDenoiser: NoisePredictor {
    public let network: Denoiser
    /// The guidance scale in effect (1 for unconditional models whatever was asked).
    public let guidance: Float
    public let space: ConditioningSpace

    /// - nullClass: `--null-class` (nil = the model's default); nullContext: `[1, L, D]` for context models.
    public init(network: Denoiser, guidance: Float, nullClass: Int? = nil, nullContext: Tensor? = nil) throws {
        self.network = network
        let g = network.isConditional ? guidance : 1
        self.guidance = g
        space = try ConditioningSpace(kind: network.conditioningKind, requestedNullClass: nullClass, nullContext: nullContext, guidance: g)
    }

    public var nullClass: Int? { space.nullClass }

    public func predict(_ x: Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> Tensor {
        let n = x.shape[0]
        let ts = [Float](repeating: Float(timestep), count: n)
        guard network.isConditional else { return try network.forward(x, timesteps: ts, conditioning: .none) }
        try space.validate(conditioning, rows: n)
        guard guidance != 1, let null = space.null else { return try network.forward(x, timesteps: ts, conditioning: conditioning) }
        let both = try Conditioning.concatenate([null.rows(n), conditioning])
        let out = try network.forward(Tensor.concatenate(batch: [x, x]), timesteps: ts + ts, conditioning: both)
        return GuidedDenoiser.combine(out, batch: n, scale: guidance)
    }

    /// ε_u + s·(ε_c − ε_u) from a `[2N, ...]` output whose first half is unconditional.
    public static func combine(_ out: Tensor, batch n: Int, scale: Float) -> Tensor {
        let per = out.count / (2 * n)
        let eps = Tensor(shape: [n] + out.shape.dropFirst())
        for i in 0..<(n * per) {
            let u = out.data[i], c = out.data[n * per + i]
            eps.data[i] = u + scale * (c - u)
        }
        return eps
    }
}

/// Where a hook is called: loop position, timestep, and the step count.
public struct SamplerStep {
    public let index: Int
    public let timestep: Int
    public let count: Int
}

/// Observation and intervention points of the sampling loop (all optional).
public struct SamplerHooks {
    /// Sees x_t before the model runs at a step.
    public var willPredict: ((SamplerStep, Tensor) throws -> Void)?
    /// Sees (x_t, model output) and returns the output the scheduler will use (return it unchanged to observe).
    public var modelOutput: ((SamplerStep, Tensor, Tensor) throws -> Tensor)?
    /// Sees x_{t−1} after the step.
    public var didStep: ((SamplerStep, Tensor) throws -> Void)?

    public init(willPredict: ((SamplerStep, Tensor) throws -> Void)? = nil,
                modelOutput: ((SamplerStep, Tensor, Tensor) throws -> Tensor)? = nil,
                didStep: ((SamplerStep, Tensor) throws -> Void)? = nil) {
        self.willPredict = willPredict; self.modelOutput = modelOutput; self.didStep = didStep
    }
}

/// Runs a scheduler's reverse process from x_T with a noise predictor.
public struct Sampler {
    public let scheduler: DiffusionScheduler
    public let predictor: NoisePredictor
    /// Replaces the injected noise's std at a step (PTQD's variance-schedule calibration);
    /// nil keeps the scheduler's own σ_t, so the update is bit-for-bit the plain scheduler step.
    public var noiseScale: ((_ index: Int) -> Float?)?

    public init(scheduler: DiffusionScheduler, predictor: NoisePredictor, noiseScale: ((_ index: Int) -> Float?)? = nil) {
        self.scheduler = scheduler; self.predictor = predictor; self.noiseScale = noiseScale
    }

    /// Builds the scheduler named by `settings` over `config`.
    public static func makeScheduler(_ settings: SamplerSettings, config: SchedulerConfig) throws -> DiffusionScheduler {
        try Diffusion.makeScheduler(settings.kind, config: config, steps: settings.steps, eta: settings.eta)
    }

    /// Samples one batch.
    /// - Parameters:
    ///   - xT: initial noise `[N, H, W, C]`.
    ///   - conditioning: for the N rows.
    ///   - noise: supplies the standard-normal noise injected at step `index` with the given shape
    ///     (required if the scheduler injects noise), e.g. `BatchNoise.next(shape:)`.
    /// - Returns: the final x_0 (no clamping).
    public func sample(from xT: Tensor, conditioning: Conditioning, noise: ((_ index: Int, _ shape: [Int]) -> Tensor)?,
                       hooks: SamplerHooks = SamplerHooks()) throws -> Tensor {
        var x = xT
        var state = SchedulerState()
        let count = scheduler.timesteps.count
        for (i, t) in scheduler.timesteps.enumerated() {
            let info = SamplerStep(index: i, timestep: t, count: count)
            try hooks.willPredict?(info, x)
            var eps = try predictor.predict(x, timestep: t, stepIndex: i, conditioning: conditioning)
            guard eps.shape == x.shape else {
                throw ModelError.invalidInput("the model predicts \(eps.shape) for samples of \(x.shape) (NHWC): sampling needs out_channels == in_channels (learned-variance outputs are not supported)")
            }
            if let replace = hooks.modelOutput { eps = try replace(info, x, eps) }
            var z: Tensor? = nil
            if scheduler.injectsNoise(at: i) {
                guard let noise else { throw ModelError.invalidInput("this sampler injects noise but no noise source was given") }
                z = noise(i, x.shape)
                guard z!.shape == x.shape else { throw ModelError.invalidInput("step noise has shape \(z!.shape), expected \(x.shape)") }
            }
            let sigma = noiseScale?(i) ?? scheduler.sigma(at: i)
            x = scheduler.step(modelOutput: eps, index: i, sample: x, noise: z, sigma: sigma, state: &state)
            try hooks.didStep?(info, x)
        }
        return x
    }

    /// Samples the images `images` of a run in batches of `batch`, each image's x_T and step noise drawn from its
    /// own stream (seed, image index), so the results do not depend on the batch size or on where a run resumes.
    /// - Parameters:
    ///   - shape: `[H, W, C]` of one sample.
    ///   - conditioning: the conditioning of the images in a range (absolute image indices).
    ///   - initialNoise: x_T of the images in a range instead of the stream's first draw (e.g. `--noise FILE`;
    ///     the streams then supply only the step noise, as before).
    ///   - hooks: the hooks for the batch holding a range.
    ///   - onBatch: receives each finished batch (its image range and x_0), in order.
    public func generate(images: Range<Int>, batch: Int, seed: UInt64, shape: [Int],
                         conditioning: (Range<Int>) throws -> Conditioning,
                         initialNoise: ((Range<Int>) throws -> Tensor)? = nil,
                         hooks: (Range<Int>) -> SamplerHooks = { _ in SamplerHooks() },
                         onBatch: (Range<Int>, Tensor) throws -> Void) throws {
        precondition(batch >= 1, "batch must be >= 1")
        for start in stride(from: images.lowerBound, to: images.upperBound, by: batch) {
            let range = start..<min(start + batch, images.upperBound)
            let streams = BatchNoise(seed: seed, indices: range)
            let xT = try initialNoise?(range) ?? streams.next(shape: [range.count] + shape)
            let x0 = try sample(from: xT, conditioning: conditioning(range), noise: { _, s in streams.next(shape: s) },
                                hooks: hooks(range))
            try onBatch(range, x0)
        }
    }
}
