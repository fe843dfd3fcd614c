import Foundation
import XCTest

/// `ptqd ablation` on a small fixture model, and `--reuse`: a second run with the same arguments evaluates no row
/// again and prints the same table; other arguments (a different n) evaluate every row again.
final class AblationCLITests: CLITestCase {
    func testReuseSkipsRowsEvaluatedWithTheSameArguments() throws {
        let out = tmpPath("abl")
        let args = ["ablation", "--model", fixturePath("cond_attn_28"), "--scheme", "w8a8", "--n", "4", "--calib", "2",
                    "--stats-trajectories", "4", "--steps", "4", "--out", out]
        func table(_ s: String) -> String {
            let lines = s.split(separator: "\n", omittingEmptySubsequences: false)
            guard let a = lines.firstIndex(where: { $0.hasPrefix("### Ablation") }) else { return "" }
            return lines[a...].prefix { !$0.hasPrefix("Commands") }.joined(separator: "\n")
        }
        let first = try run(args)
        XCTAssertEqual(first.code, 0, first.err)
        XCTAssertFalse(first.err.contains("reused"), first.err)
        XCTAssertTrue(table(first.out).contains("| w8a8 +CNC+BC+VSC (PTQD) |"), first.out)
        XCTAssertFalse(table(first.out).contains("nan"), "metrics that do not apply are shown as –: \(table(first.out))")
        let again = try run(args + ["--reuse"])
        XCTAssertEqual(again.code, 0, again.err)
        XCTAssertEqual(again.err.components(separatedBy: ": reused ").count - 1, 5, again.err)
        XCTAssertFalse(again.err.contains("ptqd quantize"), "the quantized file is reused")
        XCTAssertEqual(table(again.out), table(first.out))
        var otherN = args
        otherN[otherN.firstIndex(of: "--n")! + 1] = "6"
        let other = try run(otherN + ["--reuse"])
        XCTAssertEqual(other.code, 0, other.err)
        XCTAssertFalse(other.err.contains(": reused "), "another n evaluates every row again: \(other.err)")
    }
}
