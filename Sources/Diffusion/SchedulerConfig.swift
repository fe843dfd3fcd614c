//===--- SchedulerConfig.swift - diffusers scheduler_config.json -----------===//

import Foundation

/// Noise-schedule settings shared by diffusers' DDIM and DDPM schedulers (0.27.2), validated.
public struct SchedulerConfig: Equatable, Sendable {
    public enum BetaSchedule: String, Sendable { case linear, scaledLinear = "scaled_linear", squaredCosCapV2 = "squaredcos_cap_v2" }
    public enum Spacing: String, Sendable { case leading, trailing, linspace }
    public enum Prediction: String, Sendable { case epsilon, sample, vPrediction = "v_prediction" }
    public enum DDPMVariance: String, Sendable { case fixedSmall = "fixed_small", fixedSmallLog = "fixed_small_log", fixedLarge = "fixed_large" }

    /// The `_class_name` found in the file (informational; both samplers can use any config).
    public var className: String
    public var numTrainTimesteps: Int
    public var betaStart: Double
    public var betaEnd: Double
    public var betaSchedule: BetaSchedule
    public var trainedBetas: [Double]?
    public var clipSample: Bool
    public var clipSampleRange: Float
    public var setAlphaToOne: Bool
    public var stepsOffset: Int
    public var predictionType: Prediction
    public var timestepSpacing: Spacing
    public var varianceType: DDPMVariance
    /// DPM-Solver settings (`DPMSolverMultistepScheduler` fields; other samplers ignore them).
    public var dpm = DPMSolverSettings()

    /// diffusers' defaults for `DDIMScheduler`.
    public static let ddimDefault = SchedulerConfig(
        className: "DDIMScheduler", numTrainTimesteps: 1000, betaStart: 0.0001, betaEnd: 0.02, betaSchedule: .linear,
        trainedBetas: nil, clipSample: true, clipSampleRange: 1, setAlphaToOne: true, stepsOffset: 0,
        predictionType: .epsilon, timestepSpacing: .leading, varianceType: .fixedSmall)

    public init(className: String, numTrainTimesteps: Int, betaStart: Double, betaEnd: Double, betaSchedule: BetaSchedule,
                trainedBetas: [Double]?, clipSample: Bool, clipSampleRange: Float, setAlphaToOne: Bool, stepsOffset: Int,
                predictionType: Prediction, timestepSpacing: Spacing, varianceType: DDPMVariance) {
        self.className = className; self.numTrainTimesteps = numTrainTimesteps; self.betaStart = betaStart
        self.betaEnd = betaEnd; self.betaSchedule = betaSchedule; self.trainedBetas = trainedBetas
        self.clipSample = clipSample; self.clipSampleRange = clipSampleRange; self.setAlphaToOne = setAlphaToOne
        self.stepsOffset = stepsOffset; self.predictionType = predictionType; self.timestepSpacing = timestepSpacing
        self.varianceType = varianceType
    }

    public init(path: String) throws {
        var j = try JSONConfig(path: path)
        try self.init(&j)
    }

    public init(json: Data, file: String = "scheduler_config.json") throws {
        var j = try JSONConfig(data: json, file: file)
        try self.init(&j)
    }

