/* libmesh ServiceProfiles: compiled routes, classes, budgets, dstOverrides; alloc-free match. */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/profile.h>
#include <mesh/split.h>
#include "ctx_internal.h"
#include "diag_internal.h"
#include "manifest_internal.h"
#include "node_internal.h"
#include "profile_internal.h"
#include "regex_internal.h"

/* Bounds on what one profile may say. The dstOverrides bound is the split
 * module's (mesh_split_add refuses more); the port bounds keep the set
 * small and parsing linear. */
#define MAX_DST_OVERRIDES 256
#define MAX_OPAQUE_PORTS 1024
#define MAX_PORT_ENTRIES 4096

typedef struct {
  double ratio;
  uint32_t min_per_sec;
  uint64_t ttl_ms;
} budget;

static const budget default_budget = {MESH_BUDGET_DEFAULT_RATIO, MESH_BUDGET_DEFAULT_MIN_PER_SEC,
                                      MESH_BUDGET_DEFAULT_TTL_MS};

/* One condition, request or response. Every field that is set must hold
 * (Linkerd's controller turns a condition with several fields into "all"). */
typedef struct cond cond;
struct cond {
  char *method; /* request: compared exactly; NULL means any */
  size_t method_len;
  mesh__regex *path; /* request: whole-path regex; NULL means any */
  bool has_status;   /* response: min <= status <= max */
  uint16_t min, max;
  bool has_any; /* "any" was written, even empty (then nothing matches) */
  size_t nall, nany;
  cond *all, *any;
  cond *neg; /* "not" */
};

typedef struct {
  cond cond;
  bool failure;
} response_class;

struct mesh_route {
  char *name;
  size_t index;
  cond cond;
  response_class *classes;
  size_t nclasses;
  uint64_t timeout_ms;
  bool retryable;
  bool own_budget; /* retryBudget written inside the route, as the seed does */
  budget budget;
  const budget *shared; /* the profile's spec.retryBudget */
};

/* The routes and the profile-wide budget. Immutable once compiled, so the
 * profiles that mesh_profile_with_split derives share it rather than copy
 * every regex. */
typedef struct {
  mesh_ctx *ctx;
  atomic_uint refs;
  budget budget;
  mesh_route *routes;
  size_t n;
} route_set;

struct mesh_profile {
  mesh_ctx *ctx;
  atomic_uint refs; /* not part of the value: ref/unref work on const profiles */
  char *name, *ns;
  route_set *rs;
  mesh_split *dst; /* sealed; NULL without dstOverrides */
  uint16_t *ports; /* sorted, unique */
  size_t nports;
};

/* ---- freeing ---- */

static void cond_clear(mesh_ctx *ctx, cond *c) {
  mesh__free(ctx, c->method);
  mesh__regex_free(c->path);
  for (size_t i = 0; i < c->nall; i++) cond_clear(ctx, &c->all[i]);
  mesh__free(ctx, c->all);
  for (size_t i = 0; i < c->nany; i++) cond_clear(ctx, &c->any[i]);
  mesh__free(ctx, c->any);
  if (c->neg) cond_clear(ctx, c->neg);
  mesh__free(ctx, c->neg);
}

static void route_set_unref(route_set *rs) {
  if (!rs || atomic_fetch_sub_explicit(&rs->refs, 1, memory_order_acq_rel) != 1) return;
  for (size_t i = 0; i < rs->n; i++) {
    mesh_route *rt = &rs->routes[i];
    mesh__free(rs->ctx, rt->name);
    cond_clear(rs->ctx, &rt->cond);
    for (size_t k = 0; k < rt->nclasses; k++) cond_clear(rs->ctx, &rt->classes[k].cond);
    mesh__free(rs->ctx, rt->classes);
  }
  mesh__free(rs->ctx, rs->routes);
  mesh__free(rs->ctx, rs);
}

static route_set *route_set_new(mesh_ctx *ctx) {
  route_set *rs = mesh__calloc(ctx, 1, sizeof *rs);
  if (!rs) return NULL;
  rs->ctx = ctx;
  atomic_init(&rs->refs, 1u);
  rs->budget = default_budget;
  return rs;
}

mesh_profile *mesh_profile_ref(const mesh_profile *p) {
  if (!p) return NULL;
  mesh_profile *m = (mesh_profile *)p;
  atomic_fetch_add_explicit(&m->refs, 1u, memory_order_relaxed);
  return m;
}

