//===--- Invocation.swift - the command line a report says reproduces it ------===//

import Evaluation

/// The arguments of the running command, for "reproduce with" lines in reports: the process's own, or the
/// ones a composite command (`ptqd ablation`) passed to the subcommand it runs in process.
enum Invocation {
    nonisolated(unsafe) static var override: [String]? = nil

    static var arguments: [String] { override ?? Array(CommandLine.arguments.dropFirst()) }

    /// `ptqd ARGS…`, shell-quoted.
    static var command: String { shellCommand(["ptqd"] + arguments) }

    /// Runs `body` with `arguments` reported as the invocation.
    static func with<T>(_ arguments: [String], _ body: () throws -> T) rethrows -> T {
        let old = override
        override = arguments
        defer { override = old }
        return try body()
    }
}
