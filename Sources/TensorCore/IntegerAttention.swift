//===--- IntegerAttention.swift - quantized attention with integer products --===//
//
// softmax(q̂·k̂ᵀ·d^-½)·v̂ per head, where q̂, k̂, v̂ and the probabilities are on their quantizers' grids, with both
// activation × activation products run by oneDNN as u8 × s8 → s32 batched matmuls:
//
//   S[i, j] = Σ_e (q_ie − z_q)(k_je − z_k)
//           = Σ_e q_ie·k'_je − z_q·Σ_e k'_je + (128 − z_k)·(Σ_e q_ie − d·z_q),     k' = k − 128 ∈ [−128, 127] (s8)
//   P[i, j] = levels_P(softmax_j(float(S[i, j])·s_q·s_k · d^-½))                      (u8, zero point 0)
//   O[i, e] = float(Σ_j P_ij·v'_je + (128 − z_v)·Σ_j P_ij) · s_P·s_v,                 v' = v − 128 (s8)
//
// The two rank-one corrections are per-key and per-query integers computed while quantizing k and q, so the sums
// are exact in int32. The softmax is the fp32 path's own kernel (ptqd_softmax_row) on float(S)·s_q·s_k, so the
// integer path differs from the fp32 simulation (which sums the grid values in fp32) only by the simulation's
// fp32 rounding of the products' sums, i.e. by a probability level where a score sits on a rounding boundary.
//
// Exactness needs oneDNN's int8 matmuls to be exact for any s8 operand: VNNI or AMX. Without VNNI, oneDNN 2.6
// multiplies with vpmaddubsw, which saturates pairs of u8·s8 products at 16 bits, so `supports` is false there and
// callers run the fp32 simulation instead. Layouts (chosen so oneDNN 2.6 picks its brgemm kernels; measured: a q
// operand read with a token stride, or as a slice of a longer per-head plane, falls back to a 3–4× slower gemm): q is
// written as one dense `[N, heads, tc, d]` block per query chunk; k and v stay in token layout `[N, L, heads·d]`,
// read with strides.
//
//===----------------------------------------------------------------------===//

import CDNNL
import CKernels
import Foundation

/// The four quantizers of one attention: q, k, v (activation bits) and the softmax probabilities (8-bit,
/// unsigned, zero point 0).
public struct AttentionQuantization: Codable, Equatable, Sendable {
    public var query: ActivationQuantization
    public var key: ActivationQuantization
    public var value: ActivationQuantization
    public var probabilities: ActivationQuantization

    public init(query: ActivationQuantization, key: ActivationQuantization, value: ActivationQuantization,
                probabilities: ActivationQuantization) {
        self.query = query; self.key = key; self.value = value; self.probabilities = probabilities
    }
}

/// Quantized attention with integer products (see the file comment). One instance per attention site; primitives are
/// cached per shape.
public final class IntegerAttention: @unchecked Sendable {
    public let heads: Int, headDim: Int

    private struct ChunkKey: Hashable { let n, tc, l: Int }
    private struct Plan { let prim: DNNLPrimitive; let a, b, c: DNNLMemory }
    private var chunkPlans: [ChunkKey: (scores: Plan, values: Plan)] = [:]

    public init(heads: Int, headDim: Int) {
        precondition(heads > 0 && headDim > 0, "integer attention: \(heads) heads of \(headDim)")
        self.heads = heads; self.headDim = headDim
    }

    /// Whether quantized files in integer mode use this path where it is exact (default; `PTQD_INTEGER_ATTENTION=0`
    /// runs the fp32 simulation of the same grid values instead). Measured against the simulation of the same files
    /// in the same interleaved rounds (docs/benchmarks.md, session 13): SD-1.5-shaped W8A8 +attn 1,594 vs 1,875 ms per
    /// forward, cin256-shaped 349 vs 351 ms (batch 1) and 666 vs 689 ms (batch 2), our small latent model 22.8 vs
    /// 22.0 ms (batch 64).
    nonisolated(unsafe) public static var isEnabled: Bool = enabledByEnvironment
    /// `isEnabled` as the process started: true unless `PTQD_INTEGER_ATTENTION=0`.
    public static let enabledByEnvironment = ProcessInfo.processInfo.environment["PTQD_INTEGER_ATTENTION"] != "0"