void mesh_profile_unref(mesh_profile *p) {
  if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
  route_set_unref(p->rs);
  mesh_split_unref(p->dst);
  mesh__free(p->ctx, p->ports);
  mesh__free(p->ctx, p->name);
  mesh__free(p->ctx, p->ns);
  mesh__free(p->ctx, p);
}

/* A profile with no routes and the default budget; name and ns copied. */
static mesh_profile *profile_new(mesh_ctx *ctx, const char *name, const char *ns) {
  mesh_profile *p = mesh__calloc(ctx, 1, sizeof *p);
  if (!p) return NULL;
  p->ctx = ctx;
  atomic_init(&p->refs, 1u);
  p->name = mesh__strdup(ctx, name);
  p->ns = mesh__strdup(ctx, ns);
  if (!p->name || !p->ns) {
    mesh_profile_unref(p);
    return NULL;
  }
  return p;
}

/* ---- compiling ---- */

typedef struct {
  mesh__reader *r;
  mesh_ctx *ctx;
  bool oom;
} compiler;

enum { REQUEST, RESPONSE };

static const char *const root_keys[] = {"apiVersion", "kind", "metadata", "spec", NULL};
static const char *const spec_keys[] = {"routes", "retryBudget", "dstOverrides", "opaquePorts",
                                        NULL};
static const char *const route_keys[] = {"name",    "condition",   "responseClasses",
                                         "timeout", "isRetryable", "retryBudget", NULL};
static const char *const request_keys[] = {"method", "pathRegex", "all", "any", "not", NULL};
static const char *const response_keys[] = {"status", "all", "any", "not", NULL};
static const char *const status_keys[] = {"min", "max", NULL};
static const char *const class_keys[] = {"condition", "isFailure", NULL};
static const char *const budget_keys[] = {"retryRatio", "minRetriesPerSecond", "ttl", NULL};
static const char *const dst_keys[] = {"authority", "weight", NULL};

static void *c_calloc(compiler *c, size_t n, size_t size) {
  void *p = mesh__calloc(c->ctx, n, size);
  if (!p) c->oom = true;
  return p;
}

static char *c_strdup(compiler *c, const char *s) {
  char *d = mesh__strdup(c->ctx, s);
  if (!d) c->oom = true;
  return d;
}

/* RFC 9110 token characters: what a method may be made of. */
static bool is_tchar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static void compile_method(compiler *c, const mesh__node *map, cond *out) {
  const char *m = NULL;
  const mesh__node *v = mesh__node_get(map, "method");
  if (!mesh__read_string(c->r, map, "method", false, &m) || !m) return;
  if (v->len == 0) {
    mesh__error(c->r, v, "method must not be empty");
    return;
  }
  bool lower = false;
  for (size_t i = 0; i < v->len; i++) {
    if (!is_tchar(m[i])) {
      mesh__error(c->r, v, "'%s' is not a valid HTTP method", m);
      return;
    }
    lower = lower || (m[i] >= 'a' && m[i] <= 'z');
  }
  if (lower) {
    /* Methods are case-sensitive (RFC 9110), so "get" is a method of its
     * own; almost always a typo for GET. */
    char upper[32];
    size_t k = 0;
    for (; k < v->len && k + 1 < sizeof upper; k++)
      upper[k] = (char)(m[k] >= 'a' && m[k] <= 'z' ? m[k] - 'a' + 'A' : m[k]);
    upper[k] = '\0';
    mesh__warn(c->r, v, "methods are compared exactly: '%s' does not match %s requests", m, upper);
  }
  out->method = c_strdup(c, m);
  out->method_len = v->len;
}

static void compile_path(compiler *c, const mesh__node *map, cond *out) {
  const char *pat = NULL;
  const mesh__node *v = mesh__node_get(map, "pathRegex");
  if (!mesh__read_string(c->r, map, "pathRegex", false, &pat) || !pat) return;
  if (v->len == 0) {
    /* An empty pathRegex is "not set" to Linkerd; say so rather than
     * compile a regex that only matches an empty path. */
    mesh__error(c->r, v, "pathRegex must not be empty");
    return;
  }
  char why[256];
  size_t off = 0;
  int rc = mesh__regex_compile(c->ctx, pat, v->len, &out->path, why, sizeof why, &off);
  if (rc == MESH_ERR_NOMEM) c->oom = true;
  else if (rc < 0)
    mesh__error(c->r, v, "invalid pathRegex '%s': %s (at offset %zu)", pat, why, off);
}

