/* Unit tests of the store: snapshots, Services and Workloads, resolution, messages, the watched directory, the fed store. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "testutil.h"

static const char SERVICES[] =
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Service\n"
    "metadata: {name: web, namespace: shop}\n"
    "spec:\n"
    "  selector: {app: web}\n"
    "  ports:\n"
    "  - {name: http, port: 80, targetPort: http, protocol: http}\n"
    "  - {port: 9090, targetPort: 9091}\n"
    "  - {port: 3306, protocol: opaque}\n"
    "  opaquePorts: [5432]\n"
    "---\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Service\n"
    "metadata: {name: api}\n"
    "spec:\n"
    "  selector: {app: api, tier: back}\n"
    "  ports: [{port: 8080}]\n"
    "---\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Service\n"
    "metadata: {name: empty, namespace: shop}\n"
    "spec: {ports: [{port: 80}]}\n";

static const char WORKLOADS[] =
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: web-1, namespace: shop, labels: {app: web, version: v1}}\n"
    "spec: {serviceAccount: web, address: 127.0.0.2, ports: [{name: http, port: 8080}]}\n"
    "---\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: web-2, namespace: shop, labels: {app: web}}\n"
    "spec: {addresses: [127.0.0.3, '::1'], proxyPort: 4000, weight: 3,\n"
    "       ports: [{name: http, port: 8081}]}\n"
    "---\n"
    "# the same labels in another namespace: not an endpoint of shop/web\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: web-x, namespace: other, labels: {app: web}}\n"
    "spec: {address: 127.0.0.9}\n"
    "---\n"
    "# unmeshed, and without the named port: only in api\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: api-1, labels: {app: api, tier: back}}\n"
    "spec: {address: 127.0.0.4, proxyPort: 0}\n"
    "---\n"
    "# one label of two: not selected by api\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: api-half, labels: {app: api}}\n"
    "spec: {address: 127.0.0.5}\n";

static const char PROFILE_AND_SPLIT[] =
    "apiVersion: linkerd.io/v1alpha2\n"
    "kind: ServiceProfile\n"
    "metadata: {name: web.shop.svc.cluster.local, namespace: shop}\n"
    "spec:\n"
    "  retryBudget: {retryRatio: 0.5, minRetriesPerSecond: 3, ttl: 20s}\n"
    "  routes:\n"
    "  - name: list\n"
    "    condition: {method: GET, pathRegex: '/items'}\n"
    "    responseClasses:\n"
    "    - condition: {status: {min: 500}}\n"
    "      isFailure: true\n"
    "    timeout: 250ms\n"
    "    isRetryable: true\n"
    "  - name: any-post\n"
    "    condition:\n"
    "      any: [{method: POST}, {not: {pathRegex: '/x'}}]\n"
    "---\n"
    "apiVersion: split.smi-spec.io/v1alpha1\n"
    "kind: TrafficSplit\n"
    "metadata: {name: web-canary, namespace: shop}\n"
    "spec:\n"
    "  service: web\n"
    "  backends: [{service: web-v1, weight: 90}, {service: web-v2, weight: 10}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: web-http, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {app: web}}, port: http}\n";

static int build(mesh_ctx *ctx, const mesh_store_opts *opts, mesh_diags *d, mesh_snapshot **ret) {
  mesh_snapshot_builder *b = NULL;
  int rc = mesh_snapshot_builder_new(ctx, opts, &b);
  if (rc < 0) return rc;
  if ((rc = mesh_snapshot_builder_add(b, "services.yaml", SERVICES, strlen(SERVICES), d)) < 0 ||
      (rc = mesh_snapshot_builder_add(b, "workloads.yaml", WORKLOADS, strlen(WORKLOADS), d)) < 0 ||
      (rc = mesh_snapshot_builder_add(b, "profile.yaml", PROFILE_AND_SPLIT,
                                      strlen(PROFILE_AND_SPLIT), d)) < 0) {
    mesh_snapshot_builder_free(b);
    return rc;
  }
  return mesh_snapshot_builder_finish(b, d, ret);
}

static mesh_snapshot *snapshot(mesh_ctx *ctx) {
  mesh_diags *d = NULL;
  mesh_snapshot *s = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  int rc = build(ctx, NULL, d, &s);
  for (size_t i = 0; rc != 0 && i < mesh_diags_count(d); i++)
    fprintf(stderr, "%s\n", mesh_diags_text(d, i));
  ck_assert_int_eq(rc, 0);
  mesh_diags_free(d);
  return s;
}

static mesh_resolution *resolve(const mesh_snapshot *s, const char *auth, const char *ns) {
  mesh_resolution *r = NULL;
  ck_assert_int_eq(mesh_snapshot_resolve(s, auth, ns, &r), 0);
  return r;
}

START_TEST(loads_documents) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_snapshot *s = snapshot(ctx);
  ck_assert_uint_eq(mesh_snapshot_count(s), 11);
  ck_assert_int_eq(mesh_snapshot_kind(s, 0), MESH_KIND_SERVICE);
  ck_assert_str_eq(mesh_snapshot_name(s, 1), "api");
  ck_assert_str_eq(mesh_snapshot_namespace(s, 1), "default");
  ck_assert_str_eq(mesh_snapshot_source(s, 3), "workloads.yaml");
  ck_assert_int_eq(mesh_snapshot_kind(s, 10), MESH_KIND_SERVER); /* kept as written */
  ck_assert_uint_eq(mesh_snapshot_line(s, 4), 6);
  ck_assert_ptr_null(mesh_snapshot_name(s, 11));
  char *json = NULL;
  ck_assert_int_eq(mesh_snapshot_document_json(s, 4, &json), 0);
  json_t *j = json_loads(json, 0, NULL);
  ck_assert_ptr_nonnull(j);
  /* YAML scalars typed as YAML reads them; quoted text stays text. */
  json_t *spec = json_object_get(j, "spec");
  ck_assert_int_eq(json_integer_value(json_object_get(spec, "weight")), 3);
  ck_assert_str_eq(json_string_value(json_array_get(json_object_get(spec, "addresses"), 1)), "::1");
  json_decref(j);
  mesh_free_string(ctx, json);
  ck_assert_int_eq(mesh_snapshot_document_json(s, 99, &json), MESH_ERR_INVALID);
  mesh_snapshot *r = mesh_snapshot_ref(s);
  mesh_snapshot_unref(s);
  mesh_snapshot_unref(r);
  mesh_snapshot_unref(NULL);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(resolution_forms) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_snapshot *s = snapshot(ctx);
  static const struct {
    const char *auth, *ns;
    int exists;
  } cases[] = {
      {"web.shop.svc.cluster.local:80", NULL, 1},
      {"WEB.Shop.SVC.Cluster.Local:80", "x", 1},
      {"web.shop.svc.cluster.local.:80", NULL, 1},
      {"web.shop.svc:80", NULL, 1},
      {"web.shop:80", "default", 1},
      {"web:80", "shop", 1},
      {"web:80", NULL, 0},        /* default namespace: no web there */
      {"api:8080", NULL, 1},
      {"api", NULL, 1},           /* port 80 */
      {"web.other:80", NULL, 0},
      {"web.shop.svc.other.domain:80", NULL, 0},
      {"a.b.c:80", NULL, 0},
      {"10.0.0.1:80", NULL, 0},
      {"[::2]:80", NULL, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mesh_resolution *r = resolve(s, cases[i].auth, cases[i].ns);
    ck_assert_msg(mesh_resolution_exists(r) == cases[i].exists, "%s", cases[i].auth);
    if (cases[i].exists && strncmp(cases[i].auth, "api", 3) != 0) {
      ck_assert_str_eq(mesh_resolution_fqdn(r), "web.shop.svc.cluster.local");
      ck_assert_str_eq(mesh_resolution_service(r), "web");
      ck_assert_str_eq(mesh_resolution_namespace(r), "shop");
      ck_assert_uint_eq(mesh_resolution_port(r), 80);
    }
    mesh_resolution_free(r);
  }
  static const char *const bad[] = {"", ":80", "web:0", "web:65536", "web:8a", "web:", "a b:80",
                                    "web/x:80", "::1:80", "[::1", "[web]:80", "web:123456"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mesh_resolution *r = NULL;
    ck_assert_msg(mesh_snapshot_resolve(s, bad[i], NULL, &r) == MESH_ERR_PARSE, "'%s'", bad[i]);
    ck_assert_ptr_null(r);
  }
  char huge[400];
  memset(huge, 'a', sizeof huge - 4);
  memcpy(huge + sizeof huge - 4, ":80", 4);
  mesh_resolution *r = NULL;
  ck_assert_int_eq(mesh_snapshot_resolve(s, huge, NULL, &r), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_snapshot_resolve(NULL, "web:80", NULL, &r), MESH_ERR_INVALID);
  mesh_snapshot_unref(s);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(endpoints_and_selectors) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_snapshot *s = snapshot(ctx);
  /* web:80 -> named targetPort http: web-1 (8080) and web-2's two addresses (8081). */
  mesh_resolution *r = resolve(s, "web.shop:80", NULL);
  ck_assert_uint_eq(mesh_resolution_count(r), 3);
  ck_assert_str_eq(mesh_resolution_addr(r, 0), "127.0.0.2:4143");
  ck_assert_str_eq(mesh_resolution_ip(r, 0), "127.0.0.2");
  ck_assert_uint_eq(mesh_resolution_target_port(r, 0), 8080);
  ck_assert_uint_eq(mesh_resolution_weight(r, 0), 1);
  ck_assert_str_eq(mesh_resolution_identity(r, 0),
                   "web.shop.serviceaccount.identity.linkerd.cluster.local");
  ck_assert_int_eq(mesh_resolution_hint(r, 0), MESH_HINT_H2);
  ck_assert_str_eq(mesh_resolution_pod(r, 0), "web-1");
  ck_assert_str_eq(mesh_resolution_service_account(r, 0), "web");
  ck_assert_str_eq(mesh_resolution_addr(r, 1), "127.0.0.3:4000");
  ck_assert_uint_eq(mesh_resolution_target_port(r, 1), 8081);
  ck_assert_uint_eq(mesh_resolution_weight(r, 1), 3);
  ck_assert_str_eq(mesh_resolution_identity(r, 1),
                   "default.shop.serviceaccount.identity.linkerd.cluster.local");
  ck_assert_str_eq(mesh_resolution_addr(r, 2), "[::1]:4000");
  ck_assert_ptr_null(mesh_resolution_addr(r, 3));
  ck_assert_int_eq(mesh_resolution_opaque(r), 0);
  mesh_resolution_free(r);
  /* A numeric targetPort; an undeclared port goes to the same port. */
  r = resolve(s, "web.shop:9090", NULL);
  ck_assert_uint_eq(mesh_resolution_target_port(r, 0), 9091);
  mesh_resolution_free(r);
  r = resolve(s, "web.shop:7777", NULL);
  ck_assert_uint_eq(mesh_resolution_count(r), 3);
  ck_assert_uint_eq(mesh_resolution_target_port(r, 0), 7777);
  mesh_resolution_free(r);
  /* Opaque: by protocol, and by opaquePorts. */
  r = resolve(s, "web.shop:3306", NULL);
  ck_assert_int_eq(mesh_resolution_opaque(r), 1);
  ck_assert_int_eq(mesh_resolution_hint(r, 0), MESH_HINT_OPAQUE);
  ck_assert_uint_eq(mesh_resolution_target_port(r, 0), 3306);
  mesh_resolution_free(r);
  r = resolve(s, "web.shop:5432", NULL);
  ck_assert_int_eq(mesh_resolution_opaque(r), 1);
  mesh_resolution_free(r);
  /* Every selector label must match: api-1 only, and it has no proxy. */
  r = resolve(s, "api:8080", NULL);
  ck_assert_uint_eq(mesh_resolution_count(r), 1);
  ck_assert_str_eq(mesh_resolution_addr(r, 0), "127.0.0.4:8080");
  ck_assert_ptr_null(mesh_resolution_identity(r, 0));
  ck_assert_int_eq(mesh_resolution_hint(r, 0), MESH_HINT_UNKNOWN);
  mesh_resolution_free(r);
  /* A workload's address: that one endpoint, whatever Service it is in. */
  r = resolve(s, "127.0.0.3:8081", NULL);
  ck_assert_int_eq(mesh_resolution_exists(r), 1);
  ck_assert_uint_eq(mesh_resolution_count(r), 1);
  ck_assert_str_eq(mesh_resolution_addr(r, 0), "127.0.0.3:4000");
  ck_assert_uint_eq(mesh_resolution_target_port(r, 0), 8081);
  ck_assert_str_eq(mesh_resolution_pod(r, 0), "web-2");
  ck_assert_str_eq(mesh_resolution_namespace(r), "shop");
  ck_assert_ptr_null(mesh_resolution_fqdn(r));
  mesh_resolution_free(r);
  r = resolve(s, "[0:0::1]:80", NULL);
  ck_assert_str_eq(mesh_resolution_addr(r, 0), "[::1]:4000");
  mesh_resolution_free(r);
  /* No selector: a Service that exists with no endpoints. */
  r = resolve(s, "empty.shop:80", NULL);
  ck_assert_int_eq(mesh_resolution_exists(r), 1);
  ck_assert_uint_eq(mesh_resolution_count(r), 0);
  mesh_resolution_free(r);
  mesh_snapshot_unref(s);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(naming_options) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_store_opts *o = NULL;
  ck_assert_int_eq(mesh_store_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_store_opts_set_cluster_domain(o, "Mesh.Example"), 0);
  ck_assert_int_eq(mesh_store_opts_set_trust_domain(o, "td.example"), 0);
  ck_assert_int_eq(mesh_store_opts_set_cp_namespace(o, "mesh"), 0);
  ck_assert_int_eq(mesh_store_opts_set_cp_namespace(o, "a.b"), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_store_opts_set_cluster_domain(o, "bad domain"), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_store_opts_set_debounce_ms(o, 10001), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_store_opts_set_dir(o, ""), MESH_ERR_INVALID);
  mesh_snapshot *s = NULL;
  ck_assert_int_eq(build(ctx, o, NULL, &s), 0);
  mesh_resolution *r = resolve(s, "web.shop.svc.mesh.example:80", NULL);
  ck_assert_int_eq(mesh_resolution_exists(r), 1);
  ck_assert_str_eq(mesh_resolution_fqdn(r), "web.shop.svc.mesh.example");
  ck_assert_str_eq(mesh_resolution_identity(r, 0), "web.shop.serviceaccount.identity.mesh.td.example");
  mesh_resolution_free(r);
  r = resolve(s, "web.shop.svc.cluster.local:80", NULL);
  ck_assert_int_eq(mesh_resolution_exists(r), 0);
  mesh_resolution_free(r);
  mesh_snapshot_unref(s);
  mesh_store_opts_free(o);
  mesh_ctx_free(ctx);
}
END_TEST

