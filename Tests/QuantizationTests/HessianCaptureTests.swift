@testable import Diffusion
@testable import Quantization
import TensorCore
import XCTest

/// The Hessian H = mean xxᵀ that AdaRound and GPTQ minimize against, as `InputCapture` accumulates it, checked
/// against its definition: exactly for a linear layer that sees every token, and for convolutions on inputs
/// whose im2col rows are known at every position.
final class HessianCaptureTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func capture(_ kind: LayerKind, positions: Int) -> InputCapture {
        let layer = WeightLayer(name: "l", kind: kind, role: .conv, weights: [Float](repeating: 0, count: kind.weightCount), bias: nil)
        return InputCapture(layer: layer, inner: layer.kernel, observe: true, hessian: true, positions: positions, seed: 1)
    }

    func testLinearHessianIsMeanOuterProduct() {
        let (n, tokens, k) = (3, 5, 7)
        var g = GaussianStream(seed: 4, index: 0)
        let x = Tensor(shape: [n, tokens, k]); g.fill(x.data, count: x.count)
        let c = capture(.linear(inFeatures: k, outFeatures: 2), positions: tokens)
        _ = c.forward(x)
        let x2 = Tensor(shape: [1, tokens, k]); g.fill(x2.data, count: x2.count)
        _ = c.forward(x2)  // accumulates across calls
        var ref = [Double](repeating: 0, count: k * k)
        let rows = (0..<(n * tokens)).map { Array(x.array[($0 * k)..<($0 * k + k)]) } + (0..<tokens).map { Array(x2.array[($0 * k)..<($0 * k + k)]) }
        for r in rows { for i in 0..<k { for j in 0..<k { ref[i * k + j] += Double(r[i]) * Double(r[j]) } } }
        ref = ref.map { $0 / Double(rows.count) }
        for (a, b) in zip(c.meanHessian, ref) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
    }

    func testConvHessianUsesIm2colRowsInOIHWOrder() {
        // Without padding, input channel ch constant = v_ch: every patch is (v_ch for every tap), so
        // H[(ch, t), (ch', t')] = v_ch·v_ch' whatever positions are drawn.
        let g = Conv2DGeometry(inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 0)
        let v: [Float] = [0.5, -1.25, 2]
        let x = Tensor(shape: [2, 6, 5, 3])
        for p in 0..<(2 * 30) { for ch in 0..<3 { x.data[p * 3 + ch] = v[ch] } }
        let c = capture(.conv(g), positions: 4)
        _ = c.forward(x)
        let h = c.meanHessian
        XCTAssertEqual(h.count, 27 * 27)
        for a in 0..<27 { for b in 0..<27 {
            XCTAssertEqual(h[a * 27 + b], Double(v[a / 9]) * Double(v[b / 9]), accuracy: 1e-6, "H[\(a), \(b)]")
        } }
        // With padding, taps that fall outside contribute zeros: a 1×1 input under a 3×3 kernel with padding 1
        // has one output position whose patch holds the pixel at the centre tap (t = 4) only.
        let gp = Conv2DGeometry(inChannels: 2, outChannels: 1, kernel: 3, stride: 1, padding: 1)
        let one = Tensor(shape: [1, 1, 1, 2], values: [3, -2])
        let cp = capture(.conv(gp), positions: 8)
        _ = cp.forward(one)
        let hp = cp.meanHessian
        for a in 0..<18 { for b in 0..<18 {
            let expect: Double = (a % 9 == 4 && b % 9 == 4) ? Double([3, -2][a / 9] * [3, -2][b / 9]) : 0
            XCTAssertEqual(hp[a * 18 + b], expect, accuracy: 1e-6, "padded H[\(a), \(b)]")
        } }
    }
}
