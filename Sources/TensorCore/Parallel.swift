//===--- Parallel.swift - a small fork-join helper for memory-bound loops --===//

import Dispatch

/// Splits index ranges across the configured thread count for our own (non-oneDNN) loops.
public enum Parallel {
    /// Threads used by `forEachChunk`; set through `DNNL.setThreads`.
    nonisolated(unsafe) public static var threads: Int = 2

    /// Calls `body` on contiguous sub-ranges of `0..<count`, in parallel when the work is large.
    /// - Parameters:
    ///   - count: number of items.
    ///   - minChunk: do not split below this many items per chunk.
    public static func forEachChunk(_ count: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, count / max(minChunk, 1)))
        if parts <= 1 { if count > 0 { body(0..<count) }; return }
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let lo = count * p / parts, hi = count * (p + 1) / parts
            if hi > lo { body(lo..<hi) }
        }
    }
}
