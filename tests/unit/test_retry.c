/* Unit tests for retry: the windowed retry budget and jittered exponential backoff. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "testutil.h"

static mesh_ctx *ctx;

static void setup(void) { ck_assert_int_eq(mesh_ctx_new(&ctx), 0); }
static void teardown(void) { mesh_ctx_free(ctx); }

static mesh_budget *budget(double ratio, uint32_t min_per_sec, uint64_t ttl_ms, uint64_t now) {
  mesh_budget *b = NULL;
  ck_assert_int_eq(mesh_budget_new(ctx, ratio, min_per_sec, ttl_ms, now, &b), 0);
  return b;
}

/* How many withdrawals in a row succeed at time now (stops at limit). */
static long drain(mesh_budget *b, uint64_t now, long limit) {
  long n = 0;
  while (n < limit && mesh_budget_withdraw(b, now)) n++;
  return n;
}

START_TEST(bad_arguments) {
  mesh_budget *b = (mesh_budget *)ctx; /* must stay untouched on failure */
  ck_assert_int_eq(mesh_budget_new(NULL, 0.2, 10, 10000, 0, &b), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_budget_new(ctx, 0.2, 10, 10000, 0, NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_budget_new(ctx, -0.01, 10, 10000, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, 1000.5, 10, 10000, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, NAN, 10, 10000, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, INFINITY, 10, 10000, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, 0.2, 10, 999, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, 0.2, 10, 60001, 0, &b), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_budget_new(ctx, 0.2, 10, 0, 0, &b), MESH_ERR_RANGE);
  ck_assert_ptr_eq(b, (mesh_budget *)ctx);
  /* The bounds themselves are allowed. */
  const double ratios[] = {0.0, 1000.0};
  const uint64_t ttls[] = {1000, 60000};
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++) {
      ck_assert_int_eq(mesh_budget_new(ctx, ratios[i], 10, ttls[j], 0, &b), 0);
      mesh_budget_free(b);
    }
  /* NULL budgets: nothing happens, nothing is allowed. */
  mesh_budget_free(NULL);
  mesh_budget_deposit(NULL, 0);
  ck_assert_int_eq(mesh_budget_withdraw(NULL, 0), 0);
  ck_assert_int_eq(mesh_budget_balance(NULL, 0), 0);
}
END_TEST

/* Linkerd's default budget: 20 % of requests, 10 retries a second, 10 s. */
START_TEST(linkerd_default) {
  mesh_budget *b = budget(0.2, 10, 10000, 1000);
  /* withdraw = 1 / 0.2 = 5 deposits; reserve = 10 * 10 * 5 = 500. */
  ck_assert_int_eq(mesh_budget_balance(b, 1000), 500);
  for (int i = 0; i < 100; i++) mesh_budget_deposit(b, 1000);
  ck_assert_int_eq(mesh_budget_balance(b, 1000), 600);
  /* 20 retries from the deposits, 100 from the reserve. */
  ck_assert_int_eq(drain(b, 1000, 1000), 20 + 500 / 5);
  ck_assert_int_eq(mesh_budget_balance(b, 1000), 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 1000), 0);
  /* Four more requests are not enough for one retry; the fifth is. */
  for (int i = 0; i < 4; i++) mesh_budget_deposit(b, 1000);
  ck_assert_int_eq(mesh_budget_withdraw(b, 1000), 0);
  mesh_budget_deposit(b, 1000);
  ck_assert_int_eq(mesh_budget_withdraw(b, 1000), 1);
  ck_assert_int_eq(mesh_budget_withdraw(b, 1000), 0);
  mesh_budget_free(b);
}
END_TEST

START_TEST(reserve_only) {
  mesh_budget *b = budget(0.2, 10, 10000, 0);
  ck_assert_int_eq(drain(b, 0, 1000), 10 * 10);
  ck_assert_int_eq(mesh_budget_balance(b, 0), 0);
  /* Spending the reserve is remembered for the ttl like a deposit would be... */
  ck_assert_int_eq(mesh_budget_withdraw(b, 9999), 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 10999), 0);
  /* ...and then the reserve is whole again. */
  ck_assert_int_eq(mesh_budget_balance(b, 11000), 500);
  ck_assert_int_eq(drain(b, 11000, 1000), 100);
  mesh_budget_free(b);

  /* tower's tps_reserve and tps_empty. */
  b = budget(1.0, 5, 1000, 0);
  ck_assert_int_eq(drain(b, 0, 100), 5);
  mesh_budget_free(b);
  b = budget(1.0, 0, 1000, 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 0), 0);
  mesh_budget_free(b);
}
END_TEST

