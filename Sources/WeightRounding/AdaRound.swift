//===--- AdaRound.swift - adaptive rounding on the closed-form layer loss --===//
//
// Loss (per layer, BRECQ normalization): L(α) = tr(ΔW·H·ΔWᵀ) + λ·Σ(1 − |2h(α)−1|^β), where
//   ΔW = s ⊙ clamp(floor(W/s) + h(α), qmin, qmax) − W,   h(α) = clamp(σ(α)(ζ−γ)+γ, 0, 1).
// Gradient (what autograd computes in BRECQ, including its clamp masks, inclusive bounds):
//   ∂L/∂α = h′(α) · ( 2·s·(ΔW·H) · [qmin ≤ floor+h ≤ qmax]  −  2λβ·|2h−1|^(β−1)·sign(2h−1) ),
//   h′(α) = (ζ−γ)·σ(α)(1−σ(α)) where 0 ≤ σ(α)(ζ−γ)+γ ≤ 1, else 0.
// The [rows, K]×[K, K] product runs on oneDNN (fp32); the elementwise passes are plain loops that
// LLVM vectorizes (no calls, selects only).
//
//===----------------------------------------------------------------------===//

import TensorCore
import Foundation

/// Hyperparameters of `WeightRounding.adaRound`.
///
/// **Defaults: 1000 iterations, Adam lr 5e-2** (λ, β, warm-up, ζ, γ as BRECQ/PTQD). BRECQ runs 10 000
/// minibatch steps at lr 1e-3 (batch 8); here the loss is exact (H already averages every calibration
/// row), so there is no gradient noise to average out. Adam moves α by about lr per step whatever the
/// gradient scale, and α starts within ±2.4 (h saturates at |α| ≈ 2.4), so 1000 × 5e-2 leaves ample travel.
///
/// Measured (W4, MSE scales, real `models/fmnist-ddpm` weights, synthetic post-SiLU im2col inputs;
/// `BenchmarkTests`, run with `PTQD_ROUNDING_BENCH=1`; 2.45 GHz AVX2 EPYC, oneDNN `gemm:jit` ≈ 58 GFLOP/s
/// per core, single-thread CPU seconds; loss = tr(ΔW·H·ΔWᵀ) relative to RTN):
///
/// | layer | iterations @ lr → loss / RTN | CPU s |
/// |---|---|---|
/// | 128×2304 (up 0 conv1) | 250@1e-2 0.41 · 500@1e-2 0.28 · 1000@1e-2 0.18 · 2000@1e-2 0.13 | 27 per 1000 it |
/// |  | 1000@3e-3 0.27 · 1000@3e-2 0.150 · **1000@5e-2 0.146** · 1000@1e-1 0.147 · GPTQ 0.118 (0.9 s) | |
/// | 128×1152 (mid conv1) | 1000@1e-2 0.166 · 1000@3e-2 0.134 · **1000@5e-2 0.130** · 1000@1e-1 0.130 · 2000@3e-2 0.114 | 7 |
/// | 32×288, 64×192, 128×128 | 1000@1e-2 0.175 / 0.315 / 0.365 → 1000@5e-2 0.148 / 0.291 / 0.350 | 0.2–0.3 |
///
/// Whole UNet (65 conv/linear layers, largest 128×2304): **127 s single-core CPU** with the defaults,
/// geometric-mean loss ratio vs RTN **0.235** (GPTQ: 0.266 in 3.8 s). On two idle cores expect ≈ 65–80 s:
/// the [rows, K]×[K, K] product (~90% of an iteration on the large layers) and the elementwise passes of
/// layers with ≥ 64k weights use both (not measurable on the shared test machine, which ran at load 5).
/// lr between 3e-2 and 1e-1 is flat; doubling the iterations buys another ~15% loss for twice the time.
public struct AdaRoundOptions: Sendable, Equatable {
    /// Adam steps (full batch). Default `defaultIterations`.
    public var iterations: Int
    /// Weight of the rounding regularizer λ·Σ(1 − |2h−1|^β) (BRECQ: 0.01, relative to the loss above).
    public var lambda: Double = 0.01
    /// β at the end of warm-up (annealed linearly to `betaEnd` at the last iteration).
    public var betaStart: Double = 20
    /// β at the last iteration.
    public var betaEnd: Double = 2
    /// Fraction of iterations without the regularizer (β stays at `betaStart` until then).
    public var warmup: Double = 0.2
    /// Adam learning rate on α (α is in logit units; init |α| ≤ 2.4). Default `defaultLearningRate`.
    public var learningRate: Double
    /// Rectified-sigmoid stretch: h = clamp(σ(α)(ζ−γ)+γ, 0, 1).
    public var zeta: Double = 1.1
    /// Rectified-sigmoid offset (see `zeta`).
    public var gamma: Double = -0.1

