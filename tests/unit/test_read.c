/* Unit tests for read: Go durations, Kubernetes quantities and the typed field readers. */
#include "testutil.h"

#include "ctx_internal.h"
#include "node_internal.h"

/* ---- durations ---- */

static const struct {
  const char *in;
  uint64_t ns;
} good_durations[] = {
    {"5s", 5000000000ull},
    {"300ms", 300000000ull},
    {"1m30s", 90000000000ull},
    {"1.5h", 5400000000000ull},
    {"500us", 500000ull},
    {"500\xc2\xb5s", 500000ull}, /* micro sign */
    {"500\xce\xbcs", 500000ull}, /* Greek mu */
    {"10ns", 10ull},
    {"0", 0},
    {"+0", 0},
    {"0s", 0},
    {"+5s", 5000000000ull},
    {".5s", 500000000ull},
    {"5.s", 5000000000ull},
    {"2.5s", 2500000000ull},
    {"1h2m3s4ms5us6ns", 3723004005006ull},
    {"0.1h", 360000000000ull},
    {"0.100000000000000000h", 360000000000ull},
    {"0.3s", 300000000ull},
    {"1.000000001s", 1000000001ull},
    {"18446744073709551615ns", 18446744073709551615ull},
    {"5124095h", 18446742000000000000ull},
};

START_TEST(durations_good) {
  for (size_t i = 0; i < sizeof good_durations / sizeof good_durations[0]; i++) {
    const char *in = good_durations[i].in;
    uint64_t ns = 12345;
    const char *why = NULL;
    int rc = mesh__parse_duration_ns(in, strlen(in), &ns, &why);
    ck_assert_msg(rc == 0, "'%s': rc %d (%s)", in, rc, why ? why : "");
    ck_assert_msg(ns == good_durations[i].ns, "'%s': %llu ns, want %llu", in,
                  (unsigned long long)ns, (unsigned long long)good_durations[i].ns);
  }
}
END_TEST

static const struct {
  const char *in;
  int rc;
  const char *why; /* a word the reason must contain */
} bad_durations[] = {
    {"", MESH_ERR_PARSE, "empty"},
    {"5", MESH_ERR_PARSE, "missing unit"},
    {"-1s", MESH_ERR_RANGE, "negative"},
    {"5x", MESH_ERR_PARSE, "unknown unit"},
    {"s", MESH_ERR_PARSE, "number"},
    {".s", MESH_ERR_PARSE, "number"},
    {"+", MESH_ERR_PARSE, "number"},
    {"00", MESH_ERR_PARSE, "missing unit"},
    {"1.5.5s", MESH_ERR_PARSE, "unit"},
    {"5s5", MESH_ERR_PARSE, "missing unit"},
    {"5 s", MESH_ERR_PARSE, "unknown unit"},
    {"1S", MESH_ERR_PARSE, "unknown unit"},
    {"1h-1m", MESH_ERR_PARSE, "number"},
    {"99999999999999999999s", MESH_ERR_RANGE, "too large"},
    {"18446744073709551616ns", MESH_ERR_RANGE, "too large"},
    {"18446744074s", MESH_ERR_RANGE, "too large"},
    {"5124096h", MESH_ERR_RANGE, "too large"},
    {"5000000h5000000h", MESH_ERR_RANGE, "too large"},
};

START_TEST(durations_bad) {
  for (size_t i = 0; i < sizeof bad_durations / sizeof bad_durations[0]; i++) {
    const char *in = bad_durations[i].in;
    uint64_t ns = 777;
    const char *why = NULL;
    int rc = mesh__parse_duration_ns(in, strlen(in), &ns, &why);
    ck_assert_msg(rc == bad_durations[i].rc, "'%s': rc %d, want %d", in, rc, bad_durations[i].rc);
    ck_assert_msg(ns == 777, "'%s': output written on error", in);
    ck_assert_msg(why && strstr(why, bad_durations[i].why), "'%s': reason '%s' lacks '%s'", in,
                  why ? why : "(null)", bad_durations[i].why);
  }
}
END_TEST

START_TEST(duration_length_is_respected) {
  /* Only len bytes are read: "5s" out of "5s0". */
  uint64_t ns = 0;
  const char *why;
  ck_assert_int_eq(mesh__parse_duration_ns("5s0", 2, &ns, &why), 0);
  ck_assert_uint_eq(ns, 5000000000ull);
  ck_assert_int_eq(mesh__parse_duration_ns("5s", 1, &ns, &why), MESH_ERR_PARSE);
}
END_TEST

