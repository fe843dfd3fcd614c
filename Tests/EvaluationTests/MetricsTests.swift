import Foundation
import SafeTensors
import TensorCore
import XCTest
@testable import Evaluation

final class MetricsTests: XCTestCase {
    var file: SafeTensorsFile!
    var expected: [String: Any]!

    override func setUpWithError() throws {
        file = try SafeTensorsFile(path: fixturesDirectory() + "/metrics.safetensors")
        expected = try expectedMetrics()
    }

    // MARK: FID

    func testFIDMatchesScipySqrtm() throws {
        let a = try fixtureTensor(file, "fid_a"), b = try fixtureTensor(file, "fid_b")
        let fid = try FID.compute(features: a, b)
        let ref = expected["fid"] as! Double
        XCTAssertLessThan(relErr(fid, ref), 1e-3, "FID \(fid) vs scipy \(ref)")
        XCTAssertLessThan(relErr(fid, ref), 1e-8, "FID \(fid) vs scipy \(ref) (Float64 everywhere should agree far better than 1e-3)")
        // Symmetric in its arguments.
        XCTAssertLessThan(relErr(try FID.compute(features: b, a), fid), 1e-9)
    }

    func testFIDOfASetWithItselfIsZero() throws {
        let a = try fixtureTensor(file, "fid_a")
        let s = try FIDStatistics(features: a)
        XCTAssertEqual(try FID.compute(s, s), 0, accuracy: 1e-9)
        // tr Σ ≈ 58 here, so 1e-9 absolute is ~1e-11 relative.
    }

