//===--- peak.c - instruction mixes that measure this CPU's arithmetic peak ---===//
//
// Each mix is a loop of independent dependency chains (more chains than latency × pipes), so the
// loop runs at the throughput of its instruction. `ptqd bench` times them on every thread at once
// and reports conv efficiency against the measured rate, not against a clock read from /proc/cpuinfo
// (which is the base clock on these VMs, while the cores boost far higher).
//
//===----------------------------------------------------------------------===//
#include "ckernels.h"
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#define VNNI512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

static AVX2 float fp32_avx2(long n) {
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 12; k++) a[k] = _mm256_fmadd_ps(a[k], m, c);
    __m256 s = a[0];
    for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
    return _mm256_cvtss_f32(s);
}

static AVX512 float fp32_avx512(long n) {
    __m512 a[24], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < 24; k++) a[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 24; k++) a[k] = _mm512_fmadd_ps(a[k], m, c);
    __m512 s = a[0];
    for (int k = 1; k < 24; k++) s = _mm512_add_ps(s, a[k]);
    return _mm512_reduce_add_ps(s);
}

// Each chain has its own activation vector, made opaque every iteration (an empty asm that claims to change
// it), so the compiler can neither hoist the products out of the loop nor share them between chains.
static AVX2 float int8_avx2(long n) {
    __m256i acc[8], u[8], w = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
    for (int k = 0; k < 8; k++) { acc[k] = _mm256_set1_epi32(k); u[k] = _mm256_set1_epi8((char)(3 + k)); }
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 8; k++) {
            __asm__ volatile("" : "+x"(u[k]));
            acc[k] = _mm256_add_epi32(acc[k], _mm256_madd_epi16(_mm256_maddubs_epi16(u[k], w), ones));
        }
    __m256i s = acc[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_epi32(s, acc[k]);
    return (float)_mm256_extract_epi32(s, 0);
}

static AVX512 float int8_avx512(long n) {
    __m512i acc[12], u[12], w = _mm512_set1_epi8(-2), ones = _mm512_set1_epi16(1);
    for (int k = 0; k < 12; k++) { acc[k] = _mm512_set1_epi32(k); u[k] = _mm512_set1_epi8((char)(3 + k)); }
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 12; k++) {
            __asm__ volatile("" : "+v"(u[k]));
            acc[k] = _mm512_add_epi32(acc[k], _mm512_madd_epi16(_mm512_maddubs_epi16(u[k], w), ones));
        }
    __m512i s = acc[0];
    for (int k = 1; k < 12; k++) s = _mm512_add_epi32(s, acc[k]);
    return (float)_mm512_reduce_add_epi32(s);
}

static VNNI512 float int8_vnni512(long n) {
    __m512i acc[24], u = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2);
    for (int k = 0; k < 24; k++) acc[k] = _mm512_set1_epi32(k);
    for (long i = 0; i < n; i++)
        for (int k = 0; k < 24; k++) acc[k] = _mm512_dpbusd_epi32(acc[k], u, w);
    __m512i s = acc[0];
    for (int k = 1; k < 24; k++) s = _mm512_add_epi32(s, acc[k]);
    return (float)_mm512_reduce_add_epi32(s);
}

#define AMX __attribute__((target("amx-tile,amx-int8,avx512f")))

/// Linux keeps AMX tile data off until a process asks (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA = 18).
static int amx_permitted(void) {
    static int state = -1;
    if (state < 0) state = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
    return state;
}

static AMX float int8_amx(long n) {
    struct __attribute__((packed)) { uint8_t palette, start; uint8_t reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
    _tile_loadconfig(&cfg);
    static int8_t a[16 * 64] __attribute__((aligned(64))), b[16 * 64] __attribute__((aligned(64)));
    static int32_t c[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 64; i++) { a[i] = 1; b[i] = 1; }
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_loadd(4, a, 64); _tile_loadd(5, b, 64); _tile_loadd(6, a, 64); _tile_loadd(7, b, 64);
    for (long i = 0; i < n; i++) {
        _tile_dpbusd(0, 4, 5); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 6, 5); _tile_dpbusd(3, 6, 7);
    }
    _tile_stored(0, c, 64);
    _tile_release();
    return (float)c[0];
}

int ptqd_peak_supported(int kind) {
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    switch (kind) {
    case PTQD_PEAK_FP32_AVX2: case PTQD_PEAK_INT8_AVX2: return avx2;
    case PTQD_PEAK_FP32_AVX512: case PTQD_PEAK_INT8_AVX512: return avx512;
    case PTQD_PEAK_INT8_VNNI512: return avx512 && __builtin_cpu_supports("avx512vnni");
    case PTQD_PEAK_INT8_AMX: return avx512 && __builtin_cpu_supports("amx-int8") && amx_permitted();
    default: return 0;
    }
}

long ptqd_peak_ops_per_iteration(int kind) {
    switch (kind) {
    case PTQD_PEAK_FP32_AVX2: return 12L * 8 * 2;
    case PTQD_PEAK_FP32_AVX512: return 24L * 16 * 2;
    case PTQD_PEAK_INT8_AVX2: return 8L * 32 * 2;
    case PTQD_PEAK_INT8_AVX512: return 12L * 64 * 2;
    case PTQD_PEAK_INT8_VNNI512: return 24L * 64 * 2;
    case PTQD_PEAK_INT8_AMX: return 4L * 16 * 16 * 64 * 2;
    default: return 0;
    }
}

float ptqd_peak_run(int kind, long n) {
    if (!ptqd_peak_supported(kind)) return 0;
    switch (kind) {
    case PTQD_PEAK_FP32_AVX2: return fp32_avx2(n);
    case PTQD_PEAK_FP32_AVX512: return fp32_avx512(n);
    case PTQD_PEAK_INT8_AVX2: return int8_avx2(n);
    case PTQD_PEAK_INT8_AVX512: return int8_avx512(n);
    case PTQD_PEAK_INT8_VNNI512: return int8_vnni512(n);
    case PTQD_PEAK_INT8_AMX: return int8_amx(n);
    default: return 0;
    }
}
