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
        let merged = try EvaluationPartial.merge(directories: shards.map(ShardCommand.absolute))
        var command = try ShardCommand.reparse(Evaluate.self, merged.manifest.arguments, recordedIn: merged.directories[0], name: "evaluate")
        command.out = ShardCommand.absolute(out)
        command.shard = nil
        command.quiet = command.quiet || quiet
        try ShardCommand.inWorkingDirectory(merged.manifest.workingDirectory) { try command.runMerged(merged) }
    }
}

/// What both merges do with the shards' recorded command: absolute paths, re-parsing it, and running in the
/// shards' working directory (their relative paths are relative to it).
enum ShardCommand {
    /// `path` made absolute against the current directory.
    static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL.path
    }

    /// The shards' command re-parsed from its recorded arguments.
    /// - Throws: a one-line error naming the shard folder when the arguments no longer parse.
    static func reparse<C: ParsableCommand>(_ type: C.Type, _ arguments: [String], recordedIn dir: String, name: String) throws -> C {
        do { return try C.parse(arguments) } catch {
            throw PipelineError("\(dir): the recorded \(name) arguments no longer parse: \(C.message(for: error))")
        }
    }

    /// Runs `body` with `directory` (when it exists) as the current directory, restoring it afterwards.
    static func inWorkingDirectory<T>(_ directory: String, _ body: () throws -> T) rethrows -> T {
        let cwd = FileManager.default.currentDirectoryPath
        if FileManager.default.fileExists(atPath: directory) { _ = FileManager.default.changeCurrentDirectoryPath(directory) }
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }
        return try body()
    }
}
