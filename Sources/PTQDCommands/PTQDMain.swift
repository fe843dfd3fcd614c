//===--- PTQDMain.swift - the `ptqd` command --------------------------------===//

import ArgumentParser

/// `ptqd`: sample, inspect and benchmark diffusion models (quantization commands follow).
public struct PTQDMain: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ptqd",
        abstract: "Post-training quantization (PTQD) of diffusion models, run for real on the CPU.",
        discussion: """
        Models are diffusers folders (unet/config.json + unet/diffusion_pytorch_model.safetensors, \
        scheduler/scheduler_config.json). Without --model, commands use the bundled models/fmnist-ddpm.
        Results go to stdout and files; progress goes to stderr.
        """,
        version: ptqdVersion,
        subcommands: [Quantize.self, Sample.self, Evaluate.self, Merge.self, MergeStats.self, Ablation.self, Inspect.self, Bench.self, Plot.self])

    public init() {}
}

/// The tool's version.
public let ptqdVersion = "0.1.0"
