import Foundation
import SafeTensors
import TensorCore
import XCTest
@testable import Evaluation

final class FeatureNetworkTests: XCTestCase {
    func testForwardMatchesPyTorch() throws {
        let net = try FeatureNetwork(directory: featureNetworkDirectory)
        XCTAssertEqual(net.featureDim, 128)
        XCTAssertEqual(net.classCount, 10)
        XCTAssertEqual(net.inputShape, [32, 32, 1])
        let fx = try SafeTensorsFile(path: fixturesDirectory() + "/feature_net.safetensors")
        let inputs = Tensor.fromNCHW(try fx.floats("inputs", expectedShape: [8, 1, 32, 32]), n: 8, c: 1, h: 32, w: 32)
        let out = try net.evaluate(inputs)
        let f = try fx.floats("features", expectedShape: [8, 128]), l = try fx.floats("logits", expectedShape: [8, 10])
        XCTAssertLessThanOrEqual(relativeError(out.features.array, f), 1e-4)
        XCTAssertLessThanOrEqual(relativeError(out.logits.array, l), 1e-4)
        // Batching does not change the answer.
        let small = try net.evaluate(inputs, batchSize: 3)
        XCTAssertLessThanOrEqual(relativeError(small.features.array, out.features.array), 1e-6)
        // The first four inputs are real test images: the network must classify them as labelled.
        let labels = [9, 2, 1, 1]
        for i in 0..<4 {
            let row = Array(out.logits.array[(i * 10)..<(i * 10 + 10)])
            XCTAssertEqual(row.firstIndex(of: row.max()!), labels[i])
        }
    }

    func testBadInputs() throws {
        let net = try FeatureNetwork(directory: featureNetworkDirectory)
        XCTAssertThrowsError(try net.features(Tensor(shape: [2, 28, 28, 1]))) { error in
            guard case .shapeMismatch? = error as? EvaluationError else { return XCTFail("\(error)") }
        }
        let x = Tensor(shape: [2, 32, 32, 1]); x.data[1500] = .nan
        XCTAssertThrowsError(try net.features(x)) { error in
            XCTAssertEqual(error as? EvaluationError, .nonFinite(what: "feature network input", index: 1500))
        }
    }

