//===--- ChannelAffine.swift - a normalized activation not yet written ---===//
//
// GroupNorm ends in a per-sample, per-channel affine map (its statistics folded into a scale and a shift), often
// followed by SiLU, and the result usually feeds one weight layer. When that layer quantizes its input (the integer
// kernels), writing the normalized fp32 tensor only to read it back and write u8 is two wasted passes over memory:
// `ChannelAffine` carries the un-normalized source and the affine map, and a consumer applies it where it reads —
// the integer kernels while writing their padded u8 input (a row of pixels per `ptqd_quantize_pixels_u8` call, the
// operations of `ptqd_affine_quantize_u8`), everything else through
// `materialize()`. Both run the same C operations in the same order, so the integer kernel's bytes are the bytes
// quantizing `materialize()` would give.
//
//===----------------------------------------------------------------------===//

import CKernels

/// `y[n, p, c] = x[n, p, c]·scale[n, c] + shift[n, c]`, then SiLU if `silu`, where x is `source`, or the channel
/// concatenation `[source, skip]` not yet written (a UNet up block's input: integer kernels read the two parts
/// where they lie).
public struct ChannelAffine {
    /// `[N, ..., C₁]` (NHWC images or `[N, T, C]` token rows).
    public let source: Tensor
    /// `[N, ..., C₂]`: the second part of a channel concatenation, or nil.
    public let skip: Tensor?
    /// `[N, C]` per-sample, per-channel factors and offsets (C = C₁ + C₂).
    public let scale: Tensor
    public let shift: Tensor
    public let silu: Bool

    public init(source: Tensor, skip: Tensor? = nil, scale: Tensor, shift: Tensor, silu: Bool) {
        let n = source.shape[0], c = source.shape.last! + (skip?.shape.last ?? 0)
        if let skip {
            precondition(Array(skip.shape.dropLast()) == Array(source.shape.dropLast()), "channel affine: concatenated parts \(source.shape) and \(skip.shape)")
        }
        precondition(scale.shape == [n, c] && shift.shape == [n, c], "channel affine: scale/shift must be [\(n), \(c)], got \(scale.shape), \(shift.shape)")
        self.source = source; self.skip = skip; self.scale = scale; self.shift = shift; self.silu = silu
    }

    /// The shape of the activation (channels of both parts).
    public var shape: [Int] { Array(source.shape.dropLast()) + [channels] }
    /// Channels of the activation.
    public var channels: Int { source.shape.last! + (skip?.shape.last ?? 0) }
    /// Pixels (or tokens) per sample.
    public var pixelsPerSample: Int { source.count / (source.shape[0] * source.shape.last!) }

    /// The activation as a tensor (threads split samples × blocks of 64 pixels; a concatenation is written first).
    public func materialize() -> Tensor {
        let source = skip.map { Ops.concatChannels(self.source, $0) } ?? self.source
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
        ChannelAffine(source: Ops.upsampleNearest2x(source), skip: skip.map(Ops.upsampleNearest2x), scale: scale, shift: shift, silu: silu)
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

/// Where a run of pixels comes from and goes to, for `ActivationQuantization.quantizePixels`.
public struct PixelRun {
    /// First pixel's `channels` floats; pixel p reads `source + (p >> shift)·sourceStride`.
    public var source: UnsafePointer<Float>
    public var sourceStride: Int
    /// 1: nearest ×2 upsampling along the run (each source pixel feeds two); 0: none.
    public var shift: Int
    public var pixels: Int
    public var channels: Int
    /// Pixel p writes `channels` bytes at `destination + p·destinationStride`.
    public var destination: UnsafeMutablePointer<UInt8>
    public var destinationStride: Int
    /// Copy each pixel's bytes to the next `channels` bytes too (hi/lo duplicated weights).
    public var duplicate: Bool

    @inline(__always)
    public init(source: UnsafePointer<Float>, sourceStride: Int, shift: Int = 0, pixels: Int, channels: Int,
                destination: UnsafeMutablePointer<UInt8>, destinationStride: Int, duplicate: Bool) {
        self.source = source; self.sourceStride = sourceStride; self.shift = shift; self.pixels = pixels
        self.channels = channels; self.destination = destination; self.destinationStride = destinationStride
        self.duplicate = duplicate
    }
}

extension ActivationQuantization {
    /// Quantizes a run of pixels in one C call (`ptqd_quantize_pixels_u8`), optionally through a channel affine map
    /// (`scale`/`shift`: the run's `channels` factors and offsets, shared by every pixel; + SiLU): the bytes of one
    /// `quantize` call per pixel.
    @inline(__always)
    public func quantizePixels(_ run: PixelRun, scale: UnsafePointer<Float>? = nil, shift: UnsafePointer<Float>? = nil,
                               silu: Bool = false) {
        let mode: Int32 = scale == nil ? 0 : (silu ? 2 : 1)
        ptqd_quantize_pixels_u8(run.source, run.sourceStride, Int32(run.shift), run.pixels, run.channels, run.destination,
                                run.destinationStride, run.duplicate ? 1 : 0, scale, shift, mode, 1 / self.scale,
                                Float(zeroPoint), Float(qmax))
    }
}

