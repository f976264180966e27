/* Unit tests for openapi: ServiceProfiles generated from OpenAPI 2 and 3, as linkerd profile --open-api. */
#include "testutil.h"
#include "node_internal.h"

/* Generates from text; returns rc, with the YAML in *out (free with free()) and
 * the diagnostics' texts joined by newlines in diag_text. */
static char diag_text[8192];
static int gen_ns(const char *text, const char *name, const char *ns, char **out) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  char *yaml = NULL;
  int rc = mesh_profile_from_openapi(ctx, "spec.yaml", text, strlen(text), name, ns, d, &yaml);
  diag_text[0] = '\0';
  for (size_t i = 0; i < mesh_diags_count(d); i++) {
    size_t off = strlen(diag_text);
    snprintf(diag_text + off, sizeof diag_text - off, "%s\n", mesh_diags_text(d, i));
  }
  if (rc == 0) {
    ck_assert_ptr_nonnull(yaml);
    *out = strdup(yaml);
  } else {
    ck_assert_ptr_null(yaml);
    *out = NULL;
  }
  mesh_free_string(ctx, yaml);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
  return rc;
}

static int gen(const char *text, char **out) {
  return gen_ns(text, "web.shop.svc.cluster.local", "shop", out);
}

/* The output must load back as a ServiceProfile with no diagnostic at all. */
static mesh_profile *load_back(mesh_ctx *ctx, const char *yaml) {
  mesh_diags *d;
  mesh_profile *p = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  int rc = mesh_profile_parse(ctx, "generated.yaml", yaml, strlen(yaml), d, &p);
  ck_assert_msg(rc == 0, "generated profile does not load (%s): %s\n%s", mesh_strerror(rc),
                mesh_diags_count(d) ? mesh_diags_text(d, 0) : "", yaml);
  ck_assert_msg(mesh_diags_count(d) == 0, "generated profile has diagnostics: %s",
                mesh_diags_text(d, 0));
  mesh_diags_free(d);
  return p;
}

START_TEST(openapi3_golden) {
  const char *spec = "openapi: 3.0.3\n"
                     "info: {title: t, version: '1'}\n"
                     "paths:\n"
                     "  /pets/{petId}:\n"
                     "    put:\n"
                     "      responses: {'200': {description: ok}}\n"
                     "    get:\n"
                     "      x-linkerd-retryable: true\n"
                     "      x-linkerd-timeout: 10s\n"
                     "      responses:\n"
                     "        default: {description: other}\n"
                     "        500: {description: boom}\n"
                     "        '200': {description: ok}\n"
                     "  /pets:\n"
                     "    post: {}\n";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  ck_assert_str_eq(diag_text, "");
  ck_assert_str_eq(out, "apiVersion: linkerd.io/v1alpha2\n"
                        "kind: ServiceProfile\n"
                        "metadata:\n"
                        "  name: \"web.shop.svc.cluster.local\"\n"
                        "  namespace: \"shop\"\n"
                        "spec:\n"
                        "  routes:\n"
                        "  - condition:\n"
                        "      method: POST\n"
                        "      pathRegex: \"/pets\"\n"
                        "    name: \"POST /pets\"\n"
                        "  - condition:\n"
                        "      method: GET\n"
                        "      pathRegex: \"/pets/[^/]*\"\n"
                        "    isRetryable: true\n"
                        "    name: \"GET /pets/{petId}\"\n"
                        "    responseClasses:\n"
                        "    - condition:\n"
                        "        status:\n"
                        "          max: 200\n"
                        "          min: 200\n"
                        "      isFailure: false\n"
                        "    - condition:\n"
                        "        status:\n"
                        "          max: 500\n"
                        "          min: 500\n"
                        "      isFailure: true\n"
                        "    timeout: \"10s\"\n"
                        "  - condition:\n"
                        "      method: PUT\n"
                        "      pathRegex: \"/pets/[^/]*\"\n"
                        "    name: \"PUT /pets/{petId}\"\n"
                        "    responseClasses:\n"
                        "    - condition:\n"
                        "        status:\n"
                        "          max: 200\n"
                        "          min: 200\n"
                        "      isFailure: false\n");
  free(out);
}
END_TEST

