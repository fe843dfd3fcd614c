//===--- Int8Kernels.swift - u8 × s8 convolution and linear on oneDNN ------===//
//
// Real integer execution of a quantized weight layer:
//   y[o] = Σ_parts s_a,p · s_w[o] · Σ_k (q_x,p − z_p) · q_w[o, k]  + bias[o]
// with u8 activations (per-tensor scale and zero point), s8 weights (per-output-channel scale),
// int32 accumulation inside oneDNN and fp32 output.
//
// Exactness details:
// * Zero points are folded into the bias: Σ (q_x − z)·q_w = Σ q_x·q_w − z·Σ q_w. Conv padding
//   must then contribute q_x = z (the integer that means 0), so the kernel writes the quantized
//   input into a buffer pre-padded with z and runs the convolution without padding.
// * oneDNN 2.6's int8 kernels on CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply with
//   vpmaddubsw, which saturates the sum of two u8·s8 products at 16 bits. That is exact only when
//   |q_w| ≤ 64. Parts whose weights exceed that (8-bit weights) are run as q_w = hi + lo with
//   |hi|, |lo| ≤ 64: the input is written twice along channels and the weights are [hi | lo], so the
//   int32 sum is exact at twice the integer work. VNNI CPUs run the weights as they are.
// * Skip-concatenation inputs ("shortcut splitting") have one quantizer per channel range; each
//   part is its own u8 × s8 primitive and the second accumulates into the first's output (sum post-op).
// * A residual added to the output (`forward(_:plus:)`: the ResNet/attention skip) is a binary-add post-op of
//   the last part: the sum y + r is rounded once, as the separate `Ops.residual` pass rounds it, so the bits are
//   the same and the fp32 output is written once instead of written, read back and written again.
//
//===----------------------------------------------------------------------===//

import CDNNL

extension DNNL {
    /// Whether oneDNN's int8 kernels use VNNI (exact u8·s8 products for any s8 weight).
    public static var hasVNNI: Bool { isaLevel.rawValue & 0x40 != 0 || isaLevel.rawValue & 0x400 != 0 }
}

/// One input part of an integer layer: a channel range, its quantizer and its integer weights.
struct IntegerPart {
    let channels: Range<Int>
    let quant: ActivationQuantization
    /// Weights of this part as run by oneDNN: `[O, K']` in OIHW order with K' = (1 or 2)·|channels|·KH·KW.
    let weights: [Int8]
    /// Whether the input is duplicated along channels (hi/lo weight split).
    let duplicated: Bool
    /// Per-output bias in accumulator units (zero-point fold plus, for part 0, the layer bias).
    let accBias: [Float]
    /// Output scales `s_a · s_w[o]`.
    let outputScales: [Float]

    /// - q: full `[O, Cin, KH, KW]` (or `[O, Cin]`) integer weights; taps = KH·KW.
    init(channels: Range<Int>, quant: ActivationQuantization, q: [Int8], outputs: Int, inputs: Int, taps: Int,
         weightScales: [Float], bias: [Float]?, forceSplit: Bool?) {
        self.channels = channels
        self.quant = quant
        let cp = channels.count
        var slice = [Int8](repeating: 0, count: outputs * cp * taps)
        for o in 0..<outputs {
            for (j, c) in channels.enumerated() {
                for t in 0..<taps { slice[(o * cp + j) * taps + t] = q[(o * inputs + c) * taps + t] }
            }
        }
        let maxAbs = slice.reduce(0) { max($0, abs(Int($1))) }
        duplicated = forceSplit ?? (!DNNL.hasVNNI && maxAbs > 64)
        if duplicated {
            var w = [Int8](repeating: 0, count: outputs * 2 * cp * taps)
            for o in 0..<outputs {
                for k in 0..<(cp * taps) {
                    let v = Int(slice[o * cp * taps + k])
                    let hi = v / 2  // truncates toward zero: |hi| ≤ 64, |v − hi| ≤ 64
                    w[o * 2 * cp * taps + k] = Int8(hi)
                    w[o * 2 * cp * taps + cp * taps + k] = Int8(v - hi)
                }
            }
            weights = w
        } else {
            weights = slice
        }
        var acc = [Float](repeating: 0, count: outputs)
        var scales = [Float](repeating: 0, count: outputs)
        for o in 0..<outputs {
            var colsum = 0
            for k in 0..<(cp * taps) { colsum += Int(slice[o * cp * taps + k]) }
            scales[o] = quant.scale * weightScales[o]
            acc[o] = -Float(Int(quant.zeroPoint) * colsum) + (bias.map { $0[o] / scales[o] } ?? 0)
        }
        accBias = acc
        outputScales = scales
    }

