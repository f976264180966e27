/* Unit tests for profile and its regexes: seed, matching, classification, budgets, errors. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#include "testutil.h"

#include "regex_internal.h"

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

static void dump_diags(void) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    fprintf(stderr, "  %s\n", mesh_diags_text(diags, i));
}

/* Is there a diagnostic of this severity at this line (0: any) containing text? */
static int has_diag(int severity, uint32_t line, const char *text) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    if (mesh_diags_severity(diags, i) == severity && (!line || mesh_diags_line(diags, i) == line) &&
        strstr(mesh_diags_message(diags, i), text))
      return 1;
  return 0;
}

#define ASSERT_DIAG(sev, line, text)                                                             \
  do {                                                                                           \
    if (!has_diag(sev, line, text)) dump_diags();                                                \
    ck_assert_msg(has_diag(sev, line, text), "no %s at line %u containing \"%s\"",               \
                  (sev) == MESH_DIAG_ERROR ? "error" : "warning", (unsigned)(line), text);       \
  } while (0)

static size_t count_severity(int severity) {
  size_t n = 0;
  for (size_t i = 0; i < mesh_diags_count(diags); i++) n += mesh_diags_severity(diags, i) == severity;
  return n;
}

static mesh_profile *parse_text(const char *yaml) {
  mesh_profile *p = NULL;
  mesh_diags_clear(diags);
  int rc = mesh_profile_parse(ctx, "t.yaml", yaml, strlen(yaml), diags, &p);
  if (rc != 0) dump_diags();
  ck_assert_int_eq(rc, 0);
  ck_assert_ptr_nonnull(p);
  return p;
}

static mesh_profile *parse_seed(const char *rel) {
  size_t len;
  char *text = test_read_data(rel, &len);
  mesh_profile *p = NULL;
  mesh_diags_clear(diags);
  int rc = mesh_profile_parse(ctx, rel, text, len, diags, &p);
  free(text);
  if (rc != 0) dump_diags();
  ck_assert_int_eq(rc, 0);
  return p;
}

/* Parse text that must fail with MESH_ERR_PARSE; the profile is untouched. */
static void parse_fails(const char *yaml) {
  mesh_profile *p = (mesh_profile *)&p;
  mesh_diags_clear(diags);
  int rc = mesh_profile_parse(ctx, "t.yaml", yaml, strlen(yaml), diags, &p);
  ck_assert_msg(rc == MESH_ERR_PARSE, "rc %d for:\n%s", rc, yaml);
  ck_assert_ptr_eq(p, (mesh_profile *)&p);
  ck_assert_uint_ge(mesh_diags_errors(diags), 1);
}

static const char *match_name(const mesh_profile *p, const char *method, const char *path) {
  const mesh_route *r = mesh_profile_match(p, method, path, strlen(path));
  return r ? mesh_route_name(r) : "[DEFAULT]";
}

#define ASSERT_MATCH(p, method, path, want) ck_assert_str_eq(match_name(p, method, path), want)

/* ---- the seed ---- */

