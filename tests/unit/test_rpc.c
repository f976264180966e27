/* Unit tests for rpc: server and client on one loopback event loop, plaintext and mTLS, unary and streams, limits, failures. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#define SERVER_DNS "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
#define CLIENT_DNS "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local"
#define OTHER_DNS "other.emojivoto.serviceaccount.identity.linkerd.cluster.local"

static uint64_t now_s(void) { return (uint64_t)time(NULL); }

/* ---- PKI fixtures (as in test_tls.c) ------------------------------------- */

typedef struct {
  char *chain, *key;
} cred;

static cred issue(mesh_ctx *ctx, const mesh_ca *issuer, const char *ns, const char *sa) {
  mesh_key *k;
  mesh_identity *id;
  mesh_csr *csr;
  mesh_certs *certs;
  const char *why = NULL;
  ck_assert_int_eq(mesh_key_generate(ctx, &k), 0);
  ck_assert_int_eq(mesh_identity_new(ctx, ns, sa, NULL, NULL, &why, &id), 0);
  ck_assert_int_eq(mesh_csr_new(k, id, &csr), 0);
  int rc = mesh_ca_issue(issuer, csr, id, now_s(), &why, &certs);
  ck_assert_msg(rc == 0, "issue: %s: %s", mesh_strerror(rc), why ? why : "");
  cred c = {strdup(mesh_certs_bundle_pem(certs, 0)), strdup(mesh_key_pem(k))};
  mesh_certs_free(certs);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  mesh_key_free(k);
  return c;
}

static mesh_tls_config *config(mesh_ctx *ctx, const cred *c, const char *anchors) {
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_opts_new(ctx, &o), 0);
  ck_assert_int_eq(
      mesh_tls_opts_set_credentials(o, c->chain, strlen(c->chain), c->key, strlen(c->key)), 0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, anchors, strlen(anchors)), 0);
  int rc = mesh_tls_config_new(o, &why, &cfg);
  ck_assert_msg(rc == 0, "config: %s: %s", mesh_strerror(rc), why ? why : "");
  mesh_tls_opts_free(o);
  return cfg;
}

/* One loop, a counting allocator (leaks fail the test), and optionally a PKI
 * with a server "web" and a client "vote-bot". */
typedef struct {
  test_alloc a;
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_ca *anchor, *issuer;
  mesh_tls_config *scfg, *ccfg;
} world;

static void world_make(world *w, int tls) {
  memset(w, 0, sizeof *w);
  w->ctx = test_ctx(&w->a);
  w->base = event_base_new();
  ck_assert_ptr_nonnull(w->base);
  if (!tls) return;
  ck_assert_int_eq(mesh_ca_init(w->ctx, NULL, NULL, now_s(), 0, &w->anchor, &w->issuer), 0);
  char *anchors = strdup(mesh_certs_pem(mesh_ca_certs(w->anchor), 0));
  cred s = issue(w->ctx, w->issuer, "emojivoto", "web");
  cred c = issue(w->ctx, w->issuer, "emojivoto", "vote-bot");
  w->scfg = config(w->ctx, &s, anchors);
  w->ccfg = config(w->ctx, &c, anchors);
  free(s.chain);
  free(s.key);
  free(c.chain);
  free(c.key);
  free(anchors);
}

static void settle(struct event_base *base) {
  for (int i = 0; i < 8; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

static void world_free(world *w) {
  settle(w->base);
  mesh_tls_config_unref(w->scfg);
  mesh_tls_config_unref(w->ccfg);
  mesh_ca_free(w->issuer);
  mesh_ca_free(w->anchor);
  event_base_free(w->base);
  ck_assert_msg(w->a.live == 1, "%ld blocks leaked", w->a.live - 1);
  mesh_ctx_free(w->ctx);
}

static void on_flag(evutil_socket_t fd, short what, void *p) {
  (void)fd;
  (void)what;
  *(int *)p = 1;
}

/* Run the loop until *counter reaches want; fails the test after ms. */
static void run_until(struct event_base *base, const int *counter, int want, int ms) {
  int expired = 0;
  struct event *t = evtimer_new(base, on_flag, &expired);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (*counter < want && !expired) event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
  ck_assert_msg(!expired, "timed out after %d ms (%d of %d)", ms, *counter, want);
}

/* Run the loop for ms, whatever happens. */
static void run_for(struct event_base *base, int ms) {
  int expired = 0;
  struct event *t = evtimer_new(base, on_flag, &expired);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (!expired) event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
}

static mesh_rpc_server *server(world *w, mesh_rpc_server_opts *o, uint16_t *port) {
  mesh_rpc_server *s;
  ck_assert_int_eq(mesh_rpc_server_new(w->ctx, w->base, o, &s), 0);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "127.0.0.1:0", port), 0);
  ck_assert_uint_ne(*port, 0);
  return s;
}

static mesh_rpc_client *client(world *w, mesh_tls_config *tls, uint16_t port, const char *expect) {
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  mesh_rpc_client *c;
  ck_assert_int_eq(mesh_rpc_client_new(w->ctx, w->base, tls, addr, expect, &c), 0);
  return c;
}

/* ---- Handlers ------------------------------------------------------------ */

typedef struct {
  int calls;
  char peer_id[256];
  char peer_addr[64];
  mesh_rpc_call *held[200];
  int nheld;
  int closed;
  int close_end_rc;
  int stream_n;
} srv_state;

