/* Unit tests for tls: mTLS handshakes over a socketpair in one event_base, identity checks, resumption, swaps, bounds. */
#include "testutil.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>

#include "identity_internal.h"

#define EXPECT_DNS "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
#define CLIENT_DNS "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local"

static uint64_t now_s(void) { return (uint64_t)time(NULL); }

/* ---- PKI fixtures -------------------------------------------------------- */

typedef struct {
  mesh_ca *anchor, *issuer;
} pki;

static void pki_make(mesh_ctx *ctx, uint64_t at, pki *p) {
  ck_assert_int_eq(mesh_ca_init(ctx, NULL, NULL, at, 0, &p->anchor, &p->issuer), 0);
}

static void pki_free(pki *p) {
  mesh_ca_free(p->issuer);
  mesh_ca_free(p->anchor);
}

static char *anchor_pem(const pki *p) {
  return strdup(mesh_certs_pem(mesh_ca_certs(p->anchor), 0));
}

typedef struct {
  char *chain, *key;
} cred;

/* A workload certificate for sa.ns issued at `at` for lifetime_s. */
static cred issue(mesh_ctx *ctx, const pki *p, const char *ns, const char *sa, uint64_t at,
                  uint64_t lifetime_s) {
  mesh_key *k;
  mesh_identity *id;
  mesh_csr *csr;
  mesh_certs *certs;
  const char *why = NULL;
  ck_assert_int_eq(mesh_key_generate(ctx, &k), 0);
  ck_assert_int_eq(mesh_identity_new(ctx, ns, sa, NULL, NULL, &why, &id), 0);
  ck_assert_int_eq(mesh_csr_new(k, id, &csr), 0);
  ck_assert_int_eq(mesh_ca_set_lifetime((mesh_ca *)p->issuer, lifetime_s), 0);
  int rc = mesh_ca_issue(p->issuer, csr, id, at, &why, &certs);
  ck_assert_msg(rc == 0, "issue: %s: %s", mesh_strerror(rc), why ? why : "");
  cred c = {strdup(mesh_certs_bundle_pem(certs, 0)), strdup(mesh_key_pem(k))};
  mesh_certs_free(certs);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  mesh_key_free(k);
  return c;
}

static void cred_free(cred *c) {
  free(c->chain);
  free(c->key);
}

static mesh_tls_config *config(mesh_ctx *ctx, const cred *c, const char *anchors, const char *alpn,
                               int tickets) {
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_opts_new(ctx, &o), 0);
  ck_assert_int_eq(
      mesh_tls_opts_set_credentials(o, c->chain, strlen(c->chain), c->key, strlen(c->key)), 0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, anchors, strlen(anchors)), 0);
  if (alpn) ck_assert_int_eq(mesh_tls_opts_set_alpn(o, alpn), 0);
  ck_assert_int_eq(mesh_tls_opts_set_sessions(o, 64, 16, 0, tickets), 0);
  int rc = mesh_tls_config_new(o, &why, &cfg);
  ck_assert_msg(rc == 0, "config: %s: %s", mesh_strerror(rc), why ? why : "");
  mesh_tls_opts_free(o);
  return cfg;
}

/* The common world: one trust anchor, a server "web" and a client "vote-bot". */
typedef struct {
  mesh_ctx *ctx;
  pki a;
  char *anchors;
  cred server, client;
  mesh_tls_config *scfg, *ccfg;
} world;

static void world_make(world *w) {
  ck_assert_int_eq(mesh_ctx_new(&w->ctx), 0);
  pki_make(w->ctx, now_s(), &w->a);
  w->anchors = anchor_pem(&w->a);
  w->server = issue(w->ctx, &w->a, "emojivoto", "web", now_s(), 3600);
  w->client = issue(w->ctx, &w->a, "emojivoto", "vote-bot", now_s(), 3600);
  w->scfg = config(w->ctx, &w->server, w->anchors, NULL, 1);
  w->ccfg = config(w->ctx, &w->client, w->anchors, NULL, 1);
}

static void world_free(world *w) {
  mesh_tls_config_unref(w->scfg);
  mesh_tls_config_unref(w->ccfg);
  cred_free(&w->server);
  cred_free(&w->client);
  free(w->anchors);
  pki_free(&w->a);
  mesh_ctx_free(w->ctx);
}

/* ---- Event-loop harness --------------------------------------------------- */

typedef struct {
  mesh_tls_conn *conn;
  int connected, error, eof;
  size_t len;
  char buf[1 << 16];
} side;

static void side_read(struct bufferevent *bev, void *p) {
  side *s = p;
  s->len += bufferevent_read(bev, s->buf + s->len, sizeof s->buf - 1 - s->len);
  s->buf[s->len] = '\0';
}

static void side_event(struct bufferevent *bev, short what, void *p) {
  side *s = p;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) s->connected = 1;
  if (what & BEV_EVENT_ERROR) s->error = 1;
  if (what & BEV_EVENT_EOF) s->eof = 1;
}

