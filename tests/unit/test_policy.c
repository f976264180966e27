/* Unit tests for policy: the seed, defaults, networks, identities, routes, AuthorizationPolicy, errors. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>

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

static void dump_diags(void) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    fprintf(stderr, "  %s\n", mesh_diags_text(diags, i));
}

/* Is there a diagnostic of this severity whose full text contains text? */
static int has_diag(int severity, const char *text) {
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    if (mesh_diags_severity(diags, i) == severity && strstr(mesh_diags_text(diags, i), text))
      return 1;
  return 0;
}

#define ASSERT_DIAG(sev, text)                                                                   \
  do {                                                                                           \
    if (!has_diag(sev, text)) dump_diags();                                                      \
    ck_assert_msg(has_diag(sev, text), "no %s containing \"%s\"",                                \
                  (sev) == MESH_DIAG_ERROR ? "error" : "warning", text);                         \
  } while (0)

/* Compile n YAML texts (files "a.yaml", "b.yaml"...) with opts; the
 * manifests are freed before the policy is used, which must not matter. */
static int compile_n(const char *const *texts, size_t n, const mesh_policy_opts *opts,
                     mesh_policy **ret) {
  mesh_manifest *ms[8] = {0};
  mesh_diags_clear(diags);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    char file[16];
    snprintf(file, sizeof file, "%c.yaml", (char)('a' + i));
    rc = mesh_manifest_load_buffer(ctx, file, texts[i], strlen(texts[i]), diags, &ms[i]);
  }
  if (rc == 0) rc = mesh_policy_compile(ctx, (const mesh_manifest *const *)ms, n, opts, diags, ret);
  for (size_t i = 0; i < n; i++) mesh_manifest_free(ms[i]);
  return rc;
}

static mesh_policy *compile_ok(const char *text, const mesh_policy_opts *opts) {
  mesh_policy *p = NULL;
  int rc = compile_n(&text, text ? 1 : 0, opts, &p);
  if (rc != 0) dump_diags();
  ck_assert_int_eq(rc, 0);
  ck_assert_ptr_nonnull(p);
  return p;
}

/* ---- building requests ---- */

static mesh_policy_label labels_exam[] = {{"app", "exam-api"}, {"version", "v2"}};

static mesh_policy_workload wl(const char *ns, mesh_policy_label *labels, size_t n, uint32_t port) {
  return (mesh_policy_workload){.ns = ns, .labels = labels, .nlabels = n, .port = port};
}

static mesh_policy_request from(const char *addr, const char *id, int tls) {
  mesh_policy_request r = {.client_id = id, .tls = (uint32_t)tls};
  if (addr && inet_pton(AF_INET, addr, r.addr) == 1) r.addr_family = 4;
  else if (addr) {
    ck_assert_int_eq(inet_pton(AF_INET6, addr, r.addr), 1);
    r.addr_family = 6;
  }
  return r;
}

static mesh_policy_request get(mesh_policy_request r, const char *method, const char *path) {
  r.method = method;
  r.path = path;
  r.path_len = path ? strlen(path) : 0;
  return r;
}

static mesh_policy_result decide(const mesh_policy *p, mesh_policy_workload w,
                                 mesh_policy_request r) {
  mesh_policy_result res;
  memset(&res, 0x5a, sizeof res);
  ck_assert_int_eq(mesh_policy_decide(p, &w, &r, &res), 0);
  return res;
}

#define FRONTEND "frontend-service.production.serviceaccount.identity.linkerd.cluster.local"
#define MOBILE_SPIFFE "spiffe://cluster.local/ns/production/sa/mobile-api-service"
#define EXPLICIT "frontend.production.serviceaccount.identity.linkerd.cluster.local"
#define WEB "web.production.serviceaccount.identity.linkerd.cluster.local"

/* ---- the seed ---- */

static mesh_policy *seed_policy(mesh_ctx *c, mesh_diags *d) {
  size_t len;
  char *text = test_read_data("seed/exam-api-policy.yaml", &len);
  mesh_manifest *m = NULL;
  mesh_policy *p = NULL;
  int rc = mesh_manifest_load_buffer(c, "seed/exam-api-policy.yaml", text, len, d, &m);
  free(text);
  if (rc == 0) rc = mesh_policy_compile(c, (const mesh_manifest *const *)&m, 1, NULL, d, &p);
  mesh_manifest_free(m);
  return rc == 0 ? p : NULL;
}

