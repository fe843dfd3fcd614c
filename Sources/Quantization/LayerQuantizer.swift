//===--- LayerQuantizer.swift - sequential post-training quantization --------===//
//
// Walks the UNet's weight layers in execution order, a group of layers per pass over the
// calibration set. In each pass the group's layers observe their inputs (activation ranges, and
// the Hessian H = mean x·xᵀ of their input patches for AdaRound/GPTQ), computed by the network
// quantized so far — the earlier groups already run their quantized kernels — while the layers
// after the group are skipped (they return zeros of the right shape; nothing reads them before the
// group's inputs are captured). Then the group's weights are rounded and its kernels installed.
//
//===----------------------------------------------------------------------===//

import Diffusion
import Foundation
import TensorCore
import WeightRounding

/// How weights are rounded to the grid.
public enum WeightMethod: String, Codable, CaseIterable, Sendable {
    /// Round to nearest with an MSE-searched per-channel scale.
    case rtn
    /// Layer-wise AdaRound on the closed-form loss tr(ΔW·H·ΔWᵀ).
    case adaround
    /// GPTQ with the same H.
    case gptq
}

/// Everything that decides how a model is quantized (one variant of a quantized file).
public struct QuantizationRecipe: Codable, Equatable, Sendable {
    public var policy: PrecisionPolicy
    public var weightMethod: WeightMethod
    public var rangeMethod: RangeMethod
    public var adaRoundIterations: Int?

    public init(policy: PrecisionPolicy, weightMethod: WeightMethod = .rtn, rangeMethod: RangeMethod = .mse, adaRoundIterations: Int? = nil) {
        self.policy = policy; self.weightMethod = weightMethod; self.rangeMethod = rangeMethod; self.adaRoundIterations = adaRoundIterations
    }
}

/// Returns a zero tensor of the layer's output shape (layers after the group being calibrated).
final class SkippedLayer: WeightLayerKernel {
    let kind: LayerKind
    init(_ kind: LayerKind) { self.kind = kind }
    func forward(_ x: Tensor) -> Tensor {
        switch kind {
        case let .conv(g): return Tensor(shape: [x.shape[0], g.outHeight(x.shape[1]), g.outWidth(x.shape[2]), g.outChannels])
        case let .linear(_, o): return Tensor(shape: Array(x.shape.dropLast()) + [o])
        }
    }
}

/// Observes one layer's inputs during a pass, then forwards to its fp32 kernel.
final class InputCapture: WeightLayerKernel {
    let layer: WeightLayer
    let inner: WeightLayerKernel
    let observers: [ActivationObserver]
    let wantsHessian: Bool
    let positions: Int
    private(set) var hessian: [Double] = []
    private(set) var hessianRows = 0
    private var rng: GaussianStream
    /// XᵀX product; its oneDNN primitive is cached per row count.
    private let gram = StridedBatchedMatmul()

    init(layer: WeightLayer, inner: WeightLayerKernel, observe: Bool, hessian: Bool, positions: Int, seed: UInt64) {
        self.layer = layer; self.inner = inner; self.wantsHessian = hessian; self.positions = positions
        let cin = layer.kind.inputs
        if observe {
            let ranges = layer.inputSplit.map { [0..<$0, $0..<cin] } ?? [0..<cin]
            observers = ranges.map { ActivationObserver(channels: $0, seed: seed) }
        } else { observers = [] }
        rng = GaussianStream(seed: seed, index: 0x4E55)
        var k = cin
        if case let .conv(g) = layer.kind { k *= g.kernelH * g.kernelW }
        if hessian { self.hessian = [Double](repeating: 0, count: k * k) }
    }

    func forward(_ x: Tensor) -> Tensor {
        for o in observers { o.observe(x) }
        if wantsHessian { accumulateHessian(x) }
        return inner.forward(x)
    }

    /// Input patches (im2col rows in OIHW order) at random output positions, summed into H += XᵀX.
    private func accumulateHessian(_ x: Tensor) {
        let n = x.shape[0]
        var rows: [Float] = []
        var k = 0
        switch layer.kind {
        case let .conv(g):
            let (h, w, c) = (x.shape[1], x.shape[2], x.shape[3])
            let oh = g.outHeight(h), ow = g.outWidth(w), taps = g.kernelH * g.kernelW
            k = c * taps
            let p = min(positions, oh * ow)
            rows = [Float](repeating: 0, count: n * p * k)
            for b in 0..<n {
                for j in 0..<p {
                    let pos = Int(rng.nextUInt64() % UInt64(oh * ow))
                    let (oy, ox) = (pos / ow, pos % ow)
                    let base = (b * p + j) * k
                    for ky in 0..<g.kernelH {
                        let iy = oy * g.stride - g.padTop + ky
                        if iy < 0 || iy >= h { continue }
                        for kx in 0..<g.kernelW {
                            let ix = ox * g.stride - g.padLeft + kx
                            if ix < 0 || ix >= w { continue }
                            let src = x.data + ((b * h + iy) * w + ix) * c
                            let t = ky * g.kernelW + kx
                            for ch in 0..<c { rows[base + ch * taps + t] = src[ch] }
                        }
                    }
                }
            }
        case let .linear(i, _):
            k = i
            let tokens = x.count / (n * i)
            let p = min(positions, tokens)
            rows = [Float](repeating: 0, count: n * p * k)
            for b in 0..<n {
                for j in 0..<p {
                    let t = p == tokens ? j : Int(rng.nextUInt64() % UInt64(tokens))
                    for ch in 0..<k { rows[(b * p + j) * k + ch] = x.data[(b * tokens + t) * i + ch] }
                }
            }
        }
        let r = rows.count / k
        let out = Tensor(shape: [k, k])
        rows.withUnsafeMutableBufferPointer { xp in
            gram.run(a: xp.baseAddress!, .init(dims: [1, 1, k, r], strides: [k * r, k * r, 1, k]),
                   b: xp.baseAddress!, .init(dims: [1, 1, r, k], strides: [k * r, k * r, k, 1]),
                   c: out.data, .init(dims: [1, 1, k, k], strides: [k * k, k * k, k, 1]))
        }
        for i in 0..<(k * k) { hessian[i] += Double(out.data[i]) }
        hessianRows += r
    }

