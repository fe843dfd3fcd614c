//===--- EvaluationShards.swift - sharded evaluation: shard ranges, partial results, the merge ---===//
//
// `ptqd evaluate --shard I/N` samples only images `range(I, N)` of the n images (FP and quantized, with the same
// per-image noise and labels as the whole run: noise comes from (seed, image index)), runs the feature network
// on them and writes an `EvaluationPartial` next to its sample checkpoints. `ptqd merge` loads the N partials,
// checks they belong together, and concatenates them in index order; the metrics are then computed by the same
// code as an unsharded run on the same per-image values, so they are equal to the last bit (FID, IS and
// precision/recall need the whole set: they are computed once, at the merge, from the concatenated features and
// logits; PSNR/SSIM are per image).
//
//===----------------------------------------------------------------------===//

import Foundation
import SafeTensors
import TensorCore

/// Shard `index` of `count` (`I/N` on the command line, 0-based): a contiguous range of the n images.
public struct ShardSpec: Codable, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    public init(index: Int, count: Int) throws {
        guard count >= 1 else { throw PipelineError("shard count must be >= 1, got \(count)") }
        guard index >= 0, index < count else { throw PipelineError("shard index \(index) is outside 0..<\(count) (I/N with 0 <= I < N)") }
        self.index = index; self.count = count
    }

    /// Parses `I/N`, e.g. `3/16`.
    /// - Throws: a one-line `PipelineError` for anything else.
    public init(parsing text: String) throws {
        let p = text.split(separator: "/", omittingEmptySubsequences: false)
        guard p.count == 2, let i = Int(p[0]), let n = Int(p[1]) else {
            throw PipelineError("--shard must be I/N with integers 0 <= I < N (e.g. 0/4), got '\(text)'")
        }
        try self.init(index: i, count: n)
    }

    /// The whole run as one shard.
    public static let whole = try! ShardSpec(index: 0, count: 1)

    public var description: String { "\(index)/\(count)" }

    /// Checks that `shards` are all N shards of one run (their counts already agree): every index exactly once.
    /// - kind: what a shard is called in the messages ("shard", "statistics shard").
    /// - Throws: one-line `PipelineError`s naming the folders of a repeated index, or the missing indices.
    public static func requireComplete(_ shards: [(dir: String, shard: ShardSpec)], kind: String) throws {
        guard let count = shards.first?.shard.count else { return }
        var byIndex: [Int: String] = [:]
        for (dir, s) in shards {
            if let other = byIndex[s.index] { throw PipelineError("\(other) and \(dir) are both \(kind) \(s)") }
            byIndex[s.index] = dir
        }
        let missing = (0..<count).filter { byIndex[$0] == nil }
        if !missing.isEmpty {
            throw PipelineError("missing \(kind)\(missing.count > 1 ? "s" : "") \(missing.map { "\($0)/\(count)" }.joined(separator: ", ")) (got \(shards.count) of \(count))")
        }
    }

    /// Images `[⌊I·n/N⌋, ⌊(I+1)·n/N⌋)`: contiguous, in order, sizes differing by at most one.
    /// - Throws: when N > n (a shard would be empty).
    public func range(n: Int) throws -> Range<Int> {
        guard count <= n else { throw PipelineError("\(count) shards for \(n) images: use at most n shards") }
        return (index * n / count)..<((index + 1) * n / count)
    }
}

/// What one evaluated model contributes per image: the feature network's features and logits (when the run computes
/// distribution metrics), and the images of the report grid. Concatenating the parts of the shards in index order
/// gives the whole run's part.
public struct EvaluationPart {
    /// `[m, D]` penultimate features of images `range` (clamped to [−1, 1] first); nil for a paired-only run.
    public var features: Tensor?
    /// `[m, classes]` logits of the same images; nil exactly when `features` is.
    public var logits: Tensor?
    /// `[k, H, W, C]` decoded images at those of the report grid's indices that lie in `range`, ascending.
    public var gridImages: Tensor?
    /// Sampling (and decoding) wall time in seconds, summed over the runs that made the samples.
    public var seconds: Double
    /// Peak RSS of the sampling process in bytes (nil when the samples were reused from a finished checkpoint).
    public var peakResidentBytes: Int?

    public init(features: Tensor?, logits: Tensor?, gridImages: Tensor?, seconds: Double, peakResidentBytes: Int?) {
        self.features = features; self.logits = logits; self.gridImages = gridImages
        self.seconds = seconds; self.peakResidentBytes = peakResidentBytes
    }
}