START_TEST(seed_exam_api) {
  mesh_diags_clear(diags);
  mesh_policy *p = seed_policy(ctx, diags);
  if (!p) dump_diags();
  ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq(mesh_diags_errors(diags), 0);
  /* The seed's spelling of the kind is loaded, with a warning. */
  ASSERT_DIAG(MESH_DIAG_WARNING, "'HttpRoute' is spelled 'HTTPRoute'");
  ck_assert_uint_eq(mesh_policy_server_count(p), 1);
  ck_assert_uint_eq(mesh_policy_authorization_count(p), 1);
  ck_assert_uint_eq(mesh_policy_route_count(p), 1);

  mesh_policy_workload w = wl("production", labels_exam, 2, 8080);
  /* The two serviceAccounts (namespace defaulting to production), in both identity forms. */
  mesh_policy_result r = decide(p, w, get(from("10.1.2.3", FRONTEND, 1), "GET", "/api/v1/public"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.audit, 0);
  ck_assert_int_eq(r.protocol, MESH_POLICY_PROTO_HTTP2);
  ck_assert_int_eq(r.default_policy, 0);
  ck_assert_str_eq(r.server_kind, "server");
  ck_assert_str_eq(r.server_name, "exam-api-server");
  ck_assert_str_eq(r.server_ns, "production");
  ck_assert_str_eq(r.route_kind, "httproute");
  ck_assert_str_eq(r.route_name, "exam-routes");
  ck_assert_int_eq(r.route_rule, 0);
  ck_assert_str_eq(r.authz_kind, "serverauthorization");
  ck_assert_str_eq(r.authz_name, "exam-api-authz");
  r = decide(p, w, get(from("10.1.2.3", MOBILE_SPIFFE, 1), "POST", "/api/v1/premium/exams/7"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.route_rule, 1);
  r = decide(p, w, get(from("10.1.2.3", EXPLICIT, 1), "GET", "/api/v1/public/"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.route_rule, 0);
  ck_assert_int_eq(decide(p, w, get(from("10.1.2.3", "spiffe://cluster.local/ns/production/sa/frontend", 1), "GET", "/api/v1/public")).decision,
                   MESH_POLICY_ALLOW);

  /* As written, the Server-level authorization covers every route: the
   * "public" comment is not a rule, so an unauthenticated client is denied
   * there too, as are other identities and the same names elsewhere. */
  r = decide(p, w, get(from("10.1.2.3", NULL, 0), "GET", "/api/v1/public"));
  ck_assert_int_eq(r.decision, MESH_POLICY_DENY);
  ck_assert_str_eq(r.route_name, "exam-routes");
  ck_assert_ptr_null(r.authz_name);
  ck_assert_ptr_null(r.authz_kind);
  ck_assert_int_eq(decide(p, w, get(from("10.1.2.3", WEB, 1), "GET", "/api/v1/public")).decision,
                   MESH_POLICY_DENY);
  ck_assert_int_eq(
      decide(p, w, get(from("10.1.2.3", "frontend-service.staging.serviceaccount.identity.linkerd.cluster.local", 1), "GET", "/api/v1/public")).decision,
      MESH_POLICY_DENY);
  /* An identity without TLS is a header someone wrote, not a peer certificate. */
  ck_assert_int_eq(decide(p, w, get(from("10.1.2.3", FRONTEND, 0), "GET", "/api/v1/public")).decision,
                   MESH_POLICY_DENY);

  /* Routes: prefixes match whole segments; others are 404. */
  r = decide(p, w, get(from("10.1.2.3", FRONTEND, 1), "GET", "/api/v1/publicity"));
  ck_assert_int_eq(r.decision, MESH_POLICY_NOT_FOUND);
  ck_assert_ptr_null(r.route_name);
  ck_assert_int_eq(r.route_rule, -1);
  ck_assert_int_eq(decide(p, w, get(from("10.1.2.3", FRONTEND, 1), "GET", "/")).decision,
                   MESH_POLICY_NOT_FOUND);
  ck_assert_int_eq(decide(p, w, get(from("10.1.2.3", FRONTEND, 1), "GET", "/api/v1/premium?x=1")).decision,
                   MESH_POLICY_ALLOW);

  /* The premium rule's header match is a separate match item, so it is
   * ORed with the path: a request anywhere whose authorization header is
   * exactly "Bearer" matches the premium rule; "Bearer <token>" does not. */
  mesh_policy_header bearer = {"Authorization", 13, "Bearer", 6};
  mesh_policy_request q = get(from("10.1.2.3", FRONTEND, 1), "GET", "/anything");
  q.headers = &bearer;
  q.nheaders = 1;
  r = decide(p, w, q);
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.route_rule, 1);
  bearer.value = "Bearer abc";
  bearer.value_len = 10;
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_NOT_FOUND);

  /* TCP level: the Server's authorizations, no routes. */
  r = decide(p, w, from("10.1.2.3", FRONTEND, 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_ptr_null(r.route_kind);
  ck_assert_int_eq(decide(p, w, from("10.1.2.3", NULL, 1)).decision, MESH_POLICY_DENY);

  /* Other ports and other workloads get the default. */
  r = decide(p, wl("production", labels_exam, 2, 9090), from("10.1.2.3", NULL, 0));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.server_kind, "default");
  ck_assert_str_eq(r.server_name, "all-unauthenticated");
  ck_assert_str_eq(r.authz_name, "all-unauthenticated");
  ck_assert_int_eq(r.default_policy, MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED);
  r = decide(p, wl("production", labels_exam + 1, 1, 8080), from("10.1.2.3", NULL, 0));
  ck_assert_str_eq(r.server_kind, "default");
  r = decide(p, wl("staging", labels_exam, 2, 8080), from("10.1.2.3", NULL, 0));
  ck_assert_str_eq(r.server_kind, "default");
  ck_assert_str_eq(r.server_ns, "staging");
  mesh_policy_unref(p);
}
END_TEST

/* ---- defaults ---- */

START_TEST(default_policies) {
  static const struct {
    int policy;
    int unauth_cluster, unauth_outside, mesh_cluster, mesh_outside;
  } table[] = {
      {MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED, 1, 1, 1, 1},
      {MESH_POLICY_DEFAULT_ALL_AUTHENTICATED, 0, 0, 1, 1},
      {MESH_POLICY_DEFAULT_CLUSTER_AUTHENTICATED, 0, 0, 1, 0},
      {MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED, 1, 0, 1, 0},
      {MESH_POLICY_DEFAULT_DENY, 0, 0, 0, 0},
      {MESH_POLICY_DEFAULT_AUDIT, 1, 1, 1, 1},
  };
  mesh_policy_opts *o;
  ck_assert_int_eq(mesh_policy_opts_new(ctx, &o), 0);
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    ck_assert_int_eq(mesh_policy_opts_set_default(o, table[i].policy), 0);
    mesh_policy *p = compile_ok(NULL, o);
    mesh_policy_workload w = wl("default", NULL, 0, 80);
    const char *cluster[] = {"10.4.0.1", "172.16.9.9", "192.168.1.1", "100.64.0.1", "fd00::1"};
    const char *outside[] = {"8.8.8.8", "2001:db8::1", "172.32.0.1", NULL};
    for (size_t k = 0; k < 5; k++) {
      mesh_policy_result r = decide(p, w, from(cluster[k], NULL, 0));
      ck_assert_msg(r.decision == table[i].unauth_cluster, "%s: unauthenticated from %s",
                    mesh_policy_default_name(table[i].policy), cluster[k]);
      ck_assert_int_eq(r.audit, table[i].policy == MESH_POLICY_DEFAULT_AUDIT);
      ck_assert_str_eq(r.server_name, mesh_policy_default_name(table[i].policy));
      ck_assert_int_eq(decide(p, w, from(cluster[k], WEB, 1)).decision, table[i].mesh_cluster);
    }
    for (size_t k = 0; k < 4; k++) {
      ck_assert_msg(decide(p, w, from(outside[k], NULL, 0)).decision == table[i].unauth_outside,
                    "%s: unauthenticated from %s", mesh_policy_default_name(table[i].policy),
                    outside[k] ? outside[k] : "nowhere");
      ck_assert_int_eq(decide(p, w, from(outside[k], WEB, 1)).decision, table[i].mesh_outside);
    }
    /* TLS without an identity is not authenticated. */
    ck_assert_int_eq(decide(p, w, from("8.8.8.8", NULL, 1)).decision, table[i].unauth_outside);
    /* Localhost is always let in, as Linkerd's proxy does. */
    mesh_policy_result r = decide(p, w, get(from("127.0.0.1", NULL, 0), "GET", "/"));
    ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
    ck_assert_str_eq(r.route_name, "default");
    if (table[i].policy == MESH_POLICY_DEFAULT_DENY) ck_assert_str_eq(r.authz_name, "localhost");
    mesh_policy_unref(p);
  }
  /* Without the localhost exception, deny means deny; a workload's own
   * default (its annotation) wins over the snapshot's. */
  ck_assert_int_eq(mesh_policy_opts_set_allow_localhost(o, 0), 0);
  ck_assert_int_eq(mesh_policy_opts_set_default(o, MESH_POLICY_DEFAULT_DENY), 0);
  mesh_policy *p = compile_ok(NULL, o);
  mesh_policy_workload w = wl("default", NULL, 0, 80);
  ck_assert_int_eq(decide(p, w, from("127.0.0.1", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from("::1", NULL, 0)).decision, MESH_POLICY_DENY);
  w.default_policy = MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED;
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", NULL, 0)).decision, MESH_POLICY_ALLOW);
  w.default_policy = 7;
  mesh_policy_request q = from("8.8.8.8", NULL, 0);
  mesh_policy_result res = {0};
  ck_assert_int_eq(mesh_policy_decide(p, &w, &q, &res), MESH_ERR_INVALID);
  mesh_policy_unref(p);

  /* Cluster networks are configurable; the sockaddr form works too, and an
   * IPv4-mapped IPv6 address is its IPv4 address. */
  const char *why = NULL;
  ck_assert_int_eq(mesh_policy_opts_set_cluster_networks(o, "10.0.0.0/33", &why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_policy_opts_set_cluster_networks(o, "192.0.2.0/24, 2001:db8::/32", NULL), 0);
  ck_assert_int_eq(mesh_policy_opts_set_default(o, MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED), 0);
  p = compile_ok(NULL, o);
  w.default_policy = 0;
  ck_assert_int_eq(decide(p, w, from("192.0.2.5", NULL, 0)).decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("10.1.1.1", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from("2001:db8:1::1", NULL, 0)).decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("::ffff:192.0.2.9", NULL, 0)).decision, MESH_POLICY_ALLOW);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  inet_pton(AF_INET, "192.0.2.77", &sin.sin_addr);
  q = from(NULL, NULL, 0);
  q.sockaddr = &sin;
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_ALLOW);
  inet_pton(AF_INET, "198.51.100.1", &sin.sin_addr);
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_DENY);
  struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
  inet_pton(AF_INET6, "2001:db8::5", &sin6.sin6_addr);
  q.sockaddr = &sin6;
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_ALLOW);
  mesh_policy_unref(p);
  mesh_policy_opts_free(o);

  ck_assert_int_eq(mesh_policy_default_parse("cluster-authenticated"), MESH_POLICY_DEFAULT_CLUSTER_AUTHENTICATED);
  ck_assert_int_eq(mesh_policy_default_parse("allow"), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_policy_default_parse(NULL), MESH_ERR_PARSE);
  ck_assert_ptr_null(mesh_policy_default_name(0));
  ck_assert_str_eq(mesh_policy_default_name(MESH_POLICY_DEFAULT_AUDIT), "audit");
}
END_TEST

