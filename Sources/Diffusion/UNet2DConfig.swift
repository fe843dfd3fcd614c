//===--- UNet2DConfig.swift - diffusers UNet2DModel config, validated ------===//

import Foundation

/// The subset of diffusers' `UNet2DModel` configuration (0.27.2) that this runtime executes.
/// Decoding is strict: a value we cannot execute, or a field we do not know, is an error
/// naming the field — never silently ignored.
public struct UNet2DConfig: Equatable, Sendable {
    public enum ClassEmbedding: Equatable, Sendable {
        case none
        /// `nn.Embedding(numClassEmbeds, timeEmbedDim)`: integer labels.
        case table(numClassEmbeds: Int)
        /// Labels go through the sinusoidal projection and their own `TimestepEmbedding`.
        case timestep
        /// Class "labels" are embeddings `[N, timeEmbedDim]` added to the time embedding.
        case identity
    }
    public enum DownBlock: String, Sendable { case plain = "DownBlock2D", attention = "AttnDownBlock2D" }
    public enum UpBlock: String, Sendable { case plain = "UpBlock2D", attention = "AttnUpBlock2D" }
    public enum Resample: String, Sendable { case conv, resnet }
    public enum TimeScaleShift: String, Sendable { case standard = "default", scaleShift = "scale_shift" }

    /// Limits checked by validation, so that no size product (tensor elements, MACs, attention scores) can
    /// overflow: at most 8 resolution levels, 65,536 channels and 4,096 pixels per side.
    public static let maxLevels = 8, maxChannels = 65_536, maxSampleSize = 4_096

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
    public var midBlockScaleFactor: Float
    public var downsamplePadding: Int
    public var downsampleType: Resample
    public var upsampleType: Resample
    /// Head dimension of attention blocks; `nil` means one head spanning all channels.
    public var attentionHeadDim: Int?
    public var normNumGroups: Int
    public var attnNormNumGroups: Int?
    public var normEps: Float
    public var timeScaleShift: TimeScaleShift
    public var addAttention: Bool
    public var classEmbedding: ClassEmbedding

    /// `4 × blockOutChannels[0]`.
    public var timeEmbedDim: Int { blockOutChannels[0] * 4 }
    public var numClassEmbeds: Int? { if case let .table(n) = classEmbedding { return n }; return nil }

    /// Decodes and validates a diffusers `config.json`.
    public init(path: String) throws {
        var j = try JSONConfig(path: path)
        try self.init(&j)
    }

    public init(json: Data, file: String = "config.json") throws {
        var j = try JSONConfig(data: json, file: file)
        try self.init(&j)
    }