START_TEST(seed_exam_api) {
  mesh_profile *p = parse_seed("seed/exam-api-profile.yaml");
  ck_assert_str_eq(mesh_profile_name(p), "exam-api");
  ck_assert_str_eq(mesh_profile_namespace(p), "production");
  ck_assert_uint_eq(mesh_profile_route_count(p), 2);
  ck_assert_ptr_null(mesh_profile_route(p, 2));
  ck_assert_ptr_null(mesh_profile_dst_overrides(p));
  ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 0);

  ASSERT_MATCH(p, "GET", "/api/v1/exams/42/questions", "get_exam_questions");
  ASSERT_MATCH(p, "POST", "/api/v1/exams/42/questions", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/api/v1/exams/42/questions/x", "[DEFAULT]"); /* anchored */
  ASSERT_MATCH(p, "GET", "/x/api/v1/exams/42/questions", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/api/v1/exams//questions", "[DEFAULT]");     /* [^/]+ needs one */
  ASSERT_MATCH(p, "GET", "/api/v1/exams/4/2/questions", "[DEFAULT]");
  ASSERT_MATCH(p, "get", "/api/v1/exams/42/questions", "[DEFAULT]");   /* methods are exact */
  ASSERT_MATCH(p, "POST", "/api/v1/exams/abc-1/submit", "submit_exam_answers");
  ASSERT_MATCH(p, "GET", "/api/v1/exams/abc-1/submit", "[DEFAULT]");

  const mesh_route *q = mesh_profile_route(p, 0), *s = mesh_profile_route(p, 1);
  ck_assert_str_eq(mesh_route_name(q), "get_exam_questions");
  ck_assert_uint_eq(mesh_route_index(q), 0);
  ck_assert_uint_eq(mesh_route_index(s), 1);
  ck_assert_uint_eq(mesh_route_timeout_ms(q), 5000);
  ck_assert_uint_eq(mesh_route_timeout_ms(s), 30000);
  ck_assert_int_eq(mesh_route_is_retryable(q), 0);
  ck_assert_int_eq(mesh_route_is_retryable(s), 0);

  /* The budgets written inside the routes are each route's own. */
  double ratio;
  uint32_t min;
  uint64_t ttl;
  ck_assert_int_eq(mesh_route_retry_budget(q, &ratio, &min, &ttl), 1);
  ck_assert(ratio == 0.2);
  ck_assert_uint_eq(min, 10);
  ck_assert_uint_eq(ttl, 10000);
  ck_assert_int_eq(mesh_route_retry_budget(s, &ratio, &min, &ttl), 1);
  ck_assert(ratio == 0.1);
  ck_assert_uint_eq(min, 5);
  ck_assert_uint_eq(ttl, 30000);
  mesh_profile_retry_budget(p, &ratio, &min, &ttl);
  ck_assert(ratio == MESH_BUDGET_DEFAULT_RATIO);
  ck_assert_uint_eq(min, MESH_BUDGET_DEFAULT_MIN_PER_SEC);
  ck_assert_uint_eq(ttl, MESH_BUDGET_DEFAULT_TTL_MS);

  /* One warning per route-level budget, at the budget, naming the canonical
   * place and saying that a non-retryable route never uses it. */
  ck_assert_uint_eq(mesh_diags_errors(diags), 0);
  ck_assert_uint_eq(count_severity(MESH_DIAG_WARNING), 2);
  ASSERT_DIAG(MESH_DIAG_WARNING, 26, "spec.routes[0].retryBudget: retryBudget belongs in spec.retryBudget");
  ASSERT_DIAG(MESH_DIAG_WARNING, 42, "spec.routes[1].retryBudget: retryBudget belongs in spec.retryBudget");
  ASSERT_DIAG(MESH_DIAG_WARNING, 42, "never used because the route is not retryable");
  mesh_profile_unref(p);
}
END_TEST

START_TEST(seed_user_service) {
  mesh_profile *p = parse_seed("seed/user-service-profile.yaml");
  ck_assert_str_eq(mesh_profile_name(p), "user-service");
  ck_assert_uint_eq(mesh_profile_route_count(p), 3);
  ASSERT_MATCH(p, "GET", "/health", "health_checks");
  ASSERT_MATCH(p, "GET", "/ready", "health_checks");
  ASSERT_MATCH(p, "GET", "/metrics", "health_checks");
  ASSERT_MATCH(p, "GET", "/healthz", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/x/health", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/health|/ready", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/ready/", "[DEFAULT]");
  ASSERT_MATCH(p, "HEAD", "/health", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/api/v1/premium/courses/7", "premium_features");
  ASSERT_MATCH(p, "GET", "/api/v1/premium/", "premium_features");
  ASSERT_MATCH(p, "GET", "/api/v1/premium", "[DEFAULT]");
  ASSERT_MATCH(p, "POST", "/api/v1/auth/login", "auth_endpoints");
  ASSERT_MATCH(p, "GET", "/api/v1/auth/login", "[DEFAULT]");

  const mesh_route *health = mesh_profile_route(p, 2), *auth = mesh_profile_route(p, 1);
  ck_assert_uint_eq(mesh_route_timeout_ms(health), 2000);
  double ratio = -1;
  uint32_t min = 0;
  uint64_t ttl = 0;
  /* No budget of its own: the profile's (the default). */
  ck_assert_int_eq(mesh_route_retry_budget(health, &ratio, &min, &ttl), 0);
  ck_assert(ratio == 0.2);
  ck_assert_uint_eq(min, 10);
  ck_assert_uint_eq(ttl, 10000);
  ck_assert_int_eq(mesh_route_retry_budget(auth, NULL, NULL, &ttl), 1);
  ck_assert_uint_eq(ttl, 15000);

  /* auth_endpoints: 4xx declared a success; 5xx falls to the default. */
  ck_assert_int_eq(mesh_route_classify(auth, 200, -1), 0);
  ck_assert_int_eq(mesh_route_classify(auth, 404, -1), 0);
  ck_assert_int_eq(mesh_route_classify(auth, 500, -1), 1);
  ck_assert_int_eq(mesh_route_classify(auth, 302, -1), 0);

  ck_assert_uint_eq(mesh_diags_errors(diags), 0);
  ck_assert_uint_eq(count_severity(MESH_DIAG_WARNING), 2);
  ASSERT_DIAG(MESH_DIAG_WARNING, 22, "spec.routes[0].retryBudget");
  ASSERT_DIAG(MESH_DIAG_WARNING, 44, "spec.routes[1].retryBudget");
  mesh_profile_unref(p);
}
END_TEST

START_TEST(profile_outlives_manifest) {
  size_t len;
  char *text = test_read_data("seed/exam-api-profile.yaml", &len);
  mesh_manifest *m;
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "x.yaml", text, len, NULL, &m), 0);
  free(text);
  mesh_profile *p = mesh_profile_ref(mesh_manifest_profile(m, 0));
  mesh_manifest_free(m);
  ASSERT_MATCH(p, "GET", "/api/v1/exams/1/questions", "get_exam_questions");
  ck_assert_ptr_eq(mesh_profile_ref(p), p);
  mesh_profile_unref(p);
  ck_assert_str_eq(mesh_profile_name(p), "exam-api");
  mesh_profile_unref(p);
  mesh_profile_unref(NULL);
  ck_assert_ptr_null(mesh_profile_ref(NULL));
}
END_TEST

/* ---- classification ---- */

START_TEST(classification_tables) {
  mesh_profile *p = parse_seed("seed/exam-api-profile.yaml");
  const mesh_route *q = mesh_profile_route(p, 0);
  static const struct {
    uint32_t http;
    int32_t grpc;
    int route_failure, default_failure;
  } cases[] = {
      {200, -1, 0, 0}, {299, -1, 0, 0}, {300, -1, 0, 0}, {404, -1, 0, 0}, {499, -1, 0, 0},
      {500, -1, 1, 1}, {503, -1, 1, 1}, {599, -1, 1, 1}, {600, -1, 1, 1}, {100, -1, 0, 0},
      /* gRPC: the HTTP status is 200, so the route's 2xx class decides; the
       * default looks at the gRPC status. */
      {200, 0, 0, 0},  {200, 1, 0, 0},  {200, 2, 0, 1},  {200, 3, 0, 0},  {200, 4, 0, 1},
      {200, 5, 0, 0},  {200, 6, 0, 0},  {200, 7, 0, 1},  {200, 8, 0, 0},  {200, 9, 0, 0},
      {200, 10, 0, 0}, {200, 11, 0, 0}, {200, 12, 0, 0}, {200, 13, 0, 1}, {200, 14, 0, 1},
      {200, 15, 0, 1}, {200, 16, 0, 0}, {200, 99, 0, 0},
      /* A gRPC status decides the default even on an HTTP error status. */
      {503, 0, 1, 0},  {503, 14, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_msg(mesh_route_classify(q, cases[i].http, cases[i].grpc) == cases[i].route_failure,
                  "route: %u/%d", cases[i].http, cases[i].grpc);
    ck_assert_msg(mesh_route_classify(NULL, cases[i].http, cases[i].grpc) ==
                      cases[i].default_failure,
                  "default: %u/%d", cases[i].http, cases[i].grpc);
  }
  mesh_profile_unref(p);
}
END_TEST

START_TEST(response_class_combinators) {
  mesh_profile *p = parse_text(
      "apiVersion: linkerd.io/v1alpha2\n"
      "kind: ServiceProfile\n"
      "metadata: {name: web.default.svc.cluster.local}\n"
      "spec:\n"
      "  routes:\n"
      "  - name: r\n"
      "    condition: {method: GET}\n"
      "    responseClasses:\n"
      "    - condition: {status: {min: 429}}\n"              /* exactly 429 */
      "      isFailure: true\n"
      "    - condition: {status: {max: 503}}\n"              /* exactly 503: a success here */
      "    - condition:\n"
      "        all:\n"
      "        - status: {min: 400, max: 499}\n"
      "        - not: {status: {min: 404, max: 404}}\n"
      "      isFailure: true\n"
      "    - condition:\n"
      "        any: [{status: {min: 301}}, {status: {min: 302}}]\n"
      "      isFailure: true\n"
      "    - condition: {not: {status: {min: 100, max: 399}}}\n"
      "      isFailure: true\n");
  const mesh_route *r = mesh_profile_route(p, 0);
  ck_assert_int_eq(mesh_route_classify(r, 429, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 503, -1), 0); /* first class that matches wins */
  ck_assert_int_eq(mesh_route_classify(r, 502, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 400, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 404, -1), 1); /* not the 4xx class; the last one */
  ck_assert_int_eq(mesh_route_classify(r, 301, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 302, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 303, -1), 0);
  ck_assert_int_eq(mesh_route_classify(r, 200, -1), 0);
  ck_assert_int_eq(mesh_route_classify(r, 503, 14), 0); /* a class matched: gRPC is not asked */
  ck_assert_int_eq(mesh_route_classify(r, 200, 14), 1); /* none did: the gRPC default */
  mesh_profile_unref(p);
}
END_TEST

/* ---- matching ---- */

START_TEST(request_combinators_and_order) {
  mesh_profile *p = parse_text(
      "apiVersion: linkerd.io/v1alpha1\n" /* v1alpha1 reads the same */
      "kind: ServiceProfile\n"
      "metadata: {name: web.default.svc.cluster.local, namespace: default}\n"
      "spec:\n"
      "  routes:\n"
      "  - name: writes\n"
      "    condition:\n"
      "      any: [{method: POST}, {method: PUT}, {method: PATCH}]\n"
      "      pathRegex: /books(/.*)?\n"
      "  - name: reads_not_admin\n"
      "    condition:\n"
      "      all:\n"
      "      - method: GET\n"
      "      - not: {pathRegex: /admin(/.*)?}\n"
      "  - name: everything_admin\n"
      "    condition: {pathRegex: '/admin(/.*)?'}\n"
      "  - name: shadowed\n"
      "    condition: {method: GET}\n"
      "  - name: case\n"
      "    condition: {pathRegex: '(?i)/Case/[a-z]+'}\n");
  ASSERT_MATCH(p, "POST", "/books", "writes");
  ASSERT_MATCH(p, "PUT", "/books/1", "writes");
  ASSERT_MATCH(p, "DELETE", "/books/1", "[DEFAULT]");
  ASSERT_MATCH(p, "POST", "/authors", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "/books/1", "reads_not_admin");
  ASSERT_MATCH(p, "GET", "/admin/users", "everything_admin");
  ASSERT_MATCH(p, "DELETE", "/admin", "everything_admin");
  ASSERT_MATCH(p, "GET", "/CASE/ABC", "reads_not_admin"); /* the first match wins */
  ASSERT_MATCH(p, "HEAD", "/CASE/ABC", "case");
  ASSERT_MATCH(p, "HEAD", "/case/", "[DEFAULT]");
  /* A NULL method only matches routes that do not name one; the path is
   * read for path_len bytes only. */
  ck_assert_str_eq(mesh_route_name(mesh_profile_match(p, NULL, "/admin/xyz", 6)), "everything_admin");
  ck_assert_ptr_null(mesh_profile_match(p, NULL, "/books", 6));
  ck_assert_ptr_null(mesh_profile_match(p, "POST", NULL, 0));
  ck_assert_ptr_null(mesh_profile_match(NULL, "GET", "/", 1));
  ck_assert_uint_eq(mesh_route_timeout_ms(mesh_profile_route(p, 0)), MESH_ROUTE_DEFAULT_TIMEOUT_MS);
  /* NULL routes and profiles answer with the defaults. */
  ck_assert_ptr_null(mesh_route_name(NULL));
  ck_assert_uint_eq(mesh_route_timeout_ms(NULL), MESH_ROUTE_DEFAULT_TIMEOUT_MS);
  ck_assert_int_eq(mesh_route_is_retryable(NULL), 0);
  ck_assert_uint_eq(mesh_profile_route_count(NULL), 0);
  ck_assert_uint_eq(count_severity(MESH_DIAG_WARNING), 0);
  mesh_profile_unref(p);
}
END_TEST

static const char *const hot_paths[] = {"/api/v1/exams/42/questions", "/api/v1/exams/42/submit",
                                        "/nothing", "/api/v1/exams/x/questions/y"};

START_TEST(hot_path_does_not_allocate) {
  test_alloc a;
  mesh_ctx *c = test_ctx(&a);
  size_t len;
  char *text = test_read_data("seed/exam-api-profile.yaml", &len);
  mesh_profile *p;
  ck_assert_int_eq(mesh_profile_parse(c, "x.yaml", text, len, NULL, &p), 0);
  free(text);
  ck_assert_ptr_nonnull(mesh_profile_match(p, "GET", hot_paths[0], strlen(hot_paths[0])));
  long calls = a.calls;
  size_t hits = 0;
  for (int i = 0; i < 20000; i++) {
    const char *path = hot_paths[i % 4];
    const mesh_route *r = mesh_profile_match(p, i % 4 == 1 ? "POST" : "GET", path, strlen(path));
    hits += r != NULL;
    hits += (size_t)mesh_route_classify(r, 500 + (uint32_t)(i % 7), -1);
  }
  ck_assert_uint_eq(hits, 10000 + 20000); /* every 5xx fails, on a route or not */
  ck_assert_int_eq(a.calls, calls);
  mesh_profile_unref(p);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(c);
}
END_TEST

typedef struct {
  const mesh_profile *p;
  size_t wrong;
} worker_arg;

static void *worker(void *arg) {
  worker_arg *w = arg;
  for (int i = 0; i < 20000; i++) {
    const char *path = hot_paths[i % 4];
    const mesh_route *r = mesh_profile_match(w->p, "GET", path, strlen(path));
    int want = i % 4 == 0;
    if ((r != NULL) != want) w->wrong++;
  }
  return NULL;
}

START_TEST(concurrent_matching) {
  /* Each thread gets its own match block, freed when it exits (ASan runs
   * of this test catch a leak or a shared block). */
  mesh_profile *p = parse_seed("seed/exam-api-profile.yaml");
  pthread_t t[4];
  worker_arg w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (worker_arg){p, 0};
    ck_assert_int_eq(pthread_create(&t[i], NULL, worker, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    ck_assert_int_eq(pthread_join(t[i], NULL), 0);
    ck_assert_uint_eq(w[i].wrong, 0);
  }
  mesh_profile_unref(p);
}
END_TEST

/* ---- budgets ---- */

START_TEST(profile_budget) {
  mesh_profile *p = parse_text("apiVersion: linkerd.io/v1alpha2\n"
                               "kind: ServiceProfile\n"
                               "metadata: {name: web}\n"
                               "spec:\n"
                               "  retryBudget: {retryRatio: 0.5, minRetriesPerSecond: 3, ttl: 20s}\n"
                               "  routes:\n"
                               "  - name: a\n"
                               "    condition: {method: GET}\n"
                               "    isRetryable: true\n"
                               "  - name: b\n"
                               "    condition: {method: PUT}\n"
                               "    isRetryable: true\n"
                               "    retryBudget: {ttl: 2s}\n");
  double ratio;
  uint32_t min;
  uint64_t ttl;
  mesh_profile_retry_budget(p, &ratio, &min, &ttl);
  ck_assert(ratio == 0.5);
  ck_assert_uint_eq(min, 3);
  ck_assert_uint_eq(ttl, 20000);
  const mesh_route *a = mesh_profile_route(p, 0), *b = mesh_profile_route(p, 1);
  ck_assert_int_eq(mesh_route_is_retryable(a), 1);
  ck_assert_int_eq(mesh_route_retry_budget(a, &ratio, &min, &ttl), 0);
  ck_assert(ratio == 0.5);
  ck_assert_uint_eq(ttl, 20000);
  /* Each field of a budget defaults on its own. */
  ck_assert_int_eq(mesh_route_retry_budget(b, &ratio, &min, &ttl), 1);
  ck_assert(ratio == MESH_BUDGET_DEFAULT_RATIO);
  ck_assert_uint_eq(min, MESH_BUDGET_DEFAULT_MIN_PER_SEC);
  ck_assert_uint_eq(ttl, 2000);
  /* A retryable route's own budget is used: the warning says where it belongs only. */
  ck_assert_uint_eq(count_severity(MESH_DIAG_WARNING), 1);
  ASSERT_DIAG(MESH_DIAG_WARNING, 13, "spec.routes[1].retryBudget: retryBudget belongs in spec.retryBudget");
  ck_assert(!has_diag(MESH_DIAG_WARNING, 13, "never used"));
  mesh_profile_unref(p);

  p = parse_text("apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web}\n"
                 "spec:\n  retryBudget: {retryRatio: 1000, minRetriesPerSecond: 4294967295, ttl: 60s}\n");
  mesh_profile_retry_budget(p, &ratio, &min, &ttl);
  ck_assert(ratio == 1000);
  ck_assert_uint_eq(min, 4294967295u);
  ck_assert_uint_eq(ttl, 60000);
  ck_assert_uint_eq(mesh_profile_route_count(p), 0);
  mesh_profile_unref(p);
}
END_TEST

/* ---- errors ---- */

#define HEAD                                                                                     \
  "apiVersion: linkerd.io/v1alpha2\n"                   /* 1 */                                  \
  "kind: ServiceProfile\n"                              /* 2 */                                  \
  "metadata: {name: web.default.svc.cluster.local}\n"   /* 3 */                                  \
  "spec:\n"                                             /* 4 */
#define ROUTE                                                                                    \
  "  routes:\n"                                         /* 5 */                                  \
  "  - name: r\n"                                       /* 6 */

static const struct {
  const char *yaml;
  uint32_t line;
  const char *text;
} bad_inputs[] = {
    {HEAD ROUTE "    timeout: 1s\n", 6, "spec.routes[0]: missing required field 'condition'"},
    {HEAD "  routes:\n  - condition: {method: GET}\n", 6, "spec.routes[0]: missing required field 'name'"},
    {HEAD ROUTE "    condition: {}\n", 7,
     "spec.routes[0].condition: a condition needs at least one of method, pathRegex, all, any or not"},
    {HEAD ROUTE "    condition: GET\n", 7, "spec.routes[0].condition: expected a map, found a plain value"},
    {HEAD ROUTE "    condition:\n      pathRegex: /a(b\n", 8,
     "spec.routes[0].condition.pathRegex: invalid pathRegex '/a(b': missing closing parenthesis"},
    {HEAD ROUTE "    condition:\n      pathRegex: /a{2,1}\n", 8, "quantifier"},
    {HEAD ROUTE "    condition:\n      pathRegex: \"/a(?=b)\"\n", 8,
     "spec.routes[0].condition.pathRegex: invalid pathRegex '/a(?=b)': lookahead '(?=' is not "
     "supported (RE2 syntax) (at offset 2)"},
    {HEAD ROUTE "    condition:\n      pathRegex: \"\"\n", 8, "pathRegex must not be empty"},
    {HEAD ROUTE "    condition:\n      method: \"\"\n", 8, "method must not be empty"},
    {HEAD ROUTE "    condition:\n      method: GE T\n", 8, "'GE T' is not a valid HTTP method"},
    {HEAD ROUTE "    condition:\n      all: {method: GET}\n", 8,
     "spec.routes[0].condition.all: expected a list, found a map"},
    {HEAD ROUTE "    condition:\n      not: [{method: GET}]\n", 8,
     "spec.routes[0].condition.not: expected a map, found a list"},
    {HEAD ROUTE "    condition:\n      all:\n      - method: GET\n      - pathRegex: '(?<=x)'\n", 10,
     "spec.routes[0].condition.all[1].pathRegex: invalid pathRegex '(?<=x)': lookbehind"},
    {HEAD ROUTE "    condition:\n      any:\n      - {}\n", 9,
     "spec.routes[0].condition.any[0]: a condition needs at least one of"},
    {HEAD ROUTE "    condition: {method: GET}\n    timeout: 0s\n", 8,
     "spec.routes[0].timeout: timeout must be greater than zero"},
    {HEAD ROUTE "    condition: {method: GET}\n    timeout: 5\n", 8,
     "spec.routes[0].timeout: invalid duration '5': missing unit"},
    {HEAD ROUTE "    condition: {method: GET}\n    timeout: [5s]\n", 8,
     "spec.routes[0].timeout: expected a duration"},
    {HEAD ROUTE "    condition: {method: GET}\n    isRetryable: yes\n", 8,
     "spec.routes[0].isRetryable: expected true or false"},
    {HEAD ROUTE "    condition: {method: GET}\n  - name: r\n    condition: {method: PUT}\n", 8,
     "spec.routes[1].name: route name 'r' is already used by spec.routes[0]"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - condition:\n"
                "        status: {min: 500, max: 400}\n",
     10, "spec.routes[0].responseClasses[0].condition.status: min (500) is greater than max (400)"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - condition:\n"
                "        status: {min: 500, max: 600}\n",
     10, "spec.routes[0].responseClasses[0].condition.status.max: max must be between 100 and 599"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - condition:\n"
                "        status: {min: 99}\n",
     10, "status.min: min must be between 100 and 599, found 99"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - condition:\n"
                "        status: {}\n",
     10, "spec.routes[0].responseClasses[0].condition.status: status needs min, max or both"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - isFailure: true\n", 9,
     "spec.routes[0].responseClasses[0]: missing required field 'condition'"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n    - condition: {method: GET}\n", 9,
     "spec.routes[0].responseClasses[0].condition: a condition needs at least one of status, all, "
     "any or not"},
    {HEAD ROUTE "    condition: {method: GET}\n    responseClasses:\n"
                "    - condition: {status: {min: 500}}\n      isFailure: 1\n",
     10, "spec.routes[0].responseClasses[0].isFailure: expected true or false"},
    {HEAD "  retryBudget:\n    ttl: 500ms\n", 6, "spec.retryBudget.ttl: ttl must be between 1s and 60s, found 500ms"},
    {HEAD "  retryBudget:\n    ttl: 999999us\n", 6, "ttl must be between 1s and 60s"},
    {HEAD "  retryBudget:\n    ttl: 61s\n", 6, "ttl must be between 1s and 60s"},
    {HEAD "  retryBudget:\n    retryRatio: -0.1\n", 6,
     "spec.retryBudget.retryRatio: retryRatio must be between 0 and 1000"},
    {HEAD "  retryBudget:\n    minRetriesPerSecond: 4294967296\n", 6,
     "spec.retryBudget.minRetriesPerSecond: minRetriesPerSecond must be between 0 and 4294967295"},
    {HEAD "  retryBudget: 0.2\n", 5, "spec.retryBudget: expected a map"},
    {HEAD ROUTE "    condition: {method: GET}\n    retryBudget: {ttl: 0s}\n", 8,
     "spec.routes[0].retryBudget.ttl: ttl must be between 1s and 60s"},
    {HEAD "  routes: {a: 1}\n", 5, "spec.routes: expected a list, found a map"},
    {HEAD "  routes:\n  - just-a-name\n", 6, "spec.routes[0]: expected a map, found a plain value"},
    {"apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web}\n", 1,
     "missing required field 'spec'"},
    {HEAD "  dstOverrides:\n  - authority: a.default.svc.cluster.local:80\n    weight: -1\n", 7,
     "spec.dstOverrides[0].weight: weight must not be negative, found -1"},
    {HEAD "  dstOverrides:\n  - weight: 1\n", 6, "spec.dstOverrides[0]: missing required field 'authority'"},
    {HEAD "  dstOverrides:\n  - authority: a:80\n", 6, "spec.dstOverrides[0]: missing required field 'weight'"},
    {HEAD "  dstOverrides:\n  - authority: a:80\n    weight: heavy\n", 7,
     "spec.dstOverrides[0].weight: invalid quantity 'heavy'"},
    {HEAD "  dstOverrides:\n  - authority: http://a:80/\n    weight: 1\n", 6, "is not an authority"},
    {HEAD "  dstOverrides:\n  - {authority: a:80, weight: 1}\n  - {authority: a:80, weight: 2}\n", 7,
     "spec.dstOverrides[1].authority: authority 'a:80' is already listed at dstOverrides[0]"},
    {HEAD "  dstOverrides:\n  - {authority: a:80, weight: 0}\n  - {authority: b:80, weight: 0m}\n", 6,
     "spec.dstOverrides: every weight is zero"},
    {HEAD "  dstOverrides: a:80\n", 5, "spec.dstOverrides: expected a list"},
    {HEAD "  opaquePorts: [0]\n", 5, "spec.opaquePorts[0]: invalid port '0'"},
    {HEAD "  opaquePorts: [80, \"70000\"]\n", 5, "spec.opaquePorts[1]: invalid port '70000'"},
    {HEAD "  opaquePorts: \"5-3\"\n", 5, "spec.opaquePorts: port range '5-3' is reversed"},
    {HEAD "  opaquePorts: \"1-2000\"\n", 5, "port range '1-2000' has more than 1024 ports"},
    {HEAD "  opaquePorts: \"80,,81\"\n", 5, "invalid port ''"},
    {HEAD "  opaquePorts: \"80,x\"\n", 5, "invalid port 'x'"},
    {HEAD "  opaquePorts: {a: 1}\n", 5, "spec.opaquePorts: expected a list of ports"},
    {HEAD "  opaquePorts: [[80]]\n", 5, "spec.opaquePorts[0]: expected a value, found a list"},
    {HEAD "  opaquePorts: [\"1-1000\", \"1001-1025\"]\n", 5, "at most 1024 opaque ports are allowed, found 1025"},
};

START_TEST(bad_input_is_reported_where_it_is) {
  for (size_t i = 0; i < sizeof bad_inputs / sizeof bad_inputs[0]; i++) {
    parse_fails(bad_inputs[i].yaml);
    if (!has_diag(MESH_DIAG_ERROR, bad_inputs[i].line, bad_inputs[i].text)) {
      fprintf(stderr, "case %zu:\n%s", i, bad_inputs[i].yaml);
      dump_diags();
    }
    ck_assert_msg(has_diag(MESH_DIAG_ERROR, bad_inputs[i].line, bad_inputs[i].text),
                  "case %zu: no error at line %u containing \"%s\"", i, bad_inputs[i].line,
                  bad_inputs[i].text);
    /* Diagnostics carry the file and a column. */
    ck_assert_str_eq(mesh_diags_file(diags, 0), "t.yaml");
  }
}
END_TEST

START_TEST(every_problem_is_reported) {
  parse_fails(HEAD
              "  routes:\n"                              /* 5 */
              "  - name: a\n"                            /* 6 */
              "    condition: {pathRegex: '(a)\\1'}\n"   /* 7 */
              "    timeout: 0s\n"                        /* 8 */
              "  - name: a\n"                            /* 9 */
              "    condition: {method: GET, pathhRegex: /x}\n" /* 10 */
              "  opaquePorts: [0, 70000]\n"              /* 11 */
              "  retryBudget: {ttl: 0s}\n");             /* 12 */
  ck_assert_uint_eq(mesh_diags_errors(diags), 6);
  ASSERT_DIAG(MESH_DIAG_ERROR, 7, "backreference '\\1' is not supported (RE2 syntax) (at offset 3)");
  ASSERT_DIAG(MESH_DIAG_ERROR, 8, "timeout must be greater than zero");
  ASSERT_DIAG(MESH_DIAG_ERROR, 9, "route name 'a' is already used");
  ASSERT_DIAG(MESH_DIAG_ERROR, 11, "invalid port '0'");
  ASSERT_DIAG(MESH_DIAG_ERROR, 11, "invalid port '70000'");
  ASSERT_DIAG(MESH_DIAG_ERROR, 12, "ttl must be between 1s and 60s");
  ASSERT_DIAG(MESH_DIAG_WARNING, 10,
              "spec.routes[1].condition.pathhRegex: unknown field 'pathhRegex' is ignored (did you "
              "mean 'pathRegex'?)");
}
END_TEST

START_TEST(unknown_fields_warn) {
  mesh_profile *p = parse_text(HEAD
                               "  routs: []\n"                               /* 5 */
                               "  routes:\n"                                 /* 6 */
                               "  - name: r\n"                               /* 7 */
                               "    condition: {method: GET, host: x}\n"     /* 8 */
                               "    timeOut: 1s\n"                           /* 9 */
                               "    responseClasses:\n"                      /* 10 */
                               "    - condition: {status: {min: 500, mx: 1}}\n" /* 11 */
                               "      failure: true\n"                       /* 12 */
                               "  retryBudget: {ratio: 1}\n"                 /* 13 */
                               "  dstOverrides: [{authority: a:1, weight: 1, port: 2}]\n" /* 14 */
                               "status: {}\n");                              /* 15 */
  ck_assert_uint_eq(count_severity(MESH_DIAG_WARNING), 8);
  ASSERT_DIAG(MESH_DIAG_WARNING, 5, "spec.routs: unknown field 'routs' is ignored (did you mean 'routes'?)");
  ASSERT_DIAG(MESH_DIAG_WARNING, 8, "spec.routes[0].condition.host: unknown field 'host'");
  ASSERT_DIAG(MESH_DIAG_WARNING, 9, "did you mean 'timeout'?");
  ASSERT_DIAG(MESH_DIAG_WARNING, 11, "condition.status.mx: unknown field 'mx' is ignored (did you mean 'max'?)");
  ASSERT_DIAG(MESH_DIAG_WARNING, 12, "unknown field 'failure'");
  ASSERT_DIAG(MESH_DIAG_WARNING, 13, "spec.retryBudget.ratio: unknown field 'ratio'");
  ASSERT_DIAG(MESH_DIAG_WARNING, 14, "spec.dstOverrides[0].port: unknown field 'port'");
  ASSERT_DIAG(MESH_DIAG_WARNING, 15, "status: unknown field 'status'");
  /* Case matters: the method is compared exactly. */
  mesh_profile_unref(p);
  p = parse_text(HEAD ROUTE "    condition: {method: get}\n");
  ASSERT_DIAG(MESH_DIAG_WARNING, 7, "methods are compared exactly: 'get' does not match GET requests");
  ASSERT_MATCH(p, "get", "/", "r");
  ASSERT_MATCH(p, "GET", "/", "[DEFAULT]");
  mesh_profile_unref(p);
}
END_TEST

START_TEST(one_service_profile_only) {
  parse_fails("");
  ASSERT_DIAG(MESH_DIAG_ERROR, 0, "expected a ServiceProfile, found no document");
  parse_fails(HEAD "  routes: []\n---\n" HEAD "  routes: []\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, 7, "expected one document (a ServiceProfile), found 2");
  size_t len;
  char *text = test_read_data("seed/traffic-splits.yaml", &len);
  char *first = strstr(text, "\n---");
  ck_assert_ptr_nonnull(first);
  *first = '\0';
  parse_fails(text);
  free(text);
  ASSERT_DIAG(MESH_DIAG_ERROR, 3,
              "kind: expected a ServiceProfile (linkerd.io/v1alpha2), found split.smi-spec.io/v1alpha1 "
              "TrafficSplit");
  parse_fails("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, 2, "found apps/v1 Deployment");
  /* Syntax errors come from the manifest loader. */
  mesh_profile *p = NULL;
  ck_assert_int_eq(mesh_profile_parse(ctx, "t.yaml", "a: [", 4, diags, &p), MESH_ERR_PARSE);
  ck_assert_ptr_null(p);
  /* JSON is YAML. */
  const char *json = "{\"apiVersion\": \"linkerd.io/v1alpha2\", \"kind\": \"ServiceProfile\","
                     " \"metadata\": {\"name\": \"web\"}, \"spec\": {\"routes\": [{\"name\": \"x\","
                     " \"condition\": {\"pathRegex\": \"/x\"}, \"timeout\": \"250ms\"}]}}";
  p = parse_text(json);
  ASSERT_MATCH(p, "DELETE", "/x", "x");
  ck_assert_uint_eq(mesh_route_timeout_ms(mesh_profile_route(p, 0)), 250);
  ck_assert_str_eq(mesh_profile_namespace(p), "default");
  mesh_profile_unref(p);
  ck_assert_int_eq(mesh_profile_parse(NULL, "t", "", 0, NULL, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_parse(ctx, "t", NULL, 3, NULL, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_parse(ctx, "t", "", 0, NULL, NULL), MESH_ERR_INVALID);
  /* Without a diagnostics list the result is the same. */
  ck_assert_int_eq(mesh_profile_parse(ctx, NULL, "x: 1\n", 5, NULL, &p), MESH_ERR_PARSE);
}
END_TEST

/* ---- regexes ---- */

#define NS " is not supported (RE2 syntax)"
static const struct {
  const char *pattern;
  const char *why; /* exactly */
  size_t offset;
} refused[] = {
    {"/a(?=b)", "lookahead '(?=' is not supported (RE2 syntax)", 2},
    {"/a(?!b)", "negative lookahead '(?!'" NS, 2},
    {"(?<=a)b", "lookbehind '(?<='" NS, 0},
    {"(?<!a)b", "negative lookbehind '(?<!'" NS, 0},
    {"(a)\\1", "backreference '\\1'" NS, 3},
    {"(a)\\9", "backreference '\\9'" NS, 3},
    {"(?P<x>a)(?P=x)", "named backreference '(?P=x)'" NS, 8},
    {"(a)\\g1", "backreference or subroutine call '\\g1'" NS, 3},
    {"(a)\\g{-1}", "backreference or subroutine call '\\g{-1}'" NS, 3},
    {"(a)\\g<1>x", "backreference or subroutine call '\\g<1>'" NS, 3},
    {"(?<n>a)\\k<n>", "named backreference '\\k<n>'" NS, 7},
    {"(?<n>a)\\k{n}", "named backreference '\\k{n}'" NS, 7},
    {"/(?>a+)b", "atomic group '(?>'" NS, 1},
    {"/a*+b", "possessive quantifier '*+'" NS, 2},
    {"/a++b", "possessive quantifier '++'" NS, 2},
    {"/a?+b", "possessive quantifier '?+'" NS, 2},
    {"/a{2}+b", "possessive quantifier '{2}+'" NS, 2},
    {"/a{2,}+b", "possessive quantifier '{2,}+'" NS, 2},
    {"/a{2,3}+", "possessive quantifier '{2,3}+'" NS, 2},
    {"(?R)", "recursion '(?R)'" NS, 0},
    {"(a)(?1)", "subroutine call '(?1)'" NS, 3},
    {"(a)(?-1)", "subroutine call '(?-1)'" NS, 3},
    {"(a)(?+1)(b)", "subroutine call '(?+1)'" NS, 3},
    {"(?<n>a)(?&n)", "subroutine call '(?&n)'" NS, 7},
    {"(?P<n>a)(?P>n)", "subroutine call '(?P>n)'" NS, 8},
    {"(?(1)a|b)", "conditional group '(?('" NS, 0},
    {"(?C1)a", "callout '(?C1)'" NS, 0},
    {"(*SKIP)a", "backtracking verb or start option '(*SKIP)'" NS, 0},
    {"(*LIMIT_MATCH=1000000000)a", "backtracking verb or start option '(*LIMIT_MATCH=1000000000)'" NS, 0},
    {"a(?#comment)", "comment group '(?#'" NS, 1},
    {"(?|a)", "branch reset group '(?|'" NS, 0},
    {"(?x)a b", "flag 'x' is not supported (RE2 syntax; its flags are i, m, s and U)", 2},
    {"(?i-x:a)", "flag 'x' is not supported (RE2 syntax; its flags are i, m, s and U)", 4},
    {"(?^)a", "group syntax '(?^'" NS, 0},
    {"a)(b", "unmatched ')'", 1},
    {"a)|(b", "unmatched ')'", 1},
    {"abc\\", "trailing backslash", 3},
    {"abc\\c", "incomplete escape \\c", 3},
    {"[a]\\1", "backreference '\\1'" NS, 3},
    {"[\\Q]\\E]\\1", "backreference '\\1'" NS, 7},
    {"\\Q(?=\\E(?=", "lookahead '(?='" NS, 7},
};

START_TEST(re2_incompatible_regexes_are_refused) {
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
    mesh__regex *re = (mesh__regex *)&re;
    char why[256];
    size_t off = 999;
    const char *pat = refused[i].pattern;
    int rc = mesh__regex_compile(ctx, pat, strlen(pat), &re, why, sizeof why, &off);
    ck_assert_msg(rc == MESH_ERR_PARSE, "'%s' compiled (rc %d)", pat, rc);
    ck_assert_ptr_eq(re, (mesh__regex *)&re);
    ck_assert_msg(strcmp(why, refused[i].why) == 0, "'%s': '%s', want '%s'", pat, why, refused[i].why);
    ck_assert_msg(off == refused[i].offset, "'%s': offset %zu, want %zu", pat, off, refused[i].offset);
  }
}
END_TEST

static const struct {
  const char *pattern;
  const char *subject;
  int match;
} accepted[] = {
    {"/health|/ready|/metrics", "/ready", 1},
    {"/health|/ready|/metrics", "/readyz", 0},
    {"/health|/ready|/metrics", "/x/metrics", 0},
    {"^/already$", "/already", 1},      /* anchoring twice is harmless */
    {"^/already$", "/already/x", 0},
    {"/a$", "/a\n", 0},                 /* $ is the very end, as RE2 */
    {"/a", "/a\n", 0},
    {"(?m)/a$\n", "/a\n", 1},
    {"[(?=x)]+", "(?=x", 1},            /* inside a class, (?= is four characters */
    {"\\(?=", "(=", 1},                 /* an escaped '(' then '?' and '=' */
    {"\\(?=", "=", 1},
    {"a\\*+", "a***", 1},              /* an escaped '*' then '+' */
    {"x}+", "x}}", 1},                 /* '}' not closing a quantifier is a literal */
    {"x{2}", "xx", 1},
    {"x{2}?", "xx", 1},
    {"a*?b", "aab", 1},
    {"a+?", "aa", 1},
    {"\\Q(?=\\E.", "(?=x", 1},
    {"\\Qa)b", "a)b", 1},             /* an open quote cannot swallow the anchor */
    {"\\Qa)b", "a)b)$", 0},
    {"[\\Q]\\E]+", "]]", 1},
    {"(?i)/api", "/API", 1},
    {"(?i:/a)b", "/Ab", 1},
    {"(?i:/a)b", "/AB", 0},
    {"(?s).", "\n", 1},
    {".", "\n", 0},
    {"(?U)a+", "aa", 1},
    {"(?P<id>[0-9]+)/(?<name>[a-z]+)", "42/ab", 1},
    {"\\d+-\\w+\\s\\S", "12-ab x", 1},
    {"[[:alpha:]]+", "abc", 1},
    {"[[:alpha:]]+", "ab1", 0},
    {"[]a]+", "]a]", 1},
    {"[^]a]+", "bcd", 1},
    {"\\x{41}+", "AAA", 1},            /* the braces of \x{..} are no quantifier */
    {"\\p{L}+", "h\xc3\xa9llo", 1},
    {"/.", "/\xc3\xa9", 1},             /* '.' is one UTF-8 character */
    {".*", "\xff", 0},                  /* invalid UTF-8 never matches, and is no error */
    {"/api/v1/exams/[^/]+/questions", "/api/v1/exams/42/questions", 1},
    {"", "", 1},
    {"\\A/x\\z", "/x", 1},
    {"a|", "", 1},
};

START_TEST(re2_regexes_are_accepted) {
  for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
    mesh__regex *re = NULL;
    char why[256];
    size_t off;
    const char *pat = accepted[i].pattern;
    int rc = mesh__regex_compile(ctx, pat, strlen(pat), &re, why, sizeof why, &off);
    ck_assert_msg(rc == 0, "'%s': rc %d: %s at %zu", pat, rc, why, off);
    ck_assert_str_eq(mesh__regex_pattern(re), pat);
    const char *s = accepted[i].subject;
    ck_assert_msg(mesh__regex_match(re, s, strlen(s)) == accepted[i].match, "'%s' on '%s': want %d",
                  pat, s, accepted[i].match);
    mesh__regex_free(re);
  }
  mesh__regex_free(NULL);
  ck_assert_int_eq(mesh__regex_match(NULL, "x", 1), 0);
}
END_TEST

START_TEST(regex_errors_and_limits) {
  mesh__regex *re = NULL;
  char why[256];
  size_t off;
  /* PCRE2's own message and an offset inside the pattern as written. */
  ck_assert_int_eq(mesh__regex_compile(ctx, "/a(b", 4, &re, why, sizeof why, &off), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "missing closing parenthesis"));
  ck_assert_uint_eq(off, 4);
  ck_assert_int_eq(mesh__regex_compile(ctx, "/x[a", 4, &re, why, sizeof why, &off), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "missing terminating ]"));
  ck_assert_uint_le(off, 4);
  ck_assert_int_eq(mesh__regex_compile(ctx, "ab\\Cd", 5, &re, why, sizeof why, &off), MESH_ERR_PARSE);
  ck_assert_uint_eq(off, 4);
  ck_assert_int_eq(mesh__regex_compile(ctx, "/\xff", 2, &re, why, sizeof why, &off), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "UTF-8"));
  ck_assert_uint_eq(off, 1);
  ck_assert_int_eq(mesh__regex_compile(ctx, "*a", 2, &re, why, sizeof why, &off), MESH_ERR_PARSE);
  ck_assert_uint_eq(off, 0);
  ck_assert_int_eq(mesh__regex_compile(ctx, "a\0b", 3, &re, why, sizeof why, &off), 0);
  ck_assert_int_eq(mesh__regex_match(re, "a\0b", 3), 1); /* lengths, not C strings */
  ck_assert_int_eq(mesh__regex_match(re, "a", 1), 0);
  mesh__regex_free(re);
  char *big = malloc(MESH__REGEX_MAX_LEN + 2);
  memset(big, 'a', MESH__REGEX_MAX_LEN + 1);
  ck_assert_int_eq(mesh__regex_compile(ctx, big, MESH__REGEX_MAX_LEN + 1, &re, why, sizeof why, &off),
                   MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "longer than"));
  ck_assert_int_eq(mesh__regex_compile(ctx, big, MESH__REGEX_MAX_LEN, &re, NULL, 0, NULL), 0);
  mesh__regex_free(re);
  free(big);
  ck_assert_int_eq(mesh__regex_compile(NULL, "a", 1, &re, why, sizeof why, &off), MESH_ERR_INVALID);

  /* JIT is used where PCRE2 has it. */
  uint32_t jit = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &jit);
  ck_assert_int_eq(mesh__regex_compile(ctx, "/x", 2, &re, why, sizeof why, &off), 0);
  ck_assert_int_eq(mesh__regex_is_jit(re), (int)jit);
  mesh__regex_free(re);

  /* Exponential backtracking stops at the match limit and counts as no
   * match; the same pattern still matches what it should. */
  ck_assert_int_eq(mesh__regex_compile(ctx, "(x+x+)+[yz]", 11, &re, why, sizeof why, &off), 0);
  char subject[64];
  memset(subject, 'x', 40);
  ck_assert_int_eq(mesh__regex_match(re, subject, 40), 0);
  subject[40] = 'y';
  ck_assert_int_eq(mesh__regex_match(re, subject, 41), 1);
  mesh__regex_free(re);
}
END_TEST

