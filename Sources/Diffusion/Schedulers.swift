//===--- Schedulers.swift - the scheduler protocol; DDIM and DDPM (diffusers 0.27.2) ---===//
//
// Scalar coefficients are computed in float32 in the same order as diffusers (whose
// `alphas_cumprod` is a float32 tensor), so trajectories match PyTorch closely.
// Tensors: sample/model output `[N, H, W, C]`.
//
//===----------------------------------------------------------------------===//

import Foundation
import TensorCore

/// Which sampler to run.
public enum SamplerKind: String, CaseIterable, Sendable, Codable {
    case ddim, ddpm
    /// DPM-Solver++ (multistep, diffusers `DPMSolverMultistepScheduler` with `algorithm_type` dpmsolver++).
    case dpmSolverPlusPlus = "dpmsolver++"

    /// The sampler a `scheduler_config.json` names when the user does not choose one: DPM-Solver++ for a
    /// `DPMSolverMultistepScheduler` config, DDIM for every other class.
    public static func defaultKind(for config: SchedulerConfig) -> SamplerKind {
        config.className == "DPMSolverMultistepScheduler" ? .dpmSolverPlusPlus : .ddim
    }
}

/// What a scheduler carries from one step of a trajectory batch to the next (a multistep solver's previous
/// converted model outputs). Single-step schedulers leave it empty. One value per batch of trajectories,
/// created fresh (`SchedulerState()`) before the first step.
public struct SchedulerState {
    /// Converted model outputs of the previous steps, oldest first (at most the solver order).
    public var history: [Tensor] = []
    /// Steps taken so far with a lower order than the solver's (diffusers' `lower_order_nums`).
    public var lowerOrderSteps = 0
    public init() {}
}

/// A discretized reverse process: timesteps in sampling order and one update per step.
public protocol DiffusionScheduler {
    var config: SchedulerConfig { get }
    var kind: SamplerKind { get }
    /// Timesteps in sampling order (descending).
    var timesteps: [Int] { get }
    /// Whether step `index` injects fresh Gaussian noise.
    func injectsNoise(at index: Int) -> Bool
    /// x_{t-1} from x_t and the (guided, possibly corrected) model output at loop position `index`, with the
    /// injected noise's std replaced by `sigma` (PTQD's variance-schedule calibration; `sigma(at: index)` gives
    /// the plain update bit for bit). `state` carries a multistep solver's history across the steps of one batch.
    /// - noise: `[N, H, W, C]` standard normal, required iff `injectsNoise(at: index)`.
    func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma: Float, state: inout SchedulerState) -> Tensor
    /// The std σ_t of the noise step `index` injects (0 where it injects none).
    func sigma(at index: Int) -> Float
    /// ∂x_prev/∂(model output) per element: the coefficient c_t(σ) with which an error in the current model output
    /// (ε̂, v̂ or x̂₀ per `prediction_type`) reaches x_prev when the update runs with noise std `sigma`.
    /// The update is affine in the output without clipping; with `clip_sample` it holds where x̂₀ is not clipped.
    func outputCoefficient(at index: Int, sigma: Float) -> Float
}

extension DiffusionScheduler {
    /// Whether PTQD's variance-schedule calibration can act: only where the sampler injects noise (DDPM, DDIM with
    /// η > 0). Deterministic samplers (DDIM η = 0, DPM-Solver++) have no noise to shrink. Noise correction (CNC) and
    /// bias correction act on each model output and apply to every scheduler.
    public var varianceCalibrationApplies: Bool { timesteps.indices.contains { injectsNoise(at: $0) } }

    /// The plain update (the scheduler's own σ_t).
    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, state: inout SchedulerState) -> Tensor {
        step(modelOutput: modelOutput, index: index, sample: sample, noise: noise, sigma: sigma(at: index), state: &state)
    }
}

