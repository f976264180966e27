/* mesh-identity: the certificate authority daemon; serves Identity.Certify over TLS, reloads its issuer, exposes metrics. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>
#include <jansson.h>

#include <mesh/mesh.h>
#include <mesh/metrics.h>
#include <mesh/rpc.h>

#include "daemon_http.h"
#include "daemon_log.h"

#define FILE_MAX 1048576u /* bytes of any file read from DIR */
#define POLL_MS 1000u     /* how often DIR's files are checked for changes */

/* The files an issuer reload reads, and what they looked like last time. */
enum { F_CA, F_ISSUER, F_KEY, NFILES };
static const char *const FILES[NFILES] = {"ca.crt", "issuer.crt", "issuer.key"};

typedef struct {
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime;
  bool exists;
} file_sig;

/* Failure classes, as mesh_certify_handle reports them, for the metric. */
static const char *const REASONS[] = {
    MESH_CERTIFY_CODE_INVALID_ARGUMENT, MESH_CERTIFY_CODE_UNAUTHENTICATED,
    MESH_CERTIFY_CODE_FAILED_PRECONDITION, MESH_CERTIFY_CODE_UNAVAILABLE,
    MESH_CERTIFY_CODE_INTERNAL};
#define NREASONS (sizeof REASONS / sizeof REASONS[0])

typedef struct {
  mesh_ctx *ctx;
  struct event_base *base;
  const char *dir;
  char trust_domain[254], cp_ns[64], audience[384];
  uint64_t lifetime_s, skew_s;
  mesh_ca *issuer;           /* NULL until one loads */
  mesh_key *token_pub;
  mesh_tls_creds *creds;     /* the serving certificate, swapped on renewal */
  uint64_t serving_renew_at; /* when to reissue the serving certificate */
  file_sig seen[NFILES];     /* the files behind the current issuer */
  file_sig pending[NFILES];  /* a change seen at the last poll, acted on once it settles */
  bool change_pending;
  mesh_metrics *metrics;
  mesh_metric_series *issued, *failed[NREASONS], *expiry, *reloads_ok, *reloads_refused;
} daemon_state;

static void rfc3339(uint64_t t, char buf[32]) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, 32, "@%llu", (unsigned long long)t);
}

/* ---- Files ------------------------------------------------------------- */

static bool path_of(const daemon_state *d, const char *name, char *buf, size_t size) {
  int n = snprintf(buf, size, "%s/%s", d->dir, name);
  return n > 0 && (size_t)n < size;
}

