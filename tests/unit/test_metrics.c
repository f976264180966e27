/* Unit tests for metrics: families, series, exact exposition text, limits, threads, failures. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "testutil.h"

/* Renders reg and compares the whole text with want. */
static void expect_render(mesh_ctx *ctx, mesh_metrics *reg, const char *want) {
  char *text = NULL;
  size_t len = 0;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, &len), 0);
  ck_assert_ptr_nonnull(text);
  ck_assert_uint_eq(len, strlen(text));
  if (strcmp(text, want) != 0) fprintf(stderr, "--- got:\n%s--- want:\n%s---\n", text, want);
  ck_assert_str_eq(text, want);
  mesh_free_string(ctx, text);
}

/* Looks up a series that must be creatable. */
static mesh_metric_series *series(mesh_metric_family *f, const char *const *v, size_t n) {
  mesh_metric_series *s = NULL;
  ck_assert_int_eq(mesh_metrics_series(f, v, n, &s), 0);
  ck_assert_ptr_nonnull(s);
  return s;
}

/* ---- exposition ---- */

START_TEST(empty_registry) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  expect_render(ctx, reg, "");
  /* A family without series is left out. */
  mesh_metric_family *f;
  const char *labels[] = {"direction"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Requests.", labels, 1, &f), 0);
  expect_render(ctx, reg, "");
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(counters_and_gauges) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *req, *open, *up;
  const char *rl[] = {"direction", "authority", "tls"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total",
                                        "Total count of HTTP requests.", rl, 3, &req), 0);
  const char *gl[] = {"peer"};
  ck_assert_int_eq(mesh_metrics_gauge(reg, "tcp_open_connections", NULL, gl, 1, &open), 0);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "up", "Whether it is up.", NULL, 0, &up), 0);
  ck_assert_int_eq(mesh_metrics_family_type(req), MESH_METRIC_COUNTER);
  ck_assert_int_eq(mesh_metrics_family_type(open), MESH_METRIC_GAUGE);
  ck_assert_str_eq(mesh_metrics_family_name(req), "request_total");

  const char *v1[] = {"outbound", "web.emojivoto.svc.cluster.local:80", "true"};
  const char *v2[] = {"inbound", "web.emojivoto.svc.cluster.local:80", "true"};
  mesh_metric_series *s1 = series(req, v1, 3), *s2 = series(req, v2, 3);
  mesh_metric_series *again = series(req, v1, 3);
  ck_assert_ptr_eq(again, s1); /* the same series, one more reference */
  mesh_metrics_series_unref(again);
  ck_assert_uint_eq(mesh_metrics_family_series_count(req), 2);
  long calls = a.calls;
  ck_assert_int_eq(mesh_metrics_inc(s1, 1), 0);
  ck_assert_int_eq(mesh_metrics_inc(s1, 41), 0);
  ck_assert_int_eq(mesh_metrics_inc(s2, 0), 0);
  ck_assert_int_eq(a.calls, calls); /* the hot path never allocates */
  ck_assert_uint_eq(mesh_metrics_count(s1), 42);
  ck_assert(mesh_metrics_value(s1) == 42.0);

  const char *p1[] = {"a"}, *p2[] = {"b"}, *p3[] = {"c"}, *p4[] = {"d"};
  mesh_metric_series *g1 = series(open, p1, 1), *g2 = series(open, p2, 1);
  mesh_metric_series *g3 = series(open, p3, 1), *g4 = series(open, p4, 1);
  ck_assert_int_eq(mesh_metrics_inc(g1, 5), 0);
  ck_assert_int_eq(mesh_metrics_dec(g1, 2), 0);
  ck_assert_int_eq(mesh_metrics_set(g2, -7), 0);
  ck_assert_int_eq(mesh_metrics_set_double(g3, 0.1), 0);
  ck_assert_int_eq(mesh_metrics_set_double(g4, 1e21), 0);
  ck_assert(mesh_metrics_value(g1) == 3.0);
  ck_assert(mesh_metrics_value(g2) == -7.0);
  mesh_metric_series *u = series(up, NULL, 0);
  ck_assert_int_eq(mesh_metrics_set(u, 1), 0);

  expect_render(ctx, reg,
                "# HELP request_total Total count of HTTP requests.\n"
                "# TYPE request_total counter\n"
                "request_total{direction=\"outbound\",authority=\"web.emojivoto.svc.cluster.local:80\","
                "tls=\"true\"} 42\n"
                "request_total{direction=\"inbound\",authority=\"web.emojivoto.svc.cluster.local:80\","
                "tls=\"true\"} 0\n"
                "# TYPE tcp_open_connections gauge\n"
                "tcp_open_connections{peer=\"a\"} 3\n"
                "tcp_open_connections{peer=\"b\"} -7\n"
                "tcp_open_connections{peer=\"c\"} 0.1\n"
                "tcp_open_connections{peer=\"d\"} 1e+21\n"
                "# HELP up Whether it is up.\n"
                "# TYPE up gauge\n"
                "up 1\n");

  /* Special values, as Prometheus spells them. */
  ck_assert_int_eq(mesh_metrics_set_double(g1, NAN), 0);
  ck_assert_int_eq(mesh_metrics_set_double(g2, INFINITY), 0);
  ck_assert_int_eq(mesh_metrics_set_double(g3, -INFINITY), 0);
  ck_assert_int_eq(mesh_metrics_set_double(g4, 1.0 / 3.0), 0);
  ck_assert_int_eq(mesh_metrics_set(u, INT64_C(9007199254740992)), 0); /* 2^53: exact */
  expect_render(ctx, reg,
                "# HELP request_total Total count of HTTP requests.\n"
                "# TYPE request_total counter\n"
                "request_total{direction=\"outbound\",authority=\"web.emojivoto.svc.cluster.local:80\","
                "tls=\"true\"} 42\n"
                "request_total{direction=\"inbound\",authority=\"web.emojivoto.svc.cluster.local:80\","
                "tls=\"true\"} 0\n"
                "# TYPE tcp_open_connections gauge\n"
                "tcp_open_connections{peer=\"a\"} NaN\n"
                "tcp_open_connections{peer=\"b\"} +Inf\n"
                "tcp_open_connections{peer=\"c\"} -Inf\n"
                "tcp_open_connections{peer=\"d\"} 0.3333333333333333\n"
                "# HELP up Whether it is up.\n"
                "# TYPE up gauge\n"
                "up 9007199254740992\n");

  /* A counter at the top of its range, and wrapping past it. */
  ck_assert_int_eq(mesh_metrics_inc(s2, UINT64_MAX), 0);
  ck_assert_uint_eq(mesh_metrics_count(s2), UINT64_MAX);
  ck_assert_int_eq(mesh_metrics_inc(s2, 2), 0);
  ck_assert_uint_eq(mesh_metrics_count(s2), 1);

  mesh_metric_series *all[] = {s1, s2, g1, g2, g3, g4, u};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mesh_metrics_series_unref(all[i]);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(histograms) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *h, *bare;
  const char *labels[] = {"direction", "status_code"};
  const uint64_t bounds[] = {1, 5, 10};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "response_latency_ms", "Elapsed times.", labels, 2,
                                          bounds, 3, &h), 0);
  ck_assert_int_eq(mesh_metrics_family_type(h), MESH_METRIC_HISTOGRAM);
  const char *v[] = {"inbound", "200"};
  mesh_metric_series *s = series(h, v, 2);
  /* A value equal to a bound falls in that bound's bucket (le is inclusive). */
  const uint64_t obs[] = {0, 1, 2, 5, 6, 10, 11, 1000};
  long calls = a.calls;
  for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) ck_assert_int_eq(mesh_metrics_observe(s, obs[i]), 0);
  ck_assert_int_eq(a.calls, calls); /* the hot path never allocates */
  ck_assert_uint_eq(mesh_metrics_bucket(s, 0), 2);
  ck_assert_uint_eq(mesh_metrics_bucket(s, 1), 4);
  ck_assert_uint_eq(mesh_metrics_bucket(s, 2), 6);
  ck_assert_uint_eq(mesh_metrics_bucket(s, 3), 8);
  ck_assert_uint_eq(mesh_metrics_bucket(s, 4), 0); /* past +Inf */
  ck_assert_uint_eq(mesh_metrics_count(s), 8);
  ck_assert_uint_eq(mesh_metrics_sum(s), 1035);

  ck_assert_int_eq(mesh_metrics_histogram(reg, "x_seconds", NULL, NULL, 0, bounds, 1, &bare), 0);
  mesh_metric_series *b = series(bare, NULL, 0);
  mesh_metric_series *empty_one;
  const char *v2[] = {"outbound", "503"};
  empty_one = series(h, v2, 2);

  expect_render(ctx, reg,
                "# HELP response_latency_ms Elapsed times.\n"
                "# TYPE response_latency_ms histogram\n"
                "response_latency_ms_bucket{direction=\"inbound\",status_code=\"200\",le=\"1\"} 2\n"
                "response_latency_ms_bucket{direction=\"inbound\",status_code=\"200\",le=\"5\"} 4\n"
                "response_latency_ms_bucket{direction=\"inbound\",status_code=\"200\",le=\"10\"} 6\n"
                "response_latency_ms_bucket{direction=\"inbound\",status_code=\"200\",le=\"+Inf\"} 8\n"
                "response_latency_ms_sum{direction=\"inbound\",status_code=\"200\"} 1035\n"
                "response_latency_ms_count{direction=\"inbound\",status_code=\"200\"} 8\n"
                "response_latency_ms_bucket{direction=\"outbound\",status_code=\"503\",le=\"1\"} 0\n"
                "response_latency_ms_bucket{direction=\"outbound\",status_code=\"503\",le=\"5\"} 0\n"
                "response_latency_ms_bucket{direction=\"outbound\",status_code=\"503\",le=\"10\"} 0\n"
                "response_latency_ms_bucket{direction=\"outbound\",status_code=\"503\",le=\"+Inf\"} 0\n"
                "response_latency_ms_sum{direction=\"outbound\",status_code=\"503\"} 0\n"
                "response_latency_ms_count{direction=\"outbound\",status_code=\"503\"} 0\n"
                "# TYPE x_seconds histogram\n"
                "x_seconds_bucket{le=\"1\"} 0\n"
                "x_seconds_bucket{le=\"+Inf\"} 0\n"
                "x_seconds_sum 0\n"
                "x_seconds_count 0\n");
  mesh_metrics_series_unref(s);
  mesh_metrics_series_unref(b);
  mesh_metrics_series_unref(empty_one);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* Linkerd's buckets by default; every bound, one below and one above. */
