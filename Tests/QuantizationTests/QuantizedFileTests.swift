import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore
import XCTest

/// The quantized file format: tensor layout, nibble packing, and refusing every kind of bad file
/// with a one-line message.
final class QuantizedFileTests: XCTestCase {
    static let model = "uncond_plain_16"
    /// w4a8 with default keep-8bit, a 6-bit block (stored I8) and one layer kept fp32.
    static let policy = PrecisionPolicy(scheme: try! LayerPrecision(parsing: "w4a8"), rules: [
        try! PrecisionRule(parsing: "down_blocks.1.*=w6a8"),
        try! PrecisionRule(parsing: "mid_block.resnets.0.conv1=fp32"),
    ])
    static var shared: (run: QuantizedRun, dir: ScratchDir, file: String)?

    override class func setUp() { DNNL.setThreads(2) }
    override class func tearDown() { shared?.dir.cleanup(); shared = nil }

    /// One good file, written once for the whole suite.
    func good() throws -> (run: QuantizedRun, dir: ScratchDir, file: String) {
        if let s = Self.shared { return s }
        let source = try QFixtures.load(Self.model)
        let run = try QuantizeHelper.run(source, policy: Self.policy, options: QFixtures.tinyOptions())
        let dir = try ScratchDir("file")
        let file = dir.path("good.safetensors")
        try QuantizedModel.write(to: file, info: run.info, source: source, variants: [run.records])
        Self.shared = (run, dir, file)
        return (run, dir, file)
    }

    func testTensorLayoutPackedFourBitAndEightBitI8() throws {
        let (run, _, path) = try good()
        let f = try SafeTensorsFile(path: path)
        let source = try SafeTensorsFile(path: run.source.weightsPath)
        var bits: Set<Int> = []
        for l in run.records {
            bits.insert(l.precision.weightBits)
            let o = l.scales.count, k = l.q.count / o
            let w = try f.info("ptqd.v0.\(l.name).qweight"), s = try f.info("ptqd.v0.\(l.name).wscale")
            XCTAssertEqual(s.dtype, .f32, l.name); XCTAssertEqual(s.shape, [o], l.name)
            XCTAssertEqual(try f.floats("ptqd.v0.\(l.name).wscale"), l.scales, l.name)
            if l.precision.weightBits <= 4 {
                XCTAssertEqual(w.dtype, .u8, l.name)
                XCTAssertEqual(w.shape, [(o * k + 1) / 2], l.name)
                XCTAssertEqual(NibblePacking.unpack(try f.uint8s("ptqd.v0.\(l.name).qweight"), count: o * k), l.q, l.name)
            } else {
                XCTAssertEqual(w.dtype, .i8, l.name)
                XCTAssertEqual(w.shape, [o, k], l.name)
                XCTAssertEqual(try f.int8s("ptqd.v0.\(l.name).qweight"), l.q, l.name)
            }
            let lo = -(1 << (l.precision.weightBits - 1)), hi = (1 << (l.precision.weightBits - 1)) - 1
            XCTAssertTrue(l.q.allSatisfy { Int($0) >= lo && Int($0) <= hi }, "\(l.name) integers outside the \(l.precision.weightBits)-bit grid")
            // The fp32 weight of a quantized layer is not stored; its bias is.
            XCTAssertFalse(f.contains("\(l.name).weight"), "\(l.name).weight still stored")
            XCTAssertTrue(f.contains("\(l.name).bias"), "\(l.name).bias missing")
        }
        XCTAssertEqual(bits, [4, 6, 8])
        // The layer kept fp32 by the rule keeps its fp32 weight, bit for bit.
        XCTAssertFalse(run.records.contains { $0.name == "mid_block.resnets.0.conv1" })
        XCTAssertEqual(try f.floats("mid_block.resnets.0.conv1.weight"), try source.floats("mid_block.resnets.0.conv1.weight"))
        // Every non-quantized source tensor is carried over as F32.
        let quantized = Set(run.records.map { "\($0.name).weight" })
        for name in source.names where !quantized.contains(name) {
            XCTAssertEqual(try f.info(name).dtype, .f32, name)
            XCTAssertEqual(try f.floats(name), try source.floats(name), name)
        }
    }