/* Linkerd's order: paths sorted bytewise, then DELETE GET HEAD OPTIONS PATCH POST PUT. */
START_TEST(method_and_path_order) {
  const char *spec = "{\"swagger\": \"2.0\", \"paths\": {"
                     "\"/b\": {\"put\": {}, \"post\": {}, \"patch\": {}, \"options\": {},"
                     " \"head\": {}, \"get\": {}, \"delete\": {}, \"trace\": {}},"
                     "\"/B\": {\"get\": {}}, \"/a\": {\"get\": null}, \"/a/b\": {\"get\": {}}}}";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  const char *want[] = {"GET /B",      "GET /a/b",  "DELETE /b", "GET /b",  "HEAD /b",
                        "OPTIONS /b", "PATCH /b", "POST /b",   "PUT /b"};
  const char *at = out;
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char needle[64];
    snprintf(needle, sizeof needle, "    name: \"%s\"\n", want[i]);
    const char *hit = strstr(at, needle);
    ck_assert_msg(hit != NULL, "route %s missing or out of order in\n%s", want[i], out);
    at = hit + 1;
  }
  ck_assert_ptr_null(strstr(out, "TRACE"));
  free(out);
}
END_TEST

/* Swagger 2's basePath is joined as Go's path.Join does; {param} becomes [^/]*
 * and everything QuoteMeta escapes is escaped. */
START_TEST(base_path_and_regex) {
  const char *spec = "swagger: '2.0'\n"
                     "basePath: /api/v1.2/\n"
                     "paths:\n"
                     "  /files/{dir}/{name}.tar+gz:\n"
                     "    get: {}\n"
                     "  /x/./y/../z//w/:\n"
                     "    get: {}\n"
                     "  /q(a|b)?*[c]^$\\{:\n"
                     "    get: {}\n";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  /* In the YAML text each regex backslash is itself escaped. */
  ck_assert_ptr_nonnull(strstr(out, "name: \"GET /api/v1.2/files/{dir}/{name}.tar+gz\"\n"));
  ck_assert_ptr_nonnull(strstr(out, "pathRegex: \"/api/v1\\\\.2/files/[^/]*/[^/]*\\\\.tar\\\\+gz\"\n"));
  ck_assert_ptr_nonnull(strstr(out, "name: \"GET /api/v1.2/x/z/w\"\n"));
  ck_assert_ptr_nonnull(strstr(out, "name: \"GET /api/v1.2/q(a|b)?*[c]^$\\\\{\"\n"));
  ck_assert_ptr_nonnull(strstr(
      out, "pathRegex: \"/api/v1\\\\.2/q\\\\(a\\\\|b\\\\)\\\\?\\\\*\\\\[c\\\\]\\\\^\\\\$\\\\\\\\\\\\{\"\n"));
  free(out);
}
END_TEST

START_TEST(response_classes) {
  const char *spec = "openapi: 3.1.0\n"
                     "paths:\n"
                     "  /r:\n"
                     "    get:\n"
                     "      responses:\n"
                     "        default: {}\n"
                     "        5XX: {}\n"
                     "        x-extra: {}\n"
                     "        '503': {}\n"
                     "        '0404': {}\n"
                     "        404: {}\n"
                     "        '700': {}\n";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  /* 700 is no status: a warning at its position, and no class. */
  ck_assert_str_eq(diag_text, "spec.yaml:12:16: warning: paths./r.get.responses.700: 700 is not an "
                              "HTTP status code (100-599); no response class is made for it\n");
  ck_assert_ptr_nonnull(strstr(out, "          max: 404\n          min: 404\n      isFailure: false\n"
                                    "    - condition:\n        status:\n          max: 503\n"
                                    "          min: 503\n      isFailure: true\n"));
  ck_assert_ptr_null(strstr(out, "700"));
  /* "0404" and 404 are one code: one class. */
  const char *first = strstr(out, "max: 404");
  ck_assert_ptr_null(strstr(first + 1, "max: 404"));
  free(out);
}
END_TEST

