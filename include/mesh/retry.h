/* libmesh retries: the retry budget (tower's TpsBudget) and exponential backoff. */
#ifndef MESH_RETRY_H
#define MESH_RETRY_H

#include <mesh/ctx.h>

MESH_BEGIN_DECLS

/* A retry budget: every original request deposits, every retry withdraws
 * 1/ratio deposits, deposits expire after ttl (kept in ten windows), and a
 * reserve of min_per_sec retries per second is always available. The
 * caller supplies the time (monotonic milliseconds), so behaviour is exact
 * in tests. Thread-safe: one budget is shared by every request to a
 * destination. */
typedef struct mesh_budget mesh_budget;

/* ratio in [0, 1000], ttl_ms in [1000, 60000]; MESH_ERR_RANGE otherwise. */
MESH_API int mesh_budget_new(mesh_ctx *ctx, double ratio, uint32_t min_per_sec, uint64_t ttl_ms,
                             uint64_t now_ms, mesh_budget **ret);
MESH_API void mesh_budget_free(mesh_budget *b); /* NULL is a no-op */

/* Record an original (non-retry) request. */
MESH_API void mesh_budget_deposit(mesh_budget *b, uint64_t now_ms);
/* Ask to retry: 1 when the budget allows it (and it is charged), 0 when not. */
MESH_API int mesh_budget_withdraw(mesh_budget *b, uint64_t now_ms);
/* The balance in deposit units, reserve included (for metrics and tests). */
MESH_API int64_t mesh_budget_balance(mesh_budget *b, uint64_t now_ms);

/* Linkerd's default backoff between retries: 25 ms growing to 250 ms. */
#define MESH_BACKOFF_BASE_MS 25u
#define MESH_BACKOFF_MAX_MS 250u

/* Exponential backoff with full jitter: a delay uniform in
 * [0, min(max_ms, base_ms * 2^attempt)], from the caller's random bits.
 * attempt counts from 0. Never overflows. */
MESH_API uint64_t mesh_backoff_ms(uint64_t base_ms, uint64_t max_ms, uint32_t attempt,
                                  uint32_t rnd);

MESH_END_DECLS

#endif