/// A scheduler whose update depends only on the current step (DDIM, DDPM): the state is unused.
public protocol SingleStepScheduler: DiffusionScheduler {
    func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma: Float) -> Tensor
}

extension SingleStepScheduler {
    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma: Float, state: inout SchedulerState) -> Tensor {
        step(modelOutput: modelOutput, index: index, sample: sample, noise: noise, sigma: sigma)
    }
    /// The plain update, stateless.
    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?) -> Tensor {
        step(modelOutput: modelOutput, index: index, sample: sample, noise: noise, sigma: sigma(at: index))
    }
}

/// Builds the scheduler for `kind` over `config`.
public func makeScheduler(_ kind: SamplerKind, config: SchedulerConfig, steps: Int, eta: Float) throws -> DiffusionScheduler {
    switch kind {
    case .ddim: return try DDIMScheduler(config: config, steps: steps, eta: eta)
    case .ddpm: return try DDPMScheduler(config: config, steps: steps)
    case .dpmSolverPlusPlus: return try DPMSolverMultistepScheduler(config: config, steps: steps)
    }
}

/// Shared schedule arithmetic.
struct ScheduleCore {
    let config: SchedulerConfig
    let alphasCumprod: [Float]
    let timesteps: [Int]
    let numInferenceSteps: Int

    init(config: SchedulerConfig, steps: Int) throws {
        let t = config.numTrainTimesteps
        guard steps >= 1 else { throw ModelError.invalidInput("--steps must be >= 1") }
        guard steps <= t else {
            throw ModelError.invalidInput("--steps \(steps) exceeds the model's num_train_timesteps (\(t))")
        }
        self.config = config
        alphasCumprod = config.alphasCumprod()
        numInferenceSteps = steps
        switch config.timestepSpacing {
        case .linspace:
            // np.linspace(0, T-1, steps).round()[::-1]
            timesteps = (0..<steps).map { i -> Int in
                let v = steps == 1 ? 0.0 : Double(i) * Double(t - 1) / Double(steps - 1)
                return Int(v.rounded(.toNearestOrEven))
            }.reversed()
        case .leading:
            let ratio = t / steps
            timesteps = (0..<steps).map { $0 * ratio + config.stepsOffset }.reversed()
        case .trailing:
            // np.round(np.arange(T, 0, -T/steps)) - 1
            // np.arange has exactly `steps` elements here; computing each from its index avoids a
            // float-accumulation extra element (which became timestep −1).
            let ratio = Double(t) / Double(steps)
            timesteps = (0..<steps).map { Int((Double(t) - Double($0) * ratio).rounded(.toNearestOrEven)) - 1 }
        }
        for ts in timesteps where ts < 0 || ts >= t {
            throw ModelError.invalidInput("timestep \(ts) falls outside 0..<\(t) (steps_offset \(config.stepsOffset) with \(steps) steps)")
        }
    }

    /// `t − T / steps` (diffusers uses integer division for every spacing).
    func previous(_ t: Int) -> Int { t - config.numTrainTimesteps / numInferenceSteps }

    /// (∂x̂0/∂out, ∂ε̂/∂out) of ``predict(_:_:sqrtA:sqrtB:)``: how an error in the model output moves the
    /// predicted sample and noise.
    func outputDerivatives(sqrtA: Float, sqrtB: Float) -> (x0: Float, eps: Float) {
        switch config.predictionType {
        case .epsilon: return (-sqrtB / sqrtA, 1)
        case .sample: return (1, -sqrtA / sqrtB)
        case .vPrediction: return (-sqrtB, sqrtA)
        }
    }

    /// Converts a model output to (x̂0, ε̂) per the prediction type. `x` and `out` are `[count]`.
    @inline(__always)
    func predict(_ out: Float, _ x: Float, sqrtA: Float, sqrtB: Float) -> (x0: Float, eps: Float) {
        switch config.predictionType {
        case .epsilon: return ((x - sqrtB * out) / sqrtA, out)
        case .sample: return (out, (x - sqrtA * out) / sqrtB)
        case .vPrediction: return (sqrtA * x - sqrtB * out, sqrtA * out + sqrtB * x)
        }
    }
}