/* A snapshot of exactly these workload documents plus SERVICES. */
static mesh_snapshot *with_workloads(mesh_ctx *ctx, const char *wl) {
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  ck_assert_int_eq(mesh_snapshot_builder_add(b, "s.yaml", SERVICES, strlen(SERVICES), NULL), 0);
  ck_assert_int_eq(mesh_snapshot_builder_add(b, "w.yaml", wl, strlen(wl), NULL), 0);
  ck_assert_int_eq(mesh_snapshot_builder_finish(b, NULL, &s), 0);
  return s;
}

static char *diff(const mesh_snapshot *a, const mesh_snapshot *b, const char *auth) {
  mesh_resolution *x = resolve(a, auth, NULL), *y = resolve(b, auth, NULL);
  char *out = NULL;
  ck_assert_int_eq(mesh_resolution_json_diff(x, y, &out), 0);
  mesh_resolution_free(x);
  mesh_resolution_free(y);
  return out;
}

#define WL(name, addr, extra)                                                               \
  "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\nmetadata: {name: " name            \
  ", namespace: shop, labels: {app: web}}\nspec: {address: " addr ", ports: [{name: http, " \
  "port: 8080}]" extra "}\n---\n"

START_TEST(get_messages) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_snapshot *s0 = with_workloads(ctx, "");
  mesh_snapshot *s1 = with_workloads(ctx, WL("a", "127.0.0.2", ""));
  mesh_snapshot *s2 = with_workloads(ctx, WL("a", "127.0.0.2", "") WL("b", "127.0.0.3", ""));
  mesh_snapshot *s3 = with_workloads(ctx, WL("a", "127.0.0.2", ", weight: 7") WL("c", "127.0.0.5", ""));
  /* The first message: the whole set, or no_endpoints. */
  mesh_resolution *r = resolve(s1, "web.shop:80", NULL);
  char *first = NULL;
  ck_assert_int_eq(mesh_resolution_json_first(r, &first), 0);
  ck_assert_str_eq(first,
                   "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\",\"weight\":1,\"metric_labels\":"
                   "{\"namespace\":\"shop\",\"service\":\"web\",\"pod\":\"a\",\"serviceaccount\":"
                   "\"default\"},\"tls_identity\":{\"dns_like_identity\":{\"name\":\"default.shop."
                   "serviceaccount.identity.linkerd.cluster.local\"}},\"protocol_hint\":{\"h2\":{}},"
                   "\"target_port\":8080}],\"metric_labels\":{\"namespace\":\"shop\",\"service\":"
                   "\"web\"}}}");
  mesh_free_string(ctx, first);
  mesh_resolution_free(r);
  r = resolve(s0, "web.shop:80", NULL);
  ck_assert_int_eq(mesh_resolution_json_first(r, &first), 0);
  ck_assert_str_eq(first, "{\"no_endpoints\":{\"exists\":true}}");
  mesh_free_string(ctx, first);
  mesh_resolution_free(r);
  r = resolve(s0, "nope.shop:80", NULL);
  ck_assert_int_eq(mesh_resolution_json_first(r, &first), 0);
  ck_assert_str_eq(first, "{\"no_endpoints\":{\"exists\":false}}");
  mesh_free_string(ctx, first);
  mesh_resolution_free(r);
  /* Diffs. */
  char *d = diff(s1, s1, "web.shop:80");
  ck_assert_ptr_null(d); /* nothing changed: nothing sent */
  d = diff(s0, s1, "web.shop:80");
  ck_assert_ptr_nonnull(strstr(d, "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\""));
  ck_assert_ptr_null(strstr(d, "remove"));
  ck_assert_int_eq(d[strlen(d) - 1], '\n');
  mesh_free_string(ctx, d);
  d = diff(s1, s2, "web.shop:80"); /* b came: only b is added */
  ck_assert_ptr_nonnull(strstr(d, "127.0.0.3:4143"));
  ck_assert_ptr_null(strstr(d, "127.0.0.2:4143"));
  mesh_free_string(ctx, d);
  d = diff(s2, s3, "web.shop:80"); /* b went, a re-weighted, c came */
  ck_assert_ptr_nonnull(strstr(d, "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.3:4143\"}]}}\n{\"add\":"));
  ck_assert_ptr_nonnull(strstr(d, "\"addr\":\"127.0.0.2:4143\",\"weight\":7"));
  ck_assert_ptr_nonnull(strstr(d, "127.0.0.5:4143"));
  mesh_free_string(ctx, d);
  d = diff(s3, s0, "web.shop:80"); /* all gone */
  ck_assert_str_eq(d, "{\"no_endpoints\":{\"exists\":true}}\n");
  mesh_free_string(ctx, d);
  d = diff(s0, s0, "web.shop:80");
  ck_assert_ptr_null(d);
  mesh_snapshot *gone = with_workloads(ctx, "");
  mesh_snapshot_builder *b = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  mesh_snapshot_unref(gone);
  ck_assert_int_eq(mesh_snapshot_builder_finish(b, NULL, &gone), 0); /* no Service at all */
  d = diff(s1, gone, "web.shop:80");
  ck_assert_str_eq(d, "{\"no_endpoints\":{\"exists\":false}}\n");
  mesh_free_string(ctx, d);
  mesh_snapshot_unref(gone);
  mesh_snapshot_unref(s0);
  mesh_snapshot_unref(s1);
  mesh_snapshot_unref(s2);
  mesh_snapshot_unref(s3);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(profile_messages) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_snapshot *s = snapshot(ctx);
  char *p = NULL;
  ck_assert_int_eq(mesh_snapshot_profile_json(s, "web:80", "shop", &p), 0);
  json_t *j = json_loads(p, 0, NULL);
  ck_assert_ptr_nonnull(j);
  ck_assert_str_eq(json_string_value(json_object_get(j, "fully_qualified_name")),
                   "web.shop.svc.cluster.local");
  ck_assert(json_is_false(json_object_get(j, "opaque_protocol")));
  json_t *budget = json_object_get(j, "retry_budget");
  ck_assert_double_eq_tol(json_real_value(json_object_get(budget, "retry_ratio")), 0.5, 1e-9);
  ck_assert_int_eq(json_integer_value(json_object_get(budget, "min_retries_per_second")), 3);
  ck_assert_str_eq(json_string_value(json_object_get(budget, "ttl")), "20s");
  json_t *routes = json_object_get(j, "routes");
  ck_assert_uint_eq(json_array_size(routes), 2);
  char *r0 = json_dumps(json_array_get(routes, 0), JSON_COMPACT);
  ck_assert_str_eq(r0, "{\"condition\":{\"all\":{\"matches\":[{\"method\":\"GET\"},{\"path\":{"
                       "\"regex\":\"/items\"}}]}},\"response_classes\":[{\"condition\":{\"status\":"
                       "{\"min\":500,\"max\":500}},\"is_failure\":true}],\"metrics_labels\":{"
                       "\"route\":\"list\"},\"is_retryable\":true,\"timeout\":\"0.250s\"}");
  free(r0);
  char *r1 = json_dumps(json_object_get(json_array_get(routes, 1), "condition"), JSON_COMPACT);
  ck_assert_str_eq(r1, "{\"any\":{\"matches\":[{\"method\":\"POST\"},{\"not\":{\"path\":{\"regex\":"
                       "\"/x\"}}}]}}");
  free(r1);
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(routes, 1), "timeout")), "10s");
  /* The TrafficSplit folded into dst_overrides, out of 10000. */
  json_t *dst = json_object_get(j, "dst_overrides");
  ck_assert_uint_eq(json_array_size(dst), 2);
  ck_assert_str_eq(json_string_value(json_object_get(json_array_get(dst, 0), "authority")),
                   "web-v1.shop.svc.cluster.local:80");
  ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(dst, 0), "weight")), 9000);
  ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(dst, 1), "weight")), 1000);
  ck_assert_ptr_null(json_object_get(j, "endpoint"));
  json_decref(j);
  mesh_free_string(ctx, p);
  /* An opaque port; a name nobody knows; an address of a workload. */
  ck_assert_int_eq(mesh_snapshot_profile_json(s, "web.shop.svc.cluster.local:3306", NULL, &p), 0);
  ck_assert_ptr_nonnull(strstr(p, "\"opaque_protocol\":true"));
  mesh_free_string(ctx, p);
  ck_assert_int_eq(mesh_snapshot_profile_json(s, "nope.shop:80", NULL, &p), 0);
  ck_assert_str_eq(p, "{\"fully_qualified_name\":\"\",\"routes\":[],\"retry_budget\":{"
                      "\"retry_ratio\":0.2,\"min_retries_per_second\":10,\"ttl\":\"10s\"},"
                      "\"dst_overrides\":[],\"opaque_protocol\":false}");
  mesh_free_string(ctx, p);
  ck_assert_int_eq(mesh_snapshot_profile_json(s, "127.0.0.2:8080", NULL, &p), 0);
  j = json_loads(p, 0, NULL);
  json_t *ep = json_object_get(j, "endpoint");
  ck_assert_str_eq(json_string_value(json_object_get(ep, "addr")), "127.0.0.2:4143");
  ck_assert_int_eq(json_integer_value(json_object_get(ep, "target_port")), 8080);
  json_decref(j);
  mesh_free_string(ctx, p);
  ck_assert_int_eq(mesh_snapshot_profile_json(s, "bad host:80", NULL, &p), MESH_ERR_PARSE);
  /* The compiled view: routes shared, the split as dstOverrides. */
  mesh_profile *prof = NULL;
  ck_assert_int_eq(mesh_snapshot_profile(s, "web.shop:8080", NULL, &prof), 0);
  ck_assert_uint_eq(mesh_profile_route_count(prof), 2);
  const mesh_split *over = mesh_profile_dst_overrides(prof);
  ck_assert_uint_eq(mesh_split_count(over), 2);
  ck_assert_str_eq(mesh_split_backend(over, 0), "web-v1.shop.svc.cluster.local:8080");
  ck_assert_uint_eq(mesh_split_weight(over, 1), 1000);
  ck_assert_ptr_nonnull(mesh_profile_match(prof, "GET", "/items", 6));
  mesh_profile_unref(prof);
  prof = NULL;
  ck_assert_int_eq(mesh_snapshot_profile(s, "api:80", NULL, &prof), MESH_ERR_NOT_FOUND);
  ck_assert_int_eq(mesh_snapshot_profile(s, "127.0.0.2:80", NULL, &prof), MESH_ERR_NOT_FOUND);
  ck_assert_ptr_null(prof);
  mesh_snapshot_unref(s);
  mesh_ctx_free(ctx);
}
END_TEST

