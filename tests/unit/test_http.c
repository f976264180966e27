/* Unit tests: the http module's shared parts: protocol detection and heads. */
#include <check.h>
#include <string.h>

#include <mesh/mesh.h>

#include "http_internal.h"
#include "testutil.h"

static int det(const char *s) { return mh_detect((const uint8_t *)s, strlen(s)); }

START_TEST(detect_protocols) {
  ck_assert_int_eq(det("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), MH_DETECT_H2);
  ck_assert_int_eq(det("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), MH_DETECT_H2);
  ck_assert_int_eq(det("GET / HTTP/1.1\r\n"), MH_DETECT_H1);
  ck_assert_int_eq(det("GET / HTTP/1.0\r\n"), MH_DETECT_H1);
  ck_assert_int_eq(det("OPTIONS * HTTP/1.1\r\n"), MH_DETECT_H1);
  ck_assert_int_eq(det("CONNECT a:443 HTTP/1.1\r\n"), MH_DETECT_H1);
  ck_assert_int_eq(det("GET http://web:80/x?y HTTP/1.1\r\n"), MH_DETECT_H1);
  /* Prefixes of both stay undecided. */
  const char *pre = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  for (size_t i = 0; i < strlen(pre); i++)
    ck_assert_int_eq(mh_detect((const uint8_t *)pre, i), MH_DETECT_MORE);
  const char *get = "GET /index.html HTTP/1.";
  for (size_t i = 0; i < strlen(get); i++)
    ck_assert_int_eq(mh_detect((const uint8_t *)get, i), MH_DETECT_MORE);
  /* Anything else is opaque as soon as it cannot be HTTP. */
  ck_assert_int_eq(det("\x16\x03\x01\x02\x00"), MH_DETECT_OPAQUE); /* a TLS ClientHello */
  ck_assert_int_eq(det("SSH-2.0-OpenSSH_9.2\r\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det("hello\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det("GET / HTTP/2.0\r\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det("GET  / HTTP/1.1\r\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det(" GET / HTTP/1.1\r\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det("PRX"), MH_DETECT_MORE); /* could be a method */
  ck_assert_int_eq(det("PRX\r\n"), MH_DETECT_OPAQUE);
  ck_assert_int_eq(det("ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n"), MH_DETECT_OPAQUE);
  /* A target that fills the 1 KiB detection window is opaque, not pending. */
  char big[MH_DETECT_MAX_BYTES + 8] = "GET /";
  memset(big + 5, 'a', sizeof big - 6);
  big[sizeof big - 1] = 0;
  ck_assert_int_eq(mh_detect((const uint8_t *)big, MH_DETECT_MAX_BYTES), MH_DETECT_OPAQUE);
  ck_assert_int_eq(mh_detect((const uint8_t *)big, 100), MH_DETECT_MORE);
}
END_TEST

START_TEST(heads) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mh_head h, c;
  mh_head_init(&h);
  mh_head_init(&c);
  ck_assert_int_eq(h.content_length, -1);
  ck_assert_int_eq(mh_head_add(ctx, &h, "Content-Type", "text/plain"), 0);
  ck_assert_int_eq(mh_head_addn(ctx, &h, "X-A", 3, "1xx", 1), 0);
  ck_assert_int_eq(mh_head_add(ctx, &h, "x-a", "2"), 0);
  ck_assert_int_eq(mh_head_setstr(ctx, &h, &h.path, "/p"), 0);
  ck_assert_str_eq(h.fields[0].name, "content-type"); /* lowercased */
  ck_assert_str_eq(mh_head_get(&h, "CONTENT-TYPE"), "text/plain");
  ck_assert_str_eq(mh_head_get(&h, "x-a"), "1");
  ck_assert_ptr_null(mh_head_get(&h, "x-b"));
  ck_assert_int_eq(mh_head_copy(ctx, &c, &h), 0);
  ck_assert_uint_eq(mh_head_del(ctx, &h, "X-A"), 2);
  ck_assert_uint_eq(h.n, 1);
  ck_assert_int_eq(mh_head_set(ctx, &h, "content-type", "a/b"), 0);
  ck_assert_uint_eq(h.n, 1);
  ck_assert_str_eq(mh_head_get(&h, "content-type"), "a/b");
  /* The copy is independent. */
  ck_assert_uint_eq(c.n, 3);
  ck_assert_str_eq(c.path, "/p");
  ck_assert_str_eq(mh_head_get(&c, "content-type"), "text/plain");
  for (int i = 0; i < 100; i++) ck_assert_int_eq(mh_head_add(ctx, &c, "x-many", "v"), 0);
  ck_assert_uint_eq(c.n, 103);
  mh_head_clear(&h);
  mh_head_clear(&c);
  ck_assert_int_eq(a.live, 1); /* only the context */
  ck_assert_uint_eq(h.n, 0);
  ck_assert_ptr_null(h.path);
  ck_assert(mh__hop_by_hop("Connection", 10));
  ck_assert(mh__hop_by_hop("transfer-encoding", 17));
  ck_assert(mh__hop_by_hop("TE", 2));
  ck_assert(!mh__hop_by_hop("trailer", 7));
  ck_assert(!mh__hop_by_hop("content-type", 12));
  mesh_ctx_free(ctx);
}
END_TEST

/* Allocation failures leave a head that clears cleanly. */
static int build_head(mesh_ctx *ctx, void *arg) {
  (void)arg;
  mh_head h, c;
  mh_head_init(&h);
  mh_head_init(&c);
  int rc = 0;
  for (int i = 0; i < 20 && !rc; i++) rc = mh_head_add(ctx, &h, "x-field", "value");
  if (!rc) rc = mh_head_setstr(ctx, &h, &h.method, "GET");
  if (!rc) rc = mh_head_copy(ctx, &c, &h);
  mh_head_clear(&h);
  mh_head_clear(&c);
  return rc;
}

START_TEST(heads_nomem) { ck_assert_int_gt(test_alloc_failures(build_head, NULL), 20); }
END_TEST

int main(void) {
  Suite *s = suite_create("http");
  TCase *tc = tcase_create("core");
  tcase_add_test(tc, detect_protocols);
  tcase_add_test(tc, heads);
  tcase_add_test(tc, heads_nomem);
  suite_add_tcase(s, tc);
  return test_main(s);
}
