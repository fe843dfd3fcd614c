// Malformed and hostile files: each must give its specific error, with a one-line message naming
// the file — never a crash.

import Foundation
import XCTest
@testable import SafeTensors

final class HostileFileTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    /// Writes `bytes` to a fresh file in the temp dir and returns its path.
    func file(_ bytes: [UInt8], _ name: String = "bad.safetensors") throws -> String {
        let p = dir.path(name)
        try writeBytes(bytes, to: p)
        return p
    }

    /// Header for tensors given as (name, dtype, shape, begin, end), as JSON text.
    func header(_ entries: [(String, String, String, String)], metadata: String? = nil) -> String {
        var parts = entries.map { "\"\($0.0)\":{\"dtype\":\"\($0.1)\",\"shape\":\($0.2),\"data_offsets\":\($0.3)}" }
        if let m = metadata { parts.insert("\"__metadata__\":\(m)", at: 0) }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// A valid file: "a" F32 [2] at [0,8), "b" I8 [3] at [8,11).
    func validFile() throws -> [UInt8] {
        var w = SafeTensorsWriter(metadata: ["m": "x"])
        try w.add("a", floats: [1, 2], shape: [2])
        try w.add("b", int8s: [1, 2, 3], shape: [3])
        return try w.serialized()
    }

    // MARK: Access and framing

    func testMissingFile() {
        let p = dir.path("does-not-exist.safetensors")
        let e = assertLoadFails(p) { if case .cannotOpen(p, _) = $0 { return true }; return false }
        XCTAssertTrue(e?.description.contains("No such file or directory") ?? false, "\(String(describing: e))")
    }

    func testDirectoryIsNotAFile() {
        let p = dir.url.path
        assertLoadFails(p) { if case .cannotRead(p, _) = $0 { return true }; return false }
    }

    func testEmptyAndTinyFiles() throws {
        let p0 = try file([], "zero.safetensors")
        assertLoadFails(p0) { $0 == .fileTooSmall(file: p0, size: 0) }
        let p5 = try file([1, 2, 3, 4, 5], "five.safetensors")
        assertLoadFails(p5) { $0 == .fileTooSmall(file: p5, size: 5) }
    }

    func testTruncatedInHeader() throws {
        let good = try validFile()
        let p = try file(Array(good[0 ..< 40]))
        let n = UInt64(good[0]) // header length < 256 here
        assertLoadFails(p) { $0 == .headerLengthExceedsFile(file: p, headerLength: n, available: 32) }
    }

    func testTruncatedInData() throws {
        let good = try validFile()
        let p = try file(Array(good.dropLast(2)))
        assertLoadFails(p) { $0 == .rangeOutOfBounds(file: p, tensor: "b", range: 8 ..< 11, dataSize: 9) }
    }

    func testHeaderLengthLargerThanFile() throws {
        let p = try file(rawFile("{}", lengthOverride: 1000))
        assertLoadFails(p) { $0 == .headerLengthExceedsFile(file: p, headerLength: 1000, available: 2) }
        let p2 = try file(rawFile("{}", lengthOverride: .max), "max.safetensors")
        assertLoadFails(p2) { $0 == .headerLengthExceedsFile(file: p2, headerLength: .max, available: 2) }
    }

    func testHeaderLengthZero() throws {
        let p = try file(rawFile("{}", lengthOverride: 0))
        assertLoadFails(p) { $0 == .headerLengthZero(file: p) }
    }

    func testHeaderLongerThan100MB() throws {
        // A sparse file just over 100 MB: costs no disk space.
        let p = dir.path("huge.safetensors")
        let n = UInt64(HeaderValidator.maxHeaderLength + 1)
        try writeBytes(rawFile("", lengthOverride: n), to: p)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: p))
        try h.truncate(atOffset: n + 8)
        try h.close()
        assertLoadFails(p) { $0 == .headerTooLarge(file: p, headerLength: n, limit: 100_000_000) }
    }

    // MARK: Header syntax

    func testGarbageJSON() throws {
        let p = try file(rawFile("{not json at all"))
        assertLoadFails(p) { if case .invalidJSON(p, _) = $0 { return true }; return false }
        let p2 = try file(rawFile("{\"a\":1} trailing"), "trailing.safetensors")
        assertLoadFails(p2) { if case .invalidJSON(p2, _) = $0 { return true }; return false }
        let p3 = try file(rawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}\u{0}\u{0}", data: [0, 0, 0, 0]), "nul.safetensors")
        assertLoadFails(p3) { if case .invalidJSON(p3, _) = $0 { return true }; return false }
    }

    func testInvalidUTF8() throws {
        let p = try file(rawFile(headerBytes: Array("{\"a\u{e9}".utf8) + [0xFF, 0xFE] + Array("\":1}".utf8)))
        assertLoadFails(p) { $0 == .headerNotUTF8(file: p) }
    }

    func testTopLevelArray() throws {
        let p = try file(rawFile("[1,2,3]"))
        assertLoadFails(p) { $0 == .headerNotObject(file: p, found: "array") }
    }

    func testDeepNestingIsRejectedNotStackOverflow() throws {
        let deep = String(repeating: "[", count: 200_000) + String(repeating: "]", count: 200_000)
        let p = try file(rawFile("{\"a\":" + deep + "}"))
        assertLoadFails(p) { if case .invalidJSON(p, _) = $0 { return true }; return false }
    }

    func testDuplicateTensorName() throws {
        let e = "{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}"
        let p = try file(rawFile("{\"a\":\(e),\"a\":\(e)}", data: [1]))
        assertLoadFails(p) { $0 == .duplicateKey(file: p, key: "a") }
    }

    // MARK: Entries

    func testEntryNotObject() throws {
        let p = try file(rawFile("{\"a\":[1,2]}"))
        assertLoadFails(p) { $0 == .entryNotObject(file: p, tensor: "a") }
    }

    func testMissingAndMistypedFields() throws {
        let p1 = try file(rawFile("{\"a\":{\"shape\":[1],\"data_offsets\":[0,1]}}", data: [0]), "1.safetensors")
        assertLoadFails(p1) { $0 == .missingField(file: p1, tensor: "a", field: "dtype") }
        let p2 = try file(rawFile("{\"a\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}", data: [0]), "2.safetensors")
        assertLoadFails(p2) { $0 == .dtypeNotString(file: p2, tensor: "a") }
        let p3 = try file(rawFile("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", data: [0]), "3.safetensors")
        assertLoadFails(p3) { $0 == .missingField(file: p3, tensor: "a", field: "shape") }
        let p4 = try file(rawFile("{\"a\":{\"dtype\":\"U8\",\"shape\":[1]}}", data: [0]), "4.safetensors")
        assertLoadFails(p4) { $0 == .missingField(file: p4, tensor: "a", field: "data_offsets") }
    }

    func testUnknownDType() throws {
        let p = try file(rawFile(header([("w", "F8", "[1]", "[0,1]")]), data: [0]))
        let e = assertLoadFails(p) { $0 == .unknownDType(file: p, tensor: "w", dtype: "F8") }
        XCTAssertTrue(e?.description.contains("'F8'") ?? false)
        XCTAssertTrue(e?.description.contains("F32, F16, BF16") ?? false, "should list supported dtypes")
        // dtype names are case-sensitive
        let p2 = try file(rawFile(header([("w", "f32", "[1]", "[0,4]")]), data: [0, 0, 0, 0]), "lower.safetensors")
        assertLoadFails(p2) { $0 == .unknownDType(file: p2, tensor: "w", dtype: "f32") }
    }

    func testInvalidShapes() throws {
        let cases: [(String, String)] = [
            ("[2,-3]", "negative"), ("[2.5]", "not an integer"), ("[2.0]", "not an integer"),
            ("[1e1]", "not an integer"), ("[\"3\"]", "not an integer"), ("[null]", "not an integer"),
            ("[[2]]", "not an integer"), ("3", "found a JSON integer"), ("{}", "found a JSON object"),
            ("[99999999999999999999999]", "too large"),
        ]
        for (i, (shape, hint)) in cases.enumerated() {
            let p = try file(rawFile(header([("w", "U8", shape, "[0,1]")]), data: [0]), "shape\(i).safetensors")
            let e = assertLoadFails(p) { if case .invalidShape(p, "w", _) = $0 { return true }; return false }
            XCTAssertTrue(e?.description.contains(hint) ?? false, "\(shape): \(String(describing: e))")
        }
    }

    func testInvalidDataOffsets() throws {
        let cases = ["[8,0]", "[0]", "[0,1,2]", "[-1,0]", "[0,1.5]", "\"0,1\"", "[0,null]", "[0,18446744073709551616]"]
        for (i, offs) in cases.enumerated() {
            let p = try file(rawFile(header([("w", "U8", "[1]", offs)]), data: [0]), "offs\(i).safetensors")
            assertLoadFails(p) { if case .invalidDataOffsets(p, "w", _) = $0 { return true }; return false }
        }
    }

    func testSizeMismatch() throws {
        let p = try file(rawFile(header([("conv.weight", "F32", "[3,3]", "[0,32]")]), data: Array(repeating: 0, count: 32)),
                         "model.safetensors")
        let e = assertLoadFails(p) {
            $0 == .sizeMismatch(file: p, tensor: "conv.weight", shape: [3, 3], dtype: .f32, expectedBytes: 36, actualBytes: 32)
        }
        XCTAssertEqual(e?.description,
                       "\(p): tensor 'conv.weight' has shape [3,3] (9 × F32 = 36 bytes) but data_offsets span 32 bytes")
    }

    func testSizeOverflow() throws {
        let big = "[\(Int.max / 2),4]"
        let p = try file(rawFile(header([("w", "F32", big, "[0,4]")]), data: [0, 0, 0, 0]))
        assertLoadFails(p) { $0 == .sizeOverflow(file: p, tensor: "w", shape: [Int.max / 2, 4], dtype: .f32) }
        // A product that wraps to exactly the declared size must still be caught.
        let wrap = "[\(1 << 62),4]"   // 2^62 × 4 × 4 wraps to 0 in 64-bit arithmetic
        let p2 = try file(rawFile(header([("w", "F32", wrap, "[0,0]")])), "wrap.safetensors")
        assertLoadFails(p2) { if case .sizeOverflow(p2, "w", _, .f32) = $0 { return true }; return false }
    }

    // MARK: Layout

    func testOverlappingRanges() throws {
        let p = try file(rawFile(header([("a", "U8", "[4]", "[0,4]"), ("b", "U8", "[4]", "[2,6]")]),
                                 data: Array(repeating: 0, count: 6)))
        assertLoadFails(p) {
            $0 == .overlappingRanges(file: p, first: "a", firstRange: 0 ..< 4, second: "b", secondRange: 2 ..< 6)
        }
        // Two tensors sharing the same bytes.
        let p2 = try file(rawFile(header([("a", "U8", "[4]", "[0,4]"), ("b", "I8", "[4]", "[0,4]")]),
                                  data: Array(repeating: 0, count: 4)), "same.safetensors")
        assertLoadFails(p2) { if case .overlappingRanges(p2, "a", _, "b", _) = $0 { return true }; return false }
    }

    func testRangePastEnd() throws {
        let p = try file(rawFile(header([("a", "U8", "[4]", "[0,4]"), ("b", "U8", "[4]", "[4,8]")]),
                                 data: Array(repeating: 0, count: 6)))
        assertLoadFails(p) { $0 == .rangeOutOfBounds(file: p, tensor: "b", range: 4 ..< 8, dataSize: 6) }
    }

    func testTrailingGarbage() throws {
        let p = try file(rawFile(header([("a", "U8", "[4]", "[0,4]")]), data: [1, 2, 3, 4, 0xDE, 0xAD]))
        let e = assertLoadFails(p) { $0 == .trailingGarbage(file: p, dataEnd: 4, dataSize: 6) }
        XCTAssertTrue(e?.description.contains("trailing garbage") ?? false)
        // No tensors at all, but data bytes.
        let p2 = try file(rawFile("{}", data: [1]), "nodata.safetensors")
        assertLoadFails(p2) { $0 == .trailingGarbage(file: p2, dataEnd: 0, dataSize: 1) }
    }

    func testGapBetweenTensors() throws {
        let p = try file(rawFile(header([("a", "U8", "[4]", "[0,4]"), ("b", "U8", "[2]", "[6,8]")]),
                                 data: Array(repeating: 0, count: 8)))
        assertLoadFails(p) { $0 == .gapInData(file: p, gap: 4 ..< 6, before: "b") }
        // Gap at the very start.
        let p2 = try file(rawFile(header([("a", "U8", "[2]", "[2,4]")]), data: [0, 0, 0, 0]), "start.safetensors")
        assertLoadFails(p2) { $0 == .gapInData(file: p2, gap: 0 ..< 2, before: "a") }
    }

    func testEmptyTensorsAreLegalAtBoundariesButNotInsideOtherTensors() throws {
        let ok = try file(rawFile(header([("e0", "F32", "[0]", "[0,0]"), ("a", "U8", "[2]", "[0,2]"),
                                          ("e2", "I64", "[3,0]", "[2,2]")]), data: [5, 6]), "ok.safetensors")
        let f = try SafeTensorsFile(path: ok)
        XCTAssertEqual(f.names, ["e0", "a", "e2"])
        XCTAssertEqual(try f.int64s("e2"), [])
        let bad = try file(rawFile(header([("a", "U8", "[4]", "[0,4]"), ("e", "U8", "[0]", "[2,2]")]),
                                   data: [0, 0, 0, 0]), "inside.safetensors")
        assertLoadFails(bad) { if case .overlappingRanges(bad, "a", _, "e", _) = $0 { return true }; return false }
    }

    // MARK: Metadata

    func testBadMetadata() throws {
        let t = [("a", "U8", "[1]", "[0,1]")]
        let p = try file(rawFile(header(t, metadata: "{\"epochs\":3}"), data: [0]))
        let e = assertLoadFails(p) { if case .invalidMetadata(p, _) = $0 { return true }; return false }
        XCTAssertTrue(e?.description.contains("'epochs'") ?? false)
        let p2 = try file(rawFile(header(t, metadata: "[\"x\"]"), data: [0]), "arr.safetensors")
        assertLoadFails(p2) { if case .invalidMetadata(p2, _) = $0 { return true }; return false }
        let p3 = try file(rawFile(header(t, metadata: "{\"x\":null}"), data: [0]), "null.safetensors")
        assertLoadFails(p3) { if case .invalidMetadata(p3, _) = $0 { return true }; return false }
    }

    // MARK: Lookups on a valid file

    func testLookupErrors() throws {
        let p = try file(try validFile(), "good.safetensors")
        let f = try SafeTensorsFile(path: p)
        assertThrowsST(try f.info("nope"), path: p) { $0 == .missingTensor(file: p, name: "nope") }
        assertThrowsST(try f.floats("nope"), path: p) { $0 == .missingTensor(file: p, name: "nope") }
        assertThrowsST(try f.withRawBytes("nope") { _ in 0 }, path: p) { $0 == .missingTensor(file: p, name: "nope") }
        assertThrowsST(try f.floats("b"), path: p) {
            $0 == .wrongDType(file: p, tensor: "b", actual: .i8, accepted: [.f32, .f16, .bf16, .f64])
        }
        assertThrowsST(try f.int8s("a"), path: p) { $0 == .wrongDType(file: p, tensor: "a", actual: .f32, accepted: [.i8]) }
        assertThrowsST(try f.uint8s("b"), path: p) { $0 == .wrongDType(file: p, tensor: "b", actual: .i8, accepted: [.u8]) }
        assertThrowsST(try f.int32s("a"), path: p) { $0 == .wrongDType(file: p, tensor: "a", actual: .f32, accepted: [.i32]) }
        assertThrowsST(try f.int64s("a"), path: p) { $0 == .wrongDType(file: p, tensor: "a", actual: .f32, accepted: [.i64]) }
        assertThrowsST(try f.floats("a", expectedShape: [2, 1]), path: p) {
            $0 == .shapeMismatch(file: p, tensor: "a", expected: [2, 1], actual: [2])
        }
        do {
            _ = try f.floats("b")
        } catch {
            XCTAssertTrue("\(error)".contains("F32, F16, BF16, F64"), "should say which dtypes are accepted: \(error)")
        }
        XCTAssertEqual(try f.floats("a", expectedShape: [2]), [1, 2])
    }

    func testNamesWithLineBreaksStayOnOneLine() throws {
        let p = try file(rawFile("{\"bad\\nname\":{\"dtype\":\"Q4\",\"shape\":[],\"data_offsets\":[0,0]}}"))
        assertLoadFails(p) { $0 == .unknownDType(file: p, tensor: "bad\nname", dtype: "Q4") }
    }

    // MARK: Fuzz

    /// 2,000 seeded mutations of a valid file: each must either load (and then read fully) or throw a
    /// SafeTensorsError with a one-line message naming the file. A crash fails the whole run.
    func testFuzzedFilesNeverCrash() throws {
        var w = SafeTensorsWriter(metadata: ["k": "v"])
        try w.add("f32", floats: [1, 2, 3, 4], shape: [2, 2])
        try w.add("f16", floats: [1, 2], shape: [2], as: .f16)
        try w.add("bf16", floats: [1], shape: [1], as: .bf16)
        try w.add("i8", int8s: [1, 2, 3], shape: [3])
        try w.add("u8", uint8s: [9], shape: [])
        try w.add("i32", int32s: [5, 6], shape: [1, 2])
        try w.add("i64", int64s: [7], shape: [1])
        try w.add("empty", floats: [], shape: [0])
        let good = try w.serialized()
        let headerEnd = 8 + Int(good[0]) + Int(good[1]) << 8
        var rng = SplitMix64(seed: 0x5AFE_7E45)
        var loaded = 0, failed = 0
        var seen = Set<String>()
        let memDir = try TempDir(inMemory: true)
        defer { memDir.remove() }
        let p = memDir.path("fuzz.safetensors")
        for iteration in 0 ..< 2000 {
            var bytes = good
            switch iteration % 6 {
            case 0: // truncate anywhere
                bytes = Array(bytes.prefix(Int.random(in: 0 ... bytes.count, using: &rng)))
            case 1: // flip 1–4 random bytes anywhere
                for _ in 0 ..< Int.random(in: 1 ... 4, using: &rng) {
                    bytes[Int.random(in: 0 ..< bytes.count, using: &rng)] = UInt8.random(in: 0 ... 255, using: &rng)
                }
            case 2: // change one digit in the header (shapes, offsets)
                let digits = (8 ..< headerEnd).filter { (0x30 ... 0x39).contains(bytes[$0]) }
                bytes[digits.randomElement(using: &rng)!] = UInt8(ascii: "0") + UInt8.random(in: 0 ... 9, using: &rng)
            case 3: // replace a header byte with JSON punctuation
                let punct = Array("{}[],:\"-.e0 ".utf8)
                bytes[Int.random(in: 8 ..< headerEnd, using: &rng)] = punct.randomElement(using: &rng)!
            case 4: // corrupt the length prefix
                bytes[Int.random(in: 0 ..< 8, using: &rng)] = UInt8.random(in: 0 ... 255, using: &rng)
            default: // insert or delete a few bytes somewhere
                let at = Int.random(in: 0 ..< bytes.count, using: &rng)
                if Bool.random(using: &rng) {
                    bytes.insert(contentsOf: (0 ..< Int.random(in: 1 ... 3, using: &rng)).map { _ in UInt8.random(in: 0 ... 255, using: &rng) }, at: at)
                } else {
                    bytes.removeSubrange(at ..< min(bytes.count, at + Int.random(in: 1 ... 3, using: &rng)))
                }
            }
            try writeBytes(bytes, to: p)
            do {
                let f = try SafeTensorsFile(path: p)
                for name in f.names {
                    let info = try f.info(name)
                    let n = try f.withRawBytes(name) { $0.count }
                    XCTAssertEqual(n, info.elementCount * info.dtype.byteSize)
                    switch info.dtype {
                    case .f32, .f16, .bf16, .f64: XCTAssertEqual(try f.floats(name).count, info.elementCount)
                    case .i8: XCTAssertEqual(try f.int8s(name).count, info.elementCount)
                    case .u8: XCTAssertEqual(try f.uint8s(name).count, info.elementCount)
                    case .i32: XCTAssertEqual(try f.int32s(name).count, info.elementCount)
                    case .i64: XCTAssertEqual(try f.int64s(name).count, info.elementCount)
                    case .i16: XCTAssertEqual(try f.int16s(name).count, info.elementCount)
                    case .bool: break
                    }
                }
                loaded += 1
            } catch let e as SafeTensorsError {
                assertOneLineNamingFile(e, p)
                seen.insert(String("\(e)".dropFirst(p.count + 2).prefix(25)))
                failed += 1
            }
        }
        XCTAssertEqual(loaded + failed, 2000)
        // The mutations must exercise both outcomes and many different checks.
        XCTAssertGreaterThan(loaded, 20)
        XCTAssertGreaterThan(failed, 1000)
        XCTAssertGreaterThan(seen.count, 8, "\(seen.sorted())")
    }
}
