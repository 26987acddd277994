/* pool.c - a persistent worker pool.
 *
 * bne_set_threads(n) starts n-1 workers (the caller is the n-th).  A job is a
 * range [0, n) handed out in chunks of `grain` (see the protocol below).
 * Workers spin briefly on the job generation before sleeping on a condition
 * variable, so back-to-back GEMVs do not pay a wake-up each.  One job runs at a
 * time; a second caller that finds the pool busy runs its job on its own thread
 * (same results, no deadlock).  Built with BNE_NO_THREADS (freestanding
 * targets) the pool runs everything on the caller's thread.
 */
#if !defined(BNE_NO_THREADS) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#endif
#include "bne_internal.h"

#define BNE_MAX_THREADS 256

#if defined(BNE_NO_THREADS)

uint64_t bne_now_ns(void) { return 0; }

int bne_set_threads(int n) { return n == 1 ? BNE_OK : (n < 1 ? BNE_ERR_THREADS : BNE_OK); }
int bne_get_threads(void) { return 1; }
void bne_pool_run(bne_range_fn fn, void *ctx, size_t n, size_t grain) {
    (void)grain;
    if (n) fn(ctx, 0, n);
}
void bne_pool_run_pf(bne_range_fn fn, void *ctx, size_t n, size_t grain, const void *pf, size_t pf_bytes) {
    (void)pf;
    (void)pf_bytes;
    bne_pool_run(fn, ctx, n, grain);
}

#else
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

uint64_t bne_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Job protocol.  `ticket` packs (job generation << 32 | next chunk index).  A thread claims a
 * chunk with a CAS that only succeeds while the generation is the one it read the job fields
 * under, so a late worker can never run a chunk of a job that has moved on.  The submitter waits
 * for `done` == number of chunks, not for every worker to check in: a worker that wakes late
 * (descheduled on a busy machine) costs nothing. */
static struct {
    pthread_mutex_t mu;       /* guards the condvar and `stop` */
    pthread_cond_t cv;
    pthread_mutex_t job_mu;   /* one job at a time */
    pthread_t tids[BNE_MAX_THREADS];
    int nworkers;             /* threads besides the caller */
    int stop;
    _Atomic uint64_t ticket;  /* generation << 32 | next chunk */
    atomic_size_t done;       /* chunks finished in the current job */
    bne_range_fn fn;          /* job fields: written before the generation is published */
    void *ctx;
    size_t n, grain, nchunks;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .job_mu = PTHREAD_MUTEX_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __asm__ volatile("pause");
#elif defined(__aarch64__) || (defined(__arm__) && __ARM_ARCH >= 7)
    __asm__ volatile("yield");
#endif
}

/* Run chunks of job `gen` until none are left or the job has changed. */
static void run_chunks(uint32_t gen) {
    uint64_t t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(t >> 32) != gen) return;
        bne_range_fn fn = P.fn;
        void *ctx = P.ctx;
        size_t n = P.n, grain = P.grain, nchunks = P.nchunks;
        uint64_t idx = t & 0xffffffffu;
        if (idx >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue; /* t was reloaded */
        size_t b = (size_t)idx * grain, e = b + grain < n ? b + grain : n;
        fn(ctx, b, e);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    }
}

static void *worker(void *arg) {
    (void)arg;
    uint32_t seen = (uint32_t)(atomic_load(&P.ticket) >> 32);
    for (;;) {
        int spins = 0;
        while ((uint32_t)(atomic_load_explicit(&P.ticket, memory_order_acquire) >> 32) == seen &&
               spins < 20000) {
            cpu_relax();
            ++spins;
        }
        pthread_mutex_lock(&P.mu);
        while (!P.stop && (uint32_t)(atomic_load(&P.ticket) >> 32) == seen) pthread_cond_wait(&P.cv, &P.mu);
        int stop = P.stop;
        pthread_mutex_unlock(&P.mu);
        if (stop) return NULL;
        seen = (uint32_t)(atomic_load(&P.ticket) >> 32);
        run_chunks(seen);
    }
}

static void stop_workers(void) {
    pthread_mutex_lock(&P.mu);
    P.stop = 1;
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    for (int i = 0; i < P.nworkers; ++i) pthread_join(P.tids[i], NULL);
    P.nworkers = 0;
    P.stop = 0;
}

int bne_set_threads(int n) {
    if (n < 1 || n > BNE_MAX_THREADS) return BNE_ERR_THREADS;
    pthread_mutex_lock(&P.job_mu);
    stop_workers();
    int rc = BNE_OK;
    for (int i = 0; i < n - 1; ++i) {
        if (pthread_create(&P.tids[i], NULL, worker, NULL) != 0) {
            rc = BNE_ERR_THREADS;
            break;
        }
        P.nworkers++;
    }
    pthread_mutex_unlock(&P.job_mu);
    return rc;
}

int bne_get_threads(void) { return P.nworkers + 1; }

void bne_pool_run(bne_range_fn fn, void *ctx, size_t n, size_t grain) {
    bne_pool_run_pf(fn, ctx, n, grain, NULL, 0);
}

void bne_pool_run_pf(bne_range_fn fn, void *ctx, size_t n, size_t grain, const void *pf, size_t pf_bytes) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    size_t nchunks = (n + grain - 1) / grain;
    if (P.nworkers == 0 || nchunks <= 1 || nchunks > 0xffffffffu || pthread_mutex_trylock(&P.job_mu) != 0) {
        fn(ctx, 0, n);
        return;
    }
    if (P.nworkers == 0) { /* raced with bne_set_threads(1) */
        pthread_mutex_unlock(&P.job_mu);
        fn(ctx, 0, n);
        return;
    }
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.grain = grain;
    P.nchunks = nchunks;
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    uint32_t gen = (uint32_t)(atomic_load(&P.ticket) >> 32) + 1;
    atomic_store_explicit(&P.ticket, (uint64_t)gen << 32, memory_order_release); /* publish */
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    run_chunks(gen);
    for (size_t b = 0; b < pf_bytes; b += 64) __builtin_prefetch((const char *)pf + b, 0, 2);
    while (atomic_load_explicit(&P.done, memory_order_acquire) < nchunks) cpu_relax();
    pthread_mutex_unlock(&P.job_mu);
}
#endif
