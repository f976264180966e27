/* libmesh metrics: registry, families, lock-free series updates and Prometheus text exposition. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <mesh/error.h>
#include <mesh/metrics.h>
#include "ctx_internal.h"

/* The process collector sits in the family list like a family, so that it
 * renders where it was registered; it has no series of its own. */
#define FAM_PROCESS 100

/* The hot path relies on these being plain lock-free instructions. */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");

struct mesh_metrics {
  mesh_ctx *ctx;
  pthread_mutex_t mu;
  mesh_metric_family **fams; /* registration order */
  size_t nfams, cap;
};

struct mesh_metric_family {
  mesh_ctx *ctx;
  mesh_metrics *reg; /* NULL once the registry is freed */
  atomic_uint refs;  /* the registry's, plus one per series alive */
  int type;
  char *name;
  char *help; /* "" when none */
  char **labels;
  size_t nlabels;
  uint64_t *bounds;
  size_t nbounds;
  /* Under reg->mu: */
  size_t max_series;
  size_t nseries;
  mesh_metric_series **table; /* hash chains, tcap a power of two */
  size_t tcap;
  mesh_metric_series *first, *last; /* creation order */
};

struct mesh_metric_series {
  mesh_metric_family *fam;
  atomic_uint refs;
  /* Copies of the family's, so an update touches only this block. */
  int type;
  size_t nbounds;
  const uint64_t *bounds;
  /* Under the registry's mutex: */
  bool listed;
  uint64_t hash;
  mesh_metric_series *hnext, *prev, *next;
  char **values; /* nlabels strings, in this same block */
  /* Counter: the count. Gauge: the bits of a double, so that set and add
   * stay single lock-free words. Histogram: unused. */
  _Atomic uint64_t value;
  _Atomic uint64_t sum; /* histogram */
  _Atomic uint64_t buckets[]; /* histogram: nbounds + 1, not cumulative */
};

static const uint64_t latency_bounds[] = {1,    2,    3,    4,     5,     10,    20,   30,   40,
                                          50,   100,  200,  300,   400,   500,   1000, 2000, 3000,
                                          4000, 5000, 10000, 20000, 30000, 40000, 50000};
#define LATENCY_NBOUNDS (sizeof latency_bounds / sizeof latency_bounds[0])

const uint64_t *mesh_metrics_latency_bounds(size_t *count) {
  if (count) *count = LATENCY_NBOUNDS;
  return latency_bounds;
}

/* ---- validation ---- */

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF,
 * since Prometheus rejects what is not valid UTF-8. */
static bool utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) k = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      k = 2;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      k = 3;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    } else return false;
    if (n - i <= k) return false;
    if (s[i + 1] < lo || s[i + 1] > hi) return false;
    for (size_t j = 2; j <= k; j++)
      if ((s[i + j] & 0xc0) != 0x80) return false;
    i += k + 1;
  }
  return true;
}

