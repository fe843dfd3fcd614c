//===--- BF16Kernels.swift - bf16 convolution and linear on oneDNN ----------===//
//
// The "free" alternative a CPU user would pick over int8 on a CPU with AVX512-BF16 or AMX-BF16:
// weights stored as bfloat16, the fp32 input rounded to bfloat16 on entry (round to nearest even,
// CKernels), fp32 accumulation and fp32 output. `ptqd bench` times a whole UNet built from these
// next to fp32 and int8. Not a quantization scheme of the file format: nothing is calibrated.
//
//===----------------------------------------------------------------------===//

import CDNNL
import CKernels

extension DNNL {
    /// Whether oneDNN runs bf16 convolutions natively here (AVX512-BF16 or AMX-BF16).
    public static var hasBF16: Bool { isaLevel >= .avx512CoreBF16 }
}

/// `[count]` fp32 → bf16 bits, threaded.
func convertToBF16(_ x: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count: Int) {
    Parallel.forEachChunk(count, minChunk: 1 << 14) { r in ptqd_f32_to_bf16(x + r.lowerBound, dst + r.lowerBound, r.count) }
}

/// Rounds `x` to bf16 into a scratch buffer and runs `prim` (a bf16 conv or matmul, weights and bias bound) into fp32 `y`.
private func executeBF16(_ prim: DNNLPrimitive, src: DNNLMemory, weights: DNNLMemory, dst: DNNLMemory, bias: DNNLMemory?,
                         x: Tensor, y: Tensor) {
    let buf = UnsafeMutablePointer<UInt16>.allocate(capacity: x.count)
    defer { buf.deallocate() }
    convertToBF16(x.data, buf, count: x.count)
    src.setHandle(UnsafeMutableRawPointer(buf))
    dst.setHandle(UnsafeMutableRawPointer(y.data))
    var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: src.memory), dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: weights.memory),
                dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: dst.memory)]
    if let b = bias { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_BIAS, memory: b.memory)) }
    prim.execute(args)
}

/// bf16 × bf16 → fp32 convolution, NHWC. x: `[N, H, W, inChannels]` fp32; returns `[N, OH, OW, outChannels]` fp32.
public final class BF16Conv2D: @unchecked Sendable {
    public let geometry: Conv2DGeometry
    private let weights: [Float]
    private let bias: AlignedBuffer?
    private struct Key: Hashable { let n: Int, h: Int, w: Int }
    private struct Plan { let prim: DNNLPrimitive; let src, wei, dst: DNNLMemory; let bias: DNNLMemory?; let weightBuffer: AlignedBuffer }
    private var plans: [Key: Plan] = [:]

    public init(geometry: Conv2DGeometry, weights: [Float], bias: [Float]?) {
        precondition(weights.count == geometry.weightCount, "bf16 conv weights: \(weights.count) values for \(geometry)")
        self.geometry = geometry; self.weights = weights; self.bias = bias.map(alignedCopy)
    }

    public func forward(_ x: Tensor) -> Tensor {
        let g = geometry
        precondition(x.shape.count == 4 && x.shape[3] == g.inChannels, "bf16 conv expects [N,H,W,\(g.inChannels)], got \(x.shape)")
        let key = Key(n: x.shape[0], h: x.shape[1], w: x.shape[2])
        let plan = plans[key] ?? makePlan(key)
        let y = Tensor(uninitialized: [key.n, g.outHeight(key.h), g.outWidth(key.w), g.outChannels])
        executeBF16(plan.prim, src: plan.src, weights: plan.wei, dst: plan.dst, bias: plan.bias, x: x, y: y)
        return y
    }

