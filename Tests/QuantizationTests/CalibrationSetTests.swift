import Diffusion
import Foundation
import Quantization
import TensorCore
import XCTest

/// Timestep-aware calibration records drawn from FP sampler trajectories.
final class CalibrationSetTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func testGuidedClassConditionalRecords() throws {
        let m = try QFixtures.load("cond_attn_28")
        let o = QFixtures.tinyOptions()
        let c = try CalibrationSet.collect(model: m, options: o)
        // Two UNet rows per record under guidance: unconditional halves first.
        XCTAssertEqual(c.rows, 2 * o.samples)
        XCTAssertEqual(c.x.shape, [2 * o.samples, 28, 28, 1])
        let labels = try XCTUnwrap(c.labels)
        XCTAssertEqual(Array(labels[0..<o.samples]), [Int](repeating: 10, count: o.samples), "null class for the unconditional half")
        XCTAssertTrue(labels[o.samples...].allSatisfy { (0..<10).contains($0) })
        XCTAssertEqual(Array(c.timesteps[0..<o.samples]), Array(c.timesteps[o.samples...]))
        for r in 0..<o.samples {
            XCTAssertEqual(Array(c.x.slice(batch: r..<(r + 1)).array), Array(c.x.slice(batch: (o.samples + r)..<(o.samples + r + 1)).array))
        }
        // Stratified over the sampler's steps.
        let steps = try Sampler.makeScheduler(o.settings, config: m.scheduler).timesteps.map(Float.init)
        XCTAssertEqual(Array(c.timesteps[0..<o.samples]), (0..<o.samples).map { steps[$0 % steps.count] })
        XCTAssertTrue(c.x.isFinite)
        // Deterministic for a seed; another seed draws other records.
        let again = try CalibrationSet.collect(model: m, options: o)
        XCTAssertEqual(again.x.array, c.x.array)
        var o2 = o; o2.seed = 8
        XCTAssertNotEqual(try CalibrationSet.collect(model: m, options: o2).x.array, c.x.array)
    }

    func testUnconditionalRecordsAndProgress() throws {
        let m = try QFixtures.load("uncond_plain_16")
        var o = QFixtures.tinyOptions()
        o.batch = 3
        var calls: [(Int, Int)] = []
        let c = try CalibrationSet.collect(model: m, options: o) { calls.append(($0, $1)) }
        XCTAssertEqual(c.rows, o.samples)
        XCTAssertNil(c.labels)
        XCTAssertEqual(calls.last?.0, o.trajectories * o.settings.steps)
        XCTAssertTrue(calls.allSatisfy { $0.1 == o.trajectories * o.settings.steps })
        // The first record of step 0 is pure noise x_T (unit variance), later ones are sampler states.
        let first = c.x.slice(batch: 0..<1).array
        let variance = first.reduce(0) { $0 + $1 * $1 } / Float(first.count)
        XCTAssertEqual(variance, 1, accuracy: 0.3)
    }

    func testBadOptionsAndUnsupportedModels() throws {
        let m = try QFixtures.load("uncond_plain_16")
        for change in [{ (o: inout CalibrationOptions) in o.trajectories = 0 }, { $0.samples = 0 }, { $0.batch = 0 }, { $0.groupSize = 0 }] {
            var o = QFixtures.tinyOptions()
            change(&o)
            XCTAssertThrowsError(try CalibrationSet.collect(model: m, options: o)) { e in
                guard case .calibration = e as? QuantizationError else { return XCTFail("\(e)") }
            }
        }
        // "timestep" class embeddings need an explicit null class for guidance.
        let v = try QFixtures.load("vpred_tscls_20")
        XCTAssertThrowsError(try CalibrationSet.collect(model: v, options: QFixtures.tinyOptions())) { e in
            XCTAssertTrue("\(e)".contains("null-class"), "\(e)")
        }
    }
}
