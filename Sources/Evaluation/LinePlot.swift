//===--- LinePlot.swift - one plot description, drawn as SVG and as PNG, with its data as JSON ---===//
//
// A `LinePlot` is a value: title, axis labels (with units), log flags and series. `axes()` picks the ranges and
// ticks, `layout()` places every element in pixels, and two back ends draw the same layout: `svg()` (text as text,
// PlotSVG.swift) and `render()` (cairo with DejaVu Sans, PlotRaster.swift). `write(to:)` writes NAME.png,
// NAME.svg and the sidecar NAME.json (the machine-readable form: every data point, the axes, the colors);
// `LinePlot(sidecar:)` reads a sidecar back, so figures can be redrawn from it (`ptqd plot`).

import Foundation

public struct LinePlot: Equatable {
    public struct Series: Codable, Equatable {
        public var name: String
        public var x: [Double]
        public var y: [Double]
        public init(name: String, x: [Double], y: [Double]) {
            precondition(x.count == y.count, "series '\(name)': \(x.count) x values, \(y.count) y values")
            self.name = name; self.x = x; self.y = y
        }
    }

    public var title: String
    /// A smaller second line under the title (e.g. the setting), or nil.
    public var subtitle: String?
    /// Axis labels, units included ("step (sampling order)", "FID", "images/s").
    public var xLabel: String
    public var yLabel: String
    public var logX: Bool
    public var logY: Bool
    /// Size in pixels (PNG) and in SVG user units.
    public var width: Int
    public var height: Int
    public var series: [Series]

