//===--- Ablation.swift - `ptqd ablation`: the paper's component ablation --------===//

import ArgumentParser
import Correction
import Diffusion
import Evaluation
import Foundation
import Quantization

struct Ablation: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize once with PTQD statistics, then evaluate FP, the baseline and each correction component on identical noise and labels.",
        discussion: """
        Rows: fp32; <scheme> baseline; +CNC; +CNC+BC; +CNC+BC+VSC (= PTQD); D2 (joint-Gaussian correction + VSC). \
        Each row is one `ptqd evaluate` command, printed beside the table so it can be re-run alone. Writes \
        OUT/ablation.md, OUT/ablation.json, OUT/snr.png (SNR^Q and SNR^F per step, log scale) and OUT/k-sigma.png.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var runtime: RuntimeOptions
    @Option(help: "scheme to quantize (or CHEAP:STRONG for step-aware mixed precision)") var scheme: String = "w4a8"
    @Option(help: "weight rounding: rtn, adaround or gptq") var weights: WeightMethod = .rtn
    @OptionGroup var sampler: SamplerOptions
    @Option(help: "samples per evaluation (a multiple of the class count)") var n: Int = 1000
    @Option(help: "calibration trajectories") var calib: Int = 128
    @Option(name: .customLong("stats-trajectories"), help: "trajectories for the correction statistics") var statsTrajectories: Int = 256
    @Option(help: "random seed") var seed: UInt64 = 0
    @Option(help: "output folder") var out: String = "out/ablation"
    @Flag(name: .customLong("keep-negative-k"), help: "fit k_t without PTQD's clamp at 0 (a separate file, rows marked 'k unclamped'): does the clamp throw signal away?")
    var keepNegativeK = false
    @Flag(name: .customLong("quantize-attention"), help: "also quantize attention (q, k, v at the activation bits, softmax at 8 bits)") var quantizeAttention = false
    @Flag(help: "reuse OUT/<scheme>.safetensors if it exists") var reuse = false
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard n >= 1, calib >= 1, statsTrajectories >= 1 else { throw ValidationError("--n, --calib and --stats-trajectories must be >= 1") }
        let parts = scheme.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 1 || parts.count == 2 else { throw ValidationError("--scheme must be wXaY or CHEAP:STRONG, got '\(scheme)'") }
        for p in parts { _ = try LayerPrecision(parsing: p) }
    }

    struct Row { let name: String; let args: [String]; var report: EvaluationReport? }

    func run() throws {
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let base = URL(fileURLWithPath: out)
        let modelArgs = model.model.map { ["--model", $0] } ?? []
        let common = ["--threads", "\(runtime.threads)"] + (quiet ? ["--quiet"] : [])
        let isMixed = scheme.contains(":")
        let settings = sampler.settings(for: try model.load().scheduler, default: .B)
        let setting = sampler.resolvedSetting(default: .B)
        let samplerArgs = sampler.arguments(default: .B)
        // The file name says the setting and, when overridden, the sampler actually calibrated for.
        let tag = setting.rawValue + (sampler.overridden ? "-\(settings.kind.rawValue)\(settings.steps)-eta\(settings.eta)-g\(settings.guidance)" : "")
        let variantTag = "\(scheme.replacingOccurrences(of: ":", with: "-"))-\(weights.rawValue)-\(tag)\(keepNegativeK ? "-negk" : "")\(quantizeAttention ? "-qattn" : "")"
        let file = base.appendingPathComponent("\(variantTag).safetensors").path
        var quantizeArgs = modelArgs + (isMixed ? ["--scheme", String(scheme.split(separator: ":")[1]), "--mixed", scheme] : ["--scheme", scheme])
        quantizeArgs += ["--weights", weights.rawValue] + samplerArgs + ["--calib", "\(calib)",
                         "--stats-trajectories", "\(statsTrajectories)", "--correct", "ptqd", "--seed", "\(seed)", "--out", file] + common
        if keepNegativeK { quantizeArgs.append("--keep-negative-k") }
        if quantizeAttention { quantizeArgs.append("--quantize-attention") }
        if !(reuse && FileManager.default.fileExists(atPath: file)) {
            note("ablation: ptqd quantize \(quantizeArgs.joined(separator: " "))")
            let q = try Quantize.parse(quantizeArgs)
            try q.run()
        }
        let evalBase = modelArgs + samplerArgs + ["--n", "\(n)", "--seed", "\(seed)",
                                    "--fp-cache", base.appendingPathComponent("fp32-samples-\(tag)-n\(n).safetensors").path,
                                    "--reference-cache", base.appendingPathComponent("reference-stats.safetensors").path] + common
        let label = (isMixed ? "\(scheme) mixed" : scheme) + (quantizeAttention ? " +attn" : "") + (keepNegativeK ? " (k unclamped)" : "")
        var rows = [
            Row(name: "\(label) baseline", args: ["--quantized", file, "--no-correct"], report: nil),
            Row(name: "\(label) +CNC", args: ["--quantized", file, "--components", "cnc"], report: nil),
            Row(name: "\(label) +CNC+BC", args: ["--quantized", file, "--components", "cnc,bias"], report: nil),
            Row(name: "\(label) +CNC+BC+VSC (PTQD)", args: ["--quantized", file, "--components", "cnc,bias,vsc"], report: nil),
            Row(name: "\(label) D2 (+VSC)", args: ["--quantized", file, "--correct-method", "d2", "--components", "cnc,bias,vsc"], report: nil),
        ]
        var fpReport: EvaluationReport? = nil
        var commands: [String] = []
        for i in rows.indices {
            let dir = base.appendingPathComponent("row\(i)-\(variantTag)").path
            let args = evalBase + rows[i].args + ["--out", dir]
            commands.append("ptqd evaluate " + args.joined(separator: " "))
            note("ablation: row \(i + 1)/\(rows.count) \(rows[i].name)")
            let e = try Evaluate.parse(args)
            try e.run()
            rows[i].report = try EvaluationReport.read(path: dir + "/report.json")
            if fpReport == nil {
                fpReport = try EvaluationReport.read(path: dir + "/report-fp32.json")
            }
        }
        // Table
        let qm = try QuantizedModel(path: file)
        let doc = try qm.info.attachments[CorrectionDocument.attachmentName].map { try CorrectionDocument(json: $0) }
        var md = "### Ablation: \(label) (\(weights.rawValue)), setting \(setting.rawValue)\(sampler.overridden ? " (overridden)" : "") (\(settings.summary)), n = \(n), seed \(seed)\n\n"
        md += "Quantized with: `ptqd quantize \(quantizeArgs.joined(separator: " "))`\n\n"
        md += "| Row | FID ↓ | IS ↑ | Precision | Recall | PSNR vs FP (mean / p5) | SSIM vs FP (mean / p5) | GBOPs/forward | File MB | images/s |\n|---|---|---|---|---|---|---|---|---|---|\n"
        func line(_ name: String, _ r: EvaluationReport) -> String {
            let m = r.metrics, c = r.cost
            let psnr = m.psnr.map { String(format: "%.2f / %.2f", $0.mean, $0.p5) } ?? "–"
            let ssim = m.ssim.map { String(format: "%.4f / %.4f", $0.mean, $0.p5) } ?? "–"
            return String(format: "| %@ | %.3f | %.3f | %.3f | %.3f | %@ | %@ | %.2f | %.2f | %.2f |\n", name, m.fid ?? .nan,
                          m.inceptionScoreMean ?? .nan, m.precision ?? .nan, m.recall ?? .nan, psnr, ssim,
                          (c.bopsPerForward ?? .nan) / 1e9, Double(c.modelFileBytes ?? 0) / 1e6, c.imagesPerSecond ?? .nan)
        }
        if let fp = fpReport { md += line("fp32", fp) }
        for r in rows { if let rep = r.report { md += line(r.name, rep) } }
        md += "\nCommands (each row alone):\n\n```\n" + commands.joined(separator: "\n") + "\n```\n"
        if let sch = try? Sampler.makeScheduler(settings, config: try model.load().scheduler), !sch.varianceCalibrationApplies {
            md += settings.kind == .dpmSolverPlusPlus
                ? "\nDPM-Solver++ is a deterministic ODE solver (no injected noise), so VSC does not apply: the +VSC row equals +CNC+BC.\n"
                : "\nAt eta 0 DDIM injects no noise, so VSC is inactive: the +VSC row equals +CNC+BC.\n"
        }
        if let t = doc?.activeTable {
            md += "\nk_t (sampling order): " + t.k.map { String(format: "%.4f", $0) }.joined(separator: " ")
            md += "\n\nk_t before clamping: " + t.kRaw.map { String(format: "%.4f", $0) }.joined(separator: " ")
            md += "\n\nσ_q(t): " + t.sigmaQ.map { String(format: "%.4f", $0) }.joined(separator: " ") + "\n"
            try plots(doc: doc!, names: qm.info.variants.map(\.name), base: base)
        }
        let stem = keepNegativeK ? "ablation-negk" : "ablation"
        try md.write(toFile: base.appendingPathComponent("\(stem).md").path, atomically: true, encoding: .utf8)
        let all = (fpReport.map { [$0] } ?? []) + rows.compactMap(\.report)
        let json = "[\n" + (try all.map { String(decoding: try $0.jsonBytes(), as: UTF8.self) }).joined(separator: ",\n") + "\n]\n"
        try AtomicFile.write(Array(json.utf8), to: base.appendingPathComponent("\(stem).json").path)
        print(md)
        print("wrote \(base.path)/{\(stem).md, \(stem).json, snr.png, k-sigma.png}")
    }

    /// SNR^Q per variant vs SNR^F (log scale), and k_t / σ_q per step.
    func plots(doc: CorrectionDocument, names: [String], base: URL) throws {
        let steps = doc.activeTable.steps
        let x = (0..<steps).map(Double.init)
        var series: [LinePlot.Series] = doc.tables.enumerated().map { v, t in
            LinePlot.Series(name: "SNR^Q \(names[v])", x: x, y: t.snrQ.map { Double($0) })
        }
        if let f = doc.activeTable.snrF { series.append(.init(name: "SNR^F", x: x, y: f.map { Double($0) })) }
        _ = try LinePlot(title: "SNR per step (sampling order)", xLabel: "step", yLabel: "SNR", logY: true, series: series)
            .write(to: base.appendingPathComponent("snr.png").path)
        let t = doc.activeTable
        _ = try LinePlot(title: "PTQD statistics per step", xLabel: "step", yLabel: "value",
                         series: [.init(name: "k_t (raw)", x: x, y: t.kRaw.map { Double($0) }),
                                  .init(name: "sigma_q", x: x, y: t.sigmaQ.map { Double($0) })])
            .write(to: base.appendingPathComponent("k-sigma.png").path)
    }
}
