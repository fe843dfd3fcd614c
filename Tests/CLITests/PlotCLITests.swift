import Foundation
import XCTest

/// `ptqd plot`: redraws figures from sidecars and bench JSON; bad input is one error line and no output file.
final class PlotCLITests: CLITestCase {
    func sidecar(_ name: String, title: String, y: [Double]) throws -> String {
        let path = tmpPath(name)
        let json = #"{"title":"\#(title)","x_label":"n","y_label":"FID","log_y":false,"series":[{"name":"FID","x":[125,250,500,1000],"y":\#(y)}]}"#
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testPlotMergesSidecarsAndWritesThreeFiles() throws {
        let a = try sidecar("a.json", title: "FID vs n (fp32)", y: [48, 35, 32, 29.9])
        let b = try sidecar("b.json", title: "FID vs n (w4a8)", y: [61, 43, 40, 38.5])
        let r = try run(["plot", a, b, "--names", "fp32,W4A8 RTN", "--title", "FID against n", "--x-label", "n (images)",
                         "--log-x", "true", "--out", tmpPath("fid.png")])
        XCTAssertEqual(r.code, 0, r.err)
        for f in ["fid.png", "fid.svg", "fid.json"] { XCTAssertTrue(FileManager.default.fileExists(atPath: tmpPath(f)), "missing \(f)") }
        let svg = try String(contentsOfFile: tmpPath("fid.svg"), encoding: .utf8)
        for t in ["FID against n", "n (images)", "fp32", "W4A8 RTN"] { XCTAssertTrue(svg.contains(t), "svg lacks \(t)") }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tmpPath("fid.json")))) as? [String: Any]
        XCTAssertEqual(json?["log_x"] as? Bool, true)
        XCTAssertEqual((json?["series"] as? [[String: Any]])?.count, 2)
        // The written sidecar is itself valid input.
        XCTAssertEqual(try run(["plot", tmpPath("fid.json"), "--out", tmpPath("again")]).code, 0)
    }

    func testMalformedInputIsOneErrorLineAndNoOutput() throws {
        let bad = tmpPath("bad.json")
        try "{\"title\": \"x\", \"series\": [".write(toFile: bad, atomically: true, encoding: .utf8)
        for args in [["plot", bad, "--out", tmpPath("o")], ["plot", tmpPath("missing.json"), "--out", tmpPath("o")],
                     ["plot", try sidecar("c.json", title: "t", y: [1, 2, 3, 4]), "--names", "a,b", "--out", tmpPath("o")],
                     ["plot", "--out", tmpPath("o")], ["plot", "--quantized", bad, "--out", tmpPath("o")]] {
            let r = try run(args)
            XCTAssertNotEqual(r.code, 0, args.joined(separator: " "))
            XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
            for f in ["o.png", "o.svg", "o.json", "o-snr.png", "o-k-sigma.png"] { XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath(f)), "\(f) written on error") }
        }
    }
}
