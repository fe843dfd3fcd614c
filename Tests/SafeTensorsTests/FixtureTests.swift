// Cross-checks against files written by the official PyTorch safetensors library.

import Foundation
import XCTest
@testable import SafeTensors

final class FixtureTests: XCTestCase {
    /// Written by Fixtures/make_fixture.py with `safetensors.torch.save_file` (committed, < 4 KB).
    static let fixturePath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/torch_fixture.safetensors").path

    /// One entry of the script's `__metadata__["expected"]` JSON.
    struct Expected: Decodable {
        let dtype: String
        let shape: [Int]
        let floats: [Double]
        let ints: [Int64]
        enum Keys: String, CodingKey { case dtype, shape, values }
        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            dtype = try c.decode(String.self, forKey: .dtype)
            shape = try c.decode([Int].self, forKey: .shape)
            if ["F32", "F16", "BF16", "F64"].contains(dtype) {
                floats = try c.decode([Double].self, forKey: .values); ints = []
            } else {
                ints = try c.decode([Int64].self, forKey: .values); floats = []
            }
        }
    }

    func testReadsExactlyWhatPyTorchWrote() throws {
        let f = try SafeTensorsFile(path: Self.fixturePath)
        XCTAssertEqual(f.metadata["format"], "pt")
        XCTAssertEqual(f.metadata["generator"], "make_fixture.py")
        let json = try XCTUnwrap(f.metadata["expected"])
        let expected = try JSONDecoder().decode([String: Expected].self, from: Data(json.utf8))
        XCTAssertEqual(Set(expected.keys), Set(f.tensors.keys))
        XCTAssertEqual(expected.count, 9)

        for (name, e) in expected {
            let info = try f.info(name)
            XCTAssertEqual(info.dtype.rawValue, e.dtype, name)
            XCTAssertEqual(info.shape, e.shape, name)
            switch info.dtype {
            case .f32, .f16, .bf16:
                // Stored values are exactly representable in Float; compare bit patterns (keeps -0.0).
                XCTAssertEqual(try f.floats(name).map(\.bitPattern), e.floats.map { Float($0).bitPattern }, name)
            case .i8: XCTAssertEqual(try f.int8s(name).map(Int64.init), e.ints, name)
            case .u8: XCTAssertEqual(try f.uint8s(name).map(Int64.init), e.ints, name)
            case .i32: XCTAssertEqual(try f.int32s(name).map(Int64.init), e.ints, name)
            case .i64: XCTAssertEqual(try f.int64s(name), e.ints, name)
            default: XCTFail("unexpected dtype \(info.dtype) for \(name)")
            }
        }
    }

    /// The same values typed in by hand, so the test does not rely only on the file's own metadata.
    func testSpotValues() throws {
        let f = try SafeTensorsFile(path: Self.fixturePath)
        XCTAssertEqual(f.headerLength % 8, 0)
        XCTAssertEqual(try f.floats("f16.vector", expectedShape: [5]),
                       [1.0, -2.5, 65504.0, 0.0999755859375, Float(sign: .plus, exponent: -24, significand: 1)])
        XCTAssertEqual(try f.floats("bf16.square", expectedShape: [2, 2]), [1.0, -2.5, 3.140625, 0.10009765625])
        XCTAssertEqual(try f.floats("f32.matrix", expectedShape: [2, 3]), [1.5, -2.25, 3.0e-8, 1e30, -0.0, 0.1])
        XCTAssertEqual(try f.floats("f32.scalar", expectedShape: []), [42.5])
        XCTAssertEqual(try f.floats("f32.empty", expectedShape: [0, 3]), [])
        XCTAssertEqual(try f.int8s("i8.vector"), [-128, -1, 0, 127])
        XCTAssertEqual(try f.uint8s("u8.square"), [0, 1, 200, 255])
        XCTAssertEqual(try f.int32s("i32.vector"), [.min, .max, 0, -7])
        XCTAssertEqual(try f.int64s("i64.vector"), [.min, .max, 1 << 40])
    }

    /// Our writer's output, read by the official Python library. Skipped when the PyTorch venv is absent
    /// (CI needs no PyTorch); the committed fixture covers the other direction.
    func testOfficialLibraryReadsOurOutput() throws {
        let python = "/opt/ptqd-venv/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no \(python)") }
        let dir = try TempDir()
        defer { dir.remove() }
        var w = SafeTensorsWriter(metadata: ["k": "v", "ü": "\"q\"\n"])
        try w.add("z.f32", floats: [1.5, -2.25, 0.1], shape: [3])
        try w.add("a.u8", uint8s: [0, 255], shape: [2, 1])        // makes the next tensor unaligned
        try w.add("f16", floats: [1.0, -2.5, 65504], shape: [3], as: .f16)
        try w.add("bf16", floats: [3.140625, 0.1], shape: [2], as: .bf16)
        try w.add("i8", int8s: [-128, 127], shape: [2])
        try w.add("i32", int32s: [.min, .max], shape: [1, 2])
        try w.add("i64", int64s: [.min, .max], shape: [2])
        try w.add("scalar", floats: [42.5], shape: [])
        try w.add("empty", floats: [], shape: [0, 3])
        let path = dir.path("ours.safetensors")
        try w.write(to: path)

        let script = """
        import json, sys, torch
        from safetensors import safe_open
        from safetensors.torch import load_file
        t = load_file(sys.argv[1])
        with safe_open(sys.argv[1], framework="pt") as f: meta = f.metadata()
        out = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                   "values": [float(x) if v.is_floating_point() else int(x) for x in v.to(torch.float64 if v.is_floating_point() else torch.int64).flatten().tolist()]}
               for k, v in t.items()}
        print(json.dumps({"tensors": out, "metadata": meta}, sort_keys=True))
        """
        let proc = Process()
        proc.executableURL = URL(fileURLWithPath: python)
        proc.arguments = ["-c", script, path]
        let pipe = Pipe()
        proc.standardOutput = pipe
        try proc.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        proc.waitUntilExit()
        XCTAssertEqual(proc.terminationStatus, 0)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(obj["metadata"] as? [String: String], w.metadata)
        let t = try XCTUnwrap(obj["tensors"] as? [String: [String: Any]])
        // Compared as Float: Foundation's JSON parser may be off by an ulp of Double in the last digit.
        func values(_ k: String) -> [Float] { (t[k]?["values"] as? [NSNumber] ?? []).map(\.floatValue) }
        func shape(_ k: String) -> [Int] { t[k]?["shape"] as? [Int] ?? [-1] }
        XCTAssertEqual(values("z.f32"), [1.5, -2.25, 0.1])
        XCTAssertEqual(values("a.u8"), [0, 255]); XCTAssertEqual(shape("a.u8"), [2, 1])
        XCTAssertEqual(values("f16"), [1.0, -2.5, 65504]); XCTAssertEqual(t["f16"]?["dtype"] as? String, "torch.float16")
        XCTAssertEqual(values("bf16"), [3.140625, 0.10009765625]); XCTAssertEqual(t["bf16"]?["dtype"] as? String, "torch.bfloat16")
        XCTAssertEqual(values("i8"), [-128, 127])
        XCTAssertEqual((t["i32"]?["values"] as? [NSNumber])?.map(\.int32Value), [.min, .max]); XCTAssertEqual(shape("i32"), [1, 2])
        XCTAssertEqual((t["i64"]?["values"] as? [NSNumber])?.map(\.int64Value), [.min, .max])
        XCTAssertEqual(values("scalar"), [42.5]); XCTAssertEqual(shape("scalar"), [])
        XCTAssertEqual(values("empty"), []); XCTAssertEqual(shape("empty"), [0, 3])
    }
}
