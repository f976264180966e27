/* Unit tests for ctx and error: hooks, random source, error strings, version. */
#include "testutil.h"

static int fixed_random(void *ud, uint8_t *buf, size_t len) {
  memset(buf, *(int *)ud, len);
  return 0;
}

static char last_line[256];
static int last_level;
static void capture_log(void *ud, int level, const char *line) {
  (void)ud;
  last_level = level;
  snprintf(last_line, sizeof last_line, "%s", line);
}

START_TEST(allocator_hooks_are_used) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  ck_assert_int_eq(a.live, 1);
  mesh_diags *d;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(a.live, 2);
  mesh_diags_free(d);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
  ck_assert_int_eq(a.live, 0);
}
END_TEST

START_TEST(allocator_failure_on_ctx) {
  test_alloc a = {0, 0, 0};
  mesh_ctx *ctx = (mesh_ctx *)&a; /* must stay untouched */
  ck_assert_int_eq(mesh_ctx_new_with_allocator(test_malloc, test_realloc, test_free, &a, &ctx),
                   MESH_ERR_NOMEM);
  ck_assert_ptr_eq(ctx, (mesh_ctx *)&a);
  ck_assert_int_eq(mesh_ctx_new_with_allocator(NULL, test_realloc, test_free, &a, &ctx),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_ctx_new(NULL), MESH_ERR_INVALID);
}
END_TEST

START_TEST(random_source) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  uint8_t a[32] = {0}, b[32] = {0};
  ck_assert_int_eq(mesh_ctx_random(ctx, a, sizeof a), 0);
  ck_assert_int_eq(mesh_ctx_random(ctx, b, sizeof b), 0);
  ck_assert(memcmp(a, b, sizeof a) != 0); /* 2^-256 chance of a false failure */
  int byte = 0x5a;
  ck_assert_int_eq(mesh_ctx_set_random(ctx, fixed_random, &byte), 0);
  ck_assert_int_eq(mesh_ctx_random(ctx, a, sizeof a), 0);
  for (size_t i = 0; i < sizeof a; i++) ck_assert_int_eq(a[i], 0x5a);
  ck_assert_int_eq(mesh_ctx_set_random(ctx, NULL, NULL), 0);
  ck_assert_int_eq(mesh_ctx_random(ctx, a, sizeof a), 0);
  ck_assert_int_eq(mesh_ctx_random(NULL, a, sizeof a), MESH_ERR_INVALID);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(log_hook_filters_by_level) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_ctx_set_log(ctx, MESH_LOG_WARN, capture_log, NULL), 0);
  /* Loading a manifest with a foreign kind logs nothing: libraries report
   * through return values and diagnostics, not logs. */
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  last_line[0] = '\0';
  mesh_manifest *m;
  const char *y = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "x.yaml", y, strlen(y), d, &m), 0);
  ck_assert_str_eq(last_line, "");
  mesh_manifest_free(m);
  mesh_diags_free(d);
  ck_assert_int_eq(mesh_ctx_set_log(NULL, 0, NULL, NULL), MESH_ERR_INVALID);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(error_strings_are_frozen) {
  /* Codes are ABI: these numbers may never change. */
  ck_assert_int_eq(MESH_ERR_NOMEM, -1);
  ck_assert_int_eq(MESH_ERR_PARSE, -3);
  ck_assert_int_eq(MESH_ERR_UNAVAILABLE, -17);
  for (int e = 0; e >= -17; e--) {
    ck_assert_ptr_nonnull(mesh_strerror(e));
    ck_assert_str_ne(mesh_strerror(e), "unknown error");
  }
  ck_assert_str_eq(mesh_strerror(-9999), "unknown error");
  ck_assert_str_eq(mesh_strerror(42), "unknown error");
}
END_TEST

START_TEST(version_matches_header) {
  ck_assert_uint_eq(mesh_version_num(), MESH_VERSION_NUM);
  ck_assert_str_eq(mesh_version_string(), MESH_VERSION_STRING);
  ck_assert(MESH_VERSION_AT_LEAST(0, 0, 1));
  ck_assert(!MESH_VERSION_AT_LEAST(99, 0, 0));
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("ctx");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, allocator_hooks_are_used);
  tcase_add_test(tc, allocator_failure_on_ctx);
  tcase_add_test(tc, random_source);
  tcase_add_test(tc, log_hook_filters_by_level);
  tcase_add_test(tc, error_strings_are_frozen);
  tcase_add_test(tc, version_matches_header);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
