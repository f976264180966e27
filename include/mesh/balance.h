/* libmesh load balancing: power of two choices over Peak-EWMA, with failure accrual (circuit breaking). */
#ifndef MESH_BALANCE_H
#define MESH_BALANCE_H

#include <mesh/ctx.h>

MESH_BEGIN_DECLS

/* A balancer spreads the requests of one logical destination over its
 * endpoints the way Linkerd's proxy does:
 *
 * - Load: every endpoint keeps a Peak-EWMA round-trip-time estimate (tower's
 *   PeakEwma). A sample above the estimate replaces it at once; a sample
 *   below is blended in with weight 1 - w, w = exp(-elapsed / decay), where
 *   elapsed is the time since the previous sample. Between samples the
 *   estimate seen by the balancer decays towards zero by the same w, so an
 *   endpoint that was slow once is tried again after a while. An endpoint
 *   with no sample yet is assumed to take default_rtt. Samples of failed
 *   requests count too, as in tower. cost = estimate * (pending + 1) *
 *   1000 / weight.
 * - Pick: power of two choices (tower's p2c): two distinct ready endpoints
 *   are drawn with the caller's random bits and the cheaper one wins. O(1),
 *   never allocates.
 * - Failure accrual (Linkerd's consecutive-failures breaker): after
 *   failure_threshold failures in a row an endpoint's breaker opens and it is
 *   not picked for a penalty of min_penalty doubling with every re-opening up
 *   to max_penalty, spread by +-jitter (uniform, from the caller's random
 *   bits) so that endpoints that failed together do not come back together.
 *   Once the penalty has passed the endpoint is on probation: exactly one
 *   request is let through; its success closes the breaker (and resets the
 *   penalty), its failure opens it again with the next penalty. Outcomes of
 *   requests sent before the breaker opened are ignored by the breaker.
 *
 * Times are caller-supplied monotonic NANOSECONDS (unlike retry.h's
 * milliseconds): round-trip times between proxies are often well below a
 * millisecond, and the estimate would lose them. A clock that goes
 * backwards counts as no time passing.
 *
 * Thread safety: a balancer and its endpoints are thread-safe: pick, done,
 * add, remove and every accessor may be called from any thread at once. One
 * mutex per balancer serialises them; it is held for a few dozen
 * nanoseconds (doc/BENCHMARKS.md has the uncontended and 2-thread costs).
 * Options objects are used by one thread at a time. */
typedef struct mesh_balance mesh_balance;
typedef struct mesh_balance_opts mesh_balance_opts;
typedef struct mesh_endpoint mesh_endpoint;

/* Linkerd's defaults. */
#define MESH_BALANCE_DECAY_NS 10000000000ull      /* 10 s */
#define MESH_BALANCE_DEFAULT_RTT_NS 30000000ull   /* 30 ms */
#define MESH_BALANCE_FAILURE_THRESHOLD 7u
#define MESH_BALANCE_MIN_PENALTY_NS 1000000000ull /* 1 s */
#define MESH_BALANCE_MAX_PENALTY_NS 60000000000ull /* 60 s */
#define MESH_BALANCE_JITTER 0.5
/* An endpoint's weight when every endpoint counts the same. */
#define MESH_BALANCE_WEIGHT_DEFAULT 1000u
/* At most this many endpoints in one balancer (MESH_ERR_LIMIT past it). */
#define MESH_BALANCE_MAX_ENDPOINTS 65536u

/* An endpoint's breaker. */
enum {
  MESH_ENDPOINT_READY = 0,     /* closed: picked by load */
  MESH_ENDPOINT_OPEN = 1,      /* failing: not picked until its penalty has passed */
  MESH_ENDPOINT_PROBATION = 2  /* penalty over: one request decides (waiting for it or in flight) */
};

/* ---- options ---- */

/* Options start at Linkerd's defaults (above). MESH_ERR_INVALID or
 * MESH_ERR_NOMEM. */
MESH_API int mesh_balance_opts_new(mesh_ctx *ctx, mesh_balance_opts **ret);
MESH_API void mesh_balance_opts_free(mesh_balance_opts *o); /* NULL is a no-op */
/* The time constant of the RTT estimate, > 0; MESH_ERR_RANGE otherwise. */
MESH_API int mesh_balance_opts_set_decay(mesh_balance_opts *o, uint64_t decay_ns);
/* The RTT assumed for an endpoint with no sample yet, > 0. */
MESH_API int mesh_balance_opts_set_default_rtt(mesh_balance_opts *o, uint64_t rtt_ns);
/* Consecutive failures that open the breaker, >= 1. */
MESH_API int mesh_balance_opts_set_failure_threshold(mesh_balance_opts *o, uint32_t failures);
/* The first penalty and the largest one before jitter: 0 < min <= max. */
MESH_API int mesh_balance_opts_set_penalty(mesh_balance_opts *o, uint64_t min_ns,
                                           uint64_t max_ns);
/* Penalties are spread uniformly over [p * (1 - jitter), p * (1 + jitter)];
 * jitter in [0, 1] (NaN is MESH_ERR_RANGE). */
MESH_API int mesh_balance_opts_set_jitter(mesh_balance_opts *o, double jitter);

/* ---- the balancer ---- */

/* opts NULL: the defaults; opts is copied and may be freed at once.
 * MESH_ERR_INVALID or MESH_ERR_NOMEM; *ret untouched on failure. */
