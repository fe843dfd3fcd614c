import Foundation
import TensorCore
import XCTest
@testable import Evaluation

/// Plots, labelled grids and the HTML report: golden files, sidecar round trips, and a headless-Chromium look.
///
/// Golden files live in Tests/EvaluationTests/Fixtures/golden/; after an intended change regenerate them with
/// `PTQD_UPDATE_GOLDEN=1 swift test -c release -Xswiftc -enable-testing --skip-build --filter PlotTests`
/// and look at the PNG before committing it.
final class PlotTests: XCTestCase {
    static let goldenDirectory = repositoryRoot + "/Tests/EvaluationTests/Fixtures/golden"
    var update: Bool { ProcessInfo.processInfo.environment["PTQD_UPDATE_GOLDEN"] == "1" }

    /// A small fixed plot: two series on a log-y axis, one with a non-positive value (a gap), a subtitle.
    static func smallPlot() -> LinePlot {
        LinePlot(title: "SNR per step", subtitle: "golden test plot", xLabel: "sampling step", yLabel: "SNR (ratio, log scale)",
                 logY: true, width: 360, height: 260,
                 series: [.init(name: "SNR^Q W4A8", x: [0, 1, 2, 3, 4, 5], y: [900, 800, 500, 120, 30, 4]),
                          .init(name: "SNR^F", x: [0, 1, 2, 3, 4, 5], y: [0.001, 0.01, 0, 1, 20, 700])])
    }

    func testSVGMatchesGoldenFile() throws {
        let svg = try Self.smallPlot().svg(id: "golden")
        let path = Self.goldenDirectory + "/small-plot.svg"
        if update { try FileManager.default.createDirectory(atPath: Self.goldenDirectory, withIntermediateDirectories: true); try svg.write(toFile: path, atomically: true, encoding: .utf8) }
        let expected = try String(contentsOfFile: path, encoding: .utf8)
        XCTAssertEqual(svg, expected, "SVG output changed; if intended, regenerate with PTQD_UPDATE_GOLDEN=1 and review the diff")
        // What a reader needs is in it, as text.
        for text in ["SNR per step", "sampling step", "SNR (ratio, log scale)", "SNR^Q W4A8", "SNR^F", "<tspan"] {
            XCTAssertTrue(svg.contains(text), "missing \(text)")
        }
        XCTAssertFalse(svg.contains("<script"))
    }

