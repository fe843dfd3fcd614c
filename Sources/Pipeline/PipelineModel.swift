//===--- PipelineModel.swift - a runnable model: fp32 folder or quantized file ---===//
//
// What `sample`, `evaluate` and `bench` run: the network(s) of a diffusers folder, or of a quantized file with
// its PTQD correction and mixed-precision plan applied, and the policy for sampler settings that differ from
// those the file was measured for.
//
//===----------------------------------------------------------------------===//

import Correction
import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore

/// An error of the pipeline layer (a one-line message saying what to do).
public struct PipelineError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

/// User overrides of a quantized file's stored correction (`--no-correct`, `--correct-method`, `--components`,
/// `--vsc`, `--force`).
public struct CorrectionOverrides: Equatable, Sendable {
    public var disabled = false
    public var method: CorrectionMethod?
    public var components: CorrectionComponents?
    public var vscMode: VSCMode?
    /// Use the correction and plan even when the sampler settings differ from those they were measured for, and
    /// pair with an FP model made from other weights (warns).
    public var force = false
    public init() {}

    /// The correction to apply given the file's default.
    public func resolve(_ stored: CorrectionSettings) -> CorrectionSettings {
        var cs = stored
        if let m = method { cs.method = m; if cs.components.isEmpty { cs.components = .all } }
        if let c = components { cs.components = c }
        if let v = vscMode { cs.vscMode = v }
        if disabled { cs = .off }
        return cs
    }
}

/// A runnable model: its network(s), scheduler config, correction and costs.
public final class PipelineModel {
    /// "fp32" or e.g. "w4a8 +ptqd".
    public let label: String
    /// Variant 0's network (config, costs); `networks` holds every variant (two for mixed precision).
    public let network: Denoiser
    public let networks: [Denoiser]
    /// The file's PTQD correction data and the correction to apply.
    public let correction: CorrectionDocument?
    public let correctionSettings: CorrectionSettings
    public let force: Bool
    public let scheduler: SchedulerConfig
    public let quantized: QuantizedModel?
    /// Per-layer precisions (empty = fp32) of variant 0, and of every variant.
    public let precisions: [String: LayerPrecision]
    public let variantPrecisions: [[String: LayerPrecision]]
    public let fileBytes: Int?
    /// The model folder or the quantized file.
    public let path: String
    /// The file holding the weights.
    public let weightsFile: String
    private var digest: String?
    /// How quantized layers run (fp32 models: irrelevant).
    private let executionMode: ExecutionMode
    /// The first-stage decoder of a latent pipeline (fp32); nil for pixel-space models. A quantized file of a latent
    /// pipeline takes it from its source folder (`attachDecoder`).
    public private(set) var decoder: LatentDecoder?

    /// Uses `model`'s decoder (a quantized file sampled next to its source pipeline folder). If the file holds a
    /// quantized decoder, its kernels are installed into `model`'s decoder (pass a model loaded for this purpose:
    /// its decoder is changed), after checking the decoder weights are the ones it was made from (unless `force`).
    public func attachDecoder(from model: DiffusionModel) throws {
        guard let d = model.decoder else {
            if quantized?.info.decoder != nil {
                throw PipelineError("\(path) holds a quantized decoder but \(model.directory) has no vae/ or vqvae/; pass its source pipeline folder with --model")
            }
            return
        }
        guard d.latentChannels == network.sampleShape[2] else {
            throw PipelineError("\(model.decoderPath ?? model.directory) decodes \(d.latentChannels)-channel latents but \(path) denoises \(network.sampleShape[2]) channels")
        }
        if let q = quantized, q.info.decoder != nil, let dir = model.decoderPath {
            let digest = try SafeTensorsFile(path: try DiffusionModel.findWeights(in: URL(fileURLWithPath: dir))).contentDigest()
            try q.installDecoder(into: d, decoderWeightsDigest: digest, force: force, mode: executionMode)
        }
        decoder = d
    }

    /// Whether the decoder runs quantized kernels.
    public var decoderIsQuantized: Bool { quantized?.info.decoder != nil && decoder != nil }

    /// `[H, W, C]` of the images this model produces (decoded for latent pipelines).
    public var imageShape: [Int] {
        guard let d = decoder else { return network.sampleShape }
        let s = network.sampleShape
        return [s[0] * d.factor, s[1] * d.factor, d.outChannels]
    }

    /// Final latents `[N, h, w, c]` → images `[N, H, W, C]`: divided by the decoder's scaling factor and decoded in
    /// batches of `batch`; the identity for pixel-space models.
    public func decode(_ latents: Tensor, batch: Int = 16) throws -> Tensor {
        guard let d = decoder else { return latents }
        var parts: [Tensor] = []
        let n = latents.shape[0]
        for start in stride(from: 0, to: n, by: max(batch, 1)) {
            let z = latents.slice(batch: start..<min(start + batch, n)).copy()
            for i in 0..<z.count { z.data[i] /= d.scalingFactor }  // latents / scaling_factor, as diffusers divides
            parts.append(try d.decode(z))
        }
        return Tensor.concatenate(batch: parts)
    }

