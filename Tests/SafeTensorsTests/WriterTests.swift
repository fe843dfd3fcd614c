// Writer input checks and atomic replacement on disk.

import Foundation
import XCTest
@testable import SafeTensors

final class WriterTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    func sample() throws -> SafeTensorsWriter {
        var w = SafeTensorsWriter(metadata: ["v": "1"])
        try w.add("x", floats: [1, 2, 3], shape: [3])
        return w
    }

    func testInputChecks() throws {
        var w = SafeTensorsWriter()
        try w.add("x", floats: [1], shape: [1])
        assertThrowsST(try w.add("x", floats: [1], shape: [1])) { $0 == .duplicateTensorName(name: "x") }
        assertThrowsST(try w.add("x", int8s: [1], shape: [1])) { $0 == .duplicateTensorName(name: "x") }
        assertThrowsST(try w.add("", floats: [1], shape: [1])) { $0 == .emptyTensorName }
        assertThrowsST(try w.add("__metadata__", floats: [1], shape: [1])) { $0 == .reservedTensorName(name: "__metadata__") }
        assertThrowsST(try w.add("y", floats: [1, 2, 3], shape: [2, 2])) {
            $0 == .byteCountMismatch(name: "y", shape: [2, 2], dtype: .f32, expectedBytes: 16, actualBytes: 12)
        }
        assertThrowsST(try w.add("y", dtype: .i32, shape: [2], bytes: [1, 2, 3])) {
            $0 == .byteCountMismatch(name: "y", shape: [2], dtype: .i32, expectedBytes: 8, actualBytes: 3)
        }
        assertThrowsST(try w.add("y", uint8s: [], shape: [-1, 0])) {
            if case .invalidWriterShape("y", [-1, 0], _) = $0 { return true }; return false
        }
        assertThrowsST(try w.add("y", uint8s: [], shape: [Int.max, 2])) {
            if case .invalidWriterShape("y", _, _) = $0 { return true }; return false
        }
        assertThrowsST(try w.add("y", floats: [1], shape: [1], as: .i8)) { $0 == .unsupportedWriterDType(name: "y", dtype: .i8) }
        // Failed adds leave the writer unchanged.
        XCTAssertEqual(w.names, ["x"])
        try w.add("y", floats: [1, 2, 3, 4], shape: [2, 2])
        XCTAssertEqual(w.names, ["x", "y"])
    }

    func testHeaderIsPaddedToMultipleOf8() throws {
        for n in 1 ... 16 {
            var w = SafeTensorsWriter(metadata: ["pad": String(repeating: "p", count: n)])
            try w.add(String(repeating: "t", count: n), uint8s: [1], shape: [1])
            let bytes = try w.serialized()
            let len = bytes[0 ..< 8].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
            XCTAssertEqual(len % 8, 0)
            XCTAssertEqual(bytes.count, 8 + len + 1)
            XCTAssertEqual(bytes[8 + len - 1] == UInt8(ascii: "}") || bytes[8 + len - 1] == UInt8(ascii: " "), true)
        }
    }

    func testWriteIntoMissingDirectoryThrowsAndLeavesNothing() throws {
        let missing = dir.path("no/such/dir")
        let target = missing + "/out.safetensors"
        assertThrowsST(try sample().write(to: target), path: target) {
            if case .writeFailed(target, _) = $0 { return true }; return false
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.path("no")))
        XCTAssertEqual(try dir.listing(), [])
    }

    func testWriteReplacesExistingFile() throws {
        let target = dir.path("model.safetensors")
        try writeBytes(Array("old contents that are not safetensors".utf8), to: target)
        try sample().write(to: target)
        let f = try SafeTensorsFile(path: target)
        XCTAssertEqual(try f.floats("x"), [1, 2, 3])
        XCTAssertEqual(f.metadata, ["v": "1"])
        XCTAssertEqual(try dir.listing(), ["model.safetensors"])

        // Replacing a file that is currently open and mapped is safe: the old mapping stays intact.
        var w2 = SafeTensorsWriter()
        try w2.add("x", floats: [9, 9, 9, 9], shape: [4])
        try w2.write(to: target)
        XCTAssertEqual(try f.floats("x"), [1, 2, 3])
        XCTAssertEqual(try SafeTensorsFile(path: target).floats("x"), [9, 9, 9, 9])
        XCTAssertEqual(try dir.listing(), ["model.safetensors"])
    }

    func testFailedRenameRemovesTemporaryFile() throws {
        // The target is an existing non-empty directory: the temp file is written, rename fails.
        let target = dir.path("occupied")
        try FileManager.default.createDirectory(atPath: target + "/child", withIntermediateDirectories: true)
        assertThrowsST(try sample().write(to: target), path: target) {
            if case let .writeFailed(_, reason) = $0 { return reason.contains("rename") }; return false
        }
        XCTAssertEqual(try dir.listing(), ["occupied"])
        XCTAssertFalse(try dir.listing().contains { $0.contains(".tmp-") })
    }

    func testRelativePathWorks() throws {
        let cwd = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(dir.url.path))
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        try sample().write(to: "rel.safetensors")
        XCTAssertEqual(try SafeTensorsFile(path: "rel.safetensors").floats("x"), [1, 2, 3])
        XCTAssertEqual(try dir.listing(), ["rel.safetensors"])
    }
}