    /// Whether oneDNN's int8 matmuls are exact on this CPU (VNNI or AMX; see the file comment).
    public static var isExactOnThisCPU: Bool { DNNL.hasVNNI }

    /// Whether the integer path computes this attention exactly: an exact int8 CPU, probabilities with zero point 0,
    /// and every integer sum within int32 (3·d·255·128 for scores, 2·L·255·128 for P·v).
    public static func supports(_ z: AttentionQuantization, headDim d: Int, keys l: Int) -> Bool {
        isExactOnThisCPU && z.probabilities.zeroPoint == 0 && 3 * d * 255 * 128 < Int(Int32.max) && 2 * l * 255 * 128 < Int(Int32.max)
    }

    /// - q: `[N, T, heads·d]`; k, v: `[N, L, heads·d]` fp32, quantized here. `chunk`: queries per score block (≥ 1).
    /// - Returns `[N, T, heads·d]` fp32.
    public func callAsFunction(q: Tensor, k: Tensor, v: Tensor, batch n: Int, queries t: Int, keys l: Int,
                               quantizers z: AttentionQuantization, chunk: Int) -> Tensor {
        let d = headDim, inner = heads * d
        precondition(q.count == n * t * inner && k.count == n * l * inner && v.count == n * l * inner,
                     "integer attention shapes: q \(q.shape) k \(k.shape) v \(v.shape) for \(heads)x\(d)")
        precondition(Self.supports(z, headDim: d, keys: l), "integer attention is not exact for this CPU or configuration")
        let tcMax = max(1, min(chunk, t))
        let operands = QuantizedOperands(q: q, k: k, v: v, n: n, t: t, l: l, heads: heads, d: d, chunk: tcMax, z: z)
        defer { operands.deallocate() }
        let o = Tensor(uninitialized: [n, t, inner])
        let raw = UnsafeMutablePointer<Int32>.allocate(capacity: n * heads * tcMax * l)
        let probs = UnsafeMutablePointer<UInt8>.allocate(capacity: n * heads * tcMax * l)
        let rowP = UnsafeMutablePointer<Int32>.allocate(capacity: n * heads * tcMax)
        let outRaw = UnsafeMutablePointer<Int32>.allocate(capacity: n * heads * tcMax * d)
        defer { raw.deallocate(); probs.deallocate(); rowP.deallocate(); outRaw.deallocate() }
        let sqk = z.query.scale * z.key.scale, softmaxScale = 1 / Float(d).squareRoot()
        let invP = 1 / z.probabilities.scale, hiP = Float(z.probabilities.qmax)
        let spv = z.probabilities.scale * z.value.scale, cv = 128 - z.value.zeroPoint
        var start = 0
        while start < t {
            let tc = min(tcMax, t - start)
            // Scores: [N, heads, tc, d] u8 · [N, heads, d, L] s8 → [N, heads, tc, L] s32.
            let (sp, vp) = plans(n: n, tc: tc, l: l)
            sp.a.setHandle(UnsafeMutableRawPointer(operands.q + start * n * heads * d))
            sp.b.setHandle(UnsafeMutableRawPointer(operands.k))
            sp.c.setHandle(UnsafeMutableRawPointer(raw))
            sp.prim.execute([dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: sp.a.memory),
                             dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: sp.b.memory),
                             dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: sp.c.memory)])
            let rows = n * heads * tc
            Parallel.forEachChunk(rows, minChunk: 16) { range in
                let scratch = UnsafeMutablePointer<Float>.allocate(capacity: l)
                defer { scratch.deallocate() }
                for r in range {
                    let bh = r / tc, i = r % tc
                    let sum = ptqd_int_softmax_u8(raw + r * l, l, operands.rowCorrection[bh * t + start + i],
                                                  operands.colCorrection + bh * l, sqk, softmaxScale, scratch,
                                                  probs + r * l, invP, hiP)
                    rowP[r] = Int32(sum) * cv
                }
            }
            // Values: [N, heads, tc, L] u8 · [N, heads, L, d] s8 → [N, heads, tc, d] s32.
            vp.a.setHandle(UnsafeMutableRawPointer(probs))
            vp.b.setHandle(UnsafeMutableRawPointer(operands.v))
            vp.c.setHandle(UnsafeMutableRawPointer(outRaw))
            vp.prim.execute([dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: vp.a.memory),
                             dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: vp.b.memory),
                             dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: vp.c.memory)])
            let heads = self.heads, od = o.data, s0 = start
            Parallel.forEachChunk(rows, minChunk: 64) { range in
                for r in range {
                    let b = r / (heads * tc), h = (r / tc) % heads, i = r % tc
                    let dst = od + (b * t + s0 + i) * inner + h * d, src = outRaw + r * d, c = rowP[r]
                    for e in 0..<d { dst[e] = Float(src[e] + c) * spv }
                }
            }
            start += tc
        }
        return o
    }

    /// The two products of one chunk shape, created on first use: scores `[N, heads, tc, d] u8 · [N, heads, d, L] s8 →
    /// [N, heads, tc, L] s32` and values `[N, heads, tc, L] u8 · [N, heads, L, d] s8 → [N, heads, tc, d] s32`; k and v
    /// are read in token layout `[N, L, heads·d]`.
    private func plans(n: Int, tc: Int, l: Int) -> (scores: Plan, values: Plan) {
        let key = ChunkKey(n: n, tc: tc, l: l)
        if let p = chunkPlans[key] { return p }
        let d = headDim, inner = heads * d
        let p = (scores: Self.makePlan(a: dnnlMD([n, heads, tc, d], dnnl_u8, strides: [heads * tc * d, tc * d, d, 1]),
                                       b: dnnlMD([n, heads, d, l], dnnl_s8, strides: [l * inner, d, 1, inner]),
                                       c: dnnlMD([n, heads, tc, l], dnnl_s32, strides: [heads * tc * l, tc * l, l, 1]), what: "scores"),
                 values: Self.makePlan(a: dnnlMD([n, heads, tc, l], dnnl_u8, strides: [heads * tc * l, tc * l, l, 1]),
                                       b: dnnlMD([n, heads, l, d], dnnl_s8, strides: [l * inner, d, inner, 1]),
                                       c: dnnlMD([n, heads, tc, d], dnnl_s32, strides: [heads * tc * d, tc * d, d, 1]), what: "values"))
        chunkPlans[key] = p
        return p
    }

    private static func makePlan(a: dnnl_memory_desc_t, b: dnnl_memory_desc_t, c: dnnl_memory_desc_t, what: String) -> Plan {
        var a = a, b = b, c = c
        var md = dnnl_matmul_desc_t()
        dnnlCheck(dnnl_matmul_desc_init(&md, &a, &b, nil, &c), "integer attention \(what) matmul desc")
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &md, nil, DNNL.shared.engine, nil), "integer attention \(what) primitive_desc_create")
        return Plan(prim: DNNLPrimitive(desc: pd!), a: DNNLMemory(&a, handle: nil), b: DNNLMemory(&b, handle: nil),
                    c: DNNLMemory(&c, handle: nil))
    }
}