/* ---- quantities ---- */

static const struct {
  const char *in;
  int64_t milli;
} good_quantities[] = {
    {"1", 1000},
    {"900m", 900},
    {"0.5", 500},
    {"2k", 2000000},
    {"1Ki", 1024000},
    {"1Mi", 1048576000},
    {"1M", 1000000000},
    {"1G", 1000000000000},
    {"1e3", 1000000},
    {"1E3", 1000000},
    {"1e+3", 1000000},
    {"1e-3", 1},
    {"1e0001", 10000},
    {"5e-30", 1},
    {"1.5e-3", 2},
    {"1.5m", 2}, /* rounded up, as Quantity.MilliValue */
    {"1m", 1},
    {"0", 0},
    {"0m", 0},
    {"-1", -1000},
    {"+2", 2000},
    {"-900m", -900},
    {".5", 500},
    {"10000", 10000000},
    {"9223372036854775807m", INT64_MAX},
    {"99.999999999999999999", 100000},
    {"0.0000000000000000001", 1},
    {"0.1234567890123456789", 124},
};

START_TEST(quantities_good) {
  for (size_t i = 0; i < sizeof good_quantities / sizeof good_quantities[0]; i++) {
    const char *in = good_quantities[i].in;
    int64_t v = 12345;
    const char *why = NULL;
    int rc = mesh__parse_quantity_milli(in, strlen(in), &v, &why);
    ck_assert_msg(rc == 0, "'%s': rc %d (%s)", in, rc, why ? why : "");
    ck_assert_msg(v == good_quantities[i].milli, "'%s': %lld, want %lld", in, (long long)v,
                  (long long)good_quantities[i].milli);
  }
}
END_TEST

static const struct {
  const char *in;
  int rc;
} bad_quantities[] = {
    {"", MESH_ERR_PARSE},
    {"m", MESH_ERR_PARSE},
    {"-", MESH_ERR_PARSE},
    {".", MESH_ERR_PARSE},
    {"1x", MESH_ERR_PARSE},
    {"1ki", MESH_ERR_PARSE},
    {"1KI", MESH_ERR_PARSE},
    {"1e", MESH_ERR_PARSE},
    {"1e 3", MESH_ERR_PARSE},
    {"1e3x", MESH_ERR_PARSE},
    {"1e99", MESH_ERR_PARSE},
    {"1e+", MESH_ERR_PARSE},
    {"1e-", MESH_ERR_PARSE},
    {"1e3.5", MESH_ERR_PARSE},
    {"1e31", MESH_ERR_PARSE},
    {"1e99999999999999999999", MESH_ERR_PARSE},
    {"1.2.3", MESH_ERR_PARSE},
    {"--1", MESH_ERR_PARSE},
    {"1 k", MESH_ERR_PARSE},
    {" 1", MESH_ERR_PARSE},
    {"9223372036854775808m", MESH_ERR_RANGE},
    {"99999999999999999999", MESH_ERR_RANGE},
    {"10E", MESH_ERR_RANGE},
    {"8Ei", MESH_ERR_RANGE},
    {"1e30", MESH_ERR_RANGE},
};

START_TEST(quantities_bad) {
  for (size_t i = 0; i < sizeof bad_quantities / sizeof bad_quantities[0]; i++) {
    const char *in = bad_quantities[i].in;
    int64_t v = 777;
    const char *why = NULL;
    int rc = mesh__parse_quantity_milli(in, strlen(in), &v, &why);
    ck_assert_msg(rc == bad_quantities[i].rc, "'%s': rc %d, want %d", in, rc, bad_quantities[i].rc);
    ck_assert_msg(v == 777, "'%s': output written on error", in);
    ck_assert_msg(why && *why, "'%s': no reason", in);
  }
}
END_TEST

START_TEST(quantity_length_is_respected) {
  /* Only len bytes are read, also in the exponent: "1e3" out of "1e35". */
  int64_t v = 0;
  const char *why;
  ck_assert_int_eq(mesh__parse_quantity_milli("1e35", 3, &v, &why), 0);
  ck_assert_int_eq(v, 1000000);
  ck_assert_int_eq(mesh__parse_quantity_milli("2k0", 2, &v, &why), 0);
  ck_assert_int_eq(v, 2000000);
  ck_assert_int_eq(mesh__parse_quantity_milli("1e", 1, &v, &why), 0);
  ck_assert_int_eq(v, 1000);
}
END_TEST