static void side_watch(side *s) {
  bufferevent_setcb(mesh_tls_conn_bev(s->conn), side_read, NULL, side_event, s);
}

typedef int (*pred_fn)(void *);

static void on_deadline(evutil_socket_t fd, short what, void *p) {
  (void)fd;
  (void)what;
  *(int *)p = 1;
}

static void on_tick(evutil_socket_t fd, short what, void *p) {
  (void)fd;
  (void)what;
  (void)p;
}

/* Run the loop until pred holds; fails the test after ms. */
static void run_until(struct event_base *base, pred_fn pred, void *arg, int ms) {
  int expired = 0;
  struct event *t = evtimer_new(base, on_deadline, &expired);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(t, &tv);
  /* A tick, so that predicates about quiet states get asked too. */
  struct event *tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
  struct timeval tick_tv = {0, 5000};
  event_add(tick, &tick_tv);
  while (!pred(arg) && !expired) event_base_loop(base, EVLOOP_ONCE);
  event_free(tick);
  event_free(t);
  ck_assert_msg(!expired, "timed out after %d ms", ms);
}

/* Let deferred callbacks and finalizers run. */
static void settle(struct event_base *base) {
  for (int i = 0; i < 4; i++) event_base_loop(base, EVLOOP_NONBLOCK);
}

typedef struct {
  struct event_base *base;
  side c, s;
} pair;

static void socketpair_nb(int fds[2]) {
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fds[0]), 0);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fds[1]), 0);
}

static pair *pair_start(mesh_tls_config *ccfg, mesh_tls_config *scfg, const char *expect,
                        const char *alpn, const char *session_key, int auth) {
  pair *p = calloc(1, sizeof *p);
  ck_assert(p != NULL);
  p->base = event_base_new();
  int fds[2];
  socketpair_nb(fds);
  const char *why = NULL;
  int rc = mesh_tls_conn_client_fd(ccfg, p->base, fds[0], expect, alpn, session_key, &why,
                                   &p->c.conn);
  ck_assert_msg(rc == 0, "client: %s: %s", mesh_strerror(rc), why ? why : "");
  ck_assert_int_eq(mesh_tls_conn_server_fd(scfg, p->base, fds[1], auth, &p->s.conn), 0);
  side_watch(&p->c);
  side_watch(&p->s);
  return p;
}

static int both_settled(void *a) {
  pair *p = a;
  return (p->c.connected || p->c.error) && (p->s.connected || p->s.error);
}

static int both_connected(void *a) {
  pair *p = a;
  return p->c.connected && p->s.connected;
}

static void pair_free(pair *p) {
  mesh_tls_conn_free(p->c.conn);
  mesh_tls_conn_free(p->s.conn);
  settle(p->base);
  event_base_free(p->base);
  free(p);
}

typedef struct {
  side *s;
  size_t want;
} want_bytes;

static int has_bytes(void *a) {
  want_bytes *w = a;
  return w->s->len >= w->want;
}

/* Send text from one side and wait until the other has it all. */
static void send_and_expect(pair *p, side *from, side *to, const char *text) {
  size_t before = to->len;
  ck_assert_int_eq(bufferevent_write(mesh_tls_conn_bev(from->conn), text, strlen(text)), 0);
  want_bytes w = {to, before + strlen(text)};
  run_until(p->base, has_bytes, &w, 5000);
  ck_assert(memcmp(to->buf + before, text, strlen(text)) == 0);
}

/* ---- Tests --------------------------------------------------------------- */

/* A client with anchors only: it can resume sessions but has no certificate. */
static mesh_tls_config *client_only(mesh_ctx *ctx, const char *anchors, int tickets) {
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, anchors, strlen(anchors)), 0);
  ck_assert_int_eq(mesh_tls_opts_set_sessions(o, 64, 16, 0, tickets), 0);
  int rc = mesh_tls_config_new(o, &why, &cfg);
  ck_assert_msg(rc == 0, "client-only config: %s", why ? why : "");
  mesh_tls_opts_free(o);
  return cfg;
}

