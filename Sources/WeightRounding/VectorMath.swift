//===--- VectorMath.swift - branch-free exp/log that LLVM vectorizes --------===//
//
// Scalar Cephes expf/logf written with plain arithmetic, selects and bit casts (no libm calls), so
// loops over plain Float buffers that call them auto-vectorize. Relative error ~2e-7 for exp on
// [−87.3, 88.7] (inputs clamped) and for log on positive normal inputs. Plain references: Foundation's
// exp/log in Float64 (the tests compare them).
//
//===----------------------------------------------------------------------===//

/// e^x, Cephes expf: x = n·ln2 + r, polynomial in r, 2^n by exponent bits.
@inline(__always)
func fastExpf(_ x0: Float) -> Float {
    let x = min(max(x0, -87.3), 88.7)
    let shifted = x * 1.44269504088896341 + 12_582_912  // round(x/ln2) via the 1.5·2^23 magic number
    let fx = shifted - 12_582_912
    var r = x - fx * 0.693359375
    r = r + fx * 2.12194440e-4
    let z = r * r
    var y: Float = 1.9875691500e-4
    y = y * r + 1.3981999507e-3
    y = y * r + 8.3334519073e-3
    y = y * r + 4.1665795894e-2
    y = y * r + 1.6666665459e-1
    y = y * r + 5.0000001201e-1
    y = y * z + r + 1
    let n = Int32(bitPattern: shifted.bitPattern) &- 0x4B40_0000
    return y * Float(bitPattern: UInt32(bitPattern: (n &+ 127) &<< 23))
}

/// ln x for positive normal x, Cephes logf: x = m·2^e with m ∈ [√½, √2), degree-9 polynomial in m − 1.
@inline(__always)
func fastLogf(_ x: Float) -> Float {
    let bits = x.bitPattern
    let biased = Float(Int32(bitPattern: (bits &>> 23) & 0xFF))
    let m = Float(bitPattern: (bits & 0x007F_FFFF) | 0x3F00_0000)  // [0.5, 1)
    let small = m < 0.707106781186547524
    let e = biased - (small ? 127 : 126)
    let t = small ? m + m - 1 : m - 1
    let z = t * t
    var y: Float = 7.0376836292e-2
    y = y * t - 1.1514610310e-1
    y = y * t + 1.1676998740e-1
    y = y * t - 1.2420140846e-1
    y = y * t + 1.4249322787e-1
    y = y * t - 1.6668057665e-1
    y = y * t + 2.0000714765e-1
    y = y * t - 2.4999993993e-1
    y = y * t + 3.3333331174e-1
    y = y * t * z
    y = y + e * -2.12194440e-4
    y = y - z * 0.5
    return t + y + e * 0.693359375
}

/// √x for x ≥ 0 (0 → 0): inverse square root by the bit trick and two Newton steps, times x. Relative
/// error ~1e-7 on normal inputs; branch-free so it vectorizes.
@inline(__always)
func fastSqrtf(_ x: Float) -> Float {
    var y = Float(bitPattern: 0x5F37_5A86 &- (x.bitPattern &>> 1))
    let half = 0.5 * x
    y = y * (1.5 - half * y * y)
    y = y * (1.5 - half * y * y)
    y = y * (1.5 - half * y * y)
    return x * y
}
