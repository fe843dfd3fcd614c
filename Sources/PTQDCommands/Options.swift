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

/// The paper's two ImageNet settings, mirrored on our benchmark.
enum EvaluationSetting: String, ExpressibleByArgument, CaseIterable {
    case A, B
    /// A: DDIM 20 steps, eta 0, guidance 3.0. B: DDIM 100 steps, eta 1, guidance 1.5 (VSC active).
    var settings: SamplerSettings {
        switch self {
        case .A: return SamplerSettings(kind: .ddim, steps: 20, eta: 0, guidance: 3.0)
        case .B: return SamplerSettings(kind: .ddim, steps: 100, eta: 1, guidance: 1.5)
        }
    }
}

/// Sampler settings, defined once for sample, evaluate, quantize and ablation: a setting, then overrides.
struct SamplerOptions: ParsableArguments {
    @Option(help: "sampler setting: A = DDIM 20 steps, eta 0, guidance 3; B = DDIM 100 steps, eta 1, guidance 1.5 (default: A; ablation: B)")
    var setting: EvaluationSetting?
    @Option(help: "scheduler: ddim, ddpm or dpmsolver++ (default: the setting's DDIM, or dpmsolver++ when the model's scheduler_config.json names DPMSolverMultistepScheduler)")
    var scheduler: SamplerKind?
    @Option(help: "override the setting's step count") var steps: Int?
    @Option(help: "override the setting's DDIM eta (0 = deterministic; ignored by DDPM and DPM-Solver++)") var eta: Float?
    @Option(help: "override the setting's classifier-free guidance scale (1 = off)") var guidance: Float?
    @Option(name: .customLong("null-class"), help: "label of the unconditional class (default: last class embedding)")
    var nullClass: Int?

    func validate() throws {
        if let s = steps, s < 1 { throw ValidationError("--steps must be >= 1, got \(s)") }
        if let e = eta, !(e.isFinite && e >= 0 && e <= 1) { throw ValidationError("--eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got \(e)") }
        if let g = guidance, !g.isFinite { throw ValidationError("--guidance must be finite") }
    }

    /// Whether any override was given.
    var overridden: Bool { scheduler != nil || steps != nil || eta != nil || guidance != nil }

    /// The setting in effect (`--setting`, else the command's default).
    func resolvedSetting(default d: EvaluationSetting = .A) -> EvaluationSetting { setting ?? d }

    /// The settings for a model whose scheduler config is `config`.
    func settings(for config: SchedulerConfig, default d: EvaluationSetting = .A) -> SamplerSettings {
        var s = resolvedSetting(default: d).settings
        s.kind = scheduler ?? (SamplerKind.defaultKind(for: config) == .dpmSolverPlusPlus ? .dpmSolverPlusPlus : s.kind)
        if let v = steps { s.steps = v }
        if let v = eta { s.eta = v }
        if let v = guidance { s.guidance = v }
        s.nullClass = nullClass
        return s
    }

    /// These options as command-line arguments (to run another command with the same sampler).
    func arguments(default d: EvaluationSetting = .A) -> [String] {
        var a = ["--setting", resolvedSetting(default: d).rawValue]
        if let v = scheduler { a += ["--scheduler", v.rawValue] }
        if let v = steps { a += ["--steps", "\(v)"] }
        if let v = eta { a += ["--eta", "\(v)"] }
        if let v = guidance { a += ["--guidance", "\(v)"] }
        if let v = nullClass { a += ["--null-class", "\(v)"] }
        return a
    }
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
