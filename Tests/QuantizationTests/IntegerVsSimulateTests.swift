import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore
import XCTest

/// The execution contract, per fixture model and scheme, on a file written and read back:
/// * every quantized layer: integer kernel (oneDNN u8×s8) vs fake-quantized fp32 kernel on the same
///   input, max|int − sim| / max|sim| ≤ 1e-5 (measured ≤ 1e-6);
/// * whole UNet: ≤ 1e-4 (the issue's contract) whenever both networks take the same rounding decision
///   at every activation quantizer. When a quantizer input lands within float rounding of a rounding
///   boundary, the two networks legitimately pick neighbouring integers ("flip"); the random fixture
///   networks then amplify that one step to ~1e-2 at the output. In that case the test checks that
///   the first flip happened on inputs that still agreed to float precision (≤ 1e-5), i.e. no kernel
///   discrepancy caused it, and reports the end-to-end error;
/// * the reloaded integer UNet equals the UNet the quantizer installed its kernels into, bit for bit;
/// * w8a8 is close to fp32 on in-distribution inputs (calibration records) but not identical.
enum IntegerVsSimulate {
    static let layerContract: Float = 1e-5
    static let contract: Float = 1e-4

    /// Per-model data shared by the schemes.
    final class Context {
        let name: String
        let source: DiffusionModel
        let options: CalibrationOptions
        let calib: CalibrationSet
        /// The fixture's UNet case (randn x at t = 0, 1, T/2, T−1).
        let x: Tensor, t: [Float], cond: Conditioning
        /// In-distribution inputs: the calibration records.
        let cx: Tensor, ct: [Float], ccond: Conditioning
        let fp32OnCalib: Tensor
        let dir: ScratchDir

        init(_ name: String, nullClass: Int?) throws {
            self.name = name
            source = try QFixtures.load(name)
            var o = QFixtures.tinyOptions(nullClass: nullClass)
            o.groupSize = 16
            options = o
            calib = try CalibrationSet.collect(network: source.network, scheduler: source.scheduler, options: o)
            (x, t, cond) = try QFixtures.unetInputs(name)
            (cx, ct, ccond) = calib.batchForTests(0..<calib.rows)
            fp32OnCalib = try source.unet.forward(cx, timesteps: ct, conditioning: ccond)
            dir = try ScratchDir(name)
        }
    }

    static var contexts: [String: Context] = [:]
    static func context(_ name: String, nullClass: Int? = nil) throws -> Context {
        if let c = contexts[name] { return c }
        let c = try Context(name, nullClass: nullClass)
        contexts[name] = c
        return c
    }
    static func release(_ name: String) { contexts[name]?.dir.cleanup(); contexts[name] = nil }

    /// Records each layer's first input and when it ran.
    final class Recorder: WeightLayerKernel {
        final class Clock { var tick = 0 }
        let inner: WeightLayerKernel
        let clock: Clock
        var input: Tensor?
        var order = Int.max
        init(_ inner: WeightLayerKernel, _ clock: Clock) { self.inner = inner; self.clock = clock }
        var isPure: Bool { false }
        func forward(_ x: Tensor) -> Tensor {
            if input == nil { input = x.copy(); order = clock.tick; clock.tick += 1 }
            return inner.forward(x)
        }
        static func install(_ unet: UNet2D) -> [Recorder] {
            let clock = Clock()
            let r = unet.layers.map { Recorder($0.kernel, clock) }
            for (l, k) in zip(unet.layers, r) { l.kernel = k }
            return r
        }
        static func remove(_ unet: UNet2D, _ r: [Recorder]) { for (l, k) in zip(unet.layers, r) { l.kernel = k.inner } }
    }

    /// Elements whose quantized integer differs between two inputs of the same layer, by the quantizer's own
    /// level function (`referenceLevel`, which the tests hold equal to the vector kernel), never a copy of it:
    /// a copy that computed `x / scale` instead of `x · (1/scale)` missed flips near rounding boundaries.
    static func flips(_ a: Tensor, _ b: Tensor, _ layer: QuantizedLayer, channels: Int) -> Int {
        let ranges: [Range<Int>] = layer.split.map { [0..<$0, $0..<channels] } ?? [0..<channels]
        var n = 0
        for (range, q) in zip(ranges, layer.inputs) {
            for row in 0..<(a.count / channels) {
                for c in range {
                    let i = row * channels + c
                    if q.referenceLevel(a.data[i]) != q.referenceLevel(b.data[i]) { n += 1 }
                }
            }
        }
        return n
    }

