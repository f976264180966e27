/* Unit tests for mesh-viz's parser of the Prometheus text format and its window arithmetic (increase across resets, histogram_quantile, durations). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "viz.h"

/* ---- The parser ----------------------------------------------------------- */

typedef struct {
  char lines[16][512]; /* name{k=v,...} value, as the callback saw them */
  size_t n;
  int stop_at; /* the callback refuses this sample (-1: none) */
} seen;

static bool collect(void *ud, const char *name, const viz_label *labels, size_t nl, double value,
                    char *why, size_t size) {
  seen *s = ud;
  if ((int)s->n == s->stop_at) {
    snprintf(why, size, "refused by the callback");
    return false;
  }
  ck_assert_uint_lt(s->n, 16);
  char *p = s->lines[s->n++];
  size_t left = sizeof s->lines[0];
  int k = snprintf(p, left, "%s{", name);
  for (size_t i = 0; i < nl; i++)
    k += snprintf(p + k, left - (size_t)k, "%s%s=%s", i ? "," : "", labels[i].name, labels[i].value);
  snprintf(p + k, left - (size_t)k, "} %g", value);
  return true;
}

static int parse(const char *text, seen *s, char *why, size_t size) {
  memset(s, 0, sizeof *s);
  s->stop_at = -1;
  return viz_prom_parse(text, strlen(text), collect, s, why, size);
}

START_TEST(parse_meshd_exposition) {
  /* What meshd serves: HELP/TYPE, histogram buckets with +Inf, empty values,
   * escapes; plus what other exporters write: CRLF, timestamps, NaN, spaces. */
  const char *text =
      "# HELP request_total Total HTTP requests\n"
      "# TYPE request_total counter\n"
      "request_total{direction=\"outbound\",authority=\"web:80\",tls=\"true\",client_id=\"\"} 9\n"
      "response_latency_ms_bucket{direction=\"inbound\",le=\"+Inf\"} 12\r\n"
      "\n"
      "   \n"
      "process_start_time_seconds 1795664943.2 1700000000000\n"
      "weird{path=\"a \\\"quoted\\\" \\\\ and\\nnewline\"} NaN\n"
      "spaced { a = \"1\" , b=\"2\", } -Inf\n"
      "# a comment that is not HELP or TYPE\n"
      "big 1.5e+03";
  seen s;
  char why[256] = "";
  ck_assert_msg(parse(text, &s, why, sizeof why) == 0, "%s", why);
  ck_assert_uint_eq(s.n, 6);
  ck_assert_str_eq(s.lines[0], "request_total{direction=outbound,authority=web:80,tls=true,client_id=} 9");
  ck_assert_str_eq(s.lines[1], "response_latency_ms_bucket{direction=inbound,le=+Inf} 12");
  ck_assert_str_eq(s.lines[2], "process_start_time_seconds{} 1.79566e+09");
  ck_assert_str_eq(s.lines[3], "weird{path=a \"quoted\" \\ and\nnewline} nan");
  ck_assert_str_eq(s.lines[4], "spaced{a=1,b=2} -inf");
  ck_assert_str_eq(s.lines[5], "big{} 1500");
}
END_TEST

