//===--- UNet2DCondition.swift - diffusers UNet2DConditionModel over NHWC -----===//
//
// The cross-attention UNet of latent diffusion (diffusers 0.27.2 semantics, parameter names included):
// CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D / UpBlock2D, each
// Transformer2DModel = GroupNorm(eps 1e-6) → proj_in (1×1 conv or Linear) → BasicTransformerBlock
// (LN → self-attention, LN → cross-attention on the context, LN → GEGLU feed-forward, each residual) →
// proj_out → + residual. Attention runs in query chunks, so no [N, heads, T, L] buffer is larger than
// `MultiHeadAttention.scoreBudget` floats. Shapes: x `[N, H, W, C]`, context `[N, L, D]`.
//
//===----------------------------------------------------------------------===//

import Foundation
import SafeTensors
import TensorCore

/// diffusers `Attention` inside a BasicTransformerBlock: q from x, k/v from the context (or x), no q/k/v bias.
final class TransformerAttention {
    let toQ: WeightLayer, toK: WeightLayer, toV: WeightLayer, toOut: WeightLayer
    let attention: MultiHeadAttention
    /// Cross-attention: k and v of the last context, reused while the context (by value) and the k/v kernels
    /// are unchanged — they do not depend on x_t, so a trajectory computes them once.
    private let contextProjections = ContextProjectionCache()

    init(_ s: WeightStore, _ p: String, dim: Int, contextDim: Int?, heads: Int) throws {
        let d = dim / heads
        toQ = try s.linear("\(p).to_q", role: .attentionProjection, in: dim, out: dim, bias: false)
        toK = try s.linear("\(p).to_k", role: .attentionProjection, in: contextDim ?? dim, out: dim, bias: false)
        toV = try s.linear("\(p).to_v", role: .attentionProjection, in: contextDim ?? dim, out: dim, bias: false)
        toOut = try s.linear("\(p).to_out.0", role: .attentionProjection, in: dim, out: dim)
        attention = MultiHeadAttention(name: p, heads: heads, headDim: d)
    }

    var layers: [WeightLayer] { [toQ, toK, toV, toOut] }

    /// - x: `[N, T, dim]`; context: `[N, L, contextDim]` (nil = self-attention).
    /// - Returns: `to_out(attention) + residual`, `[N, T, dim]` (the add in to_out's output pass where it fuses).
    func callAsFunction(_ x: Tensor, context: Tensor?, plus residual: Tensor) -> Tensor {
        let n = x.shape[0], t = x.shape[1]
        let q = toQ(x)
        let k: Tensor, v: Tensor
        if let c = context { (k, v) = contextProjections.projections(of: c, key: toK, value: toV) } else { k = toK(x); v = toV(x) }
        return toOut(attention(q: q, k: k, v: v, batch: n, queries: t, keys: k.count / (n * toK.kind.outputs)), plus: residual)
    }
}

/// k = to_k(context), v = to_v(context) for the last context seen, keyed by the context's values and the
/// identity of the two kernels (a swapped kernel — quantization, calibration — recomputes). Kernels that must
/// see every call (`WeightLayerKernel.isPure == false`: calibration captures, cost counters) bypass it.
final class ContextProjectionCache {
    private var context: [Float] = [], shape: [Int] = []
    /// The kernels the cached k/v came from, held strongly: compared by identity, so a freed kernel's address can
    /// never be taken by a new kernel while it is cached.
    private var kernels: (key: WeightLayerKernel, value: WeightLayerKernel)?
    private var cached: (Tensor, Tensor)?

