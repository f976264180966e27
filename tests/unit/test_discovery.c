/* Unit tests for discovery: Get messages kept as endpoint sets (add/remove/no_endpoints, diffs, bounds, bad input), and the client against an in-process mesh-destination. */
#include <event2/event.h>

#include "discovery_internal.h"
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
      "{\"add\":{\"addrs\":[{\"addr\":\"127.0.0.4:1\",\"tls_identity\":{\"dns_like_identity\":"
      "{\"name\":\"not an identity\"}}}]}}",
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
  suite_add_tcase(s, m);
  TCase *c = tcase_create("client");
  tcase_add_checked_fixture(c, setup, teardown);
  tcase_add_test(c, client_streams);
  tcase_add_test(c, client_bad_addr);
  tcase_add_test(c, proxy_options);
  suite_add_tcase(s, c);
  return s;
}

int main(void) { return test_main(make_suite()); }
