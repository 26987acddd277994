/* probe.c - the machine's limits, for the benchmarks (benchmarks/machine.py compiles and loads it).
 *
 *   probe_read(buf, bytes, threads, reps, out_s):  each of `threads` threads sums its contiguous
 *       slice of buf with the widest loads the CPU has (AVX-512, else AVX2, else 8-byte words),
 *       all starting together; out_s[r] = wall time of round r (the slowest thread's end).
 *   probe_int8dot(iters, threads, reps, out_s):  the int8 dot-product peak: each thread runs `iters`
 *       rounds of 16 (AVX2: 12) independent instances of the widest int8 multiply-add the CPU has:
 *       vpdpbusd zmm (AVX-512 VNNI, 64 u8 x s8 multiply-adds into int32), else vpmaddubsw ymm
 *       (AVX2, 32 u8 x s8 multiply-adds into int16 pairs); out_s[r] = wall time of round r.
 *       Returns the multiply-adds per iteration and thread, or -1 without AVX2.
 *   probe_int8dot_acc(iters, threads, reps, out_s):  the same with every vpmaddubsw result added
 *       into an int16 accumulator (vpaddw): the ceiling of an AVX2 int8 kernel that keeps its sums
 *       (without VNNI there is no multiply-accumulate).  -1 without AVX2.
 * Threads are made per round and start on a spin barrier; the time is taken by the first thread
 * from the barrier release to the last thread's finish.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    const uint8_t *p;
    size_t n;
    long iters;
    int kind;
    uint64_t sink;
} slice;

static atomic_int ready, go, finished;
static int nthreads;

__attribute__((target("avx512f"))) static uint64_t read512(const uint8_t *p, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 256 <= n; i += 256) {
        a = _mm512_add_epi64(a, _mm512_load_si512((const void *)(p + i)));
        b = _mm512_add_epi64(b, _mm512_load_si512((const void *)(p + i + 64)));
        c = _mm512_add_epi64(c, _mm512_load_si512((const void *)(p + i + 128)));
        d = _mm512_add_epi64(d, _mm512_load_si512((const void *)(p + i + 192)));
    }
    a = _mm512_add_epi64(_mm512_add_epi64(a, b), _mm512_add_epi64(c, d));
    return (uint64_t)_mm512_reduce_add_epi64(a);
}

__attribute__((target("avx2"))) static uint64_t read256(const uint8_t *p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(p + i + 64)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, a);
    return t[0] + t[1] + t[2] + t[3];
}

static uint64_t read64(const uint8_t *p, size_t n) {
    const uint64_t *q = (const uint64_t *)p;
    uint64_t a = 0, b = 0;
    for (size_t i = 0; i + 2 <= n / 8; i += 2) {
        a += q[i];
        b += q[i + 1];
    }
    return a + b;
}

/* 16 independent accumulators as named variables (an array can end up in memory). */
#define REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define REP16(X) REP12(X) X(12) X(13) X(14) X(15)

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static uint64_t dpbusd_loop(long iters) {
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-5);
#define INIT(j) __m512i a##j = _mm512_set1_epi32(j);
#define STEP(j) a##j = _mm512_dpbusd_epi32(a##j, u, s);
#define KEEP(j) __asm__ volatile("" : "+v"(a##j));
#define SUM(j) t = _mm512_add_epi32(t, a##j);
    REP16(INIT)
    for (long i = 0; i < iters; ++i) {
        REP16(STEP)
        REP16(KEEP)
    }
    __m512i t = _mm512_setzero_si512();
    REP16(SUM)
#undef INIT
#undef STEP
#undef SUM
    return (uint64_t)(uint32_t)_mm512_reduce_add_epi32(t);
}

__attribute__((target("avx2"))) static uint64_t maddubs_loop(long iters) {
    const __m256i s = _mm256_set1_epi8(-5);
    /* each result feeds only its own next multiply (as the u8 operand): 12 independent chains
     * (with the constant, 13 of the 16 ymm registers: nothing spills) */
#define INIT(j) __m256i a##j = _mm256_set1_epi8((char)(j + 1));
#define STEP(j) a##j = _mm256_maddubs_epi16(a##j, s);
#define SUM(j) t = _mm256_add_epi16(t, a##j);
    REP12(INIT)
    for (long i = 0; i < iters; ++i) {
        REP12(STEP)
        REP12(KEEP)
    }
    __m256i t = _mm256_setzero_si256();
    REP12(SUM)
    return (uint64_t)(uint32_t)_mm256_extract_epi32(t, 0);
}

/* The rate a kernel that keeps its sums can reach on AVX2: each vpmaddubsw result is added into
 * one of 12 int16 accumulators (vpaddw), as every u8 x s8 kernel without VNNI must do; the
 * multiplies take only loop-invariant registers, so nothing but issue limits it.  On Zen 3 this
 * is ~82% of maddubs_loop's rate. */
