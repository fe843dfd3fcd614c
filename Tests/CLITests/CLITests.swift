import Foundation
import SafeTensors
import TensorCore
import XCTest

/// Runs the built `ptqd` binary as a user would: exit codes, one-line errors, outputs on disk.
final class CLITests: CLITestCase {
    var fixture: String { fixturePath("cond_attn_28") }

    func testHelpListsSubcommandsAndOptions() throws {
        let r = try run(["--help"])
        XCTAssertEqual(r.code, 0)
        for s in ["sample", "evaluate", "inspect", "bench"] { XCTAssertTrue(r.out.contains(s), "help lacks \(s)") }
        let s = try run(["sample", "--help"])
        for flag in ["--model", "--out", "--steps", "--eta", "--scheduler", "--guidance", "--class", "--classes", "--n", "--batch",
                     "--seed", "--null-class", "--noise", "--save-tensors", "--threads"] {
            XCTAssertTrue(s.out.contains(flag), "sample --help lacks \(flag)")
        }
    }

    func testSampleWritesPNGAndTensorsDeterministically() throws {
        let png = tmp.appendingPathComponent("g.png").path, st = tmp.appendingPathComponent("s.safetensors").path
        let r = try run(["sample", "--model", fixture, "--out", png, "--n", "4", "--batch", "3", "--steps", "3", "--save-tensors", st, "--quiet"])
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(r.out.contains("wrote"))
        let pngBytes = try Data(contentsOf: URL(fileURLWithPath: png))
        XCTAssertEqual(Array(pngBytes.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        let first = try SafeTensorsFile(path: st).floats("samples")
        XCTAssertEqual(try SafeTensorsFile(path: st).int32s("labels").count, 4)
        // Same seed, different batching: the same samples (oneDNN may pick other kernels per batch
        // size, so equality is up to float rounding: relative error ≤ 1e-5).
        let r2 = try run(["sample", "--model", fixture, "--out", png, "--n", "4", "--batch", "4", "--steps", "3", "--save-tensors", st, "--quiet"])
        XCTAssertEqual(r2.code, 0, r2.err)
        let second = try SafeTensorsFile(path: st).floats("samples")
        XCTAssertLessThanOrEqual(relativeError(second, first), 1e-5)
        // A different seed gives different samples.
        let r3 = try run(["sample", "--model", fixture, "--out", png, "--n", "4", "--steps", "3", "--seed", "1", "--save-tensors", st, "--quiet"])
        XCTAssertEqual(r3.code, 0, r3.err)
        XCTAssertGreaterThan(relativeError(try SafeTensorsFile(path: st).floats("samples"), first), 1e-2)
        let left = try FileManager.default.contentsOfDirectory(atPath: tmp.path).filter { $0.contains(".tmp") }
        XCTAssertEqual(left, [], "temporary files left behind")
    }

    func testNoiseFileRoundTripAndValidation() throws {
        let noise = tmp.appendingPathComponent("noise.safetensors").path
        let st = tmp.appendingPathComponent("s.safetensors").path
        // Round trip against diffusers: x_T from the fixture's DDIM case written as a noise file, sampled by the
        // CLI (10 steps, eta 0), the saved samples equal diffusers' final x within 1e-3 relative error.
        let plain = fixturePath("uncond_plain_16")
        let cases = try SafeTensorsFile(path: plain + "/cases.safetensors")
        var w = SafeTensorsWriter(metadata: [:])
        try w.add("noise", floats: try cases.floats("ddim.noise"), shape: [2, 3, 16, 16])
        try w.write(to: noise)
        let rt = try run(["sample", "--model", plain, "--noise", noise, "--n", "2", "--steps", "10", "--eta", "0",
                          "--out", tmpPath("rt.png"), "--save-tensors", st, "--quiet"])
        XCTAssertEqual(rt.code, 0, rt.err)
        let saved = try SafeTensorsFile(path: st)
        XCTAssertEqual(try saved.info("samples").shape, [2, 3, 16, 16])
        let e = relativeError(try saved.floats("samples"), try cases.floats("ddim.samples"))
        XCTAssertLessThanOrEqual(e, 1e-3, "CLI --noise → --save-tensors vs diffusers DDIM samples")
        // The noise file, not the seed, decides x_T: another seed gives the same samples.
        let rt2 = try run(["sample", "--model", plain, "--noise", noise, "--n", "2", "--steps", "10", "--eta", "0", "--seed", "5",
                           "--out", tmpPath("rt.png"), "--save-tensors", st, "--quiet"])
        XCTAssertEqual(rt2.code, 0, rt2.err)
        XCTAssertEqual(try SafeTensorsFile(path: st).floats("samples"), try saved.floats("samples"))
        // --noise with the wrong count is refused with a one-line error.
        let bad = try run(["sample", "--model", plain, "--noise", noise, "--n", "3", "--steps", "2", "--out", tmpPath("bad.png")])
        XCTAssertNotEqual(bad.code, 0)
        XCTAssertEqual(bad.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, bad.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("bad.png")))
        let r0 = try run(["sample", "--model", fixture, "--out", tmp.appendingPathComponent("a.png").path, "--n", "2", "--steps", "2",
                          "--save-tensors", st, "--quiet"])
        XCTAssertEqual(r0.code, 0, r0.err)
        // A samples file is not a noise file: tensor 'noise' is missing.
        let r1 = try run(["sample", "--model", fixture, "--out", tmp.appendingPathComponent("b.png").path, "--n", "2", "--noise", st])
        XCTAssertNotEqual(r1.code, 0)
        XCTAssertTrue(r1.err.contains("noise"), r1.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.appendingPathComponent("b.png").path))
    }

