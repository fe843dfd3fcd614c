//===--- Ops.swift - memory-bound tensor ops over NHWC fp32 ----------------===//
//
// Each op states its shapes. These are the ops oneDNN does not cover well (or at all in 2.6):
// GroupNorm, SiLU, softmax, nearest upsampling, channel concat, average pooling, elementwise.
// The inner loops are CKernels (one C body compiled per ISA, chosen at run time); these functions
// split the work across threads. Plain reference versions live in `Reference.swift`; tests compare
// the two on every ISA variant the machine supports.
//
//===----------------------------------------------------------------------===//

import CKernels
import Foundation

public enum Ops {
    /// In-place SiLU `x·σ(x)` over all elements.
    public static func siluInPlace(_ x: Tensor) {
        Parallel.forEachChunk(x.count / 16 + 1, minChunk: 4096) { r in
            let lo = r.lowerBound * 16, hi = min(r.upperBound * 16, x.count)
            if hi > lo { ptqd_silu_inplace(x.data + lo, hi - lo) }
        }
    }

    /// SiLU into a new tensor.
    public static func silu(_ x: Tensor) -> Tensor { let y = x.copy(); siluInPlace(y); return y }

    /// Group normalization (PyTorch `nn.GroupNorm` semantics, biased variance), optionally
    /// preceded by a per-sample per-channel add and followed by SiLU.
    ///
    /// - x: `[N, H, W, C]` (or `[N, T, C]`: any shape `[N, ..., C]`).
    /// - gamma, beta: `[C]`.
    /// - preAdd: optional `[N, C]` added to every pixel before normalizing (the ResNet time embedding).
    /// - returns the normalized tensor, same shape.
    public static func groupNorm(_ x: Tensor, groups: Int, gamma: [Float], beta: [Float], eps: Float,
                                 preAdd: Tensor? = nil, silu: Bool = false) -> Tensor {
        groupNormAffine(x, groups: groups, gamma: gamma, beta: beta, eps: eps, preAdd: preAdd, silu: silu).materialize()
    }

