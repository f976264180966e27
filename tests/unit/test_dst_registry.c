/* Unit tests for mesh-destination's workload registrations: a Register body checked as a Workload manifest, and registrations merged into a directory store's snapshot (mesh_store_set_extra). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mesh/mesh.h>

#include "registry.h"

static mesh_ctx *ctx;

static void setup(void) { ck_assert_int_eq(mesh_ctx_new(&ctx), 0); }
static void teardown(void) { mesh_ctx_free(ctx); }

/* rc of parsing body; why and the registration kept for the caller's checks. */
static char why[600];
static dst_registration reg;
static int parse(const char *body) {
  why[0] = 0;
  dst_registration_clear(&reg);
  return dst_registration_parse(ctx, NULL, body, strlen(body), NULL, &reg, why, sizeof why);
}

START_TEST(valid_registration) {
  ck_assert_int_eq(parse("{\"namespace\":\"shop\",\"name\":\"web-1\",\"labels\":{\"app\":\"web\"},"
                         "\"serviceAccount\":\"web\",\"address\":\"127.0.0.2\","
                         "\"ports\":[{\"name\":\"http\",\"port\":8080}],\"proxyPort\":4143,"
                         "\"adminPort\":4191,\"lease_seconds\":10}"),
                   0);
  ck_assert_str_eq(reg.ns, "shop");
  ck_assert_str_eq(reg.name, "web-1");
  ck_assert_str_eq(reg.sa, "web");
  ck_assert_uint_eq(reg.lease_s, 10);
  /* The manifest loads as a Workload of that namespace and name. */
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  ck_assert_int_eq(mesh_snapshot_builder_add(b, "r", reg.manifest, reg.len, NULL), 0);
  ck_assert_int_eq(mesh_snapshot_builder_finish(b, NULL, &s), 0);
  ck_assert_uint_eq(mesh_snapshot_count(s), 1);
  ck_assert_int_eq(mesh_snapshot_kind(s, 0), MESH_KIND_WORKLOAD);
  ck_assert_str_eq(mesh_snapshot_namespace(s, 0), "shop");
  ck_assert_str_eq(mesh_snapshot_name(s, 0), "web-1");
  mesh_snapshot_unref(s);
  dst_registration_clear(&reg);
}
END_TEST

START_TEST(defaults) {
  ck_assert_int_eq(parse("{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\"}"), 0);
  ck_assert_str_eq(reg.sa, "default");
  ck_assert_uint_eq(reg.lease_s, DST_LEASE_DEFAULT_S);
  dst_registration_clear(&reg);
}
END_TEST

/* Each bad body is refused with a reason naming the field. */
START_TEST(invalid_registrations) {
  static const struct {
    const char *body, *why;
  } bad[] = {
      {"[]", "expected a JSON object"},
      {"{\"name\":\"w\",\"address\":\"10.0.0.5\"}", "namespace: is required"},
      {"{\"namespace\":\"default\",\"address\":\"10.0.0.5\"}", "name: is required"},
      {"{\"namespace\":\"default\",\"name\":\"w\"}", "address: is required"},
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\",\"lease_seconds\":1}",
       "lease_seconds: an integer from 3 to 300"},
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\",\"lease_seconds\":301}",
       "lease_seconds"},
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\",\"leaseSeconds\":30}",
       "unknown field \"leaseSeconds\""},
      /* The Workload checks are the manifest parser's. */
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"not-an-ip\"}",
       "registration default/w"},
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\",\"proxyPort\":70000}",
       "registration default/w"},
      {"{\"namespace\":\"Bad_NS\",\"name\":\"w\",\"address\":\"10.0.0.5\"}",
       "registration Bad_NS/w"},
      {"{\"namespace\":\"default\",\"name\":\"w\",\"address\":\"10.0.0.5\",\"serviceAccount\":\"a "
       "b\"}",
       "registration default/w"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    int rc = parse(bad[i].body);
    ck_assert_msg(rc == MESH_ERR_PARSE, "%s: rc %d", bad[i].body, rc);
    ck_assert_msg(strstr(why, bad[i].why), "%s: why '%s' lacks '%s'", bad[i].body, why, bad[i].why);
    ck_assert_ptr_null(reg.manifest);
  }
}
END_TEST

/* A directory store serves extra manifests as if they were more files,
 * and a new set replaces the last. */
START_TEST(store_extra) {
  char dir[] = "/tmp/test_dst_registry.XXXXXX";
  ck_assert_ptr_nonnull(mkdtemp(dir));
  char path[300];
  snprintf(path, sizeof path, "%s/web.yaml", dir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  fputs(
      "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: web, namespace: "
      "default}\n"
      "spec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
      f);
  fclose(f);
  mesh_store_opts *so = NULL;
  mesh_store *st = NULL;
  ck_assert_int_eq(mesh_store_opts_new(ctx, &so), 0);
  ck_assert_int_eq(mesh_store_opts_set_dir(so, dir), 0);
  ck_assert_int_eq(mesh_store_new(ctx, so, NULL, &st), 0);

  ck_assert_int_eq(
      parse("{\"namespace\":\"default\",\"name\":\"web-1\",\"labels\":{\"app\":\"web\"},"
            "\"address\":\"127.0.0.2\"}"),
      0);
  const char *src = "registration default/web-1", *buf = reg.manifest;
  size_t len = reg.len;
  ck_assert_int_eq(mesh_store_set_extra(st, 1, &src, &buf, &len), 0);
  mesh_snapshot *s = mesh_store_snapshot(st);
  mesh_resolution *r = NULL;
  ck_assert_int_eq(mesh_snapshot_resolve(s, "web.default.svc.cluster.local:80", NULL, &r), 0);
  ck_assert_uint_eq(mesh_resolution_count(r), 1);
  ck_assert_str_eq(mesh_resolution_addr(r, 0), "127.0.0.2:4143");
  ck_assert_str_eq(mesh_resolution_pod(r, 0), "web-1");
  mesh_resolution_free(r);
  mesh_snapshot_unref(s);

  /* The same Workload twice (a manifest and a registration) is refused,
   * and the error names both. */
  const char *srcs[2] = {src, "registration again"}, *bufs[2] = {buf, buf};
  size_t lens[2] = {len, len};
  ck_assert_int_eq(mesh_store_set_extra(st, 2, srcs, bufs, lens), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(mesh_store_last_error(st), "registration"));

  /* None left: no endpoints. */
  ck_assert_int_eq(mesh_store_set_extra(st, 0, NULL, NULL, NULL), 0);
  s = mesh_store_snapshot(st);
  ck_assert_int_eq(mesh_snapshot_resolve(s, "web.default.svc.cluster.local:80", NULL, &r), 0);
  ck_assert_uint_eq(mesh_resolution_count(r), 0);
  mesh_resolution_free(r);
  mesh_snapshot_unref(s);

  /* A fed store does not take them. */
  mesh_store *fed = NULL;
  ck_assert_int_eq(mesh_store_new_fed(ctx, so, "fed", &fed), 0);
  ck_assert_int_eq(mesh_store_set_extra(fed, 1, &src, &buf, &len), MESH_ERR_INVALID);
  mesh_store_free(fed);

  dst_registration_clear(&reg);
  mesh_store_free(st);
  mesh_store_opts_free(so);
  unlink(path);
  rmdir(dir);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("dst_registry");
  TCase *tc = tcase_create("registry");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, valid_registration);
  tcase_add_test(tc, defaults);
  tcase_add_test(tc, invalid_registrations);
  tcase_add_test(tc, store_extra);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