static void compile_status(compiler *c, const mesh__node *st, cond *out) {
  if (!mesh__want_map(c->r, st)) return;
  mesh__check_keys(c->r, st, status_keys);
  int64_t min = -1, max = -1;
  bool ok = mesh__read_int(c->r, st, "min", 100, 599, &min);
  ok = mesh__read_int(c->r, st, "max", 100, 599, &max) && ok;
  if (!ok) return;
  if (min < 0 && max < 0) {
    mesh__error(c->r, st, "status needs min, max or both");
    return;
  }
  /* One bound alone means exactly that code. */
  if (min < 0) min = max;
  if (max < 0) max = min;
  if (min > max) {
    mesh__error(c->r, st, "min (%lld) is greater than max (%lld)", (long long)min, (long long)max);
    return;
  }
  out->has_status = true;
  out->min = (uint16_t)min;
  out->max = (uint16_t)max;
}

static void compile_cond(compiler *c, const mesh__node *n, int kind, cond *out);

static void compile_list(compiler *c, const mesh__node *v, const char *key, int kind, cond **arr,
                         size_t *count) {
  if (!mesh__want_seq(c->r, v)) return;
  if (v->n == 0) {
    mesh__warn(c->r, v, "an empty '%s' %s", key,
               strcmp(key, "any") == 0 ? "never matches" : "always matches");
    return;
  }
  *arr = c_calloc(c, v->n, sizeof **arr);
  if (!*arr) return;
  *count = v->n;
  for (size_t i = 0; i < v->n; i++) compile_cond(c, v->kids[i], kind, &(*arr)[i]);
}

static void compile_cond(compiler *c, const mesh__node *n, int kind, cond *out) {
  if (!mesh__want_map(c->r, n)) return;
  mesh__check_keys(c->r, n, kind == REQUEST ? request_keys : response_keys);
  bool set = false;
  const mesh__node *v;
  if (kind == REQUEST) {
    if (mesh__node_get(n, "method")) {
      set = true;
      compile_method(c, n, out);
    }
    if (mesh__node_get(n, "pathRegex")) {
      set = true;
      compile_path(c, n, out);
    }
  } else if ((v = mesh__node_get(n, "status"))) {
    set = true;
    compile_status(c, v, out);
  }
  if ((v = mesh__node_get(n, "all"))) {
    set = true;
    compile_list(c, v, "all", kind, &out->all, &out->nall);
  }
  if ((v = mesh__node_get(n, "any"))) {
    set = true;
    out->has_any = true;
    compile_list(c, v, "any", kind, &out->any, &out->nany);
  }
  if ((v = mesh__node_get(n, "not"))) {
    set = true;
    if ((out->neg = c_calloc(c, 1, sizeof *out->neg))) compile_cond(c, v, kind, out->neg);
  }
  if (!set)
    mesh__error(c->r, n, "a condition needs at least one of %s",
                kind == REQUEST ? "method, pathRegex, all, any or not" : "status, all, any or not");
}

static void compile_budget(compiler *c, const mesh__node *n, budget *b) {
  *b = default_budget;
  if (!mesh__want_map(c->r, n)) return;
  mesh__check_keys(c->r, n, budget_keys);
  /* Each field defaults on its own, as Linkerd fills an absent one. */
  mesh__read_double(c->r, n, "retryRatio", 0.0, 1000.0, &b->ratio);
  int64_t mps = b->min_per_sec;
  if (mesh__read_int(c->r, n, "minRetriesPerSecond", 0, UINT32_MAX, &mps))
    b->min_per_sec = (uint32_t)mps;
  uint64_t ttl = b->ttl_ms;
  const mesh__node *t = mesh__node_get(n, "ttl");
  if (t && mesh__read_duration_ms(c->r, n, "ttl", &ttl)) {
    /* Judged on the exact value: 999.9ms rounds up to 1000 ms but is below 1s. */
    uint64_t ns = 0;
    const char *why;
    if (mesh__parse_duration_ns(t->str, t->len, &ns, &why) < 0 || ns < 1000000000ull ||
        ns > 60000000000ull)
      mesh__error(c->r, t, "ttl must be between 1s and 60s, found %s", t->str);
    else
      b->ttl_ms = ttl;
  }
}

