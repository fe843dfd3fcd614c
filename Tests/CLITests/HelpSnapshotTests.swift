import ArgumentParser
import Foundation
@testable import PTQDCommands
import XCTest

/// Every command's --help, at a fixed width of 100 columns, equals the committed snapshot in HelpSnapshots/.
/// A flag that is renamed, dropped or re-documented changes a snapshot, so the change is seen in review.
/// After an intended change: `PTQD_UPDATE_SNAPSHOTS=1 swift test -c release --filter HelpSnapshotTests`, then
/// read the diff of HelpSnapshots/ before committing it.
final class HelpSnapshotTests: XCTestCase {
    static let commands: [(String, ParsableCommand.Type)] = [
        ("ptqd", PTQDMain.self), ("quantize", Quantize.self), ("sample", Sample.self), ("evaluate", Evaluate.self), ("merge", Merge.self), ("merge-stats", MergeStats.self),
        ("ablation", Ablation.self), ("inspect", Inspect.self), ("bench", Bench.self),
        ("plot", Plot.self),
    ]
    var dir: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("HelpSnapshots") }

    func testHelpMatchesSnapshots() throws {
        let update = ProcessInfo.processInfo.environment["PTQD_UPDATE_SNAPSHOTS"] == "1"
        for (name, command) in Self.commands {
            let help = PTQDMain.helpMessage(for: command, columns: 100) + "\n"
            let file = dir.appendingPathComponent("\(name).txt")
            if update {
                try help.write(to: file, atomically: true, encoding: .utf8)
                continue
            }
            let expected = try String(contentsOf: file, encoding: .utf8)
            XCTAssertEqual(help, expected, "\(name) --help changed; if intended, regenerate with PTQD_UPDATE_SNAPSHOTS=1 and review the diff")
        }
    }
}