/* Echo: {"echo":<body>} */
static void h_echo(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  st->calls++;
  const char *id = mesh_rpc_call_peer_identity(call);
  snprintf(st->peer_id, sizeof st->peer_id, "%s", id ? id : "(none)");
  snprintf(st->peer_addr, sizeof st->peer_addr, "%s", mesh_rpc_call_peer_address(call));
  ck_assert_str_eq(mesh_rpc_call_path(call), "/echo.Echo/Say");
  size_t len;
  const char *body = mesh_rpc_call_body(call, &len);
  ck_assert_uint_eq(strlen(body), len);
  char *out = malloc(len + 16);
  sprintf(out, "{\"echo\":%s}", len ? body : "null");
  ck_assert_int_eq(mesh_rpc_reply(call, 200, out), 0);
  free(out);
}

/* Holds every call, answering none (for timeouts and concurrency). */
static void h_hold(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  st->calls++;
  ck_assert_int_lt(st->nheld, 200);
  st->held[st->nheld++] = call;
}

static void h_fail(void *ud, mesh_rpc_call *call) {
  (void)ud;
  ck_assert_int_eq(mesh_rpc_reply_error(call, 403, MESH_RPC_CODE_PERMISSION_DENIED,
                                        "not \"you\"\n"),
                   0);
}

/* Streams st->stream_n lines {"i":k} then ends. */
static void h_stream(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  st->calls++;
  char line[64];
  for (int i = 0; i < st->stream_n; i++) {
    snprintf(line, sizeof line, "{\"i\":%d}", i);
    ck_assert_int_eq(mesh_rpc_send(call, line), 0);
  }
  ck_assert_int_eq(mesh_rpc_send(call, "{\"bad\":\"\n\"}"), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_rpc_end(call), 0);
}

static void on_call_closed(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  st->closed++;
  ck_assert_int_eq(mesh_rpc_call_open(call), 0);
  st->close_end_rc = mesh_rpc_end(call);
}

/* Subscribes: sends one line and keeps the stream open until the client goes. */
static void h_subscribe(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  st->calls++;
  ck_assert_int_eq(mesh_rpc_call_on_close(call, on_call_closed, st), 0);
  ck_assert_int_eq(mesh_rpc_send(call, "{\"hello\":true}"), 0);
  st->held[st->nheld++] = call;
}

/* ---- Client results ------------------------------------------------------ */

typedef struct {
  int n;
  int status;
  char body[8192];
  size_t len;
  char err[256];
  int messages;
  char last[256];
  mesh_rpc_stream *stream;
  int cancel_after;
} result;

static void on_reply(void *ud, int status, const char *body, size_t len, const char *err) {
  result *r = ud;
  r->n++;
  r->status = status;
  r->len = len;
  if (body) {
    ck_assert_uint_lt(len, sizeof r->body);
    memcpy(r->body, body, len);
    r->body[len] = '\0';
    ck_assert_uint_eq(strlen(body), len);
  } else {
    r->body[0] = '\0';
  }
  snprintf(r->err, sizeof r->err, "%s", err ? err : "");
}

static void on_message(void *ud, const char *line, size_t len) {
  result *r = ud;
  ck_assert_uint_eq(strlen(line), len);
  snprintf(r->last, sizeof r->last, "%s", line);
  r->messages++;
  if (r->cancel_after && r->messages == r->cancel_after) {
    mesh_rpc_stream_cancel(r->stream);
    r->n++;
  }
}

static void on_end(void *ud, int status, const char *err) {
  on_reply(ud, status, NULL, 0, err);
}

static void call(mesh_rpc_client *c, const char *path, const char *body, uint32_t timeout_ms,
                 result *r) {
  ck_assert_int_eq(mesh_rpc_client_call(c, path, body, strlen(body), timeout_ms, on_reply, r), 0);
}

/* ---- Tests --------------------------------------------------------------- */

START_TEST(unary_round_trip_plaintext) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/echo.Echo/Say", "{\"a\":1}", 5000, &r);
  ck_assert_uint_eq(mesh_rpc_client_pending(c), 1);
  ck_assert_int_eq(r.n, 0); /* never from inside the call */
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(r.body, "{\"echo\":{\"a\":1}}");
  ck_assert_str_eq(r.err, "");
  ck_assert_str_eq(st.peer_id, "(none)");
  ck_assert(strncmp(st.peer_addr, "127.0.0.1:", 10) == 0);
  /* An empty body and a second call on the same connection. */
  result r2 = {0};
  call(c, "/echo.Echo/Say", "", 5000, &r2);
  run_until(w.base, &r2.n, 1, 5000);
  ck_assert_str_eq(r2.body, "{\"echo\":null}");
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  ck_assert_uint_eq(mesh_rpc_client_pending(c), 0);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(unary_over_mtls_sees_client_identity) {
  world w;
  world_make(&w, 1);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_tls(o, w.scfg, MESH_TLS_CLIENT_AUTH_REQUIRED), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, w.ccfg, port, SERVER_DNS);
  result r = {0};
  call(c, "/echo.Echo/Say", "[1,2]", 5000, &r);
  run_until(w.base, &r.n, 1, 10000);
  ck_assert_msg(r.status == 200, "status %d (%s)", r.status, r.err);
  ck_assert_str_eq(r.body, "{\"echo\":[1,2]}");
  ck_assert_str_eq(st.peer_id, CLIENT_DNS);
  /* A plaintext client cannot talk to a TLS server. */
  mesh_rpc_client *p = client(&w, NULL, port, NULL);
  result rp = {0};
  call(p, "/echo.Echo/Say", "{}", 3000, &rp);
  run_until(w.base, &rp.n, 1, 5000);
  ck_assert_int_lt(rp.status, 0);
  mesh_rpc_client_free(p);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(optional_client_auth_serves_anonymous_tls) {
  world w;
  world_make(&w, 1);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_tls(o, w.scfg, MESH_TLS_CLIENT_AUTH_OPTIONAL), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_tls(o, w.scfg, 7), MESH_ERR_INVALID);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  /* A client with a certificate is still identified in optional mode. */
  mesh_rpc_client *c = client(&w, w.ccfg, port, SERVER_DNS);
  result r = {0};
  call(c, "/echo.Echo/Say", "1", 5000, &r);
  run_until(w.base, &r.n, 1, 10000);
  ck_assert_int_eq(r.status, 200);
  ck_assert_str_eq(st.peer_id, CLIENT_DNS);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  /* The same through a credential holder, taken per connection. */
  mesh_tls_creds *creds;
  ck_assert_int_eq(mesh_tls_creds_new(w.ctx, NULL, &creds), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_tls_creds(o, creds, MESH_TLS_CLIENT_AUTH_OPTIONAL), 0);
  s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  c = client(&w, w.ccfg, port, SERVER_DNS);
  result r1 = {0}, r2 = {0};
  call(c, "/echo.Echo/Say", "1", 5000, &r1); /* no configuration yet: refused */
  run_until(w.base, &r1.n, 1, 10000);
  ck_assert_int_lt(r1.status, 0);
  ck_assert_int_eq(mesh_tls_creds_set(creds, w.scfg), 0);
  call(c, "/echo.Echo/Say", "2", 5000, &r2);
  run_until(w.base, &r2.n, 1, 10000);
  ck_assert_msg(r2.status == 200, "status %d (%s)", r2.status, r2.err);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  mesh_tls_creds_free(creds);
  world_free(&w);
}
END_TEST

