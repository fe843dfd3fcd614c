import TensorCore
import XCTest

/// bf16 convolution and linear (ptqd bench's bf16 forward) against the plain fp32 reference run on bf16-rounded
/// inputs and weights: the products are then exact, so only fp32 accumulation separates the two (≤ 1e-5
/// relative). Skipped where oneDNN has no native bf16 (CPUs without AVX512-BF16 or AMX).
final class BF16KernelTests: XCTestCase {
    override class func setUp() { DNNL.setThreads(2) }

    func random(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return (Float(s >> 40) / Float(1 << 24) * 2 - 1) * 3
        }
    }

    func testRoundingMatchesReferenceOnEveryVariant() {
        var values: [Float] = random(1000, seed: 1) + [0, -0, 1, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude]
        values += [Float(bitPattern: 0x3f80_8000), Float(bitPattern: 0x3f81_8000), Float(bitPattern: 0x3f80_8001)]  // ties to even, above a tie
        for isa in KernelISA.supported {
            KernelISA.with(isa) {
                let got = FastMath.roundedToBF16(values)
                for (v, r) in zip(values, got) { XCTAssertEqual(r.bitPattern, referenceBF16(v).bitPattern, "\(isa): bf16(\(v))") }
                XCTAssertTrue(FastMath.roundedToBF16([.nan])[0].isNaN, "\(isa): NaN stays NaN")
            }
        }
    }

    func testConvAndLinearMatchReferenceOnRoundedOperands() throws {
        try XCTSkipUnless(DNNL.hasBF16, "oneDNN has no native bf16 on \(DNNL.isaName)")
        for (g, shape) in [(Conv2DGeometry(inChannels: 16, outChannels: 8, kernel: 3, stride: 1, padding: 1), [2, 7, 6, 16]),
                           (Conv2DGeometry(inChannels: 8, outChannels: 16, kernel: 3, stride: 2, padding: 1), [1, 8, 8, 8])] {
            let x = Tensor(shape: shape, values: random(shape.reduce(1, *), seed: 2))
            let w = random(g.weightCount, seed: 3), b = random(g.outChannels, seed: 4)
            let y = BF16Conv2D(geometry: g, weights: w, bias: b).forward(x)
            let ref = referenceConv2D(Tensor(shape: shape, values: x.array.map(referenceBF16)), geometry: g, weights: w.map(referenceBF16), bias: b)
            XCTAssertLessThanOrEqual(relativeError(y.array, ref.array), 1e-5, "\(g)")
        }
        let (m, k, n) = (9, 40, 12)
        let x = random(m * k, seed: 5), w = random(n * k, seed: 6), b = random(n, seed: 7)
        let y = BF16Linear(inFeatures: k, outFeatures: n, weights: w, bias: b).forward(Tensor(shape: [m, k], values: x))
        let wr = w.map(referenceBF16)
        var wt = [Float](repeating: 0, count: k * n)
        for o in 0..<n { for i in 0..<k { wt[i * n + o] = wr[o * k + i] } }
        var ref = Reference.matmul(x.map(referenceBF16), wt, m: m, k: k, n: n)
        for r in 0..<m { for o in 0..<n { ref[r * n + o] += b[o] } }
        XCTAssertLessThanOrEqual(relativeError(y.array, ref), 1e-5)
    }
}
