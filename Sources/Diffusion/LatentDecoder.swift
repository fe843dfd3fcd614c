//===--- LatentDecoder.swift - AutoencoderKL and VQModel decoding (diffusers 0.27.2) ---===//
//
// The first stage of latent diffusion, decode side only:
//   AutoencoderKL: z → post_quant_conv (1×1) → Decoder
//   VQModel:       h → nearest codebook entry per position (cdist argmin; the straight-through value
//                  h + (e − h), as diffusers computes it) → post_quant_conv → Decoder
//   Decoder: conv_in → mid (resnet → one-head attention with biases → resnet) → UpDecoderBlock2D per level
//            (layers_per_block + 1 resnets without a time embedding, no skips, Upsample2D on all but the last)
//            → GroupNorm → SiLU → conv_out. Every GroupNorm eps is 1e-6.
// Latents are divided by `scalingFactor` before `decode` (the pipeline does it). Encoder tensors in the
// weights file are left unread. Shapes NHWC: latents `[N, h, w, c]` → images `[N, H, W, C]`.
//
//===----------------------------------------------------------------------===//

import Foundation
import SafeTensors
import TensorCore

/// The decoder of an `AutoencoderKL` or a `VQModel`.
public final class LatentDecoder {
    public enum Kind: String, Sendable { case kl = "AutoencoderKL", vq = "VQModel" }
    public let kind: Kind
    /// The latent channels the decoder takes (the UNet's channels): `latent_channels`, or `vq_embed_dim` for VQ.
    public let latentChannels: Int
    public let outChannels: Int
    /// Spatial upsampling factor (2^(levels − 1)).
    public let factor: Int
    /// `scaling_factor` of the config: the pipeline divides latents by it before decoding.
    public let scalingFactor: Float
    /// VQ codebook `[codes, latentChannels]` (nil for KL).
    public let codebook: [Float]?
    public let codes: Int
    /// Every Conv2d/Linear of the decoder, in execution order.
    public private(set) var layers: [WeightLayer] = []
    /// The mid-block attention (if any), for attention quantization and costs.
    public var attentions: [AttentionAccounting] {
        midAttention.map { a in [AttentionAccounting(query: a.toQ, key: a.toK, output: a.toOut, innerWidth: a.heads * a.headDim, site: a.attention)] } ?? []
    }
    public let parameterCount: Int

    let postQuantConv: WeightLayer
    let convIn: WeightLayer
    let midResnet1: ResnetBlock, midAttention: AttentionBlock?, midResnet2: ResnetBlock
    struct Level { var resnets: [ResnetBlock]; var upsample: WeightLayer? }
    let levels: [Level]
    let normOut: GroupNormParams
    let convOut: WeightLayer

