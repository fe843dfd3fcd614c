//===--- QuantizeStatistics.swift - `ptqd quantize --quantized FILE [--stats-shard I/N]`, `ptqd merge-stats` ---===//

import ArgumentParser
import Correction
import Diffusion
import Foundation
import Pipeline
import Quantization
import SafeTensors

/// Stage 3 (statistics, tables, mixed plan) on an existing quantized file: the whole pass, one shard of it, or the
/// merge of the shards. All three write (or lead to) the same file.
extension Quantize {
    /// `--stats-shard` parsed and its range of the --stats-trajectories.
    func statsShardRange() throws -> (spec: ShardSpec, range: Range<Int>)? {
        guard let text = statsShard else { return nil }
        do {
            let spec = try ShardSpec(parsing: text)
            guard spec.count <= statsTrajectories else {
                throw PipelineError("\(spec.count) shards for \(statsTrajectories) statistics trajectories: use at most --stats-trajectories shards")
            }
            return (spec, try spec.range(n: statsTrajectories))
        } catch let e as PipelineError {
            throw ValidationError("--stats-shard \(text): \(e.description.replacingOccurrences(of: "--shard", with: "--stats-shard"))")
        }
    }

    /// What stage 3 on `--quantized` works with: the FP model, the file, its variants' networks and precisions.
    struct StatisticsInputs {
        let source: DiffusionModel
        let file: QuantizedModel
        let settings: SamplerSettings
        let contexts: CalibrationContexts?
        let networks: [Denoiser]
        let precisions: [[String: LayerPrecision]]
        /// See `StatisticsPartial.Manifest.identity`.
        let identity: [String: String]
    }

    /// Opens --model and --quantized and checks they fit --correct / --mixed.
    func statisticsInputs(_ path: String) throws -> StatisticsInputs {
        let source = try model.load()
        let file = try QuantizedModel(path: path)
        let sourceDigest = try SafeTensorsFile(path: source.weightsPath).contentDigest()
        if let d = file.info.sourceWeightsDigest, d != sourceDigest {
            throw ValidationError("\(path) was quantized from other weights (\(d)) than \(source.directory) (\(sourceDigest)); pass its source model with --model")
        }
        let names = file.info.variants.map(\.name)
        switch mixed {
        case nil where names.count > 1:
            throw ValidationError("\(path) holds \(names.count) variants (\(names.joined(separator: ", "))): measure them for step-aware mixed precision with --mixed \(names[0]):\(names[1]) or --mixed auto")
        case let .pair(cheap, strong)? where names.count < 2 || names[0] != cheap.description || names[1] != strong.description:
            throw ValidationError("--mixed \(cheap):\(strong) needs a file whose variants are \(cheap), \(strong) in that order; \(path) holds \(names.joined(separator: ", "))")
        case .auto? where names.count < 2:
            throw ValidationError("--mixed auto needs a file with at least two variants; \(path) holds \(names.joined(separator: ", "))")
        default: break
        }
        let contexts = try calibContext.map { try CalibrationContexts(file: $0, network: source.network) }
        if case .context = source.network.conditioningKind, contexts == nil {
            throw ValidationError("\(source.directory) is conditioned on a cross-attention context: pass --calib-context FILE")
        }
        let settings = sampler.settings(for: source.scheduler)
        let networks = try names.indices.map { try file.makeNetwork(variant: $0, mode: .integer) }
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        func text<T: Encodable>(_ v: T) throws -> String { String(decoding: try enc.encode(v), as: UTF8.self) }
        let mo = measurementOptions
        let identity = [
            "quantized": try SafeTensorsFile(path: path).contentDigest(),
            "model": "\(sourceDigest)|\(try String(contentsOfFile: source.networkConfigPath, encoding: .utf8).hashValueText)|\(String(describing: source.scheduler).hashValueText)",
            "settings": "\(try text(settings))|batch=\(mo.statistics.batch)",
            "fit": "correct=\(correct.rawValue)|bias=\(biasMode.rawValue)|clampK=\(mo.clampK)|mixed=\(mixed.map { "\($0)" } ?? "none")|cheap=\(cheapFraction)",
            "context": try calibContext.map { try SafeTensorsFile(path: $0).contentDigest() } ?? "none",
        ]
        return StatisticsInputs(source: source, file: file, settings: settings, contexts: contexts, networks: networks,
                                precisions: names.indices.map { file.costPrecisions(variant: $0) }, identity: identity)
    }