    /// Series colors in order (RGB), repeated if there are more series (matplotlib's "tab10" order).
    public static let palette: [(UInt8, UInt8, UInt8)] = [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
        (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
    ]

    public init(title: String, subtitle: String? = nil, xLabel: String, yLabel: String, logX: Bool = false, logY: Bool = false,
                width: Int = 720, height: Int = 440, series: [Series] = []) {
        precondition(width >= 200 && height >= 160, "plot too small")
        self.title = title; self.subtitle = subtitle; self.xLabel = xLabel; self.yLabel = yLabel
        self.logX = logX; self.logY = logY; self.width = width; self.height = height; self.series = series
    }

    public func color(_ series: Int) -> RGB {
        let c = Self.palette[series % Self.palette.count]
        return RGB(bytes: c.0, c.1, c.2)
    }

    public func marker(_ series: Int) -> MarkerShape { MarkerShape.allCases[series % MarkerShape.allCases.count] }

    // MARK: - Axes

    /// Axis ranges and tick positions in data units (for a log axis: values of the quantity, not their logarithm).
    public struct Axes: Codable, Equatable {
        public var xRange: [Double]
        public var yRange: [Double]
        public var xTicks: [Double]
        public var yTicks: [Double]
    }

    /// The coordinate as plotted (log10 on a log axis; nil if not plottable there).
    static func plotted(_ v: Double, log: Bool) -> Double? {
        guard v.isFinite else { return nil }
        if log { return v > 0 ? Foundation.log10(v) : nil }
        return v
    }

    /// The points of series `s` that can be drawn (finite; positive on a log axis), in data units, as runs of
    /// consecutive points (a gap breaks the line).
    func runs(_ s: Series) -> [[(Double, Double)]] {
        var out: [[(Double, Double)]] = [], cur: [(Double, Double)] = []
        for (x, y) in zip(s.x, s.y) {
            if Self.plotted(x, log: logX) != nil, Self.plotted(y, log: logY) != nil { cur.append((x, y)) } else if !cur.isEmpty { out.append(cur); cur = [] }
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    /// Computes the ranges and ticks.
    /// - Throws: `.invalidArgument` if no series has a plottable point.
    public func axes() throws -> Axes {
        var xs: [Double] = [], ys: [Double] = []
        for s in series { for run in runs(s) { for p in run { xs.append(p.0); ys.append(p.1) } } }
        guard !xs.isEmpty else {
            throw EvaluationError.invalidArgument(what: "plot '\(title)'", reason: "no finite data points" + (logX || logY ? " (a log axis needs values > 0)" : ""))
        }
        let x = Self.axis(xs, log: logX), y = Self.axis(ys, log: logY)
        return Axes(xRange: x.range, yRange: y.range, xTicks: x.ticks, yTicks: y.ticks)
    }

    /// Range (padded by 5%, in log space on a log axis) and ticks for values `v`. A log axis gets a tick at every
    /// power of ten inside the range, and at 2× and 5× too when fewer than three decades are visible.
    static func axis(_ v: [Double], log: Bool) -> (range: [Double], ticks: [Double]) {
        let p = v.compactMap { plotted($0, log: log) }
        let (a, b) = padRange(p.min()!, p.max()!)
        guard log else { return ([a, b], niceTicks(a, b)) }
        let lo = Foundation.pow(10, a), hi = Foundation.pow(10, b)
        let decades = Int(a.rounded(.down))...Int(b.rounded(.up))
        let inside = { (t: Double) in t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9) }
        var ticks = decades.map { Foundation.pow(10, Double($0)) }.filter(inside)
        if ticks.count < 3 {
            ticks = decades.flatMap { k in [1.0, 2, 5].map { $0 * Foundation.pow(10, Double(k)) } }.filter(inside)
        }
        if ticks.count < 2 { ticks = niceTicks(lo, hi).filter { $0 > 0 } }
        return ([lo, hi], ticks)
    }

    static func padRange(_ a: Double, _ b: Double) -> (Double, Double) {
        if a == b { let d = a == 0 ? 1 : abs(a) * 0.1; return (a - d, b + d) }
        let d = (b - a) * 0.05
        return (a - d, b + d)
    }

    /// Five to ten ticks at multiples of 1, 2 or 5 × 10^k inside [a, b].
    static func niceTicks(_ a: Double, _ b: Double) -> [Double] {
        let raw = (b - a) / 5
        let mag = Foundation.pow(10, (Foundation.log10(raw)).rounded(.down))
        // The 1/2/5 step whose tick count is closest to six (ties: the larger step).
        let step = [10.0, 5, 2, 1].map { $0 * mag }.min { abs((b - a) / $0 - 5) < abs((b - a) / $1 - 5) } ?? mag
        var t: [Double] = []
        var v = (a / step).rounded(.up) * step
        while v <= b + step * 1e-9 { t.append(abs(v) < step * 1e-9 ? 0 : v); v += step }
        return t
    }

    // MARK: - Tick labels

    /// A tick label: `base`, or `base` with a superscript `exponent` ("10" and "−3" for 10⁻³).
    public struct TickLabel: Equatable {
        public var base: String
        public var exponent: String?
        public var text: String { exponent.map { base + "^" + $0 } ?? base }
    }

    /// Labels for `ticks`; exact powers of ten on a log axis are written 10^k (k ≠ 0, 1), the rest in plain
    /// decimals with as many digits as the tick spacing needs.
    static func labels(_ ticks: [Double], log: Bool) -> [TickLabel] {
        let decades = log && ticks.count >= 2 && ticks.allSatisfy { isPowerOfTen($0) }
        if decades {
            return ticks.map { t in
                let k = Int(Foundation.log10(t).rounded())
                if k == 0 { return TickLabel(base: "1") }
                if k == 1 { return TickLabel(base: "10") }
                return TickLabel(base: "10", exponent: minus(String(k)))
            }
        }
        if log { return ticks.map { TickLabel(base: minus(String(format: "%g", $0))) } }
        let steps = zip(ticks.dropFirst(), ticks).map { $0 - $1 }
        let step = steps.min() ?? max(abs(ticks.first ?? 1), 1)
        let decimals = max(0, Int((-Foundation.log10(step)).rounded(.up) + 1e-9))
        return ticks.map { t in
            let m = abs(t)
            if m != 0 && (m >= 1e6 || m < 1e-4) { return TickLabel(base: minus(String(format: "%g", t))) }
            return TickLabel(base: minus(String(format: "%.\(min(decimals, 6))f", t)))
        }
    }

    static func isPowerOfTen(_ v: Double) -> Bool {
        guard v > 0 else { return false }
        let k = Foundation.log10(v)
        return abs(k - k.rounded()) < 1e-9
    }

    /// A typographic minus sign (U+2212) instead of the hyphen.
    static func minus(_ s: String) -> String { s.replacingOccurrences(of: "-", with: "\u{2212}") }

    // MARK: - Layout (shared by both back ends)

    static let titleSize = 15.0, subtitleSize = 12.0, labelSize = 12.0, tickSize = 11.0, exponentSize = 8.0, legendSize = 12.0

    struct Tick { var position: Double; var label: TickLabel?; }
    struct LegendEntry { var series: Int; var x: Double; var y: Double }

    /// Every element's place in pixels.
    struct Layout {
        var plotX: Double, plotY: Double, plotW: Double, plotH: Double
        var titleY: Double, subtitleY: Double?
        var xTicks: [Tick], yTicks: [Tick]
        var xLabelY: Double, yLabelX: Double
        var legend: [LegendEntry]
        /// Data → pixel maps.
        var px: (Double) -> Double
        var py: (Double) -> Double
        var markerRadius: Double
    }

    /// Width of a tick label in pixels (estimated, the same for both back ends).
    static func width(_ l: TickLabel) -> Double {
        TextMetrics.width(l.base, size: tickSize) + (l.exponent.map { TextMetrics.width($0, size: exponentSize) } ?? 0)
    }

    func layout() throws -> Layout {
        let ax = try axes()
        var xLabels = Self.labels(ax.xTicks, log: logX), yLabels = Self.labels(ax.yTicks, log: logY)
        // Dense decade ticks: label every other one (the marks and grid lines stay).
        if logY && yLabels.count > 8 { for i in yLabels.indices where i % 2 == 1 { yLabels[i].base = ""; yLabels[i].exponent = nil } }
        if logX && xLabels.count > 8 { for i in xLabels.indices where i % 2 == 1 { xLabels[i].base = ""; xLabels[i].exponent = nil } }
        let yTickW = yLabels.map(Self.width).max() ?? 0
        let yLabelX = 8 + Self.labelSize * 0.95
        let plotX = (yLabelX + 8 + yTickW + 8).rounded()
        let lastXW = xLabels.last.map(Self.width) ?? 0
        let right = max(24, (lastXW / 2 + 8).rounded())
        let plotW = Double(width) - plotX - right
        // Legend rows under the x label, entries flowing left to right, each row centred.
        let sample = 28.0, gap = 18.0, rowH = 18.0
        var rows: [[(Int, Double)]] = [[]]
        var rowW: [Double] = [0]
        let maxRowW = Double(width) - 32
        for i in series.indices {
            let w = sample + 6 + TextMetrics.width(series[i].name, size: Self.legendSize)
            if !rows[rows.count - 1].isEmpty && rowW[rowW.count - 1] + gap + w > maxRowW { rows.append([]); rowW.append(0) }
            let start = rowW[rowW.count - 1] + (rows[rows.count - 1].isEmpty ? 0 : gap)
            rows[rows.count - 1].append((i, start))
            rowW[rowW.count - 1] = start + w
        }
        let legendRows = series.isEmpty ? 0 : rows.count
        let titleY = 24.0
        let subtitleY: Double? = subtitle == nil ? nil : titleY + 18
        let plotY = (subtitleY ?? titleY) + 16
        let bottom = 40 + Double(legendRows) * rowH + (legendRows > 0 ? 10 : 0)
        let plotH = Double(height) - plotY - bottom
        guard plotW >= 60, plotH >= 40 else {
            throw EvaluationError.invalidArgument(what: "plot '\(title)'", reason: "\(width)x\(height) px leaves no room for the plot area (too many series or long labels)")
        }
        func map(_ lo: Double, _ hi: Double, _ log: Bool) -> (Double) -> Double {
            let a = log ? Foundation.log10(lo) : lo, b = log ? Foundation.log10(hi) : hi
            return { v in ((log ? Foundation.log10(v) : v) - a) / (b - a) }
        }
        let fx = map(ax.xRange[0], ax.xRange[1], logX), fy = map(ax.yRange[0], ax.yRange[1], logY)
        let px: (Double) -> Double = { plotX + fx($0) * plotW }
        let py: (Double) -> Double = { plotY + plotH - fy($0) * plotH }
        let legendTop = plotY + plotH + 52
        var legend: [LegendEntry] = []
        for (r, row) in rows.enumerated() {
            let x0 = ((Double(width) - rowW[r]) / 2).rounded()
            for (i, start) in row { legend.append(LegendEntry(series: i, x: x0 + start, y: legendTop + Double(r) * rowH)) }
        }
        let points = series.map { $0.x.count }.max() ?? 0
        return Layout(plotX: plotX, plotY: plotY, plotW: plotW, plotH: plotH, titleY: titleY, subtitleY: subtitleY,
                      xTicks: zip(ax.xTicks, xLabels).map { Tick(position: px($0), label: $1.base.isEmpty ? nil : $1) },
                      yTicks: zip(ax.yTicks, yLabels).map { Tick(position: py($0), label: $1.base.isEmpty ? nil : $1) },
                      xLabelY: plotY + plotH + 36, yLabelX: yLabelX, legend: legend, px: px, py: py,
                      markerRadius: points > 60 ? 2.2 : points > 25 ? 2.8 : 3.6)
    }

    // MARK: - Files

    /// The sidecar: everything needed to redraw the plot, plus the computed axes and colors for other tools.
    struct Sidecar: Codable {
        struct Entry: Codable { var name: String; var color: String?; var marker: String?; var x: [Double]; var y: [Double] }
        var title: String
        var subtitle: String?
        var xLabel: String
        var yLabel: String
        var logX: Bool?
        var logY: Bool
        var width: Int?
        var height: Int?
        var image: String?
        var svg: String?
        var axes: Axes?
        var series: [Entry]
    }

    /// Reads a sidecar written by ``write(to:)`` (older sidecars without `log_x`, `width`, `height` too).
    /// - Throws: `.cannotRead` naming the file and what is wrong with it.
    public init(sidecar path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else { throw EvaluationError.cannotRead(path: path, reason: "cannot open file") }
        let s: Sidecar
        do { s = try ReportJSON.decoder().decode(Sidecar.self, from: data) } catch {
            throw EvaluationError.cannotRead(path: path, reason: "not a plot sidecar: \(FeatureNetwork.decodingReason(error))")
        }
        for e in s.series where e.x.count != e.y.count {
            throw EvaluationError.cannotRead(path: path, reason: "series '\(e.name)' has \(e.x.count) x values and \(e.y.count) y values")
        }
        let w = s.width ?? 720, h = s.height ?? 440
        guard w >= 200 && h >= 160 && w <= 8192 && h <= 8192 else {
            throw EvaluationError.cannotRead(path: path, reason: "size \(w)x\(h) outside 200x160 … 8192x8192")
        }
        self.init(title: s.title, subtitle: s.subtitle, xLabel: s.xLabel, yLabel: s.yLabel, logX: s.logX ?? false, logY: s.logY,
                  width: w, height: h, series: s.series.map { Series(name: $0.name, x: $0.x, y: $0.y) })
    }

    /// The sidecar JSON for a plot written as `stem`.png / `stem`.svg.
    public func sidecarJSON(stem: String) throws -> [UInt8] {
        let entries = series.enumerated().map { i, s in
            Sidecar.Entry(name: s.name, color: color(i).hex, marker: marker(i).rawValue, x: s.x, y: s.y)
        }
        let sidecar = Sidecar(title: title, subtitle: subtitle, xLabel: xLabel, yLabel: yLabel, logX: logX, logY: logY,
                              width: width, height: height, image: stem + ".png", svg: stem + ".svg", axes: try axes(), series: entries)
        return try ReportJSON.encode(sidecar)
    }

    /// `path` without a trailing `.png`, `.svg` or `.json`.
    public static func stem(of path: String) -> String {
        for ext in [".png", ".svg", ".json"] where path.lowercased().hasSuffix(ext) { return String(path.dropLast(ext.count)) }
        return path
    }

    /// Writes STEM.png, STEM.svg and the sidecar STEM.json (each atomically; everything is rendered before the
    /// first file is written), where STEM is `path` without its extension. Returns the sidecar path.
    @discardableResult
    public func write(to path: String) throws -> String {
        let base = Self.stem(of: path)
        let name = (base as NSString).lastPathComponent
        let png = try PNGCodec.encode(try render(), nameForErrors: base + ".png")
        let svg = try self.svg()
        let json = try sidecarJSON(stem: name)
        try AtomicFile.write(png, to: base + ".png")
        try AtomicFile.write(svg, to: base + ".svg")
        try AtomicFile.write(json, to: base + ".json")
        return base + ".json"
    }
}

/// Advance widths of DejaVu Sans (em units, from the font's hmtx table, rounded), used to lay out text the same
/// way in SVG and PNG. Characters not listed count 0.62 em (a little wider than the average letter).
public enum TextMetrics {
    static let table: [Character: Double] = {
        var t: [Character: Double] = [" ": 0.318, ".": 0.318, ",": 0.318, ":": 0.337, ";": 0.337, "-": 0.361, "−": 0.838,
                                      "+": 0.838, "=": 0.838, "×": 0.838, "^": 0.838, "_": 0.5, "/": 0.337, "(": 0.39, ")": 0.39,
                                      "[": 0.39, "]": 0.39, "%": 0.95, "'": 0.275, "·": 0.318, "σ": 0.634, "ε": 0.541, "≥": 0.838,
                                      "≤": 0.838, "→": 0.838, "↓": 0.838, "↑": 0.838, "|": 0.337, "&": 0.78, "#": 0.838, "*": 0.5,
                                      "!": 0.4, "?": 0.531]
        for d in "0123456789" { t[d] = 0.636 }
        let lower: [Double] = [0.613, 0.635, 0.55, 0.635, 0.615, 0.352, 0.635, 0.634, 0.278, 0.278, 0.579, 0.278, 0.974,
                               0.634, 0.612, 0.635, 0.635, 0.411, 0.521, 0.392, 0.634, 0.592, 0.818, 0.592, 0.592, 0.525]
        let upper: [Double] = [0.684, 0.686, 0.698, 0.77, 0.632, 0.575, 0.775, 0.752, 0.295, 0.295, 0.656, 0.557, 0.863,
                               0.748, 0.787, 0.603, 0.787, 0.695, 0.635, 0.611, 0.732, 0.684, 0.989, 0.685, 0.611, 0.685]
        for (i, c) in "abcdefghijklmnopqrstuvwxyz".enumerated() { t[c] = lower[i] }
        for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZ".enumerated() { t[c] = upper[i] }
        return t
    }()

    /// Estimated advance width of `text` at `size` px (bold ≈ 8% wider).
    public static func width(_ text: String, size: Double, bold: Bool = false) -> Double {
        text.reduce(0) { $0 + (table[$1] ?? 0.62) } * size * (bold ? 1.08 : 1)
    }
}

/// JSON encoding shared by reports and sidecars: sorted keys, pretty printed, snake_case keys,
/// non-finite numbers as the strings "inf", "-inf", "nan".
enum ReportJSON {
    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        e.keyEncodingStrategy = .convertToSnakeCase
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return e
    }

    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        d.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return d
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        do { return Array(try encoder().encode(value)) + [0x0A] } catch {
            throw EvaluationError.invalidArgument(what: "JSON value", reason: "\(error)")
        }
    }
}