/// The partial result of one evaluation shard, as written to `DIR/partial.safetensors` when the shard has finished
/// (the file's presence is the "finished" mark: a shard deletes it when it starts).
///
/// File (safetensors): metadata `kind` = `ptqd-evaluation-partial`, `manifest` = the JSON of ``Manifest``; tensors
/// per model role R (`fp32`, `quantized`): `R.features` F32 `[m, D]`, `R.logits` F32 `[m, classes]` (when the run
/// computes distribution metrics), `R.grid` F32 `[k, H, W, C]` (NHWC, when k > 0); and for a quantized run `psnr`,
/// `ssim` F64 `[m]` (dB; +∞ for identical images; no `ssim` when the images are smaller than SSIM's window).
public struct EvaluationPartial {
    public static let kind = "ptqd-evaluation-partial"
    public static let formatVersion = 1
    public static let fileName = "partial.safetensors"

    /// One evaluated model of the shard.
    public struct Model: Codable, Equatable {
        /// `fp32` or `quantized`.
        public var role: String
        public var label: String
        /// The shard's sample checkpoint (absolute path) and its key (see ``ResumableSampling``).
        public var samplesFile: String
        public var samplesKey: String
        /// The key an unsharded run uses for the same model (the merge writes the merged samples under it).
        public var wholeRunKey: String
        /// `[C, H, W]` of one stored sample (latents for a latent pipeline).
        public var sampleShape: [Int]
        public var seconds: Double
        public var peakResidentBytes: Int?

        public init(role: String, label: String, samplesFile: String, samplesKey: String, wholeRunKey: String, sampleShape: [Int],
                    seconds: Double, peakResidentBytes: Int?) {
            self.role = role; self.label = label; self.samplesFile = samplesFile; self.samplesKey = samplesKey
            self.wholeRunKey = wholeRunKey; self.sampleShape = sampleShape; self.seconds = seconds; self.peakResidentBytes = peakResidentBytes
        }
    }

    public struct Manifest: Codable, Equatable {
        public var version: Int
        public var shard: ShardSpec
        /// Images `lower..<upper` of the run.
        public var lower: Int
        public var upper: Int
        public var n: Int
        public var seed: UInt64
        /// What the results depend on, by name (`fp32`, `quantized`: the sampling keys without the shard range —
        /// weights digests, configs, sampler settings, correction, n, seed, batch —; `features`: the feature
        /// network's identity; `dataset`: the reference split's identity). Shards of one run have equal identities.
        public var identity: [String: String]
        /// The `ptqd` arguments of the shard's command (after the executable) and its working directory: the merge
        /// re-opens the model, feature network and dataset from them.
        public var arguments: [String]
        public var workingDirectory: String
        public var models: [Model]

        public init(version: Int = EvaluationPartial.formatVersion, shard: ShardSpec, lower: Int, upper: Int, n: Int, seed: UInt64,
                    identity: [String: String], arguments: [String], workingDirectory: String, models: [Model]) {
            self.version = version; self.shard = shard; self.lower = lower; self.upper = upper; self.n = n; self.seed = seed
            self.identity = identity; self.arguments = arguments; self.workingDirectory = workingDirectory; self.models = models
        }
    }

    public var manifest: Manifest
    /// Parts in the order of `manifest.models`.
    public var parts: [EvaluationPart]
    /// Per-image PSNR (dB) and SSIM of the quantized images against the fp32 images of the same noise and label.
    public var psnr: [Double]?
    public var ssim: [Double]?

    public init(manifest: Manifest, parts: [EvaluationPart], psnr: [Double]?, ssim: [Double]?) {
        self.manifest = manifest; self.parts = parts; self.psnr = psnr; self.ssim = ssim
    }

    /// Writes `DIR/partial.safetensors` atomically.
    public func write(directory: String) throws {
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        var w = SafeTensorsWriter(metadata: ["kind": Self.kind, "manifest": String(decoding: try enc.encode(manifest), as: UTF8.self)])
        for (m, p) in zip(manifest.models, parts) {
            if let f = p.features, let l = p.logits {
                try w.add("\(m.role).features", floats: f.array, shape: f.shape)
                try w.add("\(m.role).logits", floats: l.array, shape: l.shape)
            }
            if let g = p.gridImages, g.shape[0] > 0 { try w.add("\(m.role).grid", floats: g.array, shape: g.shape) }
        }
        if let psnr { try w.add("psnr", dtype: .f64, shape: [psnr.count], bytes: f64Bytes(psnr)) }
        if let ssim, !ssim.isEmpty { try w.add("ssim", dtype: .f64, shape: [ssim.count], bytes: f64Bytes(ssim)) }
        try w.write(to: URL(fileURLWithPath: directory).appendingPathComponent(Self.fileName).path)
    }