/* ---- dstOverrides, opaque ports, splits ---- */

/* A pattern must never reach past its own anchoring: the POSIX-class quirk
 * below once closed a textual ^(?:...)$ wrapper early and matched every path. */
START_TEST(anchoring_cannot_be_escaped) {
  static const char *const escapes[] = {"[[:x[:])|.*|(?:]", ")|.*|(", "/a)|(.*", "\\Q)|.*"};
  for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web}\n"
             "spec:\n  routes:\n  - name: health\n    condition: {method: GET, pathRegex: '%s'}\n",
             escapes[i]);
    mesh_profile *p = NULL;
    mesh_diags_clear(diags);
    if (mesh_profile_parse(ctx, "t.yaml", yaml, strlen(yaml), diags, &p) == 0) {
      ASSERT_MATCH(p, "GET", "/admin/delete-everything", "[DEFAULT]");
      mesh_profile_unref(p);
    }
  }
  mesh_profile *p = parse_text("apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n"
                               "metadata: {name: web}\nspec:\n  routes:\n  - name: any\n"
                               "    condition: {pathRegex: '/a|/b'}\n");
  ASSERT_MATCH(p, "GET", "/a", "any");
  ASSERT_MATCH(p, "GET", "/b", "any");
  ASSERT_MATCH(p, "GET", "/a/b", "[DEFAULT]");
  ASSERT_MATCH(p, "GET", "x/b", "[DEFAULT]");
  mesh_profile_unref(p);
}
END_TEST

