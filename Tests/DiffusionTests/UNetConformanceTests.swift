import Diffusion
import SafeTensors
import TensorCore
import XCTest

/// UNet2D forward and schedulers against diffusers 0.27.2 (fixtures from tools/make_fixtures.py).
/// Tolerances: UNet outputs max|ours−ref|/max|ref| ≤ 1e-4; final samples ≤ 1e-3.
final class UNetConformanceTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func testFixturesPresent() {
        XCTAssertGreaterThanOrEqual(Fixtures.modelNames.count, 4, "expected ≥ 4 fixture models in \(Fixtures.root.path)")
    }

    func testUNetOutputsMatchDiffusers() throws {
        for name in Fixtures.modelNames {
            let model = try DiffusionModel.load(Fixtures.model(name))
            let cases = try Fixtures.cases(name)
            let x = try cases.nhwc("unet.sample")
            let t = try cases.floats("unet.timesteps")
            var cond = ClassCondition.none
            if cases.contains("unet.class_labels") {
                let info = try cases.info("unet.class_labels")
                let v = try cases.floats("unet.class_labels")
                cond = info.shape.count == 2 ? .embeddings(Tensor(shape: info.shape, values: v)) : .labels(v.map { Int($0) })
            }
            let out = try model.unet(x, timesteps: t, condition: cond)
            let ref = try cases.nhwc("unet.out")
            XCTAssertEqual(out.shape, ref.shape, name)
            let err = relativeError(out.array, ref.array)
            XCTAssertLessThanOrEqual(err, 1e-4, "\(name): UNet relative error \(err)")
        }
    }

    func testScheduleTablesAndTimesteps() throws {
        for name in Fixtures.modelNames where (try Fixtures.cases(name)).contains("ddim.timesteps") {
            let model = try DiffusionModel.load(Fixtures.model(name))
            let cases = try Fixtures.cases(name)
            XCTAssertLessThanOrEqual(relativeError(model.scheduler.alphasCumprod(), try cases.floats("sched.alphas_cumprod")), 1e-6, name)
            let ddim = try DDIMScheduler(config: model.scheduler, steps: 10, eta: 0)
            XCTAssertEqual(ddim.timesteps, try cases.floats("ddim.timesteps").map { Int($0) }, name)
            let ddpmSteps = try cases.info("ddpm.timesteps").shape[0]
            let ddpm = try DDPMScheduler(config: model.scheduler, steps: ddpmSteps)
            XCTAssertEqual(ddpm.timesteps, try cases.floats("ddpm.timesteps").map { Int($0) }, name)
        }
    }

    func testSamplersMatchDiffusers() throws {
        for name in Fixtures.modelNames {
            let cases = try Fixtures.cases(name)
            guard cases.contains("ddim.samples") else { continue }
            let model = try DiffusionModel.load(Fixtures.model(name))
            let meta = try Fixtures.json(name)
            let guidance = Float((meta["guidance"] as? Double) ?? 3)
            let nullClass = meta["null_class"] as? Int
            var ddpmConfig = model.scheduler
            if let v = meta["variance_type"] as? String { ddpmConfig.varianceType = try XCTUnwrap(SchedulerConfig.DDPMVariance(rawValue: v)) }
            for (prefix, kind, eta) in [("ddim", SamplerKind.ddim, Float(0)), ("ddim_eta1", .ddim, 1), ("ddpm", .ddpm, 0)] {
                let steps = try cases.info("\(prefix).timesteps").shape[0]
                let settings = SamplerSettings(kind: kind, steps: steps, eta: eta, guidance: guidance, nullClass: nullClass)
                let sampler = Sampler(scheduler: try Sampler.makeScheduler(settings, config: kind == .ddpm ? ddpmConfig : model.scheduler),
                                      predictor: try GuidedDenoiser(network: model.unet, guidance: guidance, nullClass: nullClass))
                let labels = cases.contains("\(prefix).class_labels") ? try cases.floats("\(prefix).class_labels").map { Int($0) } : nil
                let noiseName = "\(prefix).variance_noise"
                let supplied: ((Int, [Int]) -> Tensor)? = cases.contains(noiseName) ? { i, _ in try! cases.nhwc(noiseName, row: i) } : nil
                let out = try sampler.sample(from: try cases.nhwc("\(prefix).noise"), conditioning: labels.map { .classes($0) } ?? .none, noise: supplied)
                let err = relativeError(out.array, try cases.nhwc("\(prefix).samples").array)
                XCTAssertLessThanOrEqual(err, 1e-3, "\(name) \(prefix): final samples relative error \(err)")
            }
        }
    }
}
