//===--- StatisticsShards.swift - sharded PTQD statistics: partials, resume, the exact merge ---===//
//
// `ptqd quantize --quantized FILE --stats-shard I/N` runs only trajectories `range(I, N)` of the statistics pass's
// `--stats-trajectories` (same noise and labels as the whole pass: both come from the trajectory index) and keeps
// every sample's sums (`NoiseStatistics.SampleSums`, 6 + 2C Float64s per trajectory, step and variant) instead of
// only the running totals. `ptqd merge-stats` adds those sums again, step by step, in trajectory order — exactly the
// additions the unsharded pass performs — so the merged `NoiseStatistics`, and the tables fitted from them, are
// bit-identical to one pass (adding per-shard Float64 totals would only be equal up to summation-order rounding).
//
// The partial doubles as the shard's checkpoint: it holds trajectories `lower..<done` and is rewritten atomically
// (at most every 30 s, at a time budget and at the end); the shard is finished when done == upper.
//
//===----------------------------------------------------------------------===//

import Correction
import Foundation
import SafeTensors

/// The statistics of one shard so far, as written to `DIR/statistics-partial.safetensors`.
///
/// File (safetensors): metadata `kind` = `ptqd-statistics-partial`, `manifest` = the JSON of ``Manifest``; per
/// variant v a tensor `v<v>.samples` F64 `[steps, m, 6 + 2C]` (m = done − lower trajectories, in trajectory order;
/// a row is `NoiseStatistics.SampleSums.values`). Size: steps × m × (6 + 2C) × 8 bytes per variant (setting B,
/// 1,024 trajectories, C = 4: 11.5 MB).
public struct StatisticsPartial {
    public static let kind = "ptqd-statistics-partial"
    public static let formatVersion = 1
    public static let fileName = "statistics-partial.safetensors"

    public struct Manifest: Codable, Equatable {
        public var version: Int
        public var shard: ShardSpec
        /// Trajectories `lower..<upper` of `trajectories` are this shard's; `lower..<done` are in the file.
        public var lower: Int
        public var upper: Int
        public var done: Int
        public var trajectories: Int
        public var seed: UInt64
        /// The DDPM timesteps (rows of the tables), the channel count C and the variant names of the quantized file.
        public var timesteps: [Int]
        public var channels: Int
        public var variants: [String]
        /// What the statistics depend on, by name: `quantized` (the quantized file's content digest), `model` (the FP
        /// weights' content digest and configs), `settings` (sampler settings, statistics batch), `fit` (correction,
        /// bias mode, k clamp, mixed precision), `context` (the calibration contexts' digest, or none). Shards of one
        /// pass have equal identities.
        public var identity: [String: String]
        /// The `ptqd` arguments of the shard's command (after the executable) and its working directory: the merge
        /// re-opens the model and the quantized file from them.
        public var arguments: [String]
        public var workingDirectory: String
        /// Wall seconds of the statistics pass, summed over the runs that made the file.
        public var seconds: Double

        public init(version: Int = StatisticsPartial.formatVersion, shard: ShardSpec, lower: Int, upper: Int, done: Int, trajectories: Int,
                    seed: UInt64, timesteps: [Int], channels: Int, variants: [String], identity: [String: String], arguments: [String],
                    workingDirectory: String, seconds: Double) {
            self.version = version; self.shard = shard; self.lower = lower; self.upper = upper; self.done = done
            self.trajectories = trajectories; self.seed = seed; self.timesteps = timesteps; self.channels = channels
            self.variants = variants; self.identity = identity; self.arguments = arguments
            self.workingDirectory = workingDirectory; self.seconds = seconds
        }

        public var finished: Bool { done == upper }

        /// Whether `other` is a (partial or finished) file of the same shard of the same pass: everything but
        /// `done`, `seconds` and the exact command line (e.g. `--quiet`) agrees.
        public func sameShard(as other: Manifest) -> Bool {
            version == other.version && shard == other.shard && lower == other.lower && upper == other.upper
                && trajectories == other.trajectories && seed == other.seed && timesteps == other.timesteps
                && channels == other.channels && variants == other.variants && identity == other.identity
        }
    }