    func projections(of c: Tensor, key: WeightLayer, value: WeightLayer) -> (Tensor, Tensor) {
        guard key.kernel.isPure, value.kernel.isPure else { cached = nil; kernels = nil; return (key(c), value(c)) }
        if let hit = cached, let k = kernels, k.key === key.kernel, k.value === value.kernel, shape == c.shape,
           context.withUnsafeBufferPointer({ memcmp($0.baseAddress!, c.data, c.count * 4) == 0 }) {
            return hit
        }
        let result = (key(c), value(c))
        context = Array(UnsafeBufferPointer(start: c.data, count: c.count)); shape = c.shape
        kernels = (key.kernel, value.kernel); cached = result
        return result
    }
}

/// `BasicTransformerBlock` (layer_norm, self- and cross-attention, GEGLU feed-forward).
final class TransformerBlock {
    let norm1: LayerNormParams, norm2: LayerNormParams, norm3: LayerNormParams
    let attn1: TransformerAttention, attn2: TransformerAttention
    let ffIn: WeightLayer, ffOut: WeightLayer

    init(_ s: WeightStore, _ p: String, dim: Int, contextDim: Int, heads: Int) throws {
        norm1 = try s.layerNorm("\(p).norm1", channels: dim, eps: 1e-5)
        attn1 = try TransformerAttention(s, "\(p).attn1", dim: dim, contextDim: nil, heads: heads)
        norm2 = try s.layerNorm("\(p).norm2", channels: dim, eps: 1e-5)
        attn2 = try TransformerAttention(s, "\(p).attn2", dim: dim, contextDim: contextDim, heads: heads)
        norm3 = try s.layerNorm("\(p).norm3", channels: dim, eps: 1e-5)
        ffIn = try s.linear("\(p).ff.net.0.proj", role: .feedForward, in: dim, out: 8 * dim)
        ffOut = try s.linear("\(p).ff.net.2", role: .feedForward, in: 4 * dim, out: dim)
    }

    var layers: [WeightLayer] { attn1.layers + attn2.layers + [ffIn, ffOut] }

    /// x: `[N, T, dim]`, context `[N, L, D]`.
    func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        // Each residual is added in the output pass of the layer before it (same bits as adding it after).
        var h = attn1(norm1(x), context: nil, plus: x)
        h = attn2(norm2(h), context: context, plus: h)
        return ffOut(Ops.geglu(ffIn(norm3(h))), plus: h)  // [N, T, dim], as x
    }
}

/// `Transformer2DModel` with continuous input and one BasicTransformerBlock.
final class Transformer2D {
    let norm: GroupNormParams
    let projIn: WeightLayer, projOut: WeightLayer
    let block: TransformerBlock
    let linear: Bool

    init(_ s: WeightStore, _ p: String, channels c: Int, heads: Int, contextDim: Int, groups: Int, linearProjection: Bool) throws {
        norm = try s.groupNorm("\(p).norm", channels: c, groups: groups, eps: 1e-6)
        linear = linearProjection
        if linearProjection {
            projIn = try s.linear("\(p).proj_in", role: .transformerProjection, in: c, out: c)
        } else {
            projIn = try s.conv("\(p).proj_in", role: .transformerProjection, .k1(c, c))
        }
        block = try TransformerBlock(s, "\(p).transformer_blocks.0", dim: c, contextDim: contextDim, heads: heads)
        if linearProjection {
            projOut = try s.linear("\(p).proj_out", role: .transformerProjection, in: c, out: c)
        } else {
            projOut = try s.conv("\(p).proj_out", role: .transformerProjection, .k1(c, c))
        }
    }

    var layers: [WeightLayer] { [projIn] + block.layers + [projOut] }

