//===--- UNet2D.swift - diffusers UNet2DModel forward over NHWC ------------===//

import Foundation
import SafeTensors
import TensorCore

/// Class conditioning for one forward pass.
public enum ClassCondition {
    case none
    /// One integer label per sample (table or "timestep" class embeddings).
    case labels([Int])
    /// `[N, timeEmbedDim]` embeddings (`class_embed_type: "identity"`).
    case embeddings(Tensor)
}

/// diffusers `UNet2DModel` (0.27.2 semantics): ε-, x0- or v-prediction network.
///
/// - input `x`: `[N, H, W, inChannels]` NHWC; timesteps: `[N]`; returns `[N, H, W, outChannels]`.
public final class UNet2D: Denoiser {
    public let config: UNet2DConfig
    /// The `config.json` text this network was built from ("" when built from a config value).
    public let configJSON: String
    /// Every Conv2d/Linear, in execution order for one forward.
    public private(set) var layers: [WeightLayer] = []
    let parameterTotal: Int

    let convIn: WeightLayer
    let timeLinear1: WeightLayer, timeLinear2: WeightLayer
    let classTable: [Float]?
    let classLinear1: WeightLayer?, classLinear2: WeightLayer?
    let downs: [DownBlock]
    let midResnet1: ResnetBlock, midAttention: AttentionBlock?, midResnet2: ResnetBlock
    let ups: [UpBlock]
    let normOut: GroupNormParams
    let convOut: WeightLayer

    struct DownBlock { var resnets: [ResnetBlock]; var attentions: [AttentionBlock]; var down: Downsample?; var downResnet: ResnetBlock? }
    struct UpBlock { var resnets: [ResnetBlock]; var attentions: [AttentionBlock]; var up: Upsample?; var upResnet: ResnetBlock? }