/* Loads text as one source; returns the rc and the first error's text in why. */
static int try_load(mesh_ctx *ctx, const char *text, char *why, size_t size) {
  mesh_diags *d = NULL;
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  int rc = mesh_snapshot_builder_add(b, "in.yaml", text, strlen(text), d);
  if (rc == 0) rc = mesh_snapshot_builder_finish(b, d, &s);
  else mesh_snapshot_builder_free(b);
  why[0] = '\0';
  for (size_t i = 0; i < mesh_diags_count(d); i++)
    if (mesh_diags_severity(d, i) == MESH_DIAG_ERROR) {
      snprintf(why, size, "%s", mesh_diags_text(d, i));
      break;
    }
  mesh_snapshot_unref(s);
  mesh_diags_free(d);
  return rc;
}

START_TEST(invalid_resources) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  static const struct {
    const char *text, *why;
  } cases[] = {
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\n"
       "spec: {address: 300.1.2.3}\n",
       "in.yaml:4:17: error: spec.address: '300.1.2.3' is not an IPv4 or IPv6 address"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {}\n",
       "missing required field 'address'"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\n"
       "spec: {address: 127.0.0.1, proxyPort: 70000}\n",
       "proxyPort must be between 0 and 65535"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\n"
       "spec: {address: 127.0.0.1, weight: 0}\n",
       "weight must be between 1 and 1000"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\n"
       "spec: {ports: [{port: 80, protocol: udp}]}\n",
       "protocol is one of http, h2, grpc, opaque"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\n"
       "spec: {ports: [{port: 80}, {port: 80}]}\n",
       "port 80 is already listed"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\n"
       "spec: {ports: [{port: 80, targetPort: 'Not_A_Name'}]}\n",
       "targetPort is a port number or the name of a workload port"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s.x}\nspec: {}\n",
       "a Service name is a DNS label"},
      {"apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {}\n---\n"
       "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\nmetadata: {name: s}\nspec: {}\n",
       "in.yaml:6:1: error: (document): Service default/s is already defined at in.yaml:1"},
  };
  char why[512];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ck_assert_int_eq(try_load(ctx, cases[i].text, why, sizeof why), MESH_ERR_PARSE);
    ck_assert_msg(strstr(why, cases[i].why) != NULL, "case %zu: '%s' lacks '%s'", i, why,
                  cases[i].why);
  }
  /* The manifest loader (meshctl validate) checks them the same way. */
  mesh_manifest *m = NULL;
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "x", cases[0].text, strlen(cases[0].text), NULL, &m),
                   MESH_ERR_PARSE);
  mesh_ctx_free(ctx);
}
END_TEST

