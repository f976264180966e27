/* libmesh load balancing: p2c over Peak-EWMA (tower) with Linkerd's consecutive-failure breaker. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <mesh/balance.h>
#include <mesh/error.h>
#include "ctx_internal.h"

/* The position of an endpoint that is not in a list. */
#define NOWHERE SIZE_MAX

struct mesh_balance_opts {
  mesh_ctx *ctx;
  uint64_t decay_ns;
  uint64_t default_rtt_ns;
  uint64_t min_penalty_ns, max_penalty_ns;
  uint32_t threshold;
  double jitter;
};

struct mesh_endpoint {
  mesh_balance *b; /* never changes; the balancer outlives its endpoints */
  char *addr;
  uint64_t hash; /* of addr, for b's index */
  void *ud;
  uint32_t weight;
  double weight_factor; /* 1000 / weight, so that a pick multiplies */
  /* Everything below is guarded by b->lock. */
  uint32_t refs;     /* the balancer's (while active) + callers' + one per pending request */
  uint32_t pending;
  uint32_t failures; /* consecutive */
  uint32_t opens;    /* penalties since the breaker last closed: the doubling exponent */
  int state;
  bool active;  /* in b's list of endpoints */
  bool sampled; /* rtt holds a measurement rather than the default */
  bool probing; /* on probation, and its one request is in flight */
  double rtt;      /* ns, as of rtt_at */
  uint64_t rtt_at;
  uint64_t retry_at; /* OPEN: when the penalty ends */
  /* Requests that started before this are not the breaker's business: they
   * were sent before it opened, or before the probation request. */
  uint64_t gate_at;
  size_t all_idx, ready_idx, open_idx; /* positions in b's lists, or NOWHERE */
};

/* Three lists of endpoint pointers with O(1) swap-removal: each endpoint
 * knows its index in each. All three have the capacity of every endpoint
 * in the balancer, so that moving between them never allocates. */
typedef struct {
  mesh_endpoint **v;
  size_t n;
} eplist;

struct mesh_balance {
  mesh_ctx *ctx;
  pthread_mutex_t lock;
  mesh_balance_opts o; /* a copy; o.ctx unused */
  double decay;        /* o.decay_ns as a double, for exp() */
  /* Guarded by lock. */
  size_t cap;
  /* Active endpoints by address: open addressing with linear probing,
   * 2 * cap slots (a power of two), so that add finds duplicates in O(1). */
  mesh_endpoint **index;
  size_t index_mask;
  eplist all;   /* every active endpoint */
  eplist ready; /* what pick chooses from: closed, or on probation and not yet probed */
  eplist open;  /* breakers open: waiting for their penalty to pass */
  uint64_t next_wake; /* the earliest retry_at in open (UINT64_MAX: none) */
};

/* ---- options ---- */

static void default_opts(mesh_balance_opts *o) {
  o->decay_ns = MESH_BALANCE_DECAY_NS;
  o->default_rtt_ns = MESH_BALANCE_DEFAULT_RTT_NS;
  o->min_penalty_ns = MESH_BALANCE_MIN_PENALTY_NS;
  o->max_penalty_ns = MESH_BALANCE_MAX_PENALTY_NS;
  o->threshold = MESH_BALANCE_FAILURE_THRESHOLD;
  o->jitter = MESH_BALANCE_JITTER;
}

int mesh_balance_opts_new(mesh_ctx *ctx, mesh_balance_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_balance_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  default_opts(o);
  *ret = o;
  return 0;
}

void mesh_balance_opts_free(mesh_balance_opts *o) {
  if (o) mesh__free(o->ctx, o);
}

int mesh_balance_opts_set_decay(mesh_balance_opts *o, uint64_t decay_ns) {
  if (!o) return MESH_ERR_INVALID;
  if (decay_ns == 0) return MESH_ERR_RANGE;
  o->decay_ns = decay_ns;
  return 0;
}

int mesh_balance_opts_set_default_rtt(mesh_balance_opts *o, uint64_t rtt_ns) {
  if (!o) return MESH_ERR_INVALID;
  if (rtt_ns == 0) return MESH_ERR_RANGE;
  o->default_rtt_ns = rtt_ns;
  return 0;
}