    /// Loads `config` + weights (a diffusers `diffusion_pytorch_model.safetensors`).
    /// Every tensor the config implies must exist with the right shape; extra tensors are an error.
    /// - overrides: parameters supplied from memory instead of `file` (by diffusers name);
    ///   consumedElsewhere: file tensors another loader reads (not an "unexpected tensor" error).
    public init(config: UNet2DConfig, weights file: SafeTensorsFile, overrides: [String: [Float]] = [:],
                consumedElsewhere: Set<String> = [], configJSON: String = "") throws {
        self.config = config
        self.configJSON = configJSON
        let s = WeightStore(file: file, overrides: overrides, consumedElsewhere: consumedElsewhere)
        let boc = config.blockOutChannels, ted = config.timeEmbedDim
        let groups = config.normNumGroups, eps = config.normEps
        let shift = config.timeScaleShift == .scaleShift
        convIn = try s.conv("conv_in", role: .inputConv, .k3(config.inChannels, boc[0]))
        timeLinear1 = try s.linear("time_embedding.linear_1", role: .timeEmbedding, in: boc[0], out: ted)
        timeLinear2 = try s.linear("time_embedding.linear_2", role: .timeEmbedding, in: ted, out: ted)
        switch config.classEmbedding {
        case let .table(n):
            classTable = try s.tensor("class_embedding.weight", shape: [n, ted]); classLinear1 = nil; classLinear2 = nil
        case .timestep:
            classTable = nil
            classLinear1 = try s.linear("class_embedding.linear_1", role: .timeEmbedding, in: boc[0], out: ted)
            classLinear2 = try s.linear("class_embedding.linear_2", role: .timeEmbedding, in: ted, out: ted)
        case .none, .identity:
            classTable = nil; classLinear1 = nil; classLinear2 = nil
        }
        func resnet(_ p: String, _ i: Int, _ o: Int, scale: Float = 1, resample: ResnetBlock.Resample = .none, split: Int? = nil) throws -> ResnetBlock {
            try ResnetBlock(s, p, in: i, out: o, tembChannels: ted, groups: groups, eps: eps, scaleShift: shift,
                            outputScale: scale, resample: resample, inputSplit: split)
        }
        // Down path
        var downs: [DownBlock] = []
        var out = boc[0]
        for (i, type) in config.downBlocks.enumerated() {
            let input = out
            out = boc[i]
            let final = i == boc.count - 1
            let p = "down_blocks.\(i)"
            var b = DownBlock(resnets: [], attentions: [], down: nil, downResnet: nil)
            for j in 0..<config.layersPerBlock {
                b.resnets.append(try resnet("\(p).resnets.\(j)", j == 0 ? input : out, out))
                if type == .attention {
                    b.attentions.append(try AttentionBlock(s, "\(p).attentions.\(j)", channels: out, headDim: config.attentionHeadDim,
                                                           groups: groups, eps: eps, rescale: 1))
                }
            }
            if !final {
                if type == .attention && config.downsampleType == .resnet {
                    b.downResnet = try resnet("\(p).downsamplers.0", out, out, resample: .down)
                } else {
                    b.down = try Downsample(s, "\(p).downsamplers.0", channels: out, padding: config.downsamplePadding)
                }
            }
            downs.append(b)
        }
        self.downs = downs
        // Mid
        let midC = boc.last!
        let midScale = config.midBlockScaleFactor
        midResnet1 = try resnet("mid_block.resnets.0", midC, midC, scale: midScale)
        if config.addAttention {
            let attnGroups = config.attnNormNumGroups ?? (shift ? nil : groups)
            midAttention = try AttentionBlock(s, "mid_block.attentions.0", channels: midC, headDim: config.attentionHeadDim,
                                              groups: attnGroups, eps: eps, rescale: midScale)
        } else { midAttention = nil }
        midResnet2 = try resnet("mid_block.resnets.1", midC, midC, scale: midScale)
        // Up path
        var ups: [UpBlock] = []
        let rev = Array(boc.reversed())
        out = rev[0]
        for (i, type) in config.upBlocks.enumerated() {
            let prev = out
            out = rev[i]
            let input = rev[min(i + 1, boc.count - 1)]
            let final = i == boc.count - 1
            let p = "up_blocks.\(i)"
            var b = UpBlock(resnets: [], attentions: [], up: nil, upResnet: nil)
            let n = config.layersPerBlock + 1
            for j in 0..<n {
                let skip = j == n - 1 ? input : out
                let resIn = j == 0 ? prev : out
                b.resnets.append(try resnet("\(p).resnets.\(j)", resIn + skip, out, split: resIn))
                if type == .attention {
                    b.attentions.append(try AttentionBlock(s, "\(p).attentions.\(j)", channels: out, headDim: config.attentionHeadDim,
                                                           groups: groups, eps: eps, rescale: 1))
                }
            }
            if !final {
                if type == .attention && config.upsampleType == .resnet {
                    b.upResnet = try resnet("\(p).upsamplers.0", out, out, resample: .up)
                } else {
                    b.up = try Upsample(s, "\(p).upsamplers.0", channels: out)
                }
            }
            ups.append(b)
        }
        self.ups = ups
        normOut = try s.groupNorm("conv_norm_out", channels: boc[0], groups: groups, eps: eps)
        convOut = try s.conv("conv_out", role: .outputConv, .k3(boc[0], config.outChannels))
        try s.rejectUnused()
        parameterTotal = s.usedElementCount
        layers = collectLayers()
    }

    private func collectLayers() -> [WeightLayer] {
        var l: [WeightLayer] = [timeLinear1, timeLinear2]
        if let c1 = classLinear1, let c2 = classLinear2 { l += [c1, c2] }
        l.append(convIn)
        for b in downs {
            for (j, r) in b.resnets.enumerated() {
                l += r.layers
                if j < b.attentions.count { l += b.attentions[j].layers }
            }
            if let d = b.down { l.append(d.conv) }
            if let d = b.downResnet { l += d.layers }
        }
        l += midResnet1.layers
        if let a = midAttention { l += a.layers }
        l += midResnet2.layers
        for b in ups {
            for (j, r) in b.resnets.enumerated() {
                l += r.layers
                if j < b.attentions.count { l += b.attentions[j].layers }
            }
            if let u = b.up { l.append(u.conv) }
            if let u = b.upResnet { l += u.layers }
        }
        l.append(convOut)
        return l
    }