START_TEST(default_latency_buckets) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  size_t nb = 0;
  const uint64_t *lb = mesh_metrics_latency_bounds(&nb);
  ck_assert_uint_eq(nb, 25);
  const uint64_t want[] = {1,    2,    3,    4,     5,     10,    20,    30,    40,
                           50,   100,  200,  300,   400,   500,   1000,  2000,  3000,
                           4000, 5000, 10000, 20000, 30000, 40000, 50000};
  for (size_t i = 0; i < nb; i++) ck_assert_uint_eq(lb[i], want[i]);
  ck_assert_ptr_eq(mesh_metrics_latency_bounds(NULL), lb);

  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *h, *h2;
  ck_assert_int_eq(mesh_metrics_histogram(reg, "response_latency_ms", NULL, NULL, 0, NULL, 0, &h), 0);
  /* Asking for the same buckets explicitly is the same family. */
  ck_assert_int_eq(mesh_metrics_histogram(reg, "response_latency_ms", NULL, NULL, 0, lb, nb, &h2), 0);
  ck_assert_ptr_eq(h, h2);
  for (size_t i = 0; i < nb; i++) {
    mesh_metric_series *s = series(h, NULL, 0);
    mesh_metrics_series_remove(s); /* a fresh series next time round */
    ck_assert_int_eq(mesh_metrics_observe(s, want[i]), 0);
    ck_assert_int_eq(mesh_metrics_observe(s, want[i] - 1), 0);
    ck_assert_int_eq(mesh_metrics_observe(s, want[i] + 1), 0);
    /* Straight from the definition: bucket k counts the values <= its bound. */
    for (size_t k = 0; k <= nb; k++) {
      uint64_t c = mesh_metrics_bucket(s, k);
      uint64_t expect = k == nb ? 3
                                : (uint64_t)(want[i] - 1 <= want[k]) + (want[i] <= want[k]) +
                                      (want[i] + 1 <= want[k]);
      ck_assert_msg(c == expect, "bound %" PRIu64 ": bucket %zu holds %" PRIu64 ", want %" PRIu64,
                    want[i], k, c, expect);
    }
    /* And the value equal to the bound is in that bound's own bucket. */
    ck_assert_uint_eq(mesh_metrics_bucket(s, i) - (i ? mesh_metrics_bucket(s, i - 1) : 0),
                      i == 0 || want[i - 1] < want[i] - 1 ? 2 : 1);
    mesh_metrics_series_unref(s);
  }
  /* 0 and UINT64_MAX: the first and the +Inf bucket. */
  mesh_metric_series *s = series(h, NULL, 0);
  mesh_metrics_observe(s, 0);
  mesh_metrics_observe(s, UINT64_MAX);
  ck_assert_uint_eq(mesh_metrics_bucket(s, 0), 1);
  ck_assert_uint_eq(mesh_metrics_bucket(s, nb - 1), 1);
  ck_assert_uint_eq(mesh_metrics_bucket(s, nb), 2);
  mesh_metrics_series_unref(s);

  char *text;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, NULL), 0);
  ck_assert_ptr_nonnull(strstr(text, "response_latency_ms_bucket{le=\"50000\"} 1\n"
                                     "response_latency_ms_bucket{le=\"+Inf\"} 2\n"
                                     "response_latency_ms_sum 18446744073709551615\n"
                                     "response_latency_ms_count 2\n"));
  mesh_free_string(ctx, text);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(escaping) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"authority", "path"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total",
                                        "Help with a \\ backslash,\na newline and \"quotes\".",
                                        labels, 2, &f), 0);
  const char *v[] = {"a\\b\"c\nd", "/caf\xc3\xa9/\xf0\x9f\x98\x80"};
  mesh_metric_series *s = series(f, v, 2);
  const char *e[] = {"", "\"\"\\\\\n\n"};
  mesh_metric_series *s2 = series(f, e, 2);
  mesh_metrics_inc(s, 3);
  expect_render(ctx, reg,
                "# HELP request_total Help with a \\\\ backslash,\\na newline and \"quotes\".\n"
                "# TYPE request_total counter\n"
                "request_total{authority=\"a\\\\b\\\"c\\nd\",path=\"/caf\xc3\xa9/\xf0\x9f\x98\x80\"} 3\n"
                "request_total{authority=\"\",path=\"\\\"\\\"\\\\\\\\\\n\\n\"} 0\n");
  mesh_metrics_series_unref(s);
  mesh_metrics_series_unref(s2);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- validation ---- */

