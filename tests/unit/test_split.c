/* Unit tests for split: building, normalising, picking and parsing TrafficSplits. */
#include <pthread.h>

#include "testutil.h"

/* A deterministic PRNG, so distribution tests give the same answer every run. */
static uint32_t xorshift32(uint32_t *state) {
  uint32_t x = *state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *state = x;
}

static uint64_t xorshift64(uint64_t *state) {
  uint64_t x = *state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *state = x;
}

__extension__ typedef unsigned __int128 u128;

/* Builds a sealed split of n weights (in thousandths) named b0, b1, ... */
static mesh_split *make_split(mesh_ctx *ctx, const uint64_t *w, size_t n) {
  mesh_split *s;
  ck_assert_int_eq(mesh_split_new(ctx, "svc", "ns", &s), 0);
  for (size_t i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "b%zu", i);
    ck_assert_int_eq(mesh_split_add(s, name, w[i]), 0);
  }
  ck_assert_int_eq(mesh_split_seal(s), 0);
  return s;
}

static uint32_t weight_sum(const mesh_split *s) {
  uint32_t t = 0;
  for (size_t i = 0; i < mesh_split_count(s); i++) t += mesh_split_weight(s, i);
  return t;
}

/* Parses y expecting rc; returns the split (or NULL) and leaves diagnostics in *d. */
static mesh_split *parse(mesh_ctx *ctx, const char *y, int want_rc, mesh_diags **d) {
  mesh_split *s = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, d), 0);
  int rc = mesh_split_parse(ctx, "split.yaml", y, strlen(y), *d, &s);
  if (rc != want_rc)
    for (size_t i = 0; i < mesh_diags_count(*d); i++)
      fprintf(stderr, "  %s\n", mesh_diags_text(*d, i));
  ck_assert_int_eq(rc, want_rc);
  return s;
}

/* True when some diagnostic of the severity contains text. */
static int has_diag(const mesh_diags *d, int severity, const char *text) {
  for (size_t i = 0; i < mesh_diags_count(d); i++)
    if (mesh_diags_severity(d, i) == severity && strstr(mesh_diags_message(d, i), text))
      return 1;
  return 0;
}

static size_t count_sev(const mesh_diags *d, int severity) {
  size_t n = 0;
  for (size_t i = 0; i < mesh_diags_count(d); i++) n += mesh_diags_severity(d, i) == severity;
  return n;
}

/* ---- building by hand ---- */

