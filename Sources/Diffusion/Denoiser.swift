//===--- Denoiser.swift - the network protocol every diffusion model conforms to ---===//
//
// Calibration, layer quantization, costs and BOPs, the statistics pass, the quantized file and the CLI take a
// `Denoiser`, never a concrete network type. A network is a list of `WeightLayer`s in execution order (the seam
// quantization swaps kernels through) plus a forward pass. A new network family conforms in its own file and
// adds one entry to `DenoiserArchitectures.all`.
//
//===----------------------------------------------------------------------===//

import Foundation
import SafeTensors
import TensorCore

/// One attention of a network: its activation×activation matmuls (QKᵀ and PV) for costs, and its core for quantization.
public struct AttentionAccounting {
    /// The query projection (its input rows are the query tokens), the key projection (its input rows are the
    /// key tokens: x itself for self-attention, the context for cross-attention), and the output projection
    /// (the cost rows are listed before it).
    public let query: WeightLayer, key: WeightLayer, output: WeightLayer
    /// Inner width (heads × head size) of the products.
    public let innerWidth: Int
    /// The attention core (its name, quantizers and calibration hook).
    public let site: MultiHeadAttention

    public init(query: WeightLayer, key: WeightLayer, output: WeightLayer, innerWidth: Int, site: MultiHeadAttention) {
        self.query = query; self.key = key; self.output = output; self.innerWidth = innerWidth; self.site = site
    }
}

/// A noise-prediction network (ε, x₀ or v per its scheduler's `prediction_type`).
public protocol Denoiser: AnyObject {
    /// diffusers `_class_name`, e.g. "UNet2DModel".
    var architecture: String { get }
    /// The config as diffusers wrote it (stored verbatim in quantized files).
    var configJSON: String { get }
    /// A stable text of every decoded config field (equal configs give equal text): identity checks, cache keys.
    var configFingerprint: String { get }
    /// Every Conv2d/Linear, in execution order for one forward.
    var layers: [WeightLayer] { get }
    /// `[H, W, C]` of one input sample at the configured size.
    var sampleShape: [Int] { get }
    /// Channels of the output (C for sampling).
    var outputChannels: Int { get }
    var conditioningKind: ConditioningKind { get }
    /// Parameters as stored in the weights file.
    var parameterCount: Int { get }
    /// The attentions in execution order (costs; attention quantization).
    var attentions: [AttentionAccounting] { get }
    /// Conditioning for a batch of `rows` used to trace one forward (costs): label 0, a zero context, …
    func exampleConditioning(rows: Int) -> Conditioning
    /// One forward pass.
    /// - x: `[N, H, W, C]` NHWC; timesteps: `[N]` (integer-valued, as Float); conditioning: per `conditioningKind`.
    /// - Returns: `[N, H, W, outputChannels]`.
    func forward(_ x: Tensor, timesteps: [Float], conditioning: Conditioning) throws -> Tensor
}

extension Denoiser {
    /// Whether the network takes conditioning.
    public var isConditional: Bool { conditioningKind != .unconditional }
}

/// How a network family is recognized and built from a diffusers folder or a stored config.
public struct DenoiserArchitecture {
    /// diffusers `_class_name`s this family reads.
    public let classNames: [String]
    /// Builds the network from its config JSON and weights.
    /// - overrides: parameters supplied from memory instead of `weights` (by diffusers name);
    ///   consumedElsewhere: file tensors another reader owns (not "unexpected").
    public let load: (_ configJSON: Data, _ configFile: String, _ weights: SafeTensorsFile,
                      _ overrides: [String: [Float]], _ consumedElsewhere: Set<String>) throws -> Denoiser

    public init(classNames: [String],
                load: @escaping (Data, String, SafeTensorsFile, [String: [Float]], Set<String>) throws -> Denoiser) {
        self.classNames = classNames; self.load = load
    }
}

/// The registry of network families.
public enum DenoiserArchitectures {
    /// Every family ptqd can run. A new network adds its entry here.
    public static let all: [DenoiserArchitecture] = [UNet2D.architecture, UNet2DCondition.architecture]

    /// The `_class_name` of a config (nil if absent).
    public static func className(of config: Data) -> String? {
        guard let obj = (try? JSONSerialization.jsonObject(with: config)) as? [String: Any] else { return nil }
        return obj["_class_name"] as? String
    }

    /// Builds the network a config describes. A config without `_class_name` is read as a `UNet2DModel`.
    public static func load(configJSON: Data, configFile: String, weights: SafeTensorsFile,
                            overrides: [String: [Float]] = [:], consumedElsewhere: Set<String> = []) throws -> Denoiser {
        let name = className(of: configJSON) ?? "UNet2DModel"
        guard let family = all.first(where: { $0.classNames.contains(name) }) else {
            throw ModelError.unsupportedValue(file: configFile, field: "_class_name", value: name,
                                              supported: all.flatMap(\.classNames).joined(separator: ", "))
        }
        return try family.load(configJSON, configFile, weights, overrides, consumedElsewhere)
    }
}
