//===--- Costs.swift - BOPs and model size of a (quantized) UNet -------------===//
//
// Accounting rule (stated in reports):
// * BOPs of one UNet forward for one image = Σ_layers MACs × b_w × b_a. fp32 layers and the
//   attention matmuls (QKᵀ, PV; activation × activation) count 32 × 32 — or, with `--quantize-attention`,
//   q bits × k bits and v bits × 8 (the softmax output) — and weight-only layers b_w × 32.
//   Classifier-free guidance runs the UNet on 2 rows per image and step: that doubling is reported
//   separately, never folded in.
// * Size = Σ quantized layers (weights × b_w / 8 + 4 bytes per output-channel scale)
//        + 4 bytes × every other parameter (biases, norms, embeddings, fp32 layers).
//   Activation quantizers are a few bytes of metadata and are not counted.
//
//===----------------------------------------------------------------------===//

import Diffusion

/// One row of the per-layer cost table.
public struct CostRow: Sendable {
    public let name: String
    public let kind: LayerCost.Kind
    public let macs: Int
    /// Weight parameters (no bias); 0 for attention matmuls.
    public let weights: Int
    public let outputs: Int
    /// nil = fp32.
    public let precision: LayerPrecision?
    public var weightBits: Int { precision?.weightBits ?? 32 }
    public var activationBits: Int { precision?.activationBitsForCost ?? 32 }
    public var bops: Double { Double(macs) * Double(weightBits) * Double(activationBits) }
    /// Bytes of the weights (and scales when quantized).
    public var weightBytes: Double { precision == nil ? Double(weights * 4) : Double(weights * weightBits) / 8 + Double(4 * outputs) }
}

/// Costs of a UNet at given per-layer precisions.
public struct ModelCosts: Sendable {
    public let rows: [CostRow]
    /// Parameters outside the weight matrices (biases, norms, embeddings), stored fp32.
    public let otherParameters: Int

    /// - precisions: by layer name; missing layers are fp32.
    public init(_ costs: LayerCosts, precisions: [String: LayerPrecision]) {
        var rows: [CostRow] = []
        var weightTotal = 0
        for c in costs.layers {
            let outputs = c.outputs, weights = c.weights
            weightTotal += weights
            rows.append(CostRow(name: c.name, kind: c.kind, macs: c.macs, weights: weights, outputs: outputs, precision: precisions[c.name]))
        }
        self.rows = rows
        otherParameters = costs.parameters - weightTotal
    }

    public var totalBOPs: Double { rows.reduce(0) { $0 + $1.bops } }
    public var totalMACs: Int { rows.reduce(0) { $0 + $1.macs } }
    public var fp32BOPs: Double { Double(totalMACs) * 1024 }
    public var bytes: Double { rows.reduce(Double(otherParameters * 4)) { $0 + $1.weightBytes } }
    public var fp32Bytes: Double { Double((rows.reduce(0) { $0 + $1.weights } + otherParameters) * 4) }
}