START_TEST(streaming_several_messages_and_end) {
  world w;
  world_make(&w, 0);
  srv_state st = {.stream_n = 5};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/dest.Destination/Get", h_stream, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  mesh_rpc_stream *sm = NULL;
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/dest.Destination/Get", "{}", 2, on_message,
                                          on_end, &r, &sm),
                   0);
  ck_assert_ptr_nonnull(sm);
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, 200);
  ck_assert_int_eq(r.messages, 5);
  ck_assert_str_eq(r.last, "{\"i\":4}");
  /* A stream the server ends without a line. */
  st.stream_n = 0;
  result r0 = {0};
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/dest.Destination/Get", "{}", 2, on_message,
                                          on_end, &r0, NULL),
                   0);
  run_until(w.base, &r0.n, 1, 5000);
  ck_assert_int_eq(r0.status, 200);
  ck_assert_int_eq(r0.messages, 0);
  /* Many lines, more than a flow-control window's worth. */
  st.stream_n = 20000;
  result rb = {0};
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/dest.Destination/Get", "{}", 2, on_message,
                                          on_end, &rb, NULL),
                   0);
  run_until(w.base, &rb.n, 1, 10000);
  ck_assert_int_eq(rb.status, 200);
  ck_assert_int_eq(rb.messages, 20000);
  ck_assert_str_eq(rb.last, "{\"i\":19999}");
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(errors_unknown_path_and_error_body) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Fail", h_fail, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "nope", h_fail, &st), MESH_ERR_INVALID);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0}, f = {0}, sr = {0};
  call(c, "/echo.Echo/Missing", "{}", 5000, &r);
  call(c, "/echo.Echo/Fail", "{}", 5000, &f);
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/nothing/Here", "{}", 2, on_message, on_end, &sr,
                                          NULL),
                   0);
  run_until(w.base, &r.n, 1, 5000);
  run_until(w.base, &f.n, 1, 5000);
  run_until(w.base, &sr.n, 1, 5000);
  ck_assert_int_eq(r.status, 404);
  ck_assert_str_eq(r.err, "not_found");
  ck_assert(strstr(r.body, "\"code\":\"not_found\"") != NULL);
  ck_assert_int_eq(f.status, 403);
  ck_assert_str_eq(f.err, "permission_denied");
  ck_assert_str_eq(f.body,
                   "{\"error\":{\"code\":\"permission_denied\",\"message\":\"not \\\"you\\\"\\u000a\"}}");
  ck_assert_int_eq(sr.status, 404);
  ck_assert_str_eq(sr.err, "not_found");
  ck_assert_int_eq(sr.messages, 0);
  ck_assert_int_eq(st.calls, 0);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(oversized_body_413_and_connection_keeps_serving) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_BODY, 1024), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  char *big = malloc(300000);
  memset(big, ' ', 299999);
  big[0] = '[';
  big[299998] = ']';
  big[299999] = '\0';
  result r = {0}, ok = {0}, edge = {0};
  call(c, "/echo.Echo/Say", big, 5000, &r);
  call(c, "/echo.Echo/Say", "{\"after\":1}", 5000, &ok);
  big[1024] = '\0';
  big[1023] = ']';
  call(c, "/echo.Echo/Say", big, 5000, &edge); /* exactly at the limit */
  run_until(w.base, &r.n, 1, 5000);
  run_until(w.base, &ok.n, 1, 5000);
  run_until(w.base, &edge.n, 1, 5000);
  ck_assert_int_eq(r.status, 413);
  ck_assert_str_eq(r.err, "resource_exhausted");
  ck_assert_int_eq(ok.status, 200);
  ck_assert_str_eq(ok.body, "{\"echo\":{\"after\":1}}");
  ck_assert_int_eq(edge.status, 200);
  ck_assert_int_eq(st.calls, 2);
  /* ...and still after the oversized one finished. */
  result again = {0};
  call(c, "/echo.Echo/Say", "2", 5000, &again);
  run_until(w.base, &again.n, 1, 5000);
  ck_assert_int_eq(again.status, 200);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  free(big);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(hundred_concurrent_calls_on_one_connection) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  static result r[100];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 100; i++) {
    char body[32];
    snprintf(body, sizeof body, "{\"n\":%d}", i);
    call(c, "/hold", body, 10000, &r[i]);
  }
  /* All 100 are in the server's hands at once: they are concurrent. */
  run_until(w.base, &st.calls, 100, 10000);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  for (int i = 0; i < 100; i++) {
    size_t len;
    const char *b = mesh_rpc_call_body(st.held[i], &len);
    ck_assert_int_eq(mesh_rpc_reply(st.held[i], 200, b), 0);
  }
  int done = 0;
  for (int i = 0; i < 100; i++) {
    run_until(w.base, &r[i].n, 1, 5000);
    done += r[i].n;
    char body[32];
    snprintf(body, sizeof body, "{\"n\":%d}", i);
    ck_assert_int_eq(r[i].status, 200);
    ck_assert_str_eq(r[i].body, body);
  }
  ck_assert_int_eq(done, 100);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(streams_over_the_limit_are_refused_then_served) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_STREAMS, 4), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result first = {0};
  call(c, "/hold", "0", 10000, &first);
  run_until(w.base, &st.calls, 1, 5000); /* SETTINGS are known to the client now */
  result r[9] = {{0}};
  for (int i = 0; i < 9; i++) call(c, "/hold", "1", 10000, &r[i]);
  run_for(w.base, 200);
  /* The client holds back what the server's SETTINGS do not allow. */
  ck_assert_int_eq(st.calls, 4);
  for (int round = 0; round < 3; round++) {
    int n = st.nheld;
    for (int i = 0; i < n; i++) ck_assert_int_eq(mesh_rpc_reply(st.held[i], 200, "{}"), 0);
    st.nheld = 0;
    run_for(w.base, 100);
  }
  run_until(w.base, &st.calls, 10, 5000);
  for (int i = 0; i < st.nheld; i++) ck_assert_int_eq(mesh_rpc_reply(st.held[i], 200, "{}"), 0);
  for (int i = 0; i < 9; i++) {
    run_until(w.base, &r[i].n, 1, 5000);
    ck_assert_int_eq(r[i].status, 200);
  }
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(client_timeout_resets_and_server_hears_it) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/hold", "{}", 200, &r);
  run_until(w.base, &st.calls, 1, 5000);
  ck_assert_int_eq(mesh_rpc_call_on_close(st.held[0], on_call_closed, &st), 0);
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, MESH_ERR_TIMEOUT);
  ck_assert_str_ne(r.err, "");
  /* The reset reaches the server: its close callback runs and ends the call. */
  run_until(w.base, &st.closed, 1, 5000);
  ck_assert_int_eq(st.close_end_rc, MESH_ERR_CLOSED);
  run_for(w.base, 50);
  ck_assert_int_eq(r.n, 1);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(late_reply_after_client_left_is_closed) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/hold", "{}", 0, &r);
  run_until(w.base, &st.calls, 1, 5000);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  mesh_rpc_client_free(c); /* the pending call hears about it at once */
  ck_assert_int_eq(r.n, 1);
  ck_assert_int_eq(r.status, MESH_ERR_CLOSED);
  int zero = 0;
  while (mesh_rpc_server_connections(s) > 0) {
    run_for(w.base, 10);
    ck_assert_int_lt(zero++, 500);
  }
  ck_assert_int_eq(mesh_rpc_call_open(st.held[0]), 0);
  ck_assert_int_eq(mesh_rpc_reply(st.held[0], 200, "{}"), MESH_ERR_CLOSED);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(server_gone_is_connect_error) {
  world w;
  world_make(&w, 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  mesh_rpc_server_free(s); /* the port is free again: nobody listens */
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0}, r2 = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/x", "{}", 2, on_message, on_end, &r2, NULL), 0);
  run_until(w.base, &r.n, 1, 5000);
  run_until(w.base, &r2.n, 1, 5000);
  ck_assert_int_eq(r.status, MESH_ERR_CONNECT);
  ck_assert_int_eq(r2.status, MESH_ERR_CONNECT);
  ck_assert_str_ne(r.err, "");
  /* A new call after the failure tries again (and fails again). */
  result r3 = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r3);
  run_until(w.base, &r3.n, 1, 5000);
  ck_assert_int_eq(r3.status, MESH_ERR_CONNECT);
  mesh_rpc_client_free(c);
  world_free(&w);
}
END_TEST