    /// Default iteration count (see the type's doc comment for the measurements).
    public static let defaultIterations = 1000
    /// Default Adam learning rate on α.
    public static let defaultLearningRate = 5e-2

    public init(iterations: Int = AdaRoundOptions.defaultIterations, lambda: Double = 0.01,
                betaStart: Double = 20, betaEnd: Double = 2, warmup: Double = 0.2,
                learningRate: Double = AdaRoundOptions.defaultLearningRate, zeta: Double = 1.1, gamma: Double = -0.1) {
        self.iterations = iterations; self.lambda = lambda
        self.betaStart = betaStart; self.betaEnd = betaEnd; self.warmup = warmup
        self.learningRate = learningRate; self.zeta = zeta; self.gamma = gamma
    }

    /// β and whether the regularizer is on at 1-based iteration `count` of `iterations`
    /// (BRECQ `LinearTempDecay` + `loss_start`).
    func schedule(count: Int) -> (beta: Double, regularize: Bool) {
        let start = warmup * Double(iterations)
        if Double(count) < start { return (betaStart, false) }
        let span = Double(iterations) - start
        let rel = span > 0 ? (Double(count) - start) / span : 1
        return (betaEnd + (betaStart - betaEnd) * max(0, 1 - rel), true)
    }

    func check() throws {
        guard iterations >= 0 else { throw WeightRoundingError.invalidOption("iterations = \(iterations) < 0") }
        for (name, v) in [("lambda", lambda), ("betaStart", betaStart), ("betaEnd", betaEnd), ("warmup", warmup),
                          ("learningRate", learningRate), ("zeta", zeta), ("gamma", gamma)] where !v.isFinite {
            throw WeightRoundingError.invalidOption("\(name) = \(v)")
        }
        guard lambda >= 0, learningRate > 0, (0...1).contains(warmup), betaStart >= 1, betaEnd >= 1 else {
            throw WeightRoundingError.invalidOption("need λ ≥ 0, lr > 0, warmup ∈ [0, 1], β ≥ 1")
        }
        guard zeta > 1, gamma < 0 else { throw WeightRoundingError.invalidOption("need ζ > 1 and γ < 0, got \(zeta), \(gamma)") }
    }
}

extension WeightRounding {
    /// AdaRound (Nagel et al. 2020) on the closed-form loss: minimize tr((Ŵ−W)H(Ŵ−W)ᵀ) + λ·Σ(1 − |2h(α)−1|^β)
    /// with Ŵ = s·clamp(floor(W/s) + h(α), qmin, qmax), h(α) = clamp(sigmoid(α)(ζ−γ)+γ, 0, 1), α initialized
    /// so h(α) = frac(W/s); β annealed linearly betaStart→betaEnd after `warmup` (no regularizer during
    /// warm-up); Adam (β₁ 0.9, β₂ 0.999, ε 1e-8) on α; final q = floor(W/s) + [α ≥ 0], clamped to the grid.
    ///
    /// - Parameters:
    ///   - weights: `[rows, columns]` row-major fp32 (rows = output channels, columns = K in OIHW order).
    ///   - scales: `[rows]` fixed per-row scales (e.g. `mseScales`).
    ///   - hessian: `[columns, columns]` row-major Float64 = mean over input rows x (one im2col patch /
    ///     one token, same K order as the weights) of x·xᵀ. Used in fp32 for the per-iteration product.
    /// - Returns: `[rows, columns]` integers in [qmin, qmax], each within one step of round-to-nearest;
    ///   `[]` on invalid input (`validate` gives the reason). Deterministic: full batch, no randomness;
    ///   the same input and oneDNN thread count give the same output (a different thread count may change
    ///   the fp32 summation order of the product and so, rarely, a rounding decision).
    public static func adaRound(weights: [Float], rows: Int, columns: Int, scales: [Float], grid: WeightGrid,
                                hessian: [Double], options: AdaRoundOptions = .init()) -> [Int8] {
        guard (try? validate(weights: weights, rows: rows, columns: columns, scales: scales, grid: grid, hessian: hessian)) != nil,
              (try? options.check()) != nil else { return [] }
        let solver = AdaRoundSolver(weights: weights, rows: rows, columns: columns, scales: scales, grid: grid,
                                    hessian: hessian, options: options)
        solver.run()
        return solver.hardRounding()
    }
}

