//===--- DPMSolver.swift - DPM-Solver++ multistep (diffusers 0.27.2) ----------===//
//
// diffusers `DPMSolverMultistepScheduler` with `algorithm_type` "dpmsolver++" (the data-prediction solver of
// Lu et al. 2022), solver order 1 or 2, midpoint or heun second-order updates, `lower_order_final`,
// `euler_at_final`, `final_sigmas_type`, Karras or Lu sigmas, `lambda_min_clipped`, and linspace / leading /
// trailing spacing; epsilon, sample and v prediction. Deterministic: it injects no noise.
//
// Schedule arithmetic follows diffusers: the σ table (σ = √((1−ᾱ)/ᾱ), VE form) in float32, Karras/Lu σ and the
// σ→t interpolation in float64 as numpy does, the per-step scalars (α_t = 1/√(σ²+1), σ_t = σ·α_t, λ = log α − log σ,
// h) in float32 as torch does. Tensors `[N, H, W, C]`.
//
//===----------------------------------------------------------------------===//

import Foundation
import TensorCore

public struct DPMSolverMultistepScheduler: DiffusionScheduler {
    public let config: SchedulerConfig
    public var kind: SamplerKind { .dpmSolverPlusPlus }
    public let timesteps: [Int]
    /// σ of every step plus the final one (`steps + 1` values; the last is 0 or σ_min), float32 as diffusers stores it.
    public let sigmas: [Float]
    let order: Int

    public init(config: SchedulerConfig, steps: Int) throws {
        let d = config.dpm
        guard d.algorithmType == "dpmsolver++" else {
            throw ModelError.invalidInput("scheduler algorithm_type '\(d.algorithmType)' is not supported; ptqd implements dpmsolver++ (use --scheduler ddim to sample this model otherwise)")
        }
        guard d.solverOrder == 1 || d.solverOrder == 2 else {
            throw ModelError.invalidInput("scheduler solver_order \(d.solverOrder) is not supported; ptqd implements DPM-Solver++ of order 1 and 2")
        }
        guard !(d.useKarrasSigmas && d.useLuLambdas) else {
            throw ModelError.invalidInput("scheduler config sets both use_karras_sigmas and use_lu_lambdas; choose one")
        }
        let t = config.numTrainTimesteps
        guard steps >= 1 else { throw ModelError.invalidInput("--steps must be >= 1") }
        guard steps <= t else { throw ModelError.invalidInput("--steps \(steps) exceeds the model's num_train_timesteps (\(t))") }
        self.config = config
        order = d.solverOrder
        let ac = config.alphasCumprod()
        // λ_t = log √ᾱ − log √(1−ᾱ) (float32); the clipped tail of the schedule is cut from `last`.
        let lambdas = ac.map { Foundation.log($0.squareRoot()) - Foundation.log((1 - $0).squareRoot()) }
        let flipped = Array(lambdas.reversed())
        let clipped = flipped.firstIndex { Double($0) >= d.lambdaMinClipped } ?? flipped.count  // searchsorted (left)
        let last = t - clipped
        guard last >= 1 else { throw ModelError.invalidInput("lambda_min_clipped \(d.lambdaMinClipped) clips the whole schedule") }
        var ts: [Double]
        switch config.timestepSpacing {
        case .linspace:  // np.linspace(0, last − 1, steps + 1).round()[::-1][:-1]
            let step = Double(last - 1) / Double(steps)
            ts = (1...steps).reversed().map { i in (i == steps ? Double(last - 1) : Double(i) * step).rounded(.toNearestOrEven) }
        case .leading:   // (arange(0, steps + 1) · (last // (steps + 1))).round()[::-1][:-1] + steps_offset
            let ratio = last / (steps + 1)
            ts = (1...steps).reversed().map { Double($0 * ratio + config.stepsOffset) }
        case .trailing:  // arange(last, 0, −T/steps).round() − 1
            let ratio = Double(t) / Double(steps)
            let count = last == t ? steps : Int((Double(last) / ratio).rounded(.up))
            ts = (0..<count).map { (Double(last) - Double($0) * ratio).rounded(.toNearestOrEven) - 1 }
        }
        // σ table in float32 (torch), its log in float32 (numpy on a float32 array).
        let table = ac.map { ((1 - $0) / $0).squareRoot() }
        let logTable = table.map { Foundation.log($0) }
        var stepSigmas: [Double]
        if d.useKarrasSigmas || d.useLuLambdas {
            let n = steps
            let delta = n == 1 ? 0.0 : 1 / Double(n - 1)  // np.linspace(0, 1, n): i·step, the last exactly 1
            let ramp = (0..<n).map { n > 1 && $0 == n - 1 ? 1.0 : Double($0) * delta }
            if d.useKarrasSigmas {
                let sMin = Double(table[0]), sMax = Double(table[t - 1]), rho = 7.0
                let minInv = Foundation.pow(sMin, 1 / rho), maxInv = Foundation.pow(sMax, 1 / rho)
                stepSigmas = ramp.map { Foundation.pow(maxInv + $0 * (minInv - maxInv), rho) }
            } else {
                let lMin = Double(logTable[0]), lMax = Double(logTable[t - 1])
                stepSigmas = ramp.map { Foundation.exp(lMax + $0 * (lMin - lMax)) }
            }
            ts = stepSigmas.map { Self.timestep(ofSigma: $0, logSigmas: logTable).rounded(.toNearestOrEven) }
        } else {
            stepSigmas = ts.map { Double(table[Int($0)]) }  // np.interp at integer timesteps
        }
        let final: Float = d.finalSigmasType == .zero ? 0 : ((1 - ac[0]) / ac[0]).squareRoot()
        sigmas = stepSigmas.map { Float($0) } + [final]
        timesteps = ts.map { Int($0) }
        for ts in timesteps where ts < 0 || ts >= t {
            throw ModelError.invalidInput("timestep \(ts) falls outside 0..<\(t) (steps_offset \(config.stepsOffset) with \(steps) steps)")
        }
    }