static void compile_classes(compiler *c, const mesh__node *v, mesh_route *rt) {
  if (!mesh__want_seq(c->r, v) || v->n == 0) return;
  rt->classes = c_calloc(c, v->n, sizeof *rt->classes);
  if (!rt->classes) return;
  rt->nclasses = v->n;
  for (size_t i = 0; i < v->n; i++) {
    const mesh__node *item = v->kids[i];
    if (!mesh__want_map(c->r, item)) continue;
    mesh__check_keys(c->r, item, class_keys);
    const mesh__node *cn = mesh__node_get(item, "condition");
    if (!cn) mesh__error(c->r, item, "missing required field 'condition'");
    else compile_cond(c, cn, RESPONSE, &rt->classes[i].cond);
    bool failure = false;
    mesh__read_bool(c->r, item, "isFailure", &failure);
    rt->classes[i].failure = failure;
  }
}

static void compile_route(compiler *c, const mesh__node *n, mesh_route *rt, const budget *shared) {
  rt->timeout_ms = MESH_ROUTE_DEFAULT_TIMEOUT_MS;
  rt->shared = shared;
  if (!mesh__want_map(c->r, n)) return;
  mesh__check_keys(c->r, n, route_keys);
  const char *name = NULL;
  if (mesh__read_string(c->r, n, "name", true, &name) && name) rt->name = c_strdup(c, name);
  const mesh__node *v = mesh__node_get(n, "condition");
  if (!v) mesh__error(c->r, n, "missing required field 'condition'");
  else compile_cond(c, v, REQUEST, &rt->cond);
  if ((v = mesh__node_get(n, "responseClasses"))) compile_classes(c, v, rt);
  uint64_t ms = 0;
  if ((v = mesh__node_get(n, "timeout")) && mesh__read_duration_ms(c->r, n, "timeout", &ms)) {
    if (ms == 0) mesh__error(c->r, v, "timeout must be greater than zero");
    else rt->timeout_ms = ms;
  }
  bool retryable = false;
  mesh__read_bool(c->r, n, "isRetryable", &retryable);
  rt->retryable = retryable;
  if ((v = mesh__node_get(n, "retryBudget"))) {
    /* The seed writes the budget per route. Linkerd would ignore it; we
     * honour it, but say where it belongs. */
    rt->own_budget = true;
    compile_budget(c, v, &rt->budget);
    mesh__warn(c->r, v,
               "retryBudget belongs in spec.retryBudget (one budget for all of a profile's "
               "routes, where Linkerd reads it); loaded as this route's own budget%s",
               retryable ? ""
                         : ", which is never used because the route is not retryable "
                           "(isRetryable: true is not set)");
  }
}

typedef struct {
  const char *name;
  size_t i;
} named;

static int by_name(const void *pa, const void *pb) {
  const named *a = pa, *b = pb;
  int cmp = strcmp(a->name, b->name);
  return cmp ? cmp : (a->i > b->i) - (a->i < b->i);
}

/* Route names identify routes in metrics: sorting finds repeats in n log n. */
static void check_unique_names(compiler *c, const mesh__node *routes, const route_set *rs) {
  if (rs->n < 2) return;
  named *v = c_calloc(c, rs->n, sizeof *v);
  if (!v) return;
  size_t k = 0;
  for (size_t i = 0; i < rs->n; i++)
    if (rs->routes[i].name) v[k++] = (named){rs->routes[i].name, i};
  qsort(v, k, sizeof *v, by_name);
  for (size_t i = 1; i < k; i++)
    if (strcmp(v[i - 1].name, v[i].name) == 0)
      mesh__error(c->r, mesh__node_get(routes->kids[v[i].i], "name"),
                  "route name '%s' is already used by spec.routes[%zu]", v[i].name, v[i - 1].i);
  mesh__free(c->ctx, v);
}

static void compile_routes(compiler *c, const mesh__node *v, route_set *rs) {
  if (!mesh__want_seq(c->r, v) || v->n == 0) return;
  rs->routes = c_calloc(c, v->n, sizeof *rs->routes);
  if (!rs->routes) return;
  rs->n = v->n;
  for (size_t i = 0; i < v->n; i++) {
    rs->routes[i].index = i;
    compile_route(c, v->kids[i], &rs->routes[i], &rs->budget);
  }
  check_unique_names(c, v, rs);
}