/* Reads DIR/name whole; *err gets a reason on failure. */
static char *read_file(const daemon_state *d, const char *name, size_t *len, const char **err) {
  char path[4096];
  if (!path_of(d, name, path, sizeof path)) {
    *err = "path too long";
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    *err = strerror(errno);
    return NULL;
  }
  char *buf = malloc(FILE_MAX + 2);
  size_t n = buf ? fread(buf, 1, FILE_MAX + 1, f) : 0;
  bool bad = !buf || ferror(f);
  int e = errno;
  fclose(f);
  if (bad || n > FILE_MAX) {
    *err = !buf ? "out of memory" : bad ? strerror(e) : "larger than 1 MiB";
    free(buf);
    return NULL;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

static void free_secret(char *buf, size_t len) {
  if (buf) memset(buf, 0, len);
  free(buf);
}

static void signature(const daemon_state *d, file_sig sig[NFILES]) {
  for (int i = 0; i < NFILES; i++) {
    char path[4096];
    struct stat st;
    memset(&sig[i], 0, sizeof sig[i]);
    if (path_of(d, FILES[i], path, sizeof path) && stat(path, &st) == 0) {
      sig[i] = (file_sig){.dev = st.st_dev, .ino = st.st_ino, .size = st.st_size,
                          .mtime = st.st_mtim, .exists = true};
    }
  }
}

static bool same_sig(const file_sig a[NFILES], const file_sig b[NFILES]) {
  for (int i = 0; i < NFILES; i++) {
    if (a[i].exists != b[i].exists || a[i].dev != b[i].dev || a[i].ino != b[i].ino ||
        a[i].size != b[i].size || a[i].mtime.tv_sec != b[i].mtime.tv_sec ||
        a[i].mtime.tv_nsec != b[i].mtime.tv_nsec)
      return false;
  }
  return true;
}

/* A Go duration as identity.json writes it ("24h0m0s", "20s") in seconds. */
static bool parse_duration(const char *s, uint64_t *ret) {
  uint64_t v;
  if (mesh_duration_parse_s(s, &v, NULL) < 0 || v > 100ull * 365 * 86400) return false;
  *ret = v;
  return true;
}

/* DIR/identity.json: trust domain, control plane namespace, lifetimes. */
static bool load_config(daemon_state *d) {
  char path[4096];
  if (!path_of(d, "identity.json", path, sizeof path)) return false;
  json_error_t je;
  json_t *c = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!c) {
    daemon_log("ERROR", "%s: %s (line %d)", path, je.text, je.line);
    return false;
  }
  const char *td = json_string_value(json_object_get(c, "trustDomain"));
  const char *ns = json_string_value(json_object_get(c, "controlPlaneNamespace"));
  const char *life = json_string_value(json_object_get(c, "issuanceLifetime"));
  const char *skew = json_string_value(json_object_get(c, "clockSkewAllowance"));
  bool ok = false;
  mesh_identity *probe = NULL;
  if (!td || !ns || strlen(td) >= sizeof d->trust_domain || strlen(ns) >= sizeof d->cp_ns)
    daemon_log("ERROR", "%s: needs trustDomain and controlPlaneNamespace strings", path);
  else if (mesh_identity_new(d->ctx, "x", "x", ns, td, NULL, &probe) < 0)
    daemon_log("ERROR", "%s: trustDomain %s or controlPlaneNamespace %s is not a valid name", path,
           td, ns);
  else if (life && !parse_duration(life, &d->lifetime_s))
    daemon_log("ERROR", "%s: issuanceLifetime '%s' is not a duration", path, life);
  else if (skew && !parse_duration(skew, &d->skew_s))
    daemon_log("ERROR", "%s: clockSkewAllowance '%s' is not a duration", path, skew);
  else {
    snprintf(d->trust_domain, sizeof d->trust_domain, "%s", td);
    snprintf(d->cp_ns, sizeof d->cp_ns, "%s", ns);
    ok = true;
  }
  mesh_identity_free(probe);
  json_decref(c);
  return ok;
}

static bool load_token_key(daemon_state *d) {
  size_t len = 0;
  const char *err = NULL, *why = NULL;
  char *buf = read_file(d, "token.pub", &len, &err);
  if (!buf) {
    daemon_log("ERROR", "%s/token.pub: %s", d->dir, err);
    return false;
  }
  int rc = mesh_key_parse(d->ctx, buf, len, &why, &d->token_pub);
  free(buf);
  if (rc < 0) {
    daemon_log("ERROR", "%s/token.pub: not a usable public key: %s", d->dir,
           why ? why : mesh_strerror(rc));
    return false;
  }
  return true;
}

/* ---- The serving certificate ------------------------------------------ */

/* A fresh key and certificate for identity.<cp-ns>.serviceaccount.identity.<cp-ns>.<td>
 * from issuer, trusted under anchors_pem, installed for new connections. */
static bool issue_serving(daemon_state *d, const mesh_ca *issuer, const char *anchors_pem,
                          size_t anchors_len) {
  mesh_key *key = NULL;
  mesh_identity *id = NULL;
  mesh_csr *csr = NULL;
  mesh_certs *chain = NULL;
  mesh_tls_opts *opts = NULL;
  mesh_tls_config *cfg = NULL;
  const char *why = NULL;
  uint64_t now = (uint64_t)time(NULL);
  int rc = mesh_key_generate(d->ctx, &key);
  if (!rc) rc = mesh_identity_new(d->ctx, d->cp_ns, "identity", d->cp_ns, d->trust_domain, &why, &id);
  if (!rc) rc = mesh_csr_new(key, id, &csr);
  if (!rc) rc = mesh_ca_issue(issuer, csr, id, now, &why, &chain);
  if (!rc) rc = mesh_tls_opts_new(d->ctx, &opts);
  if (!rc) {
    const char *bundle = mesh_certs_bundle_pem(chain, 0), *kp = mesh_key_pem(key);
    rc = mesh_tls_opts_set_credentials(opts, bundle, strlen(bundle), kp, strlen(kp));
  }
  if (!rc) rc = mesh_tls_opts_set_anchors(opts, anchors_pem, anchors_len);
  if (!rc) rc = mesh_tls_opts_set_alpn(opts, "h2");
  if (!rc) rc = mesh_tls_config_new(opts, &why, &cfg);
  if (!rc) rc = mesh_tls_creds_set(d->creds, cfg);
  if (!rc) {
    uint64_t nb = mesh_certs_not_before(chain, 0), na = mesh_certs_not_after(chain, 0);
    d->serving_renew_at = mesh_identity_renew_at(nb, na, now);
    char until[32];
    rfc3339(na, until);
    daemon_log("INFO", "serving certificate for %s, valid until %s", mesh_identity_dns(id), until);
  } else {
    daemon_log("ERROR", "cannot issue the serving certificate: %s", why ? why : mesh_strerror(rc));
  }
  mesh_tls_config_unref(cfg);
  mesh_tls_opts_free(opts);
  mesh_certs_free(chain);
  mesh_csr_free(csr);
  mesh_identity_free(id);
  mesh_key_free(key);
  return rc == 0;
}

/* ---- Issuer (re)loading ------------------------------------------------ */

/* Loads DIR's anchors, issuer and key; on any problem the current issuer
 * stays and the reason is logged. Returns whether the new one took over. */
static bool reload_issuer(daemon_state *d, const char *trigger) {
  file_sig sig[NFILES];
  signature(d, sig);
  char *buf[NFILES] = {NULL};
  size_t len[NFILES] = {0};
  const char *err = NULL, *why = NULL, *problem = NULL;
  char detail[512] = "";
  mesh_certs *anchors = NULL;
  mesh_ca *ca = NULL;
  uint64_t now = (uint64_t)time(NULL);
  int rc = 0;
  for (int i = 0; i < NFILES && !problem; i++) {
    buf[i] = read_file(d, FILES[i], &len[i], &err);
    if (!buf[i]) {
      snprintf(detail, sizeof detail, "%s/%s: %s", d->dir, FILES[i], err);
      problem = detail;
    }
  }
  if (!problem && (rc = mesh_certs_parse(d->ctx, buf[F_CA], len[F_CA], &why, &anchors)) < 0) {
    snprintf(detail, sizeof detail, "%s/ca.crt: not a PEM certificate file: %s", d->dir,
             why ? why : mesh_strerror(rc));
    problem = detail;
  }
  if (!problem && (rc = mesh_ca_new(d->ctx, buf[F_ISSUER], len[F_ISSUER], buf[F_KEY], len[F_KEY],
                                    &why, &ca)) < 0) {
    snprintf(detail, sizeof detail, "%s/issuer.crt with issuer.key: %s", d->dir,
             why ? why : mesh_strerror(rc));
    problem = detail;
  }
  if (!problem && (rc = mesh_certs_verify(mesh_ca_certs(ca), anchors, now, &why)) < 0) {
    snprintf(detail, sizeof detail,
             "%s/issuer.crt (%s) is not a valid issuer under the trust anchors in ca.crt: %s",
             d->dir, mesh_certs_subject(mesh_ca_certs(ca), 0), why ? why : mesh_strerror(rc));
    problem = detail;
  }
  if (!problem && ((rc = mesh_ca_set_lifetime(ca, d->lifetime_s)) < 0 ||
                   (rc = mesh_ca_set_clock_skew(ca, d->skew_s)) < 0)) {
    snprintf(detail, sizeof detail, "identity.json lifetimes: %s", mesh_strerror(rc));
    problem = detail;
  }
  /* The service's own certificate must come from the issuer it serves with. */
  if (!problem && !issue_serving(d, ca, buf[F_CA], len[F_CA])) {
    snprintf(detail, sizeof detail, "the new issuer cannot issue the serving certificate");
    problem = detail;
  }
  memcpy(d->seen, sig, sizeof d->seen);
  /* The first load is not a reload: the metric counts rotations. */
  bool counted = strcmp(trigger, "start") != 0;
  if (problem) {
    if (counted) mesh_metrics_inc(d->reloads_refused, 1);
    daemon_log("ERROR", "issuer reload (%s) refused: %s; %s", trigger, problem,
           d->issuer ? "still serving with the previous issuer" : "no issuer: Certify is unavailable");
  } else {
    const mesh_certs *c = mesh_ca_certs(ca);
    char until[32];
    rfc3339(mesh_certs_not_after(c, 0), until);
    daemon_log("INFO", "issuer loaded (%s): %s, serial %s, issued by %s, valid until %s", trigger,
           mesh_certs_subject(c, 0), mesh_certs_serial(c, 0), mesh_certs_issuer(c, 0), until);
    /* Single-threaded: no issuance is in flight while the issuer is swapped. */
    mesh_ca_free(d->issuer);
    d->issuer = ca;
    ca = NULL;
    if (counted) mesh_metrics_inc(d->reloads_ok, 1);
    mesh_metrics_set(d->expiry, (int64_t)mesh_certs_not_after(c, 0));
  }
  mesh_ca_free(ca);
  mesh_certs_free(anchors);
  for (int i = 0; i < NFILES; i++) {
    if (i == F_KEY) free_secret(buf[i], len[i]);
    else free(buf[i]);
  }
  return problem == NULL;
}

/* ---- Certify ------------------------------------------------------------ */

static int status_of(const char *code) {
  if (!strcmp(code, MESH_CERTIFY_CODE_INVALID_ARGUMENT)) return 400;
  if (!strcmp(code, MESH_CERTIFY_CODE_UNAUTHENTICATED)) return 401;
  if (!strcmp(code, MESH_CERTIFY_CODE_FAILED_PRECONDITION)) return 412;
  if (!strcmp(code, MESH_CERTIFY_CODE_UNAVAILABLE)) return 503;
  return 500;
}

static void on_certify(void *ud, mesh_rpc_call *call) {
  daemon_state *d = ud;
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len), *code = NULL, *why = NULL;
  const char *peer = mesh_rpc_call_peer_address(call);
  char *resp = NULL;
  int rc = mesh_certify_handle(d->issuer, d->token_pub, d->audience, d->trust_domain, d->cp_ns,
                               body, len, (uint64_t)time(NULL), &resp, &code, &why);
  if (rc == 0) {
    mesh_metrics_inc(d->issued, 1);
    daemon_log("INFO", "issued a certificate to %s", peer ? peer : "?");
    mesh_rpc_reply(call, 200, resp);
    mesh_free_string(d->ctx, resp);
    return;
  }
  if (!code) code = MESH_CERTIFY_CODE_INTERNAL;
  if (!why) why = mesh_strerror(rc);
  for (size_t i = 0; i < NREASONS; i++)
    if (!strcmp(REASONS[i], code)) mesh_metrics_inc(d->failed[i], 1);
  daemon_log("INFO", "refused a Certify from %s: %s: %s", peer ? peer : "?", code, why);
  mesh_rpc_reply_error(call, status_of(code), code, why);
}