START_TEST(config_rejects_bad_input) {
  world w;
  world_make(&w);
  mesh_tls_opts *o;
  mesh_tls_config *cfg = NULL;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_opts_new(NULL, &o), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_tls_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), MESH_ERR_INVALID);
  ck_assert_ptr_nonnull(why);
  ck_assert_ptr_null(cfg);
  ck_assert_int_eq(mesh_tls_opts_set_alpn(o, "h2,,http/1.1"), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_tls_opts_set_alpn(o, "a,b,c,d,e,f,g,h,i"), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_tls_opts_set_sessions(o, 1, 1, 8 * 86400, 1), MESH_ERR_RANGE);
  /* Another workload's key does not match the leaf. */
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, w.server.chain, strlen(w.server.chain),
                                                 w.client.key, strlen(w.client.key)),
                   0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, w.anchors, strlen(w.anchors)), 0);
  why = NULL;
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), MESH_ERR_TLS);
  ck_assert_str_eq(why, "the private key does not match the leaf certificate");
  /* Garbage anchors. */
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, w.server.chain, strlen(w.server.chain),
                                                 w.server.key, strlen(w.server.key)),
                   0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, "junk", 4), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), MESH_ERR_PARSE);
  /* An anchor as the leaf carries no workload identity. */
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, w.anchors, strlen(w.anchors)), 0);
  const char *akey = mesh_key_pem(mesh_ca_key(w.a.anchor));
  ck_assert_int_eq(
      mesh_tls_opts_set_credentials(o, w.anchors, strlen(w.anchors), akey, strlen(akey)), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), MESH_ERR_IDENTITY);
  /* And the good one. */
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, w.server.chain, strlen(w.server.chain),
                                                 w.server.key, strlen(w.server.key)),
                   0);
  ck_assert_int_eq(mesh_tls_config_new(o, &why, &cfg), 0);
  ck_assert_str_eq(mesh_identity_dns(mesh_tls_config_identity(cfg)), EXPECT_DNS);
  ck_assert(mesh_tls_config_not_after(cfg) > now_s());
  ck_assert_ptr_eq(mesh_tls_config_ref(cfg), cfg);
  mesh_tls_config_unref(cfg);
  mesh_tls_config_unref(cfg);
  mesh_tls_config_unref(NULL);
  mesh_tls_opts_free(o);
  mesh_tls_opts_free(NULL);
  world_free(&w);
}
END_TEST

