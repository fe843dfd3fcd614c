//===--- Inspect.swift - `ptqd inspect` ---------------------------------------===//

import ArgumentParser
import Diffusion
import Foundation
import SafeTensors

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
            print("unet config: \(m.unetConfigPath)")
            printConfig(m.unet.config)
            print("scheduler config: \(m.schedulerConfigPath ?? "(none: diffusers DDIM defaults)")")
            printScheduler(m.scheduler)
            let costs = try LayerCosts.measure(m.unet)
            print(String(format: "parameters: %d (%.2f M), fp32 size %.2f MB; UNet forward %.3f GMAC per image (attention matmuls included)",
                         costs.parameters, Double(costs.parameters) / 1e6, Double(costs.parameters * 4) / 1e6, Double(costs.totalMACs) / 1e9))
            print("weights: \(m.weightsPath)")
            try printTensors(SafeTensorsFile(path: m.weightsPath))
        } else if path.hasSuffix(".json") {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            if let c = try? UNet2DConfig(json: data, file: path) { printConfig(c) }
            else { printScheduler(try SchedulerConfig(json: data, file: path)) }
        } else {
            try printTensors(SafeTensorsFile(path: path))
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