START_TEST(build_and_read_back) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_split *s;
  ck_assert_int_eq(mesh_split_new(ctx, "web", NULL, &s), 0);
  ck_assert_str_eq(mesh_split_service(s), "web");
  ck_assert_str_eq(mesh_split_namespace(s), "default");
  ck_assert_int_eq(mesh_split_add(s, "web-v1", 900), 0);
  ck_assert_int_eq(mesh_split_add(s, "web-v2", 100), 0);
  ck_assert_int_eq(mesh_split_add(s, "web-dark", 0), 0);
  ck_assert_uint_eq(mesh_split_count(s), 3);
  /* Unsealed: listed, but not normalised nor pickable yet. */
  ck_assert_uint_eq(mesh_split_weight(s, 0), 0);
  ck_assert_uint_eq(mesh_split_pick(s, 0), (size_t)-1);
  ck_assert_int_eq(mesh_split_seal(s), 0);
  ck_assert_int_eq(mesh_split_seal(s), 0); /* sealing twice is harmless */
  ck_assert_str_eq(mesh_split_backend(s, 0), "web-v1");
  ck_assert_str_eq(mesh_split_backend(s, 2), "web-dark");
  ck_assert_ptr_null(mesh_split_backend(s, 3));
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 900);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 2), 0);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 3), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 0), 9000);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 1000);
  ck_assert_uint_eq(mesh_split_weight(s, 2), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 3), 0);
  ck_assert_int_eq(mesh_split_add(s, "late", 1000), MESH_ERR_INVALID);
  ck_assert_uint_eq(mesh_split_count(s), 3);
  mesh_split_unref(s);
  ck_assert_int_eq(a.live, 1);

  ck_assert_int_eq(mesh_split_new(ctx, "web", "prod", &s), 0);
  ck_assert_str_eq(mesh_split_namespace(s), "prod");
  mesh_split_unref(s);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(bad_arguments) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_split *s = (mesh_split *)ctx; /* must stay untouched on failure */
  ck_assert_int_eq(mesh_split_new(NULL, "a", NULL, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_new(ctx, NULL, NULL, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_new(ctx, "", NULL, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_new(ctx, "a", "", &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_new(ctx, "a", NULL, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(s, (mesh_split *)ctx);
  ck_assert_int_eq(mesh_split_add(NULL, "a", 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_seal(NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_parse(NULL, NULL, "", 0, NULL, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_parse(ctx, NULL, NULL, 3, NULL, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_parse(ctx, NULL, "", 0, NULL, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(s, (mesh_split *)ctx);

  ck_assert_int_eq(mesh_split_new(ctx, "a", NULL, &s), 0);
  ck_assert_int_eq(mesh_split_add(s, NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_add(s, "", 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_split_seal(s), MESH_ERR_INVALID); /* no backends */
  ck_assert_int_eq(mesh_split_add(s, "x", 0), 0);
  ck_assert_int_eq(mesh_split_add(s, "y", 0), 0);
  ck_assert_int_eq(mesh_split_seal(s), MESH_ERR_INVALID); /* nothing could be picked */
  ck_assert_uint_eq(mesh_split_pick(s, 123), (size_t)-1);
  ck_assert_int_eq(mesh_split_add(s, "z", 1), 0); /* still open: a failed seal seals nothing */
  ck_assert_int_eq(mesh_split_seal(s), 0);
  ck_assert_uint_eq(mesh_split_pick(s, 123), 2);
  mesh_split_unref(s);

  /* NULL handles read as empty. */
  mesh_split_unref(NULL);
  ck_assert_ptr_null(mesh_split_ref(NULL));
  ck_assert_ptr_null(mesh_split_service(NULL));
  ck_assert_ptr_null(mesh_split_namespace(NULL));
  ck_assert_uint_eq(mesh_split_count(NULL), 0);
  ck_assert_ptr_null(mesh_split_backend(NULL, 0));
  ck_assert_uint_eq(mesh_split_weight(NULL, 0), 0);
  ck_assert_uint_eq(mesh_split_weight_milli(NULL, 0), 0);
  ck_assert_uint_eq(mesh_split_pick(NULL, 0), (size_t)-1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(limits_and_overflow) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_split *s;
  ck_assert_int_eq(mesh_split_new(ctx, "a", NULL, &s), 0);
  for (int i = 0; i < 256; i++) {
    char name[32];
    snprintf(name, sizeof name, "b%d", i);
    ck_assert_int_eq(mesh_split_add(s, name, 1000), 0);
  }
  ck_assert_int_eq(mesh_split_add(s, "one-too-many", 1000), MESH_ERR_LIMIT);
  ck_assert_uint_eq(mesh_split_count(s), 256);
  ck_assert_int_eq(mesh_split_seal(s), 0);
  ck_assert_uint_eq(weight_sum(s), MESH_WEIGHT_TOTAL);
  /* 10000 / 256 = 39.0625: 16 backends get 40, the first ones on ties. */
  ck_assert_uint_eq(mesh_split_weight(s, 0), 40);
  ck_assert_uint_eq(mesh_split_weight(s, 15), 40);
  ck_assert_uint_eq(mesh_split_weight(s, 16), 39);
  ck_assert_uint_eq(mesh_split_weight(s, 255), 39);
  mesh_split_unref(s);

  ck_assert_int_eq(mesh_split_new(ctx, "a", NULL, &s), 0);
  ck_assert_int_eq(mesh_split_add(s, "big", UINT64_MAX - 5), 0);
  ck_assert_int_eq(mesh_split_add(s, "small", 5), 0);
  ck_assert_int_eq(mesh_split_add(s, "over", 1), MESH_ERR_RANGE);
  ck_assert_uint_eq(mesh_split_count(s), 2);
  ck_assert_int_eq(mesh_split_seal(s), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 0), 10000);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 0);
  ck_assert_uint_eq(mesh_split_pick(s, 0), 0);
  ck_assert_uint_eq(mesh_split_pick(s, UINT32_MAX), 0);
  mesh_split_unref(s);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(refcount) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  const uint64_t w[] = {1, 1};
  mesh_split *s = make_split(ctx, w, 2);
  const mesh_split *c = s;
  mesh_split *r = mesh_split_ref(c);
  ck_assert_ptr_eq(r, s);
  mesh_split_unref(s);
  ck_assert_str_eq(mesh_split_backend(r, 1), "b1"); /* still alive through r */
  ck_assert_int_gt(a.live, 1);
  mesh_split_unref(r);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- normalisation ---- */

START_TEST(largest_remainder) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  {
    const uint64_t w[] = {1, 1, 1};
    mesh_split *s = make_split(ctx, w, 3);
    ck_assert_uint_eq(mesh_split_weight(s, 0), 3334); /* ties go to the first listed */
    ck_assert_uint_eq(mesh_split_weight(s, 1), 3333);
    ck_assert_uint_eq(mesh_split_weight(s, 2), 3333);
    mesh_split_unref(s);
  }
  {
    /* 1/3 and 2/3: floors 3333 + 6666, the missing unit goes to .67 over .33. */
    const uint64_t w[] = {0, 1, 0, 2};
    mesh_split *s = make_split(ctx, w, 4);
    ck_assert_uint_eq(mesh_split_weight(s, 0), 0);
    ck_assert_uint_eq(mesh_split_weight(s, 1), 3333);
    ck_assert_uint_eq(mesh_split_weight(s, 2), 0);
    ck_assert_uint_eq(mesh_split_weight(s, 3), 6667);
    mesh_split_unref(s);
  }
  {
    const uint64_t w[] = {1, 1, 1, 1, 1, 1, 1}; /* 1428.57 each: four get 1429 */
    mesh_split *s = make_split(ctx, w, 7);
    for (size_t i = 0; i < 7; i++) ck_assert_uint_eq(mesh_split_weight(s, i), i < 4 ? 1429 : 1428);
    mesh_split_unref(s);
  }
  {
    /* One part in a million still sums exactly; it rounds down to nothing. */
    const uint64_t w[] = {999999, 1};
    mesh_split *s = make_split(ctx, w, 2);
    ck_assert_uint_eq(mesh_split_weight(s, 0), 10000);
    ck_assert_uint_eq(mesh_split_weight(s, 1), 0);
    mesh_split_unref(s);
  }
  mesh_ctx_free(ctx);
}
END_TEST

/* Random weights of every magnitude, checked against exact 128-bit arithmetic:
 * the sum is exact and every weight is its quota rounded down or up. */
START_TEST(normalisation_property) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  uint64_t st = 0x9e3779b97f4a7c15u;
  for (int round = 0; round < 500; round++) {
    size_t n = 1 + xorshift64(&st) % 40;
    uint64_t w[40];
    int bits = (int)(xorshift64(&st) % 57); /* up to 2^56 each, 40 of them still fit */
    for (size_t i = 0; i < n; i++) {
      w[i] = xorshift64(&st) >> (63 - bits);
      if (xorshift64(&st) % 5 == 0) w[i] = 0;
    }
    w[0] |= 1; /* never all zero */
    mesh_split *s = make_split(ctx, w, n);
    u128 total = 0;
    for (size_t i = 0; i < n; i++) total += w[i];
    ck_assert_uint_eq(weight_sum(s), MESH_WEIGHT_TOTAL);
    for (size_t i = 0; i < n; i++) {
      u128 scaled = (u128)w[i] * MESH_WEIGHT_TOTAL;
      uint32_t fl = (uint32_t)(scaled / total);
      uint32_t got = mesh_split_weight(s, i);
      ck_assert_msg(got == fl || (got == fl + 1 && scaled % total != 0),
                    "round %d backend %zu: %u, quota floor %u", round, i, got, fl);
      if (w[i] == 0) ck_assert_uint_eq(got, 0);
    }
    mesh_split_unref(s);
  }
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- picking ---- */

START_TEST(pick_boundaries) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  {
    const uint64_t w[] = {1, 1};
    mesh_split *s = make_split(ctx, w, 2);
    ck_assert_uint_eq(mesh_split_pick(s, 0), 0);
    ck_assert_uint_eq(mesh_split_pick(s, 0x7fffffffu), 0);
    ck_assert_uint_eq(mesh_split_pick(s, 0x80000000u), 1);
    ck_assert_uint_eq(mesh_split_pick(s, UINT32_MAX), 1);
    mesh_split_unref(s);
  }
  {
    /* Zero weights anywhere, first and last included, are never picked. */
    const uint64_t w[] = {0, 0, 3000, 0, 1000, 0};
    mesh_split *s = make_split(ctx, w, 6);
    ck_assert_uint_eq(mesh_split_pick(s, 0), 2);
    ck_assert_uint_eq(mesh_split_pick(s, UINT32_MAX), 4);
    ck_assert_uint_eq(mesh_split_pick(s, 3u << 30), 4);
    ck_assert_uint_eq(mesh_split_pick(s, (3u << 30) - 1), 2);
    uint32_t st = 12345;
    for (int i = 0; i < 100000; i++) {
      size_t k = mesh_split_pick(s, xorshift32(&st));
      ck_assert(k == 2 || k == 4);
    }
    mesh_split_unref(s);
  }
  {
    const uint64_t w[] = {7};
    mesh_split *s = make_split(ctx, w, 1);
    ck_assert_uint_eq(mesh_split_pick(s, 0), 0);
    ck_assert_uint_eq(mesh_split_pick(s, UINT32_MAX), 0);
    mesh_split_unref(s);
  }
  {
    /* A total past 2^32: 3 * 2^32 : 2^32 splits the random range at 3 * 2^30 exactly. */
    const uint64_t w[] = {3ull << 32, 1ull << 32};
    mesh_split *s = make_split(ctx, w, 2);
    ck_assert_uint_eq(mesh_split_pick(s, (3u << 30) - 1), 0);
    ck_assert_uint_eq(mesh_split_pick(s, 3u << 30), 1);
    ck_assert_uint_eq(mesh_split_weight(s, 0), 7500);
    mesh_split_unref(s);
  }
  {
    /* The largest possible total. */
    const uint64_t w[] = {UINT64_MAX / 2, UINT64_MAX / 2 + 1};
    mesh_split *s = make_split(ctx, w, 2);
    ck_assert_uint_eq(mesh_split_pick(s, 0x7fffffffu), 0);
    ck_assert_uint_eq(mesh_split_pick(s, 0x80000000u), 1);
    ck_assert_uint_eq(mesh_split_pick(s, UINT32_MAX), 1);
    mesh_split_unref(s);
  }
  mesh_ctx_free(ctx);
}
END_TEST

/* pick against floor(total * rnd / 2^32) computed in 128 bits, over totals
 * below and far above 32 bits. */
START_TEST(pick_matches_exact_arithmetic) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  uint64_t st = 0x2545f4914f6cdd1du;
  for (int round = 0; round < 200; round++) {
    size_t n = 1 + xorshift64(&st) % 20;
    uint64_t w[20];
    int bits = (int)(xorshift64(&st) % 59);
    for (size_t i = 0; i < n; i++) w[i] = xorshift64(&st) >> (63 - bits);
    w[n - 1] |= 1;
    mesh_split *s = make_split(ctx, w, n);
    u128 total = 0;
    for (size_t i = 0; i < n; i++) total += w[i];
    for (int k = 0; k < 200; k++) {
      uint32_t rnd = (uint32_t)xorshift64(&st);
      if (k == 0) rnd = 0;
      if (k == 1) rnd = UINT32_MAX;
      uint64_t x = (uint64_t)((total * rnd) >> 32);
      size_t want = 0;
      u128 cum = w[0];
      while (cum <= x) cum += w[++want];
      ck_assert_uint_eq(mesh_split_pick(s, rnd), want);
    }
    mesh_split_unref(s);
  }
  mesh_ctx_free(ctx);
}
END_TEST

static void check_distribution(mesh_ctx *ctx, uint64_t w0, uint64_t w1, uint32_t seed) {
  const uint64_t w[] = {w0 * 1000, w1 * 1000};
  mesh_split *s = make_split(ctx, w, 2);
  long counts[2] = {0, 0};
  const long picks = 100000;
  uint32_t st = seed;
  for (long i = 0; i < picks; i++) {
    size_t k = mesh_split_pick(s, xorshift32(&st));
    ck_assert_uint_lt(k, 2);
    counts[k]++;
  }
  double share = (double)counts[0] / (double)picks * 100.0;
  double want = (double)w0 / (double)(w0 + w1) * 100.0;
  ck_assert_msg(share > want - 1.0 && share < want + 1.0, "%g/%g: first got %.2f%%",
                (double)w0, (double)w1, share);
  mesh_split_unref(s);
}

START_TEST(pick_distribution) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  check_distribution(ctx, 90, 10, 2463534242u);
  check_distribution(ctx, 70, 30, 88172645u);
  check_distribution(ctx, 1, 1, 1u);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  const mesh_split *s;
  uint32_t seed;
  long first;
} pick_job;

static void *pick_thread(void *arg) {
  pick_job *j = arg;
  mesh_split *mine = mesh_split_ref(j->s);
  uint32_t st = j->seed;
  for (int i = 0; i < 100000; i++)
    if (mesh_split_pick(mine, xorshift32(&st)) == 0) j->first++;
  mesh_split_unref(mine);
  return NULL;
}

/* Many threads pick from one sealed split and take and drop references. */
START_TEST(pick_from_threads) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  const uint64_t w[] = {90000, 10000};
  mesh_split *s = make_split(ctx, w, 2);
  pthread_t t[4];
  pick_job jobs[4];
  for (int i = 0; i < 4; i++) {
    jobs[i] = (pick_job){.s = s, .seed = 1000u + (uint32_t)i * 7919u};
    ck_assert_int_eq(pthread_create(&t[i], NULL, pick_thread, &jobs[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    ck_assert_int_gt(jobs[i].first, 89000);
    ck_assert_int_lt(jobs[i].first, 91000);
  }
  mesh_split_unref(s);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- parsing ---- */

START_TEST(seed_manifest) {
  mesh_ctx *ctx;
  mesh_diags *d;
  mesh_manifest *m;
  size_t len;
  char *buf = test_read_data("seed/traffic-splits.yaml", &len);
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "traffic-splits.yaml", buf, len, d, &m), 0);
  ck_assert_uint_eq(mesh_diags_count(d), 0);
  ck_assert_uint_eq(mesh_manifest_count(m), 2);
  const mesh_split *s = mesh_manifest_split(m, 0);
  ck_assert_ptr_nonnull(s);
  ck_assert_str_eq(mesh_split_service(s), "exam-service");
  ck_assert_str_eq(mesh_split_namespace(s), "production");
  ck_assert_uint_eq(mesh_split_count(s), 2);
  ck_assert_str_eq(mesh_split_backend(s, 0), "exam-service-stable");
  ck_assert_str_eq(mesh_split_backend(s, 1), "exam-service-canary");
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 90000);
  ck_assert_uint_eq(mesh_split_weight(s, 0), 9000);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 1000);
  s = mesh_manifest_split(m, 1);
  ck_assert_ptr_nonnull(s);
  ck_assert_str_eq(mesh_split_service(s), "learning-module");
  ck_assert_str_eq(mesh_split_namespace(s), "default");
  ck_assert_uint_eq(mesh_split_weight(s, 0), 7000);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 3000);
  /* A split outlives its manifest once referenced. */
  mesh_split *kept = mesh_split_ref(s);
  mesh_manifest_free(m);
  ck_assert_str_eq(mesh_split_backend(kept, 1), "learning-module-v2");
  mesh_split_unref(kept);

  /* Two documents are not "a" TrafficSplit: the second one is pointed at. */
  mesh_split *one = NULL;
  mesh_diags_clear(d);
  ck_assert_int_eq(mesh_split_parse(ctx, "traffic-splits.yaml", buf, len, d, &one),
                   MESH_ERR_PARSE);
  ck_assert_ptr_null(one);
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "exactly one document"));
  ck_assert_uint_eq(mesh_diags_line(d, 0), 17);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
  free(buf);
}
END_TEST

START_TEST(v1alpha1_quantities) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  const char *y = "apiVersion: split.smi-spec.io/v1alpha1\n"
                  "kind: TrafficSplit\n"
                  "metadata: {name: web, namespace: shop}\n"
                  "spec:\n"
                  "  service: web\n"
                  "  backends:\n"
                  "  - {service: web-a, weight: 900m}\n"
                  "  - {service: web-b, weight: \"0.5\"}\n"
                  "  - {service: web-c, weight: 1}\n"
                  "  - {service: web-d, weight: 0}\n"
                  "  - {service: web-e, weight: 1.6}\n";
  mesh_split *s = parse(ctx, y, 0, &d);
  ck_assert_uint_eq(mesh_diags_count(d), 0);
  ck_assert_str_eq(mesh_split_namespace(s), "shop");
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 900);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 1), 500);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 2), 1000);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 3), 0);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 4), 1600);
  /* 900 + 500 + 1000 + 1600 = 4000 */
  ck_assert_uint_eq(mesh_split_weight(s, 0), 2250);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 1250);
  ck_assert_uint_eq(mesh_split_weight(s, 2), 2500);
  ck_assert_uint_eq(mesh_split_weight(s, 3), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 4), 4000);
  mesh_split_unref(s);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(v1alpha2_integers) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  const char *y = "{\"apiVersion\": \"split.smi-spec.io/v1alpha2\", \"kind\": \"TrafficSplit\",\n"
                  " \"metadata\": {\"name\": \"web\"},\n"
                  " \"spec\": {\"service\": \"web\", \"backends\": [\n"
                  "   {\"service\": \"web-a\", \"weight\": 75},\n"
                  "   {\"service\": \"web-b\", \"weight\": 25}]}}\n";
  mesh_split *s = parse(ctx, y, 0, &d);
  ck_assert_uint_eq(mesh_diags_count(d), 0);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 75000);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 2500);
  mesh_split_unref(s);
  mesh_diags_free(d);

  /* The quantity form has one meaning, so it is read, with a warning. */
  y = "apiVersion: split.smi-spec.io/v1alpha2\n"
      "kind: TrafficSplit\n"
      "metadata: {name: web}\n"
      "spec:\n"
      "  service: web\n"
      "  backends:\n"
      "  - {service: web-a, weight: 500m}\n"
      "  - {service: web-b, weight: \"1\"}\n"
      "  - {service: web-c, weight: 2}\n";
  s = parse(ctx, y, 0, &d);
  ck_assert_uint_eq(count_sev(d, MESH_DIAG_WARNING), 2);
  ck_assert(has_diag(d, MESH_DIAG_WARNING, "v1alpha2 wants an integer weight; '500m'"));
  ck_assert_uint_eq(mesh_diags_line(d, 0), 7);
  ck_assert(strstr(mesh_diags_message(d, 0), "spec.backends[0].weight") != NULL);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 500);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 1), 1000);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 2), 2000);
  mesh_split_unref(s);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(matches_are_reported) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  for (int v = 3; v <= 4; v++) {
    char y[512];
    snprintf(y, sizeof y,
             "apiVersion: split.smi-spec.io/v1alpha%d\n"
             "kind: TrafficSplit\n"
             "metadata: {name: web}\n"
             "spec:\n"
             "  service: web\n"
             "  matches:\n"
             "  - {kind: HTTPRouteGroup, name: ab-test}\n"
             "  backends:\n"
             "  - {service: web-a, weight: 50}\n"
             "  - {service: web-b, weight: 50}\n",
             v);
    mesh_split *s = parse(ctx, y, 0, &d);
    ck_assert_uint_eq(mesh_diags_count(d), 1);
    ck_assert(has_diag(d, MESH_DIAG_WARNING, "matches are not applied"));
    ck_assert_uint_eq(mesh_diags_line(d, 0), 7);
    ck_assert_uint_eq(mesh_split_weight(s, 0), 5000);
    mesh_split_unref(s);
    mesh_diags_free(d);
  }
  /* Before v1alpha3 there were no matches: an unknown field, ignored. */
  const char *y = "apiVersion: split.smi-spec.io/v1alpha2\n"
                  "kind: TrafficSplit\n"
                  "metadata: {name: web}\n"
                  "spec:\n"
                  "  service: web\n"
                  "  matches: [{kind: HTTPRouteGroup, name: ab-test}]\n"
                  "  backends: [{service: web-a, weight: 1, weigth: 2}]\n";
  mesh_split *s = parse(ctx, y, 0, &d);
  ck_assert_uint_eq(mesh_diags_count(d), 2);
  ck_assert(has_diag(d, MESH_DIAG_WARNING, "unknown field 'matches'"));
  ck_assert(has_diag(d, MESH_DIAG_WARNING, "unknown field 'weigth' is ignored (did you mean 'weight'?)"));
  mesh_split_unref(s);
  mesh_diags_free(d);

  /* A matches entry without a name is malformed even though it is not applied. */
  y = "apiVersion: split.smi-spec.io/v1alpha4\n"
      "kind: TrafficSplit\n"
      "metadata: {name: web}\n"
      "spec:\n"
      "  service: web\n"
      "  matches: [{kind: HTTPRouteGroup}]\n"
      "  backends: [{service: web-a, weight: 1}]\n";
  parse(ctx, y, MESH_ERR_PARSE, &d);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "missing required field 'name'"));
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