    func conditioning(_ inputs: StatisticsInputs) -> ((Range<Int>) throws -> Conditioning)? {
        inputs.contexts.map { c in { try c.rows($0) } }
    }

    /// `--quantized FILE`: the whole statistics pass, or with `--stats-shard` one shard of it.
    func runStatistics(on path: String) throws {
        runtime.apply()
        let inputs = try statisticsInputs(path)
        let steps = try Sampler.makeScheduler(inputs.settings, config: inputs.source.scheduler).timesteps.count
        let mo = measurementOptions
        guard let (spec, range) = try statsShardRange() else {
            let started = Date()
            let progress = ProgressReporter(label: "quantize: noise statistics of \(path) (\(inputs.networks.count) variant\(inputs.networks.count > 1 ? "s" : ""))",
                                            total: statsTrajectories * steps, unit: "img·steps", enabled: !quiet)
            var last = 0
            let stats = try CorrectionMeasurement.collect(fp: inputs.source.network, scheduler: inputs.source.scheduler, settings: inputs.settings,
                                                          variants: inputs.networks, options: mo.statistics, conditioning: conditioning(inputs),
                                                          nullContext: inputs.contexts?.null) { done, _ in
                progress.advance(done - last); last = done
            }
            try writeWithStatistics(inputs, statistics: stats, seconds: Date().timeIntervalSince(started), started: started)
            return
        }
        // One shard: trajectories `range`, every sample's sums kept, checkpointed in --out.
        var args = Invocation.arguments
        if args.first == "quantize" { args.removeFirst() }
        let manifest = StatisticsPartial.Manifest(shard: spec, lower: range.lowerBound, upper: range.upperBound, done: range.lowerBound,
                                                  trajectories: statsTrajectories, seed: seed,
                                                  timesteps: try Sampler.makeScheduler(inputs.settings, config: inputs.source.scheduler).timesteps,
                                                  channels: inputs.source.network.sampleShape[2], variants: inputs.file.info.variants.map(\.name),
                                                  identity: inputs.identity, arguments: args,
                                                  workingDirectory: FileManager.default.currentDirectoryPath, seconds: 0)
        let progress = ProgressReporter(label: "quantize --stats-shard \(spec): noise statistics", total: range.count * steps,
                                        unit: "img·steps", enabled: !quiet)
        var last = 0
        let partial: StatisticsPartial
        do {
            partial = try StatisticsPartial.run(directory: out, manifest: manifest, batch: mo.statistics.batch, timeBudget: timeBudget.map { $0 * 60 }, collect: { r in
                try CorrectionMeasurement.collect(fp: inputs.source.network, scheduler: inputs.source.scheduler, settings: inputs.settings,
                                                  variants: inputs.networks, options: mo.statistics, conditioning: conditioning(inputs),
                                                  nullContext: inputs.contexts?.null, images: r, recordSamples: true)
            }, note: { if !quiet { note("quantize: \($0)") } }, progress: { done, _ in
                progress.advance((done - last) * steps); last = done
            })
        } catch let e as StatisticsPartial.OutOfTime {
            note("quantize --stats-shard \(spec): \(e.description)")
            throw ExitCode(75)
        }
        let m = partial.manifest
        print("statistics shard \(spec): trajectories \(m.lower)..<\(m.upper) of \(m.trajectories) measured in \(String(format: "%.1f", m.seconds)) s; wrote \(StatisticsPartial.path(directory: out)) (merge the \(spec.count) shard folders with `ptqd merge-stats DIR… --out FILE.safetensors`)")
    }

