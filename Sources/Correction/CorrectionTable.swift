//===--- CorrectionTable.swift - fitted per-step correction parameters -----===//
//
// Storage order. Rows are in SAMPLING order: row i belongs to loop position i (stepIndex i of
// `NoisePredictor.predict`), i.e. descending t, so row 0 is the noisiest step and the last row the
// smallest t. The released PTQD code stores its arrays in ASCENDING t (`idx_bias.npy` row r ↔ loop
// index S − 1 − r, spec §3.2/§5.2); `releasedCodeRow(forLoopIndex:steps:)`, `biasAscendingT` and
// `init(releasedCode…)` convert. Lookups at sampling time go by exact integer DDPM timestep.
//
//===----------------------------------------------------------------------===//

import Foundation

/// Per-step PTQD and D2-DPM correction parameters, one row per sampling step (sampling order).
///
/// All vectors have one entry per row; `bias` and `d2Intercept` are `[steps][C]`. Values are in units of
/// the noise prediction ε (unit variance under the forward process).
public struct CorrectionTable: Codable, Equatable, Sendable {
    /// File-format version of the JSON encoding.
    public var format: Int = 1
    /// DDPM timesteps in sampling order (descending for DDIM/DDPM), row i ↔ loop position i.
    public var timesteps: [Int]
    /// Correlation coefficient k_t applied by CNC (clamped at 0 when `clampK`).
    public var k: [Float]
    /// The unclamped least-squares slope of Δ on ε_fp.
    public var kRaw: [Float]
    /// σ_q(t): mean per-sample std of Δ − k_t·ε_fp (k as applied). The corrected residual has σ_q/(1 + k).
    public var sigmaQ: [Float]
    /// Per-channel bias b_{t,c}, `[steps][C]`, subtracted before dividing by (1 + k).
    public var bias: [[Float]]
    /// SNR^Q(t) = Σ‖ε_fp‖²/Σ‖Δ‖² (0 for a step without samples; `Float.greatestFiniteMagnitude` if Δ ≡ 0).
    public var snrQ: [Float]
    /// SNR^F(t) = ᾱ_t/(1 − ᾱ_t), if known.
    public var snrF: [Float]?
    /// D2-DPM conditional mean E[Δ | ε_q] = d2Slope_t·ε_q + d2Intercept_{t,c}.
    public var d2Slope: [Float]
    /// `[steps][C]` (all channels equal when fitted with one intercept).
    public var d2Intercept: [[Float]]
    /// Conditional std of Δ given ε_q (the leftover error of the D2-corrected prediction).
    public var d2Sigma: [Float]
    /// Number of samples (images) behind each row; 0 marks a step without data (all parameters 0).
    public var count: [Int]
    /// How `bias` was defined and whether k was clamped.
    public var biasMode: BiasMode
    public var clampK: Bool

    public init(timesteps: [Int], k: [Float], kRaw: [Float]? = nil, sigmaQ: [Float], bias: [[Float]], snrQ: [Float]? = nil,
                snrF: [Float]? = nil, d2Slope: [Float]? = nil, d2Intercept: [[Float]]? = nil, d2Sigma: [Float]? = nil,
                count: [Int]? = nil, biasMode: BiasMode = .total, clampK: Bool = true) {
        let s = timesteps.count, c = bias.first?.count ?? 0
        self.timesteps = timesteps; self.k = k; self.kRaw = kRaw ?? k; self.sigmaQ = sigmaQ; self.bias = bias
        self.snrQ = snrQ ?? [Float](repeating: 0, count: s); self.snrF = snrF
        self.d2Slope = d2Slope ?? [Float](repeating: 0, count: s)
        self.d2Intercept = d2Intercept ?? [[Float]](repeating: [Float](repeating: 0, count: c), count: s)
        self.d2Sigma = d2Sigma ?? [Float](repeating: 0, count: s)
        self.count = count ?? [Int](repeating: 0, count: s)
        self.biasMode = biasMode; self.clampK = clampK
    }

    /// Number of rows (sampling steps).
    public var steps: Int { timesteps.count }
    /// Channel count C of `bias` and `d2Intercept`.
    public var channels: Int { bias.first?.count ?? 0 }

    // MARK: - Row mapping

    /// The row for DDPM timestep `t`, nil if the table has none.
    public func row(forTimestep t: Int) -> Int? { timesteps.firstIndex(of: t) }

    /// The row for a sampler call: loop position `index` when its timestep matches, else a lookup by `t`.
    /// - Throws: `CorrectionError.timestepNotInTable` when `t` has no row.
    public func row(forLoopIndex index: Int, timestep t: Int) throws -> Int {
        if timesteps.indices.contains(index), timesteps[index] == t { return index }
        guard let r = row(forTimestep: t) else { throw CorrectionError.timestepNotInTable(t) }
        return r
    }

