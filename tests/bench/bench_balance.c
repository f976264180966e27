/* Micro-benchmark of the balancer: ns per pick+done over 2, 10 and 100 endpoints, on 1 and 2
 * threads, and heap allocations per operation (every malloc in the process is counted). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <mesh/mesh.h>

/* Count every heap call in the process by interposing the C library's
 * allocator, as bench_logic.c does (kept out of sanitizer builds by meson). */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static atomic_ulong heap_calls;
void *malloc(size_t n) { atomic_fetch_add_explicit(&heap_calls, 1, memory_order_relaxed); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { atomic_fetch_add_explicit(&heap_calls, 1, memory_order_relaxed); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { atomic_fetch_add_explicit(&heap_calls, 1, memory_order_relaxed); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t xorshift(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13, x ^= x >> 17, x ^= x << 5;
  return *s = x;
}

enum { OPS = 2000000 };

typedef struct {
  mesh_balance *b;
  pthread_barrier_t *start; /* NULL on the main thread */
  uint32_t seed;
  uint32_t work; /* spin iterations between pick and done: the rest of a request */
  uint32_t ops;
  uint64_t ns;
} worker;

/* Stands for what a proxy does with a request between pick and done. The
 * sink is the thread's own, so the work shares nothing between threads. */
static void spin(uint32_t n) {
  volatile uint32_t sink;
  for (uint32_t k = 0; k < n; k++) sink = k;
  (void)sink;
}

/* One request at a time, on a fake clock advancing 1 us a request, with
 * RTTs of 0.5 to 2 ms by endpoint and one failure in 64 (never 7 in a row
 * with these draws, so no breaker opens: this is the steady state). */
static void *loop(void *arg) {
  worker *w = arg;
  if (w->start) pthread_barrier_wait(w->start);
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < w->ops; i++) {
    uint64_t now = (uint64_t)i * 1000;
    mesh_endpoint *ep;
    if (mesh_balance_pick(w->b, now, xorshift(&w->seed), xorshift(&w->seed), &ep) < 0) abort();
    spin(w->work);
    uint32_t r = xorshift(&w->seed);
    uint64_t rtt = 500000 + (uint64_t)(mesh_endpoint_weight(ep) % 4) * 500000;
    mesh_balance_done(ep, now + rtt, now, (r & 63) != 0, r);
  }
  w->ns = now_ns() - t0;
  return NULL;
}

/* One run: the mean ns of a pick+done per thread; *allocs gets heap calls per op. */
static double bench_once(mesh_ctx *ctx, int endpoints, int threads, uint32_t work, uint32_t ops,
                         double *allocs) {
  mesh_balance *b;
  if (mesh_balance_new(ctx, NULL, &b) < 0) abort();
  for (int i = 0; i < endpoints; i++) {
    char addr[32];
    snprintf(addr, sizeof addr, "10.0.%d.%d:8080", i / 250, i % 250 + 1);
    if (mesh_balance_add(b, addr, 1000 + (uint32_t)i, NULL, NULL) < 0) abort();
  }
  worker w[2];
  pthread_t t[2];
  unsigned long calls0, calls;
  if (threads == 1) {
    w[0] = (worker){.b = b, .seed = 2463534242u, .work = work, .ops = ops};
    calls0 = atomic_load(&heap_calls);
    loop(&w[0]);
    calls = atomic_load(&heap_calls) - calls0;
  } else {
    /* Counted from the moment every thread exists, so that what
     * pthread_create allocates is not charged to the balancer. */
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
    for (int i = 0; i < threads; i++) {
      w[i] = (worker){.b = b, .start = &start, .seed = 2463534242u + (uint32_t)i * 7919,
                      .work = work, .ops = ops};
      if (pthread_create(&t[i], NULL, loop, &w[i]) != 0) abort();
    }
    pthread_barrier_wait(&start);
    calls0 = atomic_load(&heap_calls);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    calls = atomic_load(&heap_calls) - calls0;
    pthread_barrier_destroy(&start);
  }
  uint64_t ns = 0;
  for (int i = 0; i < threads; i++) ns += w[i].ns;
  mesh_balance_free(b);
  *allocs = (double)calls / ((double)ops * threads);
  return (double)ns / threads / ops;
}

/* The best of three runs: the machine is shared, and interference only
 * ever adds time. */
static void bench(mesh_ctx *ctx, int endpoints, int threads, uint32_t work, double work_ns) {
  uint32_t ops = work ? OPS / 10 : OPS;
  double best = 1e18, allocs = 0, worst_allocs = 0;
  for (int rep = 0; rep < 3; rep++) {
    double per_op = bench_once(ctx, endpoints, threads, work, ops, &allocs);
    if (per_op < best) best = per_op;
    if (allocs > worst_allocs) worst_allocs = allocs;
  }
  char name[80];
  snprintf(name, sizeof name, "pick+done, %d endpoints, %d thread%s%s", endpoints, threads,
           threads > 1 ? "s" : "", work ? ", +work" : "");
  printf("%-44s %8.1f ns/op/thread %6.1f M ops/s %6.3f allocs/op", name, best - work_ns,
         threads / best * 1e3, worst_allocs);
  if (work) printf("  (work alone, %.0f ns, subtracted)", work_ns);
  printf("\n");
}

/* What the balancer's mutex costs by itself, uncontended. */
static void bench_mutex(void) {
  pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < OPS; i++) {
    pthread_mutex_lock(&m);
    __asm__ volatile("" ::: "memory");
    pthread_mutex_unlock(&m);
  }
  printf("%-36s %8.1f ns/op\n", "mutex lock+unlock, uncontended", (double)(now_ns() - t0) / OPS);
}

int main(void) {
  mesh_ctx *ctx;
  if (mesh_ctx_new(&ctx) < 0) return 1;
  printf("libmesh %s balancer benchmark (%d ops per thread)\n", mesh_version_string(), OPS);
  bench_mutex();
  const int sizes[] = {2, 10, 100};
  for (int k = 0; k < 3; k++) bench(ctx, sizes[k], 1, 0, 0);
  for (int k = 0; k < 3; k++) bench(ctx, sizes[k], 2, 0, 0);
  /* With about 1 us of other work per request, as in a proxy, the two
   * threads rarely meet on the lock: what is left is the balancer's cost. */
  uint32_t work = 1000;
  double work_ns = 1e18;
  for (int rep = 0; rep < 3; rep++) {
    uint64_t t0 = now_ns();
    for (uint32_t i = 0; i < OPS / 10; i++) spin(work);
    double d = (double)(now_ns() - t0) / (OPS / 10);
    if (d < work_ns) work_ns = d;
  }
  for (int k = 0; k < 3; k++) bench(ctx, sizes[k], 2, work, work_ns);
  mesh_ctx_free(ctx);
  return 0;
}
