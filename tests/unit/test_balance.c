/* Unit tests for balance: p2c over Peak-EWMA, pending counts, failure accrual, removal, threads. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "testutil.h"

#define MS 1000000ull /* ns */
#define SEC 1000000000ull

static mesh_ctx *ctx;

static void setup(void) { ck_assert_int_eq(mesh_ctx_new(&ctx), 0); }
static void teardown(void) { mesh_ctx_free(ctx); }

static mesh_balance *balancer(const mesh_balance_opts *o) {
  mesh_balance *b = NULL;
  ck_assert_int_eq(mesh_balance_new(ctx, o, &b), 0);
  return b;
}

static mesh_endpoint *add(mesh_balance *b, const char *addr) {
  mesh_endpoint *ep = NULL;
  ck_assert_int_eq(mesh_balance_add(b, addr, MESH_BALANCE_WEIGHT_DEFAULT, NULL, &ep), 0);
  ck_assert_ptr_nonnull(ep);
  return ep;
}

static mesh_endpoint *pick(mesh_balance *b, uint64_t now, uint32_t ra, uint32_t rb) {
  mesh_endpoint *ep = NULL;
  ck_assert_int_eq(mesh_balance_pick(b, now, ra, rb, &ep), 0);
  ck_assert_ptr_nonnull(ep);
  return ep;
}

/* One request to whatever the balancer picks, lasting rtt. */
static mesh_endpoint *request(mesh_balance *b, uint64_t now, uint64_t rtt, int success) {
  mesh_endpoint *ep = pick(b, now, 0, 0);
  mesh_balance_done(ep, now + rtt, now, success, 1u << 31);
  return ep;
}

static uint32_t xorshift(uint32_t *s) {
  uint32_t x = *s;
  x ^= x << 13, x ^= x >> 17, x ^= x << 5;
  return *s = x;
}

static void assert_close(double got, double want, double rel) {
  ck_assert_msg(fabs(got - want) <= rel * fabs(want), "got %.6f, want %.6f", got, want);
}

