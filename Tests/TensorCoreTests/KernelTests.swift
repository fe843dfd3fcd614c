import TensorCore
import XCTest

/// Every fast kernel against its plain reference (Reference.swift / referenceConv2D).
/// Tolerances: fp32 kernels vs Double references, max|fast − ref| / max|ref| ≤ 1e-5 unless stated.
final class KernelTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        let t = Tensor(shape: shape)
        for i in 0..<t.count {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            t.data[i] = (Float(s >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
        return t
    }

    func testConvMatchesReferenceAcrossGeometries() {
        let cases: [(Conv2DGeometry, [Int])] = [
            (.init(inChannels: 3, outChannels: 8, kernel: 3, stride: 1, padding: 1), [2, 9, 7, 3]),
            (.init(inChannels: 16, outChannels: 16, kernel: 3, stride: 2, padding: 1), [1, 8, 8, 16]),
            (.init(inChannels: 8, outChannels: 4, kernel: 1), [3, 5, 5, 8]),
            (.init(inChannels: 4, outChannels: 4, kernelH: 3, kernelW: 3, stride: 2, padTop: 0, padLeft: 0, padBottom: 1, padRight: 1), [2, 6, 6, 4]),
            (.init(inChannels: 5, outChannels: 7, kernel: 5, stride: 1, padding: 2), [1, 6, 6, 5]),
        ]
        for (i, (g, shape)) in cases.enumerated() {
            let x = random(shape, seed: UInt64(i))
            let w = random([g.weightCount], seed: UInt64(100 + i)).array
            let b = random([g.outChannels], seed: UInt64(200 + i)).array
            let fast = FloatConv2D(geometry: g, weights: w, bias: b).forward(x)
            let ref = referenceConv2D(x, geometry: g, weights: w, bias: b)
            XCTAssertEqual(fast.shape, ref.shape)
            XCTAssertLessThanOrEqual(relativeError(fast.array, ref.array), 1e-5, "case \(i) \(g)")
        }
    }

    func testLinearAndBatchedMatmul() {
        let x = random([5, 12], seed: 1), w = random([7 * 12], seed: 2).array, b = random([7], seed: 3).array
        let y = FloatLinear(inFeatures: 12, outFeatures: 7, weights: w, bias: b).forward(x)
        var wt = [Float](repeating: 0, count: 12 * 7)
        for o in 0..<7 { for i in 0..<12 { wt[i * 7 + o] = w[o * 12 + i] } }
        var ref = Reference.matmul(x.array, wt, m: 5, k: 12, n: 7)
        for r in 0..<5 { for o in 0..<7 { ref[r * 7 + o] += b[o] } }
        XCTAssertLessThanOrEqual(relativeError(y.array, ref), 1e-5)
        // Batched, strided: heads read out of a [N, T, C] tensor.
        let (n, t, heads, d) = (2, 6, 3, 4)
        let c = heads * d
        let q = random([n, t, c], seed: 4), k = random([n, t, c], seed: 5)
        let s = Tensor(shape: [n, heads, t, t])
        StridedBatchedMatmul().run(a: q.data, .init(dims: [n, heads, t, d], strides: [t * c, d, c, 1]),
                                   b: k.data, .init(dims: [n, heads, d, t], strides: [t * c, d, 1, c]),
                                   c: s.data, .init(dims: [n, heads, t, t], strides: [heads * t * t, t * t, t, 1]))
        for bi in 0..<n { for h in 0..<heads { for i in 0..<t { for j in 0..<t {
            var acc: Double = 0
            for e in 0..<d { acc += Double(q.data[(bi * t + i) * c + h * d + e]) * Double(k.data[(bi * t + j) * c + h * d + e]) }
            XCTAssertEqual(Double(s.data[((bi * heads + h) * t + i) * t + j]), acc, accuracy: 1e-5)
        } } } }
    }

    func testGroupNormWithPreAddAndSiLU() {
        // Channel counts below, at and past the 16-lane vector width (vector body + scalar tail).
        for (c, groups) in [(12, 4), (32, 8), (40, 5)] {
            let x = random([3, 9, 10, c], seed: UInt64(7 + c), scale: 3)  // 90 pixels: more than one 64-pixel block
            for i in 0..<x.count { x.data[i] += 2 }  // non-zero mean stresses the one-pass variance
            let gamma = random([c], seed: 8).array, beta = random([c], seed: 9).array
            let pre = random([3, c], seed: 10)
            for (p, silu) in [(nil, false), (pre, false), (pre, true), (nil, true)] as [(Tensor?, Bool)] {
                let fast = Ops.groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, preAdd: p, silu: silu)
                let ref = Reference.groupNorm(x, groups: groups, gamma: gamma, beta: beta, eps: 1e-5, preAdd: p, silu: silu)
                XCTAssertLessThanOrEqual(relativeError(fast.array, ref.array), 2e-5, "C \(c) preAdd \(p != nil) silu \(silu)")
            }
        }
    }

    func testSoftmaxSiLUAndExp() {
        let x = random([7, 37], seed: 11, scale: 20)
        let fast = x.copy()
        Ops.softmaxRowsInPlace(fast.data, rows: 7, length: 37, scale: 0.3)
        XCTAssertLessThanOrEqual(relativeError(fast.array, Reference.softmaxRows(x.array, rows: 7, length: 37, scale: 0.3)), 1e-5)
        let y = random([1000], seed: 12, scale: 30)
        XCTAssertLessThanOrEqual(relativeError(Ops.silu(y).array, Reference.silu(y).array), 1e-6)
        let points: [Float] = [-87, -20, -1, -1e-3, 0, 1e-3, 0.5, 1, 10, 50, 88]
        for (v, e) in zip(points, FastMath.exp(points)) {
            XCTAssertEqual(e, expReference(v), accuracy: expReference(v) * 3e-7, "exp(\(v))")
        }
    }

    /// GEGLU's vectorized erf against the Double definition: pointwise, the GELU factor 1 + erf(g/√2) within 2.5e-7
    /// absolute (float32's step near 2 is 2.4e-7; PyTorch's CPU erf is within 1.5e-7) and within 5e-5 relative on
    /// the negative tail (where GELU is below 1e-3·|g|; the rounding of z = g/√2 and z² dominates there), over g in [−14, 14] densely and at the region boundaries (|z| = 1, 9), ±0, ±∞ and NaN.
    func testGEGLUMatchesDefinition() {
        var gates: [Float] = (0..<28_001).map { Float($0) * 0.001 - 14 }
        let edges: [Float] = [1, 9].flatMap { z -> [Float] in
            let g = z * 2.0.squareRoot()
            let gf = Float(g)
            return [gf.nextDown, gf, gf.nextUp, -gf.nextDown, -gf, -gf.nextUp]
        }
        gates += edges + [0, -0, 1e-30, -1e-30, 40, -40]
        let n = gates.count
        let x = Tensor(shape: [1, 2 * n], values: [Float](repeating: 1, count: n) + gates)
        let y = Ops.geglu(x)
        var worstTail: Double = 0
        for (i, g) in gates.enumerated() {
            let exact = erfc(-Double(g) / 2.0.squareRoot())  // = 1 + erf(z), without cancellation in the tail
            let got = Double(y.data[i]) / (0.5 * Double(g))
            if g == 0 { XCTAssertEqual(y.data[i], 0); continue }
            let err = abs(got - exact)
            XCTAssertLessThanOrEqual(err, 2.5e-7, "GELU factor at g = \(g): \(got) vs \(exact)")
            if g < -1.5 && g > -12.7 {  // the negative tail, |z| ≤ 9: relative accuracy
                XCTAssertLessThanOrEqual(err / exact, 5e-5, "GELU factor's tail at g = \(g): \(got) vs \(exact)")
                worstTail = max(worstTail, err / exact)
            }
        }
        print("[geglu] worst relative error of the GELU factor's negative tail: \(worstTail)")
        // A whole tensor against Reference.geglu (h and gate both random).
        let t = random([3, 7, 2 * 53], seed: 77, scale: 6)
        XCTAssertLessThanOrEqual(relativeError(Ops.geglu(t).array, Reference.geglu(t).array), 1e-6)
        let special = Ops.geglu(Tensor(shape: [1, 6], values: [1, 1, 1, .infinity, -.infinity, .nan]))
        XCTAssertEqual(special.data[0], .infinity)
        XCTAssertTrue(special.data[2].isNaN)
        _ = special.data[1]  // GELU(−∞) = −∞·0: NaN here as in PyTorch's formula; not asserted
    }

    /// LayerNorm rows (16-lane tails, a row far from zero mean, a constant row) against the Double definition.
    func testLayerNormMatchesDefinition() {
        for d in [5, 13, 16, 77, 320] {
            let x = random([3, 4, d], seed: UInt64(d), scale: 3)
            for i in 0..<d { x.data[i] += 1000 }  // row 0: large mean, small spread
            for i in 0..<d { x.data[d + i] = 0.5 }  // row 1: constant (variance 0, eps only)
            let g = random([d], seed: 1).array, b = random([d], seed: 2).array
            let fast = Ops.layerNorm(x, gamma: g, beta: b, eps: 1e-5), ref = Reference.layerNorm(x, gamma: g, beta: b, eps: 1e-5)
            // Row 0's mean (≈ 1000) rounds to float32 at 3e-5 of its spread (any float implementation, PyTorch's too).
            XCTAssertLessThanOrEqual(relativeError(Array(fast.array[0..<d]), Array(ref.array[0..<d])), 5e-5, "LayerNorm D \(d), mean 1000")
            XCTAssertLessThanOrEqual(relativeError(Array(fast.array[d...]), Array(ref.array[d...])), 1e-5, "LayerNorm D \(d)")
        }
    }

    func testResamplingConcatAndLayout() {
        let x = random([2, 3, 5, 4], seed: 13)
        let up = Ops.upsampleNearest2x(x)
        XCTAssertEqual(up.shape, [2, 6, 10, 4])
        for b in 0..<2 { for yy in 0..<6 { for xx in 0..<10 { for c in 0..<4 {
            XCTAssertEqual(up.data[((b * 6 + yy) * 10 + xx) * 4 + c], x.data[((b * 3 + yy / 2) * 5 + xx / 2) * 4 + c])
        } } } }
        let pooled = Ops.avgPool2x(random([1, 4, 4, 2], seed: 14))
        XCTAssertEqual(pooled.shape, [1, 2, 2, 2])
        let a = random([2, 3, 3, 2], seed: 15), b = random([2, 3, 3, 5], seed: 16)
        let (a2, b2) = Ops.splitChannels(Ops.concatChannels(a, b), at: 2)
        XCTAssertEqual(a2.array, a.array); XCTAssertEqual(b2.array, b.array)
        let nchw = (0..<(2 * 3 * 4 * 5)).map(Float.init)
        XCTAssertEqual(Tensor.fromNCHW(nchw, n: 2, c: 3, h: 4, w: 5).toNCHW(), nchw)
    }

    /// The vectorized, threaded elementwise ops against plain loops, on sizes with a 16-lane tail
    /// and enough elements to be split across threads.
    func testElementwiseOpsMatchPlainLoops() {
        for count in [7, 16 * 2048 * 2 + 5] {
            let a = random([count], seed: 21), b = random([count], seed: 22)
            let r = Ops.residual(a, b, divisor: 1.4142135)
            let added = a.copy(); Ops.addInPlace(added, b, scale: 0.5)
            let scaled = a.copy(); Ops.scaleInPlace(scaled, -3)
            for i in 0..<count {
                XCTAssertEqual(r.data[i], (a.data[i] + b.data[i]) / 1.4142135)
                XCTAssertEqual(added.data[i], a.data[i] + b.data[i] * 0.5)
                XCTAssertEqual(scaled.data[i], a.data[i] * -3)
            }
        }
        // Scale-shift time conditioning (+ SiLU) on [N, H, W, C] with C not a multiple of 16.
        let (n, hw, c) = (3, 20, 24)
        let x = random([n, 4, 5, c], seed: 23), t = random([n, 2 * c], seed: 24)
        let y = x.copy(); Ops.scaleShiftInPlace(y, t, silu: true)
        var expected = [Float](repeating: 0, count: x.count)
        for bi in 0..<n { for p in 0..<hw { for i in 0..<c {
            let k = (bi * hw + p) * c + i
            expected[k] = x.data[k] * (1 + t.data[bi * 2 * c + i]) + t.data[bi * 2 * c + c + i]
        } } }
        let ref = Reference.silu(Tensor(shape: x.shape, values: expected))
        XCTAssertLessThan(relativeError(y.array, ref.array), 1e-5)
    }

    func testAveragePoolAndConcatMatchPlainLoops() {
        let x = random([2, 34, 18, 20], seed: 25)
        let pooled = Ops.avgPool2x(x)
        XCTAssertEqual(pooled.shape, [2, 17, 9, 20])
        for b in 0..<2 { for oy in 0..<17 { for ox in 0..<9 { for c in 0..<20 {
            func v(_ y: Int, _ xx: Int) -> Float { x.data[((b * 34 + y) * 18 + xx) * 20 + c] }
            let e = (v(2 * oy, 2 * ox) + v(2 * oy, 2 * ox + 1) + v(2 * oy + 1, 2 * ox) + v(2 * oy + 1, 2 * ox + 1)) * 0.25
            XCTAssertEqual(pooled.data[((b * 17 + oy) * 9 + ox) * 20 + c], e, accuracy: 1e-6)
        } } } }
        let a = random([4, 16, 16, 3], seed: 26), b = random([4, 16, 16, 5], seed: 27)
        let cat = Ops.concatChannels(a, b)
        for p in 0..<(4 * 256) {
            XCTAssertEqual(Array(cat.buffer[(p * 8)..<(p * 8 + 3)]), Array(a.buffer[(p * 3)..<(p * 3 + 3)]))
            XCTAssertEqual(Array(cat.buffer[(p * 8 + 3)..<(p * 8 + 8)]), Array(b.buffer[(p * 5)..<(p * 5 + 5)]))
        }
    }

    /// Large buffers of recurring sizes are reused by exact size; one-off sizes are not kept; the cache
    /// respects its byte limit.
    func testTensorStorageReuse() {
        TensorStorage.purge()
        // A size seen once (e.g. a growing concatenation) goes back to the system.
        var once: Tensor? = Tensor(uninitialized: [1, 512, 511])
        XCTAssertNotNil(once)
        once = nil
        XCTAssertEqual(TensorStorage.cachedByteCount, 0, "a one-off size is not cached")
        // A recurring size is cached from its second allocation on and then reused.
        var a: Tensor? = Tensor(uninitialized: [1, 512, 512])
        a = nil
        a = Tensor(uninitialized: [1, 512, 512])
        let second = a!.data
        a = nil
        XCTAssertEqual(TensorStorage.cachedByteCount, 512 * 512 * 4)
        let b = Tensor(shape: [512, 512])
        XCTAssertEqual(b.data, second, "a freed 1 MiB buffer of a recurring size is reused for the same size")
        XCTAssertEqual(b.data[12345], 0, "Tensor(shape:) still zero-fills reused storage")
        XCTAssertEqual(TensorStorage.cachedByteCount, 0)
        let saved = TensorStorage.limitBytes
        TensorStorage.limitBytes = 0
        for _ in 0..<3 { _ = Tensor(uninitialized: [300_000]) }
        XCTAssertEqual(TensorStorage.cachedByteCount, 0, "nothing is cached beyond the limit")
        TensorStorage.limitBytes = saved
        TensorStorage.purge()
    }

    /// The OpenMP fork-join covers every index exactly once, for any count/minChunk, nested or not.
    func testParallelChunksCoverEveryIndexOnce() {
        for (count, minChunk) in [(0, 1), (1, 1), (5, 1), (1000, 7), (1001, 1000), (100_003, 64)] {
            let hits = UnsafeMutablePointer<Int32>.allocate(capacity: max(count, 1))
            hits.initialize(repeating: 0, count: max(count, 1))
            defer { hits.deallocate() }
            Parallel.forEachChunk(count, minChunk: minChunk) { r in
                for i in r { hits[i] += 1 }
                // A nested loop inside a team member must still run (serially) and cover its range.
                Parallel.forEachChunk(3) { inner in XCTAssertFalse(inner.isEmpty) }
            }
            for i in 0..<count { XCTAssertEqual(hits[i], 1, "index \(i) of \(count)") }
        }
    }

    func testTimestepEmbeddingMatchesDefinition() {
        let e = Ops.timestepEmbedding([0, 1, 999], dim: 8, flipSinToCos: true, downscaleFreqShift: 1)
        // half = 4, freq_i = exp(-ln(1e4)·i/3): [cos, sin]
        for (n, t) in [0.0, 1.0, 999.0].enumerated() { for i in 0..<4 {
            let f = Foundation.exp(-Foundation.log(10000.0) * Double(i) / 3)
            XCTAssertEqual(Double(e.data[n * 8 + i]), Foundation.cos(t * f), accuracy: 2e-4)
            XCTAssertEqual(Double(e.data[n * 8 + 4 + i]), Foundation.sin(t * f), accuracy: 2e-4)
        } }
    }
}

import Foundation

/// Live-tensor accounting (the activation peak `ptqd bench` reports): counts every tensor, small or large,
/// cached or not, and the peak resets to the current level.
final class TensorStorageAccountingTests: XCTestCase {
    func testLiveBytesAndPeak() {
        let before = TensorStorage.liveBytes.now
        TensorStorage.resetPeakLive()
        do {
            let big = Tensor(shape: [1 << 18])        // 1 MiB: the reuse-cache path
            let small = Tensor(shape: [100])          // 400 B: straight malloc
            XCTAssertEqual(TensorStorage.liveBytes.now - before, big.count * 4 + small.count * 4)
            do { let extra = Tensor(shape: [1 << 16]); XCTAssertEqual(extra.count, 1 << 16) }
            XCTAssertEqual(TensorStorage.liveBytes.peak - before, (1 << 20) + 400 + (1 << 18), "the peak saw all three at once")
        }
        XCTAssertEqual(TensorStorage.liveBytes.now, before, "freed tensors (cached or not) are no longer live")
        TensorStorage.resetPeakLive()
        XCTAssertEqual(TensorStorage.liveBytes.peak, before)
    }
}