    /// Copies the real model into a temp dir with a modified config or weights and expects `check`.
    private func expectLoadError(editConfig: ((inout [String: Any]) -> Void)? = nil, weights: ((String) throws -> Void)? = nil,
                                 _ check: (EvaluationError) -> Bool, line: UInt = #line) throws {
        let dir = makeTempDirectory(self)
        let src = featureNetworkDirectory
        try FileManager.default.copyItem(atPath: src + "/model.safetensors", toPath: dir + "/model.safetensors")
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: src + "/config.json"))) as! [String: Any]
        editConfig?(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/config.json"))
        try weights?(dir + "/model.safetensors")
        XCTAssertThrowsError(try FeatureNetwork(directory: dir), line: line) { error in
            guard let e = error as? EvaluationError else { return XCTFail("\(error)", line: line) }
            XCTAssertTrue(check(e), "unexpected: \(e)", line: line)
            XCTAssertFalse(e.description.contains("\n"), line: line)
        }
    }

    func testLoadErrorsAreClear() throws {
        // Missing directory.
        XCTAssertThrowsError(try FeatureNetwork(directory: "/nonexistent/fmnist-features")) { error in
            guard case .featureNetworkConfig(let path, _)? = error as? EvaluationError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, "/nonexistent/fmnist-features/config.json")
        }
        // Unknown layer kind.
        try expectLoadError(editConfig: { c in
            var layers = c["layers"] as! [[String: Any]]
            layers[1]["kind"] = "mish"
            c["layers"] = layers
        }) { e in if case .featureNetworkConfig(_, let r) = e { return r.contains("unknown kind 'mish'") }; return false }
        // Channel chain broken.
        try expectLoadError(editConfig: { c in
            var layers = c["layers"] as! [[String: Any]]
            let i = layers.firstIndex { $0["name"] as? String == "conv2" }!
            layers[i]["in_channels"] = 16
            c["layers"] = layers
        }) { e in if case .featureNetworkConfig(_, let r) = e { return r.contains("input channels") }; return false }
        // Feature layer that does not exist.
        try expectLoadError(editConfig: { c in c["feature_layer"] = "nope" }) { e in
            if case .featureNetworkConfig(_, let r) = e { return r.contains("nope") }; return false
        }
        // Missing key.
        try expectLoadError(editConfig: { c in c.removeValue(forKey: "layers") }) { e in
            if case .featureNetworkConfig(_, let r) = e { return r.contains("layers") }; return false
        }
        // Weights with the wrong shape.
        try expectLoadError(weights: { path in
            let old = try SafeTensorsFile(path: path)
            var w = SafeTensorsWriter()
            for name in old.names {
                let v = try old.floats(name)
                if name == "fc2.weight" { try w.add(name, floats: Array(v.prefix(9 * 128)), shape: [9, 128]) }
                else { try w.add(name, floats: v, shape: try old.info(name).shape) }
            }
            try w.write(to: path)
        }) { e in if case .featureNetworkWeights(_, let r) = e { return r.contains("fc2.weight") }; return false }
        // NaN in the weights.
        try expectLoadError(weights: { path in
            let old = try SafeTensorsFile(path: path)
            var w = SafeTensorsWriter()
            for name in old.names {
                var v = try old.floats(name)
                if name == "conv1.bias" { v[0] = .nan }
                try w.add(name, floats: v, shape: try old.info(name).shape)
            }
            try w.write(to: path)
        }) { e in if case .featureNetworkWeights(_, let r) = e { return r.contains("NaN") }; return false }
        // Truncated weights file.
        try expectLoadError(weights: { path in
            let bytes = FileManager.default.contents(atPath: path)!
            try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: path))
        }) { e in if case .featureNetworkWeights = e { return true }; return false }
    }

    func testReferenceStatisticsAreCachedAndKeyed() throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: FashionMNIST.defaultDirectory + "/t10k-images-idx3-ubyte.gz"),
                          "dataset-fashion-mnist not installed")
        let net = try FeatureNetwork(directory: featureNetworkDirectory)
        let test = try FashionMNIST(split: .test)
        let dir = makeTempDirectory(self)
        let cache = dir + "/fmnist-test-stats.safetensors"
        let first = try ReferenceStatistics.load(dataset: test, network: net, cachePath: cache)
        XCTAssertFalse(first.fromCache)
        XCTAssertEqual(first.statistics.count, 10000)
        XCTAssertEqual(first.statistics.dimension, 128)
        let second = try ReferenceStatistics.load(dataset: test, network: net, cachePath: cache)
        XCTAssertTrue(second.fromCache)
        XCTAssertEqual(second.statistics, first.statistics)
        let (_, meta) = try FIDStatistics.load(path: cache)
        XCTAssertEqual(meta["feature_network_crc32"], hex8(net.weightsCRC32))
        XCTAssertEqual(meta["dataset"], test.identity)

        XCTAssertEqual(second.features.shape, [10000, 128])
        XCTAssertEqual(second.features.array, first.features.array)

        // Real images evaluated as if generated (a balanced half of the test set): a small but
        // positive FID, high precision, and the classifier agrees with the labels.
        let half = try test.balancedSample(n: 5000, seed: 0)
        let m = try DistributionMetrics.evaluate(images: test.images(half), network: net, reference: second,
                                                 labels: half.map { test.labels[$0] })
        XCTAssertGreaterThan(m.fid, 0)
        XCTAssertLessThan(m.fid, 5, "\(m)")
        XCTAssertGreaterThan(m.precision, 0.95)          // every real point lies in its own ball
        XCTAssertGreaterThan(m.recall, 0.5)
        XCTAssertGreaterThan(m.labelAccuracy ?? 0, 0.9)
        XCTAssertGreaterThan(m.inceptionScoreMean, 5, "\(m)")
        XCTAssertEqual(m.count, 5000)

        // A stale cache (different key) is recomputed, not trusted.
        try first.statistics.save(to: cache, metadata: ["dataset": "something else"])
        XCTAssertFalse(try ReferenceStatistics.load(dataset: test, network: net, cachePath: cache).fromCache)
        XCTAssertTrue(try ReferenceStatistics.load(dataset: test, network: net, cachePath: cache).fromCache)
        XCTAssertEqual(try FIDStatistics.load(path: cache).1["feature_network_config_crc32"], hex8(net.configCRC32))

        // The same weights read through another config.json (here only its bytes differ) is another network:
        // its statistics are recomputed rather than taken from the first network's cache.
        let copy = makeTempDirectory(self)
        for f in [FeatureNetwork.configFile, FeatureNetwork.weightsFile] {
            try FileManager.default.copyItem(atPath: featureNetworkDirectory + "/" + f, toPath: copy + "/" + f)
        }
        let config = try Data(contentsOf: URL(fileURLWithPath: copy + "/" + FeatureNetwork.configFile))
        try (config + Data("\n".utf8)).write(to: URL(fileURLWithPath: copy + "/" + FeatureNetwork.configFile))
        let edited = try FeatureNetwork(directory: copy)
        XCTAssertEqual(edited.weightsCRC32, net.weightsCRC32)
        XCTAssertNotEqual(edited.configCRC32, net.configCRC32)
        XCTAssertFalse(try ReferenceStatistics.load(dataset: test, network: edited, cachePath: cache).fromCache)
    }
}