static int op_build_resolve(mesh_ctx *ctx, void *arg) {
  mesh_snapshot *s = NULL;
  int rc = build(ctx, NULL, NULL, &s);
  if (rc < 0) return rc;
  mesh_resolution *r = NULL, *e = NULL;
  char *json = NULL, *d = NULL, *p = NULL;
  rc = mesh_snapshot_resolve(s, "web.shop:80", NULL, &r);
  if (rc == 0) rc = mesh_snapshot_resolve(s, "empty.shop:80", NULL, &e);
  if (rc == 0) rc = mesh_resolution_json_first(r, &json);
  if (rc == 0) rc = mesh_resolution_json_diff(e, r, &d);
  if (rc == 0) rc = mesh_snapshot_profile_json(s, "web.shop:80", NULL, &p);
  mesh_free_string(ctx, json);
  mesh_free_string(ctx, d);
  mesh_free_string(ctx, p);
  mesh_resolution_free(r);
  mesh_resolution_free(e);
  mesh_snapshot_unref(s);
  return rc;
}

START_TEST(allocation_failures) {
  /* jansson allocates on its own; libmesh's part fails cleanly at every point. */
  ck_assert_int_gt(test_alloc_failures(op_build_resolve, NULL), 50);
}
END_TEST

/* ---- Inbound policy: the documents that apply to a workload ---- */

