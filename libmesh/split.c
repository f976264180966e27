/* libmesh traffic splits: weighted backends from TrafficSplits and dstOverrides, alloc-free pick. */
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
#include "split_internal.h"

/* A bound on what one TrafficSplit may list: picking stays a handful of
 * comparisons and sealing (quadratic at worst) stays cheap. */
#define SPLIT_MAX_BACKENDS 256

typedef struct {
  char *name;
  uint64_t milli;  /* weight as written, in thousandths */
  uint64_t cum;    /* sum of milli up to and including this backend */
  uint32_t weight; /* normalised: all add up to MESH_WEIGHT_TOTAL */
} backend;

struct mesh_split {
  mesh_ctx *ctx;
  atomic_uint refs;
  bool sealed;
  char *service;
  char *ns;
  backend *b;
  size_t n, cap;
  uint64_t total; /* sum of milli */
};

int mesh_split_new(mesh_ctx *ctx, const char *service, const char *ns, mesh_split **ret) {
  if (!ctx || !service || !*service || !ret || (ns && !*ns)) return MESH_ERR_INVALID;
  mesh_split *s = mesh__calloc(ctx, 1, sizeof *s);
  if (!s) return MESH_ERR_NOMEM;
  s->ctx = ctx;
  atomic_init(&s->refs, 1u);
  s->service = mesh__strdup(ctx, service);
  s->ns = mesh__strdup(ctx, ns ? ns : "default");
  if (!s->service || !s->ns) {
    mesh_split_unref(s);
    return MESH_ERR_NOMEM;
  }
  *ret = s;
  return 0;
}

int mesh_split_add(mesh_split *s, const char *name, uint64_t weight_milli) {
  if (!s || !name || !*name || s->sealed) return MESH_ERR_INVALID;
  if (s->n >= SPLIT_MAX_BACKENDS) return MESH_ERR_LIMIT;
  uint64_t total;
  if (__builtin_add_overflow(s->total, weight_milli, &total)) return MESH_ERR_RANGE;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4;
    if (cap > SPLIT_MAX_BACKENDS) cap = SPLIT_MAX_BACKENDS;
    backend *nb = mesh__realloc(s->ctx, s->b, cap * sizeof *nb);
    if (!nb) return MESH_ERR_NOMEM;
    s->b = nb;
    s->cap = cap;
  }
  char *copy = mesh__strdup(s->ctx, name);
  if (!copy) return MESH_ERR_NOMEM;
  s->b[s->n++] = (backend){.name = copy, .milli = weight_milli, .cum = total};
  s->total = total;
  return 0;
}

/* floor(a * MESH_WEIGHT_TOTAL / t) and its remainder, for a <= t, without a
 * 128-bit type: shift-and-add over the bits of the multiplier, keeping the
 * partial product reduced modulo t so nothing overflows even near 2^64. */
_Static_assert(MESH_WEIGHT_TOTAL < (1u << 14), "scale_to_total walks 14 bits");
static uint32_t scale_to_total(uint64_t a, uint64_t t, uint64_t *rem) {
  uint32_t q = 0;
  uint64_t r = 0;
  for (int bit = 13; bit >= 0; bit--) {
    q <<= 1;
    if (r >= t - r) r -= t - r, q++;
    else r += r;
    if ((MESH_WEIGHT_TOTAL >> bit) & 1u) {
      if (r >= t - a) r -= t - a, q++;
      else r += a;
    }
  }
  *rem = r;
  return q;
}

typedef struct {
  uint64_t rem;
  size_t i;
} remainder;

/* Largest remainder first; ties go to the backend listed first, so the
 * result does not depend on the sort's stability. */
static int by_remainder(const void *pa, const void *pb) {
  const remainder *a = pa, *b = pb;
  if (a->rem != b->rem) return a->rem > b->rem ? -1 : 1;
  return a->i < b->i ? -1 : a->i > b->i;
}

