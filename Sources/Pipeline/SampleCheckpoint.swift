//===--- SampleCheckpoint.swift - resumable sampling (`ptqd evaluate`) -----------===//

import Diffusion
import Evaluation
import Foundation
import SafeTensors
import TensorCore

/// The samples of one evaluation run so far, saved at batch ends (at most every 30 s, and always when the
/// run finishes or its time budget is spent) so that an interrupted (or
/// `--time-budget`-limited) `ptqd evaluate` continues where it stopped instead of starting over.
///
/// File: safetensors with one tensor `samples` `[count, C, H, W]` fp32 — images `lo..<lo+count` of the run (lo = 0, or a shard's first image) in
/// index order — and metadata `key` (what is being sampled; a checkpoint with another key is ignored and
/// later overwritten) and `seconds` (sampling wall time summed over every run that contributed).
/// Written to a temporary file and renamed, so a kill at any moment leaves the previous checkpoint intact.
/// Resuming reproduces an uninterrupted run exactly: each image's noise comes from its own stream
/// (`BatchNoise`) and the key pins the batch size, so every batch sees the same rows.
public struct SampleCheckpoint {
    public let path: String
    public let key: String
    /// `[C, H, W]` of one image.
    public let imageShape: [Int]

    public init(path: String, key: String, imageShape: [Int]) { self.path = path; self.key = key; self.imageShape = imageShape }

    /// The saved prefix, if the file exists, matches `key` and is readable; nil otherwise.
    public func load() -> (images: Tensor, seconds: Double)? {
        guard let f = try? SafeTensorsFile(path: path), f.metadata["key"] == key,
              let seconds = Double(f.metadata["seconds"] ?? ""), seconds.isFinite, seconds >= 0,
              let info = try? f.info("samples"), info.shape.count == 4, Array(info.shape.dropFirst()) == imageShape,
              info.shape[0] >= 1, let v = try? f.floats("samples", expectedShape: info.shape) else { return nil }
        let (c, h, w) = (imageShape[0], imageShape[1], imageShape[2])
        return (Tensor.fromNCHW(v, n: info.shape[0], c: c, h: h, w: w), seconds)
    }

    /// Saves `images` `[count, H, W, C]` (the first `count` images of the run) and the wall time so far.
    public func save(_ images: Tensor, seconds: Double) throws {
        var w = SafeTensorsWriter(metadata: ["key": key, "seconds": "\(seconds)"])
        try w.add("samples", floats: images.toNCHW(), shape: [images.shape[0]] + imageShape)
        try w.write(to: path)
    }
}

/// One model's n samples and what making them cost.
public struct GeneratedSamples {
    /// `[n, H, W, C]` model outputs (not clamped).
    public let images: Tensor
    /// Sampling wall time, summed over every run that contributed (a resumed run adds its predecessors').
    public let seconds: Double
    /// Peak RSS of this process while it sampled (nil when the samples were reused from a finished checkpoint).
    public let peakResidentBytes: Int?

    public init(images: Tensor, seconds: Double, peakResidentBytes: Int?) {
        self.images = images; self.seconds = seconds; self.peakResidentBytes = peakResidentBytes
    }
}

/// Sampling n images of a run with checkpoints: resumes a matching prefix, reuses a finished run, stops at a
/// time budget.
public struct ResumableSampling {
    public let model: PipelineModel
    public let settings: SamplerSettings
    public let n: Int
    public let seed: UInt64
    public let batch: Int
    /// The images this run samples: `0..<n`, or one shard's range (``ShardSpec/range(n:)``).
    public let images: Range<Int>
    public let checkpoint: SampleCheckpoint
    /// The checkpoint key of the whole run (`0..<n`) of the same model and settings; equal to `checkpoint.key`
    /// unless `images` is a shard's range.
    public let wholeRunKey: String