static const char POLICY_SET[] =
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: web-1, namespace: shop, labels: {app: web, tier: front}}\n"
    "spec: {address: 127.0.0.2, ports: [{name: http, port: 8080}]}\n"
    "---\n"
    "apiVersion: mesh.libmesh.io/v1alpha1\n"
    "kind: Workload\n"
    "metadata: {name: lone, namespace: shop, labels: {app: lone}}\n"
    "spec: {address: 127.0.0.3}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: web-http, namespace: shop, labels: {role: edge}}\n"
    "spec: {podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: HTTP/1}\n"
    "---\n"
    "# a port of web-1 too, by number and an expression\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: web-metrics, namespace: shop}\n"
    "spec:\n"
    "  podSelector: {matchExpressions: [{key: tier, operator: In, values: [front, back]}]}\n"
    "  port: 9090\n"
    "---\n"
    "# other tier, other namespace, other app: not web-1's\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: web-admin, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {app: web, tier: back}}, port: 9000}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: web-http, namespace: other}\n"
    "spec: {podSelector: {matchLabels: {app: web}}, port: 8080}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: api, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {app: api}}, port: 8080}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: ServerAuthorization\n"
    "metadata: {name: by-name, namespace: shop}\n"
    "spec: {server: {name: web-http}, client: {meshTLS: {serviceAccounts: [{name: front}]}}}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: ServerAuthorization\n"
    "metadata: {name: by-selector, namespace: shop}\n"
    "spec:\n"
    "  server: {selector: {matchLabels: {role: edge}}}\n"
    "  client: {unauthenticated: true, networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: ServerAuthorization\n"
    "metadata: {name: api-only, namespace: shop}\n"
    "spec: {server: {name: api}, client: {unauthenticated: true}}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: HTTPRoute\n"
    "metadata: {name: web-routes, namespace: shop}\n"
    "spec:\n"
    "  parentRefs: [{group: policy.linkerd.io, kind: Server, name: web-http}]\n"
    "  rules: [{matches: [{path: {type: PathPrefix, value: /api}}]}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: HTTPRoute\n"
    "metadata: {name: api-routes, namespace: shop}\n"
    "spec: {parentRefs: [{group: policy.linkerd.io, kind: Server, name: api}]}\n";

/* A second file: a snapshot's documents come from many. */
static const char POLICY_AUTHZ[] =
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: on-server, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: Server, name: web-metrics}\n"
    "  requiredAuthenticationRefs:\n"
    "  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: frontends}\n"
    "  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: cluster, namespace: infra}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: on-route, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: web-routes}\n"
    "  requiredAuthenticationRefs: [{kind: ServiceAccount, name: probe}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: on-namespace, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {kind: Namespace, name: shop}\n"
    "  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: admins}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: on-api, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: Server, name: api}\n"
    "  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: unused}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: MeshTLSAuthentication\n"
    "metadata: {name: frontends, namespace: shop}\n"
    "spec: {identities: ['*.shop.serviceaccount.identity.linkerd.cluster.local']}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: MeshTLSAuthentication\n"
    "metadata: {name: admins, namespace: shop}\n"
    "spec: {identityRefs: [{kind: ServiceAccount, name: admin}]}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: MeshTLSAuthentication\n"
    "metadata: {name: unused, namespace: shop}\n"
    "spec: {identities: ['*']}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: NetworkAuthentication\n"
    "metadata: {name: cluster, namespace: infra}\n"
    "spec: {networks: [{cidr: 10.0.0.0/8}]}\n";

static mesh_snapshot *policy_snapshot(mesh_ctx *ctx) {
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  mesh_diags *d = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  int rc = mesh_snapshot_builder_add(b, "policy.yaml", POLICY_SET, strlen(POLICY_SET), d);
  if (rc == 0) rc = mesh_snapshot_builder_add(b, "authz.yaml", POLICY_AUTHZ, strlen(POLICY_AUTHZ), d);
  if (rc == 0) rc = mesh_snapshot_builder_finish(b, d, &s);
  else mesh_snapshot_builder_free(b);
  for (size_t i = 0; rc != 0 && i < mesh_diags_count(d); i++)
    fprintf(stderr, "%s\n", mesh_diags_text(d, i));
  ck_assert_int_eq(rc, 0);
  mesh_diags_free(d);
  return s;
}

/* "Kind/ns/name" of every document of a WatchWorkload message, space-separated. */
static void message_docs(const char *msg, char *out, size_t size) {
  json_t *j = json_loads(msg, 0, NULL);
  ck_assert_ptr_nonnull(j);
  ck_assert(json_is_true(json_object_get(j, "exists")));
  out[0] = '\0';
  size_t i;
  json_t *d;
  json_array_foreach(json_object_get(j, "documents"), i, d) {
    json_t *md = json_object_get(d, "metadata");
    size_t len = strlen(out);
    snprintf(out + len, size - len, "%s%s/%s/%s", i ? " " : "",
             json_string_value(json_object_get(d, "kind")),
             json_string_value(json_object_get(md, "namespace")),
             json_string_value(json_object_get(md, "name")));
  }
  json_decref(j);
}

