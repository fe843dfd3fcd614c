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
    /// Quantize every attention's q, k, v (the scheme's activation bits) and softmax output (8-bit unsigned), as
    /// Q-Diffusion does for SD (`--quantize-attention`). Files written before it existed read as false.
    public var quantizeAttention: Bool

    public init(policy: PrecisionPolicy, weightMethod: WeightMethod = .rtn, rangeMethod: RangeMethod = .mse, adaRoundIterations: Int? = nil,
                quantizeAttention: Bool = false) {
        self.policy = policy; self.weightMethod = weightMethod; self.rangeMethod = rangeMethod; self.adaRoundIterations = adaRoundIterations
        self.quantizeAttention = quantizeAttention
    }

    enum CodingKeys: String, CodingKey { case policy, weightMethod, rangeMethod, adaRoundIterations, quantizeAttention }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        policy = try c.decode(PrecisionPolicy.self, forKey: .policy)
        weightMethod = try c.decode(WeightMethod.self, forKey: .weightMethod)
        rangeMethod = try c.decode(RangeMethod.self, forKey: .rangeMethod)
        adaRoundIterations = try c.decodeIfPresent(Int.self, forKey: .adaRoundIterations)
        quantizeAttention = try c.decodeIfPresent(Bool.self, forKey: .quantizeAttention) ?? false
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(policy, forKey: .policy)
        try c.encode(weightMethod, forKey: .weightMethod)
        try c.encode(rangeMethod, forKey: .rangeMethod)
        try c.encodeIfPresent(adaRoundIterations, forKey: .adaRoundIterations)
        if quantizeAttention { try c.encode(true, forKey: .quantizeAttention) }   // absent = false: v1 files stay byte-identical
    }

    /// Bits of q, k and v when attention is quantized (the scheme's activation bits).
    public var attentionBits: Int? { quantizeAttention ? policy.scheme.activationBits : nil }
}

/// One quantized attention of a variant: the module prefix and its four quantizers.
public struct QuantizedAttention: Codable, Equatable, Sendable {
    public var name: String
    public var quantization: AttentionQuantization
    public init(name: String, quantization: AttentionQuantization) { self.name = name; self.quantization = quantization }
}

/// Observes an attention's q, k, v and softmax probabilities during a calibration pass.
final class AttentionCapture: AttentionObserving {
    let query: ActivationObserver, key: ActivationObserver, value: ActivationObserver, probabilities: ActivationObserver

    init(inner: Int, seed: UInt64) {
        query = ActivationObserver(channels: 0..<inner, seed: seed)
        key = ActivationObserver(channels: 0..<inner, seed: seed &+ 1)
        value = ActivationObserver(channels: 0..<inner, seed: seed &+ 2)
        probabilities = ActivationObserver(channels: 0..<1, seed: seed &+ 3)
    }

    func observe(query q: Tensor, key k: Tensor, value v: Tensor) {
        query.observe(q); key.observe(k); value.observe(v)
    }

    func observe(probabilities p: UnsafePointer<Float>, rows: Int, keys: Int) {
        let t = Tensor(uninitialized: [rows * keys, 1])
        t.data.update(from: p, count: rows * keys)
        probabilities.observe(t)
    }

