//===--- ImageGrid.swift - [N, H, W, C] tensors in [−1, 1] laid out as one PNG ---===//

import TensorCore

/// The one model-value → pixel map used everywhere: `u8 = round((clamp(x, −1, 1) + 1) / 2 · 255)`.
///
/// Model outputs are mapped to pixels exactly once, here (the reference code mapped twice and
/// inflated FID, ziplab/PTQD#1). NaN maps to 0.
@inline(__always)
public func pixelByte(_ x: Float) -> UInt8 {
    if x.isNaN { return 0 }
    let c = min(max(x, -1), 1)
    return UInt8(((c + 1) / 2 * 255).rounded())
}

/// Lays out images in a grid with a border between cells, optionally with a label strip.
public struct ImageGrid {
    /// Images per row.
    public var columns: Int
    /// Border width in pixels (around and between cells), 1–2 is typical.
    public var border: Int
    /// Border gray level (the Fashion-MNIST background is black, so mid-gray separates cells).
    public var borderGray: UInt8
    /// Per grid row, a label in `0..<labelClasses` shown as a strip left of the row: a white bar
    /// whose height is `(label + 1) / labelClasses` of the row, on black. `nil` = no strip.
    public var rowLabels: [Int]?
    public var labelClasses: Int
    /// Width of the label strip in pixels.
    public var labelStripWidth: Int

    public init(columns: Int, border: Int = 2, borderGray: UInt8 = 128, rowLabels: [Int]? = nil,
                labelClasses: Int = 10, labelStripWidth: Int = 6) {
        precondition(columns > 0 && border >= 0 && labelClasses > 0)
        self.columns = columns; self.border = border; self.borderGray = borderGray
        self.rowLabels = rowLabels; self.labelClasses = labelClasses; self.labelStripWidth = labelStripWidth
    }

    /// Renders `images` (`[N, H, W, C]`, values in [−1, 1]; clamped) row-major into `ceil(N / columns)` rows.
    /// C = 1 is drawn gray and C = 3 as RGB; any other channel count (2, or the 4 of a latent) shows each
    /// image as C gray tiles side by side, channel 0 first, separated by one mid-gray column (`channelTiles`).
    /// - Throws: `.shapeMismatch` for a shape that is not `[N>0, H>0, W>0, C>0]`, `.invalidArgument` if row
    ///   labels do not fit.
    public func render(_ images: Tensor) throws -> PNGImage {
        guard images.shape.count == 4, images.shape.allSatisfy({ $0 > 0 }) else {
            throw EvaluationError.shapeMismatch(what: "image grid input", expected: "[N>0, H>0, W>0, C>0]", actual: images.shape)
        }
        if images.shape[3] != 1 && images.shape[3] != 3 { return try render(Self.channelTiles(images)) }
        let (n, h, w, c) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
        let rows = (n + columns - 1) / columns
        let cols = min(columns, n)
        if let labels = rowLabels {
            guard labels.count == rows else {
                throw EvaluationError.invalidArgument(what: "row labels", reason: "\(labels.count) labels for \(rows) grid rows")
            }
            guard labels.allSatisfy({ $0 >= 0 && $0 < labelClasses }) else {
                throw EvaluationError.invalidArgument(what: "row labels", reason: "labels must be in 0..<\(labelClasses)")
            }
        }
        let strip = rowLabels == nil ? 0 : labelStripWidth + border
        let width = strip + border + cols * (w + border)
        let height = border + rows * (h + border)
        var out = PNGImage(width: width, height: height, channels: c, fill: borderGray)
        out.pixels.withUnsafeMutableBufferPointer { px in
            for i in 0..<n {
                let r = i / columns, col = i % columns
                let x0 = strip + border + col * (w + border), y0 = border + r * (h + border)
                let src = images.data + i * h * w * c
                for y in 0..<h {
                    let dst = ((y0 + y) * width + x0) * c
                    for k in 0..<(w * c) { px[dst + k] = pixelByte(src[y * w * c + k]) }
                }
            }
        }
        if let labels = rowLabels {
            for (r, label) in labels.enumerated() {
                let y0 = border + r * (h + border)
                out.fill(x0: border, y0: y0, w: labelStripWidth, h: h, (0, 0, 0))
                let bar = max(1, (h * (label + 1) + labelClasses / 2) / labelClasses)
                out.fill(x0: border, y0: y0 + h - bar, w: labelStripWidth, h: bar, (255, 255, 255))
            }
        }
        return out
    }

