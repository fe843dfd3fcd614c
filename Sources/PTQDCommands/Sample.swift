//===--- Sample.swift - `ptqd sample` -----------------------------------------===//

import ArgumentParser
import Diffusion
import Evaluation
import Foundation
import Pipeline
import SafeTensors
import TensorCore

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate images from a diffusion model into a PNG grid (and optionally raw tensors).",
        discussion: """
        Noise is drawn per image from (seed, image index), so results do not depend on --batch.
        --model may be a latent-diffusion pipeline folder (model_index.json, unet/, vae/ or vqvae/, scheduler/,         optionally class_embedder/): latents are sampled, divided by the decoder's scaling_factor and decoded.
        --noise reads x_T from a safetensors file (tensor 'noise', NCHW like diffusers; latents for a pipeline);
        --save-tensors writes the final samples before clamping (tensor 'samples', NCHW, decoded), the final         'latents' of a latent pipeline (before any codebook lookup) and the labels.
        """)

    @OptionGroup var model: ModelOptions
    @OptionGroup var quant: QuantizedOptions
    @OptionGroup var sampler: SamplerOptions
    @OptionGroup var runtime: RuntimeOptions

    @Option(help: "output PNG grid") var out: String
    @Option(name: .customLong("class"), help: "generate only this class label") var classLabel: Int?
    @Option(help: ArgumentHelp("cross-attention contexts for a text-conditioned model: safetensors with 'context' [n or 1, L, D] and, for guidance, 'null_context' [1, L, D]", valueName: "file"))
    var context: String?
    @Option(help: "'all': equal numbers of every class, one grid row per class") var classes: String?
    @Option(help: "number of images") var n: Int = 64
    @Option(help: "images per UNet batch (guidance doubles it)") var batch: Int = 32
    @Option(help: "random seed") var seed: UInt64 = 0
    @Option(help: "initial noise x_T from a safetensors file (tensor 'noise', [n, C, H, W])") var noise: String?
    @Option(name: .customLong("save-tensors"), help: "write the final samples as safetensors (tensor 'samples', NCHW)")
    var saveTensors: String?
    @Flag(help: "no progress on stderr") var quiet = false

    func validate() throws {
        guard n >= 1 else { throw ValidationError("--n must be >= 1, got \(n)") }
        guard batch >= 1 else { throw ValidationError("--batch must be >= 1, got \(batch)") }
        if classLabel != nil && classes != nil { throw ValidationError("use either --class N or --classes all, not both") }
        if context != nil && (classLabel != nil || classes != nil) { throw ValidationError("--context replaces class labels: do not combine it with --class/--classes") }
        if let c = classes, c != "all" { throw ValidationError("--classes accepts only 'all', got '\(c)'") }
        guard out.lowercased().hasSuffix(".png") else { throw ValidationError("--out must name a .png file, got '\(out)'") }
    }

    func run() throws {
        runtime.apply()
        let model = try PipelineModel.make(model: self.model, quantized: quant)
        if quant.quantized != nil, self.model.model != nil { try model.attachDecoder(from: try self.model.load()) }
        if let q = model.quantized, q.info.decoder != nil, self.model.model == nil {
            throw ValidationError("\(q.path) holds a quantized decoder: pass its source pipeline folder with --model DIR")
        }
        let settings = sampler.settings(for: model.scheduler)
        let contexts = try context.map { try model.loadContexts(file: $0, count: n) }
        if case .context = model.network.conditioningKind, contexts == nil {
            throw ValidationError("this model is conditioned on a cross-attention context: pass --context FILE ('context' [n or 1, L, D], 'null_context' [1, L, D] for guidance)")
        }
        if contexts != nil && settings.guidance != 1 && model.nullContext == nil {
            throw ValidationError("guidance \(settings.guidance) needs 'null_context' [1, L, D] in \(context!); add it or pass --guidance 1")
        }
        let s = try model.sampler(settings, warn: note)
        let space = try model.conditioningSpace(settings)
        let plan = contexts != nil ? try LabelPlan(space: ConditioningSpace(kind: .unconditional), n: n, single: nil, all: false)
            : try LabelPlan(space: space, n: n, single: classLabel, all: classes == "all")
        let shape = model.network.sampleShape
        let (h, w, c) = (shape[0], shape[1], shape[2])
        var xT: Tensor? = nil
        if let path = noise {
            let file = try SafeTensorsFile(path: path)
            let values = try file.floats("noise", expectedShape: [n, c, h, w])
            guard values.allSatisfy({ $0.isFinite }) else { throw ValidationError("\(path): tensor 'noise' contains NaN or Inf") }
            xT = Tensor.fromNCHW(values, n: n, c: c, h: h, w: w)
        }
        let progress = ProgressReporter(label: "sample", total: n * s.scheduler.timesteps.count, unit: "img·steps", enabled: !quiet)
        var outputs: [Tensor] = []
        try s.generate(images: 0..<n, batch: batch, seed: seed, shape: shape,
                       conditioning: { r in contexts.map { .context($0.slice(batch: r)) } ?? plan.labels.map { .classes(Array($0[r])) } ?? .none },
                       initialNoise: xT.map { t in { r in t.slice(batch: r) } },
                       hooks: { r in SamplerHooks(didStep: { _, _ in progress.advance(r.count) }) },
                       onBatch: { _, result in
            guard result.isFinite else { throw ValidationError("sampling produced NaN/Inf (check the model weights and --guidance)") }
            outputs.append(result)
        })
        let latents = Tensor.concatenate(batch: outputs)
        let samples = try model.decode(latents)
        guard samples.isFinite else { throw ValidationError("decoding produced NaN/Inf (check the decoder weights)") }
        let img = model.imageShape
        if let path = saveTensors {  // before the grid: the raw tensors never depend on how they can be drawn
            var writer = SafeTensorsWriter(metadata: ["format": "ptqd-samples", "settings": settings.jsonString,
                                                      "seed": "\(seed)", "model": model.path])
            if model.decoder != nil { try writer.add("latents", floats: latents.toNCHW(), shape: [n, c, h, w]) }
            try writer.add("samples", floats: samples.toNCHW(), shape: [n, img[2], img[0], img[1]])
            if let l = plan.labels { try writer.add("labels", int32s: l.map { Int32($0) }, shape: [n]) }
            try writer.write(to: path)
        }
        // The grid under a heading naming the model, each row named by its class when rows are classes.
        let rowNames = plan.rowLabels(n: n).map { labels -> [String] in
            let names = model.modelFolderName.hasPrefix("fmnist-")
                ? (try? BundledModels.path("fmnist-features")).flatMap { FeatureNetwork.classNames(directory: $0) } : nil
            let all = FeatureNetwork.rowNames(names, count: max(plan.realClasses, 1))
            return labels.map { $0 < all.count ? all[$0] : "class \($0)" }
        }
        let grid = ImageGrid(columns: plan.columns)
        try PNGCodec.write(try grid.figure(panels: [.init(heading: model.displayName, images: samples)], rowNames: rowNames, scale: 1), to: out)
        let secs = progress.elapsed
        let guidance = space.isConditional ? settings.guidance : 1
        print(String(format: "wrote %@: %d images, %@ %d steps eta %g guidance %g, %.1f s (%.2f images/s)",
                     out, n, settings.kind.rawValue, settings.steps, settings.eta, guidance, secs, Double(n) / secs)
              + (model.quantized != nil ? " [\(model.label)]" : ""))
        if let p = saveTensors {
            print("wrote \(p): " + (model.decoder != nil ? "latents [\(n), \(c), \(h), \(w)], " : "") + "samples [\(n), \(img[2]), \(img[0]), \(img[1])] fp32")
        }
    }
}