/* Reports a failed split call; true when it succeeded. */
static bool split_ok(compiler *c, const mesh__node *at, int rc) {
  if (rc == 0) return true;
  if (rc == MESH_ERR_NOMEM) c->oom = true;
  else if (rc == MESH_ERR_RANGE)
    mesh__error(c->r, at, "the weights add up to more than can be counted");
  else mesh__error(c->r, at, "cannot build the split: %s", mesh_strerror(rc));
  return false;
}

static void compile_dst_overrides(compiler *c, const mesh__node *v, const char *name,
                                  const char *ns, mesh_split **out) {
  if (!mesh__want_seq(c->r, v) || v->n == 0) return;
  if (v->n > MAX_DST_OVERRIDES) {
    mesh__error(c->r, v, "at most %d dstOverrides are allowed, found %zu", MAX_DST_OVERRIDES, v->n);
    return;
  }
  size_t errors0 = c->r->errors;
  const char *auth[MAX_DST_OVERRIDES];
  int64_t weight[MAX_DST_OVERRIDES];
  bool nonzero = false;
  for (size_t i = 0; i < v->n; i++) {
    const mesh__node *item = v->kids[i];
    auth[i] = NULL;
    weight[i] = 0;
    if (!mesh__want_map(c->r, item)) continue;
    mesh__check_keys(c->r, item, dst_keys);
    const mesh__node *an = mesh__node_get(item, "authority");
    if (mesh__read_string(c->r, item, "authority", true, &auth[i]) && auth[i]) {
      if (strpbrk(auth[i], " \t/")) {
        mesh__error(c->r, an,
                    "'%s' is not an authority (host:port, such as "
                    "web.default.svc.cluster.local:8080)",
                    auth[i]);
      } else {
        for (size_t k = 0; k < i; k++)
          if (auth[k] && strcmp(auth[k], auth[i]) == 0) {
            mesh__error(c->r, an, "authority '%s' is already listed at dstOverrides[%zu]", auth[i],
                        k);
            break;
          }
      }
    }
    const mesh__node *wn = mesh__node_get(item, "weight");
    if (!wn) mesh__error(c->r, item, "missing required field 'weight'");
    else if (mesh__read_quantity_milli(c->r, item, "weight", &weight[i]) && weight[i] < 0)
      mesh__error(c->r, wn, "weight must not be negative, found %s", wn->str);
    nonzero = nonzero || weight[i] > 0;
  }
  if (c->r->errors != errors0 || !*name) return;
  if (!nonzero) {
    mesh__error(c->r, v, "every weight is zero, so no destination could ever be picked");
    return;
  }
  mesh_split *s = NULL;
  if (!split_ok(c, v, mesh_split_new(c->ctx, name, ns, &s))) return;
  bool ok = true;
  for (size_t i = 0; i < v->n && ok; i++)
    ok = split_ok(c, v->kids[i], mesh_split_add(s, auth[i], (uint64_t)weight[i]));
  if (ok && split_ok(c, v, mesh_split_seal(s))) {
    *out = s;
    return;
  }
  mesh_split_unref(s);
}

static bool parse_port(const char *s, size_t len, uint32_t *out) {
  if (len == 0 || len > 5) return false;
  uint32_t v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint32_t)(s[i] - '0');
  }
  if (v < 1 || v > 65535) return false;
  *out = v;
  return true;
}

typedef struct {
  uint64_t bits[65536 / 64];
  size_t count;   /* distinct ports so far */
  size_t entries; /* entries read so far, ranges counting once */
} port_set;

/* One scalar: "3306", "4000-4005" or a comma-separated list of those.
 * False once there are too many entries to go on reading. */
