//===--- LayerCosts.swift - per-layer MACs and parameters of a UNet ---------===//
//
// Measured by running one batch-1 forward at the config's sample size with counting kernels
// swapped into every weight layer (then swapped back). Attention's two activation×activation
// matmuls (QKᵀ and PV) are listed as their own rows. MACs count padded conv taps.
//
//===----------------------------------------------------------------------===//

import TensorCore

/// Cost of one layer for one image.
public struct LayerCost: Sendable {
    public enum Kind: String, Sendable { case conv, linear, attentionScores = "attn-qk", attentionValues = "attn-pv" }
    public let name: String
    public let kind: Kind
    /// nil for the attention matmuls (no weights).
    public let role: LayerRole?
    public let macs: Int
    /// Weights plus bias.
    public let parameters: Int
    /// Weight-matrix elements (0 for the attention matmuls).
    public var weights: Int = 0
    /// Output channels / features (0 for the attention matmuls).
    public var outputs: Int = 0
}

/// All layer costs of a UNet forward.
public struct LayerCosts: Sendable {
    public let layers: [LayerCost]
    /// Parameters of the whole model (weight layers, biases, norms, embeddings).
    public let parameters: Int
    public var totalMACs: Int { layers.reduce(0) { $0 + $1.macs } }
    public var convMACs: Int { layers.filter { $0.kind == .conv }.reduce(0) { $0 + $1.macs } }

    /// Measures a network at its configured sample size, batch 1, with `conditioning` (one row; default
    /// `exampleConditioning`, e.g. a one-token context: pass an SD model's `[1, 77, 768]` context to cost it as used).
    public static func measure(_ network: Denoiser, conditioning: Conditioning? = nil) throws -> LayerCosts {
        try measure(layers: network.layers, attentions: network.attentions, parameters: network.parameterCount) {
            _ = try network.forward(Tensor(shape: [1] + network.sampleShape), timesteps: [1],
                                    conditioning: conditioning ?? network.exampleConditioning(rows: 1))
        }
    }

    /// A first-stage decoder's costs for one image (latents of `latentShape` `[h, w, c]`).
    public static func measure(_ decoder: LatentDecoder, latentShape: [Int]) throws -> LayerCosts {
        try measure(layers: decoder.layers, attentions: decoder.attentions, parameters: decoder.parameterCount) {
            _ = try decoder.decode(Tensor(shape: [1] + latentShape))
        }
    }

    /// Costs of `layers` (and the `attentions` among them) over one batch-1 `forward`.
    public static func measure(layers: [WeightLayer], attentions: [AttentionAccounting], parameters: Int,
                               forward: () throws -> Void) throws -> LayerCosts {
        final class Counter: WeightLayerKernel {
            let inner: WeightLayerKernel
            var inputShape: [Int] = []
            init(_ inner: WeightLayerKernel) { self.inner = inner }
            var isPure: Bool { false }
            func forward(_ x: Tensor) -> Tensor { inputShape = x.shape; return inner.forward(x) }
            func forward(_ x: ChannelAffine) -> Tensor { inputShape = x.shape; return inner.forward(x) }
            func forwardUpsampledNearest2x(_ x: Tensor) -> Tensor {
                inputShape = [x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]]
                return inner.forwardUpsampledNearest2x(x)
            }
            var fusesChannelAffine: Bool { inner.fusesChannelAffine }
        }
        let originals = layers.map(\.kernel)
        let counters = originals.map(Counter.init)
        for (l, c) in zip(layers, counters) { l.kernel = c }
        defer { for (l, k) in zip(layers, originals) { l.kernel = k } }
        try forward()
        var rows: [LayerCost] = []
        var tokens: [ObjectIdentifier: Int] = [:]
        for (l, c) in zip(layers, counters) {
            let params = l.weights.count + (l.bias?.count ?? 0)
            switch l.kind {
            case let .conv(g):
                rows.append(LayerCost(name: l.name, kind: .conv, role: l.role, macs: g.macs(h: c.inputShape[1], w: c.inputShape[2]), parameters: params,
                                      weights: l.weights.count, outputs: l.kind.outputs))
            case let .linear(i, o):
                let m = c.inputShape.reduce(1, *) / i
                rows.append(LayerCost(name: l.name, kind: .linear, role: l.role, macs: m * i * o, parameters: params,
                                      weights: l.weights.count, outputs: o))
                tokens[ObjectIdentifier(l)] = m
            }
        }
        // Attention matmuls (QKᵀ and PV: query tokens × key tokens × inner width each), placed before each output projection.
        for a in attentions {
            let tq = tokens[ObjectIdentifier(a.query)] ?? 0, tk = tokens[ObjectIdentifier(a.key)] ?? 0
            let prefix = a.site.name
            let half = tq * tk * a.innerWidth
            if let idx = rows.firstIndex(where: { $0.name == a.output.name }) {
                rows.insert(LayerCost(name: "\(prefix).attn_pv", kind: .attentionValues, role: nil, macs: half, parameters: 0), at: idx)
                rows.insert(LayerCost(name: "\(prefix).attn_qk", kind: .attentionScores, role: nil, macs: half, parameters: 0), at: idx)
            }
        }
        return LayerCosts(layers: rows, parameters: parameters)
    }
}
