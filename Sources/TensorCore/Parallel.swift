//===--- Parallel.swift - a small fork-join helper for memory-bound loops --===//
//
// Our own loops (GroupNorm, SiLU, residual adds, quantization...) run on libgomp's OpenMP team,
// the same threads oneDNN's primitives use. A second pool (GCD) would compete with OpenMP workers
// that are still spin-waiting after a primitive returns: on a 2-core machine that doubled the
// time of the memory-bound ops. `GOMP_parallel` is libgomp's stable C ABI (what GCC emits for
// `#pragma omp parallel`); libgomp is linked through CDNNL.
//
//===----------------------------------------------------------------------===//

import CDNNL

/// Splits index ranges across the configured thread count for our own (non-oneDNN) loops.
public enum Parallel {
    /// Threads used by `forEachChunk`; set through `DNNL.setThreads`.
    nonisolated(unsafe) public static var threads: Int = 2

    /// Calls `body` on contiguous sub-ranges of `0..<count`, in parallel when the work is large.
    /// Every index is covered exactly once; chunks are contiguous and in order of thread number.
    /// - Parameters:
    ///   - count: number of items.
    ///   - minChunk: do not split below this many items per chunk.
    public static func forEachChunk(_ count: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, count / max(minChunk, 1)))
        if parts <= 1 { if count > 0 { body(0..<count) }; return }
        withoutActuallyEscaping(body) { escapable in
            var job = Job(count: count, body: escapable)
            withUnsafeMutablePointer(to: &job) { jp in
                GOMP_parallel(runJob, UnsafeMutableRawPointer(jp), UInt32(parts), 0)
            }
        }
    }

    private struct Job {
        let count: Int
        let body: (Range<Int>) -> Void
    }

    /// One OpenMP team member: takes its share of the range by (thread number, team size), so the
    /// whole range is covered even if libgomp grants fewer threads than asked for.
    private static let runJob: @convention(c) (UnsafeMutableRawPointer?) -> Void = { raw in
        let job = raw!.assumingMemoryBound(to: Job.self)
        let parts = Int(omp_get_num_threads()), p = Int(omp_get_thread_num())
        let count = job.pointee.count
        let lo = count * p / parts, hi = count * (p + 1) / parts
        if hi > lo { job.pointee.body(lo..<hi) }
    }
}
