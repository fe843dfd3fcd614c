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

    /// Renders `images` (`[N, H, W, C]`, C = 1 or 3, values in [−1, 1]; clamped) row-major into
    /// `ceil(N / columns)` rows. The output is gray for C = 1 and RGB for C = 3.
    /// - Throws: `.shapeMismatch` for other shapes, `.invalidArgument` if row labels do not fit.
    public func render(_ images: Tensor) throws -> PNGImage {
        guard images.shape.count == 4, images.shape[0] > 0, images.shape[3] == 1 || images.shape[3] == 3 else {
            throw EvaluationError.shapeMismatch(what: "image grid input", expected: "[N>0, H, W, 1 or 3]", actual: images.shape)
        }
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
