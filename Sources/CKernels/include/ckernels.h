//===--- ckernels.h - memory-bound fp32/u8 kernels, one body per x86 ISA ------===//
//
// The loops oneDNN does not cover (SiLU, GroupNorm's sums and affine pass, softmax rows,
// elementwise adds, the activation quantizer), written once over 16-lane clang vectors
// (body.inc) and compiled three times: for x86-64 baseline (SSE2), AVX2+FMA and AVX-512.
// The variant is chosen at run time from CPUID, so a plain `swift build -c release` is as fast
// as a build for the host CPU, and a package that depends on us gets the same speed.
//
// Every variant computes bit-identical results: the same operations in the same order, no implicit FMA
// contraction (`#pragma clang fp contract(off)`; the vector exp fuses its multiply-adds explicitly, in every
// variant, the generic one through libm's fmaf), rounding by the same magic-number add. The
// tests run each variant the machine supports against the plain references in Swift
// (`TensorCore.Reference`) and against each other.
//
// `PTQD_MAX_ISA=generic|avx2|avx512` in the environment caps the choice (like oneDNN's
// ONEDNN_MAX_CPU_ISA); `ptqd_isa_set` changes it at run time (tests).
//
//===----------------------------------------------------------------------===//
#ifndef PTQD_CKERNELS_H
#define PTQD_CKERNELS_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Instruction-set levels of the kernel variants.
enum { PTQD_ISA_GENERIC = 0, PTQD_ISA_AVX2 = 1, PTQD_ISA_AVX512 = 2 };

/// Whether this CPU can run variant `isa` (AVX2 needs AVX2+FMA; AVX-512 needs F, BW, DQ, VL).
int ptqd_isa_supported(int isa);
/// The variant in use: the best supported level, capped by PTQD_MAX_ISA.
int ptqd_isa_active(void);
/// Selects variant `isa` if supported (else the best supported level below it); returns the level in use.
int ptqd_isa_set(int isa);
/// "generic", "avx2" or "avx512".
const char *ptqd_isa_name(int isa);

/// x[i] ← x[i]·σ(x[i]), n floats.
void ptqd_silu_inplace(float *x, long n);
/// y[i] = exp(x[i]) (Cephes polynomial, inputs clamped to [-87.3, 88.7]; relative error < 2e-7).
void ptqd_exp(const float *x, float *y, long n);
/// sum[c] += Σ_p x[p·C + c], sumsq[c] += Σ_p x[p·C + c]², over `pixels` rows of C channels.
/// Accumulates in float over the rows given (callers pass blocks of ≤ 64 rows and fold into double).
void ptqd_channel_sums(const float *x, long pixels, long channels, float *sum, float *sumsq);
/// dst[p·C + c] = src[p·C + c]·scale[c] + shift[c], then SiLU if `silu`; dst may equal src.
void ptqd_channel_affine(const float *src, float *dst, long pixels, long channels,
                         const float *scale, const float *shift, int silu);
/// One row of softmax(scale·x) in place (scale > 0): exp(scale·x − scale·max) / Σ.
void ptqd_softmax_row(float *row, long n, float scale);
/// dst[i] = a[i] + b[i]·scale (dst may alias a or b).
void ptqd_add_scaled(float *dst, const float *a, const float *b, long n, float scale);
/// dst[i] = (a[i] + b[i]) / divisor (dst may alias a or b); divisor 1 skips the division.
void ptqd_residual(float *dst, const float *a, const float *b, long n, float divisor);
/// x[i] ← x[i]·s.
void ptqd_scale(float *x, long n, float s);
/// dst[i] = clamp(round_half_even(x[i]·inv) + z, 0, hi) as u8 (z, hi integers in 0...255).
void ptqd_quantize_u8(const float *x, uint8_t *dst, long n, float inv, float z, float hi);
/// dst[i] = quantize_u8(y) with y = x[i]·a[i] + b[i], then SiLU if `silu`: GroupNorm's affine pass fused with the
/// activation quantizer; the same bytes as ptqd_channel_affine followed by ptqd_quantize_u8.
void ptqd_affine_quantize_u8(const float *x, uint8_t *dst, long n, const float *a, const float *b, int silu, float inv,
                             float z, float hi);
