/* Unit tests for annotations: Linkerd's retry.linkerd.io / timeout.linkerd.io values, their errors, and the retry backoff. */
#include "testutil.h"

#include "annotations_internal.h"
#include "discovery_internal.h"

static mesh__ann ann(void) {
  mesh__ann a;
  mesh__ann_init(&a);
  return a;
}

/* Apply k=v, expecting success. */
static void set_ok(mesh__ann *a, const char *k, const char *v) {
  char why[300] = "";
  int rc = mesh__ann_set(a, k, v, why, sizeof why);
  ck_assert_msg(rc == 0, "%s: %s: rc %d (%s)", k, v, rc, why);
}

/* Apply k=v, expecting MESH_ERR_PARSE with a message naming the annotation
 * and the value, and a left as it was. */
static void set_bad(mesh__ann *a, const char *k, const char *v) {
  char why[300] = "";
  mesh__ann before = *a;
  ck_assert_int_eq(mesh__ann_set(a, k, v, why, sizeof why), MESH_ERR_PARSE);
  ck_assert_msg(strstr(why, k) != NULL, "'%s' does not name %s", why, k);
  ck_assert_msg(strstr(why, v) != NULL, "'%s' does not quote '%s'", why, v);
  ck_assert(memcmp(&before, a, sizeof before) == 0);
}

START_TEST(defaults) {
  mesh__ann a = ann();
  ck_assert_uint_eq(a.limit, 1); /* Linkerd's default */
  ck_assert(!a.has_retry && !a.has_timeout);
  ck_assert(!mesh__ann_retryable(&a, 500, -1));
  ck_assert(!mesh__ann_retryable(&a, 200, 14));
  /* Not ours: ignored, nothing changes. */
  char why[100];
  ck_assert_int_eq(mesh__ann_set(&a, "linkerd.io/inject", "enabled", why, sizeof why), 1);
  ck_assert_int_eq(mesh__ann_set(&a, "retry.example.com/http", "5xx", why, sizeof why), 1);
  ck_assert(!a.has_retry && !a.has_timeout);
  ck_assert(mesh__ann_known("retry.linkerd.io/http"));
  ck_assert(mesh__ann_known("timeout.linkerd.io/idle"));
  ck_assert(!mesh__ann_known("retry.linkerd.io/budget"));
}
END_TEST

START_TEST(http_statuses) {
  mesh__ann a = ann();
  set_ok(&a, "retry.linkerd.io/http", "5xx");
  ck_assert(a.has_retry);
  for (uint32_t s = 100; s < 640; s++) ck_assert_int_eq(mesh__ann_retryable(&a, s, -1), s >= 500 && s <= 599);
  a = ann();
  set_ok(&a, "retry.linkerd.io/http", "gateway-error");
  ck_assert(!mesh__ann_retryable(&a, 501, -1) && mesh__ann_retryable(&a, 502, -1) &&
            mesh__ann_retryable(&a, 504, -1) && !mesh__ann_retryable(&a, 505, -1));
  a = ann();
  set_ok(&a, "retry.linkerd.io/http", " 429 , 500-502,504");
  ck_assert(mesh__ann_retryable(&a, 429, -1) && mesh__ann_retryable(&a, 500, -1) &&
            mesh__ann_retryable(&a, 502, -1) && !mesh__ann_retryable(&a, 503, -1) &&
            mesh__ann_retryable(&a, 504, -1) && !mesh__ann_retryable(&a, 428, -1));
  ck_assert(!mesh__ann_retryable(&a, 0, -1));
  ck_assert(!mesh__ann_retryable(&a, 100000, -1));
  static const char *const bad[] = {"",      "5XX",   "4xx",     "50",      "5000",  "600",
                                    "099",   "504-500", "500-",  "-504",    "500,,502", "500,",
                                    "gateway", "5xx,x", "500-504-505", "1e3"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    a = ann();
    set_bad(&a, "retry.linkerd.io/http", bad[i]);
  }
}
END_TEST