    func testNibblePackingRoundTrip() {
        let all: [Int8] = Array(-8...7)
        XCTAssertEqual(NibblePacking.unpack(NibblePacking.pack(all), count: 16), all)
        // Layout: element 2i in the low nibble, 2i+1 in the high nibble, two's complement.
        XCTAssertEqual(NibblePacking.pack([1, -1]), [0xF1])
        XCTAssertEqual(NibblePacking.pack([-8, 7]), [0x78])
        XCTAssertEqual(NibblePacking.pack([-2]), [0x0E])
        for v in all { for w in all { XCTAssertEqual(NibblePacking.unpack(NibblePacking.pack([v, w]), count: 2), [v, w]) } }
        var g = GaussianStream(seed: 3, index: 0)
        for n in [0, 1, 2, 3, 5, 15, 16, 17, 101] {
            let q = (0..<n).map { _ in Int8(Int(g.nextUInt64() % 16) - 8) }
            let p = NibblePacking.pack(q)
            XCTAssertEqual(p.count, (n + 1) / 2, "n = \(n)")
            XCTAssertEqual(NibblePacking.unpack(p, count: n), q, "n = \(n)")
            if n % 2 == 1 { XCTAssertEqual(p.last! >> 4, 0, "n = \(n): unused high nibble must be 0") }
        }
    }

    func testGoodFileLoadsAndBuildsBothModes() throws {
        let (run, _, path) = try good()
        let m = try QuantizedModel(path: path)
        XCTAssertEqual(m.info.version, QuantizedModelInfo.currentVersion)
        XCTAssertEqual(m.info.format, "ptqd-quantized")
        XCTAssertEqual(m.info.variants[0].name, "w4a8")
        XCTAssertEqual(m.architecture, "UNet2DModel")
        XCTAssertEqual(try m.makeUNet().config, run.source.unet.config)
        XCTAssertEqual(m.scheduler, run.source.scheduler)
        XCTAssertNoThrow(try m.makeUNet(mode: .integer))
        XCTAssertNoThrow(try m.makeUNet(mode: .simulate))
        assertOneLineError(["variant 1"], "variant out of range") { _ = try m.makeUNet(variant: 1) }
    }

    // MARK: bad files (each built by rewriting the good one)

    /// Writes an edited copy of the good file and returns its path.
    func edited(_ name: String, _ change: (inout EditableSafeTensors) throws -> Void) throws -> String {
        let (_, dir, path) = try good()
        var e = try EditableSafeTensors(path: path)
        try change(&e)
        let out = dir.path(name)
        try e.write(to: out)
        return out
    }

    /// Loading (file + network) fails with a one-line error containing `needles`.
    func assertRefused(_ path: String, _ needles: [String], _ what: String, line: UInt = #line) {
        assertOneLineError(needles, what, line: line) {
            let m = try QuantizedModel(path: path)
            _ = try m.makeUNet(mode: .integer)
        }
    }

    func fourBitLayer() throws -> QuantizedLayer { try XCTUnwrap(try good().run.records.first { $0.precision.weightBits == 4 }) }
    func sixBitLayer() throws -> QuantizedLayer { try XCTUnwrap(try good().run.records.first { $0.precision.weightBits == 6 }) }
    func eightBitLayer() throws -> QuantizedLayer { try XCTUnwrap(try good().run.records.first { $0.precision.weightBits == 8 }) }

    func testNewerVersionIsRefused() throws {
        let p = try edited("newer.safetensors") { e in var j = e.ptqd; j["version"] = 2; e.ptqd = j }
        assertOneLineError(["newer", "newer.safetensors"], "newer version") { _ = try QuantizedModel(path: p) }
    }

    func testMalformedOrForeignMetadataIsRefused() throws {
        let wrongFormat = try edited("format.safetensors") { e in var j = e.ptqd; j["format"] = "something-else"; e.ptqd = j }
        assertOneLineError(["format.safetensors"], "wrong format name") { _ = try QuantizedModel(path: wrongFormat) }
        let noVariants = try edited("novariants.safetensors") { e in var j = e.ptqd; j.removeValue(forKey: "variants"); e.ptqd = j }
        assertOneLineError(["malformed"], "variants missing") { _ = try QuantizedModel(path: noVariants) }
        let notJSON = try edited("notjson.safetensors") { e in e.metadata["ptqd"] = "{not json" }
        assertOneLineError(["notjson.safetensors"], "metadata not JSON") { _ = try QuantizedModel(path: notJSON) }
    }