START_TEST(mutual_handshake_and_data_both_ways) {
  world w;
  world_make(&w);
  pair *p = pair_start(w.ccfg, w.scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  /* Written before the handshake: held back until the server is checked. */
  ck_assert_int_eq(bufferevent_write(mesh_tls_conn_bev(p->c.conn), "early ", 6), 0);
  ck_assert(!mesh_tls_conn_established(p->c.conn));
  run_until(p->base, both_connected, p, 5000);
  ck_assert_str_eq(mesh_tls_conn_peer_identity(p->c.conn), EXPECT_DNS);
  ck_assert_str_eq(mesh_tls_conn_peer_identity(p->s.conn), CLIENT_DNS);
  ck_assert_str_eq(mesh_identity_uri(mesh_tls_conn_peer(p->s.conn)),
                   "spiffe://cluster.local/ns/emojivoto/sa/vote-bot");
  ck_assert_str_eq(mesh_tls_conn_alpn(p->c.conn), "h2");
  ck_assert_str_eq(mesh_tls_conn_alpn(p->s.conn), "h2");
  ck_assert_str_eq(mesh_tls_conn_cipher(p->c.conn), "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
  ck_assert_int_eq(mesh_tls_conn_resumed(p->c.conn), 0);
  ck_assert_int_eq(mesh_tls_conn_resumed(p->s.conn), 0);
  const char *why = "x";
  ck_assert_int_eq(mesh_tls_conn_error(p->c.conn, &why), 0);
  ck_assert_str_eq(why, "");
  want_bytes early = {&p->s, 6};
  run_until(p->base, has_bytes, &early, 5000);
  send_and_expect(p, &p->c, &p->s, "ping");
  ck_assert_str_eq(p->s.buf, "early ping");
  send_and_expect(p, &p->s, &p->c, "pong");
  ck_assert_str_eq(p->c.buf, "pong");
  mesh_certs *pc;
  ck_assert_int_eq(mesh_tls_conn_peer_certs(p->c.conn, &pc), 0);
  ck_assert_int_eq(mesh_certs_count(pc), 1);
  ck_assert_ptr_eq(mesh_tls_conn_config(p->c.conn), w.ccfg);
  mesh_certs_free(pc);
  pair_free(p);
  world_free(&w);
}
END_TEST

START_TEST(spiffe_expected_identity_and_alpn_override) {
  world w;
  world_make(&w);
  pair *p = pair_start(w.ccfg, w.scfg, "spiffe://cluster.local/ns/emojivoto/sa/web", "http/1.1",
                       NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_connected, p, 5000);
  ck_assert_str_eq(mesh_tls_conn_alpn(p->c.conn), "http/1.1");
  pair_free(p);
  /* No protocol in common: the server refuses. */
  p = pair_start(w.ccfg, w.scfg, EXPECT_DNS, "spdy/3", NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_settled, p, 5000);
  ck_assert(p->c.error && p->s.error);
  ck_assert_int_eq(mesh_tls_conn_error(p->c.conn, NULL), MESH_ERR_TLS);
  pair_free(p);
  /* A malformed expected identity is refused up front. */
  struct event_base *base = event_base_new();
  int fds[2];
  socketpair_nb(fds);
  mesh_tls_conn *c = NULL;
  const char *why = NULL;
  ck_assert_int_eq(mesh_tls_conn_client_fd(w.ccfg, base, fds[0], "not an identity", NULL, NULL,
                                           &why, &c),
                   MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  ck_assert_ptr_null(c);
  close(fds[1]);
  event_base_free(base);
  world_free(&w);
}
END_TEST

START_TEST(wrong_server_identity) {
  world w;
  world_make(&w);
  pair *p = pair_start(w.ccfg, w.scfg,
                       "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local", NULL, NULL,
                       MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_settled, p, 5000);
  ck_assert(p->c.error && !p->c.connected);
  const char *why;
  ck_assert_int_eq(mesh_tls_conn_error(p->c.conn, &why), MESH_ERR_IDENTITY);
  ck_assert_msg(strstr(why, "server identity is " EXPECT_DNS ", expected emoji.") != NULL, "%s",
                why);
  ck_assert(p->s.error); /* told with an alert */
  ck_assert_int_eq(mesh_tls_conn_error(p->s.conn, &why), MESH_ERR_DENIED);
  pair_free(p);
  world_free(&w);
}
END_TEST

START_TEST(client_cert_from_another_anchor) {
  world w;
  world_make(&w);
  pki other;
  pki_make(w.ctx, now_s(), &other);
  cred rogue = issue(w.ctx, &other, "emojivoto", "vote-bot", now_s(), 3600);
  mesh_tls_config *rcfg = config(w.ctx, &rogue, w.anchors, NULL, 1);
  for (int auth = 0; auth < 2; auth++) { /* optional mode refuses a bad certificate too */
    pair *p = pair_start(rcfg, w.scfg, EXPECT_DNS, NULL, NULL, auth);
    run_until(p->base, both_settled, p, 5000);
    ck_assert(p->s.error && p->c.error);
    const char *why;
    ck_assert_int_eq(mesh_tls_conn_error(p->s.conn, &why), MESH_ERR_TLS);
    ck_assert_msg(strstr(why, "client certificate rejected") != NULL, "%s", why);
    pair_free(p);
  }
  /* And a server from another anchor is refused by the client. */
  mesh_tls_config *rs = config(w.ctx, &rogue, w.anchors, NULL, 1);
  pair *p = pair_start(w.ccfg, rs, CLIENT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_settled, p, 5000);
  ck_assert_int_eq(mesh_tls_conn_error(p->c.conn, NULL), MESH_ERR_TLS);
  pair_free(p);
  mesh_tls_config_unref(rs);
  mesh_tls_config_unref(rcfg);
  cred_free(&rogue);
  pki_free(&other);
  world_free(&w);
}
END_TEST

START_TEST(expired_client_cert_and_two_anchors) {
  world w;
  world_make(&w);
  /* A second, older anchor trusted alongside the first (a rotation). */
  uint64_t long_ago = now_s() - 3 * 86400;
  pki old;
  pki_make(w.ctx, long_ago, &old);
  char *old_anchor = anchor_pem(&old);
  size_t n = strlen(w.anchors) + strlen(old_anchor) + 1;
  char *both = malloc(n);
  snprintf(both, n, "%s%s", w.anchors, old_anchor);
  mesh_tls_config *scfg = config(w.ctx, &w.server, both, NULL, 1);
  /* Valid client from the old anchor: accepted. */
  cred good = issue(w.ctx, &old, "emojivoto", "vote-bot", now_s(), 3600);
  mesh_tls_config *gcfg = config(w.ctx, &good, w.anchors, NULL, 1);
  pair *p = pair_start(gcfg, scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_connected, p, 5000);
  pair_free(p);
  /* Expired two days ago. */
  cred expired = issue(w.ctx, &old, "emojivoto", "vote-bot", long_ago + 86400, 3600);
  mesh_tls_config *ecfg = config(w.ctx, &expired, w.anchors, NULL, 1);
  p = pair_start(ecfg, scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_settled, p, 5000);
  ck_assert(p->s.error && p->c.error);
  const char *why;
  ck_assert_int_eq(mesh_tls_conn_error(p->s.conn, &why), MESH_ERR_EXPIRED);
  ck_assert_msg(strstr(why, "expired") != NULL, "%s", why);
  ck_assert_int_eq(mesh_tls_conn_error(p->c.conn, &why), MESH_ERR_TLS);
  ck_assert_msg(strstr(why, "certificate_expired") != NULL, "%s", why);
  pair_free(p);
  mesh_tls_config_unref(ecfg);
  mesh_tls_config_unref(gcfg);
  mesh_tls_config_unref(scfg);
  cred_free(&expired);
  cred_free(&good);
  free(both);
  free(old_anchor);
  pki_free(&old);
  world_free(&w);
}
END_TEST

/* A bare mbedTLS client that presents no certificate, in its own thread
 * with a blocking socket. */
typedef struct {
  int fd;
  mesh_ctx *ctx;
  int handshake_rc;
  char reply[8];
} bare_client;

static void *bare_client_run(void *arg) {
  bare_client *b = arg;
  mesh__rng rng;
  mbedtls_ssl_config conf;
  mbedtls_ssl_context ssl;
  mbedtls_net_context net = {b->fd};
  ck_assert_int_eq(mesh__rng_init(&rng, b->ctx), 0);
  mbedtls_ssl_config_init(&conf);
  mbedtls_ssl_init(&ssl);
  ck_assert_int_eq(mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT,
                                               MBEDTLS_SSL_TRANSPORT_STREAM,
                                               MBEDTLS_SSL_PRESET_DEFAULT),
                   0);
  mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
  mbedtls_ssl_conf_rng(&conf, mesh__rng_random, &rng);
  ck_assert_int_eq(mbedtls_ssl_setup(&ssl, &conf), 0);
  mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, NULL);
  b->handshake_rc = mbedtls_ssl_handshake(&ssl);
  if (b->handshake_rc == 0) {
    mbedtls_ssl_write(&ssl, (const unsigned char *)"hi", 2);
    int n = mbedtls_ssl_read(&ssl, (unsigned char *)b->reply, sizeof b->reply - 1);
    if (n > 0) b->reply[n] = '\0';
    mbedtls_ssl_close_notify(&ssl);
  }
  mbedtls_ssl_free(&ssl);
  mbedtls_ssl_config_free(&conf);
  mesh__rng_free(&rng);
  close(b->fd);
  return NULL;
}

static void echo_read(struct bufferevent *bev, void *p) {
  side_read(bev, p);
  bufferevent_write(bev, "ok", 2);
}

static int server_settled(void *a) {
  side *s = a;
  return s->error || s->len >= 2;
}

static void bare_client_case(world *w, int auth, side *s, bare_client *b) {
  struct event_base *base = event_base_new();
  int fds[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fds[1]), 0);
  memset(s, 0, sizeof *s);
  memset(b, 0, sizeof *b);
  b->fd = fds[0];
  b->ctx = w->ctx;
  ck_assert_int_eq(mesh_tls_conn_server_fd(w->scfg, base, fds[1], auth, &s->conn), 0);
  bufferevent_setcb(mesh_tls_conn_bev(s->conn), echo_read, NULL, side_event, s);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, bare_client_run, b), 0);
  run_until(base, server_settled, s, 5000);
  if (!s->error) { /* let the reply go out */
    struct timeval tv = {0, 200000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
  }
  mesh_tls_conn_free(s->conn);
  settle(base); /* closes the socket: a client still reading then stops */
  pthread_join(t, NULL);
  event_base_free(base);
}

