//===--- PlotSVG.swift - the SVG back end of LinePlot: text stays text ---===//
//
// Coordinates are written with two decimals and elements in a fixed order, so the same plot gives the same bytes
// (the golden test compares them). No scripts, no external references: the SVG can be inlined in HTML.

import Foundation

extension LinePlot {
    /// The plot as a standalone SVG document (UTF-8 text, ends with a newline).
    /// - Parameter id: prefix for element ids, so several plots can be inlined in one HTML page.
    public func svg(id: String = "plot") throws -> String {
        let L = try layout()
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" viewBox=\"0 0 \(width) \(height)\" "
        s += "font-family=\"DejaVu Sans, Verdana, Arial, sans-serif\" role=\"img\" aria-labelledby=\"\(xml(id))-title\">\n"
        s += "<title id=\"\(xml(id))-title\">\(xml(title))</title>\n"
        s += "<rect x=\"0\" y=\"0\" width=\"\(width)\" height=\"\(height)\" fill=\"#ffffff\"/>\n"
        s += "<text x=\"\(f(Double(width) / 2))\" y=\"\(f(L.titleY))\" font-size=\"\(f(Self.titleSize))\" font-weight=\"bold\" text-anchor=\"middle\">\(xml(title))</text>\n"
        if let sub = subtitle, let y = L.subtitleY {
            s += "<text x=\"\(f(Double(width) / 2))\" y=\"\(f(y))\" font-size=\"\(f(Self.subtitleSize))\" fill=\"#444444\" text-anchor=\"middle\">\(xml(sub))</text>\n"
        }
        let x0 = L.plotX, y0 = L.plotY, x1 = L.plotX + L.plotW, y1 = L.plotY + L.plotH
        // Grid.
        s += "<g stroke=\"#dddddd\" stroke-width=\"1\" stroke-dasharray=\"3 3\">\n"
        for t in L.xTicks { s += "<line x1=\"\(f(t.position))\" y1=\"\(f(y0))\" x2=\"\(f(t.position))\" y2=\"\(f(y1))\"/>\n" }
        for t in L.yTicks { s += "<line x1=\"\(f(x0))\" y1=\"\(f(t.position))\" x2=\"\(f(x1))\" y2=\"\(f(t.position))\"/>\n" }
        s += "</g>\n"
        // Frame and tick marks.
        s += "<rect x=\"\(f(x0))\" y=\"\(f(y0))\" width=\"\(f(L.plotW))\" height=\"\(f(L.plotH))\" fill=\"none\" stroke=\"#000000\" stroke-width=\"1\"/>\n"
        s += "<g stroke=\"#000000\" stroke-width=\"1\">\n"
        for t in L.xTicks { s += "<line x1=\"\(f(t.position))\" y1=\"\(f(y1))\" x2=\"\(f(t.position))\" y2=\"\(f(y1 + 5))\"/>\n" }
        for t in L.yTicks { s += "<line x1=\"\(f(x0 - 5))\" y1=\"\(f(t.position))\" x2=\"\(f(x0))\" y2=\"\(f(t.position))\"/>\n" }
        s += "</g>\n"
        // Tick labels.
        s += "<g font-size=\"\(f(Self.tickSize))\" fill=\"#000000\">\n"
        for t in L.xTicks { if let l = t.label { s += tickText(l, x: t.position, y: y1 + 18, anchor: "middle") } }
        for t in L.yTicks { if let l = t.label { s += tickText(l, x: x0 - 8, y: t.position + 4, anchor: "end") } }
        s += "</g>\n"
        // Axis labels.
        s += "<text x=\"\(f(x0 + L.plotW / 2))\" y=\"\(f(L.xLabelY))\" font-size=\"\(f(Self.labelSize))\" text-anchor=\"middle\">\(xml(xLabel))</text>\n"
        s += "<text x=\"\(f(L.yLabelX))\" y=\"\(f(y0 + L.plotH / 2))\" font-size=\"\(f(Self.labelSize))\" text-anchor=\"middle\" "
        s += "transform=\"rotate(-90 \(f(L.yLabelX)) \(f(y0 + L.plotH / 2)))\">\(xml(yLabel))</text>\n"
        // Series: line, then markers.
        for (i, ser) in series.enumerated() {
            let c = color(i).hex
            s += "<g class=\"series\" data-name=\"\(xml(ser.name))\">\n"
            for run in runs(ser) {
                let pts = run.map { "\(f(L.px($0.0))),\(f(L.py($0.1)))" }.joined(separator: " ")
                if run.count >= 2 { s += "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" stroke-linejoin=\"round\"/>\n" }
                for p in run { s += markerSVG(marker(i), x: L.px(p.0), y: L.py(p.1), r: L.markerRadius, color: c) }
            }
            s += "</g>\n"
        }
        // Legend.
        if !L.legend.isEmpty {
            s += "<g font-size=\"\(f(Self.legendSize))\">\n"
            for e in L.legend {
                let c = color(e.series).hex
                s += "<line x1=\"\(f(e.x))\" y1=\"\(f(e.y - 4))\" x2=\"\(f(e.x + 28))\" y2=\"\(f(e.y - 4))\" stroke=\"\(c)\" stroke-width=\"2\"/>\n"
                s += markerSVG(marker(e.series), x: e.x + 14, y: e.y - 4, r: 3.6, color: c)
                s += "<text x=\"\(f(e.x + 34))\" y=\"\(f(e.y))\">\(xml(series[e.series].name))</text>\n"
            }
            s += "</g>\n"
        }
        s += "</svg>\n"
        return s
    }

    private func tickText(_ l: TickLabel, x: Double, y: Double, anchor: String) -> String {
        let body = xml(l.base) + (l.exponent.map { "<tspan dy=\"-5\" font-size=\"\(String(format: "%.2f", Self.exponentSize))\">\(xml($0))</tspan>" } ?? "")
        return "<text x=\"\(String(format: "%.2f", x))\" y=\"\(String(format: "%.2f", y))\" text-anchor=\"\(anchor)\">\(body)</text>\n"
    }

    private func markerSVG(_ shape: MarkerShape, x: Double, y: Double, r: Double, color: String) -> String {
        func f(_ v: Double) -> String { String(format: "%.2f", v) }
        if shape == .circle {
            return "<circle cx=\"\(f(x))\" cy=\"\(f(y))\" r=\"\(f(r))\" fill=\"\(color)\" stroke=\"#ffffff\" stroke-width=\"0.75\"/>\n"
        }
        let pts = shape.outline(x: x, y: y, r: r).map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " ")
        return "<polygon points=\"\(pts)\" fill=\"\(color)\" stroke=\"#ffffff\" stroke-width=\"0.75\"/>\n"
    }
}

/// `text` with &, <, >, " and ' escaped for XML/HTML text and attribute values.
public func xml(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.count)
    for c in text {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(c)
        }
    }
    return out
}