    /// Reads `DIR/partial.safetensors`.
    /// - Throws: one-line `PipelineError`s naming `directory`: no partial file (an unfinished shard), not a partial,
    ///   another format version, inconsistent shapes.
    public static func load(directory: String) throws -> EvaluationPartial {
        let path = URL(fileURLWithPath: directory).appendingPathComponent(fileName).path
        guard FileManager.default.fileExists(atPath: path) else {
            guard FileManager.default.fileExists(atPath: directory) else { throw PipelineError("\(directory): no such shard directory") }
            if FileManager.default.fileExists(atPath: StatisticsPartial.path(directory: directory)) {
                throw PipelineError("\(directory) is a statistics shard (`quantize --stats-shard`): merge it with `ptqd merge-stats`")
            }
            throw PipelineError("\(directory): unfinished shard (no \(fileName)); run its `ptqd evaluate --shard` command again to finish it")
        }
        func bad(_ why: String) -> PipelineError { PipelineError("\(directory): not a usable evaluation shard: \(why)") }
        let f: SafeTensorsFile
        do { f = try SafeTensorsFile(path: path) } catch { throw bad("\(error)") }
        guard f.metadata["kind"] == kind, let text = f.metadata["manifest"] else { throw bad("\(fileName) is not a ptqd evaluation partial") }
        let m: Manifest
        do { m = try JSONDecoder().decode(Manifest.self, from: Data(text.utf8)) } catch { throw bad("unreadable manifest") }
        guard m.version == formatVersion else { throw bad("format version \(m.version); this ptqd reads version \(formatVersion)") }
        let rows = m.upper - m.lower
        guard rows >= 1, (try? m.shard.range(n: m.n)) == m.lower..<m.upper else { throw bad("range \(m.lower)..<\(m.upper) is not shard \(m.shard) of \(m.n)") }
        do {
            var parts: [EvaluationPart] = []
            for model in m.models {
                func tensor(_ name: String) throws -> Tensor {
                    let info = try f.info(name)
                    guard info.shape.first == rows || name.hasSuffix(".grid") else { throw bad("\(name) has \(info.shape.first ?? 0) rows for \(rows) images") }
                    return Tensor(shape: info.shape, values: try f.floats(name))
                }
                func optional(_ name: String) throws -> Tensor? { f.contains(name) ? try tensor(name) : nil }
                let (features, logits) = (try optional("\(model.role).features"), try optional("\(model.role).logits"))
                guard (features == nil) == (logits == nil) else { throw bad("\(model.role) has features without logits or logits without features") }
                parts.append(EvaluationPart(features: features, logits: logits, gridImages: try optional("\(model.role).grid"),
                                            seconds: model.seconds, peakResidentBytes: model.peakResidentBytes))
            }
            func doubles(_ name: String) throws -> [Double]? {
                guard f.contains(name) else { return nil }
                let info = try f.info(name)
                guard info.dtype == .f64, info.shape == [rows] else { throw bad("\(name) must be F64 [\(rows)]") }
                return try f.withRawBytes(name) { raw in (0..<rows).map { Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self))) } }
            }
            return EvaluationPartial(manifest: m, parts: parts, psnr: try doubles("psnr"), ssim: try doubles("ssim"))
        } catch let e as PipelineError { throw e } catch { throw bad("\(error)") }
    }

    /// The shards of one run, merged: the whole run's parts, per-image paired values and samples.
    public struct Merged {
        /// Shard 0's manifest (arguments, identity, models; its range is the first shard's).
        public var manifest: Manifest
        /// The directories in shard order.
        public var directories: [String]
        public var parts: [EvaluationPart]
        public var psnr: [Double]?
        public var ssim: [Double]?
    }

    /// Loads and checks the shards in `directories` (any order) and concatenates them in index order.
    /// - Throws: one-line `PipelineError`s naming the directories: unfinished or unreadable shards, a shard of another
    ///   run (differing n, seed, shard count, models, settings or feature network: the field is named), a shard index
    ///   given twice, missing indices.
    public static func merge(directories: [String]) throws -> Merged {
        guard !directories.isEmpty else { throw PipelineError("merge needs the shard directories") }
        let loaded = try directories.map { (dir: $0, partial: try load(directory: $0)) }
        let first = loaded[0]
        for (dir, p) in loaded {
            let a = first.partial.manifest, b = p.manifest
            func foreign(_ what: String) -> PipelineError {
                PipelineError("\(dir) is a shard of another run than \(first.dir): different \(what)")
            }
            if b.n != a.n { throw foreign("n (\(b.n) vs \(a.n))") }
            if b.seed != a.seed { throw foreign("seed (\(b.seed) vs \(a.seed))") }
            if b.shard.count != a.shard.count { throw foreign("shard count (\(b.shard.count) vs \(a.shard.count))") }
            if b.models.map(\.role) != a.models.map(\.role) { throw foreign("models (\(b.models.map(\.role)) vs \(a.models.map(\.role)))") }
            for key in Set(a.identity.keys).union(b.identity.keys).sorted() where a.identity[key] != b.identity[key] {
                throw foreign(key == "features" || key == "dataset" ? "\(key == "features" ? "feature network" : "reference data")"
                              : "\(key) model, file digest or sampler settings")
            }
        }
        try ShardSpec.requireComplete(loaded.map { ($0.dir, $0.partial.manifest.shard) }, kind: "shard")
        let ordered = loaded.sorted { $0.partial.manifest.shard.index < $1.partial.manifest.shard.index }
        var parts: [EvaluationPart] = []
        for (m, _) in first.partial.manifest.models.enumerated() {
            let ps = ordered.map { $0.partial.parts[m] }
            let grids = ps.compactMap(\.gridImages).filter { $0.shape[0] > 0 }
            let peaks = ps.compactMap(\.peakResidentBytes)
            let features = ps.compactMap(\.features), logits = ps.compactMap(\.logits)
            guard features.isEmpty || features.count == ps.count, logits.count == features.count else {
                throw PipelineError("the shards disagree on whether distribution metrics were computed (some have features, some not)")
            }
            parts.append(EvaluationPart(features: features.isEmpty ? nil : Tensor.concatenate(batch: features),
                                        logits: logits.isEmpty ? nil : Tensor.concatenate(batch: logits),
                                        gridImages: grids.isEmpty ? nil : Tensor.concatenate(batch: grids),
                                        seconds: ps.reduce(0) { $0 + $1.seconds },
                                        peakResidentBytes: peaks.count == ps.count ? peaks.max() : nil))
        }
        func joined(_ values: [[Double]?]) -> [Double]? { values.contains { $0 == nil } ? nil : values.flatMap { $0! } }
        return Merged(manifest: ordered[0].partial.manifest, directories: ordered.map(\.dir), parts: parts,
                      psnr: joined(ordered.map(\.partial.psnr)), ssim: joined(ordered.map(\.partial.ssim)))
    }

    /// The samples of model `m` of the merged shards, `[n, H, W, C]`, read from each shard's checkpoint (looked for at
    /// the recorded path, then under the shard directory by file name).
    /// - Throws: when a checkpoint is missing, of another run or short.
    public static func samples(_ merged: Merged, model m: Int) throws -> Tensor {
        var parts: [Tensor] = []
        for dir in merged.directories {
            let p = try load(directory: dir)
            let info = p.manifest.models[m]
            var path = info.samplesFile
            if !FileManager.default.fileExists(atPath: path) {
                path = URL(fileURLWithPath: dir).appendingPathComponent(URL(fileURLWithPath: path).lastPathComponent).path
            }
            let cp = SampleCheckpoint(path: path, key: info.samplesKey, imageShape: info.sampleShape)
            guard let saved = cp.load(), saved.images.shape[0] == p.manifest.upper - p.manifest.lower else {
                throw PipelineError("\(dir): the \(info.role) samples \(path) are missing, of another run or incomplete; run the shard's command again")
            }
            parts.append(saved.images)
        }
        return Tensor.concatenate(batch: parts)
    }
}

/// Little-endian bytes of Float64 values (safetensors F64).
func f64Bytes(_ v: [Double]) -> [UInt8] {
    var out = [UInt8](); out.reserveCapacity(v.count * 8)
    for x in v { withUnsafeBytes(of: x.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
    return out
}