START_TEST(bad_arguments) {
  mesh_balance_opts *o = (mesh_balance_opts *)ctx; /* untouched on failure */
  ck_assert_int_eq(mesh_balance_opts_new(NULL, &o), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_opts_new(ctx, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(o, (mesh_balance_opts *)ctx);
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_decay(o, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_default_rtt(o, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_failure_threshold(o, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_penalty(o, 0, 10), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_penalty(o, 11, 10), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, -0.01), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, 1.01), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, NAN), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_balance_opts_set_decay(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_opts_set_default_rtt(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_opts_set_failure_threshold(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_opts_set_penalty(NULL, 1, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(NULL, 0.5), MESH_ERR_INVALID);
  /* The bounds themselves are allowed. */
  ck_assert_int_eq(mesh_balance_opts_set_penalty(o, 10, 10), 0);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, 0.0), 0);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, 1.0), 0);
  ck_assert_int_eq(mesh_balance_opts_set_failure_threshold(o, 1), 0);
  mesh_balance_opts_free(o);
  mesh_balance_opts_free(NULL);

  mesh_balance *b = (mesh_balance *)ctx;
  ck_assert_int_eq(mesh_balance_new(NULL, NULL, &b), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_new(ctx, NULL, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(b, (mesh_balance *)ctx);
  b = balancer(NULL);
  mesh_endpoint *ep = (mesh_endpoint *)ctx;
  ck_assert_int_eq(mesh_balance_add(NULL, "a:1", 1000, NULL, &ep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_add(b, NULL, 1000, NULL, &ep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_add(b, "", 1000, NULL, &ep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_add(b, "a:1", 0, NULL, &ep), MESH_ERR_RANGE);
  ck_assert_ptr_eq(ep, (mesh_endpoint *)ctx);
  ck_assert_int_eq(mesh_balance_add(b, "a:1", 1000, NULL, NULL), 0); /* ret is optional */
  ck_assert_int_eq(mesh_balance_add(b, "a:1", 2000, NULL, &ep), MESH_ERR_INVALID); /* twice */
  ck_assert_uint_eq(mesh_balance_count(b), 1);
  ck_assert_int_eq(mesh_balance_pick(NULL, 0, 0, 0, &ep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_pick(b, 0, 0, 0, NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_remove(NULL, ep), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_balance_remove(b, NULL), MESH_ERR_INVALID);
  /* NULL handles: no-ops and neutral answers. */
  mesh_balance_done(NULL, 0, 0, 1, 0);
  mesh_balance_free(NULL);
  mesh_endpoint_unref(NULL);
  ck_assert_ptr_null(mesh_endpoint_ref(NULL));
  ck_assert_uint_eq(mesh_balance_count(NULL), 0);
  ck_assert_uint_eq(mesh_balance_ready_count(NULL), 0);
  ck_assert_ptr_null(mesh_balance_endpoint(NULL, 0));
  ck_assert_ptr_null(mesh_endpoint_addr(NULL));
  ck_assert_ptr_null(mesh_endpoint_userdata(NULL));
  ck_assert_uint_eq(mesh_endpoint_weight(NULL), 0);
  ck_assert_int_eq(mesh_endpoint_active(NULL), 0);
  ck_assert_int_eq(mesh_endpoint_state(NULL), MESH_ERR_INVALID);
  ck_assert_uint_eq(mesh_endpoint_pending(NULL), 0);
  ck_assert_uint_eq(mesh_endpoint_failures(NULL), 0);
  ck_assert_uint_eq(mesh_endpoint_retry_at(NULL), 0);
  ck_assert(mesh_endpoint_rtt(NULL, 0) == 0.0);
  ck_assert(mesh_endpoint_cost(NULL, 0) == 0.0);
  mesh_balance_free(b);
}
END_TEST

START_TEST(endpoints_and_accessors) {
  mesh_balance *b = balancer(NULL);
  int tag;
  mesh_endpoint *ep = NULL;
  ck_assert_int_eq(mesh_balance_add(b, "10.0.0.1:8080", 2500, &tag, &ep), 0);
  ck_assert_str_eq(mesh_endpoint_addr(ep), "10.0.0.1:8080");
  ck_assert_ptr_eq(mesh_endpoint_userdata(ep), &tag);
  ck_assert_uint_eq(mesh_endpoint_weight(ep), 2500);
  ck_assert_int_eq(mesh_endpoint_active(ep), 1);
  ck_assert_int_eq(mesh_endpoint_state(ep), MESH_ENDPOINT_READY);
  ck_assert_uint_eq(mesh_endpoint_pending(ep), 0);
  ck_assert_uint_eq(mesh_endpoint_failures(ep), 0);
  ck_assert_uint_eq(mesh_endpoint_retry_at(ep), 0);
  /* No sample yet: the default RTT, whatever the time. */
  ck_assert(mesh_endpoint_rtt(ep, 0) == (double)MESH_BALANCE_DEFAULT_RTT_NS);
  ck_assert(mesh_endpoint_rtt(ep, 1000 * SEC) == (double)MESH_BALANCE_DEFAULT_RTT_NS);
  assert_close(mesh_endpoint_cost(ep, 0), 30.0 * MS * 1000 / 2500, 1e-12);
  add(b, "10.0.0.2:8080");
  add(b, "10.0.0.3:8080");
  ck_assert_uint_eq(mesh_balance_count(b), 3);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 3);
  /* Iteration hands out references. */
  int seen = 0;
  for (size_t i = 0;; i++) {
    mesh_endpoint *e = mesh_balance_endpoint(b, i);
    if (!e) break;
    seen |= 1 << (mesh_endpoint_addr(e)[7] - '1');
    mesh_endpoint_unref(e);
  }
  ck_assert_int_eq(seen, 7);
  ck_assert_ptr_null(mesh_balance_endpoint(b, 3));
  mesh_balance_free(b);
}
END_TEST

/* A balancer whose default RTT (1 ms) is below every sample, so that first
 * samples are peaks and estimates are exactly the samples. */
static mesh_balance *balancer_low_default(void) {
  mesh_balance_opts *o;
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_default_rtt(o, 1 * MS), 0);
  mesh_balance *b = balancer(o);
  mesh_balance_opts_free(o);
  return b;
}

/* With two ready endpoints, either order of the random draws compares the
 * same pair and the cheaper one wins. */
START_TEST(p2c_prefers_lower_cost) {
  mesh_balance *b = balancer_low_default();
  mesh_endpoint *slow = add(b, "slow:1"), *fast = add(b, "fast:1");
  /* One sample each: 105 ms and 10 ms. */
  mesh_endpoint *e = pick(b, 0, 0, 0);
  ck_assert_ptr_eq(e, slow); /* a tie at the default goes to the first draw: index 0 */
  mesh_balance_done(e, 105 * MS, 0, 1, 0);
  e = pick(b, 0, UINT32_MAX, 0);
  ck_assert_ptr_eq(e, fast); /* the first draw is index 1 now */
  mesh_balance_done(e, 10 * MS, 0, 1, 0);
  ck_assert(mesh_endpoint_rtt(slow, 105 * MS) == 105.0 * MS);
  ck_assert(mesh_endpoint_rtt(fast, 10 * MS) == 10.0 * MS);
  const uint32_t draws[][2] = {{0, 0}, {UINT32_MAX, UINT32_MAX}, {1u << 31, 0}, {0, 1u << 31},
                               {12345, 67890}, {UINT32_MAX, 0}};
  for (size_t k = 0; k < sizeof draws / sizeof draws[0]; k++) {
    e = pick(b, 105 * MS, draws[k][0], draws[k][1]);
    ck_assert_ptr_eq(e, fast);
    mesh_balance_done(e, 105 * MS, 95 * MS, 1, 0); /* 10 ms again: the estimate stays */
  }
  /* Pending requests raise the cost: 10 ms x (9 + 1) still wins against
   * 105 ms, 10 ms x (10 + 1) does not. */
  for (int k = 0; k < 10; k++) ck_assert_ptr_eq(pick(b, 105 * MS, 0, 0), fast);
  ck_assert_uint_eq(mesh_endpoint_pending(fast), 10);
  assert_close(mesh_endpoint_cost(fast, 105 * MS), 110.0 * MS, 1e-9);
  ck_assert_ptr_eq(pick(b, 105 * MS, 0, 0), slow);
  ck_assert_uint_eq(mesh_endpoint_pending(slow), 1);
  mesh_balance_free(b);
}
END_TEST

/* With three endpoints, the pair is the two draws and only they compete. */
START_TEST(p2c_draws_two_distinct) {
  mesh_balance *b = balancer_low_default();
  mesh_endpoint *ep[3];
  ep[0] = add(b, "a:1");
  ep[1] = add(b, "b:1");
  ep[2] = add(b, "c:1");
  /* i = floor(3 rnd_a / 2^32); j = floor(2 rnd_b / 2^32), skipping i. */
  mesh_endpoint *e = pick(b, 0, 0x60000000u, 0); /* 1 vs 0, a tie: i */
  ck_assert_ptr_eq(e, ep[1]);
  mesh_balance_done(e, 50 * MS, 0, 1, 0);
  e = pick(b, 0, UINT32_MAX, 0); /* 2 vs 0, a tie */
  ck_assert_ptr_eq(e, ep[2]);
  mesh_balance_done(e, 10 * MS, 0, 1, 0);
  e = pick(b, 0, 0, 0); /* 0 vs 1 */
  ck_assert_ptr_eq(e, ep[0]);
  mesh_balance_done(e, 30 * MS, 0, 1, 0);
  /* Now 30, 50 and 10 ms. 0 vs 1: 0 wins though 2 is the cheapest. */
  ck_assert_ptr_eq(pick(b, 60 * MS, 0, 0), ep[0]);
  /* 1 vs 1 -> 2. */
  ck_assert_ptr_eq(pick(b, 60 * MS, 0x60000000u, UINT32_MAX), ep[2]);
  /* 2 vs 1: 10 ms x 2 = 20 ms against 50 ms. */
  ck_assert_ptr_eq(pick(b, 60 * MS, UINT32_MAX, UINT32_MAX), ep[2]);
  ck_assert_uint_eq(mesh_endpoint_pending(ep[2]), 2);
  ck_assert_uint_eq(mesh_endpoint_pending(ep[0]), 1);
  ck_assert_uint_eq(mesh_endpoint_pending(ep[1]), 0);
  for (int i = 0; i < 3; i++)
    while (mesh_endpoint_pending(ep[i]) > 0) mesh_balance_done(ep[i], 60 * MS, 60 * MS, 1, 0);
  mesh_balance_free(b);
}
END_TEST

START_TEST(one_ready_endpoint) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *only = add(b, "a:1");
  uint32_t s = 99;
  for (int i = 0; i < 100; i++) {
    ck_assert_ptr_eq(pick(b, (uint64_t)i, xorshift(&s), xorshift(&s)), only);
    ck_assert_uint_eq(mesh_endpoint_pending(only), (uint32_t)i + 1);
  }
  for (int i = 0; i < 100; i++) mesh_balance_done(only, 200, 0, 1, 0);
  ck_assert_uint_eq(mesh_endpoint_pending(only), 0);
  mesh_balance_free(b);
}
END_TEST

START_TEST(pending_counts) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1");
  mesh_endpoint *e[5];
  for (int i = 0; i < 5; i++) e[i] = pick(b, 0, 0, 0);
  ck_assert_uint_eq(mesh_endpoint_pending(a), 5);
  /* cost = 30 ms x (5 + 1) */
  assert_close(mesh_endpoint_cost(a, 0), 6 * 30.0 * MS, 1e-12);
  for (int i = 0; i < 5; i++) {
    mesh_balance_done(e[i], 0, 0, 1, 0);
    ck_assert_uint_eq(mesh_endpoint_pending(a), 4 - (uint32_t)i);
  }
  mesh_balance_free(b);
}
END_TEST

/* Known values of the Peak-EWMA: peaks replace, lower samples blend with
 * w = exp(-elapsed / decay), and the estimate decays towards zero between samples. */
START_TEST(peak_ewma_math) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1");
  /* First sample, above the 30 ms default: taken as is. */
  request(b, 0, 100 * MS, 1);
  ck_assert(mesh_endpoint_rtt(a, 100 * MS) == 100.0 * MS);
  /* Ten seconds (one decay) later: e^-1 of it. */
  assert_close(mesh_endpoint_rtt(a, 100 * MS + 10 * SEC), 100.0 * MS * exp(-1.0), 1e-9);
  assert_close(mesh_endpoint_rtt(a, 100 * MS + 20 * SEC), 100.0 * MS * exp(-2.0), 1e-9);
  /* A 20 ms sample ending 10.02 s after the last: 100 w + 20 (1 - w). */
  uint64_t t = 100 * MS + 10 * SEC;
  request(b, t, 20 * MS, 1);
  double w = exp(-(10.0 * SEC + 20.0 * MS) / (10.0 * SEC));
  double want = 100.0 * MS * w + 20.0 * MS * (1 - w);
  assert_close(mesh_endpoint_rtt(a, t + 20 * MS), want, 1e-9);
  assert_close(want, 49.37e6, 1e-3); /* about 49.4 ms */
  /* A peak replaces the estimate at once, however recent the last sample. */
  t += 20 * MS;
  request(b, t, 250 * MS, 1);
  ck_assert(mesh_endpoint_rtt(a, t + 250 * MS) == 250.0 * MS);
  /* A sample equal to the estimate is not a peak but changes nothing. */
  t += 250 * MS;
  mesh_endpoint *e = pick(b, t, 0, 0);
  mesh_balance_done(e, t + 250 * MS, t, 1, 0);
  assert_close(mesh_endpoint_rtt(a, t + 250 * MS), 250.0 * MS * exp(-0.025) + 250.0 * MS * (1 - exp(-0.025)), 1e-9);
  mesh_balance_free(b);

  /* A first sample below the default blends with the default, timed from
   * the request's start. */
  b = balancer(NULL);
  a = add(b, "a:1");
  request(b, 5 * SEC, 10 * MS, 1);
  w = exp(-0.001);
  assert_close(mesh_endpoint_rtt(a, 5 * SEC + 10 * MS), 30.0 * MS * w + 10.0 * MS * (1 - w),
               1e-9);
  /* A clock that went backwards: a 0 ns sample, no decay. */
  double before = mesh_endpoint_rtt(a, 5 * SEC + 10 * MS);
  e = pick(b, 6 * SEC, 0, 0);
  mesh_balance_done(e, 1 * SEC, 6 * SEC, 1, 0);
  assert_close(mesh_endpoint_rtt(a, 5 * SEC + 10 * MS), before, 1e-12);
  mesh_balance_free(b);

  /* Options: decay 1 s, default 5 ms. */
  mesh_balance_opts *o;
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_decay(o, 1 * SEC), 0);
  ck_assert_int_eq(mesh_balance_opts_set_default_rtt(o, 5 * MS), 0);
  b = balancer(o);
  mesh_balance_opts_free(o); /* copied */
  a = add(b, "a:1");
  ck_assert(mesh_endpoint_rtt(a, 0) == 5.0 * MS);
  request(b, 0, 40 * MS, 1);
  assert_close(mesh_endpoint_rtt(a, 40 * MS + 3 * SEC), 40.0 * MS * exp(-3.0), 1e-9);
  mesh_balance_free(b);
}
END_TEST

START_TEST(weights_scale_cost) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *light = NULL, *heavy = NULL;
  ck_assert_int_eq(mesh_balance_add(b, "light:1", 1000, NULL, &light), 0);
  ck_assert_int_eq(mesh_balance_add(b, "heavy:1", 2000, NULL, &heavy), 0);
  assert_close(mesh_endpoint_cost(heavy, 0), mesh_endpoint_cost(light, 0) / 2, 1e-12);
  /* Same RTT: heavy takes one pending more than light before it loses. */
  ck_assert_ptr_eq(pick(b, 0, 0, 0), heavy); /* 15 ms vs 30 ms */
  ck_assert_ptr_eq(pick(b, 0, 0, 0), light); /* 30 vs 30: a tie, the first draw */
  ck_assert_ptr_eq(pick(b, 0, UINT32_MAX, 0), heavy); /* 30 vs 60 */
  mesh_balance_free(b);
}
END_TEST

/* A discrete-event simulation: one request a millisecond, three endpoints
 * answering in 10, 10 and 100 ms. */
enum { SIM_REQUESTS = 10000 };

typedef struct {
  mesh_endpoint *ep;
  uint64_t start, end;
} flight;

static void simulate(mesh_balance *b, mesh_endpoint **eps, const uint64_t *latency, int n,
                     long *count) {
  static flight fl[SIM_REQUESTS];
  int nf = 0;
  uint32_t s = 2463534242u;
  for (int r = 0; r < SIM_REQUESTS; r++) {
    uint64_t now = (uint64_t)r * MS;
    for (int k = 0; k < nf;) { /* completions due by now */
      if (fl[k].end <= now) {
        mesh_balance_done(fl[k].ep, fl[k].end, fl[k].start, 1, 0);
        fl[k] = fl[--nf];
      } else {
        k++;
      }
    }
    mesh_endpoint *e = pick(b, now, xorshift(&s), xorshift(&s));
    int i = 0;
    while (eps[i] != e) i++;
    ck_assert_int_lt(i, n);
    count[i]++;
    fl[nf++] = (flight){e, now, now + latency[i]};
  }
  for (int k = 0; k < nf; k++) mesh_balance_done(fl[k].ep, fl[k].end, fl[k].start, 1, 0);
  for (int i = 0; i < n; i++) ck_assert_uint_eq(mesh_endpoint_pending(eps[i]), 0);
}

START_TEST(slow_endpoint_gets_less_traffic) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *eps[3] = {add(b, "fast-a:1"), add(b, "slow:1"), add(b, "fast-b:1")};
  const uint64_t latency[3] = {10 * MS, 100 * MS, 10 * MS};
  long count[3] = {0};
  simulate(b, eps, latency, 3, count);
  fprintf(stderr, "balance: 10000 requests over 10/100/10 ms: %ld / %ld / %ld\n", count[0],
          count[1], count[2]);
  ck_assert_int_eq(count[0] + count[1] + count[2], SIM_REQUESTS);
  /* Round-robin would send a third to each; p2c sends the slow one a few
   * percent (its estimate decays while it is idle, so it is probed now and then). */
  ck_assert_int_lt(count[1], SIM_REQUESTS / 10);
  ck_assert_int_gt(count[1], 0);
  ck_assert_int_gt(count[0], SIM_REQUESTS * 4 / 10);
  ck_assert_int_gt(count[2], SIM_REQUESTS * 4 / 10);
  /* The estimates reflect the latencies. */
  uint64_t end = (uint64_t)SIM_REQUESTS * MS;
  ck_assert(mesh_endpoint_rtt(eps[1], end) > 3 * mesh_endpoint_rtt(eps[0], end));
  mesh_balance_free(b);
}
END_TEST

