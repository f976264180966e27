/* Micro-benchmark of metrics updates (inc, set, observe) on one and two threads, series lookup
 * and render; reports ns per operation and heap allocations per operation. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mesh/mesh.h>

/* Count every heap call in the process by interposing the C library's
 * allocator (the executable's definitions win over libc's for all DSOs).
 * Atomic: the two-thread runs count too. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static atomic_ulong heap_calls;
static _Thread_local unsigned long thread_heap_calls; /* this thread's share */
static void count(void) {
  atomic_fetch_add_explicit(&heap_calls, 1, memory_order_relaxed);
  thread_heap_calls++;
}
void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_metrics: %s: %s\n", what, mesh_strerror(rc));
  exit(1);
}

typedef void (*bench_fn)(mesh_metric_series *s, uint32_t i);

static void do_inc(mesh_metric_series *s, uint32_t i) { (void)i; mesh_metrics_inc(s, 1); }
static void do_gauge_inc(mesh_metric_series *s, uint32_t i) { (void)i; mesh_metrics_inc(s, 1); }
static void do_gauge_set(mesh_metric_series *s, uint32_t i) { mesh_metrics_set(s, (int64_t)i); }
/* Latencies spread over the buckets as a real mix would be: mostly small, a tail. */
static void do_observe(mesh_metric_series *s, uint32_t i) {
  static const uint64_t mix[8] = {1, 3, 7, 12, 25, 80, 450, 7000};
  mesh_metrics_observe(s, mix[i & 7] + (i & 3));
}

enum { ITERS = 20000000 };

/* One thread: ns/op and allocations/op over ITERS calls. */
static void run1(const char *name, bench_fn fn, mesh_metric_series *s) {
  for (uint32_t i = 0; i < 100000; i++) fn(s, i); /* warm up */
  unsigned long c0 = atomic_load(&heap_calls);
  uint64_t t0 = now_ns();
  for (uint32_t i = 0; i < ITERS; i++) fn(s, i);
  uint64_t t1 = now_ns();
  unsigned long calls = atomic_load(&heap_calls) - c0;
  printf("%-44s %8.2f ns/op %8.3f allocs/op  (%u ops)\n", name, (double)(t1 - t0) / ITERS,
         (double)calls / ITERS, (unsigned)ITERS);
}

typedef struct {
  bench_fn fn;
  mesh_metric_series *s;
  atomic_int *go;
  unsigned long calls; /* heap calls made by the loop itself */
} thread_arg;

static void *worker(void *p) {
  thread_arg *a = p;
  while (!atomic_load(a->go)) {
  }
  unsigned long c0 = thread_heap_calls;
  for (uint32_t i = 0; i < ITERS; i++) a->fn(a->s, i);
  a->calls = thread_heap_calls - c0;
  return NULL;
}

/* Two threads at once, each doing ITERS calls on its own series (s1, s2),
 * or on the same one (s1 == s2: the cache line bounces between cores).
 * Reports wall time per call per thread, and total calls per second. */