START_TEST(wrong_server_identity) {
  world w;
  world_make(&w, 1);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_tls(o, w.scfg, MESH_TLS_CLIENT_AUTH_REQUIRED), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, w.ccfg, port, OTHER_DNS);
  result r = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  run_until(w.base, &r.n, 1, 10000);
  ck_assert_msg(r.status == MESH_ERR_IDENTITY, "status %d (%s)", r.status, r.err);
  ck_assert_str_ne(r.err, "");
  ck_assert_int_eq(st.calls, 0);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(stream_cancel_triggers_server_close_callback) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/sub", h_subscribe, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/sub", "{}", 2, on_message, on_end, &r, &r.stream), 0);
  r.cancel_after = 1; /* cancel from inside on_message */
  run_until(w.base, &r.messages, 1, 5000);
  ck_assert_int_eq(r.n, 1); /* only our own count: on_end never ran */
  run_until(w.base, &st.closed, 1, 5000);
  ck_assert_int_eq(st.close_end_rc, MESH_ERR_CLOSED);
  ck_assert_uint_eq(mesh_rpc_client_pending(c), 0);
  /* The same from outside a callback, and the connection still works. */
  result r2 = {0};
  mesh_rpc_stream *sm;
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/sub", "{}", 2, on_message, on_end, &r2, &sm), 0);
  run_until(w.base, &r2.messages, 1, 5000);
  mesh_rpc_stream_cancel(sm);
  run_until(w.base, &st.closed, 2, 5000);
  ck_assert_int_eq(r2.n, 0);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(server_free_closes_open_streams) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/sub", h_subscribe, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/sub", "{}", 2, on_message, on_end, &r, NULL), 0);
  run_until(w.base, &r.messages, 1, 5000);
  mesh_rpc_server_free(s);
  ck_assert_int_eq(st.closed, 1); /* during the free */
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, MESH_ERR_CLOSED);
  mesh_rpc_client_free(c);
  world_free(&w);
}
END_TEST

/* A client that opens a stream with a zero flow-control window and never
 * reads: written with nghttp2 over a blocking socket. */
static int raw_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  return fd;
}

static void raw_send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t k = write(fd, c, n);
    ck_assert_int_gt(k, 0);
    c += k;
    n -= (size_t)k;
  }
}

static void raw_stuck_stream(int fd, const char *path) {
  nghttp2_session_callbacks *cb;
  nghttp2_session *h2;
  ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
  ck_assert_int_eq(nghttp2_session_client_new(&h2, cb, NULL), 0);
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 0}};
  ck_assert_int_eq(nghttp2_submit_settings(h2, NGHTTP2_FLAG_NONE, iv, 1), 0);
  nghttp2_nv nv[] = {
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), 0}
      NV(":method", "POST"), NV(":scheme", "http"), NV(":authority", "x"), NV(":path", path),
#undef NV
  };
  ck_assert_int_gt(nghttp2_submit_request(h2, NULL, nv, 4, NULL, NULL), 0);
  const uint8_t *d;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(h2, &d)) > 0) raw_send_all(fd, d, (size_t)n);
  nghttp2_session_del(h2);
  nghttp2_session_callbacks_del(cb);
}

typedef struct {
  srv_state *st;
  int sent, limit_rc;
} flood;

static void h_flood(void *ud, mesh_rpc_call *call) {
  flood *f = ud;
  f->st->calls++;
  ck_assert_int_eq(mesh_rpc_call_on_close(call, on_call_closed, f->st), 0);
  char line[1024];
  memset(line, 'x', sizeof line);
  memcpy(line, "{\"x\":\"", 6);
  memcpy(line + sizeof line - 3, "\"}", 3);
  int rc;
  while ((rc = mesh_rpc_send(call, line)) == 0) {
    f->sent++;
    ck_assert_int_lt(f->sent, 100000);
  }
  f->limit_rc = rc;
  ck_assert_uint_le(mesh_rpc_call_buffered(call), 65536);
  ck_assert_int_eq(mesh_rpc_send(call, "{}"), MESH_ERR_CLOSED);
}

START_TEST(stuck_client_stream_is_reset_at_outbound_bound) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  flood f = {&st, 0, 0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_OUTBOUND, 65536), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/flood", h_flood, &f), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  int fd = raw_connect(port);
  raw_stuck_stream(fd, "/flood");
  run_until(w.base, &st.closed, 1, 5000);
  ck_assert_int_eq(f.limit_rc, MESH_ERR_LIMIT);
  ck_assert_int_ge(f.sent, 60);
  ck_assert_int_le(f.sent, 64);
  ck_assert_int_eq(st.close_end_rc, MESH_ERR_CLOSED);
  /* Others are served meanwhile. */
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, 200);
  close(fd);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(garbage_and_http1_close_only_their_connection) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  uint16_t port;
  mesh_rpc_server *s = server(&w, NULL, &port);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  run_until(w.base, &r.n, 1, 5000);
  int g = raw_connect(port), h = raw_connect(port);
  uint8_t junk[4096];
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)(i * 7919u >> 3);
  raw_send_all(g, junk, sizeof junk);
  const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  raw_send_all(h, req, strlen(req));
  int wait = 0;
  run_for(w.base, 20);
  while (mesh_rpc_server_connections(s) > 1) {
    run_for(w.base, 10);
    ck_assert_int_lt(wait++, 500);
  }
  /* Both raw sockets see the end of their connection. */
  char buf[256];
  ssize_t n;
  while ((n = read(g, buf, sizeof buf)) > 0) {
  }
  ck_assert_int_le(n, 0);
  while ((n = read(h, buf, sizeof buf)) > 0) {
  }
  ck_assert_int_le(n, 0);
  close(g);
  close(h);
  result r2 = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r2);
  run_until(w.base, &r2.n, 1, 5000);
  ck_assert_int_eq(r2.status, 200);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(idle_connections_close_and_connection_limit) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_IDLE_MS, 200), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_CONNECTIONS, 2), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  int a = raw_connect(port), b = raw_connect(port), x = raw_connect(port);
  run_for(w.base, 50);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 2);
  char buf[64];
  ck_assert_int_eq(read(x, buf, sizeof buf), 0); /* the third was closed at once */
  int wait = 0;
  while (mesh_rpc_server_connections(s) > 0) { /* silent ones go when idle */
    run_for(w.base, 10);
    ck_assert_int_lt(wait++, 300);
  }
  close(a);
  close(b);
  close(x);
  /* A client whose connection went idle reconnects on its next call. */
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result r = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  run_until(w.base, &r.n, 1, 5000);
  run_for(w.base, 400);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 0);
  result r2 = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r2);
  run_until(w.base, &r2.n, 1, 5000);
  ck_assert_int_eq(r2.status, 200);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