START_TEST(optional_mode_without_client_cert) {
  world w;
  world_make(&w);
  side s;
  bare_client b;
  bare_client_case(&w, MESH_TLS_CLIENT_AUTH_OPTIONAL, &s, &b);
  ck_assert_int_eq(b.handshake_rc, 0);
  ck_assert(s.connected && !s.error);
  ck_assert_str_eq(s.buf, "hi");
  ck_assert_str_eq(b.reply, "ok");
  /* Required mode: the same client is refused. */
  bare_client_case(&w, MESH_TLS_CLIENT_AUTH_REQUIRED, &s, &b);
  ck_assert(b.handshake_rc != 0);
  ck_assert(s.error);
  world_free(&w);
}
END_TEST

static void record_identity(struct bufferevent *bev, short what, void *p) {
  side *s = p;
  side_event(bev, what, s);
  if (what & BEV_EVENT_CONNECTED) {
    const char *id = mesh_tls_conn_peer_identity(s->conn);
    snprintf(s->buf, sizeof s->buf, "%s", id ? id : "(none)");
  }
}

static void optional_identity_case(world *w) {
  struct event_base *base = event_base_new();
  int fds[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fds[1]), 0);
  side s;
  memset(&s, 0, sizeof s);
  bare_client b = {fds[0], w->ctx, 0, {0}};
  ck_assert_int_eq(
      mesh_tls_conn_server_fd(w->scfg, base, fds[1], MESH_TLS_CLIENT_AUTH_OPTIONAL, &s.conn), 0);
  bufferevent_setcb(mesh_tls_conn_bev(s.conn), NULL, NULL, record_identity, &s);
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, bare_client_run, &b), 0);
  while (!s.connected && !s.error) event_base_loop(base, EVLOOP_ONCE);
  ck_assert_str_eq(s.buf, "(none)");
  ck_assert_ptr_null(mesh_tls_conn_peer(s.conn));
  mesh_tls_conn_free(s.conn);
  settle(base); /* closes the socket: the bare client's read fails and it exits */
  pthread_join(t, NULL);
  event_base_free(base);
}

START_TEST(optional_mode_reports_no_identity) {
  world w;
  world_make(&w);
  optional_identity_case(&w);
  world_free(&w);
}
END_TEST