static bool is_alpha_(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_digit(int c) { return c >= '0' && c <= '9'; }

/* 0, MESH_ERR_INVALID or MESH_ERR_LIMIT. colons: metric names allow ':'. */
static int check_name(const char *s, bool colons) {
  if (!s || !*s) return MESH_ERR_INVALID;
  size_t n = strlen(s);
  if (n > MESH_METRICS_MAX_NAME) return MESH_ERR_LIMIT;
  for (size_t i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (!(is_alpha_(c) || (colons && c == ':') || (i > 0 && is_digit(c)))) return MESH_ERR_INVALID;
  }
  return 0;
}

/* ---- families ---- */

static void family_unref(mesh_metric_family *f) {
  if (!f || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1) return;
  mesh_ctx *ctx = f->ctx;
  for (size_t i = 0; i < f->nlabels; i++) mesh__free(ctx, f->labels[i]);
  mesh__free(ctx, f->labels);
  mesh__free(ctx, f->bounds);
  mesh__free(ctx, f->table);
  mesh__free(ctx, f->name);
  mesh__free(ctx, f->help);
  mesh__free(ctx, f);
}

static bool streq_suffix(const char *n, const char *name, const char *suffix) {
  size_t l = strlen(name);
  return strncmp(n, name, l) == 0 && strcmp(n + l, suffix) == 0;
}

static const char *const process_names[] = {
    "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
    "process_open_fds",          "process_max_fds",               "process_start_time_seconds"};
#define NPROCESS (sizeof process_names / sizeof process_names[0])

/* Whether a sample or family named n would belong to family f. */
static bool owns(const mesh_metric_family *f, const char *n) {
  if (f->type == FAM_PROCESS) {
    for (size_t i = 0; i < NPROCESS; i++)
      if (strcmp(process_names[i], n) == 0) return true;
    return false;
  }
  if (strcmp(f->name, n) == 0) return true;
  return f->type == MESH_METRIC_HISTOGRAM &&
         (streq_suffix(n, f->name, "_bucket") || streq_suffix(n, f->name, "_sum") ||
          streq_suffix(n, f->name, "_count"));
}

/* Whether any of the names a new family of this type would expose is owned already. */
static bool names_taken(const mesh_metrics *reg, int type, const char *name) {
  char buf[MESH_METRICS_MAX_NAME + 16];
  const char *const hist_suffixes[] = {"", "_bucket", "_sum", "_count"};
  size_t nsuffix = type == MESH_METRIC_HISTOGRAM ? 4 : 1;
  for (size_t i = 0; i < reg->nfams; i++) {
    for (size_t k = 0; k < nsuffix; k++) {
      snprintf(buf, sizeof buf, "%s%s", name, hist_suffixes[k]);
      if (owns(reg->fams[i], buf)) return true;
    }
  }
  return false;
}

static bool same_family(const mesh_metric_family *f, int type, const char *help,
                        const char *const *labels, size_t nlabels, const uint64_t *bounds,
                        size_t nbounds) {
  if (f->type != type || strcmp(f->help, help) != 0 || f->nlabels != nlabels ||
      f->nbounds != nbounds)
    return false;
  for (size_t i = 0; i < nlabels; i++)
    if (strcmp(f->labels[i], labels[i]) != 0) return false;
  for (size_t i = 0; i < nbounds; i++)
    if (f->bounds[i] != bounds[i]) return false;
  return true;
}

/* Appends f to the registry's list; the caller holds the mutex. */
static int reg_append(mesh_metrics *reg, mesh_metric_family *f) {
  if (reg->nfams == reg->cap) {
    size_t cap = reg->cap ? reg->cap * 2 : 8;
    mesh_metric_family **nf = mesh__realloc(reg->ctx, reg->fams, cap * sizeof *nf);
    if (!nf) return MESH_ERR_NOMEM;
    reg->fams = nf;
    reg->cap = cap;
  }
  reg->fams[reg->nfams++] = f;
  return 0;
}

static int add_family(mesh_metrics *reg, int type, const char *name, const char *help,
                      const char *const *labels, size_t nlabels, const uint64_t *bounds,
                      size_t nbounds, mesh_metric_family **ret) {
  if (!reg || !ret || (nlabels && !labels)) return MESH_ERR_INVALID;
  int rc = check_name(name, true);
  if (rc < 0) return rc;
  if (!help) help = "";
  size_t hl = strlen(help);
  if (hl > MESH_METRICS_MAX_HELP) return MESH_ERR_LIMIT;
  if (!utf8_valid((const unsigned char *)help, hl)) return MESH_ERR_INVALID;
  if (nlabels > MESH_METRICS_MAX_LABELS) return MESH_ERR_LIMIT;
  for (size_t i = 0; i < nlabels; i++) {
    if ((rc = check_name(labels[i], false)) < 0) return rc;
    /* "__" names are Prometheus' own; "le" is the bucket label. */
    if (strncmp(labels[i], "__", 2) == 0) return MESH_ERR_INVALID;
    if (type == MESH_METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0) return MESH_ERR_INVALID;
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i], labels[j]) == 0) return MESH_ERR_INVALID;
  }
  if (type == MESH_METRIC_HISTOGRAM) {
    if (nbounds == 0) {
      bounds = latency_bounds;
      nbounds = LATENCY_NBOUNDS;
    }
    if (!bounds) return MESH_ERR_INVALID;
    if (nbounds > MESH_METRICS_MAX_BOUNDS) return MESH_ERR_LIMIT;
    for (size_t i = 1; i < nbounds; i++)
      if (bounds[i] <= bounds[i - 1]) return MESH_ERR_INVALID;
  } else {
    bounds = NULL;
    nbounds = 0;
  }

  pthread_mutex_lock(&reg->mu);
  for (size_t i = 0; i < reg->nfams; i++) {
    mesh_metric_family *f = reg->fams[i];
    if (f->type != FAM_PROCESS && strcmp(f->name, name) == 0) {
      bool same = same_family(f, type, help, labels, nlabels, bounds, nbounds);
      pthread_mutex_unlock(&reg->mu);
      if (!same) return MESH_ERR_INVALID;
      *ret = f;
      return 0;
    }
  }
  if (names_taken(reg, type, name)) {
    pthread_mutex_unlock(&reg->mu);
    return MESH_ERR_INVALID;
  }

  mesh_ctx *ctx = reg->ctx;
  rc = MESH_ERR_NOMEM;
  mesh_metric_family *f = mesh__calloc(ctx, 1, sizeof *f);
  if (!f) goto out;
  f->ctx = ctx;
  atomic_init(&f->refs, 1u);
  f->type = type;
  f->max_series = MESH_METRICS_DEFAULT_MAX_SERIES;
  if (!(f->name = mesh__strdup(ctx, name)) || !(f->help = mesh__strdup(ctx, help))) goto fail;
  if (nlabels) {
    if (!(f->labels = mesh__calloc(ctx, nlabels, sizeof *f->labels))) goto fail;
    for (size_t i = 0; i < nlabels; i++, f->nlabels++)
      if (!(f->labels[i] = mesh__strdup(ctx, labels[i]))) goto fail;
  }
  if (nbounds) {
    if (!(f->bounds = mesh__calloc(ctx, nbounds, sizeof *f->bounds))) goto fail;
    memcpy(f->bounds, bounds, nbounds * sizeof *bounds);
    f->nbounds = nbounds;
  }
  if (reg_append(reg, f) < 0) goto fail;
  f->reg = reg;
  *ret = f;
  rc = 0;
  goto out;
