/* Test and benchmark helper for libmesh TLS: issues PEM files, runs an echo server, a client, or a handshake loop. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <mesh/mesh.h>

static mesh_ctx *ctx;

static void die(const char *what, int rc, const char *why) {
  fprintf(stderr, "tls_tool: %s: %s%s%s\n", what, mesh_strerror(rc), why ? ": " : "",
          why ? why : "");
  exit(2);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "tls_tool: %s: %s\n", path, strerror(errno));
    exit(2);
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (size_t r; buf && (r = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
    n += r;
    if (n + 1 == cap) buf = realloc(buf, cap *= 2);
  }
  fclose(f);
  if (!buf) exit(2);
  buf[n] = '\0';
  *len = n;
  return buf;
}

static void put(const char *dir, const char *name, const char *text) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
    fprintf(stderr, "tls_tool: %s: %s\n", path, strerror(errno));
    exit(2);
  }
}

/* ---- pki: every file the interop test and the benchmark need ---------- */

static void leaf(const char *dir, const char *name, const mesh_ca *issuer, const char *ns,
                 const char *sa, uint64_t at, uint64_t lifetime) {
  mesh_key *k;
  mesh_identity *id;
  mesh_csr *csr;
  mesh_certs *certs;
  const char *why = NULL;
  int rc;
  if ((rc = mesh_key_generate(ctx, &k))) die("key", rc, NULL);
  if ((rc = mesh_identity_new(ctx, ns, sa, NULL, NULL, &why, &id))) die("identity", rc, why);
  if ((rc = mesh_csr_new(k, id, &csr))) die("csr", rc, NULL);
  if ((rc = mesh_ca_set_lifetime((mesh_ca *)issuer, lifetime))) die("lifetime", rc, NULL);
  if ((rc = mesh_ca_issue(issuer, csr, id, at, &why, &certs))) die("issue", rc, why);
  char file[256];
  snprintf(file, sizeof file, "%s.pem", name);
  put(dir, file, mesh_certs_bundle_pem(certs, 0));
  snprintf(file, sizeof file, "%s.key", name);
  put(dir, file, mesh_key_pem(k));
  mesh_certs_free(certs);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  mesh_key_free(k);
}

static int cmd_pki(const char *dir) {
  uint64_t now = (uint64_t)time(NULL), old = now - 3 * 86400;
  mesh_ca *anchor, *issuer, *other_anchor, *other_issuer;
  int rc;
  /* Made three days ago (valid for a year) so that it can issue a
   * certificate that has already expired. */
  if ((rc = mesh_ca_init(ctx, NULL, NULL, old, 0, &anchor, &issuer))) die("ca", rc, NULL);
  if ((rc = mesh_ca_init(ctx, NULL, NULL, now, 0, &other_anchor, &other_issuer)))
    die("ca", rc, NULL);
  put(dir, "anchor.pem", mesh_certs_pem(mesh_ca_certs(anchor), 0));
  put(dir, "other-anchor.pem", mesh_certs_pem(mesh_ca_certs(other_anchor), 0));
  leaf(dir, "server", issuer, "emojivoto", "web", now, 86400);
  put(dir, "issuer.pem", mesh_certs_pem(mesh_ca_certs(issuer), 0)); /* for openssl's -cert_chain */
  put(dir, "other-issuer.pem", mesh_certs_pem(mesh_ca_certs(other_issuer), 0));
  leaf(dir, "client", issuer, "emojivoto", "vote-bot", now, 86400);
  leaf(dir, "expired", issuer, "emojivoto", "vote-bot", old + 86400, 3600);
  leaf(dir, "rogue", other_issuer, "emojivoto", "vote-bot", now, 86400);
  leaf(dir, "rogue-server", other_issuer, "emojivoto", "web", now, 86400);
  mesh_ca_free(anchor);
  mesh_ca_free(issuer);
  mesh_ca_free(other_anchor);
  mesh_ca_free(other_issuer);
  mesh_ctx_free(ctx);
  return 0;
}

static mesh_tls_config *load_config(const char *chain, const char *key, const char *anchors) {
  size_t cl, kl, al;
  char *c = slurp(chain, &cl), *k = slurp(key, &kl), *a = slurp(anchors, &al);
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  const char *why = NULL;
  int rc;
  if ((rc = mesh_tls_opts_new(ctx, &o))) die("opts", rc, NULL);
  if ((rc = mesh_tls_opts_set_credentials(o, c, cl, k, kl))) die("credentials", rc, NULL);
  if ((rc = mesh_tls_opts_set_anchors(o, a, al))) die("anchors", rc, NULL);
  if ((rc = mesh_tls_config_new(o, &why, &cfg))) die("config", rc, why);
  mesh_tls_opts_free(o);
  memset(k, 0, kl);
  free(c);
  free(k);
  free(a);
  return cfg;
}

