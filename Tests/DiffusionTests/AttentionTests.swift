import Diffusion
import Foundation
import SafeTensors
import TensorCore
import XCTest

/// The chunked attention core against a plain Float64 reference (fp32 and quantized), and the cross-attention
/// k/v cache of the conditional UNet.
final class AttentionTests: XCTestCase {
    /// softmax(q·kᵀ/√d)·v per head in Float64; with `quant`, q/k/v and the probabilities go through each
    /// quantizer's scalar definition (`referenceLevel`) first.
    func reference(q: Tensor, k: Tensor, v: Tensor, heads: Int, quant: AttentionQuantization?) -> [Double] {
        let (n, t, inner) = (q.shape[0], q.shape[1], q.shape[2]), l = k.shape[1], d = inner / heads
        func dq(_ x: Float, _ a: ActivationQuantization?) -> Double {
            guard let a else { return Double(x) }
            return Double(Float(Int32(a.referenceLevel(x)) - a.zeroPoint) * a.scale)
        }
        var out = [Double](repeating: 0, count: n * t * inner)
        for b in 0..<n {
            for h in 0..<heads {
                for i in 0..<t {
                    var s = [Double](repeating: 0, count: l)
                    for j in 0..<l {
                        var acc = 0.0
                        for e in 0..<d {
                            acc += dq(q.data[(b * t + i) * inner + h * d + e], quant?.query) * dq(k.data[(b * l + j) * inner + h * d + e], quant?.key)
                        }
                        s[j] = acc / Double(d).squareRoot()
                    }
                    let m = s.max()!
                    let e = s.map { Foundation.exp($0 - m) }, z = e.reduce(0, +)
                    for j in 0..<l {
                        let p = dq(Float(e[j] / z), quant?.probabilities)
                        for c in 0..<d { out[(b * t + i) * inner + h * d + c] += p * dq(v.data[(b * l + j) * inner + h * d + c], quant?.value) }
                    }
                }
            }
        }
        return out
    }

