//===--- Bench.swift - `ptqd bench`: fp32 UNet throughput vs PyTorch ---------===//

import ArgumentParser
import Diffusion
import Evaluation
import Foundation
import Quantization
import TensorCore

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure UNet forward throughput (images/s) and conv efficiency; optionally next to PyTorch in the same run.",
        discussion: """
        Timing: median of repeated forwards after warm-up. Conv efficiency = conv FLOPs (2·MACs, padded taps) /
        time inside conv kernels / (--peak-gflops-per-thread × threads). The PyTorch peer runs
        tools/bench_torch.py with the same weights and thread count, with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
        removed from its environment only.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "comma-separated batch sizes") var batches: String = "1,16,64"
    @Option(help: "minimum timed seconds per measurement") var seconds: Double = 3
    @Option(help: "fp32 peak GFLOP/s of one core (default: oneDNN's ISA FLOPs/cycle × the clock from /proc/cpuinfo; Zen 5 AVX-512 at 4.2 GHz ≈ 266)")
    var peakGflopsPerThread: Double?
    @Option(help: "python with torch + diffusers for the PyTorch peer ('' to skip)") var torchPython: String = ".venv-tools/bin/python"
    @Option(help: "PyTorch layout(s): nchw, channels_last or both") var torchLayout: String = "nchw"
    @Option(help: "write the results as JSON here") var json: String?
    @Option(name: .customLong("quantized"), help: "also time these quantized files (comma list), integer kernels, same batches, same run")
    var quantizedFiles: String?

    func run() throws {
        runtime.apply()
        let path = try model.resolvedPath()
        let m = try DiffusionModel.load(path)
        let unet = m.unet
        let cfg = unet.config
        let bs = try batches.split(separator: ",").map { s -> Int in
            guard let b = Int(s.trimmingCharacters(in: .whitespaces)), b >= 1 else { throw ValidationError("--batches: bad batch size '\(s)'") }
            return b
        }
        let costs = try LayerCosts.measure(unet)
        let isa = DNNL.isa
        let clock = Self.cpuGHz()
        let peakPerThread = peakGflopsPerThread ?? Double(isa.fp32FlopsPerCycle) * clock
        print(String(format: "cpu: oneDNN ISA %@ (%d fp32 FLOP/cycle/core), clock %.2f GHz (/proc/cpuinfo) → nominal fp32 peak %.0f GFLOP/s per thread%@",
                     isa.name, isa.fp32FlopsPerCycle, clock, peakPerThread, peakGflopsPerThread == nil ? "" : " (given)"))
        let gmac = Double(costs.totalMACs) / 1e9
        print(String(format: "model %@: %.2f M params, %.3f GMAC/image (conv %.3f), %d threads, oneDNN %@",
                     path, Double(costs.parameters) / 1e6, gmac, Double(costs.convMACs) / 1e9, runtime.threads, DNNL.version))
        var ours: [[String: Any]] = []
        for b in bs {
            let r = try measure(unet, batch: b, cfg: cfg, convMACs: costs.convMACs)
            let eff = r.convGflops / (peakPerThread * Double(runtime.threads))
            print(String(format: "ours   batch %3d: %9.2f img/s  %8.2f ms/forward  %6.1f GFLOP/s overall  conv %6.1f GFLOP/s = %4.1f%% of fp32 peak",
                         b, r.imagesPerSecond, r.msPerForward, 2 * gmac * r.imagesPerSecond, r.convGflops, 100 * eff))
            ours.append(["batch": b, "images_per_s": r.imagesPerSecond, "ms_per_forward": r.msPerForward,
                         "conv_gflops": r.convGflops, "conv_fraction_of_peak": eff])
        }
        var report: [String: Any] = ["model": path, "threads": runtime.threads, "gmac_per_image": gmac, "ours": ours,
                                     "onednn": DNNL.version, "isa": isa.name, "clock_ghz": clock,
                                     "peak_gflops": peakPerThread * Double(runtime.threads)]
        if let files = quantizedFiles {
            var qrows: [[String: Any]] = []
            for f in files.split(separator: ",").map(String.init) {
                let r = try Runner(quantizedFile: f, mode: .integer)
                let dup = r.unet.layers.filter { ($0.kernel as? Int8Conv2D)?.usesDuplicatedWeights == true || ($0.kernel as? Int8Linear)?.usesDuplicatedWeights == true }.count
                // Mixed precision: time every variant; throughput = 1 / Σ_v (share of steps_v / images/s_v).
                let shares: [Double] = {
                    guard let plan = r.correction?.plan, r.unets.count > 1, !plan.schemes.isEmpty else { return [1] }
                    return r.unets.indices.map { v in Double(plan.schemes.filter { $0 == v }.count) / Double(plan.schemes.count) }
                }()
                for b in bs {
                    let parts = try zip(r.unets, shares).filter { $0.1 > 0 }.map { try (measure($0.0, batch: b, cfg: cfg, convMACs: costs.convMACs), $0.1) }
                    let perImage = parts.reduce(0.0) { $0 + $1.1 / $1.0.imagesPerSecond }
                    let ms = parts.reduce(0.0) { $0 + $1.1 * $1.0.msPerForward }
                    let conv = parts.reduce(0.0) { $0 + $1.1 * $1.0.convGflops }
                    let q = Result(imagesPerSecond: 1 / perImage, msPerForward: ms, convGflops: conv)
                    let fp = ours.first { ($0["batch"] as? Int) == b }?["images_per_s"] as? Double ?? .nan
                    print(String(format: "%@ batch %3d: %9.2f img/s  %8.2f ms/forward  conv %6.1f G(int)OP/s  →  %@/fp32 = %.2f×%@",
                                 r.label.padding(toLength: 6, withPad: " ", startingAt: 0), b, q.imagesPerSecond, q.msPerForward,
                                 q.convGflops, r.label, q.imagesPerSecond / fp,
                                 dup > 0 ? " (\(dup) layers with 8-bit weights run as hi+lo halves: no VNNI)" : ""))
                    qrows.append(["file": f, "label": r.label, "batch": b, "images_per_s": q.imagesPerSecond,
                                  "ms_per_forward": q.msPerForward, "speedup_vs_fp32": q.imagesPerSecond / fp])
                }
            }
            report["quantized"] = qrows
        }
        if !torchPython.isEmpty {
            if let peer = try runPeer(modelPath: path) {
                report["torch"] = peer
                if let results = peer["results"] as? [[String: Any]] {
                    for r in results {
                        guard let b = r["batch"] as? Int, let ips = r["images_per_s"] as? Double,
                              let mine = ours.first(where: { ($0["batch"] as? Int) == b })?["images_per_s"] as? Double else { continue }
                        print(String(format: "torch  batch %3d: %9.2f img/s (%@)  →  ours/torch = %.2f×", b, ips,
                                     (r["layout"] as? String) ?? "?", mine / ips))
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

    /// The highest "cpu MHz" in /proc/cpuinfo, in GHz (the VM may report the base clock; boost is higher).
    static func cpuGHz() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return 3.0 }
        let mhz = text.split(separator: "\n").filter { $0.hasPrefix("cpu MHz") }
            .compactMap { Double($0.split(separator: ":").last!.trimmingCharacters(in: .whitespaces)) }
        return (mhz.max() ?? 3000) / 1000
    }

    struct Result { let imagesPerSecond: Double; let msPerForward: Double; let convGflops: Double }

    /// Times UNet forwards at batch `b`; conv time is measured by timing wrappers around conv kernels.
    func measure(_ unet: UNet2D, batch b: Int, cfg: UNet2DConfig, convMACs: Int) throws -> Result {
        final class Timed: WeightLayerKernel {
            let inner: WeightLayerKernel; var seconds = 0.0
            init(_ i: WeightLayerKernel) { inner = i }
            func forward(_ x: Tensor) -> Tensor {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let y = inner.forward(x)
                seconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                return y
            }
        }
        var gen = GaussianStream(seed: 1, index: UInt64(b))
        let x = Tensor(shape: [b, cfg.sampleHeight, cfg.sampleWidth, cfg.inChannels])
        gen.fill(x.data, count: x.count)
        let t = (0..<b).map { Float(($0 * 997) % 1000) }
        let cond: ClassCondition = unet.isClassConditional ? .labels((0..<b).map { $0 % max((cfg.numClassEmbeds ?? 1), 1) }) : .none
        for _ in 0..<2 { _ = try unet(x, timesteps: t, condition: cond) }
        var times: [Double] = []
        let start = Date()
        while times.count < 3 || Date().timeIntervalSince(start) < seconds {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try unet(x, timesteps: t, condition: cond)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        times.sort()
        let med = times[times.count / 2]
        // Conv-only time in a separate pass (wrappers add a little overhead to the whole-forward time).
        let convLayers = unet.layers.filter { if case .conv = $0.kind { return true }; return false }
        let originals = convLayers.map(\.kernel)
        let timed = originals.map(Timed.init)
        for (l, k) in zip(convLayers, timed) { l.kernel = k }
        defer { for (l, k) in zip(convLayers, originals) { l.kernel = k } }
        let reps = max(3, times.count / 2)
        for _ in 0..<reps { _ = try unet(x, timesteps: t, condition: cond) }
        let convSeconds = timed.reduce(0) { $0 + $1.seconds } / Double(reps)
        return Result(imagesPerSecond: Double(b) / med, msPerForward: med * 1e3,
                      convGflops: 2 * Double(convMACs) * Double(b) / convSeconds / 1e9)
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
                       "--min-seconds", "\(seconds)", "--layout", torchLayout, "--json"]
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
