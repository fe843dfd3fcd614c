//===--- QuantizedLayer.swift - one quantized weight layer and its kernels ---===//

import Diffusion
import TensorCore

/// How a quantized model computes.
public enum ExecutionMode: String, Codable, Sendable, CaseIterable {
    /// oneDNN u8 × s8 kernels (weight-only layers run fp32 on dequantized weights).
    case integer
    /// Fake quantization in fp32: inputs quantized-dequantized, weights dequantized (the reference).
    case simulate
}

/// A quantized Conv2d/Linear: integer weights with per-output-channel scales, and the quantizers of
/// its input (none for weight-only layers, two for skip-concatenation inputs).
public struct QuantizedLayer: Sendable {
    public let name: String
    public let precision: LayerPrecision
    /// `[O, K]` integers, K = Cin·KH·KW in OIHW order (or in_features); within the weight grid.
    public let q: [Int8]
    /// `[O]` weight step sizes.
    public let scales: [Float]
    /// Input quantizers: empty (fp32 activations), one, or two (channels `0..<split`, `split..<Cin`).
    public let inputs: [ActivationQuantization]
    /// Channels of the first input part when the input is a skip concatenation.
    public let split: Int?

    public init(name: String, precision: LayerPrecision, q: [Int8], scales: [Float], inputs: [ActivationQuantization], split: Int?) {
        self.name = name; self.precision = precision; self.q = q; self.scales = scales; self.inputs = inputs; self.split = split
    }

    /// `q · scale` in PyTorch layout.
    public func dequantizedWeights() -> [Float] {
        let o = scales.count, k = q.count / max(o, 1)
        var w = [Float](repeating: 0, count: q.count)
        for r in 0..<o { let s = scales[r]; for j in 0..<k { w[r * k + j] = Float(q[r * k + j]) * s } }
        return w
    }

    /// Input channel ranges paired with their quantizers.
    func parts(inChannels: Int) -> [(Range<Int>, ActivationQuantization)] {
        if let s = split, inputs.count == 2 { return [(0..<s, inputs[0]), (s..<inChannels, inputs[1])] }
        return inputs.map { (0..<inChannels, $0) }
    }

    /// Checks this record against the network layer it replaces.
    public func validate(against layer: WeightLayer) throws {
        guard precision.isSupported else {
            throw QuantizationError.file(path: name, reason: "bits \(precision) outside 2...8")
        }
        for a in inputs {
            guard a.isValid else {
                throw QuantizationError.file(path: name, reason: "invalid activation quantizer (scale \(a.scale), zero point \(a.zeroPoint), \(a.bits) bits)")
            }
        }
        let o = layer.kind.outputs
        guard q.count == layer.kind.weightCount, scales.count == o else {
            throw QuantizationError.file(path: name, reason: "quantized weights \(q.count)/scales \(scales.count) do not fit layer of \(layer.kind.weightCount) weights, \(o) outputs")
        }
        guard scales.allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw QuantizationError.file(path: name, reason: "weight scales must be positive and finite")
        }
        let lo = -(1 << (precision.weightBits - 1)), hi = (1 << (precision.weightBits - 1)) - 1
        guard q.allSatisfy({ Int($0) >= lo && Int($0) <= hi }) else {
            throw QuantizationError.file(path: name, reason: "integer weights exceed the \(precision.weightBits)-bit grid")
        }
        let expectedParts = precision.activationBits == nil ? 0 : (layer.inputSplit == nil ? 1 : 2)
        guard inputs.count == expectedParts, split == (expectedParts == 2 ? layer.inputSplit : nil) else {
            throw QuantizationError.file(path: name, reason: "has \(inputs.count) input quantizers (split \(split.map(String.init) ?? "none")), layer needs \(expectedParts)")
        }
        for a in inputs where a.bits != precision.activationBits {
            throw QuantizationError.file(path: name, reason: "input quantizer has \(a.bits) bits, precision says \(precision)")
        }
    }

    /// The kernel computing this layer in `mode`.
    public func makeKernel(for layer: WeightLayer, mode: ExecutionMode) -> WeightLayerKernel {
        let w = dequantizedWeights()
        let float: WeightLayerKernel
        switch layer.kind {
        case let .conv(g): float = FloatConv2D(geometry: g, weights: w, bias: layer.bias)
        case let .linear(i, o): float = FloatLinear(inFeatures: i, outFeatures: o, weights: w, bias: layer.bias)
        }
        if inputs.isEmpty { return float }
        switch mode {
        case .simulate:
            return FakeQuantInput(parts: parts(inChannels: layer.kind.inputs), inner: float)
        case .integer:
            switch layer.kind {
            case let .conv(g):
                return Int8Conv2D(geometry: g, weights: q, weightScales: scales, bias: layer.bias, inputs: inputs, split: split)
            case let .linear(i, o):
                return Int8Linear(inFeatures: i, outFeatures: o, weights: q, weightScales: scales, bias: layer.bias, input: inputs[0])
            }
        }
    }
}

extension Int8Conv2D: WeightLayerKernel {}
extension Int8Linear: WeightLayerKernel {}

/// Simulation kernel: fake-quantizes the input (per part), then runs the fp32 kernel on dequantized weights.
public final class FakeQuantInput: WeightLayerKernel {
    let parts: [(Range<Int>, ActivationQuantization)]
    let inner: WeightLayerKernel
    init(parts: [(Range<Int>, ActivationQuantization)], inner: WeightLayerKernel) { self.parts = parts; self.inner = inner }
    public func forward(_ x: Tensor) -> Tensor { inner.forward(ActivationQuantization.fakeQuantize(x, parts: parts)) }
}

/// 4-bit weights two per byte: element 2i in the low nibble, 2i+1 in the high nibble, two's complement.
public enum NibblePacking {
    public static func pack(_ q: [Int8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (q.count + 1) / 2)
        for i in 0..<q.count {
            let nib = UInt8(bitPattern: q[i]) & 0x0F
            out[i / 2] |= i % 2 == 0 ? nib : nib << 4
        }
        return out
    }

    public static func unpack(_ bytes: [UInt8], count: Int) -> [Int8] {
        precondition(bytes.count == (count + 1) / 2, "packed 4-bit: \(bytes.count) bytes for \(count) values")
        return (0..<count).map { i in
            let nib = i % 2 == 0 ? bytes[i / 2] & 0x0F : bytes[i / 2] >> 4
            return Int8(bitPattern: nib << 4) >> 4  // sign-extend
        }
    }
}
