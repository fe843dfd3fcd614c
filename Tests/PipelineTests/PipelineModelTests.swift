import Correction
import Diffusion
import Foundation
import Pipeline
import Quantization
import TensorCore
import XCTest

/// The library's pipeline: a quantized file's correction and plan, the settings-mismatch policy, pairing checks
/// and resumable sampling (formerly CLI code).
final class PipelineModelTests: XCTestCase {
    static var repo: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }
    /// A v1 file (mixed w4a4:w4a8 + PTQD, DDIM 20 steps, eta 0, guidance 3) of the bundled model.
    static var file: String { repo.appendingPathComponent("Tests/CLITests/Compat/v1-mixed-ptqd.safetensors").path }
    static var bundled: String { repo.appendingPathComponent("models/fmnist-ddpm").path }
    override class func setUp() { DNNL.setThreads(2) }

    func testMismatchPolicy() throws {
        let q = try PipelineModel(quantizedFile: Self.file, mode: .integer)
        XCTAssertEqual(q.label, "w4a4:w4a8 mixed +ptqd")
        XCTAssertEqual(q.networks.count, 2)
        let a = SamplerSettings(kind: .ddim, steps: 20, eta: 0, guidance: 3)
        XCTAssertTrue(q.matchesCorrection(a))
        var warnings: [String] = []
        let s = try q.sampler(a) { warnings.append($0) }
        XCTAssertTrue(warnings.isEmpty)
        XCTAssertTrue(s.predictor is CorrectedPredictor, "the file's PTQD correction wraps the stepped predictor")
        // Other settings: refused without force …
        var ten = a; ten.steps = 10
        XCTAssertFalse(q.matchesCorrection(ten))
        XCTAssertThrowsError(try q.sampler(ten)) { XCTAssertTrue("\($0)".contains("--force"), "\($0)") }
        // … with force: the 20-step plan cannot run 10 steps (strongest variant throughout), and the table's
        // timesteps differ, so the correction is dropped.
        var forced = CorrectionOverrides(); forced.force = true
        let f = try PipelineModel(quantizedFile: Self.file, mode: .integer, overrides: forced)
        warnings = []
        let fs = try f.sampler(ten) { warnings.append($0) }
        XCTAssertEqual(warnings.count, 2, "\(warnings)")
        XCTAssertTrue(warnings[0].contains("w4a8 for every step"), warnings[0])
        XCTAssertTrue(warnings[1].contains("correction disabled"), warnings[1])
        XCTAssertTrue(fs.predictor is GuidedDenoiser)
        // Same schedule, other eta (DDIM eta 1): the table applies, with a warning.
        var eta1 = a; eta1.eta = 1
        warnings = []
        _ = try f.sampler(eta1) { warnings.append($0) }
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings[0].contains("applying a correction"), warnings[0])
        // The null class is compared after resolving the default.
        var explicitNull = a; explicitNull.nullClass = 10
        XCTAssertTrue(q.matchesCorrection(explicitNull))
    }

    func testOverridesAndPairing() throws {
        var o = CorrectionOverrides(); o.disabled = true
        let off = try PipelineModel(quantizedFile: Self.file, mode: .integer, overrides: o)
        XCTAssertEqual(off.label, "w4a4:w4a8 mixed")
        XCTAssertEqual(off.correctionSettings, .off)
        o = CorrectionOverrides(); o.method = .d2; o.components = [.cnc]
        let d2 = try PipelineModel(quantizedFile: Self.file, mode: .simulate, overrides: o)
        XCTAssertEqual(d2.correctionSettings.method, .d2)
        XCTAssertEqual(d2.correctionSettings.components, [.cnc])
        XCTAssertTrue(d2.label.hasSuffix("+d2 (simulated)"), d2.label)
        let fp = PipelineModel(fp32: try DiffusionModel.load(Self.bundled))
        XCTAssertNoThrow(try off.checkPairs(with: fp))
        let other = PipelineModel(fp32: try DiffusionModel.load(Self.repo.appendingPathComponent("Tests/DiffusionTests/Fixtures/cond_attn_28").path))
        XCTAssertThrowsError(try off.checkPairs(with: other)) { XCTAssertTrue("\($0)".contains("different config"), "\($0)") }
        XCTAssertGreaterThan(try off.bopsPerForward(), 0)
        XCTAssertLessThan(try off.bopsPerForward(), try fp.bopsPerForward() / 10)
    }

    /// A run stopped by its time budget resumes from the checkpoint and ends with exactly the samples of an
    /// uninterrupted run; a finished checkpoint is reused; another batch size is another key.
    func testResumableSamplingIsExact() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ptqd-pipeline-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = PipelineModel(fp32: try DiffusionModel.load(Self.bundled))
        let settings = SamplerSettings(kind: .ddim, steps: 4, eta: 1, guidance: 3)
        let labels: (Range<Int>) -> Conditioning = { r in .classes(r.map { $0 % 10 }) }
        let once = try ResumableSampling(model: model, settings: settings, n: 6, seed: 3, batch: 2,
                                         checkpointPath: dir.appendingPathComponent("a.safetensors").path).run(conditioning: labels)
        let path = dir.appendingPathComponent("b.safetensors").path
        let run = try ResumableSampling(model: model, settings: settings, n: 6, seed: 3, batch: 2, checkpointPath: path)
        XCTAssertThrowsError(try run.run(conditioning: labels, timeBudget: 0)) { error in
            guard let e = error as? ResumableSampling.OutOfTime else { return XCTFail("\(error)") }
            XCTAssertEqual(e.done, 2)
        }
        var notes: [String] = []
        let resumed = try run.run(conditioning: labels) { notes.append($0) }
        XCTAssertTrue(notes.first?.contains("resuming") ?? false, "\(notes)")
        XCTAssertEqual(resumed.images.array, once.images.array, "resumed samples equal an uninterrupted run bit for bit")
        notes = []
        let reused = try run.run(conditioning: labels) { notes.append($0) }
        XCTAssertTrue(notes.first?.contains("reusing") ?? false, "\(notes)")
        XCTAssertEqual(reused.images.array, once.images.array)
        let otherBatch = try ResumableSampling(model: model, settings: settings, n: 6, seed: 3, batch: 3, checkpointPath: path)
        notes = []
        let fresh = try otherBatch.run(conditioning: labels) { notes.append($0) }
        XCTAssertTrue(notes.isEmpty, "a checkpoint of another batch size is not reused: \(notes)")
        XCTAssertEqual(fresh.images.array, once.images.array, "per-image noise: the batch size does not change the samples")
    }
}

/// Shard ranges: contiguous, in order, covering 0..<n, sizes differing by at most one.
final class ShardSpecTests: XCTestCase {
    func testRangesPartitionTheImages() throws {
        for n in [1, 7, 20, 500, 5001] {
            for count in 1...min(n, 17) {
                let ranges = try (0..<count).map { try ShardSpec(index: $0, count: count).range(n: n) }
                XCTAssertEqual(ranges.first?.lowerBound, 0)
                XCTAssertEqual(ranges.last?.upperBound, n)
                for (a, b) in zip(ranges, ranges.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
                let sizes = ranges.map(\.count)
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "n \(n), \(count) shards: \(sizes)")
                XCTAssertGreaterThan(sizes.min()!, 0)
            }
        }
        XCTAssertThrowsError(try ShardSpec(index: 0, count: 8).range(n: 5))
        XCTAssertEqual(try ShardSpec(parsing: "2/3"), try ShardSpec(index: 2, count: 3))
        for bad in ["3/3", "x", "1/", "/2", "1/2/3", "-1/2", "0/0"] { XCTAssertThrowsError(try ShardSpec(parsing: bad), bad) }
    }
}