/* ---- readers over small documents ---- */

static mesh_ctx *ctx;
static mesh_diags *diags;
static mesh__node **docs;
static size_t ndocs;
static mesh__reader rd;

static void setup(void) {
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &diags), 0);
  docs = NULL;
  ndocs = 0;
}

static void teardown(void) {
  mesh__node_free_docs(ctx, docs, ndocs);
  mesh_diags_free(diags);
  mesh_ctx_free(ctx);
}

static const mesh__node *load(const char *yaml) {
  ck_assert_int_eq(mesh__node_parse(ctx, "t.yaml", yaml, strlen(yaml), diags, &docs, &ndocs), 0);
  ck_assert_uint_eq(ndocs, 1);
  rd = (mesh__reader){.ctx = ctx, .diags = diags, .file = "t.yaml"};
  return docs[0];
}

/* The last diagnostic: an error (or warning) at line, mentioning text. */
static void expect_diag(int severity, uint32_t line, const char *text) {
  size_t n = mesh_diags_count(diags);
  ck_assert_msg(n > 0, "no diagnostic for '%s'", text);
  const char *msg = mesh_diags_message(diags, n - 1);
  ck_assert_msg(strstr(msg, text) != NULL, "'%s' lacks '%s'", msg, text);
  ck_assert_int_eq(mesh_diags_severity(diags, n - 1), severity);
  ck_assert_msg(mesh_diags_line(diags, n - 1) == line, "'%s' at line %u, want %u", msg,
                mesh_diags_line(diags, n - 1), line);
  ck_assert_str_eq(mesh_diags_file(diags, n - 1), "t.yaml");
}

static const char readers_doc[] = "t: true\n"                 /* 1 */
                                  "f: False\n"                /* 2 */
                                  "q: \"true\"\n"             /* 3 */
                                  "n: 5\n"                    /* 4 */
                                  "neg: -3\n"                 /* 5 */
                                  "big: 99999999999999999999\n" /* 6 */
                                  "frac: 2.5\n"               /* 7 */
                                  "word: abc\n"               /* 8 */
                                  "list: [1]\n"               /* 9 */
                                  "map: {a: 1}\n"             /* 10 */
                                  "empty: \"\"\n"             /* 11 */
                                  "qn: \"5\"\n"               /* 12 */
                                  "nan: .nan\n"               /* 13 */
                                  "hex: 0x10\n"               /* 14 */
                                  "inf: 1e999\n"              /* 15 */
                                  "yes: yes\n"                /* 16 */
                                  "d: 1m30s\n"                /* 17 */
                                  "tiny: 500us\n"             /* 18 */
                                  "qty: 900m\n"               /* 19 */
                                  "nested: {inner: {x: [a, {y: 1}]}}\n"; /* 20 */

START_TEST(read_bool) {
  const mesh__node *m = load(readers_doc);
  bool b = false;
  ck_assert(mesh__read_bool(&rd, m, "t", &b));
  ck_assert(b);
  ck_assert(mesh__read_bool(&rd, m, "f", &b));
  ck_assert(!b);
  b = true;
  ck_assert(mesh__read_bool(&rd, m, "absent", &b)); /* absent: untouched, fine */
  ck_assert(b);
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert(!mesh__read_bool(&rd, m, "q", &b));
  expect_diag(MESH_DIAG_ERROR, 3, "q: expected true or false, found quoted text 'true'");
  ck_assert(!mesh__read_bool(&rd, m, "n", &b));
  expect_diag(MESH_DIAG_ERROR, 4, "expected true or false");
  ck_assert(!mesh__read_bool(&rd, m, "list", &b));
  expect_diag(MESH_DIAG_ERROR, 9, "list: expected true or false, found a list");
  ck_assert(!mesh__read_bool(&rd, m, "yes", &b));
  expect_diag(MESH_DIAG_ERROR, 16, "found a plain value 'yes'");
  ck_assert(b); /* never written on error */
  ck_assert_uint_eq(rd.errors, 4);
}
END_TEST