    func testNonPtqdSafetensorsIsRefused() throws {
        let fp32 = try good().run.source.weightsPath
        assertOneLineError(["not a ptqd quantized model", "ptqd quantize"], "fp32 weights file") { _ = try QuantizedModel(path: fp32) }
    }

    func testMissingTensorIsRefused() throws {
        let l = try fourBitLayer()
        let p = try edited("missing-w.safetensors") { e in e.remove("ptqd.v0.\(l.name).qweight") }
        assertOneLineError([l.name, "missing"], "missing qweight") { _ = try QuantizedModel(path: p) }
        let p2 = try edited("missing-s.safetensors") { e in e.remove("ptqd.v0.\(l.name).wscale") }
        assertOneLineError(["\(l.name).wscale", "missing"], "missing wscale") { _ = try QuantizedModel(path: p2) }
        // An fp32 parameter the network needs (a bias) is missing.
        let p3 = try edited("missing-bias.safetensors") { e in e.remove("\(l.name).bias") }
        assertRefused(p3, ["\(l.name).bias"], "missing bias")
    }

    func testStrayPtqdTensorIsRefused() throws {
        let p = try edited("stray.safetensors") { e in
            e.set("ptqd.v0.nonexistent.qweight", .init(dtype: .i8, shape: [2, 2], bytes: [1, 2, 3, 4]))
        }
        assertOneLineError(["ptqd.v0.nonexistent.qweight", "not described"], "stray tensor") { _ = try QuantizedModel(path: p) }
        // A second variant's tensors without metadata are stray as well.
        let l = try eightBitLayer()
        let p2 = try edited("stray-v1.safetensors") { e in
            e.set("ptqd.v1.\(l.name).wscale", e.tensors["ptqd.v0.\(l.name).wscale"]!)
        }
        assertOneLineError(["ptqd.v1."], "stray variant") { _ = try QuantizedModel(path: p2) }
    }

    func testLayerMissingFromConfigIsRefused() throws {
        // Metadata and tensors for a layer the UNet config does not have.
        let l = try eightBitLayer()
        let p = try edited("unknown-layer.safetensors") { e in
            var j = e.ptqd
            var variants = j["variants"] as! [[String: Any]]
            var layers = variants[0]["layers"] as! [[String: Any]]
            var extra = layers.first { ($0["name"] as! String) == l.name }!
            extra["name"] = "down_blocks.9.resnets.0.conv1"
            layers.append(extra)
            variants[0]["layers"] = layers
            j["variants"] = variants
            e.ptqd = j
            e.set("ptqd.v0.down_blocks.9.resnets.0.conv1.qweight", e.tensors["ptqd.v0.\(l.name).qweight"]!)
            e.set("ptqd.v0.down_blocks.9.resnets.0.conv1.wscale", e.tensors["ptqd.v0.\(l.name).wscale"]!)
        }
        assertRefused(p, ["down_blocks.9.resnets.0.conv1"], "layer not in config")
    }