START_TEST(invalid_names_and_labels) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg = (mesh_metrics *)ctx;
  ck_assert_int_eq(mesh_metrics_new(NULL, &reg), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_new(ctx, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(reg, (mesh_metrics *)ctx);
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f = (mesh_metric_family *)ctx;

  static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "caf\xc3\xa9", "a{"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++)
    ck_assert_msg(mesh_metrics_counter(reg, bad_names[i], NULL, NULL, 0, &f) == MESH_ERR_INVALID,
                  "name '%s' accepted", bad_names[i]);
  ck_assert_int_eq(mesh_metrics_counter(reg, NULL, NULL, NULL, 0, &f), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(NULL, "a", NULL, NULL, 0, &f), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "a", NULL, NULL, 0, NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "a", NULL, NULL, 1, &f), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "a", "bad \xc3(", NULL, 0, &f), MESH_ERR_INVALID);
  char longname[MESH_METRICS_MAX_NAME + 2];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  ck_assert_int_eq(mesh_metrics_counter(reg, longname, NULL, NULL, 0, &f), MESH_ERR_LIMIT);
  char *longhelp = calloc(MESH_METRICS_MAX_HELP + 2, 1);
  memset(longhelp, 'h', MESH_METRICS_MAX_HELP + 1);
  ck_assert_int_eq(mesh_metrics_counter(reg, "a", longhelp, NULL, 0, &f), MESH_ERR_LIMIT);
  free(longhelp);

  struct {
    const char *labels[3];
    size_t n;
  } bad_labels[] = {
      {{"__name__"}, 1}, {{"a:b"}, 1}, {{"1a"}, 1},   {{""}, 1},
      {{"a", "b", "a"}, 3}, {{NULL}, 1}, {{"caf\xc3\xa9"}, 1},
  };
  for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++)
    ck_assert_msg(mesh_metrics_counter(reg, "a", NULL, bad_labels[i].labels, bad_labels[i].n, &f) ==
                      MESH_ERR_INVALID,
                  "labels case %zu accepted", i);
  const char *le[] = {"le"};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, le, 1, NULL, 0, &f), MESH_ERR_INVALID);
  const char *many[MESH_METRICS_MAX_LABELS + 1];
  char names[MESH_METRICS_MAX_LABELS + 1][8];
  for (size_t i = 0; i <= MESH_METRICS_MAX_LABELS; i++) {
    snprintf(names[i], sizeof names[i], "l%zu", i);
    many[i] = names[i];
  }
  ck_assert_int_eq(mesh_metrics_counter(reg, "a", NULL, many, MESH_METRICS_MAX_LABELS + 1, &f),
                   MESH_ERR_LIMIT);
  /* Bounds must increase strictly. */
  const uint64_t flat[] = {1, 1}, down[] = {5, 2};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, flat, 2, &f), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, down, 2, &f), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, NULL, 3, &f), MESH_ERR_INVALID);
  uint64_t lots[MESH_METRICS_MAX_BOUNDS + 1];
  for (size_t i = 0; i <= MESH_METRICS_MAX_BOUNDS; i++) lots[i] = i;
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, lots, MESH_METRICS_MAX_BOUNDS + 1, &f),
                   MESH_ERR_LIMIT);
  ck_assert_ptr_eq(f, (mesh_metric_family *)ctx); /* untouched by every failure */
  expect_render(ctx, reg, "");

  /* Names that are fine: colons in metric names, underscores, the maximum. */
  longname[MESH_METRICS_MAX_NAME] = '\0';
  const char *ok_labels[] = {"_x", "dst_service", "L9"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "job:request_total:rate5m", NULL, NULL, 0, &f), 0);
  ck_assert_int_eq(mesh_metrics_counter(reg, "_private", NULL, ok_labels, 3, &f), 0);
  ck_assert_int_eq(mesh_metrics_counter(reg, longname, NULL, NULL, 0, &f), 0);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, lots, MESH_METRICS_MAX_BOUNDS, &f), 0);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(registration_conflicts) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f, *g;
  const char *l1[] = {"direction"}, *l2[] = {"authority"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Requests.", l1, 1, &f), 0);
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Requests.", l1, 1, &g), 0);
  ck_assert_ptr_eq(f, g);
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Other.", l1, 1, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Requests.", l2, 1, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", "Requests.", NULL, 0, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "request_total", "Requests.", l1, 1, &g), MESH_ERR_INVALID);
  /* A histogram owns its _bucket, _sum and _count samples, both ways round. */
  ck_assert_int_eq(mesh_metrics_histogram(reg, "lat", NULL, NULL, 0, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_counter(reg, "lat_count", NULL, NULL, 0, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "lat_sum", NULL, NULL, 0, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "lat_bucket", NULL, NULL, 0, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_counter(reg, "lat_total", NULL, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "size_count", NULL, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "size", NULL, NULL, 0, NULL, 0, &g), MESH_ERR_INVALID);
  const uint64_t b[] = {1, 2};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "lat", NULL, NULL, 0, b, 2, &g), MESH_ERR_INVALID);
  /* The process collector's names. */
  ck_assert_int_eq(mesh_metrics_gauge(reg, "process_open_fds", NULL, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_process(reg), MESH_ERR_INVALID);
  mesh_metrics_free(reg);

  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  ck_assert_int_eq(mesh_metrics_process(reg), 0);
  ck_assert_int_eq(mesh_metrics_process(reg), 0); /* again: harmless */
  ck_assert_int_eq(mesh_metrics_gauge(reg, "process_open_fds", NULL, NULL, 0, &g), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "process_max", NULL, NULL, 0, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "process_open", NULL, NULL, 0, NULL, 0, &g), 0);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "process", NULL, NULL, 0, &g), 0);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(invalid_label_values) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"authority", "tls"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", NULL, labels, 2, &f), 0);
  mesh_metric_series *s = (mesh_metric_series *)ctx;
  static const char *const bad_utf8[] = {
      "\xff",         "\xc3",         "\xc3(",         "\xc0\xaf",         /* overlong '/' */
      "\xe0\x80\xaf", "\xed\xa0\x80", /* a surrogate */ "\xf4\x90\x80\x80", /* > U+10FFFF */
      "\xf0\x9f\x98", "a\x80",        "\xf8\x88\x80\x80\x80"};
  for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
    const char *v[] = {bad_utf8[i], "true"};
    ck_assert_msg(mesh_metrics_series(f, v, 2, &s) == MESH_ERR_INVALID, "bad UTF-8 %zu accepted", i);
  }
  const char *v[] = {"a", "b"};
  const char *vnull[] = {"a", NULL};
  ck_assert_int_eq(mesh_metrics_series(f, v, 1, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series(f, v, 3, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series(f, NULL, 2, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series(f, vnull, 2, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series(NULL, v, 2, &s), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series(f, v, 2, NULL), MESH_ERR_INVALID);
  char big[MESH_METRICS_MAX_LABEL_VALUE + 2];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  const char *vbig[] = {big, "true"};
  ck_assert_int_eq(mesh_metrics_series(f, vbig, 2, &s), MESH_ERR_LIMIT);
  ck_assert_ptr_eq(s, (mesh_metric_series *)ctx);
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), 0);
  big[MESH_METRICS_MAX_LABEL_VALUE] = '\0'; /* exactly the limit is fine */
  ck_assert_int_eq(mesh_metrics_series(f, vbig, 2, &s), 0);
  mesh_metrics_series_unref(s);
  /* Valid multi-byte sequences at each length. */
  const char *vok[] = {"\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", ""};
  ck_assert_int_eq(mesh_metrics_series(f, vok, 2, &s), 0);
  mesh_metrics_series_unref(s);
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), 2);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(wrong_types_and_nulls) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *cf, *gf, *hf;
  ck_assert_int_eq(mesh_metrics_counter(reg, "c", NULL, NULL, 0, &cf), 0);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "g", NULL, NULL, 0, &gf), 0);
  ck_assert_int_eq(mesh_metrics_histogram(reg, "h", NULL, NULL, 0, NULL, 0, &hf), 0);
  mesh_metric_series *c = series(cf, NULL, 0), *g = series(gf, NULL, 0), *h = series(hf, NULL, 0);
  ck_assert_int_eq(mesh_metrics_dec(c, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_set(c, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_set_double(c, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_observe(c, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_observe(g, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_inc(h, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_set(h, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_dec(h, 1), MESH_ERR_INVALID);
  ck_assert_uint_eq(mesh_metrics_count(c), 0);
  ck_assert_uint_eq(mesh_metrics_count(h), 0);
  ck_assert_uint_eq(mesh_metrics_count(g), 0);
  ck_assert_uint_eq(mesh_metrics_sum(c), 0);
  ck_assert_uint_eq(mesh_metrics_bucket(g, 0), 0);
  ck_assert(mesh_metrics_value(h) == 0);
  ck_assert_int_eq(mesh_metrics_inc(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_dec(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_set(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_set_double(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_observe(NULL, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_series_remove(NULL), MESH_ERR_INVALID);
  ck_assert_uint_eq(mesh_metrics_count(NULL), 0);
  ck_assert(mesh_metrics_value(NULL) == 0);
  ck_assert_uint_eq(mesh_metrics_sum(NULL), 0);
  ck_assert_uint_eq(mesh_metrics_bucket(NULL, 0), 0);
  ck_assert_ptr_null(mesh_metrics_series_ref(NULL));
  mesh_metrics_series_unref(NULL);
  mesh_metrics_free(NULL);
  ck_assert_int_eq(mesh_metrics_family_type(NULL), 0);
  ck_assert_ptr_null(mesh_metrics_family_name(NULL));
  ck_assert_uint_eq(mesh_metrics_family_series_count(NULL), 0);
  ck_assert_int_eq(mesh_metrics_family_set_max_series(NULL, 5), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_family_set_max_series(cf, 0), MESH_ERR_INVALID);
  char *text = (char *)ctx;
  ck_assert_int_eq(mesh_metrics_render(NULL, &text, NULL), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_metrics_render(reg, NULL, NULL), MESH_ERR_INVALID);
  ck_assert_ptr_eq(text, (char *)ctx);
  ck_assert_int_eq(mesh_metrics_process(NULL), MESH_ERR_INVALID);
  /* Nothing changed: every wrong-type call left its series as it was. */
  expect_render(ctx, reg, "# TYPE c counter\nc 0\n# TYPE g gauge\ng 0\n# TYPE h histogram\n"
                          "h_bucket{le=\"1\"} 0\nh_bucket{le=\"2\"} 0\nh_bucket{le=\"3\"} 0\n"
                          "h_bucket{le=\"4\"} 0\nh_bucket{le=\"5\"} 0\nh_bucket{le=\"10\"} 0\n"
                          "h_bucket{le=\"20\"} 0\nh_bucket{le=\"30\"} 0\nh_bucket{le=\"40\"} 0\n"
                          "h_bucket{le=\"50\"} 0\nh_bucket{le=\"100\"} 0\nh_bucket{le=\"200\"} 0\n"
                          "h_bucket{le=\"300\"} 0\nh_bucket{le=\"400\"} 0\nh_bucket{le=\"500\"} 0\n"
                          "h_bucket{le=\"1000\"} 0\nh_bucket{le=\"2000\"} 0\nh_bucket{le=\"3000\"} 0\n"
                          "h_bucket{le=\"4000\"} 0\nh_bucket{le=\"5000\"} 0\nh_bucket{le=\"10000\"} 0\n"
                          "h_bucket{le=\"20000\"} 0\nh_bucket{le=\"30000\"} 0\nh_bucket{le=\"40000\"} 0\n"
                          "h_bucket{le=\"50000\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n");
  mesh_metrics_series_unref(c);
  mesh_metrics_series_unref(g);
  mesh_metrics_series_unref(h);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- limits and removal ---- */

START_TEST(cardinality_limit) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"authority"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", NULL, labels, 1, &f), 0);
  /* The default: 10,000 series, then MESH_ERR_LIMIT, while the ones there still resolve. */
  char v[32];
  const char *vals[] = {v};
  for (int i = 0; i < MESH_METRICS_DEFAULT_MAX_SERIES; i++) {
    snprintf(v, sizeof v, "host-%d.example:80", i);
    mesh_metric_series *s = series(f, vals, 1);
    mesh_metrics_inc(s, (uint64_t)i);
    mesh_metrics_series_unref(s);
  }
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), MESH_METRICS_DEFAULT_MAX_SERIES);
  long live = a.live;
  mesh_metric_series *s = NULL;
  snprintf(v, sizeof v, "attacker-%d.example", 1);
  ck_assert_int_eq(mesh_metrics_series(f, vals, 1, &s), MESH_ERR_LIMIT);
  ck_assert_ptr_null(s);
  ck_assert_int_eq(a.live, live); /* refused without allocating */
  snprintf(v, sizeof v, "host-%d.example:80", 9999);
  s = series(f, vals, 1);
  ck_assert_uint_eq(mesh_metrics_count(s), 9999);
  /* Removing one makes room for exactly one. */
  ck_assert_int_eq(mesh_metrics_series_remove(s), 0);
  mesh_metrics_series_unref(s);
  snprintf(v, sizeof v, "newcomer");
  s = series(f, vals, 1);
  ck_assert_uint_eq(mesh_metrics_count(s), 0);
  mesh_metrics_series_unref(s);
  snprintf(v, sizeof v, "one-more");
  ck_assert_int_eq(mesh_metrics_series(f, vals, 1, &s), MESH_ERR_LIMIT);

  /* A lower limit keeps what is there and refuses new ones; a higher one admits them. */
  ck_assert_int_eq(mesh_metrics_family_set_max_series(f, 10), 0);
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), MESH_METRICS_DEFAULT_MAX_SERIES);
  snprintf(v, sizeof v, "host-%d.example:80", 5);
  s = series(f, vals, 1);
  mesh_metrics_series_unref(s);
  ck_assert_int_eq(mesh_metrics_family_set_max_series(f, 20000), 0);
  snprintf(v, sizeof v, "one-more");
  s = series(f, vals, 1);
  mesh_metrics_series_unref(s);

  mesh_metric_family *small;
  ck_assert_int_eq(mesh_metrics_counter(reg, "tcp_open_total", NULL, labels, 1, &small), 0);
  ck_assert_int_eq(mesh_metrics_family_set_max_series(small, 2), 0);
  mesh_metric_series *x, *y;
  snprintf(v, sizeof v, "x");
  x = series(small, vals, 1);
  snprintf(v, sizeof v, "y");
  y = series(small, vals, 1);
  snprintf(v, sizeof v, "z");
  ck_assert_int_eq(mesh_metrics_series(small, vals, 1, &s), MESH_ERR_LIMIT);
  mesh_metrics_series_unref(x);
  mesh_metrics_series_unref(y);

  char *text;
  size_t len;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, &len), 0);
  ck_assert_ptr_nonnull(strstr(text, "request_total{authority=\"host-0.example:80\"} 0\n"));
  ck_assert_ptr_nonnull(strstr(text, "request_total{authority=\"host-9998.example:80\"} 9998\n"));
  ck_assert_ptr_null(strstr(text, "host-9999.example"));
  ck_assert_ptr_nonnull(strstr(text, "request_total{authority=\"newcomer\"} 0\n"
                                     "request_total{authority=\"one-more\"} 0\n"
                                     "# TYPE tcp_open_total counter\n"));
  mesh_free_string(ctx, text);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(removal_and_lifetimes) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"dst_pod"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "tcp_open_total", NULL, labels, 1, &f), 0);
  const char *p1[] = {"web-1"}, *p2[] = {"web-2"}, *p3[] = {"web-3"};
  mesh_metric_series *s1 = series(f, p1, 1), *s2 = series(f, p2, 1), *s3 = series(f, p3, 1);
  mesh_metric_series *held = mesh_metrics_series_ref(s2); /* another thread's handle */
  ck_assert_ptr_eq(held, s2);
  mesh_metrics_inc(s1, 1);
  mesh_metrics_inc(s2, 2);
  mesh_metrics_inc(s3, 3);
  ck_assert_int_eq(mesh_metrics_series_remove(s2), 0);
  ck_assert_int_eq(mesh_metrics_series_remove(s2), 0); /* twice: harmless */
  mesh_metrics_series_unref(s2);
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), 2);
  /* The held handle still works; its updates go nowhere. */
  ck_assert_int_eq(mesh_metrics_inc(held, 10), 0);
  ck_assert_uint_eq(mesh_metrics_count(held), 12);
  expect_render(ctx, reg, "# TYPE tcp_open_total counter\n"
                          "tcp_open_total{dst_pod=\"web-1\"} 1\n"
                          "tcp_open_total{dst_pod=\"web-3\"} 3\n");
  /* The same values again: a fresh series from zero, rendered last. */
  mesh_metric_series *again = series(f, p2, 1);
  ck_assert_ptr_ne(again, held);
  mesh_metrics_inc(again, 5);
  /* Remove the first and the last too: the order of the rest holds. */
  ck_assert_int_eq(mesh_metrics_series_remove(s1), 0);
  expect_render(ctx, reg, "# TYPE tcp_open_total counter\n"
                          "tcp_open_total{dst_pod=\"web-3\"} 3\n"
                          "tcp_open_total{dst_pod=\"web-2\"} 5\n");
  ck_assert_int_eq(mesh_metrics_series_remove(again), 0);
  ck_assert_int_eq(mesh_metrics_series_remove(s3), 0);
  expect_render(ctx, reg, "");
  mesh_metric_series *s4 = series(f, p1, 1);
  expect_render(ctx, reg, "# TYPE tcp_open_total counter\ntcp_open_total{dst_pod=\"web-1\"} 0\n");

  /* Handles outlive the registry: they stay valid until released. */
  mesh_metrics_free(reg);
  ck_assert_int_gt(a.live, 1);
  ck_assert_int_eq(mesh_metrics_inc(s4, 1), 0);
  ck_assert_uint_eq(mesh_metrics_count(s4), 1);
  ck_assert_int_eq(mesh_metrics_series_remove(s4), 0);
  mesh_metric_series *all[] = {s1, held, s3, again, s4};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mesh_metrics_series_unref(all[i]);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

/* Many series in one family: lookups stay correct as the hash table grows
 * and chains are unlinked from the middle. */
START_TEST(many_series_lookup) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"a", "b"};
  ck_assert_int_eq(mesh_metrics_counter(reg, "c", NULL, labels, 2, &f), 0);
  enum { N = 3000 };
  static mesh_metric_series *ss[N];
  char va[16], vb[16];
  const char *v[] = {va, vb};
  for (int i = 0; i < N; i++) {
    /* ("1","23") and ("12","3") must be different series. */
    snprintf(va, sizeof va, "%d", i / 10);
    snprintf(vb, sizeof vb, "%d", i % 10);
    ss[i] = series(f, v, 2);
    mesh_metrics_inc(ss[i], (uint64_t)i);
  }
  for (int i = 0; i < N; i += 3) ck_assert_int_eq(mesh_metrics_series_remove(ss[i]), 0);
  for (int i = 0; i < N; i++) {
    snprintf(va, sizeof va, "%d", i / 10);
    snprintf(vb, sizeof vb, "%d", i % 10);
    mesh_metric_series *s = series(f, v, 2);
    if (i % 3) ck_assert_ptr_eq(s, ss[i]);
    else ck_assert_uint_eq(mesh_metrics_count(s), 0);
    mesh_metrics_series_unref(s);
  }
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), N);
  for (int i = 0; i < N; i++) mesh_metrics_series_unref(ss[i]);
  mesh_metrics_free(reg);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(process_collector) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *a, *b;
  ck_assert_int_eq(mesh_metrics_counter(reg, "before_total", NULL, NULL, 0, &a), 0);
  ck_assert_int_eq(mesh_metrics_process(reg), 0);
  ck_assert_int_eq(mesh_metrics_counter(reg, "after_total", NULL, NULL, 0, &b), 0);
  mesh_metric_series *sa = series(a, NULL, 0), *sb = series(b, NULL, 0);
  char *text;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, NULL), 0);
  const char *want[] = {"# TYPE before_total counter\nbefore_total 0\n",
                        ("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                         "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
                        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes ",
                        "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes ",
                        "# TYPE process_open_fds gauge\nprocess_open_fds ",
                        "# TYPE process_max_fds gauge\nprocess_max_fds ",
                        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds ",
                        "# TYPE after_total counter\nafter_total 0\n"};
  const char *at = text;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    const char *p = strstr(at, want[i]);
    ck_assert_msg(p != NULL, "missing, or out of order: %s\nin:\n%s", want[i], text);
    at = p + strlen(want[i]);
  }
  /* Plausible values: this process has a few fds open, some memory, a start time after 2020. */
  double rss = strtod(strstr(text, "\nprocess_resident_memory_bytes ") + 31, NULL);
  double fds = strtod(strstr(text, "\nprocess_open_fds ") + 18, NULL);
  double start = strtod(strstr(text, "\nprocess_start_time_seconds ") + 28, NULL);
  ck_assert(rss > 1e5);
  ck_assert(fds >= 3 && fds < 1e6);
  ck_assert(start > 1.5e9);
  mesh_free_string(ctx, text);
  mesh_metrics_series_unref(sa);
  mesh_metrics_series_unref(sb);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- threads ---- */

