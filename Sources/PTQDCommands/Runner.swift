//===--- Runner.swift - the model a command samples from (fp32 or quantized) ---===//

import ArgumentParser
import Correction
import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore

/// `--quantized FILE [--simulate]`.
struct QuantizedOptions: ParsableArguments {
    @Option(help: ArgumentHelp("quantized model file written by `ptqd quantize`", valueName: "file"))
    var quantized: String?
    @Flag(help: "run the quantized model with fake quantization in fp32 (the reference) instead of integer kernels")
    var simulate = false

    @Flag(name: .customLong("no-correct"), help: "ignore the file's PTQD noise correction (to compare)") var noCorrect = false
    @Option(name: .customLong("correct-method"), help: "override the stored correction: ptqd or d2") var correctMethod: CorrectionMethod?
    @Option(help: "correction components to apply: comma list of cnc, bias, vsc (default: the file's)") var components: String?
    @Option(help: "variance-schedule calibration: code (as the released PTQD code) or exact") var vsc: VSCMode?
    @Flag(help: "use the correction even when the sampler settings differ from those it was measured for, and compare against --model even if the file was quantized from other weights (warns)") var force = false

    func validate() throws {
        if simulate && quantized == nil { throw ValidationError("--simulate needs --quantized FILE") }
        _ = try parsedComponents()
    }

    func parsedComponents() throws -> CorrectionComponents? {
        guard let c = components else { return nil }
        var set: CorrectionComponents = []
        for item in c.split(separator: ",") {
            switch item.trimmingCharacters(in: .whitespaces).lowercased() {
            case "cnc": set.insert(.cnc)
            case "bias", "bc": set.insert(.bias)
            case "vsc": set.insert(.vsc)
            case "none": break
            default: throw ValidationError("--components takes a comma list of cnc, bias, vsc (or none), got '\(item)'")
            }
        }
        return set
    }
}

extension CorrectionMethod: ExpressibleByArgument {}
extension VSCMode: ExpressibleByArgument {}

/// A runnable model: its network(s), scheduler config and what it costs.
final class Runner {
    /// "fp32" or e.g. "w4a8".
    let label: String
    /// Variant 0's network (config, costs); `unets` holds every variant (two for mixed precision).
    let unet: UNet2D
    let unets: [UNet2D]
    /// The file's PTQD correction data and the correction to apply.
    let correction: CorrectionDocument?
    let correctionSettings: CorrectionSettings
    let force: Bool
    let scheduler: SchedulerConfig
    let quantized: QuantizedModel?
    /// Per-layer precisions (empty = fp32) of variant 0, and of every variant.
    let precisions: [String: LayerPrecision]
    let variantPrecisions: [[String: LayerPrecision]]
    let fileBytes: Int?
    let path: String
    /// The file holding the weights.
    let weightsFile: String
    /// Content digest of `weightsFile` (``SafeTensorsFile/contentDigest()``), computed once on first use.
    private var digest: String?
    func weightsDigest() throws -> String {
        if let digest { return digest }
        let d = try SafeTensorsFile(path: weightsFile).contentDigest()
        digest = d
        return d
    }