/* ---- failure accrual ---- */

START_TEST(breaker_opens_after_exactly_seven) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1");
  uint64_t t = 0;
  for (uint32_t i = 1; i <= 6; i++, t += MS) {
    request(b, t, MS / 2, 0);
    ck_assert_uint_eq(mesh_endpoint_failures(a), i);
    ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_READY);
  }
  /* A success in between starts the count again. */
  request(b, t, MS / 2, 1);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 0);
  for (uint32_t i = 1; i <= 6; i++, t += MS) request(b, t, MS / 2, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_READY);
  mesh_endpoint *e = pick(b, t, 0, 0);
  mesh_balance_done(e, t + MS / 2, t, 0, 1u << 31); /* the seventh; jitter exactly 0 */
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_OPEN);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 7);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a), t + MS / 2 + 1 * SEC);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 0);
  ck_assert_int_eq(mesh_balance_pick(b, t + MS, 0, 0, &e), MESH_ERR_UNAVAILABLE);
  mesh_balance_free(b);

  /* The threshold is an option. */
  mesh_balance_opts *o;
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_failure_threshold(o, 2), 0);
  b = balancer(o);
  mesh_balance_opts_free(o);
  a = add(b, "a:1");
  request(b, 0, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_READY);
  request(b, 0, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_OPEN);
  mesh_balance_free(b);
}
END_TEST