    /// H = mean over captured rows of x·xᵀ.
    var meanHessian: [Double] { hessian.map { $0 / Double(max(hessianRows, 1)) } }
}

/// Quantizes a network in place, layer group by layer group.
public final class LayerQuantizer {
    public let network: Denoiser
    public let recipe: QuantizationRecipe
    public let options: CalibrationOptions
    /// Seconds spent in weight rounding and in forward passes (for the report).
    public private(set) var roundingSeconds = 0.0, passSeconds = 0.0

    public init(network: Denoiser, recipe: QuantizationRecipe, options: CalibrationOptions) {
        self.network = network; self.recipe = recipe; self.options = options
    }

    /// Runs the passes, installs the quantized kernels (`mode`) into `network`, and returns the layer records.
    /// - progress: (groups done, groups total, note).
    public func run(_ calib: CalibrationSet, mode: ExecutionMode = .integer,
                    progress: ((Int, Int, String) -> Void)? = nil) throws -> [QuantizedLayer] {
        let layers = network.layers
        let fp32 = layers.map(\.kernel)
        let plan: [(Int, LayerPrecision)] = layers.enumerated().compactMap { i, l in
            recipe.policy.precision(name: l.name, role: l.role).map { (i, $0) }
        }
        let groups = stride(from: 0, to: plan.count, by: options.groupSize).map { Array(plan[$0..<min($0 + options.groupSize, plan.count)]) }
        var records: [QuantizedLayer] = []
        let needsHessian = recipe.weightMethod != .rtn
        for (gi, group) in groups.enumerated() {
            let last = group.last!.0
            let captures = group.map { i, p in
                InputCapture(layer: layers[i], inner: fp32[i], observe: p.activationBits != nil, hessian: needsHessian,
                             positions: options.hessianPositions, seed: options.seed &+ UInt64(i))
            }
            for (c, (i, _)) in zip(captures, group) { layers[i].kernel = c }
            for j in (last + 1)..<layers.count { layers[j].kernel = SkippedLayer(layers[j].kind) }
            let t0 = Date()
            for start in stride(from: 0, to: calib.rows, by: options.batch) {
                let (x, t, cond) = calib.batch(start..<min(start + options.batch, calib.rows))
                _ = try network.forward(x, timesteps: t, conditioning: cond)
            }
            passSeconds += Date().timeIntervalSince(t0)
            for j in (last + 1)..<layers.count { layers[j].kernel = fp32[j] }
            let t1 = Date()
            for (c, (i, p)) in zip(captures, group) {
                let record = try quantize(layers[i], precision: p, capture: c)
                layers[i].kernel = record.makeKernel(for: layers[i], mode: mode)
                records.append(record)
            }
            roundingSeconds += Date().timeIntervalSince(t1)
            progress?(gi + 1, groups.count, group.map { layers[$0.0].name }.joined(separator: ", "))
        }
        return records
    }

    private func quantize(_ layer: WeightLayer, precision p: LayerPrecision, capture: InputCapture) throws -> QuantizedLayer {
        let inputs = try capture.observers.map { try $0.quantizer(bits: p.activationBits!, method: recipe.rangeMethod, layer: layer.name) }
        let rows = layer.kind.outputs, cols = layer.kind.weightCount / rows
        let grid = WeightGrid(bits: p.weightBits)
        let scales = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: cols, grid: grid)
        let hessian = recipe.weightMethod == .rtn ? nil : capture.meanHessian
        do {
            try WeightRounding.validate(weights: layer.weights, rows: rows, columns: cols, scales: scales, grid: grid, hessian: hessian)
        } catch {
            throw QuantizationError.calibration("layer \(layer.name): \(error)")
        }
        let q: [Int8]
        switch recipe.weightMethod {
        case .rtn:
            q = WeightRounding.roundToNearest(weights: layer.weights, rows: rows, columns: cols, scales: scales, grid: grid)
        case .adaround:
            var o = AdaRoundOptions()
            if let it = recipe.adaRoundIterations { o.iterations = it }
            q = WeightRounding.adaRound(weights: layer.weights, rows: rows, columns: cols, scales: scales, grid: grid,
                                        hessian: hessian!, options: o)
        case .gptq:
            do {
                q = try WeightRounding.gptq(weights: layer.weights, rows: rows, columns: cols, scales: scales, grid: grid, hessian: hessian!)
            } catch { throw QuantizationError.calibration("layer \(layer.name): GPTQ failed: \(error)") }
        }
        guard q.count == layer.weights.count else { throw QuantizationError.calibration("layer \(layer.name): weight rounding returned \(q.count) values") }
        return QuantizedLayer(name: layer.name, precision: p, q: q, scales: scales, inputs: inputs,
                              split: inputs.count == 2 ? layer.inputSplit : nil)
    }
}