/* ---- Admin -------------------------------------------------------------- */

static void admin_metrics(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  char *text = NULL;
  size_t len = 0;
  struct evbuffer *b = evbuffer_new();
  if (!b || mesh_metrics_render(d->metrics, &text, &len) < 0 ||
      evbuffer_add(b, text, len) < 0) {
    evhttp_send_error(req, 500, NULL);
  } else {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", b);
  }
  mesh_free_string(d->ctx, text);
  if (b) evbuffer_free(b);
}

/* The families /metrics shows, each series made up front so that a zero is
 * rendered before the first event (and alert rules see the series). */
static bool metrics_setup(daemon_state *d) {
  mesh_metric_family *issued, *failed, *expiry, *reloads;
  const char *reason = "reason", *result = "result";
  int rc = mesh_metrics_new(d->ctx, &d->metrics);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "identity_cert_issued_total",
                              "Workload certificates issued.", NULL, 0, &issued);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "identity_cert_failed_total",
                              "Certify requests refused, by reason (the error code).", &reason, 1,
                              &failed);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "identity_issuer_expiry_timestamp_seconds",
                            "When the current issuer certificate expires (seconds since the epoch).",
                            NULL, 0, &expiry);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "identity_issuer_reloads_total",
                              "Issuer reloads after the start (SIGHUP or changed files), by result.",
                              &result, 1, &reloads);
  if (!rc) rc = mesh_metrics_series(issued, NULL, 0, &d->issued);
  for (size_t i = 0; !rc && i < NREASONS; i++)
    rc = mesh_metrics_series(failed, &REASONS[i], 1, &d->failed[i]);
  if (!rc) rc = mesh_metrics_series(expiry, NULL, 0, &d->expiry);
  const char *ok = "ok", *refused = "refused";
  if (!rc) rc = mesh_metrics_series(reloads, &ok, 1, &d->reloads_ok);
  if (!rc) rc = mesh_metrics_series(reloads, &refused, 1, &d->reloads_refused);
  if (!rc) rc = mesh_metrics_process(d->metrics);
  if (rc) daemon_log("ERROR", "cannot set up the metrics: %s", mesh_strerror(rc));
  return rc == 0;
}