    func testWrongScaleShapeIsRefused() throws {
        for l in [try fourBitLayer(), try eightBitLayer()] {
            let o = l.scales.count
            let twoD = try edited("scale2d-\(l.precision.weightBits).safetensors") { e in
                var s = e.tensors["ptqd.v0.\(l.name).wscale"]!; s.shape = [o, 1]; e.set("ptqd.v0.\(l.name).wscale", s)
            }
            assertRefused(twoD, ["\(l.name).wscale", "[\(o), 1]"], "\(l.precision) scales [O,1]")
            let short = try edited("scaleshort-\(l.precision.weightBits).safetensors") { e in
                var s = e.tensors["ptqd.v0.\(l.name).wscale"]!; s.shape = [o - 1]; s.bytes.removeLast(4)
                e.set("ptqd.v0.\(l.name).wscale", s)
            }
            assertRefused(short, [l.name], "\(l.precision) scales [O-1]")
        }
        let l = try eightBitLayer()
        let negative = try edited("scaleneg.safetensors") { e in
            var s = e.tensors["ptqd.v0.\(l.name).wscale"]!
            let v = (-1 as Float).bitPattern
            s.bytes.replaceSubrange(0..<4, with: [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24)])
            e.set("ptqd.v0.\(l.name).wscale", s)
        }
        assertRefused(negative, [l.name, "positive"], "negative scale")
    }

    func testWrongWeightTensorsAreRefused() throws {
        let l4 = try fourBitLayer(), l8 = try eightBitLayer()
        // 4-bit stored unpacked as I8.
        let unpacked = try edited("unpacked.safetensors") { e in
            let o = l4.scales.count
            e.set("ptqd.v0.\(l4.name).qweight", .init(dtype: .i8, shape: [o, l4.q.count / o], bytes: l4.q.map { UInt8(bitPattern: $0) }))
        }
        assertRefused(unpacked, ["\(l4.name).qweight", "U8"], "4-bit stored as I8")
        // Packed with one byte too few.
        let short = try edited("packedshort.safetensors") { e in
            var w = e.tensors["ptqd.v0.\(l4.name).qweight"]!; w.bytes.removeLast(); w.shape = [w.bytes.count]
            e.set("ptqd.v0.\(l4.name).qweight", w)
        }
        assertRefused(short, ["\(l4.name).qweight", "bytes"], "packed too short")
        // 8-bit stored as U8 / with a flattened shape.
        let u8 = try edited("i8asu8.safetensors") { e in
            var w = e.tensors["ptqd.v0.\(l8.name).qweight"]!; w.dtype = .u8; e.set("ptqd.v0.\(l8.name).qweight", w)
        }
        assertRefused(u8, ["\(l8.name).qweight", "I8"], "8-bit stored as U8")
        let flat = try edited("i8flat.safetensors") { e in
            var w = e.tensors["ptqd.v0.\(l8.name).qweight"]!; w.shape = [w.bytes.count]; e.set("ptqd.v0.\(l8.name).qweight", w)
        }
        assertRefused(flat, ["\(l8.name).qweight"], "8-bit flattened")
        // Weight count that does not fit the layer (metadata and tensor agree with each other).
        let wrongK = try edited("wrongk.safetensors") { e in
            var w = e.tensors["ptqd.v0.\(l8.name).qweight"]!
            let o = l8.scales.count
            w.bytes.removeLast(o); w.shape = [o, w.shape[1] - 1]
            e.set("ptqd.v0.\(l8.name).qweight", w)
            var j = e.ptqd
            var variants = j["variants"] as! [[String: Any]]
            var layers = variants[0]["layers"] as! [[String: Any]]
            let i = layers.firstIndex { ($0["name"] as! String) == l8.name }!
            layers[i]["weightCount"] = l8.q.count - o
            variants[0]["layers"] = layers; j["variants"] = variants; e.ptqd = j
        }
        assertRefused(wrongK, [l8.name], "weights do not fit the layer")
        // A 4-bit layer claiming Int.max weights (the packed-size arithmetic must not overflow), and bit widths
        // outside 2…8: refused while loading, not a trap.
        func editLayer(_ name: String, _ file: String, _ change: @escaping (inout [String: Any]) -> Void) throws -> String {
            try edited(file) { e in
                var j = e.ptqd
                var variants = j["variants"] as! [[String: Any]]
                var layers = variants[0]["layers"] as! [[String: Any]]
                let i = layers.firstIndex { ($0["name"] as! String) == name }!
                change(&layers[i])
                variants[0]["layers"] = layers; j["variants"] = variants; e.ptqd = j
            }
        }
        let huge = try editLayer(l4.name, "hugecount.safetensors") { $0["weightCount"] = Int.max }
        assertRefused(huge, [l4.name, "bytes"], "4-bit weight count Int.max")
        for bits in [0, 1, 9, 64] {
            let p = try editLayer(l4.name, "bits\(bits).safetensors") { l in
                var prec = l["precision"] as! [String: Any]; prec["weightBits"] = bits; l["precision"] = prec
            }
            assertRefused(p, [l4.name, "2…8 bits"], "\(bits)-bit weights")
        }
    }

    func testIntegerOutsideGridIsRefused() throws {
        // A 6-bit layer (stored I8) holding 100, outside −32…31.
        let l = try sixBitLayer()
        let p = try edited("grid.safetensors") { e in
            var w = e.tensors["ptqd.v0.\(l.name).qweight"]!; w.bytes[0] = 100; e.set("ptqd.v0.\(l.name).qweight", w)
        }
        assertRefused(p, [l.name, "6-bit grid"], "integer outside grid")
        // Metadata claiming fewer bits than the stored integers use.
        let l8 = try eightBitLayer()
        let p2 = try edited("grid-meta.safetensors") { e in
            var j = e.ptqd
            var variants = j["variants"] as! [[String: Any]]
            var layers = variants[0]["layers"] as! [[String: Any]]
            let i = layers.firstIndex { ($0["name"] as! String) == l8.name }!
            var prec = layers[i]["precision"] as! [String: Any]
            prec["weightBits"] = 5
            layers[i]["precision"] = prec
            variants[0]["layers"] = layers; j["variants"] = variants; e.ptqd = j
        }
        assertRefused(p2, [l8.name], "metadata bits below stored integers")
    }

    func testQuantizerCountMismatchIsRefused() throws {
        // A layer fed by a skip concatenation needs two input quantizers.
        let split = try XCTUnwrap(try good().run.records.first { $0.split != nil })
        let p = try edited("onequant.safetensors") { e in
            var j = e.ptqd
            var variants = j["variants"] as! [[String: Any]]
            var layers = variants[0]["layers"] as! [[String: Any]]
            let i = layers.firstIndex { ($0["name"] as! String) == split.name }!
            layers[i]["inputs"] = Array((layers[i]["inputs"] as! [Any]).prefix(1))
            layers[i].removeValue(forKey: "split")
            variants[0]["layers"] = layers; j["variants"] = variants; e.ptqd = j
        }
        assertRefused(p, [split.name, "quantizer"], "one quantizer for a split input")
    }

    func testTruncatedFileIsRefused() throws {
        let (_, dir, path) = try good()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        for (i, n) in [bytes.count / 2, bytes.count - 1, 100, 4].enumerated() {
            let p = dir.path("truncated-\(i).safetensors")
            try bytes.prefix(n).write(to: URL(fileURLWithPath: p))
            assertOneLineError(["truncated-\(i).safetensors"], "truncated to \(n) bytes") { _ = try QuantizedModel(path: p) }
        }
        assertOneLineError(["no-such-file.safetensors"], "missing file") { _ = try QuantizedModel(path: dir.path("no-such-file.safetensors")) }
    }

    // MARK: writing

    func testWriteIntoMissingDirectoryLeavesNothing() throws {
        let (run, _, _) = try good()
        let dir = try ScratchDir("write")
        defer { dir.cleanup() }
        let target = dir.path("missing/q.safetensors")
        assertOneLineError(["missing/q.safetensors"], "write into a missing directory") {
            try QuantizedModel.write(to: target, info: run.info, source: run.source, variants: [run.records])
        }
        XCTAssertEqual(dir.contents, [], "write left files behind")
        // A directory where the file should go: the rename fails, the temporary file is removed.
        try FileManager.default.createDirectory(atPath: dir.path("q.safetensors"), withIntermediateDirectories: false)
        XCTAssertThrowsError(try QuantizedModel.write(to: dir.path("q.safetensors"), info: run.info, source: run.source, variants: [run.records]))
        XCTAssertEqual(dir.contents, ["q.safetensors"], "write left a temporary file")
        // Overwriting an existing file replaces it whole.
        let f = dir.path("ok.safetensors")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: f))
        try QuantizedModel.write(to: f, info: run.info, source: run.source, variants: [run.records])
        XCTAssertNoThrow(try QuantizedModel(path: f))
        XCTAssertEqual(dir.contents, ["ok.safetensors", "q.safetensors"])
    }

    func testWriteIsDeterministic() throws {
        let (run, dir, path) = try good()
        let again = dir.path("again.safetensors")
        try QuantizedModel.write(to: again, info: run.info, source: run.source, variants: [run.records])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: again)), try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