    func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var g = GaussianStream(seed: seed, index: 0)
        return Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in scale * g.nextNormal() })
    }

    func maxRelative(_ a: Tensor, _ b: [Double]) -> Double {
        let scale = b.map(abs).max()!
        return zip(0..<a.count, b).map { abs(Double(a.data[$0]) - $1) }.max()! / scale
    }

    /// Self-attention with T = 37 queries in chunks of 5 rows (last chunk partial), cross-attention with L = 3.
    func testChunkedAttentionMatchesReference() {
        for (t, l) in [(37, 37), (37, 3)] {
            let q = random([2, t, 12], seed: 1), k = random([2, l, 12], seed: 2), v = random([2, l, 12], seed: 3)
            let a = MultiHeadAttention(name: "test", heads: 3, headDim: 4)
            a.scoreBudget = 2 * 3 * l * 5
            let chunked = a(q: q, k: k, v: v, batch: 2, queries: t, keys: l)
            a.scoreBudget = MultiHeadAttention.defaultScoreBudget
            let whole = a(q: q, k: k, v: v, batch: 2, queries: t, keys: l)
            let ref = reference(q: q, k: k, v: v, heads: 3, quant: nil)
            XCTAssertLessThan(maxRelative(chunked, ref), 1e-5, "T \(t) L \(l) chunked")
            XCTAssertLessThan(maxRelative(whole, ref), 1e-5, "T \(t) L \(l) one chunk")
        }
    }

    /// q, k, v grids at `bits` for the random tensors below, and 8-bit probabilities.
    func exampleQuantization(bits: Int) -> AttentionQuantization {
        AttentionQuantization(query: ActivationQuantization(lo: -2.5, hi: 2.2, bits: bits)!,
                              key: ActivationQuantization(lo: -4, hi: 5, bits: bits)!,
                              value: ActivationQuantization(lo: -2, hi: 3, bits: bits)!,
                              probabilities: ActivationQuantization(lo: 0, hi: 0.8, bits: 8)!)
    }

    /// Quantized q, k, v (4 and 8 bits) and 8-bit probabilities give the reference's grid values.
    func testQuantizedAttentionMatchesReference() {
        for bits in [8, 4] {
            let q = random([1, 20, 8], seed: 4), k = random([1, 20, 8], seed: 5, scale: 2), v = random([1, 20, 8], seed: 6)
            let aq = exampleQuantization(bits: bits)
            let a = MultiHeadAttention(name: "test", heads: 2, headDim: 4)
            a.quantization = aq
            a.scoreBudget = 2 * 20 * 7
            let got = a(q: q, k: k, v: v, batch: 1, queries: 20, keys: 20)
            let ref = reference(q: q, k: k, v: v, heads: 2, quant: aq)
            XCTAssertLessThan(maxRelative(got, ref), 1e-5, "\(bits) bits")
            let fp = reference(q: q, k: k, v: v, heads: 2, quant: nil)
            XCTAssertGreaterThan(maxRelative(got, fp), 1e-3, "\(bits)-bit quantization must change the result")
        }
    }

    /// Integer products (`integerProducts`, as quantized files run in integer mode) stay within the same tolerance of the
    /// Float64 reference as the simulation; on CPUs without VNNI they fall back to the simulation, bit for bit.
    func testIntegerProductsMatchReference() {
        let enabled = IntegerAttention.isEnabled
        IntegerAttention.isEnabled = true
        defer { IntegerAttention.isEnabled = enabled }
        for bits in [8, 4] {
            let q = random([2, 21, 16], seed: 14), k = random([2, 21, 16], seed: 15, scale: 2), v = random([2, 21, 16], seed: 16)
            let aq = exampleQuantization(bits: bits)
            let a = MultiHeadAttention(name: "test", heads: 2, headDim: 8)
            a.quantization = aq
            a.scoreBudget = 2 * 2 * 21 * 6
            let simulated = a(q: q, k: k, v: v, batch: 2, queries: 21, keys: 21)
            a.integerProducts = true
            let integer = a(q: q, k: k, v: v, batch: 2, queries: 21, keys: 21)
            let ref = reference(q: q, k: k, v: v, heads: 2, quant: aq)
            XCTAssertLessThan(maxRelative(integer, ref), 1e-5, "\(bits) bits, integer products (oneDNN \(DNNL.isaName))")
            if !IntegerAttention.isExactOnThisCPU {
                XCTAssertEqual(integer.array, simulated.array, "without VNNI the integer mode runs the simulation")
            }
        }
    }

    /// The conditional UNet computes a cross-attention's k and v once while the context is unchanged, recomputes
    /// them for a new context or kernel, and never skips a kernel that must see every call.
    func testCrossAttentionKeyValueCache() throws {
        final class Counting: WeightLayerKernel {
            let inner: WeightLayerKernel; var calls = 0; let pure: Bool
            init(_ inner: WeightLayerKernel, pure: Bool) { self.inner = inner; self.pure = pure }
            var isPure: Bool { pure }
            func forward(_ x: Tensor) -> Tensor { calls += 1; return inner.forward(x) }
        }
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/ldm_unet_heads8/unet").path
        let model = try DiffusionModel.load(dir)
        let net = model.network
        let crossKeys = net.attentions.filter { $0.site.name.hasSuffix("attn2") }.map(\.key)
        XCTAssertFalse(crossKeys.isEmpty)
        let x = random([2] + net.sampleShape, seed: 7)
        let c1 = random([2, 5, 32], seed: 8), c2 = random([2, 5, 32], seed: 9)
        let counters = crossKeys.map { l -> Counting in let c = Counting(l.kernel, pure: true); l.kernel = c; return c }
        let a = try net.forward(x, timesteps: [10, 500], conditioning: .context(c1))
        let b = try net.forward(x, timesteps: [20, 600], conditioning: .context(c1))
        XCTAssertEqual(counters.map(\.calls), counters.map { _ in 1 }, "k computed once for an unchanged context")
        _ = try net.forward(x, timesteps: [20, 600], conditioning: .context(c2))
        XCTAssertEqual(counters.map(\.calls), counters.map { _ in 2 }, "a new context recomputes k")
        // Impure kernels see every call, and the cached result equals a fresh computation bit for bit.
        for l in crossKeys { l.kernel = Counting((l.kernel as! Counting).inner, pure: false) }
        let a2 = try net.forward(x, timesteps: [10, 500], conditioning: .context(c1))
        let b2 = try net.forward(x, timesteps: [20, 600], conditioning: .context(c1))
        XCTAssertEqual(crossKeys.map { ($0.kernel as! Counting).calls }, crossKeys.map { _ in 2 })
        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.data, count: a.count)), Array(UnsafeBufferPointer(start: a2.data, count: a2.count)))
        XCTAssertEqual(Array(UnsafeBufferPointer(start: b.data, count: b.count)), Array(UnsafeBufferPointer(start: b2.data, count: b2.count)))
    }
}
