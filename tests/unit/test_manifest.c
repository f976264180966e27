/* Unit tests for manifest (and the document tree under it): dispatch, positions, limits. */
#include <dirent.h>

#include "testutil.h"

static mesh_ctx *ctx;
static mesh_diags *diags;

static void setup(void) {
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &diags), 0);
}

static void teardown(void) {
  mesh_diags_free(diags);
  mesh_ctx_free(ctx);
}

static int load(const char *text, mesh_manifest **m) {
  mesh_diags_clear(diags);
  return mesh_manifest_load_buffer(ctx, "t.yaml", text, strlen(text), diags, m);
}

/* True when some diagnostic's text contains needle. */
static int has_diag(const char *needle) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    if (strstr(mesh_diags_text(diags, i), needle)) return 1;
  return 0;
}

static void dump_diags(void) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++) fprintf(stderr, "  %s\n", mesh_diags_text(diags, i));
}

#define ASSERT_DIAG(needle) ck_assert_msg(has_diag(needle), "no diagnostic containing '%s'", needle)

START_TEST(seed_manifests_load) {
  static const struct {
    const char *file;
    size_t docs;
    int first_kind;
  } seed[] = {
      {"seed/exam-api-profile.yaml", 1, MESH_KIND_SERVICE_PROFILE},
      {"seed/user-service-profile.yaml", 1, MESH_KIND_SERVICE_PROFILE},
      {"seed/traffic-splits.yaml", 2, MESH_KIND_TRAFFIC_SPLIT},
      {"seed/exam-api-policy.yaml", 3, MESH_KIND_SERVER},
      {"seed/prometheus.yaml", 2, MESH_KIND_OTHER},
  };
  for (size_t i = 0; i < sizeof seed / sizeof seed[0]; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", getenv("MESH_TEST_DATA"), seed[i].file);
    mesh_manifest *m = NULL;
    mesh_diags_clear(diags);
    int rc = mesh_manifest_load_file(ctx, path, diags, &m);
    if (rc) dump_diags();
    ck_assert_msg(rc == 0, "%s: %s", seed[i].file, mesh_strerror(rc));
    ck_assert_uint_eq(mesh_diags_errors(diags), 0);
    ck_assert_uint_eq(mesh_manifest_count(m), seed[i].docs);
    ck_assert_int_eq(mesh_manifest_kind(m, 0), seed[i].first_kind);
    mesh_manifest_free(m);
  }
}
END_TEST

START_TEST(seed_policy_kinds_and_warning) {
  size_t len;
  char *text = test_read_data("seed/exam-api-policy.yaml", &len);
  mesh_manifest *m;
  mesh_diags_clear(diags);
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "policy.yaml", text, len, diags, &m), 0);
  ck_assert_int_eq(mesh_manifest_kind(m, 0), MESH_KIND_SERVER);
  ck_assert_int_eq(mesh_manifest_kind(m, 1), MESH_KIND_SERVER_AUTHORIZATION);
  ck_assert_int_eq(mesh_manifest_kind(m, 2), MESH_KIND_HTTP_ROUTE);
  ck_assert_str_eq(mesh_manifest_kind_name(m, 2), "HttpRoute");
  ck_assert_str_eq(mesh_manifest_name(m, 0), "exam-api-server");
  ck_assert_str_eq(mesh_manifest_namespace(m, 0), "production");
  ck_assert_str_eq(mesh_manifest_api_version(m, 0), "policy.linkerd.io/v1beta1");
  ck_assert_uint_eq(mesh_manifest_line(m, 0), 2);
  /* The seed spells HTTPRoute as HttpRoute: loaded, with the canonical form named. */
  ASSERT_DIAG("warning: kind: 'HttpRoute' is spelled 'HTTPRoute' in policy.linkerd.io; loading it as HTTPRoute");
  ck_assert_ptr_null(mesh_manifest_profile(m, 0));
  ck_assert_ptr_null(mesh_manifest_split(m, 0));
  mesh_manifest_free(m);
  free(text);
}
END_TEST

