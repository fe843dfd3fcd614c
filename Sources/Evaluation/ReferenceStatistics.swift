//===--- ReferenceStatistics.swift - cached reference features of a dataset split ---===//

import Foundation
import SafeTensors
import TensorCore

/// Reference data for distribution metrics: a Fashion-MNIST split's features through the feature
/// network and their FID statistics, cached to one safetensors file (`mean`, `covariance` in F64,
/// `features` in F32 for precision/recall) keyed by the feature network's weights (size + CRC-32), its
/// config (CRC-32) and the dataset (split, count, CRC-32 of the images). The file is also readable by
/// ``FIDStatistics/load(path:)``.
public struct ReferenceStatistics {
    public let statistics: FIDStatistics
    /// `[N, D]` features of every image of the split, in file order.
    public let features: Tensor
    /// The key stored in (and checked against) the cache file's metadata.
    public let key: [String: String]
    /// True if everything came from the cache file.
    public let fromCache: Bool
    /// Human-readable identity of the reference data, e.g. "fashion-mnist/t10k n=10000 crc32=…".
    public var identity: String { key["dataset"] ?? "?" }

    /// The metadata identifying reference data of `dataset` through `network`.
    public static func cacheKey(dataset: FashionMNIST, network: FeatureNetwork) -> [String: String] {
        ["dataset": dataset.identity,
         "feature_network": network.config.name,
         "feature_network_bytes": String(network.weightsBytes),
         "feature_network_crc32": hex8(network.weightsCRC32),
         "feature_network_config_crc32": hex8(network.configCRC32)]
    }

    /// Loads the reference data from `cachePath` if it exists and its key matches; otherwise
    /// computes it from all images of `dataset` and writes the cache (atomically). A stale or
    /// unreadable cache is recomputed and replaced. `cachePath = nil` disables caching.
    public static func load(dataset: FashionMNIST, network: FeatureNetwork, cachePath: String?) throws -> ReferenceStatistics {
        let key = cacheKey(dataset: dataset, network: network)
        if let path = cachePath, FileManager.default.fileExists(atPath: path), let hit = try? cached(path: path, key: key) {
            if hit.statistics.count == dataset.count, hit.statistics.dimension == network.featureDim { return hit }
        }
        let out = try network.features(of: dataset)
        let stats = try FIDStatistics(features: out.features)
        if let path = cachePath {
            var w = SafeTensorsWriter()
            do {
                try stats.add(to: &w, metadata: key)
                try w.add("features", floats: out.features.array, shape: out.features.shape)
                try w.write(to: path)
            } catch let e as SafeTensorsError {
                throw EvaluationError.writeFailed(path: path, reason: "\(e)")
            }
        }
        return ReferenceStatistics(statistics: stats, features: out.features, key: key, fromCache: false)
    }

    static func cached(path: String, key: [String: String]) throws -> ReferenceStatistics? {
        let (stats, meta) = try FIDStatistics.load(path: path)
        guard key.allSatisfy({ meta[$0.key] == $0.value }) else { return nil }
        let file = try SafeTensorsFile(path: path)
        let f = try file.floats("features", expectedShape: [stats.count, stats.dimension])
        guard f.allSatisfy({ $0.isFinite }) else { return nil }
        return ReferenceStatistics(statistics: stats, features: Tensor(shape: [stats.count, stats.dimension], values: f),
                                   key: key, fromCache: true)
    }
}
