import Diffusion
import Foundation
import SafeTensors
import TensorCore
import XCTest

/// DPM-Solver++ against diffusers 0.27.2 `DPMSolverMultistepScheduler` (tools/make_dpm_fixtures.py): for each
/// fixture model and case (10 and 20 steps; leading / linspace / trailing spacing; Karras and Lu sigmas; midpoint
/// and heun; final σ zero and σ_min; with and without lower_order_final; epsilon and v prediction; guidance 3 on the
/// class-conditional models) the scheduler config is parsed from the JSON diffusers wrote (`-Infinity` included),
/// the timesteps must be equal, the σ table agree to 2e-5 relative (ᾱ from our float32 cumulative product differs from torch.cumprod in the last bits, and √((1 − ᾱ)/ᾱ) amplifies that to 1.1e-5 where 1 − ᾱ is small on the cosine schedule), and the final samples to 1e-3 relative
/// (the reference network runs in float64, ours in float32).
final class DPMSolverConformanceTests: XCTestCase {
    func testTrajectoriesMatchDiffusers() throws {
        var checked = 0
        for name in Fixtures.modelNames {
            let path = Fixtures.root.appendingPathComponent("\(name)/dpm_cases.safetensors").path
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let f = try SafeTensorsFile(path: path)
            let model = try DiffusionModel.load(Fixtures.model(name))
            for c in (f.metadata["cases"] ?? "").split(separator: ",").map(String.init) {
                let config = try SchedulerConfig(json: Data(f.metadata["\(c).scheduler_config"]!.utf8), file: "\(name) \(c)")
                XCTAssertEqual(config.className, "DPMSolverMultistepScheduler")
                XCTAssertEqual(SamplerKind.defaultKind(for: config), .dpmSolverPlusPlus)
                let steps = try f.info("\(c).timesteps").shape[0]
                let s = try DPMSolverMultistepScheduler(config: config, steps: steps)
                XCTAssertEqual(s.timesteps, try f.floats("\(c).timesteps").map { Int($0) }, "\(name) \(c): timesteps")
                let sigmas = try f.floats("\(c).sigmas")
                XCTAssertEqual(s.sigmas.count, sigmas.count)
                for (a, b) in zip(s.sigmas, sigmas) {
                    XCTAssertEqual(Double(a), Double(b), accuracy: 2e-5 * max(Double(abs(b)), 1e-3), "\(name) \(c): sigma table")
                }
                let guidance = Float(f.metadata["\(c).guidance"] ?? "1") ?? 1
                let labels = f.contains("\(c).class_labels") ? try f.floats("\(c).class_labels").map { Int($0) } : nil
                let predictor = try GuidedDenoiser(network: model.network, guidance: guidance, nullClass: labels == nil ? nil : 10)
                let out = try Sampler(scheduler: s, predictor: predictor)
                    .sample(from: try f.nhwc("\(c).noise"), conditioning: labels.map { .classes($0) } ?? .none, noise: nil)
                let err = relativeError(out.array, try f.nhwc("\(c).samples").array)
                XCTAssertLessThanOrEqual(err, 1e-3, "\(name) \(c): final samples relative error \(err)")
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 12, "expected the committed DPM-Solver fixtures")
    }

    func testUnsupportedSettingsAreErrors() throws {
        var c = SchedulerConfig.ddimDefault
        c.dpm.solverOrder = 3
        XCTAssertThrowsError(try DPMSolverMultistepScheduler(config: c, steps: 10)) { XCTAssertTrue("\($0)".contains("solver_order")) }
        c.dpm.solverOrder = 2
        c.dpm.algorithmType = "sde-dpmsolver++"
        XCTAssertThrowsError(try DPMSolverMultistepScheduler(config: c, steps: 10)) { XCTAssertTrue("\($0)".contains("algorithm_type")) }
        let json = #"{"_class_name": "DPMSolverMultistepScheduler", "final_sigmas_type": "middle"}"#
        XCTAssertThrowsError(try SchedulerConfig(json: Data(json.utf8))) { XCTAssertTrue("\($0)".contains("final_sigmas_type")) }
        let ok = #"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity, "note": "Infinity"}"#
        XCTAssertThrowsError(try SchedulerConfig(json: Data(ok.utf8))) { XCTAssertTrue("\($0)".contains("note"), "only the unknown field is refused: \($0)") }
        let good = try SchedulerConfig(json: Data(#"{"_class_name": "DPMSolverMultistepScheduler", "lambda_min_clipped": -Infinity}"#.utf8))
        XCTAssertEqual(good.dpm.lambdaMinClipped, -.infinity)
        XCTAssertEqual(good.timestepSpacing, .linspace, "DPMSolverMultistepScheduler's default spacing")
    }
}
