//===--- Inspect.swift - `ptqd inspect` ---------------------------------------===//

import ArgumentParser
import Diffusion
import Foundation
import Correction
import Quantization
import SafeTensors
import TensorCore

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a model folder's decoded config and tensors, or a safetensors file's tensors and metadata.")

    @Argument(help: ArgumentHelp("a .safetensors file, a config.json, or a diffusers model folder", valueName: "file-or-dir"))
    var path: String

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ValidationError("\(path): no such file or folder")
        }
        if isDir.boolValue {
            let m = try DiffusionModel.load(path)
            print("model folder: \(path)")
            print("network config: \(m.networkConfigPath) (\(m.network.architecture))")
            if let u = m.network as? UNet2D { printConfig(u.config) } else {
                let s = m.network.sampleShape
                print("network: \(m.network.architecture), samples [\(s[0]), \(s[1]), \(s[2])] (H, W, C), conditioning \(m.network.conditioningKind)")
            }
            if let d = m.decoder {
                print("decoder: \(m.decoderPath ?? "?") (\(d.kind.rawValue)), \(d.latentChannels) latent channels, ×\(d.factor) upsampling, scaling_factor \(d.scalingFactor)\(d.kind == .vq ? ", \(d.codes) codes" : ""); images \(m.imageShape)")
            }
            print("scheduler config: \(m.schedulerConfigPath ?? "(none: diffusers DDIM defaults)")")
            printScheduler(m.scheduler)
            let costs = try LayerCosts.measure(m.network)
            print(String(format: "parameters: %d (%.2f M), fp32 size %.2f MB; UNet forward %.3f GMAC per image (attention matmuls included)",
                         costs.parameters, Double(costs.parameters) / 1e6, Double(costs.parameters * 4) / 1e6, Double(costs.totalMACs) / 1e9))
            print("weights: \(m.weightsPath)")
            try printTensors(SafeTensorsFile(path: m.weightsPath))
        } else if path.hasSuffix(".json") {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            if let c = try? UNet2DConfig(json: data, file: path) { printConfig(c) }
            else { printScheduler(try SchedulerConfig(json: data, file: path)) }
        } else {
            let file = try SafeTensorsFile(path: path)
            if file.metadata["ptqd"] != nil { try printQuantized() } else { printTensors(file) }
        }
    }

    /// Per-layer table of a quantized model file: MACs, bits, scales, BOPs and bytes; totals vs fp32.
    func printQuantized() throws {
        let q = try QuantizedModel(path: path)
        let info = q.info
        print("quantized model: \(path) (format \(info.format) v\(info.version)), source \(info.sourceModel)\(info.sourceWeightsDigest.map { " (weights \($0))" } ?? "")")
        let c = info.calibration.options
        print("calibration: \(c.trajectories) FP trajectories, \(c.samples) records, \(c.settings.kind.rawValue) \(c.settings.steps) steps eta \(c.settings.eta) guidance \(c.settings.guidance), seed \(c.seed), group size \(c.groupSize)")
        let fileBytes = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        for (v, variant) in info.variants.enumerated() {
            let unet = try q.makeNetwork(variant: v, mode: .integer)
            let records = Dictionary(uniqueKeysWithValues: q.variants[v].map { ($0.name, $0) })
            // Quantized attention products: (q | k) for QKᵀ, (softmax | v) for PV.
            var attentionOperands: [String: [ActivationQuantization]] = [:]
            for a in q.attentionVariants[v] {
                attentionOperands["\(a.name).attn_qk"] = [a.quantization.query, a.quantization.key]
                attentionOperands["\(a.name).attn_pv"] = [a.quantization.probabilities, a.quantization.value]
            }
            let costs = ModelCosts(try LayerCosts.measure(unet), precisions: q.costPrecisions(variant: v))
            print("")
            print("variant \(v): \(variant.name), weights \(variant.recipe.weightMethod.rawValue), activation range \(variant.recipe.rangeMethod), keep-8bit \(variant.recipe.policy.keepEightBit.map(\.rawValue).joined(separator: ",")), rules \(variant.recipe.policy.rules.map(\.description))")
            let width = max(44, costs.rows.map(\.name.count).max() ?? 0)
            let header = "layer".padding(toLength: width, withPad: " ", startingAt: 0)
            print("\(header)     MACs/img  W  A   weight scales (min…max)   activation scale/zero-point        BOPs (G)   bytes")
            for row in costs.rows {
                let r = records[row.name]
                let ws = r.map { String(format: "%.2e…%.2e", $0.scales.min()!, $0.scales.max()!) } ?? (row.kind == .conv || row.kind == .linear ? "fp32" : "-")
                let acts = r.map { $0.inputs.map { String(format: "%.3g/%d", $0.scale, $0.zeroPoint) }.joined(separator: " | ") }
                    ?? attentionOperands[row.name].map { $0.map { String(format: "%.3g/%d", $0.scale, $0.zeroPoint) }.joined(separator: " | ") } ?? ""
                print(String(format: "%@ %12d %2d %2d   %-24@  %-34@ %9.4f %8.0f",
                             row.name.padding(toLength: width, withPad: " ", startingAt: 0), row.macs, row.weightBits, row.activationBits,
                             ws, acts.isEmpty ? "fp32" : acts, row.bops / 1e9, row.weightBytes))
            }
            print(String(format: "total: %.3f GMAC, %.3f GBOPs per UNet forward per image (fp32 %.3f GBOPs: %.1f× fewer); weights+params %.2f MB (fp32 %.2f MB: %.1f× smaller); guidance doubles the UNet rows per step",
                         Double(costs.totalMACs) / 1e9, costs.totalBOPs / 1e9, costs.fp32BOPs / 1e9, costs.fp32BOPs / costs.totalBOPs,
                         costs.bytes / 1e6, costs.fp32Bytes / 1e6, costs.fp32Bytes / costs.bytes))
        }
        if let d = info.decoder {
            print("")
            print("decoder: quantized \(d.recipe.policy.scheme) (\(d.recipe.weightMethod.rawValue), activation range \(d.recipe.rangeMethod)), \(d.layers.count) layers\(d.attentions.map { ", \($0.count) attentions" } ?? ""); made from decoder weights \(d.sourceWeightsDigest) (its fp32 parameters come from the source pipeline folder)")
            let width = max(44, d.layers.map(\.name.count).max() ?? 0)
            for l in d.layers {
                print("  \(l.name.padding(toLength: width, withPad: " ", startingAt: 0)) \(l.precision)  activation \(l.inputs.map { String(format: "%.3g/%d", $0.scale, $0.zeroPoint) }.joined(separator: " | "))")
            }
        }
        print(String(format: "file size: %.2f MB", Double(fileBytes) / 1e6))
        if let json = info.attachments[CorrectionDocument.attachmentName] {
            let doc = try CorrectionDocument(json: json)
            print("")
            print("PTQD correction: measured for \(doc.settings.kind.rawValue) \(doc.settings.steps) steps eta \(doc.settings.eta) guidance \(doc.settings.guidance) on \(doc.statistics.trajectories) trajectories; bias \(doc.biasMode.rawValue), k clamped \(doc.clampK); default \(doc.defaultCorrection.method.rawValue) components \(doc.defaultCorrection.components.rawValue) vsc \(doc.defaultCorrection.vscMode.rawValue)")
            if let p = doc.plan {
                print("mixed plan: \(p.schemes.map(String.init).joined()) (0 = \(info.variants[0].name), 1 = \(info.variants.count > 1 ? info.variants[1].name : "?")), switch at step \(p.switchIndex), ρ = \(p.rho)\(p.generalized ? " (generalized)" : "")")
            }
            let t = doc.activeTable
            print("step  t     k_t      σ_q     SNR^Q      SNR^F")
            for i in 0..<t.steps {
                print(String(format: "%4d %4d  %7.4f  %7.4f  %9.3g  %9.3g", i, t.timesteps[i], t.k[i], t.sigmaQ[i], t.snrQ[i], t.snrF?[i] ?? .nan))
            }
        }
    }

    func printTensors(_ f: SafeTensorsFile) {
        print("file: \(f.path) (\(f.fileSize) bytes, \(f.names.count) tensors)")
        if !f.metadata.isEmpty {
            print("metadata:")
            for k in f.metadata.keys.sorted() {
                let v = f.metadata[k]!
                print("  \(k): \(v.count > 400 ? String(v.prefix(400)) + "… (\(v.count) chars)" : v)")
            }
        }
        let width = min(max(f.names.map(\.count).max() ?? 4, 4), 60)
        print("\("name".padding(toLength: width, withPad: " ", startingAt: 0))  dtype  shape")
        for name in f.names {
            let i = f.tensors[name]!
            print("\(name.padding(toLength: max(width, name.count), withPad: " ", startingAt: 0))  \(i.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0))  \(i.shape)")
        }
    }

    func printConfig(_ c: UNet2DConfig) {
        print("UNet2DModel: \(c.inChannels)×\(c.sampleHeight)×\(c.sampleWidth) → \(c.outChannels) channels")
        print("  block_out_channels \(c.blockOutChannels), layers_per_block \(c.layersPerBlock)")
        print("  down \(c.downBlocks.map(\.rawValue)), up \(c.upBlocks.map(\.rawValue))")
        print("  norm_num_groups \(c.normNumGroups), norm_eps \(c.normEps), attention_head_dim \(c.attentionHeadDim.map(String.init) ?? "null (one head)"), mid attention \(c.addAttention)")
        print("  time embedding: positional, flip_sin_to_cos \(c.flipSinToCos), freq_shift \(c.freqShift), dim \(c.timeEmbedDim), resnet_time_scale_shift \(c.timeScaleShift.rawValue)")
        print("  class embedding: \(c.classEmbedding)")
        print("  resampling: down \(c.downsampleType.rawValue) (padding \(c.downsamplePadding)), up \(c.upsampleType.rawValue); mid_block_scale_factor \(c.midBlockScaleFactor); center_input_sample \(c.centerInputSample)")
    }

    func printScheduler(_ s: SchedulerConfig) {
        print("  \(s.className): T=\(s.numTrainTimesteps), betas \(s.betaSchedule.rawValue) \(s.betaStart)…\(s.betaEnd), spacing \(s.timestepSpacing.rawValue), steps_offset \(s.stepsOffset), set_alpha_to_one \(s.setAlphaToOne), clip_sample \(s.clipSample), prediction \(s.predictionType.rawValue), DDPM variance \(s.varianceType.rawValue)")
    }
}
