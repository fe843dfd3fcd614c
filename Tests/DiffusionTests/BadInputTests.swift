import Diffusion
import Foundation
import SafeTensors
import TensorCore
import XCTest

/// Malformed model folders fail with one-line errors naming the file and field/tensor.
final class BadInputTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("ptqd-bad-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: URL(fileURLWithPath: Fixtures.model("cond_attn_28")), to: dir)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    var configURL: URL { dir.appendingPathComponent("unet/config.json") }
    var weightsURL: URL { dir.appendingPathComponent("unet/diffusion_pytorch_model.safetensors") }

    func editConfig(_ edit: (inout [String: Any]) -> Void) throws {
        var obj = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as! [String: Any]
        edit(&obj)
        try JSONSerialization.data(withJSONObject: obj).write(to: configURL)
    }

    func assertLoadFails(_ contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try DiffusionModel.load(dir.path), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(contains), "error '\(text)' should mention '\(contains)'", file: file, line: line)
            XCTAssertFalse(text.contains("\n"), "error must be one line: \(text)", file: file, line: line)
        }
    }

    func testUnknownBlockType() throws {
        try editConfig { $0["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D", "AttnDownBlock2D"] }
        assertLoadFails("CrossAttnDownBlock2D")
    }

    func testUnknownFieldAndUnsupportedValues() throws {
        try editConfig { $0["frobnicate"] = 3 }
        assertLoadFails("frobnicate")
        try FileManager.default.removeItem(at: dir)
        try setUpWithError()
        try editConfig { $0["time_embedding_type"] = "fourier" }
        assertLoadFails("time_embedding_type")
        try FileManager.default.removeItem(at: dir)
        try setUpWithError()
        try editConfig { $0["act_fn"] = "gelu" }
        assertLoadFails("act_fn")
    }

    /// Sizes that would overflow Int products (or exhaust memory) are refused while the config is read.
    func testOversizedConfigValuesAreRefused() throws {
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("block_out_channels", { $0["block_out_channels"] = [2305843009213693952, 64]; $0["norm_num_groups"] = 1 }),
            ("block_out_channels", { $0["block_out_channels"] = [1 << 20, 64]; $0["norm_num_groups"] = 1 }),
            ("block_out_channels", {
                $0["block_out_channels"] = Array(repeating: 8, count: 9); $0["norm_num_groups"] = 1
                $0["down_block_types"] = Array(repeating: "DownBlock2D", count: 9); $0["up_block_types"] = Array(repeating: "UpBlock2D", count: 9)
            }),
            ("sample_size", { $0["sample_size"] = [4611686018427387904, 2] }),
            ("sample_size", { $0["sample_size"] = [8192, 8] }),
            ("sample_size", { $0["sample_size"] = 100000 }),
        ]
        for (field, change) in cases {
            try FileManager.default.removeItem(at: dir)
            try setUpWithError()
            try editConfig(change)
            assertLoadFails(field)
        }
    }

    /// Schedules whose float32 ᾱ reaches 1 (betas that round away) or leaves (0, 1) are refused, not sampled
    /// into NaN.
    func testDegenerateScheduleIsRefused() throws {
        let url = dir.appendingPathComponent("scheduler/scheduler_config.json")
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("beta_start/beta_end", { $0["beta_start"] = 1e-9; $0["beta_end"] = 1e-9 }),
            ("trained_betas", { o in
                let t = (o["num_train_timesteps"] as? Int) ?? 1000
                o["trained_betas"] = (0..<t).map { $0 == 7 ? 1.5 : 0.01 }
            }),
            ("num_train_timesteps", { $0["num_train_timesteps"] = 100_000_000 }),
        ]
        for (field, change) in cases {
            var obj = original
            change(&obj)
            try JSONSerialization.data(withJSONObject: obj).write(to: url)
            assertLoadFails(field)
        }
    }

    func testConfigWeightsShapeMismatch() throws {
        try editConfig { $0["block_out_channels"] = [8, 16, 24]; $0["norm_num_groups"] = 8 }
        assertLoadFails("shape")
    }

    func testMissingAndExtraTensors() throws {
        let f = try SafeTensorsFile(path: weightsURL.path)
        var w = SafeTensorsWriter()
        for name in f.names where name != "conv_out.bias" {
            let i = try f.info(name)
            try w.add(name, floats: try f.floats(name), shape: i.shape)
        }
        try w.write(to: weightsURL.path)
        assertLoadFails("conv_out.bias")
        try w.add("stray.weight", floats: [1, 2], shape: [2])
        try w.add("conv_out.bias", floats: try f.floats("conv_out.bias"), shape: try f.info("conv_out.bias").shape)
        try w.write(to: weightsURL.path)
        assertLoadFails("stray.weight")
    }

    func testNaNWeightsAndTruncatedFile() throws {
        let f = try SafeTensorsFile(path: weightsURL.path)
        var w = SafeTensorsWriter()
        for name in f.names {
            var v = try f.floats(name)
            if name == "conv_in.weight" { v[0] = .nan }
            try w.add(name, floats: v, shape: try f.info(name).shape)
        }
        try w.write(to: weightsURL.path)
        assertLoadFails("NaN")
        let bytes = try Data(contentsOf: weightsURL)
        try bytes.prefix(bytes.count / 2).write(to: weightsURL)
        assertLoadFails("diffusion_pytorch_model.safetensors")
    }

    func testBadJSONAndMissingFolder() throws {
        try Data("{not json".utf8).write(to: configURL)
        assertLoadFails("invalid JSON")
        XCTAssertThrowsError(try DiffusionModel.load("/nonexistent/model")) { XCTAssertTrue("\($0)".contains("not found")) }
    }

    func testBadSamplerInputs() throws {
        let m = try DiffusionModel.load(Fixtures.model("cond_attn_28"))
        XCTAssertThrowsError(try DDIMScheduler(config: m.scheduler, steps: 5000, eta: 0))
        XCTAssertThrowsError(try DDIMScheduler(config: m.scheduler, steps: 10, eta: -1))
        XCTAssertThrowsError(try GuidedDenoiser(network: m.unet, guidance: 3, nullClass: 99))
        let x = Tensor(shape: [1, 28, 28, 1])
        XCTAssertThrowsError(try m.unet(x, timesteps: [1], condition: .labels([42])))  // label out of range
        XCTAssertThrowsError(try m.unet(x, timesteps: [1], condition: .none))         // needs labels
        XCTAssertThrowsError(try m.unet(Tensor(shape: [1, 28, 28, 3]), timesteps: [1], condition: .labels([0])))
        XCTAssertThrowsError(try m.unet(Tensor(shape: [1, 30, 30, 1]), timesteps: [1], condition: .labels([0])))
    }

    func testDeterministicNoiseIndependentOfBatching() {
        let a = BatchNoise(seed: 7, indices: 0..<4).next(shape: [4, 2, 2, 1])
        let b1 = BatchNoise(seed: 7, indices: 0..<2).next(shape: [2, 2, 2, 1])
        let b2 = BatchNoise(seed: 7, indices: 2..<4).next(shape: [2, 2, 2, 1])
        XCTAssertEqual(a.array, b1.array + b2.array)
        XCTAssertNotEqual(a.array, BatchNoise(seed: 8, indices: 0..<4).next(shape: [4, 2, 2, 1]).array)
        // Roughly standard normal.
        let big = BatchNoise(seed: 1, indices: 0..<1).next(shape: [1, 100, 100, 1]).array
        let mean = big.reduce(0, +) / Float(big.count)
        let variance = big.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Float(big.count)
        XCTAssertEqual(mean, 0, accuracy: 0.03); XCTAssertEqual(variance, 1, accuracy: 0.05)
    }
}
