import Diffusion
import Foundation
import Quantization
import TensorCore
import XCTest

/// Activation ranges from observed calibration inputs.
final class ActivationObserverTests: XCTestCase {
    /// Squared fake-quantization error of `sample` under `q`, computed here (not by the observer).
    func squaredError(_ q: ActivationQuantization, _ sample: [Float]) -> Double {
        var copy = sample
        copy.withUnsafeMutableBufferPointer { q.fakeQuantize($0.baseAddress!, count: $0.count) }
        return zip(copy, sample).reduce(0.0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
    }

    func tensor(_ values: [Float], channels: Int) -> Tensor { Tensor(shape: [values.count / channels, channels], values: values) }

    /// Several activation-like distributions (gaussian with outliers, SiLU-like skew, uniform, one-sided).
    func distributions() -> [(String, [Float])] {
        var g = GaussianStream(seed: 11, index: 0)
        let n = 4096
        let gauss = (0..<n).map { i -> Float in i % 500 == 0 ? 12 : g.nextNormal() }
        let silu = (0..<n).map { _ -> Float in let v = 2 * g.nextNormal(); return v / (1 + exp(-v)) }
        let uniform = (0..<n).map { _ in Float(g.nextUniform() * 6 - 2) }
        let positive = (0..<n).map { _ in abs(g.nextNormal()) + 0.5 }
        return [("gaussian+outliers", gauss), ("silu", silu), ("uniform", uniform), ("positive", positive)]
    }

    func testMSERangeNeverWorseThanMinMaxOnTheSample() throws {
        for (name, values) in distributions() {
            for channels in [1, 4] {
                let o = ActivationObserver(channels: 0..<channels, seed: 5)
                o.observe(tensor(values, channels: channels))
                XCTAssertEqual(o.observed, values.count)
                XCTAssertEqual(o.minimum, values.min()!)
                XCTAssertEqual(o.maximum, values.max()!)
                for bits in [2, 3, 4, 6, 8] {
                    let mm = try o.quantizer(bits: bits, method: .minMax, layer: "l")
                    let mse = try o.quantizer(bits: bits, method: .mse, layer: "l")
                    XCTAssertEqual(mm, ActivationQuantization(lo: values.min()!, hi: values.max()!, bits: bits), "\(name) \(bits)")
                    XCTAssertEqual(mse.bits, bits)
                    let eMM = squaredError(mm, o.sample), eMSE = squaredError(mse, o.sample)
                    XCTAssertLessThanOrEqual(eMSE, eMM * (1 + 1e-9), "\(name) \(bits) bits: mse range error \(eMSE) > min-max \(eMM)")
                    if name == "gaussian+outliers" && bits <= 3 {
                        XCTAssertLessThan(eMSE, eMM * 0.9, "\(name) \(bits) bits: mse search should clip the outliers")
                    }
                }
            }
        }
    }

    func testPercentileClipsRareOutliers() throws {
        var g = GaussianStream(seed: 2, index: 0)
        var values = (0..<10000).map { _ in Float(g.nextUniform() * 2 - 1) }
        for i in [17, 4242, 9000] { values[i] = 50 }
        let o = ActivationObserver(channels: 0..<1, seed: 1)
        o.observe(tensor(values, channels: 1))
        let q = try o.quantizer(bits: 8, method: .percentile(99.9), layer: "l")
        let s = o.sample.sorted()
        let lo = s[Int((Double(s.count - 1) * 0.1 / 100).rounded())], hi = s[Int((Double(s.count - 1) * 99.9 / 100).rounded())]
        XCTAssertEqual(q, ActivationQuantization(lo: lo, hi: hi, bits: 8))
        XCTAssertLessThan(hi, 1.01); XCTAssertGreaterThan(hi, 0.9)
        XCTAssertLessThan(lo, -0.9)
        XCTAssertLessThan(q.scale, 2.1 / 255)
        let mm = try o.quantizer(bits: 8, method: .minMax, layer: "l")
        XCTAssertGreaterThan(mm.scale, 50.0 / 255)
    }

    func testConstantInputThrowsNamingTheLayer() {
        for value: Float in [0, 0.5, -3] {
            let o = ActivationObserver(channels: 0..<3)
            o.observe(Tensor(shape: [2, 4, 4, 3], repeating: value))
            o.observe(Tensor(shape: [1, 4, 4, 3], repeating: value))
            for method in [RangeMethod.mse, .minMax, .percentile(99)] {
                XCTAssertThrowsError(try o.quantizer(bits: 8, method: method, layer: "down_blocks.0.resnets.0.conv1")) { e in
                    guard case .calibration = e as? QuantizationError else { return XCTFail("\(e)") }
                    let m = "\(e)"
                    XCTAssertTrue(m.contains("down_blocks.0.resnets.0.conv1"), m)
                    XCTAssertTrue(m.contains("constant"), m)
                    XCTAssertTrue(m.contains("--rule"), "message should say how to keep it fp32: \(m)")
                    XCTAssertFalse(m.contains("\n"))
                }
            }
        }
        // An observer that saw nothing is refused too.
        XCTAssertThrowsError(try ActivationObserver(channels: 0..<2).quantizer(bits: 8, method: .mse, layer: "conv_in")) {
            XCTAssertTrue("\($0)".contains("conv_in"))
        }
    }

    func testNonFiniteInputThrows() {
        for bad in [Float.nan, .infinity, -.infinity] {
            var values = (0..<64).map { Float($0) / 10 }
            values[13] = bad
            let o = ActivationObserver(channels: 0..<1)
            o.observe(tensor(values, channels: 1))
            XCTAssertEqual(o.nonFinite, 1)
            XCTAssertTrue(o.minimum.isFinite && o.maximum.isFinite)
            XCTAssertFalse(o.sample.contains { !$0.isFinite })
            XCTAssertThrowsError(try o.quantizer(bits: 8, method: .mse, layer: "mid_block.attentions.0.to_q")) { e in
                guard case .calibration = e as? QuantizationError else { return XCTFail("\(e)") }
                XCTAssertTrue("\(e)".contains("mid_block.attentions.0.to_q"), "\(e)")
                XCTAssertTrue("\(e)".contains("NaN"), "\(e)")
            }
        }
    }

    func testChannelRangeAndDeterminism() throws {
        // [rows, 4]: channels 0,1 large and constant, channels 2,3 in [-1, 1].
        var g = GaussianStream(seed: 9, index: 0)
        var values: [Float] = []
        for _ in 0..<500 { values += [100, 100, Float(g.nextUniform() * 2 - 1), Float(g.nextUniform() * 2 - 1)] }
        let x = tensor(values, channels: 4)
        let first = ActivationObserver(channels: 0..<2, seed: 3), second = ActivationObserver(channels: 2..<4, seed: 3)
        first.observe(x); second.observe(x)
        XCTAssertEqual(second.observed, 1000)
        XCTAssertLessThanOrEqual(second.maximum, 1); XCTAssertGreaterThanOrEqual(second.minimum, -1)
        XCTAssertTrue(second.sample.allSatisfy { abs($0) <= 1 })
        XCTAssertThrowsError(try first.quantizer(bits: 8, method: .mse, layer: "up_blocks.0.resnets.0.conv1"))
        XCTAssertNoThrow(try second.quantizer(bits: 8, method: .mse, layer: "up_blocks.0.resnets.0.conv1"))
        // Bounded sample, deterministic for a seed.
        let a = ActivationObserver(channels: 2..<4, perBatch: 100, seed: 4), b = ActivationObserver(channels: 2..<4, perBatch: 100, seed: 4)
        a.observe(x); a.observe(x); b.observe(x); b.observe(x)
        XCTAssertEqual(a.sample.count, 200)
        XCTAssertEqual(a.sample, b.sample)
        XCTAssertEqual(try a.quantizer(bits: 4, method: .mse, layer: "l"), try b.quantizer(bits: 4, method: .mse, layer: "l"))
    }

    func testQuantizerGridContainsZeroAndCoversRange() throws {
        for (name, values) in distributions() {
            let o = ActivationObserver(channels: 0..<1)
            o.observe(tensor(values, channels: 1))
            for method in [RangeMethod.mse, .minMax, .percentile(99.9)] {
                let q = try o.quantizer(bits: 8, method: method, layer: "l")
                XCTAssertTrue(q.scale > 0 && q.scale.isFinite, "\(name) \(method)")
                XCTAssertTrue((0...q.qmax).contains(q.zeroPoint), "\(name) \(method)")
                var zero: [Float] = [0]
                zero.withUnsafeMutableBufferPointer { q.fakeQuantize($0.baseAddress!, count: 1) }
                XCTAssertEqual(zero[0], 0, "\(name) \(method): 0 must be exact")
            }
        }
    }
}
