//===--- Evaluate.swift - `ptqd evaluate` -------------------------------------===//

import ArgumentParser
import Diffusion
import Evaluation
import Foundation
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
}

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample n images (equal per class) and report FID, IS, precision/recall vs the Fashion-MNIST test set, with cost.",
        discussion: """
        Setting A = DDIM 20 steps, eta 0, guidance 3.0; B = DDIM 100 steps, eta 1, guidance 1.5. --steps/--eta/--guidance
        override them. Seeds and labels depend only on --seed and --n, so two models evaluated with the same flags see
        identical noise and labels. Writes report.json, report.md, grid.png (one row per class) and fid-vs-n.png to --out.
        """)

    @OptionGroup var model: ModelOptions
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
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard n >= 1 else { throw ValidationError("--n must be >= 1, got \(n)") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1, got \(batch)") }
        if let s = steps, s < 1 { throw ValidationError("--steps must be >= 1, got \(s)") }
        if let e = eta, !(e.isFinite && e >= 0) { throw ValidationError("--eta must be a finite number >= 0") }
        if let g = guidance, !g.isFinite { throw ValidationError("--guidance must be finite") }
    }

    var samplerSettings: SamplerSettings {
        var s = setting.settings
        if let v = steps { s.steps = v }
        if let v = eta { s.eta = v }
        if let v = guidance { s.guidance = v }
        s.nullClass = nullClass
        return s
    }

    func run() throws {
        runtime.apply()
        let modelPath = try model.resolvedPath()
        let m = try DiffusionModel.load(modelPath)
        guard m.unet.isClassConditional, let table = m.unet.config.numClassEmbeds else {
            throw ValidationError("evaluate needs a class-conditional model with a class table (equal samples per class)")
        }
        let settings = samplerSettings
        let predictor = try GuidedUNet(unet: m.unet, guidance: settings.guidance, nullClass: settings.nullClass)
        let classes = predictor.nullClass == table - 1 ? table - 1 : table
        let labels = try balancedLabels(n: n, classes: classes)
        // Load the evaluation side first so a missing dataset fails before sampling.
        let network = try FeatureNetwork(directory: try features ?? BundledModels.path("fmnist-features"))
        guard network.classCount == classes else {
            throw ValidationError("the feature network has \(network.classCount) classes but the model has \(classes)")
        }
        let test = try FashionMNIST(split: .test, directory: dataset)
        let cache = referenceCache ?? URL(fileURLWithPath: out).appendingPathComponent("reference-stats.safetensors").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let reference = try ReferenceStatistics.load(dataset: test, network: network, cachePath: cache)

        let samples = try generate(m, settings: settings, predictor: predictor, labels: labels)
        let dist = try DistributionMetrics.evaluate(images: samples.images, network: network, reference: reference, labels: labels)
        // FID against n: class-balanced prefixes (labels are ordered by class, so take the first k of each class).
        let perClass = n / classes
        var fidCurve: [(Int, Double)] = []
        for fraction in [8, 4, 2] where perClass / fraction >= 2 {
            let k = perClass / fraction
            let idx = (0..<classes).flatMap { c in (c * perClass)..<(c * perClass + k) }
            let f = try network.evaluate(samples.images.gather(batch: idx))
            fidCurve.append((idx.count, try FID.compute(reference.statistics, FIDStatistics(features: f.features))))
        }
        fidCurve.append((n, dist.fid))

        let costs = try LayerCosts.measure(m.unet)
        let weightsBytes = (try? FileManager.default.attributesOfItem(atPath: m.weightsPath)[.size] as? Int) ?? nil
        var report = EvaluationReport(
            model: modelPath,
            setting: .init(name: setting.rawValue + (steps != nil || eta != nil || guidance != nil ? " (overridden)" : ""),
                           sampler: settings.kind.rawValue, steps: settings.steps, eta: Double(settings.eta),
                           guidanceScale: Double(settings.guidance)),
            n: n, seed: seed,
            metrics: .init(fid: dist.fid, inceptionScoreMean: dist.inceptionScoreMean, inceptionScoreStd: dist.inceptionScoreStd,
                           precision: dist.precision, recall: dist.recall),
            cost: .init(wallTimeSeconds: samples.seconds, secondsPerImage: samples.seconds / Double(n),
                        imagesPerSecond: Double(n) / samples.seconds, peakResidentBytes: peakResidentBytes(),
                        bopsPerForward: Double(costs.totalMACs) * 32 * 32, modelFileBytes: weightsBytes, threads: runtime.threads),
            reference: "Fashion-MNIST test set (\(test.count) images)", featureNetwork: "models/fmnist-features (\(network.featureDim)-d features)",
            notes: ["fp32 model: BOPs = MACs × 32 × 32 per UNet forward (one image, \(String(format: "%.3f", Double(costs.totalMACs) / 1e9)) GMAC); guidance runs the UNet twice per step.",
                    "Classifier agreement with the requested labels: \(String(format: "%.1f%%", 100 * (dist.labelAccuracy ?? 0))).",
                    "FID vs n: " + fidCurve.map { "n=\($0.0): \(String(format: "%.2f", $0.1))" }.joined(separator: ", ")])
        report.metrics.psnr = nil
        let base = URL(fileURLWithPath: out)
        try report.writeJSON(to: base.appendingPathComponent("report.json").path)
        try report.writeMarkdown(to: base.appendingPathComponent("report.md").path)
        // Grid: one row per class, up to 10 images each.
        let show = min(perClass, 10)
        let idx = (0..<classes).flatMap { c in (c * perClass)..<(c * perClass + show) }
        let gridImages = samples.images.gather(batch: idx)
        let grid = ImageGrid(columns: show, rowLabels: Array(0..<classes), labelClasses: classes)
        try PNGCodec.write(try grid.render(gridImages), to: base.appendingPathComponent("grid.png").path)
        if fidCurve.count >= 2 {
            let plot = LinePlot(title: "FID vs n", xLabel: "n", yLabel: "FID",
                                series: [.init(name: "FID", x: fidCurve.map { Double($0.0) }, y: fidCurve.map(\.1))])
            _ = try plot.write(to: base.appendingPathComponent("fid-vs-n.png").path)
        }
        print(report.markdown())
        print("wrote \(base.path)/{report.json, report.md, grid.png\(fidCurve.count >= 2 ? ", fid-vs-n.png" : "")}")
    }

    /// Samples all n images in batches with per-image noise streams.
    func generate(_ m: DiffusionModel, settings: SamplerSettings, predictor: NoisePredictor, labels: [Int]) throws -> (images: Tensor, seconds: Double) {
        let cfg = m.unet.config
        let scheduler = try Sampler.makeScheduler(settings, config: m.scheduler)
        let sampler = Sampler(scheduler: scheduler, predictor: predictor)
        let progress = ProgressReporter(label: "evaluate: sampling", total: n * scheduler.timesteps.count, unit: "img·steps", enabled: !quiet)
        var parts: [Tensor] = []
        for start in stride(from: 0, to: n, by: batch) {
            let range = start..<min(start + batch, n)
            let noise = BatchNoise(seed: seed, indices: range)
            let x = noise.next(shape: [range.count, cfg.sampleHeight, cfg.sampleWidth, cfg.inChannels])
            let y = try sampler.sample(from: x, labels: Array(labels[range]), noise: { _, s in noise.next(shape: s) },
                                       onStep: { _, _ in progress.advance(range.count) })
            guard y.isFinite else { throw ValidationError("sampling produced NaN/Inf at images \(range)") }
            parts.append(y)
        }
        return (Tensor.concatenate(batch: parts), progress.elapsed)
    }
}