int mesh_split_seal(mesh_split *s) {
  if (!s) return MESH_ERR_INVALID;
  if (s->sealed) return 0;
  if (s->n == 0 || s->total == 0) return MESH_ERR_INVALID;
  /* Hamilton's method: floors first, then the units still missing go to the
   * largest remainders. Since every remainder is below the total, exactly
   * "missing" backends have a positive one, so a zero weight never gains. */
  remainder rems[SPLIT_MAX_BACKENDS];
  uint32_t assigned = 0;
  for (size_t i = 0; i < s->n; i++) {
    s->b[i].weight = scale_to_total(s->b[i].milli, s->total, &rems[i].rem);
    rems[i].i = i;
    assigned += s->b[i].weight;
  }
  qsort(rems, s->n, sizeof rems[0], by_remainder);
  for (size_t k = 0; assigned < MESH_WEIGHT_TOTAL && k < s->n; k++, assigned++)
    s->b[rems[k].i].weight++;
  s->sealed = true;
  return 0;
}

mesh_split *mesh_split_ref(const mesh_split *s) {
  if (!s) return NULL;
  /* The count is the only mutable part of a shared split. */
  mesh_split *m = (mesh_split *)s;
  atomic_fetch_add_explicit(&m->refs, 1u, memory_order_relaxed);
  return m;
}

void mesh_split_unref(mesh_split *s) {
  if (!s) return;
  if (atomic_fetch_sub_explicit(&s->refs, 1u, memory_order_acq_rel) != 1u) return;
  for (size_t i = 0; i < s->n; i++) mesh__free(s->ctx, s->b[i].name);
  mesh__free(s->ctx, s->b);
  mesh__free(s->ctx, s->service);
  mesh__free(s->ctx, s->ns);
  mesh__free(s->ctx, s);
}

const char *mesh_split_service(const mesh_split *s) { return s ? s->service : NULL; }
const char *mesh_split_namespace(const mesh_split *s) { return s ? s->ns : NULL; }
size_t mesh_split_count(const mesh_split *s) { return s ? s->n : 0; }

const char *mesh_split_backend(const mesh_split *s, size_t i) {
  return s && i < s->n ? s->b[i].name : NULL;
}

uint64_t mesh_split_weight_milli(const mesh_split *s, size_t i) {
  return s && i < s->n ? s->b[i].milli : 0;
}

uint32_t mesh_split_weight(const mesh_split *s, size_t i) {
  return s && s->sealed && i < s->n ? s->b[i].weight : 0;
}