int mesh_balance_opts_set_failure_threshold(mesh_balance_opts *o, uint32_t failures) {
  if (!o) return MESH_ERR_INVALID;
  if (failures == 0) return MESH_ERR_RANGE;
  o->threshold = failures;
  return 0;
}

int mesh_balance_opts_set_penalty(mesh_balance_opts *o, uint64_t min_ns, uint64_t max_ns) {
  if (!o) return MESH_ERR_INVALID;
  if (min_ns == 0 || min_ns > max_ns) return MESH_ERR_RANGE;
  o->min_penalty_ns = min_ns;
  o->max_penalty_ns = max_ns;
  return 0;
}

int mesh_balance_opts_set_jitter(mesh_balance_opts *o, double jitter) {
  if (!o) return MESH_ERR_INVALID;
  if (!(jitter >= 0.0 && jitter <= 1.0)) return MESH_ERR_RANGE; /* NaN fails too */
  o->jitter = jitter;
  return 0;
}

/* ---- lists ---- */

static void list_push(eplist *l, mesh_endpoint *ep, size_t *idx) {
  *idx = l->n;
  l->v[l->n++] = ep;
}

/* Which index field of an endpoint belongs to list l of balancer b. */
static size_t *index_in(mesh_balance *b, eplist *l, mesh_endpoint *ep) {
  if (l == &b->all) return &ep->all_idx;
  if (l == &b->ready) return &ep->ready_idx;
  return &ep->open_idx;
}

static void list_remove(mesh_balance *b, eplist *l, mesh_endpoint *ep) {
  size_t *idx = index_in(b, l, ep);
  if (*idx == NOWHERE) return;
  mesh_endpoint *last = l->v[--l->n];
  l->v[*idx] = last;
  *index_in(b, l, last) = *idx;
  *idx = NOWHERE;
}

/* ---- the address index ---- */

/* FNV-1a: addresses are short and not chosen by an attacker (they come
 * from the control plane), so a simple hash is enough. */
static uint64_t hash_addr(const char *s) {
  uint64_t h = 14695981039346656037ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static mesh_endpoint *index_find(const mesh_balance *b, const char *addr, uint64_t h) {
  if (!b->index) return NULL;
  for (size_t i = h & b->index_mask;; i = (i + 1) & b->index_mask) {
    mesh_endpoint *ep = b->index[i];
    if (!ep) return NULL;
    if (ep->hash == h && strcmp(ep->addr, addr) == 0) return ep;
  }
}

/* There is always a free slot: the index has twice the slots of endpoints. */
static void index_insert(mesh_endpoint **index, size_t mask, mesh_endpoint *ep) {
  size_t i = ep->hash & mask;
  while (index[i]) i = (i + 1) & mask;
  index[i] = ep;
}

/* Backward-shift deletion, so that lookups need no tombstones: later
 * entries of the probe run move up into the hole unless their home slot
 * lies (cyclically) after it. */
static void index_delete(mesh_balance *b, mesh_endpoint *ep) {
  size_t mask = b->index_mask, i = ep->hash & mask;
  while (b->index[i] != ep) i = (i + 1) & mask;
  for (size_t j = (i + 1) & mask; b->index[j]; j = (j + 1) & mask) {
    size_t home = b->index[j]->hash & mask;
    /* Movable when home is not in (i, j], cyclically. */
    bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!between) {
      b->index[i] = b->index[j];
      i = j;
    }
  }
  b->index[i] = NULL;
}

/* ---- the balancer ---- */

int mesh_balance_new(mesh_ctx *ctx, const mesh_balance_opts *opts, mesh_balance **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_balance *b = mesh__calloc(ctx, 1, sizeof *b);
  if (!b) return MESH_ERR_NOMEM;
  if (pthread_mutex_init(&b->lock, NULL) != 0) {
    mesh__free(ctx, b);
    return MESH_ERR_NOMEM; /* the only way it fails on Linux is a lack of resources */
  }
  b->ctx = ctx;
  if (opts) b->o = *opts;
  else default_opts(&b->o);
  b->o.ctx = NULL;
  b->decay = (double)b->o.decay_ns;
  b->next_wake = UINT64_MAX;
  *ret = b;
  return 0;
}