    /// The released code's row (ascending t) for loop position `index` of an S-step run: S − 1 − index.
    public static func releasedCodeRow(forLoopIndex index: Int, steps: Int) -> Int { steps - 1 - index }

    /// This table's rows ordered by ascending t (the released code's order).
    public var rowsInAscendingT: [Int] { timesteps.indices.sorted { timesteps[$0] < timesteps[$1] } }

    /// `bias` in the released code's layout (`idx_bias.npy`: `[steps][C]`, ascending t).
    public var biasAscendingT: [[Float]] { rowsInAscendingT.map { bias[$0] } }

    /// A table from the released code's files: `kt.npy` and `t_std_dict.npy` (dicts by t) and
    /// `idx_bias.npy` (`[steps][C]`, ascending t), laid out for `samplingTimesteps` (sampling order).
    /// A t missing from a dict gives k = 0 / σ_q = 0, and k ≤ 0 is stored as 0, as the code applies it.
    public init(releasedCode samplingTimesteps: [Int], k kDict: [Int: Float], sigmaQ sigmaDict: [Int: Float],
                biasAscendingT: [[Float]]) throws {
        let ascending = samplingTimesteps.sorted()
        guard biasAscendingT.count == ascending.count else {
            throw CorrectionError.invalidTable("idx_bias has \(biasAscendingT.count) rows for \(ascending.count) steps")
        }
        let bias = samplingTimesteps.map { biasAscendingT[ascending.firstIndex(of: $0)!] }
        let kRaw = samplingTimesteps.map { kDict[$0] ?? 0 }
        self.init(timesteps: samplingTimesteps, k: kRaw.map { $0 > 0 ? $0 : 0 }, kRaw: kRaw,
                  sigmaQ: samplingTimesteps.map { sigmaDict[$0] ?? 0 }, bias: bias,
                  count: [Int](repeating: 1, count: samplingTimesteps.count), biasMode: .total, clampK: true)
        try validate()
    }

    // MARK: - Residual std for VSC

    /// s_t, the std of the residual error the corrected prediction still carries at `row`:
    /// ptqd σ_q/(1 + k) (k only if `cnc` is on), d2 the conditional std. Units of ε.
    public func residualStd(row: Int, settings: CorrectionSettings) -> Float {
        switch settings.method {
        case .ptqd:
            let kk = settings.components.contains(.cnc) ? k[row] : 0
            return sigmaQ[row] / (1 + kk)
        case .d2:
            return d2Sigma[row]
        }
    }

    // MARK: - Validation and JSON

    /// Checks that all arrays have one entry per row, C entries per bias row, finite values,
    /// non-negative stds, distinct timesteps and 1 + k > 0.
    public func validate() throws {
        let s = timesteps.count
        func need(_ ok: Bool, _ why: @autoclosure () -> String) throws { if !ok { throw CorrectionError.invalidTable(why()) } }
        try need(format == 1, "unsupported format \(format) (expected 1)")
        try need(Set(timesteps).count == s, "timesteps are not distinct")
        for (name, v) in [("k", k), ("kRaw", kRaw), ("sigmaQ", sigmaQ), ("snrQ", snrQ), ("d2Slope", d2Slope), ("d2Sigma", d2Sigma)] {
            try need(v.count == s, "\(name) has \(v.count) entries for \(s) timesteps")
            try need(v.allSatisfy(\.isFinite), "\(name) holds a non-finite value")
        }
        if let f = snrF {
            try need(f.count == s, "snrF has \(f.count) entries for \(s) timesteps")
            try need(f.allSatisfy(\.isFinite), "snrF holds a non-finite value")
        }
        try need(count.count == s, "count has \(count.count) entries for \(s) timesteps")
        try need(bias.count == s && d2Intercept.count == s, "bias/d2Intercept need \(s) rows")
        let c = channels
        try need(bias.allSatisfy { $0.count == c } && d2Intercept.allSatisfy { $0.count == c },
                 "bias/d2Intercept rows must all have \(c) channels")
        try need(bias.allSatisfy { $0.allSatisfy(\.isFinite) } && d2Intercept.allSatisfy { $0.allSatisfy(\.isFinite) },
                 "bias/d2Intercept hold a non-finite value")
        try need(sigmaQ.allSatisfy { $0 >= 0 } && d2Sigma.allSatisfy { $0 >= 0 }, "sigmaQ/d2Sigma must be >= 0")
        try need(k.allSatisfy { 1 + $0 > 0 }, "1 + k must be > 0")
    }

    /// Pretty-printed JSON with sorted keys.
    public func jsonData() throws -> Data {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try enc.encode(self)
    }

    /// Decodes and validates a table.
    public init(jsonData: Data) throws {
        self = try JSONDecoder().decode(CorrectionTable.self, from: jsonData)
        try validate()
    }

    public func write(to url: URL) throws { try jsonData().write(to: url, options: .atomic) }
    public init(contentsOf url: URL) throws { try self.init(jsonData: Data(contentsOf: url)) }
}
