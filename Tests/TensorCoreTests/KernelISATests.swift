import CKernels
import TensorCore
import XCTest

/// The C kernels exist per ISA (generic x86-64, AVX2, AVX-512). On every variant this CPU supports:
/// each kernel against its plain reference (same tolerances as KernelTests), and every variant
/// bit-identical to the generic one (same operations in the same order, no FMA contraction).
final class KernelISATests: XCTestCase {
    override class func setUp() {
        DNNL.setThreads(2)
        print("[kernel-isa] supported: \(KernelISA.supported.map(\.description).joined(separator: ", ")); active: \(KernelISA.active); oneDNN: \(DNNL.isaName)\(DNNL.hasVNNI ? " (VNNI: 8-bit weights run directly)" : " (no VNNI: 8-bit weights run as hi+lo halves)")")
    }

    func random(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Tensor {
        uniformTensor(shape, seed: seed, scale: scale, offset: offset)
    }

    /// Every kernel's output for fixed inputs, as one list of arrays (sizes with 16-lane tails, threaded sizes).
    func outputs() -> [[Float]] {
        var out: [[Float]] = []
        for (c, groups) in [(12, 4), (40, 5), (64, 8)] {
            let x = random([2, 9, 10, c], seed: UInt64(c), scale: 3, offset: 1)
            let gamma = random([c], seed: 1).array, beta = random([c], seed: 2).array
            let pre = random([2, c], seed: 3)
            for silu in [false, true] {
                out.append(Ops.groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, preAdd: pre, silu: silu).array)
            }
            let t = random([2, 2 * c], seed: 4)
            let y = x.copy(); Ops.scaleShiftInPlace(y, t, silu: true); out.append(y.array)
        }
        let s = random([5, 77], seed: 5, scale: 20)
        Ops.softmaxRowsInPlace(s.data, rows: 5, length: 77, scale: 0.125)
        out.append(s.array)
        // The integer attention's softmax row: the bytes (and level sum) of convert + softmax_row + quantize.
        for n in [7, 77] {
            let raw: [Int32] = (0..<n).map { Int32(($0 * 7919) % 4001) - 2000 }, col: [Int32] = (0..<n).map { Int32(($0 * 31) % 97) - 50 }
            let pq = ActivationQuantization(lo: 0, hi: 0.7, bits: 8)!
            var scratch = [Float](repeating: 0, count: n), fused = [UInt8](repeating: 0, count: n)
            let sum = scratch.withUnsafeMutableBufferPointer { sc in fused.withUnsafeMutableBufferPointer {
                ptqd_int_softmax_u8(raw, n, -123, col, 0.003, 0.25, sc.baseAddress!, $0.baseAddress!, 1 / pq.scale, Float(pq.qmax))
            } }
            var row = (0..<n).map { Float(raw[$0] - 123 + col[$0]) * 0.003 }, plain = [UInt8](repeating: 0, count: n)
            row.withUnsafeMutableBufferPointer { ptqd_softmax_row($0.baseAddress!, n, 0.25) }
            row.withUnsafeBufferPointer { r in plain.withUnsafeMutableBufferPointer { pq.quantize(r.baseAddress!, $0.baseAddress!, count: n) } }
            XCTAssertEqual(fused, plain, "\(KernelISA.active): integer softmax row (n \(n))")
            XCTAssertEqual(sum, plain.reduce(0) { $0 + Int($1) }, "\(KernelISA.active): integer softmax level sum")
            out.append(fused.map(Float.init))
        }
        for count in [13, 16 * 2048 * 2 + 7] {
            let a = random([count], seed: 6, scale: 30), b = random([count], seed: 7)
            out.append(Ops.silu(a).array)
            out.append(Ops.residual(a, b, divisor: 1.4142135).array)
            out.append(Ops.residual(a, b, divisor: 1).array)
            let added = a.copy(); Ops.addInPlace(added, b, scale: 0.5); out.append(added.array)
            let scaled = a.copy(); Ops.scaleInPlace(scaled, -3); out.append(scaled.array)
            out.append(FastMath.exp(a.array))
            out.append(Ops.geglu(Tensor(shape: [1, 2 * count], values: b.array + a.array)).array)
            let d = count < 100 ? count : 77
            out.append(Ops.layerNorm(Tensor(shape: [count / d, d], values: Array(a.array[0..<(count / d * d)])),
                                     gamma: Array(b.array[0..<d]), beta: Array(a.array[0..<d]), eps: 1e-5).array)
        }
        for bits in [4, 8] {
            let q = ActivationQuantization(lo: -1.3, hi: 2.9, bits: bits)!
            var values: [Float] = (0..<203).map { i in Float(i) * 0.037 - 3 }
            values += (-8...300).map { k in (Float(k) + 0.5 - Float(q.zeroPoint)) * q.scale }
            var ints = [UInt8](repeating: 0, count: values.count)
            values.withUnsafeBufferPointer { src in ints.withUnsafeMutableBufferPointer { q.quantize(src.baseAddress!, $0.baseAddress!, count: values.count) } }
            out.append(ints.map(Float.init))
            // The contiguous run (mode 0, stride = channels) is one elementwise pass: the same bytes.
            var contiguous = [UInt8](repeating: 0, count: values.count)
            values.withUnsafeBufferPointer { src in contiguous.withUnsafeMutableBufferPointer {
                q.quantizePixels(PixelRun(source: src.baseAddress!, sourceStride: 1, pixels: values.count, channels: 1,
                                          destination: $0.baseAddress!, destinationStride: 1, duplicate: false))
            } }
            XCTAssertEqual(contiguous, ints, "\(KernelISA.active): contiguous pixel run")
            // GroupNorm's affine + SiLU fused into the quantizer: the bytes of quantizing the materialized values.
            for c in [13, 40] {
                let x = random([2, 7, 5, c], seed: UInt64(c + bits), scale: 2, offset: 0.3)
                for silu in [false, true] {
                    let affine = Ops.groupNormAffine(x, groups: 1, gamma: random([c], seed: 5).array, beta: random([c], seed: 6).array,
                                                     eps: 1e-5, preAdd: random([2, c], seed: 7), silu: silu)
                    let m = affine.materialize()
                    var fused = [UInt8](repeating: 0, count: x.count), plain = fused
                    let hw = 35
                    for b in 0..<2 {
                        for p in 0..<hw {
                            let off = (b * hw + p) * c
                            fused.withUnsafeMutableBufferPointer { q.quantize(x.data + off, $0.baseAddress! + off, count: c, scale: affine.scale.data + b * c, shift: affine.shift.data + b * c, silu: silu) }
                            plain.withUnsafeMutableBufferPointer { q.quantize(m.data + off, $0.baseAddress! + off, count: c) }
                        }
                    }
                    XCTAssertEqual(fused, plain, "\(KernelISA.active): fused affine quantizer differs from materialize + quantize (\(bits) bits, C \(c), silu \(silu))")
                    out.append(fused.map(Float.init))
                    // A run of pixels in one call (strided source, ×2 upsampling, duplicated halves, affine or not):
                    // the bytes of one call per pixel.
                    for (shift, dup, useAffine) in [(0, false, true), (1, true, true), (1, false, false), (0, true, false)] {
                        let run = 12, stride = c + 3, rc = dup ? 2 * c : c
                        let src = random([run * stride], seed: UInt64(c * 7 + shift), scale: 2, offset: 0.3)
                        var batched = [UInt8](repeating: 7, count: (run << shift) * rc), single = batched
                        let a = affine.scale.data + c, b = affine.shift.data + c  // sample 1's map
                        batched.withUnsafeMutableBufferPointer { d in
                            let pr = PixelRun(source: src.data, sourceStride: stride, shift: shift, pixels: run << shift, channels: c,
                                              destination: d.baseAddress!, destinationStride: rc, duplicate: dup)
                            if useAffine { q.quantizePixels(pr, scale: a, shift: b, silu: silu) } else { q.quantizePixels(pr) }
                        }
                        single.withUnsafeMutableBufferPointer { d in
                            for p in 0..<(run << shift) {
                                let s = src.data + (p >> shift) * stride, o = d.baseAddress! + p * rc
                                if useAffine { q.quantize(s, o, count: c, scale: a, shift: b, silu: silu) } else { q.quantize(s, o, count: c) }
                                if dup { (o + c).update(from: o, count: c) }
                            }
                        }
                        XCTAssertEqual(batched, single, "\(KernelISA.active): pixel run differs from per-pixel calls (C \(c), shift \(shift), dup \(dup), affine \(useAffine), silu \(silu))")
                        out.append(batched.map(Float.init))
                    }
                }
            }
            let fake = ActivationQuantization.fakeQuantize(Tensor(shape: [values.count, 1], values: values), parts: [(0..<1, q)])
            out.append(fake.array)
            XCTAssertEqual(ints, values.map(q.referenceLevel), "\(KernelISA.active) quantizer vs referenceLevel, \(bits) bits")
        }
        return out
    }

