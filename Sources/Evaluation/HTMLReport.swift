//===--- HTMLReport.swift - one self-contained HTML page: tables, inline SVG plots, data: URI images ---===//
//
// No scripts, no external fonts, styles or images: the page renders offline and identically from a file or
// an attachment. Every text passes through `xml(_:)`; SVG is inlined as written by LinePlot.svg(id:).

import Foundation

public struct HTMLReport {
    public var title: String
    /// What wrote the page ("ptqd 0.1.0"), shown in the footer.
    public var generator: String
    var body = ""

    public init(title: String, generator: String = "ptqd") { self.title = title; self.generator = generator }

    public mutating func heading(_ text: String, level: Int = 2) {
        let l = min(max(level, 1), 4)
        body += "<h\(l)>\(xml(text))</h\(l)>\n"
    }

    public mutating func paragraph(_ text: String) { body += "<p>\(xml(text))</p>\n" }

    public mutating func list(_ items: [String]) {
        guard !items.isEmpty else { return }
        body += "<ul>\n" + items.map { "<li>\(xml($0))</li>\n" }.joined() + "</ul>\n"
    }

    /// A table; cells are text. `numeric` right-aligns every column but the first.
    public mutating func table(header: [String], rows: [[String]], caption: String? = nil, numeric: Bool = true) {
        body += "<table\(numeric ? " class=\"num\"" : "")>\n"
        if let c = caption { body += "<caption>\(xml(c))</caption>\n" }
        body += "<thead><tr>" + header.map { "<th>\(xml($0))</th>" }.joined() + "</tr></thead>\n<tbody>\n"
        for r in rows { body += "<tr>" + r.map { "<td>\(xml($0))</td>" }.joined() + "</tr>\n" }
        body += "</tbody></table>\n"
    }

    /// Two-column key/value table (settings).
    public mutating func keyValues(_ pairs: [(String, String)], caption: String? = nil) {
        table(header: ["setting", "value"], rows: pairs.map { [$0.0, $0.1] }, caption: caption, numeric: false)
    }

    /// A PNG embedded as a `data:` URI, with a caption.
    public mutating func image(png: [UInt8], alt: String, caption: String? = nil, width: Int? = nil) {
        let b64 = Data(png).base64EncodedString()
        body += "<figure><img alt=\"\(xml(alt))\" src=\"data:image/png;base64,\(b64)\"\(width.map { " width=\"\($0)\"" } ?? "")>"
        if let c = caption { body += "<figcaption>\(xml(c))</figcaption>" }
        body += "</figure>\n"
    }

    /// An inline SVG (as written by ``LinePlot/svg(id:)``), with a caption.
    public mutating func svg(_ svg: String, caption: String? = nil) {
        body += "<figure>\(svg)"
        if let c = caption { body += "<figcaption>\(xml(c))</figcaption>" }
        body += "</figure>\n"
    }

    /// A plot inlined as SVG, its ids prefixed with `id` (unique per page).
    public mutating func plot(_ plot: LinePlot, id: String, caption: String? = nil) throws {
        svg(try plot.svg(id: id), caption: caption)
    }

    /// Preformatted text (a command line).
    public mutating func code(_ text: String) { body += "<pre><code>\(xml(text))</code></pre>\n" }

    /// The whole page.
    public func html() -> String {
        """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="generator" content="ptqd">
        <title>\(xml(title))</title>
        <style>
        body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; margin: 24px auto; max-width: 1100px; padding: 0 16px; color: #111; background: #fff; line-height: 1.4; }
        h1 { font-size: 22px; border-bottom: 2px solid #1f77b4; padding-bottom: 6px; }
        h2 { font-size: 18px; margin-top: 28px; }
        table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
        caption { text-align: left; font-weight: bold; padding: 4px 0; }
        th, td { border: 1px solid #bbb; padding: 3px 8px; }
        th { background: #eef3f8; text-align: left; }
        table.num td { text-align: right; }
        table.num td:first-child { text-align: left; }
        tbody tr:nth-child(even) { background: #f7f7f7; }
        figure { margin: 12px 0; }
        figure img { image-rendering: pixelated; max-width: 100%; }
        figcaption { font-size: 13px; color: #444; }
        pre { background: #f4f4f4; border: 1px solid #ddd; padding: 8px; white-space: pre-wrap; word-break: break-all; font-size: 12px; }
        .footer { font-size: 12px; color: #666; margin-top: 32px; }
        </style>
        </head>
        <body>
        <h1>\(xml(title))</h1>

        """ + body + "<p class=\"footer\">Written by \(xml(generator)); one self-contained file: no scripts, no network resources.</p>\n</body>\n</html>\n"
    }

    /// Writes the page atomically.
    public func write(to path: String) throws { try AtomicFile.write(html(), to: path) }
}

