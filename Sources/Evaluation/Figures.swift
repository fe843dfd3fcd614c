//===--- Figures.swift - plots built from files: merged sidecars, `ptqd bench --json` results ---===//

import Foundation

extension LinePlot {
    /// One plot holding the series of `plots` in order; titles, labels, log flags and size come from the first.
    /// - Parameter names: replaces the series names in order (nil keeps them; a plot with several series keeps its
    ///   own names when `names` runs out).
    /// - Throws: `.invalidArgument` for an empty list or more names than series.
    public static func merged(_ plots: [LinePlot], names: [String]? = nil) throws -> LinePlot {
        guard var out = plots.first else { throw EvaluationError.invalidArgument(what: "plot", reason: "no input plots") }
        out.series = plots.flatMap(\.series)
        if let names {
            guard names.count <= out.series.count else {
                throw EvaluationError.invalidArgument(what: "series names", reason: "\(names.count) names for \(out.series.count) series")
            }
            for (i, n) in names.enumerated() { out.series[i].name = n }
        }
        return out
    }

    /// Throughput by batch size from the JSON `ptqd bench --json` writes: our fp32, bf16 (if measured), each
    /// quantized file (integer kernels) and the PyTorch peer (if run), in images/s, log-scaled batch axis.
    /// - Throws: `.cannotRead` if `path` is not such a file.
    public init(benchmarkJSON path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError.cannotRead(path: path, reason: "cannot open file") }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let ours = obj["ours"] as? [[String: Any]] else {
            throw EvaluationError.cannotRead(path: path, reason: "not a `ptqd bench --json` result (no \"ours\" list)")
        }
        func series(_ name: String, _ rows: [[String: Any]]) -> Series? {
            let pts = rows.compactMap { r -> (Double, Double)? in
                guard let b = (r["batch"] as? NSNumber)?.doubleValue, let v = (r["images_per_s"] as? NSNumber)?.doubleValue else { return nil }
                return (b, v)
            }.sorted { $0.0 < $1.0 }
            return pts.isEmpty ? nil : Series(name: name, x: pts.map(\.0), y: pts.map(\.1))
        }
        var all: [Series] = []
        if let s = series("fp32 (ours)", ours) { all.append(s) }
        if let bf = obj["bf16"] as? [[String: Any]], let s = series("bf16 (ours)", bf) { all.append(s) }
        if let q = obj["quantized"] as? [[String: Any]] {
            var labels: [String] = []
            for r in q { if let l = r["label"] as? String, !labels.contains(l) { labels.append(l) } }
            for l in labels { if let s = series("\(l.uppercased()) int8 kernels", q.filter { ($0["label"] as? String) == l }) { all.append(s) } }
        }
        if let t = obj["torch"] as? [String: Any], let rows = t["results"] as? [[String: Any]] {
            var layouts: [String] = []
            for r in rows { if let l = r["layout"] as? String, !layouts.contains(l) { layouts.append(l) } }
            for l in layouts {
                if let s = series("PyTorch fp32" + (layouts.count > 1 ? " \(l)" : ""), rows.filter { ($0["layout"] as? String) == l }) { all.append(s) }
            }
        }
        guard !all.isEmpty else { throw EvaluationError.cannotRead(path: path, reason: "no (batch, images_per_s) rows") }
        let model = (obj["model"] as? String).map { ($0 as NSString).lastPathComponent } ?? "model"
        var sub = model
        if let g = (obj["gmac_per_image"] as? NSNumber)?.doubleValue { sub += String(format: ", %.2f GMAC/image", g) }
        if let th = obj["threads"] as? Int { sub += ", \(th) threads" }
        if let isa = obj["isa"] as? String { sub += ", oneDNN \(isa)" }
        self.init(title: "UNet forward throughput by batch size", subtitle: sub, xLabel: "batch size (images per forward, log scale)",
                  yLabel: "throughput (images/s)", logX: true, series: all)
    }
}
