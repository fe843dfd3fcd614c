// Writer → file → reader round trips, and the exact byte layout of a tiny known file.

import Foundation
import XCTest
@testable import SafeTensors

final class RoundTripTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    /// The content digest is stable, and changes with any bit, a trailing zero byte or the metadata.
    func testContentDigestSeesEveryByte() throws {
        func digest(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { SafeTensorsDigest.mix64($0) } }
        let base: [UInt8] = (0..<29).map { UInt8($0 * 7 % 256) }
        XCTAssertEqual(digest(base), digest(base))
        XCTAssertTrue(digest(base).hasPrefix("mix64:") && digest(base).count == 6 + 16)
        var seen: Set<String> = [digest(base), digest(base + [0]), digest([])]
        for i in base.indices { for bit in [0, 7] {  // bit 7 of the word's top byte is the hard case
            var b = base; b[i] ^= UInt8(1 << bit)
            seen.insert(digest(b))
        } }
        XCTAssertEqual(seen.count, 3 + base.count * 2, "a flipped bit or appended zero left the digest unchanged")
        var w = SafeTensorsWriter(metadata: ["a": "1"])
        try w.add("x", floats: [1, 2, 3], shape: [3])
        try w.write(to: dir.path("a.safetensors"))
        var w2 = SafeTensorsWriter(metadata: ["a": "2"])
        try w2.add("x", floats: [1, 2, 3], shape: [3])
        try w2.write(to: dir.path("b.safetensors"))
        let a = try SafeTensorsFile(path: dir.path("a.safetensors")), b = try SafeTensorsFile(path: dir.path("b.safetensors"))
        XCTAssertEqual(a.contentDigest(), a.withMappedBytes { SafeTensorsDigest.mix64($0) })
        XCTAssertNotEqual(a.contentDigest(), b.contentDigest())
    }

    func testEveryDTypeRoundTrips() throws {
        var w = SafeTensorsWriter(metadata: ["format": "pt", "note": "quote \" backslash \\ newline \n ünïcødé"])
        let f32: [Float] = [1.5, -2.25, .pi, -0.0, .greatestFiniteMagnitude, .leastNonzeroMagnitude]
        try w.add("f32", floats: f32, shape: [2, 3])
        try w.add("f64", floats: [1.0, -.leastNormalMagnitude, 1e38], shape: [3], as: .f64)
        try w.add("f16", floats: [1.0, -2.5, 65504, 0.5], shape: [2, 2], as: .f16)
        try w.add("bf16", floats: [1.0, -2.5, 3.140625], shape: [3], as: .bf16)
        try w.add("i64", int64s: [.min, .max, 0, -1], shape: [4])
        try w.add("i32", int32s: [.min, .max, 7], shape: [3, 1])
        let i16: [Int16] = [.min, .max, -2]
        try w.add("i16", dtype: .i16, shape: [3], bytes: i16.flatMap { v in withUnsafeBytes(of: v.littleEndian) { Array($0) } })
        try w.add("i8", int8s: [-128, 127, 0, -1], shape: [1, 4])
        try w.add("u8", uint8s: [0, 255, 128], shape: [3])
        try w.add("bool", dtype: .bool, shape: [2], bytes: [1, 0])
        try w.add("scalar", floats: [42.5], shape: [])
        try w.add("empty", floats: [], shape: [0, 3])
        try w.add("empty.i8", int8s: [], shape: [4, 0])
        try w.add("weird \"name\"\t/é", uint8s: [9], shape: [1, 1, 1])

        let path = dir.path("all.safetensors")
        try w.write(to: path)
        let f = try SafeTensorsFile(path: path)

        XCTAssertEqual(f.metadata, w.metadata)
        XCTAssertEqual(f.headerLength % 8, 0)
        XCTAssertEqual(f.tensors.count, 14)
        // names are sorted by data offset, which for this writer is insertion order (the two empty
        // tensors share an offset with the next one; ties go to the shorter range, then by name).
        XCTAssertEqual(f.names, w.names)

        XCTAssertEqual(try f.floats("f32").map(\.bitPattern), f32.map(\.bitPattern))
        XCTAssertEqual(try f.info("f32").shape, [2, 3])
        XCTAssertEqual(try f.info("f32").dtype, .f32)
        XCTAssertEqual(try f.floats("f64"), [1.0, -.leastNormalMagnitude, 1e38])
        XCTAssertEqual(try f.info("f64").dtype, .f64)
        XCTAssertEqual(try f.floats("f16"), [1.0, -2.5, 65504, 0.5])
        XCTAssertEqual(try f.info("f16").byteCount, 8)
        XCTAssertEqual(try f.floats("bf16"), [1.0, -2.5, 3.140625])
        XCTAssertEqual(try f.int64s("i64"), [.min, .max, 0, -1])
        XCTAssertEqual(try f.int32s("i32"), [.min, .max, 7])
        XCTAssertEqual(try f.int16s("i16"), i16)
        XCTAssertEqual(try f.int8s("i8"), [-128, 127, 0, -1])
        XCTAssertEqual(try f.uint8s("u8"), [0, 255, 128])
        XCTAssertEqual(try f.withRawBytes("bool") { Array($0) }, [1, 0])
        XCTAssertEqual(try f.info("bool").dtype, .bool)
        XCTAssertEqual(try f.floats("scalar", expectedShape: []), [42.5])
        XCTAssertEqual(try f.info("scalar").elementCount, 1)
        XCTAssertEqual(try f.floats("empty", expectedShape: [0, 3]), [])
        XCTAssertEqual(try f.info("empty").elementCount, 0)
        XCTAssertEqual(try f.int8s("empty.i8"), [])
        XCTAssertEqual(try f.uint8s("weird \"name\"\t/é"), [9])
        XCTAssertTrue(f.contains("u8"))
        XCTAssertFalse(f.contains("U8"))

        // The file on disk is exactly what serialized() returns.
        XCTAssertEqual(Array(try Data(contentsOf: URL(fileURLWithPath: path))), try w.serialized())
        XCTAssertEqual(f.fileSize, try w.serialized().count)
    }

    func testDataIsLaidOutInInsertionOrder() throws {
        var w = SafeTensorsWriter()
        try w.add("z", floats: [1, 2], shape: [2])
        try w.add("a", int8s: [3], shape: [1])
        try w.add("m", int32s: [4], shape: [1])
        let path = dir.path("order.safetensors")
        try w.write(to: path)
        let f = try SafeTensorsFile(path: path)
        XCTAssertEqual(f.names, ["z", "a", "m"])
        XCTAssertEqual(f.tensors["z"]!.dataOffsets, 0 ..< 8)
        XCTAssertEqual(f.tensors["a"]!.dataOffsets, 8 ..< 9)
        XCTAssertEqual(f.tensors["m"]!.dataOffsets, 9 ..< 13)
        // Unaligned I32 at data offset 9 still reads correctly.
        XCTAssertEqual(try f.int32s("m"), [4])
    }

    /// The exact bytes of a tiny file, written out by hand from the format specification.
    func testTinyFileMatchesSpecByteForByte() throws {
        var w = SafeTensorsWriter(metadata: ["k": "v"])
        try w.add("b", uint8s: [7], shape: [1])      // inserted first → data offset 0
        try w.add("a", floats: [1.0, -2.0], shape: [2])
        let header = #"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},"#
            + #""b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#
            + "     " // 131 bytes of JSON + 5 spaces = 136
        let expected: [UInt8] = [0x88, 0, 0, 0, 0, 0, 0, 0] + Array(header.utf8)
            + [0x07] + [0x00, 0x00, 0x80, 0x3F] + [0x00, 0x00, 0x00, 0xC0]
        XCTAssertEqual(Array(header.utf8).count, 136)
        XCTAssertEqual(try w.serialized(), expected)

        let path = dir.path("tiny.safetensors")
        try w.write(to: path)
        XCTAssertEqual(Array(try Data(contentsOf: URL(fileURLWithPath: path))), expected)
    }

    func testEmptyWriterProducesValidFile() throws {
        let w = SafeTensorsWriter()
        XCTAssertEqual(try w.serialized(), [8, 0, 0, 0, 0, 0, 0, 0] + Array("{}      ".utf8))
        let path = dir.path("empty.safetensors")
        try w.write(to: path)
        let f = try SafeTensorsFile(path: path)
        XCTAssertTrue(f.tensors.isEmpty)
        XCTAssertTrue(f.metadata.isEmpty)
        XCTAssertEqual(f.names, [])
    }

    func testReaderAcceptsUnpaddedHeaderWhitespaceAndEscapes() throws {
        // Not written by our writer, but legal: no padding, whitespace, escaped key, extra field.
        let header = " {\n \"w\\u00e9\\/x\" : { \"dtype\" : \"I8\", \"shape\" : [ 3 ], \"data_offsets\" : [ 0 , 3 ], \"extra\": null } } "
        let path = dir.path("loose.safetensors")
        try writeBytes(rawFile(header, data: [1, 2, 255]), to: path)
        let f = try SafeTensorsFile(path: path)
        XCTAssertEqual(try f.int8s("wé/x"), [1, 2, -1])
    }
}