START_TEST(extensions_are_checked) {
  char *out;
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-timeout: 10\n", &out),
                   MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml:5:26: error: paths./a.get.x-linkerd-timeout: invalid "
                              "duration '10': missing unit (use ns, us, ms, s, m or h)\n");
  ck_assert_int_eq(
      gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-retryable: 'yes'\n", &out),
      MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:5:28: error: paths./a.get.x-linkerd-retryable: "
                                          "expected true or false"));
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-timeout: [1s]\n", &out),
                   MESH_ERR_PARSE);
  /* Empty values mean "not set", as in Linkerd. */
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-timeout: ''\n"
                       "      x-linkerd-retryable:\n",
                       &out),
                   0);
  ck_assert_ptr_null(strstr(out, "timeout"));
  ck_assert_ptr_null(strstr(out, "isRetryable"));
  free(out);
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-linkerd-timeout: 1m30.5s\n"
                       "      x-linkerd-retryable: false\n",
                       &out),
                   0);
  ck_assert_ptr_nonnull(strstr(out, "    timeout: \"1m30.5s\"\n"));
  ck_assert_ptr_null(strstr(out, "isRetryable"));
  free(out);
}
END_TEST

START_TEST(bad_documents_have_positions) {
  char *out;
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a: {get: {}\n", &out), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:4:1: error: YAML syntax error"));
  ck_assert_int_eq(gen("{\"openapi\": \"3.0.0\",\n \"paths\": {]}", &out), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:2:"));
  ck_assert_ptr_nonnull(strstr(diag_text, "JSON syntax error"));
  ck_assert_int_eq(gen("apiVersion: v1\nkind: Service\n", &out), MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml:1:1: error: (document): not an OpenAPI document: expected "
                              "a field swagger: \"2.0\" or openapi: 3.x\n");
  ck_assert_int_eq(gen("swagger: '1.2'\npaths: {/a: {get: {}}}\n", &out), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:1:10: error: swagger: unsupported Swagger"));
  ck_assert_int_eq(gen("openapi: 4.0.0\npaths: {/a: {get: {}}}\n", &out), MESH_ERR_PARSE);
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths: [/a]\n", &out), MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml:2:8: error: paths: expected a map, found a list\n");
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get: [1]\n", &out), MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml:4:10: error: paths./a.get: expected a map, found a list\n");
  ck_assert_int_eq(gen("openapi: 3.0.0\nbasePath: {a: 1}\npaths: {/a: {get: {}}}\n", &out),
                   MESH_ERR_PARSE);
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      responses: 7\n", &out),
                   MESH_ERR_PARSE);
  /* Nothing to route: Linkerd would print a profile it then refuses. */
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a: {get: null}\n  pets: {get: {}}\n", &out),
                   MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text,
                   "spec.yaml:4:9: warning: paths.pets: a path must start with '/'; ignored\n"
                   "spec.yaml:3:3: error: paths: no operations under 'paths': a ServiceProfile "
                   "needs at least one route\n");
  ck_assert_int_eq(gen("openapi: 3.0.0\n", &out), MESH_ERR_PARSE);
  ck_assert_int_eq(gen("", &out), MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml: error: no OpenAPI document in the input\n");
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths: {/a: {get: {}}}\n---\nopenapi: 3.0.0\n", &out),
                   MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:4:1: error: (document): expected one OpenAPI "
                                          "document, found 2"));
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths: {/a: {get: {}}}\nx: &a 1\ny: *a\n", &out),
                   MESH_ERR_UNSUPPORTED);
}
END_TEST

START_TEST(servers_path_warns) {
  char *out;
  ck_assert_int_eq(gen("openapi: 3.0.0\nservers:\n- url: https://api.example.com/v1\n"
                       "paths: {/a: {get: {}}}\n",
                       &out),
                   0);
  ck_assert_ptr_nonnull(strstr(diag_text, "spec.yaml:3:8: warning: servers[0].url: route paths do "
                                          "not include this server's path '/v1'"));
  ck_assert_ptr_nonnull(strstr(out, "name: \"GET /a\""));
  free(out);
  const char *quiet[] = {"https://api.example.com", "https://api.example.com/", "/", "//h/"};
  for (size_t i = 0; i < sizeof quiet / sizeof quiet[0]; i++) {
    char spec[256];
    snprintf(spec, sizeof spec, "openapi: 3.0.0\nservers: [{url: '%s'}]\npaths: {/a: {get: {}}}\n",
             quiet[i]);
    ck_assert_int_eq(gen(spec, &out), 0);
    ck_assert_msg(diag_text[0] == '\0', "%s: %s", quiet[i], diag_text);
    free(out);
  }
  ck_assert_int_eq(gen("openapi: 3.0.0\nservers: [{url: /base}]\npaths: {/a: {get: {}}}\n", &out), 0);
  ck_assert_ptr_nonnull(strstr(diag_text, "path '/base'"));
  free(out);
}
END_TEST

