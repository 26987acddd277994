/* pool.c - a persistent worker pool.
 *
 * bne_set_threads(n) starts n-1 workers (the caller is the n-th).  A job is a
 * range [0, n) handed out in chunks of `grain` through an atomic counter.
 * Workers spin briefly on the job generation before sleeping on a condition
 * variable, so back-to-back GEMVs do not pay a wake-up each.  One job runs at a
 * time; a second caller that finds the pool busy runs its job on its own thread
 * (same results, no deadlock).  Built with BNE_NO_THREADS (freestanding
 * targets) the pool runs everything on the caller's thread.
 */
#include "bne_internal.h"

#define BNE_MAX_THREADS 256

#if defined(BNE_NO_THREADS)

int bne_set_threads(int n) { return n == 1 ? BNE_OK : (n < 1 ? BNE_ERR_THREADS : BNE_OK); }
int bne_get_threads(void) { return 1; }
void bne_pool_run(bne_range_fn fn, void *ctx, size_t n, size_t grain) {
    (void)grain;
    if (n) fn(ctx, 0, n);
}

#else
#include <pthread.h>
#include <stdatomic.h>

static struct {
    pthread_mutex_t mu;       /* guards the fields below and the condvar */
    pthread_cond_t cv;
    pthread_mutex_t job_mu;   /* one job at a time */
    pthread_t tids[BNE_MAX_THREADS];
    int nworkers;             /* threads besides the caller */
    int stop;
    atomic_uint_fast64_t gen; /* bumped for every job */
    bne_range_fn fn;
    void *ctx;
    size_t n, grain;
    atomic_size_t next;
    atomic_int active;        /* workers still inside the current job */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .job_mu = PTHREAD_MUTEX_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __asm__ volatile("pause");
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void run_chunks(void) {
    for (;;) {
        size_t b = atomic_fetch_add(&P.next, P.grain);
        if (b >= P.n) break;
        size_t e = b + P.grain < P.n ? b + P.grain : P.n;
        P.fn(P.ctx, b, e);
    }
}

static void *worker(void *arg) {
    uint_fast64_t seen = (uint_fast64_t)(uintptr_t)arg;
    for (;;) {
        int spins = 0;
        while (atomic_load(&P.gen) == seen && spins < 20000) { cpu_relax(); ++spins; }
        pthread_mutex_lock(&P.mu);
        while (!P.stop && atomic_load(&P.gen) == seen) pthread_cond_wait(&P.cv, &P.mu);
        if (P.stop) { pthread_mutex_unlock(&P.mu); return NULL; }
        seen = atomic_load(&P.gen);
        pthread_mutex_unlock(&P.mu);
        run_chunks();
        atomic_fetch_sub(&P.active, 1);
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
    uint_fast64_t g = atomic_load(&P.gen);
    for (int i = 0; i < n - 1; ++i) {
        if (pthread_create(&P.tids[i], NULL, worker, (void *)(uintptr_t)g) != 0) {
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
    if (n == 0) return;
    if (grain == 0) grain = 1;
    if (P.nworkers == 0 || n <= grain || pthread_mutex_trylock(&P.job_mu) != 0) {
        fn(ctx, 0, n);
        return;
    }
    if (P.nworkers == 0) { /* raced with bne_set_threads(1) */
        pthread_mutex_unlock(&P.job_mu);
        fn(ctx, 0, n);
        return;
    }
    pthread_mutex_lock(&P.mu);
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    P.grain = grain;
    atomic_store(&P.next, 0);
    atomic_store(&P.active, P.nworkers);
    atomic_fetch_add(&P.gen, 1);
    pthread_cond_broadcast(&P.cv);
    pthread_mutex_unlock(&P.mu);
    run_chunks();
    while (atomic_load(&P.active) > 0) cpu_relax();
    pthread_mutex_unlock(&P.job_mu);
}
#endif