    init(fp32 model: DiffusionModel) {
        label = "fp32"; unet = model.unet; scheduler = model.scheduler; quantized = nil; precisions = [:]
        unets = [unet]; correction = nil; correctionSettings = .off; force = false; variantPrecisions = [[:]]
        path = model.directory
        weightsFile = model.weightsPath
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: model.weightsPath)[.size] as? Int) ?? nil
    }

    init(quantizedFile file: String, mode: ExecutionMode, options: QuantizedOptions? = nil) throws {
        let q = try QuantizedModel(path: file)
        quantized = q
        unets = try q.variants.indices.map { try q.makeUNet(variant: $0, mode: mode) }
        unet = unets[0]
        scheduler = q.scheduler
        variantPrecisions = q.variants.map { v in Dictionary(uniqueKeysWithValues: v.map { ($0.name, $0.precision) }) }
        precisions = variantPrecisions[0]
        let doc = try q.info.attachments[CorrectionDocument.attachmentName].map { try CorrectionDocument(json: $0) }
        if let d = doc, d.tables.count != q.variants.count {
            throw ValidationError("\(file): correction data has \(d.tables.count) tables for \(q.variants.count) weight variants; re-create the file")
        }
        correction = doc
        var cs = doc?.defaultCorrection ?? .off
        if let o = options {
            if let m = o.correctMethod { cs.method = m; if cs.components.isEmpty { cs.components = .all } }
            if let c = try o.parsedComponents() { cs.components = c }
            if let v = o.vsc { cs.vscMode = v }
            if o.noCorrect { cs = .off }
        }
        correctionSettings = cs
        force = options?.force ?? false
        let names = q.info.variants.map(\.name).joined(separator: ":")
        label = names + (doc?.plan != nil ? " mixed" : "") + (cs.correctsPrediction || cs.calibratesVariance ? " +\(cs.method.rawValue)" : "")
            + (mode == .simulate ? " (simulated)" : "")
        path = file
        weightsFile = file
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
    }

    /// The fp32 model, or the quantized file when `--quantized` is given.
    static func make(model: ModelOptions, quantized: QuantizedOptions) throws -> Runner {
        if let f = quantized.quantized { return try Runner(quantizedFile: f, mode: quantized.simulate ? .simulate : .integer, options: quantized) }
        return Runner(fp32: try model.load())
    }

    /// Guided noise predictor of variant 0 for `settings` (guidance only for class-conditional models).
    func predictor(_ settings: SamplerSettings) throws -> GuidedUNet { try guided(unet, settings) }

    private func guided(_ u: UNet2D, _ settings: SamplerSettings) throws -> GuidedUNet {
        try GuidedUNet(unet: u, guidance: u.isClassConditional ? settings.guidance : 1, nullClass: settings.nullClass)
    }

    /// Whether `settings` are the ones the file's statistics/plan (or, without them, its calibration) were made for.
    /// Null classes are compared after resolving the default (the last class embedding).
    func matchesCorrection(_ settings: SamplerSettings) -> Bool {
        guard let d = correction?.settings ?? quantized?.info.calibration.options.settings else { return true }
        func null(_ s: SamplerSettings) -> Int? { (try? guided(unet, s))?.nullClass }
        return d.kind == settings.kind && d.steps == settings.steps && d.eta == settings.eta && d.guidance == settings.guidance
            && null(d) == null(settings)
    }

    /// The sampler for `settings`: mixed-precision plan and PTQD correction applied when the file has them.
    func sampler(_ settings: SamplerSettings) throws -> Sampler {
        let scheduler = try Sampler.makeScheduler(settings, config: self.scheduler)
        let matches = matchesCorrection(settings)
        guard let doc = correction else {
            if !matches, let c = quantized?.info.calibration.options.settings {
                note("note: \(path) was calibrated for \(c.kind.rawValue) \(c.steps) steps, eta \(c.eta), guidance \(c.guidance); its activation ranges may fit these settings less well")
            }
            return Sampler(scheduler: scheduler, predictor: try predictor(settings))
        }
        let measured = "\(doc.settings.kind.rawValue) \(doc.settings.steps) steps, eta \(doc.settings.eta), guidance \(doc.settings.guidance)"
        let usesCorrection = correctionSettings.correctsPrediction || correctionSettings.calibratesVariance
        if !matches && !force && (usesCorrection || doc.plan != nil) {
            throw ValidationError("\(path) holds PTQD statistics\(doc.plan != nil ? " and a mixed-precision plan" : "") measured for \(measured); sample with those settings or pass --force\(doc.plan == nil ? " (or --no-correct)" : "")")
        }
        var predictor: NoisePredictor = try guided(unets[0], settings)
        if let plan = doc.plan {
            if plan.schemes.count == scheduler.timesteps.count {
                predictor = SteppedPredictor(predictors: try unets.map { try guided($0, settings) }, plan: plan.schemes)
            } else {
                note("warning: the mixed-precision plan has \(plan.schemes.count) steps, this run \(scheduler.timesteps.count); using \(quantized!.info.variants[unets.count - 1].name) for every step")
                predictor = try guided(unets[unets.count - 1], settings)
            }
        }
        var cs = correctionSettings
        if !matches {
            if doc.activeTable.timesteps == scheduler.timesteps {
                note("warning: applying a correction measured for \(measured) to different sampler settings (--force)")
            } else {
                note("warning: correction disabled: its timesteps do not match this schedule (measured for \(measured))")
                cs = .off
            }
        }
        return try Sampler.corrected(scheduler: scheduler, predictor: predictor, table: doc.activeTable, settings: cs)
    }

    /// Cost table of variant 0.
    func costs() throws -> ModelCosts { ModelCosts(try LayerCosts.measure(unet), precisions: precisions) }

    /// BOPs per UNet forward (one image), averaged over steps for a mixed-precision plan.
    func bopsPerForward() throws -> Double {
        let base = try LayerCosts.measure(unet)
        let per = variantPrecisions.map { ModelCosts(base, precisions: $0).totalBOPs }
        guard let plan = correction?.plan, !plan.schemes.isEmpty else { return per[0] }
        return plan.schemes.reduce(0) { $0 + per[$1] } / Double(plan.schemes.count)
    }
}