/* Paths that clean to one path would make routes of one name, which a
 * profile may not have: the later ones are dropped with a warning. */
START_TEST(repeated_routes_are_dropped) {
  const char *spec = "openapi: 3.0.0\n"
                     "paths:\n"
                     "  /a/:\n"
                     "    get: {}\n"
                     "    post: {}\n"
                     "  /a:\n"
                     "    get: {}\n"
                     "    put: {}\n"
                     "  /b/../a//: {put: {}, delete: {}}\n";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  ck_assert_str_eq(diag_text,
                   "spec.yaml:4:10: warning: paths./a/.get: route 'GET /a' is already made from "
                   "paths./a; ignored\n"
                   "spec.yaml:9:20: warning: paths./b/../a//.put: route 'PUT /a' is already made "
                   "from paths./a; ignored\n");
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_profile *p = load_back(ctx, out);
  ck_assert_uint_eq(mesh_profile_route_count(p), 4);
  const char *names[] = {"GET /a", "PUT /a", "POST /a", "DELETE /a"};
  for (size_t i = 0; i < 4; i++) ck_assert_str_eq(mesh_route_name(mesh_profile_route(p, i)), names[i]);
  mesh_profile_unref(p);
  mesh_ctx_free(ctx);
  free(out);
}
END_TEST

/* What the loader would refuse is refused here, where the spec says it. */
START_TEST(unloadable_values_are_errors) {
  char *out;
  ck_assert_int_eq(gen("openapi: 3.0.0\npaths:\n  /a: {get: {x-linkerd-timeout: 0s}}\n", &out),
                   MESH_ERR_PARSE);
  ck_assert_str_eq(diag_text, "spec.yaml:3:33: error: paths./a.get.x-linkerd-timeout: a route "
                              "timeout must be greater than zero\n");
  /* A pathRegex longer than the regex compiler takes. (An explicit key:
   * YAML's implicit keys stop at 1024 characters.) */
  size_t n = 9000;
  char *spec = malloc(n + 64);
  ck_assert_ptr_nonnull(spec);
  int off = snprintf(spec, 64, "openapi: 3.0.0\npaths:\n  ? /");
  for (size_t i = 0; i < n; i++) spec[off + (int)i] = '.';
  snprintf(spec + off + n, 64, "\n  : {get: {}}\n");
  ck_assert_int_eq(gen(spec, &out), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(diag_text, "the path is too long: its pathRegex would be 18001 bytes"));
  /* Half as long is fine. */
  snprintf(spec + off + n / 2, 64, "\n  : {get: {}}\n");
  ck_assert_int_eq(gen(spec, &out), 0);
  free(out);
  free(spec);
}
END_TEST

START_TEST(arguments) {
  mesh_ctx *ctx;
  mesh_diags *d;
  char *out = (char *)"untouched";
  const char *spec = "openapi: 3.0.0\npaths: {/a: {get: {}}}\n";
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_profile_from_openapi(NULL, "f", spec, strlen(spec), "a", "b", d, &out),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "f", NULL, 3, "a", "b", d, &out), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "f", spec, strlen(spec), NULL, "b", d, &out),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "f", spec, strlen(spec), "a", "b", d, NULL),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_diags_count(d), 0);
  /* Names the profile could not be loaded with are refused, and said so. */
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "f", spec, strlen(spec), "Web.shop", "b", d, &out),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "f", spec, strlen(spec), "web", "a.b", d, &out),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_diags_errors(d), 2);
  ck_assert_str_eq(mesh_diags_message(d, 1), "'a.b' is not a valid namespace (lower-case letters, "
                                             "digits and '-', at most 63)");
  ck_assert_str_eq(out, "untouched");
  /* No diags list, no file name, no namespace: "<input>" and "default". */
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, NULL, spec, strlen(spec), "web", NULL, NULL, &out), 0);
  ck_assert_ptr_nonnull(strstr(out, "  namespace: \"default\"\n"));
  mesh_free_string(ctx, out);
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, NULL, "", 0, "web", NULL, NULL, &out),
                   MESH_ERR_PARSE);
  mesh_free_string(ctx, NULL);
  mesh_free_string(NULL, NULL);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