START_TEST(sessions_are_resumed) {
  world w;
  world_make(&w);
  for (int tickets = 1; tickets >= 0; tickets--) {
    mesh_tls_config *scfg = config(w.ctx, &w.server, w.anchors, NULL, tickets);
    for (int i = 0; i < 3; i++) {
      pair *p = pair_start(w.ccfg, scfg, EXPECT_DNS, NULL, tickets ? "web:4143" : "web:4144",
                           MESH_TLS_CLIENT_AUTH_REQUIRED);
      run_until(p->base, both_connected, p, 5000);
      ck_assert_int_eq(mesh_tls_conn_resumed(p->c.conn), i > 0);
      ck_assert_int_eq(mesh_tls_conn_resumed(p->s.conn), i > 0);
      /* The identities are known on resumption too. */
      ck_assert_str_eq(mesh_tls_conn_peer_identity(p->c.conn), EXPECT_DNS);
      ck_assert_str_eq(mesh_tls_conn_peer_identity(p->s.conn), CLIENT_DNS);
      send_and_expect(p, &p->c, &p->s, "again");
      pair_free(p);
    }
    mesh_tls_config_unref(scfg);
  }
  /* No session key: never resumed. A session for another identity is
   * not offered to this one. */
  pair *p = pair_start(w.ccfg, w.scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_connected, p, 5000);
  ck_assert_int_eq(mesh_tls_conn_resumed(p->c.conn), 0);
  pair_free(p);
  world_free(&w);
}
END_TEST