/* One run reports every problem, each at its place. */
START_TEST(errors_are_all_reported) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_diags *d;
  const char *y = "apiVersion: split.smi-spec.io/v1alpha2\n" /* 1 */
                  "kind: TrafficSplit\n"                      /* 2 */
                  "metadata: {name: web}\n"                   /* 3 */
                  "spec:\n"                                   /* 4 */
                  "  service: web\n"                          /* 5 */
                  "  backends:\n"                             /* 6 */
                  "  - service: web-a\n"                      /* 7: no weight */
                  "  - service: web-b\n"                      /* 8 */
                  "    weight: -5\n"                          /* 9: negative */
                  "  - service: web-c\n"                      /* 10 */
                  "    weight: 10\n"                          /* 11 */
                  "  - service: web-c\n"                      /* 12: twice */
                  "    weight: 10\n"                          /* 13 */
                  "  - weight: 10\n"                          /* 14: no service */
                  "  - service: Web_D\n"                      /* 15: not a name */
                  "    weight: 10\n"                          /* 16 */
                  "  - service: web-e\n"                      /* 17 */
                  "    weight: lots\n"                        /* 18: not a number */
                  "  - just text\n";                          /* 19: not a map */
  mesh_split *s = parse(ctx, y, MESH_ERR_PARSE, &d);
  ck_assert_ptr_null(s);
  ck_assert_uint_eq(mesh_diags_errors(d), 7);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "spec.backends[0]: missing required field 'weight'"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "spec.backends[1].weight: weight must not be negative"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "backend 'web-c' is listed twice (first at line 10)"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "spec.backends[4]: missing required field 'service'"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "'Web_D' is not a valid service name"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "invalid quantity 'lots'"));
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "spec.backends[7]: expected a map"));
  /* file:line:col, in order. */
  const uint32_t lines[] = {7, 9, 12, 14, 15, 18, 19};
  for (size_t i = 0; i < 7; i++) {
    ck_assert_int_eq(mesh_diags_severity(d, i), MESH_DIAG_ERROR);
    ck_assert_str_eq(mesh_diags_file(d, i), "split.yaml");
    ck_assert_uint_eq(mesh_diags_line(d, i), lines[i]);
    ck_assert_uint_gt(mesh_diags_column(d, i), 0);
  }
  ck_assert_str_eq(mesh_diags_text(d, 1),
                   "split.yaml:9:13: error: spec.backends[1].weight: weight must not be "
                   "negative, found -5");
  mesh_diags_free(d);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  const char *yaml;
  const char *message; /* expected in some error */
  uint32_t line;       /* of that error */
} bad_case;