START_TEST(read_int) {
  const mesh__node *m = load(readers_doc);
  int64_t v = 42;
  ck_assert(mesh__read_int(&rd, m, "n", 0, 10, &v));
  ck_assert_int_eq(v, 5);
  ck_assert(mesh__read_int(&rd, m, "neg", -5, 0, &v));
  ck_assert_int_eq(v, -3);
  ck_assert(mesh__read_int(&rd, m, "absent", 0, 10, &v));
  ck_assert_int_eq(v, -3);
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert(!mesh__read_int(&rd, m, "neg", 0, 10, &v));
  expect_diag(MESH_DIAG_ERROR, 5, "neg must be between 0 and 10, found -3");
  ck_assert(!mesh__read_int(&rd, m, "n", 6, 10, &v));
  expect_diag(MESH_DIAG_ERROR, 4, "between 6 and 10");
  ck_assert(!mesh__read_int(&rd, m, "big", INT64_MIN, INT64_MAX, &v));
  expect_diag(MESH_DIAG_ERROR, 6, "big must be between");
  ck_assert(!mesh__read_int(&rd, m, "frac", 0, 10, &v));
  expect_diag(MESH_DIAG_ERROR, 7, "expected a whole number, found '2.5'");
  ck_assert(!mesh__read_int(&rd, m, "qn", 0, 10, &v));
  expect_diag(MESH_DIAG_ERROR, 12, "expected a whole number, found quoted text '5'");
  ck_assert(!mesh__read_int(&rd, m, "hex", 0, 100, &v));
  expect_diag(MESH_DIAG_ERROR, 14, "found '0x10'");
  ck_assert(!mesh__read_int(&rd, m, "map", 0, 100, &v));
  expect_diag(MESH_DIAG_ERROR, 10, "map: expected a whole number, found a map");
  ck_assert(!mesh__read_int(&rd, m, "empty", 0, 100, &v));
  expect_diag(MESH_DIAG_ERROR, 11, "expected a whole number");
  ck_assert_int_eq(v, -3);
  ck_assert_uint_eq(rd.errors, 8);
}
END_TEST

START_TEST(read_double) {
  const mesh__node *m = load(readers_doc);
  double v = 0;
  ck_assert(mesh__read_double(&rd, m, "frac", 0, 10, &v));
  ck_assert(v == 2.5);
  ck_assert(mesh__read_double(&rd, m, "n", 0, 10, &v));
  ck_assert(v == 5.0);
  ck_assert(mesh__read_double(&rd, m, "absent", 0, 10, &v));
  ck_assert(v == 5.0);
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert(!mesh__read_double(&rd, m, "frac", 0, 1, &v));
  expect_diag(MESH_DIAG_ERROR, 7, "frac must be between 0 and 1, found 2.5");
  ck_assert(!mesh__read_double(&rd, m, "word", 0, 1, &v));
  expect_diag(MESH_DIAG_ERROR, 8, "expected a number, found 'abc'");
  ck_assert(!mesh__read_double(&rd, m, "nan", -1e9, 1e9, &v));
  expect_diag(MESH_DIAG_ERROR, 13, "expected a number");
  ck_assert(!mesh__read_double(&rd, m, "hex", -1e9, 1e9, &v));
  expect_diag(MESH_DIAG_ERROR, 14, "expected a number");
  ck_assert(!mesh__read_double(&rd, m, "inf", -1e9, 1e9, &v));
  expect_diag(MESH_DIAG_ERROR, 15, "expected a number, found '1e999'");
  ck_assert(!mesh__read_double(&rd, m, "qn", 0, 10, &v));
  expect_diag(MESH_DIAG_ERROR, 12, "quoted text");
  ck_assert(v == 5.0);
  ck_assert_uint_eq(rd.errors, 6);
}
END_TEST

START_TEST(read_string_and_types) {
  const mesh__node *m = load(readers_doc);
  const char *s = NULL;
  ck_assert(mesh__read_string(&rd, m, "word", true, &s));
  ck_assert_str_eq(s, "abc");
  ck_assert(mesh__read_string(&rd, m, "empty", false, &s));
  ck_assert_str_eq(s, "");
  ck_assert(mesh__read_string(&rd, m, "absent", false, &s));
  ck_assert_str_eq(s, "");
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert(!mesh__read_string(&rd, m, "absent", true, &s));
  expect_diag(MESH_DIAG_ERROR, 1, "missing required field 'absent'");
  ck_assert(!mesh__read_string(&rd, m, "empty", true, &s));
  expect_diag(MESH_DIAG_ERROR, 11, "empty: 'empty' must not be empty");
  ck_assert(!mesh__read_string(&rd, m, "map", false, &s));
  expect_diag(MESH_DIAG_ERROR, 10, "expected text, found a map");
  /* Paths name nested fields and list items. */
  const mesh__node *x = mesh__node_get(mesh__node_get(mesh__node_get(m, "nested"), "inner"), "x");
  ck_assert(mesh__want_seq(&rd, x));
  ck_assert(!mesh__want_seq(&rd, x->kids[1]));
  expect_diag(MESH_DIAG_ERROR, 20, "nested.inner.x[1]: expected a list, found a map");
  ck_assert(!mesh__want_map(&rd, x->kids[0]));
  expect_diag(MESH_DIAG_ERROR, 20, "nested.inner.x[0]: expected a map, found a plain value");
  ck_assert(!mesh__want_scalar(&rd, x));
  expect_diag(MESH_DIAG_ERROR, 20, "expected a value, found a list");
  ck_assert(!mesh__want_map(&rd, NULL));
  ck_assert_uint_eq(rd.errors, 7);
}
END_TEST