START_TEST(dst_overrides_are_normalised) {
  mesh_profile *p = parse_text(HEAD
                               "  dstOverrides:\n"
                               "  - authority: web-v1.default.svc.cluster.local:8080\n"
                               "    weight: 1\n"
                               "  - authority: web-v2.default.svc.cluster.local:8080\n"
                               "    weight: 500m\n"
                               "  - authority: web-v3.default.svc.cluster.local:8080\n"
                               "    weight: 0\n"
                               "  - authority: web-v4.default.svc.cluster.local:8080\n"
                               "    weight: \"1.5\"\n");
  const mesh_split *s = mesh_profile_dst_overrides(p);
  ck_assert_ptr_nonnull(s);
  ck_assert_str_eq(mesh_split_service(s), "web.default.svc.cluster.local");
  ck_assert_str_eq(mesh_split_namespace(s), "default");
  ck_assert_uint_eq(mesh_split_count(s), 4);
  ck_assert_str_eq(mesh_split_backend(s, 0), "web-v1.default.svc.cluster.local:8080");
  ck_assert_str_eq(mesh_split_backend(s, 3), "web-v4.default.svc.cluster.local:8080");
  ck_assert_uint_eq(mesh_split_weight_milli(s, 0), 1000);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 1), 500);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 2), 0);
  ck_assert_uint_eq(mesh_split_weight_milli(s, 3), 1500);
  ck_assert_uint_eq(mesh_split_weight(s, 0), 3333);
  ck_assert_uint_eq(mesh_split_weight(s, 1), 1667);
  ck_assert_uint_eq(mesh_split_weight(s, 2), 0);
  ck_assert_uint_eq(mesh_split_weight(s, 3), 5000);
  uint32_t sum = 0;
  for (size_t i = 0; i < mesh_split_count(s); i++) sum += mesh_split_weight(s, i);
  ck_assert_uint_eq(sum, MESH_WEIGHT_TOTAL);
  ck_assert_uint_ne(mesh_split_pick(s, 0), (size_t)-1);
  mesh_profile_unref(p);
  /* An empty list is no overrides at all. */
  p = parse_text(HEAD "  dstOverrides: []\n");
  ck_assert_ptr_null(mesh_profile_dst_overrides(p));
  mesh_profile_unref(p);
}
END_TEST

