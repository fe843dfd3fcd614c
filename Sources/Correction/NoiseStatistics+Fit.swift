//===--- NoiseStatistics+Fit.swift - PTQD and D2-DPM parameters from sums ---===//
//
// Per step (PTQD spec §3.1–3.3, beyond-ptqd D2-DPM):
//   k      = OLS slope (with intercept) of Δ on ε_fp over all elements; clamped at 0 if `clampK`.
//   bias_c = mean_c(Δ)                     (.total)   or  mean_c(Δ − k·ε_fp)   (.residual).
//   σ_q    = mean over samples of the per-sample unbiased std of Δ − k·ε_fp.
//   D2     : regression of Δ on ε_q = ε_fp + Δ. With per-channel intercepts the slope is the pooled
//            within-channel one, β = Σ_c S_xy,c / Σ_c S_xx,c, intercept_c = ȳ_c − β·x̄_c, and the
//            conditional variance is the residual sum of squares over (n − C − 1) degrees of freedom
//            (n − 2 with one intercept).
//
//===----------------------------------------------------------------------===//

extension NoiseStatistics {
    /// Fits the correction table (rows in sampling order, like `timesteps`).
    /// Steps without samples get k = σ_q = bias = 0 and `count` 0.
    public func fit(_ options: FitOptions = FitOptions()) -> CorrectionTable {
        let cN = channels
        var k = [Float](), kRaw = [Float](), sigmaQ = [Float](), snrQs = [Float]()
        var bias = [[Float]](), d2Slope = [Float](), d2Intercept = [[Float]](), d2Sigma = [Float](), count = [Int]()
        let zeros = [Float](repeating: 0, count: cN)
        for (i, s) in steps.enumerated() {
            count.append(s.samples)
            guard s.samples > 0 else {
                k.append(0); kRaw.append(0); sigmaQ.append(0); snrQs.append(0); bias.append(zeros)
                d2Slope.append(0); d2Intercept.append(zeros); d2Sigma.append(0)
                continue
            }
            let raw = slope(at: i)
            let kk = options.clampK ? max(raw, 0) : raw
            kRaw.append(Float(raw)); k.append(Float(kk))
            sigmaQ.append(Float(residualStd(at: i, k: kk)))
            let q = self.snrQ(at: i)
            snrQs.append(q.isFinite ? Float(min(q, Double(Float.greatestFiniteMagnitude))) : .greatestFiniteMagnitude)

            let n = Double(s.elements), nc = n / Double(cN)
            bias.append((0..<cN).map { c in
                switch options.biasMode {
                case .total: return Float(s.sumDChannel[c] / nc)
                case .residual: return Float((s.sumDChannel[c] - kk * s.sumEChannel[c]) / nc)
                }
            })

            // D2: x = ε_q = ε + Δ, y = Δ.
            let sx = s.sumE + s.sumD, sy = s.sumD
            let sxx = s.sumE2 + 2 * s.sumED + s.sumD2, sxy = s.sumED + s.sumD2, syy = s.sumD2
            let xc = (0..<cN).map { s.sumEChannel[$0] + s.sumDChannel[$0] }, yc = s.sumDChannel
            var cxx: Double, cxy: Double, cyy: Double, dof: Double
            if options.d2PerChannelIntercept {
                cxx = sxx; cxy = sxy; cyy = syy
                for c in 0..<cN { cxx -= xc[c] * xc[c] / nc; cxy -= xc[c] * yc[c] / nc; cyy -= yc[c] * yc[c] / nc }
                dof = n - Double(cN) - 1
            } else {
                cxx = sxx - sx * sx / n; cxy = sxy - sx * sy / n; cyy = syy - sy * sy / n
                dof = n - 2
            }
            let beta = cxx > 0 ? cxy / cxx : 0
            d2Slope.append(Float(beta))
            if options.d2PerChannelIntercept {
                d2Intercept.append((0..<cN).map { Float((yc[$0] - beta * xc[$0]) / nc) })
            } else {
                d2Intercept.append([Float](repeating: Float((sy - beta * sx) / n), count: cN))
            }
            d2Sigma.append(Float((max(cyy - beta * cxy, 0) / max(dof, 1)).squareRoot()))
        }
        let snrF = options.alphasCumprod.map { ac in timesteps.map { Float(StepSNR.signalToNoise(alphaCumprod: ac[$0])) } }
        return CorrectionTable(timesteps: timesteps, k: k, kRaw: kRaw, sigmaQ: sigmaQ, bias: bias, snrQ: snrQs, snrF: snrF,
                               d2Slope: d2Slope, d2Intercept: d2Intercept, d2Sigma: d2Sigma, count: count,
                               biasMode: options.biasMode, clampK: options.clampK)
    }
}
