//===--- ClassEmbedder.swift - LDM cin256-style class conditioning through cross-attention ---===//
//
// LDM's class-conditional ImageNet model feeds the UNet a one-token context: `embedding[y]` as `[N, 1, D]`,
// from a separate `ClassEmbedder` (`nn.Embedding(num_classes, D)`; the null class gives the unconditional
// context). diffusers has no such pipeline component, so the layout is ours:
//   class_embedder/config.json        {"num_classes": K, "embed_dim": D, "null_class": K − 1}
//   class_embedder/model.safetensors  embedding.weight [K, D]
// `ClassContextDenoiser` wraps a cross-attention UNet with it, so the model takes class labels like any
// class-conditional model (guidance, balanced labels, evaluation) while the UNet sees contexts.
//
//===----------------------------------------------------------------------===//

import Foundation
import SafeTensors
import TensorCore

/// `embedding.weight [numClasses, embedDim]` and the null class.
public struct ClassEmbedder {
    public let numClasses: Int
    public let embedDim: Int
    public let nullClass: Int
    public let table: [Float]

    public init(numClasses: Int, embedDim: Int, nullClass: Int, table: [Float]) throws {
        guard numClasses >= 1, embedDim >= 1, table.count == numClasses * embedDim else {
            throw ModelError.invalidInput("class embedder table must be [\(numClasses), \(embedDim)]")
        }
        guard nullClass == numClasses - 1 else {
            throw ModelError.invalidInput("class embedder null_class must be the last entry (\(numClasses - 1)), got \(nullClass)")
        }
        self.numClasses = numClasses; self.embedDim = embedDim; self.nullClass = nullClass; self.table = table
    }

    /// Reads `DIR/config.json` and `DIR/model.safetensors`.
    public static func load(directory: String) throws -> ClassEmbedder {
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent("config.json").path
        var j = try JSONConfig(path: configPath)
        let k = try j.int("num_classes"), d = try j.int("embed_dim")
        let null = try j.int("null_class", default: k - 1)
        try j.rejectUnknownFields()
        guard k >= 1, k <= 1_000_000, d >= 1, d <= 1 << 16 else {
            throw ModelError.invalidValue(file: configPath, field: "num_classes/embed_dim", reason: "must be in 1...1000000 and 1...65536")
        }
        let file = try SafeTensorsFile(path: try DiffusionModel.findWeights(in: dir))
        let s = WeightStore(file: file)
        let table = try s.tensor("embedding.weight", shape: [k, d])
        try s.rejectUnused()
        do { return try ClassEmbedder(numClasses: k, embedDim: d, nullClass: null, table: table) } catch let ModelError.invalidInput(m) {
            throw ModelError.invalidValue(file: configPath, field: "null_class", reason: m)
        }
    }

    /// The one-token contexts `[N, 1, D]` of `labels`.
    public func context(_ labels: [Int]) throws -> Tensor {
        let t = Tensor(shape: [labels.count, 1, embedDim])
        for (i, y) in labels.enumerated() {
            guard y >= 0 && y < numClasses else { throw ModelError.invalidInput("class \(y) is outside the class embedder (0..<\(numClasses))") }
            for c in 0..<embedDim { t.data[i * embedDim + c] = table[y * embedDim + c] }
        }
        return t
    }
}

/// A cross-attention UNet conditioned on class labels through a `ClassEmbedder` (LDM cin256).
public final class ClassContextDenoiser: Denoiser {
    public let unet: UNet2DCondition
    public let embedder: ClassEmbedder

    public init(unet: UNet2DCondition, embedder: ClassEmbedder) throws {
        guard embedder.embedDim == unet.config.crossAttentionDim else {
            throw ModelError.invalidInput("the class embedder gives \(embedder.embedDim)-wide contexts but the UNet's cross_attention_dim is \(unet.config.crossAttentionDim)")
        }
        guard unet.config.numClassEmbeds == nil else {
            throw ModelError.invalidInput("a UNet with num_class_embeds cannot also take class contexts from a class embedder")
        }
        self.unet = unet; self.embedder = embedder
    }

    public var architecture: String { "UNet2DConditionModel+ClassEmbedder" }
    public var configJSON: String { unet.configJSON }
    public var configFingerprint: String { unet.configFingerprint + "|embedder \(embedder.numClasses)x\(embedder.embedDim)" }
    public var layers: [WeightLayer] { unet.layers }
    public var sampleShape: [Int] { unet.sampleShape }
    public var outputChannels: Int { unet.outputChannels }
    public var conditioningKind: ConditioningKind { .classLabels(tableSize: embedder.numClasses) }
    public var parameterCount: Int { unet.parameterCount + embedder.table.count }
    public var attentions: [AttentionAccounting] { unet.attentions }
    public func exampleConditioning(rows: Int) -> Conditioning { .classes([Int](repeating: 0, count: rows)) }

    public func forward(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor {
        guard case let .classes(labels) = conditioning else { throw ModelError.invalidInput("this model takes class labels") }
        return try unet(x, timesteps: timesteps, context: try embedder.context(labels))
    }
}
