//===--- Quantize.swift - `ptqd quantize` --------------------------------------===//

import ArgumentParser
import Diffusion
import Foundation
import Quantization
import TensorCore

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Calibrate on full-precision trajectories, quantize, and write one self-contained .safetensors file.",
        discussion: """
        Weights are quantized per output channel (symmetric), activations per tensor (asymmetric u8 with a zero \
        point). conv_in, conv_out and the time-embedding MLP stay 8-bit unless --keep-8bit says otherwise; \
        --rule 'PATTERN=w8a8' (or =fp32) overrides layers by diffusers name, '*' matching any text, last rule wins. \
        Calibration runs the FP sampler at --setting (or --steps/--eta/--guidance) for --calib trajectories and draws \
        --calib-samples (x_t, t, class) records across all steps (both guidance halves).
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "bits: w8a8, w4a8, w4a4, w8a32, w4a32 (wXaY, X in 2...8, Y in 2...8 or 32)") var scheme: String
    @Option(help: "weight rounding: rtn, adaround or gptq") var weights: WeightMethod = .rtn
    @Option(help: "FP trajectories for calibration") var calib: Int = 256
    @Option(name: .customLong("calib-samples"), help: "calibration records drawn from them (default: --calib)") var calibSamples: Int?
    @Option(help: "sampler setting calibrated for: A or B") var setting: EvaluationSetting = .A
    @Option(help: "override the setting's step count") var steps: Int?
    @Option(help: "override the setting's eta") var eta: Float?
    @Option(help: "override the setting's guidance scale") var guidance: Float?
    @Option(name: .customLong("null-class"), help: "unconditional label (default: last class embedding)") var nullClass: Int?
    @Option(name: .customLong("keep-8bit"), help: "layers kept at 8 bits: comma list of first, last, time, or none") var keep8bit = "first,last,time"
    @Option(name: .customLong("rule"), help: "per-layer override PATTERN=wXaY or PATTERN=fp32 (repeatable)") var rules: [String] = []
    @Option(name: .customLong("act-range"), help: "activation range: mse, minmax or percentile:P") var actRange = "mse"
    @Option(name: .customLong("adaround-iters"), help: "AdaRound iterations per layer (default: the library's)") var adaroundIters: Int?
    @Option(name: .customLong("group-size"), help: "layers quantized per sequential calibration pass") var groupSize: Int = 4
    @Option(help: "UNet rows per calibration forward") var batch: Int = 64
    @Option(help: "random seed (calibration noise, record draws)") var seed: UInt64 = 0
    @Option(help: "output .safetensors file") var out: String
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must name a .safetensors file, got '\(out)'") }
        guard calib >= 1 else { throw ValidationError("--calib must be >= 1, got \(calib)") }
        if let c = calibSamples, c < 1 { throw ValidationError("--calib-samples must be >= 1") }
        guard groupSize >= 1, batch >= 1 else { throw ValidationError("--group-size and --batch must be >= 1") }
        if let s = steps, s < 1 { throw ValidationError("--steps must be >= 1") }
        if let e = eta, !(e.isFinite && e >= 0) { throw ValidationError("--eta must be a finite number >= 0") }
        if let i = adaroundIters, i < 1 { throw ValidationError("--adaround-iters must be >= 1") }
        _ = try recipe()
    }

    var samplerSettings: SamplerSettings {
        var s = setting.settings
        if let v = steps { s.steps = v }
        if let v = eta { s.eta = v }
        if let v = guidance { s.guidance = v }
        s.nullClass = nullClass
        return s
    }

    func recipe(scheme text: String? = nil) throws -> QuantizationRecipe {
        let policy = PrecisionPolicy(scheme: try LayerPrecision(parsing: text ?? scheme), keepEightBit: try PrecisionPolicy.parseKeep(keep8bit),
                                     rules: try rules.map(PrecisionRule.init(parsing:)))
        return QuantizationRecipe(policy: policy, weightMethod: weights, rangeMethod: try RangeMethod(parsing: actRange),
                                  adaRoundIterations: adaroundIters)
    }

    var calibrationOptions: CalibrationOptions {
        var o = CalibrationOptions()
        o.trajectories = calib; o.samples = calibSamples ?? calib; o.settings = samplerSettings
        o.seed = seed; o.batch = batch; o.groupSize = groupSize
        return o
    }

    func run() throws {
        runtime.apply()
        let source = try model.load()
        let recipe = try recipe()
        let options = calibrationOptions
        let started = Date()
        // Stage 1: FP trajectories.
        let calibSet = try collectCalibration(source, options)
        let trajectorySeconds = Date().timeIntervalSince(started)
        // Stage 2: sequential layer quantization.
        let (records, seconds) = try quantizeVariant(source, recipe: recipe, calib: calibSet, options: options, stage: "2/3")
        // Stage 3: write.
        let info = try makeInfo(source, variants: [(recipe, records, seconds)], options: options, trajectorySeconds: trajectorySeconds)
        try QuantizedModel.write(to: out, info: info, source: source, variants: [records])
        try printSummary(source: source, info: info, records: [records], seconds: Date().timeIntervalSince(started))
    }

    func collectCalibration(_ source: DiffusionModel, _ options: CalibrationOptions) throws -> CalibrationSet {
        let steps = try Sampler.makeScheduler(options.settings, config: source.scheduler).timesteps.count
        let progress = ProgressReporter(label: "quantize 1/3: FP trajectories", total: options.trajectories * steps, unit: "img·steps", enabled: !quiet)
        var last = 0
        return try CalibrationSet.collect(model: source, options: options) { done, _ in
            progress.advance(done - last); last = done
        }
    }

    func quantizeVariant(_ source: DiffusionModel, recipe: QuantizationRecipe, calib: CalibrationSet, options: CalibrationOptions,
                         stage: String) throws -> ([QuantizedLayer], Double) {
        // A fresh fp32 network per variant: the quantizer installs kernels into it as it goes.
        let unet = try DiffusionModel.load(source.directory).unet
        let quantizer = LayerQuantizer(unet: unet, recipe: recipe, options: options)
        let candidates = unet.layers.filter { recipe.policy.precision(name: $0.name, role: $0.role) != nil }.count
        let groups = (candidates + options.groupSize - 1) / options.groupSize
        let progress = ProgressReporter(label: "quantize \(stage): \(recipe.policy.scheme) \(recipe.weightMethod.rawValue) layers",
                                        total: max(groups, 1), unit: "groups", enabled: !quiet)
        let t0 = Date()
        let records = try quantizer.run(calib) { _, _, _ in progress.advance(1) }
        return (records, Date().timeIntervalSince(t0))
    }

    func makeInfo(_ source: DiffusionModel, variants: [(QuantizationRecipe, [QuantizedLayer], Double)], options: CalibrationOptions,
                  trajectorySeconds: Double) throws -> QuantizedModelInfo {
        let unetText = try String(contentsOfFile: source.unetConfigPath, encoding: .utf8)
        let schedText = try source.schedulerConfigPath.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let infos = variants.map { recipe, records, secs in
            QuantizedVariantInfo(name: recipe.policy.scheme.description, recipe: recipe, layers: records.map(QuantizedLayerInfo.init),
                                 seconds: secs)
        }
        return QuantizedModelInfo(unetConfig: unetText, schedulerConfig: schedText, sourceModel: source.directory, variants: infos,
                                  calibration: CalibrationInfo(options: options, trajectorySeconds: trajectorySeconds))
    }

    func printSummary(source: DiffusionModel, info: QuantizedModelInfo, records: [[QuantizedLayer]], seconds: Double) throws {
        let costs = try LayerCosts.measure(source.unet)
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        for (v, variant) in info.variants.enumerated() {
            let precisions = Dictionary(uniqueKeysWithValues: records[v].map { ($0.name, $0.precision) })
            let c = ModelCosts(costs, precisions: precisions)
            print(String(format: "%@ (%@, %@ activations): %d layers quantized, %.3f GBOPs per forward (%.1f× fewer than fp32), weights %.2f MB (fp32 %.2f MB)",
                         variant.name, variant.recipe.weightMethod.rawValue, variant.recipe.rangeMethod.description, records[v].count,
                         c.totalBOPs / 1e9, c.fp32BOPs / c.totalBOPs, c.bytes / 1e6, c.fp32Bytes / 1e6))
        }
        print(String(format: "wrote %@ (%.2f MB) in %.1f s", out, Double(size) / 1e6, seconds))
    }
}

extension WeightMethod: ExpressibleByArgument {}
