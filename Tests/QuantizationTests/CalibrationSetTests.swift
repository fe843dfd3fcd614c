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
        let c = try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o)
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
        let again = try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o)
        XCTAssertEqual(again.x.array, c.x.array)
        var o2 = o; o2.seed = 8
        XCTAssertNotEqual(try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o2).x.array, c.x.array)
    }

    /// Records cover every step (counts within one) when there are enough of them, and spread over the whole
    /// trajectory (first and last step included, distinct steps, even gaps) when there are fewer records than steps.
    func testRecordsCoverEveryStep() throws {
        for (records, steps) in [(256, 20), (20, 20), (21, 20), (100, 100), (32, 100), (7, 20), (2, 250), (3, 1000), (1, 20), (5, 1)] {
            let drawn = (0..<records).map { CalibrationSet.stepOfRecord($0, records: records, steps: steps) }
            XCTAssertTrue(drawn.allSatisfy { (0..<steps).contains($0) }, "\(records)/\(steps)")
            var count = [Int](repeating: 0, count: steps)
            for d in drawn { count[d] += 1 }
            if records >= steps {
                XCTAssertTrue(count.allSatisfy { $0 >= records / steps && $0 <= (records + steps - 1) / steps }, "\(records)/\(steps): \(count)")
            } else if records == 1 {
                XCTAssertEqual(drawn, [(steps - 1) / 2])
            } else {
                XCTAssertEqual(Set(drawn).count, records, "\(records)/\(steps): distinct steps")
                XCTAssertEqual(drawn.first, 0); XCTAssertEqual(drawn.last, steps - 1)
                let gaps = zip(drawn.dropFirst(), drawn).map { $0 - $1 }
                let ideal = Double(steps - 1) / Double(records - 1)
                XCTAssertTrue(gaps.allSatisfy { Double($0) >= ideal.rounded(.down) && Double($0) <= ideal.rounded(.up) }, "\(records)/\(steps): gaps \(gaps)")
            }
        }
        // Through collect: 3 records over a 10-step schedule see its first, middle and last timestep, both halves.
        let m = try QFixtures.load("cond_attn_28")
        var o = QFixtures.tinyOptions()
        o.settings.steps = 10; o.samples = 3; o.trajectories = 2
        let c = try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o)
        let ts = try Sampler.makeScheduler(o.settings, config: m.scheduler).timesteps.map(Float.init)
        XCTAssertEqual(Array(c.timesteps[0..<3]), [ts[0], ts[5], ts[9]])
        XCTAssertEqual(Array(c.timesteps[3..<6]), [ts[0], ts[5], ts[9]], "the conditional half sees the same steps")
    }

    func testUnconditionalRecordsAndProgress() throws {
        let m = try QFixtures.load("uncond_plain_16")
        var o = QFixtures.tinyOptions()
        o.batch = 3
        var calls: [(Int, Int)] = []
        let c = try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o) { calls.append(($0, $1)) }
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
            XCTAssertThrowsError(try CalibrationSet.collect(network: m.network, scheduler: m.scheduler, options: o)) { e in
                guard case .calibration = e as? QuantizationError else { return XCTFail("\(e)") }
            }
        }
        // "timestep" class embeddings need an explicit null class for guidance.
        let v = try QFixtures.load("vpred_tscls_20")
        XCTAssertThrowsError(try CalibrationSet.collect(network: v.network, scheduler: v.scheduler, options: QFixtures.tinyOptions())) { e in
            XCTAssertTrue("\(e)".contains("null-class"), "\(e)")
        }
    }
}