    /// diffusers `_sigma_to_t`: piecewise-linear interpolation of log σ over the float32 log-σ table (float64 math).
    static func timestep(ofSigma sigma: Double, logSigmas: [Float]) -> Double {
        let logSigma = Foundation.log(max(sigma, 1e-10))
        let n = logSigmas.count
        // low = the last index whose log σ ≤ log_sigma (0 if none), at most n − 2.
        var low = 0
        for (i, l) in logSigmas.enumerated() where logSigma - Double(l) >= 0 { low = i }
        low = min(low, n - 2)
        let lo = Double(logSigmas[low]), hi = Double(logSigmas[low + 1])
        let w = min(max((lo - logSigma) / (lo - hi), 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    public func injectsNoise(at index: Int) -> Bool { false }
    public func sigma(at index: Int) -> Float { 0 }

    /// (α, σ) of the VP form from the VE σ: α = 1/√(σ² + 1), σ_VP = σ·α (float32).
    @inline(__always)
    func alphaSigma(_ s: Float) -> (alpha: Float, sigma: Float) {
        let a = 1 / (s * s + 1).squareRoot()
        return (a, s * a)
    }

    /// λ = log α − log σ (+∞ at σ = 0).
    @inline(__always)
    func lambda(_ a: Float, _ s: Float) -> Float { Foundation.log(a) - Foundation.log(s) }

    /// Whether step `index` runs the first-order update (the first step, `lower_order_final`, `euler_at_final`,
    /// a zero final σ), given how many lower-order steps came before.
    func usesFirstOrder(at index: Int, lowerOrderSteps: Int) -> Bool {
        let d = config.dpm, n = timesteps.count
        let lowerOrderFinal = index == n - 1 && (d.eulerAtFinal || (d.lowerOrderFinal && n < 15) || d.finalSigmasType == .zero)
        return order == 1 || lowerOrderSteps < 1 || lowerOrderFinal
    }

    /// The step's scalars: (σ_t/σ_s, α_t·(e^{−h} − 1), h, r0 for the second order or nil).
    func coefficients(at index: Int, secondOrder: Bool) -> (ratio: Float, phi: Float, h: Float, r0: Float?) {
        let (at, st) = alphaSigma(sigmas[index + 1])
        let (a0, s0) = alphaSigma(sigmas[index])
        let lt = lambda(at, st), l0 = lambda(a0, s0)
        let h = lt - l0
        let phi = at * (Foundation.exp(-h) - 1)
        var r0: Float? = nil
        if secondOrder {
            let (a1, s1) = alphaSigma(sigmas[index - 1])
            r0 = (l0 - lambda(a1, s1)) / h
        }
        return (st / s0, phi, h, r0)
    }

    /// ∂x̂₀/∂out of `convert_model_output` at step `index`.
    func dataDerivative(at index: Int) -> Float {
        let (a, s) = alphaSigma(sigmas[index])
        switch config.predictionType {
        case .epsilon: return -s / a
        case .sample: return 1
        case .vPrediction: return -s
        }
    }

    /// c_t: how an error in the current model output reaches x_prev (through x̂₀ and, for the second-order
    /// update, through D1 as well). DPM-Solver++ injects no noise, so `sigma` plays no part.
    public func outputCoefficient(at index: Int, sigma: Float) -> Float {
        // Every step after the first has one lower-order predecessor at least; the first runs first order.
        let second = !usesFirstOrder(at: index, lowerOrderSteps: index == 0 ? 0 : 1)
        let c = coefficients(at: index, secondOrder: second)
        var k = -c.phi
        if second, let r0 = c.r0 {
            switch config.dpm.solverType {
            case .midpoint: k -= 0.5 * c.phi / r0
            case .heun: k += heunCoefficient(at: index, h: c.h) / r0
            }
        }
        return k * dataDerivative(at: index)
    }

    /// The heun update's D1 coefficient α_t·((e^{−h} − 1)/h + 1).
    func heunCoefficient(at index: Int, h: Float) -> Float {
        let (at, _) = alphaSigma(sigmas[index + 1])
        return at * ((Foundation.exp(-h) - 1) / h + 1)
    }

    /// `convert_model_output` for dpmsolver++: x̂₀ from the model output.
    func dataPrediction(_ out: Tensor, sample: Tensor, index: Int) -> Tensor {
        let (a, s) = alphaSigma(sigmas[index])
        let y = Tensor(shape: sample.shape)
        switch config.predictionType {
        case .epsilon: for i in 0..<sample.count { y.data[i] = (sample.data[i] - s * out.data[i]) / a }
        case .sample: for i in 0..<sample.count { y.data[i] = out.data[i] }
        case .vPrediction: for i in 0..<sample.count { y.data[i] = a * sample.data[i] - s * out.data[i] }
        }
        return y
    }

    public func step(modelOutput: Tensor, index: Int, sample: Tensor, noise: Tensor?, sigma: Float, state: inout SchedulerState) -> Tensor {
        precondition(modelOutput.shape == sample.shape, "model output \(modelOutput.shape) vs sample \(sample.shape)")
        let firstOrder = usesFirstOrder(at: index, lowerOrderSteps: state.lowerOrderSteps)
        let m0 = dataPrediction(modelOutput, sample: sample, index: index)
        state.history.append(m0)
        if state.history.count > order { state.history.removeFirst(state.history.count - order) }
        let c = coefficients(at: index, secondOrder: !firstOrder)
        let y = Tensor(shape: sample.shape)
        if firstOrder {
            // x_t = (σ_t/σ_s)·x − α_t(e^{−h} − 1)·x̂₀
            for i in 0..<sample.count { y.data[i] = c.ratio * sample.data[i] - c.phi * m0.data[i] }
        } else {
            let m1 = state.history[state.history.count - 2]
            let inv = 1 / c.r0!
            switch config.dpm.solverType {
            case .midpoint:
                // x_t = (σ_t/σ_s0)·x − α_t(e^{−h} − 1)·D0 − ½·α_t(e^{−h} − 1)·D1,  D1 = (m0 − m1)/r0
                let half = 0.5 * c.phi
                for i in 0..<sample.count {
                    let d1 = inv * (m0.data[i] - m1.data[i])
                    y.data[i] = c.ratio * sample.data[i] - c.phi * m0.data[i] - half * d1
                }
            case .heun:
                // x_t = (σ_t/σ_s0)·x − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1
                let k1 = heunCoefficient(at: index, h: c.h)
                for i in 0..<sample.count {
                    let d1 = inv * (m0.data[i] - m1.data[i])
                    y.data[i] = c.ratio * sample.data[i] - c.phi * m0.data[i] + k1 * d1
                }
            }
        }
        if state.lowerOrderSteps < order { state.lowerOrderSteps += 1 }
        return y
    }
}