/* Any text survives the trip through the quoted YAML scalars: quotes,
 * backslashes, tabs, control characters, NEL and LS, and other UTF-8. */
START_TEST(quoting_round_trips) {
  const char *path = "/a\"b\\c/\t\x01\x7f/\xc2\x85\xe2\x80\xa8\xef\xbb\xbf/\xc3\xa9\xf0\x9f\x90\xb6/{x}";
  char spec[512];
  /* JSON \u escapes carry the control characters into the document. */
  snprintf(spec, sizeof spec,
           "{\"openapi\": \"3.0.0\", \"paths\": {\"/a\\\"b\\\\c/\\t\\u0001\\u007f/\\u0085\\u2028"
           "\\ufeff/\xc3\xa9\xf0\x9f\x90\xb6/{x}\": {\"get\": {}}}}");
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  ck_assert_ptr_null(strchr(out, '\t')); /* escaped, not raw */
  ck_assert_ptr_null(strstr(out, "\xe2\x80\xa8"));
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh__node **docs;
  size_t n;
  ck_assert_int_eq(mesh__node_parse(ctx, "out", out, strlen(out), NULL, &docs, &n), 0);
  ck_assert_uint_eq(n, 1);
  const mesh__node *routes = mesh__node_get(mesh__node_get(docs[0], "spec"), "routes");
  ck_assert_uint_eq(routes->n, 1);
  char want[256];
  snprintf(want, sizeof want, "GET %s", path);
  ck_assert_str_eq(mesh__node_get(routes->kids[0], "name")->str, want);
  ck_assert_str_eq(mesh__node_get(mesh__node_get(routes->kids[0], "condition"), "pathRegex")->str,
                   "/a\"b\\\\c/\t\x01\x7f/\xc2\x85\xe2\x80\xa8\xef\xbb\xbf/\xc3\xa9\xf0\x9f\x90\xb6/[^/]*");
  mesh__node_free_docs(ctx, docs, n);
  mesh_ctx_free(ctx);
  free(out);
}
END_TEST

static char *spec_with_routes(size_t routes) {
  size_t cap = 64 + routes * 32, off = 0;
  char *s = malloc(cap);
  ck_assert_ptr_nonnull(s);
  off += (size_t)snprintf(s, cap, "openapi: 3.0.0\npaths:\n");
  for (size_t i = 0; i < routes; i++)
    off += (size_t)snprintf(s + off, cap - off, "  /p%zu: {get: {}}\n", i);
  return s;
}

START_TEST(route_limit) {
  char *out;
  char *spec = spec_with_routes(10000);
  ck_assert_int_eq(gen(spec, &out), 0);
  free(out);
  free(spec);
  spec = spec_with_routes(10001);
  ck_assert_int_eq(gen(spec, &out), MESH_ERR_LIMIT);
  ck_assert_ptr_nonnull(strstr(diag_text, "more than 10000 operations"));
  free(spec);
}
END_TEST

/* The output is refused when the loader could not read it back: at exactly
 * MESH_MANIFEST_MAX_NODES nodes it is produced (and parses), one more is a
 * limit error. 15 nodes of header; a route is 9, +2 for isRetryable, +2 for
 * responseClasses and 11 a class: 9000*22 + 219*9 + 7*2 + 15 = 200000. */
static char *spec_with_nodes(bool one_more) {
  size_t cap = 9300 * 64, off = 0;
  char *s = malloc(cap);
  ck_assert_ptr_nonnull(s);
  off += (size_t)snprintf(s, cap, "openapi: 3.0.0\npaths:\n");
  for (size_t i = 0; i < 9219; i++)
    off += (size_t)snprintf(s + off, cap - off, "  /p%05zu: {get: {%s%s}}\n", i,
                            i < 9000 ? "responses: {200: {}}" : "",
                            i >= 9212 || (one_more && i == 9211) ? "x-linkerd-retryable: true" : "");
  return s;
}

START_TEST(node_limit_is_the_loaders) {
  char *out;
  char *spec = spec_with_nodes(false);
  ck_assert_int_eq(gen(spec, &out), 0);
  free(spec);
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh__node **docs;
  size_t n;
  ck_assert_int_eq(mesh__node_parse(ctx, "out", out, strlen(out), NULL, &docs, &n), 0);
  mesh__node_free_docs(ctx, docs, n);
  mesh_ctx_free(ctx);
  free(out);
  spec = spec_with_nodes(true);
  ck_assert_int_eq(gen(spec, &out), MESH_ERR_LIMIT);
  ck_assert_ptr_nonnull(strstr(diag_text, "over the manifest limits"));
  free(spec);
}
END_TEST