START_TEST(opaque_ports) {
  mesh_profile *p = parse_text(HEAD "  opaquePorts: [5432, \"4000-4002\", 80, 3306, \"3306,25\", 4001]\n");
  static const uint16_t want[] = {25, 80, 3306, 4000, 4001, 4002, 5432};
  ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 7);
  for (size_t i = 0; i < 7; i++) ck_assert_uint_eq(mesh_profile_opaque_port(p, i), want[i]);
  ck_assert_uint_eq(mesh_profile_opaque_port(p, 7), 0);
  mesh_profile_unref(p);
  p = parse_text(HEAD "  opaquePorts: \"3306, 5432,1-3\"\n");
  ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 5);
  ck_assert_uint_eq(mesh_profile_opaque_port(p, 0), 1);
  ck_assert_uint_eq(mesh_profile_opaque_port(p, 4), 5432);
  mesh_profile_unref(p);
  p = parse_text(HEAD "  opaquePorts: 65535\n");
  ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 1);
  ck_assert_uint_eq(mesh_profile_opaque_port(p, 0), 65535);
  mesh_profile_unref(p);
  /* Exactly the cap. */
  p = parse_text(HEAD "  opaquePorts: [\"1-1000\", \"60000-60023\", 1000]\n");
  ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 1024);
  ck_assert_uint_eq(mesh_profile_opaque_port(p, 1023), 60023);
  mesh_profile_unref(p);
  ck_assert_uint_eq(mesh_profile_opaque_port_count(NULL), 0);
}
END_TEST

