//===--- QuantizedModelFile.swift - one shareable .safetensors file ----------===//
//
// Layout (format "ptqd-quantized", version 1):
// * tensors
//   - every fp32 parameter of the source UNet under its diffusers name (norms, biases, embeddings,
//     and the weights of layers that stay fp32 in some variant), converted to F32;
//   - per variant v and quantized layer L:
//       `ptqd.v<v>.<L>.qweight`  I8 [O, K] (5–8-bit weights) or U8 [⌈O·K/2⌉] (≤ 4 bits, two per byte,
//                                element 2i in the low nibble, two's complement);
//       `ptqd.v<v>.<L>.wscale`   F32 [O] per-output-channel step sizes.
//   - with a quantized first-stage decoder (`--quantize-decoder`): `ptqd.decoder.<L>.qweight` / `.wscale`
//     likewise (the decoder's fp32 parameters stay in the source pipeline folder, identified by digest);
// * `__metadata__["ptqd"]`: JSON `QuantizedModelInfo` — versions, the source UNet and scheduler
//   configs verbatim, each variant's recipe and per-layer bits and activation quantizers, the
//   calibration settings and seed, and attachments (e.g. PTQD correction tables) as JSON strings.
//
//===----------------------------------------------------------------------===//

import Diffusion
import Foundation
import SafeTensors
import TensorCore

/// Per-layer metadata of a quantized variant.
public struct QuantizedLayerInfo: Codable, Equatable, Sendable {
    public var name: String
    public var precision: LayerPrecision
    public var inputs: [ActivationQuantization]
    public var split: Int?
    /// Integer weight count O·K (the packed 4-bit tensor holds ⌈O·K/2⌉ bytes).
    public var weightCount: Int

    public init(_ l: QuantizedLayer) {
        name = l.name; precision = l.precision; inputs = l.inputs; split = l.split; weightCount = l.q.count
    }
}

/// One set of quantized weights (a file holds one, or two for step-aware mixed precision).
public struct QuantizedVariantInfo: Codable, Equatable, Sendable {
    /// e.g. "w4a8".
    public var name: String
    public var recipe: QuantizationRecipe
    public var layers: [QuantizedLayerInfo]
    /// Seconds spent quantizing this variant.
    public var seconds: Double?
    /// Quantized attentions (`recipe.quantizeAttention`); absent otherwise.
    public var attentions: [QuantizedAttention]?

    public init(name: String, recipe: QuantizationRecipe, layers: [QuantizedLayerInfo], seconds: Double?, attentions: [QuantizedAttention]? = nil) {
        self.name = name; self.recipe = recipe; self.layers = layers; self.seconds = seconds
        self.attentions = attentions?.isEmpty == true ? nil : attentions
    }
}

/// A quantized first-stage decoder. Its fp32 parameters (norms, biases, codebook, fp32 layers) are read from the
/// source pipeline's decoder folder, whose weights digest must match.
public struct QuantizedDecoderInfo: Codable, Equatable, Sendable {
    public var recipe: QuantizationRecipe
    public var layers: [QuantizedLayerInfo]
    public var attentions: [QuantizedAttention]?
    /// `SafeTensorsFile.contentDigest()` of the decoder weights it was made from.
    public var sourceWeightsDigest: String
    public var seconds: Double?

    public init(recipe: QuantizationRecipe, layers: [QuantizedLayerInfo], attentions: [QuantizedAttention]?, sourceWeightsDigest: String, seconds: Double?) {
        self.recipe = recipe; self.layers = layers; self.attentions = attentions?.isEmpty == true ? nil : attentions
        self.sourceWeightsDigest = sourceWeightsDigest; self.seconds = seconds
    }
}

/// What produced a quantized file.
public struct CalibrationInfo: Codable, Equatable, Sendable {
    public var options: CalibrationOptions
    /// Wall seconds for collecting the FP trajectories.
    public var trajectorySeconds: Double?

    public init(options: CalibrationOptions, trajectorySeconds: Double?) {
        self.options = options; self.trajectorySeconds = trajectorySeconds
    }
}

/// The `ptqd` metadata JSON.
public struct QuantizedModelInfo: Codable, Equatable, Sendable {
    public static let formatName = "ptqd-quantized"
    public static let currentVersion = 1

