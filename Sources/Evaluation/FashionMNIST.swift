//===--- FashionMNIST.swift - the IDX reader for Debian's dataset-fashion-mnist ---===//

import Foundation
import TensorCore

/// Fashion-MNIST: 28×28 grayscale images (u8, 0 = background) with labels 0…9.
///
/// Files (gzip-compressed IDX, big-endian): `{train,t10k}-images-idx3-ubyte.gz` (magic 0x803,
/// dims N×28×28) and `{train,t10k}-labels-idx1-ubyte.gz` (magic 0x801, dim N).
public struct FashionMNIST: Sendable {
    public enum Split: String, Sendable, CaseIterable {
        case train, test
        /// The file name prefix ("train" or "t10k").
        public var filePrefix: String { self == .train ? "train" : "t10k" }
        /// Number of images in the official split.
        public var expectedCount: Int { self == .train ? 60000 : 10000 }
    }

    /// Debian's install location.
    public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"
    public static let classCount = 10
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    public static let imageSide = 28

    public let split: Split
    /// Images, `count × 28 × 28` bytes, row-major.
    public let pixels: [UInt8]
    /// Labels, `count` values in 0…9.
    public let labels: [Int]
    /// CRC-32 of the decompressed image file (from its gzip trailer, verified): identifies the data.
    public let imagesCRC32: UInt32
    public var count: Int { labels.count }

    /// Loads a split from `directory`.
    /// - Throws: `EvaluationError` — `.datasetFileMissing`, `.cannotRead`, `.corruptGzip`,
    ///   `.badIDXMagic`, `.idxSizeMismatch`, `.idxImageSize`, `.idxCountMismatch`, `.invalidLabel`.
    /// - Parameter requireOfficialCount: check that the split has its official size (60000 / 10000);
    ///   turn off only for small test files.
    public init(split: Split, directory: String = FashionMNIST.defaultDirectory, requireOfficialCount: Bool = true) throws {
        let imagesPath = "\(directory)/\(split.filePrefix)-images-idx3-ubyte.gz"
        let labelsPath = "\(directory)/\(split.filePrefix)-labels-idx1-ubyte.gz"
        let (imageDims, imageBytes, crc) = try IDX.read(path: imagesPath, expectedMagic: 0x0000_0803)
        guard imageDims[1] == Self.imageSide && imageDims[2] == Self.imageSide else {
            throw EvaluationError.idxImageSize(path: imagesPath, rows: imageDims[1], columns: imageDims[2])
        }
        let (labelDims, labelBytes, _) = try IDX.read(path: labelsPath, expectedMagic: 0x0000_0801)
        guard labelDims[0] == imageDims[0] else {
            throw EvaluationError.idxCountMismatch(path: labelsPath, expected: imageDims[0], actual: labelDims[0])
        }
        guard !requireOfficialCount || imageDims[0] == split.expectedCount else {
            throw EvaluationError.idxCountMismatch(path: imagesPath, expected: split.expectedCount, actual: imageDims[0])
        }
        var labels = [Int](repeating: 0, count: labelBytes.count)
        for (i, b) in labelBytes.enumerated() {
            guard Int(b) < Self.classCount else {
                throw EvaluationError.invalidLabel(path: labelsPath, index: i, label: Int(b), classes: Self.classCount)
            }
            labels[i] = Int(b)
        }
        self.split = split
        self.pixels = imageBytes
        self.labels = labels
        self.imagesCRC32 = crc
    }

    /// A short identity for caches, e.g. `fashion-mnist/t10k n=10000 crc32=…`.
    public var identity: String { "fashion-mnist/\(split.filePrefix) n=\(count) crc32=\(hex8(imagesCRC32))" }

    /// Number of images per label (index = label).
    public var labelHistogram: [Int] {
        var h = [Int](repeating: 0, count: Self.classCount)
        for l in labels { h[l] += 1 }
        return h
    }

    /// Checks that each of the labels `0..<classes` has at least one image (the reference of a class-balanced
    /// evaluation needs every class).
    /// - Throws: `.emptyClass` naming the first label without images.
    public func requireEveryClass(_ classes: Int) throws {
        if let empty = labelHistogram.prefix(classes).firstIndex(of: 0) {
            throw EvaluationError.emptyClass(label: empty, context: "Fashion-MNIST \(split.rawValue) split; the reference needs every class")
        }
    }

    /// Indices of the images with label `label`, in file order.
    /// - Throws: `.emptyClass` if there are none.
    public func indices(ofClass label: Int) throws -> [Int] {
        let idx = labels.indices.filter { labels[$0] == label }
        guard !idx.isEmpty else { throw EvaluationError.emptyClass(label: label, context: "Fashion-MNIST \(split.rawValue) split") }
        return idx
    }