MESH_API int mesh_balance_new(mesh_ctx *ctx, const mesh_balance_opts *opts, mesh_balance **ret);
/* Frees the balancer and its endpoints. Every picked request must have been
 * done() and every reference unref'd first. NULL is a no-op. */
MESH_API void mesh_balance_free(mesh_balance *b);

/* Add an endpoint (addr is copied, ud is the caller's and never touched);
 * O(1) amortised (an index by address finds duplicates).
 * weight scales the cost: an endpoint of weight 2000 is as attractive as one
 * of weight 1000 with half its load; MESH_BALANCE_WEIGHT_DEFAULT when all
 * are equal. *ret (may be NULL) is borrowed: valid until the endpoint is
 * removed and its last request is done (mesh_endpoint_ref to keep it
 * longer). MESH_ERR_INVALID (NULL or empty addr, an addr already in the
 * balancer), MESH_ERR_RANGE (weight 0), MESH_ERR_LIMIT, MESH_ERR_NOMEM. */
MESH_API int mesh_balance_add(mesh_balance *b, const char *addr, uint32_t weight, void *ud,
                              mesh_endpoint **ret);
/* Take an endpoint out (a discovery update): it is not picked any more, but
 * requests in flight to it finish normally and their handles stay valid
 * until done. MESH_ERR_INVALID for NULL, MESH_ERR_NOT_FOUND when ep is not
 * in b (already removed, or another balancer's). */
MESH_API int mesh_balance_remove(mesh_balance *b, mesh_endpoint *ep);
/* Endpoints in the balancer, whatever their breaker's state. */
MESH_API size_t mesh_balance_count(mesh_balance *b);
/* Endpoints a pick at this moment could choose: closed breakers, and
 * probations whose one request has not been sent (breakers whose penalty
 * passed move to probation at the next pick). */
MESH_API size_t mesh_balance_ready_count(mesh_balance *b);
/* When the earliest open breaker's penalty ends (ns, the clock given to
 * pick and done): from then on a pick may find an endpoint on probation.
 * UINT64_MAX when no breaker is open (or b is NULL). A proxy holding
 * requests until an endpoint is ready arms one timer at this moment rather
 * than polling. */
MESH_API uint64_t mesh_balance_next_ready_ns(mesh_balance *b);
/* The i-th endpoint (for metrics), as a new reference to mesh_endpoint_unref;
 * NULL past the end. The order changes when endpoints are removed. */
MESH_API mesh_endpoint *mesh_balance_endpoint(mesh_balance *b, size_t i);

/* Choose an endpoint for one request, with two independent 32-bit random
 * values, and count it as pending. Every successful pick must be followed by
 * exactly one mesh_balance_done on the endpoint it returned. Never
 * allocates; O(1), except that breakers whose penalty has passed are looked
 * for (O(open breakers)) when the earliest of them is due.
 * MESH_ERR_UNAVAILABLE when no endpoint can be picked (none, or every breaker
 * open: the proxy answers 503 at once); MESH_ERR_INVALID for NULL. */
MESH_API int mesh_balance_pick(mesh_balance *b, uint64_t now_ns, uint32_t rnd_a, uint32_t rnd_b,
                               mesh_endpoint **ret);
/* The end of a request picked at start_ns (the time given to pick, or
 * later): records the RTT sample now_ns - start_ns, the outcome (success
 * nonzero or 0), and drops it from pending. rnd jitters the penalty when
 * this failure opens the breaker (an argument so that done, like pick,
 * draws no randomness of its own). ep may be removed already; it may be
 * freed by this call, if it was and this was its last request. NULL is a
 * no-op. */
MESH_API void mesh_balance_done(mesh_endpoint *ep, uint64_t now_ns, uint64_t start_ns,
                                int success, uint32_t rnd);

/* ---- endpoints ---- */

/* Keep an endpoint alive past its removal (metrics, a connection pool). */
MESH_API mesh_endpoint *mesh_endpoint_ref(mesh_endpoint *ep);
MESH_API void mesh_endpoint_unref(mesh_endpoint *ep); /* NULL is a no-op */

MESH_API const char *mesh_endpoint_addr(const mesh_endpoint *ep); /* NULL for NULL */
MESH_API void *mesh_endpoint_userdata(const mesh_endpoint *ep);
MESH_API uint32_t mesh_endpoint_weight(const mesh_endpoint *ep);
/* 1 while the endpoint is in its balancer, 0 once removed (or NULL). */
MESH_API int mesh_endpoint_active(mesh_endpoint *ep);
/* MESH_ENDPOINT_READY, _OPEN or _PROBATION; MESH_ERR_INVALID for NULL. */
MESH_API int mesh_endpoint_state(mesh_endpoint *ep);
/* Requests picked and not yet done. */
MESH_API uint32_t mesh_endpoint_pending(mesh_endpoint *ep);
/* Failures in a row since the last success (what the breaker counts). */
MESH_API uint32_t mesh_endpoint_failures(mesh_endpoint *ep);
/* The RTT estimate as the balancer sees it at now_ns, decay included, in ns. */
MESH_API double mesh_endpoint_rtt(mesh_endpoint *ep, uint64_t now_ns);
/* The cost a pick at now_ns compares: rtt * (pending + 1) * 1000 / weight. */
MESH_API double mesh_endpoint_cost(mesh_endpoint *ep, uint64_t now_ns);
/* When an open breaker's penalty ends (ns); 0 when the breaker is not open. */
MESH_API uint64_t mesh_endpoint_retry_at(mesh_endpoint *ep);

MESH_END_DECLS

#endif
