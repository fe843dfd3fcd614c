import Foundation
import XCTest

/// Shared harness for the CLI tests: runs the built `ptqd` binary as a user would, in a fresh
/// temporary folder per test, and returns its exit code, stdout and stderr.
class CLITestCase: XCTestCase {
    /// `$PTQD_BINARY`, else the `ptqd` beside the test bundle (any scratch path), else `.build/release/ptqd`.
    var binary: URL {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let env = ProcessInfo.processInfo.environment["PTQD_BINARY"], !env.isEmpty { candidates.append(URL(fileURLWithPath: env)) }
        candidates += CommandLine.arguments.filter { $0.hasSuffix(".xctest") }
            .map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("ptqd") }
        candidates += Bundle.allBundles.map(\.bundleURL).filter { $0.pathExtension == "xctest" }
            .map { $0.deletingLastPathComponent().appendingPathComponent("ptqd") }
        candidates.append(Bundle.main.bundleURL.appendingPathComponent("ptqd"))
        candidates.append(repo.appendingPathComponent(".build/release/ptqd"))
        return candidates.first { fm.isExecutableFile(atPath: $0.path) } ?? candidates.last!
    }
    /// The package root (commands run with it as the working directory).
    var repo: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }
    /// A diffusers model folder from `Tests/DiffusionTests/Fixtures` (written by `tools/make_fixtures.py`).
    func fixturePath(_ name: String) -> String { repo.appendingPathComponent("Tests/DiffusionTests/Fixtures/\(name)").path }
    /// This test's scratch folder, removed after the test.
    var tmp: URL!
    func tmpPath(_ name: String) -> String { tmp.appendingPathComponent(name).path }

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ptqd-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: binary.path), "ptqd binary not built at \(binary.path)")
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    /// Runs `ptqd args…` to completion. stdout and stderr go to files in `tmp` (not pipes), so a
    /// chatty command cannot block on a full pipe buffer while the other stream is being read.
    @discardableResult
    func run(_ args: [String], environment: [String: String]? = nil) throws -> (code: Int32, out: String, err: String) {
        let id = UUID().uuidString
        let outURL = tmp.appendingPathComponent(".stdout-\(id)"), errURL = tmp.appendingPathComponent(".stderr-\(id)")
        for u in [outURL, errURL] { _ = FileManager.default.createFile(atPath: u.path, contents: nil) }
        defer { for u in [outURL, errURL] { try? FileManager.default.removeItem(at: u) } }
        let o = try FileHandle(forWritingTo: outURL), e = try FileHandle(forWritingTo: errURL)
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        if let environment { p.environment = environment }
        p.currentDirectoryURL = repo
        p.standardOutput = o; p.standardError = e
        try p.run()
        p.waitUntilExit()
        try o.close(); try e.close()
        let out = try String(decoding: Data(contentsOf: outURL), as: UTF8.self)
        let err = try String(decoding: Data(contentsOf: errURL), as: UTF8.self)
        return (p.terminationStatus, out, err)
    }
}
