//===--- Quantize.swift - `ptqd quantize` --------------------------------------===//

import ArgumentParser
import Correction
import Diffusion
import Foundation
import Pipeline
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

        With --quantized FILE, calibration and quantization are skipped: the --correct / --mixed statistics are measured \
        on FILE's variants and FILE is written to --out with the tables. --stats-shard I/N (with --quantized) runs only \
        a contiguous 1/N of the --stats-trajectories (same noise and labels as one pass) and writes a resumable partial \
        to the folder --out; `ptqd merge-stats` turns the N folders into the file one pass writes, with tables equal \
        bit for bit (docs/scale-out.md).
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "bits: w8a8, w4a8, w4a4, w8a32, w4a32 (wXaY, X in 2...8, Y in 2...8 or 32); required unless --quantized") var scheme: LayerPrecision?
    @Option(help: "weight rounding: rtn, adaround or gptq") var weights: WeightMethod = .rtn
    @Option(help: "FP trajectories for calibration") var calib: Int = 256
    @Option(name: .customLong("calib-context"), help: ArgumentHelp("contexts for calibrating a cross-attention model: safetensors with 'context' [K, L, D] (trajectory i uses row i mod K) and 'null_context' [1, L, D] for guidance", valueName: "file"))
    var calibContext: String?
    @Option(name: .customLong("calib-samples"), help: "calibration records drawn from them (default: --calib)") var calibSamples: Int?
    @OptionGroup(title: "Sampler calibrated for") var sampler: SamplerOptions
    @Option(name: .customLong("keep-8bit"), help: "layers kept at 8 bits: comma list of first, last, time, or none") var keep8bit: KeepEightBitList = KeepEightBitList(KeepEightBit.allCases)
    @Option(name: .customLong("rule"), help: "per-layer override PATTERN=wXaY or PATTERN=fp32 (repeatable)") var rules: [PrecisionRule] = []
    @Option(name: .customLong("act-range"), help: "activation range: mse, minmax or percentile:P") var actRange: RangeMethod = .mse
    @Flag(name: .customLong("quantize-decoder"), help: "also quantize the first-stage decoder of a latent pipeline (calibrated on the final latents of the FP calibration trajectories)")
    var quantizeDecoder = false
    @Option(name: .customLong("decoder-scheme"), help: "bits of the decoder with --quantize-decoder") var decoderScheme: LayerPrecision = try! LayerPrecision(parsing: "w8a8")
    @Flag(name: .customLong("quantize-attention"), help: "also quantize attention: q, k, v at the activation bits and the softmax output at 8 bits unsigned (Q-Diffusion's scheme; BOPs count the two products at those bits)")
    var quantizeAttention = false
    @Option(name: .customLong("adaround-iters"), help: "AdaRound iterations per layer (default: the library's)") var adaroundIters: Int?
    @Option(name: .customLong("group-size"), help: "layers quantized per sequential calibration pass") var groupSize: Int = 4
    @Option(help: "UNet rows per calibration forward") var batch: Int = 64
    @Option(help: "random seed (calibration noise, record draws)") var seed: UInt64 = 0
    @Option(help: "noise correction measured and stored: none, ptqd or d2 (sample/evaluate apply it)") var correct: CorrectionChoice = .none
    @Option(name: .customLong("stats-trajectories"), help: "FP trajectories for the correction statistics") var statsTrajectories: Int = 256
    @Option(name: .customLong("bias-mode"), help: "PTQD bias: total (mean of Δ, as the released code) or residual (mean of Δ − k·ε)")
    var biasMode: BiasMode = .total
    @Flag(name: .customLong("keep-negative-k"), help: "keep negative correlation coefficients (default: clamp k < 0 to 0)") var keepNegativeK = false
    @Option(help: "step-aware mixed precision: CHEAP:STRONG (e.g. w4a4:w4a8) or 'auto' over --candidates") var mixed: MixedChoice?
    @Option(help: "schemes 'auto' chooses from (comma list)") var candidates: SchemeList = SchemeList(parsing: "w4a4,w4a8,w8a8")
    @Option(name: .customLong("cheap-fraction"), help: "when SNR^Q ≥ SNR^F switches at the first step or never: fraction of steps kept cheap")
    var cheapFraction: Double = 0.5
    @Option(help: ArgumentHelp("measure the statistics on the variants of this quantized file instead of quantizing (the quantization options are then unused); with --correct or --mixed", valueName: "file"))
    var quantized: String?
    @Option(name: .customLong("stats-shard"), help: ArgumentHelp("with --quantized: run only statistics trajectories ⌊I·T/N⌋..<⌊(I+1)·T/N⌋ of T = --stats-trajectories (0-based I) and write the resumable partial statistics-partial.safetensors to the folder --out, for `ptqd merge-stats`", valueName: "I/N"))
    var statsShard: String?
    @Option(name: .customLong("time-budget"), help: ArgumentHelp("with --stats-shard: measure for at most this long, then save the trajectories so far in --out and exit with code 75; the same command resumes", valueName: "minutes"))
    var timeBudget: Double?
    @Option(help: "output .safetensors file (a folder with --stats-shard)") var out: String
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        if statsShard != nil {
            guard quantized != nil else {
                throw ValidationError("--stats-shard runs against an existing quantized file: quantize once (without --correct), then pass it with --quantized FILE")
            }
            _ = try statsShardRange()
            guard !out.hasSuffix(".safetensors") else { throw ValidationError("with --stats-shard, --out is the shard's folder, got the file name '\(out)'") }
        } else {
            guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must name a .safetensors file, got '\(out)'") }
            if timeBudget != nil { throw ValidationError("--time-budget applies to --stats-shard runs") }
        }
        if let b = timeBudget, !(b.isFinite && b >= 0) { throw ValidationError("--time-budget must be a number of minutes >= 0") }
        if quantized != nil {
            if scheme != nil { throw ValidationError("--scheme does not apply with --quantized: the file's variants are measured") }
            guard correct != .none || mixed != nil else {
                throw ValidationError("--quantized measures statistics: pass --correct ptqd (or d2) and/or --mixed")
            }
            guard !quantizeDecoder else { throw ValidationError("--quantize-decoder does not apply with --quantized: the file's decoder is kept") }
        } else if scheme == nil {
            throw ValidationError("Missing expected argument '--scheme <scheme>'")
        }
        guard calib >= 1 else { throw ValidationError("--calib must be >= 1, got \(calib)") }
        if let c = calibSamples, c < 1 { throw ValidationError("--calib-samples must be >= 1") }
        guard groupSize >= 1, batch >= 1 else { throw ValidationError("--group-size and --batch must be >= 1") }
        if let i = adaroundIters, i < 1 { throw ValidationError("--adaround-iters must be >= 1") }
        guard statsTrajectories >= 1 else { throw ValidationError("--stats-trajectories must be >= 1") }
        guard cheapFraction >= 0 && cheapFraction <= 1 else { throw ValidationError("--cheap-fraction must be in [0, 1]") }
        if quantizeDecoder && quantizeAttention && decoderScheme.activationBits == nil {
            throw ValidationError("--quantize-attention needs quantized activations; --decoder-scheme \(decoderScheme) keeps them fp32")
        }
        if quantizeAttention, let fp = schemes.first(where: { $0.activationBits == nil }) {
            throw ValidationError("--quantize-attention needs quantized activations; \(fp) keeps them fp32")
        }
        if case .auto? = mixed, candidates.schemes.count < 2 {
            throw ValidationError("--mixed auto needs at least two --candidates, e.g. w4a4,w4a8,w8a8")
        }
    }

    func recipe(scheme: LayerPrecision) -> QuantizationRecipe {
        let policy = PrecisionPolicy(scheme: scheme, keepEightBit: keep8bit.items, rules: rules)
        return QuantizationRecipe(policy: policy, weightMethod: weights, rangeMethod: actRange, adaRoundIterations: adaroundIters,
                                  quantizeAttention: quantizeAttention)
    }

    func calibrationOptions(_ source: DiffusionModel) -> CalibrationOptions {
        var o = CalibrationOptions()
        o.trajectories = calib; o.samples = calibSamples ?? calib; o.settings = sampler.settings(for: source.scheduler)
        o.seed = seed; o.batch = batch; o.groupSize = groupSize
        return o
    }

    /// The schemes to quantize: [scheme], or the mixed pair / candidate list (empty with --quantized).
    var schemes: [LayerPrecision] {
        switch mixed {
        case nil: return scheme.map { [$0] } ?? []
        case let .pair(cheap, strong)?: return [cheap, strong]
        case .auto?: return candidates.schemes
        }
    }

    func run() throws {
        if let file = quantized { return try runStatistics(on: file) }
        runtime.apply()
        let source = try model.load()
        let options = calibrationOptions(source)
        let started = Date()
        let recipes = schemes.map { recipe(scheme: $0) }
        // Contexts of a cross-attention model: trajectory i gets row i mod K (calibration and statistics alike).
        let contexts = try calibContext.map { try CalibrationContexts(file: $0, network: source.network) }
        if case .context = source.network.conditioningKind, contexts == nil {
            throw ValidationError("\(source.directory) is conditioned on a cross-attention context: pass --calib-context FILE")
        }
        // Stage 1: FP trajectories.
        let calibSet = try collectCalibration(source, options, contexts: contexts)
        let trajectorySeconds = Date().timeIntervalSince(started)
        // Stage 2: sequential layer quantization, per variant.
        var variants: [QuantizedVariantResult] = []
        for (i, r) in recipes.enumerated() {
            variants.append(try quantizeVariant(source, recipe: r, calib: calibSet, options: options, stage: "2/3 (\(i + 1)/\(recipes.count))"))
        }
        // The first-stage decoder (optional), on the FP trajectories' final latents.
        let decoder = try quantizeDecoder ? quantizeFirstStage(source, calib: calibSet, options: options) : nil
        // Stage 3: correction statistics and the mixed-precision plan.
        var attachments: [String: String] = [:]
        if correct != .none || mixed != nil {
            let mo = measurementOptions
            let steps = try Sampler.makeScheduler(options.settings, config: source.scheduler).timesteps.count
            let progress = ProgressReporter(label: "quantize 3/3: noise statistics (\(variants.count) variant\(variants.count > 1 ? "s" : ""))",
                                            total: statsTrajectories * steps, unit: "img·steps", enabled: !quiet)
            var last = 0
            let (doc, keep) = try CorrectionMeasurement.measure(fp: source.network, scheduler: source.scheduler, settings: options.settings,
                                                                variants: variants.map { ($0.network, $0.costPrecisions) }, options: mo,
                                                                conditioning: contexts.map { c in { try c.rows($0) } }, nullContext: contexts?.null) { done, _ in
                progress.advance(done - last); last = done
            }
            variants = keep.map { variants[$0] }
            attachments[CorrectionDocument.attachmentName] = try doc.json()
            report(doc, names: variants.map { $0.recipe.policy.scheme.description })
        }
        var info = try makeInfo(source, variants: variants, options: options, trajectorySeconds: trajectorySeconds)
        info.attachments = attachments
        info.decoder = decoder?.info
        try QuantizedModel.write(to: out, info: info, source: source, variants: variants.map(\.records), decoder: decoder?.records ?? [])
        if let d = decoder {
            print(String(format: "decoder %@ (%@): %d layers%@ quantized, %.3f GBOPs per image (%.1f× fewer than fp32), weights %.2f MB (fp32 %.2f MB)",
                         decoderScheme.description, weights.rawValue, d.records.count,
                         d.info.attentions.map { String(format: ", %d attentions", $0.count) } ?? "",
                         d.costs.totalBOPs / 1e9, d.costs.fp32BOPs / d.costs.totalBOPs, d.costs.bytes / 1e6, d.costs.fp32Bytes / 1e6))
        }
        try printSummary(source: source, info: info, variants: variants, seconds: Date().timeIntervalSince(started))
    }

    /// Stage 3's settings from --stats-trajectories, --batch, --seed, --bias-mode, --keep-negative-k, --correct, --mixed
    /// and --cheap-fraction.
    var measurementOptions: CorrectionMeasurementOptions {
        var mo = CorrectionMeasurementOptions()
        mo.statistics.trajectories = statsTrajectories; mo.statistics.batch = min(batch, 64); mo.statistics.seed = seed
        mo.biasMode = biasMode; mo.clampK = !keepNegativeK
        mo.method = correct == .none ? nil : (correct == .d2 ? .d2 : .ptqd)
        switch mixed { case nil: mo.mixed = nil; case .pair?: mo.mixed = .pair; case .auto?: mo.mixed = .auto }
        mo.cheapFraction = cheapFraction
        return mo
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

    func collectCalibration(_ source: DiffusionModel, _ options: CalibrationOptions, contexts: CalibrationContexts?) throws -> CalibrationSet {
        let steps = try Sampler.makeScheduler(options.settings, config: source.scheduler).timesteps.count
        let progress = ProgressReporter(label: "quantize 1/3: FP trajectories", total: options.trajectories * steps, unit: "img·steps", enabled: !quiet)
        var last = 0
        return try CalibrationSet.collect(network: source.network, scheduler: source.scheduler, options: options,
                                          conditioning: contexts.map { c in { try c.rows($0) } }, nullContext: contexts?.null) { done, _ in
            progress.advance(done - last); last = done
        }
    }

    func quantizeVariant(_ source: DiffusionModel, recipe: QuantizationRecipe, calib: CalibrationSet, options: CalibrationOptions,
                         stage: String) throws -> QuantizedVariantResult {
        // A fresh fp32 network per variant: the quantizer installs kernels into it as it goes.
        let network = try DiffusionModel.load(source.directory).network
        let quantizer = LayerQuantizer(network: network, recipe: recipe, options: options)
        let candidates = network.layers.filter { recipe.policy.precision(name: $0.name, role: $0.role) != nil }.count
        let groups = (candidates + options.groupSize - 1) / options.groupSize
        let progress = ProgressReporter(label: "quantize \(stage): \(recipe.policy.scheme) \(recipe.weightMethod.rawValue) layers",
                                        total: max(groups, 1), unit: "groups", enabled: !quiet)
        let t0 = Date()
        let records = try quantizer.run(calib) { _, _, _ in progress.advance(1) }
        return QuantizedVariantResult(recipe: recipe, records: records, attentions: quantizer.attentionRecords,
                                      seconds: Date().timeIntervalSince(t0), network: network)
    }

    /// Quantizes a fresh copy of the pipeline's decoder, layer group by layer group, on the final latents of the
    /// calibration trajectories (divided by the scaling factor, as sampling decodes them).
    func quantizeFirstStage(_ source: DiffusionModel, calib: CalibrationSet, options: CalibrationOptions) throws -> (info: QuantizedDecoderInfo, records: [QuantizedLayer], costs: ModelCosts) {
        guard let dir = source.decoderPath, let finals = calib.finalSamples else {
            throw ValidationError("--quantize-decoder needs a latent pipeline folder (with vae/ or vqvae/); \(source.directory) has no decoder")
        }
        let decoder = try LatentDecoder.load(directory: dir)
        let policy = PrecisionPolicy(scheme: decoderScheme, keepEightBit: keep8bit.items, rules: rules)
        let recipe = QuantizationRecipe(policy: policy, weightMethod: weights, rangeMethod: actRange, adaRoundIterations: adaroundIters,
                                        quantizeAttention: quantizeAttention)
        var o = options
        o.batch = min(options.batch, 16)   // decoded images are f² times larger than latents
        let quantizer = LayerQuantizer(layers: decoder.layers, attentions: decoder.attentions, recipe: recipe, options: o)
        let candidates = decoder.layers.filter { policy.precision(name: $0.name, role: $0.role) != nil }.count
        let progress = ProgressReporter(label: "quantize decoder: \(decoderScheme) \(weights.rawValue) layers",
                                        total: max((candidates + o.groupSize - 1) / o.groupSize, 1), unit: "groups", enabled: !quiet)
        let t0 = Date()
        let records = try quantizer.run(rows: finals.shape[0], progress: { _, _, _ in progress.advance(1) }) { range in
            let z = finals.slice(batch: range).copy()
            for i in 0..<z.count { z.data[i] /= decoder.scalingFactor }
            _ = try decoder.decode(z)
        }
        let digest = try SafeTensorsFile(path: try DiffusionModel.findWeights(in: URL(fileURLWithPath: dir))).contentDigest()
        let info = QuantizedDecoderInfo(recipe: recipe, layers: records.map(QuantizedLayerInfo.init), attentions: quantizer.attentionRecords,
                                        sourceWeightsDigest: digest, seconds: Date().timeIntervalSince(t0))
        let costs = ModelCosts(try LayerCosts.measure(decoder, latentShape: source.network.sampleShape),
                               precisions: QuantizedModel.costPrecisions(layers: records, attentions: quantizer.attentionRecords))
        return (info, records, costs)
    }

    func makeInfo(_ source: DiffusionModel, variants: [QuantizedVariantResult], options: CalibrationOptions,
                  trajectorySeconds: Double) throws -> QuantizedModelInfo {
        let networkText = try String(contentsOfFile: source.networkConfigPath, encoding: .utf8)
        let schedText = try source.schedulerConfigPath.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let infos = variants.map { v in
            QuantizedVariantInfo(name: v.recipe.policy.scheme.description, recipe: v.recipe, layers: v.records.map(QuantizedLayerInfo.init),
                                 seconds: v.seconds, attentions: v.attentions)
        }
        var info = QuantizedModelInfo(networkConfig: networkText, schedulerConfig: schedText, sourceModel: URL(fileURLWithPath: source.directory).standardized.lastPathComponent, variants: infos,
                                      calibration: CalibrationInfo(options: options, trajectorySeconds: trajectorySeconds))
        info.sourceWeightsDigest = try SafeTensorsFile(path: source.weightsPath).contentDigest()
        return info
    }

    func printSummary(source: DiffusionModel, info: QuantizedModelInfo, variants: [QuantizedVariantResult], seconds: Double) throws {
        let costs = try LayerCosts.measure(source.network)
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        for (v, variant) in info.variants.enumerated() {
            let c = ModelCosts(costs, precisions: variants[v].costPrecisions)
            let attention = variants[v].attentions.isEmpty ? "" : String(format: ", %d attentions", variants[v].attentions.count)
            print(String(format: "%@ (%@, %@ activations): %d layers%@ quantized, %.3f GBOPs per forward (%.1f× fewer than fp32), weights %.2f MB (fp32 %.2f MB)",
                         variant.name, variant.recipe.weightMethod.rawValue, variant.recipe.rangeMethod.description, variants[v].records.count, attention,
                         c.totalBOPs / 1e9, c.fp32BOPs / c.totalBOPs, c.bytes / 1e6, c.fp32Bytes / 1e6))
        }
        print(String(format: "wrote %@ (%.2f MB) in %.1f s", out, Double(size) / 1e6, seconds))
    }
}

