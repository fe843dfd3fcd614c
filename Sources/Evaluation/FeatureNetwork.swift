//===--- FeatureNetwork.swift - the Fashion-MNIST classifier behind FID / IS / P&R ---===//
//
// `models/fmnist-features` (trained by tools/train_features.py): `config.json` lists the layers
// as data, `model.safetensors` holds fp32 weights in PyTorch layouts (conv OIHW, linear [out, in]).
// The forward pass runs on TensorCore's oneDNN layers in NHWC.

import Foundation
import SafeTensors
import TensorCore

/// `config.json` of a feature network.
public struct FeatureNetworkConfig: Codable, Sendable {
    public struct Input: Codable, Sendable {
        /// `[1, C, H, W]` (PyTorch order).
        public var shapeNchw: [Int]
        public var range: [Double]?
        public var normalization: String?
    }

    /// One layer. `kind` is one of `conv2d`, `relu`, `silu`, `avgpool2`, `maxpool2`,
    /// `global_avgpool`, `flatten_nchw`, `linear`, `groupnorm`; the other fields apply to the kinds
    /// that need them.
    public struct Layer: Codable, Sendable {
        public var kind: String
        public var name: String
        public var inChannels: Int?
        public var outChannels: Int?
        public var kernel: Int?
        public var stride: Int?
        public var padding: Int?
        public var inFeatures: Int?
        public var outFeatures: Int?
        public var groups: Int?
        public var eps: Double?
        public var weight: String?
        public var bias: String?
    }

    public var name: String
    public var input: Input
    public var layers: [Layer]
    /// Name of the layer whose output are the features (e.g. "fc1_relu").
    public var featureLayer: String
    public var featureDim: Int
    /// Name of the layer whose output are the logits (the last layer).
    public var logitsLayer: String
    public var numClasses: Int
    /// Class names in label order (e.g. Fashion-MNIST's "T-shirt/top", …), if the config lists them.
    public var classes: [String]?
    public var testAccuracy: Double?
    public var fidFloorTestVsTrain10k: Double?
}

/// Features and logits of a batch of images.
public struct FeatureOutput {
    /// `[N, featureDim]`.
    public let features: Tensor
    /// `[N, classCount]`.
    public let logits: Tensor
}

/// The feature network: forward over `[N, 32, 32, 1]` images in [−1, 1].
///
/// Not thread-safe (oneDNN primitives are cached per batch shape); use from one thread at a time.
public final class FeatureNetwork {
    public static let configFile = "config.json"
    public static let weightsFile = "model.safetensors"

    public let directory: String
    public let config: FeatureNetworkConfig
    /// Size and CRC-32 of `model.safetensors`: together they identify the weights in caches.
    public let weightsBytes: Int
    public let weightsCRC32: UInt32
    /// CRC-32 of `config.json`'s bytes (layers, feature layer, input range): part of the cache identity,
    /// since the same weights read through another config give other features.
    public let configCRC32: UInt32
    /// `[H, W, C]` of one input image.
    public let inputShape: [Int]
    public var featureDim: Int { config.featureDim }
    public var classCount: Int { config.numClasses }
    /// `"<name> <bytes> bytes crc32=<hex> config crc32=<hex>"`.
    public var identity: String { "\(config.name) \(weightsBytes) bytes crc32=\(hex8(weightsCRC32)) config crc32=\(hex8(configCRC32))" }

    enum Op {
        case conv(FloatConv2D)
        case linear(FloatLinear)
        case relu, silu, avgPool2, maxPool2, globalAvgPool, flattenNCHW
        case groupNorm(groups: Int, gamma: [Float], beta: [Float], eps: Float)
    }
    let ops: [(name: String, op: Op)]
    let featureIndex: Int

