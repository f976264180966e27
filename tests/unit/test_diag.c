/* Unit tests for diag: the bounded diagnostics list and its text form. */
#include "testutil.h"
#include "diag_internal.h"

START_TEST(text_has_compiler_form) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh__diag_add(d, MESH_DIAG_ERROR, "a.yaml", 3, 7, "bad %s", "thing"), 0);
  ck_assert_int_eq(mesh__diag_add(d, MESH_DIAG_WARNING, NULL, 0, 0, "whole input"), 0);
  ck_assert_uint_eq(mesh_diags_count(d), 2);
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  ck_assert_str_eq(mesh_diags_text(d, 0), "a.yaml:3:7: error: bad thing");
  ck_assert_str_eq(mesh_diags_text(d, 1), "<input>: warning: whole input");
  ck_assert_int_eq(mesh_diags_severity(d, 1), MESH_DIAG_WARNING);
  ck_assert_str_eq(mesh_diags_file(d, 0), "a.yaml");
  ck_assert_uint_eq(mesh_diags_line(d, 0), 3);
  ck_assert_uint_eq(mesh_diags_column(d, 0), 7);
  ck_assert_str_eq(mesh_diags_message(d, 0), "bad thing");
  /* Out of range is harmless. */
  ck_assert_int_eq(mesh_diags_severity(d, 2), -1);
  ck_assert_ptr_null(mesh_diags_text(d, 2));
  ck_assert_ptr_null(mesh_diags_file(NULL, 0));
  mesh_diags_clear(d);
  ck_assert_uint_eq(mesh_diags_count(d), 0);
  ck_assert_uint_eq(mesh_diags_errors(d), 0);
  mesh_diags_free(d);
  mesh_diags_free(NULL);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(list_is_bounded) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_diags *d;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  for (int i = 0; i < 10000; i++)
    ck_assert_int_eq(mesh__diag_add(d, MESH_DIAG_ERROR, "f", 1, 1, "error %d", i), 0);
  ck_assert_uint_eq(mesh_diags_count(d), MESH_DIAGS_MAX);
  ck_assert_uint_eq(mesh_diags_errors(d), 10000);
  ck_assert_str_eq(mesh_diags_message(d, MESH_DIAGS_MAX - 1),
                   "9745 more diagnostics not shown");
  long live = a.live;
  ck_assert_int_lt(live, 4 * MESH_DIAGS_MAX + 8); /* memory stays bounded */
  mesh_diags_free(d);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

static int add_some(mesh_ctx *ctx, void *arg) {
  (void)arg;
  mesh_diags *d;
  int rc = mesh_diags_new(ctx, &d);
  if (rc < 0) return rc;
  for (int i = 0; i < 20 && rc == 0; i++)
    rc = mesh__diag_add(d, MESH_DIAG_ERROR, "f.yaml", 1, (uint32_t)i, "problem %d", i);
  if (rc == 0) ck_assert_uint_eq(mesh_diags_count(d), 20);
  mesh_diags_free(d);
  return rc;
}

START_TEST(allocation_failures) {
  ck_assert_int_gt(test_alloc_failures(add_some, NULL), 20);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("diag");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, text_has_compiler_form);
  tcase_add_test(tc, list_is_bounded);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
