import TensorCore
import XCTest

/// Integer kernels (oneDNN u8 × s8 → f32) against the plain dequantize-then-convolve reference.
/// Tolerance: max|int − ref| / max|ref| ≤ 1e-5 (the integer sums are exact; only fp32 scaling and the
/// bias fold round). Covers padding (zero must quantize to the zero point), stride-2 asymmetric
/// padding, skip-concat inputs with two quantizers, 4- and 8-bit weights with and without the
/// hi/lo split that keeps non-VNNI CPUs exact.
final class Int8KernelTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    struct LCG {
        var s: UInt64
        mutating func next() -> UInt64 { s = s &* 6364136223846793005 &+ 1442695040888963407; return s >> 33 }
        mutating func uniform() -> Float { Float(next() % (1 << 24)) / Float(1 << 24) }
    }

    func tensor(_ shape: [Int], _ r: inout LCG, lo: Float, hi: Float) -> Tensor {
        let t = Tensor(shape: shape)
        for i in 0..<t.count { t.data[i] = lo + (hi - lo) * r.uniform() }
        return t
    }

    func ints(_ n: Int, bits: Int, _ r: inout LCG) -> [Int8] {
        let lo = -(1 << (bits - 1)), span = 1 << bits
        return (0..<n).map { _ in Int8(lo + Int(r.next() % UInt64(span))) }
    }

    func testConvMatchesReference() {
        var r = LCG(s: 7)
        let cases: [(Conv2DGeometry, [Int], Int?)] = [
            (.init(inChannels: 8, outChannels: 16, kernel: 3, stride: 1, padding: 1), [2, 9, 7, 8], nil),
            (.init(inChannels: 24, outChannels: 8, kernel: 3, stride: 1, padding: 1), [1, 8, 8, 24], 16),
            (.init(inChannels: 12, outChannels: 12, kernel: 1), [3, 5, 5, 12], 4),
            (.init(inChannels: 16, outChannels: 16, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1), [2, 6, 6, 16], nil),
        ]
        for bits in [4, 8] {
            for (i, (g, shape, split)) in cases.enumerated() {
                let x = tensor(shape, &r, lo: -1.5, hi: 3)
                let q = ints(g.weightCount, bits: bits, &r)
                let ws = (0..<g.outChannels).map { _ in 0.01 + 0.02 * r.uniform() }
                let b = (0..<g.outChannels).map { _ in r.uniform() - 0.5 }
                let parts = split == nil ? 1 : 2
                let aq = (0..<parts).map { p in ActivationQuantization(lo: -1.2 - Float(p), hi: 2.5, bits: 8)! }
                let ref = referenceInt8Conv2D(x, geometry: g, weights: q, weightScales: ws, bias: b, inputs: aq, split: split)
                for force: Bool? in (bits == 4 ? [nil, true, false] : [nil, true]) {
                    let k = Int8Conv2D(geometry: g, weights: q, weightScales: ws, bias: b, inputs: aq, split: split, forceDuplicate: force)
                    let y = k.forward(x)
                    XCTAssertEqual(y.shape, ref.shape)
                    XCTAssertLessThanOrEqual(relativeError(y.array, ref.array), 1e-5, "bits \(bits) case \(i) \(g) force \(String(describing: force))")
                }
            }
        }
    }

    func testLinearMatchesReference() {
        var r = LCG(s: 3)
        for bits in [4, 8] {
            let (m, k, n) = (37, 48, 20)
            let x = tensor([m, k], &r, lo: -2, hi: 1)
            let q = ints(n * k, bits: bits, &r)
            let ws = (0..<n).map { _ in 0.005 + 0.01 * r.uniform() }
            let b = (0..<n).map { _ in r.uniform() }
            let aq = ActivationQuantization(lo: -2, hi: 1, bits: bits == 4 ? 4 : 8)!
            let y = Int8Linear(inFeatures: k, outFeatures: n, weights: q, weightScales: ws, bias: b, input: aq).forward(x)
            let xq = ActivationQuantization.fakeQuantize(x, parts: [(0..<k, aq)])
            // [K, N] dequantized weights (transpose of PyTorch's [out, in]) and the bias added per column.
            var wt = [Float](repeating: 0, count: k * n)
            for o in 0..<n { for i in 0..<k { wt[i * n + o] = Float(q[o * k + i]) * ws[o] } }
            var ref = Reference.matmul(xq.array, wt, m: m, k: k, n: n)
            for i in 0..<(m * n) { ref[i] += b[i % n] }
            XCTAssertLessThanOrEqual(relativeError(y.array, ref), 1e-5, "bits \(bits)")
        }
    }

    /// The vectorized quantizer (16 lanes + padded tail) against the scalar definition, for every bit
    /// width, on values that straddle the clamp bounds and land exactly on .5 rounding ties.
    func testVectorQuantizerMatchesScalarDefinition() {
        for bits in [2, 4, 8] {
            let q = ActivationQuantization(lo: -1.3, hi: 2.9, bits: bits)!
            var values: [Float] = (0..<203).map { i in Float(i) * 0.037 - 3 }
            values += (-8...300).map { k in (Float(k) + 0.5 - Float(q.zeroPoint)) * q.scale }  // ties
            var ints = [UInt8](repeating: 0, count: values.count)
            values.withUnsafeBufferPointer { src in ints.withUnsafeMutableBufferPointer { q.quantize(src.baseAddress!, $0.baseAddress!, count: values.count) } }
            var fake = values
            fake.withUnsafeMutableBufferPointer { q.fakeQuantize($0.baseAddress!, count: values.count) }
            for (i, v) in values.enumerated() {
                XCTAssertEqual(ints[i], q.referenceLevel(v), "bits \(bits) value \(v)")
                XCTAssertEqual(fake[i], (Float(q.referenceLevel(v)) - Float(q.zeroPoint)) * q.scale, "bits \(bits) value \(v)")
            }
        }
    }

    func testQuantizerGridAndZero() {
        let q = ActivationQuantization(lo: -0.3, hi: 5, bits: 8)!
        var zero: Float = 0
        q.fakeQuantize(&zero, count: 1)
        XCTAssertEqual(zero, 0, "0 must be exactly representable")
        var v: [Float] = [-10, 100, 1.234]
        v.withUnsafeMutableBufferPointer { q.fakeQuantize($0.baseAddress!, count: 3) }
        XCTAssertEqual(v[0], Float(0 - q.zeroPoint) * q.scale)
        XCTAssertEqual(v[1], Float(255 - q.zeroPoint) * q.scale)
        XCTAssertLessThanOrEqual(abs(v[2] - 1.234), q.scale / 2 + 1e-6)
        XCTAssertNil(ActivationQuantization(lo: 0, hi: 0, bits: 8), "a constant-zero range has no grid")
        XCTAssertNil(ActivationQuantization(lo: -.infinity, hi: 1, bits: 8))
        // Finite ends whose span overflows, and spans whose step is subnormal: no usable grid (not a trap).
        XCTAssertNil(ActivationQuantization(lo: -3e38, hi: 3e38, bits: 8))
        XCTAssertNil(ActivationQuantization(lo: 0, hi: Float.leastNormalMagnitude / 8, bits: 8))
        XCTAssertNil(ActivationQuantization(lo: -Float.leastNormalMagnitude / 8, hi: 0, bits: 4))
        XCTAssertNotNil(ActivationQuantization(lo: -1e-30, hi: 1e-30, bits: 8))
    }
}
