//===--- Random.swift - seeded Gaussian noise, one stream per image --------===//
//
// Each image owns a stream derived from (seed, image index), so the noise an image sees does not
// depend on batch size or on which other images are sampled with it. FP and quantized runs with
// the same seed therefore see identical x_T and identical per-step noise.
//
//===----------------------------------------------------------------------===//

import Foundation
import TensorCore

/// SplitMix64-seeded xoshiro256** generator with Box–Muller normals.
public struct GaussianStream: Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    private var spare: Float?

    /// A stream for image `index` of a run seeded with `seed`.
    public init(seed: UInt64, index: UInt64) {
        var z = seed &* 0x9E37_79B9_7F4A_7C15 ^ (index &+ 0x632B_E59B_D9B4_E019) &* 0xBF58_476D_1CE4_E5B9
        func next() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
            x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
            return x ^ (x >> 31)
        }
        s = (next(), next(), next(), next())
    }

    /// Next raw 64 bits.
    public mutating func nextUInt64() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3; s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in (0, 1).
    public mutating func nextUniform() -> Double { (Double(nextUInt64() >> 11) + 0.5) * 0x1p-53 }

    /// Standard normal.
    public mutating func nextNormal() -> Float {
        if let v = spare { spare = nil; return v }
        let u1 = nextUniform(), u2 = nextUniform()
        let r = (-2 * Foundation.log(u1)).squareRoot()
        spare = Float(r * Foundation.sin(2 * Double.pi * u2))
        return Float(r * Foundation.cos(2 * Double.pi * u2))
    }

    /// Fills `count` floats with standard normals.
    public mutating func fill(_ p: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { p[i] = nextNormal() }
    }
}

/// Per-image noise streams for a batch.
public final class BatchNoise {
    public var streams: [GaussianStream]
    /// Streams for images `indices` of a run with `seed`.
    public init(seed: UInt64, indices: Range<Int>) {
        streams = indices.map { GaussianStream(seed: seed, index: UInt64($0)) }
    }
    /// `[N, H, W, C]` standard normal, image b from stream b.
    public func next(shape: [Int]) -> Tensor {
        precondition(shape[0] == streams.count, "noise for \(shape[0]) images from \(streams.count) streams")
        let t = Tensor(shape: shape)
        let per = t.count / shape[0]
        for b in 0..<shape[0] { streams[b].fill(t.data + b * per, count: per) }
        return t
    }
}
