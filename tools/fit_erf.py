#!/usr/bin/env python3
"""Fits the two polynomials of the C kernels' GELU factor 1 + erf(z) (Sources/CKernels/body.inc, gelu_factor).

  |z| < 1:      1 + erf(z) = 1 + z·P(z²)            P degree 7, least squares on Chebyshev nodes of z² in [0, 1]
  1 ≤ |z| ≤ 9:  erfc(|z|) = exp(−z²)·u·Q(u), u = 1/|z|   Q degree 8, relative least squares on u in [1/9, 1]

Reference values from mpmath at 40 digits; the fit is then evaluated as the kernel does (float32 Horner steps, no
FMA) over g in [−13, 13] (z = g/√2) and its worst absolute and relative errors printed. Reference tool only.
Usage: .venv-tools/bin/python tools/fit_erf.py
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 40
f32 = np.float32


def chebyshev_nodes(a, b, n):
    k = np.arange(n)
    return (a + b) / 2 + (b - a) / 2 * np.cos((2 * k + 1) * np.pi / (2 * n))


def fit_inner(degree):
    w = chebyshev_nodes(0, 1, 400)
    z = np.sqrt(w)
    y = np.array([float(mp.erf(mp.mpf(v)) / mp.mpf(v)) for v in z])
    return np.polynomial.polynomial.polyfit(w, y, degree)


def fit_outer(degree, lo=1 / 9.0):
    u = chebyshev_nodes(lo, 1, 400)
    t = 1 / u
    y = np.array([float(mp.erfc(mp.mpf(v)) * mp.exp(mp.mpf(v) ** 2) * mp.mpf(v)) for v in t])
    return np.polynomial.polynomial.polyfit(u, y, degree, w=1 / y)


def horner(c, x):
    r = np.full_like(x, f32(c[-1]))
    for k in range(len(c) - 2, -1, -1):
        r = (r * x + f32(c[k])).astype(f32)
    return r


def factor(z, p, q):
    z = z.astype(f32)
    a, w = np.abs(z), (z * z).astype(f32)
    inner = (f32(1) + (z * horner(p, w)).astype(f32)).astype(f32)
    u = (f32(1) / np.maximum(a, f32(1))).astype(f32)
    e = (np.exp(-w.astype(np.float64)).astype(f32) * (horner(q, u) * u).astype(f32)).astype(f32)
    e = np.where(a > f32(9), f32(0), e)
    return np.where(a < f32(1), inner, np.where(z < 0, e, (f32(2) - e).astype(f32)))


def main():
    p, q = fit_inner(7), fit_outer(8)
    g = np.linspace(-13, 13, 40001).astype(f32)
    z = (g * f32(0.70710678118654752)).astype(f32)
    got = factor(z, p, q).astype(np.float64)
    ref = np.array([float(1 + mp.erf(mp.mpf(float(v)))) for v in z])
    nz = ref > 1e-30
    print("P:", ", ".join("%.9e" % f32(v) for v in p))
    print("Q:", ", ".join("%.9e" % f32(v) for v in q))
    print("max |error| of 1 + erf: %.2e; max relative error: %.2e" %
          (np.max(np.abs(got - ref)), np.max(np.abs(got - ref)[nz] / ref[nz])))


if __name__ == "__main__":
    main()
