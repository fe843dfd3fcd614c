import Diffusion
import Foundation
import Quantization
import SafeTensors
import TensorCore
import XCTest

/// The diffusers fixture models of DiffusionTests (read in place; this target has no resources).
enum QFixtures {
    static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("DiffusionTests/Fixtures")
    }
    static func path(_ name: String) -> String { root.appendingPathComponent(name).path }
    static func load(_ name: String) throws -> DiffusionModel { try DiffusionModel.load(path(name)) }
    static func cases(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: root.appendingPathComponent("\(name)/cases.safetensors").path)
    }

    /// The fixture's direct UNet case (N = 4 rows: randn x, timesteps 0, 1, T/2, T−1, labels).
    static func unetInputs(_ name: String) throws -> (Tensor, [Float], Conditioning) {
        let c = try cases(name)
        let s = try c.info("unet.sample").shape
        let x = Tensor.fromNCHW(try c.floats("unet.sample"), n: s[0], c: s[1], h: s[2], w: s[3])
        let t = try c.floats("unet.timesteps")
        var cond = Conditioning.none
        if c.contains("unet.class_labels") { cond = .classes(try c.floats("unet.class_labels").map { Int($0) }) }
        return (x, t, cond)
    }

    /// Tiny calibration settings (a few seconds per model in release).
    static func tinyOptions(nullClass: Int? = nil) -> CalibrationOptions {
        var o = CalibrationOptions()
        o.trajectories = 4
        o.samples = 8
        o.settings = SamplerSettings(kind: .ddim, steps: 4, eta: 0, guidance: 3, nullClass: nullClass)
        o.seed = 7
        o.batch = 64
        o.groupSize = 8
        return o
    }
}

/// A fresh directory under the system temporary directory, removed by `cleanup()`.
final class ScratchDir {
    let url: URL
    init(_ label: String) throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("ptqd-qtests-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    var contents: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []).sorted() }
    func cleanup() { try? FileManager.default.removeItem(at: url) }
}

/// The result of quantizing a fixture model in memory.
struct QuantizedRun {
    let source: DiffusionModel
    /// The UNet the quantizer installed its kernels into.
    let unet: UNet2D
    let records: [QuantizedLayer]
    let info: QuantizedModelInfo
}

enum QuantizeHelper {
    /// Calibrates (or reuses `calib`), quantizes a fresh copy of the model and returns the records and file info.
    static func run(_ source: DiffusionModel, policy: PrecisionPolicy, options: CalibrationOptions,
                    calib: CalibrationSet? = nil, mode: ExecutionMode = .integer,
                    range: RangeMethod = .mse, weights: WeightMethod = .rtn, adaRoundIterations: Int? = nil) throws -> QuantizedRun {
        let set = try calib ?? CalibrationSet.collect(network: source.network, scheduler: source.scheduler, options: options)
        let unet = try DiffusionModel.load(source.directory).unet
        let recipe = QuantizationRecipe(policy: policy, weightMethod: weights, rangeMethod: range, adaRoundIterations: adaRoundIterations)
        let records = try LayerQuantizer(network: unet, recipe: recipe, options: options).run(set, mode: mode)
        let unetText = try String(contentsOfFile: source.networkConfigPath, encoding: .utf8)
        let schedText = try source.schedulerConfigPath.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let variant = QuantizedVariantInfo(name: policy.scheme.description, recipe: recipe,
                                           layers: records.map(QuantizedLayerInfo.init), seconds: nil)
        let info = QuantizedModelInfo(networkConfig: unetText, schedulerConfig: schedText, sourceModel: source.directory,
                                      variants: [variant], calibration: CalibrationInfo(options: options, trajectorySeconds: nil))
        return QuantizedRun(source: source, unet: unet, records: records, info: info)
    }
}

/// Reads every tensor and the metadata of a safetensors file so a test can change one thing and write it back.
struct EditableSafeTensors {
    struct Entry { var dtype: SafeTensorsDType; var shape: [Int]; var bytes: [UInt8] }
    var metadata: [String: String]
    var order: [String]
    var tensors: [String: Entry]

    init(path: String) throws {
        let f = try SafeTensorsFile(path: path)
        metadata = f.metadata
        order = f.names
        var t: [String: Entry] = [:]
        for name in f.names {
            let i = try f.info(name)
            t[name] = Entry(dtype: i.dtype, shape: i.shape, bytes: try f.withRawBytes(name) { Array($0) })
        }
        tensors = t
    }

    mutating func remove(_ name: String) { tensors[name] = nil; order.removeAll { $0 == name } }
    mutating func set(_ name: String, _ e: Entry) {
        if tensors[name] == nil { order.append(name) }
        tensors[name] = e
    }

    /// The `ptqd` metadata as a JSON object.
    var ptqd: [String: Any] {
        get { try! JSONSerialization.jsonObject(with: Data(metadata["ptqd"]!.utf8)) as! [String: Any] }
        set { metadata["ptqd"] = String(data: try! JSONSerialization.data(withJSONObject: newValue, options: [.sortedKeys]), encoding: .utf8)! }
    }

    func write(to path: String) throws {
        var w = SafeTensorsWriter(metadata: metadata)
        for name in order { let e = tensors[name]!; try w.add(name, dtype: e.dtype, shape: e.shape, bytes: e.bytes) }
        try w.write(to: path)
    }
}

/// Asserts `body` throws a QuantizationError, SafeTensorsError or (network construction) ModelError whose one-line message contains every `needles` item.
func assertOneLineError(_ needles: [String], _ what: String, file: StaticString = #filePath, line: UInt = #line,
                        _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("\(what): expected an error", file: file, line: line)
    } catch {
        XCTAssertTrue(error is QuantizationError || error is SafeTensorsError || error is ModelError,
                      "\(what): unexpected error type \(type(of: error)): \(error)", file: file, line: line)
        let message = String(describing: error)
        XCTAssertFalse(message.contains("\n"), "\(what): message is not one line: \(message)", file: file, line: line)
        for n in needles {
            XCTAssertTrue(message.lowercased().contains(n.lowercased()), "\(what): message lacks '\(n)': \(message)", file: file, line: line)
        }
    }
}

/// A seeded tensor of standard normals.
func seededNormal(_ shape: [Int], seed: UInt64) -> Tensor {
    let t = Tensor(shape: shape)
    var g = GaussianStream(seed: seed, index: 0)
    g.fill(t.data, count: t.count)
    return t
}

extension DiffusionModel {
    /// The fixture models are all `UNet2DModel`s; tests reach their concrete API through this.
    var unet: UNet2D { network as! UNet2D }
}

extension QuantizedModel {
    /// Variant `v` as the concrete `UNet2D` of the fixtures.
    func makeUNet(variant v: Int = 0, mode: ExecutionMode = .integer) throws -> UNet2D {
        try makeNetwork(variant: v, mode: mode) as! UNet2D
    }
}