    /// `ptqd merge-stats`: the file of the merged shards. The command's options are the shards' (re-parsed from their
    /// manifest), --out the merge's.
    /// - Throws: when the model or quantized file at the recorded paths are not those the shards used (nothing is written then).
    func runMergedStatistics(_ merged: StatisticsPartial.Merged) throws {
        runtime.apply()
        guard let path = quantized else { throw PipelineError("\(merged.directories[0]): the recorded command has no --quantized FILE") }
        let inputs = try statisticsInputs(path)
        let names = ["quantized": "quantized file \(path)", "model": "FP model", "settings": "sampler settings",
                     "fit": "fit options", "context": "calibration contexts"]
        for key in Set(inputs.identity.keys).union(merged.manifest.identity.keys).sorted() where inputs.identity[key] != merged.manifest.identity[key] {
            throw PipelineError("the \(names[key] ?? key) at the shards' recorded paths differs from what the shards used (files changed or missing since they ran); nothing written")
        }
        try writeWithStatistics(inputs, statistics: merged.statistics, seconds: merged.seconds, started: Date(),
                                note: "merged from \(merged.directories.count) statistics shard\(merged.directories.count > 1 ? "s" : "")")
    }

    /// Fits the tables and the mixed plan (as one `ptqd quantize` does) and writes --quantized's file with them to --out.
    func writeWithStatistics(_ inputs: StatisticsInputs, statistics: [NoiseStatistics], seconds: Double, started: Date, note extra: String? = nil) throws {
        let (doc, keep) = try CorrectionMeasurement.document(statistics: statistics, fp: inputs.source.network, scheduler: inputs.source.scheduler,
                                                             settings: inputs.settings, precisions: inputs.precisions,
                                                             options: measurementOptions, seconds: seconds)
        var info = inputs.file.info
        info.variants = keep.map { info.variants[$0] }
        info.attachments[CorrectionDocument.attachmentName] = try doc.json()
        try QuantizedModel.write(to: out, info: info, source: inputs.source, variants: keep.map { inputs.file.variants[$0] },
                                 decoder: inputs.file.decoderLayers)
        report(doc, names: info.variants.map(\.name))
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        print(String(format: "statistics of %@ over %d trajectories (%@%.1f s of statistics); wrote %@ (%.2f MB) in %.1f s",
                     info.variants.map(\.name).joined(separator: ", "), statsTrajectories, extra.map { "\($0), " } ?? "", seconds, out,
                     Double(size) / 1e6, Date().timeIntervalSince(started)))
    }
}

private extension String {
    /// A short stable digest of the text (for identities).
    var hashValueText: String { Array(utf8).withUnsafeBytes { SafeTensorsDigest.mix64($0) } }
}

struct MergeStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge-stats",
        abstract: "Merge the folders of `ptqd quantize --quantized FILE --stats-shard I/N` into the quantized file one statistics pass writes.",
        discussion: """
        Checks that the folders are the N shards of one statistics pass (same quantized file and FP model digests, \
        sampler settings, --stats-trajectories, seed, batch, correction and mixed-precision options; every index 0..<N \
        once; each finished), adds every trajectory's Float64 sums again in trajectory order — the additions one pass \
        makes, so the tables are equal bit for bit — fits the correction tables and the mixed plan, and writes \
        --quantized's file with them to --out. The model and quantized file are re-opened at the paths the shards \
        recorded (relative paths from the shards' working directory) and must still have the digests the shards used. \
        On any error nothing is written.
        """)

    @Argument(help: ArgumentHelp("the shard folders (the --out of each `quantize --stats-shard I/N`), in any order", valueName: "dir"))
    var shards: [String]
    @Option(help: "output .safetensors file: the quantized file with the correction tables") var out: String
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard out.hasSuffix(".safetensors") else { throw ValidationError("--out must name a .safetensors file, got '\(out)'") }
    }

    func run() throws {
        let merged = try StatisticsPartial.merge(directories: shards.map(ShardCommand.absolute))
        var command = try ShardCommand.reparse(Quantize.self, merged.manifest.arguments, recordedIn: merged.directories[0], name: "quantize")
        command.out = ShardCommand.absolute(out)
        command.statsShard = nil
        command.timeBudget = nil
        command.quiet = command.quiet || quiet
        try ShardCommand.inWorkingDirectory(merged.manifest.workingDirectory) { try command.runMergedStatistics(merged) }
    }
}