/// The AdaRound optimizer state for one layer. Internal; the tests drive it step by step.
final class AdaRoundSolver {
    let rows: Int, k: Int, n: Int
    let options: AdaRoundOptions
    let weights: [Float]
    let scales: [Float]
    let lo: Float, hi: Float
    /// floor(W/s), `[rows, K]`.
    var floorW: [Float]
    /// Rounding logits α, `[rows, K]`.
    var alpha: [Float]
    var adamM: [Float], adamV: [Float]
    /// Soft rounding h(α), its derivative h′(α) (0 where clamped), the grid mask (1 where the
    /// unclamped floor+h lies in [qmin, qmax]) and the gradient, all `[rows, K]`.
    var h: [Float], dh: [Float], gridMask: [Float], grad: [Float]
    /// ΔW = Ŵ − W (fp32, oneDNN source) and its product with H.
    let delta: Tensor
    var product: Tensor
    let linear: FloatLinear
    /// Completed Adam steps.
    private(set) var step = 0

    init(weights: [Float], rows: Int, columns: Int, scales: [Float], grid: WeightGrid, hessian: [Double], options: AdaRoundOptions) {
        self.rows = rows; self.k = columns; self.n = rows * columns
        self.options = options
        self.weights = weights; self.scales = scales
        self.lo = Float(grid.qmin); self.hi = Float(grid.qmax)
        floorW = [Float](repeating: 0, count: n)
        alpha = [Float](repeating: 0, count: n)
        let zeta = Float(options.zeta), gamma = Float(options.gamma)
        for r in 0..<rows {
            let s = scales[r]
            for c in 0..<columns {
                let i = r * columns + c
                let x = weights[i] / s
                let f = x.rounded(.down)
                floorW[i] = f
                let rest = x - f  // ∈ [0, 1)
                alpha[i] = -Foundation.log((zeta - gamma) / (rest - gamma) - 1)
            }
        }
        adamM = [Float](repeating: 0, count: n); adamV = adamM
        h = adamM; dh = adamM; gridMask = adamM; grad = adamM
        delta = Tensor(shape: [rows, columns])
        product = Tensor(shape: [rows, columns])
        linear = FloatLinear(inFeatures: columns, outFeatures: columns, weights: hessian.map { Float($0) }, bias: nil)
    }

    /// Row chunks for the elementwise passes: split across threads only when a chunk has ≥ 64k elements.
    private func forRowChunks(_ body: (Range<Int>) -> Void) {
        Parallel.forEachChunk(rows, minChunk: max(1, 65_536 / max(k, 1)), body)
    }

    /// α → h, h′, grid mask and ΔW (written into `delta`), row by row through `AdaRoundKernels.forward`.
    func forward() {
        let zg = Float(options.zeta - options.gamma), g = Float(options.gamma)
        let lo = self.lo, hi = self.hi, k = self.k
        let d = delta.data
        alpha.withUnsafeBufferPointer { a in floorW.withUnsafeBufferPointer { fl in weights.withUnsafeBufferPointer { w in
        scales.withUnsafeBufferPointer { sp in
        h.withUnsafeMutableBufferPointer { hp in dh.withUnsafeMutableBufferPointer { dhp in gridMask.withUnsafeMutableBufferPointer { mp in
            let a = a.baseAddress!, fl = fl.baseAddress!, w = w.baseAddress!, sp = sp.baseAddress!
            let hp = hp.baseAddress!, dhp = dhp.baseAddress!, mp = mp.baseAddress!
            forRowChunks { range in
                for r in range {
                    let o = r &* k
                    AdaRoundKernels.forward(alpha: a + o, floor: fl + o, weights: w + o, h: hp + o, dh: dhp + o, mask: mp + o,
                                            delta: d + o, count: k, scale: sp[r], zg: zg, gamma: g, lo: lo, hi: hi)
                }
            }
        } } } } } } }
    }

    /// ∂L/∂α into `grad` (after `forward`); leaves ΔW·H in `product`.
    /// - Parameter beta: the regularizer's β, or nil during warm-up (no regularizer).
    func gradient(beta: Double?) {
        product = linear.forward(delta)
        let lambda = Float(options.lambda)
        let regOn = beta != nil && lambda > 0
        let b = Float(beta ?? 1), k = self.k
        let gm = product.data
        h.withUnsafeBufferPointer { hp in dh.withUnsafeBufferPointer { dhp in gridMask.withUnsafeBufferPointer { mp in
        scales.withUnsafeBufferPointer { sp in grad.withUnsafeMutableBufferPointer { gp in
            let hp = hp.baseAddress!, dhp = dhp.baseAddress!, mp = mp.baseAddress!, gp = gp.baseAddress!, sp = sp.baseAddress!
            forRowChunks { range in
                for r in range {
                    let o = r &* k
                    if regOn {
                        AdaRoundKernels.gradient(h: hp + o, dh: dhp + o, mask: mp + o, product: gm + o, grad: gp + o, count: k,
                                                 twoScale: 2 * sp[r], betaMinus1: b - 1, twoLambdaBeta: 2 * lambda * b)
                    } else {
                        AdaRoundKernels.gradient(dh: dhp + o, mask: mp + o, product: gm + o, grad: gp + o, count: k, twoScale: 2 * sp[r])
                    }
                }
            }
        } } } } }
    }

