//===--- Report.swift - the evaluation report (JSON + Markdown) and cost measurements ---===//

import Foundation
import TensorCore

#if os(Linux)
/// glibc's `malloc_trim(size_t pad)` (declared in <malloc.h>, which the Glibc module does not export).
@_silgen_name("malloc_trim") private func glibcMallocTrim(_ pad: Int) -> Int32
#endif

/// One evaluation run: what was sampled, the metrics, and what it cost.
///
/// Optional fields are `null` in JSON and omitted from Markdown when not measured. Fields the
/// evaluator cannot know (BOPs, model file size) are filled in by the caller.
public struct EvaluationReport: Codable, Equatable, Sendable {
    /// The sampling setting (e.g. A = DDIM 20 steps, eta 0, guidance 3.0).
    public struct Setting: Codable, Equatable, Sendable {
        public var name: String
        public var sampler: String
        public var steps: Int
        public var eta: Double
        public var guidanceScale: Double
        public init(name: String, sampler: String = "ddim", steps: Int, eta: Double, guidanceScale: Double) {
            self.name = name; self.sampler = sampler; self.steps = steps; self.eta = eta; self.guidanceScale = guidanceScale
        }
    }

    public struct Metrics: Codable, Equatable, Sendable {
        public var fid: Double?
        public var inceptionScoreMean: Double?
        public var inceptionScoreStd: Double?
        public var precision: Double?
        public var recall: Double?
        /// Paired metrics against the full-precision model (same noise and labels).
        public var psnr: ImageQuality.Summary?
        public var ssim: ImageQuality.Summary?
        public init(fid: Double? = nil, inceptionScoreMean: Double? = nil, inceptionScoreStd: Double? = nil,
                    precision: Double? = nil, recall: Double? = nil,
                    psnr: ImageQuality.Summary? = nil, ssim: ImageQuality.Summary? = nil) {
            self.fid = fid; self.inceptionScoreMean = inceptionScoreMean; self.inceptionScoreStd = inceptionScoreStd
            self.precision = precision; self.recall = recall; self.psnr = psnr; self.ssim = ssim
        }
    }

    public struct Cost: Codable, Equatable, Sendable {
        public var wallTimeSeconds: Double?
        public var secondsPerImage: Double?
        public var imagesPerSecond: Double?
        /// Peak resident memory of the process (VmHWM) while this model sampled, bytes. Cached buffers are
        /// freed and the peak is reset before sampling, so the weights and data already loaded count, earlier
        /// peaks and leftover buffers do not. nil when the samples came from a finished checkpoint.
        public var peakResidentBytes: Int?
        /// Bit operations per UNet forward (Σ MACs × b_w × b_a), filled by the caller.
        public var bopsPerForward: Double?
        /// Model file size in bytes, filled by the caller.
        public var modelFileBytes: Int?
        public var threads: Int?
        public init(wallTimeSeconds: Double? = nil, secondsPerImage: Double? = nil, imagesPerSecond: Double? = nil,
                    peakResidentBytes: Int? = nil, bopsPerForward: Double? = nil, modelFileBytes: Int? = nil, threads: Int? = nil) {
            self.wallTimeSeconds = wallTimeSeconds; self.secondsPerImage = secondsPerImage; self.imagesPerSecond = imagesPerSecond
            self.peakResidentBytes = peakResidentBytes; self.bopsPerForward = bopsPerForward; self.modelFileBytes = modelFileBytes
            self.threads = threads
        }

        /// Wall time, per-image time and throughput for `images` images over `seconds`, plus the
        /// current peak RSS.
        public static func measured(images: Int, seconds: Double, threads: Int? = nil) -> Cost {
            Cost(wallTimeSeconds: seconds, secondsPerImage: images > 0 ? seconds / Double(images) : nil,
                 imagesPerSecond: seconds > 0 ? Double(images) / seconds : nil, peakResidentBytes: Evaluation.peakResidentBytes(),
                 threads: threads)
        }
    }

    /// Label of the model evaluated ("fp32", "w8a8 ptqd", …).
    public var model: String
    public var setting: Setting
    /// Number of generated images.
    public var n: Int
    public var seed: UInt64
    public var metrics: Metrics
    public var cost: Cost
    /// What the metrics were computed against, e.g. "fashion-mnist/t10k n=10000".
    public var reference: String?
    /// The feature network's identity (name, size, CRC-32).
    public var featureNetwork: String?
    /// Free-form remarks (e.g. "PSNR capped at 100 dB for identical images").
    public var notes: [String]
    /// The distribution metrics on class-balanced prefixes of the samples (n/8, n/4, n/2, n), to show how
    /// they move with n; nil when not computed.
    public var metricsByN: [DistributionMetrics]?

    public init(model: String, setting: Setting, n: Int, seed: UInt64, metrics: Metrics = Metrics(), cost: Cost = Cost(),
                reference: String? = nil, featureNetwork: String? = nil, notes: [String] = []) {
        self.model = model; self.setting = setting; self.n = n; self.seed = seed; self.metrics = metrics; self.cost = cost
        self.reference = reference; self.featureNetwork = featureNetwork; self.notes = notes
    }

    /// Pretty, key-sorted JSON (snake_case keys).
    public func jsonBytes() throws -> [UInt8] { try ReportJSON.encode(self) }