/* ---- ServerAuthorization: networks and identities ---- */

static const char server_web[] =
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: Server\n"
    "metadata: {name: web, namespace: shop, labels: {tier: front}}\n"
    "spec:\n"
    "  podSelector: {matchLabels: {app: web}}\n"
    "  port: http\n"
    "  proxyProtocol: HTTP/1\n"
    "---\n";

static mesh_policy_label labels_web[] = {{"app", "web"}};

START_TEST(networks_with_except) {
  char text[2048];
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: office, namespace: shop}\n"
           "spec:\n"
           "  server: {selector: {matchLabels: {tier: front}}}\n"
           "  client:\n"
           "    unauthenticated: true\n"
           "    networks:\n"
           "    - cidr: 10.0.0.0/8\n"
           "      except: [10.1.0.0/16, 10.2.3.4]\n"
           "    - cidr: 2001:db8::/32\n"
           "      except: ['2001:db8:bad::/48']\n",
           server_web);
  mesh_policy_opts *o;
  ck_assert_int_eq(mesh_policy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_policy_opts_set_allow_localhost(o, 0), 0);
  mesh_policy *p = compile_ok(text, o);
  mesh_policy_opts_free(o);
  mesh_policy_workload w = wl("shop", labels_web, 1, 8080);
  w.port_name = "http";
  mesh_policy_result r = decide(p, w, from("10.9.9.9", NULL, 0));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "office");
  ck_assert_int_eq(r.protocol, MESH_POLICY_PROTO_HTTP1);
  ck_assert_int_eq(decide(p, w, from("10.1.200.3", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from("10.2.3.4", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from("10.2.3.5", NULL, 0)).decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("11.0.0.1", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from("2001:db8:1::1", NULL, 0)).decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("2001:db8:bad::1", NULL, 0)).decision, MESH_POLICY_DENY);
  ck_assert_int_eq(decide(p, w, from(NULL, NULL, 0)).decision, MESH_POLICY_DENY);
  /* The Server selects by port name only. */
  w.port_name = "admin";
  ck_assert_str_eq(decide(p, w, from("10.9.9.9", NULL, 0)).server_kind, "default");
  mesh_policy_unref(p);
}
END_TEST

START_TEST(identity_forms) {
  char text[4096];
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: ids, namespace: shop}\n"
           "spec:\n"
           "  server: {name: web}\n"
           "  client:\n"
           "    meshTLS:\n"
           "      identities:\n"
           "      - '*.billing.serviceaccount.identity.linkerd.cluster.local'\n"
           "      - 'spiffe://partner.example/ns/api/sa/client'\n"
           "      - 'spiffe://cluster.local/ns/ops/*'\n"
           "      serviceAccounts:\n"
           "      - {name: checkout}\n"
           "      - {name: audit, namespace: compliance}\n",
           server_web);
  mesh_policy_opts *o;
  ck_assert_int_eq(mesh_policy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_policy_opts_set_default(o, MESH_POLICY_DEFAULT_DENY), 0);
  mesh_policy *p = compile_ok(text, o);
  mesh_policy_opts_free(o);
  mesh_policy_workload w = wl("shop", labels_web, 1, 8080);
  w.port_name = "http";
  static const struct {
    const char *id;
    int allow;
  } cases[] = {
      {"pay.billing.serviceaccount.identity.linkerd.cluster.local", 1},
      {"spiffe://cluster.local/ns/billing/sa/pay", 1},
      {"billing.serviceaccount.identity.linkerd.cluster.local", 0},
      {"pay.xbilling.serviceaccount.identity.linkerd.cluster.local", 0},
      {"spiffe://partner.example/ns/api/sa/client", 1},
      {"spiffe://partner.example/ns/api/sa/other", 0},
      {"spiffe://cluster.local/ns/ops/sa/robot", 1},
      {"robot.ops.serviceaccount.identity.linkerd.cluster.local", 1},
      {"spiffe://cluster.local/ns/opsx/sa/robot", 0},
      {"checkout.shop.serviceaccount.identity.linkerd.cluster.local", 1},
      {"spiffe://cluster.local/ns/shop/sa/checkout", 1},
      {"checkout.other.serviceaccount.identity.linkerd.cluster.local", 0},
      {"audit.compliance.serviceaccount.identity.linkerd.cluster.local", 1},
      {"audit.shop.serviceaccount.identity.linkerd.cluster.local", 0},
      {"", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    mesh_policy_result r = decide(p, w, from("8.8.8.8", cases[i].id, 1));
    ck_assert_msg(r.decision == cases[i].allow, "%s: got %d", cases[i].id, r.decision);
    ck_assert_int_eq(decide(p, w, from("8.8.8.8", cases[i].id, 0)).decision, MESH_POLICY_DENY);
  }
  mesh_policy_unref(p);

  /* "*" is any authenticated client; unauthenticatedTLS any TLS client. */
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: any, namespace: shop}\n"
           "spec: {server: {name: web}, client: {meshTLS: {identities: ['*']}}}\n"
           "---\n"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: tls, namespace: shop}\n"
           "spec: {server: {name: web}, client: {meshTLS: {unauthenticatedTLS: true}}}\n",
           server_web);
  p = compile_ok(text, NULL);
  mesh_policy_result r = decide(p, w, from("8.8.8.8", WEB, 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "any");
  r = decide(p, w, from("8.8.8.8", NULL, 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "tls");
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", NULL, 0)).decision, MESH_POLICY_DENY);
  mesh_policy_unref(p);

  /* Another trust domain and control-plane namespace. */
  ck_assert_int_eq(mesh_policy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_policy_opts_set_identity_domain(o, "mesh", "example.org"), 0);
  ck_assert_int_eq(mesh_policy_opts_set_identity_domain(o, "Bad_NS", NULL), MESH_ERR_PARSE);
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: sa, namespace: shop}\n"
           "spec: {server: {name: web}, client: {meshTLS: {serviceAccounts: [{name: cart}]}}}\n",
           server_web);
  p = compile_ok(text, o);
  mesh_policy_opts_free(o);
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", "cart.shop.serviceaccount.identity.mesh.example.org", 1)).decision,
                   MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", "spiffe://example.org/ns/shop/sa/cart", 1)).decision,
                   MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", "cart.shop.serviceaccount.identity.linkerd.cluster.local", 1)).decision,
                   MESH_POLICY_DENY);
  mesh_policy_unref(p);
}
END_TEST

/* ---- AuthorizationPolicy and HTTPRoutes ---- */

