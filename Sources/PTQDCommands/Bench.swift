//===--- Bench.swift - `ptqd bench`: fp32 UNet throughput vs PyTorch ---------===//

import ArgumentParser
import Diffusion
import Evaluation
import Foundation
import Pipeline
import Quantization
import TensorCore

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure UNet forward throughput (images/s) and conv efficiency; optionally next to PyTorch in the same run.",
        discussion: """
        Timing: each --quantized file is timed beside fp32 (and bf16 where the CPU has it) in interleaved rounds, \
        one forward of each per round, after warm-up; each reports its median, and each ratio to fp32 also as the \
        10th–90th percentile of the round-by-round ratios (a drifting machine widens that range instead of skewing \
        the ratio). fp32 and bf16 lines come from the rounds beside the first file. Conv efficiency = conv FLOPs (2·MACs, padded taps) / \
        time inside conv kernels / the best peak measured in this run (at the start and after each batch) by timing the instruction mix \
        oneDNN uses on this CPU on every thread at once (FMA for fp32; vpmaddubsw, VNNI vpdpbusd or AMX tdpbusd \
        for int8), never derived from the /proc/cpuinfo clock (the base clock on these VMs). The PyTorch peer runs \
        tools/bench_torch.py with the same weights and thread count, with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE \
        removed from its environment only.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "comma-separated batch sizes") var batches: String = "1,16,64"
    @Option(help: "minimum timed seconds per measurement") var seconds: Double = 3
    @Option(help: "python with torch + diffusers for the PyTorch peer ('' to skip)") var torchPython: String = ".venv-tools/bin/python"
    @Option(help: "PyTorch layout(s): nchw, channels_last or both") var torchLayout: String = "nchw"
    @Option(help: "write the results as JSON here") var json: String?
    @Option(name: .customLong("quantized"), help: "also time these quantized files (comma list), integer kernels, same batches, same run")
    var quantizedFiles: String?
    @Option(name: .customLong("context-length"), help: "context tokens L of a cross-attention UNet (a seeded random context [N, L, D]; SD: 77)")
    var contextLength: Int = 1

    func validate() throws {
        guard contextLength >= 1 else { throw ValidationError("--context-length must be >= 1") }
        guard seconds > 0 else { throw ValidationError("--seconds must be > 0") }
    }

    func run() throws {
        runtime.apply()
        let path = try model.resolvedPath()
        let m = try DiffusionModel.load(path)
        let unet = m.network
        let bs = try batches.split(separator: ",").map { s -> Int in
            guard let b = Int(s.trimmingCharacters(in: .whitespaces)), b >= 1 else { throw ValidationError("--batches: bad batch size '\(s)'") }
            return b
        }
        var costConditioning: Conditioning? = nil
        if case let .context(width) = unet.conditioningKind, contextLength > 1 { costConditioning = .context(Tensor(shape: [1, contextLength, width])) }
        let costs = try LayerCosts.measure(unet, conditioning: costConditioning)
        var peaks = Self.measurePeaks(threads: runtime.threads)
        print("cpu: \(Self.cpuModel()); oneDNN ISA \(DNNL.isaName)\(DNNL.hasVNNI ? "" : " (no VNNI: 8-bit weights run as hi+lo halves)"); our kernels \(KernelISA.active)")
        print("measured peak on \(runtime.threads) threads: " + peaks.all.map { String(format: "%@ %.0f G/s", $0.0.description, $0.1) }.joined(separator: ", "))
        let gmac = Double(costs.totalMACs) / 1e9
        print(String(format: "model %@: %.2f M params, %.3f GMAC/image (conv %.3f), %d threads, oneDNN %@",
                     path, Double(costs.parameters) / 1e6, gmac, Double(costs.convMACs) / 1e9, runtime.threads, DNNL.version))
        // fp32 and (where the CPU has it) bf16 are timed beside each quantized file in turn, so at most three networks
        // are loaded at once (an SD-sized UNet is several GiB in each form).
        var base = [Contender(label: "ours", file: nil, parts: [(unet, 1)], duplicated: 0)]
        if DNNL.hasBF16 {
            // bf16 (oneDNN bf16 convolution and matmul, fp32 accumulation): the free alternative where the CPU has it.
            let bf = try DiffusionModel.load(path).network
            for l in bf.layers { l.kernel = l.makeBF16Kernel() }
            base.append(Contender(label: "bf16", file: nil, parts: [(bf, 1)], duplicated: 0))
        }
        let files = (quantizedFiles ?? "").split(separator: ",").map(String.init)
        var baseResults: [Int: [Result]] = [:]
        var quantizedResults: [Int: [(contender: Contender, result: Result, bf16: Result?)]] = [:]
        func measureGroup(_ extra: Contender?, twin: Contender? = nil) throws {
            for b in bs {
                let group = base + (extra.map { [$0] } ?? []) + (twin.map { [$0] } ?? [])
                let results = try measureInterleaved(group, batch: b, convMACs: costs.convMACs)
                // This VM's peaks move with its neighbours' load: measure again after each group of rounds and rate
                // convs against the best figure of the run (so efficiencies are not inflated by one slow moment).
                peaks = Self.bestPeaks(peaks, Self.measurePeaks(threads: runtime.threads))
                if baseResults[b] == nil { baseResults[b] = Array(results.prefix(base.count)) }
                if let extra { quantizedResults[b, default: []].append((extra, results[base.count], base.count > 1 ? results[1] : nil)) }
                if let twin { quantizedResults[b, default: []].append((twin, results[base.count + 1], base.count > 1 ? results[1] : nil)) }
            }
        }
        if files.isEmpty { try measureGroup(nil) }
        for f in files {
            let r = try PipelineModel(quantizedFile: f, mode: .integer)
            let dup = r.network.layers.filter { ($0.kernel as? Int8Conv2D)?.usesDuplicatedWeights == true || ($0.kernel as? Int8Linear)?.usesDuplicatedWeights == true }.count
            // Mixed precision: time every variant; throughput = 1 / Σ_v (share of steps_v / images/s_v).
            let shares: [Double] = {
                guard let plan = r.correction?.plan, r.networks.count > 1, !plan.schemes.isEmpty else { return [1] }
                return r.networks.indices.map { v in Double(plan.schemes.filter { $0 == v }.count) / Double(plan.schemes.count) }
            }()
            let contender = Contender(label: r.label, file: f, parts: zip(r.networks, shares).filter { $0.1 > 0 }.map { ($0.0, $0.1) },
                                      duplicated: dup)
            // A file with quantized attention runs its two products in integers where that is exact (VNNI, AMX): time
            // their fp32 simulation in the same rounds too, so the choice stays measured.
            let attention = r.networks.contains { $0.attentions.contains { $0.site.quantization != nil } }
            if attention && IntegerAttention.isExactOnThisCPU && IntegerAttention.enabledByEnvironment {
                try measureGroup(contender, twin: Contender(label: r.label + " sim-attn", file: f, parts: contender.parts,
                                                            duplicated: dup, integerAttention: false))
            } else {
                try measureGroup(contender)
            }
        }
        print("best measured peak over the run: " + peaks.all.map { String(format: "%@ %.0f G/s", $0.0.description, $0.1) }.joined(separator: ", "))
        var ours: [[String: Any]] = [], bf16Rows: [[String: Any]] = [], qrows: [[String: Any]] = []
        for b in bs {
            let baseLine = baseResults[b]!
            let r = baseLine[0]
            let eff = peaks.fp32.map { r.convGflops / $0 } ?? .nan
            print(String(format: "ours   batch %3d: %9.2f img/s  %8.2f ms/forward  %6.1f GFLOP/s overall  conv %6.1f GFLOP/s = %4.1f%% of the best measured fp32 peak%@",
                         b, r.imagesPerSecond, r.msPerForward, 2 * gmac * r.imagesPerSecond, r.convGflops, 100 * eff, r.memoryNote))
            ours.append(["batch": b, "images_per_s": r.imagesPerSecond, "ms_per_forward": r.msPerForward,
                         "conv_gflops": r.convGflops, "conv_fraction_of_peak": eff, "rounds": r.rounds,
                         "rss_after_warmup_bytes": r.residentBytes ?? NSNull(), "peak_above_rss_bytes": r.peakAboveBytes ?? NSNull(),
                         "activation_peak_bytes": r.activationPeakBytes ?? NSNull()])
            if baseLine.count > 1 {
                let bf = baseLine[1]
                let paired = bf.pairedSpeedup.map { String(format: " (paired rounds %.2f–%.2f×)", $0.lo, $0.hi) } ?? ""
                print(String(format: "bf16   batch %3d: %9.2f img/s  %8.2f ms/forward  conv %6.1f GFLOP/s  →  bf16/fp32 = %.2f×%@%@",
                             b, bf.imagesPerSecond, bf.msPerForward, bf.convGflops, bf.speedup, paired, bf.memoryNote))
                bf16Rows.append(["batch": b, "images_per_s": bf.imagesPerSecond, "ms_per_forward": bf.msPerForward, "speedup_vs_fp32": bf.speedup,
                                 "speedup_vs_fp32_paired": bf.pairedSpeedup.map { [$0.lo, $0.median, $0.hi] } ?? NSNull()])
            }
            for (c, q, bf) in quantizedResults[b] ?? [] {
                let eff = peaks.int8.map { q.convGflops / $0 } ?? .nan
                let paired = q.pairedSpeedup.map { String(format: " (paired rounds %.2f–%.2f×)", $0.lo, $0.hi) } ?? ""
                print(String(format: "%@ batch %3d: %9.2f img/s  %8.2f ms/forward  conv %6.1f G(int)OP/s = %4.1f%% of the best measured int8 peak  →  %@/fp32 = %.2f×%@%@%@",
                             c.label.padding(toLength: max(6, c.label.count), withPad: " ", startingAt: 0), b, q.imagesPerSecond, q.msPerForward,
                             q.convGflops, 100 * eff, c.label, q.speedup, paired,
                             c.duplicated > 0 ? " (\(c.duplicated) layers with 8-bit weights run as hi+lo halves: no VNNI)" : "", q.memoryNote))
                let vsBF16 = bf.map { q.imagesPerSecond / $0.imagesPerSecond }
                if let vsBF16 { print(String(format: "                  %@/bf16 = %.2f×", c.label, vsBF16)) }
                qrows.append(["file": c.file ?? "", "label": c.label, "batch": b, "images_per_s": q.imagesPerSecond,
                              "speedup_vs_bf16": vsBF16 ?? NSNull(),
                              "ms_per_forward": q.msPerForward, "speedup_vs_fp32": q.speedup,
                              "speedup_vs_fp32_paired": q.pairedSpeedup.map { [$0.lo, $0.median, $0.hi] } ?? NSNull(),
                              "conv_gops": q.convGflops, "conv_fraction_of_int8_peak": eff,
                              "rss_after_warmup_bytes": q.residentBytes ?? NSNull(), "peak_above_rss_bytes": q.peakAboveBytes ?? NSNull(),
                              "activation_peak_bytes": q.activationPeakBytes ?? NSNull()])
            }
        }
        var report: [String: Any] = ["model": path, "threads": runtime.threads, "gmac_per_image": gmac, "ours": ours,
                                     "onednn": DNNL.version, "isa": DNNL.isaName, "kernel_isa": KernelISA.active.description,
                                     "cpu": Self.cpuModel(),
                                     "measured_peaks_gops": Dictionary(uniqueKeysWithValues: peaks.all.map { ($0.0.description, $0.1) })]
        if let p = peaks.fp32 { report["fp32_peak_gflops"] = p }
        if let p = peaks.int8 { report["int8_peak_gops"] = p }
        if !bf16Rows.isEmpty { report["bf16"] = bf16Rows }
        if quantizedFiles != nil { report["quantized"] = qrows }
        if !torchPython.isEmpty {
            if let peer = try runPeer(modelPath: path) {
                report["torch"] = peer
                if let results = peer["results"] as? [[String: Any]] {
                    for r in results {
                        guard let b = r["batch"] as? Int, let ips = r["images_per_s"] as? Double,
                              let mine = ours.first(where: { ($0["batch"] as? Int) == b })?["images_per_s"] as? Double else { continue }
                        let mem = (r["peak_above_rss_bytes"] as? Double).map { p in
                            String(format: "; memory %.2f GiB resident, one forward peaks +%.2f GiB", ((r["rss_after_warmup_bytes"] as? Double) ?? .nan) / 1073741824, p / 1073741824)
                        } ?? ""
                        print(String(format: "torch  batch %3d: %9.2f img/s (%@)  →  ours/torch = %.2f×%@", b, ips,
                                     (r["layout"] as? String) ?? "?", mine / ips, mem))
                    }
                }
            }
        }
        if let j = json {
            let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
            try AtomicFile.write([UInt8](data), to: j)
            print("wrote \(j)")
        }
    }

    /// The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC 9R45"), for the record.
    static func cpuModel() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }) else { return "unknown CPU" }
        return line.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces)
    }

    /// Every peak mix this CPU runs, measured on all threads, and the ones matching oneDNN's fp32 and int8 kernels.
    static func measurePeaks(threads: Int) -> (all: [(PeakMix, Double)], fp32: Double?, int8: Double?) {
        let all = PeakMix.allCases.compactMap { m in PeakThroughput.measure(m, threads: threads).map { (m, $0) } }
        let match = PeakMix.forOneDNN
        func rate(_ m: PeakMix?) -> Double? { m.flatMap { m in all.first { $0.0 == m }?.1 } }
        return (all, rate(match.fp32), rate(match.int8))
    }

    /// One thing timed: a network, or a mixed-precision file's networks, each weighted by its share of the steps.
    struct Contender {
        let label: String
        let file: String?
        let parts: [(network: Denoiser, share: Double)]
        /// Layers whose 8-bit weights run as hi+lo halves (no VNNI).
        let duplicated: Int
        /// For files with quantized attention: true runs the two attention products in integers (`IntegerAttention`),
        /// false their fp32 simulation; nil = as the process is configured. Set around this contender's forwards only.
        var integerAttention: Bool? = nil
    }

    /// Per mix, the larger of two measurements.
    static func bestPeaks(_ a: (all: [(PeakMix, Double)], fp32: Double?, int8: Double?),
                          _ b: (all: [(PeakMix, Double)], fp32: Double?, int8: Double?)) -> (all: [(PeakMix, Double)], fp32: Double?, int8: Double?) {
        func best(_ x: Double?, _ y: Double?) -> Double? { x.map { x in max(x, y ?? x) } ?? y }
        let all = a.all.map { m in (m.0, max(m.1, b.all.first { $0.0 == m.0 }?.1 ?? m.1)) }
        return (all, best(a.fp32, b.fp32), best(a.int8, b.int8))
    }

    struct Result {
        let imagesPerSecond: Double; let msPerForward: Double; let convGflops: Double
        /// Images/s over the first contender's (fp32), from the two medians.
        var speedup: Double = 1
        /// fp32's forward time over this one's, round by round (both timed back to back in each round): the
        /// 10th percentile, median and 90th percentile, so a drifting machine shows as a wide range instead of a
        /// wrong ratio. nil for fp32 itself.
        var pairedSpeedup: (lo: Double, median: Double, hi: Double)? = nil
        var rounds = 0
        /// RSS after warm-up (weights, reordered weights, cached primitives) and the peak of one forward above it.
        var residentBytes: Int? = nil, peakAboveBytes: Int? = nil
        /// Most bytes of tensors alive at once during one forward (activations; exact).
        var activationPeakBytes: Int? = nil
        var memoryNote: String {
            guard let r = residentBytes else { return "" }
            return String(format: "; memory: %.2f GiB resident after warm-up, one forward's tensors peak at %.2f GiB, RSS +%.2f GiB",
                          Double(r) / 1073741824, Double(activationPeakBytes ?? 0) / 1073741824, Double(peakAboveBytes ?? 0) / 1073741824)
        }
    }

    /// The inputs every contender gets at batch `b`: seeded noise, spread timesteps, and the model's conditioning.
    func inputs(_ unet: Denoiser, batch b: Int) -> (x: Tensor, t: [Float], cond: Conditioning) {
        var gen = GaussianStream(seed: 1, index: UInt64(b))
        let x = Tensor(shape: [b] + unet.sampleShape)
        gen.fill(x.data, count: x.count)
        let t = (0..<b).map { Float(($0 * 997) % 1000) }
        let classes = (try? ConditioningSpace(kind: unet.conditioningKind).realClasses) ?? 0
        if classes > 0 { return (x, t, .classes((0..<b).map { $0 % classes })) }
        if case let .context(width) = unet.conditioningKind, contextLength > 1 {
            let c = Tensor(shape: [b, contextLength, width])
            gen.fill(c.data, count: c.count)
            return (x, t, .context(c))
        }
        return (x, t, unet.exampleConditioning(rows: b))
    }

    /// Times every contender at batch `b` in interleaved rounds (one forward of each per round, in turn), until each
    /// has run for `seconds` and at least 5 rounds: a machine whose speed drifts slows every contender alike, so the
    /// ratios stay meaningful. Then conv time per contender, by timing wrappers around its conv kernels.
    func measureInterleaved(_ contenders: [Contender], batch b: Int, convMACs: Int) throws -> [Result] {
        let (x, t, cond) = inputs(contenders[0].parts[0].network, batch: b)
        func forward(_ n: Denoiser) throws -> Double {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try n.forward(x, timesteps: t, conditioning: cond)
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        // Warm-up (primitive creation, weight reorders), then one forward's memory, per network.
        var memory: [[(resident: Int?, peakAbove: Int?, activations: Int)]] = []
        for c in contenders {
            var m: [(resident: Int?, peakAbove: Int?, activations: Int)] = []
            try configured(c) {
                for (n, _) in c.parts {
                    for _ in 0..<2 { _ = try forward(n) }
                    TensorStorage.resetPeakLive()
                    let liveBefore = TensorStorage.liveBytes.now
                    let peak = try ProcessMemory.peakAbove { try n.forward(x, timesteps: t, conditioning: cond) }
                    m.append((peak.resident, peak.peakAbove, TensorStorage.liveBytes.peak - liveBefore))
                }
            }
            memory.append(m)
        }
        var times = [[Double]](repeating: [], count: contenders.count)
        var spent = [Double](repeating: 0, count: contenders.count)
        while times[0].count < 5 || spent.contains(where: { $0 < seconds }) {
            for (i, c) in contenders.enumerated() {
                var round = 0.0, wall = 0.0
                try configured(c) { for (n, share) in c.parts { let s = try forward(n); round += share * s; wall += s } }
                times[i].append(round)
                spent[i] += wall
            }
        }
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
        func percentile(_ v: [Double], _ p: Double) -> Double { let s = v.sorted(); return s[min(s.count - 1, Int(p * Double(s.count - 1) + 0.5))] }
        let fpMedian = median(times[0])
        var results: [Result] = []
        for (i, c) in contenders.enumerated() {
            let med = median(times[i])
            var convSeconds = 0.0
            try configured(c) { for (n, share) in c.parts { convSeconds += share * (try convTime(n, x: x, t: t, cond: cond, reps: 3)) } }
            var r = Result(imagesPerSecond: Double(b) / med, msPerForward: med * 1e3,
                           convGflops: 2 * Double(convMACs) * Double(b) / convSeconds / 1e9)
            r.rounds = times[i].count
            r.speedup = fpMedian / med
            if i > 0 {
                let ratios = zip(times[0], times[i]).map { $0 / $1 }
                r.pairedSpeedup = (percentile(ratios, 0.1), median(ratios), percentile(ratios, 0.9))
            }
            r.residentBytes = memory[i].compactMap(\.resident).max()
            r.peakAboveBytes = memory[i].compactMap(\.peakAbove).max()
            r.activationPeakBytes = memory[i].map(\.activations).max()
            results.append(r)
        }
        return results
    }

    /// Seconds per forward inside `unet`'s conv kernels (wrappers time each conv; they add a little overhead to the
    /// whole forward, so this runs apart from the timed rounds).
    func convTime(_ unet: Denoiser, x: Tensor, t: [Float], cond: Conditioning, reps: Int) throws -> Double {
        final class Timed: WeightLayerKernel {
            let inner: WeightLayerKernel; var seconds = 0.0
            init(_ i: WeightLayerKernel) { inner = i }
            func forward(_ x: Tensor) -> Tensor {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let y = inner.forward(x)
                seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                return y
            }
            /// An integer conv's fused normalization counts as conv time (it replaces the quantize pass, which did).
            func forward(_ x: ChannelAffine) -> Tensor {
                guard inner.fusesChannelAffine else { return forward(x.materialize()) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                let y = inner.forward(x)
                seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                return y
            }
            var fusesChannelAffine: Bool { inner.fusesChannelAffine }
            func forwardUpsampledNearest2x(_ x: Tensor) -> Tensor {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let y = inner.forwardUpsampledNearest2x(x)
                seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                return y
            }
        }
        let convLayers = unet.layers.filter { if case .conv = $0.kind { return true }; return false }
        let originals = convLayers.map(\.kernel)
        let timed = originals.map(Timed.init)
        for (l, k) in zip(convLayers, timed) { l.kernel = k }
        defer { for (l, k) in zip(convLayers, originals) { l.kernel = k } }
        for _ in 0..<reps { _ = try unet.forward(x, timesteps: t, conditioning: cond) }
        return timed.reduce(0) { $0 + $1.seconds } / Double(reps)
    }

    /// Runs `body` with the contender's attention mode (its `integerAttention`, else the process's), then restores it.
    func configured(_ c: Contender, _ body: () throws -> Void) rethrows {
        IntegerAttention.isEnabled = c.integerAttention ?? IntegerAttention.enabledByEnvironment
        defer { IntegerAttention.isEnabled = IntegerAttention.enabledByEnvironment }
        try body()
    }

    /// Runs tools/bench_torch.py as the PyTorch peer; nil (with a note) if it cannot run.
    func runPeer(modelPath: String) throws -> [String: Any]? {
        guard FileManager.default.isExecutableFile(atPath: torchPython) else {
            note("PyTorch peer skipped: \(torchPython) not found (run `make venv` or pass --torch-python)")
            return nil
        }
        let script = URL(fileURLWithPath: try BundledModels.path("../tools/bench_torch.py")).standardized.path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: torchPython)
        p.arguments = [script, "--model", modelPath, "--batches", batches, "--threads", "\(runtime.threads)",
                       "--min-seconds", "\(seconds)", "--layout", torchLayout, "--context-length", "\(contextLength)", "--json"]
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = nil; env["OPENBLAS_L2_SIZE"] = nil
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        note("running PyTorch peer: \(torchPython) \(script) …")
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            note("PyTorch peer failed (exit \(p.terminationStatus)); see its stderr above")
            return nil
        }
        return obj
    }
}
