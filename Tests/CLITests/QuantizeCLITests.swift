import Foundation
import SafeTensors
import TensorCore
import XCTest

/// `ptqd quantize`, and `sample`/`inspect` on its output, run as a user would.
final class QuantizeCLITests: CLITestCase {
    /// Tiny calibration: 4 trajectories × 4 steps, 8 records.
    func quantizeArgs(_ model: String, scheme: String, out: String) -> [String] {
        ["quantize", "--model", fixturePath(model), "--scheme", scheme, "--calib", "4", "--calib-samples", "8", "--steps", "4",
         "--out", out, "--quiet", "--threads", "2"]
    }

    func assertNoTemporaryFiles(_ line: UInt = #line) {
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: tmp.path)) ?? []).filter { $0.contains(".tmp") }
        XCTAssertEqual(left, [], "temporary files left behind", line: line)
    }

    func testQuantizeSampleInspectClassConditional() throws {
        let q = tmpPath("x.safetensors")
        let r = try run(quantizeArgs("cond_attn_28", scheme: "w4a8", out: q))
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: q))
        XCTAssertTrue(r.out.contains("w4a8 (rtn, mse activations)"), r.out)
        XCTAssertTrue(r.out.contains("layers quantized"), r.out)
        XCTAssertTrue(r.out.contains("GBOPs"), r.out)
        XCTAssertTrue(r.out.contains("wrote \(q)"), r.out)
        XCTAssertEqual(r.err, "", "--quiet should keep stderr empty")
        assertNoTemporaryFiles()
        let f = try SafeTensorsFile(path: q)
        XCTAssertNotNil(f.metadata["ptqd"])
        XCTAssertTrue(f.names.contains { $0.hasPrefix("ptqd.v0.") && $0.hasSuffix(".qweight") })
        XCTAssertFalse(f.contains("down_blocks.0.resnets.0.conv1.weight"), "quantized layer's fp32 weight still stored")

        // sample with integer kernels and with the simulation.
        let png = tmpPath("x.png"), st = tmpPath("s.safetensors")
        let s = try run(["sample", "--quantized", q, "--n", "4", "--steps", "3", "--class", "0", "--out", png,
                         "--save-tensors", st, "--quiet"])
        XCTAssertEqual(s.code, 0, s.err)
        XCTAssertTrue(s.out.contains("[w4a8]"), s.out)
        let pngBytes = try Data(contentsOf: URL(fileURLWithPath: png))
        XCTAssertEqual(Array(pngBytes.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        let integer = try SafeTensorsFile(path: st).floats("samples")
        XCTAssertTrue(integer.allSatisfy { $0.isFinite })
        let sim = try run(["sample", "--quantized", q, "--simulate", "--n", "4", "--steps", "3", "--class", "0",
                           "--out", tmpPath("sim.png"), "--save-tensors", st, "--quiet"])
        XCTAssertEqual(sim.code, 0, sim.err)
        XCTAssertTrue(sim.out.contains("simulated"), sim.out)
        let simulated = try SafeTensorsFile(path: st).floats("samples")
        XCTAssertTrue(simulated.allSatisfy { $0.isFinite })
        // Not compared tightly: a float-level difference that moves one activation across a rounding
        // boundary changes that integer by one step, which these random fixture networks amplify
        // (see IntegerVsSimulateTests); the layer-level contract is tested there.
        // The fp32 model gives different samples: the quantization error. The integer and simulated runs differ far
        // less than that (by rounding flips only), so both run the same quantized model.
        let fp = try run(["sample", "--model", fixturePath("cond_attn_28"), "--n", "4", "--steps", "3", "--class", "0",
                          "--out", tmpPath("fp.png"), "--save-tensors", st, "--quiet"])
        XCTAssertEqual(fp.code, 0, fp.err)
        let full = try SafeTensorsFile(path: st).floats("samples")
        let intVsSim = relativeError(integer, simulated), intVsFP = relativeError(integer, full), simVsFP = relativeError(simulated, full)
        print("[cli] cond_attn_28 w4a8 after 3 steps: integer vs simulated \(intVsSim), integer vs fp32 \(intVsFP), simulated vs fp32 \(simVsFP)")
        XCTAssertGreaterThan(intVsFP, 0)
        XCTAssertLessThan(intVsSim, 0.5 * intVsFP, "integer and simulated samples should differ much less than quantized vs fp32")
        XCTAssertEqual(intVsFP, simVsFP, accuracy: 0.5 * intVsFP, "both modes carry the same quantization error")

        // inspect reads the quantized file.
        let i = try run(["inspect", q])
        XCTAssertEqual(i.code, 0, i.err)
        for needle in ["w4a8", "conv_in", "down_blocks.0.resnets.0.conv1"] {
            XCTAssertTrue(i.out.contains(needle), "inspect lacks \(needle): \(i.out.prefix(2000))")
        }
    }

    /// A quantized file records the digest of the weights it came from; a paired evaluation against
    /// other weights (e.g. a retrained bundled model) is refused with one line unless --force.
    func testEvaluateRefusesAQuantizedFileFromOtherWeights() throws {
        let q = tmpPath("d.safetensors")
        XCTAssertEqual(try run(quantizeArgs("cond_attn_28", scheme: "w8a8", out: q)).code, 0)
        let source = fixturePath("cond_attn_28") + "/unet/diffusion_pytorch_model.safetensors"
        let meta = try SafeTensorsFile(path: q).metadata["ptqd"] ?? ""
        XCTAssertTrue(meta.contains(try SafeTensorsFile(path: source).contentDigest()), "digest of the source weights not recorded")
        // A copy of the model with one weight's low byte changed.
        let copy = tmp.appendingPathComponent("other")
        try FileManager.default.copyItem(atPath: fixturePath("cond_attn_28"), toPath: copy.path)
        let weights = copy.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")
        var bytes = try Data(contentsOf: weights)
        bytes[bytes.count - 4] ^= 0x01
        try bytes.write(to: weights)
        let r = try run(["evaluate", "--model", copy.path, "--quantized", q, "--n", "10", "--out", tmpPath("eval"), "--quiet"])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertTrue(r.err.contains("quantized from different weights"), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("eval/report.json")))
    }

    /// quantize --correct ptqd --mixed: the statistics pass and the plan run end to end from the CLI; the file holds
    /// one table per weight variant and a plan over the calibrated steps; sampling applies the correction (samples
    /// differ from --no-correct), refuses other step counts, and inspect shows the tables.
    func testQuantizeWithCorrectionAndMixedPrecision() throws {
        let q = tmpPath("m.safetensors")
        let r = try run(quantizeArgs("cond_attn_28", scheme: "w4a8", out: q) + ["--correct", "ptqd", "--mixed", "w4a4:w4a8",
                                                                               "--stats-trajectories", "4"])
        XCTAssertEqual(r.code, 0, r.err)
        let meta = try XCTUnwrap(SafeTensorsFile(path: q).metadata["ptqd"])
        let info = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(meta.utf8)) as? [String: Any])
        let variants = try XCTUnwrap(info["variants"] as? [[String: Any]])
        XCTAssertEqual(variants.compactMap { $0["name"] as? String }, ["w4a4", "w4a8"])
        let attachments = try XCTUnwrap(info["attachments"] as? [String: String])
        let doc = try XCTUnwrap(attachments.values.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .first { $0["tables"] != nil })
        let tables = try XCTUnwrap(doc["tables"] as? [[String: Any]])
        XCTAssertEqual(tables.count, 2, "one correction table per weight variant")
        for t in tables { XCTAssertEqual((t["timesteps"] as? [Int])?.count, 4, "a row per calibrated step") }
        let plan = try XCTUnwrap(doc["plan"] as? [String: Any])
        XCTAssertEqual((plan["schemes"] as? [Int])?.count, 4)
        XCTAssertTrue((plan["schemes"] as? [Int])?.allSatisfy { $0 == 0 || $0 == 1 } ?? false)

        let st = tmpPath("c.safetensors"), plain = tmpPath("p.safetensors")
        let a = try run(["sample", "--quantized", q, "--n", "2", "--steps", "4", "--class", "1", "--out", tmpPath("c.png"), "--save-tensors", st, "--quiet"])
        XCTAssertEqual(a.code, 0, a.err)
        XCTAssertTrue(a.out.contains("mixed +ptqd"), a.out)
        let b = try run(["sample", "--quantized", q, "--n", "2", "--steps", "4", "--class", "1", "--no-correct", "--out", tmpPath("p.png"),
                         "--save-tensors", plain, "--quiet"])
        XCTAssertEqual(b.code, 0, b.err)
        XCTAssertGreaterThan(relativeError(try SafeTensorsFile(path: st).floats("samples"), try SafeTensorsFile(path: plain).floats("samples")), 0,
                             "the correction changes the samples")
        let other = try run(["sample", "--quantized", q, "--n", "2", "--steps", "5", "--class", "1", "--out", tmpPath("o.png")])
        XCTAssertNotEqual(other.code, 0, "a plan measured for 4 steps cannot sample 5")
        XCTAssertTrue(other.err.contains("measured for"), other.err)
        let i = try run(["inspect", q])
        XCTAssertEqual(i.code, 0, i.err)
        XCTAssertTrue(i.out.contains("PTQD correction") && i.out.contains("mixed plan"), i.out.prefix(3000).description)
    }

    func testQuantizeUnconditionalWeightOnlyAndRules() throws {
        let q = tmpPath("u.safetensors")
        var args = quantizeArgs("uncond_plain_16", scheme: "w4a32", out: q)
        args += ["--keep-8bit", "none", "--rule", "mid_block.*=fp32", "--rule", "conv_out=w8a8", "--act-range", "percentile:99.9"]
        let r = try run(args)
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(r.out.contains("w4a32"), r.out)
        let f = try SafeTensorsFile(path: q)
        XCTAssertTrue(f.contains("mid_block.resnets.0.conv1.weight"), "rule =fp32 must keep the fp32 weight")
        XCTAssertFalse(f.contains("ptqd.v0.mid_block.resnets.0.conv1.qweight"))
        XCTAssertEqual(try f.info("ptqd.v0.conv_in.qweight").dtype, .u8, "--keep-8bit none: conv_in at 4 bits")
        XCTAssertEqual(try f.info("ptqd.v0.conv_out.qweight").dtype, .i8, "--rule conv_out=w8a8")
        let s = try run(["sample", "--quantized", q, "--n", "4", "--steps", "4", "--out", tmpPath("u.png"), "--quiet"])
        XCTAssertEqual(s.code, 0, s.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: tmpPath("u.png")))
        // --class does not apply to an unconditional model.
        let c = try run(["sample", "--quantized", q, "--n", "4", "--steps", "4", "--class", "0", "--out", tmpPath("c.png")])
        XCTAssertNotEqual(c.code, 0)
    }

    func testBadFlagsFailWithOneLineAndWriteNothing() throws {
        let out = tmpPath("x.safetensors"), png = tmpPath("x.png")
        let model = fixturePath("cond_attn_28")
        let fp32File = fixturePath("cond_attn_28") + "/unet/diffusion_pytorch_model.safetensors"
        let cases: [([String], String)] = [
            (quantizeArgs("cond_attn_28", scheme: "w9a8", out: out), "w9a8"),
            (quantizeArgs("cond_attn_28", scheme: "banana", out: out), "banana"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: tmpPath("x.txt")), ".safetensors"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--rule", "nope"], "nope"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--rule", "conv_in=w4a99"], "w4a99"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--keep-8bit", "foo"], "foo"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--act-range", "weird"], "weird"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--weights", "magic"], "magic"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--calib", "0"], "--calib"),
            (quantizeArgs("cond_attn_28", scheme: "w4a8", out: out) + ["--group-size", "0"], "--group-size"),
            (quantizeArgs("nonexistent-model", scheme: "w4a8", out: out), "nonexistent-model"),
            (["quantize", "--model", model, "--out", out], "--scheme"),
            (["sample", "--model", model, "--simulate", "--out", png, "--n", "2", "--steps", "1"], "--quantized"),
            (["sample", "--quantized", fp32File, "--out", png, "--n", "2", "--steps", "1", "--class", "0"], "ptqd"),
            (["sample", "--quantized", tmpPath("missing.safetensors"), "--out", png, "--n", "2", "--steps", "1"], "missing.safetensors"),
        ]
        for (args, needle) in cases {
            let r = try run(args)
            XCTAssertNotEqual(r.code, 0, "\(args) should fail")
            let errorLines = r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            XCTAssertEqual(errorLines.count, 1, "\(args): expected one Error: line, got \(r.err)")
            XCTAssertTrue(errorLines.first.map { $0.contains(needle) } ?? false, "\(args): error does not name '\(needle)': \(r.err)")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), [], "\(args) wrote something")
        }
    }

    func testQuantizeIntoMissingDirectoryFailsCleanly() throws {
        let out = tmpPath("missing/x.safetensors")
        let r = try run(quantizeArgs("uncond_plain_16", scheme: "w8a8", out: out))
        XCTAssertNotEqual(r.code, 0)
        let errorLines = r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        XCTAssertEqual(errorLines.count, 1, r.err)
        XCTAssertTrue(r.err.contains("missing/x.safetensors"), r.err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp.path), [])
    }

    func testTruncatedQuantizedFileIsRefusedBySample() throws {
        let q = tmpPath("t.safetensors")
        XCTAssertEqual(try run(quantizeArgs("uncond_plain_16", scheme: "w8a8", out: q)).code, 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: q))
        try bytes.prefix(bytes.count - 100).write(to: URL(fileURLWithPath: q))
        let r = try run(["sample", "--quantized", q, "--n", "2", "--steps", "1", "--out", tmpPath("t.png")])
        XCTAssertNotEqual(r.code, 0)
        XCTAssertEqual(r.err.split(separator: "\n").filter { $0.hasPrefix("Error:") }.count, 1, r.err)
        XCTAssertTrue(r.err.contains("t.safetensors"), r.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("t.png")))
    }
}
