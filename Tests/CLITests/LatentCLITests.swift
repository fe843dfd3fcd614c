import Foundation
import SafeTensors
import TensorCore
import XCTest

/// `ptqd sample` on latent-diffusion folders: a class-conditional pipeline (decoded samples + latents) and a bare
/// cross-attention UNet driven by `--context FILE`, with the bad inputs a user hits first.
final class LatentCLITests: CLITestCase {
    func testPipelineSampleWritesLatentsAndDecodedSamples() throws {
        let out = tmpPath("s.safetensors")
        let r = try run(["sample", "--model", fixturePath("ldm_pipe_cin_vq"), "--n", "4", "--classes", "all", "--steps", "4",
                         "--out", tmpPath("g.png"), "--save-tensors", out, "--quiet"])
        XCTAssertEqual(r.code, 0, r.err)
        XCTAssertTrue(r.out.contains("latents [4, 3, 8, 8], samples [4, 1, 16, 16]"), r.out)
        let f = try SafeTensorsFile(path: out)
        XCTAssertEqual(try f.info("latents").shape, [4, 3, 8, 8])
        XCTAssertEqual(try f.info("samples").shape, [4, 1, 16, 16])
        let bad = try run(["sample", "--model", fixturePath("ldm_pipe_cin_vq"), "--n", "2", "--class", "7", "--out", tmpPath("b.png")])
        XCTAssertNotEqual(bad.code, 0)
        XCTAssertTrue(bad.err.contains("out of range"), bad.err)
    }