    init(_ j: inout JSONConfig) throws {
        let f = j.file
        className = try j.string("_class_name", default: "DDIMScheduler") ?? "DDIMScheduler"
        let known = ["DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "DDIMInverseScheduler", "EulerDiscreteScheduler",
                     "DPMSolverMultistepScheduler", "LMSDiscreteScheduler"]
        guard known.contains(className) else {
            throw ModelError.unsupportedValue(file: f, field: "_class_name", value: className, supported: known.joined(separator: ", "))
        }
        numTrainTimesteps = try j.int("num_train_timesteps", default: 1000)
        betaStart = try j.double("beta_start", default: 0.0001)
        betaEnd = try j.double("beta_end", default: 0.02)
        let bs = try j.string("beta_schedule", default: "linear") ?? "linear"
        guard let b = BetaSchedule(rawValue: bs) else {
            throw ModelError.unsupportedValue(file: f, field: "beta_schedule", value: bs, supported: "linear, scaled_linear, squaredcos_cap_v2")
        }
        betaSchedule = b
        j.accept(["trained_betas"])
        if let tb = j.object["trained_betas"], !(tb is NSNull) {
            guard let arr = tb as? [NSNumber] else { throw ModelError.invalidValue(file: f, field: "trained_betas", reason: "expected a list of numbers") }
            trainedBetas = arr.map(\.doubleValue)
        } else { trainedBetas = nil }
        clipSample = try j.bool("clip_sample", default: true)
        clipSampleRange = Float(try j.double("clip_sample_range", default: 1))
        setAlphaToOne = try j.bool("set_alpha_to_one", default: true)
        stepsOffset = try j.int("steps_offset", default: 0)
        let pt = try j.string("prediction_type", default: "epsilon") ?? "epsilon"
        guard let p = Prediction(rawValue: pt) else {
            throw ModelError.unsupportedValue(file: f, field: "prediction_type", value: pt, supported: "epsilon, sample, v_prediction")
        }
        predictionType = p
        // diffusers' default differs by class: DPMSolverMultistepScheduler "linspace", DDIM/DDPM "leading".
        let defaultSpacing = className == "DPMSolverMultistepScheduler" ? "linspace" : "leading"
        let sp = try j.string("timestep_spacing", default: defaultSpacing) ?? defaultSpacing
        guard let s = Spacing(rawValue: sp) else {
            throw ModelError.unsupportedValue(file: f, field: "timestep_spacing", value: sp, supported: "leading, trailing, linspace")
        }
        timestepSpacing = s
        dpm = try DPMSolverSettings(&j)
        let vt = try j.string("variance_type", default: "fixed_small") ?? "fixed_small"
        guard let v = DDPMVariance(rawValue: vt) else {
            throw ModelError.unsupportedValue(file: f, field: "variance_type", value: vt, supported: "fixed_small, fixed_small_log, fixed_large")
        }
        varianceType = v
        if try j.bool("thresholding", default: false) {
            throw ModelError.unsupportedValue(file: f, field: "thresholding", value: "true", supported: "false")
        }
        if try j.bool("rescale_betas_zero_snr", default: false) {
            throw ModelError.unsupportedValue(file: f, field: "rescale_betas_zero_snr", value: "true", supported: "false")
        }
        // Fields of other schedulers or of thresholding, irrelevant here.
        j.accept(["dynamic_thresholding_ratio", "sample_max_value", "skip_prk_steps", "clip_sample_range", "interpolation_type",
                  "timestep_type", "variance_type"])
        try j.rejectUnknownFields()
        guard numTrainTimesteps >= 1, numTrainTimesteps <= 1_000_000 else {
            throw ModelError.invalidValue(file: f, field: "num_train_timesteps", reason: "must be in 1...1000000")
        }
        if let tb = trainedBetas, tb.count != numTrainTimesteps {
            throw ModelError.invalidValue(file: f, field: "trained_betas", reason: "has \(tb.count) entries, expected num_train_timesteps = \(numTrainTimesteps)")
        }
        guard betaStart > 0, betaEnd > 0, betaStart < 1, betaEnd < 1 else {
            throw ModelError.invalidValue(file: f, field: "beta_start/beta_end", reason: "must lie in (0, 1)")
        }
        if let tb = trainedBetas, let i = tb.firstIndex(where: { !($0 > 0 && $0 < 1) }) {
            throw ModelError.invalidValue(file: f, field: "trained_betas", reason: "entry \(i) is \(tb[i]); every beta must lie in (0, 1)")
        }
        // The schedule is computed in float32 (as torch does): betas that round to 0 (or ᾱ that underflows) leave
        // a step with no noise (or no signal), where σ and the update are 0/0.
        let cumulative = alphasCumprod()
        if let i = cumulative.firstIndex(where: { !($0 > 0 && $0 < 1) }) {
            throw ModelError.invalidValue(file: f, field: trainedBetas == nil ? "beta_start/beta_end" : "trained_betas",
                                          reason: "give ᾱ_\(i) = \(cumulative[i]) in float32; the schedule needs 0 < ᾱ_t < 1 at every step")
        }
    }