enum { THREADS = 4, PER_THREAD = 1000000 };

typedef struct {
  mesh_metric_series *counter, *gauge, *hist;
} shared_series;

static void *hammer(void *arg) {
  shared_series *sh = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    mesh_metrics_inc(sh->counter, 1);
    if (i % 4 == 0) {
      mesh_metrics_inc(sh->gauge, 3);
      mesh_metrics_dec(sh->gauge, 3);
      mesh_metrics_observe(sh->hist, (uint64_t)(i % 7));
    }
  }
  return NULL;
}

START_TEST(threads_sum_exactly) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *cf, *gf, *hf;
  ck_assert_int_eq(mesh_metrics_counter(reg, "request_total", NULL, NULL, 0, &cf), 0);
  ck_assert_int_eq(mesh_metrics_gauge(reg, "tcp_open_connections", NULL, NULL, 0, &gf), 0);
  const uint64_t b[] = {2, 4};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "lat", NULL, NULL, 0, b, 2, &hf), 0);
  shared_series sh = {series(cf, NULL, 0), series(gf, NULL, 0), series(hf, NULL, 0)};
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++) ck_assert_int_eq(pthread_create(&t[i], NULL, hammer, &sh), 0);
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  ck_assert_uint_eq(mesh_metrics_count(sh.counter), (uint64_t)THREADS * PER_THREAD);
  ck_assert(mesh_metrics_value(sh.gauge) == 0.0);
  /* Per thread: 250,000 observations of i % 7 for i = 0, 4, 8, ... */
  uint64_t n = 0, sum = 0, le2 = 0, le4 = 0;
  for (int i = 0; i < PER_THREAD; i += 4) {
    uint64_t v = (uint64_t)(i % 7);
    n++, sum += v, le2 += v <= 2, le4 += v <= 4;
  }
  ck_assert_uint_eq(mesh_metrics_count(sh.hist), THREADS * n);
  ck_assert_uint_eq(mesh_metrics_sum(sh.hist), THREADS * sum);
  ck_assert_uint_eq(mesh_metrics_bucket(sh.hist, 0), THREADS * le2);
  ck_assert_uint_eq(mesh_metrics_bucket(sh.hist, 1), THREADS * le4);
  mesh_metrics_series_unref(sh.counter);
  mesh_metrics_series_unref(sh.gauge);
  mesh_metrics_series_unref(sh.hist);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  mesh_metrics *reg;
  mesh_metric_family *f;
  mesh_ctx *ctx;
  int id;
  atomic_int *stop;
} churn_arg;