/// q, k, v on their grids as the two products read them, and the score corrections (see the file comment).
struct QuantizedOperands {
    /// u8 levels of q, one dense `[N, heads, tc, d]` block per chunk of `chunk` queries (the last may be shorter):
    /// chunk c starts at c·chunk·N·heads·d.
    let q: UnsafeMutablePointer<UInt8>
    /// `[N, L, heads·d]` s8: k's levels − 128 (and v's).
    let k: UnsafeMutablePointer<Int8>, v: UnsafeMutablePointer<Int8>
    /// `[N·heads, T]`: (128 − z_k)·(Σ_e q_ie − d·z_q).
    let rowCorrection: UnsafeMutablePointer<Int32>
    /// `[N·heads, L]`: −z_q·Σ_e k'_je.
    let colCorrection: UnsafeMutablePointer<Int32>

    init(q x: Tensor, k: Tensor, v: Tensor, n: Int, t: Int, l: Int, heads: Int, d: Int, chunk: Int, z: AttentionQuantization) {
        let inner = heads * d
        q = .allocate(capacity: n * t * inner)
        self.k = .allocate(capacity: n * l * inner)
        self.v = .allocate(capacity: n * l * inner)
        rowCorrection = .allocate(capacity: n * heads * t)
        colCorrection = .allocate(capacity: n * heads * l)
        let (qq, kk, vv, rc, cc) = (q, self.k, self.v, rowCorrection, colCorrection)
        let zq = z.query.zeroPoint, ck = 128 - z.key.zeroPoint
        // q: each token row's heads into its chunk's [N, heads, tc, d] block.
        Parallel.forEachChunk(n * t, minChunk: 64) { range in
            for row in range {
                let b = row / t, i = row % t
                let c = i / chunk, tc = min(chunk, t - c * chunk)
                let block = qq + c * chunk * n * heads * d
                for h in 0..<heads {
                    let dst = block + ((b * heads + h) * tc + i - c * chunk) * d
                    z.query.quantize(x.data + row * inner + h * d, dst, count: d)
                    var s: Int32 = 0
                    for e in 0..<d { s += Int32(dst[e]) }
                    rc[(b * heads + h) * t + i] = ck * (s - Int32(d) * zq)
                }
            }
        }
        // k and v: levels in place, then − 128 as s8 (the level with its top bit flipped).
        for (src, dst, grid, sums) in [(k, kk, z.key, true), (v, vv, z.value, false)] {
            Parallel.forEachChunk(n * l, minChunk: 64) { range in
                for row in range {
                    let out = UnsafeMutableRawPointer(dst + row * inner).assumingMemoryBound(to: UInt8.self)
                    grid.quantize(src.data + row * inner, out, count: inner)
                    for e in 0..<inner { out[e] ^= 0x80 }
                    guard sums else { continue }
                    let b = row / l, j = row % l
                    for h in 0..<heads {
                        var s: Int32 = 0
                        for e in 0..<d { s += Int32(dst[row * inner + h * d + e]) }
                        cc[(b * heads + h) * l + j] = -zq * s
                    }
                }
            }
        }
    }