    /// β_t, t = 0..<T, computed in float32 exactly as diffusers/torch do.
    public func betas() -> [Float] {
        let n = numTrainTimesteps
        if let tb = trainedBetas { return tb.map { Float($0) } }
        switch betaSchedule {
        case .linear: return torchLinspace(Float(betaStart), Float(betaEnd), n)
        case .scaledLinear: return torchLinspace(Float(betaStart.squareRoot()), Float(betaEnd.squareRoot()), n).map { $0 * $0 }
        case .squaredCosCapV2:
            func alphaBar(_ t: Double) -> Double { let c = Foundation.cos((t + 0.008) / 1.008 * Double.pi / 2); return c * c }
            return (0..<n).map { i in Float(min(1 - alphaBar(Double(i + 1) / Double(n)) / alphaBar(Double(i) / Double(n)), 0.999)) }
        }
    }

    /// ᾱ_t = Π_{s≤t} (1 − β_s), accumulated in float32 like `torch.cumprod`.
    public func alphasCumprod() -> [Float] {
        var acc: Float = 1
        return betas().map { b in acc = acc * (1 - b); return acc }
    }
}

/// The `DPMSolverMultistepScheduler` fields of a scheduler config (diffusers 0.27.2 defaults). Values the solver
/// does not implement are kept as read and refused when a DPM-Solver is built from them, so a DDIM run of the same
/// config is unaffected.
public struct DPMSolverSettings: Equatable, Sendable {
    public enum SolverType: String, Sendable { case midpoint, heun }
    public enum FinalSigmas: String, Sendable { case zero, sigmaMin = "sigma_min" }
    /// "dpmsolver++" ("deis" is read as dpmsolver++, as diffusers does); others are refused by the solver.
    public var algorithmType = "dpmsolver++"
    public var solverOrder = 2
    public var solverType: SolverType = .midpoint
    public var lowerOrderFinal = true
    public var eulerAtFinal = false
    public var useKarrasSigmas = false
    public var useLuLambdas = false
    public var finalSigmasType: FinalSigmas = .zero
    public var lambdaMinClipped = -Double.infinity

    public init() {}

    init(_ j: inout JSONConfig) throws {
        let f = j.file
        let alg = try j.string("algorithm_type", default: "dpmsolver++") ?? "dpmsolver++"
        algorithmType = alg == "deis" ? "dpmsolver++" : alg
        solverOrder = try j.int("solver_order", default: 2)
        let st = try j.string("solver_type", default: "midpoint") ?? "midpoint"
        switch st {
        case "midpoint", "logrho", "bh1", "bh2": solverType = .midpoint   // diffusers maps the UniPC/DEIS names to midpoint
        case "heun": solverType = .heun
        default: throw ModelError.unsupportedValue(file: f, field: "solver_type", value: st, supported: "midpoint, heun")
        }
        lowerOrderFinal = try j.bool("lower_order_final", default: true)
        eulerAtFinal = try j.bool("euler_at_final", default: false)
        useKarrasSigmas = try j.bool("use_karras_sigmas", default: false)
        useLuLambdas = try j.bool("use_lu_lambdas", default: false)
        let fs = try j.string("final_sigmas_type", default: "zero") ?? "zero"
        guard let fsv = FinalSigmas(rawValue: fs) else {
            throw ModelError.unsupportedValue(file: f, field: "final_sigmas_type", value: fs, supported: "zero, sigma_min")
        }
        finalSigmasType = fsv
        lambdaMinClipped = try j.extendedDouble("lambda_min_clipped", default: -.infinity)
    }
}

/// `torch.linspace(start, end, steps, dtype=float32)`: float32 step, symmetric fill.
func torchLinspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
    if steps == 1 { return [start] }
    let step = (end - start) / Float(steps - 1)
    let half = steps / 2
    return (0..<steps).map { i in i < half ? start + step * Float(i) : end - step * Float(steps - i - 1) }
}