/* Creates, updates and removes series while other threads render. */
static void *churn(void *p) {
  churn_arg *c = p;
  char v[32];
  const char *vals[] = {v};
  for (int i = 0; i < 20000; i++) {
    snprintf(v, sizeof v, "t%d-%d", c->id, i % 50);
    mesh_metric_series *s;
    ck_assert_int_eq(mesh_metrics_series(c->f, vals, 1, &s), 0);
    mesh_metrics_observe(s, (uint64_t)i);
    if (i % 3 == 0) mesh_metrics_series_remove(s);
    mesh_metrics_series_unref(s);
  }
  return NULL;
}

static void *renderer(void *p) {
  churn_arg *c = p;
  while (!atomic_load(c->stop)) {
    char *text;
    ck_assert_int_eq(mesh_metrics_render(c->reg, &text, NULL), 0);
    /* Every histogram series rendered whole: as many +Inf buckets as _count lines. */
    size_t inf = 0, count = 0;
    for (const char *q = text; (q = strstr(q, "le=\"+Inf\"")); q++) inf++;
    for (const char *q = text; (q = strstr(q, "_count{")); q++) count++;
    ck_assert_uint_eq(inf, count);
    mesh_free_string(c->ctx, text);
  }
  return NULL;
}

START_TEST(render_while_churning) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_metrics *reg;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  mesh_metric_family *f;
  const char *labels[] = {"dst_pod"};
  const uint64_t b[] = {10, 100, 1000};
  ck_assert_int_eq(mesh_metrics_histogram(reg, "lat", NULL, labels, 1, b, 3, &f), 0);
  atomic_int stop = 0;
  churn_arg args[4];
  pthread_t t[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (churn_arg){reg, f, ctx, i, &stop};
    ck_assert_int_eq(pthread_create(&t[i], NULL, i < 3 ? churn : renderer, &args[i]), 0);
  }
  for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
  atomic_store(&stop, 1);
  pthread_join(t[3], NULL);
  /* Each thread's 50 values stay listed unless their last update removed them. */
  size_t left = 0;
  for (int i = 20000 - 50; i < 20000; i++) left += i % 3 != 0;
  ck_assert_uint_eq(mesh_metrics_family_series_count(f), 3 * left);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- allocation failures ---- */