fail:
  family_unref(f);
out:
  pthread_mutex_unlock(&reg->mu);
  return rc;
}

int mesh_metrics_counter(mesh_metrics *reg, const char *name, const char *help,
                         const char *const *labels, size_t nlabels, mesh_metric_family **ret) {
  return add_family(reg, MESH_METRIC_COUNTER, name, help, labels, nlabels, NULL, 0, ret);
}

int mesh_metrics_gauge(mesh_metrics *reg, const char *name, const char *help,
                       const char *const *labels, size_t nlabels, mesh_metric_family **ret) {
  return add_family(reg, MESH_METRIC_GAUGE, name, help, labels, nlabels, NULL, 0, ret);
}

int mesh_metrics_histogram(mesh_metrics *reg, const char *name, const char *help,
                           const char *const *labels, size_t nlabels, const uint64_t *bounds,
                           size_t nbounds, mesh_metric_family **ret) {
  return add_family(reg, MESH_METRIC_HISTOGRAM, name, help, labels, nlabels, bounds, nbounds,
                    ret);
}

int mesh_metrics_family_set_max_series(mesh_metric_family *f, size_t max) {
  if (!f || max == 0 || f->type == FAM_PROCESS || !f->reg) return MESH_ERR_INVALID;
  pthread_mutex_lock(&f->reg->mu);
  f->max_series = max;
  pthread_mutex_unlock(&f->reg->mu);
  return 0;
}

size_t mesh_metrics_family_series_count(mesh_metric_family *f) {
  if (!f || !f->reg) return 0;
  pthread_mutex_lock(&f->reg->mu);
  size_t n = f->nseries;
  pthread_mutex_unlock(&f->reg->mu);
  return n;
}

int mesh_metrics_family_type(const mesh_metric_family *f) { return f ? f->type : 0; }

const char *mesh_metrics_family_name(const mesh_metric_family *f) { return f ? f->name : NULL; }

/* ---- registry ---- */

int mesh_metrics_new(mesh_ctx *ctx, mesh_metrics **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_metrics *reg = mesh__calloc(ctx, 1, sizeof *reg);
  if (!reg) return MESH_ERR_NOMEM;
  reg->ctx = ctx;
  if (pthread_mutex_init(&reg->mu, NULL) != 0) {
    mesh__free(ctx, reg);
    return MESH_ERR_NOMEM;
  }
  *ret = reg;
  return 0;
}