static const char books[] =
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: Server\n"
    "metadata: {name: books, namespace: shop}\n"
    "spec:\n"
    "  podSelector:\n"
    "    matchExpressions:\n"
    "    - {key: app, operator: In, values: [books, books-canary]}\n"
    "    - {key: track, operator: NotIn, values: [legacy]}\n"
    "    - {key: mesh, operator: Exists}\n"
    "    - {key: quarantine, operator: DoesNotExist}\n"
    "  port: 7000\n"
    "---\n"
    "apiVersion: gateway.networking.k8s.io/v1\n"
    "kind: HTTPRoute\n"
    "metadata: {name: books-read, namespace: shop}\n"
    "spec:\n"
    "  parentRefs: [{name: books, kind: Server, group: policy.linkerd.io}]\n"
    "  rules:\n"
    "  - matches:\n"
    "    - {path: {type: PathPrefix, value: /books/}, method: GET}\n"
    "    - {path: {type: Exact, value: /catalog}}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: HTTPRoute\n"
    "metadata: {name: books-write, namespace: shop}\n"
    "spec:\n"
    "  parentRefs: [{name: books, kind: Server, group: policy.linkerd.io}]\n"
    "  rules:\n"
    "  - matches:\n"
    "    - path: {type: RegularExpression, value: '/books/[0-9]+/edit'}\n"
    "      headers:\n"
    "      - {name: x-role, type: RegularExpression, value: 'admin|editor'}\n"
    "      queryParams:\n"
    "      - {name: confirm, value: 'yes'}\n"
    "  - matches: [{path: {value: /books/new}, method: POST}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: MeshTLSAuthentication\n"
    "metadata: {name: editors, namespace: shop}\n"
    "spec:\n"
    "  identityRefs: [{kind: ServiceAccount, name: editor}, {kind: Namespace, name: admin}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: NetworkAuthentication\n"
    "metadata: {name: office, namespace: shop}\n"
    "spec:\n"
    "  networks: [{cidr: 10.0.0.0/8, except: [10.66.0.0/16]}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: write-from-office, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: books-write}\n"
    "  requiredAuthenticationRefs:\n"
    "  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: editors}\n"
    "  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: office}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: readers, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: Server, name: books}\n"
    "  requiredAuthenticationRefs:\n"
    "  - {kind: ServiceAccount, name: reader}\n";

static mesh_policy_label labels_books[] = {{"app", "books"}, {"mesh", "yes"}};

#define EDITOR "editor.shop.serviceaccount.identity.linkerd.cluster.local"
#define READER "reader.shop.serviceaccount.identity.linkerd.cluster.local"

START_TEST(authorization_policies_and_routes) {
  mesh_policy *p = compile_ok(books, NULL);
  ck_assert_uint_eq(mesh_diags_errors(diags), 0);
  ck_assert_uint_eq(mesh_policy_route_count(p), 2);
  ck_assert_uint_eq(mesh_policy_authorization_count(p), 2);
  mesh_policy_workload w = wl("shop", labels_books, 2, 7000);

  /* The Server-level policy applies on every route. */
  mesh_policy_result r = decide(p, w, get(from("8.8.8.8", READER, 1), "GET", "/books/12"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.route_name, "books-read");
  ck_assert_str_eq(r.authz_kind, "authorizationpolicy");
  ck_assert_str_eq(r.authz_name, "readers");
  ck_assert_int_eq(r.protocol, MESH_POLICY_PROTO_UNKNOWN);
  /* Method and path are ANDed within a match; matches are ORed. */
  ck_assert_int_eq(decide(p, w, get(from("8.8.8.8", READER, 1), "DELETE", "/books/12")).decision,
                   MESH_POLICY_NOT_FOUND);
  ck_assert_int_eq(decide(p, w, get(from("8.8.8.8", READER, 1), "DELETE", "/catalog")).decision,
                   MESH_POLICY_ALLOW);
  ck_assert_int_eq(decide(p, w, get(from("8.8.8.8", READER, 1), "GET", "/catalog/x")).decision,
                   MESH_POLICY_NOT_FOUND);

  /* The route-level policy needs both its authentications. */
  mesh_policy_header role = {"X-Role", 6, "editor", 6};
  mesh_policy_request q = get(from("10.1.1.1", EDITOR, 1), "GET", "/books/12/edit?confirm=yes");
  q.headers = &role;
  q.nheaders = 1;
  r = decide(p, w, q);
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.route_name, "books-write");
  ck_assert_int_eq(r.route_rule, 0);
  ck_assert_str_eq(r.authz_name, "write-from-office");
  /* The regex route is more specific (longer match) than the prefix one. */
  q.client_id = "root.admin.serviceaccount.identity.linkerd.cluster.local";
  ck_assert_str_eq(decide(p, w, q).authz_name, "write-from-office");
  q.addr[1] = 66; /* 10.66.1.1: excepted */
  r = decide(p, w, q);
  ck_assert_int_eq(r.decision, MESH_POLICY_DENY);
  ck_assert_str_eq(r.route_name, "books-write");
  q.addr[1] = 1;
  q.client_id = READER; /* the Server-level policy still applies on the route */
  ck_assert_str_eq(decide(p, w, q).authz_name, "readers");
  q.client_id = "x.shop.serviceaccount.identity.linkerd.cluster.local";
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_DENY);
  q.client_id = EDITOR;
  /* Header regexes match the whole value; header names any case. */
  role.value = "editors";
  role.value_len = 7;
  r = decide(p, w, q); /* books-read (GET /books/...), where editors are not authorized */
  ck_assert_int_eq(r.decision, MESH_POLICY_DENY);
  ck_assert_str_eq(r.route_name, "books-read");
  role.value = "admin";
  role.value_len = 5;
  ck_assert_str_eq(decide(p, w, q).route_name, "books-write");
  /* Query parameters: Exact on the value; the path's own query, or query. */
  q = get(from("10.1.1.1", EDITOR, 1), "PUT", "/books/12/edit");
  q.headers = &role;
  q.nheaders = 1;
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_NOT_FOUND);
  q.query = "a=1&confirm=yes";
  q.query_len = strlen(q.query);
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_ALLOW);
  q.query = "confirm=no&confirm";
  q.query_len = strlen(q.query);
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_NOT_FOUND);
  /* A path match with no type is a prefix. */
  r = decide(p, w, get(from("10.1.1.1", EDITOR, 1), "POST", "/books/new/draft"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.route_rule, 1);

  /* Selector expressions. */
  mesh_policy_label canary[] = {{"app", "books-canary"}, {"mesh", ""}, {"track", "beta"}};
  ck_assert_str_eq(decide(p, wl("shop", canary, 3, 7000), from("8.8.8.8", NULL, 0)).server_kind, "server");
  canary[2].value = "legacy";
  ck_assert_str_eq(decide(p, wl("shop", canary, 3, 7000), from("8.8.8.8", NULL, 0)).server_kind, "default");
  mesh_policy_label quarantined[] = {{"app", "books"}, {"mesh", "1"}, {"quarantine", "1"}};
  ck_assert_str_eq(decide(p, wl("shop", quarantined, 3, 7000), from("8.8.8.8", NULL, 0)).server_kind, "default");
  ck_assert_str_eq(decide(p, wl("shop", labels_books, 1, 7000), from("8.8.8.8", NULL, 0)).server_kind, "default");
  mesh_policy_unref(p);
}
END_TEST

