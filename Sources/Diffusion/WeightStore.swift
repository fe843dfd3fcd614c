//===--- WeightStore.swift - named fp32 parameters with shape checking -----===//

import SafeTensors

/// Old diffusers attention parameter names (query/key/value/proj_attn), accepted as aliases of the current ones.
public enum LegacyAttentionNames {
    public static let map: [(current: String, legacy: String)] = [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")]

    /// Names a file may use for the weight of layer `layer`: the current name, then its legacy alias if it has one.
    public static func weightKeys(_ layer: String) -> [String] {
        var keys = ["\(layer).weight"]
        for (new, old) in map where layer.hasSuffix(".\(new)") { keys.append(String(layer.dropLast(new.count)) + old + ".weight") }
        return keys
    }
}

/// Reads a model's parameters by diffusers name, checks shapes and finiteness, and tracks
/// which tensors were used so leftovers can be reported as a config/weights mismatch.
final class WeightStore {
    let file: SafeTensorsFile
    private(set) var used: Set<String> = []
    private(set) var usedElementCount = 0

    /// Tensors supplied from memory instead of the file (e.g. dequantized weights of a quantized model).
    let overrides: [String: [Float]]
    /// File tensors another loader consumes (e.g. integer weights); not reported as unused.
    let consumedElsewhere: Set<String>

    init(file: SafeTensorsFile, overrides: [String: [Float]] = [:], consumedElsewhere: Set<String> = []) {
        self.file = file; self.overrides = overrides; self.consumedElsewhere = consumedElsewhere
    }

    private func resolve(_ name: String) -> String? {
        if file.contains(name) { return name }
        for (new, old) in LegacyAttentionNames.map where name.contains(".\(new).") {
            let alt = name.replacingOccurrences(of: ".\(new).", with: ".\(old).")
            if file.contains(alt) { return alt }
        }
        return nil
    }

    /// The parameter `name` as fp32, which must have `shape` (leading/trailing 1s are not squeezed,
    /// except legacy attention weights stored as 1x1 convs `[O, I, 1, 1]` for a linear `[O, I]`).
    func tensor(_ name: String, shape: [Int]) throws -> [Float] {
        if let values = overrides[name] {
            guard values.count == shape.reduce(1, *) else {
                throw ModelError.shapeMismatch(file: file.path, tensor: name, expected: shape, actual: [values.count])
            }
            if used.insert(name).inserted { usedElementCount += values.count }
            return values
        }
        guard let key = resolve(name) else { throw ModelError.missingTensor(file: file.path, tensor: name) }
        let info = try file.info(key)
        let compatible = info.shape == shape || (shape.count == 2 && info.shape == shape + [1, 1])
        guard compatible else { throw ModelError.shapeMismatch(file: file.path, tensor: key, expected: shape, actual: info.shape) }
        let values = try file.floats(key)
        guard values.allSatisfy({ $0.isFinite }) else { throw ModelError.nonFiniteWeights(file: file.path, tensor: key) }
        if used.insert(key).inserted { usedElementCount += values.count }
        return values
    }

    /// Throws if the file holds tensors the config did not ask for.
    func rejectUnused() throws {
        let left = file.names.filter { !used.contains($0) && !consumedElsewhere.contains($0) }
        if !left.isEmpty { throw ModelError.unexpectedTensors(file: file.path, names: left) }
    }

    // MARK: layer builders

    func conv(_ name: String, role: LayerRole, _ g: Conv2DGeometryArgs, inputSplit: Int? = nil) throws -> WeightLayer {
        let geometry = g.geometry
        let w = try tensor("\(name).weight", shape: [geometry.outChannels, geometry.inChannels, geometry.kernelH, geometry.kernelW])
        let b = try tensor("\(name).bias", shape: [geometry.outChannels])
        return WeightLayer(name: name, kind: .conv(geometry), role: role, weights: w, bias: b, inputSplit: inputSplit)
    }

    func linear(_ name: String, role: LayerRole, in i: Int, out o: Int, bias: Bool = true) throws -> WeightLayer {
        let w = try tensor("\(name).weight", shape: [o, i])
        let b = bias ? try tensor("\(name).bias", shape: [o]) : nil
        return WeightLayer(name: name, kind: .linear(inFeatures: i, outFeatures: o), role: role, weights: w, bias: b)
    }

    func layerNorm(_ name: String, channels: Int, eps: Float) throws -> LayerNormParams {
        LayerNormParams(eps: eps, gamma: try tensor("\(name).weight", shape: [channels]), beta: try tensor("\(name).bias", shape: [channels]))
    }

    func groupNorm(_ name: String, channels: Int, groups: Int, eps: Float) throws -> GroupNormParams {
        GroupNormParams(groups: groups, eps: eps,
                        gamma: try tensor("\(name).weight", shape: [channels]),
                        beta: try tensor("\(name).bias", shape: [channels]))
    }
}

/// Builder shorthand for a conv's geometry.
struct Conv2DGeometryArgs {
    let geometry: TensorCore.Conv2DGeometry
    static func k3(_ i: Int, _ o: Int, stride: Int = 1, padding: Int = 1) -> Self {
        .init(geometry: .init(inChannels: i, outChannels: o, kernel: 3, stride: stride, padding: padding))
    }
    static func k1(_ i: Int, _ o: Int) -> Self { .init(geometry: .init(inChannels: i, outChannels: o, kernel: 1)) }
}

import TensorCore

/// GroupNorm's parameters: `gamma`, `beta` are `[C]`.
public struct GroupNormParams {
    public let groups: Int
    public let eps: Float
    public let gamma: [Float]
    public let beta: [Float]

    /// - x: `[N, ..., C]`; preAdd: optional `[N, C]`.
    func callAsFunction(_ x: Tensor, preAdd: Tensor? = nil, silu: Bool = false) -> Tensor {
        Ops.groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: eps, preAdd: preAdd, silu: silu)
    }

    /// The normalization as a ``ChannelAffine`` for the layer that consumes it (statistics only; see
    /// ``Ops/groupNormAffine(_:groups:gamma:beta:eps:preAdd:silu:)``).
    func affine(_ x: Tensor, concatenating skip: Tensor? = nil, preAdd: Tensor? = nil, silu: Bool = false) -> ChannelAffine {
        Ops.groupNormAffine(x, concatenating: skip, groups: groups, gamma: gamma, beta: beta, eps: eps, preAdd: preAdd, silu: silu)
    }
}

/// LayerNorm's parameters over the last dimension: `gamma`, `beta` are `[D]`.
public struct LayerNormParams {
    public let eps: Float
    public let gamma: [Float]
    public let beta: [Float]
    func callAsFunction(_ x: Tensor) -> Tensor { Ops.layerNorm(x, gamma: gamma, beta: beta, eps: eps) }
}
