//===--- CorrectionComponents.swift - which parts of the correction run ----===//

/// The parts of the noise correction to apply (PTQD §3.1–3.4 and their D2-DPM counterparts).
///
/// | flag   | `.ptqd`                                   | `.d2`                                  |
/// |--------|-------------------------------------------|----------------------------------------|
/// | `cnc`  | divide by (1 + k_t)                       | subtract slope_t·ε_q                   |
/// | `bias` | subtract b_{t,c} (before the division)    | subtract intercept_{t,c}               |
/// | `vsc`  | σ′ from s_t = σ_q(t)/(1 + k_t)            | σ′ from s_t = conditional std of Δ|ε_q |
///
/// `vsc` without `cnc` uses k_t = 0 in s_t (ptqd). In `.d2` mode `vsc` always uses the conditional std,
/// which is the leftover error only when both `cnc` and `bias` are on; partial D2 sets are ablations.
public struct CorrectionComponents: OptionSet, Hashable, Codable, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Correlated-noise correction (PTQD) or the conditional-mean slope (D2).
    public static let cnc = CorrectionComponents(rawValue: 1 << 0)
    /// Per-channel bias (PTQD) or the conditional-mean intercept (D2).
    public static let bias = CorrectionComponents(rawValue: 1 << 1)
    /// Variance schedule calibration: shrink the injected noise to absorb the residual variance.
    public static let vsc = CorrectionComponents(rawValue: 1 << 2)

    public static let all: CorrectionComponents = [.cnc, .bias, .vsc]
    public static let none: CorrectionComponents = []
}

/// Which noise model the correction uses.
public enum CorrectionMethod: String, Codable, Sendable, CaseIterable {
    /// PTQD: Δ = k·ε_fp + Δ′; ε̃ = (ε_q − b)/(1 + k).
    case ptqd
    /// D2-DPM's deterministic variant (D-D²): ε̃ = ε_q − E[Δ | ε_q] from a per-step joint Gaussian.
    case d2
}

/// How the calibrated noise std σ′ is computed (PTQD spec §3.4).
public enum VSCMode: String, Codable, Sendable, CaseIterable {
    /// The released code: σ′ = √(σ² − c_t(σ)²·s²) with the ORIGINAL σ in c_t, strict "<", else 0.
    case code
    /// Solve σ′² + c_t(σ′)²·s² = σ² exactly (bisection), so the total variance matches.
    case exact
}

/// Everything that selects a correction at sampling time.
public struct CorrectionSettings: Equatable, Hashable, Codable, Sendable {
    public var method: CorrectionMethod
    public var components: CorrectionComponents
    public var vscMode: VSCMode

    public init(method: CorrectionMethod = .ptqd, components: CorrectionComponents = .all, vscMode: VSCMode = .code) {
        self.method = method; self.components = components; self.vscMode = vscMode
    }

    /// No correction: the sampler stays bit-for-bit plain.
    public static let off = CorrectionSettings(components: .none)

    /// True when the noise prediction itself is changed (cnc or bias on).
    public var correctsPrediction: Bool { !components.isDisjoint(with: [.cnc, .bias]) }
    /// True when the injected noise std is recalibrated.
    public var calibratesVariance: Bool { components.contains(.vsc) }
}

extension CorrectionComponents: CustomStringConvertible {
    /// Parses a comma list of `cnc`, `bias` (or `bc`), `vsc`, or `none`, as `--components` takes it.
    public init(parsing text: String) throws {
        var set: CorrectionComponents = []
        for item in text.split(separator: ",") {
            switch item.trimmingCharacters(in: .whitespaces).lowercased() {
            case "cnc": set.insert(.cnc)
            case "bias", "bc": set.insert(.bias)
            case "vsc": set.insert(.vsc)
            case "none": break
            default: throw CorrectionError.invalid("--components takes a comma list of cnc, bias, vsc (or none), got '\(item)'")
            }
        }
        self = set
    }

    /// "cnc,bias,vsc" (or "none").
    public var description: String {
        let parts = [contains(.cnc) ? "cnc" : nil, contains(.bias) ? "bias" : nil, contains(.vsc) ? "vsc" : nil].compactMap { $0 }
        return parts.isEmpty ? "none" : parts.joined(separator: ",")
    }
}