static void endpoint_free(mesh_ctx *ctx, mesh_endpoint *ep) {
  mesh__free(ctx, ep->addr);
  mesh__free(ctx, ep);
}

void mesh_balance_free(mesh_balance *b) {
  if (!b) return;
  /* Removed endpoints are gone already: the contract is that no request is
   * in flight and no reference is held. */
  for (size_t i = 0; i < b->all.n; i++) endpoint_free(b->ctx, b->all.v[i]);
  mesh__free(b->ctx, b->all.v);
  mesh__free(b->ctx, b->ready.v);
  mesh__free(b->ctx, b->open.v);
  mesh__free(b->ctx, b->index);
  pthread_mutex_destroy(&b->lock);
  mesh__free(b->ctx, b);
}

/* Makes room for one more endpoint in the index and all three lists. Each
 * is grown on its own, so a failure part-way leaves larger but valid arrays. */
static int reserve(mesh_balance *b) {
  if (b->all.n < b->cap) return 0;
  size_t cap = b->cap ? b->cap * 2 : 8;
  if (cap > MESH_BALANCE_MAX_ENDPOINTS) cap = MESH_BALANCE_MAX_ENDPOINTS;
  mesh_endpoint **index = mesh__calloc(b->ctx, 2 * cap, sizeof *index);
  if (!index) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < b->all.n; i++) index_insert(index, 2 * cap - 1, b->all.v[i]);
  mesh__free(b->ctx, b->index);
  b->index = index;
  b->index_mask = 2 * cap - 1;
  eplist *lists[] = {&b->all, &b->ready, &b->open};
  for (int i = 0; i < 3; i++) {
    mesh_endpoint **v = mesh__realloc(b->ctx, lists[i]->v, cap * sizeof *v);
    if (!v) return MESH_ERR_NOMEM;
    lists[i]->v = v;
  }
  b->cap = cap;
  return 0;
}

int mesh_balance_add(mesh_balance *b, const char *addr, uint32_t weight, void *ud,
                     mesh_endpoint **ret) {
  if (!b || !addr || !*addr) return MESH_ERR_INVALID;
  if (weight == 0) return MESH_ERR_RANGE;
  /* Allocated before taking the lock, so that picks do not wait on malloc. */
  mesh_endpoint *ep = mesh__calloc(b->ctx, 1, sizeof *ep);
  if (!ep) return MESH_ERR_NOMEM;
  ep->addr = mesh__strdup(b->ctx, addr);
  if (!ep->addr) {
    mesh__free(b->ctx, ep);
    return MESH_ERR_NOMEM;
  }
  ep->b = b;
  ep->hash = hash_addr(addr);
  ep->ud = ud;
  ep->weight = weight;
  ep->weight_factor = 1000.0 / weight;
  ep->refs = 1;
  ep->state = MESH_ENDPOINT_READY;
  ep->active = true;
  ep->open_idx = NOWHERE;

  pthread_mutex_lock(&b->lock);
  int rc = 0;
  /* One address twice would silently double its share of the traffic. */
  if (index_find(b, addr, ep->hash)) rc = MESH_ERR_INVALID;
  else if (b->all.n >= MESH_BALANCE_MAX_ENDPOINTS) rc = MESH_ERR_LIMIT;
  else rc = reserve(b);
  if (rc == 0) {
    index_insert(b->index, b->index_mask, ep);
    list_push(&b->all, ep, &ep->all_idx);
    list_push(&b->ready, ep, &ep->ready_idx);
  }
  pthread_mutex_unlock(&b->lock);
  if (rc < 0) {
    endpoint_free(b->ctx, ep);
    return rc;
  }
  if (ret) *ret = ep;
  return 0;
}

/* Drops one reference, freeing the endpoint with the last. Lock held. */
static void release(mesh_endpoint *ep) {
  if (--ep->refs == 0) endpoint_free(ep->b->ctx, ep);
}