    public var format: String = QuantizedModelInfo.formatName
    public var version: Int = QuantizedModelInfo.currentVersion
    /// The source network's `config.json` and `scheduler_config.json` text (scheduler nil = diffusers DDIM
    /// defaults). Stored under the key "unetConfig" (format v1).
    public var networkConfig: String
    public var schedulerConfig: String?
    /// The source model's folder name (e.g. "fmnist-ddpm"), portable across machines; with `sourceWeightsDigest`
    /// it identifies the model. Files written before this held the absolute path of the machine that made them.
    public var sourceModel: String
    /// Content digest of the source weights file (`SafeTensorsFile.contentDigest()`); nil in files
    /// written before it existed. Lets a paired FP-vs-quantized run check it has the right FP model.
    public var sourceWeightsDigest: String?
    public var variants: [QuantizedVariantInfo]
    public var calibration: CalibrationInfo
    /// Extra JSON documents by name (e.g. "correction", "mixed").
    public var attachments: [String: String] = [:]
    /// The quantized first-stage decoder (absent: the decoder runs fp32).
    public var decoder: QuantizedDecoderInfo?

    enum CodingKeys: String, CodingKey {
        case format, version, networkConfig = "unetConfig", schedulerConfig, sourceModel, sourceWeightsDigest, variants, calibration, attachments, decoder
    }

    public init(networkConfig: String, schedulerConfig: String?, sourceModel: String, variants: [QuantizedVariantInfo],
                calibration: CalibrationInfo) {
        self.networkConfig = networkConfig; self.schedulerConfig = schedulerConfig; self.sourceModel = sourceModel
        self.variants = variants; self.calibration = calibration
    }
}

/// Tensor names inside the file.
enum QuantizedTensorName {
    static func weights(_ v: Int, _ layer: String) -> String { "ptqd.v\(v).\(layer).qweight" }
    static func scales(_ v: Int, _ layer: String) -> String { "ptqd.v\(v).\(layer).wscale" }
    static func decoderWeights(_ layer: String) -> String { "ptqd.decoder.\(layer).qweight" }
    static func decoderScales(_ layer: String) -> String { "ptqd.decoder.\(layer).wscale" }
    /// The class embedder of a class-conditional latent pipeline (LDM cin256), fp32 `[K, D]`.
    static let classEmbedder = "ptqd.class_embedder.embedding.weight"
    static let classEmbedderAttachment = "class_embedder"
    static let prefix = "ptqd."
}


/// Reads, validates and instantiates a quantized model file.
public final class QuantizedModel {
    public let path: String
    public let info: QuantizedModelInfo
    /// diffusers `_class_name` of the source network.
    public let architecture: String
    public let scheduler: SchedulerConfig
    let file: SafeTensorsFile
    /// Layer records per variant.
    public let variants: [[QuantizedLayer]]
    /// Quantized attentions per variant (empty when attention stays fp32).
    public let attentionVariants: [[QuantizedAttention]]
    /// The quantized decoder's layer records (empty: the decoder runs fp32).
    public let decoderLayers: [QuantizedLayer]