START_TEST(read_duration_and_quantity) {
  const mesh__node *m = load(readers_doc);
  uint64_t ms = 1;
  ck_assert(mesh__read_duration_ms(&rd, m, "d", &ms));
  ck_assert_uint_eq(ms, 90000);
  ck_assert(mesh__read_duration_ms(&rd, m, "tiny", &ms)); /* 500us rounds up to 1 ms */
  ck_assert_uint_eq(ms, 1);
  ck_assert(mesh__read_duration_ms(&rd, m, "absent", &ms));
  ck_assert_uint_eq(ms, 1);
  int64_t q = 0;
  ck_assert(mesh__read_quantity_milli(&rd, m, "qty", &q));
  ck_assert_int_eq(q, 900);
  ck_assert(mesh__read_quantity_milli(&rd, m, "n", &q));
  ck_assert_int_eq(q, 5000);
  ck_assert(mesh__read_quantity_milli(&rd, m, "qn", &q)); /* "5": quantities may be quoted */
  ck_assert_int_eq(q, 5000);
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert(!mesh__read_duration_ms(&rd, m, "n", &ms));
  expect_diag(MESH_DIAG_ERROR, 4, "n: invalid duration '5': missing unit");
  ck_assert(!mesh__read_duration_ms(&rd, m, "list", &ms));
  expect_diag(MESH_DIAG_ERROR, 9, "expected a duration such as 5s or 300ms, found a list");
  ck_assert(!mesh__read_quantity_milli(&rd, m, "word", &q));
  expect_diag(MESH_DIAG_ERROR, 8, "word: invalid quantity 'abc'");
  ck_assert(!mesh__read_quantity_milli(&rd, m, "map", &q));
  expect_diag(MESH_DIAG_ERROR, 10, "expected a quantity");
  ck_assert_uint_eq(ms, 1);
  ck_assert_int_eq(q, 5000);
  ck_assert_uint_eq(rd.errors, 4);
}
END_TEST

START_TEST(check_keys_warns) {
  const mesh__node *m = load("retryRatio: 1\nretryRatoi: 2\nzzz: 3\n");
  static const char *const allowed[] = {"retryRatio", "ttl", NULL};
  mesh__check_keys(&rd, m, allowed);
  ck_assert_uint_eq(rd.errors, 0);
  ck_assert_uint_eq(mesh_diags_count(diags), 2);
  ck_assert_int_eq(mesh_diags_severity(diags, 0), MESH_DIAG_WARNING);
  ck_assert_uint_eq(mesh_diags_line(diags, 0), 2);
  ck_assert_ptr_nonnull(strstr(mesh_diags_message(diags, 0),
                               "unknown field 'retryRatoi' is ignored (did you mean 'retryRatio'?)"));
  ck_assert_uint_eq(mesh_diags_line(diags, 1), 3);
  ck_assert_ptr_nonnull(strstr(mesh_diags_message(diags, 1), "unknown field 'zzz' is ignored"));
  ck_assert_ptr_null(strstr(mesh_diags_message(diags, 1), "did you mean"));
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("read");
  TCase *tc = tcase_create("parsers");
  tcase_add_test(tc, durations_good);
  tcase_add_test(tc, durations_bad);
  tcase_add_test(tc, duration_length_is_respected);
  tcase_add_test(tc, quantities_good);
  tcase_add_test(tc, quantities_bad);
  tcase_add_test(tc, quantity_length_is_respected);
  suite_add_tcase(s, tc);
  tc = tcase_create("readers");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, read_bool);
  tcase_add_test(tc, read_int);
  tcase_add_test(tc, read_double);
  tcase_add_test(tc, read_string_and_types);
  tcase_add_test(tc, read_duration_and_quantity);
  tcase_add_test(tc, check_keys_warns);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