    private func makePlan(_ key: Key) -> Plan {
        let g = geometry
        let oh = g.outHeight(key.h), ow = g.outWidth(key.w)
        var src = dnnlMD([key.n, g.inChannels, key.h, key.w], dnnl_bf16, tag: dnnl_nhwc)
        var wAny = dnnlMD([g.outChannels, g.inChannels, g.kernelH, g.kernelW], dnnl_bf16, tag: dnnl_format_tag_any)
        var dst = dnnlMD([key.n, g.outChannels, oh, ow], dnnl_f32, tag: dnnl_nhwc)
        var biasMD = dnnlMD([g.outChannels], dnnl_f32, tag: dnnl_a)
        var cd = dnnl_convolution_desc_t()
        let strides: [Int64] = [Int64(g.stride), Int64(g.stride)]
        let padL: [Int64] = [Int64(g.padTop), Int64(g.padLeft)], padR: [Int64] = [Int64(g.padBottom), Int64(g.padRight)]
        dnnlCheck(withUnsafePointer(to: &biasMD) { bp in
            dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, &wAny,
                                               bias == nil ? nil : bp, &dst, strides, padL, padR)
        }, "bf16 conv desc \(g)")
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &cd, nil, DNNL.shared.engine, nil), "bf16 conv primitive_desc_create \(g)")
        let prim = DNNLPrimitive(desc: pd!)
        var wmd = prim.queryMD(dnnl_query_weights_md)
        let user = dnnlMD([g.outChannels, g.inChannels, g.kernelH, g.kernelW], dnnl_f32, tag: dnnl_oihw)
        let wbuf = weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: wmd) }  // f32 → bf16 in oneDNN's layout
        let plan = Plan(prim: prim, src: DNNLMemory(&src, handle: nil), wei: DNNLMemory(&wmd, handle: wbuf.pointer),
                        dst: DNNLMemory(&dst, handle: nil), bias: bias.map { DNNLMemory(&biasMD, handle: $0.pointer) }, weightBuffer: wbuf)
        plans[key] = plan
        return plan
    }
}

/// bf16 × bf16 → fp32 fully connected layer. x: `[..., inFeatures]` fp32; weights `[outFeatures, inFeatures]`.
public final class BF16Linear: @unchecked Sendable {
    public let inFeatures: Int, outFeatures: Int
    private let weights: [Float]
    private let bias: AlignedBuffer?
    private struct Plan { let prim: DNNLPrimitive; let src, wei, dst: DNNLMemory; let bias: DNNLMemory?; let weightBuffer: AlignedBuffer }
    private var plans: [Int: Plan] = [:]

    public init(inFeatures: Int, outFeatures: Int, weights: [Float], bias: [Float]?) {
        precondition(weights.count == inFeatures * outFeatures, "bf16 linear weights")
        self.inFeatures = inFeatures; self.outFeatures = outFeatures; self.weights = weights; self.bias = bias.map(alignedCopy)
    }

    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.shape.last == inFeatures, "bf16 linear expects last dim \(inFeatures), got \(x.shape)")
        let m = x.count / inFeatures
        let plan = plans[m] ?? makePlan(m)
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outFeatures])
        executeBF16(plan.prim, src: plan.src, weights: plan.wei, dst: plan.dst, bias: plan.bias, x: x, y: y)
        return y
    }

    private func makePlan(_ m: Int) -> Plan {
        var src = dnnlMD([m, inFeatures], dnnl_bf16, tag: dnnl_ab)
        var wAny = dnnlMD([inFeatures, outFeatures], dnnl_bf16, tag: dnnl_format_tag_any)
        var dst = dnnlMD([m, outFeatures], dnnl_f32, tag: dnnl_ab)
        var biasMD = dnnlMD([1, outFeatures], dnnl_f32, tag: dnnl_ab)
        var md = dnnl_matmul_desc_t()
        dnnlCheck(withUnsafePointer(to: &biasMD) { bp in dnnl_matmul_desc_init(&md, &src, &wAny, bias == nil ? nil : bp, &dst) }, "bf16 matmul desc")
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &md, nil, DNNL.shared.engine, nil), "bf16 matmul primitive_desc_create")
        let prim = DNNLPrimitive(desc: pd!)
        var wmd = prim.queryMD(dnnl_query_weights_md)
        let user = dnnlMD([inFeatures, outFeatures], dnnl_f32, tag: dnnl_ba)
        let wbuf = weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: wmd) }
        let plan = Plan(prim: prim, src: DNNLMemory(&src, handle: nil), wei: DNNLMemory(&wmd, handle: wbuf.pointer),
                        dst: DNNLMemory(&dst, handle: nil), bias: bias.map { DNNLMemory(&biasMD, handle: $0.pointer) }, weightBuffer: wbuf)
        plans[m] = plan
        return plan
    }
}

/// Plain reference of bfloat16 rounding (round to nearest even on the bit pattern), for tests.
public func referenceBF16(_ x: Float) -> Float {
    if x.isNaN { return x }
    let b = x.bitPattern
    let r = (b &+ 0x7fff &+ ((b >> 16) & 1)) & 0xffff_0000
    return Float(bitPattern: r)
}
