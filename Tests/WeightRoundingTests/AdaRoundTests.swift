import XCTest
import TensorCore
@testable import WeightRounding

/// AdaRound: the fast gradient against the Float64 reference, quality against RTN, grid bounds,
/// determinism, and the ±1 property of the final rounding.
final class AdaRoundTests: XCTestCase {
    /// One oneDNN thread for these small layers (OpenMP barriers dominate tiny products on a loaded
    /// 2-core machine); the previous count is restored for the other test classes.
    nonisolated(unsafe) static var savedThreads = 2
    override class func setUp() { savedThreads = DNNL.threads; DNNL.setThreads(1) }
    override class func tearDown() { DNNL.setThreads(savedThreads) }

    /// Fast forward+gradient (oneDNN product, 16-lane elementwise, row tails) vs the naive Float64
    /// reference, with and without the regularizer, on a layer where some weights clamp at the grid edge.
    func testGradientMatchesReference() {
        let (rows, k) = (6, 37)  // K not a multiple of 16: exercises the tails
        let layer = TestLayer(rows: rows, k: k, samples: 80, seed: 11)
        let grid = WeightGrid(bits: 3)
        // Scales small enough that ~10% of the weights fall outside the grid.
        let s = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: k, grid: grid).map { $0 * 0.7 }
        let options = AdaRoundOptions(iterations: 10)
        let solver = AdaRoundSolver(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid,
                                    hessian: layer.hessian, options: options)
        // Move α off its initialization so saturated h (h′ = 0) and both signs appear.
        var rng = LCG(seed: 5)
        for i in 0..<solver.alpha.count { solver.alpha[i] += Float(3 * rng.normal()) }
        XCTAssertGreaterThan(solver.floorW.enumerated().filter { $0.element >= Float(grid.qmax) || $0.element < Float(grid.qmin) }.count, 2)
        for beta in [nil, 20.0, 2.0, 7.3] as [Double?] {
            solver.forward()
            solver.gradient(beta: beta)
            let ref = AdaRoundSolver.gradientReference(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid,
                                                       hessian: layer.hessian, alpha: solver.alpha, floorW: solver.floorW,
                                                       options: options, beta: beta)
            let gmax = ref.grad.map(abs).max()!
            XCTAssertGreaterThan(gmax, 0)
            for i in 0..<ref.grad.count {
                XCTAssertEqual(Double(solver.grad[i]), ref.grad[i], accuracy: 1e-4 * gmax, "β \(String(describing: beta)) element \(i)")
            }
            let (recon, reg) = solver.losses(beta: beta)
            XCTAssertEqual(recon, ref.recon, accuracy: 1e-4 * ref.recon)
            XCTAssertEqual(reg, ref.reg, accuracy: 1e-4 * max(ref.reg, 1e-6))
        }
    }

    func testFastExpLogMatchLibm() {
        let xs: [Float] = [1e-30, 1e-7, 0.01, 0.3, 0.5, 0.70710677, 0.7071068, 0.9999, 1, 1.5, 2, 10, 1e5, 3e38, 0.123, 0.999999]
        for x in xs {
            let ref = Foundation.log(Double(x))
            XCTAssertEqual(Double(fastLogf(x)), ref, accuracy: 2e-7 * max(1, abs(ref)), "log \(x)")
        }
        for x: Float in [-87, -20, -2.5, -1e-3, 0, 1e-3, 0.5, 1, 2.5, 20, 88] {
            let ref = Foundation.exp(Double(x))
            XCTAssertEqual(Double(fastExpf(x)), ref, accuracy: 3e-7 * ref, "exp \(x)")
        }
    }

    func testBeatsRTNWithinGridDeterministic() {
        let (rows, k) = (24, 96)
        let layer = TestLayer(rows: rows, k: k, samples: 400, seed: 21)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: rows, columns: k, grid: grid)
        let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid)
        let ada = WeightRounding.adaRound(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid, hessian: layer.hessian)
        XCTAssertEqual(ada.count, rows * k)
        let eRTN = layer.error(rtn, s), eAda = layer.error(ada, s)
        print("AdaRound 4-bit \(rows)x\(k): loss ratio vs RTN \(eAda / eRTN)")
        XCTAssertLessThan(eAda, 0.7 * eRTN)
        XCTAssertTrue(ada.allSatisfy { Int($0) >= grid.qmin && Int($0) <= grid.qmax })
        // Final rounding is floor + {0, 1}: within one step of RTN everywhere.
        XCTAssertTrue(zip(ada, rtn).allSatisfy { abs(Int($0) - Int($1)) <= 1 })
        XCTAssertGreaterThan(zip(ada, rtn).filter { $0 != $1 }.count, 0)
        // Same input → same output (also with a different thread split).
        let again = WeightRounding.adaRound(weights: layer.weights, rows: rows, columns: k, scales: s, grid: grid, hessian: layer.hessian)
        XCTAssertEqual(ada, again)
    }

    /// Without optimization the final rule floor + [α ≥ 0] with h(α₀) = frac is round-half-up: RTN except ties.
    func testZeroIterationsIsRoundToNearest() {
        let layer = TestLayer(rows: 8, k: 40, samples: 30, seed: 8)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: 8, columns: 40, grid: grid)
        let rtn = WeightRounding.roundToNearest(weights: layer.weights, rows: 8, columns: 40, scales: s, grid: grid)
        let ada = WeightRounding.adaRound(weights: layer.weights, rows: 8, columns: 40, scales: s, grid: grid,
                                          hessian: layer.hessian, options: AdaRoundOptions(iterations: 0))
        XCTAssertEqual(ada, rtn)
    }

    /// The regularizer drives h to {0, 1}: with λ = 0.01 (almost) every soft rounding is decided by the
    /// end; with λ = 0 many stay in between.
    func testRegularizerDecidesRounding() {
        let layer = TestLayer(rows: 8, k: 48, samples: 200, seed: 4)
        let grid = WeightGrid(bits: 4)
        let s = WeightRounding.mseScales(weights: layer.weights, rows: 8, columns: 48, grid: grid)
        func undecided(_ options: AdaRoundOptions) -> Int {
            let solver = AdaRoundSolver(weights: layer.weights, rows: 8, columns: 48, scales: s, grid: grid,
                                        hessian: layer.hessian, options: options)
            solver.run()
            solver.forward()
            return solver.h.filter { $0 > 0 && $0 < 1 }.count
        }
        XCTAssertLessThanOrEqual(undecided(AdaRoundOptions()), 8 * 48 / 100)
        XCTAssertGreaterThan(undecided(AdaRoundOptions(lambda: 0)), 8 * 48 / 10)
    }
}

extension AdaRoundTests {
    func testFastSqrt() {
        for x: Float in [0, 1e-30, 1e-12, 1e-7, 0.5, 1, 2, 3.7, 1e6, 1e30] {
            XCTAssertEqual(Double(fastSqrtf(x)), Double(x).squareRoot(), accuracy: 3e-7 * Double(x).squareRoot(), "\(x)")
        }
    }
}