/* ---- server: a libmesh TLS echo server -------------------------------- */

typedef struct {
  mesh_tls_config *cfg;
  int auth, close_after_echo;
} server;

typedef struct {
  server *srv;
  mesh_tls_conn *conn;
} sconn;

static void srv_read(struct bufferevent *bev, void *p) {
  sconn *s = p;
  struct evbuffer *in = bufferevent_get_input(bev);
  bufferevent_write_buffer(bev, in);
  if (s->srv->close_after_echo) {
    mesh_tls_conn_close(s->conn);
    free(s);
  }
}

static void srv_event(struct bufferevent *bev, short what, void *p) {
  sconn *s = p;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) {
    const char *id = mesh_tls_conn_peer_identity(s->conn), *alpn = mesh_tls_conn_alpn(s->conn);
    printf("accepted peer=%s alpn=%s resumed=%d\n", id ? id : "none", alpn ? alpn : "none",
           mesh_tls_conn_resumed(s->conn));
    fflush(stdout);
    return;
  }
  if (what & BEV_EVENT_ERROR) {
    const char *why;
    int err = mesh_tls_conn_error(s->conn, &why);
    printf("rejected err=%d (%s) why=%s\n", err, mesh_strerror(err), why);
    fflush(stdout);
  }
  mesh_tls_conn_free(s->conn);
  free(s);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *p) {
  server *srv = p;
  (void)sa;
  (void)len;
  sconn *s = calloc(1, sizeof *s);
  if (!s) exit(2);
  s->srv = srv;
  int rc = mesh_tls_conn_server_fd(srv->cfg, evconnlistener_get_base(l), fd, srv->auth, &s->conn);
  if (rc) die("server connection", rc, NULL);
  bufferevent_setcb(mesh_tls_conn_bev(s->conn), srv_read, NULL, srv_event, s);
}

static int cmd_server(int argc, char **argv) {
  /* port-file chain key anchors [--optional] [--close-after-echo] */
  server srv = {load_config(argv[1], argv[2], argv[3]), MESH_TLS_CLIENT_AUTH_REQUIRED, 0};
  for (int i = 4; i < argc; i++) {
    if (!strcmp(argv[i], "--optional")) srv.auth = MESH_TLS_CLIENT_AUTH_OPTIONAL;
    if (!strcmp(argv[i], "--close-after-echo")) srv.close_after_echo = 1;
  }
  struct event_base *base = event_base_new();
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct evconnlistener *l =
      evconnlistener_new_bind(base, on_accept, &srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 64,
                              (struct sockaddr *)&sin, sizeof sin);
  if (!l) die("listen", MESH_ERR_IO, strerror(errno));
  socklen_t sl = sizeof sin;
  getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&sin, &sl);
  char port[16];
  snprintf(port, sizeof port, "%u\n", (unsigned)ntohs(sin.sin_port));
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", argv[0]);
  FILE *f = fopen(tmp, "w");
  if (!f || fputs(port, f) < 0 || fclose(f) || rename(tmp, argv[0])) die("port file", MESH_ERR_IO, NULL);
  event_base_dispatch(base); /* until killed */
  return 0;
}

/* ---- client and bench --------------------------------------------------- */

typedef struct {
  struct event_base *base;
  mesh_tls_config *cfg;
  struct sockaddr_in addr;
  const char *expect, *alpn, *session_key;
  mesh_tls_conn *conn;
  int done, failed, resumed, send_ping;
  char reply[256];
} client;

static void cli_read(struct bufferevent *bev, void *p) {
  client *c = p;
  size_t have = strlen(c->reply);
  bufferevent_read(bev, c->reply + have, sizeof c->reply - 1 - have);
  if (strchr(c->reply, '\n')) c->done = 1;
}

static void cli_event(struct bufferevent *bev, short what, void *p) {
  client *c = p;
  if (what & BEV_EVENT_CONNECTED) {
    c->resumed = mesh_tls_conn_resumed(c->conn);
    if (c->send_ping)
      bufferevent_write(bev, "ping\n", 5);
    else
      c->done = 1;
    return;
  }
  if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
    c->failed = 1;
    c->done = 1;
  }
}