/// DDIM (Song et al.), diffusers `DDIMScheduler.step` with eta and supplied variance noise.
public struct DDIMScheduler: SingleStepScheduler {
    public var kind: SamplerKind { .ddim }
    let core: ScheduleCore
    public let eta: Float
    public var config: SchedulerConfig { core.config }
    public var timesteps: [Int] { core.timesteps }
    /// ᾱ for the step after the last one: 1 if `set_alpha_to_one`, else ᾱ_0.
    public var finalAlphaCumprod: Float { core.config.setAlphaToOne ? 1 : core.alphasCumprod[0] }

    public init(config: SchedulerConfig, steps: Int, eta: Float) throws {
        guard eta >= 0, eta.isFinite else { throw ModelError.invalidInput("--eta must be a finite number >= 0, got \(eta)") }
        core = try ScheduleCore(config: config, steps: steps)
        self.eta = eta
    }

    public func injectsNoise(at index: Int) -> Bool { eta > 0 }

    /// (ᾱ_t, ᾱ_prev) at loop position `index`.
    public func alphas(at index: Int) -> (alphaProd: Float, alphaProdPrev: Float) {
        let t = core.timesteps[index], prev = core.previous(t)
        return (core.alphasCumprod[t], prev >= 0 ? core.alphasCumprod[prev] : finalAlphaCumprod)
    }

    /// DDIM's σ_t = η·sqrt((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)).
    public func sigma(at index: Int) -> Float {
        let (a, ap) = alphas(at: index)
        let variance = ((1 - ap) / (1 - a)) * (1 - a / ap)
        return eta * variance.squareRoot()
    }

    /// c_t(σ) = √ᾱ_prev·∂x̂0/∂out + √(1−ᾱ_prev−σ²)·∂ε̂/∂out. For epsilon prediction
    /// √(1−ᾱ_prev−σ²) − √(ᾱ_prev·(1−ᾱ_t)/ᾱ_t) (negative); v: √ᾱ_t·√(1−ᾱ_prev−σ²) − √(ᾱ_prev·(1−ᾱ_t));
    /// sample: √ᾱ_prev − √(1−ᾱ_prev−σ²)·√(ᾱ_t/(1−ᾱ_t)). |c_t| grows with σ in every case.
    public func outputCoefficient(at index: Int, sigma std: Float) -> Float {
        let (a, ap) = alphas(at: index)
        let d = core.outputDerivatives(sqrtA: a.squareRoot(), sqrtB: (1 - a).squareRoot())
        return ap.squareRoot() * d.x0 + max(1 - ap - std * std, 0).squareRoot() * d.eps
    }

    /// The DDIM update with an explicit noise scale σ (PTQD's variance-schedule calibration passes σ′):
    /// `x_prev = √ᾱ_prev·x̂0 + √(1−ᾱ_prev−σ²)·ε̂ + σ·z`.
    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma std: Float) -> Tensor {
        precondition(modelOutput.shape == sample.shape, "model output \(modelOutput.shape) vs sample \(sample.shape)")
        let (a, ap) = alphas(at: index)
        let b = 1 - a
        let sqrtA = a.squareRoot(), sqrtB = b.squareRoot(), sqrtAP = ap.squareRoot()
        let dirCoef = (1 - ap - std * std).squareRoot()
        let clip = core.config.clipSample, r = core.config.clipSampleRange
        if std > 0 { precondition(noise?.shape == sample.shape, "DDIM with eta > 0 needs noise of the sample's shape") }
        let y = Tensor(shape: sample.shape)
        for i in 0..<sample.count {
            var (x0, eps) = core.predict(modelOutput.data[i], sample.data[i], sqrtA: sqrtA, sqrtB: sqrtB)
            if clip { x0 = min(max(x0, -r), r) }
            var v = sqrtAP * x0 + dirCoef * eps
            if std > 0 { v += std * noise!.data[i] }
            y.data[i] = v
        }
        return y
    }
}

