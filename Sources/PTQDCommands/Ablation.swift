//===--- Ablation.swift - `ptqd ablation`: the paper's component ablation --------===//

import ArgumentParser
import Correction
import Diffusion
import Evaluation
import Foundation
import Pipeline
import Quantization

struct Ablation: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize once with PTQD statistics, then evaluate FP, the baseline and each correction component on identical noise and labels.",
        discussion: """
        Rows: fp32; <scheme> baseline; +CNC; +CNC+BC; +CNC+BC+VSC (= PTQD); D2 (joint-Gaussian correction + VSC). \
        Each row is one `ptqd evaluate` command, printed beside the table so it can be re-run alone. Writes \
        OUT/ablation.md, OUT/ablation.json, OUT/ablation.html (one self-contained page: tables, grid, plots, \
        per-step table, commands), OUT/snr.{png,svg,json} (SNR^Q and SNR^F per step, log scale) and \
        OUT/k-sigma.{png,svg,json} (k_t and σ_q per step).
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
    @Flag(help: "reuse OUT/<scheme>.safetensors if it exists, and every row already evaluated with the same arguments from it") var reuse = false
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard n >= 1, calib >= 1, statsTrajectories >= 1 else { throw ValidationError("--n, --calib and --stats-trajectories must be >= 1") }
        let parts = scheme.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 1 || parts.count == 2 else { throw ValidationError("--scheme must be wXaY or CHEAP:STRONG, got '\(scheme)'") }
        for p in parts { _ = try LayerPrecision(parsing: p) }
    }

    struct Row { let name: String; let args: [String]; var report: EvaluationReport? }

    func run() throws {
        let source = try model.load()
        _ = try ConditioningSpace(kind: source.network.conditioningKind)  // refuses what no sampler can condition, before writing
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let base = URL(fileURLWithPath: out)
        let modelArgs = model.model.map { ["--model", $0] } ?? []
        let common = ["--threads", "\(runtime.threads)"] + (quiet ? ["--quiet"] : [])
        let isMixed = scheme.contains(":")
        let settings = sampler.settings(for: source.scheduler, default: .B)
        let setting = sampler.resolvedSetting(default: .B)
        let samplerArgs = sampler.arguments(default: .B)
        // The file name says the setting and, when overridden, the sampler actually calibrated for.
        let tag = setting.rawValue + (sampler.overridden ? "-\(settings.kind.rawValue)\(settings.steps)-eta\(settings.eta)-g\(settings.guidance)" : "")
        let variantTag = variantName(tag: tag)
        let file = base.appendingPathComponent("\(variantTag).safetensors").path
        var quantizeArgs = modelArgs + (isMixed ? ["--scheme", String(scheme.split(separator: ":")[1]), "--mixed", scheme] : ["--scheme", scheme])
        quantizeArgs += ["--weights", weights.rawValue] + samplerArgs + ["--calib", "\(calib)",
                         "--stats-trajectories", "\(statsTrajectories)", "--correct", "ptqd", "--seed", "\(seed)", "--out", file] + common
        if keepNegativeK { quantizeArgs.append("--keep-negative-k") }
        if quantizeAttention { quantizeArgs.append("--quantize-attention") }
        let requantize = !(reuse && FileManager.default.fileExists(atPath: file))
        if requantize {
            note("ablation: ptqd quantize \(quantizeArgs.joined(separator: " "))")
            let q = try Quantize.parse(quantizeArgs)
            try Invocation.with(["quantize"] + quantizeArgs) { try q.run() }
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
            let dir = base.appendingPathComponent(rowDirectory(i, tag: tag)).path
            let args = evalBase + rows[i].args + ["--out", dir]
            commands.append("ptqd evaluate " + args.joined(separator: " "))
            // A row finished by an earlier run with the same arguments on the same (reused) file is not evaluated again.
            let stamp = dir + "/ablation-row-args.json"
            let key = String(decoding: try JSONSerialization.data(withJSONObject: args), as: UTF8.self)
            let needed = [dir + "/report.json"] + (i == 0 ? [dir + "/report-fp32.json"] : [])
            if reuse && !requantize && (try? String(contentsOfFile: stamp, encoding: .utf8)) == key
                && needed.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) {
                note("ablation: row \(i + 1)/\(rows.count) \(rows[i].name): reused \(dir)/report.json")
            } else {
                note("ablation: row \(i + 1)/\(rows.count) \(rows[i].name)")
                let e = try Evaluate.parse(args)
                try Invocation.with(["evaluate"] + args) { try e.run() }
                try AtomicFile.write(key, to: stamp)
            }
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
        let header = ["Row", "FID ↓", "IS ↑", "Precision", "Recall", "PSNR vs FP (mean / p5)", "SSIM vs FP (mean / p5)", "GBOPs/forward", "File MB", "images/s"]
        func cells(_ name: String, _ r: EvaluationReport) -> [String] {
            let m = r.metrics, c = r.cost
            let psnr = m.psnr.map { String(format: "%.2f / %.2f", $0.mean, $0.p5) } ?? "–"
            let ssim = m.ssim.map { String(format: "%.4f / %.4f", $0.mean, $0.p5) } ?? "–"
            return [name] + [m.fid, m.inceptionScoreMean, m.precision, m.recall].map { $0.map { String(format: "%.3f", $0) } ?? "–" } + [psnr, ssim]
                + [String(format: "%.2f", (c.bopsPerForward ?? .nan) / 1e9), String(format: "%.2f", Double(c.modelFileBytes ?? 0) / 1e6),
                   String(format: "%.2f", c.imagesPerSecond ?? .nan)]
        }
        var table: [[String]] = []
        if let fp = fpReport { table.append(cells("fp32", fp)) }
        for r in rows { if let rep = r.report { table.append(cells(r.name, rep)) } }
        md += "| " + header.joined(separator: " | ") + " |\n|" + String(repeating: "---|", count: header.count) + "\n"
        for r in table { md += "| " + r.joined(separator: " | ") + " |\n" }
        md += "\nCommands (each row alone):\n\n```\n" + commands.joined(separator: "\n") + "\n```\n"
        var vscNote: String? = nil
        if let sch = try? Sampler.makeScheduler(settings, config: source.scheduler), !sch.varianceCalibrationApplies {
            vscNote = settings.kind == .dpmSolverPlusPlus
                ? "DPM-Solver++ is a deterministic ODE solver (no injected noise), so VSC does not apply: the +VSC row equals +CNC+BC."
                : "At eta 0 DDIM injects no noise, so VSC is inactive: the +VSC row equals +CNC+BC."
            md += "\n" + vscNote! + "\n"
        }
        let names = qm.info.variants.map(\.name)
        let subtitle = "\(label) \(weights.rawValue), setting \(setting.rawValue): \(settings.summary)"
        var figures: [LinePlot] = []
        if let doc {
            let t = doc.activeTable
            md += "\nk_t (sampling order): " + t.k.map { String(format: "%.4f", $0) }.joined(separator: " ")
            md += "\n\nk_t before clamping: " + t.kRaw.map { String(format: "%.4f", $0) }.joined(separator: " ")
            md += "\n\nσ_q(t): " + t.sigmaQ.map { String(format: "%.4f", $0) }.joined(separator: " ") + "\n"
            figures = [CorrectionFigures.snr(doc, variantNames: names, subtitle: subtitle), CorrectionFigures.kSigma(doc, subtitle: subtitle)]
            try figures[0].write(to: base.appendingPathComponent("snr.png").path)
            try figures[1].write(to: base.appendingPathComponent("k-sigma.png").path)
        }
        let stem = "ablation" + (keepNegativeK ? "-negk" : "") + (quantizeAttention ? "-qattn" : "")
        try AtomicFile.write(md, to: base.appendingPathComponent("\(stem).md").path)
        let all = (fpReport.map { [$0] } ?? []) + rows.compactMap(\.report)
        let json = "[\n" + (try all.map { String(decoding: try $0.jsonBytes(), as: UTF8.self) }).joined(separator: ",\n") + "\n]\n"
        try AtomicFile.write(Array(json.utf8), to: base.appendingPathComponent("\(stem).json").path)
        // The HTML page: the same tables, the FP vs PTQD grid of the PTQD row, the plots inline, the per-step table.
        var page = HTMLReport(title: "ptqd ablation: \(label) \(weights.rawValue), setting \(setting.rawValue)", generator: "ptqd \(ptqdVersion)")
        page.heading("Reproduce")
        page.code(Invocation.command)
        page.paragraph("Run from \(FileManager.default.currentDirectoryPath).")
        page.heading("Settings")
        page.keyValues([("scheme", label), ("weight rounding", weights.rawValue), ("setting", setting.rawValue + (sampler.overridden ? " (overridden)" : "")),
                        ("sampler", settings.summary), ("n per row (images, equal per class)", "\(n)"), ("seed", "\(seed)"),
                        ("calibration trajectories", "\(calib)"), ("statistics trajectories", "\(statsTrajectories)"),
                        ("k_t clamp at 0", keepNegativeK ? "off (--keep-negative-k)" : "on (as PTQD)"), ("quantized file", file),
                        ("threads", "\(runtime.threads)")])
        page.paragraph("Quantized with:")
        page.code(shellCommand(["ptqd", "quantize"] + quantizeArgs))
        page.heading("Ablation")
        page.table(header: header, rows: table)
        if let n = vscNote { page.paragraph(n) }
        page.paragraph("Each row alone:")
        page.code(commands.joined(separator: "\n"))
        let ptqdRow = rows.count > 3 ? 3 : rows.count - 1
        if let grid = FileManager.default.contents(atPath: base.appendingPathComponent(rowDirectory(ptqdRow, tag: tag)).appendingPathComponent("grid.png").path) {
            page.heading("Samples")
            page.image(png: [UInt8](grid), alt: "fp32 and \(rows[ptqdRow].name) samples, one row per class",
                       caption: "fp32 (left) and \(rows[ptqdRow].name) (right) from the same noise and labels, one row per class.")
        }
        if let doc {
            page.heading("PTQD statistics per step")
            page.paragraph("From \(doc.statistics.trajectories) FP trajectories; the quantized network is run on the FP model's x_t at every step.")
            try page.plot(figures[0], id: "snr")
            try page.plot(figures[1], id: "ksigma")
            let st = CorrectionFigures.stepTable(doc, variantNames: names)
            page.table(header: st.header, rows: st.rows, caption: "k_t, σ_q and SNR per sampling step (step 0 = first, most noisy)")
        }
        try page.write(to: base.appendingPathComponent("\(stem).html").path)
        print(md)
        print("wrote \(base.path)/{\(stem).md, \(stem).json, \(stem).html\(doc != nil ? ", snr.{png,svg,json}, k-sigma.{png,svg,json}" : "")}")
    }

    /// The folder of ablation row `i` inside --out.
    /// `<scheme>-<weights>-<setting tag>[-negk][-qattn]`: the quantized file's stem.
    func variantName(tag: String) -> String {
        "\(scheme.replacingOccurrences(of: ":", with: "-"))-\(weights.rawValue)-\(tag)\(keepNegativeK ? "-negk" : "")\(quantizeAttention ? "-qattn" : "")"
    }

    func rowDirectory(_ i: Int, tag: String) -> String { "row\(i)-\(variantName(tag: tag))" }
}
