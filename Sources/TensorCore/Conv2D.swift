//===--- Conv2D.swift - fp32 NHWC convolution on oneDNN --------------------===//

import CDNNL

/// Geometry of a 2-D convolution (PyTorch semantics), independent of data type.
public struct Conv2DGeometry: Equatable, Sendable, Codable {
    public var inChannels: Int
    public var outChannels: Int
    public var kernelH: Int
    public var kernelW: Int
    public var stride: Int
    /// Zero padding in pixels: top, left, bottom, right (bottom/right may differ, e.g. diffusers'
    /// `Downsample2D(padding: 0)` pads (0, 1) on each axis).
    public var padTop: Int, padLeft: Int, padBottom: Int, padRight: Int

    public init(inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0) {
        self.init(inChannels: inChannels, outChannels: outChannels, kernelH: kernel, kernelW: kernel, stride: stride,
                  padTop: padding, padLeft: padding, padBottom: padding, padRight: padding)
    }

    public init(inChannels: Int, outChannels: Int, kernelH: Int, kernelW: Int, stride: Int,
                padTop: Int, padLeft: Int, padBottom: Int, padRight: Int) {
        self.inChannels = inChannels; self.outChannels = outChannels
        self.kernelH = kernelH; self.kernelW = kernelW; self.stride = stride
        self.padTop = padTop; self.padLeft = padLeft; self.padBottom = padBottom; self.padRight = padRight
    }

    /// Output height for input height `h`.
    public func outHeight(_ h: Int) -> Int { (h + padTop + padBottom - kernelH) / stride + 1 }
    /// Output width for input width `w`.
    public func outWidth(_ w: Int) -> Int { (w + padLeft + padRight - kernelW) / stride + 1 }
    /// Weight element count, `[O, I, KH, KW]`.
    public var weightCount: Int { outChannels * inChannels * kernelH * kernelW }
    /// Multiply-accumulates for one image of input size `h × w` (padded taps counted).
    public func macs(h: Int, w: Int) -> Int { outHeight(h) * outWidth(w) * outChannels * inChannels * kernelH * kernelW }
}

/// fp32 convolution: `y = conv(x, W) + b`.
///
/// - `x`: `[N, H, W, inChannels]` fp32 NHWC.
/// - weights: `[outChannels, inChannels, KH, KW]` (PyTorch OIHW), reordered once per layout.
/// - returns `[N, OH, OW, outChannels]`.
/// One oneDNN primitive per input shape, created on first use and cached.
public final class FloatConv2D: @unchecked Sendable {
    public let geometry: Conv2DGeometry
    /// The original OIHW weights and bias (kept for quantization and reference checks).
    public let weights: [Float]
    public let bias: [Float]?

    private struct Key: Hashable { let n: Int, h: Int, w: Int }
    private struct Plan { let prim: DNNLPrimitive; let weights: AlignedBuffer; let src, wei, dst: DNNLMemory; let bias: DNNLMemory? }
    private var plans: [Key: Plan] = [:]
    private var reordered: [(dnnl_memory_desc_t, AlignedBuffer)] = []