START_TEST(deposits_expire) {
  /* ttl 1 s: ten windows of 100 ms. A deposit counts for at least the ttl
   * and at most a window longer, as in tower. */
  mesh_budget *b = budget(1.0, 0, 1000, 0);
  for (int i = 0; i < 5; i++) mesh_budget_deposit(b, 50);
  ck_assert_int_eq(mesh_budget_balance(b, 50), 5);
  ck_assert_int_eq(mesh_budget_balance(b, 999), 5);
  ck_assert_int_eq(mesh_budget_balance(b, 1000), 5);
  ck_assert_int_eq(mesh_budget_balance(b, 1099), 5);
  ck_assert_int_eq(mesh_budget_balance(b, 1100), 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 1100), 0);
  mesh_budget_free(b);

  /* The same when the first call after the deposit comes exactly one ttl
   * later, crossing all ten windows at once. */
  b = budget(1.0, 0, 1000, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 1000), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 1099), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 1100), 0);
  mesh_budget_free(b);
  b = budget(1.0, 0, 1000, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 1100), 0); /* eleven windows at once */
  mesh_budget_free(b);

  /* tower's tps_leaky: a deposit is gone three ttls later. */
  b = budget(1.0, 0, 1000, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 3000), 0);
  mesh_budget_free(b);

  /* One deposit per window leaves one window at a time. */
  b = budget(1.0, 0, 10000, 0);
  for (uint64_t t = 0; t < 10000; t += 1000) mesh_budget_deposit(b, t);
  ck_assert_int_eq(mesh_budget_balance(b, 9999), 10);
  ck_assert_int_eq(mesh_budget_balance(b, 10999), 10);
  for (int64_t k = 1; k <= 10; k++)
    ck_assert_int_eq(mesh_budget_balance(b, 10000 + (uint64_t)k * 1000), 10 - k);
  mesh_budget_free(b);

  /* The same, observed only after a long silence: nothing is left. */
  b = budget(1.0, 0, 10000, 0);
  for (uint64_t t = 0; t < 10000; t += 1000) mesh_budget_deposit(b, t);
  ck_assert_int_eq(mesh_budget_balance(b, 14500), 6);
  ck_assert_int_eq(mesh_budget_balance(b, 1000000), 0);
  mesh_budget_free(b);
}
END_TEST

/* tower's tps_slots, on aligned windows. */
START_TEST(slots) {
  mesh_budget *b = budget(0.5, 0, 1000, 0);
  mesh_budget_deposit(b, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 901), 1); /* 900 ms later, still valid */
  mesh_budget_deposit(b, 2902);                       /* blank slate */
  mesh_budget_deposit(b, 3203);
  mesh_budget_deposit(b, 4004);
  /* The first of the three has expired; the second and third make one retry. */
  ck_assert_int_eq(mesh_budget_balance(b, 4004), 2);
  ck_assert_int_eq(mesh_budget_withdraw(b, 4004), 1);
  ck_assert_int_eq(mesh_budget_withdraw(b, 4004), 0);
  mesh_budget_free(b);
}
END_TEST

START_TEST(ratio_above_one) {
  /* 2.0: every request may be retried twice (deposit 1000, withdraw 500). */
  mesh_budget *b = budget(2.0, 0, 10000, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 0), 1000);
  ck_assert_int_eq(drain(b, 0, 100), 2);
  for (int i = 0; i < 10; i++) mesh_budget_deposit(b, 0);
  ck_assert_int_eq(drain(b, 0, 100), 20);
  mesh_budget_free(b);

  /* The reserve is in the same units: 3 a second for 2 s is 6 retries. */
  b = budget(2.0, 3, 2000, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 0), 3 * 2 * 500);
  ck_assert_int_eq(drain(b, 0, 100), 6);
  mesh_budget_free(b);

  /* 1000: a thousand retries per request. */
  b = budget(1000.0, 0, 10000, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(drain(b, 0, 5000), 1000);
  mesh_budget_free(b);

  /* 3.0: withdraw truncates to 333, so three deposits give nine retries. */
  b = budget(3.0, 0, 10000, 0);
  for (int i = 0; i < 3; i++) mesh_budget_deposit(b, 0);
  ck_assert_int_eq(drain(b, 0, 100), 9);
  mesh_budget_free(b);
}
END_TEST

START_TEST(ratio_zero) {
  /* Deposits earn nothing: only the reserve can be spent. */
  mesh_budget *b = budget(0.0, 0, 10000, 0);
  for (int i = 0; i < 1000; i++) mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 0), 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 0), 0);
  mesh_budget_free(b);
  b = budget(0.0, 2, 1000, 0);
  for (int i = 0; i < 1000; i++) mesh_budget_deposit(b, 0);
  ck_assert_int_eq(drain(b, 0, 100), 2);
  mesh_budget_free(b);
}
END_TEST

