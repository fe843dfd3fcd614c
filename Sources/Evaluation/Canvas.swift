//===--- Canvas.swift - a cairo image surface with DejaVu text, read back as a PNGImage ---===//
//
// Text in PNGs (plot titles, tick values, legends, grid headings, class names) is drawn by cairo with the
// FreeType face of DejaVu Sans (Debian's fonts-dejavu-core). The face is loaded from its file, not found by
// fontconfig, so the same font draws the same text on every machine that has the package; hinting is off and
// antialiasing is gray so that glyph outlines, not the hinter's version, decide the pixels. The pixels are
// read back into a ``PNGImage`` and encoded by our libpng writer (one PNG path for everything).
// Coordinates are in pixels, origin top left, y down.

import CCairo
import Foundation

/// An RGB color with components in [0, 1].
public struct RGB: Equatable, Sendable {
    public var r: Double, g: Double, b: Double
    public init(_ r: Double, _ g: Double, _ b: Double) { self.r = r; self.g = g; self.b = b }
    /// From 8-bit components.
    public init(bytes r: UInt8, _ g: UInt8, _ b: UInt8) { self.init(Double(r) / 255, Double(g) / 255, Double(b) / 255) }
    public static let black = RGB(0, 0, 0), white = RGB(1, 1, 1)
    /// `#rrggbb`.
    public var hex: String {
        "#" + [r, g, b].map { v -> String in
            let s = String(Int((min(max(v, 0), 1) * 255).rounded()), radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
    }
}

/// The fonts text is drawn with.
public enum Fonts {
    /// DejaVu Sans regular and bold, as installed by Debian's fonts-dejavu-core. `PTQD_FONT_DIR` overrides the folder.
    public static var directory: String {
        ProcessInfo.processInfo.environment["PTQD_FONT_DIR"] ?? "/usr/share/fonts/truetype/dejavu"
    }

    /// "cairo 1.16.0, FreeType 2.12.1, DejaVuSans.ttf 757076 bytes": what decides the pixels of drawn text.
    public static var rendererDescription: String {
        var maj: Int32 = 0, min: Int32 = 0, patch: Int32 = 0
        if let lib = faces.library { FT_Library_Version(lib, &maj, &min, &patch) }
        let font = (directory as NSString).appendingPathComponent("DejaVuSans.ttf")
        let size = (try? FileManager.default.attributesOfItem(atPath: font)[.size] as? Int) ?? nil
        return "cairo \(String(cString: cairo_version_string())), FreeType \(maj).\(min).\(patch), "
            + (size.map { "DejaVuSans.ttf \($0) bytes" } ?? "no DejaVuSans.ttf (fontconfig sans-serif)")
    }

    /// True when the DejaVu files exist (otherwise cairo's fontconfig "sans-serif" is used, which may differ).
    public static var dejaVuAvailable: Bool { faces.regular != nil }

    final class Faces: @unchecked Sendable {
        var library: FT_Library?
        var regular: OpaquePointer?   // cairo_font_face_t *
        var bold: OpaquePointer?
        init() {
            var lib: FT_Library?
            guard FT_Init_FreeType(&lib) == 0, let lib else { return }
            library = lib
            func load(_ file: String) -> OpaquePointer? {
                let path = (Fonts.directory as NSString).appendingPathComponent(file)
                guard FileManager.default.fileExists(atPath: path) else { return nil }
                var face: FT_Face?
                guard FT_New_Face(lib, path, 0, &face) == 0, let face else { return nil }
                // The FT_Face lives as long as the process (the cairo face keeps using it).
                return cairo_ft_font_face_create_for_ft_face(face, 0)
            }
            regular = load("DejaVuSans.ttf")
            bold = load("DejaVuSans-Bold.ttf") ?? regular
        }
    }

    static let faces = Faces()
    /// Serializes drawing: FreeType faces are not thread-safe.
    static let lock = NSLock()
}

/// A white RGB canvas drawn with cairo.
public final class Canvas {
    public let width: Int
    public let height: Int
    let surface: OpaquePointer
    let cr: OpaquePointer

    public init(width: Int, height: Int, background: RGB = .white) {
        precondition(width > 0 && height > 0, "canvas \(width)x\(height)")
        self.width = width; self.height = height
        surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, Int32(width), Int32(height))
        cr = cairo_create(surface)
        let options = cairo_font_options_create()
        cairo_font_options_set_antialias(options, CAIRO_ANTIALIAS_GRAY)
        cairo_font_options_set_hint_style(options, CAIRO_HINT_STYLE_NONE)
        cairo_font_options_set_hint_metrics(options, CAIRO_HINT_METRICS_OFF)
        cairo_set_font_options(cr, options)
        cairo_font_options_destroy(options)
        setColor(background)
        cairo_paint(cr)
    }

    deinit { cairo_destroy(cr); cairo_surface_destroy(surface) }

    public func setColor(_ c: RGB) { cairo_set_source_rgb(cr, c.r, c.g, c.b) }

    // MARK: - Shapes

    /// A straight line of `width` px; `dash` is an on/off pattern in px (empty = solid).
    public func line(_ x0: Double, _ y0: Double, _ x1: Double, _ y1: Double, color: RGB, width: Double = 1, dash: [Double] = []) {
        polyline([(x0, y0), (x1, y1)], color: color, width: width, dash: dash)
    }

    public func polyline(_ points: [(Double, Double)], color: RGB, width: Double, dash: [Double] = []) {
        guard points.count >= 2 else { return }
        cairo_new_path(cr)
        cairo_move_to(cr, points[0].0, points[0].1)
        for p in points.dropFirst() { cairo_line_to(cr, p.0, p.1) }
        stroke(color: color, width: width, dash: dash)
    }

    func stroke(color: RGB, width: Double, dash: [Double] = []) {
        setColor(color)
        cairo_set_line_width(cr, width)
        cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND)
        cairo_set_line_cap(cr, CAIRO_LINE_CAP_BUTT)
        dash.withUnsafeBufferPointer { cairo_set_dash(cr, $0.baseAddress, Int32(dash.count), 0) }
        cairo_stroke(cr)
        cairo_set_dash(cr, nil, 0, 0)
    }