START_TEST(foreign_kinds_are_kept_and_ignored) {
  mesh_manifest *m;
  ck_assert_int_eq(load("apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\n"
                        "metadata: {name: x}\nspec: {}\n---\napiVersion: v1\nkind: ConfigMap\n"
                        "metadata: {name: y}\n", &m), 0);
  ck_assert_uint_eq(mesh_manifest_count(m), 2);
  ck_assert_int_eq(mesh_manifest_kind(m, 0), MESH_KIND_OTHER);
  ASSERT_DIAG("t.yaml:2:7: warning: kind: monitoring.coreos.com/v1 ServiceMonitor is not a mesh resource; ignored");
  mesh_manifest_free(m);
}
END_TEST

START_TEST(empty_documents_are_skipped) {
  mesh_manifest *m;
  ck_assert_int_eq(load("---\n---\n# only a comment\n---\n", &m), 0);
  ck_assert_uint_eq(mesh_manifest_count(m), 0);
  mesh_manifest_free(m);
  ck_assert_int_eq(load("", &m), 0);
  ck_assert_uint_eq(mesh_manifest_count(m), 0);
  mesh_manifest_free(m);
}
END_TEST

START_TEST(yaml_syntax_error_has_position) {
  mesh_manifest *m = (mesh_manifest *)0x1;
  ck_assert_int_eq(load("apiVersion: linkerd.io/v1alpha2\nkind: [ServiceProfile\nmetadata: {}\n", &m),
                   MESH_ERR_PARSE);
  ck_assert_ptr_eq(m, (mesh_manifest *)0x1); /* untouched on failure */
  ck_assert_uint_eq(mesh_diags_errors(diags), 1);
  ck_assert_str_eq(mesh_diags_file(diags, 0), "t.yaml");
  ck_assert_uint_gt(mesh_diags_line(diags, 0), 1);
  ASSERT_DIAG("YAML syntax error");
}
END_TEST

START_TEST(json_is_checked_strictly) {
  mesh_manifest *m;
  const char *good = "{\"apiVersion\": \"split.smi-spec.io/v1alpha2\", \"kind\": \"TrafficSplit\",\n"
                     " \"metadata\": {\"name\": \"s\"},\n"
                     " \"spec\": {\"service\": \"a\", \"backends\": [{\"service\": \"b\", \"weight\": 1}]}}";
  int rc = load(good, &m);
  if (rc) dump_diags();
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(mesh_manifest_kind(m, 0), MESH_KIND_TRAFFIC_SPLIT);
  ck_assert_uint_eq(mesh_manifest_line(m, 0), 1);
  mesh_manifest_free(m);
  /* A trailing comma is fine for YAML's flow style but not for JSON. */
  ck_assert_int_eq(load("{\"apiVersion\": \"v1\",\n \"kind\": \"X\",}", &m), MESH_ERR_PARSE);
  ASSERT_DIAG("t.yaml:2:");
  ASSERT_DIAG("JSON syntax error");
}
END_TEST

START_TEST(required_fields) {
  mesh_manifest *m;
  ck_assert_int_eq(load("kind: ServiceProfile\nmetadata: {name: a}\n", &m), MESH_ERR_PARSE);
  ASSERT_DIAG("t.yaml:1:1: error: (document): missing required field 'apiVersion'");
  ck_assert_int_eq(load("apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nspec: {routes: []}\n", &m),
                   MESH_ERR_PARSE);
  ASSERT_DIAG("missing required field 'metadata'");
  ck_assert_int_eq(load("apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata:\n  namespace: x\n"
                        "spec: {routes: []}\n", &m), MESH_ERR_PARSE);
  ASSERT_DIAG("t.yaml:4:3: error: metadata: missing required field 'name'");
  ck_assert_int_eq(load("- a\n- b\n", &m), MESH_ERR_PARSE);
  ASSERT_DIAG("expected a map, found a list");
  ck_assert_int_eq(load("apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: s}\n", &m),
                   MESH_ERR_PARSE);
  ASSERT_DIAG("missing required field 'spec'");
}
END_TEST

