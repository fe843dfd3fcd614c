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

    /// GroupNorm (+ SiLU) fed to an integer layer as a `ChannelAffine`: the kernel normalizes while it writes its u8
    /// input, and the output is bit-identical to running it on the materialized tensor — every conv case above (padding,
    /// stride 2, skip-concat parts, hi/lo duplicated weights), an upsampled activation, the conv reading a plain input
    /// upsampled ×2 in place, and the linear on token rows —
    /// on every kernel ISA variant this CPU has.
    func testFusedNormalizedInputIsBitIdentical() {
        var r = LCG(s: 11)
        let cases: [(Conv2DGeometry, [Int], Int?, Int)] = [
            (.init(inChannels: 8, outChannels: 16, kernel: 3, stride: 1, padding: 1), [2, 9, 7, 8], nil, 4),
            (.init(inChannels: 24, outChannels: 8, kernel: 3, stride: 1, padding: 1), [1, 8, 8, 24], 16, 8),
            (.init(inChannels: 40, outChannels: 12, kernel: 1), [3, 5, 5, 40], 8, 5),
            (.init(inChannels: 16, outChannels: 16, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1), [2, 6, 6, 16], nil, 4),
        ]
        func same(_ a: Tensor, _ b: Tensor) -> Bool { a.shape == b.shape && a.array.elementsEqual(b.array) { $0.bitPattern == $1.bitPattern } }
        for isa in KernelISA.supported {
            KernelISA.with(isa) {
                for (i, (g, shape, split, groups)) in cases.enumerated() {
                    let x = tensor(shape, &r, lo: -2, hi: 3)
                    let c = g.inChannels
                    let gamma = (0..<c).map { _ in 0.5 + r.uniform() }, beta = (0..<c).map { _ in r.uniform() - 0.5 }
                    let pre = tensor([shape[0], c], &r, lo: -1, hi: 1)
                    let q = ints(g.weightCount, bits: 8, &r)
                    let ws = (0..<g.outChannels).map { _ in 0.01 + 0.02 * r.uniform() }
                    let aq = (0..<(split == nil ? 1 : 2)).map { p in ActivationQuantization(lo: -0.4 - Float(p), hi: 2.5, bits: 8)! }
                    for force: Bool? in [nil, true] {
                        let k = Int8Conv2D(geometry: g, weights: q, weightScales: ws, bias: nil, inputs: aq, split: split, forceDuplicate: force)
                        for silu in [false, true] {
                            let a = Ops.groupNormAffine(x, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, preAdd: pre, silu: silu)
                            XCTAssertTrue(same(k.forward(a), k.forward(a.materialize())), "\(isa) case \(i) silu \(silu) force \(String(describing: force))")
                            let up = a.upsampledNearest2x()
                            XCTAssertTrue(same(up.materialize(), Ops.upsampleNearest2x(a.materialize())), "\(isa) upsampled activation, case \(i)")
                            XCTAssertTrue(same(k.forward(up), k.forward(Ops.upsampleNearest2x(a.materialize()))), "\(isa) upsampled, case \(i)")
                        }
                        XCTAssertTrue(same(k.forwardUpsampledNearest2x(x), k.forward(Ops.upsampleNearest2x(x))), "\(isa) conv reading its input upsampled, case \(i)")
                    }
                }
                let (n, t, kf, o) = (3, 13, 40, 24)
                let x = tensor([n, t, kf], &r, lo: -2, hi: 2)
                let a = Ops.groupNormAffine(x, groups: 8, gamma: (0..<kf).map { _ in r.uniform() + 0.5 }, beta: (0..<kf).map { _ in r.uniform() }, eps: 1e-6)
                let lin = Int8Linear(inFeatures: kf, outFeatures: o, weights: ints(kf * o, bits: 8, &r), weightScales: (0..<o).map { _ in 0.01 + 0.01 * r.uniform() },
                                     bias: (0..<o).map { _ in r.uniform() }, input: ActivationQuantization(lo: -3, hi: 3, bits: 8)!)
                XCTAssertTrue(same(lin.forward(a), lin.forward(a.materialize())), "\(isa) linear on normalized token rows")
            }
        }
    }

    /// A skip connection added in the integer layer's output pass (oneDNN binary-add post-op, after the skip-concat
    /// part's sum post-op) gives the same bits as the layer followed by `Ops.residual`: single and two-part convs,
    /// stride 2, hi/lo duplicated weights, a plain and a normalized input; the linear on a plain and a normalized input
    /// with a residual of another shape but the same values (token rows vs pixels).
    func testResidualAddedInOutputPassIsBitIdentical() {
        var r = LCG(s: 23)
        func same(_ a: Tensor, _ b: Tensor) -> Bool { a.shape == b.shape && a.array.elementsEqual(b.array) { $0.bitPattern == $1.bitPattern } }
        let cases: [(Conv2DGeometry, [Int], Int?)] = [
            (.init(inChannels: 16, outChannels: 32, kernel: 3, stride: 1, padding: 1), [2, 8, 8, 16], nil),
            (.init(inChannels: 24, outChannels: 8, kernel: 3, stride: 1, padding: 1), [1, 8, 8, 24], 16),
            (.init(inChannels: 40, outChannels: 12, kernel: 1), [3, 5, 5, 40], 8),
            (.init(inChannels: 16, outChannels: 16, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1), [2, 6, 6, 16], nil),
        ]
        for (i, (g, shape, split)) in cases.enumerated() {
            let x = tensor(shape, &r, lo: -2, hi: 3)
            let q = ints(g.weightCount, bits: 8, &r)
            let ws = (0..<g.outChannels).map { _ in 0.01 + 0.02 * r.uniform() }
            let b = (0..<g.outChannels).map { _ in r.uniform() - 0.5 }
            let aq = (0..<(split == nil ? 1 : 2)).map { p in ActivationQuantization(lo: -0.4 - Float(p), hi: 2.5, bits: 8)! }
            let c = g.inChannels
            let a = Ops.groupNormAffine(x, groups: 4, gamma: (0..<c).map { _ in 0.5 + r.uniform() }, beta: (0..<c).map { _ in r.uniform() - 0.5 },
                                        eps: 1e-5, silu: true)
            for force: Bool? in [nil, true] {
                let k = Int8Conv2D(geometry: g, weights: q, weightScales: ws, bias: b, inputs: aq, split: split, forceDuplicate: force)
                let plain = k.forward(x)
                let res = tensor(plain.shape, &r, lo: -4, hi: 4)
                XCTAssertTrue(same(k.forward(x, plus: res), Ops.residual(plain, res, divisor: 1)), "case \(i) force \(String(describing: force))")
                XCTAssertTrue(same(k.forward(a, plus: res), Ops.residual(k.forward(a), res, divisor: 1)), "normalized, case \(i)")
                XCTAssertTrue(same(k.forward(x), plain), "the plain plan is unchanged after the residual plan, case \(i)")
            }
        }
        let (n, t, kf, o) = (2, 15, 40, 24)
        let x = tensor([n, t, kf], &r, lo: -2, hi: 2)
        let lin = Int8Linear(inFeatures: kf, outFeatures: o, weights: ints(kf * o, bits: 8, &r), weightScales: (0..<o).map { _ in 0.01 + 0.01 * r.uniform() },
                             bias: (0..<o).map { _ in r.uniform() }, input: ActivationQuantization(lo: -2, hi: 2, bits: 8)!)
        let res = tensor([n, 3, 5, o], &r, lo: -3, hi: 3)  // the same n·t·o values, another shape
        let plain = lin.forward(x)
        XCTAssertTrue(same(lin.forward(x, plus: res), Ops.residual(plain, res.reshaped(plain.shape), divisor: 1)), "linear")
        let a = Ops.groupNormAffine(x, groups: 8, gamma: (0..<kf).map { _ in r.uniform() + 0.5 }, beta: (0..<kf).map { _ in r.uniform() }, eps: 1e-6)
        XCTAssertTrue(same(lin.forward(a, plus: res), Ops.residual(lin.forward(a), res.reshaped(plain.shape), divisor: 1)), "linear, normalized rows")
    }

    /// A UNet up block's input `[h, skip]` read from its two parts, never written: GroupNorm's statistics over the
    /// parts equal those over the concatenation (scale and shift bit for bit, channel counts that do and do not fill
    /// 16-lane vectors), the normalized activation materializes to the same tensor, and an integer conv whose two
    /// input parts split at C(h) gives the same bits from the parts as from the concatenated tensor — plain input
    /// (the shortcut), normalized input (conv1), a residual added, hi/lo duplicated weights.
    func testConcatenationReadFromItsParts() {
        var r = LCG(s: 31)
        func same(_ a: Tensor, _ b: Tensor) -> Bool { a.shape == b.shape && a.array.elementsEqual(b.array) { $0.bitPattern == $1.bitPattern } }
        for (c1, c2, groups, k) in [(16, 16, 8, 3), (24, 40, 8, 3), (32, 16, 4, 1), (20, 12, 4, 3)] {
            let (n, h, w) = (2, 7, 9)
            let a = tensor([n, h, w, c1], &r, lo: -2, hi: 3), b = tensor([n, h, w, c2], &r, lo: -1, hi: 4)
            let cat = Ops.concatChannels(a, b)
            let c = c1 + c2
            let gamma = (0..<c).map { _ in 0.5 + r.uniform() }, beta = (0..<c).map { _ in r.uniform() - 0.5 }
            let whole = Ops.groupNormAffine(cat, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, silu: true)
            let parts = Ops.groupNormAffine(a, concatenating: b, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, silu: true)
            XCTAssertTrue(same(parts.scale, whole.scale) && same(parts.shift, whole.shift), "GroupNorm statistics, \(c1)+\(c2)")
            XCTAssertEqual(parts.shape, cat.shape)
            XCTAssertTrue(same(parts.materialize(), whole.materialize()), "materialized, \(c1)+\(c2)")
            let g = Conv2DGeometry(inChannels: c, outChannels: 16, kernel: k, stride: 1, padding: k / 2)
            let q = ints(g.weightCount, bits: 8, &r)
            let ws = (0..<16).map { _ in 0.01 + 0.02 * r.uniform() }, bias = (0..<16).map { _ in r.uniform() - 0.5 }
            let aq = [ActivationQuantization(lo: -0.4, hi: 2.5, bits: 8)!, ActivationQuantization(lo: -1.5, hi: 4, bits: 8)!]
            for force: Bool? in [nil, true] {
                let conv = Int8Conv2D(geometry: g, weights: q, weightScales: ws, bias: bias, inputs: aq, split: c1, forceDuplicate: force)
                XCTAssertTrue(conv.readsConcatenation(split: c1) && !conv.readsConcatenation(split: c1 + 1))
                XCTAssertTrue(same(conv.forward(a, concatenatedWith: b), conv.forward(cat)), "plain, \(c1)+\(c2) k\(k)")
                XCTAssertTrue(same(conv.forward(parts), conv.forward(whole)), "normalized, \(c1)+\(c2) k\(k)")
                let res = tensor([n, h, w, 16], &r, lo: -2, hi: 2)
                XCTAssertTrue(same(conv.forward(parts, plus: res), conv.forward(whole, plus: res)), "normalized + residual, \(c1)+\(c2)")
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