START_TEST(time_is_the_callers) {
  /* Time going backwards counts as no time passed. */
  mesh_budget *b = budget(1.0, 0, 1000, 5000);
  mesh_budget_deposit(b, 5000);
  mesh_budget_deposit(b, 100); /* earlier than the budget itself */
  ck_assert_int_eq(mesh_budget_balance(b, 0), 2);
  ck_assert_int_eq(mesh_budget_withdraw(b, 4000), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 5000), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 6100), 0);
  mesh_budget_deposit(b, 6000); /* behind the clock the budget has seen */
  ck_assert_int_eq(mesh_budget_balance(b, 6150), 1);
  /* A jump to the end of time clears everything and does not loop. */
  ck_assert_int_eq(mesh_budget_balance(b, UINT64_MAX), 0);
  mesh_budget_deposit(b, UINT64_MAX);
  ck_assert_int_eq(mesh_budget_balance(b, UINT64_MAX), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 0), 1);
  mesh_budget_free(b);

  /* A ttl that is not a multiple of ten: windows of 124 ms, so that ten of
   * them still cover the ttl. */
  b = budget(1.0, 0, 1234, 0);
  mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 1100), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 1363), 1);
  ck_assert_int_eq(mesh_budget_balance(b, 1364), 0);
  mesh_budget_free(b);
}
END_TEST

START_TEST(extremes_saturate) {
  /* A tiny ratio and the largest minimum: amounts clamp, sums saturate. */
  mesh_budget *b = budget(1e-300, UINT32_MAX, 60000, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 0), INT64_MAX);
  ck_assert_int_eq(mesh_budget_withdraw(b, 0), 1);
  mesh_budget_deposit(b, 0);
  ck_assert_int_gt(mesh_budget_balance(b, 0), 0);
  mesh_budget_free(b);

  b = budget(1e-300, 0, 60000, 0);
  for (int i = 0; i < 100; i++) mesh_budget_deposit(b, 0);
  ck_assert_int_eq(mesh_budget_withdraw(b, 0), 0);
  mesh_budget_free(b);

  b = budget(1.0, UINT32_MAX, 60000, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 0), (int64_t)UINT32_MAX * 60);
  mesh_budget_free(b);
}
END_TEST

typedef struct {
  mesh_budget *b;
  int id;
  int moving_clock;
  long allowed;
} worker;

enum { ITERATIONS = 20000 };

static void *hammer(void *arg) {
  worker *w = arg;
  for (long i = 0; i < ITERATIONS; i++) {
    /* Each thread's clock moves on its own, so calls arrive out of order. */
    uint64_t now = w->moving_clock ? 1000 + (uint64_t)i + (uint64_t)w->id * 37 : 1000;
    mesh_budget_deposit(w->b, now);
    if (mesh_budget_withdraw(w->b, now)) w->allowed++;
    if (i % 3 == 0 && mesh_budget_withdraw(w->b, now)) w->allowed++;
    (void)mesh_budget_balance(w->b, now);
  }
  return NULL;
}

static long run_threads(mesh_budget *b, int moving_clock) {
  pthread_t t[4];
  worker w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker){.b = b, .id = i, .moving_clock = moving_clock};
    ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
  }
  long allowed = 0;
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    allowed += w[i].allowed;
  }
  return allowed;
}

START_TEST(concurrent_use) {
  /* On a still clock nothing expires, so every unit is accounted for:
   * deposits + reserve - withdrawals is the balance, and it never went
   * below zero, so withdrawals were never granted twice. */
  mesh_budget *b = budget(1.0, 10, 1000, 1000);
  long allowed = run_threads(b, 0);
  int64_t balance = mesh_budget_balance(b, 1000);
  ck_assert_int_eq(balance, 4L * ITERATIONS + 10 - allowed);
  ck_assert_int_ge(balance, 0);
  ck_assert_int_gt(allowed, 0);
  mesh_budget_free(b);

  /* With clocks moving out of step, everything has expired in the end and
   * only the reserve is left. */
  b = budget(0.2, 10, 1000, 1000);
  allowed = run_threads(b, 1);
  ck_assert_int_gt(allowed, 0);
  ck_assert_int_eq(mesh_budget_balance(b, 1000 + ITERATIONS + 10000), 10 * 1 * 5);
  mesh_budget_free(b);
}
END_TEST

static int new_op(mesh_ctx *c, void *arg) {
  (void)arg;
  mesh_budget *b = NULL;
  int rc = mesh_budget_new(c, 0.2, 10, 10000, 0, &b);
  if (rc == 0) {
    ck_assert_int_eq(mesh_budget_balance(b, 0), 500);
    mesh_budget_free(b);
  } else {
    ck_assert_ptr_null(b);
  }
  return rc;
}