START_TEST(unknown_versions_and_kinds) {
  mesh_manifest *m;
  ck_assert_int_eq(load("apiVersion: linkerd.io/v9\nkind: ServiceProfile\nmetadata: {name: a}\n", &m),
                   MESH_ERR_PARSE);
  ASSERT_DIAG("t.yaml:1:13: error: apiVersion: ServiceProfile does not exist in version 'v9' (known: v1alpha1, v1alpha2)");
  ck_assert_int_eq(load("apiVersion: policy.linkerd.io/v1beta1\nkind: Servr\nmetadata: {name: a}\n", &m),
                   MESH_ERR_PARSE);
  ASSERT_DIAG("unknown kind 'Servr' in policy.linkerd.io (known: Server, ServerAuthorization");
}
END_TEST

START_TEST(names_are_checked) {
  mesh_manifest *m;
  ck_assert_int_eq(load("apiVersion: policy.linkerd.io/v1beta1\nkind: Server\n"
                        "metadata: {name: Exam_API, namespace: prod.uction}\nspec: {port: 80}\n", &m),
                   MESH_ERR_PARSE);
  ASSERT_DIAG("'Exam_API' is not a valid name");
  ASSERT_DIAG("'prod.uction' is not a valid namespace");
}
END_TEST

START_TEST(duplicate_keys_are_errors) {
  mesh_manifest *m;
  ck_assert_int_eq(load("apiVersion: v1\nkind: A\nkind: B\n", &m), MESH_ERR_PARSE);
  ASSERT_DIAG("t.yaml:3:1: error: duplicate key 'kind'");
}
END_TEST

START_TEST(aliases_are_refused) {
  mesh_manifest *m;
  ck_assert_int_eq(load("a: &x [1, 2]\nb: *x\n", &m), MESH_ERR_UNSUPPORTED);
  ASSERT_DIAG("alias '*x' is not supported");
}
END_TEST

START_TEST(limits) {
  mesh_manifest *m;
  /* Nesting */
  char deep[400];
  size_t n = 0;
  for (int i = 0; i < 100; i++) deep[n++] = '[';
  for (int i = 0; i < 100; i++) deep[n++] = ']';
  deep[n] = '\0';
  ck_assert_int_eq(load(deep, &m), MESH_ERR_LIMIT);
  ASSERT_DIAG("nesting deeper than 64 levels");

  /* Size: refused before parsing, whatever the content. */
  size_t big = 10 * 1024 * 1024;
  char *buf = malloc(big);
  memset(buf, ' ', big);
  mesh_diags_clear(diags);
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "big.yaml", buf, big, diags, &m), MESH_ERR_LIMIT);
  ASSERT_DIAG("big.yaml: error: input is 10485760 bytes; manifests are limited to 4194304 bytes");

  /* Node count: a flat list of 300,000 items. */
  size_t items = 300000, off = 0;
  free(buf);
  buf = malloc(items * 2 + 3);
  buf[off++] = '[';
  for (size_t i = 0; i < items; i++) {
    buf[off++] = '1';
    buf[off++] = i + 1 < items ? ',' : ']';
  }
  mesh_diags_clear(diags);
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "wide.yaml", buf, off, diags, &m), MESH_ERR_LIMIT);
  ASSERT_DIAG("more than 200000 nodes");
  free(buf);
}
END_TEST

START_TEST(binary_junk) {
  mesh_manifest *m;
  unsigned char junk[4096];
  uint32_t x = 2463534242u;
  for (size_t i = 0; i < sizeof junk; i++) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    junk[i] = (unsigned char)x;
  }
  mesh_diags_clear(diags);
  ck_assert_int_lt(mesh_manifest_load_buffer(ctx, "junk.bin", (const char *)junk, sizeof junk, diags, &m), 0);
  ck_assert_uint_ge(mesh_diags_errors(diags), 1);
  /* NUL inside a document. */
  mesh_diags_clear(diags);
  ck_assert_int_lt(mesh_manifest_load_buffer(ctx, "nul.yaml", "a: b\0c\n", 7, diags, &m), 0);
  ck_assert_uint_ge(mesh_diags_errors(diags), 1);
}
END_TEST

