//===--- Blocks.swift - diffusers UNet2D building blocks over NHWC ---------===//
//
// Each block mirrors the diffusers 0.27.2 module of the same name (parameter names included)
// at inference: dropout is the identity. Shapes: x `[N, H, W, C]`, temb `[N, timeEmbedDim]`.
//
//===----------------------------------------------------------------------===//

import TensorCore

/// `ResnetBlock2D`: GN→SiLU→(resample)→conv1→(+temb)→GN→SiLU→conv2, plus (1×1) shortcut, / outputScale.
final class ResnetBlock {
    let norm1: GroupNormParams, norm2: GroupNormParams
    let conv1: WeightLayer, conv2: WeightLayer
    /// nil in blocks without a time embedding (autoencoder decoders).
    let timeProj: WeightLayer?
    let shortcut: WeightLayer?
    let scaleShift: Bool
    let resample: Resample
    let outputScale: Float
    enum Resample { case none, up, down }

    init(_ s: WeightStore, _ p: String, in cin: Int, out cout: Int, tembChannels: Int?, groups: Int, eps: Float,
         scaleShift: Bool, outputScale: Float, resample: Resample = .none, inputSplit: Int? = nil) throws {
        norm1 = try s.groupNorm("\(p).norm1", channels: cin, groups: groups, eps: eps)
        conv1 = try s.conv("\(p).conv1", role: .conv, .k3(cin, cout), inputSplit: inputSplit)
        timeProj = try tembChannels.map { try s.linear("\(p).time_emb_proj", role: .timeProjection, in: $0, out: scaleShift ? 2 * cout : cout) }
        norm2 = try s.groupNorm("\(p).norm2", channels: cout, groups: groups, eps: eps)
        conv2 = try s.conv("\(p).conv2", role: .conv, .k3(cout, cout))
        shortcut = cin != cout ? try s.conv("\(p).conv_shortcut", role: .shortcut, .k1(cin, cout), inputSplit: inputSplit) : nil
        self.scaleShift = scaleShift
        self.outputScale = outputScale
        self.resample = resample
    }

    var layers: [WeightLayer] { [conv1] + (timeProj.map { [$0] } ?? []) + [conv2] + (shortcut.map { [$0] } ?? []) }

    /// - x: `[N, H, W, Cin]`; tembSiLU: `SiLU(temb)` `[N, tembChannels]` (nil for blocks without a time embedding).
    /// GroupNorm+SiLU reach conv1 and conv2 as a ``ChannelAffine``: an integer conv applies it while quantizing its
    /// input (no normalized fp32 tensor is written), an fp32 conv materializes it (same values either way).
    func callAsFunction(_ x0: Tensor, tembSiLU: Tensor?) -> Tensor { run(x0, skip: nil, tembSiLU: tembSiLU) }

    /// The block on the channel concatenation `[x, skip]` (an up block's input). When conv1 and the shortcut both read
    /// a concatenation from its parts (integer layers with skip-concat quantizers split at C(x)), it is never written:
    /// GroupNorm sums each part's channels, conv1 and the shortcut quantize each part where it lies. Same bits.
    func callAsFunction(_ x: Tensor, concatenating skip: Tensor, tembSiLU: Tensor?) -> Tensor {
        let split = x.shape.last!
        if resample == .none, let shortcut, conv1.kernel.readsConcatenation(split: split),
           shortcut.kernel.readsConcatenation(split: split) {
            return run(x, skip: skip, tembSiLU: tembSiLU)
        }
        return run(Ops.concatChannels(x, skip), skip: nil, tembSiLU: tembSiLU)
    }

    /// - skip: given only when conv1 and the shortcut read concatenations from their parts (resample none).
    private func run(_ x0: Tensor, skip concatenated: Tensor?, tembSiLU: Tensor?) -> Tensor {
        var x = x0
        let a1 = norm1.affine(x, concatenating: concatenated, silu: true)
        var h: Tensor
        switch resample {
        case .none: h = conv1(a1)
        case .up:
            x = Ops.upsampleNearest2x(x)
            // Nearest upsampling commutes with the per-channel map: upsample the source when conv1 fuses the map.
            h = conv1.kernel.fusesChannelAffine ? conv1(a1.upsampledNearest2x()) : conv1(Ops.upsampleNearest2x(a1.materialize()))
        case .down: x = Ops.avgPool2x(x); h = conv1(Ops.avgPool2x(a1.materialize()))
        }
        let skip: Tensor
        if let shortcut {
            skip = concatenated.map { shortcut.kernel.forward(x, concatenatedWith: $0) } ?? shortcut(x)
        } else {
            skip = x
        }
        // With output_scale_factor 1 the skip is added in conv2's output pass (same bits as the residual pass).
        let fuse = outputScale == 1
        let out: Tensor
        if let timeProj, let tembSiLU {
            let t = timeProj(tembSiLU)
            if scaleShift {
                h = norm2(h)
                Ops.scaleShiftInPlace(h, t, silu: true)
                out = fuse ? conv2(h, plus: skip) : conv2(h)
            } else {
                let a2 = norm2.affine(h, preAdd: t, silu: true)
                out = fuse ? conv2(a2, plus: skip) : conv2(a2)
            }
        } else {
            let a2 = norm2.affine(h, silu: true)
            out = fuse ? conv2(a2, plus: skip) : conv2(a2)
        }
        return fuse ? out : Ops.residual(skip, out, divisor: outputScale)
    }
}