    /// Loads `directory/config.json` and `directory/model.safetensors`, validating every shape.
    /// - Throws: `.featureNetworkConfig` or `.featureNetworkWeights` with a one-line reason.
    public init(directory: String) throws {
        self.directory = directory
        let configPath = "\(directory)/\(Self.configFile)"
        let weightsPath = "\(directory)/\(Self.weightsFile)"
        func bad(_ reason: String) -> EvaluationError { .featureNetworkConfig(path: configPath, reason: reason) }
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw bad("file not found or unreadable (expected a directory made by tools/train_features.py)")
        }
        let cfg: FeatureNetworkConfig
        do { cfg = try ReportJSON.decoder().decode(FeatureNetworkConfig.self, from: data) } catch {
            throw bad("not a valid feature network config: \(Self.decodingReason(error))")
        }
        config = cfg
        configCRC32 = Gzip.crc32([UInt8](data))

        let weights: SafeTensorsFile
        do { weights = try SafeTensorsFile(path: weightsPath) } catch {
            throw EvaluationError.featureNetworkWeights(path: weightsPath, reason: "\(error)")
        }
        weightsBytes = weights.fileSize
        guard let raw = FileManager.default.contents(atPath: weightsPath) else {
            throw EvaluationError.featureNetworkWeights(path: weightsPath, reason: "cannot read file")
        }
        weightsCRC32 = Gzip.crc32([UInt8](raw))

        func tensor(_ name: String?, _ shape: [Int], layer: String) throws -> [Float] {
            guard let name else { throw bad("layer '\(layer)' does not name its weight/bias tensor") }
            let v: [Float]
            do { v = try weights.floats(name, expectedShape: shape) } catch {
                throw EvaluationError.featureNetworkWeights(path: weightsPath, reason: "\(error)")
            }
            if let i = v.firstIndex(where: { !$0.isFinite }) {
                throw EvaluationError.featureNetworkWeights(path: weightsPath, reason: "tensor '\(name)' element \(i) is NaN or infinite")
            }
            return v
        }
        func need(_ v: Int?, _ field: String, _ layer: String) throws -> Int {
            guard let v, v > 0 else { throw bad("layer '\(layer)' needs a positive \(field)") }
            return v
        }