__attribute__((target("avx2"))) static uint64_t maddubs_acc_loop(long iters) {
#if defined(__GNUC__)
    __m256i u0 = _mm256_set1_epi8(1), u1 = _mm256_set1_epi8(2), s = _mm256_set1_epi8(-3);
    REP12(INIT)
    for (long i = 0; i < iters; ++i) {
#define MA(j, u) "vpmaddubsw %[s], %[" #u "], %%ymm15\n\tvpaddw %%ymm15, %[a" #j "], %[a" #j "]\n\t"
        __asm__ volatile(MA(0, u0) MA(1, u1) MA(2, u0) MA(3, u1) MA(4, u0) MA(5, u1) MA(6, u0) MA(7, u1)
                         MA(8, u0) MA(9, u1) MA(10, u0) MA(11, u1)
                         : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4),
                           [a5] "+x"(a5), [a6] "+x"(a6), [a7] "+x"(a7), [a8] "+x"(a8), [a9] "+x"(a9),
                           [a10] "+x"(a10), [a11] "+x"(a11)
                         : [u0] "x"(u0), [u1] "x"(u1), [s] "x"(s)
                         : "xmm15");
#undef MA
    }
    __m256i t = _mm256_setzero_si256();
    REP12(SUM)
    return (uint64_t)(uint32_t)_mm256_extract_epi32(t, 0);
#else
    (void)iters;
    return 0;
#endif
}

static void *run(void *arg) {
    slice *s = (slice *)arg;
    atomic_fetch_add(&ready, 1);
    while (!atomic_load(&go)) __asm__ volatile("pause");
    if (s->kind == 0) s->sink = read512(s->p, s->n);
    else if (s->kind == 1) s->sink = read256(s->p, s->n);
    else if (s->kind == 2) s->sink = read64(s->p, s->n);
    else if (s->kind == 3) s->sink = dpbusd_loop(s->iters);
    else if (s->kind == 4) s->sink = maddubs_loop(s->iters);
    else s->sink = maddubs_acc_loop(s->iters);
    atomic_fetch_add(&finished, 1);
    return NULL;
}

static double round_of(slice *sl, int threads) {
    pthread_t tid[256];
    atomic_store(&ready, 0);
    atomic_store(&go, 0);
    atomic_store(&finished, 0);
    for (int t = 1; t < threads; ++t) pthread_create(&tid[t], NULL, run, &sl[t]);
    while (atomic_load(&ready) < threads - 1) __asm__ volatile("pause");
    double t0 = now();
    atomic_store(&go, 1);
    run(&sl[0]);
    while (atomic_load(&finished) < threads) __asm__ volatile("pause");
    double dt = now() - t0;
    for (int t = 1; t < threads; ++t) pthread_join(tid[t], NULL);
    return dt;
}

int probe_kind(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 0;
    if (__builtin_cpu_supports("avx2")) return 1;
    return 2;
}

int probe_has_vnni512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
}

/* buf: 64-byte aligned, bytes a multiple of 256 * threads. */
int probe_read(const uint8_t *buf, size_t bytes, int threads, int reps, double *out_s) {
    if (threads < 1 || threads > 256) return -1;
    slice sl[256];
    size_t per = bytes / (size_t)threads / 256 * 256;
    int kind = probe_kind();
    for (int t = 0; t < threads; ++t) sl[t] = (slice){buf + (size_t)t * per, per, 0, kind, 0};
    nthreads = threads;
    for (int r = 0; r < reps; ++r) out_s[r] = round_of(sl, threads);
    return 0;
}

/* As probe_int8dot with the accumulating AVX2 loop (maddubs_acc_loop); -1 without AVX2. */
int probe_int8dot_acc(long iters, int threads, int reps, double *out_s) {
    if (threads < 1 || threads > 256 || !__builtin_cpu_supports("avx2")) return -1;
    slice sl[256];
    for (int t = 0; t < threads; ++t) sl[t] = (slice){NULL, 0, iters, 5, 0};
    for (int r = 0; r < reps; ++r) out_s[r] = round_of(sl, threads);
    return 12 * 32;
}

int probe_int8dot(long iters, int threads, int reps, double *out_s) {
    if (threads < 1 || threads > 256) return -1;
    int kind = probe_has_vnni512() ? 3 : (__builtin_cpu_supports("avx2") ? 4 : -1);
    if (kind < 0) return -1;
    slice sl[256];
    for (int t = 0; t < threads; ++t) sl[t] = (slice){NULL, 0, iters, kind, 0};
    for (int r = 0; r < reps; ++r) out_s[r] = round_of(sl, threads);
    return kind == 3 ? 16 * 64 : 12 * 32; /* multiply-adds per iteration and thread */
}