static void cli_connect(client *c) {
  struct bufferevent *u = bufferevent_socket_new(c->base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!u || bufferevent_socket_connect(u, (struct sockaddr *)&c->addr, sizeof c->addr))
    die("connect", MESH_ERR_CONNECT, strerror(errno));
  const char *why = NULL;
  int rc = mesh_tls_conn_client(c->cfg, u, c->expect, c->alpn, c->session_key, &why, &c->conn);
  if (rc) die("client connection", rc, why);
  c->done = c->failed = 0;
  c->reply[0] = '\0';
  bufferevent_setcb(mesh_tls_conn_bev(c->conn), cli_read, NULL, cli_event, c);
}

/* Free everything (so that sanitizer builds see no leak) and exit with rc. */
static int cli_finish(client *c, int rc) {
  if (c->conn) mesh_tls_conn_free(c->conn);
  for (int i = 0; i < 4; i++) event_base_loop(c->base, EVLOOP_NONBLOCK);
  mesh_tls_config_unref(c->cfg);
  event_base_free(c->base);
  mesh_ctx_free(ctx);
  return rc;
}

static void cli_run(client *c) {
  while (!c->done) event_base_loop(c->base, EVLOOP_ONCE);
}

static void cli_setup(client *c, char **argv) {
  /* port chain key anchors expect */
  memset(c, 0, sizeof *c);
  c->base = event_base_new();
  c->cfg = load_config(argv[1], argv[2], argv[3]);
  c->addr.sin_family = AF_INET;
  c->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  c->addr.sin_port = htons((uint16_t)atoi(argv[0]));
  c->expect = argv[4];
}

static int cmd_client(int argc, char **argv) {
  /* port chain key anchors expect [--alpn list] */
  client c;
  cli_setup(&c, argv);
  for (int i = 5; i + 1 < argc; i++)
    if (!strcmp(argv[i], "--alpn")) c.alpn = argv[i + 1];
  c.send_ping = 1;
  cli_connect(&c);
  cli_run(&c);
  if (c.failed && !mesh_tls_conn_established(c.conn)) {
    const char *why;
    int err = mesh_tls_conn_error(c.conn, &why);
    printf("error err=%d (%s) why=%s\n", err, mesh_strerror(err), why);
    return cli_finish(&c, 1);
  }
  const char *alpn = mesh_tls_conn_alpn(c.conn);
  char *nl = strchr(c.reply, '\n');
  if (nl) *nl = '\0';
  printf("connected peer=%s alpn=%s cipher=%s reply=%s\n", mesh_tls_conn_peer_identity(c.conn),
         alpn ? alpn : "none", mesh_tls_conn_cipher(c.conn), c.reply);
  mesh_tls_conn_close(c.conn);
  c.conn = NULL;
  event_base_loop(c.base, EVLOOP_NONBLOCK);
  return cli_finish(&c, nl ? 0 : 1);
}

static double mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmd_bench(int argc, char **argv) {
  /* port chain key anchors expect seconds [--resume] */
  client c;
  cli_setup(&c, argv);
  double secs = atof(argv[5]);
  int resume = argc > 6 && !strcmp(argv[6], "--resume");
  c.session_key = resume ? "bench" : NULL;
  long n = 0, resumed = 0, failed = 0;
  double start = mono(), end = start + secs;
  while (mono() < end) {
    cli_connect(&c);
    cli_run(&c);
    if (c.failed) failed++;
    else n++, resumed += c.resumed;
    mesh_tls_conn_close(c.conn); /* close_notify: openssl keeps the session resumable */
    c.conn = NULL;
    event_base_loop(c.base, EVLOOP_NONBLOCK);
    if (failed > 10) die("bench", MESH_ERR_TLS, "handshakes keep failing");
  }
  double took = mono() - start;
  printf("libmesh client %s handshakes: %ld in %.2f s = %.0f/s (resumed %ld, failed %ld)\n",
         resume ? "resumed" : "full", n, took, (double)n / took, resumed, failed);
  return cli_finish(&c, 0);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (mesh_ctx_new(&ctx)) return 2;
  if (argc == 3 && !strcmp(argv[1], "pki")) return cmd_pki(argv[2]);
  if (argc >= 6 && !strcmp(argv[1], "server")) return cmd_server(argc - 2, argv + 2);
  if (argc >= 7 && !strcmp(argv[1], "client")) return cmd_client(argc - 2, argv + 2);
  if (argc >= 8 && !strcmp(argv[1], "bench")) return cmd_bench(argc - 2, argv + 2);
  fprintf(stderr, "usage: tls_tool pki DIR\n"
                  "       tls_tool server PORT_FILE CHAIN KEY ANCHORS [--optional] [--close-after-echo]\n"
                  "       tls_tool client PORT CHAIN KEY ANCHORS EXPECT [--alpn LIST]\n"
                  "       tls_tool bench PORT CHAIN KEY ANCHORS EXPECT SECONDS [--resume]\n");
  return 2;
}