int mesh_balance_remove(mesh_balance *b, mesh_endpoint *ep) {
  if (!b || !ep) return MESH_ERR_INVALID;
  if (ep->b != b) return MESH_ERR_NOT_FOUND;
  pthread_mutex_lock(&b->lock);
  if (!ep->active) {
    pthread_mutex_unlock(&b->lock);
    return MESH_ERR_NOT_FOUND;
  }
  index_delete(b, ep);
  list_remove(b, &b->all, ep);
  list_remove(b, &b->ready, ep);
  list_remove(b, &b->open, ep); /* next_wake may now be early: harmless, the next wake recomputes */
  ep->active = false;
  release(ep);
  pthread_mutex_unlock(&b->lock);
  return 0;
}

size_t mesh_balance_count(mesh_balance *b) {
  if (!b) return 0;
  pthread_mutex_lock(&b->lock);
  size_t n = b->all.n;
  pthread_mutex_unlock(&b->lock);
  return n;
}

size_t mesh_balance_ready_count(mesh_balance *b) {
  if (!b) return 0;
  pthread_mutex_lock(&b->lock);
  size_t n = b->ready.n;
  pthread_mutex_unlock(&b->lock);
  return n;
}

/* Computed from the open list rather than read from next_wake, which may
 * be early once an open endpoint is removed: a timer armed at a stale
 * moment would find nothing and be armed again at once. O(open breakers). */
uint64_t mesh_balance_next_ready_ns(mesh_balance *b) {
  if (!b) return UINT64_MAX;
  pthread_mutex_lock(&b->lock);
  uint64_t next = UINT64_MAX;
  for (size_t i = 0; i < b->open.n; i++)
    if (b->open.v[i]->retry_at < next) next = b->open.v[i]->retry_at;
  pthread_mutex_unlock(&b->lock);
  return next;
}

mesh_endpoint *mesh_balance_endpoint(mesh_balance *b, size_t i) {
  if (!b) return NULL;
  pthread_mutex_lock(&b->lock);
  mesh_endpoint *ep = i < b->all.n ? b->all.v[i] : NULL;
  if (ep) ep->refs++;
  pthread_mutex_unlock(&b->lock);
  return ep;
}

/* ---- load ---- */

/* exp(-elapsed / decay): how much of an estimate made elapsed ns ago is left. */
static double decay_weight(const mesh_balance *b, uint64_t from, uint64_t now) {
  if (now <= from) return 1.0;
  return exp(-(double)(now - from) / b->decay);
}

/* The RTT estimate at now. Between samples it decays towards zero, as
 * tower's load() does, so that an endpoint that was slow once gets another
 * chance. Computed rather than stored, so that a pick writes nothing but the
 * pending count. Lock held. */
static double rtt_at(const mesh_endpoint *ep, uint64_t now) {
  if (!ep->sampled) return (double)ep->b->o.default_rtt_ns;
  return ep->rtt * decay_weight(ep->b, ep->rtt_at, now);
}

static double cost_at(const mesh_endpoint *ep, uint64_t now) {
  return rtt_at(ep, now) * (double)(ep->pending + 1) * ep->weight_factor;
}

/* Folds one RTT sample in: peak first, then exponential decay. Lock held. */
static void record_rtt(mesh_endpoint *ep, uint64_t now, uint64_t start) {
  double sample = now > start ? (double)(now - start) : 0.0;
  double est;
  uint64_t at;
  if (ep->sampled) {
    est = ep->rtt;
    at = ep->rtt_at;
  } else {
    /* The default stands for the state of things when the first request
     * was sent. */
    est = (double)ep->b->o.default_rtt_ns;
    at = start;
  }
  if (sample > est) {
    ep->rtt = sample; /* peak: a slow response counts in full at once */
  } else {
    double w = decay_weight(ep->b, at, now);
    ep->rtt = est * w + sample * (1.0 - w);
  }
  ep->rtt_at = now > at ? now : at;
  ep->sampled = true;
}

/* ---- the breaker ---- */

