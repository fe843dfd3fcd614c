//===--- LinePlot.swift - a minimal line plot to PNG, with the numbers in a JSON sidecar ---===//
//
// No text rendering: the PNG has axes, tick marks, light grid lines and one colored polyline with
// square markers per series; titles, axis labels, tick values, legend colors and all data points
// are in the sidecar JSON written next to it.

import Foundation

public struct LinePlot {
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
    public var xLabel: String
    public var yLabel: String
    public var logY: Bool
    public var width: Int
    public var height: Int
    public var series: [Series]

    /// Series colors in order (RGB), repeated if there are more series.
    public static let palette: [(UInt8, UInt8, UInt8)] = [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
        (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
    ]

    public init(title: String, xLabel: String, yLabel: String, logY: Bool = false,
                width: Int = 640, height: Int = 400, series: [Series] = []) {
        precondition(width >= 120 && height >= 100, "plot too small")
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.logY = logY
        self.width = width; self.height = height; self.series = series
    }

    // Plot area margins in pixels.
    static let left = 40, right = 16, top = 16, bottom = 32

    /// Axis ranges and tick positions (data units; for log-y the y values are powers of ten or
    /// nice values of the plotted quantity, not its logarithm).
    public struct Axes: Codable, Equatable {
        public var xRange: [Double]
        public var yRange: [Double]
        public var xTicks: [Double]
        public var yTicks: [Double]
    }

    /// The y coordinate as plotted (log10 for log plots; nil if not plottable).
    func plotted(_ y: Double) -> Double? {
        guard y.isFinite else { return nil }
        if logY { return y > 0 ? Foundation.log10(y) : nil }
        return y
    }

    /// Computes the ranges and ticks.
    /// - Throws: `.invalidArgument` if no series has a plottable point.
    public func axes() throws -> Axes {
        var xs: [Double] = [], ys: [Double] = []
        for s in series {
            for (x, y) in zip(s.x, s.y) where x.isFinite { if let p = plotted(y) { xs.append(x); ys.append(p) } }
        }
        guard let x0 = xs.min(), let x1 = xs.max(), let y0 = ys.min(), let y1 = ys.max() else {
            throw EvaluationError.invalidArgument(what: "plot '\(title)'", reason: "no finite data points" + (logY ? " (log-y needs y > 0)" : ""))
        }
        let (xa, xb) = Self.padRange(x0, x1)
        var (ya, yb) = Self.padRange(y0, y1)
        let xt = Self.niceTicks(xa, xb)
        let yt: [Double]
        if logY && yb - ya >= 1 {
            ya = ya.rounded(.down); yb = yb.rounded(.up)
            yt = stride(from: ya, through: yb, by: 1).map { Foundation.pow(10, $0) }
        } else if logY {
            yt = Self.niceTicks(Foundation.pow(10, ya), Foundation.pow(10, yb))
        } else {
            yt = Self.niceTicks(ya, yb)
        }
        return Axes(xRange: [xa, xb], yRange: logY ? [Foundation.pow(10, ya), Foundation.pow(10, yb)] : [ya, yb],
                    xTicks: xt, yTicks: yt)
    }

    static func padRange(_ a: Double, _ b: Double) -> (Double, Double) {
        if a == b { let d = a == 0 ? 1 : abs(a) * 0.1; return (a - d, b + d) }
        let d = (b - a) * 0.05
        return (a - d, b + d)
    }

    /// About five ticks at multiples of 1, 2 or 5 × 10^k inside [a, b].
    static func niceTicks(_ a: Double, _ b: Double) -> [Double] {
        let raw = (b - a) / 5
        let mag = Foundation.pow(10, (Foundation.log10(raw)).rounded(.down))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        var t: [Double] = []
        var v = (a / step).rounded(.up) * step
        while v <= b + step * 1e-9 { t.append(abs(v) < step * 1e-9 ? 0 : v); v += step }
        return t
    }

    /// Renders the plot (RGB, white background).
    public func render() throws -> PNGImage {
        let ax = try axes()
        var img = PNGImage(width: width, height: height, channels: 3, fill: 255)
        let pw = width - Self.left - Self.right, ph = height - Self.top - Self.bottom
        let ya = logY ? Foundation.log10(ax.yRange[0]) : ax.yRange[0]
        let yb = logY ? Foundation.log10(ax.yRange[1]) : ax.yRange[1]
        func px(_ x: Double) -> Int { Self.left + Int(((x - ax.xRange[0]) / (ax.xRange[1] - ax.xRange[0]) * Double(pw)).rounded()) }
        func py(_ y: Double) -> Int { Self.top + ph - Int(((y - ya) / (yb - ya) * Double(ph)).rounded()) }
        // Grid lines and tick marks.
        for t in ax.xTicks {
            let x = px(t)
            for y in Self.top..<(Self.top + ph) where y % 2 == 0 { img.set(x: x, y: y, (225, 225, 225)) }
            for y in (Self.top + ph)..<(Self.top + ph + 6) { img.set(x: x, y: y, (0, 0, 0)) }
        }
        for t in ax.yTicks {
            guard let v = plotted(t) else { continue }
            let y = py(v)
            for x in Self.left..<(Self.left + pw) where x % 2 == 0 { img.set(x: x, y: y, (225, 225, 225)) }
            for x in (Self.left - 6)..<Self.left { img.set(x: x, y: y, (0, 0, 0)) }
        }
        // Axes box.
        for x in Self.left...(Self.left + pw) { img.set(x: x, y: Self.top + ph, (0, 0, 0)); img.set(x: x, y: Self.top, (0, 0, 0)) }
        for y in Self.top...(Self.top + ph) { img.set(x: Self.left, y: y, (0, 0, 0)); img.set(x: Self.left + pw, y: y, (0, 0, 0)) }
        // Series.
        for (i, s) in series.enumerated() {
            let color = Self.palette[i % Self.palette.count]
            var prev: (Int, Int)? = nil
            for (x, y) in zip(s.x, s.y) {
                guard x.isFinite, let v = plotted(y) else { prev = nil; continue }
                let p = (px(x), py(v))
                if let q = prev { Self.line(&img, q, p, color) }
                img.fill(x0: p.0 - 2, y0: p.1 - 2, w: 5, h: 5, color)
                prev = p
            }
        }
        return img
    }

    /// A 2-px wide line (Bresenham with a 2×2 brush).
    static func line(_ img: inout PNGImage, _ a: (Int, Int), _ b: (Int, Int), _ c: (UInt8, UInt8, UInt8)) {
        var (x0, y0) = a
        let (x1, y1) = b
        let dx = abs(x1 - x0), dy = -abs(y1 - y0)
        let sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            img.fill(x0: x0, y0: y0, w: 2, h: 2, c)
            if x0 == x1 && y0 == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x0 += sx }
            if e2 <= dx { err += dx; y0 += sy }
        }
    }

    struct Sidecar: Codable {
        struct Entry: Codable { var name: String; var color: String; var x: [Double]; var y: [Double] }
        var title: String
        var xLabel: String
        var yLabel: String
        var logY: Bool
        var image: String
        var axes: Axes
        var series: [Entry]
    }

    /// Writes the PNG to `path` and the numbers to `path` with its extension replaced by `.json`
    /// (both atomically). Returns the sidecar path.
    @discardableResult
    public func write(to path: String) throws -> String {
        let img = try render()
        let base = path.hasSuffix(".png") ? String(path.dropLast(4)) : path
        let sidecarPath = base + ".json"
        let entries = series.enumerated().map { i, s -> Sidecar.Entry in
            let c = Self.palette[i % Self.palette.count]
            let hex = [c.0, c.1, c.2].map { v -> String in let s = String(v, radix: 16); return s.count == 1 ? "0" + s : s }.joined()
            return .init(name: s.name, color: "#" + hex, x: s.x, y: s.y)
        }
        let sidecar = Sidecar(title: title, xLabel: xLabel, yLabel: yLabel, logY: logY,
                              image: (path as NSString).lastPathComponent, axes: try axes(), series: entries)
        let json = try ReportJSON.encode(sidecar)
        try PNGCodec.write(img, to: path)
        try AtomicFile.write(json, to: sidecarPath)
        return sidecarPath
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