static void metrics_free(daemon_state *d) {
  mesh_metrics_series_unref(d->issued);
  for (size_t i = 0; i < NREASONS; i++) mesh_metrics_series_unref(d->failed[i]);
  mesh_metrics_series_unref(d->expiry);
  mesh_metrics_series_unref(d->reloads_ok);
  mesh_metrics_series_unref(d->reloads_refused);
  mesh_metrics_free(d->metrics);
}

static void admin_text(struct evhttp_request *req, int status, const char *text) {
  struct evbuffer *b = evbuffer_new();
  if (b) evbuffer_add_printf(b, "%s\n", text);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
  evhttp_send_reply(req, status, status == 200 ? "OK" : "Service Unavailable", b);
  if (b) evbuffer_free(b);
}

static void admin_ready(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  uint64_t now = (uint64_t)time(NULL);
  bool ok = d->issuer && now <= mesh_certs_not_after(mesh_ca_certs(d->issuer), 0);
  admin_text(req, ok ? 200 : 503, ok ? "ready" : "not ready: no valid issuer");
}

static void admin_live(struct evhttp_request *req, void *ud) { admin_text(req, 200, "live"); }

static void admin_other(struct evhttp_request *req, void *ud) {
  admin_text(req, 404, "not found: try /metrics, /ready or /live");
}

