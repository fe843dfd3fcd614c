import XCTest
import TensorCore
@testable import WeightRounding

/// Round-to-nearest, the grid and the MSE scale search.
final class RoundToNearestTests: XCTestCase {
    func testGridBounds() {
        XCTAssertEqual(WeightGrid(bits: 4).qmin, -8); XCTAssertEqual(WeightGrid(bits: 4).qmax, 7)
        XCTAssertEqual(WeightGrid(bits: 8).qmin, -128); XCTAssertEqual(WeightGrid(bits: 8).qmax, 127)
        XCTAssertEqual(WeightGrid(bits: 2).levels, 4)
    }

    func testExactOnGridValuesAndClamps() {
        let grid = WeightGrid(bits: 4)
        let scales: [Float] = [0.25, 3]
        // Row 0: every grid point; row 1: grid points × 3.
        let ints = Array(grid.qmin...grid.qmax)
        let w0 = ints.map { Float($0) * 0.25 }, w1 = ints.map { Float($0) * 3 }
        let q = WeightRounding.roundToNearest(weights: w0 + w1, rows: 2, columns: ints.count, scales: scales, grid: grid)
        XCTAssertEqual(q.map(Int.init), ints + ints)
        // Out-of-range values clamp; ties go to even (torch.round).
        let w: [Float] = [100, -100, 7.6, -8.6, 0.5, 1.5, 2.5, -0.5, -1.5, 0.49]
        let qc = WeightRounding.roundToNearest(weights: w, rows: 1, columns: w.count, scales: [1], grid: grid)
        XCTAssertEqual(qc, [7, -8, 7, -8, 0, 2, 2, 0, -2, 0])
    }

    func testMSEScalesNeverWorseThanMaxAbs() {
        let grid = WeightGrid(bits: 4)
        let layer = TestLayer(rows: 24, k: 72, samples: 16, seed: 3)
        let (rows, k) = (layer.rows, layer.k)
        let mse = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: k, grid: grid)
        XCTAssertEqual(mse.count, rows)
        var improvedRows = 0
        for r in 0..<rows {
            let row = Array(layer.weights[(r * k)..<((r + 1) * k)])
            let maxAbs = row.map(abs).max()!
            func sse(_ s: Float) -> Double {
                let q = WeightRounding.roundToNearest(weights: row, rows: 1, columns: k, scales: [s], grid: grid)
                return zip(row, q).reduce(0) { $0 + Double(($1.0 - Float($1.1) * s) * ($1.0 - Float($1.1) * s)) }
            }
            let a = sse(mse[r]), b = sse(maxAbs / Float(grid.qmax))
            XCTAssertLessThanOrEqual(a, b, "row \(r)")
            XCTAssertLessThanOrEqual(mse[r], maxAbs / Float(grid.qmax) * 1.000001)
            if a < 0.95 * b { improvedRows += 1 }
        }
        XCTAssertGreaterThan(improvedRows, rows / 2, "clipping should help most 4-bit rows with outliers")
    }

    func testMSEScalesZeroRowAndTinyLayer() {
        let s = WeightRounding.mseScales(weights: [0, 0, 0, 1, -2, 0.5], rows: 2, columns: 3, grid: WeightGrid(bits: 8))
        XCTAssertEqual(s[0], 1)
        XCTAssertGreaterThan(s[1], 0)
        let q = WeightRounding.roundToNearest(weights: [0, 0, 0, 1, -2, 0.5], rows: 2, columns: 3, scales: s, grid: WeightGrid(bits: 8))
        XCTAssertEqual(Array(q[0..<3]), [0, 0, 0])
    }
}
