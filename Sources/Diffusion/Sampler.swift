//===--- Sampler.swift - the reverse process with classifier-free guidance -===//

import Foundation
import TensorCore

/// Sampler settings: scheduler, step count, eta, guidance scale, null class.
public struct SamplerSettings: Equatable, Sendable, Codable {
    public var kind: SamplerKind
    public var steps: Int
    /// DDIM's η (ignored by DDPM).
    public var eta: Float
    /// Classifier-free guidance scale s: ε = ε_u + s·(ε_c − ε_u). 1 disables guidance.
    public var guidance: Float
    /// The label used for the unconditional half (default: the last class embedding).
    public var nullClass: Int?

    public init(kind: SamplerKind = .ddim, steps: Int = 20, eta: Float = 0, guidance: Float = 3, nullClass: Int? = nil) {
        self.kind = kind; self.steps = steps; self.eta = eta; self.guidance = guidance; self.nullClass = nullClass
    }
}

/// Computes the (guided) noise prediction for a batch at one step. `UNet2D` conforms through
/// `GuidedUNet`; quantized and mixed-precision models conform too.
public protocol NoisePredictor: AnyObject {
    /// - x: `[N, H, W, C]`; timestep: the DDPM timestep; stepIndex: loop position (0 = first, noisiest);
    ///   labels: class labels (nil for unconditional models).
    /// - Returns: guided model output `[N, H, W, C]`.
    func predict(_ x: Tensor, timestep: Int, stepIndex: Int, labels: [Int]?) throws -> Tensor
}

/// A UNet with classifier-free guidance as one batched forward of 2N (unconditional half first).
public final class GuidedUNet: NoisePredictor {
    public let unet: UNet2D
    public let guidance: Float
    public let nullClass: Int?

    public init(unet: UNet2D, guidance: Float, nullClass: Int?) throws {
        self.unet = unet
        self.guidance = guidance
        switch unet.config.classEmbedding {
        case let .table(n):
            let nc = nullClass ?? (n - 1)
            guard nc >= 0 && nc < n else { throw ModelError.invalidInput("--null-class \(nc) is out of range 0..<\(n)") }
            self.nullClass = nc
        case .timestep:
            if guidance != 1 && nullClass == nil {
                throw ModelError.invalidInput("this model's class embedding has no table; pass --null-class N for guidance or --guidance 1")
            }
            self.nullClass = nullClass
        case .identity:
            throw ModelError.invalidInput("class_embed_type 'identity' takes embeddings, not labels; use the library API")
        case .none:
            self.nullClass = nil
        }
    }

    public func predict(_ x: Tensor, timestep: Int, stepIndex: Int, labels: [Int]?) throws -> Tensor {
        let n = x.shape[0]
        guard unet.isClassConditional else {
            return try unet(x, timesteps: [Float](repeating: Float(timestep), count: n))
        }
        guard let labels, labels.count == n else { throw ModelError.invalidInput("class-conditional model needs \(n) labels") }
        if guidance == 1 {
            return try unet(x, timesteps: [Float](repeating: Float(timestep), count: n), condition: .labels(labels))
        }
        let xx = Tensor.concatenate(batch: [x, x])
        let out = try unet(xx, timesteps: [Float](repeating: Float(timestep), count: 2 * n),
                           condition: .labels([Int](repeating: nullClass!, count: n) + labels))
        return GuidedUNet.combine(out, batch: n, scale: guidance)
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
        switch settings.kind {
        case .ddim: return try DDIMScheduler(config: config, steps: settings.steps, eta: settings.eta)
        case .ddpm: return try DDPMScheduler(config: config, steps: settings.steps)
        }
    }

    /// Samples a batch.
    /// - Parameters:
    ///   - xT: initial noise `[N, H, W, C]`.
    ///   - labels: class labels (nil for unconditional models).
    ///   - noise: supplies the standard-normal noise injected at step `index` with the given shape
    ///     (required if the scheduler injects noise), e.g. `BatchNoise.next(shape:)`.
    ///   - onStep: called after each step with (index, x after the step).
    /// - Returns: the final x_0 (no clamping).
    public func sample(from xT: Tensor, labels: [Int]?, noise: ((_ index: Int, _ shape: [Int]) -> Tensor)?,
                       onStep: ((Int, Tensor) -> Void)? = nil) throws -> Tensor {
        var x = xT
        for (i, t) in scheduler.timesteps.enumerated() {
            let eps = try predictor.predict(x, timestep: t, stepIndex: i, labels: labels)
            guard eps.shape == x.shape else {
                throw ModelError.invalidInput("the model predicts \(eps.shape) for samples of \(x.shape) (NHWC): sampling needs out_channels == in_channels (learned-variance outputs are not supported)")
            }
            var z: Tensor? = nil
            if scheduler.injectsNoise(at: i) {
                guard let noise else { throw ModelError.invalidInput("this sampler injects noise but no noise source was given") }
                z = noise(i, x.shape)
                guard z!.shape == x.shape else { throw ModelError.invalidInput("step noise has shape \(z!.shape), expected \(x.shape)") }
            }
            if let sigma = noiseScale?(i) {
                x = scheduler.step(modelOutput: eps, index: i, sample: x, noise: z, sigma: sigma)
            } else {
                x = scheduler.step(modelOutput: eps, index: i, sample: x, noise: z)
            }
            onStep?(i, x)
        }
        return x
    }
}