    func testFIDStatisticsMatchNumpyCovAndRoundTripThroughAFile() throws {
        // Tiny set with a hand-computable covariance: rows (0,0), (2,0), (0,4).
        let s = try FIDStatistics(features: Tensor(shape: [3, 2], values: [0, 0, 2, 0, 0, 4]))
        XCTAssertEqual(s.mean, [2.0 / 3, 4.0 / 3])
        XCTAssertEqual(s.covariance[0], 4.0 / 3, accuracy: 1e-12)        // var x, ddof 1
        XCTAssertEqual(s.covariance[3], 16.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(s.covariance[1], -4.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(s.covariance[1], s.covariance[2])

        let dir = makeTempDirectory(self)
        let stats = try FIDStatistics(features: try fixtureTensor(file, "fid_b"))
        try stats.save(to: dir + "/ref.safetensors", metadata: ["dataset": "unit-test"])
        let (loaded, meta) = try FIDStatistics.load(path: dir + "/ref.safetensors")
        XCTAssertEqual(loaded, stats)                        // bit-exact (F64 on disk)
        XCTAssertEqual(meta["dataset"], "unit-test")
        XCTAssertEqual(meta["count"], "300")

        // A file that is not statistics: clear error.
        var w = SafeTensorsWriter(metadata: ["kind": FIDStatistics.kindValue, "count": "10"])
        try w.add("mean", floats: [1, 2], shape: [2])
        try w.write(to: dir + "/bad.safetensors")
        XCTAssertThrowsError(try FIDStatistics.load(path: dir + "/bad.safetensors")) { error in
            guard case .statisticsFile(_, let reason)? = error as? EvaluationError else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("F64"), reason)
        }
        XCTAssertThrowsError(try FIDStatistics.load(path: dir + "/missing.safetensors"))
    }

    func testFIDBadInput() throws {
        let nanT = Tensor(shape: [4, 2], values: [0, 1, 2, .nan, 4, 5, 6, 7])
        XCTAssertThrowsError(try FIDStatistics(features: nanT)) { error in
            XCTAssertEqual(error as? EvaluationError, .nonFinite(what: "FID features (row 1)", index: 3))
        }
        XCTAssertThrowsError(try FIDStatistics(features: Tensor(shape: [1, 3]))) { error in
            guard case .tooFewSamples? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        let a = try FIDStatistics(features: Tensor(shape: [3, 2], values: [0, 0, 2, 0, 0, 4]))
        let b = try FIDStatistics(features: Tensor(shape: [2, 3], values: [0, 0, 2, 0, 0, 4]))
        XCTAssertThrowsError(try FID.compute(a, b)) { error in
            guard case .dimensionMismatch? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }

    func testSymmetricSqrtSquaresBack() throws {
        // A random SPD matrix: sqrt(A)·sqrt(A) = A.
        var rng = SplitMix64(seed: 5)
        let d = 12
        let g = (0..<(d * d)).map { _ in Double(rng.next() % 2001) / 1000 - 1 }
        var a = FID.matmul(g, (0..<(d * d)).map { g[($0 % d) * d + $0 / d] }, d)   // G·Gᵀ
        for i in 0..<d { a[i * d + i] += 0.1 }
        let s = try FID.symmetricSqrt(a, dimension: d)
        let back = FID.matmul(s, s, d)
        for i in 0..<(d * d) { XCTAssertEqual(back[i], a[i], accuracy: 1e-10) }
    }

    // MARK: IS

    func testInceptionScoreMatchesNumpy() throws {
        let logits = try fixtureTensor(file, "is_logits")
        let (mean, std) = try InceptionScore.compute(logits: logits, splits: 10, shuffleSeed: nil)
        XCTAssertLessThan(relErr(mean, expected["is_mean"] as! Double), 1e-3)
        XCTAssertLessThan(relErr(std, expected["is_std"] as! Double), 1e-3)
        XCTAssertLessThan(relErr(mean, expected["is_mean"] as! Double), 1e-10)
        // Uniform predictions: IS = 1 exactly; confident one-hot over 10 classes: IS → 10.
        XCTAssertEqual(try InceptionScore.compute(logits: Tensor(shape: [20, 10]), splits: 2).mean, 1, accuracy: 1e-12)
        let onehot = Tensor(shape: [100, 10])
        for i in 0..<100 { onehot.data[i * 10 + i % 10] = 60 }
        XCTAssertEqual(try InceptionScore.compute(logits: onehot, splits: 10, shuffleSeed: nil).mean, 10, accuracy: 1e-6)
        XCTAssertThrowsError(try InceptionScore.compute(logits: Tensor(shape: [5, 10]), splits: 10))
        // Class-sorted rows: contiguous splits see one class each (IS ≈ 1); the default shuffled
        // splits see all classes (IS ≈ 10).
        let sorted = Tensor(shape: [100, 10])
        for i in 0..<100 { sorted.data[i * 10 + i / 10] = 60 }
        XCTAssertEqual(try InceptionScore.compute(logits: sorted, splits: 10, shuffleSeed: nil).mean, 1, accuracy: 1e-6)
        XCTAssertGreaterThan(try InceptionScore.compute(logits: sorted, splits: 10).mean, 5)
        // The shuffled mean is close to the contiguous one on unsorted data.
        XCTAssertLessThan(relErr(try InceptionScore.compute(logits: logits).mean, mean), 0.05)
        let bad = Tensor(shape: [20, 10]); bad.data[13] = .nan
        XCTAssertThrowsError(try InceptionScore.compute(logits: bad)) { error in
            guard case .nonFinite(_, 13)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }

    // MARK: Precision / recall

    func testPrecisionRecallMatchesNumpyExactly() throws {
        let real = try fixtureTensor(file, "pr_real"), fake = try fixtureTensor(file, "pr_fake")
        let r = try PrecisionRecall.compute(real: real, generated: fake, k: 3)
        XCTAssertEqual(r.precision, expected["precision"] as! Double)
        XCTAssertEqual(r.recall, expected["recall"] as! Double)
        let ref = try PrecisionRecall.reference(real: real, generated: fake, k: 3)
        XCTAssertEqual(r.precision, ref.precision)
        XCTAssertEqual(r.recall, ref.recall)
        // Small blocks exercise the block loop and the last partial block.
        let small = try PrecisionRecall.compute(real: real, generated: fake, k: 3, blockRows: 7)
        XCTAssertEqual(small.precision, r.precision)
        XCTAssertEqual(small.recall, r.recall)
    }

    func testPrecisionRecallFastPathEqualsFloat64ReferenceWithTiesAndDuplicates() throws {
        // Integer-valued features make many exactly tied distances and duplicate points, the hard
        // case for an fp32 fast path.
        var rng = SplitMix64(seed: 11)
        for (n, m, d) in [(60, 50, 3), (40, 70, 5)] {
            let real = Tensor(shape: [n, d]), fake = Tensor(shape: [m, d])
            for i in 0..<real.count { real.data[i] = Float(rng.next() % 4) * 100 }
            for i in 0..<fake.count { fake.data[i] = Float(rng.next() % 5) * 100 - 50 * Float(i % 2) }
            for k in [1, 3, 5] {
                let fast = try PrecisionRecall.compute(real: real, generated: fake, k: k, blockRows: 16)
                let ref = try PrecisionRecall.reference(real: real, generated: fake, k: k)
                XCTAssertEqual(fast.precision, ref.precision, "n \(n) k \(k)")
                XCTAssertEqual(fast.recall, ref.recall, "n \(n) k \(k)")
            }
        }
        // Identical sets: precision = recall = 1.
        let x = Tensor(shape: [30, 4]); for i in 0..<x.count { x.data[i] = Float(rng.next() % 1000) / 100 }
        let same = try PrecisionRecall.compute(real: x, generated: x.copy())
        XCTAssertEqual(same.precision, 1); XCTAssertEqual(same.recall, 1)
    }

    func testPrecisionRecallBadInput() throws {
        let a = Tensor(shape: [10, 4]), b = Tensor(shape: [10, 5])
        XCTAssertThrowsError(try PrecisionRecall.compute(real: a, generated: b)) { error in
            guard case .dimensionMismatch? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try PrecisionRecall.compute(real: Tensor(shape: [3, 4]), generated: a, k: 3)) { error in
            guard case .tooFewSamples? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        let nan = Tensor(shape: [10, 4]); nan.data[9] = .nan
        XCTAssertThrowsError(try PrecisionRecall.compute(real: a, generated: nan)) { error in
            guard case .nonFinite(_, 9)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }

    // MARK: PSNR / SSIM

    func testPSNRAndSSIMMatchSkimage() throws {
        let a = try fixtureTensor(file, "img_a"), b = try fixtureTensor(file, "img_b")
        let psnr = try ImageQuality.psnr(a, b), ssim = try ImageQuality.ssim(a, b)
        let refPSNR = expected["psnr"] as! [Any], refSSIM = expected["ssim"] as! [Double]
        XCTAssertEqual(psnr[0], .infinity)                 // pair 0 is identical
        XCTAssertEqual(refPSNR[0] as? String, "inf")
        for i in 1..<psnr.count { XCTAssertLessThan(relErr(psnr[i], refPSNR[i] as! Double), 1e-4, "PSNR \(i)") }
        for i in 0..<ssim.count { XCTAssertLessThan(relErr(ssim[i], refSSIM[i]), 1e-4, "SSIM \(i): \(ssim[i]) vs \(refSSIM[i])") }
        XCTAssertEqual(ssim[0], 1, accuracy: 1e-12)

        let ra = try fixtureTensor(file, "rgb_a"), rb = try fixtureTensor(file, "rgb_b")
        let rs = try ImageQuality.ssim(ra, rb), rp = try ImageQuality.psnr(ra, rb)
        for (i, v) in (expected["ssim_rgb"] as! [Double]).enumerated() { XCTAssertLessThan(relErr(rs[i], v), 1e-4) }
        for (i, v) in (expected["psnr_rgb"] as! [Double]).enumerated() { XCTAssertLessThan(relErr(rp[i], v), 1e-4) }
    }

    func testSSIMOfIdenticalImagesIsOneAndSummaryIsFinite() throws {
        let a = Tensor(shape: [3, 32, 32, 1])
        var rng = SplitMix64(seed: 1)
        for i in 0..<a.count { a.data[i] = Float(rng.next() % 2001) / 1000 - 1 }
        XCTAssertEqual(try ImageQuality.ssim(a, a).map { ($0 * 1e12).rounded() / 1e12 }, [1, 1, 1])
        let psnr = try ImageQuality.psnr(a, a)
        XCTAssertEqual(psnr, [.infinity, .infinity, .infinity])
        let s = try ImageQuality.summary(psnr + [30, 40])
        XCTAssertEqual(s.mean, (3 * ImageQuality.psnrCap + 70) / 5)
        XCTAssertEqual(s.cappedCount, 3)
        XCTAssertTrue(s.p5.isFinite)
        // numpy.percentile([1..20], 5) = 1.95
        XCTAssertEqual(try ImageQuality.summary((1...20).map(Double.init)).p5, 1.95, accuracy: 1e-12)
        XCTAssertThrowsError(try ImageQuality.summary([]))
        XCTAssertThrowsError(try ImageQuality.ssim(a, Tensor(shape: [2, 32, 32, 1])))
        XCTAssertThrowsError(try ImageQuality.ssim(Tensor(shape: [1, 8, 8, 1]), Tensor(shape: [1, 8, 8, 1])))
        let nan = a.copy(); nan.data[5] = .nan
        XCTAssertThrowsError(try ImageQuality.psnr(a, nan)) { error in
            guard case .nonFinite(_, 5)? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
    }
    /// Distribution metrics see model outputs clamped to the data range, exactly as the pixel images.
    func testDistributionMetricsClampModelOutputsToDataRange() {
        let x = Tensor(shape: [1, 2, 2, 1], values: [-7, -1, 0.25, 3.5])
        let y = DistributionMetrics.dataRange(x)
        XCTAssertEqual(y.array, [-1, -1, 0.25, 1])
        XCTAssertEqual(x.array, [-7, -1, 0.25, 3.5], "the input is not modified")
        let nan = DistributionMetrics.dataRange(Tensor(shape: [1], values: [.nan]))
        XCTAssertTrue(nan.array[0].isNaN, "NaN is left for validation to reject")
    }
}