START_TEST(grpc_codes) {
  mesh__ann a = ann();
  set_ok(&a, "retry.linkerd.io/grpc", "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable");
  static const int32_t yes[] = {1, 4, 8, 13, 14};
  for (size_t i = 0; i < 5; i++) ck_assert(mesh__ann_retryable(&a, 200, yes[i]));
  static const int32_t no[] = {0, 2, 3, 5, 7, 12, 15, 16, 31, 32, -1};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) ck_assert(!mesh__ann_retryable(&a, 200, no[i]));
  a = ann();
  set_ok(&a, "retry.linkerd.io/grpc", "unavailable");
  ck_assert(mesh__ann_retryable(&a, 200, 14) && !mesh__ann_retryable(&a, 200, 13));
  set_bad(&a, "retry.linkerd.io/grpc", "UNAVAILABLE");
  set_bad(&a, "retry.linkerd.io/grpc", "not-found");
  set_bad(&a, "retry.linkerd.io/grpc", "14");
  set_bad(&a, "retry.linkerd.io/grpc", "unavailable,");
}
END_TEST

START_TEST(limit_and_durations) {
  mesh__ann a = ann();
  set_ok(&a, "retry.linkerd.io/limit", "3");
  ck_assert_uint_eq(a.limit, 3);
  set_ok(&a, "retry.linkerd.io/limit", "0");
  ck_assert_uint_eq(a.limit, 0);
  set_ok(&a, "retry.linkerd.io/limit", "9");
  set_bad(&a, "retry.linkerd.io/limit", "10");
  set_bad(&a, "retry.linkerd.io/limit", "-1");
  set_bad(&a, "retry.linkerd.io/limit", "three");
  set_bad(&a, "retry.linkerd.io/limit", "2.5");
  ck_assert_uint_eq(a.limit, 9);

  set_ok(&a, "retry.linkerd.io/timeout", "250ms");
  ck_assert_uint_eq(a.retry_timeout_ms, 250);
  ck_assert(!a.has_timeout); /* a retry annotation */
  set_ok(&a, "timeout.linkerd.io/request", "5s");
  set_ok(&a, "timeout.linkerd.io/response", "1m30s");
  set_ok(&a, "timeout.linkerd.io/idle", "1h");
  ck_assert(a.has_timeout);
  ck_assert_uint_eq(a.request_ms, 5000);
  ck_assert_uint_eq(a.response_ms, 90000);
  ck_assert_uint_eq(a.idle_ms, 3600000);
  uint64_t ms = 7;
  ck_assert_int_eq(mesh__ann_duration("24h", &ms), 0);
  ck_assert_uint_eq(ms, 86400000);
  ck_assert_int_eq(mesh__ann_duration("0s", &ms), 0);
  ck_assert_uint_eq(ms, 0);
  static const char *const bad[] = {"", "300", "1.5s", "-1s", "5 s", "5sec", "25h", "s", "1000000000ms"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_int_eq(mesh__ann_duration(bad[i], &ms), MESH_ERR_PARSE);
    if (*bad[i]) set_bad(&a, "timeout.linkerd.io/request", bad[i]);
  }
  ck_assert_uint_eq(a.request_ms, 5000);
  /* A key in Linkerd's namespaces that Linkerd does not define is an error, naming it. */
  char why[300];
  ck_assert_int_eq(mesh__ann_set(&a, "retry.linkerd.io/budget", "10", why, sizeof why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "retry.linkerd.io/budget"));
  ck_assert_int_eq(mesh__ann_set(&a, "timeout.linkerd.io/connect", "1s", why, sizeof why), MESH_ERR_PARSE);
}
END_TEST

/* Retry n waits a uniform delay in [0, min(250, 25 * 2^n)] ms (full jitter). */
START_TEST(backoff_bounds) {
  static const uint64_t cap[] = {25, 50, 100, 200, 250, 250, 250};
  for (uint32_t n = 0; n < 7; n++) {
    ck_assert_uint_eq(mesh__ann_backoff_ms(n, 0), 0);
    ck_assert_uint_eq(mesh__ann_backoff_ms(n, UINT32_MAX), cap[n]);
    uint32_t s = 0x9e3779b9u;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < 10000; i++) {
      s ^= s << 13, s ^= s >> 17, s ^= s << 5;
      uint64_t d = mesh__ann_backoff_ms(n, s);
      ck_assert_uint_le(d, cap[n]);
      if (d < lo) lo = d;
      if (d > hi) hi = d;
    }
    /* Spread over the whole range, not stuck at an end. */
    ck_assert_uint_le(lo, cap[n] / 10);
    ck_assert_uint_ge(hi, cap[n] - cap[n] / 10);
  }
  ck_assert_uint_eq(mesh__ann_backoff_ms(UINT32_MAX, UINT32_MAX), 250);
}
END_TEST

