/* Micro-benchmark of inbound policy decisions: ns per decision with 10 and 100 authorizations
 * and routes, and heap allocations per decision (every malloc in the process is counted). */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mesh/mesh.h>

/* Count every heap call in the process by interposing the C library's allocator. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static unsigned long heap_calls;
void *malloc(size_t n) { heap_calls++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { heap_calls++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { heap_calls++; return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

static volatile uint64_t sink;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
  const mesh_policy *p;
  mesh_policy_workload w;
  mesh_policy_request r;
  int32_t want;
} decision;

/* Runs the decision for at least 0.2 s; prints ns/decision and allocations/decision. */
static void run(const char *name, decision *d) {
  mesh_policy_result res;
  if (mesh_policy_decide(d->p, &d->w, &d->r, &res) != 0 || res.decision != d->want) {
    printf("%-44s unexpected decision %d\n", name, res.decision);
    exit(1);
  }
  for (int i = 0; i < 1000; i++) mesh_policy_decide(d->p, &d->w, &d->r, &res); /* warm up */
  uint32_t iters = 0;
  unsigned long calls0 = heap_calls;
  uint64_t t0 = now_ns(), t1;
  do {
    for (uint32_t k = 0; k < 10000; k++, iters++) {
      mesh_policy_decide(d->p, &d->w, &d->r, &res);
      sink += (uint64_t)res.decision;
    }
    t1 = now_ns();
  } while (t1 - t0 < 200000000u && iters < 20000000u);
  printf("%-44s %9.1f ns/decision %7.3f allocs/decision\n", name, (double)(t1 - t0) / iters,
         (double)(heap_calls - calls0) / iters);
}

/* One Server on port 8080 with n HTTPRoutes (PathPrefix /svc/<i>, GET) and
 * n ServerAuthorizations (serviceAccount sa-<i>, from 10.0.0.0/8). */
static mesh_policy *make(mesh_ctx *ctx, int n) {
  size_t cap = 4096 + (size_t)n * 1024, len = 0;
  char *y = malloc(cap);
  len += (size_t)snprintf(y + len, cap - len,
                          "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\n"
                          "metadata: {name: api, namespace: prod}\n"
                          "spec: {podSelector: {matchLabels: {app: api}}, port: 8080, "
                          "proxyProtocol: HTTP/1}\n");
  for (int i = 0; i < n; i++)
    len += (size_t)snprintf(
        y + len, cap - len,
        "---\napiVersion: policy.linkerd.io/v1beta3\nkind: HTTPRoute\n"
        "metadata: {name: r%d, namespace: prod}\n"
        "spec:\n  parentRefs: [{name: api, kind: Server, group: policy.linkerd.io}]\n"
        "  rules: [{matches: [{path: {type: PathPrefix, value: /svc/%d}, method: GET}]}]\n"
        "---\napiVersion: policy.linkerd.io/v1beta1\nkind: ServerAuthorization\n"
        "metadata: {name: a%d, namespace: prod}\n"
        "spec:\n  server: {name: api}\n"
        "  client: {networks: [{cidr: 10.0.0.0/8}], meshTLS: {serviceAccounts: [{name: sa-%d}]}}\n",
        i, i, i, i);
  mesh_manifest *m = NULL;
  mesh_policy *p = NULL;
  if (mesh_manifest_load_buffer(ctx, "bench.yaml", y, len, NULL, &m) != 0 ||
      mesh_policy_compile(ctx, (const mesh_manifest *const *)&m, 1, NULL, NULL, &p) != 0) {
    fprintf(stderr, "cannot compile the benchmark policy\n");
    exit(1);
  }
  mesh_manifest_free(m);
  free(y);
  return p;
}

int main(void) {
  mesh_ctx *ctx;
  if (mesh_ctx_new(&ctx) != 0) return 1;
  static mesh_policy_label labels[] = {{"app", "api"}, {"pod-template-hash", "7d9f"}};
  static char ids[2][128], paths[2][64];
  int sizes[2] = {10, 100};
  mesh_policy *ps[2];
  printf("policy decisions: one Server, N routes (PathPrefix + method), N authorizations\n");
  for (int s = 0; s < 2; s++) {
    int n = sizes[s];
    mesh_policy *p = ps[s] = make(ctx, n);
    snprintf(ids[s], sizeof ids[s], "sa-%d.prod.serviceaccount.identity.linkerd.cluster.local", n - 1);
    snprintf(paths[s], sizeof paths[s], "/svc/%d/items/42", n - 1);
    decision d = {.p = p, .w = {.ns = "prod", .labels = labels, .nlabels = 2, .port = 8080}};
    d.r.tls = 1;
    d.r.addr_family = 4;
    inet_pton(AF_INET, "10.2.3.4", d.r.addr);
    d.r.client_id = ids[s];
    d.r.method = "GET";
    d.r.path = paths[s];
    d.r.path_len = strlen(paths[s]);
    char name[96];
    d.want = MESH_POLICY_ALLOW;
    snprintf(name, sizeof name, "N=%3d HTTP allow (last route, last authz)", n);
    run(name, &d);
    d.r.client_id = "spiffe://cluster.local/ns/prod/sa/sa-0";
    d.r.path = "/svc/0";
    d.r.path_len = 6;
    snprintf(name, sizeof name, "N=%3d HTTP allow (first, SPIFFE id)", n);
    run(name, &d);
    d.r.client_id = "intruder.prod.serviceaccount.identity.linkerd.cluster.local";
    d.want = MESH_POLICY_DENY;
    snprintf(name, sizeof name, "N=%3d HTTP deny (every authz tried)", n);
    run(name, &d);
    d.r.path = "/nowhere";
    d.r.path_len = 8;
    d.want = MESH_POLICY_NOT_FOUND;
    snprintf(name, sizeof name, "N=%3d HTTP 404 (every route tried)", n);
    run(name, &d);
    d.r.method = NULL;
    d.r.path = NULL;
    d.r.path_len = 0;
    d.r.client_id = ids[s];
    d.want = MESH_POLICY_ALLOW;
    snprintf(name, sizeof name, "N=%3d TCP allow (last authz)", n);
    run(name, &d);
    d.w.port = 9090;
    snprintf(name, sizeof name, "N=%3d default policy (no Server)", n);
    run(name, &d);
  }
  mesh_policy_unref(ps[0]);
  mesh_policy_unref(ps[1]);
  mesh_ctx_free(ctx);
  return 0;
}
