import Diffusion
import Foundation
import Quantization
import XCTest

/// Schemes (`--scheme`), `--keep-8bit`, `--rule`, `--act-range`.
final class PolicyParsingTests: XCTestCase {
    func p(_ s: String) throws -> LayerPrecision { try LayerPrecision(parsing: s) }

    func testSchemesParse() throws {
        XCTAssertEqual(try p("w4a8"), try LayerPrecision(weightBits: 4, activationBits: 8))
        XCTAssertEqual(try p("W8A8"), .w8a8)
        XCTAssertEqual(try p("w4a4"), try LayerPrecision(weightBits: 4, activationBits: 4))
        XCTAssertEqual(try p("w4a32").activationBits, nil)
        XCTAssertEqual(try p("w4a32").weightBits, 4)
        XCTAssertEqual(try p("w4"), try p("w4a32"))
        XCTAssertEqual(try p("w8a32"), try LayerPrecision(weightBits: 8, activationBits: nil))
        XCTAssertEqual(try p("w2a2"), try LayerPrecision(weightBits: 2, activationBits: 2))
        for s in ["w8a8", "w4a8", "w4a4", "w8a32", "w4a32", "w6a5"] { XCTAssertEqual(try p(s).description, s) }
        XCTAssertEqual(try p("w4").description, "w4a32")
        XCTAssertEqual(try p("w4a32").activationBitsForCost, 32)
        XCTAssertEqual(try p("w4a8").activationBitsForCost, 8)
    }

    func testBadSchemesThrowNamingTheProblem() {
        for s in ["w9a8", "w4a1", "x4a8", "w4a8a8", "", "w1a8", "w4a16", "w4a", "w", "wa8", "4a8", "w4a8 ", "w-4a8", "banana"] {
            XCTAssertThrowsError(try p(s), "'\(s)' should not parse") { e in
                guard case .invalidScheme = e as? QuantizationError else { return XCTFail("'\(s)': \(e)") }
                let m = String(describing: e)
                XCTAssertTrue(m.contains("'\(s)'"), "message does not quote '\(s)': \(m)")
                XCTAssertTrue(m.contains("wXaY"), "message does not say the format: \(m)")
                XCTAssertFalse(m.contains("\n"))
            }
        }
        XCTAssertThrowsError(try LayerPrecision(weightBits: 9, activationBits: 8)) { XCTAssertTrue("\($0)".contains("9")) }
        XCTAssertThrowsError(try LayerPrecision(weightBits: 4, activationBits: 1)) { XCTAssertTrue("\($0)".contains("1")) }
    }

    func testKeepEightBitRoles() throws {
        XCTAssertEqual(try PrecisionPolicy.parseKeep("first,last,time"), [.first, .last, .time])
        XCTAssertEqual(try PrecisionPolicy.parseKeep("time, First"), [.time, .first])
        XCTAssertEqual(try PrecisionPolicy.parseKeep("none"), [])
        XCTAssertEqual(try PrecisionPolicy.parseKeep("NONE"), [])
        for bad in ["foo", "first,foo", "all", "first;last"] {
            XCTAssertThrowsError(try PrecisionPolicy.parseKeep(bad), bad) { e in
                guard case .invalidRule = e as? QuantizationError else { return XCTFail("\(bad): \(e)") }
                XCTAssertTrue("\(e)".contains("--keep-8bit"), "\(e)")
                XCTAssertTrue("\(e)".contains("first, last, time"), "\(e)")
            }
        }

        let w4a8 = PrecisionPolicy(scheme: try p("w4a8"))
        XCTAssertEqual(w4a8.precision(name: "conv_in", role: .inputConv), .w8a8)
        XCTAssertEqual(w4a8.precision(name: "conv_out", role: .outputConv), .w8a8)
        XCTAssertEqual(w4a8.precision(name: "time_embedding.linear_1", role: .timeEmbedding), .w8a8)
        XCTAssertEqual(w4a8.precision(name: "class_embedding.linear_2", role: .timeEmbedding), .w8a8)
        for role in [LayerRole.conv, .shortcut, .timeProjection, .attentionProjection] {
            XCTAssertEqual(w4a8.precision(name: "down_blocks.0.resnets.0.x", role: role), try p("w4a8"), "\(role)")
        }
        let onlyFirst = PrecisionPolicy(scheme: try p("w4a4"), keepEightBit: [.first])
        XCTAssertEqual(onlyFirst.precision(name: "conv_in", role: .inputConv), .w8a8)
        XCTAssertEqual(onlyFirst.precision(name: "conv_out", role: .outputConv), try p("w4a4"))
        XCTAssertEqual(onlyFirst.precision(name: "time_embedding.linear_1", role: .timeEmbedding), try p("w4a4"))
        let none = PrecisionPolicy(scheme: try p("w4a4"), keepEightBit: try PrecisionPolicy.parseKeep("none"))
        for role in LayerRole.allCases { XCTAssertEqual(none.precision(name: "x", role: role), try p("w4a4"), "\(role)") }
        // Weight-only schemes keep fp32 activations in kept layers too.
        let wOnly = PrecisionPolicy(scheme: try p("w4a32"))
        XCTAssertEqual(wOnly.precision(name: "conv_in", role: .inputConv), try p("w8a32"))
        XCTAssertEqual(wOnly.precision(name: "conv", role: .conv), try p("w4a32"))
    }

