//===--- Merge.swift - `ptqd merge`: the report of evaluation shards ----------===//

import ArgumentParser
import Foundation
import Pipeline

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge the shard folders of `ptqd evaluate --shard I/N` into the report of one unsharded run.",
        discussion: """
        Checks that the folders are the N shards of one run (same model and file digests, sampler settings, n, seed, \
        batch, feature network and reference data; every index 0..<N once; each finished) and writes the same \
        report.json, report.md, report.html, grid.png, fid-vs-n plots and fp32/quantized sample files as the unsharded \
        run: FID, IS, precision/recall and PSNR/SSIM are computed from the shards' per-image features, logits and \
        paired values in image order, so they equal the unsharded run's exactly. The model, quantized file, feature \
        network and dataset are re-opened at the paths the shards recorded (relative paths from the shards' working \
        directory) and must still have the digests the shards used. On any error nothing is written.
        """)

    @Argument(help: ArgumentHelp("the shard folders (the --out of each `evaluate --shard I/N`), in any order", valueName: "dir"))
    var shards: [String]
    @Option(help: "output folder for the merged report") var out: String
    @Flag(help: "no progress on stderr") var quiet = false

    func run() throws {
        let cwd = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        func absolute(_ p: String) -> String { URL(fileURLWithPath: p, relativeTo: cwd).standardizedFileURL.path }
        let merged = try EvaluationPartial.merge(directories: shards.map(absolute))
        var command: Evaluate
        do { command = try Evaluate.parse(merged.manifest.arguments) } catch {
            throw PipelineError("\(merged.directories[0]): the recorded evaluate arguments no longer parse: \(Evaluate.message(for: error))")
        }
        command.out = absolute(out)
        command.shard = nil
        command.quiet = command.quiet || quiet
        // Relative paths of the shards' command are relative to their working directory.
        if FileManager.default.fileExists(atPath: merged.manifest.workingDirectory) {
            FileManager.default.changeCurrentDirectoryPath(merged.manifest.workingDirectory)
        }
        defer { FileManager.default.changeCurrentDirectoryPath(cwd.path) }
        try command.runMerged(merged)
    }
}