    /// Content digest of `weightsFile` (``SafeTensorsFile/contentDigest()``), computed once on first use.
    public func weightsDigest() throws -> String {
        if let digest { return digest }
        let d = try SafeTensorsFile(path: weightsFile).contentDigest()
        digest = d
        return d
    }

    public init(fp32 model: DiffusionModel) {
        label = "fp32"; network = model.network; scheduler = model.scheduler; quantized = nil; precisions = [:]; executionMode = .integer
        decoder = model.decoder
        networks = [network]; correction = nil; correctionSettings = .off; force = false; variantPrecisions = [[:]]
        path = model.directory
        weightsFile = model.weightsPath
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: model.weightsPath)[.size] as? Int) ?? nil
    }

    public init(quantizedFile file: String, mode: ExecutionMode, overrides: CorrectionOverrides = CorrectionOverrides()) throws {
        executionMode = mode
        let q = try QuantizedModel(path: file)
        quantized = q
        networks = try q.variants.indices.map { try q.makeNetwork(variant: $0, mode: mode) }
        network = networks[0]
        scheduler = q.scheduler
        variantPrecisions = q.variants.indices.map { q.costPrecisions(variant: $0) }
        precisions = variantPrecisions[0]
        let doc = try q.info.attachments[CorrectionDocument.attachmentName].map { try CorrectionDocument(json: $0) }
        if let d = doc, d.tables.count != q.variants.count {
            throw PipelineError("\(file): correction data has \(d.tables.count) tables for \(q.variants.count) weight variants; re-create the file")
        }
        correction = doc
        let cs = overrides.resolve(doc?.defaultCorrection ?? .off)
        correctionSettings = cs
        force = overrides.force
        let names = q.info.variants.map(\.name).joined(separator: ":")
        label = names + (doc?.plan != nil ? " mixed" : "") + (q.attentionVariants.contains { !$0.isEmpty } ? " +attn" : "")
            + (cs.correctsPrediction || cs.calibratesVariance ? " +\(cs.method.rawValue)" : "")
            + (mode == .simulate ? " (simulated)" : "")
        path = file
        weightsFile = file
        fileBytes = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
    }

    /// The fp32 model of `folder`, or the quantized `file` when given.
    public static func load(folder: () throws -> String, quantized file: String?, simulate: Bool,
                            overrides: CorrectionOverrides) throws -> PipelineModel {
        if let f = file { return try PipelineModel(quantizedFile: f, mode: simulate ? .simulate : .integer, overrides: overrides) }
        return PipelineModel(fp32: try DiffusionModel.load(try folder()))
    }

    /// Guided predictor of variant 0 for `settings`.
    public func predictor(_ settings: SamplerSettings) throws -> GuidedDenoiser { try guided(network, settings) }

    /// The model's conditioning resolved for `settings` (null class, real classes).
    public func conditioningSpace(_ settings: SamplerSettings) throws -> ConditioningSpace { try predictor(settings).space }

    private func guided(_ n: Denoiser, _ settings: SamplerSettings) throws -> GuidedDenoiser {
        try GuidedDenoiser(network: n, guidance: settings.guidance, nullClass: settings.nullClass, nullContext: nullContext)
    }

    /// The unconditional context `[1, L, D]` of a context-conditioned network (for guidance).
    public var nullContext: Tensor?

    /// Contexts for `n` images from a safetensors file: `context` `[n or 1, L, D]` (one row is used for every image)
    /// and optionally `null_context` `[1, L, D]` (stored in `nullContext`). Checks the width against the network.
    public func loadContexts(file path: String, count n: Int) throws -> Tensor {
        guard case let .context(width) = network.conditioningKind else {
            throw PipelineError("--context applies to cross-attention models; \(path) was given for a \(network.architecture) that takes \(network.isConditional ? "class labels" : "no conditioning")")
        }
        let f = try SafeTensorsFile(path: path)
        guard f.contains("context") else { throw PipelineError("\(path): no tensor 'context' ([N or 1, L, \(width)])") }
        let shape = try f.info("context").shape
        guard shape.count == 3, shape[0] == n || shape[0] == 1, shape[1] >= 1, shape[2] == width else {
            throw PipelineError("\(path): 'context' must be [\(n) or 1, L, \(width)] for this model, got \(shape)")
        }
        let values = try f.floats("context", expectedShape: shape)
        guard values.allSatisfy({ $0.isFinite }) else { throw PipelineError("\(path): 'context' contains NaN or Inf") }
        let t = Tensor(shape: [n, shape[1], width])
        let per = shape[1] * width
        for i in 0..<n { for j in 0..<per { t.data[i * per + j] = values[(shape[0] == 1 ? 0 : i) * per + j] } }
        if f.contains("null_context") {
            let ns = try f.info("null_context").shape
            guard ns == [1, shape[1], width] else { throw PipelineError("\(path): 'null_context' must be [1, \(shape[1]), \(width)], got \(ns)") }
            let nv = try f.floats("null_context", expectedShape: ns)
            guard nv.allSatisfy({ $0.isFinite }) else { throw PipelineError("\(path): 'null_context' contains NaN or Inf") }
            nullContext = Tensor(shape: ns, values: nv)
        }
        return t
    }

    /// The settings the file's statistics/plan (or, without them, its calibration) were made for.
    public var measuredSettings: SamplerSettings? { correction?.settings ?? quantized?.info.calibration.options.settings }

    /// Whether `settings` are the ones the file was measured for. Null classes are compared after resolving the default.
    public func matchesCorrection(_ settings: SamplerSettings) -> Bool {
        guard let d = measuredSettings else { return true }
        func null(_ s: SamplerSettings) -> Int? { (try? guided(network, s))?.nullClass }
        return d.kind == settings.kind && d.steps == settings.steps && d.eta == settings.eta && d.guidance == settings.guidance
            && null(d) == null(settings)
    }

    /// The sampler for `settings`: the mixed-precision plan and PTQD correction applied when the file has them.
    ///
    /// Policy when `settings` differ from those the file was measured for: an error if the file's correction or plan
    /// would be used (unless `force`); with `force`, the correction is applied if its timesteps equal this schedule's
    /// and dropped otherwise, and a plan of another length runs the strongest variant at every step. `warn` receives
    /// one line per decision.
    public func sampler(_ settings: SamplerSettings, warn: (String) -> Void = { _ in }) throws -> Sampler {
        let scheduler = try Sampler.makeScheduler(settings, config: self.scheduler)
        let matches = matchesCorrection(settings)
        guard let doc = correction else {
            if !matches, let c = quantized?.info.calibration.options.settings {
                warn("note: \(path) was calibrated for \(c.summary); its activation ranges may fit these settings less well")
            }
            return Sampler(scheduler: scheduler, predictor: try predictor(settings))
        }
        let measured = doc.settings.summary
        let usesCorrection = correctionSettings.correctsPrediction || correctionSettings.calibratesVariance
        if !matches && !force && (usesCorrection || doc.plan != nil) {
            throw PipelineError("\(path) holds PTQD statistics\(doc.plan != nil ? " and a mixed-precision plan" : "") measured for \(measured); sample with those settings or pass --force\(doc.plan == nil ? " (or --no-correct)" : "")")
        }
        var predictor: NoisePredictor = try guided(networks[0], settings)
        if let plan = doc.plan {
            if plan.schemes.count == scheduler.timesteps.count {
                predictor = SteppedPredictor(predictors: try networks.map { try guided($0, settings) }, plan: plan.schemes)
            } else {
                warn("warning: the mixed-precision plan has \(plan.schemes.count) steps, this run \(scheduler.timesteps.count); using \(quantized!.info.variants[networks.count - 1].name) for every step")
                predictor = try guided(networks[networks.count - 1], settings)
            }
        }
        var cs = correctionSettings
        if !matches {
            if doc.activeTable.timesteps == scheduler.timesteps {
                warn("warning: applying a correction measured for \(measured) to different sampler settings (--force)")
            } else {
                warn("warning: correction disabled: its timesteps do not match this schedule (measured for \(measured))")
                cs = .off
            }
        }
        return try Sampler.corrected(scheduler: scheduler, predictor: predictor, table: doc.activeTable, settings: cs)
    }

    /// Cost table of variant 0.
    public func costs() throws -> ModelCosts { ModelCosts(try LayerCosts.measure(network), precisions: precisions) }

    /// BOPs per network forward (one image), averaged over steps for a mixed-precision plan.
    public func bopsPerForward() throws -> Double {
        let base = try LayerCosts.measure(network)
        let per = variantPrecisions.map { ModelCosts(base, precisions: $0).totalBOPs }
        guard let plan = correction?.plan, !plan.schemes.isEmpty else { return per[0] }
        return plan.schemes.reduce(0) { $0 + per[$1] } / Double(plan.schemes.count)
    }

    /// Checks that `self` (quantized) was made from `fp` — same network config, scheduler and (unless `force`)
    /// weights — so paired metrics compare like with like.
    public func checkPairs(with fp: PipelineModel) throws {
        guard network.configFingerprint == fp.network.configFingerprint else {
            throw PipelineError("--quantized \(path) was made from a model with a different config than \(fp.path); pass the source model with --model")
        }
        if let made = quantized?.info.sourceWeightsDigest, !force {
            let fpDigest = try fp.weightsDigest()
            if made != fpDigest {
                throw PipelineError("--quantized \(path) was quantized from different weights than \(fp.weightsFile) (\(made) vs \(fpDigest)); pass the source model with --model, re-quantize, or --force")
            }
        }
        guard scheduler == fp.scheduler else {
            throw PipelineError("--quantized \(path) carries a different scheduler config than \(fp.path); pass its source model with --model")
        }
    }
}
