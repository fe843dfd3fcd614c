import TensorCore
import XCTest

/// Integer attention (u8 × s8 products on oneDNN) against its plain Swift-integer reference, bit for bit; and the
/// conditions under which it refuses to run.
final class IntegerAttentionTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func random(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Tensor {
        uniformTensor(shape, seed: seed, scale: scale, offset: offset)
    }

    func quantizers(bits: Int) -> AttentionQuantization {
        AttentionQuantization(query: ActivationQuantization(lo: -2.5, hi: 2.2, bits: bits)!,
                              key: ActivationQuantization(lo: -4, hi: 5, bits: bits)!,
                              value: ActivationQuantization(lo: -2, hi: 3, bits: bits)!,
                              probabilities: ActivationQuantization(lo: 0, hi: 0.8, bits: 8)!)
    }

    /// Self- and cross-attention shapes (keys 37 and 3, head dims 8 and 40), chunks with a partial last chunk, 8- and
    /// 4-bit q/k/v: the oneDNN path equals the reference exactly.
    func testMatchesPlainReferenceBitForBit() throws {
        guard IntegerAttention.isExactOnThisCPU else {
            throw XCTSkip("oneDNN \(DNNL.isaName) has no VNNI: integer attention is not exact here and never runs")
        }
        for (bits, heads, d, t, l, chunk) in [(8, 3, 8, 37, 37, 5), (4, 2, 40, 19, 3, 19), (8, 1, 40, 16, 70, 7)] {
            let n = 2, inner = heads * d
            let q = random([n, t, inner], seed: 1, scale: 2), k = random([n, l, inner], seed: 2, scale: 3, offset: 0.5)
            let v = random([n, l, inner], seed: 3, scale: 2)
            let z = quantizers(bits: bits)
            XCTAssertTrue(IntegerAttention.supports(z, headDim: d, keys: l))
            let fast = IntegerAttention(heads: heads, headDim: d)(q: q, k: k, v: v, batch: n, queries: t, keys: l, quantizers: z, chunk: chunk)
            let ref = referenceIntegerAttention(q: q, k: k, v: v, batch: n, queries: t, keys: l, heads: heads, headDim: d, quantizers: z)
            XCTAssertTrue(fast.array.elementsEqual(ref.array, by: { $0.bitPattern == $1.bitPattern }),
                          "\(bits) bits, \(heads)x\(d), T \(t) L \(l): max diff \(zip(fast.array, ref.array).map { abs($0 - $1) }.max()!)")
            XCTAssertGreaterThan(ref.array.map(abs).max()!, 0.1, "a non-trivial output")
        }
    }

    /// Probabilities with a non-zero zero point, or more keys than int32 sums allow, are left to the simulation.
    func testRefusesWhatItCannotComputeExactly() {
        var z = quantizers(bits: 8)
        XCTAssertEqual(IntegerAttention.supports(z, headDim: 64, keys: 4096), IntegerAttention.isExactOnThisCPU)
        XCTAssertFalse(IntegerAttention.supports(z, headDim: 64, keys: 70_000), "P·v sums beyond int32")
        z.probabilities = ActivationQuantization(scale: 0.01, zeroPoint: 3, bits: 8)
        XCTAssertFalse(IntegerAttention.supports(z, headDim: 64, keys: 16))
    }
}