    public var manifest: Manifest
    /// `samples[v][step]`: the sums of trajectories `lower..<done`, in order, of variant v at loop position `step`.
    public var samples: [[[NoiseStatistics.SampleSums]]]

    public init(manifest: Manifest, samples: [[[NoiseStatistics.SampleSums]]]) {
        self.manifest = manifest; self.samples = samples
    }

    /// An empty partial (done = lower) for `manifest`'s shard.
    public init(starting manifest: Manifest) {
        var m = manifest
        m.done = m.lower; m.seconds = 0
        self.init(manifest: m, samples: m.variants.map { _ in m.timesteps.map { _ in [] } })
    }

    /// Appends the statistics of the next trajectories `manifest.done..<manifest.done + count` (one per variant,
    /// collected with `recordSamples`).
    public mutating func append(_ stats: [NoiseStatistics], count: Int) throws {
        guard stats.count == manifest.variants.count else { throw PipelineError("statistics for \(stats.count) variants, the shard has \(manifest.variants.count)") }
        for (v, s) in stats.enumerated() {
            guard s.recordsSamples, s.timesteps == manifest.timesteps, s.channels == manifest.channels else {
                throw PipelineError("statistics of another schedule or channel count than the shard's")
            }
            for i in s.timesteps.indices {
                let rows = s.samples(at: i)
                guard rows.count == count else { throw PipelineError("step \(i) has \(rows.count) samples for \(count) trajectories") }
                samples[v][i].append(contentsOf: rows)
            }
        }
        manifest.done += count
    }

    public static func path(directory: String) -> String { URL(fileURLWithPath: directory).appendingPathComponent(fileName).path }

    /// Writes `DIR/statistics-partial.safetensors` atomically (a kill leaves the previous file intact).
    public func write(directory: String) throws {
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        var w = SafeTensorsWriter(metadata: ["kind": Self.kind, "manifest": String(decoding: try enc.encode(manifest), as: UTF8.self)])
        let width = NoiseStatistics.SampleSums.width(channels: manifest.channels)
        let m = manifest.done - manifest.lower
        for (v, steps) in samples.enumerated() {
            var flat: [Double] = []; flat.reserveCapacity(steps.count * m * width)
            for rows in steps { for r in rows { flat.append(contentsOf: r.values) } }
            try w.add("v\(v).samples", dtype: .f64, shape: [steps.count, m, width], bytes: f64Bytes(flat))
        }
        try w.write(to: Self.path(directory: directory))
    }

