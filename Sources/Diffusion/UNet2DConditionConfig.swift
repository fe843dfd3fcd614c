//===--- UNet2DConditionConfig.swift - diffusers UNet2DConditionModel config.json ---===//

import Foundation

/// A validated diffusers 0.27.2 `UNet2DConditionModel` config: the cross-attention UNet of latent diffusion
/// (LDM, Stable Diffusion 1.x/2.x). Fields at a value ptqd does not implement are errors naming the field.
public struct UNet2DConditionConfig: Equatable, Sendable {
    public enum DownBlock: String, Sendable { case crossAttention = "CrossAttnDownBlock2D", plain = "DownBlock2D" }
    public enum UpBlock: String, Sendable { case crossAttention = "CrossAttnUpBlock2D", plain = "UpBlock2D" }

    public var sampleHeight: Int
    public var sampleWidth: Int
    public var inChannels: Int
    public var outChannels: Int
    public var centerInputSample: Bool
    public var flipSinToCos: Bool
    public var freqShift: Float
    public var downBlocks: [DownBlock]
    public var upBlocks: [UpBlock]
    public var blockOutChannels: [Int]
    public var layersPerBlock: Int
    public var downsamplePadding: Int
    public var midBlockScaleFactor: Float
    public var normNumGroups: Int
    public var normEps: Float
    public var crossAttentionDim: Int
    /// Heads per down block (diffusers' `attention_head_dim` means the number of heads; the mid block uses the last).
    public var heads: [Int]
    public var useLinearProjection: Bool
    public var timeScaleShift: UNet2DConfig.TimeScaleShift
    /// `num_class_embeds` (an `nn.Embedding` added to the time embedding), nil without.
    public var numClassEmbeds: Int?
    public var timeEmbedDim: Int

    public init(path: String) throws { var j = try JSONConfig(path: path); try self.init(&j) }
    public init(json: Data, file: String = "config.json") throws { var j = try JSONConfig(data: json, file: file); try self.init(&j) }

