//===--- Evaluate.swift - `ptqd evaluate` -------------------------------------===//

import ArgumentParser
import Diffusion
import Evaluation
import Correction
import Foundation
import Pipeline
import Quantization
import SafeTensors
import TensorCore

struct Evaluate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sample n images and report PSNR/SSIM vs fp32, cost and BOPs; FID, IS, precision/recall vs Fashion-MNIST where they apply.",
        discussion: """
        Any model: paired PSNR/SSIM of the quantized images against the fp32 images from the same noise and \
        conditioning (decoded images for a latent pipeline; SSIM needs H, W >= 11), wall time, images/s, peak RSS, \
        BOPs per UNet forward and file size. Class-conditional models get n/classes images per class; cross-attention \
        models take --context FILE. Distribution metrics (FID, IS, precision/recall, classifier agreement) against the \
        Fashion-MNIST test set are added when the images are 1×32×32 and the model has as many classes as the feature \
        network (--metrics auto); --metrics paired skips them.
        Setting A = DDIM 20 steps, eta 0, guidance 3.0; B = DDIM 100 steps, eta 1, guidance 1.5. --steps/--eta/--guidance
        override them. Seeds and labels depend only on --seed and --n, so two models evaluated with the same flags see
        identical noise and labels. Writes report.json, report.md, report.html (one self-contained page), grid.png (FP | quantized, one named row per class) and fid-vs-n.{png,svg,json} to --out.
        Samples are checkpointed in --out as they are made: an interrupted run, or one stopped by --time-budget
        (exit code 75), continues where it stopped when the same command is run again, and a finished run's samples
        are reused.
        --shard I/N samples only a contiguous 1/N of the images (sizes differ by at most one) and writes its samples \
        and partial results (features, logits, per-image PSNR/SSIM, costs) to --out; `ptqd merge` turns the N shard \
        folders into the report of the unsharded run, with the same metrics to the last digit (docs/scale-out.md).
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var quant: QuantizedOptions
    @OptionGroup var sampler: SamplerOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "number of samples (a multiple of the class count for a class-conditional model)") var n: Int = 5000
    @Option(help: "random seed") var seed: UInt64 = 0
    @Option(help: "images per UNet batch") var batch: Int = 100
    @Option(help: "output folder") var out: String = "out/evaluate"
    @Option(help: "feature network folder (default: bundled models/fmnist-features)") var features: String?
    @Option(help: "Fashion-MNIST folder (IDX .gz files)") var dataset: String = FashionMNIST.defaultDirectory
    @Option(help: "cache file for the test set's reference statistics") var referenceCache: String?
    @Option(name: .customLong("fp-cache"), help: "cache file for the fp32 samples (default: OUT/fp32-samples.safetensors)") var fpCache: String?
    @Option(name: .customLong("time-budget"), help: ArgumentHelp("sample for at most this long, then save a checkpoint in --out and exit with code 75; the same command resumes", valueName: "minutes"))
    var timeBudget: Double?
    @Option(help: ArgumentHelp("cross-attention contexts for a text-conditioned model: safetensors with 'context' [n or 1, L, D] and, for guidance, 'null_context' [1, L, D]", valueName: "file"))
    var context: String?
    @Option(help: ArgumentHelp("auto: FID, IS, precision/recall when the images are 1×32×32 and the classes match the feature network, plus the paired metrics; paired: only PSNR/SSIM vs fp32 and cost", valueName: "auto|paired"))
    var metrics: MetricsMode = .auto
    @Flag(help: "no progress on stderr") var quiet = false

    @Option(help: ArgumentHelp("sample only shard I of N (0-based): images ⌊I·n/N⌋..<⌊(I+1)·n/N⌋, FP and quantized with the same noise and labels as the whole run; writes the samples and partial results (partial.safetensors) to --out for `ptqd merge` instead of the report", valueName: "I/N"))
    var shard: String?

    func validate() throws {
        guard n >= 1 else { throw ValidationError("--n must be >= 1, got \(n)") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1, got \(batch)") }
        if let b = timeBudget, !(b.isFinite && b >= 0) { throw ValidationError("--time-budget must be a number of minutes >= 0") }
        if shard != nil { _ = try shardRange() }
    }

    /// `--shard` parsed, and its range of the n images (0..<n without --shard).
    func shardRange() throws -> (spec: ShardSpec?, range: Range<Int>) {
        guard let text = shard else { return (nil, 0..<n) }
        do {
            let spec = try ShardSpec(parsing: text)
            return (spec, try spec.range(n: n))
        } catch let e as PipelineError { throw ValidationError("--shard \(text): \(e.description)") }
    }

    /// Which metrics a run computes.
    enum MetricsMode: String, ExpressibleByArgument, CaseIterable {
        /// Distribution metrics where the feature network applies, paired metrics and cost always.
        case auto
        /// Paired metrics and cost only.
        case paired
    }

    /// The feature network and reference data of the distribution metrics.
    struct Distribution {
        let network: FeatureNetwork
        let test: FashionMNIST
    }

    /// The models, conditioning and evaluation side of a run (shared by the whole run, a shard and the merge).
    struct Context {
        let fp: PipelineModel
        let q: PipelineModel?
        let settings: SamplerSettings
        /// Whether the model takes conditioning (guidance applies).
        let conditional: Bool
        /// Real classes of a class-conditional model; 0 for unconditional and context-conditioned models.
        let classes: Int
        /// Per-image labels of a class-conditional model: n/classes per class in class order (`balanced`), or
        /// image i gets class i mod classes (paired-only runs with n not a multiple of the classes).
        let labels: [Int]?
        let balanced: Bool
        /// Per-image contexts `[n, L, D]` of a cross-attention model.
        let contexts: Tensor?
        /// What the conditioning depends on beyond the model and n (the contexts' digest), for the sample checkpoints.
        let conditioningKey: String?
        /// The distribution-metrics side; nil for a paired-only run.
        let distribution: Distribution?
        /// Why the distribution metrics are not computed (nil when they are).
        let pairedOnlyReason: String?
        /// Image indices shown in the grid: the first min(n/classes, 10) of each class, ascending (class models), or
        /// the first images.
        let gridIndices: [Int]
        let gridColumns: Int
        /// One name per grid row (class models), else nil.
        let rowNames: [String]?

        /// The conditioning of images `range` (global indices).
        func conditioning(_ range: Range<Int>) -> Conditioning {
            if let contexts { return .context(contexts.slice(batch: range)) }
            if let labels { return .classes(Array(labels[range])) }
            return .none
        }
    }

    func prepare() throws -> Context {
        let fp = PipelineModel(fp32: try model.load())
        let q = try quant.load()
        if let q { try q.checkPairs(with: fp); try q.attachDecoder(from: try model.load()) }
        let settings = sampler.settings(for: fp.scheduler)
        var contexts: Tensor? = nil, conditioningKey: String? = nil
        if let path = context {
            let c = try fp.loadContexts(file: path, count: n)
            q?.nullContext = fp.nullContext
            if settings.guidance != 1 && fp.nullContext == nil {
                throw ValidationError("guidance \(settings.guidance) needs 'null_context' [1, L, D] in \(path); add it or pass --guidance 1")
            }
            var bytes = c.array.withUnsafeBytes { Array($0) }
            if let nc = fp.nullContext { bytes += nc.array.withUnsafeBytes { Array($0) } }
            conditioningKey = "contexts=" + bytes.withUnsafeBytes { SafeTensorsDigest.mix64($0) }
            contexts = c
        } else if case .context = fp.network.conditioningKind {
            throw ValidationError("this model is conditioned on a cross-attention context: pass --context FILE ('context' [n or 1, L, D], 'null_context' [1, L, D] for guidance)")
        }
        let space = try fp.conditioningSpace(settings)
        var classes = 0, labels: [Int]? = nil
        if contexts == nil, case .classLabels = space.kind {
            classes = space.realClasses
            guard classes > 0 else {
                throw ValidationError("this model takes class labels but has no class table (identity class embedding): evaluate cannot choose labels for it")
            }
        }
        // Distribution metrics: only where the feature network measures what it was trained on. The evaluation
        // side is loaded before sampling so a missing dataset fails first.
        let image = fp.imageShape
        var reason: String? = nil
        var distribution: Distribution? = nil
        if metrics == .paired {
            reason = "--metrics paired"
        } else if classes == 0 {
            reason = "the model is \(contexts != nil ? "conditioned on cross-attention contexts" : "unconditional"); the feature network measures class-conditional 1×32×32 Fashion-MNIST samples"
        } else if image != [32, 32, 1] {
            reason = "the model's images are \(image[2])×\(image[0])×\(image[1]) (C×H×W); the feature network takes 1×32×32"
        }
        if reason == nil {
            let network = try FeatureNetwork(directory: try features ?? BundledModels.path("fmnist-features"))
            if network.classCount != classes {
                reason = "the model has \(classes) classes and the feature network \(network.classCount)"
            } else {
                let test = try FashionMNIST(split: .test, directory: dataset)
                try test.requireEveryClass(classes)
                distribution = Distribution(network: network, test: test)
            }
        }
        if let reason, metrics == .auto, features != nil {
            throw ValidationError("--features was given but distribution metrics do not apply: \(reason); drop it or pass --metrics paired")
        }
        // Labels: n/classes per class in class order; a paired-only run with n not a multiple of the classes (e.g.
        // a few images of a 1,000-class model) cycles through the classes instead.
        let balanced = classes > 0 && (distribution != nil || n % classes == 0)
        if balanced { labels = try balancedLabels(n: n, classes: classes) } else if classes > 0 { labels = (0..<n).map { $0 % classes } }
        let grid: [Int], columns: Int
        if balanced {
            let perClass = n / classes
            columns = min(perClass, 10)
            grid = (0..<classes).flatMap { c in (c * perClass)..<(c * perClass + columns) }
        } else {
            let shown = min(n, image[0] * image[1] >= 128 * 128 ? 16 : 64)
            columns = max(1, Int(Double(shown).squareRoot().rounded(.up)))
            grid = Array(0..<shown)
        }
        let rowNames = !balanced ? nil : FeatureNetwork.rowNames(distribution?.network.config.classes ?? bundledClassNames(fp), count: classes)
        return Context(fp: fp, q: q, settings: settings, conditional: space.isConditional, classes: classes, labels: labels, balanced: balanced,
                       contexts: contexts, conditioningKey: conditioningKey, distribution: distribution, pairedOnlyReason: reason,
                       gridIndices: grid, gridColumns: columns, rowNames: rowNames)
    }

    /// Fashion-MNIST class names for the bundled fmnist models (as `ptqd sample` names its rows), else nil.
    func bundledClassNames(_ m: PipelineModel) -> [String]? {
        guard m.modelFolderName.hasPrefix("fmnist-") else { return nil }
        return (try? BundledModels.path("fmnist-features")).flatMap { FeatureNetwork.classNames(directory: $0) }
    }

    func loadReference(_ cx: Context) throws -> ReferenceStatistics? {
        guard let d = cx.distribution else { return nil }
        let cache = referenceCache ?? URL(fileURLWithPath: out).appendingPathComponent("reference-stats.safetensors").path
        return try ReferenceStatistics.load(dataset: d.test, network: d.network, cachePath: cache)
    }

    /// The sampling runs of the FP and (if any) quantized model over `range`, with their checkpoint files: in --out,
    /// the FP one at --fp-cache if given (with `-shard-I-of-N` before the extension for a shard, so shards sharing a
    /// cache path do not overwrite each other).
    func runs(_ cx: Context, range: Range<Int>, spec: ShardSpec?) throws -> [(role: String, model: PipelineModel, run: ResumableSampling)] {
        let base = URL(fileURLWithPath: out)
        var fpPath = fpCache ?? base.appendingPathComponent("fp32-samples.safetensors").path
        if let spec, fpCache != nil {
            let u = URL(fileURLWithPath: fpPath)
            fpPath = u.deletingPathExtension().path + "-shard-\(spec.index)-of-\(spec.count)" + (u.pathExtension.isEmpty ? "" : "." + u.pathExtension)
        }
        var out: [(String, PipelineModel, ResumableSampling)] = [
            ("fp32", cx.fp, try ResumableSampling(model: cx.fp, settings: cx.settings, n: n, seed: seed, batch: batch, checkpointPath: fpPath, images: range,
                                        conditioningKey: cx.conditioningKey))]
        if let q = cx.q {
            out.append(("quantized", q, try ResumableSampling(model: q, settings: cx.settings, n: n, seed: seed, batch: batch,
                                                               checkpointPath: base.appendingPathComponent("quantized-samples.safetensors").path, images: range,
                                                               conditioningKey: cx.conditioningKey)))
        }
        return out
    }

    /// What the results depend on (see ``EvaluationPartial/Manifest/identity``).
    func identity(_ cx: Context, runs: [(role: String, model: PipelineModel, run: ResumableSampling)]) -> [String: String] {
        var id: [String: String] = [:]
        if let d = cx.distribution { id["features"] = d.network.identity; id["dataset"] = d.test.identity }
        for r in runs { id[r.role] = r.run.wholeRunKey }
        return id
    }

    func run() throws {
        runtime.apply()
        let cx = try prepare()
        let (spec, range) = try shardRange()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let runs = try runs(cx, range: range, spec: spec)
        if let spec {
            // A shard: its "finished" mark is partial.safetensors, written last.
            let partialPath = URL(fileURLWithPath: out).appendingPathComponent(EvaluationPartial.fileName).path
            if FileManager.default.fileExists(atPath: partialPath) { try FileManager.default.removeItem(atPath: partialPath) }
            let sampled = try sample(cx, runs: runs, range: range)
            var models: [EvaluationPartial.Model] = []
            for (r, (part, _)) in zip(runs, sampled.parts) {
                let s = r.model.network.sampleShape
                models.append(.init(role: r.role, label: r.model.label, samplesFile: URL(fileURLWithPath: r.run.checkpoint.path).standardizedFileURL.path,
                                    samplesKey: r.run.checkpoint.key, wholeRunKey: r.run.wholeRunKey, sampleShape: [s[2], s[0], s[1]],
                                    seconds: part.seconds, peakResidentBytes: part.peakResidentBytes))
            }
            var args = Invocation.arguments
            if args.first == "evaluate" { args.removeFirst() }
            let manifest = EvaluationPartial.Manifest(version: EvaluationPartial.formatVersion, shard: spec, lower: range.lowerBound, upper: range.upperBound,
                                                      n: n, seed: seed, identity: identity(cx, runs: runs), arguments: args,
                                                      workingDirectory: FileManager.default.currentDirectoryPath, models: models)
            try EvaluationPartial(manifest: manifest, parts: sampled.parts.map(\.0), psnr: sampled.paired?.psnr, ssim: sampled.paired?.ssim)
                .write(directory: out)
            print("shard \(spec): images \(range.lowerBound)..<\(range.upperBound) of \(n) sampled; wrote \(partialPath) (merge the \(spec.count) shard folders with `ptqd merge DIR… --out DIR`)")
            return
        }
        let reference = try loadReference(cx)
        let sampled = try sample(cx, runs: runs, range: range)
        try finish(cx, parts: sampled.parts.map(\.0), paired: sampled.paired, reference: reference)
    }

    /// `ptqd merge`: the report of the merged shards, written by the same code as an unsharded run. The command's
    /// options are the shards' (re-parsed from their manifest), --out the merge's.
    /// - Throws: when the files at the recorded paths are not those the shards used (nothing is written then).
    func runMerged(_ merged: EvaluationPartial.Merged) throws {
        runtime.apply()
        let cx = try prepare()
        let runs = try runs(cx, range: 0..<n, spec: nil)
        let now = identity(cx, runs: runs)
        for key in Set(now.keys).union(merged.manifest.identity.keys).sorted() where now[key] != merged.manifest.identity[key] {
            throw PipelineError("the \(key == "features" ? "feature network" : key == "dataset" ? "reference data" : key + " model or its settings") at the shards' recorded paths differ from what the shards used (files changed or missing since they ran); nothing written")
        }
        let samples = try runs.indices.map { try EvaluationPartial.samples(merged, model: $0) }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let reference = try loadReference(cx)
        // The merged samples under the whole run's key: the same files an unsharded run leaves in --out.
        for (i, r) in runs.enumerated() {
            let path = URL(fileURLWithPath: out).appendingPathComponent(r.role == "fp32" ? "fp32-samples.safetensors" : "quantized-samples.safetensors").path
            try SampleCheckpoint(path: path, key: r.run.wholeRunKey, imageShape: r.run.checkpoint.imageShape).save(samples[i], seconds: merged.parts[i].seconds)
        }
        let paired = try merged.psnr.map { try PairedMetrics(psnr: $0, ssim: merged.ssim ?? []) }
        let count = merged.directories.count
        try finish(cx, parts: merged.parts, paired: paired, reference: reference,
                   shardNote: "Merged from \(count) shard\(count > 1 ? "s" : "") (\(merged.directories.joined(separator: ", "))): wall time is the sum of the shards' sampling times (compute time, not elapsed time), images/s is per process, peak RSS the largest shard's.")
    }

    /// Samples `range` with each run and evaluates the feature network on the images (when the run computes
    /// distribution metrics); pairs quantized with FP.
    func sample(_ cx: Context, runs: [(role: String, model: PipelineModel, run: ResumableSampling)], range: Range<Int>)
        throws -> (parts: [(EvaluationPart, Tensor)], paired: PairedMetrics?) {
        var parts: [(EvaluationPart, Tensor)] = []
        let grid = cx.gridIndices.filter { range.contains($0) }.map { $0 - range.lowerBound }
        for r in runs {
            let s = try generate(r.model, cx, run: r.run)
            // One pass of the feature network over the clamped images; the metrics-by-n prefixes reuse its features.
            let seen = try cx.distribution.map { try $0.network.evaluate(DistributionMetrics.dataRange(s.images)) }
            parts.append((EvaluationPart(features: seen?.features, logits: seen?.logits, gridImages: grid.isEmpty ? nil : s.images.gather(batch: grid),
                                         seconds: s.seconds, peakResidentBytes: s.peakResidentBytes), s.images))
        }
        let paired = parts.count == 2 ? try PairedMetrics.evaluate(reference: parts[0].1, test: parts[1].1) : nil
        return (parts, paired)
    }

    /// Reports, grid, plots and the HTML page of the whole run from its parts (FP first).
    func finish(_ cx: Context, parts: [EvaluationPart], paired: PairedMetrics?, reference: ReferenceStatistics?, shardNote: String? = nil) throws {
        let (fp, q, settings) = (cx.fp, cx.q, cx.settings)
        let base = URL(fileURLWithPath: out)
        var fpReport = try report(fp, cx, part: parts[0], reference: reference, paired: nil)
        if let shardNote { fpReport.notes.append(shardNote) }
        var main = fpReport
        if let q {
            main = try report(q, cx, part: parts[1], reference: reference, paired: paired)
            if let shardNote { main.notes.append(shardNote) }
            let m = fpReport.metrics
            main.notes.append(cx.distribution == nil
                ? String(format: "fp32 on the same noise and conditioning: %.2f images/s", fpReport.cost.imagesPerSecond ?? .nan)
                : String(format: "fp32 on the same noise and labels: FID %.3f, IS %.3f, precision %.3f, recall %.3f, %.2f images/s",
                         m.fid ?? .nan, m.inceptionScoreMean ?? .nan, m.precision ?? .nan, m.recall ?? .nan, fpReport.cost.imagesPerSecond ?? .nan))
            try fpReport.writeJSON(to: base.appendingPathComponent("report-fp32.json").path)
        }
        try main.writeJSON(to: base.appendingPathComponent("report.json").path)
        try main.writeMarkdown(to: base.appendingPathComponent("report.md").path)
        // Grid: one named row per class (up to 10 images each) or the first images; FP | quantized under headings.
        func gridImages(_ p: EvaluationPart) throws -> Tensor {
            guard let g = p.gridImages, g.shape[0] == cx.gridIndices.count else { throw ValidationError("the grid images are incomplete") }
            return g
        }
        var panels = [ImageGrid.Panel(heading: fp.displayName, images: try gridImages(parts[0]))]
        if let q { panels.append(.init(heading: q.displayName, images: try gridImages(parts[1]))) }
        let gridImage = try ImageGrid(columns: cx.gridColumns).figure(panels: panels, rowNames: cx.rowNames)
        let gridPNG = try PNGCodec.encode(gridImage, nameForErrors: base.appendingPathComponent("grid.png").path)
        try AtomicFile.write(gridPNG, to: base.appendingPathComponent("grid.png").path)
        // FID against n, both models in one plot.
        var fidPlot: LinePlot? = nil
        if let rows = fpReport.metricsByN, rows.count >= 2 {
            var series = [LinePlot.Series(name: fp.displayName, x: rows.map { Double($0.count) }, y: rows.map(\.fid))]
            if let q, let qr = main.metricsByN {
                series.append(.init(name: q.displayName, x: qr.map { Double($0.count) }, y: qr.map(\.fid)))
            }
            let plot = LinePlot(title: "FID against the number of samples", subtitle: "setting \(main.setting.name): \(settings.summary); class-balanced prefixes of the same samples",
                                xLabel: "n (generated images, log scale)", yLabel: "FID vs Fashion-MNIST test set (lower is better)",
                                logX: true, series: series)
            try plot.write(to: base.appendingPathComponent("fid-vs-n.png").path)
            fidPlot = plot
        }
        try writeHTML(to: base.appendingPathComponent("report.html").path, cx, fpReport: fpReport, main: main, gridPNG: gridPNG, fidPlot: fidPlot)
        print(main.markdown())
        print("wrote \(base.path)/{report.json, report.md, report.html, grid.png\(q != nil ? ", report-fp32.json" : "")\(fidPlot != nil ? ", fid-vs-n.{png,svg,json}" : "")}")
    }

    /// report.html: settings, metrics, the grid, FID against n, the per-step correction table, the command.
    func writeHTML(to path: String, _ cx: Context, fpReport: EvaluationReport, main: EvaluationReport, gridPNG: [UInt8], fidPlot: LinePlot?) throws {
        let (fp, q, settings) = (cx.fp, cx.q, cx.settings)
        let name = q?.displayName ?? fp.displayName
        var page = HTMLReport(title: "ptqd evaluate: \(name), setting \(main.setting.name)", generator: "ptqd \(ptqdVersion)")
        page.heading("Reproduce")
        page.code(Invocation.command)
        page.paragraph("Run from \(FileManager.default.currentDirectoryPath).")
        page.heading("Settings")
        var pairs: [(String, String)] = [("model", fp.path)]
        if let q { pairs.append(("quantized file", q.path)); pairs.append(("quantized model", q.displayName)) }
        pairs += [("setting", main.setting.name), ("sampler", settings.summary + (cx.conditional ? "" : " (unconditional: guidance does not apply)")),
                  (cx.balanced ? "n (images, equal per class)" : cx.labels != nil ? "n (images; image i has class i mod \(cx.classes))" : "n (images)", "\(n)"), ("seed", "\(seed)"),
                  ("threads", "\(runtime.threads)")]
        if let c = context { pairs.append(("contexts", c)) }
        pairs.append(("metrics", cx.pairedOnlyReason.map { "paired and cost only (\($0))" } ?? "distribution, paired and cost"))
        if let r = main.reference { pairs.append(("reference", r)) }
        if let f = main.featureNetwork { pairs.append(("feature network", f)) }
        page.keyValues(pairs)
        page.heading("Metrics")
        var cols = [(name: fp.displayName, report: fpReport)]
        if let q { cols.append((q.displayName, main)) }
        let t = EvaluationReport.metricsTable(cols)
        page.table(header: t.header, rows: t.rows)
        for (label, r) in cols { if let byN = r.metricsByNTable { page.table(header: byN.header, rows: byN.rows, caption: "\(label): metrics on class-balanced prefixes") } }
        page.heading("Samples")
        let layout = cx.balanced ? "one row per class" : "the first \(cx.gridIndices.count) images"
        page.image(png: gridPNG, alt: "generated samples, \(layout)",
                   caption: q == nil ? "fp32 samples, \(layout)." : "fp32 (left) and \(q!.displayName) (right) from the same noise and conditioning, \(layout).")
        if let p = fidPlot { page.heading("FID against n"); try page.plot(p, id: "fid") }
        if let q, let doc = q.correction {
            let names = q.quantized?.info.variants.map(\.name) ?? []
            page.heading("PTQD statistics per step")
            page.paragraph("Measured on \(doc.statistics.trajectories) FP trajectories at \(doc.settings.summary). Correction applied here: \(q.correctionSettings.correctsPrediction || q.correctionSettings.calibratesVariance ? q.correctionSettings.method.rawValue + " with " + q.correctionSettings.components.description : "none").")
            try page.plot(CorrectionFigures.snr(doc, variantNames: names), id: "snr")
            try page.plot(CorrectionFigures.kSigma(doc), id: "ksigma")
            let st = CorrectionFigures.stepTable(doc, variantNames: names)
            page.table(header: st.header, rows: st.rows, caption: "k_t, σ_q and SNR per sampling step (step 0 = first, most noisy)")
        }
        page.heading("Notes")
        page.list(main.notes)
        try page.write(to: path)
    }

    /// Distribution metrics (when the run computes them: by n, with the FID-vs-n plot), paired metrics and cost for
    /// one model's samples.
    func report(_ r: PipelineModel, _ cx: Context, part seen: EvaluationPart, reference: ReferenceStatistics?, paired: PairedMetrics?) throws -> EvaluationReport {
        var dist: DistributionMetrics? = nil, byN: [DistributionMetrics]? = nil
        if cx.distribution != nil, let reference, let labels = cx.labels, let features = seen.features, let logits = seen.logits {
            let all = try DistributionMetrics.evaluate(features: features, logits: logits, reference: reference, labels: labels)
            // Metrics against n: class-balanced prefixes (labels are ordered by class, so take the first k of each class).
            let perClass = n / cx.classes
            var rows: [DistributionMetrics] = []
            for fraction in [8, 4, 2] where perClass / fraction >= 2 {
                let k = perClass / fraction
                let idx = (0..<cx.classes).flatMap { c in (c * perClass)..<(c * perClass + k) }
                rows.append(try DistributionMetrics.evaluate(features: features.gather(batch: idx), logits: logits.gather(batch: idx),
                                                             reference: reference, labels: idx.map { labels[$0] }))
            }
            rows.append(all)
            dist = all; byN = rows
        }
        let costs = try r.costs()
        let overridden = sampler.overridden
        var report = EvaluationReport(
            model: r.label + " (" + r.path + ")",
            setting: .init(name: sampler.resolvedSetting().rawValue + (overridden ? " (overridden)" : ""), sampler: cx.settings.kind.rawValue,
                           steps: cx.settings.steps, eta: Double(cx.settings.eta), guidanceScale: cx.conditional ? Double(cx.settings.guidance) : 1),
            n: n, seed: seed,
            metrics: .init(fid: dist?.fid, inceptionScoreMean: dist?.inceptionScoreMean, inceptionScoreStd: dist?.inceptionScoreStd,
                           precision: dist?.precision, recall: dist?.recall, psnr: paired?.psnrSummary, ssim: paired?.ssimSummary),
            cost: .init(wallTimeSeconds: seen.seconds, secondsPerImage: seen.seconds / Double(n),
                        imagesPerSecond: Double(n) / seen.seconds, peakResidentBytes: seen.peakResidentBytes,
                        bopsPerForward: try r.bopsPerForward(), modelFileBytes: r.fileBytes, threads: runtime.threads),
            reference: cx.distribution.map { d in "Fashion-MNIST test set (\(d.test.count) images, \(reference?.identity ?? "?"))" },
            featureNetwork: cx.distribution.map { d in "\(d.network.directory): \(d.network.identity) (\(d.network.featureDim)-d features)" },
            notes: [String(format: "BOPs = Σ MACs × b_w × b_a per UNet forward for one image (%.3f GMAC; fp32 layers and attention matmuls count 32×32)", Double(costs.totalMACs) / 1e9)
                    + (cx.conditional ? "; guidance runs the UNet on 2 rows per image and step." : "."),
                    ])
        report.metricsByN = byN
        if let reason = cx.pairedOnlyReason {
            report.notes.append("Distribution metrics (FID, IS, precision/recall) not computed: \(reason).")
        }
        if cx.labels != nil && !cx.balanced {
            report.notes.append("Labels: n = \(n) is not a multiple of the \(cx.classes) classes, so image i has class i mod \(cx.classes).")
        }
        if let dist {
            report.notes.append("Classifier agreement with the requested labels: \(String(format: "%.1f%%", 100 * (dist.labelAccuracy ?? 0))).")
            report.notes.append("The table by n uses class-balanced prefixes of the same samples (nested, not independent draws): it shows how much the metrics move with n.")
            if n < 20 {
                report.notes.append("IS uses 10 splits: with fewer than 2 images per split (n < 20) it is 1 by construction and says nothing.")
            }
        }
        if let doc = r.correction {
            let cs = r.correctionSettings
            let parts = [cs.components.contains(.cnc) ? "CNC" : nil, cs.components.contains(.bias) ? "BC" : nil, cs.components.contains(.vsc) ? "VSC" : nil].compactMap { $0 }
            report.notes.append("Noise correction: \(parts.isEmpty ? "off" : cs.method.rawValue + " " + parts.joined(separator: "+") + " (VSC " + cs.vscMode.rawValue + ")"), statistics from \(doc.statistics.trajectories) FP trajectories\(doc.plan.map { "; mixed plan switches at step \($0.switchIndex)" } ?? "").")
            if cs.components.contains(.vsc), let sch = try? Sampler.makeScheduler(cx.settings, config: r.scheduler), !sch.varianceCalibrationApplies {
                report.notes.append(cx.settings.kind == .dpmSolverPlusPlus
                    ? "DPM-Solver++ is a deterministic ODE solver: it injects no noise, so variance-schedule calibration does not apply (CNC and bias correction act on each model output before the solver uses it)."
                    : "At eta 0 DDIM injects no noise: variance-schedule calibration is inactive.")
            }
        }
        if let paired {
            let decoded = r.decoder != nil ? "decoded " : ""
            report.notes.append("PSNR/SSIM: each \(decoded)image against the fp32 \(decoded)sample from the same noise and \(cx.labels != nil ? "label" : "conditioning"), clamped to [-1, 1] and mapped to [0, 1] once.")
            if paired.ssimSummary == nil {
                let s = r.imageShape
                report.notes.append("SSIM not measured: the images are \(s[0])×\(s[1]), smaller than its 11×11 window.")
            }
            report.notes.append("Peak RSS is this process's high-water mark while the model sampled, reset after freeing cached buffers; both models' weights\(cx.distribution != nil ? " and the reference data" : "") stay loaded and count.")
        } else if r.quantized == nil && cx.q == nil {
            report.notes.append("Paired metrics (PSNR/SSIM against fp32) need a quantized model: pass --quantized FILE.")
        }
        return report
    }

    /// Samples the run's images (all n or a shard's) of `r`, resumably (`ResumableSampling`); stops with exit code 75
    /// once `--time-budget` is spent. Latent pipelines' samples are decoded (the decoding time counts).
    func generate(_ r: PipelineModel, _ cx: Context, run: ResumableSampling) throws -> GeneratedSamples {
        var progress: ProgressReporter? = nil
        var last = 0
        do {
            let s = try run.run(conditioning: { cx.conditioning($0) }, timeBudget: timeBudget.map { $0 * 60 },
                               note: { if !quiet { note("evaluate: " + $0) } }, progress: { done, total in
                if progress == nil { progress = ProgressReporter(label: "evaluate: sampling \(r.label)", total: total, unit: "img·steps", enabled: !quiet) }
                progress!.advance(done - last); last = done
            })
            guard r.decoder != nil else { return s }
            // Latent pipeline: decode (its time counts toward the end-to-end cost).
            let t0 = Date()
            let images = try r.decode(s.images)
            guard images.isFinite else { throw ValidationError("decoding produced NaN/Inf") }
            return GeneratedSamples(images: images, seconds: s.seconds + Date().timeIntervalSince(t0), peakResidentBytes: s.peakResidentBytes)
        } catch let e as ResumableSampling.OutOfTime {
            note("evaluate: --time-budget reached at image \(e.done)/\(e.total) of \(r.label); samples saved to \(e.path); run the same command again to continue")
            throw ExitCode(75)
        }
    }
}