    /// All attention blocks (for accounting and attention-matmul kernels).
    var attentionBlocks: [AttentionBlock] {
        downs.flatMap(\.attentions) + (midAttention.map { [$0] } ?? []) + ups.flatMap(\.attentions)
    }

    /// Whether the model needs class labels.
    public var isClassConditional: Bool { config.classEmbedding != .none }

    /// One forward pass.
    /// - Parameters:
    ///   - x: `[N, H, W, inChannels]`.
    ///   - timesteps: `[N]` (integer-valued timesteps as Float).
    ///   - condition: class labels/embeddings (required iff the model is class-conditional).
    /// - Returns: `[N, H, W, outChannels]`.
    public func callAsFunction(_ x0: Tensor, timesteps: [Float], condition: ClassCondition = .none) throws -> Tensor {
        let n = x0.shape[0]
        guard x0.shape.count == 4, x0.shape[3] == config.inChannels else {
            throw ModelError.invalidInput("UNet input must be [N, H, W, \(config.inChannels)] NHWC, got \(x0.shape)")
        }
        guard timesteps.count == n else { throw ModelError.invalidInput("got \(timesteps.count) timesteps for a batch of \(n)") }
        let levels = config.blockOutChannels.count - 1
        let factor = 1 << levels
        guard x0.shape[1] % factor == 0 || levels == 0, x0.shape[2] % factor == 0 || levels == 0 else {
            // Odd sizes are fine as long as every downsampling halves exactly and upsampling restores it.
            throw ModelError.invalidInput("input \(x0.shape[1])x\(x0.shape[2]) is not divisible by \(factor) (2^\(levels) downsamplings)")
        }
        var x = x0
        if config.centerInputSample {
            x = Tensor(shape: x0.shape)
            for i in 0..<x.count { x.data[i] = 2 * x0.data[i] - 1 }
        }
        // Time (and class) embedding.
        let tProj = Ops.timestepEmbedding(timesteps, dim: config.blockOutChannels[0], flipSinToCos: config.flipSinToCos,
                                          downscaleFreqShift: config.freqShift)
        let h1 = timeLinear1(tProj); Ops.siluInPlace(h1)
        let emb = timeLinear2(h1)
        switch (config.classEmbedding, condition) {
        case (.none, .none): break
        case let (.table(num), .labels(labels)):
            guard labels.count == n else { throw ModelError.invalidInput("got \(labels.count) class labels for a batch of \(n)") }
            let ted = config.timeEmbedDim
            for (b, c) in labels.enumerated() {
                guard c >= 0 && c < num else { throw ModelError.invalidInput("class label \(c) is out of range 0..<\(num)") }
                for i in 0..<ted { emb.data[b * ted + i] += classTable![c * ted + i] }
            }
        case let (.timestep, .labels(labels)):
            guard labels.count == n else { throw ModelError.invalidInput("got \(labels.count) class labels for a batch of \(n)") }
            let cp = Ops.timestepEmbedding(labels.map(Float.init), dim: config.blockOutChannels[0],
                                           flipSinToCos: config.flipSinToCos, downscaleFreqShift: config.freqShift)
            let c1 = classLinear1!(cp); Ops.siluInPlace(c1)
            Ops.addInPlace(emb, classLinear2!(c1))
        case let (.identity, .embeddings(e)):
            guard e.shape == [n, config.timeEmbedDim] else {
                throw ModelError.invalidInput("identity class embeddings must be [\(n), \(config.timeEmbedDim)], got \(e.shape)")
            }
            Ops.addInPlace(emb, e)
        case (.none, _):
            throw ModelError.invalidInput("this model is unconditional: do not pass class labels")
        default:
            throw ModelError.invalidInput("this model needs class conditioning of type \(config.classEmbedding)")
        }
        let tembSiLU = Ops.silu(emb)
        // Down
        var h = convIn(x)
        var skips: [Tensor] = [h]
        for b in downs {
            for (j, r) in b.resnets.enumerated() {
                h = r(h, tembSiLU: tembSiLU)
                if j < b.attentions.count { h = b.attentions[j](h) }
                skips.append(h)
            }
            if let d = b.down { h = d(h); skips.append(h) }
            if let d = b.downResnet { h = d(h, tembSiLU: tembSiLU); skips.append(h) }
        }
        // Mid
        h = midResnet1(h, tembSiLU: tembSiLU)
        if let a = midAttention { h = a(h) }
        h = midResnet2(h, tembSiLU: tembSiLU)
        // Up
        for b in ups {
            for (j, r) in b.resnets.enumerated() {
                let skip = skips.removeLast()
                guard skip.shape[1] == h.shape[1], skip.shape[2] == h.shape[2] else {
                    throw ModelError.invalidInput("input size \(x0.shape[1])x\(x0.shape[2]) does not survive down/upsampling (skip \(skip.shape) vs \(h.shape))")
                }
                h = r(h, concatenating: skip, tembSiLU: tembSiLU)
                if j < b.attentions.count { h = b.attentions[j](h) }
            }
            if let u = b.up { h = u(h) }
            if let u = b.upResnet { h = u(h, tembSiLU: tembSiLU) }
        }
        return convOut(normOut.affine(h, silu: true))
    }
}