void mesh_metrics_free(mesh_metrics *reg) {
  if (!reg) return;
  for (size_t i = 0; i < reg->nfams; i++) {
    mesh_metric_family *f = reg->fams[i];
    mesh_metric_series *s = f->first;
    f->first = f->last = NULL;
    f->nseries = 0;
    f->reg = NULL;
    while (s) {
      mesh_metric_series *next = s->next;
      s->listed = false;
      s->prev = s->next = s->hnext = NULL;
      mesh_metrics_series_unref(s);
      s = next;
    }
    mesh__free(f->ctx, f->table);
    f->table = NULL;
    f->tcap = 0;
    family_unref(f);
  }
  pthread_mutex_destroy(&reg->mu);
  mesh__free(reg->ctx, reg->fams);
  mesh__free(reg->ctx, reg);
}

/* ---- series ---- */

static uint64_t hash_values(const char *const *values, size_t n) {
  uint64_t h = 0xcbf29ce484222325u; /* FNV-1a, the NUL of each value included */
  for (size_t i = 0; i < n; i++) {
    const unsigned char *p = (const unsigned char *)values[i];
    do {
      h ^= *p;
      h *= 0x100000001b3u;
    } while (*p++);
  }
  return h;
}

static bool values_equal(const mesh_metric_series *s, const char *const *values, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(s->values[i], values[i]) != 0) return false;
  return true;
}

/* Grows (or makes) the hash table; the caller holds the mutex. A failed
 * growth is harmless (chains get longer); only a missing table is an error. */
static int table_reserve(mesh_metric_family *f) {
  if (f->table && f->nseries < f->tcap) return 0; /* load factor stays below 1 */
  size_t cap = f->tcap ? f->tcap * 2 : 16;
  mesh_metric_series **t = mesh__calloc(f->ctx, cap, sizeof *t);
  if (!t) return f->table ? 0 : MESH_ERR_NOMEM;
  for (size_t i = 0; i < f->tcap; i++) {
    mesh_metric_series *s = f->table[i];
    while (s) {
      mesh_metric_series *next = s->hnext;
      size_t b = s->hash & (cap - 1);
      s->hnext = t[b];
      t[b] = s;
      s = next;
    }
  }
  mesh__free(f->ctx, f->table);
  f->table = t;
  f->tcap = cap;
  return 0;
}

int mesh_metrics_series(mesh_metric_family *f, const char *const *values, size_t nvalues,
                        mesh_metric_series **ret) {
  if (!f || !ret || f->type == FAM_PROCESS || nvalues != f->nlabels || (nvalues && !values))
    return MESH_ERR_INVALID;
  size_t bytes = 0;
  for (size_t i = 0; i < nvalues; i++) {
    if (!values[i]) return MESH_ERR_INVALID;
    size_t l = strnlen(values[i], MESH_METRICS_MAX_LABEL_VALUE + 1);
    if (l > MESH_METRICS_MAX_LABEL_VALUE) return MESH_ERR_LIMIT;
    if (!utf8_valid((const unsigned char *)values[i], l)) return MESH_ERR_INVALID;
    bytes += l + 1;
  }
  mesh_metrics *reg = f->reg;
  if (!reg) return MESH_ERR_CLOSED; /* misuse: the family outlived its registry through series */
  uint64_t h = hash_values(values, nvalues);

  pthread_mutex_lock(&reg->mu);
  if (f->table)
    for (mesh_metric_series *s = f->table[h & (f->tcap - 1)]; s; s = s->hnext)
      if (s->hash == h && values_equal(s, values, nvalues)) {
        atomic_fetch_add_explicit(&s->refs, 1u, memory_order_relaxed);
        pthread_mutex_unlock(&reg->mu);
        *ret = s;
        return 0;
      }
  int rc = MESH_ERR_LIMIT;
  if (f->nseries >= f->max_series) goto out;
  if ((rc = table_reserve(f)) < 0) goto out;
  /* One block: the series, its buckets, the value pointers, the strings. */
  size_t nb = f->type == MESH_METRIC_HISTOGRAM ? f->nbounds + 1 : 0;
  size_t size =
      sizeof(mesh_metric_series) + nb * sizeof(uint64_t) + nvalues * sizeof(char *) + bytes;
  mesh_metric_series *s = mesh__malloc(f->ctx, size);
  rc = MESH_ERR_NOMEM;
  if (!s) goto out;
  memset(s, 0, sizeof *s);
  s->fam = f;
  atomic_init(&s->refs, 2u); /* the registry's and the caller's */
  s->type = f->type;
  s->nbounds = f->nbounds;
  s->bounds = f->bounds;
  s->hash = h;
  atomic_init(&s->value, 0);
  atomic_init(&s->sum, 0);
  for (size_t i = 0; i < nb; i++) atomic_init(&s->buckets[i], 0);
  s->values = (char **)(void *)((char *)s + sizeof *s + nb * sizeof(uint64_t));
  char *p = (char *)(s->values + nvalues);
  for (size_t i = 0; i < nvalues; i++) {
    size_t l = strlen(values[i]) + 1;
    memcpy(p, values[i], l);
    s->values[i] = p;
    p += l;
  }
  if (f->type == MESH_METRIC_GAUGE) {
    double zero = 0.0;
    uint64_t bits;
    memcpy(&bits, &zero, sizeof bits);
    atomic_init(&s->value, bits);
  }
  atomic_fetch_add_explicit(&f->refs, 1u, memory_order_relaxed);
  size_t b = h & (f->tcap - 1);
  s->hnext = f->table[b];
  f->table[b] = s;
  s->prev = f->last;
  if (f->last) f->last->next = s;
  else f->first = s;
  f->last = s;
  s->listed = true;
  f->nseries++;
  *ret = s;
  rc = 0;
out:
  pthread_mutex_unlock(&reg->mu);
  return rc;
}