START_TEST(policy_selection) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_snapshot *s = policy_snapshot(ctx);
  char *msg = NULL, docs[2048];
  ck_assert_int_eq(mesh_snapshot_policy_json(s, "shop", "web-1", &msg), 0);
  message_docs(msg, docs, sizeof docs);
  /* Snapshot order; web-admin (tier back), other/web-http, api and what
   * attaches only to api (api-only, api-routes, on-api, unused) are left out. */
  ck_assert_str_eq(docs, "Server/shop/web-http Server/shop/web-metrics "
                         "ServerAuthorization/shop/by-name ServerAuthorization/shop/by-selector "
                         "HTTPRoute/shop/web-routes AuthorizationPolicy/shop/on-server "
                         "AuthorizationPolicy/shop/on-route AuthorizationPolicy/shop/on-namespace "
                         "MeshTLSAuthentication/shop/frontends MeshTLSAuthentication/shop/admins "
                         "NetworkAuthentication/infra/cluster");
  json_t *j = json_loads(msg, 0, NULL);
  json_t *wl = json_object_get(j, "workload");
  ck_assert_str_eq(json_string_value(json_object_get(wl, "namespace")), "shop");
  ck_assert_str_eq(json_string_value(json_object_get(json_object_get(wl, "labels"), "tier")), "front");
  ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(json_object_get(wl, "ports"), 0),
                                                      "port")), 8080);
  json_decref(j);

  /* Fed back as a proxy would: the same decisions as the whole set compiled. */
  mesh_policy *fed = NULL, *whole = NULL;
  mesh_diags *d = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_policy_compile_message(ctx, msg, strlen(msg), NULL, d, &fed), 0);
  ck_assert_uint_eq(mesh_policy_server_count(fed), 2);
  ck_assert_uint_eq(mesh_policy_route_count(fed), 1);
  mesh_manifest *m[2] = {NULL, NULL};
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "p.yaml", POLICY_SET, strlen(POLICY_SET), d, &m[0]), 0);
  ck_assert_int_eq(mesh_manifest_load_buffer(ctx, "a.yaml", POLICY_AUTHZ, strlen(POLICY_AUTHZ), d, &m[1]),
                   0);
  ck_assert_int_eq(mesh_policy_compile(ctx, (const mesh_manifest *const *)m, 2, NULL, d, &whole), 0);
  const mesh_policy_label labels[] = {{"app", "web"}, {"tier", "front"}};
  static const struct {
    uint32_t port;
    const char *id, *ip, *path;
  } reqs[] = {
      {8080, "front.shop.serviceaccount.identity.linkerd.cluster.local", "192.168.1.1", "/api/x"},
      {8080, NULL, "10.2.0.1", "/api/x"},
      {8080, NULL, "10.1.0.1", "/api/x"},
      {8080, NULL, "10.2.0.1", "/x"},
      {8080, "probe.shop.serviceaccount.identity.linkerd.cluster.local", "192.168.1.1", "/api/v"},
      {9090, "a.shop.serviceaccount.identity.linkerd.cluster.local", "10.0.0.9", NULL},
      {9090, "a.shop.serviceaccount.identity.linkerd.cluster.local", "192.168.0.9", NULL},
      {9090, "admin.shop.serviceaccount.identity.linkerd.cluster.local", "192.168.0.9", NULL},
      {7000, NULL, "192.168.0.9", NULL},
  };
  int allowed = 0, not_found = 0;
  for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
    mesh_policy_workload w = {.ns = "shop", .labels = labels, .nlabels = 2, .port = reqs[i].port,
                              .port_name = reqs[i].port == 8080 ? "http" : NULL};
    mesh_policy_request rq = {.client_id = reqs[i].id, .tls = 1, .addr_family = 4,
                              .method = reqs[i].path ? "GET" : NULL, .path = reqs[i].path,
                              .path_len = reqs[i].path ? strlen(reqs[i].path) : 0};
    ck_assert_int_eq(inet_pton(AF_INET, reqs[i].ip, rq.addr), 1);
    mesh_policy_result r1, r2;
    ck_assert_int_eq(mesh_policy_decide(fed, &w, &rq, &r1), 0);
    ck_assert_int_eq(mesh_policy_decide(whole, &w, &rq, &r2), 0);
    ck_assert_msg(r1.decision == r2.decision, "request %zu: %d vs %d", i, r1.decision, r2.decision);
    ck_assert_str_eq(r1.authz_name ? r1.authz_name : "-", r2.authz_name ? r2.authz_name : "-");
    allowed += r1.decision == MESH_POLICY_ALLOW;
    not_found += r1.decision == MESH_POLICY_NOT_FOUND;
  }
  /* Denied: 10.1.0.1 (an except), 192.168.0.9 on 9090 without admin; /x matches no route. */
  ck_assert_int_eq(allowed, 6);
  ck_assert_int_eq(not_found, 1);
  mesh_policy_unref(fed);
  mesh_policy_unref(whole);
  mesh_manifest_free(m[0]);
  mesh_manifest_free(m[1]);
  mesh_free_string(ctx, msg);

  /* No Server selects it: no documents at all (the default policy decides). */
  ck_assert_int_eq(mesh_snapshot_policy_json(s, "shop", "lone", &msg), 0);
  message_docs(msg, docs, sizeof docs);
  ck_assert_str_eq(docs, "");
  mesh_free_string(ctx, msg);
  msg = NULL;
  ck_assert_int_eq(mesh_snapshot_policy_json(s, "shop", "nope", &msg), MESH_ERR_NOT_FOUND);
  ck_assert_int_eq(mesh_snapshot_policy_json(s, "other", "web-1", &msg), MESH_ERR_NOT_FOUND);
  ck_assert_ptr_null(msg);

  /* A message saying the workload left: the caller keeps its policy. */
  const char gone[] = "{\"workload\":{\"namespace\":\"shop\",\"name\":\"web-1\"},\"exists\":false,"
                      "\"documents\":[]}";
  ck_assert_int_eq(mesh_policy_compile_message(ctx, gone, strlen(gone), NULL, d, &fed),
                   MESH_ERR_NOT_FOUND);
  const char bad[] = "{\"exists\":true,\"documents\":[{\"apiVersion\":\"policy.linkerd.io/v1beta1\","
                     "\"kind\":\"Server\",\"metadata\":{\"name\":\"x\"},\"spec\":{\"port\":8080}}]}";
  mesh_diags_clear(d);
  ck_assert_int_eq(mesh_policy_compile_message(ctx, bad, strlen(bad), NULL, d, &fed), MESH_ERR_PARSE);
  ck_assert_str_eq(mesh_diags_file(d, 0), "documents[0]");
  ck_assert_int_eq(mesh_policy_compile_message(ctx, "[]", 2, NULL, d, &fed), MESH_ERR_PARSE);
  mesh_diags_free(d);
  mesh_snapshot_unref(s);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

static int op_policy_message(mesh_ctx *c, void *arg) {
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *s = NULL;
  mesh_policy *p = NULL;
  char *msg = NULL;
  int rc = mesh_snapshot_builder_new(c, NULL, &b);
  if (!rc) rc = mesh_snapshot_builder_add(b, "p.yaml", POLICY_SET, strlen(POLICY_SET), NULL);
  if (!rc) rc = mesh_snapshot_builder_add(b, "a.yaml", POLICY_AUTHZ, strlen(POLICY_AUTHZ), NULL);
  if (!rc) {
    rc = mesh_snapshot_builder_finish(b, NULL, &s);
    b = NULL;
  }
  if (!rc) rc = mesh_snapshot_policy_json(s, "shop", "web-1", &msg);
  if (!rc) rc = mesh_policy_compile_message(c, msg, strlen(msg), NULL, NULL, &p);
  if (!rc && mesh_policy_server_count(p) != 2) rc = MESH_ERR_INVALID;
  mesh_snapshot_builder_free(b);
  mesh_policy_unref(p);
  mesh_free_string(c, msg);
  mesh_snapshot_unref(s);
  return rc;
}

START_TEST(policy_allocation_failures) {
  ck_assert_int_gt(test_alloc_failures(op_policy_message, NULL), 50);
}
END_TEST

/* ---- The directory ---- */

static char dir[64];

