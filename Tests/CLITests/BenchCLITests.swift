import Foundation
import TensorCore
import XCTest

/// `ptqd bench` run as a user would, on a small fixture model and a quantized file made from it: the file is timed
/// in interleaved rounds beside fp32, ratios come with their round-by-round range, and the JSON says the same.
final class BenchCLITests: CLITestCase {
    func testBenchTimesVariantsInInterleavedRounds() throws {
        let q = tmpPath("q.safetensors")
        let made = try run(["quantize", "--model", fixturePath("cond_attn_28"), "--scheme", "w8a8", "--calib", "4",
                            "--calib-samples", "8", "--steps", "4", "--quantize-attention", "--out", q, "--quiet"])
        XCTAssertEqual(made.code, 0, made.err)
        let json = tmpPath("bench.json")
        let r = try run(["bench", "--model", fixturePath("cond_attn_28"), "--batches", "1,2", "--seconds", "0.05",
                         "--torch-python", "", "--quantized", q, "--json", json])
        XCTAssertEqual(r.code, 0, r.err)
        for b in ["1", "2"] { XCTAssertTrue(r.out.contains("ours   batch   \(b):"), r.out) }
        XCTAssertTrue(r.out.contains("best measured peak over the run: "), r.out)
        // Quantized attention: where its integer products are exact (VNNI, AMX) they are the default, and the fp32
        // simulation of the same file is timed in the same rounds.
        let quantizedLines = r.out.split(separator: "\n").filter { $0.hasPrefix("w8a8 +attn ") && !$0.contains("sim-attn") }
        XCTAssertEqual(quantizedLines.count, 2, r.out)
        let simLines = r.out.split(separator: "\n").filter { $0.hasPrefix("w8a8 +attn sim-attn ") }
        XCTAssertEqual(simLines.count, IntegerAttention.isExactOnThisCPU ? 2 : 0, r.out)
        for line in quantizedLines { XCTAssertTrue(line.contains("w8a8 +attn/fp32 = ") && line.contains("(paired rounds "), String(line)) }
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: json))) as? [String: Any])
        let ours = try XCTUnwrap(report["ours"] as? [[String: Any]])
        XCTAssertEqual(ours.compactMap { $0["batch"] as? Int }, [1, 2])
        for row in ours { XCTAssertGreaterThanOrEqual(row["rounds"] as? Int ?? 0, 5, "at least 5 interleaved rounds") }
        let rows = try XCTUnwrap(report["quantized"] as? [[String: Any]])
        XCTAssertEqual(rows.count, IntegerAttention.isExactOnThisCPU ? 4 : 2)
        for row in rows {
            let speedup = try XCTUnwrap(row["speedup_vs_fp32"] as? Double)
            let paired = try XCTUnwrap(row["speedup_vs_fp32_paired"] as? [Double])
            XCTAssertEqual(paired.count, 3)
            XCTAssertTrue(paired[0] <= paired[1] && paired[1] <= paired[2], "10th ≤ median ≤ 90th percentile: \(paired)")
            XCTAssertTrue(speedup > 0 && speedup.isFinite)
        }
    }

    func testBenchRejectsBadBatchesWithoutWork() throws {
        let r = try run(["bench", "--model", fixturePath("cond_attn_28"), "--batches", "1,x", "--torch-python", ""])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.err.contains("--batches: bad batch size 'x'"), r.err)
    }
}
