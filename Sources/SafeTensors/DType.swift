// Element types of the safetensors format and the scalar conversions between them.

/// An element type as spelled in a safetensors header (`"dtype": "F32"`).
///
/// Only the types this package reads and writes are listed; a header naming any other type
/// (for example `"F8_E4M3"`) is rejected with ``SafeTensorsError/unknownDType(file:tensor:dtype:)``.
/// All multi-byte types are stored little-endian.
public enum SafeTensorsDType: String, CaseIterable, Sendable {
    /// IEEE 754 binary64, 8 bytes.
    case f64 = "F64"
    /// IEEE 754 binary32, 4 bytes.
    case f32 = "F32"
    /// IEEE 754 binary16 (half precision), 2 bytes.
    case f16 = "F16"
    /// bfloat16 (the upper 16 bits of a binary32), 2 bytes.
    case bf16 = "BF16"
    /// Signed two's-complement integer, 8 bytes.
    case i64 = "I64"
    /// Signed two's-complement integer, 4 bytes.
    case i32 = "I32"
    /// Signed two's-complement integer, 2 bytes.
    case i16 = "I16"
    /// Signed two's-complement integer, 1 byte.
    case i8 = "I8"
    /// Unsigned integer, 1 byte.
    case u8 = "U8"
    /// Boolean, 1 byte per element (0 = false, anything else = true).
    case bool = "BOOL"

    /// Size of one element in bytes (1, 2, 4 or 8).
    public var byteSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// True for the floating-point types that ``SafeTensorsFile/floats(_:)`` converts to `Float`.
    public var isFloatingPoint: Bool {
        switch self {
        case .f64, .f32, .f16, .bf16: return true
        default: return false
        }
    }

    /// The supported dtype names, comma separated, for error messages (e.g. `"F64, F32, …, BOOL"`).
    static var supportedList: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// Bit-exact conversions between `Float` and the 16-bit floating-point storage formats.
public enum SafeTensorsConversion {
    /// Decodes an IEEE binary16 bit pattern (e.g. `0x3C00` = 1.0) to `Float`. Exact for every input,
    /// including subnormals, infinities and NaN (NaN payload is preserved as far as `Float16` does).
    @inlinable
    public static func float(fromFloat16Bits bits: UInt16) -> Float {
        Float(Float16(bitPattern: bits))
    }

    /// Decodes a bfloat16 bit pattern (e.g. `0x3F80` = 1.0) to `Float`: the bits become the upper
    /// half of a binary32. Exact for every input.
    @inlinable
    public static func float(fromBFloat16Bits bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// Encodes a `Float` as IEEE binary16 with round-to-nearest-even; values beyond ±65504
    /// (after rounding) become ±infinity, NaN stays NaN.
    @inlinable
    public static func float16Bits(from value: Float) -> UInt16 {
        Float16(value).bitPattern
    }

    /// Encodes a `Float` as bfloat16 with round-to-nearest-even (as PyTorch does); NaN becomes a
    /// quiet NaN with the same sign, values that round past the largest finite bfloat16 become ±infinity.
    @inlinable
    public static func bfloat16Bits(from value: Float) -> UInt16 {
        let bits = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let lsb = (bits >> 16) & 1
        let rounded = bits &+ 0x7FFF &+ lsb
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }
}
