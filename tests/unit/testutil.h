/* Shared helpers for the Check unit tests: a counting allocator that can be told to fail. */
#ifndef MESH_TESTUTIL_H
#define MESH_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/mesh.h>

/* The allocator hook tests install: counts live blocks and calls, and fails
 * every call once `fail_after` successful calls have been made (-1: never). */
typedef struct {
  long live;      /* blocks allocated and not yet freed */
  long calls;     /* malloc + realloc calls so far */
  long fail_after;
} test_alloc;

static inline void *test_malloc(void *ud, size_t n) {
  test_alloc *a = ud;
  if (a->fail_after >= 0 && a->calls >= a->fail_after) return NULL;
  a->calls++;
  void *p = malloc(n);
  if (p) a->live++;
  return p;
}

static inline void *test_realloc(void *ud, void *p, size_t n) {
  test_alloc *a = ud;
  if (a->fail_after >= 0 && a->calls >= a->fail_after) return NULL;
  a->calls++;
  void *q = realloc(p, n);
  if (q && !p) a->live++;
  return q;
}

static inline void test_free(void *ud, void *p) {
  test_alloc *a = ud;
  if (p) a->live--;
  free(p);
}

/* A context over the counting allocator. The context itself is one live block. */
static inline mesh_ctx *test_ctx(test_alloc *a) {
  mesh_ctx *ctx = NULL;
  a->live = a->calls = 0;
  a->fail_after = -1;
  ck_assert_int_eq(mesh_ctx_new_with_allocator(test_malloc, test_realloc, test_free, a, &ctx), 0);
  return ctx;
}

/* Runs op(ctx, arg) with allocation failing after 0, 1, 2, ... calls until it
 * succeeds. Every failed run must return MESH_ERR_NOMEM and leave nothing
 * allocated; op must free whatever it made on success. Returns the number of
 * failure points exercised. */
typedef int (*test_op)(mesh_ctx *ctx, void *arg);
static inline long test_alloc_failures(test_op op, void *arg) {
  for (long n = 0;; n++) {
    test_alloc a;
    mesh_ctx *ctx = test_ctx(&a);
    a.calls = 0;
    a.fail_after = n;
    int rc = op(ctx, arg);
    a.fail_after = -1;
    ck_assert_msg(rc == 0 || rc == MESH_ERR_NOMEM, "failure point %ld: rc %d (%s)", n, rc,
                  mesh_strerror(rc));
    ck_assert_msg(a.live == 1, "failure point %ld: %ld blocks leaked", n, a.live - 1);
    mesh_ctx_free(ctx);
    if (rc == 0) return n;
    ck_assert_msg(n < 1000000, "allocation failure loop does not end");
  }
}

/* Read a file under tests/data (MESH_TEST_DATA is set by meson). */
static inline char *test_read_data(const char *rel, size_t *len) {
  const char *dir = getenv("MESH_TEST_DATA");
  ck_assert_msg(dir != NULL, "MESH_TEST_DATA is not set");
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  FILE *f = fopen(path, "rb");
  ck_assert_msg(f != NULL, "cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  ck_assert(buf != NULL);
  ck_assert_int_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* Every test file ends with: int main(void) { return test_main(make_suite()); } */
static inline int test_main(Suite *s) {
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}

#endif