/* Opens the breaker of b's only endpoint at time t (threshold 7) with rnd. */
static void trip(mesh_balance *b, uint64_t t, uint32_t rnd) {
  for (int i = 0; i < 7; i++) {
    mesh_endpoint *e = pick(b, t, 0, 0);
    mesh_balance_done(e, t, t, 0, rnd);
  }
}

START_TEST(penalty_doubles_to_cap) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1"), *e;
  const uint32_t mid = 1u << 31; /* no jitter */
  trip(b, 0, mid);
  uint64_t t = 0;
  const uint64_t want[] = {1, 2, 4, 8, 16, 32, 60, 60, 60};
  for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
    ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_OPEN);
    ck_assert_uint_eq(mesh_endpoint_retry_at(a) - t, want[k] * SEC);
    t = mesh_endpoint_retry_at(a);
    /* Shut until the penalty has passed, to the nanosecond. */
    ck_assert_int_eq(mesh_balance_pick(b, t - 1, 0, 0, &e), MESH_ERR_UNAVAILABLE);
    e = pick(b, t, 0, 0);
    ck_assert_ptr_eq(e, a);
    ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_PROBATION);
    /* The probe fails: open again with the next penalty. */
    mesh_balance_done(e, t, t, 0, mid);
  }
  /* A successful probe closes the breaker and resets the penalty. */
  t = mesh_endpoint_retry_at(a);
  e = pick(b, t, 0, 0);
  mesh_balance_done(e, t + MS, t, 1, mid);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_READY);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 0);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a), 0);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 1);
  t += 2 * MS;
  trip(b, t, mid);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a) - t, 1 * SEC);
  mesh_balance_free(b);
}
END_TEST

