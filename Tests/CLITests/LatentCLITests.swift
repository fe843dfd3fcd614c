import Foundation
import SafeTensors
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
}