    struct Result { var layerMax: Float = 0; var endToEnd: Float = 0; var flips = 0; var file: Float = 0; var fp32: Float? }

    @discardableResult
    static func check(_ c: Context, scheme: String, keep: [KeepEightBit] = KeepEightBit.allCases, weights: WeightMethod = .rtn,
                      file: StaticString = #filePath, line: UInt = #line) throws -> Result {
        let label = "\(c.name) \(scheme)\(weights == .rtn ? "" : " \(weights.rawValue)") keep-8bit \(keep.isEmpty ? "none" : keep.map(\.rawValue).joined(separator: ","))"
        let policy = PrecisionPolicy(scheme: try LayerPrecision(parsing: scheme), keepEightBit: keep)
        let run = try QuantizeHelper.run(c.source, policy: policy, options: c.options, calib: c.calib, weights: weights,
                                         adaRoundIterations: weights == .adaround ? 200 : nil)

        // Every weight layer quantized; kept roles at 8 bits; one quantizer per input part.
        XCTAssertEqual(run.records.map(\.name), run.unet.layers.map(\.name), label, file: file, line: line)
        for (r, l) in zip(run.records, run.unet.layers) {
            let kept = !keep.isEmpty && [.inputConv, .outputConv, .timeEmbedding].contains(l.role)
            XCTAssertEqual(r.precision.weightBits, kept ? 8 : policy.scheme.weightBits, "\(label) \(r.name)", file: file, line: line)
            XCTAssertEqual(r.precision.activationBits, policy.scheme.activationBits.map { kept ? 8 : $0 }, "\(label) \(r.name)", file: file, line: line)
            XCTAssertEqual(r.inputs.count, r.precision.activationBits == nil ? 0 : (l.inputSplit == nil ? 1 : 2), "\(label) \(r.name)", file: file, line: line)
        }

        if policy.scheme.activationBits != nil, run.unet.layers.contains(where: { $0.inputSplit != nil }) {
            XCTAssertTrue(run.records.contains { $0.split != nil && $0.inputs.count == 2 }, "\(label): no split input quantizers", file: file, line: line)
        }

        // Write, read back: same records.
        let path = c.dir.path("\(scheme)-\(keep.count).safetensors")
        try QuantizedModel.write(to: path, info: run.info, source: c.source, variants: [run.records])
        let loaded = try QuantizedModel(path: path)
        XCTAssertEqual(loaded.info, run.info, label, file: file, line: line)
        XCTAssertEqual(loaded.variants.count, 1, file: file, line: line)
        for (a, b) in zip(loaded.variants[0], run.records) {
            XCTAssertEqual(a.q, b.q, "\(label) \(a.name) integers", file: file, line: line)
            XCTAssertEqual(a.scales, b.scales, "\(label) \(a.name) scales", file: file, line: line)
            XCTAssertEqual(a.inputs, b.inputs, "\(label) \(a.name) quantizers", file: file, line: line)
            XCTAssertEqual(a.split, b.split, "\(label) \(a.name) split", file: file, line: line)
        }
        let records = Dictionary(uniqueKeysWithValues: loaded.variants[0].map { ($0.name, $0) })
        let integer = try loaded.makeUNet(mode: .integer)
        let simulated = try loaded.makeUNet(mode: .simulate)
        for (li, ls) in zip(integer.layers, simulated.layers) {
            let real = records[li.name]!.precision.activationBits != nil
            XCTAssertEqual(li.kernel is Int8Conv2D || li.kernel is Int8Linear, real, "\(label) \(li.name): integer kernel", file: file, line: line)
            XCTAssertEqual(ls.kernel is FakeQuantInput, real, "\(label) \(ls.name): simulation kernel", file: file, line: line)
        }

        // Forward both, recording every layer's input.
        let ri = Recorder.install(integer), rs = Recorder.install(simulated)
        let outInt = try integer.forward(c.x, timesteps: c.t, conditioning: c.cond)
        let outSim = try simulated.forward(c.x, timesteps: c.t, conditioning: c.cond)
        Recorder.remove(integer, ri); Recorder.remove(simulated, rs)
        XCTAssertTrue(outInt.isFinite && outSim.isFinite, label, file: file, line: line)
        var result = Result()

        // (1) Layer contract: same input through both kernels.
        for (li, r) in zip(integer.layers, rs) {
            let input = try XCTUnwrap(r.input, "\(label) \(li.name) did not run", file: file, line: line)
            let e = relativeError(li.kernel.forward(input).array, r.inner.forward(input).array)
            result.layerMax = max(result.layerMax, e)
            XCTAssertLessThanOrEqual(e, layerContract, "\(label) \(li.name): integer vs simulate kernel relative error \(e)", file: file, line: line)
        }

        // (2) Whole network: ≤ 1e-4 unless a rounding flip occurred, and then the first flip is float-level.
        result.endToEnd = relativeError(outInt.array, outSim.array)
        let order = (0..<integer.layers.count).sorted { rs[$0].order < rs[$1].order }
        var firstFlip: (String, Float)? = nil
        for i in order {
            let l = integer.layers[i], rec = records[l.name]!
            let a = ri[i].input!, b = rs[i].input!
            let divergence = relativeError(a.array, b.array)
            let n = rec.inputs.isEmpty ? 0 : flips(a, b, rec, channels: l.kind.inputs)
            if firstFlip == nil {
                XCTAssertLessThanOrEqual(divergence, layerContract,
                                         "\(label): input of \(l.name) diverged by \(divergence) before any rounding flip", file: file, line: line)
                if n > 0 { firstFlip = (l.name, divergence) }
            }
            result.flips += n
        }
        if firstFlip == nil {
            XCTAssertLessThanOrEqual(result.endToEnd, contract, "\(label): integer vs simulate UNet relative error \(result.endToEnd)", file: file, line: line)
        }

        // (3) The file round-trips: reloaded integer UNet = the in-memory quantized UNet.
        let outMem = try run.unet.forward(c.x, timesteps: c.t, conditioning: c.cond)
        result.file = relativeError(outInt.array, outMem.array)
        XCTAssertLessThanOrEqual(result.file, 1e-6, "\(label): reloaded integer UNet differs from the in-memory one by \(result.file)", file: file, line: line)

        // (4) w8a8 near fp32 on in-distribution inputs, but quantized.
        if scheme == "w8a8" {
            let q = try integer.forward(c.cx, timesteps: c.ct, conditioning: c.ccond)
            let e = relativeError(q.array, c.fp32OnCalib.array)
            result.fp32 = e
            XCTAssertGreaterThan(e, 0, "\(label): quantized output identical to fp32", file: file, line: line)
            XCTAssertLessThan(e, c.name == "cond_attn_28" ? 0.4 : 0.1, "\(label): w8a8 too far from fp32 (\(e))", file: file, line: line)
        }
        print("[int-vs-sim] \(label): layers max \(result.layerMax), UNet \(result.endToEnd) (\(result.flips) rounding flips\(firstFlip.map { ", first at \($0.0) on inputs agreeing to \($0.1)" } ?? "")), reloaded/in-memory \(result.file)\(result.fp32.map { ", int/fp32 \($0)" } ?? "")")
        return result
    }
}