/// A run of `pixels` pixels of `c` channels into an integer layer's u8 input, in one call: pixel p reads
/// src + (p >> shift)·src_stride (shift 1: nearest ×2 upsampling along the run) and writes dst + p·dst_stride, then
/// copies its c bytes to the next c when `dup` (hi/lo weight halves). mode 0: ptqd_quantize_u8 of the c values;
/// 1: ptqd_affine_quantize_u8 with a, b (c channels, shared by the run) and no SiLU; 2: with SiLU. The same bytes as
/// one of those calls per pixel.
void ptqd_quantize_pixels_u8(const float *src, long src_stride, int shift, long pixels, long c, uint8_t *dst,
                             long dst_stride, int dup, const float *a, const float *b, int mode, float inv, float z,
                             float hi);
/// out[i] = h[i]·GELU(g[i]) with GELU(g) = ½·g·(1 + erf(g/√2)) (GEGLU's two halves of one row, n values each).
/// erf by a vectorized approximation: absolute error of 1 + erf ≤ 2e-7 (PyTorch's CPU erf: 1.5e-7), relative
/// error of its negative tail (|z| ≤ 9) ≤ 2e-5; 0 beyond.
void ptqd_geglu(const float *h, const float *g, float *out, long n);
/// One row of LayerNorm over d values: y = ((x − mean)·(1/√(var + eps)))·gamma + beta (biased variance, float sums
/// over 16 lanes in a fixed order).
void ptqd_layer_norm_row(const float *x, float *y, long d, const float *gamma, const float *beta, float eps);
/// One row of quantized attention probabilities from integer scores (the integer attention's softmax): scratch[j] =
/// (float)(raw[j] + row + col[j])·sqk, then ptqd_softmax_row(scratch, n, scale), then out[j] =
/// ptqd_quantize_u8 levels of scratch[j] with zero point 0 (inv = 1/step, hi = largest level). Returns Σ out[j].
/// The same bytes as those three steps run one after another. scratch: n floats; it may not alias raw.
long ptqd_int_softmax_u8(const int32_t *raw, long n, int32_t row, const int32_t *col, float sqk, float scale, float *scratch,
                         uint8_t *out, float inv, float hi);
/// x[i] ← (clamp(round_half_even(x[i]·inv) + z, 0, hi) − z)·s: the values the integer path computes with.
void ptqd_fake_quantize(float *x, long n, float inv, float z, float hi, float s);
/// dst[i] = bfloat16(x[i]), round to nearest even (NaN stays a quiet NaN): the upper 16 bits of the rounded float.
void ptqd_f32_to_bf16(const float *x, uint16_t *dst, long n);

// MARK: - Peak-throughput microbenchmarks (peak.c)

/// Instruction mixes timed by `ptqd bench` to measure this machine's peak (never derived from a clock).
enum {
    PTQD_PEAK_FP32_AVX2 = 0,     ///< vfmadd231ps ymm, 12 independent chains: 16 FLOP per instruction
    PTQD_PEAK_FP32_AVX512 = 1,   ///< vfmadd231ps zmm, 24 chains: 32 FLOP per instruction
    PTQD_PEAK_INT8_AVX2 = 2,     ///< vpmaddubsw + vpmaddwd + vpaddd ymm (oneDNN's int8 path without VNNI): 64 OP per triple
    PTQD_PEAK_INT8_AVX512 = 3,   ///< the same on zmm (AVX-512BW without VNNI): 128 OP per triple
    PTQD_PEAK_INT8_VNNI512 = 4,  ///< vpdpbusd zmm (AVX512-VNNI), 24 chains: 128 OP (64 MAC) per instruction
    PTQD_PEAK_INT8_AMX = 5,      ///< tdpbusd (AMX-INT8), 4 independent tile accumulators: 32768 OP (16·16·64 MAC) per instruction
    PTQD_PEAK_COUNT = 6
};
/// Whether this CPU can run mix `kind`.
int ptqd_peak_supported(int kind);
/// Operations (FLOP or integer OP, 2 per multiply-add) one iteration of mix `kind` performs.
long ptqd_peak_ops_per_iteration(int kind);
/// Runs `iterations` iterations of mix `kind` on the calling thread; returns a value that depends on every result.
float ptqd_peak_run(int kind, long iterations);

#ifdef __cplusplus
}
#endif
#endif