START_TEST(swap_keeps_live_connections) {
  world w;
  world_make(&w);
  mesh_tls_creds *creds;
  ck_assert_int_eq(mesh_tls_creds_new(w.ctx, w.scfg, &creds), 0);
  mesh_tls_config *cur = mesh_tls_creds_get(creds);
  ck_assert_ptr_eq(cur, w.scfg);
  pair *live = pair_start(w.ccfg, cur, EXPECT_DNS, NULL, "web:4143", MESH_TLS_CLIENT_AUTH_REQUIRED);
  mesh_tls_config_unref(cur);
  run_until(live->base, both_connected, live, 5000);
  mesh_certs *first;
  ck_assert_int_eq(mesh_tls_conn_peer_certs(live->c.conn, &first), 0);

  /* Renewal: a new certificate for the same identity. */
  cred renewed = issue(w.ctx, &w.a, "emojivoto", "web", now_s(), 7200);
  mesh_tls_config *next = config(w.ctx, &renewed, w.anchors, NULL, 1);
  ck_assert_int_eq(mesh_tls_creds_set(creds, next), 0);
  mesh_tls_config_unref(next);
  /* Only the live connection holds the old configuration now. */
  mesh_tls_config_unref(w.scfg);
  w.scfg = NULL;
  send_and_expect(live, &live->c, &live->s, "still here");
  send_and_expect(live, &live->s, &live->c, "and back");

  cur = mesh_tls_creds_get(creds);
  pair *fresh = pair_start(w.ccfg, cur, EXPECT_DNS, NULL, "web:4143", MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(fresh->base, both_connected, fresh, 5000);
  ck_assert_int_eq(mesh_tls_conn_resumed(fresh->c.conn), 0); /* sessions die with their config */
  mesh_certs *second;
  ck_assert_int_eq(mesh_tls_conn_peer_certs(fresh->c.conn, &second), 0);
  ck_assert_str_ne(mesh_certs_serial(first, 0), mesh_certs_serial(second, 0));
  ck_assert_uint_eq(mesh_certs_not_after(second, 0), mesh_tls_config_not_after(cur));
  ck_assert_ptr_eq(mesh_tls_conn_config(fresh->s.conn), cur);
  mesh_tls_config_unref(cur);
  send_and_expect(live, &live->c, &live->s, " after");
  mesh_certs_free(first);
  mesh_certs_free(second);
  pair_free(fresh);
  pair_free(live);
  mesh_tls_creds_set(creds, NULL);
  ck_assert_ptr_null(mesh_tls_creds_get(creds));
  mesh_tls_creds_free(creds);
  cred_free(&renewed);
  world_free(&w);
}
END_TEST

/* ---- Bounds, failures, closing -------------------------------------------- */

#define BULK (1u << 20)

typedef struct {
  pair *p;
  unsigned char *got;
  size_t len;
} bulk;

static void bulk_read(struct bufferevent *bev, void *a) {
  bulk *b = a;
  b->len += bufferevent_read(bev, b->got + b->len, BULK - b->len);
}

static int bulk_done(void *a) {
  bulk *b = a;
  return b->len == BULK;
}

static int stalled(void *a) {
  /* Nothing more moves once every buffer is at its bound. */
  static size_t last;
  static int same;
  size_t now = evbuffer_get_length(bufferevent_get_output(mesh_tls_conn_bev(((pair *)a)->s.conn)));
  same = now == last ? same + 1 : 0;
  last = now;
  return same > 20;
}

START_TEST(buffers_are_bounded) {
  world w;
  world_make(&w);
  pair *p = pair_start(w.ccfg, w.scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_connected, p, 5000);
  struct bufferevent *cbev = mesh_tls_conn_bev(p->c.conn), *sbev = mesh_tls_conn_bev(p->s.conn);
  /* The client application does not read: its high watermark is 32 KiB. */
  bufferevent_setwatermark(cbev, EV_READ, 0, 32768);
  bufferevent_setcb(cbev, NULL, NULL, side_event, &p->c);
  unsigned char *data = malloc(BULK);
  for (size_t i = 0; i < BULK; i++) data[i] = (unsigned char)(i * 7 + (i >> 11));
  ck_assert_int_eq(bufferevent_write(sbev, data, BULK), 0);
  run_until(p->base, stalled, p, 10000);
  size_t s_plain = evbuffer_get_length(bufferevent_get_output(sbev));
  size_t s_cipher = evbuffer_get_length(bufferevent_get_output(bufferevent_get_underlying(sbev)));
  size_t c_plain = evbuffer_get_length(bufferevent_get_input(cbev));
  size_t c_cipher = evbuffer_get_length(bufferevent_get_input(bufferevent_get_underlying(cbev)));
  /* Most of it waits as plaintext on the writer; each other buffer stays
   * within its bound (plus one record). */
  ck_assert_msg(s_cipher <= MESH_TLS_BUFFER_MAX + 16384 + 64, "server ciphertext %zu", s_cipher);
  ck_assert_msg(c_cipher <= MESH_TLS_BUFFER_MAX + 16384 + 64, "client ciphertext %zu", c_cipher);
  ck_assert_msg(c_plain <= 32768 + 16384, "client plaintext %zu", c_plain);
  ck_assert_msg(s_plain > BULK / 2, "server plaintext %zu", s_plain);
  /* Now read it all and compare. */
  bulk b = {p, malloc(BULK), 0};
  bufferevent_setcb(cbev, bulk_read, NULL, NULL, &b);
  bulk_read(cbev, &b);
  run_until(p->base, bulk_done, &b, 10000);
  ck_assert(memcmp(b.got, data, BULK) == 0);
  free(b.got);
  free(data);
  pair_free(p);
  world_free(&w);
}
END_TEST

static int side_failed(void *a) { return ((side *)a)->error; }

START_TEST(handshake_timeout_and_early_close) {
  world w;
  world_make(&w);
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  ck_assert_int_eq(mesh_tls_opts_new(w.ctx, &o), 0);
  ck_assert_int_eq(mesh_tls_opts_set_credentials(o, w.client.chain, strlen(w.client.chain),
                                                 w.client.key, strlen(w.client.key)),
                   0);
  ck_assert_int_eq(mesh_tls_opts_set_anchors(o, w.anchors, strlen(w.anchors)), 0);
  ck_assert_int_eq(mesh_tls_opts_set_handshake_timeout(o, 150), 0);
  ck_assert_int_eq(mesh_tls_config_new(o, NULL, &cfg), 0);
  mesh_tls_opts_free(o);

  /* A peer that never answers. */
  struct event_base *base = event_base_new();
  int fds[2];
  socketpair_nb(fds);
  side c;
  memset(&c, 0, sizeof c);
  ck_assert_int_eq(mesh_tls_conn_client_fd(cfg, base, fds[0], EXPECT_DNS, NULL, NULL, NULL, &c.conn), 0);
  side_watch(&c);
  run_until(base, side_failed, &c, 5000);
  const char *why;
  ck_assert_int_eq(mesh_tls_conn_error(c.conn, &why), MESH_ERR_TIMEOUT);
  ck_assert_msg(strstr(why, "150 ms") != NULL, "%s", why);
  mesh_tls_conn_free(c.conn);
  close(fds[1]);

  /* A peer that hangs up during the handshake. */
  socketpair_nb(fds);
  memset(&c, 0, sizeof c);
  ck_assert_int_eq(mesh_tls_conn_client_fd(cfg, base, fds[0], EXPECT_DNS, NULL, NULL, NULL, &c.conn), 0);
  side_watch(&c);
  close(fds[1]);
  run_until(base, side_failed, &c, 5000);
  ck_assert_int_eq(mesh_tls_conn_error(c.conn, &why), MESH_ERR_CLOSED);
  mesh_tls_conn_free(c.conn);

  /* A peer that speaks something else. */
  socketpair_nb(fds);
  memset(&c, 0, sizeof c);
  ck_assert_int_eq(mesh_tls_conn_client_fd(cfg, base, fds[0], EXPECT_DNS, NULL, NULL, NULL, &c.conn), 0);
  side_watch(&c);
  ck_assert_int_eq(write(fds[1], "HTTP/1.1 400 Bad Request\r\n\r\n", 28), 28);
  run_until(base, side_failed, &c, 5000);
  ck_assert_int_eq(mesh_tls_conn_error(c.conn, &why), MESH_ERR_TLS);
  mesh_tls_conn_free(c.conn);
  close(fds[1]);

  settle(base);
  event_base_free(base);
  mesh_tls_config_unref(cfg);
  world_free(&w);
}
END_TEST

static int server_eof(void *a) { return ((pair *)a)->s.eof; }

START_TEST(graceful_close_sends_everything) {
  world w;
  world_make(&w);
  pair *p = pair_start(w.ccfg, w.scfg, EXPECT_DNS, NULL, NULL, MESH_TLS_CLIENT_AUTH_REQUIRED);
  run_until(p->base, both_connected, p, 5000);
  static char big[40000];
  memset(big, 'z', sizeof big);
  ck_assert_int_eq(bufferevent_write(mesh_tls_conn_bev(p->c.conn), big, sizeof big), 0);
  mesh_tls_conn_close(p->c.conn);
  p->c.conn = NULL;
  run_until(p->base, server_eof, p, 5000);
  ck_assert_uint_eq(p->s.len, sizeof big);
  ck_assert(!p->s.error);
  pair_free(p);
  world_free(&w);
}
END_TEST

/* Allocation failures while building a configuration leak nothing. */
typedef struct {
  world *w;
} alloc_arg;

static int build_config(mesh_ctx *ctx, void *arg) {
  world *w = ((alloc_arg *)arg)->w;
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  int rc = mesh_tls_opts_new(ctx, &o);
  if (rc) return rc;
  rc = mesh_tls_opts_set_credentials(o, w->server.chain, strlen(w->server.chain), w->server.key,
                                     strlen(w->server.key));
  if (!rc) rc = mesh_tls_opts_set_anchors(o, w->anchors, strlen(w->anchors));
  if (!rc) rc = mesh_tls_opts_set_alpn(o, "h2");
  if (!rc) rc = mesh_tls_config_new(o, NULL, &cfg);
  mesh_tls_opts_free(o);
  if (rc) return rc;
  mesh_tls_creds *creds;
  rc = mesh_tls_creds_new(ctx, cfg, &creds);
  mesh_tls_config_unref(cfg);
  if (rc) return rc;
  mesh_tls_creds_free(creds);
  return 0;
}

START_TEST(config_allocation_failures) {
  world w;
  world_make(&w);
  alloc_arg a = {&w};
  ck_assert(test_alloc_failures(build_config, &a) > 5);
  world_free(&w);
}
END_TEST

/* A session begun without a certificate on an OPTIONAL listener must not be
 * resumed on a REQUIRED one sharing the config (cache and tickets alike). */
START_TEST(resumption_cannot_skip_required_client_auth) {
  for (int tickets = 1; tickets >= 0; tickets--) {
    world w;
    world_make(&w);
    mesh_tls_config *scfg = config(w.ctx, &w.server, w.anchors, NULL, tickets);
    mesh_tls_config *anon = client_only(w.ctx, w.anchors, tickets);
    pair *p = pair_start(anon, scfg, EXPECT_DNS, NULL, "web:4143", MESH_TLS_CLIENT_AUTH_OPTIONAL);
    run_until(p->base, both_settled, p, 5000);
    ck_assert_int_eq(p->s.connected, 1);
    ck_assert_ptr_null(mesh_tls_conn_peer_identity(p->s.conn));
    pair_free(p);
    p = pair_start(anon, scfg, EXPECT_DNS, NULL, "web:4143", MESH_TLS_CLIENT_AUTH_REQUIRED);
    run_until(p->base, both_settled, p, 5000);
    ck_assert_msg(!p->s.connected, "tickets=%d: REQUIRED accepted a resumed session with no certificate",
                  tickets);
    pair_free(p);
    mesh_tls_config_unref(anon);
    mesh_tls_config_unref(scfg);
    world_free(&w);
  }
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("tls");
  TCase *tc = tcase_create("tls");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, config_rejects_bad_input);
  tcase_add_test(tc, mutual_handshake_and_data_both_ways);
  tcase_add_test(tc, spiffe_expected_identity_and_alpn_override);
  tcase_add_test(tc, wrong_server_identity);
  tcase_add_test(tc, client_cert_from_another_anchor);
  tcase_add_test(tc, expired_client_cert_and_two_anchors);
  tcase_add_test(tc, optional_mode_without_client_cert);
  tcase_add_test(tc, optional_mode_reports_no_identity);
  tcase_add_test(tc, sessions_are_resumed);
  tcase_add_test(tc, resumption_cannot_skip_required_client_auth);
  tcase_add_test(tc, swap_keeps_live_connections);
  tcase_add_test(tc, buffers_are_bounded);
  tcase_add_test(tc, handshake_timeout_and_early_close);
  tcase_add_test(tc, graceful_close_sends_everything);
  tcase_add_test(tc, config_allocation_failures);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* as any libevent application must */
  return test_main(make_suite());
}