/// DDPM ancestral sampling, diffusers `DDPMScheduler.step` (any number of inference steps).
public struct DDPMScheduler: SingleStepScheduler {
    public var kind: SamplerKind { .ddpm }
    let core: ScheduleCore
    public var config: SchedulerConfig { core.config }
    public var timesteps: [Int] { core.timesteps }

    public init(config: SchedulerConfig, steps: Int) throws {
        core = try ScheduleCore(config: config, steps: steps)
    }

    public func injectsNoise(at index: Int) -> Bool { core.timesteps[index] > 0 }

    /// (ᾱ_t, ᾱ_prev) with ᾱ_prev = 1 past the start.
    public func alphas(at index: Int) -> (alphaProd: Float, alphaProdPrev: Float) {
        let t = core.timesteps[index], prev = core.previous(t)
        return (core.alphasCumprod[t], prev >= 0 ? core.alphasCumprod[prev] : 1)
    }

    /// The posterior std σ_t used for the injected noise (variance type of the config).
    public func sigma(at index: Int) -> Float {
        guard injectsNoise(at: index) else { return 0 }
        let (a, ap) = alphas(at: index)
        let currentBeta = 1 - a / ap
        let variance = max((1 - ap) / (1 - a) * currentBeta, 1e-20)
        switch core.config.varianceType {
        case .fixedSmall: return variance.squareRoot()
        case .fixedSmallLog: return Float(Foundation.exp(0.5 * Foundation.log(Double(variance))))
        case .fixedLarge: return currentBeta.squareRoot()
        }
    }

    /// The model-output coefficient of the posterior mean `c0·x̂0 + c1·x_t` (independent of the noise std).
    public func outputCoefficient(at index: Int, sigma: Float) -> Float { outputCoefficient(at: index) }

    /// c0·∂x̂0/∂out with c0 = √ᾱ_prev·β_t/(1−ᾱ_t); for epsilon prediction `−(1−α_t)/(√α_t·√(1−ᾱ_t))` in the
    /// full-grid case.
    public func outputCoefficient(at index: Int) -> Float {
        let (a, ap) = alphas(at: index)
        let b = 1 - a
        let curA = a / ap, curB = 1 - curA
        let c0 = (ap.squareRoot() * curB) / b
        return c0 * core.outputDerivatives(sqrtA: a.squareRoot(), sqrtB: b.squareRoot()).x0
    }

    /// The DDPM update with an explicit noise std (PTQD's calibrated σ′ for DDPM).
    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma std: Float) -> Tensor {
        precondition(modelOutput.shape == sample.shape, "model output \(modelOutput.shape) vs sample \(sample.shape)")
        let (a, ap) = alphas(at: index)
        let b = 1 - a, bp = 1 - ap
        let curA = a / ap, curB = 1 - curA
        let sqrtA = a.squareRoot(), sqrtB = b.squareRoot()
        let c0 = (ap.squareRoot() * curB) / b
        let c1 = curA.squareRoot() * bp / b
        let clip = core.config.clipSample, r = core.config.clipSampleRange
        let addNoise = injectsNoise(at: index)
        if addNoise { precondition(noise?.shape == sample.shape, "DDPM step \(index) needs noise of the sample's shape") }
        let y = Tensor(shape: sample.shape)
        for i in 0..<sample.count {
            var (x0, _) = core.predict(modelOutput.data[i], sample.data[i], sqrtA: sqrtA, sqrtB: sqrtB)
            if clip { x0 = min(max(x0, -r), r) }
            var v = c0 * x0 + c1 * sample.data[i]
            if addNoise { v += std * noise!.data[i] }
            y.data[i] = v
        }
        return y
    }
}