    /// Group normalization as a ``ChannelAffine`` on `x`: the statistics pass only (the preAdd folded into the
    /// shift); the consumer applies it (``ChannelAffine/materialize()`` gives ``groupNorm(_:groups:gamma:beta:eps:preAdd:silu:)``).
    /// Statistics: per-channel Float sums over blocks of 64 pixels (threads split samples × blocks), folded into
    /// Double in block order, then per group mean and biased variance in Double.
    /// - skip: the second part of a channel concatenation `[x, skip]` the normalization is over, not written: its
    ///   sums are those of the concatenated tensor's channels (each channel is summed alone, in the same order).
    public static func groupNormAffine(_ x: Tensor, concatenating skip: Tensor? = nil, groups: Int, gamma: [Float], beta: [Float],
                                       eps: Float, preAdd: Tensor? = nil, silu: Bool = false) -> ChannelAffine {
        let n = x.shape[0], c1 = x.shape.last!, c = c1 + (skip?.shape.last ?? 0)
        let hw = x.count / (n * c1)
        if let skip { precondition(Array(skip.shape.dropLast()) == Array(x.shape.dropLast()), "GroupNorm: concatenated parts \(x.shape) and \(skip.shape)") }
        precondition(c % groups == 0, "GroupNorm: \(c) channels not divisible by \(groups) groups")
        precondition(gamma.count == c && beta.count == c, "GroupNorm affine size")
        if let p = preAdd { precondition(p.shape == [n, c], "GroupNorm preAdd must be [\(n), \(c)], got \(p.shape)") }
        let cg = c / groups
        let blocks = max((hw + 63) / 64, 1)
        // Raw pointers: the parallel loops must not retain tensors per job.
        let xp = UnsafePointer(x.data), sp = skip.map { UnsafePointer($0.data) }, pre0 = preAdd.map { UnsafePointer($0.data) }
        // Float sums and sums of squares of every (sample, block): [N, blocks, 2, C].
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: n * blocks * 2 * c)
        defer { partial.deallocate() }
        partial.update(repeating: 0, count: n * blocks * 2 * c)
        Parallel.forEachChunk(n * blocks, minChunk: 2) { range in
            for job in range {
                let b = job / blocks, p0 = (job % blocks) * 64, p1 = min(p0 + 64, hw)
                let fs = partial + job * 2 * c
                guard p1 > p0 else { continue }
                // Channels 0..<c1 from x, then c1..<c from the concatenated part (c1 = c without one).
                ptqd_channel_sums(xp + (b * hw + p0) * c1, p1 - p0, c1, fs, fs + c)
                if let sp { ptqd_channel_sums(sp + (b * hw + p0) * (c - c1), p1 - p0, c - c1, fs + c1, fs + c + c1) }
            }
        }
        // Per sample: fold the blocks into Double in block order, then each group's mean and variance.
        let scale = Tensor(uninitialized: [n, c]), shift = Tensor(uninitialized: [n, c])
        let a0 = scale.data, b0 = shift.data
        Parallel.forEachChunk(n) { range in
            let s = UnsafeMutablePointer<Double>.allocate(capacity: 2 * c)
            defer { s.deallocate() }
            let q = s + c
            for bi in range {
                s.update(repeating: 0, count: 2 * c)
                for blk in 0..<blocks {
                    let fs = partial + (bi * blocks + blk) * 2 * c
                    for i in 0..<c { s[i] += Double(fs[i]); q[i] += Double(fs[c + i]) }
                }
                let count = Double(hw * cg)
                let pre = pre0.map { $0 + bi * c }
                let a = a0 + bi * c, sh = b0 + bi * c
                for g in 0..<groups {
                    var sum = 0.0, sq = 0.0
                    for i in (g * cg)..<((g + 1) * cg) {
                        let t = pre.map { Double($0[i]) } ?? 0
                        sum += s[i] + Double(hw) * t
                        sq += q[i] + 2 * t * s[i] + Double(hw) * t * t
                    }
                    let mean = sum / count
                    let variance = max(sq / count - mean * mean, 0)
                    let inv = 1 / (variance + Double(eps)).squareRoot()
                    for i in (g * cg)..<((g + 1) * cg) {
                        let t = pre.map { Double($0[i]) } ?? 0
                        a[i] = Float(inv * Double(gamma[i]))
                        sh[i] = Float((t - mean) * inv * Double(gamma[i]) + Double(beta[i]))
                    }
                }
            }
        }
        return ChannelAffine(source: x, skip: skip, scale: scale, shift: shift, silu: silu)
    }

    /// Row-wise softmax of `scale·x` in place: `x` is `[rows, length]`.
    public static func softmaxRowsInPlace(_ x: UnsafeMutablePointer<Float>, rows: Int, length: Int, scale: Float) {
        Parallel.forEachChunk(rows, minChunk: 16) { range in
            for r in range { ptqd_softmax_row(x + r * length, length, scale) }
        }
    }

    /// Nearest-neighbour ×2 upsampling: `[N, H, W, C] → [N, 2H, 2W, C]`.
    public static func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(uninitialized: [n, 2 * h, 2 * w, c])
        Parallel.forEachChunk(n * h, minChunk: 8) { range in
            for row in range {
                let b = row / h, iy = row % h
                let src = x.data + row * w * c
                for dy in 0..<2 {
                    let dst = y.data + ((b * 2 * h) + 2 * iy + dy) * 2 * w * c
                    for ix in 0..<w {
                        (dst + (2 * ix) * c).update(from: src + ix * c, count: c)
                        (dst + (2 * ix + 1) * c).update(from: src + ix * c, count: c)
                    }
                }
            }
        }
        return y
    }

    /// 2×2 average pooling, stride 2 (PyTorch `avg_pool2d(kernel_size: 2, stride: 2)`, floor):
    /// `[N, H, W, C] → [N, H/2, W/2, C]`.
    public static func avgPool2x(_ x: Tensor) -> Tensor {
        pool2x(x) { a, b, c, d in (a + b + c + d) * 0.25 }
    }

    /// 2×2 pooling with stride 2 (floor) by `window(top-left, top-right, bottom-left, bottom-right)`:
    /// `[N, H, W, C] → [N, H/2, W/2, C]`, rows split across threads.
    @inlinable
    public static func pool2x(_ x: Tensor, _ window: (Float, Float, Float, Float) -> Float) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let oh = h / 2, ow = w / 2
        let y = Tensor(uninitialized: [n, oh, ow, c])
        Parallel.forEachChunk(n * oh, minChunk: 8) { rows in
            for row in rows {
                let b = row / oh, oy = row % oh
                for ox in 0..<ow {
                    let d = y.data + ((b * oh + oy) * ow + ox) * c
                    let s0 = x.data + ((b * h + 2 * oy) * w + 2 * ox) * c
                    let s1 = s0 + w * c
                    for i in 0..<c { d[i] = window(s0[i], s0[c + i], s1[i], s1[c + i]) }
                }
            }
        }
        return y
    }

    /// Concatenates along channels: `[N, H, W, C1] ++ [N, H, W, C2] → [N, H, W, C1 + C2]`.
    public static func concatChannels(_ a: Tensor, _ b: Tensor) -> Tensor {
        precondition(Array(a.shape.dropLast()) == Array(b.shape.dropLast()), "concat: \(a.shape) vs \(b.shape)")
        let c1 = a.shape.last!, c2 = b.shape.last!
        let pixels = a.count / max(c1, 1)
        let y = Tensor(uninitialized: Array(a.shape.dropLast()) + [c1 + c2])
        Parallel.forEachChunk(pixels, minChunk: 256) { range in
            for p in range {
                (y.data + p * (c1 + c2)).update(from: a.data + p * c1, count: c1)
                (y.data + p * (c1 + c2) + c1).update(from: b.data + p * c2, count: c2)
            }
        }
        return y
    }

    /// Splits channels: `[N, H, W, C] → ([.., C1], [.., C − C1])`.
    public static func splitChannels(_ x: Tensor, at c1: Int) -> (Tensor, Tensor) {
        let c = x.shape.last!
        let pixels = x.count / c
        let a = Tensor(uninitialized: Array(x.shape.dropLast()) + [c1])
        let b = Tensor(uninitialized: Array(x.shape.dropLast()) + [c - c1])
        Parallel.forEachChunk(pixels, minChunk: 256) { range in
            for p in range {
                (a.data + p * c1).update(from: x.data + p * c, count: c1)
                (b.data + p * (c - c1)).update(from: x.data + p * c + c1, count: c - c1)
            }
        }
        return (a, b)
    }

    /// `a += b · scale` elementwise (same shapes).
    public static func addInPlace(_ a: Tensor, _ b: Tensor, scale: Float = 1) {
        precondition(a.shape == b.shape, "add: \(a.shape) vs \(b.shape)")
        chunked(a.count) { lo, n in ptqd_add_scaled(a.data + lo, a.data + lo, b.data + lo, n, scale) }
    }

    /// `x *= s` elementwise.
    public static func scaleInPlace(_ x: Tensor, _ s: Float) {
        chunked(x.count) { lo, n in ptqd_scale(x.data + lo, n, s) }
    }

    /// `(a + b) / divisor` into a new tensor (the ResNet/attention residual).
    public static func residual(_ a: Tensor, _ b: Tensor, divisor: Float) -> Tensor {
        precondition(a.shape == b.shape, "residual: \(a.shape) vs \(b.shape)")
        let y = Tensor(uninitialized: a.shape)
        chunked(a.count) { lo, n in ptqd_residual(y.data + lo, a.data + lo, b.data + lo, n, divisor) }
        return y
    }

    /// The ResNet "scale_shift" time conditioning, in place, then optionally SiLU:
    /// `x[n, p, c] = x·(1 + t[n, c]) + t[n, C + c]`.
    /// - x: `[N, H, W, C]`; t: `[N, 2C]` (scale half first, then shift).
    public static func scaleShiftInPlace(_ x: Tensor, _ t: Tensor, silu: Bool) {
        let n = x.shape[0], c = x.shape.last!, hw = x.count / (n * c)
        precondition(t.shape == [n, 2 * c], "scale-shift expects t of [\(n), \(2 * c)], got \(t.shape)")
        Parallel.forEachChunk(n) { range in
            let scale = UnsafeMutablePointer<Float>.allocate(capacity: 2 * c)
            defer { scale.deallocate() }
            let shift = scale + c
            for b in range {
                for i in 0..<c { scale[i] = 1 + t.data[b * 2 * c + i]; shift[i] = t.data[b * 2 * c + c + i] }
                let base = x.data + b * hw * c
                ptqd_channel_affine(base, base, hw, c, scale, shift, silu ? 1 : 0)
            }
        }
    }

    /// Calls `body(offset, count)` on contiguous pieces of `0..<count` floats, split across threads in
    /// whole 16-float blocks.
    @inline(__always)
    static func chunked(_ count: Int, _ body: (Int, Int) -> Void) {
        let blocks = (count + 15) / 16
        Parallel.forEachChunk(blocks, minChunk: 2048) { r in
            let lo = r.lowerBound * 16, hi = min(r.upperBound * 16, count)
            if hi > lo { body(lo, hi - lo) }
        }
    }

    /// Sinusoidal timestep embedding, diffusers `get_timestep_embedding` in float32:
    /// `[N] → [N, dim]`, `freq_i = exp(−ln(maxPeriod)·i / (dim/2 − shift))`, `[sin, cos]` (or `[cos, sin]` if flipped).
    public static func timestepEmbedding(_ t: [Float], dim: Int, flipSinToCos: Bool, downscaleFreqShift: Float,
                                         scale: Float = 1, maxPeriod: Float = 10000) -> Tensor {
        let half = dim / 2
        let y = Tensor(shape: [t.count, dim])
        let c = Float(-Foundation.log(Double(maxPeriod)))
        var freqs = [Float](repeating: 0, count: half)
        for i in 0..<half {
            let e = (c * Float(i)) / (Float(half) - downscaleFreqShift)
            freqs[i] = Float(Foundation.exp(Double(e)))
        }
        for (n, tv) in t.enumerated() {
            for i in 0..<half {
                let arg = scale * (tv * freqs[i])
                let s = Float(Foundation.sin(Double(arg))), co = Float(Foundation.cos(Double(arg)))
                if flipSinToCos { y.data[n * dim + i] = co; y.data[n * dim + half + i] = s }
                else { y.data[n * dim + i] = s; y.data[n * dim + half + i] = co }
            }
        }
        return y
    }
}