    public init(path: String) throws {
        self.path = path
        file = try SafeTensorsFile(path: path)
        guard let json = file.metadata["ptqd"] else {
            throw QuantizationError.file(path: path, reason: "not a ptqd quantized model (no 'ptqd' metadata); create one with `ptqd quantize`")
        }
        struct Header: Decodable { var format: String?; var version: Int? }
        guard let head = try? JSONDecoder().decode(Header.self, from: Data(json.utf8)),
              head.format == QuantizedModelInfo.formatName, let version = head.version else {
            throw QuantizationError.file(path: path, reason: "metadata 'ptqd' is not a \(QuantizedModelInfo.formatName) document")
        }
        guard version <= QuantizedModelInfo.currentVersion else {
            throw QuantizationError.file(path: path, reason: "written by a newer ptqd (format version \(version) > \(QuantizedModelInfo.currentVersion)); upgrade ptqd to read it")
        }
        do { info = try JSONDecoder().decode(QuantizedModelInfo.self, from: Data(json.utf8)) } catch {
            throw QuantizationError.file(path: path, reason: "metadata 'ptqd' is malformed (\(error)); re-create the file with `ptqd quantize`")
        }
        let arch = DenoiserArchitectures.className(of: Data(info.networkConfig.utf8)) ?? "UNet2DModel"
        guard DenoiserArchitectures.all.contains(where: { $0.classNames.contains(arch) }) else {
            throw QuantizationError.file(path: path, reason: "holds a \(arch) network, which this ptqd cannot run")
        }
        architecture = arch
        scheduler = try info.schedulerConfig.map { try SchedulerConfig(json: Data($0.utf8), file: "\(path) [scheduler config]") } ?? .ddimDefault
        guard !info.variants.isEmpty else { throw QuantizationError.file(path: path, reason: "holds no quantized variant") }
        var variants: [[QuantizedLayer]] = []
        var referenced: Set<String> = []
        for (v, variant) in info.variants.enumerated() {
            let names = variant.layers.map(\.name)
            guard Set(names).count == names.count else {
                throw QuantizationError.file(path: path, reason: "variant \(v) lists a layer twice; re-create the file with `ptqd quantize`")
            }
            var layers: [QuantizedLayer] = []
            for l in variant.layers {
                let wName = QuantizedTensorName.weights(v, l.name), sName = QuantizedTensorName.scales(v, l.name)
                referenced.formUnion([wName, sName])
                layers.append(try Self.readLayer(l, weights: wName, scales: sName, file: file, path: path))
            }
            variants.append(layers)
        }
        var decoderLayers: [QuantizedLayer] = []
        if let d = info.decoder {
            guard Set(d.layers.map(\.name)).count == d.layers.count else {
                throw QuantizationError.file(path: path, reason: "the decoder lists a layer twice; re-create the file with `ptqd quantize`")
            }
            for l in d.layers {
                let wName = QuantizedTensorName.decoderWeights(l.name), sName = QuantizedTensorName.decoderScales(l.name)
                referenced.formUnion([wName, sName])
                decoderLayers.append(try Self.readLayer(l, weights: wName, scales: sName, file: file, path: path))
            }
            try Self.checkAttentions(d.attentions ?? [], owner: "the decoder", path: path)
        }
        self.decoderLayers = decoderLayers
        if info.attachments[QuantizedTensorName.classEmbedderAttachment] != nil {
            guard file.contains(QuantizedTensorName.classEmbedder) else {
                throw QuantizationError.file(path: path, reason: "metadata names a class embedder but tensor \(QuantizedTensorName.classEmbedder) is missing")
            }
            referenced.insert(QuantizedTensorName.classEmbedder)
        }
        let stray = file.names.filter { $0.hasPrefix(QuantizedTensorName.prefix) && !referenced.contains($0) }
        guard stray.isEmpty else {
            throw QuantizationError.file(path: path, reason: "tensors not described by the metadata: \(stray.prefix(3).joined(separator: ", "))")
        }
        self.variants = variants
        attentionVariants = try info.variants.map { variant in
            let a = variant.attentions ?? []
            try Self.checkAttentions(a, owner: "variant \(variant.name)", path: path)
            return a
        }
    }

    /// Names unique; every quantizer valid; the softmax quantizer 8-bit with zero point 0.
    static func checkAttentions(_ a: [QuantizedAttention], owner: String, path: String) throws {
        guard Set(a.map(\.name)).count == a.count else {
            throw QuantizationError.file(path: path, reason: "\(owner) lists an attention twice; re-create the file with `ptqd quantize`")
        }
        for r in a {
            let q = r.quantization
            guard [q.query, q.key, q.value, q.probabilities].allSatisfy(\.isValid), q.probabilities.zeroPoint == 0,
                  q.probabilities.bits == 8 else {
                throw QuantizationError.file(path: path, reason: "attention \(r.name) has an invalid quantizer; re-create the file with `ptqd quantize`")
            }
        }
    }

    /// Installs the quantized decoder (if the file has one) into `decoder`, a fresh load of the source pipeline's
    /// decoder: its weights digest must be the one the file was made from (unless `force`).
    /// - decoderWeightsDigest: `SafeTensorsFile.contentDigest()` of the decoder's weights file.
    public func installDecoder(into decoder: LatentDecoder, decoderWeightsDigest: String, force: Bool = false, mode: ExecutionMode = .integer) throws {
        guard let d = info.decoder else { return }
        guard force || d.sourceWeightsDigest == decoderWeightsDigest else {
            throw QuantizationError.file(path: path, reason: "its quantized decoder was made from other decoder weights (\(d.sourceWeightsDigest), given \(decoderWeightsDigest)); pass the source pipeline with --model, or --force")
        }
        try install(decoderLayers, d.attentions ?? [], into: decoder.layers, sites: decoder.attentions, owner: "the decoder", mode: mode)
    }

    /// Installs layer records and attention quantizers into a network's layers by name, each record validated against
    /// its layer; a record or attention the network does not have is an error naming it.
    func install(_ records: [QuantizedLayer], _ attentions: [QuantizedAttention], into layers: [WeightLayer],
                 sites: [AttentionAccounting], owner: String, mode: ExecutionMode) throws {
        var fitted = Dictionary(uniqueKeysWithValues: records.map { ($0.name, $0) })
        for layer in layers {
            guard let record = fitted.removeValue(forKey: layer.name) else { continue }
            do { try record.validate(against: layer) } catch let QuantizationError.file(_, reason) {
                throw QuantizationError.file(path: path, reason: "layer \(record.name): \(reason)")
            }
            layer.kernel = record.makeKernel(for: layer, mode: mode)
        }
        if let unknown = fitted.keys.sorted().first {
            throw QuantizationError.file(path: path, reason: "quantized layer \(unknown) does not exist in \(owner)")
        }
        var bySite = Dictionary(uniqueKeysWithValues: sites.map { ($0.site.name, $0.site) })
        for a in attentions {
            guard let site = bySite.removeValue(forKey: a.name) else {
                throw QuantizationError.file(path: path, reason: "quantized attention \(a.name) does not exist in \(owner)")
            }
            site.quantization = a.quantization
            site.integerProducts = mode == .integer
        }
    }

