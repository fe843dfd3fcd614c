import Foundation
import SafeTensors
import TensorCore
import XCTest

/// "Nothing changes for users": `ptqd sample --save-tensors` on the bundled model and on a quantized file of
/// format v1, both made by the code before the one-pipeline refactor (`Compat/README.md`), gives the same
/// `samples` tensors as that code did.
///
/// Each command runs twice: natively, and with oneDNN and our kernels capped at AVX2 (the `avx2-` fixtures).
/// On the CPU model the fixtures were recorded on every run must be bit-identical. On another CPU the integer
/// runs must still be bit-identical (integer accumulation is exact, and was bit-identical across ISAs when
/// recorded), the AVX2-capped fp32 runs must agree to 1e-4 (oneDNN's fp32 convolutions may block differently
/// for other cache sizes), and the native runs of another ISA, and fake-quantized runs off the recording CPU, are
/// not compared (a 4-bit level flips on a last-bit difference and the W4A4 steps amplify it).
final class CompatibilityTests: CLITestCase {
    /// `model name` and `model` of /proc/cpuinfo where the fixtures were recorded.
    static let recordedCPU = "Intel(R) Xeon(R) Processor/207"
    static let recordedISA = "avx512_core_amx"

    var compat: String { repo.appendingPathComponent("Tests/CLITests/Compat").path }
    var file: String { "\(compat)/v1-mixed-ptqd.safetensors" }

    static var cpu: String {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        func field(_ key: String) -> String {
            info.split(separator: "\n").first { $0.hasPrefix(key) && $0.dropFirst(key.count).trimmingCharacters(in: .whitespaces).hasPrefix(":") }
                .map { String($0.split(separator: ":", maxSplits: 1)[1]).trimmingCharacters(in: .whitespaces) } ?? "?"
        }
        return "\(field("model name"))/\(field("model"))"
    }

    enum Kind { case fp32, integer, simulate }

    func check(_ fixture: String, kind: Kind, _ args: [String]) throws {
        let sameCPU = Self.cpu == Self.recordedCPU
        for capped in [false, true] {
            let name = (capped ? "avx2-" : "") + fixture
            let native = !capped && DNNL.isaName == Self.recordedISA && KernelISA.active.description == "avx512"
            let exact = (sameCPU && (capped || native)) || (kind == .integer && (capped || native))
            let loose = capped && kind == .fp32
            guard exact || loose else { continue }
            let out = tmpPath("\(name).safetensors")
            var env = ProcessInfo.processInfo.environment
            if capped { env["ONEDNN_MAX_CPU_ISA"] = "AVX2"; env["PTQD_MAX_ISA"] = "avx2" }
            let r = try run(["sample", "--n", "10", "--classes", "all", "--out", tmpPath("\(name).png"), "--save-tensors", out, "--quiet"] + args,
                            environment: env)
            XCTAssertEqual(r.code, 0, r.err)
            let got = try SafeTensorsFile(path: out).floats("samples", expectedShape: [10, 1, 32, 32])
            let want = try SafeTensorsFile(path: "\(compat)/\(name).safetensors").floats("samples", expectedShape: [10, 1, 32, 32])
            if exact {
                let differing = zip(got, want).filter { $0.0.bitPattern != $0.1.bitPattern }.count
                XCTAssertEqual(differing, 0, "\(name): \(differing) of \(got.count) values differ from the pre-refactor output")
            } else {
                let worst = zip(got, want).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThanOrEqual(worst, 1e-4, "\(name): max |difference| \(worst) on \(Self.cpu)")
            }
        }
    }

    func testFP32DDIMUnchanged() throws { try check("fp32-ddim20-g3", kind: .fp32, []) }
    func testFP32DDPMUnchanged() throws {
        try check("fp32-ddpm10-g1.5-seed7", kind: .fp32, ["--scheduler", "ddpm", "--steps", "10", "--guidance", "1.5", "--seed", "7"])
    }
    func testV1FileIntegerUnchanged() throws { try check("v1-integer-ddim20-g3", kind: .integer, ["--quantized", file]) }
    func testV1FileSimulatedUnchanged() throws { try check("v1-simulate-ddim20-g3", kind: .simulate, ["--quantized", file, "--simulate"]) }
    func testV1FileWithVSCUnchanged() throws {
        try check("v1-integer-ddim20-eta1-force", kind: .integer, ["--quantized", file, "--steps", "20", "--eta", "1", "--force"])
    }
}