    /// PNG text comes from cairo + FreeType + DejaVu Sans. With the same library versions as the ones that wrote
    /// the golden file (recorded beside it) the pixels must be identical. With other versions, glyph edges may be
    /// antialiased differently (FreeType's coverage rounding and cairo's rasterizer change between releases, even
    /// with hinting off): then at most 1.5% of pixels may differ by more than 64 of 255 levels in any channel and
    /// the mean absolute difference must stay under 3 levels. Text covers about 6% of this image, so dropping or
    /// moving the text fails both limits; the text-region check below makes that explicit.
    func testPNGTextRenderingMatchesGoldenImage() throws {
        try XCTSkipUnless(Fonts.dejaVuAvailable, "DejaVu Sans not installed (Debian fonts-dejavu-core): PNG text uses another font")
        let img = try Self.smallPlot().render()
        let path = Self.goldenDirectory + "/small-plot.png", versionsPath = Self.goldenDirectory + "/small-plot.renderer.txt"
        if update {
            try FileManager.default.createDirectory(atPath: Self.goldenDirectory, withIntermediateDirectories: true)
            try PNGCodec.write(img, to: path)
            try (Fonts.rendererDescription + "\n").write(toFile: versionsPath, atomically: true, encoding: .utf8)
        }
        let golden = try PNGCodec.read(path: path)
        XCTAssertEqual([img.width, img.height, img.channels], [golden.width, golden.height, golden.channels])
        let recorded = try String(contentsOfFile: versionsPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        var far = 0, sum = 0
        for i in 0..<img.pixels.count {
            let d = abs(Int(img.pixels[i]) - Int(golden.pixels[i]))
            sum += d
            if d > 64 { far += 1 }
        }
        let farFraction = Double(far) / Double(img.width * img.height), mean = Double(sum) / Double(img.pixels.count)
        if recorded == Fonts.rendererDescription {
            XCTAssertEqual(img, golden, "same renderer (\(recorded)) but different pixels: \(far) far-off channel values, mean |Δ| \(mean)")
        } else {
            XCTAssertLessThanOrEqual(farFraction, 0.015, "renderer \(Fonts.rendererDescription) vs golden \(recorded)")
            XCTAssertLessThan(mean, 3, "renderer \(Fonts.rendererDescription) vs golden \(recorded)")
        }
        // Text is really drawn: the title's band has dark pixels, and so has the y-label's column.
        func darkPixels(x0: Int, x1: Int, y0: Int, y1: Int) -> Int {
            var n = 0
            for y in y0..<y1 { for x in x0..<x1 { let o = img.offset(x: x, y: y); if img.pixels[o] < 100 && img.pixels[o + 1] < 100 && img.pixels[o + 2] < 100 { n += 1 } } }
            return n
        }
        XCTAssertGreaterThan(darkPixels(x0: 100, x1: 260, y0: 10, y1: 28), 100, "title not drawn")
        XCTAssertGreaterThan(darkPixels(x0: 4, x1: 24, y0: 60, y1: 180), 60, "y-axis label not drawn")
    }

    func testLogAxisLabelsAndTicks() throws {
        let ax = try Self.smallPlot().axes()
        XCTAssertEqual(ax.yTicks, [0.001, 0.01, 0.1, 1, 10, 100, 1000])
        let labels = LinePlot.labels(ax.yTicks, log: true)
        XCTAssertEqual(labels.map(\.text), ["10^−3", "10^−2", "10^−1", "1", "10", "10^2", "10^3"])
        // Under three decades: 1-2-5 ticks written plainly.
        let narrow = LinePlot.axis([120, 1000], log: true)
        XCTAssertEqual(narrow.ticks, [200, 500, 1000])
        XCTAssertEqual(LinePlot.labels(narrow.ticks, log: true).map(\.text), ["200", "500", "1000"])
        XCTAssertEqual(LinePlot.labels([0, 0.5, 1], log: false).map(\.text), ["0.0", "0.5", "1.0"])
        XCTAssertEqual(LinePlot.labels([-2, 0, 2], log: false).map(\.text), ["\u{2212}2", "0", "2"])
        XCTAssertEqual(LinePlot.niceTicks(-4.95, 103.95), [0, 20, 40, 60, 80, 100])
    }

    func testWriteProducesPNGSVGAndSidecarThatReadsBack() throws {
        let dir = makeTempDirectory(self)
        let plot = Self.smallPlot()
        let sidecar = try plot.write(to: dir + "/snr.png")
        XCTAssertEqual(sidecar, dir + "/snr.json")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["snr.json", "snr.png", "snr.svg"])
        XCTAssertEqual(try LinePlot(sidecar: sidecar), plot)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sidecar))) as! [String: Any]
        XCTAssertEqual(json["image"] as? String, "snr.png")
        XCTAssertEqual(json["svg"] as? String, "snr.svg")
        XCTAssertEqual((json["series"] as? [[String: Any]])?.first?["color"] as? String, "#1f77b4")
        // A sidecar written before log_x/width/height existed still reads (ptqd plot redraws old results).
        let old = ##"{"axes":{"x_range":[0,1],"x_ticks":[0],"y_range":[0,1],"y_ticks":[0]},"image":"k.png","log_y":false,"##
            + ##""series":[{"color":"#1f77b4","name":"k","x":[0,1],"y":[1,"nan"]}],"title":"T","x_label":"step","y_label":"value"}"##
        try old.write(toFile: dir + "/old.json", atomically: true, encoding: .utf8)
        let o = try LinePlot(sidecar: dir + "/old.json")
        XCTAssertEqual([o.width, o.height], [720, 440])
        XCTAssertTrue(o.series[0].y[1].isNaN)
        // Malformed input: a clear error naming the file.
        try "{\"title\": 3}".write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LinePlot(sidecar: dir + "/bad.json")) { e in
            XCTAssertTrue("\(e)".contains("bad.json"), "\(e)")
        }
        let mismatch = old.replacingOccurrences(of: "\"x\":[0,1]", with: "\"x\":[0]")
        try mismatch.write(toFile: dir + "/mismatch.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try LinePlot(sidecar: dir + "/mismatch.json"))
        XCTAssertThrowsError(try LinePlot(title: "empty", xLabel: "", yLabel: "").render())
        XCTAssertThrowsError(try LinePlot(title: "empty", xLabel: "", yLabel: "", logY: true,
                                          series: [.init(name: "neg", x: [1], y: [-1])]).svg())
    }

    func testBenchmarkJSONBecomesThroughputPlot() throws {
        let dir = makeTempDirectory(self)
        let bench: [String: Any] = ["model": "/x/fmnist-ddpm", "threads": 2, "gmac_per_image": 0.38, "isa": "avx2",
                                    "ours": [["batch": 16, "images_per_s": 230.0], ["batch": 1, "images_per_s": 185.0]],
                                    "quantized": [["batch": 1, "images_per_s": 300.0, "label": "w4a8"], ["batch": 16, "images_per_s": 450.0, "label": "w4a8"]]]
        try JSONSerialization.data(withJSONObject: bench).write(to: URL(fileURLWithPath: dir + "/b.json"))
        let p = try LinePlot(benchmarkJSON: dir + "/b.json")
        XCTAssertEqual(p.series.map(\.name), ["fp32 (ours)", "W4A8 int8 kernels"])
        XCTAssertEqual(p.series[0].x, [1, 16])   // sorted by batch
        XCTAssertTrue(p.logX)
        XCTAssertThrowsError(try LinePlot(benchmarkJSON: dir + "/missing.json"))
        let merged = try LinePlot.merged([p, Self.smallPlot()], names: ["a", "b"])
        XCTAssertEqual(merged.series.map(\.name), ["a", "b", "SNR^Q W4A8", "SNR^F"])
        XCTAssertThrowsError(try LinePlot.merged([p], names: ["1", "2", "3"]))
    }

    func testGridFigureHasHeadingsAndRowNames() throws {
        // Two panels of 2 rows × 3 columns of 8×8 images (gray ramp), class names at the left.
        let t = Tensor(shape: [6, 8, 8, 1])
        for i in 0..<t.count { t.data[i] = Float(i % 64) / 32 - 1 }
        let grid = ImageGrid(columns: 3, border: 1)
        let fig = try grid.figure(panels: [.init(heading: "fp32", images: t), .init(heading: "W4A8 + PTQD", images: t)],
                                  rowNames: ["T-shirt/top", "Ankle boot"], scale: 2)
        let plain = try grid.render(t)
        XCTAssertEqual(fig.channels, 3)
        XCTAssertGreaterThan(fig.width, 2 * plain.width * 2)
        // Heading band (above the panels) and row-name column (left of the panels) contain dark text pixels.
        func dark(_ x0: Int, _ x1: Int, _ y0: Int, _ y1: Int) -> Int {
            var n = 0
            for y in y0..<y1 { for x in x0..<x1 { let o = fig.offset(x: x, y: y); if fig.pixels[o] < 128 { n += 1 } } }
            return n
        }
        let nameW = fig.width - 2 * 10 - 2 * plain.width * 2 - 16
        XCTAssertGreaterThan(dark(10 + nameW, fig.width - 10, 10, 30), 20, "no headings")
        XCTAssertGreaterThan(dark(10, 10 + nameW - 4, 32, fig.height - 10), 20, "no row names")
        // The panel pixels are the plain grid, enlarged 2×.
        let o = plain.offset(x: 2, y: 2), p = fig.offset(x: 10 + nameW + 4, y: 32 + 4)
        XCTAssertEqual(fig.pixels[p], plain.pixels[o])
        XCTAssertThrowsError(try grid.figure(panels: [.init(heading: "x", images: t)], rowNames: ["only one"]))
    }

    /// The HTML page is self-contained, and looks like something: Chromium renders it to a non-blank screenshot
    /// with the plot's colors in it (skipped when Debian's `chromium` is not installed).
    func testHTMLReportIsSelfContainedAndRendersInChromium() throws {
        var page = HTMLReport(title: "ptqd evaluate: <test> & report")
        page.heading("Reproduce")
        page.code("ptqd evaluate --n 20 --out 'out/a b'")
        page.keyValues([("setting", "A"), ("sampler", "ddim 20 steps")])
        page.table(header: ["metric", "fp32", "W4A8"], rows: [["FID ↓", "30.1", "35.2"]])
        let grid = try ImageGrid(columns: 2).figure(panels: [.init(heading: "fp32", images: Tensor(shape: [4, 8, 8, 1]))], rowNames: ["a", "b"])
        page.image(png: try PNGCodec.encode(grid), alt: "grid")
        try page.plot(Self.smallPlot(), id: "snr")
        let html = page.html()
        XCTAssertTrue(html.contains("&lt;test&gt; &amp; report"))
        XCTAssertTrue(html.contains("data:image/png;base64,"))
        XCTAssertTrue(html.contains("<svg"))
        XCTAssertFalse(html.contains("<script"))
        XCTAssertFalse(html.contains("src=\"http"), "no network resources")
        XCTAssertFalse(html.contains("href=\"http"), "no network resources")
        XCTAssertEqual(shellCommand(["ptqd", "--out", "a b", "it's"]), "ptqd --out 'a b' 'it'\\''s'")

        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let chromium else { throw XCTSkip("chromium not installed (Debian package `chromium`): the screenshot check is skipped") }
        let dir = makeTempDirectory(self)
        try page.write(to: dir + "/report.html")
        let shot = try Self.screenshot(chromium: chromium, html: dir + "/report.html", png: dir + "/shot.png", size: (900, 1200))
        XCTAssertEqual([shot.width, shot.height], [900, 1200])
        var nonWhite = 0, blue = 0
        for i in stride(from: 0, to: shot.pixels.count, by: shot.channels) {
            let (r, g, b) = (Int(shot.pixels[i]), Int(shot.pixels[i + 1]), Int(shot.pixels[i + 2]))
            if r < 240 || g < 240 || b < 240 { nonWhite += 1 }
            if abs(r - 31) < 30 && abs(g - 119) < 30 && abs(b - 180) < 30 { blue += 1 }
        }
        XCTAssertGreaterThan(Double(nonWhite) / Double(shot.width * shot.height), 0.02, "screenshot is (almost) blank")
        XCTAssertGreaterThan(blue, 50, "the plot's first series color is not in the screenshot")
    }

    /// `chromium --headless --screenshot` of a local file; the decoded PNG (RGB).
    static func screenshot(chromium: String, html: String, png: String, size: (Int, Int)) throws -> PNGImage {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: chromium)
        p.arguments = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                       "--user-data-dir=" + (png as NSString).deletingLastPathComponent + "/chromium-profile",
                       "--window-size=\(size.0),\(size.1)", "--screenshot=" + png, "file://" + html]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw EvaluationError.invalidArgument(what: "chromium --headless --screenshot", reason: "exit code \(p.terminationStatus)") }
        return try PNGCodec.read(path: png)
    }
}