    public func fillRect(x: Double, y: Double, w: Double, h: Double, color: RGB) {
        cairo_new_path(cr)
        cairo_rectangle(cr, x, y, w, h)
        setColor(color)
        cairo_fill(cr)
    }

    public func strokeRect(x: Double, y: Double, w: Double, h: Double, color: RGB, width: Double = 1) {
        cairo_new_path(cr)
        cairo_rectangle(cr, x, y, w, h)
        stroke(color: color, width: width)
    }

    /// A filled marker of `shape` centred on (x, y), `r` px from centre to corner or rim.
    public func marker(_ shape: MarkerShape, x: Double, y: Double, r: Double, color: RGB) {
        cairo_new_path(cr)
        let outline = shape.outline(x: x, y: y, r: r)
        if shape == .circle {
            cairo_arc(cr, x, y, r, 0, 2 * Double.pi)
        } else {
            cairo_move_to(cr, outline[0].0, outline[0].1)
            for p in outline.dropFirst() { cairo_line_to(cr, p.0, p.1) }
            cairo_close_path(cr)
        }
        setColor(color)
        cairo_fill_preserve(cr)
        stroke(color: .white, width: 0.75)
    }

    // MARK: - Text

    public enum Anchor { case start, middle, end }

    func selectFont(size: Double, bold: Bool) {
        if let face = bold ? Fonts.faces.bold : Fonts.faces.regular {
            cairo_set_font_face(cr, face)
        } else {
            cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL)
        }
        cairo_set_font_size(cr, size)
    }

    /// Draws `text` with its baseline at `y`, anchored at `x`; `rotated` turns it 90° counter-clockwise about (x, y)
    /// (a y-axis label). Returns the advance width in px.
    @discardableResult
    public func text(_ text: String, x: Double, y: Double, size: Double, color: RGB = .black, bold: Bool = false,
                     anchor: Anchor = .start, rotated: Bool = false) -> Double {
        Fonts.lock.lock(); defer { Fonts.lock.unlock() }
        selectFont(size: size, bold: bold)
        var ext = cairo_text_extents_t()
        cairo_text_extents(cr, text, &ext)
        let dx: Double = anchor == .start ? 0 : anchor == .middle ? -ext.x_advance / 2 : -ext.x_advance
        cairo_save(cr)
        cairo_translate(cr, x, y)
        if rotated { cairo_rotate(cr, -Double.pi / 2) }
        cairo_move_to(cr, dx, 0)
        setColor(color)
        cairo_show_text(cr, text)
        cairo_restore(cr)
        cairo_new_path(cr)
        return ext.x_advance
    }

    /// The advance width of `text` in px.
    public func textWidth(_ text: String, size: Double, bold: Bool = false) -> Double {
        Fonts.lock.lock(); defer { Fonts.lock.unlock() }
        selectFont(size: size, bold: bold)
        var ext = cairo_text_extents_t()
        cairo_text_extents(cr, text, &ext)
        return ext.x_advance
    }

    // MARK: - Images

    /// Copies `image` (gray or RGB) with its top-left corner at (x, y), each pixel as a `scale`×`scale` block.
    public func draw(_ image: PNGImage, x: Int, y: Int, scale: Int = 1) {
        cairo_surface_flush(surface)
        let stride = Int(cairo_image_surface_get_stride(surface))
        guard let base = cairo_image_surface_get_data(surface) else { return }
        for sy in 0..<image.height {
            for sx in 0..<image.width {
                let o = image.offset(x: sx, y: sy)
                let (r, g, b) = image.channels == 1 ? (image.pixels[o], image.pixels[o], image.pixels[o])
                    : (image.pixels[o], image.pixels[o + 1], image.pixels[o + 2])
                let px = UInt32(r) << 16 | UInt32(g) << 8 | UInt32(b)
                for dy in 0..<scale {
                    let ty = y + sy * scale + dy
                    guard ty >= 0 && ty < height else { continue }
                    let row = (base + ty * stride).withMemoryRebound(to: UInt32.self, capacity: width) { $0 }
                    for dx in 0..<scale {
                        let tx = x + sx * scale + dx
                        if tx >= 0 && tx < width { row[tx] = px }
                    }
                }
            }
        }
        cairo_surface_mark_dirty(surface)
    }

    /// The pixels as an RGB ``PNGImage``.
    public func image() -> PNGImage {
        cairo_surface_flush(surface)
        let stride = Int(cairo_image_surface_get_stride(surface))
        var out = PNGImage(width: width, height: height, channels: 3)
        guard let base = cairo_image_surface_get_data(surface) else { return out }
        out.pixels.withUnsafeMutableBufferPointer { px in
            for y in 0..<height {
                let row = (base + y * stride).withMemoryRebound(to: UInt32.self, capacity: width) { $0 }
                for x in 0..<width {
                    let v = row[x], o = (y * width + x) * 3
                    px[o] = UInt8((v >> 16) & 0xFF); px[o + 1] = UInt8((v >> 8) & 0xFF); px[o + 2] = UInt8(v & 0xFF)
                }
            }
        }
        return out
    }
}

/// Marker shapes, cycled per series so that series differ by more than color.
public enum MarkerShape: String, Codable, CaseIterable, Sendable {
    case circle, square, triangle, diamond, triangleDown, pentagon

    /// Corner points (for the circle: none needed, but a 16-gon is returned for callers that want a polygon).
    func outline(x: Double, y: Double, r: Double) -> [(Double, Double)] {
        func poly(_ n: Int, _ phase: Double, _ rr: Double) -> [(Double, Double)] {
            (0..<n).map { i in
                let a = phase + 2 * Double.pi * Double(i) / Double(n)
                return (x + rr * cos(a), y + rr * sin(a))
            }
        }
        switch self {
        case .circle: return poly(16, 0, r)
        case .square: let s = r * 0.85; return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
        case .triangle: return poly(3, -Double.pi / 2, r * 1.15)
        case .triangleDown: return poly(3, Double.pi / 2, r * 1.15)
        case .diamond: return poly(4, -Double.pi / 2, r * 1.1)
        case .pentagon: return poly(5, -Double.pi / 2, r * 1.05)
        }
    }
}
