//===--- Plot.swift - `ptqd plot`: redraw figures from their JSON --------------===//

import ArgumentParser
import Correction
import Evaluation
import Foundation
import Pipeline
import Quantization

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw a plot (PNG + SVG + JSON sidecar) from plot sidecars or a `ptqd bench --json` result.",
        discussion: """
        Each FILE is a plot sidecar (the .json beside every plot ptqd writes) or the JSON of `ptqd bench --json` \
        (throughput by batch size). Several sidecars are merged into one plot: the series in file order, titles, \
        labels and log flags from the first file unless overridden. Writes OUT.png, OUT.svg and OUT.json (OUT \
        without extension; a trailing .png/.svg/.json is dropped). With --quantized FILE instead: the PTQD \
        statistics stored in a quantized file, as OUT-snr.* (SNR^Q of every weight variant and SNR^F per step) and \
        OUT-k-sigma.* (k_t and σ_q per step).
        """)

    @Argument(help: "plot sidecars (.json) or `ptqd bench --json` files") var files: [String] = []
    @Option(help: ArgumentHelp("plot the correction statistics stored in this quantized file instead", valueName: "file"))
    var quantized: String?
    @Option(help: "output path stem (writes STEM.png, STEM.svg, STEM.json)") var out: String
    @Option(help: "title") var title: String?
    @Option(help: "second title line (e.g. the setting)") var subtitle: String?
    @Option(name: .customLong("x-label"), help: "x-axis label, with units") var xLabel: String?
    @Option(name: .customLong("y-label"), help: "y-axis label, with units") var yLabel: String?
    @Option(help: "comma-separated series names, replacing the files' in order") var names: String?
    @Option(name: .customLong("log-x"), help: ArgumentHelp("logarithmic x axis", valueName: "true|false")) var logX: Bool?
    @Option(name: .customLong("log-y"), help: ArgumentHelp("logarithmic y axis", valueName: "true|false")) var logY: Bool?
    @Option(help: "width in pixels") var width: Int?
    @Option(help: "height in pixels") var height: Int?

    func validate() throws {
        guard files.isEmpty != (quantized == nil) else { throw ValidationError("give either sidecar/bench files or --quantized FILE") }
        if let w = width, !(200...8192).contains(w) { throw ValidationError("--width must be in 200...8192") }
        if let h = height, !(160...8192).contains(h) { throw ValidationError("--height must be in 160...8192") }
    }

    func run() throws {
        if let file = quantized { return try plotQuantized(file) }
        let plots = try files.map { path -> LinePlot in
            guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("\(path): cannot open file") }
            let isBench = ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["ours"] != nil
            return isBench ? try LinePlot(benchmarkJSON: path) : try LinePlot(sidecar: path)
        }
        let plot = try LinePlot.merged(plots, names: names.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) })
        try write(plot, to: out)
    }

    func write(_ p: LinePlot, to path: String) throws {
        var plot = p
        if let v = title { plot.title = v }
        if let v = subtitle { plot.subtitle = v.isEmpty ? nil : v }
        if let v = xLabel { plot.xLabel = v }
        if let v = yLabel { plot.yLabel = v }
        if let v = logX { plot.logX = v }
        if let v = logY { plot.logY = v }
        if let v = width { plot.width = v }
        if let v = height { plot.height = v }
        let sidecar = try plot.write(to: path)
        let stem = LinePlot.stem(of: path)
        print("wrote \(stem).png, \(stem).svg, \(sidecar) (\(plot.series.count) series)")
    }

    func plotQuantized(_ file: String) throws {
        let q = try QuantizedModel(path: file)
        guard let text = q.info.attachments[CorrectionDocument.attachmentName] else {
            throw ValidationError("\(file) holds no correction statistics (quantize with --correct ptqd)")
        }
        let doc = try CorrectionDocument(json: text)
        let names = q.info.variants.map(\.name)
        let sub = names.map { $0.uppercased() }.joined(separator: ":") + (doc.plan != nil ? " mixed" : "") + ", " + doc.settings.summary
            + ", \(doc.statistics.trajectories) FP trajectories"
        let stem = LinePlot.stem(of: out)
        var snr = CorrectionFigures.snr(doc, variantNames: names, subtitle: sub)
        if let names = self.names { snr = try LinePlot.merged([snr], names: names.split(separator: ",", omittingEmptySubsequences: false).map(String.init)) }
        try write(snr, to: stem + "-snr")
        try write(CorrectionFigures.kSigma(doc, subtitle: sub), to: stem + "-k-sigma")
    }
}