static const char *const linkerd_text =
    "# HELP request_total Total count of HTTP requests.\n"
    "# TYPE request_total counter\n"
    "request_total{direction=\"outbound\",authority=\"web:80\"} 7\n"
    "request_total{direction=\"inbound\",authority=\"a\\\"b\"} 0\n"
    "# TYPE tcp_open_connections gauge\n"
    "tcp_open_connections 2.5\n"
    "# HELP response_latency_ms Elapsed times.\n"
    "# TYPE response_latency_ms histogram\n"
    "response_latency_ms_bucket{classification=\"success\",le=\"10\"} 1\n"
    "response_latency_ms_bucket{classification=\"success\",le=\"100\"} 1\n"
    "response_latency_ms_bucket{classification=\"success\",le=\"+Inf\"} 2\n"
    "response_latency_ms_sum{classification=\"success\"} 1010\n"
    "response_latency_ms_count{classification=\"success\"} 2\n";

/* Registration, series, updates and render: NOMEM anywhere, nothing leaked. */
static int build_render_op(mesh_ctx *ctx, void *arg) {
  (void)arg;
  mesh_metrics *reg;
  int rc = mesh_metrics_new(ctx, &reg);
  if (rc < 0) return rc;
  mesh_metric_family *req, *open, *lat;
  mesh_metric_series *s[4] = {NULL};
  const char *rl[] = {"direction", "authority"}, *ll[] = {"classification"};
  const uint64_t b[] = {10, 100};
  const char *v0[] = {"outbound", "web:80"}, *v1[] = {"inbound", "a\"b"}, *v3[] = {"success"};
  char *text = NULL;
  size_t len;
  if ((rc = mesh_metrics_counter(reg, "request_total", "Total count of HTTP requests.", rl, 2, &req)) < 0 ||
      (rc = mesh_metrics_gauge(reg, "tcp_open_connections", NULL, NULL, 0, &open)) < 0 ||
      (rc = mesh_metrics_histogram(reg, "response_latency_ms", "Elapsed times.", ll, 1, b, 2, &lat)) < 0 ||
      (rc = mesh_metrics_series(req, v0, 2, &s[0])) < 0 ||
      (rc = mesh_metrics_series(req, v1, 2, &s[1])) < 0 ||
      (rc = mesh_metrics_series(open, NULL, 0, &s[2])) < 0 ||
      (rc = mesh_metrics_series(lat, v3, 1, &s[3])) < 0)
    goto out;
  mesh_metrics_inc(s[0], 7);
  mesh_metrics_set_double(s[2], 2.5);
  mesh_metrics_observe(s[3], 10);
  mesh_metrics_observe(s[3], 1000);
  text = (char *)ctx;
  rc = mesh_metrics_render(reg, &text, &len);
  if (rc < 0) {
    ck_assert_ptr_eq(text, (char *)ctx); /* untouched on failure */
    goto out;
  }
  ck_assert_str_eq(text, linkerd_text);
  ck_assert_uint_eq(len, strlen(linkerd_text));
  mesh_free_string(ctx, text);
out:
  for (int i = 0; i < 4; i++) mesh_metrics_series_unref(s[i]);
  mesh_metrics_free(reg);
  return rc;
}

