import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore
import XCTest

/// BOPs and model size against a hand computation from config.json and the weights file alone
/// (diffusers UNet2DModel geometry walked independently of UNet2D/LayerCosts).
final class CostAccountingTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    /// One weight layer or attention matmul of a forward at the config's sample size, batch 1.
    struct HandLayer {
        enum Kind { case weight, attentionMatmul }
        var name: String
        var kind: Kind
        var macs: Int
        var weights: Int
        var outputs: Int
        /// conv_in / conv_out / time (and class) embedding MLP: kept at 8 bits by default.
        var kept: Bool
    }

    /// Walks a diffusers UNet2DModel config (conv/plain resamplers, table or no class embedding).
    static func handLayers(_ configPath: String) throws -> [HandLayer] {
        let c = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: configPath))) as! [String: Any]
        let boc = c["block_out_channels"] as! [Int]
        let lpb = c["layers_per_block"] as! Int
        let size = c["sample_size"] as! Int
        let cin = c["in_channels"] as! Int, cout = c["out_channels"] as! Int
        let downs = c["down_block_types"] as! [String], ups = c["up_block_types"] as! [String]
        let headDim = c["attention_head_dim"] as? Int
        let pad = c["downsample_padding"] as! Int
        let addAttention = c["add_attention"] as? Bool ?? true
        XCTAssertNil(c["class_embed_type"] as? String, "hand model covers table/no class embeddings only")
        let ted = 4 * boc[0]
        var rows: [HandLayer] = []
        func conv(_ n: String, _ i: Int, _ o: Int, k: Int, outSize: Int, kept: Bool = false) {
            rows.append(HandLayer(name: n, kind: .weight, macs: outSize * outSize * o * i * k * k, weights: o * i * k * k, outputs: o, kept: kept))
        }
        func linear(_ n: String, _ i: Int, _ o: Int, tokens: Int, kept: Bool = false) {
            rows.append(HandLayer(name: n, kind: .weight, macs: tokens * i * o, weights: i * o, outputs: o, kept: kept))
        }
        func resnet(_ p: String, _ i: Int, _ o: Int, _ s: Int) {
            conv("\(p).conv1", i, o, k: 3, outSize: s)
            linear("\(p).time_emb_proj", ted, o, tokens: 1)
            conv("\(p).conv2", o, o, k: 3, outSize: s)
            if i != o { conv("\(p).conv_shortcut", i, o, k: 1, outSize: s) }
        }
        func attention(_ p: String, _ ch: Int, _ s: Int) {
            let t = s * s
            for n in ["to_q", "to_k", "to_v"] { linear("\(p).\(n)", ch, ch, tokens: t) }
            // QKᵀ and PV over all heads: T·T·C multiply-adds each (heads × T × T × head_dim).
            let heads = ch / (headDim ?? ch), d = headDim ?? ch
            rows.append(HandLayer(name: "\(p).attn_qk", kind: .attentionMatmul, macs: heads * t * t * d, weights: 0, outputs: 0, kept: false))
            rows.append(HandLayer(name: "\(p).attn_pv", kind: .attentionMatmul, macs: heads * t * t * d, weights: 0, outputs: 0, kept: false))
            linear("\(p).to_out.0", ch, ch, tokens: t)
        }
        linear("time_embedding.linear_1", boc[0], ted, tokens: 1, kept: true)
        linear("time_embedding.linear_2", ted, ted, tokens: 1, kept: true)
        var s = size, ch = boc[0]
        conv("conv_in", cin, ch, k: 3, outSize: s, kept: true)
        var skips = [ch]
        for (i, type) in downs.enumerated() {
            let out = boc[i]
            for j in 0..<lpb {
                resnet("down_blocks.\(i).resnets.\(j)", ch, out, s); ch = out
                if type == "AttnDownBlock2D" { attention("down_blocks.\(i).attentions.\(j)", ch, s) }
                skips.append(ch)
            }
            if i < boc.count - 1 {
                // 3×3 stride 2: padding p on all sides, or (0, 1) bottom/right when p = 0.
                s = pad == 0 ? (s + 1 - 3) / 2 + 1 : (s + 2 * pad - 3) / 2 + 1
                conv("down_blocks.\(i).downsamplers.0.conv", ch, ch, k: 3, outSize: s)
                skips.append(ch)
            }
        }
        resnet("mid_block.resnets.0", ch, ch, s)
        if addAttention { attention("mid_block.attentions.0", ch, s) }
        resnet("mid_block.resnets.1", ch, ch, s)
        let rev = Array(boc.reversed())
        for (i, type) in ups.enumerated() {
            let out = rev[i]
            for j in 0...lpb {
                let skip = skips.removeLast()
                resnet("up_blocks.\(i).resnets.\(j)", ch + skip, out, s); ch = out
                if type == "AttnUpBlock2D" { attention("up_blocks.\(i).attentions.\(j)", ch, s) }
            }
            if i < boc.count - 1 {
                s *= 2
                conv("up_blocks.\(i).upsamplers.0.conv", ch, ch, k: 3, outSize: s)
            }
        }
        XCTAssertTrue(skips.isEmpty)
        conv("conv_out", ch, cout, k: 3, outSize: s, kept: true)
        return rows
    }

    /// Parameters stored in the weights file (every tensor's element count).
    static func fileParameters(_ path: String) throws -> Int {
        let f = try SafeTensorsFile(path: path)
        return f.names.reduce(0) { $0 + (f.tensors[$1]!.elementCount) }
    }

    func check(_ model: String, scheme: String, rules: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let m = try QFixtures.load(model)
        let policy = PrecisionPolicy(scheme: try LayerPrecision(parsing: scheme), rules: try rules.map(PrecisionRule.init(parsing:)))
        var precisions: [String: LayerPrecision] = [:]
        for l in m.unet.layers { if let p = policy.precision(name: l.name, role: l.role) { precisions[l.name] = p } }
        let costs = ModelCosts(try LayerCosts.measure(m.unet), precisions: precisions)

        let hand = try Self.handLayers(m.networkConfigPath)
        let fp32Layers = Set(rules.filter { $0.hasSuffix("=fp32") }.map { String($0.dropLast(5)) })
        let w = try LayerPrecision(parsing: scheme)
        var bops = 0.0, bytes = 0.0, quantizedWeights = 0
        for h in hand {
            switch h.kind {
            case .attentionMatmul:
                bops += Double(h.macs) * 32 * 32
            case .weight where fp32Layers.contains(h.name):
                bops += Double(h.macs) * 32 * 32
            case .weight:
                let bw = h.kept ? 8 : w.weightBits
                let ba = w.activationBits == nil ? 32 : (h.kept ? 8 : w.activationBits!)
                bops += Double(h.macs * bw * ba)
                bytes += Double(h.weights * bw) / 8 + 4 * Double(h.outputs)
                quantizedWeights += h.weights
            }
        }
        let params = try Self.fileParameters(m.weightsPath)
        bytes += 4 * Double(params - quantizedWeights)
        let handMACs = hand.reduce(0) { $0 + $1.macs }

        XCTAssertEqual(costs.rows.count, hand.count, "\(model): layer rows", file: file, line: line)
        XCTAssertEqual(Set(costs.rows.map(\.name)), Set(hand.map(\.name)), "\(model): layer names", file: file, line: line)
        XCTAssertEqual(costs.totalMACs, handMACs, "\(model): MACs", file: file, line: line)
        XCTAssertEqual(costs.totalBOPs, bops, "\(model) \(scheme): BOPs", file: file, line: line)
        XCTAssertEqual(costs.fp32BOPs, Double(handMACs) * 1024, "\(model): fp32 BOPs", file: file, line: line)
        XCTAssertEqual(costs.bytes, bytes, accuracy: 1e-9, "\(model) \(scheme): bytes", file: file, line: line)
        XCTAssertEqual(costs.fp32Bytes, Double(4 * params), "\(model): fp32 bytes", file: file, line: line)
        XCTAssertEqual(m.unet.parameterCount, params, "\(model): parameter count", file: file, line: line)
        // Per-layer MACs as well (a wrong layer compensated by another would pass the sums).
        let byName = Dictionary(uniqueKeysWithValues: costs.rows.map { ($0.name, $0.macs) })
        for h in hand { XCTAssertEqual(byName[h.name], h.macs, "\(model): MACs of \(h.name)", file: file, line: line) }
    }

    func testW4A8AccountingByHandCondAttn28() throws {
        try check("cond_attn_28", scheme: "w4a8", rules: [])
    }

    func testW4A8AccountingByHandUncondPlain16() throws {
        // Asymmetric downsample padding (16 → 8) and one layer kept fp32 by a rule.
        try check("uncond_plain_16", scheme: "w4a8", rules: ["mid_block.resnets.0.conv1=fp32"])
    }

    func testWeightOnlyAccountingByHand() throws {
        try check("cond_attn_28", scheme: "w4a32", rules: ["up_blocks.0.attentions.0.to_q=fp32"])
    }

    func testExplicitNumbersOfOneLayer() throws {
        // uncond_plain_16: conv_in is 3→8, 3×3 at 16×16 → 16·16·8·3·9 = 55296 MACs, kept w8a8.
        let m = try QFixtures.load("uncond_plain_16")
        let p = try LayerPrecision(parsing: "w4a8")
        let costs = ModelCosts(try LayerCosts.measure(m.unet), precisions: ["conv_in": .w8a8, "conv_out": p])
        let convIn = try XCTUnwrap(costs.rows.first { $0.name == "conv_in" })
        XCTAssertEqual(convIn.macs, 55296)
        XCTAssertEqual(convIn.bops, 55296 * 64)
        XCTAssertEqual(convIn.weightBytes, 216 + 32)
        // conv_out 8→3 at 16×16, w4a8: 16·16·3·8·9 = 55296 MACs × 32; 216 weights × ½ byte + 3 scales.
        let convOut = try XCTUnwrap(costs.rows.first { $0.name == "conv_out" })
        XCTAssertEqual(convOut.bops, 55296 * 32)
        XCTAssertEqual(convOut.weightBytes, 108 + 12)
        // A layer absent from the dictionary is fp32.
        let other = try XCTUnwrap(costs.rows.first { $0.name == "mid_block.resnets.0.conv1" })
        XCTAssertEqual(other.bops, Double(other.macs) * 1024)
        XCTAssertEqual(other.weightBytes, Double(other.weights * 4))
    }
}