START_TEST(parse_refuses_bad_lines) {
  static const struct {
    const char *text, *why;
  } cases[] = {
      {"ok 1\nx{a=\"1} 2\n", "line 2: label a: unterminated value"},
      {"x{a=\"\\t\"} 1", "line 1: label a: unknown escape \\t"},
      {"x{a=1} 1", "line 1: expected =\" after label a"},
      {"x{a=\"1\" b=\"2\"} 1", "line 1: expected ',' or '}' after label a"},
      {"x{=\"1\"} 1", "line 1: expected a label name at column 3"},
      {"x 1 2 3", "line 1: unexpected text after the value"},
      {"x one", "line 1: bad value 'one'"},
      {"x 0x10", "line 1: bad value '0x10'"},
      {"x infinity", "line 1: bad value 'infinity'"},
      {"x", "line 1: bad value ''"},
      {"9x 1", "line 1: a metric name must start with a letter, '_' or ':'"},
      {"x 1e999", "line 1: bad value '1e999'"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    seen s;
    char why[256] = "";
    ck_assert_msg(parse(cases[i].text, &s, why, sizeof why) == -1, "accepted: %s", cases[i].text);
    ck_assert_str_eq(why, cases[i].why);
  }
  /* A NUL inside a line (the length, not the terminator, ends the text). */
  seen s;
  char why[256] = "";
  memset(&s, 0, sizeof s);
  s.stop_at = -1;
  ck_assert_int_eq(viz_prom_parse("x 1\ny\0 2\n", 9, collect, &s, why, sizeof why), -1);
  ck_assert_str_eq(why, "line 2: a NUL byte");
}
END_TEST

START_TEST(parse_bounds) {
  char why[256] = "";
  seen s;
  /* VIZ_PROM_MAX_LABELS labels pass; one more does not. */
  char *text = malloc(VIZ_PROM_MAX_LINE + 64);
  ck_assert_ptr_nonnull(text);
  for (unsigned extra = 0; extra < 2; extra++) {
    int n = snprintf(text, 64, "x{");
    for (unsigned i = 0; i < VIZ_PROM_MAX_LABELS + extra; i++) n += sprintf(text + n, "l%u=\"v\",", i);
    strcpy(text + n, "} 1");
    int rc = parse(text, &s, why, sizeof why);
    ck_assert_int_eq(rc, extra ? -1 : 0);
    if (extra) ck_assert_str_eq(why, "line 1: more than 32 labels");
  }
  /* A label value of VIZ_PROM_MAX_VALUE bytes passes; one more does not. */
  for (unsigned extra = 0; extra < 2; extra++) {
    int n = sprintf(text, "x{a=\"");
    memset(text + n, 'v', VIZ_PROM_MAX_VALUE + extra);
    strcpy(text + n + VIZ_PROM_MAX_VALUE + extra, "\"} 1");
    ck_assert_int_eq(parse(text, &s, why, sizeof why), extra ? -1 : 0);
    if (extra) ck_assert_str_eq(why, "line 1: label a: value longer than 1024 bytes");
  }
  /* A line longer than VIZ_PROM_MAX_LINE. */
  memset(text, 'x', VIZ_PROM_MAX_LINE + 1);
  strcpy(text + VIZ_PROM_MAX_LINE + 1, " 1");
  ck_assert_int_eq(parse(text, &s, why, sizeof why), -1);
  ck_assert_str_eq(why, "line 1: longer than 65536 bytes");
  /* A metric name longer than VIZ_PROM_MAX_NAME. */
  memset(text, 'x', VIZ_PROM_MAX_NAME + 1);
  strcpy(text + VIZ_PROM_MAX_NAME + 1, " 1");
  ck_assert_int_eq(parse(text, &s, why, sizeof why), -1);
  ck_assert_str_eq(why, "line 1: a metric name longer than 256 bytes");
  free(text);
}
END_TEST

START_TEST(parse_callback_stops) {
  seen s;
  char why[256] = "";
  memset(&s, 0, sizeof s);
  s.stop_at = 1;
  const char *text = "a 1\n# c\nb 2\nc 3\n";
  ck_assert_int_eq(viz_prom_parse(text, strlen(text), collect, &s, why, sizeof why), -1);
  ck_assert_str_eq(why, "line 3: refused by the callback");
  ck_assert_uint_eq(s.n, 1);
}
END_TEST

/* ---- Counters ------------------------------------------------------------- */

START_TEST(increase_plain_and_resets) {
  const double plain[] = {10, 15, 15, 20};
  ck_assert_double_eq(viz_increase(plain, 4), 10);
  /* 100 -> 120 (+20), restart: 5 (+5), 10 (+5). */
  const double reset[] = {100, 120, 5, 10};
  ck_assert_double_eq(viz_increase(reset, 4), 30);
  /* A reset to exactly 0 then growth. */
  const double zero[] = {7, 0, 3};
  ck_assert_double_eq(viz_increase(zero, 3), 3);
  /* Born inside the window: from 0. */
  const double born[] = {NAN, 3, 7};
  ck_assert_double_eq(viz_increase(born, 3), 7);
  /* Absent from a sample (a failed scrape, or a restarted proxy that has not
   * made the series yet): the next present value carries on from the last. */
  const double gap[] = {5, NAN, 8};
  ck_assert_double_eq(viz_increase(gap, 3), 3);
  const double gap_reset[] = {50, NAN, 4};
  ck_assert_double_eq(viz_increase(gap_reset, 3), 4);
  /* A restart the values cannot show (14 before, 30 after): the start time
   * changed, so 30 counts whole. Without it only the rise (16) would. */
  viz_counter c;
  viz_counter_begin(&c, 10);
  viz_counter_step(&c, 14);
  viz_counter_restart(&c);
  viz_counter_step(&c, 30);
  ck_assert_double_eq(c.sum, 4 + 30);
  viz_counter_begin(&c, 10);
  viz_counter_restart(&c);
  viz_counter_step(&c, NAN); /* the fresh proxy has not made the series yet */
  viz_counter_step(&c, 2);
  ck_assert_double_eq(c.sum, 2);
  const double none[] = {NAN, NAN};
  ck_assert_double_eq(viz_increase(none, 2), 0);
  ck_assert_double_eq(viz_increase(plain, 1), 0);
  ck_assert_double_eq(viz_increase(NULL, 0), 0);
}
END_TEST

/* ---- Quantiles -------------------------------------------------------------- */

START_TEST(quantiles_as_prometheus) {
  const double les[] = {1, 2, 5, INFINITY};
  const double c[] = {10, 20, 30, 30};
  /* rank 15 in (1, 2]: 1 + 1 * 5/10 */
  ck_assert_double_eq_tol(viz_histogram_quantile(0.5, les, c, 4), 1.5, 1e-12);
  /* rank 29.7 in (2, 5]: 2 + 3 * 9.7/10 */
  ck_assert_double_eq_tol(viz_histogram_quantile(0.99, les, c, 4), 4.91, 1e-12);
  ck_assert_double_eq_tol(viz_histogram_quantile(1, les, c, 4), 5, 1e-12);
  /* rank 5 in the first bucket, which starts at 0 */
  ck_assert_double_eq_tol(viz_histogram_quantile(0.1 / 0.6, les, c, 4), 0.5, 1e-12);
  ck_assert_double_eq_tol(viz_histogram_quantile(0, les, c, 4), 0, 1e-12);
  /* A rank in the +Inf bucket: the highest finite bound. */
  const double tail[] = {10, 20, 30, 40};
  ck_assert_double_eq(viz_histogram_quantile(0.9, les, tail, 4), 5);
  /* Cumulative counts that dip (deltas across a reset) are made monotonic. */
  const double dip[] = {10, 8, 20, 20};
  ck_assert_double_eq_tol(viz_histogram_quantile(0.5, les, dip, 4), 1, 1e-12);
  /* No observations, no +Inf bucket, too few buckets, q out of range. */
  const double empty[] = {0, 0, 0, 0};
  ck_assert(isnan(viz_histogram_quantile(0.5, les, empty, 4)));
  const double finite[] = {1, 2, 5, 10};
  ck_assert(isnan(viz_histogram_quantile(0.5, finite, c, 4)));
  ck_assert(isnan(viz_histogram_quantile(0.5, les + 3, c + 3, 1)));
  ck_assert(isnan(viz_histogram_quantile(NAN, les, c, 4)));
  ck_assert(isinf(viz_histogram_quantile(-0.1, les, c, 4)) && viz_histogram_quantile(-0.1, les, c, 4) < 0);
  ck_assert(isinf(viz_histogram_quantile(1.1, les, c, 4)) && viz_histogram_quantile(1.1, les, c, 4) > 0);
  /* Linkerd's first bounds: everything under 1 ms. */
  const double ll[] = {1, 2, 3, INFINITY}, lc[] = {90, 90, 90, 90};
  ck_assert_double_eq_tol(viz_histogram_quantile(0.99, ll, lc, 4), 0.99, 1e-12);
}
END_TEST

/* ---- Durations -------------------------------------------------------------- */

START_TEST(durations) {
  uint64_t ms = 0;
  static const struct {
    const char *s;
    uint64_t ms;
  } good[] = {{"10s", 10000}, {"1m", 60000}, {"1h30m", 5400000}, {"500ms", 500}, {"30", 30000},
              {"1m30s", 90000}, {"0s", 0}};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    ck_assert_msg(viz_parse_duration(good[i].s, 86400000, &ms), "refused %s", good[i].s);
    ck_assert_uint_eq(ms, good[i].ms);
  }
  static const char *const bad[] = {"", "1x", "-1s", "m", "1.5m", "10s ", "s10", "99999999999999999999s", "+5", " 5"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(!viz_parse_duration(bad[i], 86400000, &ms), "accepted '%s'", bad[i]);
  ck_assert(!viz_parse_duration(NULL, 86400000, &ms));
  /* The maximum is inclusive. */
  ck_assert(viz_parse_duration("1h", 3600000, &ms));
  ck_assert(!viz_parse_duration("1h1ms", 3600000, &ms));
  ck_assert(!viz_parse_duration("3601", 3600000, &ms));
}
END_TEST

int main(void) {
  Suite *s = suite_create("viz");
  TCase *tc = tcase_create("viz");
  tcase_add_test(tc, parse_meshd_exposition);
  tcase_add_test(tc, parse_refuses_bad_lines);
  tcase_add_test(tc, parse_bounds);
  tcase_add_test(tc, parse_callback_stops);
  tcase_add_test(tc, increase_plain_and_resets);
  tcase_add_test(tc, quantiles_as_prometheus);
  tcase_add_test(tc, durations);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