    /// Reads `DIR/statistics-partial.safetensors` (finished or not).
    /// - Throws: one-line `PipelineError`s naming `directory`: no such directory, no partial file (a shard that has
    ///   not saved yet), not a statistics partial, another format version, inconsistent shapes or values.
    public static func load(directory: String) throws -> StatisticsPartial {
        let path = path(directory: directory)
        guard FileManager.default.fileExists(atPath: path) else {
            guard FileManager.default.fileExists(atPath: directory) else { throw PipelineError("\(directory): no such statistics shard directory") }
            if FileManager.default.fileExists(atPath: URL(fileURLWithPath: directory).appendingPathComponent(EvaluationPartial.fileName).path) {
                throw PipelineError("\(directory) is an evaluation shard (`evaluate --shard`): merge it with `ptqd merge`")
            }
            throw PipelineError("\(directory): unfinished statistics shard (no \(fileName) yet); run its `ptqd quantize --stats-shard` command again to finish it")
        }
        func bad(_ why: String) -> PipelineError { PipelineError("\(directory): not a usable statistics shard: \(why)") }
        let f: SafeTensorsFile
        do { f = try SafeTensorsFile(path: path) } catch { throw bad("\(error)") }
        guard f.metadata["kind"] == kind, let text = f.metadata["manifest"] else { throw bad("\(fileName) is not a ptqd statistics partial") }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: Data(text.utf8)) } catch { throw bad("unreadable manifest") }
        guard m.version == formatVersion else { throw bad("format version \(m.version); this ptqd reads version \(formatVersion)") }
        guard (try? m.shard.range(n: m.trajectories)) == m.lower..<m.upper, m.done >= m.lower, m.done <= m.upper else {
            throw bad("range \(m.lower)..<\(m.upper) (done \(m.done)) is not shard \(m.shard) of \(m.trajectories) trajectories")
        }
        guard m.channels >= 1, !m.timesteps.isEmpty, !m.variants.isEmpty else { throw bad("no steps, channels or variants") }
        let width = NoiseStatistics.SampleSums.width(channels: m.channels), rows = m.done - m.lower
        var samples: [[[NoiseStatistics.SampleSums]]] = []
        for v in m.variants.indices {
            let name = "v\(v).samples"
            let info: SafeTensorInfo
            do { info = try f.info(name) } catch { throw bad("no tensor \(name)") }
            guard info.dtype == .f64, info.shape == [m.timesteps.count, rows, width] else {
                throw bad("\(name) must be F64 [\(m.timesteps.count), \(rows), \(width)], is \(info.dtype.rawValue) \(info.shape)")
            }
            let flat: [Double]
            do {
                flat = try f.withRawBytes(name) { raw in
                    (0..<(raw.count / 8)).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) }
                }
            } catch { throw bad("\(error)") }
            var steps: [[NoiseStatistics.SampleSums]] = []
            for i in m.timesteps.indices {
                var list: [NoiseStatistics.SampleSums] = []
                for r in 0..<rows {
                    let o = (i * rows + r) * width
                    guard let s = NoiseStatistics.SampleSums(values: flat[o..<(o + width)], channels: m.channels) else {
                        throw bad("\(name) step \(i) trajectory \(m.lower + r) holds an unusable record")
                    }
                    list.append(s)
                }
                steps.append(list)
            }
            samples.append(steps)
        }
        return StatisticsPartial(manifest: m, samples: samples)
    }

    /// The shards of one statistics pass, merged.
    public struct Merged {
        /// Shard 0's manifest (arguments, working directory, identity).
        public var manifest: Manifest
        /// The directories in shard order.
        public var directories: [String]
        /// One `NoiseStatistics` per variant over all trajectories, equal bit for bit to the unsharded pass's.
        public var statistics: [NoiseStatistics]
        /// The shards' statistics wall time, summed (compute time, not elapsed time).
        public var seconds: Double
    }

    /// Loads and checks the shards in `directories` (any order) and replays their samples in trajectory order.
    /// - Throws: one-line `PipelineError`s naming the directories: unfinished or unreadable shards, a shard of another
    ///   pass (differing trajectories, seed, shard count, schedule, variants, quantized file, model, settings, fit or
    ///   contexts: the field is named), a shard index given twice, missing indices.
    public static func merge(directories: [String]) throws -> Merged {
        guard !directories.isEmpty else { throw PipelineError("merge-stats needs the statistics shard directories") }
        let loaded = try directories.map { (dir: $0, partial: try load(directory: $0)) }
        let first = loaded[0]
        for (dir, p) in loaded {
            let a = first.partial.manifest, b = p.manifest
            func foreign(_ what: String) -> PipelineError {
                PipelineError("\(dir) is a statistics shard of another pass than \(first.dir): different \(what)")
            }
            if b.trajectories != a.trajectories { throw foreign("--stats-trajectories (\(b.trajectories) vs \(a.trajectories))") }
            if b.seed != a.seed { throw foreign("seed (\(b.seed) vs \(a.seed))") }
            if b.shard.count != a.shard.count { throw foreign("shard count (\(b.shard.count) vs \(a.shard.count))") }
            if b.timesteps != a.timesteps || b.channels != a.channels { throw foreign("step schedule or channel count") }
            if b.variants != a.variants { throw foreign("variants (\(b.variants) vs \(a.variants))") }
            let names = ["quantized": "quantized file", "model": "FP model", "settings": "sampler settings or statistics batch",
                         "fit": "correction, bias mode, k clamp or mixed precision", "context": "calibration contexts"]
            for key in Set(a.identity.keys).union(b.identity.keys).sorted() where a.identity[key] != b.identity[key] {
                throw foreign(names[key] ?? key)
            }
        }
        try ShardSpec.requireComplete(loaded.map { ($0.dir, $0.partial.manifest.shard) }, kind: "statistics shard")
        if let (dir, p) = loaded.first(where: { !$0.partial.manifest.finished }) {
            let m = p.manifest
            throw PipelineError("\(dir): unfinished statistics shard \(m.shard) (\(m.done - m.lower) of \(m.upper - m.lower) trajectories); run its `ptqd quantize --stats-shard` command again to finish it")
        }
        let ordered = loaded.sorted { $0.partial.manifest.shard.index < $1.partial.manifest.shard.index }
        let m = first.partial.manifest
        let stats = m.variants.map { _ in NoiseStatistics(timesteps: m.timesteps, channels: m.channels) }
        for (v, s) in stats.enumerated() {
            for i in m.timesteps.indices {
                for shard in ordered { for x in shard.partial.samples[v][i] { s.add(index: i, sample: x) } }
            }
        }
        return Merged(manifest: ordered[0].partial.manifest, directories: ordered.map(\.dir), statistics: stats,
                      seconds: ordered.reduce(0) { $0 + $1.partial.manifest.seconds })
    }

    /// Thrown when a shard's time budget is spent (the trajectories so far are saved).
    public struct OutOfTime: Error, CustomStringConvertible {
        public let done: Int, upper: Int, path: String
        public var description: String { "time budget reached at trajectory \(done) of \(upper); statistics saved to \(path); run the same command again to continue" }
    }

    /// Runs (or resumes) shard `manifest` in `directory`: continues from a partial of the same shard (any other file
    /// there is replaced), collects trajectories in chunks of `batch` with `collect` (which must record samples),
    /// saves at most every 30 s, at the time budget and at the end.
    /// - Parameters:
    ///   - collect: the statistics of trajectories `range`, one per variant.
    ///   - note: receives the "resuming" / "already finished" / "starting over" lines.
    ///   - progress: (trajectories done this run, trajectories to do this run).
    /// - Returns: the finished partial.
    /// - Throws: `OutOfTime` when `timeBudget` seconds are spent first.
    public static func run(directory: String, manifest: Manifest, batch: Int, timeBudget: Double? = nil,
                           collect: (Range<Int>) throws -> [NoiseStatistics], note: (String) -> Void = { _ in },
                           progress: ((Int, Int) -> Void)? = nil) throws -> StatisticsPartial {
        precondition(batch >= 1, "batch must be >= 1")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = path(directory: directory)
        var partial = StatisticsPartial(starting: manifest)
        if FileManager.default.fileExists(atPath: path) {
            if let saved = try? load(directory: directory), saved.manifest.sameShard(as: manifest) {
                partial = saved
                partial.manifest.arguments = manifest.arguments; partial.manifest.workingDirectory = manifest.workingDirectory
                if saved.manifest.finished {
                    note("statistics shard \(manifest.shard) already finished in \(path)")
                    return partial
                }
                if saved.manifest.done > saved.manifest.lower {
                    note("resuming statistics shard \(manifest.shard) at trajectory \(saved.manifest.done) (shard \(manifest.lower)..<\(manifest.upper)) from \(path)")
                }
            } else {
                note("\(path) belongs to another statistics pass or is unreadable; starting over")
            }
        }
        let start = Date(), earlier = partial.manifest.seconds
        var lastSave = 0.0
        let first = partial.manifest.done
        while partial.manifest.done < manifest.upper {
            let range = partial.manifest.done..<min(partial.manifest.done + batch, manifest.upper)
            try partial.append(try collect(range), count: range.count)
            progress?(partial.manifest.done - first, manifest.upper - first)
            let elapsed = Date().timeIntervalSince(start)
            partial.manifest.seconds = earlier + elapsed
            let finished = partial.manifest.finished
            let outOfTime = timeBudget.map { elapsed >= $0 } ?? false
            if finished || outOfTime || elapsed - lastSave >= 30 {
                try partial.write(directory: directory)
                lastSave = elapsed
            }
            if outOfTime && !finished { throw OutOfTime(done: partial.manifest.done, upper: manifest.upper, path: path) }
        }
        return partial
    }
}