/* min_penalty * 2^opens, capped at max_penalty, then spread by +-jitter. */
static uint64_t penalty(const mesh_balance_opts *o, uint32_t opens, uint32_t rnd) {
  uint64_t base = o->max_penalty_ns;
  if (opens < 64 && o->min_penalty_ns <= (o->max_penalty_ns >> opens))
    base = o->min_penalty_ns << opens;
  double u = (double)rnd / 4294967296.0; /* [0, 1) */
  double p = (double)base * (1.0 + o->jitter * (2.0 * u - 1.0));
  if (p >= 18446744073709549568.0) return UINT64_MAX; /* the largest double below 2^64 */
  return (uint64_t)p;
}

static void breaker_open(mesh_endpoint *ep, uint64_t now, uint32_t rnd) {
  mesh_balance *b = ep->b;
  uint64_t p = penalty(&b->o, ep->opens, rnd);
  if (ep->opens < UINT32_MAX) ep->opens++;
  ep->state = MESH_ENDPOINT_OPEN;
  ep->gate_at = now;
  ep->retry_at = now > UINT64_MAX - p ? UINT64_MAX : now + p;
  if (!ep->active) return; /* removed: it only keeps its state for the curious */
  list_remove(b, &b->ready, ep);
  list_push(&b->open, ep, &ep->open_idx);
  if (ep->retry_at < b->next_wake) b->next_wake = ep->retry_at;
}

static void breaker_close(mesh_endpoint *ep) {
  ep->state = MESH_ENDPOINT_READY;
  ep->failures = 0;
  ep->opens = 0;
  ep->retry_at = 0;
  if (ep->active) list_push(&ep->b->ready, ep, &ep->ready_idx);
}

/* Penalties that have passed put their endpoints on probation, back in the
 * ready list. O(open breakers), and only when the earliest one is due. */
static void wake(mesh_balance *b, uint64_t now) {
  uint64_t next = UINT64_MAX;
  for (size_t i = 0; i < b->open.n;) {
    mesh_endpoint *ep = b->open.v[i];
    if (ep->retry_at <= now) {
      list_remove(b, &b->open, ep); /* the last one moves into i: look at i again */
      ep->state = MESH_ENDPOINT_PROBATION;
      ep->retry_at = 0;
      list_push(&b->ready, ep, &ep->ready_idx);
    } else {
      if (ep->retry_at < next) next = ep->retry_at;
      i++;
    }
  }
  b->next_wake = next;
}

/* One outcome, as the breaker sees it. ep->pending already counts this
 * request out. Lock held. */
static void account(mesh_endpoint *ep, uint64_t now, uint64_t start, bool success, uint32_t rnd) {
  switch (ep->state) {
  case MESH_ENDPOINT_OPEN:
    return; /* every request in flight was sent before it opened */
  case MESH_ENDPOINT_PROBATION:
    if (!ep->probing) return; /* the probe is not sent yet: this one is older */
    /* The probe started at or after gate_at; an older request is not it.
     * When nothing else is in flight this was the probe whatever its start
     * says, so a caller's early start time cannot wedge the breaker. */
    if (start < ep->gate_at && ep->pending > 0) return;
    ep->probing = false;
    if (success) {
      breaker_close(ep);
    } else {
      if (ep->failures < UINT32_MAX) ep->failures++;
      breaker_open(ep, now, rnd);
    }
    return;
  default:
    if (start < ep->gate_at) return; /* sent before the probe that closed it */
    if (success) {
      ep->failures = 0;
      return;
    }
    if (ep->failures < UINT32_MAX) ep->failures++;
    if (ep->failures >= ep->b->o.threshold) breaker_open(ep, now, rnd);
  }
}

/* ---- requests ---- */

