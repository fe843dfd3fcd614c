import Foundation
import TensorCore
import XCTest
@testable import Evaluation

final class GzipTests: XCTestCase {
    func testCRC32KnownValue() {
        XCTAssertEqual(Gzip.crc32(Array("123456789".utf8)), 0xCBF4_3926)
    }

    /// Stored, fixed-Huffman and dynamic-Huffman members made by Python's zlib decode to the originals.
    func testDecodesEveryBlockType() throws {
        for name in ["stored", "fixed", "dynamic"] {
            let gz = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixturesDirectory() + "/gzip_\(name).gz")))
            let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixturesDirectory() + "/gzip_\(name).bin")))
            XCTAssertEqual(try Gzip.decompress(gz), raw, name)
        }
    }

    func testStoredWriterRoundTripAndMultipleMembers() throws {
        let a = (0..<70000).map { UInt8(truncatingIfNeeded: $0 &* 31) }, b = Array("tail".utf8)
        XCTAssertEqual(try Gzip.decompress(gzipStored(a)), a)
        XCTAssertEqual(try Gzip.decompress(gzipStored(a) + gzipStored(b)), a + b)
    }

    func testCorruptStreamsFail() throws {
        let gz = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixturesDirectory() + "/gzip_dynamic.gz")))
        // Truncated.
        XCTAssertThrowsError(try Gzip.decompress(Array(gz[0..<(gz.count / 2)])))
        // Flipped bit in the deflate data: either an invalid code or a CRC/length mismatch, never silent.
        for pos in stride(from: 20, to: gz.count - 8, by: 97) {
            var bad = gz
            bad[pos] ^= 0x10
            XCTAssertThrowsError(try Gzip.decompress(bad), "flip at \(pos) decoded silently")
        }
        // Wrong CRC in the trailer.
        var crc = gz
        crc[gz.count - 8] ^= 1
        XCTAssertThrowsError(try Gzip.decompress(crc)) { XCTAssertTrue("\($0)".contains("CRC-32")) }
        // Not gzip at all.
        XCTAssertThrowsError(try Gzip.decompress(Array(repeating: 7, count: 64))) { XCTAssertTrue("\($0)".contains("magic")) }
    }
}

final class FashionMNISTTests: XCTestCase {
    func testRealDatasetCountsAndHistogram() throws {
        let dir = FashionMNIST.defaultDirectory
        try XCTSkipUnless(FileManager.default.fileExists(atPath: dir + "/t10k-images-idx3-ubyte.gz"), "dataset-fashion-mnist not installed")
        let train = try FashionMNIST(split: .train)
        let test = try FashionMNIST(split: .test)
        XCTAssertEqual(train.count, 60000)
        XCTAssertEqual(test.count, 10000)
        XCTAssertEqual(train.pixels.count, 60000 * 784)
        XCTAssertEqual(train.labelHistogram, Array(repeating: 6000, count: 10))
        XCTAssertEqual(test.labelHistogram, Array(repeating: 1000, count: 10))
        // First test labels (as read by Python's gzip + numpy).
        XCTAssertEqual(Array(test.labels[0..<10]), [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])

        // Padded images: background border −1, values in [−1, 1], the u8 map v/127.5 − 1.
        let t = test.images([0, 1])
        XCTAssertEqual(t.shape, [2, 32, 32, 1])
        for x in 0..<32 { XCTAssertEqual(t.data[x], -1); XCTAssertEqual(t.data[31 * 32 + x], -1) }
        XCTAssertEqual(t.data[(2 + 10) * 32 + 2 + 10], FashionMNIST.value(test.pixels[10 * 28 + 10]))
        XCTAssertTrue(t.array.allSatisfy { $0 >= -1 && $0 <= 1 })
        XCTAssertEqual(test.images([3], padTo32: false).shape, [1, 28, 28, 1])
        XCTAssertEqual(FashionMNIST.value(0), -1)
        XCTAssertEqual(FashionMNIST.value(255), 1)

        // Balanced, seeded samples.
        let s1 = try train.balancedSample(n: 1000, seed: 3), s2 = try train.balancedSample(n: 1000, seed: 3)
        XCTAssertEqual(s1, s2)
        XCTAssertEqual(Set(s1).count, 1000)
        var h = [Int](repeating: 0, count: 10)
        for i in s1 { h[train.labels[i]] += 1 }
        XCTAssertEqual(h, Array(repeating: 100, count: 10))
        XCTAssertNotEqual(try train.balancedSample(n: 1000, seed: 4), s1)
        XCTAssertThrowsError(try train.balancedSample(n: 1001, seed: 0)) { XCTAssertEqual($0 as? EvaluationError, .notDivisible(n: 1001, classes: 10)) }
    }

    /// Writes a tiny dataset (3 images) into `dir` as the "test" split.
    private func writeTiny(_ dir: String, labels: [UInt8] = [0, 1, 1], imageMagic: UInt32 = 0x803, labelCount: Int? = nil,
                           truncateImages: Bool = false) {
        var pixels = (0..<(3 * 784)).map { UInt8($0 % 256) }
        if truncateImages { pixels.removeLast(100) }
        write(gzipStored(idx(magic: imageMagic, dims: [3, 28, 28], payload: pixels)), dir + "/t10k-images-idx3-ubyte.gz")
        write(gzipStored(idx(magic: 0x801, dims: [labelCount ?? labels.count], payload: labels)), dir + "/t10k-labels-idx1-ubyte.gz")
    }

