import XCTest
@testable import WeightRounding

/// GPTQ: identity Hessian reproduces RTN, lazy blocks equal the column-by-column reference, dead
/// columns, and the quality margin over RTN.
final class GPTQTests: XCTestCase {
    func testIdentityHessianEqualsRTN() throws {
        let layer = TestLayer(rows: 12, k: 70, samples: 4, seed: 2)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: 12, columns: 70, grid: grid)
        var eye = [Double](repeating: 0, count: 70 * 70)
        for i in 0..<70 { eye[i * 70 + i] = 1 }
        let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: 12, columns: 70, scales: s, grid: grid)
        let g = try WeightRounding.gptq(weights: layer.weights, rows: 12, columns: 70, scales: s, grid: grid, hessian: eye, blockSize: 16)
        XCTAssertEqual(g, rtn)
    }

    func testBlockedEqualsReference() throws {
        let layer = TestLayer(rows: 10, k: 75, samples: 300, seed: 9)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: 10, columns: 75, grid: grid)
        let ref = try WeightRounding.gptqReference(weights: layer.weights, rows: 10, columns: 75, scales: s, grid: grid, hessian: layer.hessian)
        for bs in [1, 7, 32, 128] {
            let g = try WeightRounding.gptq(weights: layer.weights, rows: 10, columns: 75, scales: s, grid: grid, hessian: layer.hessian, blockSize: bs)
            XCTAssertEqual(g, ref, "blockSize \(bs)")
        }
    }

    func testDeadColumnsQuantizeToZero() throws {
        var layer = TestLayer(rows: 6, k: 20, samples: 100, seed: 13)
        var h = layer.hessian
        for dead in [3, 11] { for j in 0..<20 { h[dead * 20 + j] = 0; h[j * 20 + dead] = 0 } }
        layer = TestLayer(rows: 6, k: 20, weights: layer.weights, hessian: h)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: 6, columns: 20, grid: grid)
        let g = try WeightRounding.gptq(weights: layer.weights, rows: 6, columns: 20, scales: s, grid: grid, hessian: h)
        for r in 0..<6 { XCTAssertEqual(g[r * 20 + 3], 0); XCTAssertEqual(g[r * 20 + 11], 0) }
    }

    func testBeatsRTNWithinGridDeterministic() throws {
        let (rows, k) = (24, 96)
        let layer = TestLayer(rows: rows, k: k, samples: 400, seed: 21)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: k, grid: grid)
        let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid)
        let g = try WeightRounding.gptq(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid, hessian: layer.hessian)
        let eRTN = layer.error(rtn, s), eG = layer.error(g, s)
        print("GPTQ 4-bit \(rows)x\(k): loss ratio vs RTN \(eG / eRTN)")
        XCTAssertLessThan(eG, 0.7 * eRTN)
        XCTAssertTrue(g.allSatisfy { Int($0) >= grid.qmin && Int($0) <= grid.qmax })
        XCTAssertEqual(g, try WeightRounding.gptq(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid, hessian: layer.hessian))
    }
}