    func testRules() throws {
        let r = try PrecisionRule(parsing: "down_blocks.*.conv1=w8a8")
        XCTAssertEqual(r.pattern, "down_blocks.*.conv1")
        XCTAssertEqual(r.precision, .w8a8)
        XCTAssertEqual(r.description, "down_blocks.*.conv1=w8a8")
        XCTAssertTrue(r.matches("down_blocks.0.resnets.0.conv1"))
        XCTAssertTrue(r.matches("down_blocks.12.resnets.3.conv1"))
        XCTAssertFalse(r.matches("up_blocks.0.resnets.0.conv1"))
        XCTAssertFalse(r.matches("down_blocks.0.resnets.0.conv1x"), "pattern must match the whole name")
        XCTAssertFalse(r.matches("xdown_blocks.0.resnets.0.conv1"))
        let star = try PrecisionRule(parsing: "*=fp32")
        XCTAssertNil(star.precision)
        XCTAssertEqual(star.description, "*=fp32")
        XCTAssertTrue(star.matches("anything.at.all")); XCTAssertTrue(star.matches(""))
        XCTAssertNil(try PrecisionRule(parsing: "conv_in=FP32").precision)
        XCTAssertTrue(try PrecisionRule(parsing: "*attentions*to_q=w8a8").matches("mid_block.attentions.0.to_q"))
        XCTAssertFalse(try PrecisionRule(parsing: "*attentions*to_q=w8a8").matches("mid_block.attentions.0.to_k"))
        XCTAssertTrue(try PrecisionRule(parsing: "conv_*=w8a8").matches("conv_out"))
        XCTAssertTrue(try PrecisionRule(parsing: "*.*.*=w8a8").matches("a.b.c"))
        XCTAssertFalse(try PrecisionRule(parsing: "*.*.*=w8a8").matches("a.b"))
        XCTAssertTrue(try PrecisionRule(parsing: "a**b=w8a8").matches("ab"))
        // Pattern may contain '=' only before the first one; the precision is after it.
        XCTAssertThrowsError(try PrecisionRule(parsing: "x=w4a8=w8a8"))

        // Last matching rule wins; rules override the kept roles.
        let policy = PrecisionPolicy(scheme: try p("w4a8"), rules: [
            try PrecisionRule(parsing: "*=w8a8"),
            try PrecisionRule(parsing: "mid_block.*=fp32"),
            try PrecisionRule(parsing: "mid_block.resnets.1.*=w4a4"),
            try PrecisionRule(parsing: "conv_in=w4a4"),
        ])
        XCTAssertEqual(policy.precision(name: "down_blocks.0.resnets.0.conv1", role: .conv), .w8a8)
        XCTAssertNil(policy.precision(name: "mid_block.resnets.0.conv1", role: .conv))
        XCTAssertEqual(policy.precision(name: "mid_block.resnets.1.conv2", role: .conv), try p("w4a4"))
        XCTAssertEqual(policy.precision(name: "conv_in", role: .inputConv), try p("w4a4"))
        let reversed = PrecisionPolicy(scheme: try p("w4a8"), rules: [
            try PrecisionRule(parsing: "mid_block.*=fp32"), try PrecisionRule(parsing: "*=w8a8"),
        ])
        XCTAssertEqual(reversed.precision(name: "mid_block.resnets.0.conv1", role: .conv), .w8a8)
    }

    func testBadRulesThrow() {
        for (text, needle) in [("nope", "nope"), ("=w8a8", "=w8a8"), ("", "PATTERN"), ("conv_in", "conv_in"), ("conv_in=", "conv_in=")] {
            XCTAssertThrowsError(try PrecisionRule(parsing: text), text) { e in
                guard case .invalidRule = e as? QuantizationError else { return XCTFail("\(text): \(e)") }
                XCTAssertTrue("\(e)".contains("--rule"), "\(e)")
                XCTAssertTrue("\(e)".contains(needle), "\(e)")
            }
        }
        for text in ["conv_in=w9a8", "conv_in=fp16", "conv_in=banana", "conv_in=w4a8=w8a8"] {
            XCTAssertThrowsError(try PrecisionRule(parsing: text), text) { e in
                guard case .invalidScheme = e as? QuantizationError else { return XCTFail("\(text): \(e)") }
            }
        }
    }

    func testRangeMethods() throws {
        XCTAssertEqual(try RangeMethod(parsing: "mse"), .mse)
        XCTAssertEqual(try RangeMethod(parsing: "MSE"), .mse)
        XCTAssertEqual(try RangeMethod(parsing: "minmax"), .minMax)
        XCTAssertEqual(try RangeMethod(parsing: "min-max"), .minMax)
        XCTAssertEqual(try RangeMethod(parsing: "percentile:99.99"), .percentile(99.99))
        XCTAssertEqual(try RangeMethod(parsing: "percentile=99"), .percentile(99))
        XCTAssertEqual(try RangeMethod(parsing: "percentile:100"), .percentile(100))
        XCTAssertEqual(try RangeMethod(parsing: RangeMethod.percentile(99.9).description), .percentile(99.9))
        for bad in ["weird", "", "percentile", "percentile:50", "percentile:101", "percentile:abc", "max"] {
            XCTAssertThrowsError(try RangeMethod(parsing: bad), bad) { e in
                XCTAssertTrue("\(e)".contains("--act-range"), "\(e)")
                XCTAssertTrue("\(e)".contains("'\(bad)'"), "\(e)")
            }
        }
    }

    func testPolicyRecipeCodableRoundTrip() throws {
        let recipe = QuantizationRecipe(policy: PrecisionPolicy(scheme: try p("w4a8"), keepEightBit: [.last],
                                                                rules: [try PrecisionRule(parsing: "a*=fp32"), try PrecisionRule(parsing: "b=w6a5")]),
                                        weightMethod: .gptq, rangeMethod: .percentile(99.5), adaRoundIterations: 10)
        let data = try JSONEncoder().encode(recipe)
        XCTAssertEqual(try JSONDecoder().decode(QuantizationRecipe.self, from: data), recipe)
    }
}