START_TEST(options_and_addresses_are_checked) {
  world w;
  world_make(&w, 0);
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(NULL, &o), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, 0, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, 99, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_BODY, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_OUTBOUND, 100), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_HEADER_LIST, 4096), 0);
  mesh_rpc_server *s;
  ck_assert_int_eq(mesh_rpc_server_new(w.ctx, w.base, o, &s), 0);
  mesh_rpc_server_opts_free(o);
  uint16_t port = 0;
  ck_assert_int_eq(mesh_rpc_server_listen(s, "127.0.0.1", &port), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "127.0.0.1:99999", &port), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "example.com:80", &port), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "[::1:80", &port), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "[::1]:0", &port), 0);
  ck_assert_uint_ne(port, 0);
  uint16_t port2 = 0;
  char taken[32];
  snprintf(taken, sizeof taken, "[::1]:%u", port);
  ck_assert_int_eq(mesh_rpc_server_listen(s, taken, &port2), MESH_ERR_IO);
  mesh_rpc_client *c;
  ck_assert_int_eq(mesh_rpc_client_new(w.ctx, w.base, NULL, "localhost", NULL, &c), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_client_new(w.ctx, w.base, NULL, "127.0.0.1:0", NULL, &c), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_rpc_client_new(w.ctx, w.base, NULL, "127.0.0.1:1", SERVER_DNS, &c),
                   MESH_ERR_INVALID);
  /* Over IPv6, and a header list within the smaller bound. */
  srv_state st = {0};
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  char addr[32];
  snprintf(addr, sizeof addr, "[::1]:%u", port);
  ck_assert_int_eq(mesh_rpc_client_new(w.ctx, w.base, NULL, addr, NULL, &c), 0);
  ck_assert_int_eq(mesh_rpc_client_call(c, "noslash", "", 0, 0, on_reply, NULL), MESH_ERR_INVALID);
  result r = {0};
  call(c, "/echo.Echo/Say", "{}", 5000, &r);
  run_until(w.base, &r.n, 1, 5000);
  ck_assert_int_eq(r.status, 200);
  ck_assert(strncmp(st.peer_addr, "[::1]:", 6) == 0);
  mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

/* A request whose header list is over MESH_RPC_LIMIT_HEADER_LIST: sent with
 * nghttp2 over a raw socket, whose stream must be reset while the same
 * connection's next stream is served. */
typedef struct {
  int closed[8];
  uint32_t codes[8];
  int status[8];
} raw_state;

static int raw_on_close(nghttp2_session *h2, int32_t sid, uint32_t code, void *ud) {
  (void)h2;
  raw_state *r = ud;
  if (sid > 0 && sid < 16) {
    r->closed[sid / 2] = 1;
    r->codes[sid / 2] = code;
  }
  return 0;
}

static int raw_on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *n, size_t nl,
                         const uint8_t *v, size_t vl, uint8_t fl, void *ud) {
  (void)h2;
  (void)fl;
  raw_state *r = ud;
  if (nl == 7 && memcmp(n, ":status", 7) == 0 && f->hd.stream_id < 16)
    r->status[f->hd.stream_id / 2] = atoi((const char *)v) * (vl == 3);
  return 0;
}

START_TEST(oversized_header_list_resets_only_its_stream) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_HEADER_LIST, 4096), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  int fd = raw_connect(port);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fd), 0);
  raw_state rs = {{0}, {0}, {0}};
  nghttp2_session_callbacks *cb;
  nghttp2_session *h2;
  ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, raw_on_close);
  nghttp2_session_callbacks_set_on_header_callback(cb, raw_on_header);
  ck_assert_int_eq(nghttp2_session_client_new(&h2, cb, &rs), 0);
  ck_assert_int_eq(nghttp2_submit_settings(h2, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  char *big = malloc(8001);
  memset(big, 'v', 8000);
  big[8000] = '\0';
  nghttp2_nv nv[] = {
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), NGHTTP2_NV_FLAG_NO_INDEX}
      NV(":method", "POST"), NV(":scheme", "http"), NV(":authority", "x"),
      NV(":path", "/echo.Echo/Say"), NV("x-big", big),
#undef NV
  };
  ck_assert_int_eq(nghttp2_submit_request(h2, NULL, nv, 5, NULL, NULL), 1);
  ck_assert_int_eq(nghttp2_submit_request(h2, NULL, nv, 4, NULL, NULL), 3);
  for (int i = 0; i < 300 && !(rs.closed[0] && rs.closed[1]); i++) {
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h2, &d)) > 0) raw_send_all(fd, d, (size_t)n);
    run_for(w.base, 10);
    uint8_t buf[16384];
    while ((n = read(fd, buf, sizeof buf)) > 0) ck_assert_int_eq(nghttp2_session_mem_recv(h2, buf, (size_t)n), n);
  }
  ck_assert_int_eq(rs.closed[0], 1);
  ck_assert_int_ne(rs.codes[0], NGHTTP2_NO_ERROR); /* stream 1: reset */
  ck_assert_int_eq(rs.status[0], 0);
  ck_assert_int_eq(rs.closed[1], 1);
  ck_assert_int_eq(rs.status[1], 200); /* stream 3 on the same connection: served */
  ck_assert_int_eq(st.calls, 1);
  ck_assert_uint_eq(mesh_rpc_server_connections(s), 1);
  free(big);
  nghttp2_session_del(h2);
  nghttp2_session_callbacks_del(cb);
  close(fd);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

/* A request whose body never comes: HEADERS without END_STREAM, then nothing. */
static ssize_t raw_never(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)h2, (void)sid, (void)buf, (void)len, (void)flags, (void)src, (void)ud;
  return NGHTTP2_ERR_DEFERRED;
}

