//===--- ChannelAffine.swift - a normalized activation not yet written ---===//
//
// GroupNorm ends in a per-sample, per-channel affine map (its statistics folded into a scale and a shift), often
// followed by SiLU, and the result usually feeds one weight layer. When that layer quantizes its input (the integer
// kernels), writing the normalized fp32 tensor only to read it back and write u8 is two wasted passes over memory:
// `ChannelAffine` carries the un-normalized source and the affine map, and a consumer applies it where it reads —
// the integer kernels while writing their padded u8 input (`ptqd_affine_quantize_u8`), everything else through
// `materialize()`. Both run the same C operations in the same order, so the integer kernel's bytes are the bytes
// quantizing `materialize()` would give.
//
//===----------------------------------------------------------------------===//

import CKernels

/// `y[n, p, c] = source[n, p, c]·scale[n, c] + shift[n, c]`, then SiLU if `silu`.
public struct ChannelAffine {
    /// `[N, ..., C]` (NHWC images or `[N, T, C]` token rows).
    public let source: Tensor
    /// `[N, C]` per-sample, per-channel factors and offsets.
    public let scale: Tensor
    public let shift: Tensor
    public let silu: Bool

    public init(source: Tensor, scale: Tensor, shift: Tensor, silu: Bool) {
        let n = source.shape[0], c = source.shape.last!
        precondition(scale.shape == [n, c] && shift.shape == [n, c], "channel affine: scale/shift must be [\(n), \(c)], got \(scale.shape), \(shift.shape)")
        self.source = source; self.scale = scale; self.shift = shift; self.silu = silu
    }

    public var shape: [Int] { source.shape }
    /// Pixels (or tokens) per sample.
    public var pixelsPerSample: Int { source.count / (source.shape[0] * source.shape.last!) }

    /// The activation as a tensor (threads split samples × blocks of 64 pixels).
    public func materialize() -> Tensor {
        let n = source.shape[0], c = source.shape.last!, hw = pixelsPerSample
        let y = Tensor(uninitialized: source.shape)
        let blocks = (hw + 63) / 64
        let src = UnsafePointer(source.data), dst = y.data, a = UnsafePointer(scale.data), b0 = UnsafePointer(shift.data)
        let s = Int32(silu ? 1 : 0)
        Parallel.forEachChunk(n * blocks, minChunk: 4) { range in
            for job in range {
                let b = job / blocks, p0 = (job % blocks) * 64, p1 = min(p0 + 64, hw)
                let off = (b * hw + p0) * c
                ptqd_channel_affine(src + off, dst + off, p1 - p0, c, a + b * c, b0 + b * c, s)
            }
        }
        return y
    }

    /// Nearest ×2 upsampling of the activation (it commutes with a per-channel map): `[N, H, W, C] → [N, 2H, 2W, C]`.
    public func upsampledNearest2x() -> ChannelAffine {
        ChannelAffine(source: Ops.upsampleNearest2x(source), scale: scale, shift: shift, silu: silu)
    }
}

extension ActivationQuantization {
    /// Quantizes `count` values of a channel-affine activation: `quantize(silu?(src[i]·scale[i] + shift[i]))`
    /// (channel-aligned pointers), with the bytes `quantize` gives on the materialized values.
    @inline(__always)
    public func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt8>, count: Int,
                         scale: UnsafePointer<Float>, shift: UnsafePointer<Float>, silu: Bool) {
        ptqd_affine_quantize_u8(src, dst, count, scale, shift, silu ? 1 : 0, 1 / self.scale, Float(zeroPoint), Float(qmax))
    }
}