    public init(geometry: Conv2DGeometry, weights: [Float], bias: [Float]?) {
        precondition(weights.count == geometry.weightCount, "conv weights: \(weights.count) values for \(geometry)")
        precondition(bias == nil || bias!.count == geometry.outChannels, "conv bias size")
        self.geometry = geometry
        self.weights = weights
        self.bias = bias
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.shape.count == 4 && x.shape[3] == geometry.inChannels,
                     "conv expects [N,H,W,\(geometry.inChannels)], got \(x.shape)")
        let key = Key(n: x.shape[0], h: x.shape[1], w: x.shape[2])
        let plan = plans[key] ?? makePlan(key)
        let y = Tensor(uninitialized: [key.n, geometry.outHeight(key.h), geometry.outWidth(key.w), geometry.outChannels])
        plan.prim.executeWeightLayer(src: plan.src, x.data, weights: plan.wei, dst: plan.dst, y.data, bias: plan.bias)
        return y
    }

    private lazy var biasBuffer: AlignedBuffer? = bias.map(alignedCopy)

    private func makePlan(_ key: Key) -> Plan {
        let g = geometry
        let oh = g.outHeight(key.h), ow = g.outWidth(key.w)
        precondition(oh > 0 && ow > 0, "conv output would be empty for input \(key.h)x\(key.w) and \(g)")
        var src = dnnlMD([key.n, g.inChannels, key.h, key.w], dnnl_f32, tag: dnnl_nhwc)
        var wAny = dnnlMD([g.outChannels, g.inChannels, g.kernelH, g.kernelW], dnnl_f32, tag: dnnl_format_tag_any)
        var dst = dnnlMD([key.n, g.outChannels, oh, ow], dnnl_f32, tag: dnnl_nhwc)
        var biasMD = dnnlMD([g.outChannels], dnnl_f32, tag: dnnl_a)
        var cd = dnnl_convolution_desc_t()
        let strides: [Int64] = [Int64(g.stride), Int64(g.stride)]
        let padL: [Int64] = [Int64(g.padTop), Int64(g.padLeft)]
        let padR: [Int64] = [Int64(g.padBottom), Int64(g.padRight)]
        dnnlCheck(withUnsafePointer(to: &biasMD) { bp in
            dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, &wAny,
                                               bias == nil ? nil : bp, &dst, strides, padL, padR)
        }, "dnnl_convolution_forward_desc_init \(g)")
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &cd, nil, DNNL.shared.engine, nil), "conv primitive_desc_create \(g)")
        let prim = DNNLPrimitive(desc: pd!)
        var wmd = prim.queryMD(dnnl_query_weights_md)
        let wbuf = reorderedWeights(wmd)
        let srcMem = DNNLMemory(&src, handle: nil)
        let dstMem = DNNLMemory(&dst, handle: nil)
        let weiMem = DNNLMemory(&wmd, handle: wbuf.pointer)
        var biasMem: DNNLMemory? = nil
        if let b = biasBuffer { biasMem = DNNLMemory(&biasMD, handle: b.pointer) }
        let plan = Plan(prim: prim, weights: wbuf, src: srcMem, wei: weiMem, dst: dstMem, bias: biasMem)
        plans[key] = plan
        return plan
    }

    private func reorderedWeights(_ md: dnnl_memory_desc_t) -> AlignedBuffer {
        if let hit = reordered.first(where: { dnnlEqual($0.0, md) }) { return hit.1 }
        let g = geometry
        let user = dnnlMD([g.outChannels, g.inChannels, g.kernelH, g.kernelW], dnnl_f32, tag: dnnl_oihw)
        let buf = weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: md) }
        reordered.append((md, buf))
        return buf
    }
}

/// Plain reference convolution (NHWC in/out, OIHW weights): the check for `FloatConv2D`.
public func referenceConv2D(_ x: Tensor, geometry g: Conv2DGeometry, weights: [Float], bias: [Float]?) -> Tensor {
    let (n, h, w) = (x.shape[0], x.shape[1], x.shape[2])
    let oh = g.outHeight(h), ow = g.outWidth(w)
    let y = Tensor(shape: [n, oh, ow, g.outChannels])
    for b in 0..<n { for oy in 0..<oh { for ox in 0..<ow { for o in 0..<g.outChannels {
        var acc = Double(bias?[o] ?? 0)
        for ky in 0..<g.kernelH {
            let iy = oy * g.stride - g.padTop + ky
            if iy < 0 || iy >= h { continue }
            for kx in 0..<g.kernelW {
                let ix = ox * g.stride - g.padLeft + kx
                if ix < 0 || ix >= w { continue }
                let xb = ((b * h + iy) * w + ix) * g.inChannels
                for i in 0..<g.inChannels {
                    acc += Double(x.data[xb + i]) * Double(weights[((o * g.inChannels + i) * g.kernelH + ky) * g.kernelW + kx])
                }
            }
        }
        y.data[((b * oh + oy) * ow + ox) * g.outChannels + o] = Float(acc)
    } } } }
    return y
}