    /// Input channels as run (doubled when duplicated).
    var runChannels: Int { channels.count * (duplicated ? 2 : 1) }
}

/// Builds the oneDNN attribute: per-output-channel output scales (mask on dim 1), then optionally a sum post-op
/// (accumulate into the destination) and a binary add of a tensor shaped like the destination (`residual`).
private func int8Attr(scales: [Float], accumulate: Bool, residual: dnnl_memory_desc_t?) -> dnnl_primitive_attr_t {
    var attr: dnnl_primitive_attr_t? = nil
    dnnlCheck(dnnl_primitive_attr_create(&attr), "dnnl_primitive_attr_create")
    dnnlCheck(dnnl_primitive_attr_set_output_scales(attr, Int64(scales.count), 1 << 1, scales), "set_output_scales")
    if accumulate || residual != nil {
        var po: dnnl_post_ops_t? = nil
        dnnlCheck(dnnl_post_ops_create(&po), "dnnl_post_ops_create")
        if accumulate { dnnlCheck(dnnl_post_ops_append_sum(po, 1.0), "dnnl_post_ops_append_sum") }
        if var r = residual { dnnlCheck(dnnl_post_ops_append_binary(po, dnnl_binary_add, &r), "dnnl_post_ops_append_binary") }
        dnnlCheck(dnnl_primitive_attr_set_post_ops(attr, po), "dnnl_primitive_attr_set_post_ops")
        dnnl_post_ops_destroy(po)
    }
    return attr!
}

/// The execution argument of the binary post-op at index `postOp` (DNNL_ARG_ATTR_MULTIPLE_POST_OP(i) | SRC_1).
private func binaryPostOpArg(_ postOp: Int) -> Int32 { Int32(16384 * (postOp + 1)) | DNNL_ARG_SRC_1 }

/// Runs an integer layer's primitive: the u8 input `x` and the fp32 output `y` bound to `src` / `dst`, weights and
/// bias already bound; `residual` = (its memory, the tensor, the binary post-op's index) when the plan adds one.
private func executeInt8(_ prim: DNNLPrimitive, src: DNNLMemory, _ x: UnsafeMutableRawPointer, weights: DNNLMemory,
                         bias: DNNLMemory, dst: DNNLMemory, _ y: UnsafeMutablePointer<Float>,
                         residual: (DNNLMemory, Tensor, Int)?) {
    src.setHandle(x)
    dst.setHandle(UnsafeMutableRawPointer(y))
    var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: src.memory),
                dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: weights.memory),
                dnnl_exec_arg_t(arg: DNNL_ARG_BIAS, memory: bias.memory),
                dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: dst.memory)]
    if let (memory, r, postOp) = residual {
        memory.setHandle(UnsafeMutableRawPointer(r.data))
        args.append(dnnl_exec_arg_t(arg: binaryPostOpArg(postOp), memory: memory.memory))
    }
    prim.execute(args)
}


/// Integer convolution: u8 activations × s8 weights → fp32, NHWC.
///
/// - input `x`: `[N, H, W, inChannels]` fp32; quantized on entry with each part's quantizer.
/// - weights: `[outChannels, inChannels, KH, KW]` integers with per-output-channel `weightScales`.
/// - returns `[N, OH, OW, outChannels]` fp32.
public final class Int8Conv2D: @unchecked Sendable {
    public let geometry: Conv2DGeometry
    let parts: [IntegerPart]

    private struct Key: Hashable { let n: Int, h: Int, w: Int, residual: Bool }
    /// `res`: the binary post-op's source (the residual) when the plan adds one (last part only).
    private struct PartPlan { let prim: DNNLPrimitive; let src, wei, dst, bias: DNNLMemory; let res: DNNLMemory?; let weights, biasBuf: AlignedBuffer }
    private var plans: [Key: [PartPlan]] = [:]