static bool add_ports(compiler *c, const mesh__node *v, port_set *ps) {
  const char *s = v->str;
  size_t len = v->len, i = 0;
  while (i <= len) {
    size_t end = i;
    while (end < len && s[end] != ',') end++;
    size_t a = i, b = end;
    while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
    i = end + 1;
    if (++ps->entries > MAX_PORT_ENTRIES) {
      mesh__error(c->r, v, "more than %d opaque port entries", MAX_PORT_ENTRIES);
      return false;
    }
    const char *dash = memchr(s + a, '-', b - a);
    uint32_t lo, hi;
    bool ok = dash ? parse_port(s + a, (size_t)(dash - (s + a)), &lo) &&
                         parse_port(dash + 1, (size_t)(s + b - dash - 1), &hi)
                   : parse_port(s + a, b - a, &lo);
    if (!dash) hi = lo;
    if (!ok) {
      mesh__error(c->r, v,
                  "invalid port '%.*s' (expected a number from 1 to 65535 or a range such as "
                  "4000-4005)",
                  (int)(b - a), s + a);
      continue;
    }
    if (lo > hi) {
      mesh__error(c->r, v, "port range '%.*s' is reversed", (int)(b - a), s + a);
      continue;
    }
    if (hi - lo >= MAX_OPAQUE_PORTS) {
      mesh__error(c->r, v, "port range '%.*s' has more than %d ports", (int)(b - a), s + a,
                  MAX_OPAQUE_PORTS);
      continue;
    }
    for (uint32_t p = lo; p <= hi; p++) {
      uint64_t bit = 1ull << (p % 64);
      if (ps->bits[p / 64] & bit) continue;
      ps->bits[p / 64] |= bit;
      ps->count++;
    }
  }
  return true;
}

static void compile_opaque_ports(compiler *c, const mesh__node *v, mesh_profile *p) {
  port_set *ps = c_calloc(c, 1, sizeof *ps); /* 8 KiB: kept off the stack */
  if (!ps) return;
  size_t errors0 = c->r->errors;
  if (v->type == MESH_NODE_SCALAR) {
    add_ports(c, v, ps);
  } else if (v->type == MESH_NODE_SEQ) {
    bool more = true;
    for (size_t i = 0; i < v->n && more; i++)
      if (mesh__want_scalar(c->r, v->kids[i])) more = add_ports(c, v->kids[i], ps);
  } else {
    mesh__error(c->r, v, "expected a list of ports or text such as \"3306,5432\", found %s",
                mesh__node_type_name(v));
  }
  if (c->r->errors == errors0 && ps->count > MAX_OPAQUE_PORTS)
    mesh__error(c->r, v, "at most %d opaque ports are allowed, found %zu", MAX_OPAQUE_PORTS,
                ps->count);
  if (c->r->errors == errors0 && ps->count > 0 &&
      (p->ports = c_calloc(c, ps->count, sizeof *p->ports))) {
    for (uint32_t port = 1; port <= 65535; port++)
      if (ps->bits[port / 64] & (1ull << (port % 64))) p->ports[p->nports++] = (uint16_t)port;
  }
  mesh__free(c->ctx, ps);
}

static const char *scalar_or(const mesh__node *n, const char *dflt) {
  return n && n->type == MESH_NODE_SCALAR && n->len ? n->str : dflt;
}

int mesh__profile_compile(mesh__reader *r, const mesh__node *doc, mesh_profile **ret) {
  if (!r || !doc || !ret) return MESH_ERR_INVALID;
  compiler c = {.r = r, .ctx = r->ctx};
  size_t errors0 = r->errors;
  int nomem0 = r->nomem;
  /* metadata was checked by the manifest loader: only read it here. */
  const mesh__node *meta = mesh__node_get(doc, "metadata");
  const char *name = scalar_or(mesh__node_get(meta, "name"), "");
  const char *ns = scalar_or(mesh__node_get(meta, "namespace"), "default");
  mesh_profile *p = profile_new(c.ctx, name, ns);
  if (p) p->rs = route_set_new(c.ctx);
  if (!p || !p->rs) {
    mesh_profile_unref(p);
    return MESH_ERR_NOMEM;
  }
  mesh__check_keys(r, doc, root_keys);
  const mesh__node *spec = mesh__node_get(doc, "spec"), *v;
  if (!spec) {
    mesh__error(r, doc, "missing required field 'spec'");
  } else if (mesh__want_map(r, spec)) {
    mesh__check_keys(r, spec, spec_keys);
    if ((v = mesh__node_get(spec, "retryBudget"))) compile_budget(&c, v, &p->rs->budget);
    if ((v = mesh__node_get(spec, "routes"))) compile_routes(&c, v, p->rs);
    if ((v = mesh__node_get(spec, "dstOverrides")))
      compile_dst_overrides(&c, v, p->name, p->ns, &p->dst);
    if ((v = mesh__node_get(spec, "opaquePorts"))) compile_opaque_ports(&c, v, p);
  }
  int rc = 0;
  if (c.oom || (r->nomem && !nomem0)) rc = MESH_ERR_NOMEM;
  else if (r->errors != errors0) rc = MESH_ERR_PARSE;
  if (rc < 0) {
    mesh_profile_unref(p);
    return rc;
  }
  *ret = p;
  return 0;
}