    /// The two loss terms at the state of the last `forward`/`gradient`: tr(ΔW·H·ΔWᵀ) from `delta` and
    /// `product` (fp32 product, Float64 sums), and λ·Σ(1 − |2h−1|^β) (0 for β = nil).
    func losses(beta: Double?) -> (recon: Double, reg: Double) {
        var recon = 0.0, reg = 0.0
        for i in 0..<n { recon += Double(delta.data[i]) * Double(product.data[i]) }
        if let beta, options.lambda > 0 {
            for x in h { reg += 1 - Foundation.pow(abs(2 * Double(x) - 1), beta) }
            reg *= options.lambda
        }
        return (recon, reg)
    }

    /// One Adam step on α with `grad` (PyTorch's update: bias-corrected, ε added after the square root).
    func adam() {
        step += 1
        let bc1 = 1 - Foundation.pow(0.9, Double(step)), bc2 = 1 - Foundation.pow(0.999, Double(step))
        let stepSize = Float(options.learningRate / bc1), invSqrtBC2 = Float(1 / bc2.squareRoot())
        let k = self.k
        grad.withUnsafeBufferPointer { gp in adamM.withUnsafeMutableBufferPointer { mp in adamV.withUnsafeMutableBufferPointer { vp in
        alpha.withUnsafeMutableBufferPointer { ap in
            let gp = gp.baseAddress!, mp = mp.baseAddress!, vp = vp.baseAddress!, ap = ap.baseAddress!
            forRowChunks { range in
                let o = range.lowerBound &* k
                AdaRoundKernels.adam(grad: gp + o, m: mp + o, v: vp + o, alpha: ap + o, count: range.count &* k,
                                     stepSize: stepSize, invSqrtBC2: invSqrtBC2)
            }
        } } } }
    }

    /// Runs all iterations; `trace` (if given) receives (iteration, recon, reg) every `traceEvery` steps.
    func run(traceEvery: Int = 0, trace: ((Int, Double, Double) -> Void)? = nil) {
        for t in 0..<options.iterations {
            let (beta, regularize) = options.schedule(count: t + 1)
            forward()
            gradient(beta: regularize ? beta : nil)
            if let trace, traceEvery > 0, t % traceEvery == 0 || t == options.iterations - 1 {
                let (recon, reg) = losses(beta: regularize ? beta : nil)
                trace(t, recon, reg)
            }
            adam()
        }
    }

    /// q = clamp(floor(W/s) + [α ≥ 0], qmin, qmax), `[rows, K]`.
    func hardRounding() -> [Int8] {
        var q = [Int8](repeating: 0, count: n)
        for i in 0..<n { q[i] = Int8(min(max(floorW[i] + (alpha[i] >= 0 ? 1 : 0), lo), hi)) }
        return q
    }

    /// Plain reference of `forward` + `gradient` in Float64 with a naive ΔW·H: returns (∂L/∂α, recon, reg).
    static func gradientReference(weights: [Float], rows: Int, columns k: Int, scales: [Float], grid: WeightGrid,
                                  hessian: [Double], alpha: [Float], floorW: [Float], options: AdaRoundOptions,
                                  beta: Double?) -> (grad: [Double], recon: Double, reg: Double) {
        let zg = options.zeta - options.gamma, lo = Double(grid.qmin), hi = Double(grid.qmax)
        let n = rows * k
        var hv = [Double](repeating: 0, count: n), dhv = hv, mask = hv, dw = hv
        for i in 0..<n {
            let sig = 1 / (1 + Foundation.exp(-Double(alpha[i])))
            let u = sig * zg + options.gamma
            hv[i] = min(max(u, 0), 1)
            dhv[i] = (u >= 0 && u <= 1) ? zg * sig * (1 - sig) : 0
            let v = Double(floorW[i]) + hv[i]
            mask[i] = (v >= lo && v <= hi) ? 1 : 0
            dw[i] = Double(scales[i / k]) * min(max(v, lo), hi) - Double(weights[i])
        }
        var grad = [Double](repeating: 0, count: n)
        var recon = 0.0, reg = 0.0
        for r in 0..<rows {
            for i in 0..<k {
                var p = 0.0
                for j in 0..<k { p += dw[r * k + j] * hessian[j * k + i] }
                let e = r * k + i
                recon += dw[e] * p
                var g = 2 * Double(scales[r]) * p * mask[e]
                if let beta, options.lambda > 0 {
                    let t2 = 2 * hv[e] - 1
                    reg += options.lambda * (1 - Foundation.pow(abs(t2), beta))
                    let sign: Double = t2 > 0 ? 1 : (t2 < 0 ? -1 : 0)
                    g += -2 * options.lambda * beta * Foundation.pow(abs(t2), beta - 1) * sign
                }
                grad[e] = dhv[e] * g
            }
        }
        return (grad, recon, reg)
    }
}