/* The GetProfile message's "annotations" as the proxy reads them: applied
 * for a Service without a profile, ignored when the message has routes (a
 * ServiceProfile wins, as in Linkerd), a bad value refused whole. */
START_TEST(from_get_profile) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_profile *p = NULL;
  mesh__ann a;
  int has = -1;
  char why[300];
  const char *plain =
      "{\"fully_qualified_name\":\"web.default.svc.cluster.local\",\"routes\":[],"
      "\"dst_overrides\":[],\"annotations\":{\"retry.linkerd.io/http\":\"gateway-error\","
      "\"retry.linkerd.io/limit\":\"4\",\"timeout.linkerd.io/request\":\"2s\"}}";
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, plain, strlen(plain), &p, &a, &has, why, sizeof why), 0);
  ck_assert_ptr_null(p);
  ck_assert_int_eq(has, 1);
  ck_assert_uint_eq(a.limit, 4);
  ck_assert_uint_eq(a.request_ms, 2000);
  ck_assert(mesh__ann_retryable(&a, 503, -1) && !mesh__ann_retryable(&a, 500, -1));

  const char *routed =
      "{\"fully_qualified_name\":\"web.default.svc.cluster.local\",\"routes\":[{\"condition\":"
      "{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"get\"},\"timeout\":\"1s\"}],"
      "\"annotations\":{\"timeout.linkerd.io/request\":\"300ms\"}}";
  has = -1;
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, routed, strlen(routed), &p, &a, &has, why, sizeof why), 0);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(has, 0);
  mesh_profile_unref(p);
  p = NULL;

  /* A TrafficSplit alone is no ServiceProfile: its annotations apply along. */
  const char *split =
      "{\"fully_qualified_name\":\"web.default.svc.cluster.local\",\"routes\":[],"
      "\"dst_overrides\":[{\"authority\":\"web-v1.default.svc.cluster.local:80\",\"weight\":10000}],"
      "\"annotations\":{\"retry.linkerd.io/limit\":\"2\"}}";
  has = -1;
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, split, strlen(split), &p, &a, &has, why, sizeof why), 0);
  ck_assert_ptr_nonnull(p);
  ck_assert_int_eq(has, 1);
  ck_assert_uint_eq(a.limit, 2);
  mesh_profile_unref(p);
  p = NULL;

  const char *none = "{\"fully_qualified_name\":\"web.default.svc.cluster.local\"}";
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, none, strlen(none), &p, &a, &has, why, sizeof why), 0);
  ck_assert_int_eq(has, 0);

  const char *bad = "{\"fully_qualified_name\":\"x\",\"annotations\":{\"retry.linkerd.io/limit\":\"many\"}}";
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, bad, strlen(bad), &p, &a, &has, why, sizeof why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "retry.linkerd.io/limit"));
  const char *notext = "{\"fully_qualified_name\":\"x\",\"annotations\":{\"retry.linkerd.io/limit\":3}}";
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, notext, strlen(notext), &p, &a, &has, why, sizeof why), MESH_ERR_PARSE);
  const char *list = "{\"fully_qualified_name\":\"x\",\"annotations\":[]}";
  ck_assert_int_eq(mesh__disc_profile_parse_ann(ctx, list, strlen(list), &p, &a, &has, why, sizeof why), MESH_ERR_PARSE);
  mesh_ctx_free(ctx);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("annotations");
  TCase *t = tcase_create("parse");
  tcase_add_test(t, defaults);
  tcase_add_test(t, http_statuses);
  tcase_add_test(t, grpc_codes);
  tcase_add_test(t, limit_and_durations);
  tcase_add_test(t, backoff_bounds);
  tcase_add_test(t, from_get_profile);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return test_main(make_suite()); }