/* ---- the public API ---- */

int mesh_profile_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                       mesh_diags *diags, mesh_profile **ret) {
  if (!ctx || (!buf && len) || !ret) return MESH_ERR_INVALID;
  if (!file) file = "<input>";
  mesh_manifest *m = NULL;
  int rc = mesh_manifest_load_buffer(ctx, file, buf, len, diags, &m);
  if (rc < 0) return rc;
  mesh__reader r = {.ctx = ctx, .diags = diags, .file = file};
  size_t n = mesh_manifest_count(m);
  if (n == 0) {
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, file, 0, 0, "%s",
                       "expected a ServiceProfile, found no document") < 0)
      r.nomem = 1;
    r.errors++;
  } else if (n > 1) {
    const mesh__node *second = mesh__manifest_node(m, 1);
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, file, second->line, second->col,
                       "expected one document (a ServiceProfile), found %zu", n) < 0)
      r.nomem = 1;
    r.errors++;
  } else if (mesh_manifest_kind(m, 0) != MESH_KIND_SERVICE_PROFILE) {
    const mesh__node *root = mesh__manifest_node(m, 0);
    const mesh__node *kind = mesh__node_get(root, "kind");
    const char *api = mesh_manifest_api_version(m, 0), *kn = mesh_manifest_kind_name(m, 0);
    mesh__error(&r, kind ? kind : root,
                "expected a ServiceProfile (linkerd.io/v1alpha2), found %s %s", api ? api : "?",
                kn ? kn : "?");
  }
  if (r.errors == 0) *ret = mesh_profile_ref(mesh_manifest_profile(m, 0));
  mesh_manifest_free(m);
  return r.nomem ? MESH_ERR_NOMEM : r.errors ? MESH_ERR_PARSE : 0;
}

const char *mesh_profile_name(const mesh_profile *p) { return p ? p->name : NULL; }
const char *mesh_profile_namespace(const mesh_profile *p) { return p ? p->ns : NULL; }
size_t mesh_profile_route_count(const mesh_profile *p) { return p ? p->rs->n : 0; }

const mesh_route *mesh_profile_route(const mesh_profile *p, size_t i) {
  return p && i < p->rs->n ? &p->rs->routes[i] : NULL;
}

static bool request_matches(const cond *c, const char *method, size_t mlen, const char *path,
                            size_t plen) {
  /* Cheapest first: the method is a length and a memcmp. */
  if (c->method && (!method || c->method_len != mlen || memcmp(c->method, method, mlen) != 0))
    return false;
  if (c->path && !mesh__regex_match(c->path, path, plen)) return false;
  for (size_t i = 0; i < c->nall; i++)
    if (!request_matches(&c->all[i], method, mlen, path, plen)) return false;
  if (c->has_any) {
    bool hit = false;
    for (size_t i = 0; i < c->nany && !hit; i++)
      hit = request_matches(&c->any[i], method, mlen, path, plen);
    if (!hit) return false;
  }
  return !c->neg || !request_matches(c->neg, method, mlen, path, plen);
}

const mesh_route *mesh_profile_match(const mesh_profile *p, const char *method, const char *path,
                                     size_t path_len) {
  if (!p) return NULL;
  if (!path) path_len = 0;
  size_t mlen = method ? strlen(method) : 0;
  for (size_t i = 0; i < p->rs->n; i++)
    if (request_matches(&p->rs->routes[i].cond, method, mlen, path, path_len))
      return &p->rs->routes[i];
  return NULL;
}

const char *mesh_route_name(const mesh_route *r) { return r ? r->name : NULL; }
uint64_t mesh_route_timeout_ms(const mesh_route *r) {
  return r ? r->timeout_ms : MESH_ROUTE_DEFAULT_TIMEOUT_MS;
}
int mesh_route_is_retryable(const mesh_route *r) { return r && r->retryable; }
size_t mesh_route_index(const mesh_route *r) { return r ? r->index : 0; }

static bool response_matches(const cond *c, uint32_t status) {
  if (c->has_status && (status < c->min || status > c->max)) return false;
  for (size_t i = 0; i < c->nall; i++)
    if (!response_matches(&c->all[i], status)) return false;
  if (c->has_any) {
    bool hit = false;
    for (size_t i = 0; i < c->nany && !hit; i++) hit = response_matches(&c->any[i], status);
    if (!hit) return false;
  }
  return !c->neg || !response_matches(c->neg, status);
}