START_TEST(penalty_jitter_bounds) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1"), *e;
  /* The extremes of the random range reach the extremes of +-50 %. */
  trip(b, 0, 0);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a), SEC / 2);
  e = pick(b, SEC / 2, 0, 0);
  mesh_balance_done(e, SEC / 2, SEC / 2, 0, UINT32_MAX); /* second penalty, base 2 s */
  uint64_t p = mesh_endpoint_retry_at(a) - SEC / 2;
  ck_assert_uint_le(p, 3 * SEC);
  ck_assert_uint_gt(p, 3 * SEC - 10);
  mesh_balance_free(b);

  /* Every penalty, capped ones included, stays within [0.5, 1.5] of its base. */
  uint32_t s = 7;
  for (int run = 0; run < 20; run++) {
    b = balancer(NULL);
    a = add(b, "a:1");
    uint64_t t = 0;
    trip(b, t, xorshift(&s));
    for (int k = 0; k < 9; k++) {
      uint64_t base = k < 6 ? SEC << k : 60 * SEC;
      uint64_t pen = mesh_endpoint_retry_at(a) - t;
      ck_assert_uint_ge(pen, base / 2);
      ck_assert_uint_le(pen, base + base / 2);
      t = mesh_endpoint_retry_at(a);
      e = pick(b, t, 0, 0);
      mesh_balance_done(e, t, t, 0, xorshift(&s));
    }
    mesh_balance_free(b);
  }

  /* Options: 100 ms .. 300 ms, no jitter. */
  mesh_balance_opts *o;
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_penalty(o, 100 * MS, 300 * MS), 0);
  ck_assert_int_eq(mesh_balance_opts_set_jitter(o, 0.0), 0);
  b = balancer(o);
  mesh_balance_opts_free(o);
  a = add(b, "a:1");
  trip(b, 0, UINT32_MAX);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a), 100 * MS);
  uint64_t t = 100 * MS;
  const uint64_t want[] = {200 * MS, 300 * MS, 300 * MS};
  for (int k = 0; k < 3; k++) {
    e = pick(b, t, 0, 0);
    mesh_balance_done(e, t, t, 0, UINT32_MAX);
    ck_assert_uint_eq(mesh_endpoint_retry_at(a) - t, want[k]);
    t = mesh_endpoint_retry_at(a);
  }
  mesh_balance_free(b);
}
END_TEST

/* On probation exactly one request goes through, even when the endpoint is
 * the cheapest by far. */
START_TEST(probation_lets_one_through) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *bad = add(b, "bad:1"), *good = add(b, "good:1");
  /* good is slow (200 ms); bad fails fast (1 ms), so it stays attractive. */
  mesh_endpoint *e = pick(b, 0, UINT32_MAX, 0);
  ck_assert_ptr_eq(e, good);
  mesh_balance_done(e, 200 * MS, 0, 1, 0);
  uint64_t t = 200 * MS;
  for (int i = 0; i < 7; i++, t += MS) {
    e = pick(b, t, 0, 0);
    ck_assert_ptr_eq(e, bad);
    mesh_balance_done(e, t + MS, t, 0, 1u << 31);
  }
  ck_assert_int_eq(mesh_endpoint_state(bad), MESH_ENDPOINT_OPEN);
  /* Open: everything goes to good. */
  for (int i = 0; i < 20; i++) ck_assert_ptr_eq(pick(b, t, (uint32_t)i << 27, 0), good);
  t = mesh_endpoint_retry_at(bad);
  uint32_t s = 5;
  int to_bad = 0;
  mesh_endpoint *probe = NULL;
  for (int i = 0; i < 200; i++) {
    e = pick(b, t, xorshift(&s), xorshift(&s));
    if (e == bad) {
      to_bad++;
      probe = e;
    }
  }
  ck_assert_int_eq(to_bad, 1);
  ck_assert_int_eq(mesh_endpoint_state(bad), MESH_ENDPOINT_PROBATION);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 1);
  /* Its success closes the breaker: bad is picked again. */
  mesh_balance_done(probe, t + MS, t, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(bad), MESH_ENDPOINT_READY);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 2);
  ck_assert_ptr_eq(pick(b, t + MS, 0, 0), bad);
  mesh_balance_free(b);
}
END_TEST

/* Answers to requests sent before the breaker opened do not move it. */
START_TEST(old_outcomes_are_ignored) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1");
  mesh_endpoint *old1 = pick(b, 0, 0, 0), *old2 = pick(b, 0, 0, 0), *old3 = pick(b, 0, 0, 0);
  trip(b, 10 * MS, 1u << 31); /* open until 1.01 s */
  ck_assert_uint_eq(mesh_endpoint_pending(a), 3);
  /* While open: a success changes nothing. */
  mesh_balance_done(old1, 20 * MS, 0, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_OPEN);
  mesh_endpoint *probe = pick(b, 1010 * MS, 0, 0);
  /* On probation: an older request's answer is not the probe's. */
  mesh_balance_done(old2, 1020 * MS, 0, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_PROBATION);
  mesh_balance_done(old3, 1020 * MS, 0, 0, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_PROBATION);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 7);
  /* The probe fails: open again, 2 s. */
  mesh_balance_done(probe, 1030 * MS, 1010 * MS, 0, 1u << 31);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_OPEN);
  ck_assert_uint_eq(mesh_endpoint_retry_at(a), 1030 * MS + 2 * SEC);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 8);

  /* A probe whose start the caller put before the pick still decides when
   * it is the last request in flight, so the breaker cannot wedge. */
  uint64_t t = mesh_endpoint_retry_at(a);
  probe = pick(b, t, 0, 0);
  mesh_balance_done(probe, t + MS, 0, 1, 0);
  ck_assert_int_eq(mesh_endpoint_state(a), MESH_ENDPOINT_READY);

  /* Closed again: a failure from before the probe does not count. */
  old1 = pick(b, t - 1, 0, 0); /* a thread with a slightly older clock */
  mesh_balance_done(old1, t + 2 * MS, t - 1, 0, 0);
  ck_assert_uint_eq(mesh_endpoint_failures(a), 0);
  mesh_balance_free(b);
}
END_TEST

START_TEST(all_shut_is_unavailable) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *e = (mesh_endpoint *)ctx;
  ck_assert_int_eq(mesh_balance_pick(b, 0, 0, 0, &e), MESH_ERR_UNAVAILABLE); /* empty */
  ck_assert_ptr_eq(e, (mesh_endpoint *)ctx);
  mesh_endpoint *eps[3] = {add(b, "a:1"), add(b, "b:1"), add(b, "c:1")};
  uint32_t s = 3;
  uint64_t t = 0;
  /* Everything fails, fast: all three breakers open. */
  for (int i = 0; i < 100 && mesh_balance_ready_count(b) > 0; i++, t += MS) {
    e = pick(b, t, xorshift(&s), xorshift(&s));
    mesh_balance_done(e, t + MS / 10, t, 0, xorshift(&s));
  }
  for (int i = 0; i < 3; i++) ck_assert_int_eq(mesh_endpoint_state(eps[i]), MESH_ENDPOINT_OPEN);
  ck_assert_int_eq(mesh_balance_pick(b, t, 1, 2, &e), MESH_ERR_UNAVAILABLE);
  /* After the longest penalty (1.5 s at most) all are on probation: three
   * picks, one each, then unavailable again until they answer. */
  t += 2 * SEC;
  mesh_endpoint *probes[3];
  for (int i = 0; i < 3; i++) probes[i] = pick(b, t, xorshift(&s), xorshift(&s));
  ck_assert(probes[0] != probes[1] && probes[1] != probes[2] && probes[0] != probes[2]);
  ck_assert_int_eq(mesh_balance_pick(b, t, 1, 2, &e), MESH_ERR_UNAVAILABLE);
  mesh_balance_done(probes[1], t + MS, t, 1, 0);
  ck_assert_ptr_eq(pick(b, t + MS, 1, 2), probes[1]);
  mesh_balance_done(probes[1], t + MS, t + MS, 1, 0);
  mesh_balance_done(probes[0], t + MS, t, 1, 0);
  mesh_balance_done(probes[2], t + MS, t, 1, 0);
  mesh_balance_free(b);
}
END_TEST