int mesh_balance_pick(mesh_balance *b, uint64_t now_ns, uint32_t rnd_a, uint32_t rnd_b,
                      mesh_endpoint **ret) {
  if (!b || !ret) return MESH_ERR_INVALID;
  pthread_mutex_lock(&b->lock);
  if (now_ns >= b->next_wake) wake(b, now_ns);
  size_t n = b->ready.n;
  if (n == 0) {
    pthread_mutex_unlock(&b->lock);
    return MESH_ERR_UNAVAILABLE;
  }
  mesh_endpoint *ep = b->ready.v[0];
  if (n > 1) {
    /* Two distinct indices, each uniform without modulo bias: i over n,
     * then j over the n - 1 others. */
    size_t i = (size_t)(((uint64_t)rnd_a * n) >> 32);
    size_t j = (size_t)(((uint64_t)rnd_b * (n - 1)) >> 32);
    if (j >= i) j++;
    mesh_endpoint *x = b->ready.v[i], *y = b->ready.v[j];
    ep = cost_at(y, now_ns) < cost_at(x, now_ns) ? y : x; /* a tie goes to the first draw */
  }
  ep->pending++;
  ep->refs++;
  if (ep->state == MESH_ENDPOINT_PROBATION) {
    /* Exactly one request on probation: out of the ready list until it answers. */
    ep->probing = true;
    ep->gate_at = now_ns;
    list_remove(b, &b->ready, ep);
  }
  pthread_mutex_unlock(&b->lock);
  *ret = ep;
  return 0;
}

void mesh_balance_done(mesh_endpoint *ep, uint64_t now_ns, uint64_t start_ns, int success,
                       uint32_t rnd) {
  if (!ep) return;
  mesh_balance *b = ep->b;
  pthread_mutex_lock(&b->lock);
  record_rtt(ep, now_ns, start_ns);
  if (ep->pending > 0) ep->pending--;
  account(ep, now_ns, start_ns, success != 0, rnd);
  release(ep);
  pthread_mutex_unlock(&b->lock);
}

/* ---- endpoints ---- */

mesh_endpoint *mesh_endpoint_ref(mesh_endpoint *ep) {
  if (!ep) return NULL;
  pthread_mutex_lock(&ep->b->lock);
  ep->refs++;
  pthread_mutex_unlock(&ep->b->lock);
  return ep;
}

void mesh_endpoint_unref(mesh_endpoint *ep) {
  if (!ep) return;
  mesh_balance *b = ep->b;
  pthread_mutex_lock(&b->lock);
  release(ep);
  pthread_mutex_unlock(&b->lock);
}

/* The fields below never change after add: no lock. */
const char *mesh_endpoint_addr(const mesh_endpoint *ep) { return ep ? ep->addr : NULL; }
void *mesh_endpoint_userdata(const mesh_endpoint *ep) { return ep ? ep->ud : NULL; }
uint32_t mesh_endpoint_weight(const mesh_endpoint *ep) { return ep ? ep->weight : 0; }

/* Reads one guarded field under the lock. */
#define LOCKED_READ(ep, type, expr, none)        \
  do {                                           \
    if (!(ep)) return (none);                    \
    pthread_mutex_lock(&(ep)->b->lock);          \
    type v_ = (expr);                            \
    pthread_mutex_unlock(&(ep)->b->lock);        \
    return v_;                                   \
  } while (0)

int mesh_endpoint_active(mesh_endpoint *ep) { LOCKED_READ(ep, int, ep->active, 0); }
int mesh_endpoint_state(mesh_endpoint *ep) { LOCKED_READ(ep, int, ep->state, MESH_ERR_INVALID); }
uint32_t mesh_endpoint_pending(mesh_endpoint *ep) { LOCKED_READ(ep, uint32_t, ep->pending, 0); }
uint32_t mesh_endpoint_failures(mesh_endpoint *ep) { LOCKED_READ(ep, uint32_t, ep->failures, 0); }
uint64_t mesh_endpoint_retry_at(mesh_endpoint *ep) { LOCKED_READ(ep, uint64_t, ep->retry_at, 0); }

double mesh_endpoint_rtt(mesh_endpoint *ep, uint64_t now_ns) {
  LOCKED_READ(ep, double, rtt_at(ep, now_ns), 0.0);
}

double mesh_endpoint_cost(mesh_endpoint *ep, uint64_t now_ns) {
  LOCKED_READ(ep, double, cost_at(ep, now_ns), 0.0);
}
