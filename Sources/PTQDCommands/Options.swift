//===--- Options.swift - option groups shared by subcommands ----------------===//

import ArgumentParser
import Diffusion
import Foundation
import TensorCore

/// `--model DIR` with the bundled model as default.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("diffusers model folder (default: the bundled models/fmnist-ddpm)", valueName: "dir"))
    var model: String?

    /// The model folder to use: --model, $PTQD_MODEL, or the bundled model found next to the
    /// working directory or the executable.
    func resolvedPath() throws -> String {
        if let m = model { return m }
        if let env = ProcessInfo.processInfo.environment["PTQD_MODEL"], !env.isEmpty { return env }
        return try BundledModels.path("fmnist-ddpm")
    }

    func load() throws -> DiffusionModel { try DiffusionModel.load(try resolvedPath()) }
}

/// Locates files shipped in the repository's `models/` folder.
enum BundledModels {
    static func path(_ name: String) throws -> String {
        let fm = FileManager.default
        var candidates = [URL(fileURLWithPath: fm.currentDirectoryPath).appendingPathComponent("models/\(name)")]
        var exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<5 {  // .build/<triple>/release/ptqd → repository root
            candidates.append(exe.appendingPathComponent("models/\(name)"))
            exe = exe.deletingLastPathComponent()
        }
        if let hit = candidates.first(where: { fm.fileExists(atPath: $0.path) }) { return hit.path }
        throw ValidationError("bundled model models/\(name) not found; run from the repository root or pass --model DIR")
    }
}

/// Sampler settings shared by sample/evaluate/quantize.
struct SamplerOptions: ParsableArguments {
    @Option(help: "number of sampling steps") var steps: Int = 20
    @Option(help: "DDIM eta (0 = deterministic; ignored by DDPM)") var eta: Float = 0
    @Option(help: "scheduler: ddim or ddpm") var scheduler: SamplerKind = .ddim
    @Option(help: "classifier-free guidance scale (1 = off)") var guidance: Float = 3.0
    @Option(name: .customLong("null-class"), help: "label of the unconditional class (default: last class embedding)")
    var nullClass: Int?

    func validate() throws {
        guard steps >= 1 else { throw ValidationError("--steps must be >= 1, got \(steps)") }
        guard eta.isFinite, eta >= 0, eta <= 1 else { throw ValidationError("--eta must be in [0, 1], got \(eta)") }
        guard guidance.isFinite else { throw ValidationError("--guidance must be finite") }
    }

    var settings: SamplerSettings { SamplerSettings(kind: scheduler, steps: steps, eta: eta, guidance: guidance, nullClass: nullClass) }
}

extension SamplerKind: ExpressibleByArgument {}

/// `--threads N`.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "CPU threads for oneDNN and our kernels") var threads: Int = 2

    func validate() throws {
        guard threads >= 1 && threads <= 256 else { throw ValidationError("--threads must be in 1...256, got \(threads)") }
    }

    func apply() { DNNL.setThreads(threads) }
}

/// Writes a line to stderr.
func note(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }
