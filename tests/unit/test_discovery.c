/* Unit tests for discovery: Get messages kept as endpoint sets (add/remove/no_endpoints, diffs, bounds, bad input), GetProfile messages as profiles, the client against an in-process mesh-destination, and the inbound policy stream. */
#include <event2/event.h>

#include <mesh/split.h>
#include <mesh/store.h>

#include "discovery_internal.h"
#include "proxy_profiles_internal.h"
#include "testutil.h"

static mesh_ctx *ctx;

static void setup(void) { ck_assert_int_eq(mesh_ctx_new(&ctx), 0); }
static void teardown(void) { mesh_ctx_free(ctx); }

#define WEB "web.shop.serviceaccount.identity.linkerd.cluster.local"
#define ADD1                                                                                   \
  "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\",\"weight\":1,\"metric_labels\":{"         \
  "\"namespace\":\"shop\",\"service\":\"web\",\"pod\":\"web-1\"},\"tls_identity\":{"            \
  "\"dns_like_identity\":{\"name\":\"" WEB "\"}},\"protocol_hint\":{\"h2\":{}},"               \
  "\"target_port\":8080}],\"metric_labels\":{\"namespace\":\"shop\",\"service\":\"web\"}}}"

static disc_set *set_new(void) {
  disc_set *s = NULL;
  ck_assert_int_eq(mesh__disc_set_new(ctx, &s), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_PENDING);
  return s;
}

static int apply(disc_set *s, const char *msg) {
  const char *why = NULL;
  int rc = mesh__disc_set_apply(s, msg, strlen(msg), 0, &why);
  ck_assert_ptr_nonnull(why);
  ck_assert_msg(rc == 0 || *why, "an error without a reason");
  return rc;
}

START_TEST(add_then_pick) {
  disc_set *s = set_new();
  ck_assert_int_eq(apply(s, ADD1), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY);
  ck_assert_uint_eq(mesh__disc_set_count(s), 1);
  disc_endpoint e;
  uint32_t w = 0;
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.2:4143", &e, &w), 0);
  ck_assert_str_eq(e.identity, WEB);
  ck_assert_uint_eq(e.port, 8080);
  ck_assert_uint_eq(w, 1);
  /* A pick holds the set: it outlives the cache's reference. */
  mesh_endpoint *ep = NULL;
  memset(&e, 0, sizeof e);
  ck_assert_int_eq(mesh__disc_set_pick(s, 1, 1, 2, &ep, &e), 0);
  ck_assert_str_eq(mesh_endpoint_addr(ep), "127.0.0.2:4143");
  ck_assert_str_eq(e.identity, WEB);
  ck_assert_uint_eq(e.port, 8080);
  ck_assert_int_eq(e.sa.ss_family, AF_INET);
  ck_assert_int_eq(apply(s, "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\"}]}}"), 0);
  mesh__disc_set_unref(s); /* the cache lets go: the pick still holds it */
  mesh_balance_done(ep, 2, 1, 1, 0);
  mesh__disc_set_unref(s);
}
END_TEST

START_TEST(diffs_replace_and_remove) {
  disc_set *s = set_new();
  ck_assert_int_eq(
      apply(s, "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\"},{\"addr\":\"127.0.0.3:4143\","
               "\"weight\":5},{\"addr\":\"[::1]:4143\",\"target_port\":9}]}}"),
      0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 3);
  ck_assert_uint_eq(mesh_balance_count(mesh__disc_set_balance(s)), 3);
  disc_endpoint e;
  uint32_t w;
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.2:4143", &e, &w), 0);
  ck_assert_str_eq(e.identity, ""); /* no tls_identity: not meshed */
  ck_assert_uint_eq(e.port, 0);
  ck_assert_uint_eq(w, 1);
  ck_assert_int_eq(mesh__disc_set_get(s, "[::1]:4143", &e, NULL), 0);
  ck_assert_uint_eq(e.port, 9);
  /* An address already known is replaced by its new description. */
  ck_assert_int_eq(apply(s, "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.3:4143\",\"weight\":7,"
                            "\"tls_identity\":{\"dns_like_identity\":{\"name\":\"" WEB "\"}}}]}}"),
                   0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 3);
  ck_assert_uint_eq(mesh_balance_count(mesh__disc_set_balance(s)), 3);
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.3:4143", &e, &w), 0);
  ck_assert_uint_eq(w, 7);
  ck_assert_str_eq(e.identity, WEB);
  /* Removing an unknown address is harmless; known ones go. */
  ck_assert_int_eq(apply(s, "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\"},"
                            "{\"addr\":\"127.0.0.9:1\"}]}}"),
                   0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 2);
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.2:4143", NULL, NULL), MESH_ERR_NOT_FOUND);
  ck_assert_uint_eq(mesh_balance_count(mesh__disc_set_balance(s)), 2);
  /* Picks only ever see what is left. */
  for (uint32_t i = 0; i < 50; i++) {
    mesh_endpoint *ep;
    ck_assert_int_eq(mesh__disc_set_pick(s, i, i * 7919u, i * 104729u, &ep, &e), 0);
    ck_assert_str_ne(mesh_endpoint_addr(ep), "127.0.0.2:4143");
    mesh_balance_done(ep, i + 1, i, 1, 0);
    mesh__disc_set_unref(s);
  }
  mesh__disc_set_unref(s);
}
END_TEST

/* A reconnected stream's first message is the whole state: what it does not
 * name left while the stream was down. Later adds are diffs. */
START_TEST(first_message_resyncs) {
  disc_set *s = set_new();
  ck_assert_int_eq(
      apply(s, "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:1\"},{\"addr\":\"127.0.0.3:1\"}]}}"), 0);
  const char *msg = "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.3:1\",\"weight\":3},"
                    "{\"addr\":\"127.0.0.4:1\"}]}}";
  mesh_endpoint *held;
  disc_endpoint e;
  ck_assert_int_eq(mesh__disc_set_pick(s, 1, 0, 1, &held, &e), 0); /* in flight across it */
  ck_assert_int_eq(mesh__disc_set_apply(s, msg, strlen(msg), 1, NULL), 0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 2);
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.2:1", NULL, NULL), MESH_ERR_NOT_FOUND);
  uint32_t w;
  ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.3:1", NULL, &w), 0);
  ck_assert_uint_eq(w, 3);
  ck_assert_uint_eq(mesh_balance_count(mesh__disc_set_balance(s)), 2);
  mesh_balance_done(held, 2, 1, 1, 0);
  mesh__disc_set_unref(s);
  /* A bad first message drops nothing. */
  msg = "{\"add\":{\"addrs\":[{\"addr\":\"x\"}]}}";
  ck_assert_int_eq(mesh__disc_set_apply(s, msg, strlen(msg), 1, NULL), MESH_ERR_PARSE);
  ck_assert_uint_eq(mesh__disc_set_count(s), 2);
  /* Not first: a diff. */
  msg = "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.5:1\"}]}}";
  ck_assert_int_eq(mesh__disc_set_apply(s, msg, strlen(msg), 0, NULL), 0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 3);
  mesh__disc_set_unref(s);
}
END_TEST

START_TEST(no_endpoints) {
  disc_set *s = set_new();
  ck_assert_int_eq(apply(s, "{\"no_endpoints\":{\"exists\":false}}"), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_NOT_FOUND);
  ck_assert_int_eq(apply(s, ADD1), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY);
  ck_assert_int_eq(apply(s, "{\"no_endpoints\":{\"exists\":true}}"), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY); /* exists, empty */
  ck_assert_uint_eq(mesh__disc_set_count(s), 0);
  ck_assert_uint_eq(mesh_balance_count(mesh__disc_set_balance(s)), 0);
  mesh_endpoint *ep;
  disc_endpoint e;
  ck_assert_int_eq(mesh__disc_set_pick(s, 1, 1, 2, &ep, &e), MESH_ERR_UNAVAILABLE);
  ck_assert_int_eq(apply(s, "{\"no_endpoints\":{\"exists\":false}}"), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_NOT_FOUND);
  mesh__disc_set_unref(s);
}
END_TEST

/* A bad message changes nothing: the state before it is kept. */
START_TEST(malformed_kept_out) {
  static const char *const bad[] = {
      "",
      "not json",
      "[]",
      "{}",
      "{\"add\":{\"addrs\":[]},\"remove\":{\"addrs\":[]}}",
      "{\"update\":{}}",
      "{\"add\":{}}",
      "{\"add\":{\"addrs\":{}}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\"},{\"weight\":1}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\"},{\"addr\":\"host:80\"}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\"},{\"addr\":\"127.0.0.5:0\"}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"weight\":0}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"weight\":1001}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"weight\":\"1\"}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"target_port\":70000}]}}",
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"tls_identity\":{\"name\":\"x\"}}]}}",
      ("{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"tls_identity\":{\"dns_like_identity\":"
       "{\"name\":\"not an identity\"}}}]}}"),
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\"}]}, \"add\":{\"addrs\":[]}}",
      "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\"},{\"addr\":7}]}}",
      "{\"no_endpoints\":{\"exists\":\"no\"}}",
      "{\"no_endpoints\":{}}",
  };
  disc_set *s = set_new();
  ck_assert_int_eq(apply(s, ADD1), 0);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ck_assert_msg(apply(s, bad[i]) == MESH_ERR_PARSE, "accepted: %s", bad[i]);
    ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY);
    ck_assert_uint_eq(mesh__disc_set_count(s), 1);
    ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.2:4143", NULL, NULL), 0);
    ck_assert_int_eq(mesh__disc_set_get(s, "127.0.0.4:1", NULL, NULL), MESH_ERR_NOT_FOUND);
  }
  /* A NUL inside the line is not hidden by it. */
  const char nul[] = "{\"no_endpoints\":{\"exists\":false}}\0garbage";
  ck_assert_int_eq(mesh__disc_set_apply(s, nul, sizeof nul - 1, 0, NULL), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY);
  mesh__disc_set_unref(s);
}
END_TEST

static char *many(size_t from, size_t n) {
  size_t cap = 64 + n * 40;
  char *m = malloc(cap), *p = m;
  p += sprintf(p, "{\"add\":{\"addrs\":[");
  for (size_t i = 0; i < n; i++)
    p += sprintf(p, "%s{\"addr\":\"10.%zu.%zu.%zu:80\"}", i ? "," : "", (from + i) >> 16 & 255,
                 (from + i) >> 8 & 255, (from + i) & 255);
  sprintf(p, "]}}");
  return m;
}

START_TEST(bounds) {
  disc_set *s = set_new();
  char *m = many(0, DISC_ENDPOINTS_MAX - 1);
  ck_assert_int_eq(apply(s, m), 0);
  free(m);
  ck_assert_uint_eq(mesh__disc_set_count(s), DISC_ENDPOINTS_MAX - 1);
  m = many(DISC_ENDPOINTS_MAX - 1, 2); /* one too many: all refused */
  ck_assert_int_eq(apply(s, m), MESH_ERR_LIMIT);
  free(m);
  ck_assert_uint_eq(mesh__disc_set_count(s), DISC_ENDPOINTS_MAX - 1);
  m = many(DISC_ENDPOINTS_MAX - 1, 1); /* up to the bound: fine */
  ck_assert_int_eq(apply(s, m), 0);
  free(m);
  ck_assert_uint_eq(mesh__disc_set_count(s), DISC_ENDPOINTS_MAX);
  m = many(0, 5); /* known addresses do not count twice */
  ck_assert_int_eq(apply(s, m), 0);
  free(m);
  m = many(0, DISC_ENDPOINTS_MAX + 1);
  ck_assert_int_eq(apply(s, m), MESH_ERR_LIMIT);
  free(m);
  ck_assert_uint_eq(mesh__disc_set_count(s), DISC_ENDPOINTS_MAX);
  /* A message over the size bound is not even parsed. */
  size_t big = DISC_MESSAGE_MAX + 1;
  char *huge = malloc(big);
  memset(huge, ' ', big);
  ck_assert_int_eq(mesh__disc_set_apply(s, huge, big, 0, NULL), MESH_ERR_LIMIT);
  free(huge);
  ck_assert_int_eq(apply(s, "{\"no_endpoints\":{\"exists\":true}}"), 0);
  ck_assert_uint_eq(mesh__disc_set_count(s), 0);
  mesh__disc_set_unref(s);
}
END_TEST

static int set_op(mesh_ctx *c, void *arg) {
  (void)arg;
  disc_set *s = NULL;
  int rc = mesh__disc_set_new(c, &s);
  if (rc) return rc;
  const char *msg = "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.2:1\"},{\"addr\":\"127.0.0.3:1\"},"
                    "{\"addr\":\"127.0.0.4:1\"}]}}";
  rc = mesh__disc_set_apply(s, msg, strlen(msg), 1, NULL);
  if (!rc) {
    msg = "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.3:1\"}]}}";
    rc = mesh__disc_set_apply(s, msg, strlen(msg), 1, NULL);
  }
  mesh__disc_set_unref(s);
  return rc;
}

START_TEST(allocation_failure) { ck_assert_int_gt(test_alloc_failures(set_op, NULL), 3); }
END_TEST

/* ---- GetProfile messages ------------------------------------------------------------ */

/* What mesh-destination sends (doc/protocol.md), with every route field. */
#define PROFILE1                                                                               \
  "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":["                     \
  "{\"condition\":{\"all\":{\"matches\":[{\"method\":\"GET\"},{\"path\":{\"regex\":"          \
  "\"/items/[^/]*\"}}]}},\"response_classes\":[{\"condition\":{\"status\":{\"min\":500,"      \
  "\"max\":599}},\"is_failure\":true},{\"condition\":{\"not\":{\"status\":{\"min\":200,"      \
  "\"max\":499}}},\"is_failure\":true},{\"condition\":{\"any\":{\"matches\":[{\"status\":{"   \
  "\"min\":418,\"max\":418}}]}},\"is_failure\":true}],\"metrics_labels\":{\"route\":"         \
  "\"items\"},\"is_retryable\":true,\"timeout\":\"0.250s\"},"                                 \
  "{\"condition\":{\"not\":{\"method\":\"GET\"}},\"response_classes\":[],"                    \
  "\"metrics_labels\":{\"route\":\"writes\"},\"is_retryable\":false,\"timeout\":\"10s\","     \
  "\"retry_budget\":{\"retry_ratio\":0.5,\"min_retries_per_second\":3,\"ttl\":\"5s\"}}],"   \
  "\"retry_budget\":{\"retry_ratio\":0.2,\"min_retries_per_second\":10,\"ttl\":\"10s\"},"    \
  "\"dst_overrides\":[{\"authority\":\"web-v1.shop.svc.cluster.local:80\",\"weight\":9000}," \
  "{\"authority\":\"web-v2.shop.svc.cluster.local:80\",\"weight\":1000}],"                   \
  "\"opaque_protocol\":false}"

static int profile_parse(const char *msg, mesh_profile **ret, char *why, size_t cap) {
  return mesh__disc_profile_parse(ctx, msg, strlen(msg), ret, why, cap);
}

START_TEST(profile_converts) {
  mesh_profile *p = NULL;
  char why[256] = "";
  ck_assert_msg(profile_parse(PROFILE1, &p, why, sizeof why) == 0, "%s", why);
  ck_assert_ptr_nonnull(p);
  ck_assert_str_eq(mesh_profile_name(p), "web.shop.svc.cluster.local");
  ck_assert_str_eq(mesh_profile_namespace(p), "shop");
  ck_assert_uint_eq(mesh_profile_route_count(p), 2);
  const char *path = "/items/42";
  const mesh_route *r = mesh_profile_match(p, "GET", path, strlen(path));
  ck_assert_ptr_nonnull(r);
  ck_assert_str_eq(mesh_route_name(r), "items");
  ck_assert_uint_eq(mesh_route_timeout_ms(r), 250);
  ck_assert_int_eq(mesh_route_is_retryable(r), 1);
  ck_assert_int_eq(mesh_route_classify(r, 503, -1), 1);
  ck_assert_int_eq(mesh_route_classify(r, 302, -1), 0);
  ck_assert_int_eq(mesh_route_classify(r, 418, -1), 1); /* any */
  ck_assert_int_eq(mesh_route_classify(r, 404, -1), 0);
  ck_assert_int_eq(mesh_route_classify(r, 100, -1), 1); /* not 200..499 */
  path = "/items/42/parts";
  ck_assert_ptr_null(mesh_profile_match(p, "GET", path, strlen(path))); /* the whole path */
  const mesh_route *w = mesh_profile_match(p, "POST", path, strlen(path));
  ck_assert_ptr_nonnull(w);
  ck_assert_str_eq(mesh_route_name(w), "writes");
  ck_assert_int_eq(mesh_route_is_retryable(w), 0);
  ck_assert_uint_eq(mesh_route_timeout_ms(w), 10000);
  double ratio;
  uint32_t mps;
  uint64_t ttl;
  ck_assert_int_eq(mesh_route_retry_budget(w, &ratio, &mps, &ttl), 1);
  ck_assert(ratio == 0.5);
  ck_assert_uint_eq(mps, 3);
  ck_assert_uint_eq(ttl, 5000);
  ck_assert_int_eq(mesh_route_retry_budget(r, &ratio, &mps, &ttl), 0);
  ck_assert(ratio == 0.2);
  ck_assert_uint_eq(mps, 10);
  ck_assert_uint_eq(ttl, 10000);
  const mesh_split *sp = mesh_profile_dst_overrides(p);
  ck_assert_ptr_nonnull(sp);
  ck_assert_uint_eq(mesh_split_count(sp), 2);
  ck_assert_str_eq(mesh_split_backend(sp, 0), "web-v1.shop.svc.cluster.local:80");
  ck_assert_uint_eq(mesh_split_weight(sp, 0), 9000);
  ck_assert_uint_eq(mesh_split_weight(sp, 1), 1000);

  /* As the request path holds it: one destination with its budgets. */
  proxy_profiles *t = NULL;
  ck_assert_int_eq(mesh__proxy_profiles_one(ctx, p, &t), 0);
  mesh_profile_unref(p); /* the set holds its own reference */
  ck_assert_uint_eq(t->n, 1);
  ck_assert_str_eq(t->d[0].name, "web.shop.svc.cluster.local");
  ck_assert_ptr_nonnull(mesh__proxy_dst_budget(&t->d[0], NULL));
  ck_assert_ptr_nonnull(mesh__proxy_dst_budget(&t->d[0], w));
  ck_assert_ptr_ne(mesh__proxy_dst_budget(&t->d[0], w), mesh__proxy_dst_budget(&t->d[0], r));
  ck_assert_ptr_eq(mesh__proxy_dst_budget(&t->d[0], r), mesh__proxy_dst_budget(&t->d[0], NULL));
  ck_assert_str_eq(mesh_route_name(mesh_profile_route(t->d[0].prof, 0)), "items");
  mesh__proxy_profiles_unref(t);
}
END_TEST

/* The control plane's default profile, and a profile that says nothing: no profile. */
START_TEST(profile_default) {
  static const char *const none[] = {
      "{\"fully_qualified_name\":\"\",\"routes\":[],\"retry_budget\":{\"retry_ratio\":0.2,"
      "\"min_retries_per_second\":10,\"ttl\":\"10s\"},\"dst_overrides\":[],"
      "\"opaque_protocol\":false}",
      "{}",
      "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":[],"
      "\"dst_overrides\":[],\"opaque_protocol\":true}",
      "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":null}",
      /* An IP's answer: the endpoint is not a profile. */
      "{\"fully_qualified_name\":\"\",\"routes\":[],\"dst_overrides\":[],\"endpoint\":"
      "{\"addr\":\"127.0.0.2:4143\"}}",
  };
  for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
    mesh_profile *p = (mesh_profile *)ctx;
    char why[128] = "";
    ck_assert_msg(profile_parse(none[i], &p, why, sizeof why) == 0, "%s: %s", none[i], why);
    ck_assert_ptr_null(p);
  }
  /* A split alone (a TrafficSplit's apex) is a profile: its dst_overrides. */
  mesh_profile *p = NULL;
  char why[128] = "";
  ck_assert_int_eq(
      profile_parse("{\"fully_qualified_name\":\"apex.shop.svc.cluster.local\",\"routes\":[],"
                    "\"dst_overrides\":[{\"authority\":\"b.shop.svc.cluster.local:80\","
                    "\"weight\":0},{\"authority\":\"c.shop.svc.cluster.local:80\",\"weight\":1}]}",
                    &p, why, sizeof why),
      0);
  ck_assert_uint_eq(mesh_profile_route_count(p), 0);
  ck_assert_uint_eq(mesh_split_weight(mesh_profile_dst_overrides(p), 0), 0);
  ck_assert_uint_eq(mesh_split_weight(mesh_profile_dst_overrides(p), 1), MESH_WEIGHT_TOTAL);
  mesh_profile_unref(p);
}
END_TEST

/* Bad messages are refused with a reason, whatever is wrong and however deep. */
START_TEST(profile_bad) {
#define FQN "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\","
#define ROUTE(c) FQN "\"routes\":[{\"condition\":" c ",\"metrics_labels\":{\"route\":\"r\"}}]}"
  static const struct {
    const char *msg, *why;
  } bad[] = {
      {"", "not JSON"},
      {"not json", "not JSON"},
      {"[]", "not a JSON object"},
      {"{\"fully_qualified_name\":7}", "fully_qualified_name"},
      {FQN "\"routes\":{}}", "not a list"},
      {FQN "\"dst_overrides\":\"web\"}", "not a list"},
      {FQN "\"routes\":[7]}", "a route is not an object"},
      {ROUTE("{\"path\":{\"regex\":\"/items/[\"}}"), "invalid pathRegex"},
      {ROUTE("{\"path\":{\"regex\":\"/(a)\\\\1\"}}"), "pathRegex"},
      {ROUTE("{\"path\":\"/items\"}"), "path is not {\"regex\""},
      {ROUTE("{\"method\":\"G T\"}"), "not a valid HTTP method"},
      {ROUTE("{\"frobnicate\":true}"), "none of method, path"},
      {ROUTE("{}"), "none of method, path"},
      {ROUTE("{\"all\":[{\"method\":\"GET\"}]}"), "matches"},
      {ROUTE("{\"any\":{\"matches\":[{\"status\":{\"min\":500}}]}}"), "none of method, path"},
      {ROUTE("7"), "a condition is not an object"},
      {FQN "\"routes\":[{\"metrics_labels\":{\"route\":\"r\"}}]}", "condition"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"}}]}", "name"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"},"
           "\"timeout\":\"soon\"}]}",
       "duration"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"},"
           "\"response_classes\":[{\"condition\":{\"status\":{\"min\":600,\"max\":700}},"
           "\"is_failure\":true}]}]}",
       "between"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"},"
           "\"response_classes\":[{\"condition\":{\"method\":\"GET\"}}]}]}",
       "none of status"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"},"
           "\"response_classes\":{}}]}",
       "response_classes is not a list"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"}},"
           "{\"condition\":{\"method\":\"PUT\"},\"metrics_labels\":{\"route\":\"r\"}}]}",
       "already used"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"}}],"
           "\"retry_budget\":{\"retry_ratio\":0.2,\"min_retries_per_second\":10,\"ttl\":\"1h\"}}",
       "ttl"},
      {FQN "\"routes\":[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":\"r\"}}],"
           "\"retry_budget\":7}",
       "retry_budget is not an object"},
      {FQN "\"dst_overrides\":[{\"authority\":\"a:80\",\"weight\":0}]}", "every weight is zero"},
      {FQN "\"dst_overrides\":[{\"authority\":\"a/b:80\",\"weight\":1}]}", "not an authority"},
      {FQN "\"dst_overrides\":[{\"weight\":1}]}", "authority"},
      {FQN "\"dst_overrides\":[7]}", "not an object"},
      {"{\"fully_qualified_name\":\"Not A Name\",\"dst_overrides\":[{\"authority\":\"a:80\","
       "\"weight\":1}]}",
       "not a valid name"},
      {FQN "\"routes\":[], \"routes\":[]}", "not JSON"},
  };
#undef ROUTE
#undef FQN
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    mesh_profile *p = (mesh_profile *)ctx;
    char why[512] = "";
    int rc = profile_parse(bad[i].msg, &p, why, sizeof why);
    ck_assert_msg(rc == MESH_ERR_PARSE, "accepted (%d): %s", rc, bad[i].msg);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(why, bad[i].why), "%s: why is '%s', expected '%s'", bad[i].msg, why,
                  bad[i].why);
  }
  /* Conditions nested past the bound: refused before anything recurses that deep. */
  char deep[4096] = "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":["
                    "{\"metrics_labels\":{\"route\":\"r\"},\"condition\":";
  for (int i = 0; i < 40; i++) strcat(deep, "{\"not\":");
  strcat(deep, "{\"method\":\"GET\"}");
  for (int i = 0; i < 40; i++) strcat(deep, "}");
  strcat(deep, "}]}");
  mesh_profile *p = NULL;
  char why[128] = "";
  ck_assert_int_eq(profile_parse(deep, &p, why, sizeof why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(strstr(why, "nested too deep"));
  /* Over the message bound: not even parsed. */
  size_t big = DISC_MESSAGE_MAX + 1;
  char *huge = malloc(big);
  memset(huge, ' ', big);
  ck_assert_int_eq(mesh__disc_profile_parse(ctx, huge, big, &p, why, sizeof why), MESH_ERR_LIMIT);
  free(huge);
  ck_assert_ptr_null(p);
}
END_TEST

/* What the store sends is what it compiled: the seed's profiles and splits,
 * through mesh-destination's JSON and back, route for route. */
static void same_route(const mesh_route *a, const mesh_route *b) {
  ck_assert_str_eq(mesh_route_name(a), mesh_route_name(b));
  ck_assert_uint_eq(mesh_route_timeout_ms(a), mesh_route_timeout_ms(b));
  ck_assert_int_eq(mesh_route_is_retryable(a), mesh_route_is_retryable(b));
  for (uint32_t st = 100; st < 600; st++)
    ck_assert_int_eq(mesh_route_classify(a, st, -1), mesh_route_classify(b, st, -1));
  double ra, rb;
  uint32_t ma, mb;
  uint64_t ta, tb;
  ck_assert_int_eq(mesh_route_retry_budget(a, &ra, &ma, &ta), mesh_route_retry_budget(b, &rb, &mb, &tb));
  ck_assert(ra == rb);
  ck_assert_uint_eq(ma, mb);
  ck_assert_uint_eq(ta, tb);
}

START_TEST(profile_round_trip) {
  static const char *const files[] = {"seed/exam-api-profile.yaml", "seed/user-service-profile.yaml",
                                      "seed/traffic-splits.yaml"};
  mesh_snapshot_builder *b = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    size_t len;
    char *buf = test_read_data(files[i], &len);
    ck_assert_int_eq(mesh_snapshot_builder_add(b, files[i], buf, len, NULL), 0);
    free(buf);
  }
  mesh_snapshot *snap = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_finish(b, NULL, &snap), 0);
  static const struct {
    const char *authority, *method, *path;
  } probe[] = {
      {"exam-api.production.svc.cluster.local:80", "GET", "/api/v1/exams/7/questions"},
      {"exam-api.production.svc.cluster.local:80", "POST", "/api/v1/exams/7/submit"},
      {"user-service.production.svc.cluster.local:8080", "GET", "/api/v1/users/42"},
      {"exam-service.production.svc.cluster.local:80", "GET", "/"},
  };
  size_t routes = 0;
  for (size_t i = 0; i < sizeof probe / sizeof *probe; i++) {
    mesh_profile *want = NULL, *got = NULL;
    char *json = NULL, why[256] = "";
    ck_assert_int_eq(mesh_snapshot_profile(snap, probe[i].authority, "production", &want), 0);
    ck_assert_int_eq(mesh_snapshot_profile_json(snap, probe[i].authority, "production", &json), 0);
    ck_assert_msg(profile_parse(json, &got, why, sizeof why) == 0, "%s: %s", json, why);
    ck_assert_ptr_nonnull(got);
    ck_assert_uint_eq(mesh_profile_route_count(got), mesh_profile_route_count(want));
    for (size_t r = 0; r < mesh_profile_route_count(want); r++)
      same_route(mesh_profile_route(got, r), mesh_profile_route(want, r));
    routes += mesh_profile_route_count(want);
    size_t plen = strlen(probe[i].path);
    const mesh_route *rw = mesh_profile_match(want, probe[i].method, probe[i].path, plen);
    const mesh_route *rg = mesh_profile_match(got, probe[i].method, probe[i].path, plen);
    ck_assert_int_eq(rw == NULL, rg == NULL);
    if (rw) ck_assert_str_eq(mesh_route_name(rw), mesh_route_name(rg));
    double ra, rb;
    uint32_t ma, mb;
    uint64_t ta, tb;
    mesh_profile_retry_budget(want, &ra, &ma, &ta);
    mesh_profile_retry_budget(got, &rb, &mb, &tb);
    ck_assert(ra == rb);
    ck_assert_uint_eq(ma, mb);
    ck_assert_uint_eq(ta, tb);
    const mesh_split *sw = mesh_profile_dst_overrides(want), *sg = mesh_profile_dst_overrides(got);
    ck_assert_int_eq(sw == NULL, sg == NULL);
    for (size_t k = 0; sw && k < mesh_split_count(sw); k++) {
      ck_assert_uint_eq(mesh_split_count(sg), mesh_split_count(sw));
      ck_assert_str_eq(mesh_split_backend(sg, k), mesh_split_backend(sw, k));
      ck_assert_uint_eq(mesh_split_weight(sg, k), mesh_split_weight(sw, k));
    }
    mesh_free_string(ctx, json);
    mesh_profile_unref(want);
    mesh_profile_unref(got);
  }
  ck_assert_uint_ge(routes, 4);
  mesh_snapshot_unref(snap);
}
END_TEST

static int profile_op(mesh_ctx *c, void *arg) {
  (void)arg;
  mesh_profile *p = NULL;
  proxy_profiles *t = NULL;
  char why[128];
  int rc = mesh__disc_profile_parse(c, PROFILE1, strlen(PROFILE1), &p, why, sizeof why);
  if (!rc) rc = mesh__proxy_profiles_one(c, p, &t);
  mesh_profile_unref(p);
  mesh__proxy_profiles_unref(t);
  return rc;
}

START_TEST(profile_allocation_failure) { ck_assert_int_gt(test_alloc_failures(profile_op, NULL), 10); }
END_TEST

/* ---- The client against an in-process Destination service ---------------------- */

typedef struct {
  struct event_base *base;
  mesh_rpc_call *call, *other;
  char body[1024];
  int calls, web_calls, answered, result;
} fake;

static void on_get(void *ud, mesh_rpc_call *call) {
  fake *f = ud;
  f->calls++;
  snprintf(f->body, sizeof f->body, "%s", mesh_rpc_call_body(call, NULL));
  const char *b = f->body;
  if (strstr(b, "web.shop")) f->web_calls++;
  if (strstr(b, "nothing")) {
    mesh_rpc_send(call, "{\"no_endpoints\":{\"exists\":false}}");
    mesh_rpc_end(call);
    return;
  }
  mesh_rpc_call **slot = strstr(b, "web.shop") ? &f->call : &f->other;
  if (*slot) mesh_rpc_end(*slot);
  *slot = call; /* answered later by the test (or never) */
}

static void on_wait(void *ud, int answered) {
  fake *f = ud;
  f->answered++;
  f->result = answered;
}

static void run_until(fake *f, int *flag, int want) {
  for (int i = 0; i < 400 && *flag < want; i++) {
    struct timeval tv = {0, 5000};
    event_base_loopexit(f->base, &tv);
    event_base_dispatch(f->base);
  }
  ck_assert_int_ge(*flag, want);
}

START_TEST(client_streams) {
  fake f = {0};
  f.base = event_base_new();
  mesh_rpc_server *srv = NULL;
  uint16_t port = 0;
  ck_assert_int_eq(mesh_rpc_server_new(ctx, f.base, NULL, &srv), 0);
  ck_assert_int_eq(mesh_rpc_server_listen(srv, "127.0.0.1:0", &port), 0);
  ck_assert_int_eq(
      mesh_rpc_server_handle(srv, "/io.linkerd.proxy.destination.Destination/Get", on_get, &f), 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  mesh_metrics *reg = NULL;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  disc_opts o = {.addr = addr, .ns = "shop", .reg = reg, .wait_ms = 300};
  mesh_discovery *d = NULL;
  ck_assert_int_eq(mesh__discovery_new(ctx, f.base, &o, &d), 0);

  /* Unknown yet: a watch starts; a waiter is told when the first message comes. */
  disc_set *s = (disc_set *)ctx;
  ck_assert_int_eq(mesh__discovery_find(d, "web.shop.svc.cluster.local:80", &s), DISC_PENDING);
  ck_assert_ptr_null(s);
  disc_wait *w = NULL;
  ck_assert_int_eq(mesh__discovery_wait(d, "web.shop.svc.cluster.local:80", on_wait, &f, &w), 0);
  run_until(&f, &f.calls, 1);
  ck_assert_ptr_nonnull(strstr(f.body, "\"path\":\"web.shop.svc.cluster.local:80\""));
  ck_assert_ptr_nonnull(strstr(f.body, "\"context_token\":\"{\\\"ns\\\":\\\"shop\\\"}\""));
  ck_assert_int_eq(f.answered, 0);
  ck_assert_int_eq(mesh_rpc_send(f.call, ADD1), 0);
  run_until(&f, &f.answered, 1);
  ck_assert_int_eq(f.result, 1);
  ck_assert_int_eq(mesh__discovery_find(d, "web.shop.svc.cluster.local:80", &s), DISC_READY);
  ck_assert_uint_eq(mesh__disc_set_count(s), 1);

  /* A malformed message is ignored; the state stays. */
  ck_assert_int_eq(mesh_rpc_send(f.call, "{\"add\":{\"addrs\":[{\"addr\":\"nope\"}]}}"), 0);
  ck_assert_int_eq(mesh_rpc_send(f.call, "{\"remove\":{\"addrs\":[{\"addr\":\"127.0.0.2:4143\"}]}}"), 0);
  for (int i = 0; i < 400 && mesh__disc_set_count(s); i++) {
    struct timeval tv = {0, 5000};
    event_base_loopexit(f.base, &tv);
    event_base_dispatch(f.base);
  }
  ck_assert_uint_eq(mesh__disc_set_count(s), 0);
  ck_assert_int_eq(mesh__disc_set_state(s), DISC_READY);

  /* The control plane says no such service. */
  int calls = f.calls;
  ck_assert_int_eq(mesh__discovery_find(d, "nothing.shop.svc.cluster.local:80", &s), DISC_PENDING);
  ck_assert_int_eq(mesh__discovery_wait(d, "nothing.shop.svc.cluster.local:80", on_wait, &f, &w), 0);
  run_until(&f, &f.answered, 2);
  ck_assert_int_eq(f.result, 1);
  ck_assert_int_gt(f.calls, calls);
  ck_assert_int_eq(mesh__discovery_find(d, "nothing.shop.svc.cluster.local:80", &s),
                   DISC_NOT_FOUND);

  /* A stream that ends is opened again (after a backoff), and the state is kept meanwhile. */
  ck_assert_int_eq(mesh_rpc_send(f.call, ADD1), 0);
  run_until(&f, &f.calls, f.calls); /* let it through */
  for (int i = 0; i < 400; i++) {
    ck_assert_int_eq(mesh__discovery_find(d, "web.shop.svc.cluster.local:80", &s), DISC_READY);
    if (mesh__disc_set_count(s) == 1) break;
    struct timeval tv = {0, 5000};
    event_base_loopexit(f.base, &tv);
    event_base_dispatch(f.base);
  }
  ck_assert_uint_eq(mesh__disc_set_count(s), 1);
  calls = f.web_calls;
  mesh_rpc_end(f.call);
  f.call = NULL;
  run_until(&f, &f.web_calls, calls + 1); /* the reconnect: a Get for web again */
  ck_assert_int_eq(mesh__discovery_find(d, "web.shop.svc.cluster.local:80", &s), DISC_READY);
  ck_assert_uint_eq(mesh__disc_set_count(s), 1);

  /* A waiter with no answer times out. */
  ck_assert_int_eq(mesh__discovery_find(d, "slow.shop.svc.cluster.local:80", &s), DISC_PENDING);
  ck_assert_int_eq(mesh__discovery_wait(d, "slow.shop.svc.cluster.local:80", on_wait, &f, &w), 0);
  run_until(&f, &f.answered, 3);
  ck_assert_int_eq(f.result, 0);
  /* A cancelled waiter is never called. */
  ck_assert_int_eq(mesh__discovery_wait(d, "slow.shop.svc.cluster.local:80", on_wait, &f, &w), 0);
  mesh__discovery_wait_cancel(w);
  ck_assert_uint_eq(mesh__discovery_authorities(d), 3);

  char *text = NULL;
  size_t len = 0;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, &len), 0);
  ck_assert_ptr_nonnull(strstr(text, "destination_streams "));
  ck_assert_ptr_nonnull(strstr(text, "destination_updates_total "));
  ck_assert_ptr_nonnull(strstr(text, "destination_reconnects_total "));
  mesh_free_string(ctx, text);

  mesh__discovery_free(d);
  if (f.call) mesh_rpc_end(f.call);
  if (f.other) mesh_rpc_end(f.other);
  mesh_rpc_server_free(srv);
  mesh_metrics_free(reg);
  event_base_free(f.base);
  ck_assert_int_eq(f.answered, 3);
}
END_TEST

/* GetProfile calls: web.shop's is kept for the test to answer; down's is refused at
 * once; any other is kept open and never answered. */
typedef struct {
  fake *f;
  mesh_rpc_call *call, *mute;
  char body[1024];
  int calls;
} fake_profiles;

static void on_get_profile(void *ud, mesh_rpc_call *call) {
  fake_profiles *fp = ud;
  fp->calls++;
  snprintf(fp->body, sizeof fp->body, "%s", mesh_rpc_call_body(call, NULL));
  if (strstr(fp->body, "down.shop")) {
    mesh_rpc_reply_error(call, 503, "unavailable", "not now");
    return;
  }
  if (strstr(fp->body, "web.shop")) {
    if (fp->call) mesh_rpc_end(fp->call);
    fp->call = call;
    return;
  }
  if (fp->mute) mesh_rpc_end(fp->mute);
  fp->mute = call; /* open, never answered: its waiter runs out */
}

static void spin(fake *f) {
  struct timeval tv = {0, 5000};
  event_base_loopexit(f->base, &tv);
  event_base_dispatch(f->base);
}

static int metric_is(mesh_metrics *reg, const char *sample) {
  char *text = NULL;
  size_t len = 0;
  ck_assert_int_eq(mesh_metrics_render(reg, &text, &len), 0);
  int found = strstr(text, sample) != NULL;
  mesh_free_string(ctx, text);
  return found;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

START_TEST(client_profiles) {
  fake f = {0};
  fake_profiles fp = {.f = &f};
  f.base = event_base_new();
  mesh_rpc_server *srv = NULL;
  uint16_t port = 0;
  ck_assert_int_eq(mesh_rpc_server_new(ctx, f.base, NULL, &srv), 0);
  ck_assert_int_eq(mesh_rpc_server_listen(srv, "127.0.0.1:0", &port), 0);
  ck_assert_int_eq(
      mesh_rpc_server_handle(srv, "/io.linkerd.proxy.destination.Destination/Get", on_get, &f), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(srv, "/io.linkerd.proxy.destination.Destination/GetProfile",
                                          on_get_profile, &fp),
                   0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  mesh_metrics *reg = NULL;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  disc_opts o = {.addr = addr, .ns = "shop", .reg = reg, .wait_ms = 400};
  mesh_discovery *d = NULL;
  ck_assert_int_eq(mesh__discovery_new(ctx, f.base, &o, &d), 0);
  const char *web = "web.shop.svc.cluster.local:80";
  const char *down = "down.shop.svc.cluster.local:80", *mute = "mute.shop.svc.cluster.local:80";

  /* The first lookup starts the GetProfile watch (and no Get: endpoints are
   * asked for when a request goes there); a waiter hears of the first answer. */
  proxy_profiles *t = (proxy_profiles *)ctx;
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_ptr_null(t);
  disc_wait *w = NULL;
  ck_assert_int_eq(mesh__discovery_profile_wait(d, web, on_wait, &f, &w), 0);
  run_until(&f, &fp.calls, 1);
  ck_assert_ptr_nonnull(strstr(fp.body, "\"path\":\"web.shop.svc.cluster.local:80\""));
  ck_assert_int_eq(f.answered, 0);
  ck_assert_int_eq(mesh_rpc_send(fp.call, PROFILE1), 0);
  run_until(&f, &f.answered, 1);
  ck_assert_int_eq(f.result, 1);
  ck_assert_int_eq(f.calls, 0);
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_READY);
  ck_assert_ptr_nonnull(t);
  ck_assert_uint_eq(t->n, 1);
  ck_assert_uint_eq(mesh_profile_route_count(t->d[0].prof), 2);
  ck_assert(metric_is(reg, "destination_profile_streams 1\n"));
  ck_assert(metric_is(reg, "destination_profile_updates_total 1\n"));

  /* Endpoints of the same authority: the same entry, a Get stream beside. */
  disc_set *s;
  ck_assert_int_eq(mesh__discovery_find(d, web, &s), DISC_PENDING);
  run_until(&f, &f.calls, 1);
  ck_assert_uint_eq(mesh__discovery_authorities(d), 1);
  ck_assert(metric_is(reg, "destination_streams 1\n"));

  /* A request holds the set it started with across updates. */
  proxy_profiles *held = t;
  held->refs++;
  const mesh_route *items = mesh_profile_route(held->d[0].prof, 0);

  /* A bad regex: ignored, counted, the last good profile stays. */
  ck_assert_int_eq(
      mesh_rpc_send(fp.call, "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":"
                             "[{\"condition\":{\"path\":{\"regex\":\"/items/[\"}},"
                             "\"metrics_labels\":{\"route\":\"broken\"}}]}"),
      0);
  ck_assert_int_eq(mesh_rpc_send(fp.call, "not json"), 0);
  for (int i = 0; i < 400 && !metric_is(reg, "destination_profile_rejects_total 2\n"); i++) spin(&f);
  ck_assert(metric_is(reg, "destination_profile_rejects_total 2\n"));
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_READY);
  ck_assert_ptr_eq(t, held);

  /* A new profile is swapped in whole; the held one is untouched. */
  const char *next = "{\"fully_qualified_name\":\"web.shop.svc.cluster.local\",\"routes\":"
                     "[{\"condition\":{\"method\":\"GET\"},\"metrics_labels\":{\"route\":"
                     "\"reads\"},\"timeout\":\"1.5s\"}],\"dst_overrides\":[]}";
  ck_assert_int_eq(mesh_rpc_send(fp.call, next), 0);
  for (int i = 0; i < 400 && t == held; i++) {
    spin(&f);
    ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_READY);
  }
  ck_assert_ptr_ne(t, held);
  const char *path = "/x";
  const mesh_route *r = mesh_profile_match(t->d[0].prof, "GET", path, strlen(path));
  ck_assert_str_eq(mesh_route_name(r), "reads");
  ck_assert_uint_eq(mesh_route_timeout_ms(r), 1500);
  ck_assert_str_eq(mesh_route_name(items), "items");
  ck_assert_uint_eq(mesh_route_timeout_ms(items), 250);
  mesh__proxy_profiles_unref(held);

  /* The control plane drops it: back to no profile. */
  ck_assert_int_eq(mesh_rpc_send(fp.call, "{\"fully_qualified_name\":\"\",\"routes\":[]}"), 0);
  for (int i = 0; i < 400 && t; i++) {
    spin(&f);
    ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_READY);
  }
  ck_assert_ptr_null(t);
  ck_assert(metric_is(reg, "destination_profile_updates_total 3\n"));

  /* The stream ends: reopened, and the state (none now; a profile again) follows it. */
  int pcalls = fp.calls;
  mesh_rpc_end(fp.call);
  fp.call = NULL;
  run_until(&f, &fp.calls, pcalls + 1);
  ck_assert_int_eq(mesh_rpc_send(fp.call, PROFILE1), 0);
  for (int i = 0; i < 400 && !t; i++) {
    spin(&f);
    ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_READY);
  }
  ck_assert_ptr_nonnull(t);
  ck_assert(metric_is(reg, "destination_profile_reconnects_total 1\n"));

  /* A stream refused before any answer ends the first wait at once,
   * without a profile; later lookups do not wait. */
  ck_assert_int_eq(mesh__discovery_profile(d, down, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_int_eq(mesh__discovery_profile_wait(d, down, on_wait, &f, &w), 0);
  uint64_t t0 = mono_ms();
  run_until(&f, &f.answered, 2);
  ck_assert_int_eq(f.result, 0);
  ck_assert_uint_lt(mono_ms() - t0, 300);
  ck_assert_int_eq(mesh__discovery_profile(d, down, DISC_OUTBOUND, 0, &t), DISC_READY);
  ck_assert_ptr_null(t);

  /* No answer at all: the wait runs out after its bound, and is not repeated. */
  ck_assert_int_eq(mesh__discovery_profile(d, mute, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_int_eq(mesh__discovery_profile_wait(d, mute, on_wait, &f, &w), 0);
  t0 = mono_ms();
  run_until(&f, &f.answered, 3);
  ck_assert_int_eq(f.result, 0);
  ck_assert_uint_ge(mono_ms() - t0, 350);
  ck_assert_int_eq(mesh__discovery_profile(d, mute, DISC_OUTBOUND, 0, &t), DISC_READY);
  ck_assert_ptr_null(t);
  /* An authority over the bound is refused, not watched. */
  char long_name[DISC_AUTHORITY_MAX + 8];
  memset(long_name, 'a', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = 0;
  ck_assert_int_eq(mesh__discovery_profile(d, long_name, DISC_OUTBOUND, 0, &t), MESH_ERR_LIMIT);
  ck_assert_uint_eq(mesh__discovery_authorities(d), 3);

  mesh__discovery_free(d);
  if (fp.call) mesh_rpc_end(fp.call);
  if (fp.mute) mesh_rpc_end(fp.mute);
  if (f.call) mesh_rpc_end(f.call);
  if (f.other) mesh_rpc_end(f.other);
  mesh_rpc_server_free(srv);
  mesh_metrics_free(reg);
  event_base_free(f.base);
  ck_assert_int_eq(f.answered, 3);
}
END_TEST

/* WatchWorkload calls: the first is refused (the Workload not in the store
 * yet), later ones kept for the test to answer. */
typedef struct {
  mesh_rpc_call *call;
  char body[1024];
  int calls;
} fake_policy;

static void on_watch_workload(void *ud, mesh_rpc_call *call) {
  fake_policy *fw = ud;
  fw->calls++;
  snprintf(fw->body, sizeof fw->body, "%s", mesh_rpc_call_body(call, NULL));
  if (fw->calls == 1) {
    mesh_rpc_reply_error(call, 404, "not_found", "no Workload 'web-1' in namespace 'shop'");
    return;
  }
  if (fw->call) mesh_rpc_end(fw->call);
  fw->call = call;
}

typedef struct {
  int applied, gone, bad;
  mesh_policy *pol;
} policy_got;

/* What the proxy does with a message, minus the swap: compile it. */
static int on_policy_line(void *ud, const char *line, size_t len, char *why, size_t cap) {
  policy_got *g = ud;
  mesh_diags *d = NULL;
  mesh_policy *pol = NULL;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  int rc = mesh_policy_compile_message(ctx, line, len, NULL, d, &pol);
  if (!rc) {
    g->applied++;
    mesh_policy_unref(g->pol);
    g->pol = pol;
  } else if (rc == MESH_ERR_NOT_FOUND) {
    g->gone++;
  } else {
    g->bad++;
    snprintf(why, cap, "%s", mesh_diags_count(d) ? mesh_diags_text(d, 0) : "?");
  }
  mesh_diags_free(d);
  return rc;
}

#define POLICY_SERVER                                                                         \
  "{\"apiVersion\":\"policy.linkerd.io/v1beta1\",\"kind\":\"Server\",\"metadata\":{\"name\":" \
  "\"web-http\",\"namespace\":\"shop\"},\"spec\":{\"podSelector\":{\"matchLabels\":{\"app\":"  \
  "\"web\"}},\"port\":8080,\"proxyProtocol\":\"HTTP/1\"}}"
#define POLICY_GOOD                                                                          \
  "{\"workload\":{\"namespace\":\"shop\",\"name\":\"web-1\",\"labels\":{\"app\":\"web\"},"   \
  "\"ports\":[]},\"exists\":true,\"documents\":[" POLICY_SERVER "]}"

START_TEST(client_policy) {
  fake f = {0};
  fake_policy fw = {0};
  policy_got g = {0};
  f.base = event_base_new();
  mesh_rpc_server *srv = NULL;
  uint16_t port = 0;
  ck_assert_int_eq(mesh_rpc_server_new(ctx, f.base, NULL, &srv), 0);
  ck_assert_int_eq(mesh_rpc_server_listen(srv, "127.0.0.1:0", &port), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(srv,
                                          "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchWorkload",
                                          on_watch_workload, &fw),
                   0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  mesh_metrics *reg = NULL;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  disc_opts o = {.addr = addr, .ns = "shop", .reg = reg};
  mesh_discovery *d = NULL;
  ck_assert_int_eq(mesh__discovery_new(ctx, f.base, &o, &d), 0);
  disc_policy *w = NULL;
  char longname[600];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  ck_assert_int_eq(mesh__discovery_policy_new(d, f.base, longname, reg, on_policy_line, &g, &w),
                   MESH_ERR_LIMIT);
  ck_assert_ptr_null(w);
  ck_assert_int_eq(mesh__discovery_policy_new(d, f.base, "shop:web-1", reg, on_policy_line, &g, &w),
                   0);

  /* Refused (404): opened again after a backoff, with the same request. */
  run_until(&f, &fw.calls, 2);
  ck_assert_str_eq(fw.body, "{\"workload\":\"shop:web-1\"}");
  ck_assert(metric_is(reg, "destination_policy_reconnects_total 1\n"));
  ck_assert(metric_is(reg, "destination_policy_streams 1\n"));

  /* A good message is applied; a bad one and a Workload gone are not, and only
   * the bad one is a reject. */
  ck_assert_int_eq(mesh_rpc_send(fw.call, POLICY_GOOD), 0);
  run_until(&f, &g.applied, 1);
  ck_assert_uint_eq(mesh_policy_server_count(g.pol), 1);
  ck_assert_int_eq(mesh_rpc_send(fw.call, "{\"workload\":{\"namespace\":\"shop\",\"name\":\"web-1\"},"
                                          "\"exists\":true,\"documents\":[\"not a document\"]}"),
                   0);
  run_until(&f, &g.bad, 1);
  ck_assert_int_eq(mesh_rpc_send(fw.call, "{\"workload\":{\"namespace\":\"shop\",\"name\":\"web-1\"},"
                                          "\"exists\":false,\"documents\":[]}"),
                   0);
  run_until(&f, &g.gone, 1);
  ck_assert(metric_is(reg, "destination_policy_updates_total 1\n"));
  ck_assert(metric_is(reg, "destination_policy_rejects_total 1\n"));

  /* The stream ends: opened again; its first message is the whole policy again. */
  mesh_rpc_end(fw.call);
  fw.call = NULL;
  run_until(&f, &fw.calls, 3);
  ck_assert(metric_is(reg, "destination_policy_reconnects_total 2\n"));
  ck_assert_int_eq(mesh_rpc_send(fw.call, POLICY_GOOD), 0);
  run_until(&f, &g.applied, 2);
  ck_assert(metric_is(reg, "destination_policy_updates_total 2\n"));

  /* Freed with its stream open: cancelled, the gauge back to 0, nothing called after. */
  mesh__discovery_policy_free(w);
  mesh__discovery_policy_free(NULL);
  ck_assert(metric_is(reg, "destination_policy_streams 0\n"));
  int applied = g.applied;
  for (int i = 0; i < 10; i++) spin(&f);
  ck_assert_int_eq(g.applied, applied);
  mesh__discovery_free(d);
  if (fw.call) mesh_rpc_end(fw.call);
  mesh_rpc_server_free(srv);
  mesh_policy_unref(g.pol);
  mesh_metrics_free(reg);
  event_base_free(f.base);
}
END_TEST

START_TEST(proxy_options) {
  mesh_proxy_opts *o = NULL;
  const char *why = NULL;
  ck_assert_int_eq(mesh_proxy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(NULL, "127.0.0.1:8086", NULL),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "destination:8086", &why),
                   MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "127.0.0.1", NULL), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "127.0.0.1:8086", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "[::1]:8086", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "localhost:8086", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "", NULL), 0); /* off */
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, NULL, NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_identity(o, "not an identity", &why),
                   MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_identity(
                       o, "linkerd-destination.linkerd.serviceaccount.identity.linkerd.cluster.local",
                       NULL),
                   0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_identity(o, NULL, NULL), 0);
  /* The Workload's name: a DNS name, as the store's. */
  static const char *const bad_names[] = {"Web", "-web", "web-", "web..1", ".web", "web.", "web_1",
                                          "web:1"};
  for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
    why = NULL;
    ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, bad_names[i], &why), MESH_ERR_PARSE);
    ck_assert_ptr_nonnull(why);
  }
  char label64[80];
  memset(label64, 'a', 64);
  label64[64] = 0;
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, label64, NULL), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, label64 + 1, NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, "web-1.shop", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, "", NULL), 0); /* off */
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(NULL, "web-1", NULL), MESH_ERR_INVALID);
  /* A proxy with discovery on: created and freed, its metrics registered. */
  struct event_base *base = event_base_new();
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "127.0.0.1:1", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "127.0.0.1:0", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "", NULL), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_admin_addr(o, "", NULL), 0);
  mesh_proxy *p = NULL;
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), 0);
  char *text = NULL;
  size_t len;
  ck_assert_int_eq(mesh_proxy_metrics(p, &text, &len), 0);
  ck_assert_ptr_nonnull(strstr(text, "destination_streams 0"));
  mesh_free_string(ctx, text);
  mesh_proxy_free(p);
  mesh_proxy_opts_free(o);
  event_base_free(base);
}
END_TEST

/* The idle timeout of an entry is the longest of the sides that looked it
 * up, and the inbound side holds at most DISC_INBOUND_AUTHORITIES_MAX
 * names (peers choose them): past it, new names get no entry while the
 * outbound side and the inbound side's own names go on. No loop runs: the
 * streams never open, which this does not need. */
START_TEST(client_inbound_cache) {
  struct event_base *base = event_base_new();
  mesh_metrics *reg = NULL;
  ck_assert_int_eq(mesh_metrics_new(ctx, &reg), 0);
  disc_opts o = {.addr = "127.0.0.1:1", .ns = "shop", .reg = reg};
  mesh_discovery *d = NULL;
  ck_assert_int_eq(mesh__discovery_new(ctx, base, &o, &d), 0);
  proxy_profiles *t;
  const char *web = "web.shop.svc.cluster.local:80";
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, web), 0);
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, web), DISC_OUTBOUND_IDLE_MS);
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_INBOUND, 0, &t), DISC_PENDING);
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, web), DISC_INBOUND_IDLE_MS);
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, web), DISC_INBOUND_IDLE_MS);
  ck_assert(metric_is(reg, "destination_inbound_authorities 1\n"));

  char name[64];
  for (unsigned i = 1; i < DISC_INBOUND_AUTHORITIES_MAX; i++) {
    snprintf(name, sizeof name, "n%u.shop.svc.cluster.local:80", i);
    ck_assert_int_eq(mesh__discovery_profile(d, name, DISC_INBOUND, 0, &t), DISC_PENDING);
  }
  snprintf(name, sizeof name, "n%u.shop.svc.cluster.local:80", DISC_INBOUND_AUTHORITIES_MAX);
  ck_assert_int_eq(mesh__discovery_profile(d, name, DISC_INBOUND, 0, &t), MESH_ERR_LIMIT);
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, name), 0);
  ck_assert_uint_eq(mesh__discovery_authorities(d), DISC_INBOUND_AUTHORITIES_MAX);
  ck_assert(metric_is(reg, "destination_inbound_authorities 1000\n"));
  /* The outbound side is not bound by it; its entry is not the inbound side's to keep. */
  ck_assert_int_eq(mesh__discovery_profile(d, name, DISC_OUTBOUND, 0, &t), DISC_PENDING);
  ck_assert_int_eq(mesh__discovery_profile(d, name, DISC_INBOUND, 0, &t), MESH_ERR_LIMIT);
  ck_assert_uint_eq(mesh__discovery_idle_ms(d, name), DISC_OUTBOUND_IDLE_MS);
  ck_assert_int_eq(mesh__discovery_profile(d, web, DISC_INBOUND, 0, &t), DISC_PENDING);

  mesh__discovery_free(d);
  mesh_metrics_free(reg);
  event_base_free(base);
}
END_TEST