    init(_ j: inout JSONConfig) throws {
        let f = j.file
        if let cls = try j.string("_class_name", default: nil), cls != "UNet2DModel" {
            throw ModelError.unsupportedValue(file: f, field: "_class_name", value: cls, supported: "UNet2DModel")
        }
        // sample_size: int or [h, w]
        j.accept(["sample_size"])
        if let s = j.object["sample_size"] as? [Any], s.count == 2 {
            let hw = try j.ints("sample_size")
            sampleHeight = hw[0]; sampleWidth = hw[1]
        } else if j.has("sample_size") && !j.isNull("sample_size") {
            let s = try j.int("sample_size"); sampleHeight = s; sampleWidth = s
        } else {
            throw ModelError.invalidValue(file: f, field: "sample_size", reason: "required (an integer or [height, width])")
        }
        inChannels = try j.int("in_channels", default: 3)
        outChannels = try j.int("out_channels", default: 3)
        centerInputSample = try j.bool("center_input_sample", default: false)
        let tet = try j.string("time_embedding_type", default: "positional") ?? "positional"
        guard tet == "positional" else {
            throw ModelError.unsupportedValue(file: f, field: "time_embedding_type", value: tet, supported: "positional")
        }
        flipSinToCos = try j.bool("flip_sin_to_cos", default: true)
        freqShift = Float(try j.double("freq_shift", default: 0))
        let downs = try j.strings("down_block_types", default: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"])
        downBlocks = try downs.map { name in
            let n = name.hasPrefix("UNetRes") ? String(name.dropFirst(7)) : name
            guard let b = DownBlock(rawValue: n) else {
                throw ModelError.unsupportedValue(file: f, field: "down_block_types", value: name, supported: "DownBlock2D, AttnDownBlock2D")
            }
            return b
        }
        let ups = try j.strings("up_block_types", default: ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
        upBlocks = try ups.map { name in
            let n = name.hasPrefix("UNetRes") ? String(name.dropFirst(7)) : name
            guard let b = UpBlock(rawValue: n) else {
                throw ModelError.unsupportedValue(file: f, field: "up_block_types", value: name, supported: "UpBlock2D, AttnUpBlock2D")
            }
            return b
        }
        blockOutChannels = try j.ints("block_out_channels", default: [224, 448, 672, 896])
        layersPerBlock = try j.int("layers_per_block", default: 2)
        midBlockScaleFactor = Float(try j.double("mid_block_scale_factor", default: 1))
        downsamplePadding = try j.int("downsample_padding", default: 1)
        downsampleType = try Self.resample(&j, "downsample_type")
        upsampleType = try Self.resample(&j, "upsample_type")
        _ = try j.double("dropout", default: 0)  // training only; inference ignores dropout
        let act = try j.string("act_fn", default: "silu") ?? "silu"
        guard act == "silu" || act == "swish" else {
            throw ModelError.unsupportedValue(file: f, field: "act_fn", value: act, supported: "silu, swish")
        }
        attentionHeadDim = try j.optionalInt("attention_head_dim", default: 8)
        normNumGroups = try j.optionalInt("norm_num_groups", default: 32) ?? min((blockOutChannels.first ?? 4) / 4, 32)
        attnNormNumGroups = try j.optionalInt("attn_norm_num_groups", default: nil)
        normEps = Float(try j.double("norm_eps", default: 1e-5))
        let tss = try j.string("resnet_time_scale_shift", default: "default") ?? "default"
        guard let shift = TimeScaleShift(rawValue: tss) else {
            throw ModelError.unsupportedValue(file: f, field: "resnet_time_scale_shift", value: tss, supported: "default, scale_shift")
        }
        timeScaleShift = shift
        addAttention = try j.bool("add_attention", default: true)
        let cet = try j.string("class_embed_type", default: nil)
        let nce = try j.optionalInt("num_class_embeds", default: nil)
        switch cet {
        case nil: classEmbedding = nce.map { .table(numClassEmbeds: $0) } ?? .none
        case "timestep": classEmbedding = .timestep
        case "identity": classEmbedding = .identity
        case let other?:
            throw ModelError.unsupportedValue(file: f, field: "class_embed_type", value: other, supported: "null, timestep, identity")
        }
        _ = try j.optionalInt("num_train_timesteps", default: nil)  // only used by "learned" time embeddings
        try j.rejectUnknownFields()
        try validate(file: f)
    }

    private static func resample(_ j: inout JSONConfig, _ key: String) throws -> Resample {
        let v = try j.string(key, default: "conv") ?? "conv"
        guard let r = Resample(rawValue: v) else {
            throw ModelError.unsupportedValue(file: j.file, field: key, value: v, supported: "conv, resnet")
        }
        return r
    }

    /// Checks the structural constraints diffusers itself asserts, with readable messages.
    func validate(file: String = "config.json") throws {
        func bad(_ field: String, _ reason: String) -> ModelError { .invalidValue(file: file, field: field, reason: reason) }
        guard !blockOutChannels.isEmpty, blockOutChannels.allSatisfy({ $0 > 0 }) else { throw bad("block_out_channels", "must be a non-empty list of positive integers") }
        // Bounds that keep every size product (tensors, MACs, attention scores) far from Int overflow.
        guard blockOutChannels.count <= Self.maxLevels else { throw bad("block_out_channels", "has \(blockOutChannels.count) levels; at most \(Self.maxLevels) are supported") }
        if let c = blockOutChannels.first(where: { $0 > Self.maxChannels }) { throw bad("block_out_channels", "entry \(c) exceeds \(Self.maxChannels) channels") }
        guard downBlocks.count == blockOutChannels.count else { throw bad("down_block_types", "has \(downBlocks.count) entries but block_out_channels has \(blockOutChannels.count)") }
        guard upBlocks.count == blockOutChannels.count else { throw bad("up_block_types", "has \(upBlocks.count) entries but block_out_channels has \(blockOutChannels.count)") }
        guard inChannels > 0, outChannels > 0 else { throw bad("in_channels", "channel counts must be positive") }
        guard inChannels <= Self.maxChannels, outChannels <= Self.maxChannels else { throw bad("in_channels", "channel counts above \(Self.maxChannels) are not supported") }
        guard layersPerBlock >= 1 else { throw bad("layers_per_block", "must be >= 1") }
        guard sampleHeight > 0, sampleWidth > 0 else { throw bad("sample_size", "must be positive") }
        guard sampleHeight <= Self.maxSampleSize, sampleWidth <= Self.maxSampleSize else {
            throw bad("sample_size", "\(sampleHeight)×\(sampleWidth) exceeds \(Self.maxSampleSize) pixels per side")
        }
        guard normNumGroups > 0 else { throw bad("norm_num_groups", "must be positive") }
        for c in blockOutChannels where c % normNumGroups != 0 {
            throw bad("norm_num_groups", "\(normNumGroups) does not divide block_out_channels entry \(c)")
        }
        if let g = attnNormNumGroups, g <= 0 || blockOutChannels.last! % g != 0 {
            throw bad("attn_norm_num_groups", "\(g) does not divide \(blockOutChannels.last!)")
        }
        if let h = attentionHeadDim, h <= 0 { throw bad("attention_head_dim", "must be positive or null") }
        if let n = numClassEmbeds, n <= 0 { throw bad("num_class_embeds", "must be positive") }
        guard downsamplePadding >= 0, downsamplePadding <= 16 else { throw bad("downsample_padding", "must be in 0...16") }
        guard layersPerBlock <= 64 else { throw bad("layers_per_block", "must be <= 64") }
        if let n = numClassEmbeds, n > 1_000_000 { throw bad("num_class_embeds", "must be <= 1000000") }
        guard normEps > 0 else { throw bad("norm_eps", "must be positive") }
    }
}
