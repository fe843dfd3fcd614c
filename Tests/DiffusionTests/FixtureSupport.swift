import Foundation
import SafeTensors
import TensorCore
import XCTest

/// Locates the committed diffusers fixtures (see Fixtures/README.md).
enum Fixtures {
    static var root: URL { Bundle.module.resourceURL!.appendingPathComponent("Fixtures") }
    static func model(_ name: String) -> String { root.appendingPathComponent(name).path }
    static var modelNames: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? [])
            .filter { FileManager.default.fileExists(atPath: root.appendingPathComponent("\($0)/cases.safetensors").path) }
            .filter { !$0.hasPrefix("ldm_") }  // the pixel UNet2DModel fixtures; ldm_* are LatentConformanceTests'
            .sorted()
    }
    static func cases(_ name: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(path: root.appendingPathComponent("\(name)/cases.safetensors").path)
    }
    static func json(_ name: String) throws -> [String: Any] {
        let d = try Data(contentsOf: root.appendingPathComponent("\(name)/cases.json"))
        return try JSONSerialization.jsonObject(with: d) as! [String: Any]
    }
}

extension SafeTensorsFile {
    /// A `[N, C, H, W]` tensor as NHWC.
    func nhwc(_ name: String) throws -> Tensor {
        let s = try info(name).shape
        let v = try floats(name)
        let (n, c, h, w) = (s[s.count - 4], s[s.count - 3], s[s.count - 2], s[s.count - 1])
        return Tensor.fromNCHW(v, n: n, c: c, h: h, w: w)
    }
    /// Row `i` of a `[S, N, C, H, W]` tensor as NHWC.
    func nhwc(_ name: String, row i: Int) throws -> Tensor {
        let s = try info(name).shape
        let v = try floats(name)
        let per = s.dropFirst().reduce(1, *)
        return Tensor.fromNCHW(Array(v[(i * per)..<((i + 1) * per)]), n: s[1], c: s[2], h: s[3], w: s[4])
    }
}

import Diffusion

extension DiffusionModel {
    /// The fixture models are all `UNet2DModel`s; tests reach their concrete API through this.
    var unet: UNet2D { network as! UNet2D }
}