int mesh_route_classify(const mesh_route *r, uint32_t http_status, int32_t grpc_status) {
  if (r)
    for (size_t i = 0; i < r->nclasses; i++)
      if (response_matches(&r->classes[i].cond, http_status)) return r->classes[i].failure;
  if (grpc_status >= 0) {
    switch (grpc_status) {
    case 2:  /* Unknown */
    case 4:  /* DeadlineExceeded */
    case 7:  /* PermissionDenied */
    case 13: /* Internal */
    case 14: /* Unavailable */
    case 15: /* DataLoss */
      return 1;
    default:
      return 0;
    }
  }
  return http_status >= 500;
}

static void put_budget(const budget *b, double *ratio, uint32_t *min_per_sec, uint64_t *ttl_ms) {
  if (ratio) *ratio = b->ratio;
  if (min_per_sec) *min_per_sec = b->min_per_sec;
  if (ttl_ms) *ttl_ms = b->ttl_ms;
}

int mesh_route_retry_budget(const mesh_route *r, double *ratio, uint32_t *min_per_sec,
                            uint64_t *ttl_ms) {
  const budget *b = !r ? &default_budget : r->own_budget ? &r->budget : r->shared;
  put_budget(b, ratio, min_per_sec, ttl_ms);
  return r && r->own_budget;
}

void mesh_profile_retry_budget(const mesh_profile *p, double *ratio, uint32_t *min_per_sec,
                               uint64_t *ttl_ms) {
  put_budget(p ? &p->rs->budget : &default_budget, ratio, min_per_sec, ttl_ms);
}

const mesh_split *mesh_profile_dst_overrides(const mesh_profile *p) { return p ? p->dst : NULL; }
size_t mesh_profile_opaque_port_count(const mesh_profile *p) { return p ? p->nports : 0; }
uint16_t mesh_profile_opaque_port(const mesh_profile *p, size_t i) {
  return p && i < p->nports ? p->ports[i] : 0;
}

int mesh_profile_with_split(mesh_ctx *ctx, const mesh_profile *base, const mesh_split *split,
                            const char *cluster_domain, uint16_t port, mesh_profile **ret) {
  if (!ctx || !split || !ret || port == 0) return MESH_ERR_INVALID;
  if (!cluster_domain) cluster_domain = "cluster.local";
  size_t n = mesh_split_count(split);
  /* An unsealed split cannot pick; neither could the profile made from it. */
  if (!*cluster_domain || n == 0 || mesh_split_pick(split, 0) == (size_t)-1)
    return MESH_ERR_INVALID;
  const char *split_ns = mesh_split_namespace(split);
  mesh_profile *p = base ? profile_new(ctx, base->name, base->ns)
                         : profile_new(ctx, mesh_split_service(split), split_ns);
  if (!p) return MESH_ERR_NOMEM;
  int rc = 0;
  if (base) {
    /* The routes are immutable: share them. */
    p->rs = base->rs;
    atomic_fetch_add_explicit(&p->rs->refs, 1u, memory_order_relaxed);
    if (base->nports) {
      p->ports = mesh__calloc(ctx, base->nports, sizeof *p->ports);
      if (!p->ports) rc = MESH_ERR_NOMEM;
      else memcpy(p->ports, base->ports, base->nports * sizeof *p->ports);
      p->nports = p->ports ? base->nports : 0;
    }
  } else if (!(p->rs = route_set_new(ctx))) {
    rc = MESH_ERR_NOMEM;
  }
  if (rc == 0) rc = mesh_split_new(ctx, p->name, p->ns, &p->dst);
  for (size_t i = 0; i < n && rc == 0; i++) {
    char *authority = mesh__sprintf(ctx, "%s.%s.svc.%s:%u", mesh_split_backend(split, i), split_ns,
                                    cluster_domain, (unsigned)port);
    rc = authority ? mesh_split_add(p->dst, authority, mesh_split_weight_milli(split, i))
                   : MESH_ERR_NOMEM;
    mesh__free(ctx, authority);
  }
  if (rc == 0) rc = mesh_split_seal(p->dst);
  if (rc < 0) {
    mesh_profile_unref(p);
    return rc;
  }
  *ret = p;
  return 0;
}