    /// `n` image indices with `n / classes` of each class 0..<classes, drawn without replacement
    /// with a seeded generator (class-major order, file order within a class).
    /// - Throws: `.notDivisible`, `.invalidArgument`, `.emptyClass`, `.tooFewSamples` (a class has
    ///   fewer than `n / classes` images).
    public func balancedSample(n: Int, classes: Int = FashionMNIST.classCount, seed: UInt64) throws -> [Int] {
        let per = try balancedLabels(n: n, classes: classes).count / classes
        var rng = SplitMix64(seed: seed)
        var out: [Int] = []
        out.reserveCapacity(n)
        for c in 0..<classes {
            var idx = try indices(ofClass: c)
            guard idx.count >= per else {
                throw EvaluationError.tooFewSamples(what: "class \(c) of Fashion-MNIST \(split.rawValue)", count: idx.count, minimum: per)
            }
            // Partial Fisher–Yates: the first `per` entries become a uniform sample.
            for i in 0..<per {
                let j = i + Int(rng.next() % UInt64(idx.count - i))
                idx.swapAt(i, j)
            }
            out.append(contentsOf: idx[0..<per].sorted())
        }
        return out
    }

    /// The pixel → model value map: `u8 / 127.5 − 1` in Float (0 → −1 background, 255 → 1).
    @inline(__always)
    public static func value(_ byte: UInt8) -> Float { Float(byte) / 127.5 - 1 }

    /// Images `indices` as an NHWC tensor `[n, S, S, 1]` in [−1, 1]: S = 28, or 32 when `padTo32`
    /// (2 px of background −1 on every side, the diffusion model's and the feature network's input).
    public func images(_ indices: [Int], padTo32: Bool = true) -> Tensor {
        let side = padTo32 ? 32 : 28, off = padTo32 ? 2 : 0
        let t = Tensor(shape: [indices.count, side, side, 1], repeating: -1)
        for (k, i) in indices.enumerated() {
            precondition(i >= 0 && i < count, "image index \(i) out of 0..<\(count)")
            let src = i * 784
            let dst = t.data + k * side * side
            for y in 0..<28 { for x in 0..<28 {
                dst[(y + off) * side + x + off] = Self.value(pixels[src + y * 28 + x])
            } }
        }
        return t
    }

    /// Images `range` (file order) as `[n, S, S, 1]`; see ``images(_:padTo32:)``.
    public func images(range: Range<Int>, padTo32: Bool = true) -> Tensor { images(Array(range), padTo32: padTo32) }
}

/// Equal numbers of samples per class, class-major: `[0,0,…,1,1,…,classes−1]` (`n / classes` each).
/// - Throws: `.invalidArgument` if `n` ≤ 0 or `classes` ≤ 0, `.notDivisible` if `n % classes != 0`.
public func balancedLabels(n: Int, classes: Int) throws -> [Int] {
    guard classes > 0 else { throw EvaluationError.invalidArgument(what: "class count", reason: "\(classes) must be positive") }
    guard n > 0 else { throw EvaluationError.invalidArgument(what: "n", reason: "\(n) must be positive") }
    guard n % classes == 0 else { throw EvaluationError.notDivisible(n: n, classes: classes) }
    let per = n / classes
    return (0..<n).map { $0 / per }
}

/// SplitMix64: a small, fast, seedable generator (deterministic across platforms).
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - IDX

enum IDX {
    /// Reads a gzip-compressed IDX file of unsigned bytes: returns (dims, payload, CRC-32 of the
    /// decompressed file).
    static func read(path: String, expectedMagic: UInt32) throws -> ([Int], [UInt8], UInt32) {
        guard FileManager.default.fileExists(atPath: path) else { throw EvaluationError.datasetFileMissing(path: path) }
        let compressed: [UInt8]
        do {
            compressed = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw EvaluationError.cannotRead(path: path, reason: (error as NSError).localizedDescription)
        }
        let raw: [UInt8]
        do { raw = try Gzip.decompress(compressed) } catch let e as GzipError {
            throw EvaluationError.corruptGzip(path: path, reason: e.reason)
        }
        // The identity is the CRC-32 of all decompressed bytes (for a single-member gzip, as Debian ships,
        // this equals the trailer CRC; for a multi-member file it still covers every member).
        let crc = Gzip.crc32(raw)
        guard raw.count >= 4 else { throw EvaluationError.idxSizeMismatch(path: path, expectedBytes: 4, actualBytes: raw.count) }
        func be32(_ at: Int) -> UInt32 {
            UInt32(raw[at]) << 24 | UInt32(raw[at + 1]) << 16 | UInt32(raw[at + 2]) << 8 | UInt32(raw[at + 3])
        }
        let magic = be32(0)
        guard magic == expectedMagic else { throw EvaluationError.badIDXMagic(path: path, found: magic, expected: expectedMagic) }
        let ndim = Int(magic & 0xFF)
        let headerBytes = 4 + 4 * ndim
        guard raw.count >= headerBytes else {
            throw EvaluationError.idxSizeMismatch(path: path, expectedBytes: headerBytes, actualBytes: raw.count)
        }
        let dims = (0..<ndim).map { Int(be32(4 + 4 * $0)) }
        var payload = 1
        for d in dims {
            let (p, overflow) = payload.multipliedReportingOverflow(by: d)
            guard !overflow else { throw EvaluationError.idxSizeMismatch(path: path, expectedBytes: Int.max, actualBytes: raw.count) }
            payload = p
        }
        guard raw.count - headerBytes == payload else {
            throw EvaluationError.idxSizeMismatch(path: path, expectedBytes: headerBytes + payload, actualBytes: raw.count)
        }
        return (dims, Array(raw[headerBytes...]), crc)
    }
}