START_TEST(bad_documents) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
#define HEAD "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: web}\n"
  static const bad_case cases[] = {
      {HEAD "spec:\n  service: web\n  backends:\n  - {service: a, weight: 0}\n"
            "  - {service: b, weight: 0m}\n",
       "spec.backends: every backend has weight 0: nothing could receive traffic", 7},
      {HEAD "spec:\n  service: web\n  backends: []\n", "at least one backend is required", 6},
      {HEAD "spec:\n  service: web\n  backends: {service: a, weight: 1}\n",
       "spec.backends: expected a list, found a map", 6},
      {HEAD "spec:\n  service: web\n", "spec: missing required field 'backends'", 5},
      {HEAD "spec:\n  backends: [{service: a, weight: 1}]\n",
       "spec: missing required field 'service'", 5},
      {HEAD "spec:\n  service: ''\n  backends: [{service: a, weight: 1}]\n",
       "'service' must not be empty", 5},
      {HEAD "spec: [1]\n", "spec: expected a map, found a list", 4},
      {HEAD "other: 1\n", "missing required field 'spec'", 1},
      {HEAD "spec:\n  service: web\n  backends: [{service: a, weight: {x: 1}}]\n",
       "expected a quantity such as 1, 900m or 0.5, found a map", 6},
      {HEAD "spec:\n  service: web\n  backends: [{service: a, weight: 99999999999999999999}]\n",
       "quantity is too large", 6},
      {HEAD "spec:\n  service: web\n  backends:\n  - {service: a, weight: 9000000000000000}\n"
            "  - {service: b, weight: 9000000000000000}\n"
            "  - {service: c, weight: 9000000000000000}\n",
       "the weights add up to more than", 9},
      {"apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: web}\n"
       "spec:\n  service: web\n  backends: [{service: a, weight: -1m}]\n",
       "weight must not be negative", 6},
  };
