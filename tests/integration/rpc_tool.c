/* Test helper for libmesh rpc: writes test PKI, runs an echo/stream server, makes one blocking call. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/mesh.h>

static mesh_ctx *ctx;

static void die(const char *what, int rc, const char *why) {
  fprintf(stderr, "rpc_tool: %s: %s%s%s\n", what, mesh_strerror(rc), why ? ": " : "",
          why ? why : "");
  exit(2);
}

static char *slurp(const char *dir, const char *name, size_t *len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "rpc_tool: %s: %s\n", path, strerror(errno));
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
    fprintf(stderr, "rpc_tool: %s: %s\n", path, strerror(errno));
    exit(2);
  }
}

/* ---- pki DIR: anchor.pem, server.{pem,key} (web), client.{pem,key} (vote-bot) */

static void leaf(const char *dir, const char *name, const mesh_ca *issuer, const char *sa) {
  mesh_key *k;
  mesh_identity *id;
  mesh_csr *csr;
  mesh_certs *certs;
  const char *why = NULL;
  int rc;
  if ((rc = mesh_key_generate(ctx, &k))) die("key", rc, NULL);
  if ((rc = mesh_identity_new(ctx, "emojivoto", sa, NULL, NULL, &why, &id))) die("identity", rc, why);
  if ((rc = mesh_csr_new(k, id, &csr))) die("csr", rc, NULL);
  if ((rc = mesh_ca_issue(issuer, csr, id, (uint64_t)time(NULL), &why, &certs)))
    die("issue", rc, why);
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
  mesh_ca *anchor, *issuer;
  int rc = mesh_ca_init(ctx, NULL, NULL, (uint64_t)time(NULL), 0, &anchor, &issuer);
  if (rc) die("ca", rc, NULL);
  put(dir, "anchor.pem", mesh_certs_pem(mesh_ca_certs(anchor), 0));
  leaf(dir, "server", issuer, "web");
  leaf(dir, "client", issuer, "vote-bot");
  mesh_ca_free(anchor);
  mesh_ca_free(issuer);
  return 0;
}

static mesh_tls_config *load_tls(const char *dir, const char *who) {
  size_t cl, kl, al;
  char name[64];
  snprintf(name, sizeof name, "%s.pem", who);
  char *c = slurp(dir, name, &cl);
  snprintf(name, sizeof name, "%s.key", who);
  char *k = slurp(dir, name, &kl);
  char *a = slurp(dir, "anchor.pem", &al);
  mesh_tls_opts *o;
  mesh_tls_config *cfg;
  const char *why = NULL;
  int rc;
  if ((rc = mesh_tls_opts_new(ctx, &o))) die("opts", rc, NULL);
  if ((rc = mesh_tls_opts_set_credentials(o, c, cl, k, kl))) die("credentials", rc, NULL);
  if ((rc = mesh_tls_opts_set_anchors(o, a, al))) die("anchors", rc, NULL);
  if ((rc = mesh_tls_config_new(o, &why, &cfg))) die("config", rc, why);
  mesh_tls_opts_free(o);
  free(c);
  free(k);
  free(a);
  return cfg;
}

/* ---- serve PORTFILE [--tls DIR] [--optional] [--body-max N] [--idle-ms N] */

/* /echo.Echo/Say: {"echo":<body>,"peer":<client identity or null>}; a body
 * that is not JSON gets 400 invalid_argument. */
static void h_say(void *ud, mesh_rpc_call *call) {
  (void)ud;
  size_t len;
  const char *body = mesh_rpc_call_body(call, &len);
  json_error_t err;
  json_t *in = json_loadb(body, len, JSON_DECODE_ANY, &err);
  if (!in) {
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT, err.text);
    return;
  }
  const char *peer = mesh_rpc_call_peer_identity(call);
  json_t *out = json_pack("{s:o,s:s?}", "echo", in, "peer", peer);
  char *text = json_dumps(out, JSON_COMPACT);
  mesh_rpc_reply(call, 200, text);
  free(text);
  json_decref(out);
}