    /// x `[N, H, W, C]`, context `[N, L, D]` → `[N, H, W, C]`. (NHWC: a 1×1 conv and a Linear act on the same rows.)
    func callAsFunction(_ x: Tensor, context: Tensor) -> Tensor {
        let (n, hh, ww, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        // NHWC rows: the 1×1 conv and the Linear read the same [N·H·W, C] values.
        let normed = norm.affine(x)
        var h = !linear || projIn.kernel.fusesChannelAffine ? projIn(normed) : projIn(normed.materialize().reshaped([n * hh * ww, c]))
        h = block(h.reshaped([n, hh * ww, c]), context: context)
        // A Linear and a 1×1 conv both read [N, H, W, C] rows, so the output has x's shape and x is added in place.
        return projOut(h.reshaped([n, hh, ww, c]), plus: x)
    }
}

/// diffusers `UNet2DConditionModel` (0.27.2): ε- or v-prediction network conditioned on a context `[N, L, D]`.
public final class UNet2DCondition: Denoiser {
    public let config: UNet2DConditionConfig
    public let configJSON: String
    public private(set) var layers: [WeightLayer] = []
    let parameterTotal: Int

    let convIn: WeightLayer, timeLinear1: WeightLayer, timeLinear2: WeightLayer
    let classTable: [Float]?
    struct Level { var resnets: [ResnetBlock]; var attentions: [Transformer2D]; var resample: WeightLayer? }
    let downs: [Level], ups: [Level]
    let midResnet1: ResnetBlock, midAttention: Transformer2D, midResnet2: ResnetBlock
    let normOut: GroupNormParams
    let convOut: WeightLayer

    public init(config: UNet2DConditionConfig, weights file: SafeTensorsFile, overrides: [String: [Float]] = [:],
                consumedElsewhere: Set<String> = [], configJSON: String = "") throws {
        self.config = config
        self.configJSON = configJSON
        let s = WeightStore(file: file, overrides: overrides, consumedElsewhere: consumedElsewhere)
        let boc = config.blockOutChannels, ted = config.timeEmbedDim, groups = config.normNumGroups, eps = config.normEps
        let shift = config.timeScaleShift == .scaleShift
        timeLinear1 = try s.linear("time_embedding.linear_1", role: .timeEmbedding, in: boc[0], out: ted)
        timeLinear2 = try s.linear("time_embedding.linear_2", role: .timeEmbedding, in: ted, out: ted)
        classTable = try config.numClassEmbeds.map { try s.tensor("class_embedding.weight", shape: [$0, ted]) }
        convIn = try s.conv("conv_in", role: .inputConv, .k3(config.inChannels, boc[0]))
        func resnet(_ p: String, _ i: Int, _ o: Int, scale: Float = 1, split: Int? = nil) throws -> ResnetBlock {
            try ResnetBlock(s, p, in: i, out: o, tembChannels: ted, groups: groups, eps: eps, scaleShift: shift, outputScale: scale, inputSplit: split)
        }
        func transformer(_ p: String, _ c: Int, heads: Int) throws -> Transformer2D {
            try Transformer2D(s, p, channels: c, heads: heads, contextDim: config.crossAttentionDim, groups: groups,
                              linearProjection: config.useLinearProjection)
        }
        var downs: [Level] = []
        var out = boc[0]
        for (i, type) in config.downBlocks.enumerated() {
            let input = out
            out = boc[i]
            let p = "down_blocks.\(i)"
            var level = Level(resnets: [], attentions: [], resample: nil)
            for j in 0..<config.layersPerBlock {
                level.resnets.append(try resnet("\(p).resnets.\(j)", j == 0 ? input : out, out))
                if type == .crossAttention { level.attentions.append(try transformer("\(p).attentions.\(j)", out, heads: config.heads[i])) }
            }
            if i < boc.count - 1 {
                let pad = config.downsamplePadding
                let g = Conv2DGeometry(inChannels: out, outChannels: out, kernelH: 3, kernelW: 3, stride: 2, padTop: pad, padLeft: pad,
                                       padBottom: pad == 0 ? 1 : pad, padRight: pad == 0 ? 1 : pad)
                level.resample = try s.conv("\(p).downsamplers.0.conv", role: .conv, .init(geometry: g))
            }
            downs.append(level)
        }
        self.downs = downs
        let midC = boc.last!
        midResnet1 = try resnet("mid_block.resnets.0", midC, midC, scale: config.midBlockScaleFactor)
        midAttention = try transformer("mid_block.attentions.0", midC, heads: config.heads.last!)
        midResnet2 = try resnet("mid_block.resnets.1", midC, midC, scale: config.midBlockScaleFactor)
        var ups: [Level] = []
        let rev = Array(boc.reversed()), revHeads = Array(config.heads.reversed())
        out = rev[0]
        for (i, type) in config.upBlocks.enumerated() {
            let prev = out
            out = rev[i]
            let input = rev[min(i + 1, boc.count - 1)]
            let p = "up_blocks.\(i)"
            var level = Level(resnets: [], attentions: [], resample: nil)
            let n = config.layersPerBlock + 1
            for j in 0..<n {
                let skip = j == n - 1 ? input : out
                let resIn = j == 0 ? prev : out
                level.resnets.append(try resnet("\(p).resnets.\(j)", resIn + skip, out, split: resIn))
                if type == .crossAttention { level.attentions.append(try transformer("\(p).attentions.\(j)", out, heads: revHeads[i])) }
            }
            if i < boc.count - 1 { level.resample = try s.conv("\(p).upsamplers.0.conv", role: .conv, .k3(out, out)) }
            ups.append(level)
        }
        self.ups = ups
        normOut = try s.groupNorm("conv_norm_out", channels: boc[0], groups: groups, eps: eps)
        convOut = try s.conv("conv_out", role: .outputConv, .k3(boc[0], config.outChannels))
        try s.rejectUnused()
        parameterTotal = s.usedElementCount
        var l: [WeightLayer] = [timeLinear1, timeLinear2, convIn]
        for level in downs {
            for (j, r) in level.resnets.enumerated() { l += r.layers; if j < level.attentions.count { l += level.attentions[j].layers } }
            if let d = level.resample { l.append(d) }
        }
        l += midResnet1.layers + midAttention.layers + midResnet2.layers
        for level in ups {
            for (j, r) in level.resnets.enumerated() { l += r.layers; if j < level.attentions.count { l += level.attentions[j].layers } }
            if let u = level.resample { l.append(u) }
        }
        l.append(convOut)
        layers = l
    }