    /// Writes JSON atomically.
    public func writeJSON(to path: String) throws { try AtomicFile.write(try jsonBytes(), to: path) }

    /// Reads a report written by ``writeJSON(to:)``.
    public static func read(path: String) throws -> EvaluationReport {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError.cannotRead(path: path, reason: "cannot open file") }
        do { return try ReportJSON.decoder().decode(EvaluationReport.self, from: data) } catch {
            throw EvaluationError.cannotRead(path: path, reason: "not an evaluation report: \(FeatureNetwork.decodingReason(error))")
        }
    }

    /// Writes the Markdown rendering atomically.
    public func writeMarkdown(to path: String) throws { try AtomicFile.write(markdown(), to: path) }

    /// A Markdown section: setting line, metrics table, cost table, notes.
    public func markdown() -> String {
        var s = "## \(model) — setting \(setting.name)\n\n"
        s += "\(setting.sampler.uppercased()) \(setting.steps) steps, eta \(String(format: "%g", setting.eta)), guidance \(String(format: "%g", setting.guidanceScale)); "
        s += "n = \(n), seed = \(seed)"
        if let r = reference { s += "; reference: \(r)" }
        s += "\n\n| metric | value |\n|---|---|\n"
        let m = metrics
        if let v = m.fid { s += "| FID ↓ | \(fmt(v, 3)) |\n" }
        if let v = m.inceptionScoreMean { s += "| IS ↑ | \(fmt(v, 3))\(m.inceptionScoreStd.map { " ± \(fmt($0, 3))" } ?? "") |\n" }
        if let v = m.precision { s += "| precision (k = 3) ↑ | \(fmt(v, 4)) |\n" }
        if let v = m.recall { s += "| recall (k = 3) ↑ | \(fmt(v, 4)) |\n" }
        if let p = m.psnr { s += "| PSNR vs FP (dB), mean / 5th pct ↑ | \(fmt(p.mean, 2)) / \(fmt(p.p5, 2)) |\n" }
        if let p = m.ssim { s += "| SSIM vs FP, mean / 5th pct ↑ | \(fmt(p.mean, 4)) / \(fmt(p.p5, 4)) |\n" }
        var costRows = ""
        let c = cost
        if let v = c.wallTimeSeconds { costRows += "| wall time | \(fmt(v, 1)) s |\n" }
        if let v = c.secondsPerImage { costRows += "| time per image | \(fmt(v * 1000, 2)) ms |\n" }
        if let v = c.imagesPerSecond { costRows += "| throughput | \(fmt(v, 2)) images/s |\n" }
        if let v = c.threads { costRows += "| threads | \(v) |\n" }
        if let v = c.peakResidentBytes { costRows += "| peak RSS | \(fmt(Double(v) / 1_048_576, 1)) MiB |\n" }
        if let v = c.bopsPerForward { costRows += "| BOPs per UNet forward | \(fmt(v / 1e9, 2)) G |\n" }
        if let v = c.modelFileBytes { costRows += "| model file | \(fmt(Double(v) / 1_048_576, 2)) MiB |\n" }
        if !costRows.isEmpty { s += "\n| cost | value |\n|---|---|\n" + costRows }
        if let f = featureNetwork { s += "\nFeature network: \(f).\n" }
        if let rows = metricsByN, rows.count >= 2 {
            s += "\n| n | FID ↓ | IS ↑ | precision ↑ | recall ↑ | label agreement |\n|---|---|---|---|---|---|\n"
            for r in rows {
                s += "| \(r.count) | \(fmt(r.fid, 3)) | \(fmt(r.inceptionScoreMean, 3)) | \(fmt(r.precision, 4)) | \(fmt(r.recall, 4)) | "
                s += (r.labelAccuracy.map { fmt(100 * $0, 1) + "%" } ?? "–") + " |\n"
            }
        }
        for note in notes { s += "\n- \(note)" }
        if !notes.isEmpty { s += "\n" }
        return s
    }

    func fmt(_ v: Double, _ digits: Int) -> String {
        if v.isInfinite { return v > 0 ? "∞" : "−∞" }
        if v.isNaN { return "NaN" }
        return String(format: "%.\(digits)f", v)
    }
}

/// Frees the tensor buffers cached for reuse (``TensorStorage/purge()``), returns malloc's free memory to the
/// system (`malloc_trim`), then resets the process's peak resident set size to its current RSS (writes "5" to
/// /proc/self/clear_refs, Linux ≥ 4.0), so that a later ``peakResidentBytes()`` measures the peak of the work
/// in between plus what stays loaded (weights, datasets), not buffers left over from earlier work.
/// - Returns: false when the kernel refused (then ``peakResidentBytes()`` stays the process-lifetime peak).
@discardableResult
public func resetPeakResidentBytes() -> Bool {
    TensorStorage.purge()
    #if os(Linux)
    _ = glibcMallocTrim(0)
    #endif
    let fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var five = UInt8(ascii: "5")
    return Foundation.write(fd, &five, 1) == 1
}

/// Peak resident set size of this process in bytes (`VmHWM` in /proc/self/status) since it started or
/// since the last successful ``resetPeakResidentBytes()``; nil if unavailable.
public func peakResidentBytes() -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let parts = line.split(separator: " ", omittingEmptySubsequences: true)
        if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
    }
    return nil
}