/* What a proxy holding requests arms its one timer at: the earliest end of
 * a penalty, exact even once an open endpoint is removed. */
START_TEST(next_ready_is_the_earliest_penalty) {
  ck_assert_uint_eq(mesh_balance_next_ready_ns(NULL), UINT64_MAX);
  mesh_balance *b = balancer(NULL);
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), UINT64_MAX); /* empty */
  mesh_endpoint *a = add(b, "a:1");
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), UINT64_MAX); /* closed */
  trip(b, 0, 1u << 31); /* zero jitter: a 1 s penalty */
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), 1 * SEC);
  mesh_endpoint *c = add(b, "c:1");
  trip(b, 100 * MS, 1u << 31); /* only c can be picked now */
  ck_assert_int_eq(mesh_endpoint_state(c), MESH_ENDPOINT_OPEN);
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), 1 * SEC);
  ck_assert_int_eq(mesh_balance_remove(b, a), 0);
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), 1 * SEC + 100 * MS);
  /* Due: the pick puts c on probation, and nothing is open any more. */
  mesh_endpoint *e = pick(b, 1 * SEC + 100 * MS, 0, 0);
  ck_assert_ptr_eq(e, c);
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), UINT64_MAX);
  /* The probe fails: open again, for the doubled penalty. */
  mesh_balance_done(e, 1 * SEC + 200 * MS, 1 * SEC + 100 * MS, 0, 1u << 31);
  ck_assert_uint_eq(mesh_balance_next_ready_ns(b), 3 * SEC + 200 * MS);
  mesh_balance_free(b);
}
END_TEST

/* ---- removal ---- */

START_TEST(removal_while_in_flight) {
  test_alloc al;
  mesh_ctx *c = test_ctx(&al);
  mesh_balance *b = NULL;
  ck_assert_int_eq(mesh_balance_new(c, NULL, &b), 0);
  mesh_endpoint *a = NULL, *other = NULL;
  ck_assert_int_eq(mesh_balance_add(b, "a:1", 1000, NULL, &a), 0);
  ck_assert_int_eq(mesh_balance_add(b, "b:1", 1000, NULL, &other), 0);
  long live = al.live;
  mesh_endpoint *e1 = pick(b, 0, 0, 0), *e2 = pick(b, 0, 0, 0);
  ck_assert_ptr_eq(e1, a);
  ck_assert_ptr_eq(e2, other);
  mesh_endpoint *e3 = pick(b, 0, 0, 0);
  ck_assert_ptr_eq(e3, a);
  ck_assert_int_eq(mesh_balance_remove(b, a), 0);
  ck_assert_int_eq(mesh_balance_remove(b, a), MESH_ERR_NOT_FOUND);
  ck_assert_uint_eq(mesh_balance_count(b), 1);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 1);
  /* Removed: never picked, still readable. */
  for (uint32_t i = 0; i < 50; i++) ck_assert_ptr_eq(pick(b, 0, i * 85899345u, ~i), other);
  ck_assert_int_eq(mesh_endpoint_active(a), 0);
  ck_assert_uint_eq(mesh_endpoint_pending(a), 2);
  ck_assert_str_eq(mesh_endpoint_addr(a), "a:1");
  /* Failures on a removed endpoint may open its breaker; nothing else moves. */
  mesh_balance_done(e1, 5 * MS, 0, 1, 0);
  ck_assert_uint_eq(al.live, live); /* one request still holds it */
  double w = exp(-0.0005); /* the default blended with 5 ms over 5 ms */
  assert_close(mesh_endpoint_rtt(a, 5 * MS), 30.0 * MS * w + 5.0 * MS * (1 - w), 1e-9);
  mesh_balance_done(e3, 6 * MS, 0, 1, 0); /* the last: freed here */
  ck_assert_uint_eq(al.live, live - 2);   /* the endpoint and its address */
  /* Its address may come back as a new endpoint. */
  mesh_endpoint *again = NULL;
  ck_assert_int_eq(mesh_balance_add(b, "a:1", 1000, NULL, &again), 0);
  ck_assert_uint_eq(mesh_balance_count(b), 2);
  /* An explicit reference also keeps a removed endpoint. */
  mesh_endpoint *kept = mesh_endpoint_ref(again);
  ck_assert_int_eq(mesh_balance_remove(b, again), 0);
  ck_assert_str_eq(mesh_endpoint_addr(kept), "a:1");
  mesh_endpoint_unref(kept);
  /* Another balancer's endpoint is not found. */
  mesh_balance *b2 = NULL;
  ck_assert_int_eq(mesh_balance_new(c, NULL, &b2), 0);
  ck_assert_int_eq(mesh_balance_remove(b2, other), MESH_ERR_NOT_FOUND);
  mesh_balance_free(b2);
  while (mesh_endpoint_pending(other) > 0) mesh_balance_done(other, MS, 0, 1, 0);
  mesh_balance_free(b);
  ck_assert_int_eq(al.live, 1);
  mesh_ctx_free(c);
}
END_TEST

/* A removed endpoint whose probe is in flight, and one whose breaker opens
 * after removal: neither comes back. */