START_TEST(round_trip_petstore) {
  size_t len;
  char *spec = test_read_data("openapi/petstore.yaml", &len);
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  char *yaml;
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "petstore.yaml", spec, len,
                                             "petstore.shop.svc.cluster.local", "shop", NULL, &yaml),
                   0);
  mesh_profile *p = load_back(ctx, yaml);
  ck_assert_str_eq(mesh_profile_name(p), "petstore.shop.svc.cluster.local");
  ck_assert_str_eq(mesh_profile_namespace(p), "shop");
  ck_assert_uint_eq(mesh_profile_route_count(p), 5);
  const mesh_route *r = mesh_profile_match(p, "GET", "/pets/42", 8);
  ck_assert_ptr_nonnull(r);
  ck_assert_str_eq(mesh_route_name(r), "GET /pets/{petId}");
  ck_assert_int_eq(mesh_route_is_retryable(r), 1);
  ck_assert_uint_eq(mesh_route_timeout_ms(r), MESH_ROUTE_DEFAULT_TIMEOUT_MS);
  ck_assert_int_eq(mesh_route_classify(r, 500, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 404, -1), 0);
  ck_assert_int_eq(mesh_route_classify(r, 503, -1), 1); /* undocumented: the default, 5xx fail */
  r = mesh_profile_match(p, "GET", "/pets", 5);
  ck_assert_str_eq(mesh_route_name(r), "GET /pets");
  ck_assert_uint_eq(mesh_route_timeout_ms(r), 2000);
  r = mesh_profile_match(p, "POST", "/pets", 5);
  ck_assert_str_eq(mesh_route_name(r), "POST /pets");
  ck_assert_int_eq(mesh_route_is_retryable(r), 0);
  r = mesh_profile_match(p, "PUT", "/pets/7/photo.jpg", 17);
  ck_assert_str_eq(mesh_route_name(r), "PUT /pets/{petId}/photo.jpg");
  ck_assert_uint_eq(mesh_route_timeout_ms(r), 90000);
  /* The dot is escaped: it matches only a dot. */
  ck_assert_ptr_null(mesh_profile_match(p, "PUT", "/pets/7/photoxjpg", 17));
  ck_assert_ptr_null(mesh_profile_match(p, "GET", "/pets/1/2", 9));
  ck_assert_ptr_null(mesh_profile_match(p, "TRACE", "/pets", 5));
  mesh_profile_unref(p);
  mesh_free_string(ctx, yaml);
  mesh_ctx_free(ctx);
  free(spec);
}
END_TEST

START_TEST(round_trip_swagger2_json) {
  size_t len;
  char *spec = test_read_data("openapi/petstore-v2.json", &len);
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  char *yaml;
  ck_assert_int_eq(mesh_profile_from_openapi(ctx, "petstore-v2.json", spec, len,
                                             "store.default.svc.cluster.local", NULL, NULL, &yaml),
                   0);
  mesh_profile *p = load_back(ctx, yaml);
  ck_assert_uint_eq(mesh_profile_route_count(p), 4);
  ck_assert_str_eq(mesh_route_name(mesh_profile_route(p, 0)), "HEAD /api/v2/pets");
  ck_assert_str_eq(mesh_route_name(mesh_profile_route(p, 1)), "PATCH /api/v2/pets");
  ck_assert_int_eq(mesh_route_is_retryable(mesh_profile_route(p, 1)), 1);
  ck_assert_str_eq(mesh_route_name(mesh_profile_route(p, 2)), "DELETE /api/v2/store/order/{orderId}");
  const mesh_route *r = mesh_profile_match(p, "GET", "/api/v2/store/order/17", 22);
  ck_assert_str_eq(mesh_route_name(r), "GET /api/v2/store/order/{orderId}");
  ck_assert_uint_eq(mesh_route_timeout_ms(r), 500);
  ck_assert_int_eq(mesh_route_classify(r, 502, -1), 1);
  ck_assert_ptr_null(mesh_profile_match(p, "GET", "/store/order/17", 15));
  mesh_profile_unref(p);
  mesh_free_string(ctx, yaml);
  mesh_ctx_free(ctx);
  free(spec);
}
END_TEST