    func testTinySyntheticDatasetAndEmptyClass() throws {
        let dir = makeTempDirectory(self)
        writeTiny(dir)
        let ds = try FashionMNIST(split: .test, directory: dir, requireOfficialCount: false)
        XCTAssertEqual(ds.labels, [0, 1, 1])
        XCTAssertEqual(try ds.indices(ofClass: 1), [1, 2])
        XCTAssertThrowsError(try ds.indices(ofClass: 5)) { error in
            guard case .emptyClass(5, _)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try ds.balancedSample(n: 10, seed: 0))   // class 2 is empty
        XCTAssertNoThrow(try ds.requireEveryClass(2))
        XCTAssertThrowsError(try ds.requireEveryClass(10)) { error in
            guard case .emptyClass(2, _)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        // The identity covers every gzip member: the images file split into two members reads the same and
        // keeps the same CRC-32 (the last member's trailer alone would not).
        let raw = idx(magic: 0x803, dims: [3, 28, 28], payload: (0..<(3 * 784)).map { UInt8($0 % 256) })
        write(gzipStored(Array(raw[0..<1000])) + gzipStored(Array(raw[1000...])), dir + "/t10k-images-idx3-ubyte.gz")
        let split = try FashionMNIST(split: .test, directory: dir, requireOfficialCount: false)
        XCTAssertEqual(split.pixels, ds.pixels)
        XCTAssertEqual(split.imagesCRC32, ds.imagesCRC32)
        XCTAssertEqual(split.identity, ds.identity)
        // The official-count check rejects it by default.
        XCTAssertThrowsError(try FashionMNIST(split: .test, directory: dir)) { error in
            guard case .idxCountMismatch(_, 10000, 3)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }

    func testBadFilesGiveOneLineErrors() throws {
        func expect(_ make: (String) -> Void, _ check: (EvaluationError) -> Bool, line: UInt = #line) {
            let dir = makeTempDirectory(self)
            make(dir)
            XCTAssertThrowsError(try FashionMNIST(split: .test, directory: dir, requireOfficialCount: false), line: line) { error in
                guard let e = error as? EvaluationError else { return XCTFail("not an EvaluationError: \(error)", line: line) }
                XCTAssertTrue(check(e), "unexpected error: \(e)", line: line)
                XCTAssertFalse(e.description.contains("\n"), line: line)
                XCTAssertTrue(e.description.contains(dir), "error does not name the file: \(e)", line: line)
            }
        }
        // Missing files: says what to install.
        expect({ _ in }) { e in
            if case .datasetFileMissing = e { return e.description.contains("dataset-fashion-mnist") }
            return false
        }
        // Corrupt gzip (truncated).
        expect({ dir in
            self.writeTiny(dir)
            let p = dir + "/t10k-images-idx3-ubyte.gz"
            let bytes = [UInt8](FileManager.default.contents(atPath: p)!)
            write(Array(bytes[0..<(bytes.count - 200)]), p)
        }) { if case .corruptGzip = $0 { return true }; return false }
        // Not gzip.
        expect({ dir in
            self.writeTiny(dir)
            write(Array("plain text".utf8) + [UInt8](repeating: 0, count: 40), dir + "/t10k-labels-idx1-ubyte.gz")
        }) { if case .corruptGzip = $0 { return true }; return false }
        // Bad IDX magic.
        expect({ self.writeTiny($0, imageMagic: 0x801) }) { e in
            if case .badIDXMagic(_, 0x801, 0x803) = e { return true }; return false
        }
        // Payload shorter than the header says.
        expect({ self.writeTiny($0, truncateImages: true) }) { if case .idxSizeMismatch = $0 { return true }; return false }
        // Header dimensions whose product overflows Int: an error naming the file, not a trap.
        expect({ dir in
            self.writeTiny(dir)
            let huge = Int(UInt32.max)
            write(gzipStored(idx(magic: 0x803, dims: [huge, huge, huge], payload: [1, 2, 3])), dir + "/t10k-images-idx3-ubyte.gz")
        }) { if case .idxSizeMismatch = $0 { return true }; return false }
        // Images and labels disagree on the count.
        expect({ dir in
            self.writeTiny(dir, labels: [0, 1], labelCount: 2)
        }) { if case .idxCountMismatch(_, 3, 2) = $0 { return true }; return false }
        // Label out of range.
        expect({ self.writeTiny($0, labels: [0, 12, 1]) }) { if case .invalidLabel(_, 1, 12, 10) = $0 { return true }; return false }
    }

    func testBalancedLabels() throws {
        XCTAssertEqual(try balancedLabels(n: 6, classes: 3), [0, 0, 1, 1, 2, 2])
        XCTAssertEqual(try balancedLabels(n: 5000, classes: 10).filter { $0 == 9 }.count, 500)
        XCTAssertThrowsError(try balancedLabels(n: 25, classes: 10)) { error in
            XCTAssertEqual(error as? EvaluationError, .notDivisible(n: 25, classes: 10))
            XCTAssertTrue("\(error)".contains("multiple of 10"))
        }
        XCTAssertThrowsError(try balancedLabels(n: 0, classes: 10))
        XCTAssertThrowsError(try balancedLabels(n: 10, classes: 0))
    }
}