START_TEST(removed_breakers_stay_out) {
  mesh_balance *b = balancer(NULL);
  mesh_endpoint *a = add(b, "a:1"), *other = add(b, "b:1");
  /* Fourteen picks alternate between the two (ties go to a, drawn first). */
  mesh_endpoint *e[14];
  for (int i = 0; i < 14; i++) {
    e[i] = pick(b, 0, 0, 0);
    ck_assert_ptr_eq(e[i], i % 2 == 0 ? a : other);
  }
  ck_assert_int_eq(mesh_balance_remove(b, a), 0);
  for (int i = 0; i < 14; i += 2) mesh_balance_done(e[i], MS, 0, 0, 1u << 31);
  for (int i = 1; i < 14; i += 2) mesh_balance_done(e[i], MS, 0, 1, 0);
  /* It was freed with its last request; the other is all that is left. */
  ck_assert_uint_eq(mesh_balance_count(b), 1);
  ck_assert_uint_eq(mesh_balance_ready_count(b), 1);
  for (int i = 0; i < 10; i++) {
    mesh_endpoint *x = pick(b, 5 * SEC, (uint32_t)i, 0);
    ck_assert_ptr_eq(x, other);
    mesh_balance_done(x, 5 * SEC, 5 * SEC, 1, 0);
  }
  mesh_balance_free(b);
}
END_TEST

/* ---- threads ---- */

typedef struct {
  mesh_balance *b;
  int id;
  atomic_int *stop;
  long picks, unavailable;
} picker;

static void *pick_loop(void *arg) {
  picker *p = arg;
  uint32_t s = 0x9e3779b9u * (uint32_t)(p->id + 1);
  uint64_t now = 0;
  mesh_endpoint *held[8];
  int nh = 0;
  while (!atomic_load(p->stop) || nh > 0) {
    now += 10000;
    if (!atomic_load(p->stop) && nh < 8) {
      mesh_endpoint *e;
      int rc = mesh_balance_pick(p->b, now, xorshift(&s), xorshift(&s), &e);
      if (rc == 0) {
        held[nh++] = e;
        p->picks++;
        (void)mesh_endpoint_addr(e);
        (void)mesh_endpoint_cost(e, now);
      } else {
        ck_assert_int_eq(rc, MESH_ERR_UNAVAILABLE);
        p->unavailable++;
      }
    }
    /* Finish a random one of the held requests, now and then failing. */
    if (nh > 0 && (xorshift(&s) & 1)) {
      int k = (int)(xorshift(&s) % (uint32_t)nh);
      uint32_t r = xorshift(&s);
      mesh_balance_done(held[k], now + (r & 0xffff), now - 5000, (r >> 20) % 4 != 0, r);
      held[k] = held[--nh];
    }
  }
  return NULL;
}

START_TEST(churn_with_four_pickers) {
  mesh_balance_opts *o;
  ck_assert_int_eq(mesh_balance_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_balance_opts_set_penalty(o, 50000, 400000), 0); /* short, to cycle */
  ck_assert_int_eq(mesh_balance_opts_set_failure_threshold(o, 3), 0);
  mesh_balance *b = balancer(o);
  mesh_balance_opts_free(o);
  atomic_int stop;
  atomic_init(&stop, 0);
  pthread_t t[4];
  picker p[4];
  for (int i = 0; i < 4; i++) {
    p[i] = (picker){.b = b, .id = i, .stop = &stop};
    ck_assert_int_eq(pthread_create(&t[i], NULL, pick_loop, &p[i]), 0);
  }
  /* Discovery updates: endpoints come and go under the pickers. */
  mesh_endpoint *eps[16] = {0};
  uint32_t s = 1234567;
  for (int round = 0; round < 20000; round++) {
    int k = (int)(xorshift(&s) % 16);
    if (eps[k]) {
      ck_assert_int_eq(mesh_balance_remove(b, eps[k]), 0);
      eps[k] = NULL;
    } else {
      char addr[32];
      snprintf(addr, sizeof addr, "10.0.0.%d:%d", k, round);
      ck_assert_int_eq(mesh_balance_add(b, addr, 1000 + (uint32_t)k, NULL, &eps[k]), 0);
    }
    if (round % 64 == 0) {
      mesh_endpoint *e = mesh_balance_endpoint(b, 0);
      if (e) {
        (void)mesh_endpoint_state(e);
        mesh_endpoint_unref(e);
      }
    }
  }
  atomic_store(&stop, 1);
  long picks = 0;
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    picks += p[i].picks;
  }
  ck_assert_int_gt(picks, 0);
  size_t n = 0;
  for (int k = 0; k < 16; k++)
    if (eps[k]) {
      n++;
      ck_assert_uint_eq(mesh_endpoint_pending(eps[k]), 0);
    }
  ck_assert_uint_eq(mesh_balance_count(b), n);
  mesh_balance_free(b);
}
END_TEST

/* ---- allocation ---- */

static int add_op(mesh_ctx *c, void *arg) {
  (void)arg;
  mesh_balance *b = NULL;
  int rc = mesh_balance_new(c, NULL, &b);
  if (rc < 0) {
    ck_assert_ptr_null(b);
    return rc;
  }
  /* Twenty endpoints: the lists grow twice (8, 16, 32). */
  for (int i = 0; i < 20; i++) {
    char addr[32];
    snprintf(addr, sizeof addr, "10.0.0.%d:80", i);
    mesh_endpoint *ep = NULL;
    rc = mesh_balance_add(b, addr, 1000, NULL, &ep);
    if (rc < 0) {
      ck_assert_ptr_null(ep);
      /* A failed add leaves the balancer as it was, and usable. */
      ck_assert_uint_eq(mesh_balance_count(b), (size_t)i);
      if (i > 0) {
        mesh_endpoint *e = NULL;
        ck_assert_int_eq(mesh_balance_pick(b, 0, 0, 0, &e), 0);
        mesh_balance_done(e, 1, 0, 1, 0);
      }
      mesh_balance_free(b);
      return rc;
    }
  }
  mesh_balance_free(b);
  return 0;
}

START_TEST(allocation_failure) {
  /* balancer 1, then per endpoint 2 (itself, its address), plus a new
   * index and 3 list reallocations at 0, 8 and 16 endpoints. */
  ck_assert_int_eq(test_alloc_failures(add_op, NULL), 1 + 20 * 2 + 3 * 4);

  mesh_balance_opts *o = NULL;
  test_alloc al;
  mesh_ctx *c = test_ctx(&al);
  al.fail_after = 0;
  ck_assert_int_eq(mesh_balance_opts_new(c, &o), MESH_ERR_NOMEM);
  ck_assert_ptr_null(o);
  mesh_ctx_free(c);
}
END_TEST