START_TEST(unreadable_file) {
  mesh_manifest *m;
  mesh_diags_clear(diags);
  ck_assert_int_eq(mesh_manifest_load_file(ctx, "/nonexistent/x.yaml", diags, &m), MESH_ERR_IO);
  ASSERT_DIAG("/nonexistent/x.yaml: error: cannot open: No such file or directory");
  ck_assert_int_eq(mesh_manifest_load_file(ctx, NULL, diags, &m), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_manifest_load_buffer(NULL, "x", "", 0, diags, &m), MESH_ERR_INVALID);
}
END_TEST

START_TEST(every_document_is_reported) {
  mesh_manifest *m;
  ck_assert_int_eq(load("apiVersion: linkerd.io/v7\nkind: ServiceProfile\nmetadata: {name: a}\n---\n"
                        "apiVersion: policy.linkerd.io/v1beta1\nkind: Server\nmetadata: {name: b}\n", &m),
                   MESH_ERR_PARSE);
  ck_assert_uint_eq(mesh_diags_errors(diags), 2);
  ASSERT_DIAG("t.yaml:1:");
  ASSERT_DIAG("t.yaml:5:1: error: (document): missing required field 'spec'");
}
END_TEST

/* Every file in tests/data/bad fails with a positioned error; a first line
 * "# expect: TEXT" names text the diagnostics must contain. */
START_TEST(bad_corpus) {
  char dir[512];
  snprintf(dir, sizeof dir, "%s/bad", getenv("MESH_TEST_DATA"));
  DIR *d = opendir(dir);
  ck_assert_ptr_nonnull(d);
  struct dirent *e;
  int files = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char rel[600];
    snprintf(rel, sizeof rel, "bad/%s", e->d_name);
    size_t len;
    char *text = test_read_data(rel, &len);
    mesh_manifest *m = NULL;
    mesh_diags_clear(diags);
    int rc = mesh_manifest_load_buffer(ctx, e->d_name, text, len, diags, &m);
    ck_assert_msg(rc < 0, "%s loaded without error", e->d_name);
    ck_assert_msg(mesh_diags_errors(diags) > 0, "%s: no error diagnostic", e->d_name);
    for (size_t i = 0; i < mesh_diags_count(diags); i++)
      if (mesh_diags_severity(diags, i) == MESH_DIAG_ERROR)
        ck_assert_msg(mesh_diags_line(diags, i) > 0, "%s: error without a line: %s", e->d_name,
                      mesh_diags_text(diags, i));
    if (strncmp(text, "# expect: ", 10) == 0) {
      char want[256];
      size_t n = strcspn(text + 10, "\n");
      snprintf(want, sizeof want, "%.*s", (int)n, text + 10);
      if (!has_diag(want)) dump_diags();
      ck_assert_msg(has_diag(want), "%s: no diagnostic containing '%s'", e->d_name, want);
    }
    free(text);
    files++;
  }
  closedir(d);
  ck_assert_int_ge(files, 15);
}
END_TEST