    /// One forward pass.
    /// - x: `[N, H, W, inChannels]`; timesteps: `[N]`; context: `[N, L, cross_attention_dim]`;
    ///   classLabels: `[N]` iff the config has `num_class_embeds`.
    public func callAsFunction(_ x0: Tensor, timesteps: [Float], context: Tensor, classLabels: [Int]? = nil) throws -> Tensor {
        let n = x0.shape[0]
        guard x0.shape.count == 4, x0.shape[3] == config.inChannels else {
            throw ModelError.invalidInput("UNet input must be [N, H, W, \(config.inChannels)] NHWC, got \(x0.shape)")
        }
        guard timesteps.count == n else { throw ModelError.invalidInput("got \(timesteps.count) timesteps for a batch of \(n)") }
        guard context.shape.count == 3, context.shape[0] == n, context.shape[2] == config.crossAttentionDim, context.shape[1] >= 1 else {
            throw ModelError.invalidInput("the context must be [\(n), L, \(config.crossAttentionDim)], got \(context.shape)")
        }
        let factor = 1 << (config.blockOutChannels.count - 1)
        guard x0.shape[1] % factor == 0, x0.shape[2] % factor == 0 else {
            throw ModelError.invalidInput("input \(x0.shape[1])x\(x0.shape[2]) is not divisible by \(factor) (the UNet's downsamplings)")
        }
        var x = x0
        if config.centerInputSample { x = Tensor(shape: x0.shape); for i in 0..<x.count { x.data[i] = 2 * x0.data[i] - 1 } }
        let tProj = Ops.timestepEmbedding(timesteps, dim: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos,
                                          downscaleFreqShift: config.freqShift)
        let h1 = timeLinear1(tProj); Ops.siluInPlace(h1)
        let emb = timeLinear2(h1)
        switch (classTable, classLabels) {
        case (nil, nil): break
        case let (table?, labels?):
            let ted = config.timeEmbedDim, num = config.numClassEmbeds!
            guard labels.count == n else { throw ModelError.invalidInput("got \(labels.count) class labels for a batch of \(n)") }
            for (b, c) in labels.enumerated() {
                guard c >= 0 && c < num else { throw ModelError.invalidInput("class label \(c) is out of range 0..<\(num)") }
                for i in 0..<ted { emb.data[b * ted + i] += table[c * ted + i] }
            }
        case (nil, _?): throw ModelError.invalidInput("this UNet has no class embedding: do not pass class labels")
        case (_?, nil): throw ModelError.invalidInput("this UNet has num_class_embeds: pass one class label per image")
        }
        let temb = Ops.silu(emb)
        var h = convIn(x)
        var skips: [Tensor] = [h]
        for level in downs {
            for (j, r) in level.resnets.enumerated() {
                h = r(h, tembSiLU: temb)
                if j < level.attentions.count { h = level.attentions[j](h, context: context) }
                skips.append(h)
            }
            if let d = level.resample { h = d(h); skips.append(h) }
        }
        h = midResnet1(h, tembSiLU: temb)
        h = midAttention(h, context: context)
        h = midResnet2(h, tembSiLU: temb)
        for level in ups {
            for (j, r) in level.resnets.enumerated() {
                h = r(h, concatenating: skips.removeLast(), tembSiLU: temb)
                if j < level.attentions.count { h = level.attentions[j](h, context: context) }
            }
            if let u = level.resample { h = u.upsampledNearest2x(h) }
        }
        return convOut(normOut.affine(h, silu: true))
    }
}

// MARK: - Denoiser conformance

extension UNet2DCondition {
    public static let architecture = DenoiserArchitecture(classNames: ["UNet2DConditionModel"]) { json, file, weights, overrides, consumed in
        try UNet2DCondition(config: try UNet2DConditionConfig(json: json, file: file), weights: weights, overrides: overrides,
                            consumedElsewhere: consumed, configJSON: String(decoding: json, as: UTF8.self))
    }

