//===--- kernels.c - ISA variants of the memory-bound kernels and their dispatch ---===//
//
// body.inc is compiled three times, once per target attribute (no build flags needed: the
// attributes enable the ISA per function). A function-pointer table per variant; the active
// table is chosen once from CPUID (capped by PTQD_MAX_ISA) and can be switched by ptqd_isa_set.
//
//===----------------------------------------------------------------------===//
#include "ckernels.h"
#include <stdlib.h>
#include <string.h>

#pragma clang fp contract(off)
// The static inline vector helpers are always inlined, so the vector-ABI warning does not apply.
#pragma clang diagnostic ignored "-Wpsabi"

typedef float vf __attribute__((ext_vector_type(16)));
typedef int32_t vi __attribute__((ext_vector_type(16)));
typedef uint8_t vu8 __attribute__((ext_vector_type(16)));
#define splat(x) ((vf)(x))

struct kernel_table {
    void (*silu_inplace)(float *, long);
    void (*exp)(const float *, float *, long);
    void (*channel_sums)(const float *, long, long, float *, float *);
    void (*channel_affine)(const float *, float *, long, long, const float *, const float *, int);
    void (*softmax_row)(float *, long, float);
    void (*add_scaled)(float *, const float *, const float *, long, float);
    void (*residual)(float *, const float *, const float *, long, float);
    void (*scale)(float *, long, float);
    void (*quantize_u8)(const float *, uint8_t *, long, float, float, float);
    void (*fake_quantize)(float *, long, float, float, float, float);
    void (*f32_to_bf16)(const float *, uint16_t *, long);
    void (*affine_quantize_u8)(const float *, uint8_t *, long, const float *, const float *, int, float, float, float);
    void (*quantize_pixels_u8)(const float *, long, int, long, long, uint8_t *, long, int, const float *, const float *, int,
                               float, float, float);
    void (*geglu)(const float *, const float *, float *, long);
    void (*layer_norm_row)(const float *, float *, long, const float *, const float *, float);
    long (*int_softmax_u8)(const int32_t *, long, int32_t, const int32_t *, float, float, float *, uint8_t *, float, float);
};

#define TARGET
#define V(name) generic_##name
#include "body.inc"
#undef TARGET
#undef V

#define TARGET __attribute__((target("avx2,fma")))
#define V(name) avx2_##name
#include "body.inc"
#undef TARGET
#undef V

#define TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define V(name) avx512_##name
#include "body.inc"
#undef TARGET
#undef V

static const struct kernel_table *const tables[3] = {&generic_table, &avx2_table, &avx512_table};
static const struct kernel_table *active = &generic_table;
static int active_level = PTQD_ISA_GENERIC;

int ptqd_isa_supported(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case PTQD_ISA_GENERIC: return 1;
    case PTQD_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case PTQD_ISA_AVX512:
        return ptqd_isa_supported(PTQD_ISA_AVX2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    default: return 0;
    }
}

int ptqd_isa_set(int isa) {
    if (isa > PTQD_ISA_AVX512) isa = PTQD_ISA_AVX512;
    while (isa > PTQD_ISA_GENERIC && !ptqd_isa_supported(isa)) isa--;
    if (isa < PTQD_ISA_GENERIC) isa = PTQD_ISA_GENERIC;
    active_level = isa;
    active = tables[isa];
    return isa;
}

int ptqd_isa_active(void) { return active_level; }

const char *ptqd_isa_name(int isa) {
    switch (isa) {
    case PTQD_ISA_AVX2: return "avx2";
    case PTQD_ISA_AVX512: return "avx512";
    default: return "generic";
    }
}

__attribute__((constructor)) static void ptqd_isa_init(void) {
    int cap = PTQD_ISA_AVX512;
    const char *e = getenv("PTQD_MAX_ISA");
    if (e && *e) {
        if (!strcasecmp(e, "generic") || !strcasecmp(e, "sse2") || !strcasecmp(e, "none")) cap = PTQD_ISA_GENERIC;
        else if (!strcasecmp(e, "avx2")) cap = PTQD_ISA_AVX2;
    }
    ptqd_isa_set(cap);
}

void ptqd_silu_inplace(float *x, long n) { active->silu_inplace(x, n); }
void ptqd_exp(const float *x, float *y, long n) { active->exp(x, y, n); }
void ptqd_channel_sums(const float *x, long p, long c, float *s, float *q) { active->channel_sums(x, p, c, s, q); }
void ptqd_channel_affine(const float *src, float *dst, long p, long c, const float *a, const float *b, int silu) {
    active->channel_affine(src, dst, p, c, a, b, silu);
}
void ptqd_softmax_row(float *row, long n, float scale) { active->softmax_row(row, n, scale); }
void ptqd_add_scaled(float *dst, const float *a, const float *b, long n, float s) { active->add_scaled(dst, a, b, n, s); }
void ptqd_residual(float *dst, const float *a, const float *b, long n, float d) { active->residual(dst, a, b, n, d); }
void ptqd_scale(float *x, long n, float s) { active->scale(x, n, s); }
void ptqd_quantize_u8(const float *x, uint8_t *dst, long n, float inv, float z, float hi) {
    active->quantize_u8(x, dst, n, inv, z, hi);
}
void ptqd_fake_quantize(float *x, long n, float inv, float z, float hi, float s) { active->fake_quantize(x, n, inv, z, hi, s); }
void ptqd_f32_to_bf16(const float *x, uint16_t *dst, long n) { active->f32_to_bf16(x, dst, n); }
void ptqd_affine_quantize_u8(const float *x, uint8_t *dst, long n, const float *a, const float *b, int silu, float inv,
                             float z, float hi) {
    active->affine_quantize_u8(x, dst, n, a, b, silu, inv, z, hi);
}
void ptqd_quantize_pixels_u8(const float *src, long src_stride, int shift, long pixels, long c, uint8_t *dst,
                             long dst_stride, int dup, const float *a, const float *b, int mode, float inv, float z,
                             float hi) {
    active->quantize_pixels_u8(src, src_stride, shift, pixels, c, dst, dst_stride, dup, a, b, mode, inv, z, hi);
}
void ptqd_geglu(const float *h, const float *g, float *out, long n) { active->geglu(h, g, out, n); }
void ptqd_layer_norm_row(const float *x, float *y, long d, const float *g, const float *b, float eps) {
    active->layer_norm_row(x, y, d, g, b, eps);
}
long ptqd_int_softmax_u8(const int32_t *raw, long n, int32_t row, const int32_t *col, float sqk, float scale, float *scratch,
                         uint8_t *out, float inv, float hi) {
    return active->int_softmax_u8(raw, n, row, col, sqk, scale, scratch, out, inv, hi);
}
