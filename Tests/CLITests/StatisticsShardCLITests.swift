import Foundation
import SafeTensors
import XCTest

/// `ptqd quantize --quantized FILE --stats-shard I/N` and `ptqd merge-stats`, run as separate processes as a cluster would.
final class StatisticsShardCLITests: CLITestCase {
    /// The committed mixed w4a4:w4a8 file of the bundled model, re-measured at setting A on 8 trajectories in batches of 2
    /// (shards 0..<2, 2..<5, 5..<8: shard 1 takes two batches).
    let file = "Tests/CLITests/Compat/v1-mixed-ptqd.safetensors"
    func statsArgs(_ out: String, _ extra: [String] = []) -> [String] {
        ["quantize", "--quantized", file, "--correct", "ptqd", "--mixed", "w4a4:w4a8", "--setting", "A", "--stats-trajectories", "8",
         "--batch", "2", "--out", out, "--quiet"] + extra
    }

    /// The file's `ptqd` metadata: (correction document without its `seconds`, the rest of the info).
    func metadata(_ path: String) throws -> (correction: NSDictionary, info: NSDictionary) {
        let f = try SafeTensorsFile(path: path)
        let info = try JSONSerialization.jsonObject(with: Data(f.metadata["ptqd"]!.utf8)) as! [String: Any]
        var attachments = info["attachments"] as! [String: Any]
        var correction = try JSONSerialization.jsonObject(with: Data((attachments.removeValue(forKey: "correction") as! String).utf8)) as! [String: Any]
        XCTAssertNotNil(correction.removeValue(forKey: "seconds"))
        var rest = info
        rest["attachments"] = attachments
        return (correction as NSDictionary, rest as NSDictionary)
    }

    /// Every tensor's name, dtype, shape and bytes.
    func tensors(_ path: String) throws -> [String: Data] {
        let f = try SafeTensorsFile(path: path)
        var out: [String: Data] = [:]
        for n in f.names {
            let i = try f.info(n)
            out[n] = try f.withRawBytes(n) { Data($0) } + Data("\(i.dtype)\(i.shape)".utf8)
        }
        return out
    }