mesh_metric_series *mesh_metrics_series_ref(mesh_metric_series *s) {
  if (s) atomic_fetch_add_explicit(&s->refs, 1u, memory_order_relaxed);
  return s;
}

void mesh_metrics_series_unref(mesh_metric_series *s) {
  if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  mesh_metric_family *f = s->fam;
  mesh__free(f->ctx, s);
  family_unref(f);
}

int mesh_metrics_series_remove(mesh_metric_series *s) {
  if (!s) return MESH_ERR_INVALID;
  mesh_metric_family *f = s->fam;
  mesh_metrics *reg = f->reg;
  if (!reg) return 0; /* the registry is gone: nothing lists it any more */
  bool drop = false;
  pthread_mutex_lock(&reg->mu);
  if (s->listed) {
    mesh_metric_series **pp = &f->table[s->hash & (f->tcap - 1)];
    while (*pp != s) pp = &(*pp)->hnext;
    *pp = s->hnext;
    if (s->prev) s->prev->next = s->next;
    else f->first = s->next;
    if (s->next) s->next->prev = s->prev;
    else f->last = s->prev;
    s->prev = s->next = s->hnext = NULL;
    s->listed = false;
    f->nseries--;
    drop = true;
  }
  pthread_mutex_unlock(&reg->mu);
  /* The caller still holds a reference, so this never frees. */
  if (drop) mesh_metrics_series_unref(s);
  return 0;
}

/* ---- hot path ---- */

static double bits_to_double(uint64_t b) {
  double d;
  memcpy(&d, &b, sizeof d);
  return d;
}

static uint64_t double_to_bits(double d) {
  uint64_t b;
  memcpy(&b, &d, sizeof b);
  return b;
}