extension CalibrationSet {
    /// Rows `range` as a UNet call (the calibration records are in-distribution inputs).
    func batchForTests(_ range: Range<Int>) -> (Tensor, [Float], Conditioning) {
        (x.slice(batch: range), Array(timesteps[range]), conditioning.slice(range))
    }
}

/// cond_attn_28: class table, attention, skip concatenations (split input quantizers), 28→14→7.
final class IntegerVsSimulateCondAttn28Tests: XCTestCase {
    static let model = "cond_attn_28"
    override class func setUp() { DNNL.setThreads(2) }
    override class func tearDown() { IntegerVsSimulate.release(model) }
    func ctx() throws -> IntegerVsSimulate.Context { try IntegerVsSimulate.context(Self.model) }
    func testW8A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w8a8") }
    func testW4A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a8") }
    /// The demo's recipe (AdaRound weights) and GPTQ through the sequential layer quantizer, integer vs simulated.
    func testW4A8AdaRoundAndGPTQ() throws {
        for w in [WeightMethod.adaround, .gptq] { try IntegerVsSimulate.check(ctx(), scheme: "w4a8", weights: w) }
    }
    func testW4A4() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4") }
    func testW4A4KeepNone() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4", keep: []) }
    func testWeightOnly() throws {
        for s in ["w8a32", "w4a32"] {
            let r = try IntegerVsSimulate.check(ctx(), scheme: s)
            XCTAssertEqual(r.endToEnd, 0, "\(s): weight-only layers run the same fp32 kernel in both modes")
        }
    }