    /// BOPs precisions of the quantized decoder (layers and attention products); empty if it runs fp32.
    public var decoderCostPrecisions: [String: LayerPrecision] {
        Self.costPrecisions(layers: decoderLayers, attentions: info.decoder?.attentions ?? [])
    }

    /// BOPs precisions of variant `v`: its layers, plus each quantized attention's two products —
    /// `<attention>.attn_qk` at q bits × k bits and `<attention>.attn_pv` at v bits × 8 (the names `LayerCosts` uses).
    public func costPrecisions(variant v: Int) -> [String: LayerPrecision] {
        Self.costPrecisions(layers: variants[v], attentions: attentionVariants[v])
    }

    /// See `costPrecisions(variant:)`.
    public static func costPrecisions(layers: [QuantizedLayer], attentions: [QuantizedAttention]) -> [String: LayerPrecision] {
        var p = Dictionary(uniqueKeysWithValues: layers.map { ($0.name, $0.precision) })
        for a in attentions {
            let q = a.quantization
            p["\(a.name).attn_qk"] = try? LayerPrecision(weightBits: q.key.bits, activationBits: q.query.bits)
            p["\(a.name).attn_pv"] = try? LayerPrecision(weightBits: q.value.bits, activationBits: q.probabilities.bits)
        }
        return p
    }

    /// One layer record: its metadata checked against its weight and scale tensors.
    static func readLayer(_ l: QuantizedLayerInfo, weights wName: String, scales sName: String, file: SafeTensorsFile, path: String) throws -> QuantizedLayer {
        guard l.precision.isSupported else {
            throw QuantizationError.file(path: path, reason: "layer \(l.name) has \(l.precision.weightBits)-bit weights / \(l.precision.activationBits.map(String.init) ?? "fp32") activations; ptqd stores 2…8 bits")
        }
        guard file.contains(wName), file.contains(sName) else {
            throw QuantizationError.file(path: path, reason: "metadata lists layer \(l.name) but tensor \(file.contains(wName) ? sName : wName) is missing")
        }
        let sInfo = try file.info(sName)
        guard sInfo.shape.count == 1, sInfo.shape[0] > 0 else {
            throw QuantizationError.file(path: path, reason: "\(sName) must be a 1-D [O] tensor, has shape \(sInfo.shape)")
        }
        let scales = try file.floats(sName)
        let o = scales.count
        let wInfo = try file.info(wName)
        let q: [Int8]
        if l.precision.weightBits <= 4 {
            guard wInfo.dtype == .u8, wInfo.shape.count == 1 else {
                throw QuantizationError.file(path: path, reason: "\(wName) must be packed U8 [⌈O·K/2⌉] for \(l.precision.weightBits)-bit weights")
            }
            let bytes = try file.uint8s(wName)
            guard l.weightCount > 0, bytes.count == l.weightCount / 2 + l.weightCount % 2 else {
                throw QuantizationError.file(path: path, reason: "\(wName) holds \(bytes.count) bytes for \(l.weightCount) 4-bit weights")
            }
            q = NibblePacking.unpack(bytes, count: l.weightCount)
        } else {
            guard wInfo.dtype == .i8, wInfo.shape.count == 2, wInfo.shape[0] == o else {
                throw QuantizationError.file(path: path, reason: "\(wName) must be I8 [\(o), K], has \(wInfo.dtype.rawValue) \(wInfo.shape)")
            }
            q = try file.int8s(wName)
            guard q.count == l.weightCount else {
                throw QuantizationError.file(path: path, reason: "\(wName) holds \(q.count) weights, metadata says \(l.weightCount)")
            }
        }
        return QuantizedLayer(name: l.name, precision: l.precision, q: q, scales: scales, inputs: l.inputs, split: l.split)
    }

