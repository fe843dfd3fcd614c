//===--- Runner.swift - the model a command samples from (fp32 or quantized) ---===//

import ArgumentParser
import Diffusion
import Foundation
import Quantization
import TensorCore

/// `--quantized FILE [--simulate]`.
struct QuantizedOptions: ParsableArguments {
    @Option(help: ArgumentHelp("quantized model file written by `ptqd quantize`", valueName: "file"))
    var quantized: String?
    @Flag(help: "run the quantized model with fake quantization in fp32 (the reference) instead of integer kernels")
    var simulate = false

    func validate() throws {
        if simulate && quantized == nil { throw ValidationError("--simulate needs --quantized FILE") }
    }
}

/// A runnable model: its network(s), scheduler config and what it costs.
final class Runner {
    /// "fp32" or e.g. "w4a8".
    let label: String
    let unet: UNet2D
    let scheduler: SchedulerConfig
    let quantized: QuantizedModel?
    /// Per-layer precisions (empty = fp32).
    let precisions: [String: LayerPrecision]
    let fileBytes: Int?
    let path: String
    /// The file holding the weights.
    let weightsFile: String

    init(fp32 model: DiffusionModel) {
        label = "fp32"; unet = model.unet; scheduler = model.scheduler; quantized = nil; precisions = [:]
        path = model.directory
        weightsFile = model.weightsPath
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: model.weightsPath)[.size] as? Int) ?? nil
    }

    init(quantizedFile file: String, mode: ExecutionMode) throws {
        let q = try QuantizedModel(path: file)
        quantized = q
        unet = try q.makeUNet(variant: 0, mode: mode)
        scheduler = q.scheduler
        label = q.info.variants[0].name + (mode == .simulate ? " (simulated)" : "")
        precisions = Dictionary(uniqueKeysWithValues: q.variants[0].map { ($0.name, $0.precision) })
        path = file
        weightsFile = file
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
    }

    /// The fp32 model, or the quantized file when `--quantized` is given.
    static func make(model: ModelOptions, quantized: QuantizedOptions) throws -> Runner {
        if let f = quantized.quantized { return try Runner(quantizedFile: f, mode: quantized.simulate ? .simulate : .integer) }
        return Runner(fp32: try model.load())
    }

    /// Guided noise predictor for `settings` (guidance only for class-conditional models).
    func predictor(_ settings: SamplerSettings) throws -> GuidedUNet {
        try GuidedUNet(unet: unet, guidance: unet.isClassConditional ? settings.guidance : 1, nullClass: settings.nullClass)
    }

    /// A sampler for `settings`.
    func sampler(_ settings: SamplerSettings) throws -> Sampler {
        Sampler(scheduler: try Sampler.makeScheduler(settings, config: scheduler), predictor: try predictor(settings))
    }

    /// BOPs per UNet forward (one image) and the cost table.
    func costs() throws -> ModelCosts { ModelCosts(try LayerCosts.measure(unet), precisions: precisions) }
}
