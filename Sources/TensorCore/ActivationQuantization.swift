//===--- ActivationQuantization.swift - per-tensor asymmetric u8 quantizer --===//
//
// One function maps fp32 activations to integers; the integer kernels and the fake-quant
// (simulation) path both call it, so the two agree on every rounding decision.
//
//===----------------------------------------------------------------------===//

import CKernels

/// Asymmetric per-tensor quantization of activations to unsigned `bits`-bit integers (stored in u8):
/// `q = clamp(round_half_even(x · (1/scale)) + zeroPoint, 0, 2^bits − 1)`, `x̂ = (q − zeroPoint)·scale`.
/// Zero is exactly representable (q = zeroPoint), which zero padding relies on.
public struct ActivationQuantization: Codable, Equatable, Sendable {
    /// Step size (> 0, finite).
    public var scale: Float
    /// Integer that represents 0, in `0...qmax`.
    public var zeroPoint: Int32
    /// 2...8.
    public var bits: Int

    public init(scale: Float, zeroPoint: Int32, bits: Int) {
        precondition(scale > 0 && scale.isFinite, "activation scale must be positive and finite, got \(scale)")
        precondition((2...8).contains(bits), "activation bits must be in 2...8, got \(bits)")
        precondition(zeroPoint >= 0 && zeroPoint <= (1 << bits) - 1, "zero point \(zeroPoint) outside 0...\((1 << bits) - 1)")
        self.scale = scale; self.zeroPoint = zeroPoint; self.bits = bits
    }

    /// The grid covering `[min(lo, 0), max(hi, 0)]` (the range is widened to contain 0).
    /// Returns nil when the range is empty (a constant zero activation), not finite, or too wide or narrow for a
    /// float32 grid (h − l overflows, or the step is subnormal).
    public init?(lo: Float, hi: Float, bits: Int) {
        let l = min(lo, 0), h = max(hi, 0)
        guard l.isFinite, h.isFinite, h - l > 0 else { return nil }
        let qmax = Float((1 << bits) - 1)
        let s = (h - l) / qmax
        // A range so wide that h − l overflows, or so narrow that the step is subnormal or 0, has no usable
        // grid (1/s would be ∞ or the zero point NaN).
        guard s.isNormal, s.isFinite, (1 / s).isFinite else { return nil }
        let z = Int32(min(max((-l / s).rounded(.toNearestOrEven), 0), qmax))
        self.init(scale: s, zeroPoint: z, bits: bits)
    }

    /// Whether the fields satisfy the invariants `init` checks (for values decoded from files).
    public var isValid: Bool { scale > 0 && scale.isFinite && (2...8).contains(bits) && zeroPoint >= 0 && Int(zeroPoint) < (1 << bits) }

    /// Largest integer level, `2^bits − 1`.
    public var qmax: Int32 { (1 << Int32(bits)) - 1 }

    /// Quantizes `count` values from `src` (stride 1) into `dst` (stride 1) (CKernels, vectorized per ISA).
    @inline(__always)
    public func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt8>, count: Int) {
        ptqd_quantize_u8(src, dst, count, 1 / scale, Float(zeroPoint), Float(qmax))
    }

    /// Fake quantization in place: `x ← (q(x) − zeroPoint)·scale`, the exact values the integer path computes with.
    @inline(__always)
    public func fakeQuantize(_ p: UnsafeMutablePointer<Float>, count: Int) {
        ptqd_fake_quantize(p, count, 1 / scale, Float(zeroPoint), Float(qmax), scale)
    }

    /// Plain scalar reference of `quantize` for one finite value (the definition in the type's documentation).
    public func referenceLevel(_ x: Float) -> UInt8 {
        UInt8(min(max((x * (1 / scale)).rounded(.toNearestOrEven) + Float(zeroPoint), 0), Float(qmax)))
    }
}

extension ActivationQuantization {
    /// Fake-quantizes channel ranges of an NHWC (or `[M, C]`) tensor, each range with its own quantizer.
    /// - x: `[..., C]`; parts: `(channel range, quantizer)` covering `0..<C`. Returns a new tensor.
    public static func fakeQuantize(_ x: Tensor, parts: [(Range<Int>, ActivationQuantization)]) -> Tensor {
        let y = x.copy()
        let c = x.shape.last!
        let rows = x.count / c
        Parallel.forEachChunk(rows, minChunk: 256) { r in
            for row in r {
                for (range, q) in parts { q.fakeQuantize(y.data + row * c + range.lowerBound, count: range.count) }
            }
        }
        return y
    }
}