/// One quantized variant as `ptqd quantize` builds it.
struct QuantizedVariantResult {
    let recipe: QuantizationRecipe
    let records: [QuantizedLayer]
    let attentions: [QuantizedAttention]
    let seconds: Double
    /// The network with the variant's kernels installed.
    let network: Denoiser
    var costPrecisions: [String: LayerPrecision] { QuantizedModel.costPrecisions(layers: records, attentions: attentions) }
}

extension WeightMethod: ExpressibleByArgument {}
extension BiasMode: ExpressibleByArgument {}

/// `--correct`.
enum CorrectionChoice: String, ExpressibleByArgument, CaseIterable { case none, ptqd, d2 }

/// `--mixed CHEAP:STRONG` or `--mixed auto`.
enum MixedChoice: ExpressibleByArgument, Equatable {
    case pair(LayerPrecision, LayerPrecision)
    case auto
    init?(argument: String) {
        if argument.lowercased() == "auto" { self = .auto; return }
        let p = argument.split(separator: ":").map(String.init)
        guard p.count == 2, let a = try? LayerPrecision(parsing: p[0]), let b = try? LayerPrecision(parsing: p[1]) else { return nil }
        self = .pair(a, b)
    }
}

/// A comma list of schemes (`--candidates`).
struct SchemeList: ExpressibleByArgument {
    var schemes: [LayerPrecision]
    init(parsing text: String) { schemes = SchemeList(argument: text)!.schemes }
    init?(argument: String) {
        guard let l = try? argument.split(separator: ",").map({ try LayerPrecision(parsing: String($0).trimmingCharacters(in: .whitespaces)) }),
              !l.isEmpty else { return nil }
        schemes = l
    }
    var defaultValueDescription: String { schemes.map(\.description).joined(separator: ",") }
}