    /// The checkpoint key holds everything the samples depend on: the weights file's content digest (not its path
    /// or time, so copies match and same-size rewrites do not), the network and scheduler configs, the model
    /// variant and correction, the sampler settings, n, seed and batch size, and a shard's image range.
    /// - images: the images to sample (nil: all n); the checkpoint then holds images `images.lowerBound...`.
    /// - conditioningKey: what the conditioning depends on beyond the model, n and seed (e.g. the digest of the
    ///   cross-attention contexts); nil when labels follow from the model and n alone.
    public init(model: PipelineModel, settings: SamplerSettings, n: Int, seed: UInt64, batch: Int, checkpointPath: String,
                images: Range<Int>? = nil, conditioningKey: String? = nil) throws {
        self.model = model; self.settings = settings; self.n = n; self.seed = seed; self.batch = batch
        let images = images ?? 0..<n
        precondition(images.lowerBound >= 0 && images.upperBound <= n && !images.isEmpty, "images \(images) outside 0..<\(n)")
        self.images = images
        func hashed(_ text: String) -> String { Array(text.utf8).withUnsafeBytes { SafeTensorsDigest.mix64($0) } }
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        let settingsText = String(decoding: try enc.encode(settings), as: UTF8.self)
        var key = "weights=\(try model.weightsDigest())|network=\(hashed(model.network.configFingerprint))|scheduler=\(hashed("\(model.scheduler)"))|\(model.label)"
            + "|\(settingsText)|n=\(n)|seed=\(seed)|batch=\(batch)"
        if model.quantized != nil {
            let cs = model.correctionSettings
            key += "|correction=\(cs.method.rawValue),\(cs.components.rawValue),\(cs.vscMode.rawValue)"
        }
        if let conditioningKey { key += "|conditioning=\(conditioningKey)" }
        wholeRunKey = key
        if images != 0..<n { key += "|images=\(images.lowerBound)..<\(images.upperBound)" }
        let s = model.network.sampleShape
        checkpoint = SampleCheckpoint(path: checkpointPath, key: key, imageShape: [s[2], s[0], s[1]])
    }

    /// Thrown when the time budget is spent (the samples so far are saved).
    public struct OutOfTime: Error, CustomStringConvertible {
        public let done: Int, total: Int, path: String
        public var description: String { "time budget reached at image \(done)/\(total); samples saved to \(path); run the same command again to continue" }
    }

    /// Samples the run's images (all n, or a shard's range) in batches with per-image noise streams, continuing from the checkpoint when it holds a
    /// prefix of this run (and returning its samples when it holds all of them). Saves the checkpoint at most every
    /// 30 s and at the end; throws `OutOfTime` once `timeBudget` seconds are spent. The process's peak RSS is reset
    /// before sampling and read after it, so each model's figure covers its own sampling.
    /// - conditioning: of the images in a range; note: receives "reusing"/"resuming" lines and sampler warnings;
    ///   progress: (images·steps done this run, total this run).
    public func run(conditioning: (Range<Int>) throws -> Conditioning, timeBudget: Double? = nil,
                    note: (String) -> Void = { _ in }, progress: ((Int, Int) -> Void)? = nil) throws -> GeneratedSamples {
        var parts: [Tensor] = []
        var first = images.lowerBound, earlierSeconds = 0.0
        if let saved = checkpoint.load() {
            let count = saved.images.shape[0]
            let total = images.count
            if count == total {
                note("reusing \(model.label) samples from \(checkpoint.path)")
                return GeneratedSamples(images: saved.images, seconds: saved.seconds, peakResidentBytes: nil)
            }
            if count < total && count % batch == 0 {
                parts = [saved.images]; first = images.lowerBound + count; earlierSeconds = saved.seconds
                note("resuming \(model.label) at image \(first)/\(images.upperBound)\(images == 0..<n ? "" : " (shard \(images.lowerBound)..<\(images.upperBound))") from \(checkpoint.path)")
            }
        }
        let sampler = try model.sampler(settings, warn: note)
        let steps = sampler.scheduler.timesteps.count
        _ = resetPeakResidentBytes()
        let start = Date()
        var lastSave = 0.0, done = 0
        do {
            try sampler.generate(images: first..<images.upperBound, batch: batch, seed: seed, shape: model.network.sampleShape,
                                 conditioning: conditioning, hooks: { range in
                SamplerHooks(didStep: { _, _ in done += range.count; progress?(done, (images.upperBound - first) * steps) })
            }, onBatch: { range, y in
                guard y.isFinite else { throw PipelineError("sampling produced NaN/Inf at images \(range)") }
                parts.append(y)
                let elapsed = Date().timeIntervalSince(start)
                let finished = range.upperBound == images.upperBound
                let outOfTime = timeBudget.map { elapsed >= $0 } ?? false
                if finished || outOfTime || elapsed - lastSave >= 30 {
                    parts = [Tensor.concatenate(batch: parts)]
                    try checkpoint.save(parts[0], seconds: earlierSeconds + elapsed)
                    lastSave = elapsed
                }
                if outOfTime && !finished { throw OutOfTime(done: range.upperBound, total: images.upperBound, path: checkpoint.path) }
            })
        }
        return GeneratedSamples(images: Tensor.concatenate(batch: parts), seconds: earlierSeconds + Date().timeIntervalSince(start),
                                peakResidentBytes: peakResidentBytes())
    }
}