START_TEST(slow_request_body_gets_408) {
  world w;
  world_make(&w, 0);
  srv_state st = {0};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_REQUEST_MS, 200), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  int fd = raw_connect(port);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fd), 0);
  raw_state rs = {{0}, {0}, {0}};
  nghttp2_session_callbacks *cb;
  nghttp2_session *h2;
  ck_assert_int_eq(nghttp2_session_callbacks_new(&cb), 0);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, raw_on_close);
  nghttp2_session_callbacks_set_on_header_callback(cb, raw_on_header);
  ck_assert_int_eq(nghttp2_session_client_new(&h2, cb, &rs), 0);
  ck_assert_int_eq(nghttp2_submit_settings(h2, NGHTTP2_FLAG_NONE, NULL, 0), 0);
  nghttp2_nv nv[] = {
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), strlen(n), strlen(v), 0}
      NV(":method", "POST"), NV(":scheme", "http"), NV(":authority", "x"),
      NV(":path", "/echo.Echo/Say"),
#undef NV
  };
  nghttp2_data_provider prd = {.read_callback = raw_never};
  ck_assert_int_eq(nghttp2_submit_request(h2, NULL, nv, 4, &prd, NULL), 1);
  for (int i = 0; i < 300 && !rs.status[0]; i++) {
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(h2, &d)) > 0) raw_send_all(fd, d, (size_t)n);
    run_for(w.base, 10);
    uint8_t buf[16384];
    while ((n = read(fd, buf, sizeof buf)) > 0) ck_assert_int_eq(nghttp2_session_mem_recv(h2, buf, (size_t)n), n);
  }
  ck_assert_int_eq(rs.status[0], 408);
  ck_assert_int_eq(st.calls, 0);
  nghttp2_session_del(h2);
  nghttp2_session_callbacks_del(cb);
  close(fd);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

/* A JSON object of n bytes; the handlers below send one of st->stream_n bytes. */
static char *huge_json(size_t n) {
  char *b = malloc(n + 1);
  memset(b, 'x', n);
  memcpy(b, "{\"x\":\"", 6);
  memcpy(b + n - 2, "\"}", 2);
  b[n] = '\0';
  return b;
}

static void h_huge_line(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  char *b = huge_json((size_t)st->stream_n);
  ck_assert_int_eq(mesh_rpc_send(call, "{\"small\":1}"), 0);
  ck_assert_int_eq(mesh_rpc_send(call, b), 0);
  free(b);
  mesh_rpc_end(call);
}

static void h_huge_reply(void *ud, mesh_rpc_call *call) {
  srv_state *st = ud;
  char *b = huge_json((size_t)st->stream_n);
  ck_assert_int_eq(mesh_rpc_reply(call, 200, b), 0);
  free(b);
}

typedef struct {
  mesh_rpc_client *cl;
  int n;
} freeing;

static void on_reply_free_client(void *ud, int status, const char *body, size_t len,
                                 const char *err) {
  (void)body, (void)len, (void)err;
  freeing *f = ud;
  f->n++;
  ck_assert_int_eq(status, 200);
  mesh_rpc_client_free(f->cl); /* allowed from its own callback */
}

static void on_reply_count_closed(void *ud, int status, const char *body, size_t len,
                                  const char *err) {
  (void)body, (void)len, (void)err;
  freeing *f = ud;
  ck_assert_int_eq(status, MESH_ERR_CLOSED);
  f->n++;
}

START_TEST(client_bounds_and_free_from_a_callback) {
  world w;
  world_make(&w, 0);
  srv_state st = {.stream_n = (int)MESH_RPC_CLIENT_LINE_MAX + 1000};
  mesh_rpc_server_opts *o;
  ck_assert_int_eq(mesh_rpc_server_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_OUTBOUND, 4u << 20), 0);
  uint16_t port;
  mesh_rpc_server *s = server(&w, o, &port);
  mesh_rpc_server_opts_free(o);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/line", h_huge_line, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/reply", h_huge_reply, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  mesh_rpc_client *c = client(&w, NULL, port, NULL);
  result rl = {0}, rr = {0};
  ck_assert_int_eq(mesh_rpc_client_stream(c, "/line", "{}", 2, on_message, on_end, &rl, NULL), 0);
  call(c, "/reply", "{}", 5000, &rr);
  run_until(w.base, &rl.n, 1, 10000);
  run_until(w.base, &rr.n, 1, 10000);
  ck_assert_int_eq(rl.status, MESH_ERR_LIMIT);
  ck_assert_int_eq(rl.messages, 1); /* the small line came through */
  ck_assert_int_eq(rr.status, MESH_ERR_LIMIT);
  /* Free the client from inside a reply: the other pending call is told. */
  freeing f = {c, 0};
  ck_assert_int_eq(mesh_rpc_client_call(c, "/echo.Echo/Say", "1", 1, 5000, on_reply_free_client,
                                        &f),
                   0);
  ck_assert_int_eq(mesh_rpc_client_call(c, "/hold", "1", 1, 0, on_reply_count_closed, &f), 0);
  run_until(w.base, &f.n, 2, 5000);
  mesh_rpc_server_free(s);
  world_free(&w);
}
END_TEST

/* ---- mesh_rpc_call_sync against a server on its own thread ---------------- */

typedef struct {
  struct event_base *base;
  atomic_int stop;
} loop_thread;

static void on_tick(evutil_socket_t fd, short what, void *p) {
  (void)fd;
  (void)what;
  loop_thread *t = p;
  if (atomic_load(&t->stop)) event_base_loopbreak(t->base);
}

