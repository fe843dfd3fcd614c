//===--- PNG.swift - 8-bit PNG encode/decode through libpng's simplified API ---===//
//
// libpng's classic API reports errors with longjmp, which Swift cannot survive; the simplified
// `png_image_*` API (libpng ≥ 1.6) catches them internally and returns a status plus a message.

import CPNG
import Foundation
import SafeTensors

/// An 8-bit image: `height` rows of `width` pixels, `channels` bytes each (1 = gray, 3 = RGB), row-major.
public struct PNGImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var channels: Int
    public var pixels: [UInt8]

    /// A blank image filled with `value` in every channel.
    public init(width: Int, height: Int, channels: Int, fill value: UInt8 = 0) {
        precondition(width > 0 && height > 0 && (channels == 1 || channels == 3), "PNGImage \(width)x\(height)x\(channels)")
        self.width = width; self.height = height; self.channels = channels
        pixels = [UInt8](repeating: value, count: width * height * channels)
    }

    public init(width: Int, height: Int, channels: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && (channels == 1 || channels == 3), "PNGImage \(width)x\(height)x\(channels)")
        precondition(pixels.count == width * height * channels, "PNGImage: \(pixels.count) bytes for \(width)x\(height)x\(channels)")
        self.width = width; self.height = height; self.channels = channels; self.pixels = pixels
    }

    /// Byte offset of pixel (x, y).
    @inline(__always) public func offset(x: Int, y: Int) -> Int { (y * width + x) * channels }

    /// Sets pixel (x, y) to `rgb` (gray images take the mean); ignores coordinates outside the image.
    @inline(__always) public mutating func set(x: Int, y: Int, _ rgb: (UInt8, UInt8, UInt8)) {
        guard x >= 0 && y >= 0 && x < width && y < height else { return }
        let o = offset(x: x, y: y)
        if channels == 1 {
            pixels[o] = UInt8((Int(rgb.0) + Int(rgb.1) + Int(rgb.2) + 1) / 3)
        } else {
            pixels[o] = rgb.0; pixels[o + 1] = rgb.1; pixels[o + 2] = rgb.2
        }
    }

    /// Fills the rectangle `[x0, x0+w) × [y0, y0+h)` (clipped).
    public mutating func fill(x0: Int, y0: Int, w: Int, h: Int, _ rgb: (UInt8, UInt8, UInt8)) {
        for y in max(0, y0)..<min(height, y0 + h) where w > 0 {
            for x in max(0, x0)..<min(width, x0 + w) { set(x: x, y: y, rgb) }
        }
    }
}

public enum PNGCodec {
    /// Encodes to PNG bytes in memory.
    /// - Throws: `.png` with libpng's message.
    public static func encode(_ image: PNGImage, nameForErrors: String = "<memory>") throws -> [UInt8] {
        var img = png_image()
        img.version = UInt32(PNG_IMAGE_VERSION)
        img.width = UInt32(image.width)
        img.height = UInt32(image.height)
        img.format = image.channels == 1 ? UInt32(PNG_FORMAT_GRAY) : UInt32(PNG_FORMAT_RGB)
        let stride = Int32(image.width * image.channels)
        var size: png_alloc_size_t = 0
        let ok1 = image.pixels.withUnsafeBytes { px in
            png_image_write_to_memory(&img, nil, &size, 0, px.baseAddress, stride, nil)
        }
        guard ok1 != 0, size > 0 else { throw EvaluationError.png(path: nameForErrors, message: message(&img, "cannot size PNG")) }
        var out = [UInt8](repeating: 0, count: Int(size))
        let ok2 = out.withUnsafeMutableBytes { o in
            image.pixels.withUnsafeBytes { px in
                png_image_write_to_memory(&img, o.baseAddress, &size, 0, px.baseAddress, stride, nil)
            }
        }
        guard ok2 != 0 else { throw EvaluationError.png(path: nameForErrors, message: message(&img, "cannot encode PNG")) }
        out.removeSubrange(Int(size)...)
        return out
    }

    /// Decodes PNG bytes to 8-bit gray (if the file is gray) or RGB (otherwise; alpha is composited
    /// onto black by libpng).
    public static func decode(_ bytes: [UInt8], nameForErrors: String = "<memory>") throws -> PNGImage {
        var img = png_image()
        img.version = UInt32(PNG_IMAGE_VERSION)
        let ok = bytes.withUnsafeBytes { b in png_image_begin_read_from_memory(&img, b.baseAddress, b.count) }
        guard ok != 0 else { throw EvaluationError.png(path: nameForErrors, message: message(&img, "not a PNG file")) }
        let isColor = (img.format & UInt32(PNG_FORMAT_FLAG_COLOR)) != 0
        img.format = isColor ? UInt32(PNG_FORMAT_RGB) : UInt32(PNG_FORMAT_GRAY)
        let channels = isColor ? 3 : 1
        let (w, h) = (Int(img.width), Int(img.height))
        guard w > 0, h > 0, w * h <= 1 << 28 else {
            png_image_free(&img)
            throw EvaluationError.png(path: nameForErrors, message: "unsupported image size \(w)x\(h)")
        }
        var pixels = [UInt8](repeating: 0, count: w * h * channels)
        let done = pixels.withUnsafeMutableBytes { p in
            png_image_finish_read(&img, nil, p.baseAddress, Int32(w * channels), nil)
        }
        guard done != 0 else {
            let m = message(&img, "cannot decode PNG")
            png_image_free(&img)
            throw EvaluationError.png(path: nameForErrors, message: m)
        }
        return PNGImage(width: w, height: h, channels: channels, pixels: pixels)
    }

    /// Writes `image` to `path` atomically (temporary file in the same directory, then rename).
    public static func write(_ image: PNGImage, to path: String) throws {
        try AtomicFile.write(try encode(image, nameForErrors: path), to: path)
    }

    /// Reads a PNG file.
    public static func read(path: String) throws -> PNGImage {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EvaluationError.cannotRead(path: path, reason: "cannot open file")
        }
        return try decode([UInt8](data), nameForErrors: path)
    }

    private static func message(_ img: inout png_image, _ fallback: String) -> String {
        let text = withUnsafeBytes(of: &img.message) { raw -> String in
            let bytes = raw.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
        return text.isEmpty ? fallback : text
    }
}

// MARK: - Atomic writes

/// Writes files so that readers see either the old file or the complete new one, never a prefix.
public enum AtomicFile {
    /// Writes `bytes` to `path` through SafeTensors' ``AtomicWrite`` (temporary file in the same
    /// directory, fsync, rename, directory fsync).
    /// - Throws: `.writeFailed` naming the failing step; the temporary file is removed on failure.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        do {
            try AtomicWrite.write([bytes], to: path)
        } catch let failure as AtomicWriteFailure {
            throw EvaluationError.writeFailed(path: path, reason: failure.description)
        }
    }

    /// Writes UTF-8 text atomically.
    public static func write(_ text: String, to path: String) throws {
        try write(Array(text.utf8), to: path)
    }
}
