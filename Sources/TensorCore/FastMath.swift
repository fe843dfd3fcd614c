//===--- FastMath.swift - vectorized exp and sigmoid ------------------------===//
//
// exp over SIMD16<Float> with the Cephes expf range reduction and polynomial: relative error
// below 2e-7 on [-87.3, 88.7] (inputs are clamped to that range; exp(-87.3) ≈ 1.2e-38).
// `expReference` (libm, Double) is the plain reference the tests compare against.
//
//===----------------------------------------------------------------------===//

import Foundation

public typealias Float16x = SIMD16<Float>

@inline(__always)
public func vexp(_ x0: SIMD16<Float>) -> SIMD16<Float> {
    // Round-to-nearest and float→int through the 1.5·2^23 "magic number" (plain vector adds and
    // bit casts: Swift's generic SIMD rounding/conversion initializers are scalar loops).
    let magic = SIMD16<Float>(repeating: 12582912)
    // pointwiseMin/Max compile to vminps/vmaxps; the generic `clamped(lowerBound:upperBound:)` is a
    // scalar per-lane loop through the stack (it made GroupNorm+SiLU 30% of a UNet forward).
    let x1 = pointwiseMin(pointwiseMax(x0, SIMD16(repeating: -87.3)), SIMD16(repeating: 88.7))
    let shifted = x1 * 1.44269504088896341 + magic
    let fx = shifted - magic
    var x = x1 - fx * 0.693359375
    x = x + fx * 2.12194440e-4
    let z = x * x
    var y: SIMD16<Float> = SIMD16(repeating: 1.9875691500e-4)
    y = y * x + 1.3981999507e-3
    y = y * x + 8.3334519073e-3
    y = y * x + 4.1665795894e-2
    y = y * x + 1.6666665459e-1
    y = y * x + 5.0000001201e-1
    y = y * z + x + 1
    let n = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000
    let pow2 = unsafeBitCast((n &+ 127) &<< 23, to: SIMD16<Float>.self)
    return y * pow2
}

/// Scalar exp through the same polynomial (for loop tails).
@inline(__always)
public func fastExp(_ x: Float) -> Float { vexp(SIMD16(repeating: x))[0] }

/// Reference exp (libm in Double), for tests.
public func expReference(_ x: Float) -> Float { Float(Foundation.exp(Double(x))) }

/// SiLU `x·σ(x)` on 16 lanes.
@inline(__always)
public func vsilu(_ x: SIMD16<Float>) -> SIMD16<Float> { x / (1 + vexp(-x)) }

/// Applies `body` to `count` floats at `p` 16 at a time, padding the tail.
@inline(__always)
func map16(_ p: UnsafeMutablePointer<Float>, _ count: Int, _ body: (SIMD16<Float>) -> SIMD16<Float>) {
    var i = 0
    while i + 16 <= count {
        let v = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(p + i).storeBytes(of: body(v), as: SIMD16<Float>.self)
        i += 16
    }
    if i < count {
        var v = SIMD16<Float>(repeating: 0)
        for j in 0..<(count - i) { v[j] = p[i + j] }
        let r = body(v)
        for j in 0..<(count - i) { p[i + j] = r[j] }
    }
}