    func testBadFlagsAndInputsFailCleanly() throws {
        let out = tmp.appendingPathComponent("x.png").path
        let cases: [[String]] = [
            ["sample", "--out", out, "--steps", "0", "--model", fixture],
            ["sample", "--out", out, "--eta", "-1", "--model", fixture],
            ["sample", "--out", out, "--scheduler", "euler", "--model", fixture],
            ["sample", "--out", out, "--class", "3", "--classes", "all", "--model", fixture],
            ["sample", "--out", out, "--class", "99", "--model", fixture, "--steps", "1"],
            ["sample", "--out", tmp.appendingPathComponent("x.jpg").path, "--model", fixture],
            ["sample", "--out", out, "--model", "/nonexistent"],
            ["sample", "--out", out, "--model", fixture, "--steps", "5000"],
            ["inspect", "/nonexistent.safetensors"],
            ["sample", "--out", out, "--model", fixture, "--threads", "0"],
        ]
        for args in cases {
            let r = try run(args)
            XCTAssertNotEqual(r.code, 0, "\(args) should fail")
            let errorLines = r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            XCTAssertEqual(errorLines.count, 1, "\(args): expected one Error: line, got \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(args) left an output file")
        }
        let garbage = tmp.appendingPathComponent("g.safetensors")
        try Data([1, 2, 3]).write(to: garbage)
        let r = try run(["inspect", garbage.path])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.err.contains("g.safetensors"), r.err)
    }

    func testEvaluateRejectsBadInputBeforeWorking() throws {
        let out = tmp.appendingPathComponent("ev").path
        let notDivisible = try run(["evaluate", "--n", "7", "--out", out, "--quiet"])
        XCTAssertNotEqual(notDivisible.code, 0)
        XCTAssertTrue(notDivisible.err.contains("7"), notDivisible.err)
        let noData = try run(["evaluate", "--n", "10", "--dataset", "/nonexistent-fmnist", "--out", out, "--quiet"])
        XCTAssertNotEqual(noData.code, 0)
        XCTAssertTrue(noData.err.contains("dataset-fashion-mnist"), noData.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "evaluate created its output folder before failing")
        let bad = try run(["evaluate", "--setting", "C", "--out", out])
        XCTAssertNotEqual(bad.code, 0)
    }

    /// A UNet with `class_embed_type: "identity"` is conditioned on embedding vectors the CLI cannot supply: every
    /// command that samples refuses it with one line naming the reason, before writing anything.
    func testIdentityClassEmbeddingModelIsRefusedUpFront() throws {
        let model = fixturePath("identity_cls_8")
        let out = tmp.appendingPathComponent("id").path
        for args in [["sample", "--n", "2", "--out", out + "/x.png"], ["evaluate", "--n", "2", "--out", out, "--quiet"],
                     ["quantize", "--scheme", "w8a8", "--calib", "2", "--out", out + ".safetensors"],
                     ["ablation", "--n", "2", "--calib", "2", "--out", out, "--quiet"]] {
            let r = try run(args + ["--model", model])
            XCTAssertNotEqual(r.code, 0, "\(args) should fail")
            let errorLines = r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            XCTAssertEqual(errorLines.count, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains("identity") && r.err.contains("embedding vectors"), "\(args): \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(args) created \(out)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".safetensors"), "\(args) wrote a file")
        }
        XCTAssertEqual(try run(["inspect", model]).code, 0, "inspect still describes the model")
    }

    /// `--time-budget 0` stops after the first batch with exit code 75 and a checkpoint (no report); the same
    /// command then finishes from image 10, and its samples equal an uninterrupted run's bit for bit.
    func testEvaluateTimeBudgetStopsAndTheSameCommandResumes() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"),
                          "dataset-fashion-mnist not installed")
        let stats = tmp.appendingPathComponent("reference-stats.safetensors").path
        func evaluate(_ out: String, _ extra: [String] = []) throws -> (code: Int32, out: String, err: String) {
            try run(["evaluate", "--n", "20", "--batch", "10", "--steps", "2", "--reference-cache", stats, "--out", out] + extra)
        }
        let resumed = tmp.appendingPathComponent("resumed").path, straight = tmp.appendingPathComponent("straight").path
        let stopped = try evaluate(resumed, ["--time-budget", "0"])
        XCTAssertEqual(stopped.code, 75, stopped.err)
        XCTAssertTrue(stopped.err.contains("10/20") && stopped.err.contains("run the same command again"), stopped.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + "/report.json"), "a stopped run must not write a report")
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + "/report.html"), "a stopped run must not write a report")
        let partial = try SafeTensorsFile(path: resumed + "/fp32-samples.safetensors")
        XCTAssertEqual(try partial.info("samples").shape, [10, 1, 32, 32])

        let finished = try evaluate(resumed)
        XCTAssertEqual(finished.code, 0, finished.err)
        XCTAssertTrue(finished.err.contains("resuming fp32 at image 10/20"), finished.err)
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: resumed + "/report.json"))) as? [String: Any]
        XCTAssertEqual((report?["metrics_by_n"] as? [[String: Any]])?.last?["count"] as? Int, 20, "report.json lacks metrics by n")
        // The HTML page beside report.md: self-contained, with the command that reproduces it.
        let html = try String(contentsOfFile: resumed + "/report.html", encoding: .utf8)
        XCTAssertTrue(html.contains("ptqd evaluate --n 20 --batch 10 --steps 2"), "report.html lacks the command")
        for part in ["<h2>Settings</h2>", "<h2>Metrics</h2>", "<h2>Samples</h2>", "data:image/png;base64,"] { XCTAssertTrue(html.contains(part), "report.html lacks \(part)") }
        XCTAssertFalse(html.contains("<script"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: resumed + "/grid.png"))
        // 2 images per class give one point of FID against n: no plot (it needs two).
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + "/fid-vs-n.svg"))
        let reference = try evaluate(straight, ["--quiet"])
        XCTAssertEqual(reference.code, 0, reference.err)
        let a = try SafeTensorsFile(path: resumed + "/fp32-samples.safetensors").floats("samples")
        let b = try SafeTensorsFile(path: straight + "/fp32-samples.safetensors").floats("samples")
        XCTAssertEqual(a.count, 20 * 32 * 32)
        XCTAssertEqual(a, b, "resumed samples differ from an uninterrupted run")
        func peakRSS(_ dir: String) throws -> Any? {
            let r = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json"))) as? [String: Any]
            let v = (r?["cost"] as? [String: Any])?["peak_resident_bytes"]
            return v is NSNull ? nil : v
        }
        XCTAssertNotNil(try peakRSS(resumed), "a run that sampled reports its peak RSS")
        // A finished run's samples are reused (and no peak RSS is claimed for sampling that did not happen);
        // another seed is a different run and starts over.
        XCTAssertTrue(try evaluate(resumed).err.contains("reusing fp32 samples"))
        XCTAssertNil(try peakRSS(resumed))
        // The key is the weights' content and the decoded configs, not the path: a copy of the model reuses the
        // samples; the same weights under another scheduler config (steps_offset 0) start over.
        let copy = tmp.appendingPathComponent("model-copy")
        try FileManager.default.copyItem(at: repo.appendingPathComponent("models/fmnist-ddpm"), to: copy)
        XCTAssertTrue(try evaluate(resumed, ["--model", copy.path]).err.contains("reusing fp32 samples"))
        let sched = copy.appendingPathComponent("scheduler/scheduler_config.json")
        let text = try String(contentsOf: sched, encoding: .utf8)
        XCTAssertTrue(text.contains("\"steps_offset\": 1"))
        try text.replacingOccurrences(of: "\"steps_offset\": 1", with: "\"steps_offset\": 0").write(to: sched, atomically: true, encoding: .utf8)
        let edited = try evaluate(resumed, ["--model", copy.path, "--time-budget", "0"])
        XCTAssertEqual(edited.code, 75, edited.err)
        XCTAssertFalse(edited.err.contains("reusing") || edited.err.contains("resuming"), edited.err)
        let other = try evaluate(resumed, ["--seed", "1", "--time-budget", "0"])
        XCTAssertEqual(other.code, 75)
        XCTAssertFalse(other.err.contains("resuming"), other.err)
        XCTAssertTrue(try run(["evaluate", "--time-budget", "-1", "--out", resumed]).err.contains("--time-budget"))
        let eta = try run(["evaluate", "--eta", "1.5", "--out", resumed])
        XCTAssertNotEqual(eta.code, 0)
        XCTAssertTrue(eta.err.contains("--eta must be in [0, 1]"), eta.err)
    }

    func testInspectShowsConfigAndTensors() throws {
        let r = try run(["inspect", fixture])
        XCTAssertEqual(r.code, 0, r.err)
        for s in ["UNet2DModel", "conv_in.weight", "F32", "DDIMScheduler", "GMAC"] { XCTAssertTrue(r.out.contains(s), "inspect lacks \(s)") }
    }
}
