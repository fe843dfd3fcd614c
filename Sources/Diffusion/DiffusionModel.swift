//===--- DiffusionModel.swift - a diffusers model folder ---------------------===//

import Foundation
import SafeTensors

/// A denoising network plus its scheduler config, loaded from a diffusers folder:
/// `DIR/unet/{config.json, diffusion_pytorch_model.safetensors}` + `DIR/scheduler/scheduler_config.json`,
/// or a bare `DIR/{config.json, *.safetensors}` (scheduler config beside it, one level up, or defaults).
public struct DiffusionModel {
    public let directory: String
    /// The network (any `DenoiserArchitectures` family, chosen by the config's `_class_name`).
    public let network: Denoiser
    public let scheduler: SchedulerConfig
    /// The network's `config.json`.
    public let networkConfigPath: String
    public let weightsPath: String
    /// Where the scheduler config came from (nil = diffusers DDIM defaults).
    public let schedulerConfigPath: String?
    /// The first-stage decoder of a latent pipeline (`vae/` or `vqvae/`); nil for pixel-space models.
    public var decoder: LatentDecoder? = nil
    /// Its folder.
    public var decoderPath: String? = nil

    /// `[H, W, C]` of the images the pipeline produces (decoded for latent pipelines).
    public var imageShape: [Int] {
        guard let d = decoder else { return network.sampleShape }
        let s = network.sampleShape
        return [s[0] * d.factor, s[1] * d.factor, d.outChannels]
    }

    public static func load(_ path: String) throws -> DiffusionModel {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ModelError.missingFile(path: path, hint: "pass a diffusers model folder (with unet/config.json or config.json)")
        }
        guard isDir.boolValue else {
            throw ModelError.invalidValue(file: path, field: "--model", reason: "expected a folder in the diffusers layout, not a file")
        }
        let base = URL(fileURLWithPath: path)
        let unetDir: URL
        if fm.fileExists(atPath: base.appendingPathComponent("unet/config.json").path) { unetDir = base.appendingPathComponent("unet") }
        else if fm.fileExists(atPath: base.appendingPathComponent("config.json").path) { unetDir = base }
        else { throw ModelError.missingFile(path: base.appendingPathComponent("unet/config.json").path,
                                            hint: "expected the diffusers layout (unet/config.json or config.json)") }
        let configPath = unetDir.appendingPathComponent("config.json").path
        guard let configData = fm.contents(atPath: configPath) else {
            throw ModelError.missingFile(path: configPath, hint: "expected a diffusers config JSON file")
        }
        let weights = try findWeights(in: unetDir)
        let file = try SafeTensorsFile(path: weights)
        var network = try DenoiserArchitectures.load(configJSON: configData, configFile: configPath, weights: file)
        // A pipeline folder (model_index.json): the first-stage decoder and an optional class embedder.
        var decoder: LatentDecoder? = nil, decoderPath: String? = nil
        let index = base.appendingPathComponent("model_index.json")
        if unetDir != base, let data = fm.contents(atPath: index.path) {
            guard let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
                throw ModelError.invalidJSON(path: index.path, reason: "not a JSON object")
            }
            for component in obj.keys where !component.hasPrefix("_") {
                guard fm.fileExists(atPath: base.appendingPathComponent(component).path) else {
                    throw ModelError.missingFile(path: base.appendingPathComponent(component).path, hint: "model_index.json names component '\(component)'; restore the folder or remove the entry")
                }
            }
            let vae = ["vqvae", "vae"].first { obj[$0] != nil }
            if let name = vae {
                let d = try LatentDecoder.load(directory: base.appendingPathComponent(name).path)
                guard d.latentChannels == network.sampleShape[2] else {
                    throw ModelError.invalidInput("\(name)/ decodes \(d.latentChannels)-channel latents but the UNet denoises \(network.sampleShape[2]) channels; the components do not belong together")
                }
                decoder = d; decoderPath = base.appendingPathComponent(name).path
            }
            if obj["class_embedder"] != nil {
                guard let u = network as? UNet2DCondition else {
                    throw ModelError.invalidInput("\(index.path): a class_embedder needs a UNet2DConditionModel, not \(network.architecture)")
                }
                network = try ClassContextDenoiser(unet: u, embedder: try ClassEmbedder.load(directory: base.appendingPathComponent("class_embedder").path))
            }
        }
        let candidates = [base.appendingPathComponent("scheduler/scheduler_config.json"),
                          unetDir.appendingPathComponent("scheduler_config.json"),
                          unetDir.deletingLastPathComponent().appendingPathComponent("scheduler/scheduler_config.json")]
        let sched = candidates.first { fm.fileExists(atPath: $0.path) }
        let schedConfig = try sched.map { try SchedulerConfig(path: $0.path) } ?? .ddimDefault
        var model = DiffusionModel(directory: path, network: network, scheduler: schedConfig, networkConfigPath: configPath,
                                   weightsPath: weights, schedulerConfigPath: sched?.path)
        model.decoder = decoder; model.decoderPath = decoderPath
        return model
    }

    public static func findWeights(in dir: URL) throws -> String {
        let fm = FileManager.default
        for name in ["diffusion_pytorch_model.safetensors", "model.safetensors"] {
            let p = dir.appendingPathComponent(name).path
            if fm.fileExists(atPath: p) { return p }
        }
        let files = (try? fm.contentsOfDirectory(atPath: dir.path)) ?? []
        let st = files.filter { $0.hasSuffix(".safetensors") }
        if st.count == 1 { return dir.appendingPathComponent(st[0]).path }
        if files.contains(where: { $0.hasSuffix(".bin") || $0.hasSuffix(".ckpt") || $0.hasSuffix(".pt") }) {
            throw ModelError.missingFile(path: dir.appendingPathComponent("diffusion_pytorch_model.safetensors").path,
                hint: "only pickle weights found; convert with diffusers: UNet2DModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
        }
        throw ModelError.missingFile(path: dir.appendingPathComponent("diffusion_pytorch_model.safetensors").path,
                                     hint: st.count > 1 ? "several .safetensors files; keep one" : "no weights file")
    }
}
