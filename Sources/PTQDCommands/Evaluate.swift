//===--- Evaluate.swift - `ptqd evaluate` -------------------------------------===//

import ArgumentParser
import Diffusion
import Evaluation
import Correction
import Foundation
import Quantization
import SafeTensors
import TensorCore

/// The paper's two ImageNet settings, mirrored on our benchmark.
enum EvaluationSetting: String, ExpressibleByArgument, CaseIterable {
    case A, B
    /// A: DDIM 20 steps, eta 0, guidance 3.0. B: DDIM 100 steps, eta 1, guidance 1.5 (VSC active).
    var settings: SamplerSettings {
        switch self {
        case .A: return SamplerSettings(kind: .ddim, steps: 20, eta: 0, guidance: 3.0)
        case .B: return SamplerSettings(kind: .ddim, steps: 100, eta: 1, guidance: 1.5)
        }
    }

    /// The setting with any of `--steps/--eta/--guidance/--null-class` applied.
    func settings(steps: Int?, eta: Float?, guidance: Float?, nullClass: Int?) -> SamplerSettings {
        var s = settings
        if let v = steps { s.steps = v }
        if let v = eta { s.eta = v }
        if let v = guidance { s.guidance = v }
        s.nullClass = nullClass
        return s
    }
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample n images (equal per class) and report FID, IS, precision/recall vs the Fashion-MNIST test set, with cost.",
        discussion: """
        Setting A = DDIM 20 steps, eta 0, guidance 3.0; B = DDIM 100 steps, eta 1, guidance 1.5. --steps/--eta/--guidance
        override them. Seeds and labels depend only on --seed and --n, so two models evaluated with the same flags see
        identical noise and labels. Writes report.json, report.md, grid.png (one row per class) and fid-vs-n.png to --out.
        Samples are checkpointed in --out as they are made: an interrupted run, or one stopped by --time-budget
        (exit code 75), continues where it stopped when the same command is run again, and a finished run's samples
        are reused.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var quant: QuantizedOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "A or B") var setting: EvaluationSetting = .A
    @Option(help: "override the setting's step count") var steps: Int?
    @Option(help: "override the setting's eta") var eta: Float?
    @Option(help: "override the setting's guidance scale") var guidance: Float?
    @Option(name: .customLong("null-class"), help: "unconditional label (default: last class embedding)") var nullClass: Int?
    @Option(help: "number of samples (a multiple of the class count)") var n: Int = 5000
    @Option(help: "random seed") var seed: UInt64 = 0
    @Option(help: "images per UNet batch") var batch: Int = 100
    @Option(help: "output folder") var out: String = "out/evaluate"
    @Option(help: "feature network folder (default: bundled models/fmnist-features)") var features: String?
    @Option(help: "Fashion-MNIST folder (IDX .gz files)") var dataset: String = FashionMNIST.defaultDirectory
    @Option(help: "cache file for the test set's reference statistics") var referenceCache: String?
    @Option(name: .customLong("fp-cache"), help: "cache file for the fp32 samples (default: OUT/fp32-samples.safetensors)") var fpCache: String?
    @Option(name: .customLong("time-budget"), help: ArgumentHelp("sample for at most this long, then save a checkpoint in --out and exit with code 75; the same command resumes", valueName: "minutes"))
    var timeBudget: Double?
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard n >= 1 else { throw ValidationError("--n must be >= 1, got \(n)") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1, got \(batch)") }
        if let s = steps, s < 1 { throw ValidationError("--steps must be >= 1, got \(s)") }
        if let e = eta, !(e.isFinite && e >= 0 && e <= 1) { throw ValidationError("--eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got \(e)") }
        if let g = guidance, !g.isFinite { throw ValidationError("--guidance must be finite") }
        if let b = timeBudget, !(b.isFinite && b >= 0) { throw ValidationError("--time-budget must be a number of minutes >= 0") }
    }

    var samplerSettings: SamplerSettings { setting.settings(steps: steps, eta: eta, guidance: guidance, nullClass: nullClass) }

    func run() throws {
        runtime.apply()
        let fp = Runner(fp32: try model.load())
        let q = try quant.quantized.map { try Runner(quantizedFile: $0, mode: quant.simulate ? .simulate : .integer, options: quant) }
        if let q, q.unet.config != fp.unet.config {
            throw ValidationError("--quantized \(q.path) was made from a model with a different config than \(fp.path); pass the source model with --model")
        }
        if let q, let made = q.quantized?.info.sourceWeightsDigest, !quant.force {
            let fpDigest = try fp.weightsDigest()
            if made != fpDigest {
                throw ValidationError("--quantized \(q.path) was quantized from different weights than \(fp.weightsFile) (\(made) vs \(fpDigest)); pass the source model with --model, re-quantize, or --force")
            }
        }
        if let q, q.scheduler != fp.scheduler {
            throw ValidationError("--quantized \(q.path) carries a different scheduler config than \(fp.path); pass its source model with --model")
        }
        guard fp.unet.isClassConditional, fp.unet.config.numClassEmbeds != nil else {
            throw ValidationError("evaluate needs a class-conditional model with a class table (equal samples per class)")
        }
        let settings = samplerSettings
        let nullClass = try fp.predictor(settings).nullClass
        let classes = fp.unet.realClassCount(nullClass: nullClass)
        let labels = try balancedLabels(n: n, classes: classes)
        // Load the evaluation side first so a missing dataset fails before sampling.
        let network = try FeatureNetwork(directory: try features ?? BundledModels.path("fmnist-features"))
        guard network.classCount == classes else {
            throw ValidationError("the feature network has \(network.classCount) classes but the model has \(classes)")
        }
        let test = try FashionMNIST(split: .test, directory: dataset)
        try test.requireEveryClass(classes)
        let cache = referenceCache ?? URL(fileURLWithPath: out).appendingPathComponent("reference-stats.safetensors").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let reference = try ReferenceStatistics.load(dataset: test, network: network, cachePath: cache)
        let base = URL(fileURLWithPath: out)

        let fpSamples = try generate(fp, settings: settings, labels: labels,
                                     checkpoint: try checkpoint(fp, settings: settings, path: fpCache ?? base.appendingPathComponent("fp32-samples.safetensors").path))
        let fpReport = try report(fp, samples: fpSamples, settings: settings, labels: labels, classes: classes, network: network,
                                  reference: reference, test: test, paired: nil)
        var main = fpReport
        var qSamples: GeneratedSamples? = nil
        if let q {
            let qs = try generate(q, settings: settings, labels: labels,
                                  checkpoint: try checkpoint(q, settings: settings, path: base.appendingPathComponent("quantized-samples.safetensors").path))
            qSamples = qs
            let paired = try PairedMetrics.evaluate(reference: fpSamples.images, test: qs.images)
            main = try report(q, samples: qs, settings: settings, labels: labels, classes: classes, network: network,
                              reference: reference, test: test, paired: paired)
            main.notes.append(String(format: "fp32 on the same noise and labels: FID %.3f, IS %.3f, precision %.3f, recall %.3f, %.2f images/s",
                                     fpReport.metrics.fid ?? .nan, fpReport.metrics.inceptionScoreMean ?? .nan,
                                     fpReport.metrics.precision ?? .nan, fpReport.metrics.recall ?? .nan, fpReport.cost.imagesPerSecond ?? .nan))
            try fpReport.writeJSON(to: base.appendingPathComponent("report-fp32.json").path)
        }
        try main.writeJSON(to: base.appendingPathComponent("report.json").path)
        try main.writeMarkdown(to: base.appendingPathComponent("report.md").path)
        // Grid: one row per class, up to 10 images each; FP | quantized side by side.
        let perClass = n / classes
        let show = min(perClass, 10)
        let idx = (0..<classes).flatMap { c in (c * perClass)..<(c * perClass + show) }
        let grid = ImageGrid(columns: show, rowLabels: Array(0..<classes), labelClasses: classes)
        var image = try grid.render(fpSamples.images.gather(batch: idx))
        if let qs = qSamples { image = ImageGrid.sideBySide(image, try grid.render(qs.images.gather(batch: idx))) }
        try PNGCodec.write(image, to: base.appendingPathComponent("grid.png").path)
        print(main.markdown())
        print("wrote \(base.path)/{report.json, report.md, grid.png\(q != nil ? ", report-fp32.json" : "")\(perClass >= 4 ? ", fid-vs-n.png" : "")}")
    }

    /// Distribution metrics (by n, with the FID-vs-n plot), paired metrics and cost for one model's samples.
    func report(_ r: Runner, samples: GeneratedSamples, settings: SamplerSettings, labels: [Int], classes: Int,
                network: FeatureNetwork, reference: ReferenceStatistics, test: FashionMNIST, paired: PairedMetrics?) throws -> EvaluationReport {
        // One pass of the feature network over the clamped images; the metrics-by-n prefixes reuse its features.
        let seen = try network.evaluate(DistributionMetrics.dataRange(samples.images))
        let dist = try DistributionMetrics.evaluate(features: seen.features, logits: seen.logits, reference: reference, labels: labels)
        // Metrics against n: class-balanced prefixes (labels are ordered by class, so take the first k of each class).
        let perClass = n / classes
        var byN: [DistributionMetrics] = []
        for fraction in [8, 4, 2] where perClass / fraction >= 2 {
            let k = perClass / fraction
            let idx = (0..<classes).flatMap { c in (c * perClass)..<(c * perClass + k) }
            byN.append(try DistributionMetrics.evaluate(features: seen.features.gather(batch: idx), logits: seen.logits.gather(batch: idx),
                                                        reference: reference, labels: idx.map { labels[$0] }))
        }
        byN.append(dist)
        let costs = try r.costs()
        let overridden = steps != nil || eta != nil || guidance != nil
        var report = EvaluationReport(
            model: r.label + " (" + r.path + ")",
            setting: .init(name: setting.rawValue + (overridden ? " (overridden)" : ""), sampler: settings.kind.rawValue,
                           steps: settings.steps, eta: Double(settings.eta), guidanceScale: Double(settings.guidance)),
            n: n, seed: seed,
            metrics: .init(fid: dist.fid, inceptionScoreMean: dist.inceptionScoreMean, inceptionScoreStd: dist.inceptionScoreStd,
                           precision: dist.precision, recall: dist.recall, psnr: paired?.psnrSummary, ssim: paired?.ssimSummary),
            cost: .init(wallTimeSeconds: samples.seconds, secondsPerImage: samples.seconds / Double(n),
                        imagesPerSecond: Double(n) / samples.seconds, peakResidentBytes: samples.peakResidentBytes,
                        bopsPerForward: try r.bopsPerForward(), modelFileBytes: r.fileBytes, threads: runtime.threads),
            reference: "Fashion-MNIST test set (\(test.count) images, \(reference.identity))",
            featureNetwork: "\(network.directory): \(network.identity) (\(network.featureDim)-d features)",
            notes: [String(format: "BOPs = Σ MACs × b_w × b_a per UNet forward for one image (%.3f GMAC; fp32 layers and attention matmuls count 32×32); guidance runs the UNet on 2 rows per image and step.", Double(costs.totalMACs) / 1e9),
                    "Classifier agreement with the requested labels: \(String(format: "%.1f%%", 100 * (dist.labelAccuracy ?? 0))).",
                    "The table by n uses class-balanced prefixes of the same samples (nested, not independent draws): it shows how much the metrics move with n."])
        report.metricsByN = byN
        if n < 20 {
            report.notes.append("IS uses 10 splits: with fewer than 2 images per split (n < 20) it is 1 by construction and says nothing.")
        }
        if let doc = r.correction {
            let cs = r.correctionSettings
            let parts = [cs.components.contains(.cnc) ? "CNC" : nil, cs.components.contains(.bias) ? "BC" : nil, cs.components.contains(.vsc) ? "VSC" : nil].compactMap { $0 }
            report.notes.append("Noise correction: \(parts.isEmpty ? "off" : cs.method.rawValue + " " + parts.joined(separator: "+") + " (VSC " + cs.vscMode.rawValue + ")"), statistics from \(doc.statistics.trajectories) FP trajectories\(doc.plan.map { "; mixed plan switches at step \($0.switchIndex)" } ?? "").")
            if cs.components.contains(.vsc) && settings.eta == 0 && settings.kind == .ddim {
                report.notes.append("At eta 0 DDIM injects no noise: variance-schedule calibration is inactive.")
            }
        }
        if paired != nil {
            report.notes.append("PSNR/SSIM: each image against the fp32 sample from the same noise and label, clamped to [-1, 1] and mapped to [0, 1] once.")
            report.notes.append("Peak RSS is this process's high-water mark while the model sampled, reset after freeing cached buffers; both models' weights and the reference data stay loaded and count.")
        }
        if byN.count >= 2 {
            let plot = LinePlot(title: "FID vs n (\(r.label))", xLabel: "n", yLabel: "FID",
                                series: [.init(name: "FID", x: byN.map { Double($0.count) }, y: byN.map(\.fid))])
            let name = paired == nil && quant.quantized != nil ? "fid-vs-n-fp32.png" : "fid-vs-n.png"
            _ = try plot.write(to: URL(fileURLWithPath: out).appendingPathComponent(name).path)
        }
        return report
    }

    /// The checkpoint of `r`'s samples under these flags. Its key holds everything the samples depend on: the
    /// weights file's content digest (not its path or time, so copies match and same-size rewrites do not), the
    /// decoded UNet and scheduler configs, the model variant and correction, the sampler settings, n, seed and
    /// batch size.
    func checkpoint(_ r: Runner, settings: SamplerSettings, path: String) throws -> SampleCheckpoint {
        let digest = try r.weightsDigest()
        // The configs' descriptions list every decoded field (no dictionaries, so the text is stable).
        func hashed(_ text: String) -> String { Array(text.utf8).withUnsafeBytes { SafeTensorsDigest.mix64($0) } }
        var key = "weights=\(digest)|unet=\(hashed("\(r.unet.config)"))|scheduler=\(hashed("\(r.scheduler)"))|\(r.label)"
            + "|\(settings.jsonString)|n=\(n)|seed=\(seed)|batch=\(batch)"
        if r.quantized != nil {
            let cs = r.correctionSettings
            key += "|correction=\(cs.method.rawValue),\(cs.components.rawValue),\(cs.vscMode.rawValue)"
        }
        let cfg = r.unet.config
        return SampleCheckpoint(path: path, key: key, imageShape: [cfg.inChannels, cfg.sampleHeight, cfg.sampleWidth])
    }

    /// Samples all n images in batches with per-image noise streams, continuing from `checkpoint` when it holds
    /// a prefix of this run (and returning its samples when it holds all of them). Saves the checkpoint at most
    /// every 30 s and at the end; stops with exit code 75 once `--time-budget` is spent. The process's peak RSS is
    /// reset before sampling and read after it, so each model's figure covers its own sampling.
    func generate(_ r: Runner, settings: SamplerSettings, labels: [Int], checkpoint: SampleCheckpoint) throws -> GeneratedSamples {
        let cfg = r.unet.config
        var parts: [Tensor] = []
        var first = 0, earlierSeconds = 0.0
        if let saved = checkpoint.load() {
            let count = saved.images.shape[0]
            if count == n {
                if !quiet { note("evaluate: reusing \(r.label) samples from \(checkpoint.path)") }
                return GeneratedSamples(images: saved.images, seconds: saved.seconds, peakResidentBytes: nil)
            }
            if count < n && count % batch == 0 {
                parts = [saved.images]; first = count; earlierSeconds = saved.seconds
                if !quiet { note("evaluate: resuming \(r.label) at image \(count)/\(n) from \(checkpoint.path)") }
            }
        }
        let sampler = try r.sampler(settings)
        let scheduler = sampler.scheduler
        resetPeakResidentBytes()
        let progress = ProgressReporter(label: "evaluate: sampling \(r.label)", total: (n - first) * scheduler.timesteps.count,
                                        unit: "img·steps", enabled: !quiet)
        var lastSave = progress.elapsed
        for start in stride(from: first, to: n, by: batch) {
            let range = start..<min(start + batch, n)
            let noise = BatchNoise(seed: seed, indices: range)
            let x = noise.next(shape: [range.count, cfg.sampleHeight, cfg.sampleWidth, cfg.inChannels])
            let y = try sampler.sample(from: x, labels: Array(labels[range]), noise: { _, s in noise.next(shape: s) },
                                       onStep: { _, _ in progress.advance(range.count) })
            guard y.isFinite else { throw ValidationError("sampling produced NaN/Inf at images \(range)") }
            parts.append(y)
            let finished = range.upperBound == n
            let outOfTime = timeBudget.map { progress.elapsed >= $0 * 60 } ?? false
            if finished || outOfTime || progress.elapsed - lastSave >= 30 {
                parts = [Tensor.concatenate(batch: parts)]
                try checkpoint.save(parts[0], seconds: earlierSeconds + progress.elapsed)
                lastSave = progress.elapsed
            }
            if outOfTime && !finished {
                note("evaluate: --time-budget reached at image \(range.upperBound)/\(n) of \(r.label); samples saved to \(checkpoint.path); run the same command again to continue")
                throw ExitCode(75)
            }
        }
        return GeneratedSamples(images: Tensor.concatenate(batch: parts), seconds: earlierSeconds + progress.elapsed,
                                peakResidentBytes: peakResidentBytes())
    }
}

/// One model's n samples and what making them cost.
struct GeneratedSamples {
    /// `[n, H, W, C]` model outputs (not clamped).
    let images: Tensor
    /// Sampling wall time, summed over every run that contributed (a resumed run adds its predecessors').
    let seconds: Double
    /// Peak RSS of this process while it sampled (nil when the samples were reused from a finished checkpoint).
    let peakResidentBytes: Int?
}