START_TEST(allocation_failure) { ck_assert_int_eq(test_alloc_failures(new_op, NULL), 1); }
END_TEST

/* ---- backoff ---- */

START_TEST(backoff_bounds) {
  /* attempt 0: [0, 25]; the ends of the random range reach the ends. */
  ck_assert_uint_eq(mesh_backoff_ms(MESH_BACKOFF_BASE_MS, MESH_BACKOFF_MAX_MS, 0, 0), 0);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 0, UINT32_MAX), 25);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 1, UINT32_MAX), 50);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 3, UINT32_MAX), 200);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 4, UINT32_MAX), 250); /* 400, capped */
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 63, UINT32_MAX), 250);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 64, UINT32_MAX), 250);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, UINT32_MAX, UINT32_MAX), 250);
  ck_assert_uint_eq(mesh_backoff_ms(25, 250, 3, 1u << 31), 100); /* the middle of [0, 200] */
  /* Degenerate bounds. */
  ck_assert_uint_eq(mesh_backoff_ms(0, 250, 5, UINT32_MAX), 0);
  ck_assert_uint_eq(mesh_backoff_ms(25, 0, 5, UINT32_MAX), 0);
  ck_assert_uint_eq(mesh_backoff_ms(300, 250, 0, UINT32_MAX), 250);
  /* Saturation: shifts that would overflow 64 bits. */
  ck_assert_uint_eq(mesh_backoff_ms(UINT64_MAX, UINT64_MAX, 0, 0), 0);
  ck_assert_uint_eq(mesh_backoff_ms(UINT64_MAX, UINT64_MAX, 0, UINT32_MAX),
                    (uint64_t)UINT32_MAX << 32);
  /* floor((2^64 - 1) * (2^32 - 1) / 2^32) = 2^64 - 2^32 - 1 */
  ck_assert_uint_eq(mesh_backoff_ms(1ull << 40, UINT64_MAX - 1, 40, UINT32_MAX),
                    0xfffffffeffffffffull);
  ck_assert_uint_eq(mesh_backoff_ms(3, 1000, UINT32_MAX, 1u << 31), 500);
  ck_assert_uint_eq(mesh_backoff_ms(1, 1ull << 62, 62, 1u << 31), 1ull << 61);
  /* Never above the cap, never decreasing in rnd. */
  for (uint32_t attempt = 0; attempt < 70; attempt++) {
    uint64_t cap = attempt < 4 ? 25ull << attempt : 250;
    uint64_t prev = 0;
    for (uint64_t r = 0; r <= UINT32_MAX; r += 0x1000001) {
      uint64_t d = mesh_backoff_ms(25, 250, attempt, (uint32_t)r);
      ck_assert_uint_le(d, cap);
      ck_assert_uint_ge(d, prev);
      prev = d;
    }
  }
}
END_TEST

START_TEST(backoff_is_uniform) {
  /* Every value of [0, 25] shows up about equally often. */
  long seen[26] = {0};
  uint32_t st = 2463534242u;
  const long draws = 260000;
  for (long i = 0; i < draws; i++) {
    st ^= st << 13;
    st ^= st >> 17;
    st ^= st << 5;
    uint64_t d = mesh_backoff_ms(25, 250, 0, st);
    ck_assert_uint_le(d, 25);
    seen[d]++;
  }
  for (int v = 0; v <= 25; v++) {
    ck_assert_int_gt(seen[v], 9000); /* 10000 expected */
    ck_assert_int_lt(seen[v], 11000);
  }
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("retry");
  TCase *bt = tcase_create("budget");
  tcase_add_checked_fixture(bt, setup, teardown);
  tcase_add_test(bt, bad_arguments);
  tcase_add_test(bt, linkerd_default);
  tcase_add_test(bt, reserve_only);
  tcase_add_test(bt, deposits_expire);
  tcase_add_test(bt, slots);
  tcase_add_test(bt, ratio_above_one);
  tcase_add_test(bt, ratio_zero);
  tcase_add_test(bt, time_is_the_callers);
  tcase_add_test(bt, extremes_saturate);
  tcase_add_test(bt, concurrent_use);
  tcase_add_test(bt, allocation_failure);
  suite_add_tcase(s, bt);
  TCase *bo = tcase_create("backoff");
  tcase_add_test(bo, backoff_bounds);
  tcase_add_test(bo, backoff_is_uniform);
  suite_add_tcase(s, bo);
  return s;
}

int main(void) { return test_main(make_suite()); }
