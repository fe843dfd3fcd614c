//===--- Evaluate.swift - the metrics of one set of generated images, in one call ---===//

import Foundation
import TensorCore

/// Distribution metrics of generated images against reference data.
public struct DistributionMetrics: Codable, Equatable, Sendable {
    public var count: Int
    public var fid: Double
    public var inceptionScoreMean: Double
    public var inceptionScoreStd: Double
    public var precision: Double
    public var recall: Double
    public var k: Int
    /// A copy of model outputs clamped to the data range [−1, 1] (NaN stays NaN and is rejected
    /// later). The sampler's final x_0 is not clamped (diffusers returns it as is); the test set and
    /// the pixel images are in [−1, 1], so features must be taken from the clamped image too. Without
    /// this a speckled sample with |x| ≫ 1 dominates FID: W8A8 at 37 dB PSNR from FP showed
    /// FID 847 against FP's 234.
    public static func dataRange(_ images: Tensor) -> Tensor {
        let y = images.copy()
        for i in 0..<y.count where y.data[i] > 1 || y.data[i] < -1 { y.data[i] = y.data[i] > 1 ? 1 : -1 }
        return y
    }

    /// Fraction of generated images the feature network classifies as their requested label
    /// (nil when no labels were given).
    public var labelAccuracy: Double?

    /// Runs the feature network over `images` (`[N, 32, 32, 1]` model outputs; clamped to the data
    /// range [−1, 1] here, as the pixel images are) and computes FID against `reference`, IS
    /// (`splits` splits), precision/recall (k-NN, `k`) against the reference features, and, if
    /// `labels` are given, how often the classifier agrees with them.
    /// - Throws: any `EvaluationError` of the parts (shapes, NaN, too few samples).
    public static func evaluate(images: Tensor, network: FeatureNetwork, reference: ReferenceStatistics,
                                labels: [Int]? = nil, k: Int = 3, splits: Int = 10) throws -> DistributionMetrics {
        let out = try network.evaluate(dataRange(images))
        return try evaluate(features: out.features, logits: out.logits, reference: reference, labels: labels, k: k, splits: splits)
    }

    /// The same from precomputed features (`[N, D]`) and logits (`[N, classes]`).
    public static func evaluate(features: Tensor, logits: Tensor, reference: ReferenceStatistics,
                                labels: [Int]? = nil, k: Int = 3, splits: Int = 10) throws -> DistributionMetrics {
        let n = features.shape.first ?? 0
        if let labels, labels.count != n {
            throw EvaluationError.invalidArgument(what: "labels", reason: "\(labels.count) labels for \(n) images")
        }
        let fid = try FID.compute(reference.statistics, FIDStatistics(features: features))
        let isScore = try InceptionScore.compute(logits: logits, splits: splits)
        let pr = try PrecisionRecall.compute(real: reference.features, generated: features, k: k)
        var accuracy: Double? = nil
        if let labels {
            let c = logits.shape[1]
            var hits = 0
            for i in 0..<n {
                let row = UnsafeBufferPointer(start: logits.data + i * c, count: c)
                if row.firstIndex(of: row.max()!) == labels[i] { hits += 1 }
            }
            accuracy = Double(hits) / Double(n)
        }
        return DistributionMetrics(count: n, fid: fid, inceptionScoreMean: isScore.mean, inceptionScoreStd: isScore.std,
                                   precision: pr.precision, recall: pr.recall, k: k, labelAccuracy: accuracy)
    }
}

/// Paired metrics of two image sets generated from the same noise and labels (e.g. full precision
/// vs quantized): per-image PSNR and SSIM and their summaries.
public struct PairedMetrics: Codable, Equatable, Sendable {
    public var psnr: [Double]
    /// Per-image SSIM; empty when the images are smaller than SSIM's 11×11 window (``ssimApplies(height:width:)``).
    public var ssim: [Double]
    /// Mean and 5th percentile; +∞ PSNR (identical images) counts as ``ImageQuality/psnrCap`` dB.
    public var psnrSummary: ImageQuality.Summary
    /// nil when SSIM was not measured (images smaller than the window).
    public var ssimSummary: ImageQuality.Summary?

    /// Whether SSIM's 11×11 Gaussian window fits images of this size.
    public static func ssimApplies(height: Int, width: Int) -> Bool { min(height, width) >= ImageQuality.window }

    /// - Parameters: reference, test: `[N, H, W, C]` in [−1, 1] (clamped), same shape. SSIM is measured when
    ///   H, W ≥ 11 and left empty otherwise.
    public static func evaluate(reference: Tensor, test: Tensor) throws -> PairedMetrics {
        let withSSIM = reference.shape.count == 4 && ssimApplies(height: reference.shape[1], width: reference.shape[2])
        return try PairedMetrics(psnr: try ImageQuality.psnr(reference, test), ssim: withSSIM ? try ImageQuality.ssim(reference, test) : [])
    }
}

extension PairedMetrics {
    /// The summaries of per-image values (e.g. the concatenated values of evaluation shards, in image order).
    /// - Parameters: psnr: dB (+∞ for identical images); ssim: same count, or empty when SSIM was not measured.
    public init(psnr: [Double], ssim: [Double]) throws {
        guard psnr.count == ssim.count || ssim.isEmpty else {
            throw EvaluationError.invalidArgument(what: "paired metrics", reason: "\(psnr.count) PSNR values for \(ssim.count) SSIM values")
        }
        self.init(psnr: psnr, ssim: ssim, psnrSummary: try ImageQuality.summary(psnr),
                  ssimSummary: ssim.isEmpty ? nil : try ImageQuality.summary(ssim, cap: .infinity))
    }
}