    func testContextFileDrivesACrossAttentionUNet() throws {
        let ctx = tmpPath("ctx.safetensors")
        var w = SafeTensorsWriter()
        try w.add("context", floats: (0..<(5 * 32)).map { Float($0 % 7) * 0.1 - 0.3 }, shape: [1, 5, 32])
        try w.add("null_context", floats: [Float](repeating: 0, count: 5 * 32), shape: [1, 5, 32])
        try w.write(to: ctx)
        let model = fixturePath("ldm_unet_heads8")
        let ok = try run(["sample", "--model", model, "--n", "2", "--steps", "3", "--context", ctx, "--out", tmpPath("c.png"),
                          "--save-tensors", tmpPath("c.safetensors"), "--quiet"])
        XCTAssertEqual(ok.code, 0, ok.err)
        // No context, a context of the wrong width, guidance without a null context, labels with a context.
        let missing = try run(["sample", "--model", model, "--n", "2", "--out", tmpPath("m.png")])
        XCTAssertNotEqual(missing.code, 0); XCTAssertTrue(missing.err.contains("--context"), missing.err)
        var wide = SafeTensorsWriter()
        try wide.add("context", floats: [Float](repeating: 0, count: 5 * 31), shape: [1, 5, 31])
        try wide.write(to: tmpPath("wide.safetensors"))
        let w31 = try run(["sample", "--model", model, "--n", "2", "--context", tmpPath("wide.safetensors"), "--out", tmpPath("w.png")])
        XCTAssertNotEqual(w31.code, 0); XCTAssertTrue(w31.err.contains("[2 or 1, L, 32]"), w31.err)
        let noNull = try run(["sample", "--model", model, "--n", "2", "--context", tmpPath("wide.safetensors"), "--out", tmpPath("n.png")])
        XCTAssertNotEqual(noNull.code, 0)
        var onlyContext = SafeTensorsWriter()
        try onlyContext.add("context", floats: [Float](repeating: 0, count: 5 * 32), shape: [1, 5, 32])
        try onlyContext.write(to: tmpPath("only.safetensors"))
        let guided = try run(["sample", "--model", model, "--n", "2", "--context", tmpPath("only.safetensors"), "--out", tmpPath("o.png")])
        XCTAssertNotEqual(guided.code, 0); XCTAssertTrue(guided.err.contains("null_context"), guided.err)
        let unguided = try run(["sample", "--model", model, "--n", "2", "--steps", "2", "--guidance", "1", "--context", tmpPath("only.safetensors"),
                                "--out", tmpPath("u.png"), "--quiet"])
        XCTAssertEqual(unguided.code, 0, unguided.err)
        let both = try run(["sample", "--model", model, "--n", "2", "--context", ctx, "--class", "1", "--out", tmpPath("x.png")])
        XCTAssertNotEqual(both.code, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("m.png")), "nothing written on error")
    }

    /// Quantizing a cross-attention UNet calibrates on the given contexts (with their null context for guidance),
    /// measures PTQD statistics on them, and the file samples with --context.
    func testQuantizeCrossAttentionUNetWithCalibrationContexts() throws {
        let ctx = tmpPath("ctx.safetensors")
        var w = SafeTensorsWriter()
        try w.add("context", floats: (0..<(3 * 5 * 32)).map { Float($0 % 11) * 0.05 - 0.2 }, shape: [3, 5, 32])
        try w.add("null_context", floats: [Float](repeating: 0, count: 5 * 32), shape: [1, 5, 32])
        try w.write(to: ctx)
        let model = fixturePath("ldm_unet_heads8"), file = tmpPath("q.safetensors")
        let missing = try run(["quantize", "--model", model, "--scheme", "w8a8", "--calib", "4", "--steps", "4", "--out", file])
        XCTAssertNotEqual(missing.code, 0); XCTAssertTrue(missing.err.contains("--calib-context"), missing.err)
        let q = try run(["quantize", "--model", model, "--scheme", "w8a8", "--calib", "4", "--steps", "4", "--calib-context", ctx,
                         "--correct", "ptqd", "--stats-trajectories", "4", "--out", file, "--quiet"])
        XCTAssertEqual(q.code, 0, q.err)
        XCTAssertTrue(q.out.contains("layers quantized"), q.out)
        let s = try run(["sample", "--model", model, "--quantized", file, "--n", "2", "--steps", "4", "--context", ctx,
                         "--out", tmpPath("qs.png"), "--quiet"])
        XCTAssertNotEqual(s.code, 0, "a 2-image run cannot use a 3-row context file"); XCTAssertTrue(s.err.contains("[2 or 1, L, 32]"), s.err)
        let s3 = try run(["sample", "--model", model, "--quantized", file, "--n", "3", "--steps", "4", "--context", ctx,
                          "--out", tmpPath("qs.png"), "--quiet"])
        XCTAssertEqual(s3.code, 0, s3.err)
        XCTAssertTrue(s3.out.contains("w8a8 +ptqd"), s3.out)
    }

    /// `--quantize-attention`: every attention gets q/k/v quantizers at the activation bits and an 8-bit unsigned
    /// softmax quantizer; the file records them, `inspect` lists the two products at those bits, BOPs fall, and
    /// sampling from the file uses them (its samples differ from the same weights with fp32 attention).
    func testQuantizeAttention() throws {
        let model = fixturePath("ldm_pipe_cin_vq")
        let plain = tmpPath("plain.safetensors"), attn = tmpPath("attn.safetensors")
        let common = ["quantize", "--model", model, "--scheme", "w4a8", "--calib", "8", "--steps", "4", "--quiet"]
        let a = try run(common + ["--out", plain]), b = try run(common + ["--out", attn, "--quantize-attention"])
        XCTAssertEqual(a.code, 0, a.err); XCTAssertEqual(b.code, 0, b.err)
        func gbops(_ s: String) -> Double? {
            guard let r = s.range(of: #"([0-9.]+) GBOPs per forward"#, options: .regularExpression) else { return nil }
            return Double(s[r].split(separator: " ")[0])
        }
        XCTAssertTrue(b.out.contains("8 attentions quantized"), b.out)
        XCTAssertLessThan(try XCTUnwrap(gbops(b.out)), try XCTUnwrap(gbops(a.out)) * 0.8, "attention products count 8×8 instead of 32×32")
        let inspect = try run(["inspect", attn])
        XCTAssertEqual(inspect.code, 0, inspect.err)
        let qk = inspect.out.split(separator: "\n").filter { $0.contains("attn1.attn_qk") }
        XCTAssertFalse(qk.isEmpty, inspect.out)
        XCTAssertTrue(qk.allSatisfy { $0.contains(" 8  8 ") && $0.contains(" | ") }, qk.joined(separator: "\n"))
        var tensors: [[Float]] = []
        let fpRun = try run(["sample", "--model", model, "--n", "4", "--steps", "4", "--classes", "all", "--out", tmpPath("g.png"),
                             "--save-tensors", tmpPath("fp.safetensors"), "--quiet"])
        XCTAssertEqual(fpRun.code, 0, fpRun.err)
        let fp = try SafeTensorsFile(path: tmpPath("fp.safetensors")).floats("latents")
        for f in [plain, attn] {
            let out = tmpPath("s-\(tensors.count).safetensors")
            let r = try run(["sample", "--model", model, "--quantized", f, "--n", "4", "--steps", "4", "--classes", "all",
                             "--out", tmpPath("g.png"), "--save-tensors", out, "--quiet"])
            XCTAssertEqual(r.code, 0, r.err)
            tensors.append(try SafeTensorsFile(path: out).floats("latents"))
        }
        let diff = zip(tensors[0], tensors[1]).map { abs($0 - $1) }.max()!
        XCTAssertGreaterThan(diff, 0, "quantized attention must be applied when sampling")
        // Random weights give latents of ±50: the 8-bit attention may add at most half again to W4A8's error vs fp32.
        func rms(_ a: [Float]) -> Double { (zip(a, fp).map { Double(($0 - $1) * ($0 - $1)) }.reduce(0, +) / Double(fp.count)).squareRoot() }
        XCTAssertLessThan(rms(tensors[1]), 1.5 * rms(tensors[0]), "attention quantization error is small next to the weights' and layers'")
        // Integer attention products (the default on VNNI/AMX, elsewhere the simulation; PTQD_INTEGER_ATTENTION=1 is
        // accepted) against the fp32 simulation of the same file.
        let intOut = tmpPath("s-int.safetensors")
        var env = ProcessInfo.processInfo.environment
        env["PTQD_INTEGER_ATTENTION"] = "1"
        let integerRun = try run(["sample", "--model", model, "--quantized", attn, "--n", "4", "--steps", "4", "--classes", "all",
                                  "--out", tmpPath("g.png"), "--save-tensors", intOut, "--quiet"], environment: env)
        XCTAssertEqual(integerRun.code, 0, integerRun.err)
        let integerAttention = try SafeTensorsFile(path: intOut).floats("latents")
        let simOut = tmpPath("s-sim.safetensors")
        let sim = try run(["sample", "--model", model, "--quantized", attn, "--simulate", "--n", "4", "--steps", "4", "--classes", "all",
                           "--out", tmpPath("g.png"), "--save-tensors", simOut])
        XCTAssertEqual(sim.code, 0, sim.err)
        XCTAssertTrue(sim.out.contains("w4a8 +attn"), "the label names quantized attention: \(sim.out)")
        let simulated = try SafeTensorsFile(path: simOut).floats("latents")
        let intVsSim = (zip(integerAttention, simulated).map { Double(($0 - $1) * ($0 - $1)) }.reduce(0, +) / Double(fp.count)).squareRoot()
        XCTAssertLessThan(intVsSim, 0.1 * rms(tensors[1]), "integer vs simulated sampling of one file (oneDNN \(DNNL.isaName))")
        // A file whose attention record names a missing attention, or holds a bad quantizer, is refused.
        func edited(_ name: String, _ change: (inout [String: Any]) -> Void) throws -> String {
            let f = try SafeTensorsFile(path: attn)
            var info = try JSONSerialization.jsonObject(with: Data(f.metadata["ptqd"]!.utf8)) as! [String: Any]
            var variants = info["variants"] as! [[String: Any]]
            var records = variants[0]["attentions"] as! [[String: Any]]
            change(&records[0])
            variants[0]["attentions"] = records; info["variants"] = variants
            var w = SafeTensorsWriter(metadata: ["ptqd": String(decoding: try JSONSerialization.data(withJSONObject: info), as: UTF8.self)])
            for n in f.names {
                let i = try f.info(n)
                switch i.dtype {
                case .i8: try w.add(n, int8s: try f.int8s(n), shape: i.shape)
                case .u8: try w.add(n, uint8s: try f.uint8s(n), shape: i.shape)
                default: try w.add(n, floats: try f.floats(n), shape: i.shape)
                }
            }
            let out = tmpPath(name)
            try w.write(to: out)
            return out
        }
        let unknown = try edited("unknown.safetensors") { $0["name"] = "mid_block.attentions.9.transformer_blocks.0.attn1" }
        let u = try run(["sample", "--model", model, "--quantized", unknown, "--n", "2", "--out", tmpPath("u.png")])
        XCTAssertNotEqual(u.code, 0); XCTAssertTrue(u.err.contains("attentions.9") && u.err.contains("does not exist"), u.err)
        let badScale = try edited("badscale.safetensors") { r in
            var q = r["quantization"] as! [String: Any]; var p = q["probabilities"] as! [String: Any]
            p["scale"] = 0; q["probabilities"] = p; r["quantization"] = q
        }
        let b2 = try run(["sample", "--model", model, "--quantized", badScale, "--n", "2", "--out", tmpPath("b.png")])
        XCTAssertNotEqual(b2.code, 0); XCTAssertTrue(b2.err.contains("invalid quantizer"), b2.err)
        XCTAssertEqual(b2.err.split(separator: "\n").count, 1, b2.err)
        let weightOnly = try run(["quantize", "--model", model, "--scheme", "w4a32", "--calib", "2", "--steps", "2", "--out", tmpPath("w.safetensors"), "--quantize-attention"])
        XCTAssertNotEqual(weightOnly.code, 0); XCTAssertTrue(weightOnly.err.contains("--quantize-attention"), weightOnly.err)
    }

    /// `--quantize-decoder`: the decoder is calibrated on the FP trajectories' final latents and stored in the file
    /// (its fp32 parameters stay in the pipeline folder, checked by digest); sampling with the file decodes through
    /// it — the same latents as a file without it, different but close decoded images — and refuses to run without
    /// the source folder or with another decoder.
    func testQuantizeDecoder() throws {
        let model = fixturePath("ldm_pipe_cin_vq")
        let plain = tmpPath("plain.safetensors"), dec = tmpPath("dec.safetensors")
        let common = ["quantize", "--model", model, "--scheme", "w4a8", "--calib", "8", "--steps", "4", "--quiet"]
        let a = try run(common + ["--out", plain]), b = try run(common + ["--out", dec, "--quantize-decoder"])
        XCTAssertEqual(a.code, 0, a.err); XCTAssertEqual(b.code, 0, b.err)
        XCTAssertTrue(b.out.contains("decoder w8a8 (rtn):"), b.out)
        let inspect = try run(["inspect", dec])
        XCTAssertTrue(inspect.out.contains("decoder: quantized w8a8") && inspect.out.contains("decoder.conv_in"), inspect.out)
        var out: [SafeTensorsFile] = []
        for (i, f) in [plain, dec].enumerated() {
            let r = try run(["sample", "--model", model, "--quantized", f, "--n", "4", "--steps", "4", "--classes", "all",
                             "--out", tmpPath("g\(i).png"), "--save-tensors", tmpPath("s\(i).safetensors"), "--quiet"])
            XCTAssertEqual(r.code, 0, r.err)
            out.append(try SafeTensorsFile(path: tmpPath("s\(i).safetensors")))
        }
        XCTAssertEqual(try out[0].floats("latents"), try out[1].floats("latents"), "the decoder flag does not change the denoiser")
        let x = try out[0].floats("samples"), y = try out[1].floats("samples")
        let mse = zip(x, y).map { Double(($0 - $1) * ($0 - $1)) }.reduce(0, +) / Double(x.count)
        XCTAssertGreaterThan(mse, 0, "the quantized decoder is used")
        XCTAssertGreaterThan(10 * log10(4 / mse), 20, "an 8-bit decoder stays within 20 dB PSNR of the fp32 decoder")
        let noModel = try run(["sample", "--quantized", dec, "--n", "2", "--out", tmpPath("n.png")])
        XCTAssertNotEqual(noModel.code, 0); XCTAssertTrue(noModel.err.contains("--model"), noModel.err)
        let other = try run(["sample", "--model", fixturePath("ldm_pipe_cin_kl"), "--quantized", dec, "--n", "2", "--out", tmpPath("o.png")])
        XCTAssertNotEqual(other.code, 0, other.out)
        let pixel = try run(["quantize", "--scheme", "w8a8", "--calib", "2", "--steps", "2", "--out", tmpPath("p.safetensors"), "--quantize-decoder"])
        XCTAssertNotEqual(pixel.code, 0); XCTAssertTrue(pixel.err.contains("no decoder"), pixel.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("p.safetensors")))
    }

    /// `ptqd evaluate` on models the Fashion-MNIST feature network cannot judge (a 4-class latent pipeline with 3×16×16
    /// decoded images, an unconditional pixel UNet, a cross-attention UNet with --context): paired PSNR/SSIM against
    /// fp32, cost and BOPs, no distribution metrics (the report says why). The PSNR equals the one computed here from
    /// `ptqd sample --save-tensors` of both models (same seeds, same noise); shards merge to the same metrics.
    func testEvaluatePairedMetricsOnAnyModel() throws {
        let cin = fixturePath("ldm_pipe_cin_kl"), q = tmpPath("q.safetensors")
        let made = try run(["quantize", "--model", cin, "--scheme", "w4a8", "--calib", "8", "--steps", "4", "--out", q, "--quiet"])
        XCTAssertEqual(made.code, 0, made.err)
        let out = tmpPath("ev")
        let r = try run(["evaluate", "--model", cin, "--quantized", q, "--n", "8", "--batch", "4", "--steps", "4", "--out", out, "--quiet"])
        XCTAssertEqual(r.code, 0, r.err)
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/report.json"))) as! [String: Any]
        let metrics = report["metrics"] as! [String: Any]
        XCTAssertNil(metrics["fid"] as? Double, "no FID for a 4-class 3×16×16 model")
        XCTAssertNotNil((metrics["ssim"] as? [String: Any])?["mean"] as? Double)
        let psnr = try XCTUnwrap((metrics["psnr"] as? [String: Any])?["mean"] as? Double)
        XCTAssertNotNil((report["cost"] as? [String: Any])?["bops_per_forward"] as? Double)
        XCTAssertTrue((report["notes"] as! [String]).contains { $0.contains("not computed: the model's images are 3×16×16") }, "\(report["notes"]!)")
        for f in ["report.md", "report.html", "grid.png", "report-fp32.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        // The same images from `ptqd sample` (labels n/4 per class in class order, as evaluate draws them).
        var images: [[Float]] = []
        for (i, extra) in [[], ["--quantized", q]].enumerated() {
            let s = try run(["sample", "--model", cin, "--n", "8", "--steps", "4", "--classes", "all", "--out", tmpPath("s\(i).png"),
                             "--save-tensors", tmpPath("s\(i).safetensors"), "--quiet"] + extra)
            XCTAssertEqual(s.code, 0, s.err)
            images.append(try SafeTensorsFile(path: tmpPath("s\(i).safetensors")).floats("samples"))
        }
        let per = images[0].count / 8
        func unit(_ v: Float) -> Double { (Double(min(max(v, -1), 1)) + 1) / 2 }
        let expected = (0..<8).map { i -> Double in
            let mse = (0..<per).map { k in pow(unit(images[0][i * per + k]) - unit(images[1][i * per + k]), 2) }.reduce(0, +) / Double(per)
            return 10 * log10(1 / mse)
        }.reduce(0, +) / 8
        XCTAssertEqual(psnr, expected, accuracy: 1e-9, "evaluate's PSNR is the PSNR of sample's fp32 and quantized images")

        // Unconditional pixel UNet: whole run vs 2 shards merged.
        let uncond = fixturePath("uncond_plain_16"), uq = tmpPath("u.safetensors")
        XCTAssertEqual(try run(["quantize", "--model", uncond, "--scheme", "w4a8", "--calib", "8", "--steps", "4", "--out", uq, "--quiet"]).code, 0)
        let common = ["evaluate", "--model", uncond, "--quantized", uq, "--n", "6", "--steps", "4", "--quiet"]
        XCTAssertEqual(try run(common + ["--out", tmpPath("u")]).code, 0)
        for i in 0..<2 { XCTAssertEqual(try run(common + ["--out", tmpPath("u\(i)"), "--shard", "\(i)/2"]).code, 0) }
        let m = try run(["merge", tmpPath("u0"), tmpPath("u1"), "--out", tmpPath("um"), "--quiet"])
        XCTAssertEqual(m.code, 0, m.err)
        func metricsOf(_ dir: String) throws -> NSDictionary {
            let j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json"))) as! [String: Any]
            return j["metrics"] as! NSDictionary
        }
        XCTAssertEqual(try metricsOf(tmpPath("u")), try metricsOf(tmpPath("um")), "merged paired metrics equal the whole run's")
        XCTAssertNotNil(try metricsOf(tmpPath("u"))["psnr"])
        // --features where distribution metrics cannot apply is an error; nothing is written.
        let bad = try run(["evaluate", "--model", uncond, "--n", "4", "--features", repo.appendingPathComponent("models/fmnist-features").path,
                           "--out", tmpPath("bad")])
        XCTAssertNotEqual(bad.code, 0); XCTAssertTrue(bad.err.contains("--metrics paired"), bad.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmpPath("bad")))

        // Cross-attention UNet: needs --context; then paired metrics.
        let ctx = tmpPath("ctx.safetensors")
        var w = SafeTensorsWriter()
        try w.add("context", floats: (0..<(2 * 5 * 32)).map { Float($0 % 11) * 0.05 - 0.2 }, shape: [2, 5, 32])
        try w.add("null_context", floats: [Float](repeating: 0, count: 5 * 32), shape: [1, 5, 32])
        try w.write(to: ctx)
        let heads8 = fixturePath("ldm_unet_heads8"), cq = tmpPath("c.safetensors")
        XCTAssertEqual(try run(["quantize", "--model", heads8, "--scheme", "w8a8", "--calib", "2", "--steps", "4", "--calib-context", ctx,
                                "--out", cq, "--quiet"]).code, 0)
        let noContext = try run(["evaluate", "--model", heads8, "--quantized", cq, "--n", "2", "--steps", "4", "--out", tmpPath("c0")])
        XCTAssertNotEqual(noContext.code, 0); XCTAssertTrue(noContext.err.contains("--context"), noContext.err)
        let withContext = try run(["evaluate", "--model", heads8, "--quantized", cq, "--n", "2", "--steps", "4", "--context", ctx,
                                   "--out", tmpPath("c1"), "--quiet"])
        XCTAssertEqual(withContext.code, 0, withContext.err)
        XCTAssertTrue(withContext.out.contains("PSNR vs FP") && withContext.out.contains("conditioned on cross-attention contexts"), withContext.out)
    }
}
