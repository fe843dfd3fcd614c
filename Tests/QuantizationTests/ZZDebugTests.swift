import Diffusion
import Foundation
@testable import Quantization
import SafeTensors
import TensorCore
import XCTest

final class ZZDebugTests: XCTestCase {
    final class DynFQ: WeightLayerKernel {
        let inner: WeightLayerKernel; let bits: Int; let split: Int?
        init(_ i: WeightLayerKernel, bits: Int, split: Int?) { inner = i; self.bits = bits; self.split = split }
        func forward(_ x: Tensor) -> Tensor {
            let c = x.shape.last!
            let ranges = split.map { [0..<$0, $0..<c] } ?? [0..<c]
            var parts: [(Range<Int>, ActivationQuantization)] = []
            for r in ranges {
                var lo = Float.infinity, hi = -Float.infinity
                for row in 0..<(x.count / c) { for ch in r { lo = min(lo, x.data[row*c+ch]); hi = max(hi, x.data[row*c+ch]) } }
                parts.append((r, ActivationQuantization(lo: lo, hi: hi, bits: bits)!))
            }
            return inner.forward(ActivationQuantization.fakeQuantize(x, parts: parts))
        }
    }
    func testMeasure() throws {
        DNNL.setThreads(2)
        for name in ["cond_attn_28", "uncond_plain_16"] {
            let source = try QFixtures.load(name)
            var options = QFixtures.tinyOptions()
            options.groupSize = 16
            let calib = try CalibrationSet.collect(model: source, options: options)
            let (x, t, cond) = calib.batch(0..<calib.rows)
            let fp = try source.unet(x, timesteps: t, condition: cond)
            let u = try DiffusionModel.load(source.directory).unet
            for l in u.layers { l.kernel = DynFQ(l.kernel, bits: 8, split: l.inputSplit) }
            print("M \(name) calib rows: dynamic oracle a8 \(relativeError(try u(x, timesteps: t, condition: cond).array, fp.array))")
            for (scheme, range) in [("w8a8", RangeMethod.minMax), ("w8a8", .mse), ("w8a32", .mse)] {
                let run = try QuantizeHelper.run(source, policy: PrecisionPolicy(scheme: try LayerPrecision(parsing: scheme)), options: options, calib: calib, range: range)
                print("M \(name) calib rows: \(scheme) \(range) \(relativeError(try run.unet(x, timesteps: t, condition: cond).array, fp.array))")
                for g in [1, 1000] {
                    var o2 = options; o2.groupSize = g
                    let r2 = try QuantizeHelper.run(source, policy: PrecisionPolicy(scheme: try LayerPrecision(parsing: scheme)), options: o2, calib: calib, range: range)
                    print("M    group \(g): \(relativeError(try r2.unet(x, timesteps: t, condition: cond).array, fp.array))")
                }
            }
        }
    }
}
