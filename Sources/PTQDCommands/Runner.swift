//===--- Runner.swift - `--quantized FILE` and the model a command samples from ---===//

import ArgumentParser
import Correction
import Diffusion
import Foundation
import Pipeline
import Quantization

/// `--quantized FILE [--simulate]` and the correction overrides.
struct QuantizedOptions: ParsableArguments {
    @Option(help: ArgumentHelp("quantized model file written by `ptqd quantize`", valueName: "file"))
    var quantized: String?
    @Flag(help: "run the quantized model with fake quantization in fp32 (the reference) instead of integer kernels")
    var simulate = false

    @Flag(name: .customLong("no-correct"), help: "ignore the file's PTQD noise correction (to compare)") var noCorrect = false
    @Option(name: .customLong("correct-method"), help: "override the stored correction: ptqd or d2") var correctMethod: CorrectionMethod?
    @Option(help: "correction components to apply: comma list of cnc, bias, vsc (default: the file's)") var components: CorrectionComponents?
    @Option(help: "variance-schedule calibration: code (as the released PTQD code) or exact") var vsc: VSCMode?
    @Flag(help: "use the correction even when the sampler settings differ from those it was measured for, and compare against --model even if the file was quantized from other weights (warns)") var force = false

    func validate() throws {
        if simulate && quantized == nil { throw ValidationError("--simulate needs --quantized FILE") }
    }

    var overrides: CorrectionOverrides {
        var o = CorrectionOverrides()
        o.disabled = noCorrect; o.method = correctMethod; o.components = components; o.vscMode = vsc; o.force = force
        return o
    }

    /// The quantized model (nil without --quantized).
    func load() throws -> PipelineModel? {
        try quantized.map { try PipelineModel(quantizedFile: $0, mode: simulate ? .simulate : .integer, overrides: overrides) }
    }
}

extension CorrectionMethod: ExpressibleByArgument {}
extension VSCMode: ExpressibleByArgument {}
extension CorrectionComponents: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}

extension PipelineModel {
    /// The fp32 model, or the quantized file when `--quantized` is given.
    static func make(model: ModelOptions, quantized: QuantizedOptions) throws -> PipelineModel {
        try quantized.load() ?? PipelineModel(fp32: try model.load())
    }
}
