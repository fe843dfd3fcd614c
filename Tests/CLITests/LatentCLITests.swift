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
}
