//===--- Attention.swift - multi-head attention core, quantizable ----------===//
//
// softmax(q·kᵀ·d^-½)·v per head over token tensors, in query chunks so no score buffer exceeds
// `MultiHeadAttention.scoreBudget` floats (16 MiB by default). Used by UNet2DModel's AttentionBlock, the decoders' mid
// attention and the cross-attention UNet's Transformer2D blocks.
//
// Attention quantization (Q-Diffusion's scheme for SD, `ptqd quantize --quantize-attention`): q, k and v
// are fake-quantized per tensor at the activation bits (asymmetric), and the softmax output at 8 bits
// unsigned with zero point 0, before the two activation×activation products. The products then run on
// exactly the grid values an integer kernel would see, in fp32 arithmetic (exact while the integer sums
// stay below 2^24: d·qmax² for q·kᵀ, L·255·qmax for P·v; beyond that fp32 rounds them at 2^-24 relative).
// That is the simulation (the reference, and what `--simulate` and calibration run). With `integerProducts` (a
// quantized file in integer mode; `PTQD_INTEGER_ATTENTION=0` turns it off, see `IntegerAttention.isEnabled`) the
// products run as u8 × s8 matmuls in oneDNN
// (`TensorCore.IntegerAttention`) wherever they are exact — VNNI and AMX CPUs; elsewhere the simulation runs. The two differ only where the simulation's fp32 sums move a probability across a
// rounding boundary of its 8-bit grid.
//
//===----------------------------------------------------------------------===//

import TensorCore

/// Receives an attention's operands during calibration.
public protocol AttentionObserving: AnyObject {
    /// q `[N, T, inner]`, k and v `[N, L, inner]` as the products will see them (before quantization).
    func observe(query: Tensor, key: Tensor, value: Tensor)
    /// Softmax rows of one query chunk: `rows × keys` probabilities, contiguous.
    func observe(probabilities: UnsafePointer<Float>, rows: Int, keys: Int)
}

/// softmax(q·kᵀ·d^-½)·v per head, in query chunks. q `[N, T, inner]`, k and v `[N, L, inner]` → `[N, T, inner]`.
public final class MultiHeadAttention {
    /// diffusers prefix of the attention module, e.g. `mid_block.attentions.0.transformer_blocks.0.attn2`.
    public let name: String
    public let heads: Int, headDim: Int
    /// nil: fp32 products.
    public var quantization: AttentionQuantization?
    /// Calibration hook (nil in normal runs).
    public var observer: AttentionObserving?
    /// With `quantization`: the network runs in integer mode (set for quantized files in integer mode), so the two
    /// products run in integers when `IntegerAttention.isEnabled` and `IntegerAttention.supports` them; otherwise, and
    /// when false, the fp32 simulation runs.
    public var integerProducts = false
    private lazy var integer = IntegerAttention(heads: heads, headDim: headDim)
    /// Largest score buffer (floats) one chunk may allocate by default: 4 Mi floats = 16 MiB.
    public static let defaultScoreBudget = 1 << 22
    /// Largest score buffer (floats) of one query chunk (at least one query row is always computed).
    public var scoreBudget = MultiHeadAttention.defaultScoreBudget
    private let scores = StridedBatchedMatmul(), values = StridedBatchedMatmul()

    public init(name: String, heads: Int, headDim: Int) {
        self.name = name; self.heads = heads; self.headDim = headDim
    }

    /// - q: `[N, T, heads·headDim]`; k, v: `[N, L, heads·headDim]`. Returns `[N, T, heads·headDim]`.
    public func callAsFunction(q q0: Tensor, k k0: Tensor, v v0: Tensor, batch n: Int, queries t: Int, keys l: Int) -> Tensor {
        let d = headDim, inner = heads * d
        observer?.observe(query: q0, key: k0, value: v0)
        let chunk = max(1, min(t, scoreBudget / max(n * heads * l, 1)))
        if let aq = quantization, integerProducts, IntegerAttention.isEnabled, observer == nil {
            if IntegerAttention.supports(aq, headDim: d, keys: l) {
                return integer(q: q0, k: k0, v: v0, batch: n, queries: t, keys: l, quantizers: aq, chunk: chunk)
            }
        }
        var q = q0, k = k0, v = v0
        if let aq = quantization {
            q = ActivationQuantization.fakeQuantize(q0, parts: [(0..<inner, aq.query)])
            k = ActivationQuantization.fakeQuantize(k0, parts: [(0..<inner, aq.key)])
            v = ActivationQuantization.fakeQuantize(v0, parts: [(0..<inner, aq.value)])
        }
        let o = Tensor(uninitialized: [n, t, inner])
        let s = Tensor(uninitialized: [n, heads, chunk, l])
        var start = 0
        while start < t {
            let tc = min(chunk, t - start)
            let qLayout = StridedBatchedMatmul.Operand(dims: [n, heads, tc, d], strides: [t * inner, d, inner, 1])
            let sLayout = StridedBatchedMatmul.Operand(dims: [n, heads, tc, l], strides: [heads * tc * l, tc * l, l, 1])
            scores.run(a: q.data + start * inner, qLayout,
                       b: k.data, .init(dims: [n, heads, d, l], strides: [l * inner, d, 1, inner]),
                       c: s.data, sLayout)
            Ops.softmaxRowsInPlace(s.data, rows: n * heads * tc, length: l, scale: 1 / Float(d).squareRoot())
            observer?.observe(probabilities: s.data, rows: n * heads * tc, keys: l)
            if let aq = quantization { aq.probabilities.fakeQuantize(s.data, count: n * heads * tc * l) }
            values.run(a: s.data, sLayout, b: v.data, .init(dims: [n, heads, l, d], strides: [l * inner, d, inner, 1]),
                       c: o.data + start * inner, qLayout)
            start += tc
        }
        return o
    }
}
