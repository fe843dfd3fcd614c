// F16 / BF16 conversions against known bit patterns, directly and through the file reader.

import Foundation
import XCTest
@testable import SafeTensors

final class ConversionTests: XCTestCase {
    typealias C = SafeTensorsConversion

    func testFloat16Decoding() {
        XCTAssertEqual(C.float(fromFloat16Bits: 0x3C00), 1.0)
        XCTAssertEqual(C.float(fromFloat16Bits: 0xC100), -2.5)
        XCTAssertEqual(C.float(fromFloat16Bits: 0x7BFF), 65504)
        XCTAssertEqual(C.float(fromFloat16Bits: 0x0001), Float(sign: .plus, exponent: -24, significand: 1)) // smallest subnormal
        XCTAssertEqual(C.float(fromFloat16Bits: 0x03FF), 1023 * Float(sign: .plus, exponent: -24, significand: 1)) // largest subnormal
        XCTAssertEqual(C.float(fromFloat16Bits: 0x0400), Float(sign: .plus, exponent: -14, significand: 1)) // smallest normal
        XCTAssertEqual(C.float(fromFloat16Bits: 0x7C00), .infinity)
        XCTAssertEqual(C.float(fromFloat16Bits: 0xFC00), -.infinity)
        XCTAssertTrue(C.float(fromFloat16Bits: 0x7E00).isNaN)
        XCTAssertTrue(C.float(fromFloat16Bits: 0xFE01).isNaN)
        XCTAssertEqual(C.float(fromFloat16Bits: 0x8000).bitPattern, (-0.0 as Float).bitPattern)
        XCTAssertEqual(C.float(fromFloat16Bits: 0x2E66), 0.0999755859375)
    }

    func testFloat16Encoding() {
        XCTAssertEqual(C.float16Bits(from: 1.0), 0x3C00)
        XCTAssertEqual(C.float16Bits(from: -2.5), 0xC100)
        XCTAssertEqual(C.float16Bits(from: 65504), 0x7BFF)
        XCTAssertEqual(C.float16Bits(from: 65519), 0x7BFF)   // below the rounding midpoint
        XCTAssertEqual(C.float16Bits(from: 65520), 0x7C00)   // rounds to infinity
        XCTAssertEqual(C.float16Bits(from: 6e-8), 0x0001)
        XCTAssertEqual(C.float16Bits(from: 0.1), 0x2E66)
        XCTAssertEqual(C.float16Bits(from: .infinity), 0x7C00)
        XCTAssertTrue(Float16(bitPattern: C.float16Bits(from: .nan)).isNaN)
        // Every 16-bit pattern survives decode → encode (NaNs stay NaN).
        for bits in UInt16.min ... UInt16.max {
            let f = C.float(fromFloat16Bits: bits)
            if f.isNaN { XCTAssertTrue(Float16(bitPattern: C.float16Bits(from: f)).isNaN); continue }
            XCTAssertEqual(C.float16Bits(from: f), bits)
        }
    }

    func testBFloat16Decoding() {
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x3F80), 1.0)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0xC020), -2.5)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x477F), 65280)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x4780), 65536)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x0001), Float(bitPattern: 0x0001_0000)) // subnormal
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x7F80), .infinity)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0xFF80), -.infinity)
        XCTAssertTrue(C.float(fromBFloat16Bits: 0x7FC0).isNaN)
        XCTAssertEqual(C.float(fromBFloat16Bits: 0x8000).bitPattern, 0x8000_0000)
    }

    func testBFloat16EncodingRoundsToNearestEven() {
        XCTAssertEqual(C.bfloat16Bits(from: 1.0), 0x3F80)
        XCTAssertEqual(C.bfloat16Bits(from: -2.5), 0xC020)
        XCTAssertEqual(C.bfloat16Bits(from: 65504), 0x4780)                       // 0x477FE000 rounds up
        XCTAssertEqual(C.bfloat16Bits(from: Float(bitPattern: 0x3F80_8000)), 0x3F80) // tie, even stays
        XCTAssertEqual(C.bfloat16Bits(from: Float(bitPattern: 0x3F81_8000)), 0x3F82) // tie, odd rounds up
        XCTAssertEqual(C.bfloat16Bits(from: Float(bitPattern: 0x3F80_7FFF)), 0x3F80)
        XCTAssertEqual(C.bfloat16Bits(from: .infinity), 0x7F80)
        XCTAssertEqual(C.bfloat16Bits(from: .greatestFiniteMagnitude), 0x7F80)      // overflows to inf
        XCTAssertEqual(C.bfloat16Bits(from: Float(bitPattern: 0x0001_0000)), 0x0001)
        XCTAssertTrue(C.float(fromBFloat16Bits: C.bfloat16Bits(from: .nan)).isNaN)
        // A NaN whose payload is only in the low 16 bits must not become infinity.
        XCTAssertTrue(C.float(fromBFloat16Bits: C.bfloat16Bits(from: Float(bitPattern: 0x7F80_0001))).isNaN)
        XCTAssertTrue(C.float(fromBFloat16Bits: C.bfloat16Bits(from: Float(bitPattern: 0xFFFF_FFFF))).isNaN)
    }

    /// The same patterns read through `SafeTensorsFile.floats` from raw little-endian bytes.
    func testReaderConvertsRawPatterns() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let f16: [UInt16] = [0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0xFC00, 0x7E00]
        let bf16: [UInt16] = [0x3F80, 0xC020, 0x477F, 0x0001, 0x7F80, 0xFF80, 0x7FC0]
        func le(_ v: [UInt16]) -> [UInt8] { v.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] } }
        var w = SafeTensorsWriter()
        try w.add("h", dtype: .f16, shape: [7], bytes: le(f16))
        try w.add("b", dtype: .bf16, shape: [7], bytes: le(bf16))
        try w.add("d", dtype: .f64, shape: [2], bytes: [0, 0, 0, 0, 0, 0, 0xF0, 0x3F,   // 1.0
                                                         0, 0, 0, 0, 0, 0, 0x04, 0xC0]) // -2.5
        let path = dir.path("conv.safetensors")
        try w.write(to: path)
        let f = try SafeTensorsFile(path: path)
        let h = try f.floats("h")
        XCTAssertEqual(Array(h[0 ..< 6]), [1.0, -2.5, 65504, Float(sign: .plus, exponent: -24, significand: 1), .infinity, -.infinity])
        XCTAssertTrue(h[6].isNaN)
        let b = try f.floats("b")
        XCTAssertEqual(Array(b[0 ..< 6]), [1.0, -2.5, 65280, Float(bitPattern: 0x0001_0000), .infinity, -.infinity])
        XCTAssertTrue(b[6].isNaN)
        XCTAssertEqual(try f.floats("d"), [1.0, -2.5])
    }
}