/// diffusers `Attention` as used by UNet2D (`_from_deprecated_attn_block`): GroupNorm → q,k,v →
/// softmax(q·kᵀ·d^-½)·v per head → out projection → + residual → / rescale.
final class AttentionBlock {
    let norm: GroupNormParams?
    let toQ: WeightLayer, toK: WeightLayer, toV: WeightLayer, toOut: WeightLayer
    let heads: Int, headDim: Int
    let rescale: Float
    /// softmax(q·kᵀ·d^-½)·v per head, in query chunks (shared with the cross-attention UNet).
    let attention: MultiHeadAttention

    init(_ s: WeightStore, _ p: String, channels c: Int, headDim: Int?, groups: Int?, eps: Float, rescale: Float) throws {
        let d = headDim ?? c
        heads = max(c / d, 1)
        self.headDim = d
        let inner = heads * d
        norm = try groups.map { try s.groupNorm("\(p).group_norm", channels: c, groups: $0, eps: eps) }
        toQ = try s.linear("\(p).to_q", role: .attentionProjection, in: c, out: inner)
        toK = try s.linear("\(p).to_k", role: .attentionProjection, in: c, out: inner)
        toV = try s.linear("\(p).to_v", role: .attentionProjection, in: c, out: inner)
        toOut = try s.linear("\(p).to_out.0", role: .attentionProjection, in: inner, out: c)
        self.rescale = rescale
        attention = MultiHeadAttention(name: p, heads: heads, headDim: d)
    }

    var layers: [WeightLayer] { [toQ, toK, toV, toOut] }

    func callAsFunction(_ x: Tensor) -> Tensor {
        let (n, hh, ww) = (x.shape[0], x.shape[1], x.shape[2])
        let t = hh * ww
        let q: Tensor, k: Tensor, v: Tensor                         // [N, H, W, inner] = [N, T, inner]
        if let norm, [toQ, toK, toV].allSatisfy({ $0.kernel.fusesChannelAffine }) {
            let a = norm.affine(x)  // each integer projection normalizes while it quantizes
            (q, k, v) = (toQ(a), toK(a), toV(a))
        } else {
            let h = norm.map { $0(x) } ?? x
            (q, k, v) = (toQ(h), toK(h), toV(h))
        }
        let o = attention(q: q, k: k, v: v, batch: n, queries: t, keys: t)
        let projected = o.reshaped([n, hh, ww, heads * headDim])
        return rescale == 1 ? toOut(projected, plus: x) : Ops.residual(toOut(projected), x, divisor: rescale)
    }
}

/// `Downsample2D` (conv, stride 2; padding 0 pads bottom/right by one) or, without a conv, 2×2 average pooling.
final class Downsample {
    let conv: WeightLayer
    init(_ s: WeightStore, _ p: String, channels c: Int, padding: Int) throws {
        let g = Conv2DGeometry(inChannels: c, outChannels: c, kernelH: 3, kernelW: 3, stride: 2,
                               padTop: padding, padLeft: padding, padBottom: padding == 0 ? 1 : padding,
                               padRight: padding == 0 ? 1 : padding)
        conv = try s.conv("\(p).conv", role: .conv, .init(geometry: g))
    }
    func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
}

/// `Upsample2D` with a conv: nearest ×2, then 3×3 conv.
final class Upsample {
    let conv: WeightLayer
    init(_ s: WeightStore, _ p: String, channels c: Int) throws {
        conv = try s.conv("\(p).conv", role: .conv, .k3(c, c))
    }
    func callAsFunction(_ x: Tensor) -> Tensor { conv.upsampledNearest2x(x) }
}