/* /echo.Echo/Stream: {"n":N} -> N lines {"i":k}, then the end. */
static void h_stream(void *ud, mesh_rpc_call *call) {
  (void)ud;
  size_t len;
  const char *body = mesh_rpc_call_body(call, &len);
  json_t *in = json_loadb(body, len, 0, NULL);
  json_int_t n = json_integer_value(json_object_get(in, "n"));
  json_decref(in);
  if (n < 0 || n > 100000) {
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT, "n must be 0..100000");
    return;
  }
  char line[64];
  for (json_int_t i = 0; i < n; i++) {
    snprintf(line, sizeof line, "{\"i\":%lld}", (long long)i);
    if (mesh_rpc_send(call, line)) break;
  }
  mesh_rpc_end(call);
}

static int cmd_serve(int argc, char **argv) {
  const char *portfile = argv[0], *dir = NULL;
  int auth = MESH_TLS_CLIENT_AUTH_REQUIRED;
  mesh_rpc_server_opts *o;
  int rc = mesh_rpc_server_opts_new(ctx, &o);
  if (rc) die("opts", rc, NULL);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tls") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--optional")) auth = MESH_TLS_CLIENT_AUTH_OPTIONAL;
    else if (!strcmp(argv[i], "--body-max") && i + 1 < argc)
      rc = mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_BODY, strtoull(argv[++i], NULL, 10));
    else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc)
      rc = mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_IDLE_MS, strtoull(argv[++i], NULL, 10));
    else
      die("usage", MESH_ERR_INVALID, argv[i]);
    if (rc) die("limit", rc, argv[i]);
  }
  mesh_tls_config *cfg = dir ? load_tls(dir, "server") : NULL;
  if (cfg && (rc = mesh_rpc_server_opts_set_tls(o, cfg, auth))) die("tls", rc, NULL);
  struct event_base *base = event_base_new();
  mesh_rpc_server *s;
  if ((rc = mesh_rpc_server_new(ctx, base, o, &s))) die("server", rc, NULL);
  mesh_rpc_server_opts_free(o);
  uint16_t port;
  if ((rc = mesh_rpc_server_listen(s, "127.0.0.1:0", &port))) die("listen", rc, NULL);
  mesh_rpc_server_handle(s, "/echo.Echo/Say", h_say, NULL);
  mesh_rpc_server_handle(s, "/echo.Echo/Stream", h_stream, NULL);
  char text[16];
  snprintf(text, sizeof text, "%u\n", port);
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", portfile);
  FILE *f = fopen(tmp, "w");
  if (!f || fputs(text, f) < 0 || fclose(f) || rename(tmp, portfile)) /* appears whole */
    die("port file", MESH_ERR_IO, strerror(errno));
  event_base_dispatch(base); /* until killed */
  return 0;
}

/* ---- call ADDR PATH BODY [--tls DIR --expect ID] [--timeout MS] ----------- */

static int cmd_call(int argc, char **argv) {
  const char *addr = argv[0], *path = argv[1], *body = argv[2], *dir = NULL, *expect = NULL;
  uint32_t timeout = 5000;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--tls") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], "--expect") && i + 1 < argc) expect = argv[++i];
    else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) timeout = (uint32_t)atoi(argv[++i]);
    else die("usage", MESH_ERR_INVALID, argv[i]);
  }
  mesh_tls_config *cfg = dir ? load_tls(dir, "client") : NULL;
  int status;
  char *resp;
  const char *why = NULL;
  int rc = mesh_rpc_call_sync(ctx, cfg, addr, expect, path, body, strlen(body), timeout, &status,
                              &resp, &why);
  mesh_tls_config_unref(cfg);
  if (rc) {
    printf("error %d %s: %s\n", rc, mesh_strerror(rc), why ? why : "");
    return 1;
  }
  printf("status %d\n%s\n", status, resp);
  mesh_free_string(ctx, resp);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (mesh_ctx_new(&ctx)) return 2;
  if (argc == 3 && !strcmp(argv[1], "pki")) return cmd_pki(argv[2]);
  if (argc >= 3 && !strcmp(argv[1], "serve")) return cmd_serve(argc - 2, argv + 2);
  if (argc >= 5 && !strcmp(argv[1], "call")) return cmd_call(argc - 2, argv + 2);
  fprintf(stderr, "usage: rpc_tool pki DIR | serve PORTFILE [--tls DIR] [--optional] "
                  "[--body-max N] [--idle-ms N] | call ADDR PATH BODY [--tls DIR --expect ID] "
                  "[--timeout MS]\n");
  return 2;
}