START_TEST(name_rules) {
  ck_assert_int_eq(mesh_dns_label_valid("exam-api"), 1);
  ck_assert_int_eq(mesh_dns_label_valid("a"), 1);
  ck_assert_int_eq(mesh_dns_label_valid("-a"), 0);
  ck_assert_int_eq(mesh_dns_label_valid("a-"), 0);
  ck_assert_int_eq(mesh_dns_label_valid("Exam"), 0);
  ck_assert_int_eq(mesh_dns_label_valid("a.b"), 0);
  ck_assert_int_eq(mesh_dns_label_valid(""), 0);
  ck_assert_int_eq(mesh_dns_label_valid(NULL), 0);
  char l63[64], l64[65];
  memset(l63, 'a', 63), l63[63] = '\0';
  memset(l64, 'a', 64), l64[64] = '\0';
  ck_assert_int_eq(mesh_dns_label_valid(l63), 1);
  ck_assert_int_eq(mesh_dns_label_valid(l64), 0);
  ck_assert_int_eq(mesh_dns_name_valid("exam-api.production.svc.cluster.local"), 1);
  ck_assert_int_eq(mesh_dns_name_valid("a..b"), 0);
  ck_assert_int_eq(mesh_dns_name_valid("a.b."), 0);
  ck_assert_int_eq(mesh_dns_name_valid(l64), 0);
  /* Which files the store, --profiles and meshctl read. */
  ck_assert_int_eq(mesh_manifest_file_name("web.yaml"), 1);
  ck_assert_int_eq(mesh_manifest_file_name("web.yml"), 1);
  ck_assert_int_eq(mesh_manifest_file_name("web.json"), 1);
  ck_assert_int_eq(mesh_manifest_file_name(".web.yaml.tmp"), 0);
  ck_assert_int_eq(mesh_manifest_file_name(".web.yaml"), 0);
  ck_assert_int_eq(mesh_manifest_file_name(".yaml"), 0);
  ck_assert_int_eq(mesh_manifest_file_name("notes.txt"), 0);
  ck_assert_int_eq(mesh_manifest_file_name(""), 0);
  ck_assert_int_eq(mesh_manifest_file_name(NULL), 0);
  uint64_t secs = 0;
  const char *why = NULL;
  ck_assert_int_eq(mesh_duration_parse_s("24h0m0s", &secs, &why), 0);
  ck_assert_uint_eq(secs, 86400);
  ck_assert_int_eq(mesh_duration_parse_s("1m30s", &secs, NULL), 0);
  ck_assert_uint_eq(secs, 90);
  ck_assert_int_eq(mesh_duration_parse_s("1500ms", &secs, &why), MESH_ERR_RANGE);
  ck_assert_str_eq(why, "not a whole number of seconds");
  ck_assert_int_eq(mesh_duration_parse_s("soon", &secs, &why), MESH_ERR_PARSE);
  ck_assert_uint_eq(secs, 90);
}
END_TEST

static int load_all_seed(mesh_ctx *c, void *arg) {
  (void)arg;
  static const char *files[] = {"seed/exam-api-profile.yaml", "seed/user-service-profile.yaml",
                                "seed/traffic-splits.yaml", "seed/exam-api-policy.yaml",
                                "seed/prometheus.yaml"};
  int rc = 0;
  for (size_t i = 0; i < sizeof files / sizeof files[0] && rc == 0; i++) {
    size_t len;
    char *text = test_read_data(files[i], &len);
    mesh_diags *d = NULL;
    mesh_manifest *m = NULL;
    rc = mesh_diags_new(c, &d);
    if (rc == 0) rc = mesh_manifest_load_buffer(c, files[i], text, len, d, &m);
    mesh_manifest_free(m);
    mesh_diags_free(d);
    free(text);
  }
  return rc;
}

START_TEST(allocation_failures) {
  ck_assert_int_gt(test_alloc_failures(load_all_seed, NULL), 100);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("manifest");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, seed_manifests_load);
  tcase_add_test(tc, seed_policy_kinds_and_warning);
  tcase_add_test(tc, foreign_kinds_are_kept_and_ignored);
  tcase_add_test(tc, empty_documents_are_skipped);
  tcase_add_test(tc, yaml_syntax_error_has_position);
  tcase_add_test(tc, json_is_checked_strictly);
  tcase_add_test(tc, required_fields);
  tcase_add_test(tc, unknown_versions_and_kinds);
  tcase_add_test(tc, names_are_checked);
  tcase_add_test(tc, duplicate_keys_are_errors);
  tcase_add_test(tc, aliases_are_refused);
  tcase_add_test(tc, limits);
  tcase_add_test(tc, binary_junk);
  tcase_add_test(tc, unreadable_file);
  tcase_add_test(tc, every_document_is_reported);
  tcase_add_test(tc, bad_corpus);
  tcase_add_test(tc, name_rules);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
