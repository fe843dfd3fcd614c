//===--- CorrectionDocument.swift - what a quantized file stores for PTQD --------===//
//
// Stored as the JSON attachment "correction" of a quantized model file: the sampler settings the
// statistics were measured for, the tables per variant, and for step-aware mixed precision the
// per-step plan and the assembled table (row i from the variant that runs at step i).
//
//===----------------------------------------------------------------------===//

import Diffusion
import Foundation

/// PTQD correction data of a quantized model file.
public struct CorrectionDocument: Codable, Equatable, Sendable {
    public static let attachmentName = "correction"
    public var version = 1
    /// Sampler settings the statistics were collected with (correction is valid only for these).
    public var settings: SamplerSettings
    public var statistics: StatisticsOptions
    public var biasMode: BiasMode
    public var clampK: Bool
    /// The correction applied by default when sampling (method, components, VSC mode).
    public var defaultCorrection: CorrectionSettings
    /// One table per quantized variant (sampling order rows).
    public var tables: [CorrectionTable]
    /// Step-aware mixed precision: variant per step and the table assembled along it.
    public var plan: MixedPrecisionPlan?
    public var mixedTable: CorrectionTable?
    /// Seconds the statistics pass took.
    public var seconds: Double?

    public init(settings: SamplerSettings, statistics: StatisticsOptions, biasMode: BiasMode, clampK: Bool,
                defaultCorrection: CorrectionSettings, tables: [CorrectionTable], plan: MixedPrecisionPlan? = nil,
                mixedTable: CorrectionTable? = nil, seconds: Double? = nil) {
        self.settings = settings; self.statistics = statistics; self.biasMode = biasMode; self.clampK = clampK
        self.defaultCorrection = defaultCorrection; self.tables = tables; self.plan = plan; self.mixedTable = mixedTable
        self.seconds = seconds
    }

    /// The table the sampler uses: the mixed one when there is a plan, else variant 0's.
    public var activeTable: CorrectionTable { mixedTable ?? tables[0] }

    /// Rows of `tables` picked per step by `plan` (one table with the same timesteps).
    public static func assemble(_ tables: [CorrectionTable], plan: [Int]) -> CorrectionTable {
        var t = tables[0]
        for (i, v) in plan.enumerated() {
            let s = tables[v]
            t.k[i] = s.k[i]; t.kRaw[i] = s.kRaw[i]; t.sigmaQ[i] = s.sigmaQ[i]; t.bias[i] = s.bias[i]; t.snrQ[i] = s.snrQ[i]
            t.d2Slope[i] = s.d2Slope[i]; t.d2Intercept[i] = s.d2Intercept[i]; t.d2Sigma[i] = s.d2Sigma[i]; t.count[i] = s.count[i]
        }
        return t
    }

    public func json() throws -> String {
        let e = JSONEncoder(); e.outputFormatting = [.sortedKeys]
        return String(data: try e.encode(self), encoding: .utf8)!
    }

    public init(json: String) throws {
        do { self = try JSONDecoder().decode(CorrectionDocument.self, from: Data(json.utf8)) } catch {
            throw CorrectionError.invalid("the file's correction data is malformed (\(error)); re-create it with `ptqd quantize --correct ptqd`")
        }
        guard version <= 1 else { throw CorrectionError.invalid("correction data version \(version) is newer than this ptqd understands; upgrade ptqd") }
        guard !tables.isEmpty else { throw CorrectionError.invalid("the file's correction data holds no table; re-create it") }
        for t in tables { try t.validate() }
        try mixedTable?.validate()
        // Every table describes the same schedule (one row per step, same timesteps), the mixed one included.
        let schedule = tables[0].timesteps
        guard tables.allSatisfy({ $0.timesteps == schedule }), mixedTable.map({ $0.timesteps == schedule }) ?? true else {
            throw CorrectionError.invalid("the file's correction tables describe different step schedules; re-create it with `ptqd quantize --correct ptqd`")
        }
        if let p = plan {
            guard let m = mixedTable, p.schemes.count == m.steps, p.schemes.allSatisfy({ $0 >= 0 && $0 < tables.count }) else {
                throw CorrectionError.invalid("the file's mixed-precision plan does not fit its tables; re-create it with `ptqd quantize --mixed`")
            }
        }
    }
}

/// Runs variant `plan[stepIndex]` at each step (step-aware mixed precision).
public final class SteppedPredictor: NoisePredictor {
    public let predictors: [NoisePredictor]
    public let plan: [Int]
    public init(predictors: [NoisePredictor], plan: [Int]) { self.predictors = predictors; self.plan = plan }
    public func predict(_ x: TensorCore.Tensor, timestep: Int, stepIndex: Int, conditioning: Conditioning) throws -> TensorCore.Tensor {
        guard plan.indices.contains(stepIndex) else {
            throw CorrectionError.invalid("the mixed-precision plan has \(plan.count) steps; sample with that many steps")
        }
        return try predictors[plan[stepIndex]].predict(x, timestep: timestep, stepIndex: stepIndex, conditioning: conditioning)
    }
}

import TensorCore