    /// - Parameters:
    ///   - inputs: one quantizer per input part; `split` = channels of the first part (skip concatenation).
    ///   - forceDuplicate: override the hi/lo decision (tests); nil = exact for this CPU.
    public init(geometry: Conv2DGeometry, weights q: [Int8], weightScales: [Float], bias: [Float]?,
                inputs: [ActivationQuantization], split: Int?, forceDuplicate: Bool? = nil) {
        precondition(q.count == geometry.weightCount, "int8 conv weights: \(q.count) values for \(geometry)")
        precondition(weightScales.count == geometry.outChannels, "int8 conv: \(weightScales.count) weight scales")
        let ranges: [Range<Int>] = split.map { [0..<$0, $0..<geometry.inChannels] } ?? [0..<geometry.inChannels]
        precondition(ranges.count == inputs.count, "int8 conv: \(inputs.count) quantizers for \(ranges.count) input parts")
        self.geometry = geometry
        let taps = geometry.kernelH * geometry.kernelW
        parts = zip(ranges, inputs).enumerated().map { i, p in
            IntegerPart(channels: p.0, quant: p.1, q: q, outputs: geometry.outChannels, inputs: geometry.inChannels,
                        taps: taps, weightScales: weightScales, bias: i == 0 ? bias : nil, forceSplit: forceDuplicate)
        }
    }

    /// Whether any part runs with hi/lo duplicated weights (2× integer work).
    public var usesDuplicatedWeights: Bool { parts.contains { $0.duplicated } }

    public func forward(_ x: Tensor) -> Tensor { run(x, affine: nil, upsample: false, residual: nil) }

    /// The convolution of the channel concatenation `[a, b]`, each part read where it lies (no concatenated tensor
    /// is written): the same bytes as `forward(Ops.concatChannels(a, b))`. Needs `readsConcatenation(split: C(a))`.
    public func forward(_ a: Tensor, concatenatedWith b: Tensor) -> Tensor {
        run(a, affine: nil, upsample: false, residual: nil, second: b)
    }

    /// Whether the layer can read a concatenation `[a, b]` with `split` channels in `a` from its two parts: its two
    /// input parts (skip-concat quantizers) split exactly there.
    public func readsConcatenation(split: Int) -> Bool { parts.count == 2 && parts[0].channels == 0..<split }

    /// `forward(x) + r` (r: the output's `N·OH·OW·outChannels` values, NHWC), the add fused into the convolution's output
    /// pass; the same bits as `Ops.residual(forward(x), r, divisor: 1)`.
    public func forward(_ x: Tensor, plus r: Tensor) -> Tensor { run(x, affine: nil, upsample: false, residual: r) }

    /// `forward(x) + r` for a normalized activation (see `forward(_: ChannelAffine)`), the add fused as above.
    public func forward(_ x: ChannelAffine, plus r: Tensor) -> Tensor {
        run(x.source, affine: x, upsample: false, residual: r, second: x.skip)
    }

    /// The convolution of `x` upsampled ×2 (nearest), read from `x` while writing the padded u8 input: the same
    /// result as `forward(Ops.upsampleNearest2x(x))` without writing the 4× larger fp32 tensor.
    /// - x: `[N, H, W, inChannels]`; returns `[N, OH(2H), OW(2W), outChannels]`.
    public func forwardUpsampledNearest2x(_ x: Tensor) -> Tensor { run(x, affine: nil, upsample: true, residual: nil) }

    /// The convolution of a normalized activation: GroupNorm's affine (+ SiLU) is applied while writing the padded
    /// u8 input, so the normalized fp32 tensor is never written. Same result as `forward(x.materialize())`, bit for bit.
    public func forward(_ x: ChannelAffine) -> Tensor { run(x.source, affine: x, upsample: false, residual: nil, second: x.skip) }

    public var fusesChannelAffine: Bool { true }