static void run2(const char *name, bench_fn fn, mesh_metric_series *s1, mesh_metric_series *s2) {
  atomic_int go = 0;
  thread_arg a[2] = {{fn, s1, &go, 0}, {fn, s2, &go, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; i++)
    if (pthread_create(&t[i], NULL, worker, &a[i]) != 0) die("pthread_create", -1);
  uint64_t t0 = now_ns();
  atomic_store(&go, 1);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  uint64_t t1 = now_ns();
  unsigned long calls = a[0].calls + a[1].calls;
  printf("%-44s %8.2f ns/op %8.3f allocs/op  (%.0f M ops/s total)\n", name,
         (double)(t1 - t0) / ITERS, (double)calls / (2.0 * ITERS),
         2.0 * ITERS / ((double)(t1 - t0) / 1e9) / 1e6);
}

int main(void) {
  mesh_ctx *ctx;
  mesh_metrics *reg;
  int rc;
  if ((rc = mesh_ctx_new(&ctx)) < 0 || (rc = mesh_metrics_new(ctx, &reg)) < 0) die("setup", rc);
  const char *labels[] = {"direction", "authority", "tls", "status_code"};
  mesh_metric_family *req, *conns, *lat;
  if ((rc = mesh_metrics_counter(reg, "request_total", "Total count of HTTP requests.", labels, 3,
                                 &req)) < 0 ||
      (rc = mesh_metrics_gauge(reg, "tcp_open_connections", "Open connections.", labels, 3,
                               &conns)) < 0 ||
      (rc = mesh_metrics_histogram(reg, "response_latency_ms", "Latency.", labels, 4, NULL, 0,
                                   &lat)) < 0)
    die("register", rc);
  const char *v1[] = {"outbound", "web.emojivoto.svc.cluster.local:80", "true", "200"};
  const char *v2[] = {"inbound", "web.emojivoto.svc.cluster.local:80", "true", "200"};
  mesh_metric_series *c1, *c2, *g1, *h1, *h2;
  if ((rc = mesh_metrics_series(req, v1, 3, &c1)) < 0 || (rc = mesh_metrics_series(req, v2, 3, &c2)) < 0 ||
      (rc = mesh_metrics_series(conns, v1, 3, &g1)) < 0 ||
      (rc = mesh_metrics_series(lat, v1, 4, &h1)) < 0 || (rc = mesh_metrics_series(lat, v2, 4, &h2)) < 0)
    die("series", rc);

  run1("counter inc, 1 thread", do_inc, c1);
  run1("gauge set, 1 thread", do_gauge_set, g1);
  run1("gauge inc (CAS loop), 1 thread", do_gauge_inc, g1);
  run1("histogram observe (25 buckets), 1 thread", do_observe, h1);
  run2("counter inc, 2 threads, separate series", do_inc, c1, c2);
  run2("counter inc, 2 threads, same series", do_inc, c1, c1);
  run2("gauge inc, 2 threads, same series", do_gauge_inc, g1, g1);
  run2("observe, 2 threads, separate series", do_observe, h1, h2);
  run2("observe, 2 threads, same series", do_observe, h1, h1);

  /* Looking up an existing series (mutex + hash + compare), then releasing it. */
  {
    enum { N = 1000000 };
    unsigned long c0 = atomic_load(&heap_calls);
    uint64_t t0 = now_ns();
    for (int i = 0; i < N; i++) {
      mesh_metric_series *s;
      if ((rc = mesh_metrics_series(lat, v1, 4, &s)) < 0) die("lookup", rc);
      mesh_metrics_series_unref(s);
    }
    uint64_t t1 = now_ns();
    printf("%-44s %8.2f ns/op %8.3f allocs/op  (%d ops)\n", "series lookup (existing) + unref",
           (double)(t1 - t0) / N, (double)(atomic_load(&heap_calls) - c0) / N, N);
  }

  /* Render: 1,000 histogram series with Linkerd's buckets (28,000 lines). */
  {
    mesh_metric_series *s;
    for (int i = 0; i < 1000; i++) {
      char auth[64];
      snprintf(auth, sizeof auth, "svc-%d.ns.svc.cluster.local:8080", i);
      const char *v[] = {"outbound", auth, "true", "200"};
      if ((rc = mesh_metrics_series(lat, v, 4, &s)) < 0) die("series", rc);
      mesh_metrics_observe(s, (uint64_t)i);
      mesh_metrics_series_unref(s);
    }
    enum { R = 20 };
    size_t len = 0;
    unsigned long c0 = atomic_load(&heap_calls);
    uint64_t t0 = now_ns();
    for (int i = 0; i < R; i++) {
      char *text;
      if ((rc = mesh_metrics_render(reg, &text, &len)) < 0) die("render", rc);
      mesh_free_string(ctx, text);
    }
    uint64_t t1 = now_ns();
    printf("%-44s %8.2f ms/op %8.1f allocs/op  (%zu bytes)\n", "render, 1,002 histogram series + 3",
           (double)(t1 - t0) / R / 1e6, (double)(atomic_load(&heap_calls) - c0) / R, len);
  }

  mesh_metric_series *all[] = {c1, c2, g1, h1, h2};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mesh_metrics_series_unref(all[i]);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
  return 0;
}