static mesh_split *canary_split(mesh_ctx *c, int seal) {
  mesh_split *s = NULL;
  if (mesh_split_new(c, "exam-api", "production", &s) < 0) return NULL;
  if (mesh_split_add(s, "exam-api-stable", 900) < 0 || mesh_split_add(s, "exam-api-canary", 100) < 0 ||
      (seal && mesh_split_seal(s) < 0)) {
    mesh_split_unref(s);
    return NULL;
  }
  return s;
}

START_TEST(with_split) {
  mesh_profile *base = parse_seed("seed/exam-api-profile.yaml");
  mesh_split *s = canary_split(ctx, 1);
  ck_assert_ptr_nonnull(s);
  mesh_profile *p = NULL;
  ck_assert_int_eq(mesh_profile_with_split(ctx, base, s, NULL, 8080, &p), 0);
  mesh_profile_unref(base); /* the new profile stands on its own */
  mesh_split_unref(s);
  ck_assert_str_eq(mesh_profile_name(p), "exam-api");
  ck_assert_str_eq(mesh_profile_namespace(p), "production");
  ck_assert_uint_eq(mesh_profile_route_count(p), 2);
  ASSERT_MATCH(p, "GET", "/api/v1/exams/42/questions", "get_exam_questions");
  ck_assert_uint_eq(mesh_route_timeout_ms(mesh_profile_route(p, 1)), 30000);
  const mesh_split *d = mesh_profile_dst_overrides(p);
  ck_assert_ptr_nonnull(d);
  ck_assert_uint_eq(mesh_split_count(d), 2);
  ck_assert_str_eq(mesh_split_backend(d, 0), "exam-api-stable.production.svc.cluster.local:8080");
  ck_assert_str_eq(mesh_split_backend(d, 1), "exam-api-canary.production.svc.cluster.local:8080");
  ck_assert_uint_eq(mesh_split_weight(d, 0), 9000);
  ck_assert_uint_eq(mesh_split_weight(d, 1), 1000);

  /* Again from the derived profile, with another cluster domain: the
   * overrides are replaced, not added to. */
  s = canary_split(ctx, 1);
  mesh_profile *q = NULL;
  ck_assert_int_eq(mesh_profile_with_split(ctx, p, s, "mesh.example", 80, &q), 0);
  ck_assert_uint_eq(mesh_split_count(mesh_profile_dst_overrides(q)), 2);
  ck_assert_str_eq(mesh_split_backend(mesh_profile_dst_overrides(q), 1),
                   "exam-api-canary.production.svc.mesh.example:80");
  mesh_profile_unref(p);
  ASSERT_MATCH(q, "POST", "/api/v1/exams/1/submit", "submit_exam_answers");
  mesh_profile_unref(q);

  /* No base: no routes, the default budget, the split's service. */
  ck_assert_int_eq(mesh_profile_with_split(ctx, NULL, s, NULL, 8080, &p), 0);
  ck_assert_str_eq(mesh_profile_name(p), "exam-api");
  ck_assert_str_eq(mesh_profile_namespace(p), "production");
  ck_assert_uint_eq(mesh_profile_route_count(p), 0);
  ck_assert_ptr_null(mesh_profile_match(p, "GET", "/", 1));
  double ratio;
  mesh_profile_retry_budget(p, &ratio, NULL, NULL);
  ck_assert(ratio == MESH_BUDGET_DEFAULT_RATIO);
  mesh_profile_unref(p);

  /* Refused: an unsealed split, port 0, an empty domain, NULLs. */
  mesh_split *open = canary_split(ctx, 0);
  p = (mesh_profile *)&p;
  ck_assert_int_eq(mesh_profile_with_split(ctx, NULL, open, NULL, 8080, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_with_split(ctx, NULL, s, NULL, 0, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_with_split(ctx, NULL, s, "", 80, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_with_split(ctx, NULL, NULL, NULL, 80, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_profile_with_split(NULL, NULL, s, NULL, 80, &p), MESH_ERR_INVALID);
  ck_assert_ptr_eq(p, (mesh_profile *)&p);
  mesh_split_unref(open);
  mesh_split_unref(s);
}
END_TEST

/* ---- allocation failures ---- */

static int parse_seed_op(mesh_ctx *c, void *arg) {
  size_t len;
  char *text = test_read_data(arg, &len);
  mesh_diags *d = NULL;
  mesh_profile *p = NULL;
  int rc = mesh_diags_new(c, &d);
  if (rc == 0) rc = mesh_profile_parse(c, arg, text, len, d, &p);
  free(text);
  if (rc == 0) {
    ck_assert_uint_eq(mesh_diags_count(d), 2); /* the two budget warnings, whole */
    const mesh_route *a = mesh_profile_match(p, "GET", "/api/v1/premium/x", 17);
    const mesh_route *b = mesh_profile_match(p, "GET", "/api/v1/exams/1/questions", 25);
    ck_assert(a != NULL || b != NULL);
  }
  mesh_profile_unref(p);
  mesh_diags_free(d);
  return rc;
}

START_TEST(allocation_failures_seed) {
  ck_assert_int_gt(test_alloc_failures(parse_seed_op, "seed/exam-api-profile.yaml"), 50);
  ck_assert_int_gt(test_alloc_failures(parse_seed_op, "seed/user-service-profile.yaml"), 50);
}
END_TEST

static const char rich_profile[] =
    HEAD
    "  retryBudget: {retryRatio: 0.5, ttl: 5s}\n"
    "  opaquePorts: [3306, \"4000-4010\"]\n"
    "  dstOverrides:\n"
    "  - {authority: a.default.svc.cluster.local:80, weight: 900m}\n"
    "  - {authority: b.default.svc.cluster.local:80, weight: 100m}\n"
    "  routes:\n"
    "  - name: r\n"
    "    condition:\n"
    "      all: [{method: GET}, {not: {pathRegex: /x/.*}}]\n"
    "      any: [{pathRegex: '/a/[0-9]+'}, {pathRegex: /b}]\n"
    "    responseClasses:\n"
    "    - condition: {any: [{status: {min: 500}}, {not: {status: {min: 100, max: 599}}}]}\n"
    "      isFailure: true\n"
    "    isRetryable: true\n"
    "    timeout: 1s\n";

static int rich_op(mesh_ctx *c, void *arg) {
  (void)arg;
  mesh_profile *p = NULL, *q = NULL;
  mesh_split *s = NULL;
  int rc = mesh_profile_parse(c, "rich.yaml", rich_profile, strlen(rich_profile), NULL, &p);
  if (rc == 0) {
    ck_assert_str_eq(match_name(p, "GET", "/a/12"), "r");
    ck_assert_uint_eq(mesh_profile_opaque_port_count(p), 12);
    ck_assert_uint_eq(mesh_split_weight(mesh_profile_dst_overrides(p), 0), 9000);
    s = canary_split(c, 1);
    rc = s ? mesh_profile_with_split(c, p, s, NULL, 80, &q) : MESH_ERR_NOMEM;
  }
  if (rc == 0) ck_assert_uint_eq(mesh_profile_opaque_port_count(q), 12);
  mesh_profile_unref(q);
  mesh_split_unref(s);
  mesh_profile_unref(p);
  return rc;
}

START_TEST(allocation_failures_rich) {
  ck_assert_int_gt(test_alloc_failures(rich_op, NULL), 50);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("profile");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, seed_exam_api);
  tcase_add_test(tc, seed_user_service);
  tcase_add_test(tc, profile_outlives_manifest);
  tcase_add_test(tc, classification_tables);
  tcase_add_test(tc, response_class_combinators);
  tcase_add_test(tc, request_combinators_and_order);
  tcase_add_test(tc, hot_path_does_not_allocate);
  tcase_add_test(tc, concurrent_matching);
  tcase_add_test(tc, profile_budget);
  tcase_add_test(tc, bad_input_is_reported_where_it_is);
  tcase_add_test(tc, every_problem_is_reported);
  tcase_add_test(tc, unknown_fields_warn);
  tcase_add_test(tc, one_service_profile_only);
  tcase_add_test(tc, re2_incompatible_regexes_are_refused);
  tcase_add_test(tc, re2_regexes_are_accepted);
  tcase_add_test(tc, regex_errors_and_limits);
  tcase_add_test(tc, anchoring_cannot_be_escaped);
  tcase_add_test(tc, dst_overrides_are_normalised);
  tcase_add_test(tc, opaque_ports);
  tcase_add_test(tc, with_split);
  tcase_add_test(tc, allocation_failures_seed);
  tcase_add_test(tc, allocation_failures_rich);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