    /// `[N, H, W, C] → [N, H, C·W + C − 1, 1]`: every channel as its own gray tile, left to right, with a
    /// one-pixel column of 0 (mid-gray) between tiles.
    public static func channelTiles(_ images: Tensor) -> Tensor {
        let (n, h, w, c) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
        let ow = c * w + c - 1
        let out = Tensor(shape: [n, h, ow, 1])
        for i in 0..<n { for y in 0..<h { for ch in 0..<c { for x in 0..<w {
            out.data[(i * h + y) * ow + ch * (w + 1) + x] = images.data[((i * h + y) * w + x) * c + ch]
        } } } }
        return out
    }

    /// Two images next to each other (e.g. full precision | quantized), separated by a `gap`-pixel
    /// band of `gapGray`, top-aligned; the shorter one is padded with `gapGray`. A gray image is
    /// promoted to RGB if the other one is RGB.
    public static func sideBySide(_ left: PNGImage, _ right: PNGImage, gap: Int = 8, gapGray: UInt8 = 255) -> PNGImage {
        let c = max(left.channels, right.channels)
        var out = PNGImage(width: left.width + gap + right.width, height: max(left.height, right.height), channels: c, fill: gapGray)
        for (img, xOff) in [(left, 0), (right, left.width + gap)] {
            for y in 0..<img.height { for x in 0..<img.width {
                let s = img.offset(x: x, y: y), d = out.offset(x: x + xOff, y: y)
                for k in 0..<c { out.pixels[d + k] = img.pixels[s + (img.channels == 1 ? 0 : k)] }
            } }
        }
        return out
    }
}

// MARK: - Labelled figures

extension ImageGrid {
    /// One panel of a ``figure(panels:rowNames:title:scale:)``: a heading ("fp32", "W4A8 AdaRound + PTQD") over
    /// a grid of `images` (`[N, H, W, C]` in [−1, 1], decoded images for a latent pipeline).
    public struct Panel {
        public var heading: String
        public var images: Tensor
        public init(heading: String, images: Tensor) { self.heading = heading; self.images = images }
    }

    /// Panels side by side on white, each laid out by this grid (without the label strip) and enlarged
    /// `scale`× (nearest neighbour), a bold heading above each, the name of every grid row at its left (e.g.
    /// the class of a class-conditional model's row) and an optional title on top. Text is drawn by cairo
    /// (``Canvas``). RGB output.
    /// - Throws: as ``render(_:)``; `.invalidArgument` if `rowNames` does not match the rows or panels differ in size.
    public func figure(panels: [Panel], rowNames: [String]? = nil, title: String? = nil, scale: Int = 2) throws -> PNGImage {
        guard !panels.isEmpty, scale >= 1 else { throw EvaluationError.invalidArgument(what: "grid figure", reason: "no panels or scale < 1") }
        var plain = self
        plain.rowLabels = nil
        let grids = try panels.map { try plain.render($0.images) }
        guard grids.allSatisfy({ $0.width == grids[0].width && $0.height == grids[0].height }) else {
            throw EvaluationError.invalidArgument(what: "grid figure", reason: "panels differ in size")
        }
        let n = panels[0].images.shape[0], h = panels[0].images.shape[1]
        let rows = (n + columns - 1) / columns
        if let names = rowNames, names.count != rows {
            throw EvaluationError.invalidArgument(what: "row names", reason: "\(names.count) names for \(rows) grid rows")
        }
        let margin = 10, gap = 16
        let nameSize = 12.0, headingSize = 13.0, titleSize = 14.0
        let nameW = rowNames.map { Int((($0.map { TextMetrics.width($0, size: nameSize) }.max() ?? 0) + 10).rounded(.up)) } ?? 0
        let gw = grids[0].width * scale, gh = grids[0].height * scale
        let titleH = title == nil ? 0 : 24
        let headingH = 22
        let width = margin + nameW + panels.count * gw + (panels.count - 1) * gap + margin
        let top = margin + titleH + headingH
        let height = top + gh + margin
        let c = Canvas(width: width, height: height)
        if let title { c.text(title, x: Double(width) / 2, y: Double(margin + 14), size: titleSize, bold: true, anchor: .middle) }
        for (i, g) in grids.enumerated() {
            let x = margin + nameW + i * (gw + gap)
            c.text(panels[i].heading, x: Double(x) + Double(gw) / 2, y: Double(top - 7), size: headingSize, bold: true, anchor: .middle)
            c.draw(g, x: x, y: top, scale: scale)
        }
        if let names = rowNames {
            for (r, name) in names.enumerated() {
                let yMid = Double(top) + Double((border + r * (h + border)) * scale) + Double(h * scale) / 2
                c.text(name, x: Double(margin + nameW - 8), y: yMid + 4, size: nameSize, anchor: .end)
            }
        }
        return c.image()
    }
}