/* Escaped and odd paths load back and match what they say. */
START_TEST(round_trip_odd_paths) {
  const char *spec = "openapi: 3.0.0\n"
                     "paths:\n"
                     "  '/v1/files/{name}.tar+gz': {get: {}}\n"
                     "  '/q/(a|b)?/{id}': {get: {}}\n"
                     "  '/say/\"hi\"\\/{x}': {post: {}}\n";
  char *out;
  ck_assert_int_eq(gen(spec, &out), 0);
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_profile *p = load_back(ctx, out);
  const char *get = "GET";
  const mesh_route *r = mesh_profile_match(p, get, "/v1/files/a.tar+gz", 18);
  ck_assert_ptr_nonnull(r);
  ck_assert_str_eq(mesh_route_name(r), "GET /v1/files/{name}.tar+gz");
  ck_assert_ptr_null(mesh_profile_match(p, get, "/v1/files/a.tarrgz", 18));
  ck_assert_ptr_null(mesh_profile_match(p, get, "/v1/files/a/b.tar+gz", 20));
  r = mesh_profile_match(p, get, "/q/(a|b)?/7", 11);
  ck_assert_ptr_nonnull(r);
  ck_assert_ptr_null(mesh_profile_match(p, get, "/q/a/7", 6));
  r = mesh_profile_match(p, "POST", "/say/\"hi\"\\/x", 12);
  ck_assert_ptr_nonnull(r);
  ck_assert_str_eq(mesh_route_name(r), "POST /say/\"hi\"\\/{x}");
  mesh_profile_unref(p);
  mesh_ctx_free(ctx);
  free(out);
}
END_TEST

typedef struct {
  const char *text;
  size_t len;
} spec_arg;

static int generate_op(mesh_ctx *ctx, void *arg) {
  const spec_arg *s = arg;
  mesh_diags *d;
  int rc = mesh_diags_new(ctx, &d);
  if (rc < 0) return rc;
  char *out = NULL;
  rc = mesh_profile_from_openapi(ctx, "petstore.yaml", s->text, s->len,
                                 "petstore.shop.svc.cluster.local", "shop", d, &out);
  if (rc == 0) ck_assert_ptr_nonnull(out);
  else ck_assert_ptr_null(out);
  mesh_free_string(ctx, out);
  mesh_diags_free(d);
  return rc;
}

START_TEST(allocation_failures) {
  size_t len;
  char *text = test_read_data("openapi/petstore.yaml", &len);
  spec_arg a = {text, len};
  ck_assert_int_gt(test_alloc_failures(generate_op, &a), 50);
  free(text);
  /* With warnings, the diagnostics' allocations fail too. */
  const char *warn = "openapi: 3.0.0\nservers: [{url: /v1}]\npaths:\n  x: {}\n"
                     "  /a: {get: {responses: {'999': {}, '200': {}}}}\n";
  spec_arg b = {warn, strlen(warn)};
  ck_assert_int_gt(test_alloc_failures(generate_op, &b), 10);
  text = test_read_data("openapi/petstore-v2.json", &len);
  spec_arg c = {text, len};
  ck_assert_int_gt(test_alloc_failures(generate_op, &c), 20);
  free(text);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("openapi");
  TCase *tc = tcase_create("generate");
  tcase_add_test(tc, openapi3_golden);
  tcase_add_test(tc, method_and_path_order);
  tcase_add_test(tc, base_path_and_regex);
  tcase_add_test(tc, response_classes);
  tcase_add_test(tc, extensions_are_checked);
  tcase_add_test(tc, bad_documents_have_positions);
  tcase_add_test(tc, servers_path_warns);
  tcase_add_test(tc, arguments);
  tcase_add_test(tc, unloadable_values_are_errors);
  tcase_add_test(tc, quoting_round_trips);
  tcase_add_test(tc, route_limit);
  tcase_add_test(tc, node_limit_is_the_loaders);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);
  TCase *rt = tcase_create("round_trip");
  tcase_add_test(rt, round_trip_petstore);
  tcase_add_test(rt, round_trip_swagger2_json);
  tcase_add_test(rt, round_trip_odd_paths);
  tcase_add_test(rt, repeated_routes_are_dropped);
  suite_add_tcase(s, rt);
  return s;
}

int main(void) { return test_main(make_suite()); }
