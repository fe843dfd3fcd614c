//===--- Quantize.swift - `ptqd quantize` --------------------------------------===//

import ArgumentParser
import Correction
import Diffusion
import Foundation
import Quantization
import SafeTensors
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
    @Option(help: "noise correction measured and stored: none, ptqd or d2 (sample/evaluate apply it)") var correct: CorrectionChoice = .none
    @Option(name: .customLong("stats-trajectories"), help: "FP trajectories for the correction statistics") var statsTrajectories: Int = 256
    @Option(name: .customLong("bias-mode"), help: "PTQD bias: total (mean of Δ, as the released code) or residual (mean of Δ − k·ε)")
    var biasMode: BiasMode = .total
    @Flag(name: .customLong("keep-negative-k"), help: "keep negative correlation coefficients (default: clamp k < 0 to 0)") var keepNegativeK = false
    @Option(help: "step-aware mixed precision: CHEAP:STRONG (e.g. w4a4:w4a8) or 'auto' over --candidates") var mixed: String?
    @Option(help: "schemes 'auto' chooses from (comma list)") var candidates: String = "w4a4,w4a8,w8a8"
    @Option(name: .customLong("cheap-fraction"), help: "when SNR^Q ≥ SNR^F switches at the first step or never: fraction of steps kept cheap")
    var cheapFraction: Double = 0.5
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
        guard statsTrajectories >= 1 else { throw ValidationError("--stats-trajectories must be >= 1") }
        guard cheapFraction >= 0 && cheapFraction <= 1 else { throw ValidationError("--cheap-fraction must be in [0, 1]") }
        _ = try recipe()
        _ = try mixedSchemes()
    }

    var samplerSettings: SamplerSettings { setting.settings(steps: steps, eta: eta, guidance: guidance, nullClass: nullClass) }

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

    /// The schemes to quantize: [scheme], or the mixed pair / candidate list.
    func mixedSchemes() throws -> [String]? {
        guard let m = mixed else { return nil }
        if m.lowercased() == "auto" {
            let list = candidates.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
            guard list.count >= 2 else { throw ValidationError("--mixed auto needs at least two --candidates, e.g. w4a4,w4a8,w8a8") }
            for c in list { _ = try LayerPrecision(parsing: c) }
            return list
        }
        let pair = m.split(separator: ":").map(String.init)
        guard pair.count == 2 else { throw ValidationError("--mixed must be CHEAP:STRONG (e.g. w4a4:w4a8) or auto, got '\(m)'") }
        for c in pair { _ = try LayerPrecision(parsing: c) }
        return pair
    }

    func run() throws {
        runtime.apply()
        let source = try model.load()
        let options = calibrationOptions
        let started = Date()
        let schemes = try mixedSchemes() ?? [scheme]
        let recipes = try schemes.map { try recipe(scheme: $0) }
        // Stage 1: FP trajectories.
        let calibSet = try collectCalibration(source, options)
        let trajectorySeconds = Date().timeIntervalSince(started)
        // Stage 2: sequential layer quantization, per variant.
        var variants: [(QuantizationRecipe, [QuantizedLayer], Double, UNet2D)] = []
        for (i, r) in recipes.enumerated() {
            variants.append(try quantizeVariant(source, recipe: r, calib: calibSet, options: options, stage: "2/3 (\(i + 1)/\(recipes.count))"))
        }
        // Stage 3: correction statistics and the mixed-precision plan.
        var attachments: [String: String] = [:]
        if correct != .none || mixed != nil {
            let (doc, keep) = try correctionDocument(source, variants: variants.map { ($0.3, $0.1) }, options: options)
            variants = keep.map { variants[$0] }
            attachments[CorrectionDocument.attachmentName] = try doc.json()
            report(doc, names: variants.map { $0.0.policy.scheme.description })
        }
        var info = try makeInfo(source, variants: variants.map { ($0.0, $0.1, $0.2) }, options: options, trajectorySeconds: trajectorySeconds)
        info.attachments = attachments
        try QuantizedModel.write(to: out, info: info, source: source, variants: variants.map(\.1))
        try printSummary(source: source, info: info, records: variants.map(\.1), seconds: Date().timeIntervalSince(started))
    }

    /// Statistics pass over FP trajectories for every variant, fitted tables, and (mixed) the plan.
    /// Returns the document and the variant indices to keep (the chosen pair for `--mixed auto`).
    func correctionDocument(_ source: DiffusionModel, variants: [(UNet2D, [QuantizedLayer])], options: CalibrationOptions) throws -> (CorrectionDocument, [Int]) {
        let unets = variants.map(\.0)
        let settings = options.settings
        let scheduler = try Sampler.makeScheduler(settings, config: source.scheduler)
        let guidance = source.unet.isClassConditional ? settings.guidance : 1
        let fp = try GuidedUNet(unet: source.unet, guidance: guidance, nullClass: settings.nullClass)
        let qs = try unets.map { try GuidedUNet(unet: $0, guidance: guidance, nullClass: settings.nullClass) }
        var so = StatisticsOptions()
        so.trajectories = statsTrajectories; so.batch = min(batch, 64); so.seed = seed
        let cfg = source.unet.config
        let classes = source.unet.isClassConditional ? max(source.unet.realClassCount(nullClass: fp.nullClass), 1) : 0
        let steps = scheduler.timesteps.count
        let progress = ProgressReporter(label: "quantize 3/3: noise statistics (\(unets.count) variant\(unets.count > 1 ? "s" : ""))",
                                        total: statsTrajectories * steps, unit: "img·steps", enabled: !quiet)
        let t0 = Date()
        var last = 0
        let stats = try StatisticsPass.collect(scheduler: scheduler, fp: fp, quantized: qs,
                                               labels: classes > 0 ? { $0 % classes } : nil,
                                               shape: [cfg.sampleHeight, cfg.sampleWidth, cfg.inChannels], options: so) { done, _ in
            progress.advance(done - last); last = done
        }
        let fit = FitOptions(biasMode: biasMode, clampK: !keepNegativeK, alphasCumprod: source.scheduler.alphasCumprod())
        var tables = stats.map { $0.fit(fit) }
        let method: CorrectionMethod = correct == .d2 ? .d2 : .ptqd
        var components: CorrectionComponents = correct == .none ? .none : .all
        if mixed != nil && correct == .none { components = .none }
        var keep = Array(unets.indices)
        var plan: MixedPrecisionPlan? = nil
        var mixedTable: CorrectionTable? = nil
        if mixed != nil {
            let snrF = StepSNR.snrF(scheduler: scheduler)
            var pair = [0, 1]
            if mixed!.lowercased() == "auto" {
                // cheap = fewest BOPs; strong = the cheapest other candidate whose SNR^Q ≥ SNR^F at the last step
                // (the most demanding one), or the most accurate candidate if none qualifies.
                let costs = try LayerCosts.measure(source.unet)
                let bops = variants.map { _, records -> Double in
                    ModelCosts(costs, precisions: Dictionary(uniqueKeysWithValues: records.map { ($0.name, $0.precision) })).totalBOPs
                }
                let order = bops.indices.sorted { bops[$0] < bops[$1] }
                let cheap = order[0]
                let lastStep = steps - 1
                let strong = order.dropFirst().first { Double(tables[$0].snrQ[lastStep]) >= snrF[lastStep] }
                    ?? order.dropFirst().max { tables[$0].snrQ[lastStep] < tables[$1].snrQ[lastStep] }!
                pair = [cheap, strong]
            }
            let p = StepSNR.plan(cheapSNRQ: tables[pair[0]].snrQ.map(Double.init), snrF: snrF,
                                 strongSNRQ: tables[pair[1]].snrQ.map(Double.init), targetCheapFraction: cheapFraction)
            tables = pair.map { tables[$0] }
            keep = pair
            plan = p
            mixedTable = CorrectionDocument.assemble(tables, plan: p.schemes)
        }
        let doc = CorrectionDocument(settings: settings, statistics: so, biasMode: biasMode, clampK: !keepNegativeK,
                                     defaultCorrection: CorrectionSettings(method: method, components: components, vscMode: .code),
                                     tables: tables, plan: plan, mixedTable: mixedTable, seconds: Date().timeIntervalSince(t0))
        return (doc, keep)
    }

    /// Prints k, σ_q and SNR per step (stderr) and the plan.
    func report(_ doc: CorrectionDocument, names: [String]) {
        guard !quiet else { return }
        for (v, t) in doc.tables.enumerated() {
            let ks = t.k.map { String(format: "%.3f", $0) }.joined(separator: " ")
            note("statistics \(names[v]): k_t [\(ks)]")
            note("statistics \(names[v]): σ_q [\(t.sigmaQ.map { String(format: "%.3f", $0) }.joined(separator: " "))]")
            note("statistics \(names[v]): SNR^Q/SNR^F [\(zip(t.snrQ, t.snrF ?? t.snrQ).map { String(format: "%.2g", Double($0) / Double($1)) }.joined(separator: " "))]")
        }
        if let p = doc.plan {
            note("mixed precision: \(names[0]) for steps 0..<\(p.switchIndex), \(names[1]) after (ρ = \(String(format: "%.3g", p.rho))\(p.generalized ? ", generalized threshold" : ""))")
        }
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
                         stage: String) throws -> (QuantizationRecipe, [QuantizedLayer], Double, UNet2D) {
        // A fresh fp32 network per variant: the quantizer installs kernels into it as it goes.
        let unet = try DiffusionModel.load(source.directory).unet
        let quantizer = LayerQuantizer(unet: unet, recipe: recipe, options: options)
        let candidates = unet.layers.filter { recipe.policy.precision(name: $0.name, role: $0.role) != nil }.count
        let groups = (candidates + options.groupSize - 1) / options.groupSize
        let progress = ProgressReporter(label: "quantize \(stage): \(recipe.policy.scheme) \(recipe.weightMethod.rawValue) layers",
                                        total: max(groups, 1), unit: "groups", enabled: !quiet)
        let t0 = Date()
        let records = try quantizer.run(calib) { _, _, _ in progress.advance(1) }
        return (recipe, records, Date().timeIntervalSince(t0), unet)
    }

    func makeInfo(_ source: DiffusionModel, variants: [(QuantizationRecipe, [QuantizedLayer], Double)], options: CalibrationOptions,
                  trajectorySeconds: Double) throws -> QuantizedModelInfo {
        let unetText = try String(contentsOfFile: source.unetConfigPath, encoding: .utf8)
        let schedText = try source.schedulerConfigPath.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let infos = variants.map { recipe, records, secs in
            QuantizedVariantInfo(name: recipe.policy.scheme.description, recipe: recipe, layers: records.map(QuantizedLayerInfo.init),
                                 seconds: secs)
        }
        var info = QuantizedModelInfo(unetConfig: unetText, schedulerConfig: schedText, sourceModel: URL(fileURLWithPath: source.directory).standardized.lastPathComponent, variants: infos,
                                      calibration: CalibrationInfo(options: options, trajectorySeconds: trajectorySeconds))
        info.sourceWeightsDigest = try SafeTensorsFile(path: source.weightsPath).contentDigest()
        return info
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
extension BiasMode: ExpressibleByArgument {}

/// `--correct`.
enum CorrectionChoice: String, ExpressibleByArgument, CaseIterable { case none, ptqd, d2 }