static struct evhttp *admin_start(daemon_state *d, const char *addr) {
  uint16_t bound;
  struct evhttp *http = daemon_http_listen(d->base, "--admin", addr, &bound);
  if (!http) return NULL;
  evhttp_set_cb(http, "/metrics", admin_metrics, d);
  evhttp_set_cb(http, "/ready", admin_ready, d);
  evhttp_set_cb(http, "/live", admin_live, d);
  evhttp_set_gencb(http, admin_other, d);
  daemon_log("INFO", "admin (/metrics /ready /live) listening on %.*s:%u", (int)(strrchr(addr, ':') - addr), addr,
             (unsigned)bound);
  return http;
}

/* ---- Loop --------------------------------------------------------------- */

/* Every second: renew the serving certificate when due, and reload the
 * issuer once a change to its files has held still for a whole poll (so a
 * copy in progress, or a certificate replaced before its key, is not
 * mistaken for a bad issuer). */
static void on_tick(evutil_socket_t fd, short what, void *ud) {
  daemon_state *d = ud;
  file_sig now_sig[NFILES];
  signature(d, now_sig);
  if (same_sig(now_sig, d->seen)) {
    d->change_pending = false;
  } else if (d->change_pending && same_sig(now_sig, d->pending)) {
    d->change_pending = false;
    reload_issuer(d, "files changed");
  } else {
    memcpy(d->pending, now_sig, sizeof d->pending);
    d->change_pending = true;
  }
  if (d->issuer && (uint64_t)time(NULL) >= d->serving_renew_at) {
    size_t len = 0;
    const char *err = NULL;
    char *anchors = read_file(d, "ca.crt", &len, &err);
    if (anchors) issue_serving(d, d->issuer, anchors, len);
    else daemon_log("ERROR", "%s/ca.crt: %s; serving certificate not renewed", d->dir, err);
    free(anchors);
  }
}