    /// Loads `DIR/config.json` + its weights (`vae/` or `vqvae/` of a pipeline folder).
    public static func load(directory: String) throws -> LatentDecoder {
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent("config.json").path
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelError.missingFile(path: configPath, hint: "a decoder folder needs config.json (AutoencoderKL or VQModel)")
        }
        return try LatentDecoder(configJSON: data, file: configPath, weights: SafeTensorsFile(path: try DiffusionModel.findWeights(in: dir)))
    }

    public init(configJSON: Data, file: String, weights: SafeTensorsFile) throws {
        var j = try JSONConfig(data: configJSON, file: file)
        func refuse(_ field: String, _ value: String, _ supported: String) -> ModelError {
            .unsupportedValue(file: file, field: field, value: value, supported: supported)
        }
        func bad(_ field: String, _ reason: String) -> ModelError { .invalidValue(file: file, field: field, reason: reason) }
        let cls = try j.string("_class_name", default: nil) ?? ""
        guard let k = Kind(rawValue: cls) else { throw refuse("_class_name", cls.isEmpty ? "(missing)" : cls, "AutoencoderKL, VQModel") }
        kind = k
        _ = try j.int("in_channels", default: 3)
        outChannels = try j.int("out_channels", default: 3)
        let downs = try j.strings("down_block_types", default: ["DownEncoderBlock2D"])
        let ups = try j.strings("up_block_types", default: ["UpDecoderBlock2D"])
        for d in downs where d != "DownEncoderBlock2D" { throw refuse("down_block_types", d, "DownEncoderBlock2D") }
        for u in ups where u != "UpDecoderBlock2D" { throw refuse("up_block_types", u, "UpDecoderBlock2D") }
        let boc = try j.ints("block_out_channels", default: [64])
        guard !boc.isEmpty, boc.allSatisfy({ $0 > 0 && $0 <= UNet2DConfig.maxChannels }), ups.count == boc.count else {
            throw bad("block_out_channels", "must be positive, with one up block per entry")
        }
        let layersPerBlock = try j.int("layers_per_block", default: 1)
        guard layersPerBlock >= 1, layersPerBlock <= 64 else { throw bad("layers_per_block", "must be in 1...64") }
        let act = try j.string("act_fn", default: "silu") ?? "silu"
        guard act == "silu" else { throw refuse("act_fn", act, "silu") }
        let latent = try j.int("latent_channels", default: k == .kl ? 4 : 3)
        let groups = try j.int("norm_num_groups", default: 32)
        guard groups > 0, boc.allSatisfy({ $0 % groups == 0 }) else { throw bad("norm_num_groups", "\(groups) must divide every block_out_channels entry") }
        j.accept(["sample_size"])
        scalingFactor = Float(try j.double("scaling_factor", default: 0.18215))
        guard scalingFactor > 0 else { throw bad("scaling_factor", "must be positive") }
        _ = try j.bool("force_upcast", default: k == .kl)
        var vqDim = latent
        var addAttention = true
        if k == .kl {
            for key in ["latents_mean", "latents_std"] {
                j.accept([key])
                if let v = j.object[key], !(v is NSNull) { throw refuse(key, "\(v)", "null (pipelines that use them shift latents themselves)") }
            }
            codes = 0
        } else {
            codes = try j.int("num_vq_embeddings", default: 256)
            guard codes >= 1, codes <= 1 << 20 else { throw bad("num_vq_embeddings", "must be in 1...1048576") }
            vqDim = try j.optionalInt("vq_embed_dim", default: nil) ?? latent
            let norm = try j.string("norm_type", default: "group") ?? "group"
            guard norm == "group" else { throw refuse("norm_type", norm, "group") }
            addAttention = try j.bool("mid_block_add_attention", default: true)
            if try j.bool("lookup_from_codebook", default: false) { throw refuse("lookup_from_codebook", "true", "false") }
        }
        try j.rejectUnknownFields()
        latentChannels = vqDim
        factor = 1 << (boc.count - 1)
        // Weights: the decoder side; the encoder and quant_conv belong to encoding.
        let encoderSide = Set(weights.names.filter { $0.hasPrefix("encoder.") || $0.hasPrefix("quant_conv.") })
        let s = WeightStore(file: weights, consumedElsewhere: encoderSide)
        codebook = k == .vq ? try s.tensor("quantize.embedding.weight", shape: [codes, vqDim]) : nil
        postQuantConv = try s.conv("post_quant_conv", role: .conv, .k1(vqDim, latent))
        let top = boc.last!
        convIn = try s.conv("decoder.conv_in", role: .inputConv, .k3(latent, top))
        func resnet(_ p: String, _ i: Int, _ o: Int) throws -> ResnetBlock {
            try ResnetBlock(s, p, in: i, out: o, tembChannels: nil, groups: groups, eps: 1e-6, scaleShift: false, outputScale: 1)
        }
        midResnet1 = try resnet("decoder.mid_block.resnets.0", top, top)
        midAttention = addAttention ? try AttentionBlock(s, "decoder.mid_block.attentions.0", channels: top, headDim: nil, groups: groups, eps: 1e-6, rescale: 1) : nil
        midResnet2 = try resnet("decoder.mid_block.resnets.1", top, top)
        var levels: [Level] = []
        let rev = Array(boc.reversed())
        var out = rev[0]
        for i in 0..<rev.count {
            let prev = out
            out = rev[i]
            var level = Level(resnets: [], upsample: nil)
            for r in 0...layersPerBlock { level.resnets.append(try resnet("decoder.up_blocks.\(i).resnets.\(r)", r == 0 ? prev : out, out)) }
            if i < rev.count - 1 { level.upsample = try s.conv("decoder.up_blocks.\(i).upsamplers.0.conv", role: .conv, .k3(out, out)) }
            levels.append(level)
        }
        self.levels = levels
        normOut = try s.groupNorm("decoder.conv_norm_out", channels: boc[0], groups: groups, eps: 1e-6)
        convOut = try s.conv("decoder.conv_out", role: .outputConv, .k3(boc[0], outChannels))
        try s.rejectUnused()
        parameterCount = s.usedElementCount
        var l: [WeightLayer] = [postQuantConv, convIn] + midResnet1.layers + (midAttention?.layers ?? []) + midResnet2.layers
        for level in levels { for r in level.resnets { l += r.layers }; if let u = level.upsample { l.append(u) } }
        l.append(convOut)
        layers = l
    }

    /// VQ: each latent vector replaced by its nearest code (Euclidean, the first on ties), as `h + (e − h)`.
    /// - h: `[N, h, w, c]`. Returns the quantized latents and the code indices `[N·h·w]`.
    public func quantize(_ h: Tensor) -> (Tensor, [Int]) {
        guard let book = codebook else { return (h, []) }
        let c = latentChannels, rows = h.count / c
        let q = Tensor(shape: h.shape)
        var idx = [Int](repeating: 0, count: rows)
        book.withUnsafeBufferPointer { e in
            for r in 0..<rows {
                let z = h.data + r * c
                var best = Float.infinity, arg = 0
                for k in 0..<codes {
                    var d: Float = 0
                    for i in 0..<c { let v = z[i] - e[k * c + i]; d += v * v }
                    if d < best { best = d; arg = k }
                }
                idx[r] = arg
                for i in 0..<c { q.data[r * c + i] = z[i] + (e[arg * c + i] - z[i]) }
            }
        }
        return (q, idx)
    }

    /// Decodes latents `[N, h, w, latentChannels]` (already divided by `scalingFactor`) to images `[N, h·f, w·f, C]`.
    public func decode(_ latents: Tensor) throws -> Tensor {
        guard latents.shape.count == 4, latents.shape[3] == latentChannels else {
            throw ModelError.invalidInput("the \(kind.rawValue) decoder takes [N, h, w, \(latentChannels)] latents, got \(latents.shape)")
        }
        var h = postQuantConv(kind == .vq ? quantize(latents).0 : latents)
        h = convIn(h)
        h = midResnet1(h, tembSiLU: nil)
        if let a = midAttention { h = a(h) }
        h = midResnet2(h, tembSiLU: nil)
        for level in levels {
            for r in level.resnets { h = r(h, tembSiLU: nil) }
            if let u = level.upsample { h = u.upsampledNearest2x(h) }
        }
        return convOut(normOut.affine(h, silu: true))
    }
}
