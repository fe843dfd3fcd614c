import Foundation
import SafeTensors
import XCTest

/// `ptqd evaluate --shard I/N` and `ptqd merge`, run as separate processes as a cluster would.
final class ShardCLITests: CLITestCase {
    /// The bundled model and the committed mixed w4a4:w4a8 + PTQD file at setting A, n = 20 (2 per class), batch 4.
    func evaluateArgs(_ out: String, _ extra: [String] = []) -> [String] {
        ["evaluate", "--n", "20", "--setting", "A", "--batch", "4", "--quantized", "Tests/CLITests/Compat/v1-mixed-ptqd.safetensors",
         "--reference-cache", tmpPath("reference.safetensors"), "--out", out, "--quiet"] + extra
    }

    /// The metrics of a report.json (everything but costs and notes).
    func metrics(_ dir: String, _ file: String = "report.json") throws -> [String: AnyHashable] {
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + file))) as! [String: Any]
        var m: [String: AnyHashable] = [:]
        for k in ["metrics", "metrics_by_n", "n", "seed", "setting", "model", "reference", "feature_network"] {
            m[k] = (obj[k] as? NSObject).map { $0 as AnyHashable }
        }
        return m
    }

    func samples(_ path: String) throws -> [Float] { try SafeTensorsFile(path: path).floats("samples") }

    /// Three shards merged equal the unsharded run: FID, IS, precision/recall, PSNR/SSIM (every digit of the JSON),
    /// the metrics by n, the sample tensors bit for bit and the grid image byte for byte. A shard stopped mid-run
    /// (time budget: checkpoint saved, no partial) is refused by the merge, then finished by the same command.
    func testThreeShardsMergeToTheUnshardedRunExactly() throws {
        let whole = tmpPath("whole")
        let w = try run(evaluateArgs(whole))
        XCTAssertEqual(w.code, 0, w.err)
        let dirs = (0..<3).map { tmpPath("shard\($0)") }
        for i in [0, 2] {
            let r = try run(evaluateArgs(dirs[i], ["--shard", "\(i)/3"]))
            XCTAssertEqual(r.code, 0, r.err)
            XCTAssertTrue(r.out.contains("images \(i == 0 ? "0..<6" : "13..<20") of 20"), r.out)
        }
        // Shard 1 stopped at its first batch end: the merge refuses it (nothing written) …
        let stopped = try run(evaluateArgs(dirs[1], ["--shard", "1/3", "--time-budget", "0"]))
        XCTAssertEqual(stopped.code, 75, stopped.err)
        let merged = tmpPath("merged")
        let refused = try run(["merge", dirs[0], dirs[1], dirs[2], "--out", merged])
        XCTAssertNotEqual(refused.code, 0)
        XCTAssertTrue(refused.err.contains("\(dirs[1]): unfinished shard"), refused.err)
        XCTAssertEqual(refused.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, "one error line: \(refused.err)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: merged), "merge wrote output for an unfinished shard")
        // … and the same command resumes it (one batch per run under --time-budget 0) until it finishes.
        var resumedNotes = "", code: Int32 = 75, runs = 0
        while code == 75 && runs < 6 {
            let r = try run(evaluateArgs(dirs[1], ["--shard", "1/3", "--time-budget", "0"]).filter { $0 != "--quiet" })
            code = r.code; resumedNotes += r.err; runs += 1
        }
        XCTAssertEqual(code, 0, resumedNotes)
        XCTAssertTrue(resumedNotes.contains("resuming"), resumedNotes)
        let m = try run(["merge", dirs[2], dirs[0], dirs[1], "--out", merged])
        XCTAssertEqual(m.code, 0, m.err)
        XCTAssertEqual(try metrics(merged), try metrics(whole))
        XCTAssertEqual(try metrics(merged, "report-fp32.json"), try metrics(whole, "report-fp32.json"))
        for f in ["fp32-samples.safetensors", "quantized-samples.safetensors"] {
            XCTAssertEqual(try samples(merged + "/" + f), try samples(whole + "/" + f), "\(f): merged samples equal the unsharded run's")
            XCTAssertEqual(try SafeTensorsFile(path: merged + "/" + f).metadata["key"], try SafeTensorsFile(path: whole + "/" + f).metadata["key"])
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: merged + "/grid.png")), try Data(contentsOf: URL(fileURLWithPath: whole + "/grid.png")))
        for f in ["report.md", "report.html"] { XCTAssertTrue(FileManager.default.fileExists(atPath: merged + "/" + f), f) }
        XCTAssertTrue(try String(contentsOfFile: merged + "/report.md", encoding: .utf8).contains("Merged from 3 shards"))
        // An unsharded run in the merged folder reuses the merged samples (same keys).
        let again = try run(evaluateArgs(merged).filter { $0 != "--quiet" })
        XCTAssertEqual(again.code, 0, again.err)
        XCTAssertTrue(again.err.contains("reusing fp32 samples") && again.err.contains("reusing w4a4:w4a8"), again.err)

        // Missing, duplicated and foreign shards: one-line errors naming them, nothing written.
        let out2 = tmpPath("merged2")
        func refuses(_ dirs: [String], _ text: String) throws {
            let r = try run(["merge"] + dirs + ["--out", out2])
            XCTAssertNotEqual(r.code, 0)
            XCTAssertTrue(r.err.contains(text), "expected '\(text)' in: \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, "one error line: \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out2))
        }
        try refuses([dirs[0], dirs[2]], "missing shard 1/3")
        try refuses([dirs[0], dirs[1], dirs[1], dirs[2]], "\(dirs[1]) and \(dirs[1]) are both shard 1/3")
        try refuses([dirs[0], tmpPath("nowhere"), dirs[2]], "\(tmpPath("nowhere")): no such shard directory")
        let foreign = tmpPath("foreign")
        let f = try run(["evaluate", "--n", "20", "--steps", "2", "--batch", "4", "--reference-cache", tmpPath("reference.safetensors"),
                         "--shard", "1/3", "--out", foreign, "--quiet"])
        XCTAssertEqual(f.code, 0, f.err)
        try refuses([dirs[0], foreign, dirs[2]], "\(foreign) is a shard of another run than \(dirs[0]): different models")
    }

    /// Malformed I/N, I ≥ N and N > n are one-line errors before any work (no output folder).
    func testBadShardSpecsFailBeforeWorking() throws {
        let out = tmpPath("out")
        for (spec, text) in [("3/3", "outside 0..<3"), ("1/0", "count must be >= 1"), ("a/b", "must be I/N"), ("1", "must be I/N"),
                             ("-1/4", "outside 0..<4"), ("0/30", "30 shards for 20 images")] {
            let r = try run(["evaluate", "--n", "20", "--shard=\(spec)", "--out", out])
            XCTAssertNotEqual(r.code, 0, spec)
            XCTAssertTrue(r.err.contains(text), "\(spec): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), spec)
        }
    }
}