static void on_signal(evutil_socket_t sig, short what, void *ud) {
  daemon_state *d = ud;
  if (sig == SIGHUP) {
    reload_issuer(d, "SIGHUP");
    return;
  }
  daemon_log("INFO", "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  event_base_loopexit(d->base, NULL);
}

static void usage(FILE *out) {
  fprintf(out,
          "mesh-identity: the mesh's certificate authority. Workloads prove who they are\n"
          "with a token and get a certificate (POST /identity.Identity/Certify, doc/protocol.md).\n\n"
          "Usage:\n  mesh-identity --dir DIR [flags]\n\n"
          "Flags:\n"
          "      --dir DIR          what `meshctl identity init` wrote: ca.crt, issuer.crt,\n"
          "                         issuer.key, token.pub, identity.json\n"
          "      --listen ADDR      Certify over TLS (default 0.0.0.0:8080; port 0: any)\n"
          "      --admin ADDR       /metrics, /ready, /live over HTTP (default 0.0.0.0:9990)\n"
          "      --audience AUD     the audience tokens must carry\n"
          "                         (default identity.<cp-namespace>.<trust-domain>)\n"
          "  -h, --help             show this help\n\n"
          "The issuer is reloaded on SIGHUP and when DIR's ca.crt, issuer.crt or issuer.key\n"
          "change; a new issuer that does not check out is refused and the old one stays.\n"
          "token.pub and identity.json are read at start only. SIGTERM or SIGINT stops the\n"
          "service. Logs go to standard error.\n");
}

int main(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_LISTEN, OPT_ADMIN, OPT_AUD };
  static const struct option opts[] = {
      {"dir", required_argument, NULL, OPT_DIR},
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"admin", required_argument, NULL, OPT_ADMIN},
      {"audience", required_argument, NULL, OPT_AUD},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *listen = "0.0.0.0:8080", *admin = "0.0.0.0:9990", *aud = NULL;
  daemon_state d;
  memset(&d, 0, sizeof d);
  d.lifetime_s = MESH_CA_DEFAULT_LIFETIME_S;
  d.skew_s = MESH_CA_DEFAULT_CLOCK_SKEW_S;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: d.dir = optarg; break;
    case OPT_LISTEN: listen = optarg; break;
    case OPT_ADMIN: admin = optarg; break;
    case OPT_AUD: aud = optarg; break;
    case 'h': usage(stdout); return 0;
    default: fprintf(stderr, "Run 'mesh-identity --help' for usage.\n"); return 2;
    }
  }
  if (optind < argc || !d.dir) {
    fprintf(stderr, "mesh-identity: %s\nRun 'mesh-identity --help' for usage.\n",
            d.dir ? "unexpected argument" : "give the identity directory with --dir DIR");
    return 2;
  }
  if (aud && (!*aud || strlen(aud) > 256)) {
    fprintf(stderr, "mesh-identity: --audience must be 1 to 256 characters\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* libevent socket code: a closed peer must not kill us */

  int status = 1;
  mesh_rpc_server_opts *ro = NULL;
  mesh_rpc_server *srv = NULL;
  struct evhttp *http = NULL;
  struct event *tick = NULL, *sigs[3] = {NULL};
  if (mesh_ctx_new(&d.ctx) < 0 || !(d.base = event_base_new())) {
    daemon_log("ERROR", "out of memory");
    goto done;
  }
  mesh_ctx_set_log(d.ctx, MESH_LOG_INFO, daemon_log_lib, "libmesh: ");
  if (!metrics_setup(&d) || !load_config(&d) || !load_token_key(&d)) goto done;
  if (aud) snprintf(d.audience, sizeof d.audience, "%s", aud);
  else snprintf(d.audience, sizeof d.audience, "identity.%s.%s", d.cp_ns, d.trust_domain);
  if (strlen(d.audience) > 256) {
    daemon_log("ERROR", "the audience %s is longer than 256 characters: give a shorter --audience",
           d.audience);
    goto done;
  }
  int rc = mesh_tls_creds_new(d.ctx, NULL, &d.creds);
  if (rc < 0) {
    daemon_log("ERROR", "cannot make the credential holder: %s", mesh_strerror(rc));
    goto done;
  }
  /* Without a working issuer there is nothing to serve: fail fast at start,
   * unlike a reload, where the old issuer keeps serving. */
  if (!reload_issuer(&d, "start")) goto done;

  if ((rc = mesh_rpc_server_opts_new(d.ctx, &ro)) < 0 ||
      /* Workloads have no certificate before their first Certify. */
      (rc = mesh_rpc_server_opts_set_tls_creds(ro, d.creds, MESH_TLS_CLIENT_AUTH_OPTIONAL)) < 0 ||
      (rc = mesh_rpc_server_opts_set_limit(ro, MESH_RPC_LIMIT_BODY, MESH_CERTIFY_REQUEST_MAX)) < 0 ||
      (rc = mesh_rpc_server_new(d.ctx, d.base, ro, &srv)) < 0 ||
      (rc = mesh_rpc_server_handle(srv, MESH_CERTIFY_PATH, on_certify, &d)) < 0) {
    daemon_log("ERROR", "cannot set up the Certify server: %s", mesh_strerror(rc));
    goto done;
  }
  uint16_t port = 0;
  if ((rc = mesh_rpc_server_listen(srv, listen, &port)) < 0) {
    daemon_log("ERROR", "--listen %s: %s%s%s", listen, mesh_strerror(rc), rc == MESH_ERR_IO ? ": " : "",
           rc == MESH_ERR_IO ? strerror(errno) : "");
    goto done;
  }
  daemon_log("INFO", "Certify (%s) listening on %.*s:%u over TLS, audience %s, trust domain %s",
         MESH_CERTIFY_PATH, (int)(strrchr(listen, ':') - listen), listen, port, d.audience,
         d.trust_domain);
  if (!(http = admin_start(&d, admin))) goto done;

  const struct timeval poll = {POLL_MS / 1000, (POLL_MS % 1000) * 1000};
  tick = event_new(d.base, -1, EV_PERSIST, on_tick, &d);
  const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
  for (int i = 0; i < 3; i++) {
    sigs[i] = evsignal_new(d.base, signums[i], on_signal, &d);
    if (!sigs[i] || evsignal_add(sigs[i], NULL) < 0) goto done;
  }
  if (!tick || event_add(tick, &poll) < 0) goto done;
  event_base_dispatch(d.base);
  status = 0;
done:
  for (int i = 0; i < 3; i++)
    if (sigs[i]) event_free(sigs[i]);
  if (tick) event_free(tick);
  if (http) evhttp_free(http);
  mesh_rpc_server_free(srv);
  mesh_rpc_server_opts_free(ro);
  mesh_tls_creds_free(d.creds);
  mesh_ca_free(d.issuer);
  mesh_key_free(d.token_pub);
  metrics_free(&d);
  if (d.base) event_base_free(d.base);
  mesh_ctx_free(d.ctx);
  if (status == 0) daemon_log("INFO", "stopped");
  return status;
}