    /// AdaRound minimizes the layer loss tr(ΔW·H·ΔWᵀ) on calibration inputs, so with the weights quantized alone
    /// (w4a32) it brings the whole UNet closer to fp32 on in-distribution inputs than round-to-nearest. GPTQ is
    /// only reported here: on this random fixture it is measured worse than RTN end to end (0.339 vs 0.292);
    /// its layer objective is checked in WeightRoundingTests.GPTQTests.
    func testAdaRoundBeatsRoundToNearestOnCalibrationInputs() throws {
        let c = try ctx()
        let policy = PrecisionPolicy(scheme: try LayerPrecision(parsing: "w4a32"), keepEightBit: [])
        var errors: [WeightMethod: Float] = [:]
        for w in WeightMethod.allCases {
            let run = try QuantizeHelper.run(c.source, policy: policy, options: c.options, calib: c.calib, weights: w,
                                             adaRoundIterations: w == .adaround ? 400 : nil)
            errors[w] = relativeError(try run.unet.forward(c.cx, timesteps: c.ct, conditioning: c.ccond).array, c.fp32OnCalib.array)
        }
        print("[weights] cond_attn_28 w4a32 UNet error vs fp32 on calibration inputs: " +
              WeightMethod.allCases.map { "\($0.rawValue) \(errors[$0]!)" }.joined(separator: ", "))
        XCTAssertLessThan(errors[.adaround]!, errors[.rtn]!, "AdaRound")
        XCTAssertTrue(errors[.gptq]!.isFinite && errors[.gptq]! > 0, "GPTQ")
    }
}

/// uncond_plain_16: unconditional, no attention, asymmetric downsample padding, centred input.
final class IntegerVsSimulateUncondPlain16Tests: XCTestCase {
    static let model = "uncond_plain_16"
    override class func setUp() { DNNL.setThreads(2) }
    override class func tearDown() { IntegerVsSimulate.release(model) }
    func ctx() throws -> IntegerVsSimulate.Context { try IntegerVsSimulate.context(Self.model) }
    func testW8A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w8a8") }
    func testW4A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a8") }
    func testW4A4() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4") }
    func testW4A4KeepNone() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4", keep: []) }
    func testWeightOnly() throws {
        for s in ["w8a32", "w4a32"] { try IntegerVsSimulate.check(ctx(), scheme: s) }
    }
}

/// vpred_tscls_20: "timestep" class-embedding MLP (quantized Linear layers), resnet up/downsamplers,
/// mid-block scale factor, one attention head.
final class IntegerVsSimulateVPredTests: XCTestCase {
    static let model = "vpred_tscls_20"
    override class func setUp() { DNNL.setThreads(2) }
    override class func tearDown() { IntegerVsSimulate.release(model) }
    func ctx() throws -> IntegerVsSimulate.Context { try IntegerVsSimulate.context(Self.model, nullClass: 10) }
    func testW8A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w8a8") }
    func testW4A8() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a8") }
    func testW4A4() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4") }
    func testW4A4KeepNone() throws { try IntegerVsSimulate.check(ctx(), scheme: "w4a4", keep: []) }
    func testWeightOnly() throws {
        for s in ["w8a32", "w4a32"] { try IntegerVsSimulate.check(ctx(), scheme: s) }
    }
}