START_TEST(missing_references_authorize_nothing) {
  char text[4096];
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1alpha1\n"
           "kind: AuthorizationPolicy\n"
           "metadata: {name: half, namespace: shop}\n"
           "spec:\n"
           "  targetRef: {group: policy.linkerd.io, kind: Server, name: web}\n"
           "  requiredAuthenticationRefs:\n"
           "  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: nowhere}\n"
           "---\n"
           "apiVersion: policy.linkerd.io/v1beta1\n"
           "kind: ServerAuthorization\n"
           "metadata: {name: orphan, namespace: shop}\n"
           "spec: {server: {name: webb}, client: {unauthenticated: true}}\n"
           "---\n"
           "apiVersion: policy.linkerd.io/v1alpha1\n"
           "kind: AuthorizationPolicy\n"
           "metadata: {name: whole-ns, namespace: shop}\n"
           "spec:\n"
           "  targetRef: {kind: Namespace, name: shop}\n"
           "  requiredAuthenticationRefs: [{kind: ServiceAccount, name: ops, namespace: infra}]\n"
           "---\n"
           "apiVersion: policy.linkerd.io/v1beta3\n"
           "kind: HTTPRoute\n"
           "metadata: {name: lost, namespace: shop}\n"
           "spec: {parentRefs: [{name: nope, kind: Server, group: policy.linkerd.io}]}\n",
           server_web);
  mesh_policy *p = compile_ok(text, NULL);
  ck_assert_uint_eq(mesh_diags_errors(diags), 0);
  ASSERT_DIAG(MESH_DIAG_WARNING, "a.yaml:15:5: warning: spec.requiredAuthenticationRefs[0]: there is no "
                                 "NetworkAuthentication 'nowhere' in namespace 'shop'");
  ASSERT_DIAG(MESH_DIAG_WARNING, "a.yaml:20:23: warning: spec.server.name: there is no Server 'webb'");
  ASSERT_DIAG(MESH_DIAG_WARNING, "spec.parentRefs[0]: there is no Server 'nope'");
  mesh_policy_workload w = wl("shop", labels_web, 1, 8080);
  w.port_name = "http";
  ck_assert_int_eq(decide(p, w, from("10.0.0.1", NULL, 0)).decision, MESH_POLICY_DENY);
  mesh_policy_result r = decide(p, w, from("10.0.0.1", "ops.infra.serviceaccount.identity.linkerd.cluster.local", 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "whole-ns");
  mesh_policy_unref(p);

  /* The missing one may come in another file: then no warning. */
  const char *two[] = {text,
                       "apiVersion: policy.linkerd.io/v1alpha1\n"
                       "kind: NetworkAuthentication\n"
                       "metadata: {name: nowhere, namespace: shop}\n"
                       "spec: {networks: [{cidr: 0.0.0.0/0}, {cidr: '::/0'}]}\n"};
  ck_assert_int_eq(compile_n(two, 2, NULL, &p), 0);
  ck_assert_int_eq(has_diag(MESH_DIAG_WARNING, "'nowhere'"), 0);
  r = decide(p, w, from("10.0.0.1", NULL, 0));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "half");
  mesh_policy_unref(p);
}
END_TEST

