//===--- KernelISA.swift - which variant of the C kernels runs ---------------===//
//
// The memory-bound kernels (CKernels: SiLU, GroupNorm passes, softmax rows, elementwise ops, the
// activation quantizer, exp) exist in three variants compiled from one body: x86-64 baseline,
// AVX2+FMA and AVX-512. The best one the CPU supports is chosen when the library loads, capped by
// `PTQD_MAX_ISA=generic|avx2|avx512`. All variants compute bit-identical results.
//
//===----------------------------------------------------------------------===//

import CKernels
import Foundation

/// An instruction-set level of the C kernels.
public enum KernelISA: Int32, CaseIterable, CustomStringConvertible, Sendable {
    case generic = 0, avx2 = 1, avx512 = 2

    /// The variant in use. Setting an unsupported level selects the best supported level below it.
    public static var active: KernelISA {
        get { KernelISA(rawValue: ptqd_isa_active()) ?? .generic }
        set { _ = ptqd_isa_set(newValue.rawValue) }
    }

    /// The levels this CPU can run, lowest first.
    public static var supported: [KernelISA] { allCases.filter(\.isSupported) }

    public var isSupported: Bool { ptqd_isa_supported(rawValue) != 0 }

    public var description: String { String(cString: ptqd_isa_name(rawValue)) }

    /// Runs `body` with `isa` active, then restores the previous level.
    public static func with<T>(_ isa: KernelISA, _ body: () throws -> T) rethrows -> T {
        let saved = active
        active = isa
        defer { active = saved }
        return try body()
    }
}

public enum FastMath {
    /// exp of every element (Cephes polynomial; inputs clamped to [−87.3, 88.7]; relative error < 2e-7).
    public static func exp(_ x: [Float]) -> [Float] {
        var y = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { s in y.withUnsafeMutableBufferPointer { d in ptqd_exp(s.baseAddress, d.baseAddress, x.count) } }
        return y
    }
}

extension FastMath {
    /// Every element rounded to bfloat16 (nearest even; the CKernels conversion the bf16 layers use), as floats.
    public static func roundedToBF16(_ x: [Float]) -> [Float] {
        var bits = [UInt16](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { s in bits.withUnsafeMutableBufferPointer { d in ptqd_f32_to_bf16(s.baseAddress, d.baseAddress, x.count) } }
        return bits.map { Float(bitPattern: UInt32($0) << 16) }
    }
}

/// Reference exp (libm in Double), for tests.
public func expReference(_ x: Float) -> Float { Float(Foundation.exp(Double(x))) }
