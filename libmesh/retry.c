/* libmesh retries: a windowed retry budget after tower's TpsBudget, and jittered backoff. */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/retry.h>
#include "ctx_internal.h"

/* Deposits are kept per tenth of the ttl, so they leave the budget in ten
 * steps rather than all at once. */
#define BUDGET_WINDOWS 10u

struct mesh_budget {
  mesh_ctx *ctx;
  pthread_mutex_t lock;
  int64_t deposit_amount;  /* added by every original request */
  int64_t withdraw_amount; /* taken by every retry */
  int64_t reserve;         /* always available: min_per_sec * ttl seconds, in deposit units */
  uint64_t window_ms;
  /* Guarded by lock. */
  uint64_t window_start; /* when the current window began; windows stay aligned to it */
  unsigned index;        /* the slot the current window commits into */
  int64_t current;       /* the current window's changes, committed when it ends */
  int64_t slots[BUDGET_WINDOWS];
};

static int64_t sat_add(int64_t a, int64_t b) {
  int64_t r;
  if (!__builtin_add_overflow(a, b, &r)) return r;
  return b > 0 ? INT64_MAX : INT64_MIN;
}

int mesh_budget_new(mesh_ctx *ctx, double ratio, uint32_t min_per_sec, uint64_t ttl_ms,
                    uint64_t now_ms, mesh_budget **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  /* Written so that NaN fails too. */
  if (!(ratio >= 0.0 && ratio <= 1000.0)) return MESH_ERR_RANGE;
  if (ttl_ms < 1000 || ttl_ms > 60000) return MESH_ERR_RANGE;

  /* tower's amounts: a ratio r allows one retry per 1/r requests; above 1,
   * deposits are scaled by 1000 so that the withdrawal stays a whole number. */
  int64_t deposit, withdraw;
  if (ratio == 0.0) {
    deposit = 0; /* deposits earn nothing: only the reserve can be spent */
    withdraw = 1;
  } else if (ratio <= 1.0) {
    double w = 1.0 / ratio;
    deposit = 1;
    /* A ratio below 1/2^31 means "practically never"; clamping keeps the
     * conversion defined. */
    withdraw = w >= (double)INT32_MAX ? INT32_MAX : (int64_t)w;
  } else {
    deposit = 1000;
    withdraw = (int64_t)(1000.0 / ratio); /* 1..999 for ratio in (1, 1000] */
  }
  int64_t reserve;
  if (__builtin_mul_overflow((int64_t)min_per_sec, (int64_t)(ttl_ms / 1000), &reserve) ||
      __builtin_mul_overflow(reserve, withdraw, &reserve))
    reserve = INT64_MAX;

  mesh_budget *b = mesh__calloc(ctx, 1, sizeof *b);
  if (!b) return MESH_ERR_NOMEM;
  if (pthread_mutex_init(&b->lock, NULL) != 0) {
    mesh__free(ctx, b);
    return MESH_ERR_NOMEM; /* the only way it fails on Linux is a lack of resources */
  }
  b->ctx = ctx;
  b->deposit_amount = deposit;
  b->withdraw_amount = withdraw;
  b->reserve = reserve;
  /* Rounded up, so that ten windows cover at least the ttl. */
  b->window_ms = (ttl_ms + BUDGET_WINDOWS - 1) / BUDGET_WINDOWS;
  b->window_start = now_ms;
  *ret = b;
  return 0;
}

void mesh_budget_free(mesh_budget *b) {
  if (!b) return;
  pthread_mutex_destroy(&b->lock);
  mesh__free(b->ctx, b);
}

/* Ends the current window once now has passed it: its changes go into its
 * slot, the slots of windows that went by with no calls are cleared, and
 * the window now in progress becomes current. A clock that went backwards
 * (or another thread's slightly older reading) counts as no time passed.
 * Called with the lock held. */
static void expire(mesh_budget *b, uint64_t now) {
  if (now <= b->window_start) return;
  uint64_t elapsed = now - b->window_start;
  if (elapsed < b->window_ms) return;
  uint64_t passed = elapsed / b->window_ms; /* window boundaries crossed, >= 1 */
  b->slots[b->index] = b->current;
  b->current = 0;
  /* The windows between the old and the new current one saw nothing. After
   * more than ten, even the slot just written is older than the ttl. */
  uint64_t empty = passed - 1 < BUDGET_WINDOWS ? passed - 1 : BUDGET_WINDOWS;
  for (uint64_t k = 1; k <= empty; k++) b->slots[(b->index + k) % BUDGET_WINDOWS] = 0;
  b->index = (unsigned)((b->index + passed) % BUDGET_WINDOWS);
  b->window_start += passed * b->window_ms;
}

/* What can be spent now. The slot of the current window still holds the
 * window from one ttl ago until it is overwritten, as in tower, so a deposit
 * counts for at least the ttl and at most a tenth longer. */
static int64_t sum(const mesh_budget *b) {
  int64_t s = sat_add(b->current, b->reserve);
  for (unsigned i = 0; i < BUDGET_WINDOWS; i++) s = sat_add(s, b->slots[i]);
  return s;
}

void mesh_budget_deposit(mesh_budget *b, uint64_t now_ms) {
  if (!b) return;
  pthread_mutex_lock(&b->lock);
  expire(b, now_ms);
  b->current = sat_add(b->current, b->deposit_amount);
  pthread_mutex_unlock(&b->lock);
}

int mesh_budget_withdraw(mesh_budget *b, uint64_t now_ms) {
  if (!b) return 0;
  pthread_mutex_lock(&b->lock);
  expire(b, now_ms);
  bool ok = sum(b) >= b->withdraw_amount;
  if (ok) b->current = sat_add(b->current, -b->withdraw_amount);
  pthread_mutex_unlock(&b->lock);
  return ok;
}

int64_t mesh_budget_balance(mesh_budget *b, uint64_t now_ms) {
  if (!b) return 0;
  pthread_mutex_lock(&b->lock);
  expire(b, now_ms);
  int64_t s = sum(b);
  pthread_mutex_unlock(&b->lock);
  return s;
}

uint64_t mesh_backoff_ms(uint64_t base_ms, uint64_t max_ms, uint32_t attempt, uint32_t rnd) {
  /* cap = min(max, base << attempt), deciding before shifting so that
   * nothing overflows: base << attempt <= max exactly when base <= max >> attempt. */
  uint64_t cap = max_ms;
  if (attempt < 64 && base_ms <= (max_ms >> attempt)) cap = base_ms << attempt;
  /* Full jitter: floor((cap + 1) * rnd / 2^32) is uniform over [0, cap]
   * without modulo bias; the 96-bit product is taken in halves, and cap + 1
   * = 2^64 is its own case. */
  if (cap == UINT64_MAX) return (uint64_t)rnd << 32;
  uint64_t n = cap + 1;
  return (n >> 32) * rnd + (((n & 0xffffffffu) * rnd) >> 32);
}
