/* Micro-benchmark of the request hot path's pure logic: route match, classify,
 * split pick, retry budget. Reports ns per operation and heap allocations per
 * operation (every malloc in the process is counted, libraries included). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mesh/mesh.h>

/* Count every heap call in the process by interposing the C library's
 * allocator (the executable's definitions win over libc's for all DSOs). */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static unsigned long heap_calls;
void *malloc(size_t n) { heap_calls++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { heap_calls++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { heap_calls++; return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

static volatile uint64_t sink; /* keeps results alive */

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

typedef void (*bench_fn)(void *arg, uint32_t i);

/* Runs fn for at least 0.2 s (at most 20M iterations); prints ns/op and allocations/op. */
static void run(const char *name, bench_fn fn, void *arg) {
  for (uint32_t i = 0; i < 1000; i++) fn(arg, i); /* warm up: per-thread match data, caches */
  uint32_t iters = 0;
  unsigned long calls0 = heap_calls;
  uint64_t t0 = now_ns(), t1;
  do {
    for (uint32_t k = 0; k < 10000; k++, iters++) fn(arg, iters);
    t1 = now_ns();
  } while (t1 - t0 < 200000000u && iters < 20000000u);
  unsigned long calls = heap_calls - calls0;
  printf("%-34s %10.1f ns/op %8.3f allocs/op  (%u ops)\n", name, (double)(t1 - t0) / iters,
         (double)calls / iters, iters);
}

typedef struct {
  mesh_profile *p;
  const char *method, *path;
  size_t len;
} match_arg;

static void do_match(void *a, uint32_t i) {
  match_arg *m = a;
  (void)i;
  sink += (uintptr_t)mesh_profile_match(m->p, m->method, m->path, m->len);
}

static void do_classify(void *a, uint32_t i) {
  sink += (uint64_t)mesh_route_classify(a, 200 + (i % 400), -1);
}

static void do_classify_grpc(void *a, uint32_t i) {
  sink += (uint64_t)mesh_route_classify(a, 200, (int32_t)(i % 17));
}

static void do_pick(void *a, uint32_t i) {
  static uint32_t seed = 2463534242u;
  (void)i;
  sink += mesh_split_pick(a, xorshift(&seed));
}

static void do_budget(void *a, uint32_t i) {
  mesh_budget *b = a;
  uint64_t t = i / 1000; /* 1000 requests per millisecond */
  mesh_budget_deposit(b, t);
  if (i % 5 == 0) sink += (uint64_t)mesh_budget_withdraw(b, t);
}

/* A profile of n routes "r<i>", GET /api/v1/r<i>/[^/]+/items, with classes. */
static mesh_profile *make_profile(mesh_ctx *ctx, int n) {
  size_t cap = 256 + (size_t)n * 512, off = 0;
  char *y = __libc_malloc(cap);
  off += (size_t)snprintf(y + off, cap - off,
                          "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n"
                          "metadata: {name: bench.default.svc.cluster.local}\nspec:\n  routes:\n");
  for (int i = 0; i < n; i++)
    off += (size_t)snprintf(y + off, cap - off,
                            "  - name: r%d\n    condition: {method: GET, pathRegex: '/api/v1/r%d/[^/]+/items'}\n"
                            "    responseClasses:\n    - condition: {status: {min: 500, max: 599}}\n"
                            "      isFailure: true\n",
                            i, i);
  mesh_profile *p = NULL;
  mesh_diags *d = NULL;
  mesh_diags_new(ctx, &d);
  if (mesh_profile_parse(ctx, "bench.yaml", y, off, d, &p) < 0) {
    for (size_t i = 0; i < mesh_diags_count(d); i++) fprintf(stderr, "%s\n", mesh_diags_text(d, i));
    exit(1);
  }
  mesh_diags_free(d);
  __libc_free(y);
  return p;
}

int main(void) {
  mesh_ctx *ctx;
  if (mesh_ctx_new(&ctx) < 0) return 1;
  printf("libmesh %s logic benchmark\n", mesh_version_string());
  for (int n = 10; n <= 100; n *= 10) {
    mesh_profile *p = make_profile(ctx, n);
    char name[64], path[64];
    snprintf(path, sizeof path, "/api/v1/r%d/42/items", 0);
    match_arg first = {p, "GET", strdup(path), strlen(path)};
    snprintf(path, sizeof path, "/api/v1/r%d/42/items", n - 1);
    match_arg last = {p, "GET", strdup(path), strlen(path)};
    match_arg miss = {p, "GET", "/static/app.js", strlen("/static/app.js")};
    snprintf(name, sizeof name, "match %d routes, hit first", n);
    run(name, do_match, &first);
    snprintf(name, sizeof name, "match %d routes, hit last", n);
    run(name, do_match, &last);
    snprintf(name, sizeof name, "match %d routes, miss", n);
    run(name, do_match, &miss);
    if (n == 10) {
      run("classify http (route classes)", do_classify, (void *)mesh_profile_route(p, 0));
      run("classify grpc (defaults)", do_classify_grpc, NULL);
    }
    free((void *)first.path);
    free((void *)last.path);
    mesh_profile_unref(p);
  }
  mesh_split *s;
  mesh_split_new(ctx, "exam-service", "production", &s);
  mesh_split_add(s, "exam-service-stable", 90000);
  mesh_split_add(s, "exam-service-canary", 10000);
  mesh_split_seal(s);
  run("split pick, 2 backends", do_pick, s);
  mesh_split_unref(s);
  mesh_split_new(ctx, "wide", "default", &s);
  for (int i = 0; i < 100; i++) {
    char b[32];
    snprintf(b, sizeof b, "backend-%d", i);
    mesh_split_add(s, b, (uint64_t)(i + 1) * 1000);
  }
  mesh_split_seal(s);
  run("split pick, 100 backends", do_pick, s);
  mesh_split_unref(s);
  mesh_budget *b;
  mesh_budget_new(ctx, 0.2, 10, 10000, 0, &b);
  run("budget deposit (+withdraw 1 in 5)", do_budget, b);
  mesh_budget_free(b);
  mesh_ctx_free(ctx);
  return 0;
}