extension EvaluationReport {
    /// Rows of a metrics table with one column per report: FID, IS, precision, recall, PSNR and SSIM vs FP,
    /// time per image, throughput, peak RSS, BOPs, file size ("–" where not measured).
    public static func metricsTable(_ reports: [(name: String, report: EvaluationReport)]) -> (header: [String], rows: [[String]]) {
        func f(_ v: Double?, _ d: Int) -> String { v.map { $0.isFinite ? String(format: "%.\(d)f", $0) : "\($0)" } ?? "–" }
        let header = ["metric"] + reports.map(\.name)
        var rows: [[String]] = []
        func row(_ name: String, _ v: (EvaluationReport) -> String) { rows.append([name] + reports.map { v($0.report) }) }
        row("FID ↓") { f($0.metrics.fid, 3) }
        row("IS ↑") { r in f(r.metrics.inceptionScoreMean, 3) + (r.metrics.inceptionScoreStd.map { " ± " + String(format: "%.3f", $0) } ?? "") }
        row("precision (k = 3) ↑") { f($0.metrics.precision, 4) }
        row("recall (k = 3) ↑") { f($0.metrics.recall, 4) }
        row("PSNR vs FP, mean / 5th pct (dB) ↑") { r in r.metrics.psnr.map { String(format: "%.2f / %.2f", $0.mean, $0.p5) } ?? "–" }
        row("SSIM vs FP, mean / 5th pct ↑") { r in r.metrics.ssim.map { String(format: "%.4f / %.4f", $0.mean, $0.p5) } ?? "–" }
        row("time per image (ms)") { f($0.cost.secondsPerImage.map { $0 * 1000 }, 2) }
        row("throughput (images/s)") { f($0.cost.imagesPerSecond, 2) }
        row("peak RSS (MiB)") { f($0.cost.peakResidentBytes.map { Double($0) / 1_048_576 }, 1) }
        row("BOPs per UNet forward (G)") { f($0.cost.bopsPerForward.map { $0 / 1e9 }, 2) }
        row("model file (MiB)") { f($0.cost.modelFileBytes.map { Double($0) / 1_048_576 }, 2) }
        return (header, rows)
    }

    /// The metrics-by-n table (class-balanced prefixes), or nil when not computed.
    public var metricsByNTable: (header: [String], rows: [[String]])? {
        guard let rows = metricsByN, rows.count >= 2 else { return nil }
        return (["n (images)", "FID ↓", "IS ↑", "precision ↑", "recall ↑", "label agreement"],
                rows.map { r in [String(r.count), fmt(r.fid, 3), fmt(r.inceptionScoreMean, 3), fmt(r.precision, 4), fmt(r.recall, 4),
                                 r.labelAccuracy.map { fmt(100 * $0, 1) + "%" } ?? "–"] })
    }
}

/// `args` as one line a POSIX shell reads back as the same words (single quotes where needed).
public func shellCommand(_ args: [String]) -> String {
    args.map { a -> String in
        let safe = !a.isEmpty && a.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_./:=,+@%".unicodeScalars.contains($0) }
        return safe ? a : "'" + a.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}