    /// - affine: when given, `x` is its source and each value is mapped (per sample and channel) before quantizing.
    /// - upsample: the input is `x` upsampled ×2 (nearest): input pixel (iy, ix) reads x at (iy/2, ix/2).
    /// - residual: added to the output by the last part's binary post-op.
    /// - second: the input is the channel concatenation `[x, second]`; part 1 reads `second`.
    private func run(_ x: Tensor, affine: ChannelAffine?, upsample: Bool, residual: Tensor?, second: Tensor? = nil) -> Tensor {
        let g = geometry
        let c1 = x.shape.last ?? 0, c2 = second?.shape.last ?? 0
        precondition(x.shape.count == 4 && c1 + c2 == g.inChannels, "int8 conv expects [N,H,W,\(g.inChannels)], got \(x.shape)")
        if let second {
            precondition(Array(second.shape.dropLast()) == Array(x.shape.dropLast()), "int8 conv: concatenated parts \(x.shape) and \(second.shape)")
            precondition(readsConcatenation(split: c1), "int8 conv: its input parts do not split at channel \(c1)")
        }
        let (sh, sw) = (x.shape[1], x.shape[2])
        let up = upsample ? 1 : 0
        let key = Key(n: x.shape[0], h: sh << up, w: sw << up, residual: residual != nil)
        let plan = plans[key] ?? makePlans(key)
        let (n, h, w) = (key.n, key.h, key.w)
        let ph = h + g.padTop + g.padBottom, pw = w + g.padLeft + g.padRight
        let y = Tensor(uninitialized: [n, g.outHeight(h), g.outWidth(w), g.outChannels])
        if let residual { precondition(residual.count == y.count, "int8 conv residual \(residual.shape) does not match its output \(y.shape)") }
        // Raw pointers: the per-pixel loop must not retain the affine's tensors.
        let affScale = affine.map { UnsafePointer($0.scale.data) }, affShift = affine.map { UnsafePointer($0.shift.data) }
        let silu = affine?.silu ?? false
        for (pi, (part, pp)) in zip(parts, plan).enumerated() {
            let rc = part.runChannels, cp = part.channels.count, c0 = part.channels.lowerBound
            // Where this part's channels lie: in x (c1 channels per pixel), or, for part 1 of a concatenation, in second.
            let (source, stride, srcC0) = second != nil && pi == 1 ? (second!, c2, 0) : (x, c1, c0)
            let src0 = UnsafePointer(source.data)
            let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: n * ph * pw * rc)
            defer { buf.deallocate() }
            let z = UInt8(part.quant.zeroPoint)
            Parallel.forEachChunk(n * ph, minChunk: 4) { rows in
                for r in rows {
                    let b = r / ph, py = r % ph
                    let rowBase = buf + (b * ph + py) * pw * rc
                    let iy = py - g.padTop
                    if iy < 0 || iy >= h { rowBase.update(repeating: z, count: pw * rc); continue }
                    if g.padLeft > 0 { rowBase.update(repeating: z, count: g.padLeft * rc) }
                    if g.padRight > 0 { (rowBase + (g.padLeft + w) * rc).update(repeating: z, count: g.padRight * rc) }
                    // The row's w interior pixels in one call (input pixel ix reads source pixel ix >> up).
                    let pixels = PixelRun(source: src0 + (b * sh + (iy >> up)) * sw * stride + srcC0,
                                          sourceStride: stride, shift: up, pixels: w, channels: cp,
                                          destination: rowBase + g.padLeft * rc, destinationStride: rc,
                                          duplicate: part.duplicated)
                    if let affScale, let affShift {
                        let k = b * g.inChannels + c0
                        part.quant.quantizePixels(pixels, scale: affScale + k, shift: affShift + k, silu: silu)
                    } else {
                        part.quant.quantizePixels(pixels)
                    }
                }
            }
            executeInt8(pp.prim, src: pp.src, UnsafeMutableRawPointer(buf), weights: pp.wei, bias: pp.bias, dst: pp.dst, y.data,
                        residual: pp.res.flatMap { m in residual.map { (m, $0, parts.count > 1 ? 1 : 0) } })
        }
        return y
    }

    private func makePlans(_ key: Key) -> [PartPlan] {
        let g = geometry
        let ph = key.h + g.padTop + g.padBottom, pw = key.w + g.padLeft + g.padRight
        let oh = g.outHeight(key.h), ow = g.outWidth(key.w)
        precondition(oh > 0 && ow > 0, "int8 conv output would be empty for input \(key.h)x\(key.w) and \(g)")
        var result: [PartPlan] = []
        for (i, part) in parts.enumerated() {
            let rc = part.runChannels
            var src = dnnlMD([key.n, rc, ph, pw], dnnl_u8, tag: dnnl_nhwc)
            var wAny = dnnlMD([g.outChannels, rc, g.kernelH, g.kernelW], dnnl_s8, tag: dnnl_format_tag_any)
            var dst = dnnlMD([key.n, g.outChannels, oh, ow], dnnl_f32, tag: dnnl_nhwc)
            var biasMD = dnnlMD([g.outChannels], dnnl_f32, tag: dnnl_a)
            var cd = dnnl_convolution_desc_t()
            let strides: [Int64] = [Int64(g.stride), Int64(g.stride)], zero: [Int64] = [0, 0]
            dnnlCheck(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, &wAny,
                                                         &biasMD, &dst, strides, zero, zero), "int8 conv desc \(g)")
            let addsResidual = key.residual && i == parts.count - 1
            let attr = int8Attr(scales: part.outputScales, accumulate: i > 0, residual: addsResidual ? dst : nil)
            defer { dnnl_primitive_attr_destroy(attr) }
            var pd: dnnl_primitive_desc_t? = nil
            dnnlCheck(dnnl_primitive_desc_create(&pd, &cd, attr, DNNL.shared.engine, nil), "int8 conv primitive_desc_create \(g)")
            let prim = DNNLPrimitive(desc: pd!)
            var wmd = prim.queryMD(dnnl_query_weights_md)
            let user = dnnlMD([g.outChannels, rc, g.kernelH, g.kernelW], dnnl_s8, tag: dnnl_oihw)
            let wbuf = part.weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: wmd) }
            let bbuf = alignedCopy(part.accBias)
            result.append(PartPlan(prim: prim, src: DNNLMemory(&src, handle: nil), wei: DNNLMemory(&wmd, handle: wbuf.pointer),
                                   dst: DNNLMemory(&dst, handle: nil), bias: DNNLMemory(&biasMD, handle: bbuf.pointer),
                                   res: addsResidual ? DNNLMemory(&dst, handle: nil) : nil, weights: wbuf, biasBuf: bbuf))
        }
        plans[key] = result
        return result
    }
}