size_t mesh_split_pick(const mesh_split *s, uint32_t rnd) {
  if (!s || !s->sealed) return (size_t)-1;
  /* x = floor(total * rnd / 2^32), uniform over [0, total) up to 2^-32 per
   * backend, with no modulo bias. The total may use all 64 bits, so the
   * 96-bit product is taken in two halves: the high half of total times rnd
   * is exact in 64 bits, and the low half contributes only its carry. */
  uint64_t t = s->total;
  uint64_t x = (t >> 32) * rnd + (((t & 0xffffffffu) * rnd) >> 32);
  /* The first backend whose cumulative weight exceeds x. A zero-weight
   * backend repeats its predecessor's sum, so it is never the first. */
  size_t lo = 0, hi = s->n - 1;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->b[mid].cum > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/* ---- compiling a TrafficSplit document ---- */

/* Service names are RFC 1123 labels, since backends become DNS names such as
 * <backend>.<namespace>.svc.cluster.local. */
#define valid_service_name mesh_dns_label_valid

static bool plain_integer(const mesh__node *v) {
  if (v->type != MESH_NODE_SCALAR || v->quoted || v->len == 0) return false;
  size_t i = v->str[0] == '-' || v->str[0] == '+';
  if (i == v->len) return false;
  for (; i < v->len; i++)
    if (v->str[i] < '0' || v->str[i] > '9') return false;
  return true;
}

/* Reads backends[i].weight in thousandths. v1alpha1 wrote it as a
 * quantity; v1alpha2 and later as an integer, but the quantity form is read
 * too (with a warning), since it has only one meaning. */
static bool read_weight(mesh__reader *r, const mesh__node *item, int version, int64_t *out) {
  const mesh__node *v = mesh__node_get(item, "weight");
  if (!v) {
    mesh__error(r, item, "missing required field 'weight'");
    return false;
  }
  if (!mesh__read_quantity_milli(r, item, "weight", out)) return false;
  if (*out < 0) {
    mesh__error(r, v, "weight must not be negative, found %s", v->str);
    return false;
  }
  if (version >= 2 && !plain_integer(v))
    mesh__warn(r, v,
               "split.smi-spec.io/v1alpha%d wants an integer weight; '%s' is read as a "
               "quantity (%lld.%03lld)",
               version, v->str, (long long)(*out / 1000), (long long)(*out % 1000));
  return true;
}

/* v1alpha3 and v1alpha4 route part of the traffic by HTTPRouteGroup; the
 * mesh splits all of a service's traffic, so matches are checked for shape
 * and reported as not applied rather than silently dropped. */
static void read_matches(mesh__reader *r, const mesh__node *matches, const char *service) {
  static const char *const ref_keys[] = {"apiGroup", "kind", "name", NULL};
  if (!mesh__want_seq(r, matches)) return;
  for (size_t i = 0; i < matches->n; i++) {
    const mesh__node *m = matches->kids[i];
    if (!mesh__want_map(r, m)) continue;
    mesh__check_keys(r, m, ref_keys);
    const char *kind = NULL, *name = NULL;
    mesh__read_string(r, m, "kind", true, &kind);
    mesh__read_string(r, m, "name", true, &name);
  }
  if (matches->n > 0)
    mesh__warn(r, matches,
               "matches are not applied: the mesh splits all traffic to '%s' between the backends",
               service ? service : "the service");
}

/* The first backend before index i with the same service name, or NULL. */
static const mesh__node *earlier_duplicate(const mesh__node *backends, size_t i, const char *name) {
  for (size_t j = 0; j < i; j++) {
    const mesh__node *svc = mesh__node_get(backends->kids[j], "service");
    if (svc && svc->type == MESH_NODE_SCALAR && strcmp(svc->str, name) == 0) return svc;
  }
  return NULL;
}

/* Checks every backend (all of them, to report every problem) and adds the
 * valid ones to s when there is one. Returns 0 or MESH_ERR_NOMEM. */
static int read_backends(mesh__reader *r, const mesh__node *backends, int version, mesh_split *s) {
  static const char *const backend_keys[] = {"service", "weight", NULL};
  if (!mesh__want_seq(r, backends)) return 0;
  if (backends->n == 0) {
    mesh__error(r, backends, "at least one backend is required");
    return 0;
  }
  if (backends->n > SPLIT_MAX_BACKENDS)
    mesh__error(r, backends, "at most %d backends are allowed, found %zu", SPLIT_MAX_BACKENDS,
                backends->n);
  size_t errors_before = r->errors;
  bool any_weight = false;
  for (size_t i = 0; i < backends->n; i++) {
    const mesh__node *item = backends->kids[i];
    if (!mesh__want_map(r, item)) continue;
    mesh__check_keys(r, item, backend_keys);
    const char *name = NULL;
    int64_t milli = 0;
    bool ok = mesh__read_string(r, item, "service", true, &name);
    ok = read_weight(r, item, version, &milli) && ok;
    if (!ok) continue;
    const mesh__node *svc = mesh__node_get(item, "service");
    if (!valid_service_name(name)) {
      mesh__error(r, svc,
                  "'%s' is not a valid service name (lower-case letters, digits and '-', at most "
                  "63)",
                  name);
      continue;
    }
    const mesh__node *first = earlier_duplicate(backends, i, name);
    if (first) {
      mesh__error(r, svc, "backend '%s' is listed twice (first at line %u)", name, first->line);
      continue;
    }
    if (milli > 0) any_weight = true;
    if (!s || backends->n > SPLIT_MAX_BACKENDS) continue;
    int rc = mesh_split_add(s, name, (uint64_t)milli);
    if (rc == MESH_ERR_RANGE)
      mesh__error(r, mesh__node_get(item, "weight"), "the weights add up to more than %llu",
                  (unsigned long long)UINT64_MAX / 1000);
    else if (rc < 0)
      return rc;
  }
  /* Only meaningful when every backend was read: a bad weight is not zero. */
  if (r->errors == errors_before && !any_weight)
    mesh__error(r, backends, "every backend has weight 0: nothing could receive traffic");
  return 0;
}

int mesh__split_compile(mesh__reader *r, const mesh__node *doc, mesh_split **ret) {
  static const char *const root_keys[] = {"apiVersion", "kind", "metadata", "spec", NULL};
  static const char *const spec_keys[] = {"service", "backends", NULL};
  static const char *const spec_keys_matches[] = {"service", "backends", "matches", NULL};
  size_t errors_before = r->errors;

  /* manifest.c admitted only v1alpha1..v1alpha4; the digit picks the rules. */
  const char *api = NULL;
  mesh__read_string(r, doc, "apiVersion", true, &api);
  const char *v = api ? strstr(api, "/v1alpha") : NULL;
  int version = v ? atoi(v + strlen("/v1alpha")) : 1;

  const char *ns = NULL;
  const mesh__node *meta = mesh__node_get(doc, "metadata");
  const mesh__node *nsn = mesh__node_get(meta, "namespace");
  if (nsn && nsn->type == MESH_NODE_SCALAR && nsn->len > 0) ns = nsn->str;

  mesh__check_keys(r, doc, root_keys);
  const mesh__node *spec = mesh__node_get(doc, "spec");
  if (!spec) {
    mesh__error(r, doc, "missing required field 'spec'");
    return MESH_ERR_PARSE;
  }
  if (!mesh__want_map(r, spec)) return MESH_ERR_PARSE;
  mesh__check_keys(r, spec, version >= 3 ? spec_keys_matches : spec_keys);

  const char *service = NULL;
  if (mesh__read_string(r, spec, "service", true, &service) && service &&
      !valid_service_name(service)) {
    mesh__error(r, mesh__node_get(spec, "service"),
                "'%s' is not a valid service name (lower-case letters, digits and '-', at most "
                "63)",
                service);
    service = NULL;
  }
  const mesh__node *matches = mesh__node_get(spec, "matches");
  if (matches && version >= 3) read_matches(r, matches, service);

  mesh_split *s = NULL;
  if (service && r->errors == errors_before) {
    int rc = mesh_split_new(r->ctx, service, ns, &s);
    if (rc < 0) return rc;
  }
  const mesh__node *backends = mesh__node_get(spec, "backends");
  if (!backends) {
    mesh__error(r, spec, "missing required field 'backends'");
  } else {
    int rc = read_backends(r, backends, version, s);
    if (rc < 0) {
      mesh_split_unref(s);
      return rc;
    }
  }
  if (r->errors != errors_before) {
    mesh_split_unref(s);
    return MESH_ERR_PARSE;
  }
  /* No errors means a service, at least one backend and a positive total. */
  int rc = mesh_split_seal(s);
  if (rc < 0) {
    mesh_split_unref(s);
    return rc;
  }
  *ret = s;
  return 0;
}

int mesh_split_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                     mesh_diags *diags, mesh_split **ret) {
  if (!ctx || (!buf && len) || !ret) return MESH_ERR_INVALID;
  if (!file) file = "<input>";
  mesh_manifest *m;
  int rc = mesh_manifest_load_buffer(ctx, file, buf, len, diags, &m);
  if (rc < 0) return rc;
  size_t n = mesh_manifest_count(m);
  if (n != 1) {
    const mesh__node *second = n > 1 ? mesh__manifest_node(m, 1) : NULL;
    rc = mesh__diag_add(diags, MESH_DIAG_ERROR, file, second ? second->line : 0,
                        second ? second->col : 0,
                        "expected exactly one document, a TrafficSplit; found %zu", n);
  } else if (mesh_manifest_kind(m, 0) != MESH_KIND_TRAFFIC_SPLIT) {
    const mesh__node *root = mesh__manifest_node(m, 0);
    const char *api = mesh_manifest_api_version(m, 0), *kind = mesh_manifest_kind_name(m, 0);
    rc = mesh__diag_add(diags, MESH_DIAG_ERROR, file, root->line, root->col,
                        "expected a TrafficSplit (split.smi-spec.io), found %s %s",
                        api ? api : "a document without apiVersion", kind ? kind : "");
  } else {
    *ret = mesh_split_ref(mesh_manifest_split(m, 0));
    mesh_manifest_free(m);
    return 0;
  }
  mesh_manifest_free(m);
  return rc < 0 ? rc : MESH_ERR_PARSE;
}