#undef HEAD
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mesh_diags *d;
    ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
    mesh_split *s = NULL;
    int rc = mesh_split_parse(ctx, "bad.yaml", cases[i].yaml, strlen(cases[i].yaml), d, &s);
    ck_assert_msg(rc == MESH_ERR_PARSE, "case %zu: rc %d", i, rc);
    ck_assert_ptr_null(s);
    int found = 0;
    for (size_t k = 0; k < mesh_diags_count(d); k++)
      if (mesh_diags_severity(d, k) == MESH_DIAG_ERROR &&
          strstr(mesh_diags_message(d, k), cases[i].message) &&
          mesh_diags_line(d, k) == cases[i].line)
        found = 1;
    if (!found)
      for (size_t k = 0; k < mesh_diags_count(d); k++)
        fprintf(stderr, "case %zu: %s\n", i, mesh_diags_text(d, k));
    ck_assert_msg(found, "case %zu: no error '%s' at line %u", i, cases[i].message, cases[i].line);
    mesh_diags_free(d);
  }
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(too_many_backends) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  size_t cap = 300 * 48 + 256;
  char *y = malloc(cap);
  ck_assert_ptr_nonnull(y);
  size_t off = (size_t)snprintf(y, cap,
                                "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\n"
                                "metadata: {name: web}\nspec:\n  service: web\n  backends:\n");
  for (int i = 0; i < 257; i++)
    off += (size_t)snprintf(y + off, cap - off, "  - {service: b%d, weight: 1}\n", i);
  mesh_diags *d;
  parse(ctx, y, MESH_ERR_PARSE, &d);
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "at most 256 backends are allowed, found 257"));
  mesh_diags_free(d);

  /* 256 is fine. */
  char *last = strstr(y, "  - {service: b256,");
  ck_assert_ptr_nonnull(last);
  *last = '\0';
  mesh_split *s = parse(ctx, y, 0, &d);
  ck_assert_uint_eq(mesh_split_count(s), 256);
  ck_assert_uint_eq(weight_sum(s), MESH_WEIGHT_TOTAL);
  mesh_split_unref(s);
  mesh_diags_free(d);
  free(y);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(not_a_single_traffic_split) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  parse(ctx, "", MESH_ERR_PARSE, &d);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "exactly one document, a TrafficSplit; found 0"));
  mesh_diags_free(d);

  parse(ctx, "# nothing here\n", MESH_ERR_PARSE, &d);
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  mesh_diags_free(d);

  parse(ctx, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n", MESH_ERR_PARSE,
        &d);
  ck_assert(has_diag(d, MESH_DIAG_ERROR,
                     "expected a TrafficSplit (split.smi-spec.io), found apps/v1 Deployment"));
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  mesh_diags_free(d);

  /* A version SMI never had is the manifest loader's error, passed on. */
  parse(ctx,
        "apiVersion: split.smi-spec.io/v2\nkind: TrafficSplit\nmetadata: {name: web}\n"
        "spec: {service: web, backends: [{service: a, weight: 1}]}\n",
        MESH_ERR_PARSE, &d);
  ck_assert(has_diag(d, MESH_DIAG_ERROR, "TrafficSplit does not exist in version 'v2'"));
  mesh_diags_free(d);

  /* Diagnostics are optional, and file defaults to "<input>". */
  mesh_split *s = NULL;
  const char *y = "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\n"
                  "metadata: {name: web}\nspec: {service: web, backends: [{service: a, weight: 1}]}\n";
  ck_assert_int_eq(mesh_split_parse(ctx, NULL, y, strlen(y), NULL, &s), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 0), MESH_WEIGHT_TOTAL);
  mesh_split_unref(s);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  s = NULL;
  ck_assert_int_eq(mesh_split_parse(ctx, NULL, "", 0, d, &s), MESH_ERR_PARSE);
  ck_assert_ptr_null(s);
  ck_assert_str_eq(mesh_diags_file(d, 0), "<input>");
  ck_assert_int_eq(mesh_split_parse(ctx, NULL, "", 0, NULL, &s), MESH_ERR_PARSE);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- allocation failures ---- */