/// Integer fully connected layer: u8 activations × s8 weights → fp32.
///
/// - input `x`: `[..., inFeatures]` fp32; weights `[outFeatures, inFeatures]` integers with per-row `weightScales`.
/// - returns `[..., outFeatures]` fp32.
public final class Int8Linear: @unchecked Sendable {
    public let inFeatures: Int
    public let outFeatures: Int
    let part: IntegerPart

    private struct Key: Hashable { let rows: Int, residual: Bool }
    private struct Plan { let prim: DNNLPrimitive; let src, wei, dst, bias: DNNLMemory; let res: DNNLMemory?; let weights, biasBuf: AlignedBuffer }
    private var plans: [Key: Plan] = [:]

    public init(inFeatures: Int, outFeatures: Int, weights q: [Int8], weightScales: [Float], bias: [Float]?,
                input: ActivationQuantization, forceDuplicate: Bool? = nil) {
        precondition(q.count == inFeatures * outFeatures, "int8 linear weights: \(q.count) for \(outFeatures)x\(inFeatures)")
        precondition(weightScales.count == outFeatures, "int8 linear: \(weightScales.count) weight scales")
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        part = IntegerPart(channels: 0..<inFeatures, quant: input, q: q, outputs: outFeatures, inputs: inFeatures, taps: 1,
                           weightScales: weightScales, bias: bias, forceSplit: forceDuplicate)
    }

    public var usesDuplicatedWeights: Bool { part.duplicated }

    public func forward(_ x: Tensor) -> Tensor { run(x, affine: nil, residual: nil) }

    /// `forward(x) + r` (r: as many values as the output, row-major), the add fused into the matmul's output pass: the same bits as
    /// `Ops.residual(forward(x), r, divisor: 1)`.
    public func forward(_ x: Tensor, plus r: Tensor) -> Tensor { run(x, affine: nil, residual: r) }

    /// `forward(x) + r` for a normalized activation, the add fused as above.
    public func forward(_ x: ChannelAffine, plus r: Tensor) -> Tensor {
        x.skip == nil ? run(x.source, affine: x, residual: r) : forward(x.materialize(), plus: r)
    }

    /// The layer on a normalized activation `[N, T, inFeatures]` (rows of sample i use its scale and shift), applied
    /// while quantizing the rows. Same result as `forward(x.materialize())`, bit for bit.
    public func forward(_ x: ChannelAffine) -> Tensor { x.skip == nil ? run(x.source, affine: x, residual: nil) : forward(x.materialize()) }

    public var fusesChannelAffine: Bool { true }