    func testEveryVariantMatchesReferenceAndGeneric() {
        let generic = KernelISA.with(.generic) { outputs() }
        for isa in KernelISA.supported {
            KernelISA.with(isa) {
                XCTAssertEqual(KernelISA.active, isa)
                let got = outputs()
                XCTAssertEqual(got.count, generic.count)
                for (i, (a, b)) in zip(got, generic).enumerated() {
                    XCTAssertTrue(a.elementsEqual(b, by: { $0.bitPattern == $1.bitPattern }), "\(isa): output \(i) differs from the generic variant")
                }
                // Against the plain references.
                let x = random([3, 9, 10, 40], seed: 9, scale: 3, offset: 2)
                let gamma = random([40], seed: 8).array, beta = random([40], seed: 9).array
                let pre = random([3, 40], seed: 10)
                let gn = Ops.groupNorm(x, groups: 5, gamma: gamma, beta: beta, eps: 1e-5, preAdd: pre, silu: true)
                XCTAssertLessThanOrEqual(relativeError(gn.array, Reference.groupNorm(x, groups: 5, gamma: gamma, beta: beta, eps: 1e-5, preAdd: pre, silu: true).array), 2e-5, "\(isa) GroupNorm")
                let s = random([7, 37], seed: 11, scale: 20)
                let fast = s.copy(); Ops.softmaxRowsInPlace(fast.data, rows: 7, length: 37, scale: 0.3)
                XCTAssertLessThanOrEqual(relativeError(fast.array, Reference.softmaxRows(s.array, rows: 7, length: 37, scale: 0.3)), 1e-5, "\(isa) softmax")
                let y = random([1000], seed: 12, scale: 30)
                XCTAssertLessThanOrEqual(relativeError(Ops.silu(y).array, Reference.silu(y).array), 1e-6, "\(isa) SiLU")
                for (v, e) in zip(y.array, FastMath.exp(y.array)) {
                    XCTAssertEqual(e, expReference(v), accuracy: expReference(v) * 3e-7, "\(isa) exp(\(v))")
                }
            }
        }
    }

    func testUnsupportedLevelFallsBack() {
        let saved = KernelISA.active
        defer { KernelISA.active = saved }
        KernelISA.active = .avx512
        XCTAssertEqual(KernelISA.active, KernelISA.supported.last!, "asking for the top level gives the best supported one")
        KernelISA.active = .generic
        XCTAssertEqual(KernelISA.active, .generic)
    }
}