    func deallocate() { q.deallocate(); k.deallocate(); v.deallocate(); rowCorrection.deallocate(); colCorrection.deallocate() }
}

/// Plain reference for `IntegerAttention`: the same definition with every integer sum in Swift `Int` loops (no oneDNN),
/// the same softmax kernel and quantizer calls. Bit-identical to the fast path where `supports` holds.
/// q `[N, T, heads·d]`, k and v `[N, L, heads·d]` → `[N, T, heads·d]`.
public func referenceIntegerAttention(q: Tensor, k: Tensor, v: Tensor, batch n: Int, queries t: Int, keys l: Int,
                                      heads: Int, headDim d: Int, quantizers z: AttentionQuantization) -> Tensor {
    let inner = heads * d
    func levels(_ x: Tensor, _ g: ActivationQuantization) -> [Int] {
        var u = [UInt8](repeating: 0, count: x.count)
        u.withUnsafeMutableBufferPointer { g.quantize(x.data, $0.baseAddress!, count: x.count) }
        return u.map(Int.init)
    }
    let ql = levels(q, z.query), kl = levels(k, z.key), vl = levels(v, z.value)
    let (zq, zk, zv) = (Int(z.query.zeroPoint), Int(z.key.zeroPoint), Int(z.value.zeroPoint))
    let o = Tensor(uninitialized: [n, t, inner])
    var row = [Float](repeating: 0, count: l), p = [UInt8](repeating: 0, count: l)
    for b in 0..<n {
        for h in 0..<heads {
            for i in 0..<t {
                for j in 0..<l {
                    var s = 0
                    for e in 0..<d { s += (ql[(b * t + i) * inner + h * d + e] - zq) * (kl[(b * l + j) * inner + h * d + e] - zk) }
                    row[j] = Float(s) * (z.query.scale * z.key.scale)
                }
                row.withUnsafeMutableBufferPointer { ptqd_softmax_row($0.baseAddress!, l, 1 / Float(d).squareRoot()) }
                row.withUnsafeBufferPointer { r in p.withUnsafeMutableBufferPointer { z.probabilities.quantize(r.baseAddress!, $0.baseAddress!, count: l) } }
                for e in 0..<d {
                    var acc = 0
                    for j in 0..<l { acc += Int(p[j]) * (vl[(b * l + j) * inner + h * d + e] - zv) }
                    o.data[(b * t + i) * inner + h * d + e] = Float(acc) * (z.probabilities.scale * z.value.scale)
                }
            }
        }
    }
    return o
}
