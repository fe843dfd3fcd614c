//===--- CorrectionMeasurement.swift - statistics, fitted tables and the mixed plan ---===//
//
// Stage 3 of `ptqd quantize`: run the statistics pass (FP and every quantized variant on FP trajectories of the
// target sampler), fit PTQD / D2 tables, and for step-aware mixed precision choose the pair and the switch step.
//
//===----------------------------------------------------------------------===//

import Correction
import Diffusion
import Foundation
import Quantization
import TensorCore

/// What the correction is measured with and what it stores as the default.
public struct CorrectionMeasurementOptions {
    public var statistics = StatisticsOptions()
    public var biasMode: BiasMode = .total
    /// Clamp k_t < 0 to 0 (PTQD's released code).
    public var clampK = true
    /// The correction the file applies by default (nil: none, e.g. a mixed plan without correction).
    public var method: CorrectionMethod? = .ptqd
    /// Step-aware mixed precision: nil = off; `pair` = the first two variants are (cheap, strong); `auto` = choose.
    public enum Mixed { case pair, auto }
    public var mixed: Mixed?
    /// When SNR^Q ≥ SNR^F switches at the first step or never: the fraction of steps kept cheap.
    public var cheapFraction = 0.5
    public init() {}
}

public enum CorrectionMeasurement {
    /// - Parameters:
    ///   - fp: the full-precision network; variants: each quantized network with its BOPs precisions (layers and attention products).
    ///   - conditioning: of statistics trajectories `range` (nil: class-balanced labels / none).
    ///   - progress: (images·steps done, total).
    /// - Returns: the document and the variant indices it describes (the chosen pair for `auto`).
    public static func measure(fp: Denoiser, scheduler schedulerConfig: SchedulerConfig, settings: SamplerSettings,
                               variants: [(network: Denoiser, precisions: [String: LayerPrecision])], options o: CorrectionMeasurementOptions,
                               conditioning: ((Range<Int>) throws -> Conditioning)? = nil, nullContext: Tensor? = nil,
                               progress: ((Int, Int) -> Void)? = nil) throws -> (CorrectionDocument, [Int]) {
        let t0 = Date()
        let stats = try collect(fp: fp, scheduler: schedulerConfig, settings: settings, variants: variants.map(\.network),
                                options: o.statistics, conditioning: conditioning, nullContext: nullContext, progress: progress)
        return try document(statistics: stats, fp: fp, scheduler: schedulerConfig, settings: settings, precisions: variants.map(\.precisions),
                            options: o, seconds: Date().timeIntervalSince(t0))
    }

    /// The statistics pass of `measure` alone: one `NoiseStatistics` per variant, over trajectories `images` (default:
    /// all) of `options.trajectories` — a sub-range gives exactly those trajectories of the whole pass.
    /// - recordSamples: keep each sample's sums, for a statistics shard (see `StatisticsPartial`).
    public static func collect(fp: Denoiser, scheduler schedulerConfig: SchedulerConfig, settings: SamplerSettings, variants: [Denoiser],
                               options: StatisticsOptions, conditioning: ((Range<Int>) throws -> Conditioning)? = nil,
                               nullContext: Tensor? = nil, images: Range<Int>? = nil, recordSamples: Bool = false,
                               progress: ((Int, Int) -> Void)? = nil) throws -> [NoiseStatistics] {
        let scheduler = try Sampler.makeScheduler(settings, config: schedulerConfig)
        let fpPredictor = try GuidedDenoiser(network: fp, guidance: settings.guidance, nullClass: settings.nullClass, nullContext: nullContext)
        let qs = try variants.map { try GuidedDenoiser(network: $0, guidance: settings.guidance, nullClass: settings.nullClass, nullContext: nullContext) }
        let cond: (Range<Int>) throws -> Conditioning
        if let conditioning { cond = conditioning } else {
            let classes = max(fpPredictor.space.realClasses, 1)
            let conditional = fpPredictor.space.isConditional
            if case .context = fp.conditioningKind { throw CorrectionError.invalid("statistics for a cross-attention model need contexts (--calib-context FILE)") }
            cond = { r in conditional ? .classes(r.map { $0 % classes }) : .none }
        }
        return try StatisticsPass.collect(scheduler: scheduler, fp: fpPredictor, quantized: qs, conditioning: cond,
                                          shape: fp.sampleShape, options: options, images: images, recordSamples: recordSamples,
                                          progress: progress)
    }

    /// The fit and plan of `measure` from the statistics of every variant (all `options.statistics.trajectories`
    /// trajectories, e.g. merged from shards).
    /// - Parameters:
    ///   - precisions: each variant's BOPs precisions (for `--mixed auto`).
    ///   - seconds: what the statistics cost, recorded in the document.
    public static func document(statistics stats: [NoiseStatistics], fp: Denoiser, scheduler schedulerConfig: SchedulerConfig,
                                settings: SamplerSettings, precisions: [[String: LayerPrecision]], options o: CorrectionMeasurementOptions,
                                seconds: Double?) throws -> (CorrectionDocument, [Int]) {
        let scheduler = try Sampler.makeScheduler(settings, config: schedulerConfig)
        guard stats.count == precisions.count, !stats.isEmpty else { throw CorrectionError.invalid("statistics and variants differ in number") }
        let fit = FitOptions(biasMode: o.biasMode, clampK: o.clampK, alphasCumprod: schedulerConfig.alphasCumprod())
        var tables = stats.map { $0.fit(fit) }
        let components: CorrectionComponents = o.method == nil ? .none : .all
        var keep = Array(precisions.indices)
        var plan: MixedPrecisionPlan? = nil
        var mixedTable: CorrectionTable? = nil
        if let mixed = o.mixed {
            let steps = scheduler.timesteps.count
            let snrF = StepSNR.snrF(scheduler: scheduler)
            var pair = [0, 1]
            if mixed == .auto {
                // cheap = fewest BOPs; strong = the cheapest other candidate whose SNR^Q ≥ SNR^F at the last step
                // (the most demanding one), or the most accurate candidate if none qualifies.
                let costs = try LayerCosts.measure(fp)
                let bops = precisions.map { ModelCosts(costs, precisions: $0).totalBOPs }
                let order = bops.indices.sorted { bops[$0] < bops[$1] }
                let lastStep = steps - 1
                let strong = order.dropFirst().first { Double(tables[$0].snrQ[lastStep]) >= snrF[lastStep] }
                    ?? order.dropFirst().max { tables[$0].snrQ[lastStep] < tables[$1].snrQ[lastStep] }!
                pair = [order[0], strong]
            }
            let p = StepSNR.plan(cheapSNRQ: tables[pair[0]].snrQ.map(Double.init), snrF: snrF,
                                 strongSNRQ: tables[pair[1]].snrQ.map(Double.init), targetCheapFraction: o.cheapFraction)
            tables = pair.map { tables[$0] }
            keep = pair
            plan = p
            mixedTable = CorrectionDocument.assemble(tables, plan: p.schemes)
        }
        let doc = CorrectionDocument(settings: settings, statistics: o.statistics, biasMode: o.biasMode, clampK: o.clampK,
                                     defaultCorrection: CorrectionSettings(method: o.method ?? .ptqd, components: components, vscMode: .code),
                                     tables: tables, plan: plan, mixedTable: mixedTable, seconds: seconds)
        return (doc, keep)
    }
}