/// Which label each image gets and how the grid is laid out.
struct LabelPlan {
    let labels: [Int]?
    let columns: Int
    let perClass: Int?
    /// Number of real (non-null) classes.
    var realClasses = 0

    init(space: ConditioningSpace, n: Int, single: Int?, all: Bool) throws {
        guard case let .classLabels(table) = space.kind else {
            if single != nil || all { throw ValidationError(space.isConditional ? "this model takes a context, not class labels: --class/--classes do not apply" : "this model is unconditional: --class/--classes do not apply") }
            labels = nil; perClass = nil
            columns = max(1, Int(Double(n).squareRoot().rounded(.up)))
            return
        }
        let total = table ?? 0
        let real = space.realClasses
        realClasses = real
        if let c = single {
            guard c >= 0 && c < max(total, 1) else { throw ValidationError("--class \(c) is out of range 0..<\(real)") }
            labels = [Int](repeating: c, count: n); perClass = nil
            columns = max(1, Int(Double(n).squareRoot().rounded(.up)))
        } else {
            guard real > 0 else { throw ValidationError("this model has no class table; pass --class N") }
            if n % real == 0 {
                let per = n / real
                labels = (0..<n).map { $0 / per }; perClass = per
                columns = per
            } else {
                labels = (0..<n).map { $0 % real }; perClass = nil
                columns = real
            }
        }
    }

    func rowLabels(n: Int) -> [Int]? {
        guard let labels, let per = perClass, per > 0 else { return nil }
        return stride(from: 0, to: n, by: per).map { labels[$0] }
    }
}

extension SamplerSettings {
    var jsonString: String {
        let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys]
        return String(data: try! enc.encode(self), encoding: .utf8)!
    }
}