    /// q, k, v at `bits` and the probabilities at 8 bits (their range starts at 0, so the zero point is 0).
    ///
    /// An operand that is constant over the calibration set gets the grid [min(c, 0), max(c, 0)], which holds c
    /// exactly (e.g. the softmax of a one-token cross-attention context is always 1).
    func quantization(bits: Int, method: RangeMethod, name: String) throws -> AttentionQuantization {
        func grid(_ o: ActivationObserver, _ bits: Int, _ part: String) throws -> ActivationQuantization {
            if o.observed > 0, o.nonFinite == 0, o.maximum == o.minimum {
                return ActivationQuantization(lo: o.minimum, hi: o.maximum, bits: bits) ?? ActivationQuantization(scale: 1, zeroPoint: 0, bits: bits)
            }
            return try o.quantizer(bits: bits, method: method, layer: "\(name) (\(part))")
        }
        return AttentionQuantization(query: try grid(query, bits, "q"), key: try grid(key, bits, "k"), value: try grid(value, bits, "v"),
                                     probabilities: try grid(probabilities, 8, "softmax"))
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

    var isPure: Bool { false }

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

/// Quantizes a network in place, layer group by layer group: a denoiser on calibration records, or any
/// stack of weight layers (a first-stage decoder) given a forward over calibration rows.
public final class LayerQuantizer {
    /// The weight layers in execution order and the attentions among them.
    public let layers: [WeightLayer]
    public let attentions: [AttentionAccounting]
    public let recipe: QuantizationRecipe
    public let options: CalibrationOptions
    /// Seconds spent in weight rounding and in forward passes (for the report).
    public private(set) var roundingSeconds = 0.0, passSeconds = 0.0
    /// The attention quantizers chosen by `run` (empty unless `recipe.quantizeAttention`).
    public private(set) var attentionRecords: [QuantizedAttention] = []

    /// A denoiser (calibrated by `run(_ calib:)`).
    public convenience init(network: Denoiser, recipe: QuantizationRecipe, options: CalibrationOptions) {
        self.init(layers: network.layers, attentions: network.attentions, recipe: recipe, options: options)
        self.network = network
    }

    /// Any network given as its layers (calibrated by `run(rows:forward:)`).
    public init(layers: [WeightLayer], attentions: [AttentionAccounting], recipe: QuantizationRecipe, options: CalibrationOptions) {
        self.layers = layers; self.attentions = attentions; self.recipe = recipe; self.options = options
    }

    private var network: Denoiser?

    /// Quantizes the denoiser on calibration records (see `run(rows:forward:)`).
    public func run(_ calib: CalibrationSet, mode: ExecutionMode = .integer,
                    progress: ((Int, Int, String) -> Void)? = nil) throws -> [QuantizedLayer] {
        guard let network else { preconditionFailure("run(_ calib:) needs the denoiser initializer") }
        return try run(rows: calib.rows, mode: mode, progress: progress) { range in
            let (x, t, cond) = calib.batch(range)
            _ = try network.forward(x, timesteps: t, conditioning: cond)
        }
    }

    /// Runs the passes, installs the quantized kernels (`mode`) into `network`, and returns the layer records.
    ///
    /// With `recipe.quantizeAttention`, each attention is observed in the pass of the group holding its output
    /// projection (its q/k/v projections precede it, so they run; earlier groups already run quantized) and its
    /// quantizers are installed after that pass, so every later group calibrates on quantized attention. (The
    /// output projection of the same group sees fp32 attention outputs, like every in-group dependency.) An
    /// attention whose output projection is not quantized gets one extra pass at the end.
    /// - progress: (groups done, groups total, note).
    /// - rows: calibration rows; forward: runs the network on rows `range` (batches of `options.batch`).
    public func run(rows: Int, mode: ExecutionMode = .integer, progress: ((Int, Int, String) -> Void)? = nil,
                    forward: (Range<Int>) throws -> Void) throws -> [QuantizedLayer] {
        let fp32 = layers.map(\.kernel)
        let plan: [(Int, LayerPrecision)] = layers.enumerated().compactMap { i, l in
            recipe.policy.precision(name: l.name, role: l.role).map { (i, $0) }
        }
        let groups = stride(from: 0, to: plan.count, by: options.groupSize).map { Array(plan[$0..<min($0 + options.groupSize, plan.count)]) }
        var records: [QuantizedLayer] = []
        attentionRecords = []
        let needsHessian = recipe.weightMethod != .rtn
        let index = Dictionary(uniqueKeysWithValues: layers.enumerated().map { (ObjectIdentifier($1), $0) })
        var pendingSites: [(site: MultiHeadAttention, output: Int)] = []
        if let bits = recipe.attentionBits {
            guard bits <= 8 else { throw QuantizationError.invalidScheme("--quantize-attention needs quantized activations (the scheme has fp32 activations)") }
            pendingSites = attentions.map { ($0.site, index[ObjectIdentifier($0.output)]!) }
        }
        /// Attaches captures to the pending sites whose output projection is at or before layer `last`.
        func attachSites(upTo last: Int) -> [(MultiHeadAttention, AttentionCapture)] {
            let now = pendingSites.filter { $0.output <= last }
            pendingSites.removeAll { $0.output <= last }
            return now.map { s in
                let c = AttentionCapture(inner: s.site.heads * s.site.headDim, seed: options.seed &+ 0xA77 &+ UInt64(s.output))
                s.site.observer = c
                return (s.site, c)
            }
        }
        func installSites(_ sites: [(MultiHeadAttention, AttentionCapture)]) throws {
            for (site, capture) in sites {
                site.observer = nil
                let q = try capture.quantization(bits: recipe.attentionBits!, method: recipe.rangeMethod, name: site.name)
                site.quantization = q
                site.integerProducts = mode == .integer  // as the file will run, so later groups and statistics see it
                attentionRecords.append(QuantizedAttention(name: site.name, quantization: q))
            }
        }
        for (gi, group) in groups.enumerated() {
            let last = group.last!.0
            let sites = attachSites(upTo: last)
            let captures = group.map { i, p in
                InputCapture(layer: layers[i], inner: fp32[i], observe: p.activationBits != nil, hessian: needsHessian,
                             positions: options.hessianPositions, seed: options.seed &+ UInt64(i))
            }
            for (c, (i, _)) in zip(captures, group) { layers[i].kernel = c }
            for j in (last + 1)..<layers.count { layers[j].kernel = SkippedLayer(layers[j].kind) }
            let t0 = Date()
            for start in stride(from: 0, to: rows, by: options.batch) { try forward(start..<min(start + options.batch, rows)) }
            passSeconds += Date().timeIntervalSince(t0)
            for j in (last + 1)..<layers.count { layers[j].kernel = fp32[j] }
            try installSites(sites)
            let t1 = Date()
            for (c, (i, p)) in zip(captures, group) {
                let record = try quantize(layers[i], precision: p, capture: c)
                layers[i].kernel = record.makeKernel(for: layers[i], mode: mode)
                records.append(record)
            }
            roundingSeconds += Date().timeIntervalSince(t1)
            progress?(gi + 1, groups.count, group.map { layers[$0.0].name }.joined(separator: ", "))
        }
        if !pendingSites.isEmpty {
            let sites = attachSites(upTo: layers.count)
            let t0 = Date()
            for start in stride(from: 0, to: rows, by: options.batch) { try forward(start..<min(start + options.batch, rows)) }
            passSeconds += Date().timeIntervalSince(t0)
            try installSites(sites)
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