final class ReportTests: XCTestCase {
    func testPairedMetricsSummaries() throws {
        let a = Tensor(shape: [4, 16, 16, 1])
        for i in 0..<a.count { a.data[i] = Float(i % 17) / 8 - 1 }
        let b = a.copy()
        for i in (a.count / 2)..<a.count { b.data[i] += 0.1 }
        let p = try PairedMetrics.evaluate(reference: a, test: b)
        XCTAssertEqual(p.psnr[0], .infinity)
        XCTAssertEqual(p.psnrSummary.cappedCount, 2)
        XCTAssertEqual(p.ssim[0], 1, accuracy: 1e-12)
        XCTAssertLessThan(p.ssim[3], 1)
        XCTAssertLessThan(try XCTUnwrap(p.ssimSummary).p5, try XCTUnwrap(p.ssimSummary).mean)
    }

    /// Images smaller than SSIM's 11×11 window get PSNR only (an empty SSIM list, no summary), not an error.
    func testPairedMetricsWithoutSSIMOnSmallImages() throws {
        let a = Tensor(shape: [2, 8, 8, 3])
        for i in 0..<a.count { a.data[i] = Float(i % 13) / 7 - 1 }
        let b = a.copy()
        b.data[0] += 0.5
        let p = try PairedMetrics.evaluate(reference: a, test: b)
        XCTAssertEqual(p.psnr.count, 2)
        XCTAssertTrue(p.ssim.isEmpty)
        XCTAssertNil(p.ssimSummary)
        XCTAssertEqual(p.psnr[1], .infinity)
        XCTAssertThrowsError(try PairedMetrics(psnr: [1, 2], ssim: [1]))
    }

    func testJSONRoundTripAndMarkdown() throws {
        let psnr = try ImageQuality.summary([.infinity, 31.5, 28])
        var r = EvaluationReport(model: "fp32", setting: .init(name: "A", steps: 20, eta: 0, guidanceScale: 3), n: 5000, seed: 0)
        r.metrics = .init(fid: 12.345, inceptionScoreMean: 8.1, inceptionScoreStd: 0.2, precision: 0.71, recall: 0.55, psnr: psnr)
        r.cost = .measured(images: 5000, seconds: 250, threads: 2)
        r.cost.bopsPerForward = 3.9e11
        r.cost.modelFileBytes = 10_800_000
        r.reference = "fashion-mnist/t10k n=10000"
        r.notes = ["PSNR of identical images is +inf; summaries cap it at 100 dB"]
        r.metricsByN = [DistributionMetrics(count: 2500, fid: 20.5, inceptionScoreMean: 8, inceptionScoreStd: 0.3, precision: 0.7,
                                            recall: 0.5, k: 3, labelAccuracy: 0.875),
                        DistributionMetrics(count: 5000, fid: 12.345, inceptionScoreMean: 8.1, inceptionScoreStd: 0.2, precision: 0.71,
                                            recall: 0.55, k: 3, labelAccuracy: nil)]
        let dir = makeTempDirectory(self)
        try r.writeJSON(to: dir + "/report.json")
        let back = try EvaluationReport.read(path: dir + "/report.json")
        XCTAssertEqual(back, r)
        let json = String(decoding: FileManager.default.contents(atPath: dir + "/report.json")!, as: UTF8.self)
        XCTAssertTrue(json.contains("\"inception_score_mean\""))
        XCTAssertTrue(json.contains("\"peak_resident_bytes\""))
        XCTAssertEqual(r.cost.imagesPerSecond, 20)
        XCTAssertGreaterThan(r.cost.peakResidentBytes ?? 0, 1_000_000)
        let md = r.markdown()
        XCTAssertTrue(md.contains("| FID ↓ | 12.345 |"), md)
        XCTAssertTrue(md.contains("eta 0, guidance 3"), md)
        XCTAssertTrue(md.contains("20.00 images/s"), md)
        XCTAssertTrue(json.contains("\"metrics_by_n\""), json)
        XCTAssertTrue(md.contains("| 2500 | 20.500 | 8.000 | 0.7000 | 0.5000 | 87.5% |"), md)
        XCTAssertTrue(md.contains("| 5000 | 12.345 | 8.100 | 0.7100 | 0.5500 | – |"), md)
        try r.writeMarkdown(to: dir + "/report.md")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["report.json", "report.md"])
        XCTAssertThrowsError(try EvaluationReport.read(path: dir + "/report.md"))
    }
}