    init(_ j: inout JSONConfig) throws {
        let f = j.file
        func bad(_ field: String, _ reason: String) -> ModelError { .invalidValue(file: f, field: field, reason: reason) }
        func refuse(_ field: String, _ value: String, _ supported: String) -> ModelError {
            .unsupportedValue(file: f, field: field, value: value, supported: supported)
        }
        if let cls = try j.string("_class_name", default: nil), cls != "UNet2DConditionModel" {
            throw refuse("_class_name", cls, "UNet2DConditionModel")
        }
        j.accept(["sample_size"])
        if let s = j.object["sample_size"] as? [Any], s.count == 2 {
            let hw = try j.ints("sample_size"); sampleHeight = hw[0]; sampleWidth = hw[1]
        } else {
            let s = try j.int("sample_size", default: 64); sampleHeight = s; sampleWidth = s
        }
        inChannels = try j.int("in_channels", default: 4)
        outChannels = try j.int("out_channels", default: 4)
        centerInputSample = try j.bool("center_input_sample", default: false)
        flipSinToCos = try j.bool("flip_sin_to_cos", default: true)
        freqShift = Float(try j.double("freq_shift", default: 0))
        downBlocks = try j.strings("down_block_types", default: ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]).map {
            guard let b = DownBlock(rawValue: $0) else { throw refuse("down_block_types", $0, "CrossAttnDownBlock2D, DownBlock2D") }
            return b
        }
        upBlocks = try j.strings("up_block_types", default: ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]).map {
            guard let b = UpBlock(rawValue: $0) else { throw refuse("up_block_types", $0, "CrossAttnUpBlock2D, UpBlock2D") }
            return b
        }
        let mid = try j.string("mid_block_type", default: "UNetMidBlock2DCrossAttn") ?? "UNetMidBlock2DCrossAttn"
        guard mid == "UNetMidBlock2DCrossAttn" else { throw refuse("mid_block_type", mid, "UNetMidBlock2DCrossAttn") }
        blockOutChannels = try j.ints("block_out_channels", default: [320, 640, 1280, 1280])
        layersPerBlock = try j.int("layers_per_block", default: 2)
        downsamplePadding = try j.int("downsample_padding", default: 1)
        midBlockScaleFactor = Float(try j.double("mid_block_scale_factor", default: 1))
        _ = try j.double("dropout", default: 0)
        let act = try j.string("act_fn", default: "silu") ?? "silu"
        guard act == "silu" || act == "swish" else { throw refuse("act_fn", act, "silu") }
        normNumGroups = try j.int("norm_num_groups", default: 32)
        normEps = Float(try j.double("norm_eps", default: 1e-5))
        j.accept(["cross_attention_dim", "attention_head_dim", "num_attention_heads", "transformer_layers_per_block", "only_cross_attention"])
        if let c = j.object["cross_attention_dim"] as? [Any] {
            throw refuse("cross_attention_dim", "a per-block list \(c)", "one integer")
        }
        crossAttentionDim = try j.int("cross_attention_dim", default: 1280)
        if let n = j.object["num_attention_heads"], !(n is NSNull) {
            throw refuse("num_attention_heads", "\(n)", "null (diffusers 0.27.2 reads the head count from attention_head_dim)")
        }
        if let list = j.object["attention_head_dim"] as? [Any] {
            heads = try j.ints("attention_head_dim")
            guard heads.count == blockOutChannels.count else { throw bad("attention_head_dim", "has \(list.count) entries for \(blockOutChannels.count) blocks") }
        } else {
            heads = [Int](repeating: try j.int("attention_head_dim", default: 8), count: blockOutChannels.count)
        }
        if let t = j.object["transformer_layers_per_block"], !(t is NSNull) {
            let values: [Int]? = t is [Any] ? (try? j.ints("transformer_layers_per_block")) : (try? j.int("transformer_layers_per_block")).map { [$0] }
            guard let v = values, v.allSatisfy({ $0 == 1 }) else { throw refuse("transformer_layers_per_block", "\(t)", "1") }
        }
        if let o = j.object["only_cross_attention"], !(o is NSNull), (o as? [Any]).map({ $0.contains { ($0 as? Bool) == true } }) ?? (jsonIsBool(o) && (o as? Bool) == true) {
            throw refuse("only_cross_attention", "\(o)", "false")
        }
        useLinearProjection = try j.bool("use_linear_projection", default: false)
        let tss = try j.string("resnet_time_scale_shift", default: "default") ?? "default"
        guard let shift = UNet2DConfig.TimeScaleShift(rawValue: tss) else { throw refuse("resnet_time_scale_shift", tss, "default, scale_shift") }
        timeScaleShift = shift
        if let cet = try j.string("class_embed_type", default: nil) { throw refuse("class_embed_type", cet, "null (num_class_embeds gives an embedding table)") }
        numClassEmbeds = try j.optionalInt("num_class_embeds", default: nil)
        let ted = try j.optionalInt("time_embedding_dim", default: nil)
        timeEmbedDim = ted ?? (blockOutChannels.first ?? 1) * 4
        // Fields that must keep their defaults (each changes the network ptqd would build).
        let mustBeFalse = ["dual_cross_attention", "class_embeddings_concat", "mid_block_only_cross_attention", "resnet_skip_time_act"]
        for k in mustBeFalse where try j.bool(k, default: false) { throw refuse(k, "true", "false") }
        let mustBeNull = ["encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "time_cond_proj_dim", "projection_class_embeddings_input_dim",
                          "timestep_post_act", "cross_attention_norm", "time_embedding_act_fn", "addition_time_embed_dim", "reverse_transformer_layers_per_block"]
        j.accept(mustBeNull)
        for k in mustBeNull { if let v = j.object[k], !(v is NSNull) { throw refuse(k, "\(v)", "null") } }
        let tet = try j.string("time_embedding_type", default: "positional") ?? "positional"
        guard tet == "positional" else { throw refuse("time_embedding_type", tet, "positional") }
        for k in ["conv_in_kernel", "conv_out_kernel"] where try j.int(k, default: 3) != 3 { throw refuse(k, "\(j.object[k]!)", "3") }
        let at = try j.string("attention_type", default: "default") ?? "default"
        guard at == "default" else { throw refuse("attention_type", at, "default") }
        if try j.double("resnet_out_scale_factor", default: 1) != 1 { throw refuse("resnet_out_scale_factor", "\(j.object["resnet_out_scale_factor"]!)", "1.0") }
        _ = try j.bool("upcast_attention", default: false)  // fp16 only; fp32 everywhere here
        _ = try j.optionalInt("addition_embed_type_num_heads", default: nil)
        try j.rejectUnknownFields()
        // Structure
        guard !blockOutChannels.isEmpty, blockOutChannels.allSatisfy({ $0 > 0 && $0 <= UNet2DConfig.maxChannels }) else {
            throw bad("block_out_channels", "must be a non-empty list of positive integers up to \(UNet2DConfig.maxChannels)")
        }
        guard blockOutChannels.count <= UNet2DConfig.maxLevels else { throw bad("block_out_channels", "at most \(UNet2DConfig.maxLevels) levels are supported") }
        guard downBlocks.count == blockOutChannels.count else { throw bad("down_block_types", "has \(downBlocks.count) entries but block_out_channels has \(blockOutChannels.count)") }
        guard upBlocks.count == blockOutChannels.count else { throw bad("up_block_types", "has \(upBlocks.count) entries but block_out_channels has \(blockOutChannels.count)") }
        guard inChannels > 0, outChannels > 0, inChannels <= UNet2DConfig.maxChannels, outChannels <= UNet2DConfig.maxChannels else {
            throw bad("in_channels", "channel counts must be in 1...\(UNet2DConfig.maxChannels)")
        }
        guard layersPerBlock >= 1, layersPerBlock <= 64 else { throw bad("layers_per_block", "must be in 1...64") }
        guard sampleHeight > 0, sampleWidth > 0, sampleHeight <= UNet2DConfig.maxSampleSize, sampleWidth <= UNet2DConfig.maxSampleSize else {
            throw bad("sample_size", "must be in 1...\(UNet2DConfig.maxSampleSize)")
        }
        guard normNumGroups > 0, blockOutChannels.allSatisfy({ $0 % normNumGroups == 0 }) else {
            throw bad("norm_num_groups", "\(normNumGroups) must divide every block_out_channels entry")
        }
        // Heads must divide the channels of every transformer that uses them (blocks without attention do not).
        let rev = Array(blockOutChannels.reversed()), revHeads = Array(heads.reversed())
        var uses: [(heads: Int, channels: Int, at: String)] = [(heads.last!, blockOutChannels.last!, "mid block")]
        for (i, b) in downBlocks.enumerated() where b == .crossAttention { uses.append((heads[i], blockOutChannels[i], "down block \(i)")) }
        for (i, b) in upBlocks.enumerated() where b == .crossAttention { uses.append((revHeads[i], rev[i], "up block \(i)")) }
        if let u = heads.first(where: { $0 <= 0 }) { throw bad("attention_head_dim", "head counts must be positive, got \(u)") }
        for u in uses where u.channels % u.heads != 0 {
            throw bad("attention_head_dim", "\(u.heads) heads do not divide \(u.channels) channels (\(u.at))")
        }
        guard crossAttentionDim > 0, crossAttentionDim <= 1 << 16 else { throw bad("cross_attention_dim", "must be in 1...65536") }
        if let n = numClassEmbeds, n <= 0 || n > 1_000_000 { throw bad("num_class_embeds", "must be in 1...1000000") }
        guard timeEmbedDim > 0, timeEmbedDim <= 1 << 16 else { throw bad("time_embedding_dim", "must be in 1...65536") }
        guard normEps > 0, downsamplePadding >= 0, downsamplePadding <= 16 else { throw bad("norm_eps", "eps must be positive, downsample_padding in 0...16") }
    }
}