    private func run(_ x: Tensor, affine: ChannelAffine?, residual: Tensor?) -> Tensor {
        precondition(x.shape.last == inFeatures, "int8 linear expects last dim \(inFeatures), got \(x.shape)")
        let m = x.count / inFeatures
        let rowsPerSample = affine.map { $0.pixelsPerSample } ?? max(m, 1)  // no affine: the whole chunk is one run
        let affScale = affine.map { UnsafePointer($0.scale.data) }, affShift = affine.map { UnsafePointer($0.shift.data) }
        let silu = affine?.silu ?? false
        let src0 = UnsafePointer(x.data)
        let key = Key(rows: m, residual: residual != nil)
        let plan = plans[key] ?? makePlan(key)
        let rc = part.runChannels, k = inFeatures
        let buf = UnsafeMutablePointer<UInt8>.allocate(capacity: m * rc)
        defer { buf.deallocate() }
        Parallel.forEachChunk(m, minChunk: 64) { rows in
            // Runs of rows of one sample (they share the affine map), one C call each.
            var r = rows.lowerBound
            while r < rows.upperBound {
                let sample = r / rowsPerSample
                let end = min(rows.upperBound, (sample + 1) * rowsPerSample)
                let run = PixelRun(source: src0 + r * k, sourceStride: k, pixels: end - r, channels: k,
                                   destination: buf + r * rc, destinationStride: rc, duplicate: part.duplicated)
                if let affScale, let affShift {
                    part.quant.quantizePixels(run, scale: affScale + sample * k, shift: affShift + sample * k, silu: silu)
                } else {
                    part.quant.quantizePixels(run)
                }
                r = end
            }
        }
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outFeatures])
        if let residual { precondition(residual.count == y.count, "int8 linear residual \(residual.shape) does not match its output \(y.shape)") }
        executeInt8(plan.prim, src: plan.src, UnsafeMutableRawPointer(buf), weights: plan.wei, bias: plan.bias, dst: plan.dst, y.data,
                    residual: plan.res.flatMap { m in residual.map { (m, $0, 0) } })
        return y
    }

    private func makePlan(_ key: Key) -> Plan {
        let m = key.rows, rc = part.runChannels
        var src = dnnlMD([m, rc], dnnl_u8, tag: dnnl_ab)
        var wAny = dnnlMD([rc, outFeatures], dnnl_s8, tag: dnnl_format_tag_any)
        var dst = dnnlMD([m, outFeatures], dnnl_f32, tag: dnnl_ab)
        var biasMD = dnnlMD([1, outFeatures], dnnl_f32, tag: dnnl_ab)
        var md = dnnl_matmul_desc_t()
        dnnlCheck(dnnl_matmul_desc_init(&md, &src, &wAny, &biasMD, &dst), "int8 matmul desc")
        let attr = int8Attr(scales: part.outputScales, accumulate: false, residual: key.residual ? dst : nil)
        defer { dnnl_primitive_attr_destroy(attr) }
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &md, attr, DNNL.shared.engine, nil), "int8 matmul primitive_desc_create")
        let prim = DNNLPrimitive(desc: pd!)
        var wmd = prim.queryMD(dnnl_query_weights_md)
        // [out, in'] row-major integers are the [K, N] matrix with tag "ba".
        let user = dnnlMD([rc, outFeatures], dnnl_s8, tag: dnnl_ba)
        let wbuf = part.weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: wmd) }
        let bbuf = alignedCopy(part.accBias)
        let plan = Plan(prim: prim, src: DNNLMemory(&src, handle: nil), wei: DNNLMemory(&wmd, handle: wbuf.pointer),
                        dst: DNNLMemory(&dst, handle: nil), bias: DNNLMemory(&biasMD, handle: bbuf.pointer),
                        res: key.residual ? DNNLMemory(&dst, handle: nil) : nil, weights: wbuf, biasBuf: bbuf)
        plans[key] = plan
        return plan
    }
}

/// Plain reference for the integer layers: dequantize input parts and weights exactly as the kernels
/// define them, then a Double-accumulated convolution. `x`: `[N, H, W, Cin]`; weights OIHW integers.
public func referenceInt8Conv2D(_ x: Tensor, geometry g: Conv2DGeometry, weights q: [Int8], weightScales: [Float],
                                bias: [Float]?, inputs: [ActivationQuantization], split: Int?) -> Tensor {
    let ranges: [Range<Int>] = split.map { [0..<$0, $0..<g.inChannels] } ?? [0..<g.inChannels]
    let xq = ActivationQuantization.fakeQuantize(x, parts: Array(zip(ranges, inputs)))
    let taps = g.kernelH * g.kernelW
    var w = [Float](repeating: 0, count: q.count)
    for o in 0..<g.outChannels { for k in 0..<(g.inChannels * taps) {
        w[o * g.inChannels * taps + k] = Float(q[o * g.inChannels * taps + k]) * weightScales[o]
    } }
    return referenceConv2D(xq, geometry: g, weights: w, bias: bias)
}