START_TEST(access_policy_and_opaque) {
  const char *text =
      "apiVersion: policy.linkerd.io/v1beta3\n"
      "kind: Server\n"
      "metadata: {name: db, namespace: data}\n"
      "spec: {podSelector: {}, port: 5432, proxyProtocol: opaque, accessPolicy: audit}\n"
      "---\n"
      "apiVersion: policy.linkerd.io/v1beta3\n"
      "kind: Server\n"
      "metadata: {name: open, namespace: data}\n"
      "spec: {podSelector: {}, port: 8080, accessPolicy: cluster-unauthenticated}\n"
      "---\n"
      "apiVersion: policy.linkerd.io/v1beta1\n"
      "kind: ServerAuthorization\n"
      "metadata: {name: app, namespace: data}\n"
      "spec: {server: {name: db}, client: {meshTLS: {serviceAccounts: [{name: app}]}}}\n"
      "---\n"
      "apiVersion: policy.linkerd.io/v1beta3\n"
      "kind: HTTPRoute\n"
      "metadata: {name: ignored-on-opaque, namespace: data}\n"
      "spec: {parentRefs: [{name: db, kind: Server, group: policy.linkerd.io}], rules: [{matches: [{path: {value: /x}}]}]}\n";
  mesh_policy *p = compile_ok(text, NULL);
  mesh_policy_workload w = wl("data", NULL, 0, 5432);
  mesh_policy_result r = decide(p, w, from("8.8.8.8", "app.data.serviceaccount.identity.linkerd.cluster.local", 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.audit, 0);
  ck_assert_int_eq(r.protocol, MESH_POLICY_PROTO_OPAQUE);
  r = decide(p, w, get(from("8.8.8.8", NULL, 0), "GET", "/y"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.audit, 1);
  ck_assert_str_eq(r.authz_name, "audit");
  ck_assert_ptr_null(r.route_name); /* opaque: no routes */
  w.port = 8080;
  r = decide(p, w, get(from("10.3.3.3", NULL, 0), "GET", "/"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.authz_name, "cluster-unauthenticated");
  ck_assert_str_eq(r.route_kind, "default");
  ck_assert_int_eq(decide(p, w, from("8.8.8.8", NULL, 0)).decision, MESH_POLICY_DENY);
  mesh_policy_unref(p);
}
END_TEST

/* ---- bad input ---- */

/* Compile text that must fail; the diagnostics say where. */
static void fails(const char *text) {
  mesh_policy *p = (mesh_policy *)&p;
  int rc = compile_n(&text, 1, NULL, &p);
  ck_assert_msg(rc == MESH_ERR_PARSE, "rc %d for:\n%s", rc, text);
  ck_assert_ptr_eq(p, (mesh_policy *)&p);
  ck_assert_uint_ge(mesh_diags_errors(diags), 1);
}

START_TEST(bad_input_is_reported_where_it_is) {
  char text[4096];
  /* Two Servers with one selector and one port: an error naming both. */
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta3\n"
           "kind: Server\n"
           "metadata: {name: web-too, namespace: shop}\n"
           "spec: {podSelector: {matchLabels: {app: web}}, port: http}\n",
           server_web);
  fails(text);
  ASSERT_DIAG(MESH_DIAG_ERROR, "a.yaml:12:54: error: spec.port: Servers web and web-too both select "
                               "port 'http' of the same pods");
  /* Selectors that could both hold: a warning. */
  snprintf(text, sizeof text,
           "%s"
           "apiVersion: policy.linkerd.io/v1beta3\n"
           "kind: Server\n"
           "metadata: {name: web-tier, namespace: shop}\n"
           "spec: {podSelector: {matchLabels: {tier: gold}}, port: http}\n"
           "---\n"
           "apiVersion: policy.linkerd.io/v1beta3\n"
           "kind: Server\n"
           "metadata: {name: web-other, namespace: shop}\n"
           "spec:\n"
           "  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}\n"
           "  port: http\n",
           server_web);
  mesh_policy *p = compile_ok(text, NULL);
  ASSERT_DIAG(MESH_DIAG_WARNING, "Servers web and web-tier may both select port 'http'");
  ASSERT_DIAG(MESH_DIAG_WARNING, "Servers web-other and web-tier may both select");
  ck_assert_int_eq(has_diag(MESH_DIAG_WARNING, "Servers web and web-other"), 0);
  mesh_policy_unref(p);
  /* Across files: a duplicate names the first file. */
  const char *two[] = {server_web, server_web};
  ck_assert_int_eq(compile_n(two, 2, NULL, &p), MESH_ERR_PARSE);
  ASSERT_DIAG(MESH_DIAG_ERROR, "b.yaml:3:18: error: metadata.name: Server shop/web is already defined at a.yaml:3");

  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: Server\n"
        "metadata: {name: s}\n"
        "spec: {podSelector: {matchLabels: {app: x}}, port: 80, proxyProtocol: http/2}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "a.yaml:4:71: error: spec.proxyProtocol: unknown proxyProtocol 'http/2' (did you mean 'HTTP/2'?");
  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: Server\n"
        "metadata: {name: s}\n"
        "spec: {podSelector: {matchLabels: {app: x}}, port: '80'}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "spec.port: '80' is quoted");
  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: Server\n"
        "metadata: {name: s}\n"
        "spec: {podSelector: {matchExpressions: [{key: app, operator: Like, values: [x]}]}, port: 70000}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "unknown operator 'Like'");
  ASSERT_DIAG(MESH_DIAG_ERROR, "port must be between 1 and 65535");
  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: ServerAuthorization\n"
        "metadata: {name: a}\n"
        "spec:\n"
        "  server: {name: s}\n"
        "  client:\n"
        "    unauthenticated: true\n"
        "    networks: [{cidr: 10.0.0.0/33}, {cidr: 10.0.0/8}, {cidr: 10.0.0.0/8, except: [fe80::/10]}]\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "a.yaml:8:23: error: spec.client.networks[0].cidr: invalid CIDR '10.0.0.0/33'");
  ASSERT_DIAG(MESH_DIAG_ERROR, "invalid CIDR '10.0.0/8': not an IPv4 or IPv6 address");
  ASSERT_DIAG(MESH_DIAG_WARNING, "'fe80::/10' is not inside 10.0.0.0/8");
  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: ServerAuthorization\n"
        "metadata: {name: a}\n"
        "spec: {server: {name: s}, client: {meshTLS: {identities: ['web.*.cluster.local', 'spiffe://x/a/../b']}}}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "wildcard is only allowed");
  ASSERT_DIAG(MESH_DIAG_ERROR, "not a valid SPIFFE ID");
  fails("apiVersion: policy.linkerd.io/v1beta1\n"
        "kind: ServerAuthorization\n"
        "metadata: {name: a}\n"
        "spec: {server: {name: s}, client: {}}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "client must set 'meshTLS' or 'unauthenticated: true'");
  fails("apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: r}\n"
        "spec:\n"
        "  parentRefs: [{name: s, kind: Server, group: policy.linkerd.io}]\n"
        "  rules:\n"
        "  - matches:\n"
        "    - path: {type: RegularExpression, value: '/a/(?=b)'}\n"
        "      headers: [{name: 'bad header', value: x}, {name: y, type: Regex, value: z}]\n"
        "    - path: {type: Exact, value: 'no-slash'}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "a.yaml:8:46: error: spec.rules[0].matches[0].path.value: invalid regular expression '/a/(?=b)'");
  ASSERT_DIAG(MESH_DIAG_ERROR, "'bad header' is not a valid header name");
  ASSERT_DIAG(MESH_DIAG_ERROR, "unknown match type 'Regex'");
  ASSERT_DIAG(MESH_DIAG_ERROR, "a path must start with '/'");
  fails("apiVersion: policy.linkerd.io/v1alpha1\n"
        "kind: AuthorizationPolicy\n"
        "metadata: {name: a}\n"
        "spec:\n"
        "  targetRef: {kind: Deployment, name: web}\n"
        "  requiredAuthenticationRefs: [{kind: Secret, name: x}]\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "targetRef must be a Server or HTTPRoute");
  ASSERT_DIAG(MESH_DIAG_ERROR, "requiredAuthenticationRefs must name");
  fails("apiVersion: policy.linkerd.io/v1alpha1\n"
        "kind: MeshTLSAuthentication\n"
        "metadata: {name: m}\n"
        "spec: {}\n"
        "---\n"
        "apiVersion: policy.linkerd.io/v1alpha1\n"
        "kind: NetworkAuthentication\n"
        "metadata: {name: n}\n"
        "spec: {networks: []}\n");
  ASSERT_DIAG(MESH_DIAG_ERROR, "missing required field 'identities' or 'identityRefs'");
  ASSERT_DIAG(MESH_DIAG_ERROR, "an empty networks list lets no one in");
}
END_TEST

/* ---- no allocation when deciding, and allocation failures when compiling ---- */

START_TEST(decisions_do_not_allocate) {
  test_alloc a;
  mesh_ctx *c = test_ctx(&a);
  mesh_manifest *m = NULL;
  ck_assert_int_eq(mesh_manifest_load_buffer(c, "books.yaml", books, strlen(books), NULL, &m), 0);
  mesh_policy *p = NULL;
  ck_assert_int_eq(mesh_policy_compile(c, (const mesh_manifest *const *)&m, 1, NULL, NULL, &p), 0);
  mesh_manifest_free(m);
  mesh_policy *seed = seed_policy(c, NULL);
  ck_assert_ptr_nonnull(seed);
  mesh_policy_header role = {"x-role", 6, "admin", 5};
  mesh_policy_request q = get(from("10.1.1.1", EDITOR, 1), "GET", "/books/12/edit?confirm=yes");
  q.headers = &role;
  q.nheaders = 1;
  mesh_policy_workload w = wl("shop", labels_books, 2, 7000);
  ck_assert_int_eq(decide(p, w, q).decision, MESH_POLICY_ALLOW); /* this thread's regex block */
  a.fail_after = a.calls; /* any allocation from here on fails */
  size_t allowed = 0;
  for (int i = 0; i < 10000; i++) {
    mesh_policy_result r;
    q.client_id = i % 3 ? EDITOR : "spiffe://cluster.local/ns/shop/sa/reader";
    ck_assert_int_eq(mesh_policy_decide(p, &w, &q, &r), 0);
    allowed += r.decision == MESH_POLICY_ALLOW;
    mesh_policy_workload sw = wl("production", labels_exam, 2, 8080);
    mesh_policy_request sq = get(from("10.1.2.3", i % 2 ? FRONTEND : MOBILE_SPIFFE, 1), "GET", "/api/v1/premium/x");
    ck_assert_int_eq(mesh_policy_decide(seed, &sw, &sq, &r), 0);
    allowed += r.decision == MESH_POLICY_ALLOW;
  }
  ck_assert_uint_eq(allowed, 20000);
  a.fail_after = -1;
  mesh_policy_unref(p);
  mesh_policy_unref(seed);
  ck_assert_int_eq(a.live, 1);
  mesh_ctx_free(c);
}
END_TEST

static int compile_op(mesh_ctx *c, void *arg) {
  const char *text = arg;
  mesh_manifest *m = NULL;
  mesh_policy_opts *o = NULL;
  mesh_policy *p = NULL;
  int rc = mesh_manifest_load_buffer(c, "x.yaml", text, strlen(text), NULL, &m);
  if (rc == 0) rc = mesh_policy_opts_new(c, &o);
  if (rc == 0) rc = mesh_policy_compile(c, (const mesh_manifest *const *)&m, 1, o, NULL, &p);
  mesh_manifest_free(m);
  mesh_policy_opts_free(o);
  if (rc == 0) {
    mesh_policy_workload w = wl("shop", labels_books, 2, 7000);
    ck_assert_int_eq(decide(p, w, get(from("8.8.8.8", READER, 1), "GET", "/books/1")).decision,
                     MESH_POLICY_ALLOW);
  }
  mesh_policy_unref(p);
  return rc;
}

START_TEST(allocation_failures) {
  ck_assert_int_gt(test_alloc_failures(compile_op, (void *)books), 100);
}
END_TEST

/* Decisions from several threads on one snapshot agree with one thread's. */
typedef struct {
  const mesh_policy *p;
  size_t wrong;
} worker_arg;

static void *worker(void *arg) {
  worker_arg *w = arg;
  mesh_policy_workload wk = wl("shop", labels_books, 2, 7000);
  mesh_policy_header role = {"x-role", 6, "admin", 5};
  for (int i = 0; i < 20000; i++) {
    mesh_policy_request q = get(from("10.1.1.1", i % 2 ? EDITOR : READER, 1), "GET",
                                i % 3 ? "/books/12/edit?confirm=yes" : "/catalog");
    q.headers = &role;
    q.nheaders = 1;
    mesh_policy_result r;
    if (mesh_policy_decide(w->p, &wk, &q, &r) != 0) w->wrong++;
    const char *want = i % 3 == 0 ? (i % 2 ? NULL : "readers")
                                  : (i % 2 ? "write-from-office" : "readers");
    if (want ? !r.authz_name || strcmp(r.authz_name, want) != 0 : r.authz_name != NULL) w->wrong++;
  }
  return NULL;
}

START_TEST(concurrent_decisions) {
  mesh_policy *p = compile_ok(books, NULL);
  pthread_t t[4];
  worker_arg args[4];
  for (int i = 0; i < 4; i++) {
    args[i] = (worker_arg){p, 0};
    ck_assert_int_eq(pthread_create(&t[i], NULL, worker, &args[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(t[i], NULL);
    ck_assert_uint_eq(args[i].wrong, 0);
  }
  mesh_policy_unref(p);
}
END_TEST

/* JSON is read like YAML. */
START_TEST(json_manifests) {
  mesh_policy *p = compile_ok(
      "{\"apiVersion\": \"policy.linkerd.io/v1beta3\", \"kind\": \"Server\",\n"
      " \"metadata\": {\"name\": \"j\", \"namespace\": \"n\"},\n"
      " \"spec\": {\"podSelector\": {\"matchLabels\": {\"app\": \"j\"}}, \"port\": 9000,"
      " \"proxyProtocol\": \"gRPC\", \"accessPolicy\": \"all-authenticated\"}}\n",
      NULL);
  mesh_policy_label l[] = {{"app", "j"}};
  mesh_policy_result r = decide(p, wl("n", l, 1, 9000), from("8.8.8.8", WEB, 1));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_int_eq(r.protocol, MESH_POLICY_PROTO_GRPC);
  ck_assert_str_eq(r.authz_name, "all-authenticated");
  ck_assert_int_eq(decide(p, wl("n", l, 1, 9000), from("8.8.8.8", NULL, 0)).decision, MESH_POLICY_DENY);
  mesh_policy_unref(p);
  /* HTTPRoutes do not attach to a gRPC Server (Linkerd would want a GRPCRoute). */
  p = compile_ok("apiVersion: policy.linkerd.io/v1beta3\n"
                 "kind: Server\n"
                 "metadata: {name: g, namespace: n}\n"
                 "spec: {podSelector: {}, port: 9000, proxyProtocol: gRPC, accessPolicy: all-unauthenticated}\n"
                 "---\n"
                 "apiVersion: policy.linkerd.io/v1beta3\n"
                 "kind: HTTPRoute\n"
                 "metadata: {name: h, namespace: n}\n"
                 "spec: {parentRefs: [{name: g, kind: Server, group: policy.linkerd.io}], rules: [{matches: [{path: {value: /x}}]}]}\n",
                 NULL);
  ASSERT_DIAG(MESH_DIAG_WARNING, "Server 'g' is gRPC");
  r = decide(p, wl("n", l, 1, 9000), get(from("8.8.8.8", NULL, 0), "POST", "/pkg.Svc/Call"));
  ck_assert_int_eq(r.decision, MESH_POLICY_ALLOW);
  ck_assert_str_eq(r.route_kind, "default");
  mesh_policy_unref(p);
}
END_TEST

START_TEST(invalid_arguments) {
  mesh_policy *p = compile_ok(NULL, NULL);
  mesh_policy_workload w = wl("ns", NULL, 0, 80);
  mesh_policy_request q = from("10.0.0.1", NULL, 0);
  mesh_policy_result r = {0};
  ck_assert_int_eq(mesh_policy_decide(NULL, &w, &q, &r), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_policy_decide(p, NULL, &q, &r), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_policy_decide(p, &w, NULL, &r), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_policy_decide(p, &w, &q, NULL), MESH_ERR_INVALID);
  w.port = 0;
  ck_assert_int_eq(mesh_policy_decide(p, &w, &q, &r), MESH_ERR_INVALID);
  w.port = 80;
  w.ns = NULL;
  ck_assert_int_eq(mesh_policy_decide(p, &w, &q, &r), MESH_ERR_INVALID);
  w.ns = "ns";
  q.addr_family = 5;
  ck_assert_int_eq(mesh_policy_decide(p, &w, &q, &r), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_policy_compile(NULL, NULL, 0, NULL, NULL, &p), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_policy_compile(ctx, NULL, 1, NULL, NULL, &p), MESH_ERR_INVALID);
  ck_assert_ptr_eq(mesh_policy_ref(p), p);
  mesh_policy_unref(p);
  mesh_policy_unref(p);
  mesh_policy_unref(NULL);
  mesh_policy_opts_free(NULL);
  ck_assert_int_eq(mesh_policy_opts_set_default(NULL, 1), MESH_ERR_INVALID);
  ck_assert_uint_eq(mesh_policy_server_count(NULL), 0);
}
END_TEST

/* ---- introspection ---- */

static const char shown[] =
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: a-named, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: gRPC,\n"
    "       accessPolicy: audit}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: Server\n"
    "metadata: {name: b-numbered, namespace: shop}\n"
    "spec: {podSelector: {matchLabels: {app: web}}, port: 8080}\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta1\n"
    "kind: ServerAuthorization\n"
    "metadata: {name: mixed, namespace: shop}\n"
    "spec:\n"
    "  server: {name: b-numbered}\n"
    "  client:\n"
    "    meshTLS:\n"
    "      identities: ['*.front.serviceaccount.identity.linkerd.cluster.local',\n"
    "                   'spiffe://cluster.local/ns/front/*', 'spiffe://cluster.local/ns/a/sa/b']\n"
    "      serviceAccounts: [{name: web, namespace: front}]\n"
    "    networks: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}, {cidr: 'fd00::/8'}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1beta3\n"
    "kind: HTTPRoute\n"
    "metadata: {name: r, namespace: shop}\n"
    "spec:\n"
    "  parentRefs: [{group: policy.linkerd.io, kind: Server, name: b-numbered}]\n"
    "  rules: [{matches: [{path: {value: /a}}]}, {matches: [{method: GET}]}]\n"
    "---\n"
    "apiVersion: policy.linkerd.io/v1alpha1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: on-r, namespace: shop}\n"
    "spec:\n"
    "  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: r}\n"
    "  requiredAuthenticationRefs:\n"
    "  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: gone}\n"
    "  - {kind: ServiceAccount, name: probe}\n";

START_TEST(introspection) {
  mesh_policy_opts *o = NULL;
  ck_assert_int_eq(mesh_policy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_policy_opts_set_default(o, MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED), 0);
  mesh_policy *p = compile_ok(shown, o);
  mesh_policy_opts_free(o);
  ck_assert_uint_eq(mesh_policy_server_count(p), 2);
  mesh_policy_server_info si;
  ck_assert_int_eq(mesh_policy_server_describe(p, 0, &si), 0);
  ck_assert_str_eq(si.name, "a-named");
  ck_assert_str_eq(si.port_name, "http");
  ck_assert_uint_eq(si.port, 0);
  ck_assert_int_eq(si.protocol, MESH_POLICY_PROTO_GRPC);
  ck_assert_int_eq(si.access_policy, MESH_POLICY_DEFAULT_AUDIT);
  ck_assert_int_eq(mesh_policy_server_describe(p, 1, &si), 0);
  ck_assert_str_eq(si.name, "b-numbered");
  ck_assert_uint_eq(si.port, 8080);
  ck_assert_ptr_null(si.port_name);
  ck_assert_int_eq(si.access_policy, MESH_POLICY_DEFAULT_DENY);
  ck_assert_uint_eq(si.nroutes, 1);
  ck_assert_uint_eq(si.nauthz, 1);
  ck_assert_int_eq(mesh_policy_server_describe(p, 2, &si), MESH_ERR_RANGE);

  /* Which Server decides a port: the one mesh_policy_decide picks. */
  mesh_policy_label web[] = {{"app", "web"}};
  mesh_policy_workload w = wl("shop", web, 1, 0);
  ck_assert_int_eq(mesh_policy_server_selects(p, 0, &w), 1); /* any port */
  ck_assert_int_eq(mesh_policy_server_selects(p, 1, &w), 1);
  size_t at = 99;
  ck_assert_int_eq(mesh_policy_server_find(p, &w, &at), MESH_ERR_INVALID);
  w.port = 8080;
  ck_assert_int_eq(mesh_policy_server_find(p, &w, &at), 0);
  ck_assert_uint_eq(at, 1);
  w.port = 9000;
  w.port_name = "http";
  ck_assert_int_eq(mesh_policy_server_find(p, &w, &at), 0);
  ck_assert_uint_eq(at, 0);
  ck_assert_str_eq(decide(p, w, from("10.0.0.1", NULL, 0)).server_name, "a-named");
  w.port_name = NULL;
  ck_assert_int_eq(mesh_policy_server_find(p, &w, &at), MESH_ERR_NOT_FOUND);
  ck_assert_str_eq(decide(p, w, from("10.0.0.1", NULL, 0)).server_kind, "default");
  w.ns = "other";
  ck_assert_int_eq(mesh_policy_server_selects(p, 1, &w), 0);

  mesh_policy_route_info ri;
  ck_assert_int_eq(mesh_policy_route_describe(p, 1, 0, &ri), 0);
  ck_assert_str_eq(ri.name, "r");
  ck_assert_uint_eq(ri.nrules, 2);
  ck_assert_uint_eq(ri.nauthz, 1);
  ck_assert_int_eq(mesh_policy_route_describe(p, 0, 0, &ri), MESH_ERR_RANGE);

  /* The ServerAuthorization: every identity form, networks with exceptions. */
  const mesh_policy_authz *a = mesh_policy_server_authz(p, 1, 0);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_null(mesh_policy_server_authz(p, 1, 1));
  mesh_policy_authz_info ai;
  ck_assert_int_eq(mesh_policy_authz_describe(a, &ai), 0);
  ck_assert_str_eq(ai.kind, "serverauthorization");
  ck_assert_str_eq(ai.name, "mixed");
  ck_assert_int_eq(ai.never, 0);
  ck_assert_uint_eq(ai.nclauses, 1);
  mesh_policy_clause_info ci;
  ck_assert_int_eq(mesh_policy_authz_clause(a, 0, &ci), 0);
  ck_assert_int_eq(ci.authn, MESH_POLICY_AUTHN_MESH);
  ck_assert_uint_eq(ci.nidentities, 4);
  ck_assert_uint_eq(ci.nnetworks, 2);
  char buf[128];
  const char *ids[] = {"*.front.serviceaccount.identity.linkerd.cluster.local",
                       "spiffe://cluster.local/ns/front/*", "spiffe://cluster.local/ns/a/sa/b",
                       "web.front.serviceaccount.identity.linkerd.cluster.local"};
  for (size_t m = 0; m < 4; m++) {
    ck_assert_int_eq(mesh_policy_authz_identity(a, 0, m, buf, sizeof buf), 0);
    ck_assert_str_eq(buf, ids[m]);
  }
  ck_assert_int_eq(mesh_policy_authz_identity(a, 0, 4, buf, sizeof buf), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_policy_authz_identity(a, 0, 0, buf, 10), MESH_ERR_LIMIT);
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 0, 0, buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "10.0.0.0/8");
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 0, 2, buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "10.2.0.0/16");
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 0, 3, buf, sizeof buf), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 1, 0, buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "fd00::/8");
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 1, 0, buf, 4), MESH_ERR_LIMIT);
  ck_assert_int_eq(mesh_policy_authz_clause(a, 1, &ci), MESH_ERR_RANGE);

  /* The route's policy: a missing authentication makes it admit no one. */
  a = mesh_policy_route_authz(p, 1, 0, 0);
  ck_assert_int_eq(mesh_policy_authz_describe(a, &ai), 0);
  ck_assert_str_eq(ai.name, "on-r");
  ck_assert_int_eq(ai.never, 1);
  ck_assert_uint_eq(ai.nclauses, 2);
  ck_assert_int_eq(mesh_policy_authz_identity(a, 1, 0, buf, sizeof buf), 0); /* the ServiceAccount ref */
  ck_assert_str_eq(buf, "probe.shop.serviceaccount.identity.linkerd.cluster.local");
  ck_assert_ptr_null(mesh_policy_route_authz(p, 1, 0, 1));

  /* Defaults: the snapshot's, and what each admits. */
  ck_assert_int_eq(mesh_policy_default(p), MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED);
  a = mesh_policy_default_authz(p, MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED);
  ck_assert_int_eq(mesh_policy_authz_describe(a, &ai), 0);
  ck_assert_str_eq(ai.name, "cluster-unauthenticated");
  ck_assert_int_eq(mesh_policy_authz_clause(a, 0, &ci), 0);
  ck_assert_int_eq(ci.authn, MESH_POLICY_AUTHN_ANY);
  ck_assert_uint_eq(ci.nnetworks, 5);
  ck_assert_int_eq(mesh_policy_authz_network(a, 0, 4, 0, buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "fd00::/8");
  a = mesh_policy_default_authz(p, MESH_POLICY_DEFAULT_ALL_AUTHENTICATED);
  ck_assert_int_eq(mesh_policy_authz_identity(a, 0, 0, buf, sizeof buf), 0);
  ck_assert_str_eq(buf, "*");
  ck_assert_int_eq(mesh_policy_authz_describe(mesh_policy_default_authz(p, MESH_POLICY_DEFAULT_DENY), &ai), 0);
  ck_assert_int_eq(ai.never, 1);
  ck_assert_ptr_null(mesh_policy_default_authz(p, MESH_POLICY_DEFAULT_UNSET));
  ck_assert_ptr_null(mesh_policy_default_authz(p, 7));
  ck_assert_int_eq(mesh_policy_authz_describe(NULL, &ai), MESH_ERR_INVALID);
  mesh_policy_unref(p);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("policy");
  TCase *tc = tcase_create("core");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, seed_exam_api);
  tcase_add_test(tc, default_policies);
  tcase_add_test(tc, networks_with_except);
  tcase_add_test(tc, identity_forms);
  tcase_add_test(tc, authorization_policies_and_routes);
  tcase_add_test(tc, missing_references_authorize_nothing);
  tcase_add_test(tc, access_policy_and_opaque);
  tcase_add_test(tc, bad_input_is_reported_where_it_is);
  tcase_add_test(tc, decisions_do_not_allocate);
  tcase_add_test(tc, allocation_failures);
  tcase_add_test(tc, concurrent_decisions);
  tcase_add_test(tc, json_manifests);
  tcase_add_test(tc, invalid_arguments);
  tcase_add_test(tc, introspection);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) { return test_main(make_suite()); }