static void *loop_run(void *p) {
  loop_thread *t = p;
  struct event *tick = event_new(t->base, -1, EV_PERSIST, on_tick, t);
  struct timeval tv = {0, 10000};
  event_add(tick, &tv);
  event_base_dispatch(t->base);
  event_free(tick);
  return NULL;
}

START_TEST(call_sync_blocks_for_the_answer) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  loop_thread t = {event_base_new(), 0};
  srv_state st = {0};
  mesh_rpc_server *s;
  uint16_t port;
  ck_assert_int_eq(mesh_rpc_server_new(ctx, t.base, NULL, &s), 0);
  ck_assert_int_eq(mesh_rpc_server_listen(s, "127.0.0.1:0", &port), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/echo.Echo/Say", h_echo, &st), 0);
  ck_assert_int_eq(mesh_rpc_server_handle(s, "/hold", h_hold, &st), 0);
  pthread_t th;
  ck_assert_int_eq(pthread_create(&th, NULL, loop_run, &t), 0);
  char addr[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", port);
  int status = 0;
  char *resp = NULL;
  const char *why = NULL;
  int rc = mesh_rpc_call_sync(ctx, NULL, addr, NULL, "/echo.Echo/Say", "{\"s\":1}", 7, 5000,
                              &status, &resp, &why);
  ck_assert_msg(rc == 0, "%s: %s", mesh_strerror(rc), why ? why : "");
  ck_assert_int_eq(status, 200);
  ck_assert_str_eq(resp, "{\"echo\":{\"s\":1}}");
  mesh_free_string(ctx, resp);
  resp = NULL;
  rc = mesh_rpc_call_sync(ctx, NULL, addr, NULL, "/missing", "{}", 2, 5000, &status, &resp, &why);
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(status, 404);
  mesh_free_string(ctx, resp);
  resp = NULL;
  status = -1;
  rc = mesh_rpc_call_sync(ctx, NULL, addr, NULL, "/hold", "{}", 2, 200, &status, &resp, &why);
  ck_assert_int_eq(rc, MESH_ERR_TIMEOUT);
  ck_assert_int_eq(status, -1);
  ck_assert_ptr_null(resp);
  atomic_store(&t.stop, 1);
  pthread_join(th, NULL);
  /* Nobody listening at all. */
  mesh_rpc_server_free(s);
  why = NULL;
  rc = mesh_rpc_call_sync(ctx, NULL, addr, NULL, "/echo.Echo/Say", "{}", 2, 5000, &status, &resp,
                          &why);
  ck_assert_int_eq(rc, MESH_ERR_CONNECT);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_rpc_call_sync(ctx, NULL, "bad", NULL, "/x", "", 0, 100, &status, &resp,
                                      &why),
                   MESH_ERR_PARSE);
  event_base_free(t.base);
  mesh_ctx_free(ctx);
}
END_TEST

typedef struct {
  struct event_base *base;
} alloc_arg;

static int build_server(mesh_ctx *ctx, void *p) {
  alloc_arg *a = p;
  mesh_rpc_server_opts *o;
  mesh_rpc_server *s;
  mesh_rpc_client *c;
  int rc = mesh_rpc_server_opts_new(ctx, &o);
  if (rc) return rc;
  rc = mesh_rpc_server_new(ctx, a->base, o, &s);
  mesh_rpc_server_opts_free(o);
  if (rc) return rc;
  rc = mesh_rpc_server_handle(s, "/a", h_echo, NULL);
  if (!rc) rc = mesh_rpc_server_handle(s, "/b", h_echo, NULL);
  if (!rc) rc = mesh_rpc_client_new(ctx, a->base, NULL, "127.0.0.1:1", NULL, &c);
  if (!rc) mesh_rpc_client_free(c);
  mesh_rpc_server_free(s);
  return rc;
}

START_TEST(allocation_failures) {
  alloc_arg a = {event_base_new()};
  ck_assert(test_alloc_failures(build_server, &a) >= 5);
  event_base_free(a.base);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("rpc");
  TCase *tc = tcase_create("rpc");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, unary_round_trip_plaintext);
  tcase_add_test(tc, unary_over_mtls_sees_client_identity);
  tcase_add_test(tc, optional_client_auth_serves_anonymous_tls);
  tcase_add_test(tc, streaming_several_messages_and_end);
  tcase_add_test(tc, errors_unknown_path_and_error_body);
  tcase_add_test(tc, oversized_body_413_and_connection_keeps_serving);
  tcase_add_test(tc, hundred_concurrent_calls_on_one_connection);
  tcase_add_test(tc, streams_over_the_limit_are_refused_then_served);
  tcase_add_test(tc, client_timeout_resets_and_server_hears_it);
  tcase_add_test(tc, late_reply_after_client_left_is_closed);
  tcase_add_test(tc, server_gone_is_connect_error);
  tcase_add_test(tc, wrong_server_identity);
  tcase_add_test(tc, stream_cancel_triggers_server_close_callback);
  tcase_add_test(tc, server_free_closes_open_streams);
  tcase_add_test(tc, stuck_client_stream_is_reset_at_outbound_bound);
  tcase_add_test(tc, garbage_and_http1_close_only_their_connection);
  tcase_add_test(tc, idle_connections_close_and_connection_limit);
  tcase_add_test(tc, options_and_addresses_are_checked);
  tcase_add_test(tc, oversized_header_list_resets_only_its_stream);
  tcase_add_test(tc, slow_request_body_gets_408);
  tcase_add_test(tc, client_bounds_and_free_from_a_callback);
  tcase_add_test(tc, call_sync_blocks_for_the_answer);
  tcase_add_test(tc, allocation_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* as any libevent application must */
  return test_main(make_suite());
}