static void write_file(const char *name, const char *text) {
  char path[256], tmp[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
  FILE *f = fopen(tmp, "w");
  ck_assert_ptr_nonnull(f);
  fputs(text, f);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_int_eq(rename(tmp, path), 0); /* whole files, as an editor or kubectl would */
}

static void remove_file(const char *name) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  unlink(path);
}

static void make_dir(void) {
  snprintf(dir, sizeof dir, "/tmp/test_store.XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void clean_dir(void) {
  static const char *const names[] = {"s.yaml", "w.yml", "bad.json", "notes.txt", "w2.yaml"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) remove_file(names[i]);
  rmdir(dir);
}

static mesh_store *open_store(mesh_ctx *ctx, mesh_diags *d, int *rc) {
  mesh_store_opts *o = NULL;
  mesh_store *st = NULL;
  ck_assert_int_eq(mesh_store_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_store_opts_set_dir(o, dir), 0);
  ck_assert_int_eq(mesh_store_opts_set_debounce_ms(o, 50), 0);
  *rc = mesh_store_new(ctx, o, d, &st);
  mesh_store_opts_free(o);
  return st;
}

static size_t endpoints_of(mesh_store *st, const char *auth) {
  mesh_snapshot *s = mesh_store_snapshot(st);
  mesh_resolution *r = resolve(s, auth, NULL);
  size_t n = mesh_resolution_count(r);
  mesh_resolution_free(r);
  mesh_snapshot_unref(s);
  return n;
}

START_TEST(directory_reloads) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  make_dir();
  write_file("s.yaml", SERVICES);
  write_file("w.yml", WL("a", "127.0.0.2", ""));
  write_file("notes.txt", "not a manifest: ignored");
  int rc;
  mesh_store *st = open_store(ctx, NULL, &rc);
  ck_assert_int_eq(rc, 0);
  mesh_snapshot *first = mesh_store_snapshot(st);
  ck_assert_uint_eq(mesh_snapshot_generation(first), 1);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 1);
  /* Unchanged files: nothing happens. */
  ck_assert_int_eq(mesh_store_reload(st), 0);
  ck_assert_uint_eq(mesh_store_reloads_ok(st), 0);
  /* A good change takes over; snapshots others hold stay valid. */
  write_file("w.yml", WL("a", "127.0.0.2", "") WL("b", "127.0.0.3", ""));
  ck_assert_int_eq(mesh_store_reload(st), 0);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 2);
  ck_assert_uint_eq(mesh_store_reloads_ok(st), 1);
  ck_assert_uint_eq(mesh_snapshot_count(first), 4);
  mesh_snapshot_unref(first);
  /* A bad file: refused, the last good state stays, the error is kept. */
  write_file("bad.json", "{\"apiVersion\": \"mesh.libmesh.io/v1alpha1\",\n \"kind\": \"Workload\",\n"
                         " \"metadata\": {\"name\": \"c\"}, \"spec\": {\"address\": \"nope\"}}");
  ck_assert_int_eq(mesh_store_reload(st), MESH_ERR_PARSE);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 2);
  ck_assert_int_eq(mesh_store_failing(st), 1);
  ck_assert_uint_eq(mesh_store_reloads_failed(st), 1);
  ck_assert_ptr_nonnull(mesh_store_last_error(st));
  ck_assert_ptr_nonnull(strstr(mesh_store_last_error(st), "bad.json:3:"));
  ck_assert_ptr_nonnull(strstr(mesh_store_last_error(st), "'nope' is not an IPv4 or IPv6 address"));
  mesh_snapshot *s = mesh_store_snapshot(st);
  ck_assert_uint_eq(mesh_snapshot_generation(s), 2);
  mesh_snapshot_unref(s);
  /* Removing it returns to the files being served: no longer failing. */
  remove_file("bad.json");
  ck_assert_int_eq(mesh_store_reload(st), 0);
  ck_assert_int_eq(mesh_store_failing(st), 0);
  mesh_store_free(st);
  /* The first load must succeed. */
  write_file("bad.json", "{");
  mesh_diags *d = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  st = open_store(ctx, d, &rc);
  ck_assert_int_eq(rc, MESH_ERR_PARSE);
  ck_assert_ptr_null(st);
  ck_assert_uint_gt(mesh_diags_errors(d), 0);
  mesh_diags_free(d);
  clean_dir();
  st = open_store(ctx, NULL, &rc);
  ck_assert_int_eq(rc, MESH_ERR_IO); /* no such directory */
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  struct event_base *base;
  int changes;
} watcher;

static void on_change(void *ud, mesh_store *st) {
  watcher *w = ud;
  w->changes++;
  event_base_loopbreak(w->base);
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs the loop until a change arrives or limit_ms pass; the milliseconds waited. */
static uint64_t wait_change(watcher *w, uint64_t limit_ms) {
  uint64_t t0 = mono_ms();
  struct timeval tv = {(time_t)(limit_ms / 1000), (suseconds_t)((limit_ms % 1000) * 1000)};
  event_base_loopexit(w->base, &tv);
  event_base_dispatch(w->base);
  return mono_ms() - t0;
}

START_TEST(inotify_reload) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  make_dir();
  write_file("s.yaml", SERVICES);
  int rc;
  mesh_store *st = open_store(ctx, NULL, &rc);
  ck_assert_int_eq(rc, 0);
  watcher w = {.base = event_base_new()};
  ck_assert_ptr_nonnull(w.base);
  ck_assert_int_eq(mesh_store_on_change(st, on_change, &w), 0);
  ck_assert_int_eq(mesh_store_watch(st, w.base), 0);
  ck_assert_int_eq(mesh_store_watch(st, w.base), MESH_ERR_INVALID);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 0);
  /* A new file: picked up after the 50 ms debounce, well within a second. */
  write_file("w2.yaml", WL("a", "127.0.0.2", ""));
  uint64_t waited = wait_change(&w, 2000);
  ck_assert_int_eq(w.changes, 1);
  ck_assert_uint_lt(waited, 1000);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 1);
  /* A broken edit: no change, and the old state stays. */
  write_file("w2.yaml", "kind: [");
  wait_change(&w, 400);
  ck_assert_int_eq(w.changes, 1);
  ck_assert_int_eq(mesh_store_failing(st), 1);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 1);
  /* Deleting the file is a change too. */
  remove_file("w2.yaml");
  wait_change(&w, 2000);
  ck_assert_int_eq(w.changes, 2);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 0);
  mesh_store_free(st);
  event_base_free(w.base);
  clean_dir();
  mesh_ctx_free(ctx);
}
END_TEST

/* A whole file (closed, or renamed in) is read at once; one being written
 * is not read until it is closed or the debounce time passes, so no
 * half-written file is ever refused. The debounce is long (3 s) so that
 * the two cannot be confused on a loaded machine. */
