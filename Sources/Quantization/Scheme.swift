//===--- Scheme.swift - bit widths: schemes, per-layer precision, policies ---===//

import Diffusion

/// Errors of the quantization engine; every message is one line that says what to do.
public enum QuantizationError: Error, CustomStringConvertible, Equatable {
    case invalidScheme(String)
    case invalidRule(String)
    case calibration(String)
    case file(path: String, reason: String)
    case unsupported(String)

    public var description: String {
        switch self {
        case let .invalidScheme(s): return s
        case let .invalidRule(s): return s
        case let .calibration(s): return "calibration failed: \(s)"
        case let .file(path, reason): return "\(path): \(reason)"
        case let .unsupported(s): return s
        }
    }
}

/// Bits of one layer: weights (per output channel, symmetric) and input activations
/// (per tensor, asymmetric); `activationBits == nil` keeps activations fp32 (weight-only).
public struct LayerPrecision: Codable, Equatable, Hashable, Sendable, CustomStringConvertible {
    public var weightBits: Int
    public var activationBits: Int?

    /// Bit widths ptqd stores and executes, for weights and quantized activations.
    public static let supportedBits = 2...8

    public init(weightBits: Int, activationBits: Int?) throws {
        guard Self.supportedBits.contains(weightBits) else {
            throw QuantizationError.invalidScheme("weight bits must be in 2...8, got \(weightBits)")
        }
        if let a = activationBits, !Self.supportedBits.contains(a) {
            throw QuantizationError.invalidScheme("activation bits must be in 2...8 (or 32 for fp32), got \(a)")
        }
        self.weightBits = weightBits; self.activationBits = activationBits
    }

    /// Whether ptqd stores and executes these widths: weights 2…8 bits, activations 2…8 bits or fp32 (nil).
    /// Decoded records skip the validating initializer, so readers of files check this.
    public var isSupported: Bool {
        Self.supportedBits.contains(weightBits) && (activationBits.map(Self.supportedBits.contains) ?? true)
    }

    /// Parses `w4a8`, `W8A8`, `w4a32` (weight-only) or `w4` (= w4a32).
    public init(parsing text: String) throws {
        let s = text.lowercased()
        let bad = QuantizationError.invalidScheme(
            "unsupported scheme '\(text)': use wXaY with X in 2...8 and Y in 2...8 or 32, e.g. w8a8, w4a8, w4a4, w8a32")
        guard s.hasPrefix("w") else { throw bad }
        let body = s.dropFirst()
        let parts = body.split(separator: "a", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let w = Int(parts[0]) else { throw bad }
        var a: Int? = nil
        if parts.count == 2 {
            guard let v = Int(parts[1]) else { throw bad }
            a = v == 32 ? nil : v
            if v != 32 && !Self.supportedBits.contains(v) { throw bad }
        }
        guard Self.supportedBits.contains(w) else { throw bad }
        try self.init(weightBits: w, activationBits: a)
    }

    /// `w4a8`, or `w4a32` for weight-only.
    public var description: String { "w\(weightBits)a\(activationBits ?? 32)" }

    /// Bits an activation is counted with in BOPs (32 when fp32).
    public var activationBitsForCost: Int { activationBits ?? 32 }

    public static let w8a8 = try! LayerPrecision(weightBits: 8, activationBits: 8)
}

/// Roles that `--keep-8bit` can name.
public enum KeepEightBit: String, CaseIterable, Codable, Sendable {
    /// `conv_in`.
    case first
    /// `conv_out`.
    case last
    /// The time (and class) embedding MLP.
    case time

    func matches(_ role: LayerRole) -> Bool {
        switch self {
        case .first: return role == .inputConv
        case .last: return role == .outputConv
        case .time: return role == .timeEmbedding
        }
    }
}

/// A `--rule PATTERN=wXaY|fp32` override: `*` matches any run of characters in the diffusers layer name.
public struct PrecisionRule: Codable, Equatable, Sendable, CustomStringConvertible {
    public var pattern: String
    /// nil = keep the layer in fp32.
    public var precision: LayerPrecision?

    public init(parsing text: String) throws {
        let pieces = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard pieces.count == 2, !pieces[0].isEmpty else {
            throw QuantizationError.invalidRule("--rule must look like 'PATTERN=w8a8' or 'PATTERN=fp32', got '\(text)'")
        }
        pattern = pieces[0]
        precision = pieces[1].lowercased() == "fp32" ? nil : try LayerPrecision(parsing: pieces[1])
    }

    public var description: String { "\(pattern)=\(precision?.description ?? "fp32")" }

    /// Glob match with `*` wildcards against the whole name.
    public func matches(_ name: String) -> Bool { Self.glob(Array(pattern), Array(name)) }

    static func glob(_ p: [Character], _ s: [Character]) -> Bool {
        var pi = 0, si = 0, star = -1, mark = 0
        while si < s.count {
            if pi < p.count && p[pi] == s[si] { pi += 1; si += 1 }
            else if pi < p.count && p[pi] == "*" { star = pi; mark = si; pi += 1 }
            else if star >= 0 { pi = star + 1; mark += 1; si = mark }
            else { return false }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// Which precision each layer gets: the scheme, 8-bit for the kept roles, then rules in order (last match wins).
public struct PrecisionPolicy: Codable, Equatable, Sendable {
    public var scheme: LayerPrecision
    public var keepEightBit: [KeepEightBit]
    public var rules: [PrecisionRule]

    public init(scheme: LayerPrecision, keepEightBit: [KeepEightBit] = KeepEightBit.allCases, rules: [PrecisionRule] = []) {
        self.scheme = scheme; self.keepEightBit = keepEightBit; self.rules = rules
    }

    /// Parses `--keep-8bit first,last,time` (or `none`).
    public static func parseKeep(_ text: String) throws -> [KeepEightBit] {
        if text.lowercased() == "none" || text.isEmpty { return [] }
        return try text.split(separator: ",").map { item in
            guard let k = KeepEightBit(rawValue: item.trimmingCharacters(in: .whitespaces).lowercased()) else {
                throw QuantizationError.invalidRule("--keep-8bit takes a comma list of first, last, time (or none), got '\(item)'")
            }
            return k
        }
    }

    /// The precision of `layer`; nil keeps it fp32.
    public func precision(name: String, role: LayerRole) -> LayerPrecision? {
        var p: LayerPrecision? = scheme
        if keepEightBit.contains(where: { $0.matches(role) }) {
            // Kept layers are at least 8/8 but never lower the activation precision of a weight-only scheme.
            p = try! LayerPrecision(weightBits: 8, activationBits: scheme.activationBits == nil ? nil : 8)
        }
        for r in rules where r.matches(name) { p = r.precision }
        return p
    }
}

import Foundation