    /// Three statistics shards merged give the file of one statistics pass: the correction tables, the mixed plan and
    /// its table equal bit for bit (every digit of the JSON), the same metadata and the same tensors. A shard stopped
    /// mid-run (time budget: its trajectories so far saved) is refused by the merge, then resumed by the same command.
    func testThreeStatisticsShardsMergeToOnePassBitForBit() throws {
        let whole = tmpPath("whole.safetensors")
        let w = try run(statsArgs(whole))
        XCTAssertEqual(w.code, 0, w.err)
        let dirs = (0..<3).map { tmpPath("stats\($0)") }
        for i in [0, 2] {
            let r = try run(statsArgs(dirs[i], ["--stats-shard", "\(i)/3"]))
            XCTAssertEqual(r.code, 0, r.err)
            XCTAssertTrue(r.out.contains("trajectories \(i == 0 ? "0..<2" : "5..<8") of 8"), r.out)
        }
        // Shard 1 (trajectories 2..<5, two batches) stopped after its first batch: the merge refuses it …
        let stopped = try run(statsArgs(dirs[1], ["--stats-shard", "1/3", "--time-budget", "0"]))
        XCTAssertEqual(stopped.code, 75, stopped.err)
        let merged = tmpPath("merged.safetensors")
        let refused = try run(["merge-stats", dirs[0], dirs[1], dirs[2], "--out", merged])
        XCTAssertNotEqual(refused.code, 0)
        XCTAssertTrue(refused.err.contains("\(dirs[1]): unfinished statistics shard 1/3 (2 of 3 trajectories)"), refused.err)
        XCTAssertEqual(refused.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, "one error line: \(refused.err)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: merged), "merge-stats wrote output for an unfinished shard")
        // … and the same command resumes it where it stopped.
        let resumed = try run(statsArgs(dirs[1], ["--stats-shard", "1/3"]).filter { $0 != "--quiet" })
        XCTAssertEqual(resumed.code, 0, resumed.err)
        XCTAssertTrue(resumed.err.contains("resuming statistics shard 1/3 at trajectory 4"), resumed.err)
        let again = try run(statsArgs(dirs[1], ["--stats-shard", "1/3"]).filter { $0 != "--quiet" })
        XCTAssertTrue(again.code == 0 && again.err.contains("already finished"), again.err)

        let m = try run(["merge-stats", dirs[2], dirs[0], dirs[1], "--out", merged])
        XCTAssertEqual(m.code, 0, m.err)
        XCTAssertTrue(m.out.contains("merged from 3 statistics shards"), m.out)
        let (mc, mi) = try metadata(merged), (wc, wi) = try metadata(whole)
        XCTAssertEqual(mc, wc, "merged correction document (tables, plan, mixed table) equals one pass's bit for bit")
        XCTAssertEqual((mc["tables"] as! [Any]).count, 2)
        XCTAssertNotNil(mc["plan"])
        XCTAssertEqual(mi, wi)
        XCTAssertEqual(try tensors(merged), try tensors(whole))
        // The merged file samples like the one-pass file.
        let s = try run(["sample", "--quantized", merged, "--n", "2", "--out", tmpPath("m.png"), "--quiet"])
        XCTAssertEqual(s.code, 0, s.err)
        XCTAssertTrue(s.out.contains("+ptqd"), s.out)

        // Missing, duplicated, foreign and absent shards: one-line errors naming them, nothing written.
        let out2 = tmpPath("merged2.safetensors")
        func refuses(_ dirs: [String], _ text: String) throws {
            let r = try run(["merge-stats"] + dirs + ["--out", out2])
            XCTAssertNotEqual(r.code, 0)
            XCTAssertTrue(r.err.contains(text), "expected '\(text)' in: \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, "one error line: \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out2))
        }
        try refuses([dirs[0], dirs[2]], "missing statistics shard 1/3")
        try refuses([dirs[0], dirs[1], dirs[1], dirs[2]], "\(dirs[1]) and \(dirs[1]) are both statistics shard 1/3")
        try refuses([dirs[0], tmpPath("nowhere"), dirs[2]], "\(tmpPath("nowhere")): no such statistics shard directory")
        try FileManager.default.createDirectory(atPath: tmpPath("empty"), withIntermediateDirectories: true)
        try refuses([dirs[0], tmpPath("empty"), dirs[2]], "\(tmpPath("empty")): unfinished statistics shard (no statistics-partial.safetensors yet)")
        let foreign = tmpPath("foreign")
        // (2-step foreign shards: cheap; the seed is checked before the schedule.)
        let f = try run(statsArgs(foreign, ["--stats-shard", "1/3", "--seed", "1", "--steps", "2"]))
        XCTAssertEqual(f.code, 0, f.err)
        try refuses([dirs[0], foreign, dirs[2]], "\(foreign) is a statistics shard of another pass than \(dirs[0]): different seed (1 vs 0)")
        let steps = tmpPath("steps")
        XCTAssertEqual(try run(statsArgs(steps, ["--stats-shard", "1/3", "--steps", "2"])).code, 0)
        try refuses([dirs[0], steps, dirs[2]], "\(steps) is a statistics shard of another pass than \(dirs[0]): different step schedule")
        // An evaluation shard folder given to merge-stats, and a statistics shard folder given to merge, say which merge they need.
        try FileManager.default.createDirectory(atPath: tmpPath("eval"), withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: tmpPath("eval/partial.safetensors"), contents: Data())
        try refuses([tmpPath("eval")], "is an evaluation shard (`evaluate --shard`): merge it with `ptqd merge`")
        try FileManager.default.removeItem(atPath: tmpPath("eval/partial.safetensors"))
        let wrongMerge = try run(["merge", dirs[0], "--out", tmpPath("report")])
        XCTAssertNotEqual(wrongMerge.code, 0)
        XCTAssertTrue(wrongMerge.err.contains("\(dirs[0]) is a statistics shard (`quantize --stats-shard`): merge it with `ptqd merge-stats`"), wrongMerge.err)
    }

    /// Malformed I/N, I ≥ N, N > --stats-trajectories and --stats-shard without --quantized are one-line errors before
    /// any work (no output folder).
    func testBadStatisticsShardSpecsFailBeforeWorking() throws {
        let out = tmpPath("out")
        for (spec, text) in [("3/3", "outside 0..<3"), ("1/0", "count must be >= 1"), ("a/b", "--stats-shard must be I/N"), ("1", "must be I/N"),
                             ("-1/4", "outside 0..<4"), ("0/10", "10 shards for 8 statistics trajectories")] {
            let r = try run(statsArgs(out, ["--stats-shard=\(spec)"]))
            XCTAssertNotEqual(r.code, 0, spec)
            XCTAssertTrue(r.err.contains(text), "\(spec): \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), spec)
        }
        for (args, text) in [
            (["quantize", "--scheme", "w8a8", "--correct", "ptqd", "--stats-shard", "0/2", "--out", out], "--stats-shard runs against an existing quantized file"),
            (statsArgs(out + ".safetensors", ["--stats-shard", "0/3"]), "--out is the shard's folder"),
            (statsArgs(out, ["--stats-shard", "0/3", "--scheme", "w8a8"]), "--scheme does not apply with --quantized"),
            (["quantize", "--quantized", file, "--out", out + ".safetensors"], "pass --correct ptqd"),
            (["quantize", "--quantized", file, "--correct", "ptqd", "--out", out + ".safetensors"], "holds 2 variants (w4a4, w4a8)"),
            (["quantize", "--quantized", file, "--correct", "ptqd", "--mixed", "w8a8:w4a8", "--out", out + ".safetensors"], "needs a file whose variants are w8a8, w4a8"),
            (["merge-stats", out, "--out", out], "--out must name a .safetensors file"),
        ] {
            let r = try run(args)
            XCTAssertNotEqual(r.code, 0, "\(args)")
            XCTAssertTrue(r.err.contains(text), "expected '\(text)' in: \(r.err)")
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out) || FileManager.default.fileExists(atPath: out + ".safetensors"), "\(args)")
        }
    }
}