        guard cfg.input.shapeNchw.count == 4, cfg.input.shapeNchw.dropFirst().allSatisfy({ $0 > 0 }) else {
            throw bad("input.shape_nchw must be [1, C, H, W], got \(cfg.input.shapeNchw)")
        }
        var (h, w, c) = (cfg.input.shapeNchw[2], cfg.input.shapeNchw[3], cfg.input.shapeNchw[1])
        inputShape = [h, w, c]
        var flat = false                       // after global average pooling: [N, c]
        var ops: [(String, Op)] = []
        var featureIndex: Int? = nil
        var featureWidth = 0
        for layer in cfg.layers {
            let n = layer.name
            switch layer.kind {
            case "conv2d":
                guard !flat else { throw bad("conv2d '\(n)' after global pooling or flatten") }
                let ic = try need(layer.inChannels, "in_channels", n), oc = try need(layer.outChannels, "out_channels", n)
                let k = try need(layer.kernel, "kernel", n), s = layer.stride ?? 1, p = layer.padding ?? 0
                guard ic == c else { throw bad("conv2d '\(n)' expects \(ic) input channels but receives \(c)") }
                guard s > 0, p >= 0 else { throw bad("conv2d '\(n)' has stride \(s), padding \(p)") }
                let g = Conv2DGeometry(inChannels: ic, outChannels: oc, kernel: k, stride: s, padding: p)
                guard g.outHeight(h) > 0, g.outWidth(w) > 0 else { throw bad("conv2d '\(n)' output would be empty for \(h)x\(w) input") }
                let wt = try tensor(layer.weight, [oc, ic, k, k], layer: n)
                let b = layer.bias == nil ? nil : try tensor(layer.bias, [oc], layer: n)
                ops.append((n, .conv(FloatConv2D(geometry: g, weights: wt, bias: b))))
                (h, w, c) = (g.outHeight(h), g.outWidth(w), oc)
            case "linear":
                let inF = try need(layer.inFeatures, "in_features", n), outF = try need(layer.outFeatures, "out_features", n)
                guard flat else { throw bad("linear '\(n)' before global pooling or flatten (only [N, C] inputs are supported)") }
                guard inF == c else { throw bad("linear '\(n)' expects \(inF) inputs but receives \(c)") }
                let wt = try tensor(layer.weight, [outF, inF], layer: n)
                let b = layer.bias == nil ? nil : try tensor(layer.bias, [outF], layer: n)
                ops.append((n, .linear(FloatLinear(inFeatures: inF, outFeatures: outF, weights: wt, bias: b))))
                c = outF
            case "relu": ops.append((n, .relu))
            case "silu": ops.append((n, .silu))
            case "avgpool2":
                guard !flat, h >= 2, w >= 2 else { throw bad("avgpool2 '\(n)' on a \(h)x\(w) input") }
                ops.append((n, .avgPool2)); h /= 2; w /= 2
            case "maxpool2":
                guard !flat, h >= 2, w >= 2 else { throw bad("maxpool2 '\(n)' on a \(h)x\(w) input") }
                ops.append((n, .maxPool2)); h /= 2; w /= 2
            case "global_avgpool":
                guard !flat else { throw bad("global_avgpool '\(n)' on an already flat input") }
                ops.append((n, .globalAvgPool)); flat = true
            case "flatten_nchw":
                guard !flat else { throw bad("flatten_nchw '\(n)' on an already flat input") }
                ops.append((n, .flattenNCHW)); flat = true; c = c * h * w
            case "groupnorm":
                guard !flat else { throw bad("groupnorm '\(n)' after global pooling or flatten") }
                let groups = try need(layer.groups, "groups", n)
                guard c % groups == 0 else { throw bad("groupnorm '\(n)': \(c) channels not divisible by \(groups) groups") }
                let gamma = try tensor(layer.weight, [c], layer: n), beta = try tensor(layer.bias, [c], layer: n)
                ops.append((n, .groupNorm(groups: groups, gamma: gamma, beta: beta, eps: Float(layer.eps ?? 1e-5))))
            default:
                throw bad("layer '\(n)' has unknown kind '\(layer.kind)' (known: conv2d, relu, silu, avgpool2, maxpool2, global_avgpool, flatten_nchw, linear, groupnorm)")
            }
            if n == cfg.featureLayer { featureIndex = ops.count - 1; featureWidth = flat ? c : -1 }
        }
        guard let fi = featureIndex else { throw bad("feature_layer '\(cfg.featureLayer)' is not a layer name") }
        guard featureWidth == cfg.featureDim else {
            throw bad("feature_layer '\(cfg.featureLayer)' outputs \(featureWidth < 0 ? "a spatial map" : "\(featureWidth) values"), feature_dim says \(cfg.featureDim)")
        }
        guard ops.last?.0 == cfg.logitsLayer else { throw bad("logits_layer '\(cfg.logitsLayer)' must be the last layer") }
        guard flat, c == cfg.numClasses else { throw bad("the last layer outputs \(c) values, num_classes says \(cfg.numClasses)") }
        self.ops = ops
        self.featureIndex = fi
    }

    static func decodingReason(_ error: Error) -> String {
        switch error {
        case let DecodingError.keyNotFound(key, ctx):
            return "missing key '\(key.stringValue)' at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))"
        case let DecodingError.typeMismatch(_, ctx), let DecodingError.valueNotFound(_, ctx):
            return "wrong type at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))"
        case let DecodingError.dataCorrupted(ctx):
            return "invalid JSON (\(ctx.debugDescription))"
        default:
            return "\(error)"
        }
    }

    /// Features and logits of `images` (`[N, H, W, C]` matching the config's input, values in
    /// [−1, 1]), computed in batches of `batchSize`.
    /// - Throws: `.shapeMismatch`, `.nonFinite` (NaN/inf input).
    public func evaluate(_ images: Tensor, batchSize: Int = 256) throws -> FeatureOutput {
        guard images.shape.count == 4, Array(images.shape.dropFirst()) == inputShape, images.shape[0] > 0 else {
            throw EvaluationError.shapeMismatch(what: "feature network input", expected: "[N>0, \(inputShape.map(String.init).joined(separator: ", "))]", actual: images.shape)
        }
        for i in 0..<images.count where !images.data[i].isFinite {
            throw EvaluationError.nonFinite(what: "feature network input", index: i)
        }
        let n = images.shape[0], bs = max(1, batchSize)
        let features = Tensor(shape: [n, featureDim]), logits = Tensor(shape: [n, classCount])
        var start = 0
        while start < n {
            let end = min(n, start + bs)
            let (f, l) = forward(images.slice(batch: start..<end))
            (features.data + start * featureDim).update(from: f.data, count: f.count)
            (logits.data + start * classCount).update(from: l.data, count: l.count)
            start = end
        }
        return FeatureOutput(features: features, logits: logits)
    }

    /// `[N, featureDim]` features (see ``evaluate(_:batchSize:)``).
    public func features(_ images: Tensor, batchSize: Int = 256) throws -> Tensor { try evaluate(images, batchSize: batchSize).features }

    /// `[N, classCount]` logits (see ``evaluate(_:batchSize:)``).
    public func logits(_ images: Tensor, batchSize: Int = 256) throws -> Tensor { try evaluate(images, batchSize: batchSize).logits }

    /// One batch through all layers; returns (features copy, logits).
    func forward(_ input: Tensor) -> (Tensor, Tensor) {
        var x = input
        var feats: Tensor? = nil
        for (i, (_, op)) in ops.enumerated() {
            switch op {
            case .conv(let conv): x = conv.forward(x)
            case .linear(let lin): x = lin.forward(x)
            case .relu: if x === input { x = x.copy() }; FeatureNetworkOps.reluInPlace(x)
            case .silu: if x === input { x = x.copy() }; Ops.siluInPlace(x)
            case .avgPool2: x = Ops.avgPool2x(x)
            case .maxPool2: x = FeatureNetworkOps.maxPool2x(x)
            case .flattenNCHW: x = FeatureNetworkOps.flattenNCHW(x)
            case .globalAvgPool: x = FeatureNetworkOps.globalAveragePool(x)
            case let .groupNorm(groups, gamma, beta, eps): x = Ops.groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: eps)
            }
            if i == featureIndex { feats = x.copy() }
        }
        return (feats!, x)
    }

    /// Features of a whole dataset split, in file order, `batchSize` images at a time.
    public func features(of dataset: FashionMNIST, indices: [Int]? = nil, batchSize: Int = 500) throws -> FeatureOutput {
        let idx = indices ?? Array(0..<dataset.count)
        guard !idx.isEmpty else { throw EvaluationError.tooFewSamples(what: "dataset features", count: 0, minimum: 1) }
        var fs: [Tensor] = [], ls: [Tensor] = []
        var start = 0
        while start < idx.count {
            let end = min(idx.count, start + batchSize)
            let out = try evaluate(dataset.images(Array(idx[start..<end]), padTo32: inputShape[0] == 32), batchSize: batchSize)
            fs.append(out.features); ls.append(out.logits)
            start = end
        }
        return FeatureOutput(features: Tensor.concatenate(batch: fs), logits: Tensor.concatenate(batch: ls))
    }
}

extension FeatureNetwork {
    /// Class names from `directory/config.json` without loading the weights; nil if the file is missing or
    /// lists no names.
    public static func classNames(directory: String) -> [String]? {
        guard let data = FileManager.default.contents(atPath: "\(directory)/\(configFile)"),
              let cfg = try? ReportJSON.decoder().decode(FeatureNetworkConfig.self, from: data) else { return nil }
        return cfg.classes
    }

    /// Names for `count` class labels: `names` when it has exactly `count` entries, else "class 0", "class 1", ….
    public static func rowNames(_ names: [String]?, count: Int) -> [String] {
        if let names, names.count == count { return names }
        return (0..<count).map { "class \($0)" }
    }
}