START_TEST(client_bad_addr) {
  struct event_base *base = event_base_new();
  mesh_discovery *d = NULL;
  disc_opts o = {.addr = "destination:8086"};
  ck_assert_int_eq(mesh__discovery_new(ctx, base, &o, &d), MESH_ERR_PARSE);
  ck_assert_ptr_null(d);
  o.addr = NULL;
  ck_assert_int_eq(mesh__discovery_new(ctx, base, &o, &d), MESH_ERR_INVALID);
  event_base_free(base);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("discovery");
  TCase *m = tcase_create("messages");
  tcase_add_checked_fixture(m, setup, teardown);
  tcase_add_test(m, add_then_pick);
  tcase_add_test(m, diffs_replace_and_remove);
  tcase_add_test(m, no_endpoints);
  tcase_add_test(m, first_message_resyncs);
  tcase_add_test(m, malformed_kept_out);
  tcase_add_test(m, bounds);
  tcase_add_test(m, allocation_failure);
  tcase_add_test(m, profile_converts);
  tcase_add_test(m, profile_default);
  tcase_add_test(m, profile_bad);
  tcase_add_test(m, profile_round_trip);
  tcase_add_test(m, profile_allocation_failure);
  suite_add_tcase(s, m);
  TCase *c = tcase_create("client");
  tcase_add_checked_fixture(c, setup, teardown);
  tcase_add_test(c, client_streams);
  tcase_add_test(c, client_profiles);
  tcase_add_test(c, client_inbound_cache);
  tcase_add_test(c, client_policy);
  tcase_add_test(c, client_bad_addr);
  tcase_add_test(c, proxy_options);
  suite_add_tcase(s, c);
  return s;
}

int main(void) { return test_main(make_suite()); }