// MARK: - Denoiser conformance

extension UNet2D {
    public static let architecture = DenoiserArchitecture(classNames: ["UNet2DModel"]) { json, file, weights, overrides, consumed in
        try UNet2D(config: try UNet2DConfig(json: json, file: file), weights: weights, overrides: overrides,
                   consumedElsewhere: consumed, configJSON: String(decoding: json, as: UTF8.self))
    }

    public var architecture: String { "UNet2DModel" }
    public var configFingerprint: String { "UNet2DModel|\(config)" }
    public var sampleShape: [Int] { [config.sampleHeight, config.sampleWidth, config.inChannels] }
    public var outputChannels: Int { config.outChannels }
    public var parameterCount: Int { parameterTotal }

    public var conditioningKind: ConditioningKind {
        switch config.classEmbedding {
        case .none: return .unconditional
        case let .table(n): return .classLabels(tableSize: n)
        case .timestep: return .classLabels(tableSize: nil)
        case .identity: return .classEmbeddings(width: config.timeEmbedDim)  // through `callAsFunction(_:timesteps:condition:)` only
        }
    }

    public var attentions: [AttentionAccounting] {
        attentionBlocks.map { AttentionAccounting(query: $0.toQ, key: $0.toK, output: $0.toOut, innerWidth: $0.heads * $0.headDim, site: $0.attention) }
    }

    public func exampleConditioning(rows: Int) -> Conditioning {
        if config.classEmbedding == .identity { return .embeddings(Tensor(shape: [rows, config.timeEmbedDim])) }
        return isClassConditional ? .classes([Int](repeating: 0, count: rows)) : .none
    }

    public func forward(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor {
        switch conditioning {
        case .none: return try self(x, timesteps: timesteps, condition: .none)
        case let .classes(l): return try self(x, timesteps: timesteps, condition: .labels(l))
        case .context: throw ModelError.invalidInput("UNet2DModel has no cross-attention: it takes class labels, not a context")
        case let .embeddings(e): return try self(x, timesteps: timesteps, condition: .embeddings(e))
        }
    }
}