    /// Builds the network of variant `v` with its quantized layers running in `mode`.
    public func makeNetwork(variant v: Int = 0, mode: ExecutionMode = .integer) throws -> Denoiser {
        guard variants.indices.contains(v) else { throw QuantizationError.file(path: path, reason: "has no variant \(v)") }
        var overrides: [String: [Float]] = [:]
        var consumed = Set(file.names.filter { $0.hasPrefix(QuantizedTensorName.prefix) })
        for l in variants[v] {
            consumed.formUnion(LegacyAttentionNames.weightKeys(l.name))
            overrides["\(l.name).weight"] = l.dequantizedWeights()   // fp32 view for the network's bookkeeping
        }
        let network = try DenoiserArchitectures.load(configJSON: Data(info.networkConfig.utf8), configFile: "\(path) [network config]",
                                                     weights: file, overrides: overrides, consumedElsewhere: consumed)
        try install(variants[v], attentionVariants[v], into: network.layers, sites: network.attentions, owner: "the model config", mode: mode)
        guard let embedderJSON = info.attachments[QuantizedTensorName.classEmbedderAttachment] else { return network }
        struct EmbedderInfo: Decodable { var num_classes: Int; var embed_dim: Int; var null_class: Int }
        guard let e = try? JSONDecoder().decode(EmbedderInfo.self, from: Data(embedderJSON.utf8)),
              let unet = network as? UNet2DCondition else {
            throw QuantizationError.file(path: path, reason: "its class embedder record is malformed or does not fit the network; re-create the file")
        }
        let embedder = try ClassEmbedder(numClasses: e.num_classes, embedDim: e.embed_dim, nullClass: e.null_class,
                                         table: try file.floats(QuantizedTensorName.classEmbedder, expectedShape: [e.num_classes, e.embed_dim]))
        return try ClassContextDenoiser(unet: unet, embedder: embedder)
    }

    /// Writes a quantized model atomically.
    /// - Parameters:
    ///   - source: the fp32 model the variants were made from.
    ///   - variants: layer records per variant (same order as `info.variants`).
    ///   - decoder: the quantized decoder's layer records (with `info.decoder`).
    public static func write(to path: String, info: QuantizedModelInfo, source: DiffusionModel, variants: [[QuantizedLayer]],
                             decoder: [QuantizedLayer] = []) throws {
        precondition(variants.count == info.variants.count, "variant records/info mismatch")
        precondition(decoder.isEmpty == (info.decoder == nil), "decoder records/info mismatch")
        let src = try SafeTensorsFile(path: source.weightsPath)
        // Drop a layer's fp32 weight only if every variant quantizes it.
        let quantizedEverywhere = variants.map { Set($0.map(\.name)) }.reduce(nil as Set<String>?) { acc, s in acc.map { $0.intersection(s) } ?? s } ?? []
        let dropped = Set(quantizedEverywhere.flatMap(LegacyAttentionNames.weightKeys))
        var info = info
        if let c = source.network as? ClassContextDenoiser {
            info.attachments[QuantizedTensorName.classEmbedderAttachment] =
                "{\"embed_dim\":\(c.embedder.embedDim),\"null_class\":\(c.embedder.nullClass),\"num_classes\":\(c.embedder.numClasses)}"
        }
        let encoder = JSONEncoder(); encoder.outputFormatting = [.sortedKeys]
        let json = String(data: try encoder.encode(info), encoding: .utf8)!
        var w = SafeTensorsWriter(metadata: ["ptqd": json, "format": "pt"])
        for name in src.names where !dropped.contains(name) {
            try w.add(name, floats: try src.floats(name), shape: try src.info(name).shape)
        }
        if let c = source.network as? ClassContextDenoiser {
            try w.add(QuantizedTensorName.classEmbedder, floats: c.embedder.table, shape: [c.embedder.numClasses, c.embedder.embedDim])
        }
        /// Integer weights (I8 [O, K], or packed U8 at ≤ 4 bits) and per-channel scales F32 [O].
        func add(_ l: QuantizedLayer, weights wName: String, scales sName: String) throws {
            let o = l.scales.count, k = l.q.count / o
            if l.precision.weightBits <= 4 {
                let packed = NibblePacking.pack(l.q)
                try w.add(wName, uint8s: packed, shape: [packed.count])
            } else {
                try w.add(wName, int8s: l.q, shape: [o, k])
            }
            try w.add(sName, floats: l.scales, shape: [o])
        }
        for (v, layers) in variants.enumerated() {
            for l in layers { try add(l, weights: QuantizedTensorName.weights(v, l.name), scales: QuantizedTensorName.scales(v, l.name)) }
        }
        for l in decoder { try add(l, weights: QuantizedTensorName.decoderWeights(l.name), scales: QuantizedTensorName.decoderScales(l.name)) }
        try w.write(to: path)
    }
}
