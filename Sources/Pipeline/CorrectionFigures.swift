//===--- CorrectionFigures.swift - the PTQD statistics of a quantized file as plots and a table ---===//

import Correction
import Evaluation
import Foundation
import Quantization

/// Plots and the per-step table of a file's correction statistics (``CorrectionDocument``), shared by
/// `ptqd ablation`, `ptqd evaluate`'s HTML report and `ptqd plot --quantized`.
public enum CorrectionFigures {
    /// SNR^Q(t) = ‖ε_fp‖² / ‖ε_q − ε_fp‖² per weight variant and SNR^F(t) = ᾱ_t / (1 − ᾱ_t) per step, log y.
    /// - Parameter variantNames: the file's variant names ("w4a8", …), one per table.
    public static func snr(_ doc: CorrectionDocument, variantNames: [String], subtitle: String? = nil) -> LinePlot {
        let x = (0..<doc.activeTable.steps).map(Double.init)
        var series = doc.tables.enumerated().map { v, t in
            LinePlot.Series(name: "SNR^Q \(v < variantNames.count ? variantNames[v].uppercased() : "variant \(v)") (signal / quantization noise)",
                            x: x, y: t.snrQ.map { Double($0) })
        }
        if let f = doc.activeTable.snrF { series.append(.init(name: "SNR^F (signal / diffusion noise)", x: x, y: f.map { Double($0) })) }
        return LinePlot(title: "SNR per sampling step", subtitle: subtitle, xLabel: "sampling step (0 = first, most noisy)",
                        yLabel: "SNR (power ratio, log scale)", logY: true, series: series)
    }

    /// k_t before clamping and σ_q(t) per step (the active table: the mixed plan's when there is one).
    public static func kSigma(_ doc: CorrectionDocument, subtitle: String? = nil) -> LinePlot {
        let t = doc.activeTable
        let x = (0..<t.steps).map(Double.init)
        return LinePlot(title: "PTQD noise statistics per sampling step", subtitle: subtitle,
                        xLabel: "sampling step (0 = first, most noisy)", yLabel: "k_t, σ_q (dimensionless; ε has unit variance)",
                        series: [.init(name: "k_t before clamping (ε_q − ε_fp ≈ k_t·ε_fp + Δ')", x: x, y: t.kRaw.map { Double($0) }),
                                 .init(name: "σ_q: std of the residual Δ'", x: x, y: t.sigmaQ.map { Double($0) })])
    }

    /// Header and rows of the per-step table: step, t, k_t (applied), k_t before clamping, σ_q, SNR^Q of each
    /// variant, SNR^F and, with a mixed plan, the variant used at that step.
    public static func stepTable(_ doc: CorrectionDocument, variantNames: [String]) -> (header: [String], rows: [[String]]) {
        let t = doc.activeTable
        var header = ["step", "t", "k_t (applied)", "k_t (raw)", "σ_q"]
        header += doc.tables.indices.map { "SNR^Q " + ($0 < variantNames.count ? variantNames[$0].uppercased() : "v\($0)") }
        if t.snrF != nil { header.append("SNR^F") }
        if doc.plan != nil { header.append("variant used") }
        func g(_ v: Float) -> String { v.isFinite ? String(format: "%.4g", Double(v)) : "\(v)" }
        let rows = (0..<t.steps).map { i -> [String] in
            var r = ["\(i)", "\(t.timesteps[i])", String(format: "%.4f", t.k[i]), String(format: "%.4f", t.kRaw[i]), String(format: "%.4f", t.sigmaQ[i])]
            r += doc.tables.map { i < $0.snrQ.count ? g($0.snrQ[i]) : "–" }
            if let f = t.snrF { r.append(g(f[i])) }
            if let p = doc.plan { r.append(i < p.schemes.count ? (p.schemes[i] < variantNames.count ? variantNames[p.schemes[i]].uppercased() : "v\(p.schemes[i])") : "–") }
            return r
        }
        return (header, rows)
    }
}

extension PipelineModel {
    /// A heading for grids and reports: "fp32", "W4A8 AdaRound + PTQD", "W4A4:W4A8 mixed RTN + PTQD (CNC+BC)",
    /// "W8A8 RTN" (no correction applied), with " (simulated)" for fake quantization.
    public var displayName: String {
        guard let q = quantized else { return "fp32" }
        let schemes = q.info.variants.map { $0.name.uppercased() }.joined(separator: ":")
        let rounding: String
        switch q.info.variants.first?.recipe.weightMethod {
        case .adaround?: rounding = "AdaRound"
        case .gptq?: rounding = "GPTQ"
        case .rtn?, nil: rounding = "RTN"
        }
        var s = schemes + (correction?.plan != nil ? " mixed" : "") + " " + rounding
        let cs = correctionSettings
        if cs.correctsPrediction || cs.calibratesVariance {
            let parts = [cs.components.contains(.cnc) ? "CNC" : nil, cs.components.contains(.bias) ? "BC" : nil,
                         cs.components.contains(.vsc) ? "VSC" : nil].compactMap { $0 }
            s += " + " + cs.method.rawValue.uppercased() + (cs.components == .all ? "" : " (" + parts.joined(separator: "+") + ")")
        }
        return s + (label.hasSuffix("(simulated)") ? " (simulated)" : "")
    }

    /// The model's folder name ("fmnist-ddpm"): the source model's for a quantized file.
    public var modelFolderName: String { quantized?.info.sourceModel ?? (path as NSString).lastPathComponent }
}
