//===--- PeakThroughput.swift - this machine's arithmetic peak, measured -----===//
//
// The clock in /proc/cpuinfo is the base clock on these VMs while the cores boost far above it, so
// a peak derived from it is wrong (it gave conv "efficiencies" above 160%). Instead we time short
// instruction mixes (CKernels/peak.c) on every thread at once: FMA for fp32, and for int8 whatever
// oneDNN's kernels use on this CPU (vpmaddubsw+vpmaddwd without VNNI, vpdpbusd with VNNI, tdpbusd with AMX).
//
//===----------------------------------------------------------------------===//

import CKernels
import Foundation

public enum PeakMix: Int32, CaseIterable, CustomStringConvertible, Sendable {
    case fp32AVX2 = 0, fp32AVX512 = 1, int8AVX2 = 2, int8AVX512 = 3, int8VNNI512 = 4, int8AMX = 5

    public var description: String {
        switch self {
        case .fp32AVX2: return "fp32 FMA ymm"
        case .fp32AVX512: return "fp32 FMA zmm"
        case .int8AVX2: return "int8 vpmaddubsw ymm"
        case .int8AVX512: return "int8 vpmaddubsw zmm"
        case .int8VNNI512: return "int8 vpdpbusd zmm"
        case .int8AMX: return "int8 AMX tdpbusd"
        }
    }

    public var isSupported: Bool { ptqd_peak_supported(rawValue) != 0 }

    /// The mixes matching what oneDNN dispatches on this CPU: its fp32 convolution and its int8 convolution.
    public static var forOneDNN: (fp32: PeakMix?, int8: PeakMix?) {
        let isa = DNNL.isaLevel
        let fp32: PeakMix? = isa >= .avx512Core ? .fp32AVX512 : isa >= .avx2 ? .fp32AVX2 : nil
        let int8: PeakMix?
        switch isa {
        case .avx512CoreAMX: int8 = PeakMix.int8AMX.isSupported ? .int8AMX : .int8VNNI512
        case .avx512CoreBF16, .avx512CoreVNNI: int8 = .int8VNNI512
        case .avx512Core: int8 = .int8AVX512
        case .avx2, .avx2VNNI: int8 = .int8AVX2
        default: int8 = nil
        }
        return (fp32, int8.flatMap { $0.isSupported ? $0 : nil })
    }
}

public enum PeakThroughput {
    /// Measured rate of `mix` with `threads` threads running it at once, in G(FL)OP/s (2 per multiply-add);
    /// nil if the CPU cannot run it. Doubles the iteration count until one run takes ≥ `seconds`, then keeps
    /// the best of three runs (the peak, not an average over interruptions).
    public static func measure(_ mix: PeakMix, threads: Int, seconds: Double = 0.15) -> Double? {
        guard mix.isSupported else { return nil }
        let perIteration = Double(ptqd_peak_ops_per_iteration(mix.rawValue))
        func timed(_ n: Int) -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            Parallel.forEachChunk(threads, minChunk: 1) { r in
                for _ in r { blackHole(ptqd_peak_run(mix.rawValue, n)) }
            }
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        var n = 1000
        while timed(n) < seconds && n < 1 << 40 { n *= 2 }
        let best = (0..<3).map { _ in timed(n) }.min()!
        return perIteration * Double(n) * Double(threads) / best / 1e9
    }

    @inline(never) static func blackHole(_ x: Float) { if x.isNaN && x > 0 { print(x) } }
}
