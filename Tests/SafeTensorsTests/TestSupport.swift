// Shared helpers for the SafeTensors tests: temporary directories, hand-built files, error matching.

import Foundation
import XCTest
@testable import SafeTensors

/// A fresh directory under the system temp dir; removed by `remove()`.
struct TempDir {
    let url: URL
    /// `inMemory`: use /dev/shm (tmpfs) when present — the fuzz test writes thousands of files and
    /// rewriting a file on the ext4 temp dir costs milliseconds each.
    init(inMemory: Bool = false) throws {
        var isDir: ObjCBool = false
        let base = inMemory && FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDir) && isDir.boolValue
            && FileManager.default.isWritableFile(atPath: "/dev/shm")
            ? URL(fileURLWithPath: "/dev/shm") : FileManager.default.temporaryDirectory
        url = base.appendingPathComponent("safetensors-tests-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    /// Absolute path of `name` inside the directory.
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    /// Names of the entries in the directory, sorted.
    func listing() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: url.path).sorted() }
    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Bytes of a safetensors file: 8-byte LE length of `header` (or `lengthOverride`), the header, `data`.
func rawFile(_ header: String, data: [UInt8] = [], lengthOverride: UInt64? = nil) -> [UInt8] {
    rawFile(headerBytes: Array(header.utf8), data: data, lengthOverride: lengthOverride)
}

/// Like `rawFile(_:data:lengthOverride:)` with the header given as raw bytes (may be invalid UTF-8).
func rawFile(headerBytes: [UInt8], data: [UInt8] = [], lengthOverride: UInt64? = nil) -> [UInt8] {
    var out: [UInt8] = []
    withUnsafeBytes(of: (lengthOverride ?? UInt64(headerBytes.count)).littleEndian) { out.append(contentsOf: $0) }
    return out + headerBytes + data
}

/// Writes `bytes` to `path`, failing the test on error.
func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Little-endian bytes of `values` (F32).
func f32Bytes(_ values: [Float]) -> [UInt8] {
    values.flatMap { v -> [UInt8] in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } }
}

/// Asserts that opening `path` throws a `SafeTensorsError` accepted by `matches`, whose description
/// is a single line that names the file. Returns the error for further checks.
@discardableResult
func assertLoadFails(_ path: String, file: StaticString = #filePath, line: UInt = #line,
                     _ matches: (SafeTensorsError) -> Bool) -> SafeTensorsError? {
    do {
        let f = try SafeTensorsFile(path: path)
        XCTFail("expected an error, but the file loaded with \(f.tensors.count) tensors", file: file, line: line)
        return nil
    } catch let error as SafeTensorsError {
        XCTAssertTrue(matches(error), "unexpected error case: \(error)", file: file, line: line)
        assertOneLineNamingFile(error, path, file: file, line: line)
        return error
    } catch {
        XCTFail("unexpected non-SafeTensorsError \(error)", file: file, line: line)
        return nil
    }
}

/// Asserts `body` throws a `SafeTensorsError` accepted by `matches` (one line; names `path` if given).
func assertThrowsST<T>(_ body: @autoclosure () throws -> T, path: String? = nil,
                       file: StaticString = #filePath, line: UInt = #line,
                       _ matches: (SafeTensorsError) -> Bool) {
    do {
        _ = try body()
        XCTFail("expected an error", file: file, line: line)
    } catch let error as SafeTensorsError {
        XCTAssertTrue(matches(error), "unexpected error case: \(error)", file: file, line: line)
        if let path = path { assertOneLineNamingFile(error, path, file: file, line: line) }
        XCTAssertFalse(error.description.contains("\n"), "multi-line description: \(error)", file: file, line: line)
    } catch {
        XCTFail("unexpected non-SafeTensorsError \(error)", file: file, line: line)
    }
}

func assertOneLineNamingFile(_ error: SafeTensorsError, _ path: String,
                             file: StaticString = #filePath, line: UInt = #line) {
    let d = error.description
    XCTAssertTrue(d.contains(path), "description does not name the file: \(d)", file: file, line: line)
    XCTAssertFalse(d.contains("\n") || d.contains("\r"), "description is not one line: \(d)", file: file, line: line)
}

/// Deterministic 64-bit PRNG (SplitMix64) so fuzz failures are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
