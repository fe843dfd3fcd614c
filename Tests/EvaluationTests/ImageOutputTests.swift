import Foundation
import TensorCore
import XCTest
@testable import Evaluation

final class ImageOutputTests: XCTestCase {
    func testPixelMappingIsExactlyOnce() {
        XCTAssertEqual(pixelByte(-1), 0)
        XCTAssertEqual(pixelByte(1), 255)
        XCTAssertEqual(pixelByte(-3), 0)
        XCTAssertEqual(pixelByte(7), 255)
        XCTAssertEqual(pixelByte(0), 128)            // 127.5 rounds half away from zero
        XCTAssertEqual(pixelByte(.nan), 0)
        // Round trip of every byte through the dataset map and back.
        for b in 0...255 { XCTAssertEqual(pixelByte(FashionMNIST.value(UInt8(b))), UInt8(b)) }
    }

    func testPNGRoundTripGrayAndRGB() throws {
        let dir = makeTempDirectory(self)
        var gray = PNGImage(width: 7, height: 5, channels: 1)
        for i in 0..<gray.pixels.count { gray.pixels[i] = UInt8((i * 37) % 256) }
        var rgb = PNGImage(width: 3, height: 4, channels: 3)
        for i in 0..<rgb.pixels.count { rgb.pixels[i] = UInt8((i * 91 + 5) % 256) }
        for (img, name) in [(gray, "g.png"), (rgb, "c.png")] {
            let path = dir + "/" + name
            try PNGCodec.write(img, to: path)
            XCTAssertEqual(try PNGCodec.read(path: path), img)
        }
        // Only the final files remain (no temporary files).
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["c.png", "g.png"])
        // Garbage is rejected with a one-line error.
        XCTAssertThrowsError(try PNGCodec.decode(Array("not a png".utf8), nameForErrors: "x.png")) { error in
            guard case .png("x.png", _)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        // Writing into a missing directory fails cleanly.
        XCTAssertThrowsError(try PNGCodec.write(gray, to: dir + "/missing/a.png")) { error in
            guard case .writeFailed? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }

    func testGridLayoutLabelsAndSideBySide() throws {
        // 5 images of 4×3 (H×W), values encode the image index.
        let t = Tensor(shape: [5, 4, 3, 1])
        for i in 0..<5 { for p in 0..<12 { t.data[i * 12 + p] = Float(i) / 2 - 1 } }
        let grid = ImageGrid(columns: 2, border: 1, borderGray: 77)
        let img = try grid.render(t)
        XCTAssertEqual(img.width, 1 + 2 * (3 + 1))
        XCTAssertEqual(img.height, 1 + 3 * (4 + 1))
        XCTAssertEqual(img.channels, 1)
        XCTAssertEqual(img.pixels[0], 77)
        for i in 0..<5 {
            let x0 = 1 + (i % 2) * 4, y0 = 1 + (i / 2) * 5
            XCTAssertEqual(img.pixels[img.offset(x: x0 + 2, y: y0 + 3)], pixelByte(Float(i) / 2 - 1))
        }
        // The unused sixth cell stays border gray.
        XCTAssertEqual(img.pixels[img.offset(x: 5, y: 11)], 77)

        let labelled = try ImageGrid(columns: 2, border: 1, rowLabels: [0, 9, 4], labelClasses: 10, labelStripWidth: 3).render(t)
        XCTAssertEqual(labelled.width, img.width + 3 + 1)
        // Label 9 (last class) fills the whole strip of row 1 with white; label 0 only its bottom row.
        XCTAssertEqual(labelled.pixels[labelled.offset(x: 1, y: 6)], 255)
        XCTAssertEqual(labelled.pixels[labelled.offset(x: 1, y: 1)], 0)
        XCTAssertEqual(labelled.pixels[labelled.offset(x: 1, y: 4)], 255)
        XCTAssertThrowsError(try ImageGrid(columns: 2, rowLabels: [0]).render(t))
        XCTAssertThrowsError(try grid.render(Tensor(shape: [0, 4, 4, 1])))
        // Other channel counts: one gray tile per channel, separated by a mid-gray column.
        let two = Tensor(shape: [3, 4, 3, 2])
        for i in 0..<(3 * 12) { two.data[2 * i] = -1; two.data[2 * i + 1] = 1 }
        let tiles = try grid.render(two)
        XCTAssertEqual(tiles.channels, 1)
        XCTAssertEqual(tiles.width, 1 + 2 * (2 * 3 + 1 + 1))
        XCTAssertEqual(tiles.pixels[tiles.offset(x: 1, y: 1)], 0, "channel 0 tile")
        XCTAssertEqual(tiles.pixels[tiles.offset(x: 1 + 3, y: 1)], pixelByte(0), "separator column")
        XCTAssertEqual(tiles.pixels[tiles.offset(x: 1 + 4, y: 1)], 255, "channel 1 tile")
        XCTAssertEqual(try grid.render(Tensor(shape: [1, 2, 2, 4])).width, 1 + 4 * 2 + 3 + 1)

        let rgbT = Tensor(shape: [2, 4, 3, 3], repeating: 1)
        let rgb = try ImageGrid(columns: 2).render(rgbT)
        XCTAssertEqual(rgb.channels, 3)
        let both = ImageGrid.sideBySide(img, rgb, gap: 5)
        XCTAssertEqual(both.width, img.width + 5 + rgb.width)
        XCTAssertEqual(both.height, max(img.height, rgb.height))
        XCTAssertEqual(both.channels, 3)
        let o = both.offset(x: img.width + 5 + 2, y: 2)
        XCTAssertEqual(Array(both.pixels[o..<(o + 3)]), [255, 255, 255])
        let dir = makeTempDirectory(self)
        try PNGCodec.write(both, to: dir + "/both.png")
        XCTAssertEqual(try PNGCodec.read(path: dir + "/both.png"), both)
    }

    func testLinePlotWritesPNGAndSidecar() throws {
        let dir = makeTempDirectory(self)
        var plot = LinePlot(title: "FID vs n", xLabel: "n", yLabel: "FID", logY: true)
        plot.series = [.init(name: "fp32", x: [1000, 2000, 5000, 10000], y: [400, 25, 12, 9]),
                       .init(name: "w4a8", x: [1000, 2000, 5000, 10000], y: [45, 30, 15, 0])]   // 0: not plottable on log-y
        let sidecar = try plot.write(to: dir + "/fid.png")
        XCTAssertEqual(sidecar, dir + "/fid.json")
        let img = try PNGCodec.read(path: dir + "/fid.png")
        XCTAssertEqual(img.width, 720)
        XCTAssertEqual(img.channels, 3)
        // Both series colors appear.
        func has(_ c: (UInt8, UInt8, UInt8)) -> Bool {
            stride(from: 0, to: img.pixels.count, by: 3).contains { img.pixels[$0] == c.0 && img.pixels[$0 + 1] == c.1 && img.pixels[$0 + 2] == c.2 }
        }
        XCTAssertTrue(has(LinePlot.palette[0]))
        XCTAssertTrue(has(LinePlot.palette[1]))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sidecar))) as! [String: Any]
        XCTAssertEqual(json["title"] as? String, "FID vs n")
        XCTAssertEqual((json["series"] as? [[String: Any]])?.count, 2)
        let axes = json["axes"] as! [String: Any]
        XCTAssertEqual(axes["y_ticks"] as? [Double], [10, 20, 50, 100, 200])   // under three decades: 1-2-5 ticks
        // Linear axes get 1/2/5 ticks.
        XCTAssertEqual(LinePlot.niceTicks(0, 10), [0, 2, 4, 6, 8, 10])
        XCTAssertThrowsError(try LinePlot(title: "empty", xLabel: "", yLabel: "").render())
    }
}
