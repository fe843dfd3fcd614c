//===--- PlotRaster.swift - the PNG back end of LinePlot: the same layout drawn with cairo ---===//

import Foundation

extension LinePlot {
    /// Renders the plot (RGB, white background) with cairo; text in DejaVu Sans (see ``Canvas``).
    /// - Throws: `.invalidArgument` if nothing can be plotted.
    public func render() throws -> PNGImage {
        let L = try layout()
        let c = Canvas(width: width, height: height)
        let gray = RGB(bytes: 221, 221, 221)
        c.text(title, x: Double(width) / 2, y: L.titleY, size: Self.titleSize, bold: true, anchor: .middle)
        if let sub = subtitle, let y = L.subtitleY {
            c.text(sub, x: Double(width) / 2, y: y, size: Self.subtitleSize, color: RGB(bytes: 68, 68, 68), anchor: .middle)
        }
        let x0 = L.plotX, y0 = L.plotY, x1 = L.plotX + L.plotW, y1 = L.plotY + L.plotH
        // 1-px lines sit on pixel centres.
        func crisp(_ v: Double) -> Double { v.rounded(.down) + 0.5 }
        for t in L.xTicks { c.line(crisp(t.position), y0, crisp(t.position), y1, color: gray, dash: [3, 3]) }
        for t in L.yTicks { c.line(x0, crisp(t.position), x1, crisp(t.position), color: gray, dash: [3, 3]) }
        c.strokeRect(x: crisp(x0), y: crisp(y0), w: L.plotW.rounded(), h: L.plotH.rounded(), color: .black)
        for t in L.xTicks {
            c.line(crisp(t.position), y1, crisp(t.position), y1 + 5, color: .black)
            if let l = t.label { tickText(c, l, x: t.position, y: y1 + 18, anchor: .middle) }
        }
        for t in L.yTicks {
            c.line(x0 - 5, crisp(t.position), x0, crisp(t.position), color: .black)
            if let l = t.label { tickText(c, l, x: x0 - 8, y: t.position + 4, anchor: .end) }
        }
        c.text(xLabel, x: x0 + L.plotW / 2, y: L.xLabelY, size: Self.labelSize, anchor: .middle)
        c.text(yLabel, x: L.yLabelX, y: y0 + L.plotH / 2, size: Self.labelSize, anchor: .middle, rotated: true)
        for (i, s) in series.enumerated() {
            for run in runs(s) {
                c.polyline(run.map { (L.px($0.0), L.py($0.1)) }, color: color(i), width: 2)
                for p in run { c.marker(marker(i), x: L.px(p.0), y: L.py(p.1), r: L.markerRadius, color: color(i)) }
            }
        }
        for e in L.legend {
            c.line(e.x, e.y - 4, e.x + 28, e.y - 4, color: color(e.series), width: 2)
            c.marker(marker(e.series), x: e.x + 14, y: e.y - 4, r: 3.6, color: color(e.series))
            c.text(series[e.series].name, x: e.x + 34, y: e.y, size: Self.legendSize)
        }
        return c.image()
    }

    /// A tick label, with its exponent as a smaller raised part; anchored like SVG's text-anchor.
    private func tickText(_ c: Canvas, _ l: TickLabel, x: Double, y: Double, anchor: Canvas.Anchor) {
        let wb = c.textWidth(l.base, size: Self.tickSize)
        let we = l.exponent.map { c.textWidth($0, size: Self.exponentSize) } ?? 0
        let start = anchor == .start ? x : anchor == .middle ? x - (wb + we) / 2 : x - wb - we
        c.text(l.base, x: start, y: y, size: Self.tickSize)
        if let e = l.exponent { c.text(e, x: start + wb, y: y - 5, size: Self.exponentSize) }
    }
}
