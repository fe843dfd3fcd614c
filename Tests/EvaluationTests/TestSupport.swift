import Foundation
import SafeTensors
import TensorCore
import XCTest
@testable import Evaluation

/// The committed fixtures directory (made by tools/make_eval_fixtures.py).
func fixturesDirectory() -> String {
    Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
}

/// A fresh temporary directory, removed when the test case finishes.
func makeTempDirectory(_ test: XCTestCase) -> String {
    let path = NSTemporaryDirectory() + "ptqd-eval-\(getpid())-\(UInt64.random(in: 0 ... .max))"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// The repository root (…/Tests/EvaluationTests/TestSupport.swift → …).
let repositoryRoot: String = {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
}()

let featureNetworkDirectory = repositoryRoot + "/models/fmnist-features"

/// A valid gzip member holding `data` in stored (uncompressed) deflate blocks.
func gzipStored(_ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]
    var i = 0
    repeat {
        let n = min(65535, data.count - i)
        out.append(i + n == data.count ? 1 : 0)
        out += [UInt8(n & 0xff), UInt8(n >> 8), UInt8(~n & 0xff), UInt8((~n >> 8) & 0xff)]
        out += data[i..<(i + n)]
        i += n
    } while i < data.count
    let crc = Gzip.crc32(data)
    for v in [crc, UInt32(truncatingIfNeeded: data.count)] { for s in stride(from: 0, to: 32, by: 8) { out.append(UInt8((v >> UInt32(s)) & 0xff)) } }
    return out
}

/// An IDX file: big-endian magic, dims, bytes.
func idx(magic: UInt32, dims: [Int], payload: [UInt8]) -> [UInt8] {
    var out: [UInt8] = []
    for v in [magic] + dims.map(UInt32.init) { for s in [24, 16, 8, 0] { out.append(UInt8((v >> UInt32(s)) & 0xff)) } }
    return out + payload
}

func write(_ bytes: [UInt8], _ path: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
}

/// A tensor from a fixture file (row-major, the file's shape).
func fixtureTensor(_ file: SafeTensorsFile, _ name: String) throws -> Tensor {
    Tensor(shape: try file.info(name).shape, values: try file.floats(name))
}

/// metrics.json as a dictionary.
func expectedMetrics() throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: fixturesDirectory() + "/metrics.json"))
    return try JSONSerialization.jsonObject(with: data) as! [String: Any]
}

func relErr(_ a: Double, _ b: Double) -> Double { abs(a - b) / max(abs(b), 1e-300) }
