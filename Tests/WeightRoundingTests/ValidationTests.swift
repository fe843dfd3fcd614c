import XCTest
@testable import WeightRounding

/// Bad inputs give a one-line typed error from the throwing entry points (`validate`, `gptq`) and an
/// empty result (or NaN) from the non-throwing ones; nothing traps.
final class ValidationTests: XCTestCase {
    let grid = WeightGrid(bits: 4)
    let w: [Float] = [0.1, -0.2, 0.3, 0.4, 0.5, -0.6]   // [2, 3]
    let s: [Float] = [0.1, 0.1]
    let h: [Double] = [1, 0, 0, 0, 1, 0, 0, 0, 1]

    func assertThrows(_ expected: (WeightRoundingError) -> Bool, _ body: () throws -> Void, line: UInt = #line) {
        do { try body(); XCTFail("no error", line: line) } catch let e as WeightRoundingError {
            XCTAssertTrue(expected(e), "unexpected \(e)", line: line)
            XCTAssertFalse(e.description.contains("\n"), line: line)
        } catch { XCTFail("untyped \(error)", line: line) }
    }

    func testWrongSizesThrow() {
        func isShape(_ e: WeightRoundingError) -> Bool { if case .shapeMismatch = e { return true }; return false }
        assertThrows(isShape) { _ = try WeightRounding.gptq(weights: w, rows: 3, columns: 3, scales: s, grid: grid, hessian: h) }
        assertThrows(isShape) { _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: [1], grid: grid, hessian: h) }
        assertThrows(isShape) { try WeightRounding.validate(weights: w, rows: 0, columns: 6) }
        assertThrows(isShape) { try WeightRounding.validate(weights: w, rows: -2, columns: -3) }
        XCTAssertEqual(WeightRounding.roundToNearest(weights: w, rows: 2, columns: 4, scales: s, grid: grid), [])
        XCTAssertEqual(WeightRounding.mseScales(weights: w, rows: 4, columns: 3, grid: grid), [])
        XCTAssertEqual(WeightRounding.adaRound(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: [1, 0, 0, 1]), [])
        XCTAssertTrue(WeightRounding.outputError(weights: w, q: [0], rows: 2, columns: 3, scales: s, hessian: h).isNaN)
    }

    func testNonSquareHessianThrows() {
        func isShape(_ e: WeightRoundingError) -> Bool { if case .shapeMismatch = e { return true }; return false }
        assertThrows(isShape) { _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: Array(h.prefix(6))) }
        assertThrows(isShape) { try WeightRounding.validate(weights: w, rows: 2, columns: 3, hessian: [1, 0, 0, 1]) }
    }

    func testNonFiniteThrows() {
        func isNonFinite(_ e: WeightRoundingError) -> Bool { if case .nonFinite = e { return true }; return false }
        var bad = w; bad[4] = .nan
        assertThrows(isNonFinite) { _ = try WeightRounding.gptq(weights: bad, rows: 2, columns: 3, scales: s, grid: grid, hessian: h) }
        var badH = h; badH[4] = .infinity
        assertThrows(isNonFinite) { _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: badH) }
        XCTAssertEqual(WeightRounding.adaRound(weights: bad, rows: 2, columns: 3, scales: s, grid: grid, hessian: h), [])
        XCTAssertEqual(WeightRounding.roundToNearest(weights: bad, rows: 2, columns: 3, scales: s, grid: grid), [])
    }

    func testBadScalesGridHessianOptions() {
        assertThrows({ if case .invalidScale(row: 1, _) = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: [0.1, 0], grid: grid, hessian: h)
        }
        assertThrows({ if case .invalidGrid = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: WeightGrid(bits: 9), hessian: h)
        }
        var narrow = grid; narrow.qmin = 3; narrow.qmax = 3
        assertThrows({ if case .invalidGrid = $0 { return true }; return false }) {
            try WeightRounding.validate(weights: w, rows: 2, columns: 3, grid: narrow)
        }
        XCTAssertEqual(WeightGrid(bits: 0).qmax, -1)  // builds, never traps; validate rejects it
        assertThrows({ if case .invalidHessian = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: [1, 0.5, 0, 0, 1, 0, 0, 0, 1])
        }
        assertThrows({ if case .invalidHessian = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: [1, 0, 0, 0, -1, 0, 0, 0, 1])
        }
        // Indefinite with a positive diagonal: LAPACK cannot factor it even after 1% damping.
        assertThrows({ if case .singularHessian = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: [1, 2, 0, 2, 1, 0, 0, 0, 1])
        }
        assertThrows({ if case .invalidOption = $0 { return true }; return false }) {
            _ = try WeightRounding.gptq(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: h, blockSize: 0)
        }
        XCTAssertEqual(WeightRounding.adaRound(weights: w, rows: 2, columns: 3, scales: s, grid: grid, hessian: h,
                                               options: AdaRoundOptions(iterations: -1)), [])
    }
}