static int parse_op(mesh_ctx *ctx, void *arg) {
  mesh_diags *d;
  int rc = mesh_diags_new(ctx, &d);
  if (rc < 0) return rc;
  mesh_split *s = NULL;
  rc = mesh_split_parse(ctx, "f.yaml", arg, strlen(arg), d, &s);
  if (rc == 0) {
    ck_assert_uint_eq(mesh_split_count(s), 3);
    ck_assert_uint_eq(weight_sum(s), MESH_WEIGHT_TOTAL);
    mesh_split_unref(s);
  } else {
    ck_assert_ptr_null(s);
  }
  mesh_diags_free(d);
  return rc;
}

static int bad_parse_op(mesh_ctx *ctx, void *arg) {
  mesh_diags *d;
  int rc = mesh_diags_new(ctx, &d);
  if (rc < 0) return rc;
  mesh_split *s = NULL;
  rc = mesh_split_parse(ctx, "f.yaml", arg, strlen(arg), d, &s);
  ck_assert_ptr_null(s);
  mesh_diags_free(d);
  /* The expected failure, once memory is there to report it, counts as done. */
  return rc == MESH_ERR_PARSE ? 0 : rc;
}

static int build_op(mesh_ctx *ctx, void *arg) {
  (void)arg;
  mesh_split *s;
  int rc = mesh_split_new(ctx, "web", NULL, &s);
  if (rc < 0) return rc;
  for (int i = 0; i < 9 && rc == 0; i++) {
    char name[32];
    snprintf(name, sizeof name, "web-%d", i);
    rc = mesh_split_add(s, name, (uint64_t)i * 100);
  }
  if (rc == 0) {
    ck_assert_uint_eq(mesh_split_count(s), 9);
    ck_assert_int_eq(mesh_split_seal(s), 0);
  } else {
    /* A failed add leaves the split as it was: still usable. */
    ck_assert_uint_lt(mesh_split_count(s), 9);
  }
  mesh_split_unref(s);
  return rc;
}