// MARK: - Elementwise kernels

/// The elementwise passes as free functions over raw pointers: every invariant is an argument (not a
/// closure capture LLVM must reload), bodies are branch-free, so the loops vectorize.
enum AdaRoundKernels {
    /// h = clamp(u, 0, 1) with u = σ(α)(ζ−γ)+γ; h′ = (ζ−γ)σ(1−σ) where u was not clamped, else 0;
    /// mask = 1 where floor+h ∈ [lo, hi]; ΔW = s·clamp(floor+h, lo, hi) − W.
    @inline(never)
    static func forward(alpha: UnsafePointer<Float>, floor: UnsafePointer<Float>, weights: UnsafePointer<Float>,
                        h: UnsafeMutablePointer<Float>, dh: UnsafeMutablePointer<Float>, mask: UnsafeMutablePointer<Float>,
                        delta: UnsafeMutablePointer<Float>, count: Int, scale: Float, zg: Float, gamma: Float, lo: Float, hi: Float) {
        for c in 0..<count {
            let sig = 1 / (1 + fastExpf(-alpha[c]))
            let u = sig * zg + gamma
            let hv = min(max(u, 0), 1)
            let v = floor[c] + hv
            let vc = min(max(v, lo), hi)
            h[c] = hv
            dh[c] = hv == u ? zg * sig * (1 - sig) : 0
            mask[c] = vc == v ? 1 : 0
            delta[c] = scale * vc - weights[c]
        }
    }

    /// grad = h′·(2s·(ΔW·H)·mask − 2λβ·|2h−1|^(β−1)·sign(2h−1)); |2h−1|^(β−1) = exp((β−1)·ln t), 0 for t < 1e-30.
    @inline(never)
    static func gradient(h: UnsafePointer<Float>, dh: UnsafePointer<Float>, mask: UnsafePointer<Float>,
                         product: UnsafePointer<Float>, grad: UnsafeMutablePointer<Float>, count: Int,
                         twoScale: Float, betaMinus1: Float, twoLambdaBeta: Float) {
        for c in 0..<count {
            let t2 = 2 * h[c] - 1
            let t = abs(t2)
            let tiny = t < 1e-30
            let p = fastExpf(betaMinus1 * fastLogf(tiny ? 1 : t))
            let mag = tiny ? 0 : twoLambdaBeta * p
            let dreg = t2 > 0 ? -mag : mag
            grad[c] = dh[c] * (twoScale * product[c] * mask[c] + dreg)
        }
    }

    /// Warm-up gradient (no regularizer): grad = h′·2s·(ΔW·H)·mask.
    @inline(never)
    static func gradient(dh: UnsafePointer<Float>, mask: UnsafePointer<Float>, product: UnsafePointer<Float>,
                         grad: UnsafeMutablePointer<Float>, count: Int, twoScale: Float) {
        for c in 0..<count { grad[c] = dh[c] * (twoScale * product[c] * mask[c]) }
    }

    /// Adam (β₁ 0.9, β₂ 0.999, ε 1e-8): m, v moments; α −= stepSize·m / (√v·invSqrtBC2 + ε).
    /// (`fastSqrtf`: `Float.squareRoot` lowers to sqrtf with an errno branch, which blocks vectorization.)
    @inline(never)
    static func adam(grad: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>,
                     alpha: UnsafeMutablePointer<Float>, count: Int, stepSize: Float, invSqrtBC2: Float) {
        for i in 0..<count {
            let g = grad[i]
            let mi = 0.9 * m[i] + 0.1 * g
            let vi = 0.999 * v[i] + 0.001 * g * g
            m[i] = mi; v[i] = vi
            alpha[i] -= stepSize * mi / (fastSqrtf(vi) * invSqrtBC2 + 1e-8)
        }
    }
}