START_TEST(pick_and_done_do_not_allocate) {
  test_alloc al;
  mesh_ctx *c = test_ctx(&al);
  mesh_balance *b = NULL;
  ck_assert_int_eq(mesh_balance_new(c, NULL, &b), 0);
  for (int i = 0; i < 100; i++) {
    char addr[32];
    snprintf(addr, sizeof addr, "10.0.1.%d:80", i);
    ck_assert_int_eq(mesh_balance_add(b, addr, 1000, NULL, NULL), 0);
  }
  long calls = al.calls;
  uint32_t s = 42;
  mesh_endpoint *held[64];
  for (int round = 0; round < 1000; round++) {
    uint64_t t = (uint64_t)round * MS;
    for (int k = 0; k < 64; k++) held[k] = pick(b, t, xorshift(&s), xorshift(&s));
    /* Failing ones open breakers, which go to probation and back. */
    for (int k = 0; k < 64; k++)
      mesh_balance_done(held[k], t + MS / 2, t, (xorshift(&s) % 3) != 0, xorshift(&s));
  }
  ck_assert_int_eq(al.calls, calls);
  mesh_balance_free(b);
  ck_assert_int_eq(al.live, 1);
  mesh_ctx_free(c);
}
END_TEST

/* The full balancer, then the address index after half of it is removed:
 * every address still present is found (a duplicate), every removed one is not. */
START_TEST(endpoint_limit_and_index) {
  static mesh_endpoint *eps[MESH_BALANCE_MAX_ENDPOINTS];
  mesh_balance *b = balancer(NULL);
  char addr[32];
  for (unsigned i = 0; i < MESH_BALANCE_MAX_ENDPOINTS; i++) {
    snprintf(addr, sizeof addr, "10.%u.%u.%u:80", i >> 16, (i >> 8) & 255, i & 255);
    ck_assert_int_eq(mesh_balance_add(b, addr, 1000, NULL, &eps[i]), 0);
  }
  ck_assert_uint_eq(mesh_balance_count(b), MESH_BALANCE_MAX_ENDPOINTS);
  mesh_endpoint *e = (mesh_endpoint *)ctx;
  ck_assert_int_eq(mesh_balance_add(b, "one-more:80", 1000, NULL, &e), MESH_ERR_LIMIT);
  ck_assert_int_eq(mesh_balance_add(b, "10.0.0.7:80", 1000, NULL, &e), MESH_ERR_INVALID);
  ck_assert_ptr_eq(e, (mesh_endpoint *)ctx);
  /* Remove in a scattered order: every third, then every other of the rest. */
  for (unsigned i = 0; i < MESH_BALANCE_MAX_ENDPOINTS; i += 3) {
    ck_assert_int_eq(mesh_balance_remove(b, eps[i]), 0);
    eps[i] = NULL;
  }
  for (unsigned i = 1; i < MESH_BALANCE_MAX_ENDPOINTS; i += 2) {
    if (!eps[i]) continue;
    ck_assert_int_eq(mesh_balance_remove(b, eps[i]), 0);
    eps[i] = NULL;
  }
  size_t left = 0;
  for (unsigned i = 0; i < MESH_BALANCE_MAX_ENDPOINTS; i++) left += eps[i] != NULL;
  ck_assert_uint_eq(mesh_balance_count(b), left);
  /* Every address still present is found before any is added back (an
   * add could fill a hole a broken deletion left)... */
  for (unsigned i = 0; i < MESH_BALANCE_MAX_ENDPOINTS; i++) {
    if (!eps[i]) continue;
    snprintf(addr, sizeof addr, "10.%u.%u.%u:80", i >> 16, (i >> 8) & 255, i & 255);
    ck_assert_int_eq(mesh_balance_add(b, addr, 1000, NULL, NULL), MESH_ERR_INVALID);
  }
  /* ...and every removed one can come back. */
  for (unsigned i = 0; i < MESH_BALANCE_MAX_ENDPOINTS; i++) {
    if (eps[i]) continue;
    snprintf(addr, sizeof addr, "10.%u.%u.%u:80", i >> 16, (i >> 8) & 255, i & 255);
    ck_assert_int_eq(mesh_balance_add(b, addr, 1000, NULL, NULL), 0);
  }
  ck_assert_uint_eq(mesh_balance_count(b), MESH_BALANCE_MAX_ENDPOINTS);
  mesh_balance_free(b);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("balance");
  TCase *p = tcase_create("p2c");
  tcase_add_checked_fixture(p, setup, teardown);
  tcase_add_test(p, bad_arguments);
  tcase_add_test(p, endpoints_and_accessors);
  tcase_add_test(p, p2c_prefers_lower_cost);
  tcase_add_test(p, p2c_draws_two_distinct);
  tcase_add_test(p, one_ready_endpoint);
  tcase_add_test(p, pending_counts);
  tcase_add_test(p, peak_ewma_math);
  tcase_add_test(p, weights_scale_cost);
  tcase_add_test(p, slow_endpoint_gets_less_traffic);
  suite_add_tcase(s, p);
  TCase *f = tcase_create("failure_accrual");
  tcase_add_checked_fixture(f, setup, teardown);
  tcase_add_test(f, breaker_opens_after_exactly_seven);
  tcase_add_test(f, penalty_doubles_to_cap);
  tcase_add_test(f, penalty_jitter_bounds);
  tcase_add_test(f, probation_lets_one_through);
  tcase_add_test(f, old_outcomes_are_ignored);
  tcase_add_test(f, all_shut_is_unavailable);
  tcase_add_test(f, next_ready_is_the_earliest_penalty);
  suite_add_tcase(s, f);
  TCase *r = tcase_create("lifecycle");
  tcase_add_checked_fixture(r, setup, teardown);
  tcase_add_test(r, removal_while_in_flight);
  tcase_add_test(r, removed_breakers_stay_out);
  tcase_add_test(r, churn_with_four_pickers);
  tcase_add_test(r, allocation_failure);
  tcase_add_test(r, pick_and_done_do_not_allocate);
  tcase_add_test(r, endpoint_limit_and_index);
  suite_add_tcase(s, r);
  return s;
}

int main(void) { return test_main(make_suite()); }