START_TEST(allocation_failures) {
  const char *good = "apiVersion: split.smi-spec.io/v1alpha3\n"
                     "kind: TrafficSplit\n"
                     "metadata: {name: web, namespace: shop}\n"
                     "spec:\n"
                     "  service: web\n"
                     "  matches: [{kind: HTTPRouteGroup, name: x}]\n"
                     "  backends:\n"
                     "  - {service: web-a, weight: 500m, colour: blue}\n"
                     "  - {service: web-b, weight: 2}\n"
                     "  - {service: web-c, weight: 0}\n";
  ck_assert_int_gt(test_alloc_failures(parse_op, (void *)good), 5);
  const char *bad = "apiVersion: split.smi-spec.io/v1alpha1\n"
                    "kind: TrafficSplit\n"
                    "metadata: {name: web}\n"
                    "spec:\n"
                    "  service: web\n"
                    "  backends:\n"
                    "  - {service: web-a, weight: -1}\n"
                    "  - {service: web-a}\n";
  ck_assert_int_gt(test_alloc_failures(bad_parse_op, (void *)bad), 3);
  ck_assert_int_gt(test_alloc_failures(build_op, NULL), 5);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("split");
  TCase *build = tcase_create("build");
  tcase_add_test(build, build_and_read_back);
  tcase_add_test(build, bad_arguments);
  tcase_add_test(build, limits_and_overflow);
  tcase_add_test(build, refcount);
  tcase_add_test(build, largest_remainder);
  tcase_add_test(build, normalisation_property);
  suite_add_tcase(s, build);
  TCase *pick = tcase_create("pick");
  tcase_add_test(pick, pick_boundaries);
  tcase_add_test(pick, pick_matches_exact_arithmetic);
  tcase_add_test(pick, pick_distribution);
  tcase_add_test(pick, pick_from_threads);
  suite_add_tcase(s, pick);
  TCase *p = tcase_create("parse");
  tcase_add_test(p, seed_manifest);
  tcase_add_test(p, v1alpha1_quantities);
  tcase_add_test(p, v1alpha2_integers);
  tcase_add_test(p, matches_are_reported);
  tcase_add_test(p, errors_are_all_reported);
  tcase_add_test(p, bad_documents);
  tcase_add_test(p, too_many_backends);
  tcase_add_test(p, not_a_single_traffic_split);
  tcase_add_test(p, allocation_failures);
  suite_add_tcase(s, p);
  return s;
}

int main(void) { return test_main(make_suite()); }