/// `--keep-8bit first,last,time | none`.
struct KeepEightBitList: ExpressibleByArgument {
    var items: [KeepEightBit]
    init(_ items: [KeepEightBit]) { self.items = items }
    init?(argument: String) {
        guard let r = try? PrecisionPolicy.parseKeep(argument) else { return nil }
        items = r
    }
    var defaultValueDescription: String { items.isEmpty ? "none" : items.map(\.rawValue).joined(separator: ",") }
}

extension LayerPrecision: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}
extension PrecisionRule: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}
extension RangeMethod: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}

/// `--calib-context FILE`: contexts `[K, L, D]` cycled over trajectories, and the null context.
struct CalibrationContexts {
    let context: Tensor
    let null: Tensor?

    init(file: String, network: Denoiser) throws {
        guard case let .context(width) = network.conditioningKind else {
            throw ValidationError("--calib-context applies to cross-attention models; this one is \(network.architecture)")
        }
        let f = try SafeTensorsFile(path: file)
        guard f.contains("context") else { throw ValidationError("\(file): no tensor 'context' [K, L, \(width)]") }
        let shape = try f.info("context").shape
        guard shape.count == 3, shape[0] >= 1, shape[1] >= 1, shape[2] == width else {
            throw ValidationError("\(file): 'context' must be [K, L, \(width)] for this model, got \(shape)")
        }
        let v = try f.floats("context", expectedShape: shape)
        guard v.allSatisfy({ $0.isFinite }) else { throw ValidationError("\(file): 'context' contains NaN or Inf") }
        context = Tensor(shape: shape, values: v)
        if f.contains("null_context") {
            let ns = try f.info("null_context").shape
            guard ns == [1, shape[1], width] else { throw ValidationError("\(file): 'null_context' must be [1, \(shape[1]), \(width)], got \(ns)") }
            null = Tensor(shape: ns, values: try f.floats("null_context", expectedShape: ns))
        } else { null = nil }
    }

    /// The contexts of trajectories `range` (row i mod K).
    func rows(_ range: Range<Int>) throws -> Conditioning {
        .context(context.gather(batch: range.map { $0 % context.shape[0] }))
    }
}