START_TEST(inotify_waits_for_writers_only) {
  mesh_ctx *ctx = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  make_dir();
  write_file("s.yaml", SERVICES);
  mesh_store_opts *o = NULL;
  mesh_store *st = NULL;
  ck_assert_int_eq(mesh_store_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_store_opts_set_dir(o, dir), 0);
  ck_assert_int_eq(mesh_store_opts_set_debounce_ms(o, 3000), 0);
  ck_assert_int_eq(mesh_store_new(ctx, o, NULL, &st), 0);
  mesh_store_opts_free(o);
  watcher w = {.base = event_base_new()};
  ck_assert_int_eq(mesh_store_on_change(st, on_change, &w), 0);
  ck_assert_int_eq(mesh_store_watch(st, w.base), 0);
  /* Renamed in whole: read at once, not after the debounce. */
  write_file("w2.yaml", WL("a", "127.0.0.2", ""));
  ck_assert_uint_lt(wait_change(&w, 6000), 1500);
  ck_assert_int_eq(w.changes, 1);
  wait_change(&w, 3100); /* past the period of that read */
  ck_assert_int_eq(w.changes, 1);
  /* Half a file, flushed and still open: nothing is read... */
  char path[256];
  snprintf(path, sizeof path, "%s/w.yml", dir);
  FILE *f = fopen(path, "w");
  ck_assert_ptr_nonnull(f);
  const char *text = WL("b", "127.0.0.3", "");
  size_t half = strlen(text) / 2;
  ck_assert_uint_eq(fwrite(text, 1, half, f), half);
  ck_assert_int_eq(fflush(f), 0);
  wait_change(&w, 1500);
  ck_assert_int_eq(w.changes, 1);
  ck_assert_uint_eq(mesh_store_reloads_failed(st), 0);
  /* ...until the writer closes it: then at once. */
  fputs(text + half, f);
  ck_assert_int_eq(fclose(f), 0);
  ck_assert_uint_lt(wait_change(&w, 6000), 1500);
  ck_assert_int_eq(w.changes, 2);
  ck_assert_uint_eq(mesh_store_reloads_failed(st), 0);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 2);
  mesh_store_free(st);
  event_base_free(w.base);
  clean_dir();
  mesh_ctx_free(ctx);
}
END_TEST

/* ---- The fed store: the whole set handed over, as the etcd backend does ---- */

static int count_changes(mesh_store *st) { return (int)mesh_store_reloads_ok(st); }

START_TEST(fed_store) {
  test_alloc a;
  mesh_ctx *ctx = test_ctx(&a);
  mesh_store_opts *o = NULL;
  ck_assert_int_eq(mesh_store_opts_new(ctx, &o), 0);
  mesh_store *st = NULL;
  ck_assert_int_eq(mesh_store_new_fed(ctx, o, NULL, &st), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_store_new_fed(ctx, o, "etcd /libmesh/", &st), 0);
  /* Empty at first; no directory to read or watch. */
  mesh_snapshot *s = mesh_store_snapshot(st);
  ck_assert_uint_eq(mesh_snapshot_generation(s), 1);
  ck_assert_uint_eq(mesh_snapshot_count(s), 0);
  mesh_snapshot_unref(s);
  ck_assert_int_eq(mesh_store_reload(st), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_store_load_buffers(st, 1, NULL, NULL, NULL), MESH_ERR_INVALID);
  const char *wl = WL("a", "127.0.0.2", "");
  const char *src[] = {"/libmesh/s.yaml", "/libmesh/w.yaml"};
  const char *bufs[] = {SERVICES, wl};
  size_t lens[] = {strlen(SERVICES), strlen(wl)};
  ck_assert_int_eq(mesh_store_load_buffers(st, 2, src, bufs, lens), 0);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 1);
  ck_assert_int_eq(count_changes(st), 1);
  s = mesh_store_snapshot(st);
  ck_assert_uint_eq(mesh_snapshot_generation(s), 2);
  ck_assert_str_eq(mesh_snapshot_source(s, mesh_snapshot_count(s) - 1), "/libmesh/w.yaml");
  mesh_snapshot_unref(s);
  /* The same names and bytes: nothing happens. */
  ck_assert_int_eq(mesh_store_load_buffers(st, 2, src, bufs, lens), 0);
  ck_assert_int_eq(count_changes(st), 1);
  /* A bad value: refused with its key, line and column; the last good state stays. */
  const char *bad = "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\n"
                    "metadata: {name: c, namespace: shop}\nspec: {address: nope}\n";
  const char *src3[] = {"/libmesh/s.yaml", "/libmesh/w.yaml", "/libmesh/x.yaml"};
  const char *bufs3[] = {SERVICES, wl, bad};
  size_t lens3[] = {strlen(SERVICES), strlen(wl), strlen(bad)};
  ck_assert_int_eq(mesh_store_load_buffers(st, 3, src3, bufs3, lens3), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_store_failing(st), 1);
  ck_assert_uint_eq(mesh_store_reloads_failed(st), 1);
  ck_assert_ptr_nonnull(strstr(mesh_store_last_error(st), "/libmesh/x.yaml:4:"));
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 1);
  /* Back to what is served: no longer failing, nothing swapped. */
  ck_assert_int_eq(mesh_store_load_buffers(st, 2, src, bufs, lens), 0);
  ck_assert_int_eq(mesh_store_failing(st), 0);
  ck_assert_int_eq(count_changes(st), 1);
  /* A key removed is a change. */
  ck_assert_int_eq(mesh_store_load_buffers(st, 1, src, bufs, lens), 0);
  ck_assert_uint_eq(endpoints_of(st, "web.shop:80"), 0);
  ck_assert_int_eq(count_changes(st), 2);
  mesh_store_free(st);
  mesh_store_opts_free(o);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(ctx);
}
END_TEST

static int op_fed(mesh_ctx *ctx, void *arg) {
  mesh_store_opts *o = NULL;
  mesh_store *st = NULL;
  int rc = mesh_store_opts_new(ctx, &o);
  if (rc == 0) rc = mesh_store_new_fed(ctx, o, "etcd", &st);
  const char *src[] = {"s.yaml"}, *bufs[] = {SERVICES};
  size_t lens[] = {strlen(SERVICES)};
  if (rc == 0) rc = mesh_store_load_buffers(st, 1, src, bufs, lens);
  if (rc == 0 && mesh_store_reloads_ok(st) != 1) rc = MESH_ERR_INVALID;
  mesh_store_free(st);
  mesh_store_opts_free(o);
  return rc;
}

START_TEST(fed_allocation_failures) { ck_assert_int_gt(test_alloc_failures(op_fed, NULL), 10); }
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("store");
  TCase *tc = tcase_create("snapshot");
  tcase_add_test(tc, loads_documents);
  tcase_add_test(tc, resolution_forms);
  tcase_add_test(tc, endpoints_and_selectors);
  tcase_add_test(tc, naming_options);
  tcase_add_test(tc, get_messages);
  tcase_add_test(tc, profile_messages);
  tcase_add_test(tc, invalid_resources);
  tcase_add_test(tc, allocation_failures);
  tcase_add_test(tc, policy_selection);
  tcase_add_test(tc, policy_allocation_failures);
  suite_add_tcase(s, tc);
  TCase *dirs = tcase_create("directory");
  tcase_add_test(dirs, directory_reloads);
  tcase_add_test(dirs, inotify_reload);
  tcase_add_test(dirs, inotify_waits_for_writers_only);
  tcase_add_test(dirs, fed_store);
  tcase_add_test(dirs, fed_allocation_failures);
  suite_add_tcase(s, dirs);
  return s;
}

int main(void) { return test_main(make_suite()); }