    public var architecture: String { "UNet2DConditionModel" }
    public var configFingerprint: String { "UNet2DConditionModel|\(config)" }
    public var sampleShape: [Int] { [config.sampleHeight, config.sampleWidth, config.inChannels] }
    public var outputChannels: Int { config.outChannels }
    public var parameterCount: Int { parameterTotal }
    public var conditioningKind: ConditioningKind { .context(width: config.crossAttentionDim) }

    public var attentions: [AttentionAccounting] {
        let all = downs.flatMap(\.attentions) + [midAttention] + ups.flatMap(\.attentions)
        return all.flatMap { t in
            [t.block.attn1, t.block.attn2].map { AttentionAccounting(query: $0.toQ, key: $0.toK, output: $0.toOut, innerWidth: $0.toQ.kind.outputs, site: $0.attention) }
        }
    }

    /// A zero context of one token (costs: cross-attention matmuls then count L = 1; SD-style models should be
    /// costed with their own context length through `LayerCosts.measure(_:conditioning:)`).
    public func exampleConditioning(rows: Int) -> Conditioning { .context(Tensor(shape: [rows, 1, config.crossAttentionDim])) }

    public func forward(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor {
        guard case let .context(c) = conditioning else {
            throw ModelError.invalidInput("UNet2DConditionModel needs a cross-attention context [N, L, \(config.crossAttentionDim)]")
        }
        guard config.numClassEmbeds == nil else {
            throw ModelError.invalidInput("this UNet2DConditionModel also takes class labels (num_class_embeds); use the library call with classLabels")
        }
        return try self(x, timesteps: timesteps, context: c)
    }
}