static void gauge_add(mesh_metric_series *s, double delta) {
  uint64_t old = atomic_load_explicit(&s->value, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(&s->value, &old,
                                                double_to_bits(bits_to_double(old) + delta),
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

int mesh_metrics_inc(mesh_metric_series *s, uint64_t n) {
  if (!s) return MESH_ERR_INVALID;
  if (s->type == MESH_METRIC_COUNTER) atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
  else if (s->type == MESH_METRIC_GAUGE) gauge_add(s, (double)n);
  else return MESH_ERR_INVALID;
  return 0;
}

int mesh_metrics_dec(mesh_metric_series *s, uint64_t n) {
  if (!s || s->type != MESH_METRIC_GAUGE) return MESH_ERR_INVALID;
  gauge_add(s, -(double)n);
  return 0;
}

int mesh_metrics_set_double(mesh_metric_series *s, double v) {
  if (!s || s->type != MESH_METRIC_GAUGE) return MESH_ERR_INVALID;
  atomic_store_explicit(&s->value, double_to_bits(v), memory_order_relaxed);
  return 0;
}

int mesh_metrics_set(mesh_metric_series *s, int64_t v) {
  return mesh_metrics_set_double(s, (double)v);
}

int mesh_metrics_observe(mesh_metric_series *s, uint64_t v) {
  if (!s || s->type != MESH_METRIC_HISTOGRAM) return MESH_ERR_INVALID;
  /* The first bound >= v: Prometheus' le is inclusive. */
  size_t lo = 0, hi = s->nbounds;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (s->bounds[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&s->sum, v, memory_order_relaxed);
  return 0;
}

/* ---- reading ---- */

uint64_t mesh_metrics_count(const mesh_metric_series *s) {
  if (!s) return 0;
  if (s->type == MESH_METRIC_COUNTER) return atomic_load_explicit(&s->value, memory_order_relaxed);
  if (s->type == MESH_METRIC_HISTOGRAM) return mesh_metrics_bucket(s, s->nbounds);
  return 0;
}

double mesh_metrics_value(const mesh_metric_series *s) {
  if (!s) return 0;
  if (s->type == MESH_METRIC_GAUGE)
    return bits_to_double(atomic_load_explicit(&s->value, memory_order_relaxed));
  if (s->type == MESH_METRIC_COUNTER)
    return (double)atomic_load_explicit(&s->value, memory_order_relaxed);
  return 0;
}

uint64_t mesh_metrics_sum(const mesh_metric_series *s) {
  if (!s || s->type != MESH_METRIC_HISTOGRAM) return 0;
  return atomic_load_explicit(&s->sum, memory_order_relaxed);
}

uint64_t mesh_metrics_bucket(const mesh_metric_series *s, size_t i) {
  if (!s || s->type != MESH_METRIC_HISTOGRAM || i > s->nbounds) return 0;
  uint64_t n = 0;
  for (size_t k = 0; k <= i; k++) n += atomic_load_explicit(&s->buckets[k], memory_order_relaxed);
  return n;
}

/* ---- exposition ---- */

typedef struct {
  mesh_ctx *ctx;
  char *p;
  size_t len, cap;
  bool failed;
} buf;

static bool buf_reserve(buf *b, size_t n) {
  if (b->failed) return false;
  if (b->cap - b->len > n) return true; /* room for n bytes and the final NUL */
  size_t cap = b->cap ? b->cap : 4096;
  while (cap - b->len <= n) {
    if (cap > SIZE_MAX / 2) {
      b->failed = true;
      return false;
    }
    cap *= 2;
  }
  char *np = mesh__realloc(b->ctx, b->p, cap);
  if (!np) {
    b->failed = true;
    return false;
  }
  b->p = np;
  b->cap = cap;
  return true;
}

static void put(buf *b, const char *s, size_t n) {
  if (!buf_reserve(b, n)) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

/* Label values escape \, " and newline; HELP text escapes \ and newline. */
static void put_escaped(buf *b, const char *s, bool quote) {
  const char *run = s;
  for (; *s; s++) {
    const char *rep = NULL;
    if (*s == '\\') rep = "\\\\";
    else if (*s == '\n') rep = "\\n";
    else if (*s == '"' && quote) rep = "\\\"";
    if (!rep) continue;
    put(b, run, (size_t)(s - run));
    put(b, rep, 2);
    run = s + 1;
  }
  put(b, run, (size_t)(s - run));
}

/* The shortest text that reads back as the same double, in Go's ParseFloat syntax. */
static void fmt_double(char *out, size_t n, double v) {
  if (isnan(v)) snprintf(out, n, "NaN");
  else if (isinf(v)) snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
  else
    for (int prec = 15; prec <= 17; prec++) {
      snprintf(out, n, "%.*g", prec, v);
      if (strtod(out, NULL) == v) break;
    }
}

static void put_u64(buf *b, uint64_t v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%" PRIu64, v);
  put(b, t, (size_t)n);
}

static void put_header(buf *b, const char *name, const char *help, const char *type) {
  if (*help) {
    puts_(b, "# HELP ");
    puts_(b, name);
    put(b, " ", 1);
    put_escaped(b, help, false);
    put(b, "\n", 1);
  }
  puts_(b, "# TYPE ");
  puts_(b, name);
  put(b, " ", 1);
  puts_(b, type);
  put(b, "\n", 1);
}

/* name{labels} with an optional extra label (le), then a space. */
static void put_sample(buf *b, const mesh_metric_family *f, const mesh_metric_series *s,
                       const char *suffix, const char *le) {
  puts_(b, f->name);
  puts_(b, suffix);
  if (f->nlabels || le) {
    put(b, "{", 1);
    for (size_t i = 0; i < f->nlabels; i++) {
      if (i) put(b, ",", 1);
      puts_(b, f->labels[i]);
      put(b, "=\"", 2);
      put_escaped(b, s->values[i], true);
      put(b, "\"", 1);
    }
    if (le) {
      if (f->nlabels) put(b, ",", 1);
      puts_(b, "le=\"");
      puts_(b, le);
      put(b, "\"", 1);
    }
    put(b, "}", 1);
  }
  put(b, " ", 1);
}

static void render_series(buf *b, const mesh_metric_family *f, const mesh_metric_series *s) {
  char t[64];
  if (f->type == MESH_METRIC_COUNTER) {
    put_sample(b, f, s, "", NULL);
    put_u64(b, atomic_load_explicit(&s->value, memory_order_relaxed));
    put(b, "\n", 1);
  } else if (f->type == MESH_METRIC_GAUGE) {
    put_sample(b, f, s, "", NULL);
    fmt_double(t, sizeof t, bits_to_double(atomic_load_explicit(&s->value, memory_order_relaxed)));
    puts_(b, t);
    put(b, "\n", 1);
  } else {
    /* Each bucket read once, so _count and the +Inf bucket agree. */
    uint64_t cum = 0;
    for (size_t i = 0; i <= s->nbounds; i++) {
      cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
      if (i < s->nbounds) snprintf(t, sizeof t, "%" PRIu64, s->bounds[i]);
      put_sample(b, f, s, "_bucket", i < s->nbounds ? t : "+Inf");
      put_u64(b, cum);
      put(b, "\n", 1);
    }
    put_sample(b, f, s, "_sum", NULL);
    put_u64(b, atomic_load_explicit(&s->sum, memory_order_relaxed));
    put(b, "\n", 1);
    put_sample(b, f, s, "_count", NULL);
    put_u64(b, cum);
    put(b, "\n", 1);
  }
}

/* Reads a small /proc file whole into out (NUL-terminated); false if it cannot. */
static bool read_proc(const char *path, char *out, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  size_t n = 0;
  while (n + 1 < cap) {
    ssize_t r = read(fd, out + n, cap - 1 - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  out[n] = '\0';
  return n > 0;
}

static void put_process_value(buf *b, size_t which, const char *type, const char *help, double v) {
  char t[64];
  put_header(b, process_names[which], help, type);
  puts_(b, process_names[which]);
  put(b, " ", 1);
  fmt_double(t, sizeof t, v);
  puts_(b, t);
  put(b, "\n", 1);
}

/* The boot time, in whole seconds as /proc/stat's btime, found once so that
 * the start time never jitters between scrapes (a changed value reads as a
 * restart): now less the time since boot (CLOCK_BOOTTIME), which spares
 * reading /proc/stat, whose size grows with the CPUs and interrupts. */
static pthread_once_t boot_once = PTHREAD_ONCE_INIT;
static double boot_time;
static void find_boot_time(void) {
  struct timespec rt, bt;
  if (clock_gettime(CLOCK_REALTIME, &rt) == 0 && clock_gettime(CLOCK_BOOTTIME, &bt) == 0)
    boot_time = floor(((double)rt.tv_sec + rt.tv_nsec / 1e9) -
                      ((double)bt.tv_sec + bt.tv_nsec / 1e9)); /* truncated, as btime is */
}

static void render_process(buf *b) {
  char st[1024];
  long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
  unsigned long long utime = 0, stime = 0, start = 0, vsize = 0;
  long long rss = 0;
  bool have_stat = false;
  if (read_proc("/proc/self/stat", st, sizeof st) && tck > 0 && page > 0) {
    /* The command name may hold spaces and parentheses: fields start after the last ')'. */
    const char *p = strrchr(st, ')');
    have_stat = p && sscanf(p + 1,
                            " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d "
                            "%*d %*d %*d %llu %llu %lld",
                            &utime, &stime, &start, &vsize, &rss) == 5;
  }
  if (have_stat)
    put_process_value(b, 0, "counter", "Total user and system CPU time spent in seconds.",
                      (double)(utime + stime) / (double)tck);
  if (have_stat) {
    put_process_value(b, 1, "gauge", "Resident memory size in bytes.", (double)rss * (double)page);
    put_process_value(b, 2, "gauge", "Virtual memory size in bytes.", (double)vsize);
  }
  DIR *d = opendir("/proc/self/fd");
  if (d) {
    long n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    /* Less the one opendir itself holds. */
    put_process_value(b, 3, "gauge", "Number of open file descriptors.", (double)(n - 1));
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    put_process_value(b, 4, "gauge", "Maximum number of open file descriptors.",
                      rl.rlim_cur == RLIM_INFINITY ? INFINITY : (double)rl.rlim_cur);
  pthread_once(&boot_once, find_boot_time);
  if (have_stat && boot_time > 0)
    put_process_value(b, 5, "gauge", "Start time of the process since unix epoch in seconds.",
                      boot_time + (double)start / (double)tck);
}

int mesh_metrics_process(mesh_metrics *reg) {
  if (!reg) return MESH_ERR_INVALID;
  int rc = 0;
  pthread_mutex_lock(&reg->mu);
  for (size_t i = 0; i < reg->nfams; i++)
    if (reg->fams[i]->type == FAM_PROCESS) goto out;
  for (size_t i = 0; i < reg->nfams; i++)
    for (size_t k = 0; k < NPROCESS; k++)
      if (owns(reg->fams[i], process_names[k])) {
        rc = MESH_ERR_INVALID;
        goto out;
      }
  rc = MESH_ERR_NOMEM;
  mesh_metric_family *f = mesh__calloc(reg->ctx, 1, sizeof *f);
  if (!f) goto out;
  f->ctx = reg->ctx;
  atomic_init(&f->refs, 1u);
  f->type = FAM_PROCESS;
  if (!(f->name = mesh__strdup(reg->ctx, "process")) || !(f->help = mesh__strdup(reg->ctx, "")) ||
      reg_append(reg, f) < 0) {
    family_unref(f);
    goto out;
  }
  f->reg = reg;
  rc = 0;
out:
  pthread_mutex_unlock(&reg->mu);
  return rc;
}

int mesh_metrics_render(mesh_metrics *reg, char **text, size_t *len) {
  if (!reg || !text) return MESH_ERR_INVALID;
  /* A snapshot of the lists, each series held by a reference, so that
   * formatting (and reading /proc) runs without the mutex: series lookups
   * and removals on other threads wait only for this copy. */
  pthread_mutex_lock(&reg->mu);
  size_t nf = reg->nfams, ns = 0;
  for (size_t i = 0; i < nf; i++) ns += reg->fams[i]->nseries;
  void **snap = mesh__calloc(reg->ctx, 2 * nf + ns + 1, sizeof *snap);
  if (!snap) {
    pthread_mutex_unlock(&reg->mu);
    return MESH_ERR_NOMEM;
  }
  /* Layout: for each family, the family, its series count, then its series. */
  size_t k = 0;
  for (size_t i = 0; i < nf; i++) {
    mesh_metric_family *f = reg->fams[i];
    snap[k++] = f;
    snap[k++] = (void *)(uintptr_t)f->nseries;
    for (mesh_metric_series *s = f->first; s; s = s->next) {
      atomic_fetch_add_explicit(&s->refs, 1u, memory_order_relaxed);
      snap[k++] = s;
    }
  }
  pthread_mutex_unlock(&reg->mu);

  buf b = {.ctx = reg->ctx};
  buf_reserve(&b, 0); /* an empty registry still renders "" */
  static const char *const type_names[] = {"", "counter", "gauge", "histogram"};
  for (k = 0; k < 2 * nf + ns;) {
    mesh_metric_family *f = snap[k++];
    size_t n = (size_t)(uintptr_t)snap[k++];
    if (f->type == FAM_PROCESS) {
      render_process(&b);
      continue;
    }
    if (n) put_header(&b, f->name, f->help, type_names[f->type]);
    for (size_t i = 0; i < n; i++) render_series(&b, f, snap[k++]);
  }
  for (k = 0; k < 2 * nf + ns;) {
    k++;
    size_t n = (size_t)(uintptr_t)snap[k++];
    for (size_t i = 0; i < n; i++) mesh_metrics_series_unref(snap[k++]);
  }
  mesh__free(reg->ctx, snap);
  if (b.failed) {
    mesh__free(reg->ctx, b.p);
    return MESH_ERR_NOMEM;
  }
  b.p[b.len] = '\0';
  *text = b.p;
  if (len) *len = b.len;
  return 0;
}