/* A render large enough for the output buffer to grow several times. */
static int big_render_op(mesh_ctx *ctx, void *arg) {
  mesh_metrics *reg;
  int rc = mesh_metrics_new(ctx, &reg);
  if (rc < 0) return rc;
  mesh_metric_family *lat;
  const char *ll[] = {"authority"};
  if ((rc = mesh_metrics_histogram(reg, "response_latency_ms", NULL, ll, 1, NULL, 0, &lat)) < 0) goto out;
  for (int i = 0; i < 40; i++) {
    char v[64];
    const char *vals[] = {v};
    snprintf(v, sizeof v, "svc-%d.ns.svc.cluster.local:8080", i);
    mesh_metric_series *s;
    if ((rc = mesh_metrics_series(lat, vals, 1, &s)) < 0) goto out;
    mesh_metrics_observe(s, (uint64_t)i * 100);
    mesh_metrics_series_unref(s);
  }
  char *text;
  if ((rc = mesh_metrics_render(reg, &text, NULL)) < 0) goto out;
  ck_assert_uint_gt(strlen(text), 4096 * 8);
  *(size_t *)arg = strlen(text);
  mesh_free_string(ctx, text);
out:
  mesh_metrics_free(reg);
  return rc;
}

START_TEST(allocation_failures) {
  ck_assert_int_gt(test_alloc_failures(build_render_op, NULL), 15);
  size_t len = 0;
  ck_assert_int_gt(test_alloc_failures(big_render_op, &len), 40);
  ck_assert_uint_gt(len, 0);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("metrics");
  TCase *r = tcase_create("render");
  tcase_add_test(r, empty_registry);
  tcase_add_test(r, counters_and_gauges);
  tcase_add_test(r, histograms);
  tcase_add_test(r, default_latency_buckets);
  tcase_add_test(r, escaping);
  tcase_add_test(r, process_collector);
  suite_add_tcase(s, r);
  TCase *v = tcase_create("validate");
  tcase_add_test(v, invalid_names_and_labels);
  tcase_add_test(v, registration_conflicts);
  tcase_add_test(v, invalid_label_values);
  tcase_add_test(v, wrong_types_and_nulls);
  suite_add_tcase(s, v);
  TCase *l = tcase_create("limits");
  tcase_add_test(l, cardinality_limit);
  tcase_add_test(l, removal_and_lifetimes);
  tcase_add_test(l, many_series_lookup);
  tcase_add_test(l, allocation_failures);
  suite_add_tcase(s, l);
  TCase *t = tcase_create("threads");
  tcase_set_timeout(t, 120);
  tcase_add_test(t, threads_sum_exactly);
  tcase_add_test(t, render_while_churning);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return test_main(make_suite()); }
