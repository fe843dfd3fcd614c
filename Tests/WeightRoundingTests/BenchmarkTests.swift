import XCTest
import Foundation
import TensorCore
@testable import WeightRounding

/// Measurements behind the AdaRound defaults (not a pass/fail test: skipped unless
/// `PTQD_ROUNDING_BENCH=1`). Real weights of the bundled `models/fmnist-ddpm` UNet, synthetic inputs with
/// the structure of real ones (spatially smooth, channel-correlated, post-SiLU, im2col in OIHW K order).
final class BenchmarkTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(ProcessInfo.processInfo.environment["PTQD_ROUNDING_BENCH"] == "1", "set PTQD_ROUNDING_BENCH=1 to run")
        DNNL.setThreads(Int(ProcessInfo.processInfo.environment["PTQD_ROUNDING_BENCH_THREADS"] ?? "") ?? 2)
    }

    struct Layer { let name: String; let rows: Int; let cin: Int; let kernel: Int; let weights: [Float]; var k: Int { cin * kernel * kernel } }

    /// Conv (OIHW) and Linear weights of the bundled model, read straight from the safetensors file.
    static func modelLayers() throws -> [Layer] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let url = root.appendingPathComponent("models/fmnist-ddpm/unet/diffusion_pytorch_model.safetensors")
        let data = try Data(contentsOf: url, options: .alwaysMapped)
        let headerLength = Int(data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + headerLength))) as! [String: Any]
        var layers: [Layer] = []
        for (name, value) in header where name.hasSuffix(".weight") && name != "class_embedding.weight" {
            guard let entry = value as? [String: Any], let shape = entry["shape"] as? [Int], shape.count == 2 || shape.count == 4,
                  let offsets = entry["data_offsets"] as? [Int] else { continue }
            let start = 8 + headerLength + offsets[0], end = 8 + headerLength + offsets[1]
            let floats = data.subdata(in: start..<end).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            layers.append(Layer(name: name, rows: shape[0], cin: shape[1], kernel: shape.count == 4 ? shape[2] : 1, weights: floats))
        }
        return layers.sorted { $0.name < $1.name }
    }

    /// H = mean x·xᵀ over im2col rows of SiLU(mix(blur(noise)) + bias) feature maps [images, side, side, cin].
    static func hessian(cin: Int, kernel: Int, side: Int, images: Int, seed: UInt64) -> [Double] {
        var rng = LCG(seed: seed)
        let hw = side * side
        var maps = [Float](repeating: 0, count: images * hw * cin)
        for i in 0..<maps.count { maps[i] = Float(rng.normal()) }
        // Two 3×3 box blurs per channel (spatial correlation between kernel taps).
        for _ in 0..<2 {
            var out = maps
            for n in 0..<images { for y in 0..<side { for x in 0..<side { for c in 0..<cin {
                var s: Float = 0, cnt: Float = 0
                for dy in -1...1 { for dx in -1...1 {
                    let yy = y + dy, xx = x + dx
                    if yy >= 0 && yy < side && xx >= 0 && xx < side { s += maps[((n * side + yy) * side + xx) * cin + c]; cnt += 1 }
                } }
                out[((n * side + y) * side + x) * cin + c] = s / cnt * 3
            } } } }
            maps = out
        }
        // Channel mixing, offset and SiLU.
        let mix = (0..<(cin * cin)).map { i in Float((i / cin == i % cin ? 1 : 0) + 1.5 * rng.normal() / Double(cin).squareRoot()) }
        let mixed = FloatLinear(inFeatures: cin, outFeatures: cin, weights: mix, bias: (0..<cin).map { _ in Float(0.5 * rng.normal()) })
            .forward(Tensor(shape: [images * hw, cin], values: maps))
        for i in 0..<mixed.count { let a = mixed.data[i]; mixed.data[i] = a / (1 + Foundation.exp(-a)) }
        // im2col (zero padding kernel/2), K order (c, ky, kx) = PyTorch OIHW flattening; stored transposed [K, n].
        let k = cin * kernel * kernel, n = images * hw, pad = kernel / 2
        let xt = Tensor(shape: [k, n])
        for img in 0..<images { for y in 0..<side { for x in 0..<side {
            let row = (img * side + y) * side + x
            for c in 0..<cin { for ky in 0..<kernel { for kx in 0..<kernel {
                let yy = y + ky - pad, xx = x + kx - pad
                guard yy >= 0 && yy < side && xx >= 0 && xx < side else { continue }
                xt.data[((c * kernel + ky) * kernel + kx) * n + row] = mixed.data[((img * side + yy) * side + xx) * cin + c]
            } } }
        } } }
        let gram = FloatLinear(inFeatures: n, outFeatures: k, weights: xt.array, bias: nil).forward(xt)  // Xᵀ·X
        var h = [Double](repeating: 0, count: k * k)
        for i in 0..<k { for j in i..<k { let v = (Double(gram.data[i * k + j]) + Double(gram.data[j * k + i])) / Double(2 * n); h[i * k + j] = v; h[j * k + i] = v } }
        return h
    }

    static func hessian(for layer: Layer, seed: UInt64) -> [Double] {
        let side = layer.kernel == 1 && layer.cin >= 128 ? 8 : 16
        let rowsWanted = max(2 * layer.k, 1024)
        let images = max(4, (rowsWanted + side * side - 1) / (side * side))
        return hessian(cin: layer.cin, kernel: layer.kernel, side: side, images: images, seed: seed)
    }

    /// Runs `body`; returns its result and the process CPU seconds it used (wall time is meaningless on a
    /// shared machine; with 1 thread, CPU time is the single-core cost).
    func time<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        func cpu() -> Double { var ts = timespec(); clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9 }
        let t0 = cpu(), w0 = Date(); let r = try body()
        lastWall = Date().timeIntervalSince(w0)
        return (r, cpu() - t0)
    }
    var lastWall = 0.0

    func testBenchmarkDefaultsSweep() throws {
        let layers = try Self.modelLayers()
        let grid = WeightGrid(bits: 4)
        let names = ProcessInfo.processInfo.environment["PTQD_ROUNDING_BENCH_LAYERS"]?.split(separator: ",").map(String.init)
            ?? ["down_blocks.0.resnets.0.conv2.weight", "mid_block.resnets.0.conv1.weight", "up_blocks.0.resnets.0.conv1.weight"]
        let configs: [(Int, Double)] = ProcessInfo.processInfo.environment["PTQD_ROUNDING_BENCH_CONFIGS"].map { spec in
            spec.split(separator: ",").map { item in let p = item.split(separator: "@"); return (Int(p[0])!, Double(p[1])!) }
        } ?? [(250, 1e-2), (500, 1e-2), (1000, 1e-2), (2000, 1e-2), (1000, 3e-3), (1000, 3e-2), (500, 3e-2)]
        for name in names {
            let layer = layers.first { $0.name == name }!
            let h = Self.hessian(for: layer, seed: 1)
            let s = WeightRounding.mseScales(weights: layer.weights, rows: layer.rows, columns: layer.k, grid: grid)
            let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid)
            let eRTN = WeightRounding.outputError(weights: layer.weights, q: rtn, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
            let (g, tg) = try time { try WeightRounding.gptq(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid, hessian: h) }
            let eG = WeightRounding.outputError(weights: layer.weights, q: g, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
            print(String(format: "%@ %dx%d: GPTQ ratio %.3f (%.2f s)", name, layer.rows, layer.k, eG / eRTN, tg))
            for (it, lr) in configs {
                let (q, t) = time {
                    WeightRounding.adaRound(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid, hessian: h,
                                            options: AdaRoundOptions(iterations: it, learningRate: lr))
                }
                let e = WeightRounding.outputError(weights: layer.weights, q: q, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
                print(String(format: "  AdaRound it %5d lr %.0e: ratio %.3f  %.2f cpu s, %.2f wall s", it, lr, e / eRTN, t, lastWall))
            }
        }
    }

    func testBenchmarkWholeUNet() throws {
        let layers = try Self.modelLayers()
        let grid = WeightGrid(bits: 4)
        var tAda = 0.0, tGPTQ = 0.0, logAda = 0.0, logG = 0.0, tH = 0.0
        for (i, layer) in layers.enumerated() {
            let (h, th) = time { Self.hessian(for: layer, seed: UInt64(i)) }
            tH += th
            let s = WeightRounding.mseScales(weights: layer.weights, rows: layer.rows, columns: layer.k, grid: grid)
            let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid)
            let eRTN = WeightRounding.outputError(weights: layer.weights, q: rtn, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
            let (q, ta) = time { WeightRounding.adaRound(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid, hessian: h) }
            let (g, tg) = try time { try WeightRounding.gptq(weights: layer.weights, rows: layer.rows, columns: layer.k, scales: s, grid: grid, hessian: h) }
            let eA = WeightRounding.outputError(weights: layer.weights, q: q, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
            let eG = WeightRounding.outputError(weights: layer.weights, q: g, rows: layer.rows, columns: layer.k, scales: s, hessian: h)
            tAda += ta; tGPTQ += tg; logAda += Foundation.log(eA / eRTN); logG += Foundation.log(eG / eRTN)
            print(String(format: "%-48@ %4dx%-5d ada %.3f (%.2f s)  gptq %.3f (%.3f s)", layer.name, layer.rows, layer.k, eA / eRTN, ta, eG / eRTN, tg))
        }
        print(String(format: "whole UNet (%d layers, W4): AdaRound %.1f s, geo-mean loss ratio vs RTN %.3f; GPTQ %.1f s, ratio %.3f; H synthesis %.1f s",
                     layers.count, tAda, Foundation.exp(logAda / Double(layers.count)), tGPTQ, Foundation.exp(logG / Double(layers.count)), tH))
    }
}
