import XCTest
@testable import WeightRounding

/// The blocked, threaded outputError against the naive triple loop.
final class OutputErrorTests: XCTestCase {
    func testMatchesReference() {
        for (rows, k) in [(1, 1), (5, 7), (9, 40), (16, 33)] {
            let layer = TestLayer(rows: rows, k: k, samples: 50, seed: UInt64(rows * 100 + k))
            let grid = WeightGrid(bits: 3)
            let s = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: k, grid: grid)
            let q = WeightRounding.roundToNearest(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid)
            let fast = layer.error(q, s)
            let ref = WeightRounding.outputErrorReference(weights: layer.weights, q: q, rows: rows, columns: k, scales: s, hessian: layer.hessian)
            XCTAssertEqual(fast, ref, accuracy: 1e-12 * max(1, abs(ref)), "\(rows)x\(k)")
            XCTAssertGreaterThan(ref, 0)
        }
    }

    func testZeroErrorOnGrid() {
        let w: [Float] = [0.5, -1, 1.5, 2]
        let q: [Int8] = [1, -2, 3, 4]
        XCTAssertEqual(WeightRounding.outputError(weights: w, q: q, rows: 2, columns: 2, scales: [0.5, 0.5], hessian: [2, 1, 1, 2]), 0)
    }
}
