/* mesh-destination: the discovery daemon; serves Destination.Get and GetProfile and the inbound policy streams from the store, exposes metrics. */
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
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>

#include <mesh/mesh.h>
#include <mesh/metrics.h>
#include <mesh/rpc.h>
#include <mesh/store.h>

#include "daemon_flag.h"
#include "daemon_http.h"
#include "daemon_log.h"
#include "dns.h"
#include "etcd.h"
#include "registry.h"

#define GET_PATH "/io.linkerd.proxy.destination.Destination/Get"
#define PROFILE_PATH "/io.linkerd.proxy.destination.Destination/GetProfile"
/* linkerd2-proxy-api's inbound.proto has WatchPort (one port, a compiled
 * Server); this method of the same service carries a whole workload's
 * policy documents, for the client to compile (doc/protocol.md). */
#define POLICY_PATH "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchWorkload"
#define WORKLOAD_MAX_BYTES 512u /* of a requested "namespace:name" */
#define PATH_MAX_BYTES 512u   /* of a requested authority */
#define STREAMS_PER_CONN 1000u /* a proxy watches one stream per destination it talks to */
#define DEFAULT_MAX_STREAMS 20000u /* watches in all: each holds its last answer */
#define ERROR_LABEL_MAX 256u   /* bytes of the last store error shown as a label */
#define FILE_MAX 1048576u      /* bytes of a certificate or key file */

typedef struct watch watch;

typedef struct {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_store *store;
  dst_etcd *etcd;           /* the store's source with --etcd-endpoints (NULL: --store-dir) */
  dst_dns *dns;             /* names outside the store (NULL: --no-dns-fallback) */
  dst_registry *registry;   /* workload registrations (Registry.Register) */
  const char *identity_dir; /* NULL: plaintext */
  mesh_tls_creds *creds;    /* the serving certificate, swapped on SIGHUP */
  watch *watches; /* every open stream: Get, GetProfile, WatchWorkload */
  size_t nget, nprofile, npolicy, max_streams;
  mesh_metrics *metrics;
  mesh_metric_family *error_family;
  mesh_metric_series *reloads_ok, *reloads_refused, *failing, *generation, *streams_get,
      *streams_profile, *streams_policy, *updates, *error_info, *connected;
  uint64_t seen_ok, seen_refused;
  char error_shown[ERROR_LABEL_MAX];
} daemon_state;

enum { W_GET, W_PROFILE, W_POLICY };

/* One open stream: what the client asked, and what it was last sent. */
struct watch {
  daemon_state *d;
  mesh_rpc_call *call;
  int kind; /* W_* */
  bool dead; /* a send failed: the close callback is on its way */
  char *path, *ns; /* WatchWorkload: path is the workload's name */
  mesh_resolution *last; /* Get */
  dst_dns_watch *dns;    /* Get of a name outside the store: followed in DNS */
  dst_dns_answer *last_dns; /* what the stream was last told from DNS */
  uint16_t dns_port;
  char *last_profile;    /* GetProfile: the last message (libmesh's allocator) */
  char *last_policy;     /* WatchWorkload: the last message (malloc) */
  watch *prev, *next;
};

/* ---- Logging ----------------------------------------------------------- */

/* The resolver and the etcd client log through this, in the daemons' format. */
static void dns_log(const char *level, const char *line) { daemon_log(level, "%s", line); }

/* ---- Streams ------------------------------------------------------------ */

static const char *path_or(const char *p) { return p ? p : "?"; }
static const char *const kind_names[] = {"Get", "GetProfile", "WatchWorkload"};

/* The stream count of a kind of watch, and its gauge. */
static size_t *count_of(daemon_state *d, int kind, mesh_metric_series **gauge) {
  *gauge = kind == W_GET ? d->streams_get : kind == W_PROFILE ? d->streams_profile : d->streams_policy;
  return kind == W_GET ? &d->nget : kind == W_PROFILE ? &d->nprofile : &d->npolicy;
}

static void watch_free(watch *w) {
  daemon_state *d = w->d;
  if (w->prev) w->prev->next = w->next;
  else d->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  mesh_metric_series *gauge;
  size_t *count = count_of(d, w->kind, &gauge);
  (*count)--;
  mesh_metrics_set(gauge, (int64_t)*count);
  mesh_resolution_free(w->last);
  dst_dns_watch_free(w->dns);
  dst_dns_answer_unref(w->last_dns);
  mesh_free_string(d->ctx, w->last_profile);
  free(w->last_policy);
  free(w->path);
  free(w->ns);
  free(w);
}

static void on_close(void *ud, mesh_rpc_call *call) {
  watch *w = ud;
  mesh_rpc_end(call);
  watch_free(w);
}

/* Sends one message; a failure marks the stream dead (its close callback follows). */
static void send_line(watch *w, const char *line, size_t len) {
  if (w->dead) return;
  int rc = mesh_rpc_send_n(w->call, line, len);
  if (rc < 0) {
    w->dead = true;
    daemon_log("INFO", "stream %s for %s stopped: %s", kind_names[w->kind], w->path, mesh_strerror(rc));
    return;
  }
  mesh_metrics_inc(w->d->updates, 1);
}

/* Sends each line of ndjson text. */
static void send_lines(watch *w, const char *text) {
  while (text && *text) {
    const char *nl = strchr(text, '\n');
    size_t len = nl ? (size_t)(nl - text) : strlen(text);
    if (len) send_line(w, text, len);
    text += len + (nl ? 1 : 0);
  }
}

/* The WatchWorkload message for w's workload in snap, malloc'd into *ret.
 * A workload that left the store keeps its stream: it is told so (exists
 * false, no documents) and gets its policy again if it comes back;
 * unless unknown_ok, that is MESH_ERR_NOT_FOUND instead. */
static int policy_message(const watch *w, const mesh_snapshot *snap, bool unknown_ok, char **ret) {
  char *m = NULL;
  int rc = mesh_snapshot_policy_json(snap, w->ns, w->path, &m);
  if (rc == 0) {
    *ret = strdup(m);
    mesh_free_string(w->d->ctx, m);
    return *ret ? 0 : MESH_ERR_NOMEM;
  }
  if (rc != MESH_ERR_NOT_FOUND || !unknown_ok) return rc;
  json_t *j = json_pack("{s:{s:s,s:s},s:b,s:[]}", "workload", "namespace", w->ns, "name", w->path,
                        "exists", 0, "documents");
  *ret = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return *ret ? 0 : MESH_ERR_NOMEM;
}

/* ---- Names outside the store (dns.c) ---------------------------------------- */

/* The name's DNS answer changed: w gets the difference from what it was told. */
static void on_dns_change(void *ud) {
  watch *w = ud;
  const dst_dns_answer *cur = dst_dns_watch_answer(w->dns);
  char *msgs = NULL;
  if (w->dead || !cur || cur == w->last_dns ||
      dst_dns_messages(w->last_dns, cur, w->dns_port, &msgs) < 0)
    return;
  send_lines(w, msgs);
  free(msgs);
  dst_dns_answer_unref(w->last_dns);
  w->last_dns = dst_dns_answer_ref(cur);
}

/* w asks for a name the store does not know: follow it in DNS if it is a
 * name for DNS. 1 when followed (*first, malloc'd, is what to send at once,
 * NULL until the name's first answer), 0 when it is not DNS's,
 * MESH_ERR_LIMIT, MESH_ERR_NOMEM. */
static int dns_follow(watch *w, char **first) {
  char host[256];
  if (!w->d->dns || !dst_dns_wants(w->d->dns, w->path, host, sizeof host, &w->dns_port)) return 0;
  int rc = dst_dns_watch_new(w->d->dns, host, on_dns_change, w, &w->dns);
  if (rc < 0) return rc;
  const dst_dns_answer *a = dst_dns_watch_answer(w->dns);
  if (a && dst_dns_messages(NULL, a, w->dns_port, first) == 0) w->last_dns = dst_dns_answer_ref(a);
  return 1;
}

/* The store took w's name: the addresses DNS gave are taken back. */
static void dns_unfollow(watch *w) {
  char *msgs = NULL;
  if (dst_dns_messages(w->last_dns, NULL, w->dns_port, &msgs) == 0) send_lines(w, msgs);
  free(msgs);
  dst_dns_watch_free(w->dns);
  dst_dns_answer_unref(w->last_dns);
  w->dns = NULL;
  w->last_dns = NULL;
}

/* What the stream should carry now, from snap; sends the difference. */
static void refresh(watch *w, const mesh_snapshot *snap) {
  daemon_state *d = w->d;
  if (w->dead) return;
  if (w->kind == W_POLICY) {
    char *p = NULL;
    if (policy_message(w, snap, true, &p) < 0) return;
    if (!w->last_policy || strcmp(p, w->last_policy) != 0) send_line(w, p, strlen(p));
    free(w->last_policy);
    w->last_policy = p;
    return;
  }
  if (w->kind == W_PROFILE) {
    char *p = NULL;
    if (mesh_snapshot_profile_json(snap, w->path, w->ns, &p) < 0) return;
    if (!w->last_profile || strcmp(p, w->last_profile) != 0) send_line(w, p, strlen(p));
    mesh_free_string(d->ctx, w->last_profile);
    w->last_profile = p;
    return;
  }
  mesh_resolution *r = NULL;
  char *msgs = NULL;
  if (mesh_snapshot_resolve(snap, w->path, w->ns, &r) < 0) return;
  if (w->dns && !mesh_resolution_exists(r)) { /* still DNS's: the store has nothing to say */
    mesh_resolution_free(w->last);
    w->last = r;
    return;
  }
  if (w->dns) dns_unfollow(w);
  if (mesh_resolution_json_diff(w->last, r, &msgs) < 0) {
    mesh_resolution_free(r);
    return;
  }
  send_lines(w, msgs);
  mesh_free_string(d->ctx, msgs);
  mesh_resolution_free(w->last);
  w->last = r;
  char *first = NULL;
  /* The store let the name go (or DNS had no room for it before). */
  if (!mesh_resolution_exists(r) && dns_follow(w, &first) > 0) send_lines(w, first);
  free(first);
}

static void on_store_change(void *ud, mesh_store *st) {
  daemon_state *d = ud;
  mesh_snapshot *snap = mesh_store_snapshot(st);
  size_t n = 0;
  if (d->dns && dst_dns_set_snapshot(d->dns, snap) < 0)
    daemon_log("WARN", "out of memory: DNS goes by the namespaces of an older snapshot");
  for (watch *w = d->watches; w; w = w->next, n++) refresh(w, snap);
  daemon_log("INFO", "store generation %llu: %zu documents, %zu streams updated",
         (unsigned long long)mesh_snapshot_generation(snap), mesh_snapshot_count(snap), n);
  mesh_snapshot_unref(snap);
}

/* The caller's namespace from a context token: Linkerd's JSON form
 * {"ns":"emojivoto",...} or its older "ns:emojivoto". NULL when absent. */
static char *token_namespace(const char *tok) {
  if (!tok || !*tok) return NULL;
  if (tok[0] == '{') {
    json_t *j = json_loads(tok, 0, NULL);
    const char *ns = json_string_value(json_object_get(j, "ns"));
    char *r = ns && *ns ? strdup(ns) : NULL;
    json_decref(j);
    return r;
  }
  if (strncmp(tok, "ns:", 3) == 0 && tok[3]) return strdup(tok + 3);
  return NULL;
}

/* 429 when every stream the service allows is open: true when refused. */
static bool too_many(daemon_state *d, mesh_rpc_call *call) {
  if (d->nget + d->nprofile + d->npolicy < d->max_streams) return false;
  char why[96];
  snprintf(why, sizeof why, "too many watch streams (%zu): retry later", d->max_streams);
  mesh_rpc_reply_error(call, 429, MESH_RPC_CODE_RESOURCE_EXHAUSTED, why);
  return true;
}

/* w (answered with first, its first message) joins the open streams. */
static void watch_start(watch *w, const char *first) {
  daemon_state *d = w->d;
  w->next = d->watches;
  if (d->watches) d->watches->prev = w;
  d->watches = w;
  mesh_metric_series *gauge;
  size_t *count = count_of(d, w->kind, &gauge);
  (*count)++;
  mesh_metrics_set(gauge, (int64_t)*count);
  mesh_rpc_call_on_close(w->call, on_close, w);
  send_lines(w, first); /* NULL: the first answer is on its way (DNS) */
}

static void on_request(daemon_state *d, mesh_rpc_call *call, bool profile) {
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len);
  json_error_t je;
  json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  const char *path = json_string_value(json_object_get(req, "path"));
  json_t *tokj = json_object_get(req, "context_token");
  if (!json_is_object(req) || !path || !*path || (tokj && !json_is_string(tokj))) {
    json_decref(req);
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT,
                         "expected {\"path\": \"host:port\", \"context_token\": \"...\"}");
    return;
  }
  if (too_many(d, call)) {
    json_decref(req);
    return;
  }
  if (strlen(path) > PATH_MAX_BYTES) {
    json_decref(req);
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT, "path is longer than 512 bytes");
    return;
  }
  watch *w = calloc(1, sizeof *w);
  if (w) {
    w->path = strdup(path);
    w->ns = token_namespace(json_string_value(tokj));
  }
  json_decref(req);
  if (!w || !w->path) {
    if (w) free(w->ns);
    free(w ? w->path : NULL);
    free(w);
    mesh_rpc_reply_error(call, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
    return;
  }
  w->d = d;
  w->call = call;
  w->kind = profile ? W_PROFILE : W_GET;
  mesh_snapshot *snap = mesh_store_snapshot(d->store);
  char *first = NULL, *dns_first = NULL;
  int rc;
  if (profile) {
    rc = mesh_snapshot_profile_json(snap, w->path, w->ns, &first);
    if (rc == 0) w->last_profile = first;
  } else {
    rc = mesh_snapshot_resolve(snap, w->path, w->ns, &w->last);
    if (rc == 0 && !mesh_resolution_exists(w->last) && (rc = dns_follow(w, &dns_first)) > 0) rc = 0;
    if (rc == 0 && !w->dns) rc = mesh_resolution_json_first(w->last, &first);
  }
  mesh_snapshot_unref(snap);
  if (rc < 0) {
    char why[700];
    snprintf(why, sizeof why, "%s: %s", path_or(w->path),
             rc == MESH_ERR_PARSE ? "not an authority (host:port)"
             : rc == MESH_ERR_LIMIT ? "every name DNS may hold is watched (--dns-max-names): retry later"
                                    : mesh_strerror(rc));
    if (rc == MESH_ERR_LIMIT) daemon_log("WARN", "Get refused: %s", why);
    mesh_rpc_reply_error(call, rc == MESH_ERR_PARSE ? 400 : rc == MESH_ERR_LIMIT ? 429 : 500,
                         rc == MESH_ERR_PARSE   ? MESH_RPC_CODE_INVALID_ARGUMENT
                         : rc == MESH_ERR_LIMIT ? MESH_RPC_CODE_RESOURCE_EXHAUSTED
                                                : MESH_RPC_CODE_INTERNAL,
                         why);
    mesh_resolution_free(w->last);
    if (!profile) mesh_free_string(d->ctx, first);
    free(w->path);
    free(w->ns);
    free(w);
    return;
  }
  watch_start(w, w->dns ? dns_first : first);
  free(dns_first);
  if (!profile) mesh_free_string(d->ctx, first);
}

static void on_get(void *ud, mesh_rpc_call *call) { on_request(ud, call, false); }
static void on_profile(void *ud, mesh_rpc_call *call) { on_request(ud, call, true); }

/* WatchWorkload: {"workload": "namespace:name"}, PortSpec's workload field
 * in the form Linkerd's proxies send it (LINKERD2_PROXY_POLICY_WORKLOAD). */
static void on_policy(void *ud, mesh_rpc_call *call) {
  daemon_state *d = ud;
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len);
  json_error_t je;
  json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  const char *wl = json_string_value(json_object_get(req, "workload"));
  const char *colon = wl ? strchr(wl, ':') : NULL;
  if (!json_is_object(req) || !wl || !colon || colon == wl || !colon[1] ||
      strchr(colon + 1, ':') || strlen(wl) > WORKLOAD_MAX_BYTES) {
    json_decref(req);
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT,
                         "expected {\"workload\": \"namespace:name\"} (at most 512 bytes)");
    return;
  }
  if (too_many(d, call)) {
    json_decref(req);
    return;
  }
  watch *w = calloc(1, sizeof *w);
  if (w) {
    w->ns = strndup(wl, (size_t)(colon - wl));
    w->path = strdup(colon + 1);
  }
  json_decref(req);
  if (!w || !w->ns || !w->path) {
    if (w) {
      free(w->ns);
      free(w->path);
    }
    free(w);
    mesh_rpc_reply_error(call, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
    return;
  }
  w->d = d;
  w->call = call;
  w->kind = W_POLICY;
  mesh_snapshot *snap = mesh_store_snapshot(d->store);
  int rc = policy_message(w, snap, false, &w->last_policy);
  mesh_snapshot_unref(snap);
  if (rc == 0 && strlen(w->last_policy) > MESH_RPC_CLIENT_LINE_MAX) rc = MESH_ERR_LIMIT;
  if (rc < 0) {
    char why[700];
    if (rc == MESH_ERR_NOT_FOUND)
      snprintf(why, sizeof why, "no Workload '%s' in namespace '%s' in the store", w->path, w->ns);
    else if (rc == MESH_ERR_LIMIT)
      snprintf(why, sizeof why, "the policy of Workload %s/%s is over 1 MiB", w->ns, w->path);
    else
      snprintf(why, sizeof why, "%s/%s: %s", w->ns, w->path, mesh_strerror(rc));
    mesh_rpc_reply_error(call, rc == MESH_ERR_NOT_FOUND ? 404 : rc == MESH_ERR_LIMIT ? 413 : 500,
                         rc == MESH_ERR_NOT_FOUND ? MESH_RPC_CODE_NOT_FOUND
                         : rc == MESH_ERR_LIMIT   ? MESH_RPC_CODE_RESOURCE_EXHAUSTED
                                                  : MESH_RPC_CODE_INTERNAL,
                         why);
    free(w->last_policy);
    free(w->path);
    free(w->ns);
    free(w);
    return;
  }
  watch_start(w, w->last_policy);
}

/* ---- TLS ------------------------------------------------------------------ */

static char *read_file(const char *dir, const char *name, size_t *len, char *err, size_t esize) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, esize, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *buf = malloc(FILE_MAX + 1);
  size_t n = buf ? fread(buf, 1, FILE_MAX + 1, f) : 0;
  bool bad = !buf || ferror(f) || n > FILE_MAX;
  fclose(f);
  if (bad) {
    snprintf(err, esize, "%s: %s", path,
             !buf ? "out of memory" : n > FILE_MAX ? "larger than 1 MiB" : "cannot read");
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

/* DIR's leaf.crt, key.pem and ca.crt (what `meshctl identity certify
 * --out-dir` writes) as the serving configuration; false after logging why. */
static bool load_tls(daemon_state *d, const char *trigger) {
  char err[4400] = "";
  size_t cl = 0, kl = 0, al = 0;
  char *chain = read_file(d->identity_dir, "leaf.crt", &cl, err, sizeof err);
  char *key = chain ? read_file(d->identity_dir, "key.pem", &kl, err, sizeof err) : NULL;
  char *anchors = key ? read_file(d->identity_dir, "ca.crt", &al, err, sizeof err) : NULL;
  mesh_tls_opts *o = NULL;
  mesh_tls_config *cfg = NULL;
  const char *why = NULL;
  int rc = anchors ? mesh_tls_opts_new(d->ctx, &o) : MESH_ERR_IO;
  if (!rc) rc = mesh_tls_opts_set_credentials(o, chain, cl, key, kl);
  if (!rc) rc = mesh_tls_opts_set_anchors(o, anchors, al);
  if (!rc) rc = mesh_tls_opts_set_alpn(o, "h2");
  if (!rc) rc = mesh_tls_config_new(o, &why, &cfg);
  if (!rc) rc = d->creds ? mesh_tls_creds_set(d->creds, cfg) : mesh_tls_creds_new(d->ctx, cfg, &d->creds);
  if (rc < 0) {
    daemon_log("ERROR", "--identity-dir %s (%s): %s%s", d->identity_dir, trigger,
           *err ? err : why ? why : mesh_strerror(rc), d->creds ? "; the previous certificate stays" : "");
  } else {
    daemon_log("INFO", "serving as %s (%s)", mesh_identity_dns(mesh_tls_config_identity(cfg)), trigger);
  }
  mesh_tls_config_unref(cfg);
  mesh_tls_opts_free(o);
  if (key) memset(key, 0, kl);
  free(key);
  free(chain);
  free(anchors);
  return rc == 0;
}

/* ---- Admin -------------------------------------------------------------- */

/* The store's state into the metrics, as of now. */
static void metrics_update(daemon_state *d) {
  uint64_t ok = mesh_store_reloads_ok(d->store), refused = mesh_store_reloads_failed(d->store);
  if (ok > d->seen_ok) mesh_metrics_inc(d->reloads_ok, ok - d->seen_ok);
  if (refused > d->seen_refused) mesh_metrics_inc(d->reloads_refused, refused - d->seen_refused);
  d->seen_ok = ok;
  d->seen_refused = refused;
  int failing = mesh_store_failing(d->store);
  mesh_metrics_set(d->failing, failing);
  mesh_metrics_set(d->connected, d->etcd ? dst_etcd_connected(d->etcd) : 1);
  mesh_snapshot *snap = mesh_store_snapshot(d->store);
  mesh_metrics_set(d->generation, (int64_t)mesh_snapshot_generation(snap));
  mesh_snapshot_unref(snap);
  /* The error being refused, as a label, while it lasts. */
  char want[ERROR_LABEL_MAX] = "";
  if (failing && mesh_store_last_error(d->store))
    snprintf(want, sizeof want, "%s", mesh_store_last_error(d->store));
  if (strcmp(want, d->error_shown) != 0) {
    if (d->error_info) {
      mesh_metrics_series_remove(d->error_info);
      mesh_metrics_series_unref(d->error_info);
      d->error_info = NULL;
    }
    const char *v = want;
    if (*want && mesh_metrics_series(d->error_family, &v, 1, &d->error_info) == 0)
      mesh_metrics_set(d->error_info, 1);
    snprintf(d->error_shown, sizeof d->error_shown, "%s", want);
  }
}

static void admin_metrics(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  char *text = NULL;
  size_t len = 0;
  metrics_update(d);
  struct evbuffer *b = evbuffer_new();
  if (!b || mesh_metrics_render(d->metrics, &text, &len) < 0 || evbuffer_add(b, text, len) < 0) {
    evhttp_send_error(req, 500, NULL);
  } else {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", b);
  }
  mesh_free_string(d->ctx, text);
  if (b) evbuffer_free(b);
}

static bool metrics_setup(daemon_state *d) {
  mesh_metric_family *reloads, *failing, *gen, *streams, *updates, *connected;
  const char *result = "result", *method = "method", *error = "error";
  int rc = mesh_metrics_new(d->ctx, &d->metrics);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "destination_store_reloads_total",
                              "Store reloads after the start, by result (ok: a new snapshot took "
                              "over; refused: a bad manifest, the last good state stays).",
                              &result, 1, &reloads);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "destination_store_failing",
                            "1 while the files on disk are refused and an older state is served.",
                            NULL, 0, &failing);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "destination_store_last_error_info",
                            "The error that keeps the store from loading (file:line:col), while it lasts.",
                            &error, 1, &d->error_family);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "destination_store_connected",
                            "1 while the store's source is followed (etcd: a watch is open on "
                            "a member; a directory: always). 0: the last state stays served.",
                            NULL, 0, &connected);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "destination_store_generation",
                            "The generation of the snapshot being served.", NULL, 0, &gen);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "destination_streams",
                            "Open watch streams, by method (get, profile, policy).", &method, 1,
                            &streams);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "destination_updates_total",
                              "Messages sent on watch streams.", NULL, 0, &updates);
  const char *ok = "ok", *refused = "refused", *get = "get", *profile = "profile",
             *policy = "policy";
  if (!rc) rc = mesh_metrics_series(reloads, &ok, 1, &d->reloads_ok);
  if (!rc) rc = mesh_metrics_series(reloads, &refused, 1, &d->reloads_refused);
  if (!rc) rc = mesh_metrics_series(failing, NULL, 0, &d->failing);
  if (!rc) rc = mesh_metrics_series(gen, NULL, 0, &d->generation);
  if (!rc) rc = mesh_metrics_series(connected, NULL, 0, &d->connected);
  if (!rc) rc = mesh_metrics_series(streams, &get, 1, &d->streams_get);
  if (!rc) rc = mesh_metrics_series(streams, &profile, 1, &d->streams_profile);
  if (!rc) rc = mesh_metrics_series(streams, &policy, 1, &d->streams_policy);
  if (!rc) rc = mesh_metrics_series(updates, NULL, 0, &d->updates);
  if (!rc) rc = mesh_metrics_process(d->metrics);
  if (rc) daemon_log("ERROR", "cannot set up the metrics: %s", mesh_strerror(rc));
  return rc == 0;
}

static void metrics_free(daemon_state *d) {
  mesh_metric_series *all[] = {d->reloads_ok, d->reloads_refused, d->failing,      d->generation,
                               d->streams_get, d->streams_profile, d->updates, d->error_info,
                               d->streams_policy, d->connected};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mesh_metrics_series_unref(all[i]);
  mesh_metrics_free(d->metrics);
}

static void admin_text(struct evhttp_request *req, int status, const char *text) {
  struct evbuffer *b = evbuffer_new();
  if (b) evbuffer_add_printf(b, "%s\n", text);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
  evhttp_send_reply(req, status, status == 200 ? "OK" : "Not Found", b);
  if (b) evbuffer_free(b);
}

/* Ready once a state from the source is served: from the start for a
 * directory (the first load must succeed); for etcd, once a read of it
 * loaded (an empty prefix is a state; a refused first read is not).
 * Losing etcd later does not make it unready: the last state is served. */
static void admin_ready(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  if (!d->etcd || (dst_etcd_synced(d->etcd) &&
                   (mesh_store_reloads_ok(d->store) > 0 || !mesh_store_failing(d->store)))) {
    admin_text(req, 200, "ready");
    return;
  }
  struct evbuffer *b = evbuffer_new();
  if (b)
    evbuffer_add_printf(b, "not ready: %s\n",
                        dst_etcd_synced(d->etcd) ? "the first state read from etcd was refused (/store)"
                                                 : "no answer from etcd yet");
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
  evhttp_send_reply(req, 503, "Service Unavailable", b);
  if (b) evbuffer_free(b);
}
static void admin_live(struct evhttp_request *req, void *ud) { admin_text(req, 200, "live"); }

/* The store's state for a person: what is served, and why a change is refused. */
static void admin_store(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  mesh_snapshot *snap = mesh_store_snapshot(d->store);
  const char *err = mesh_store_last_error(d->store);
  char text[2048], source[1024] = "";
  if (d->etcd) {
    dst_etcd_describe(d->etcd, source, sizeof source - 1);
    strcat(source, "\n");
  }
  snprintf(text, sizeof text,
           "%sgeneration %llu, %zu documents\nreloads: %llu ok, %llu refused\n%s%s", source,
           (unsigned long long)mesh_snapshot_generation(snap), mesh_snapshot_count(snap),
           (unsigned long long)mesh_store_reloads_ok(d->store),
           (unsigned long long)mesh_store_reloads_failed(d->store),
           mesh_store_failing(d->store) ? "failing: " : "last refused: ", err ? err : "none");
  mesh_snapshot_unref(snap);
  admin_text(req, 200, text);
}

static void admin_other(struct evhttp_request *req, void *ud) {
  admin_text(req, 404, "not found: try /metrics, /ready, /live or /store");
}

static struct evhttp *admin_start(daemon_state *d, const char *addr) {
  uint16_t bound;
  struct evhttp *http = daemon_http_listen(d->base, "--admin", addr, &bound);
  if (!http) return NULL;
  evhttp_set_cb(http, "/metrics", admin_metrics, d);
  evhttp_set_cb(http, "/ready", admin_ready, d);
  evhttp_set_cb(http, "/live", admin_live, d);
  evhttp_set_cb(http, "/store", admin_store, d);
  evhttp_set_gencb(http, admin_other, d);
  daemon_log("INFO", "admin (/metrics /ready /live /store) listening on %.*s:%u", (int)(strrchr(addr, ':') - addr), addr,
             (unsigned)bound);
  return http;
}

/* ---- Loop --------------------------------------------------------------- */

/* Registrations: in memory with a directory store, as keys under etcd
 * leases with etcd (shared by the replicas). */
static int registry_start(daemon_state *d, const mesh_store_opts *so, const char *td, const char *ns,
                          mesh_rpc_server *srv) {
  dst_registry_opts o = {.store = d->store,
                         .etcd = d->etcd,
                         .so = so,
                         .trust_domain = td ? td : MESH_STORE_DEFAULT_TRUST_DOMAIN,
                         .cp_ns = ns ? ns : MESH_STORE_DEFAULT_CP_NAMESPACE,
                         .log = dns_log};
  int rc = dst_registry_new(d->ctx, d->base, &o, &d->registry);
  return rc ? rc : dst_registry_handle(d->registry, srv);
}

static void on_signal(evutil_socket_t sig, short what, void *ud) {
  daemon_state *d = ud;
  if (sig == SIGHUP) {
    if (d->etcd) dst_etcd_resync(d->etcd);
    else mesh_store_reload(d->store);
    if (d->identity_dir) load_tls(d, "SIGHUP");
    return;
  }
  daemon_log("INFO", "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  event_base_loopexit(d->base, NULL);
}

static bool loopback(const char *addr) {
  return strncmp(addr, "127.", 4) == 0 || strncmp(addr, "[::1]:", 6) == 0 ||
         strncmp(addr, "localhost:", 10) == 0;
}

static void usage(FILE *out) {
  fprintf(out,
          "mesh-destination: the mesh's discovery service. Proxies watch the endpoints\n"
          "(Destination.Get) and the profile (Destination.GetProfile) of the services they\n"
          "talk to, and the inbound policy documents of their own workload\n"
          "(InboundServerPolicies.WatchWorkload), as streams of JSON lines over HTTP/2\n"
          "(doc/protocol.md). meshds may also register their Workloads under leases\n"
          "(mesh.Registry/Register, Deregister): held in memory with --store-dir, as keys\n"
          "under etcd leases with --etcd-endpoints (shared by every replica).\n\n"
          "Usage:\n  mesh-destination --store-dir DIR [flags]\n"
          "  mesh-destination --etcd-endpoints http://IP:PORT,... [--etcd-prefix P] [flags]\n\n"
          "Flags:\n"
          "      --store-dir DIR          the manifests (*.yaml, *.yml, *.json): Services,\n"
          "                               Workloads, ServiceProfiles, TrafficSplits, policy\n"
          "      --etcd-endpoints LIST    instead of --store-dir: the manifests are the values\n"
          "                               of the keys under the prefix in etcd (v3, its JSON\n"
          "                               gateway over plain HTTP; members by IP address,\n"
          "                               comma-separated, tried in turn; doc/etcd.md)\n"
          "      --etcd-prefix P          the key prefix (default /libmesh/): a key\n"
          "                               P<name>.yaml, .yml or .json holds one manifest file,\n"
          "                               Pregistrations/NS/NAME one registration\n"
          "      --listen ADDR            Destination over HTTP/2 (default 127.0.0.1:8086);\n"
          "                               without --identity-dir, plaintext and loopback only\n"
          "      --identity-dir DIR       serve over mTLS as the identity of DIR/leaf.crt\n"
          "                               (with key.pem and the trust anchors ca.crt, as\n"
          "                               `meshctl identity certify --out-dir` writes them)\n"
          "      --client-auth MODE       required (default): clients present a mesh\n"
          "                               certificate; optional: they may not\n"
          "      --admin ADDR             /metrics, /ready, /live, /store over HTTP\n"
          "                               (default 0.0.0.0:9996)\n"
          "      --cluster-domain NAME    the cluster domain of service names (cluster.local)\n"
          "      --trust-domain NAME      the identity trust domain (cluster.local)\n"
          "      --identity-namespace NS  the control plane's namespace in identities (linkerd)\n"
          "      --debounce-ms MS         at most one read of the store a period; a file\n"
          "                               being written waits for this much quiet (100)\n"
          "      --max-streams N          open Get, GetProfile and WatchWorkload streams in all;\n"
          "                               more are refused with 429 resource_exhausted\n"
          "                               (20000)\n"
          "      --dns-server IP[:PORT]   the DNS servers asked for names outside the store\n"
          "                               (repeatable, or a comma list; default: those of\n"
          "                               /etc/resolv.conf, as c-ares reads it)\n"
          "      --dns-max-names N        names held for DNS, watched or cached until their\n"
          "                               TTL; a Get for one more is refused with 429 (1000)\n"
          "      --dns-max-resolving N    DNS resolutions in flight; the others queue (16)\n"
          "      --no-dns-fallback        answer every name the store does not know with\n"
          "                               no_endpoints{exists:false}, without DNS\n"
          "  -h, --help                   show this help\n\n"
          "The directory is watched (inotify): a change is read at once when its files are\n"
          "whole (closed, renamed, deleted), at most once a debounce period, and after the\n"
          "debounce time of quiet while a file is being written. It replaces what is\n"
          "served only when every file is valid; otherwise the last good state stays and\n"
          "the error is logged and shown on /metrics and /store. SIGHUP reads the\n"
          "directory (and the identity directory) at once. The first load must succeed.\n"
          "SIGTERM or SIGINT stops the service.\n"
          "Logs go to standard error.\n\n");
  fprintf(out,
          "With etcd, every key under the prefix is read at one revision, then watched\n"
          "from the next; each change (at once, at most one a debounce period) makes a\n"
          "candidate state from the whole key set, which replaces what is served only when\n"
          "every manifest is valid, as with a directory. Replicas on the same etcd serve\n"
          "the same state. A member that fails (connection lost, no quorum read within\n"
          "3 s) is left for the next one and the watch resumes after the last revision\n"
          "seen; a compacted revision means a full read again. Meanwhile the last state\n"
          "stays served (destination_store_connected 0). /ready answers 503 only until a\n"
          "first state from etcd is served. SIGHUP reads every key again.\n\n");
  fprintf(out,
          "A Get for a name the store does not know, of two labels or more and outside\n"
          "the cluster domain (not *.svc, not *.<cluster-domain>, not svc.ns for a\n"
          "namespace of the store: those stay the store's), is resolved by DNS (A and\n"
          "AAAA, as an absolute name). Its addresses are sent as endpoints that are not\n"
          "meshed (no tls_identity: plain TCP) and resolved again when their TTL runs out\n"
          "(at least 5 s, at most 5 min), with add/remove for what changed. NXDOMAIN or\n"
          "no record is no_endpoints{exists:false} (asked again after 30 s); a failing\n"
          "server keeps the last answer and is retried with backoff (1 s doubling to\n"
          "30 s). Streams for one name share its resolution.\n");
}

int main(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_LISTEN, OPT_ADMIN, OPT_CD, OPT_TD, OPT_NS, OPT_DEBOUNCE, OPT_ID, OPT_AUTH,
         OPT_MAX, OPT_DNS_SERVER, OPT_DNS_NAMES, OPT_DNS_RESOLVING, OPT_NO_DNS, OPT_ETCD,
         OPT_ETCD_PREFIX };
  static const struct option opts[] = {
      {"store-dir", required_argument, NULL, OPT_DIR},
      {"etcd-endpoints", required_argument, NULL, OPT_ETCD},
      {"etcd-prefix", required_argument, NULL, OPT_ETCD_PREFIX},
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"admin", required_argument, NULL, OPT_ADMIN},
      {"cluster-domain", required_argument, NULL, OPT_CD},
      {"trust-domain", required_argument, NULL, OPT_TD},
      {"identity-namespace", required_argument, NULL, OPT_NS},
      {"debounce-ms", required_argument, NULL, OPT_DEBOUNCE},
      {"identity-dir", required_argument, NULL, OPT_ID},
      {"client-auth", required_argument, NULL, OPT_AUTH},
      {"max-streams", required_argument, NULL, OPT_MAX},
      {"dns-server", required_argument, NULL, OPT_DNS_SERVER},
      {"dns-max-names", required_argument, NULL, OPT_DNS_NAMES},
      {"dns-max-resolving", required_argument, NULL, OPT_DNS_RESOLVING},
      {"no-dns-fallback", no_argument, NULL, OPT_NO_DNS},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *listen = "127.0.0.1:8086", *admin = "0.0.0.0:9996", *dir = NULL, *cd = NULL,
             *td = NULL, *ns = NULL, *identity_dir = NULL, *etcd = NULL, *etcd_prefix = NULL;
  long debounce = -1, max_streams = DEFAULT_MAX_STREAMS, dns_names = DST_DNS_DEFAULT_MAX_NAMES,
       dns_resolving = DST_DNS_DEFAULT_MAX_RESOLVING;
  bool dns_fallback = true;
  char dns_servers[1024] = "", dns_err[300];
  int client_auth = MESH_TLS_CLIENT_AUTH_REQUIRED;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case OPT_ETCD: etcd = optarg; break;
    case OPT_ETCD_PREFIX: etcd_prefix = optarg; break;
    case OPT_LISTEN: listen = optarg; break;
    case OPT_ADMIN: admin = optarg; break;
    case OPT_CD: cd = optarg; break;
    case OPT_TD: td = optarg; break;
    case OPT_NS: ns = optarg; break;
    case OPT_ID: identity_dir = optarg; break;
    case OPT_MAX:
      if (!daemon_flag_long("mesh-destination", "max-streams", optarg, 1, 1000000, &max_streams))
        return 2;
      break;
    case OPT_DNS_SERVER: {
      size_t used = strlen(dns_servers);
      if (snprintf(dns_servers + used, sizeof dns_servers - used, "%s%s", used ? "," : "", optarg) >=
          (int)(sizeof dns_servers - used)) {
        fprintf(stderr, "mesh-destination: --dns-server: too long a list\n");
        return 2;
      }
      break;
    }
    case OPT_DNS_NAMES:
    case OPT_DNS_RESOLVING:
      if (!daemon_flag_long("mesh-destination",
                            c == OPT_DNS_NAMES ? "dns-max-names" : "dns-max-resolving", optarg, 1,
                            100000, c == OPT_DNS_NAMES ? &dns_names : &dns_resolving))
        return 2;
      break;
    case OPT_NO_DNS: dns_fallback = false; break;
    case OPT_AUTH:
      if (!strcmp(optarg, "required")) client_auth = MESH_TLS_CLIENT_AUTH_REQUIRED;
      else if (!strcmp(optarg, "optional")) client_auth = MESH_TLS_CLIENT_AUTH_OPTIONAL;
      else {
        fprintf(stderr, "mesh-destination: --client-auth is required or optional\n");
        return 2;
      }
      break;
    case OPT_DEBOUNCE:
      if (!daemon_flag_long("mesh-destination", "debounce-ms", optarg, 0, 10000, &debounce))
        return 2;
      break;
    case 'h': usage(stdout); return 0;
    default: fprintf(stderr, "Run 'mesh-destination --help' for usage.\n"); return 2;
    }
  }
  if (optind < argc || !dir == !etcd || (etcd_prefix && !etcd)) {
    fprintf(stderr, "mesh-destination: %s\nRun 'mesh-destination --help' for usage.\n",
            optind < argc  ? "unexpected argument"
            : dir && etcd  ? "give either --store-dir or --etcd-endpoints, not both"
            : etcd_prefix && !etcd ? "--etcd-prefix goes with --etcd-endpoints"
                           : "give the manifest directory with --store-dir DIR, or "
                             "--etcd-endpoints");
    return 2;
  }
  if (etcd && !dst_etcd_endpoints_valid(etcd, dns_err, sizeof dns_err)) {
    fprintf(stderr, "mesh-destination: --etcd-endpoints %s\n", dns_err);
    return 2;
  }
  if (etcd_prefix && (!*etcd_prefix || strlen(etcd_prefix) > 512)) {
    fprintf(stderr, "mesh-destination: --etcd-prefix is 1 to 512 bytes\n");
    return 2;
  }
  if (!identity_dir && !loopback(listen)) {
    /* Plaintext only in this version: endpoints and identities are not for the network. */
    fprintf(stderr, "mesh-destination: --listen %s: only loopback addresses are served "
                    "in plaintext: give --identity-dir to serve over mTLS\n", listen);
    return 2;
  }
  if (*dns_servers && !dst_dns_servers_valid(dns_servers, dns_err, sizeof dns_err)) {
    fprintf(stderr, "mesh-destination: --dns-server %s\n", dns_err);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);

  daemon_state d;
  memset(&d, 0, sizeof d);
  d.identity_dir = identity_dir;
  d.max_streams = (size_t)max_streams;
  int status = 1, rc;
  mesh_store_opts *so = NULL;
  mesh_diags *diags = NULL;
  mesh_rpc_server_opts *ro = NULL;
  mesh_rpc_server *srv = NULL;
  struct evhttp *http = NULL;
  struct event *sigs[3] = {NULL};
  if (mesh_ctx_new(&d.ctx) < 0 || !(d.base = event_base_new())) {
    daemon_log("ERROR", "out of memory");
    goto done;
  }
  mesh_ctx_set_log(d.ctx, MESH_LOG_INFO, daemon_log_lib, "libmesh: ");
  if (!metrics_setup(&d)) goto done;
  if ((rc = mesh_store_opts_new(d.ctx, &so)) < 0 || (dir && (rc = mesh_store_opts_set_dir(so, dir)) < 0) ||
      (rc = mesh_diags_new(d.ctx, &diags)) < 0) {
    daemon_log("ERROR", "cannot set up the store: %s", mesh_strerror(rc));
    goto done;
  }
  if ((cd && mesh_store_opts_set_cluster_domain(so, cd) < 0) ||
      (td && mesh_store_opts_set_trust_domain(so, td) < 0) ||
      (ns && mesh_store_opts_set_cp_namespace(so, ns) < 0) ||
      (debounce >= 0 && mesh_store_opts_set_debounce_ms(so, (uint32_t)debounce) < 0)) {
    daemon_log("ERROR", "--cluster-domain and --trust-domain are DNS names, --identity-namespace a "
                    "DNS label");
    goto done;
  }
  if (etcd) {
    char name[600];
    snprintf(name, sizeof name, "etcd %s", etcd_prefix ? etcd_prefix : DST_ETCD_DEFAULT_PREFIX);
    dst_etcd_opts eo = {.endpoints = etcd,
                        .prefix = etcd_prefix,
                        .debounce_ms = debounce >= 0 ? (uint32_t)debounce : MESH_STORE_DEFAULT_DEBOUNCE_MS,
                        .log = dns_log};
    if ((rc = mesh_store_new_fed(d.ctx, so, name, &d.store)) < 0) {
      daemon_log("ERROR", "cannot set up the store: %s", mesh_strerror(rc));
      goto done;
    }
    mesh_store_on_change(d.store, on_store_change, &d);
    if ((rc = dst_etcd_new(d.base, d.store, &eo, dns_err, sizeof dns_err, &d.etcd)) < 0) {
      daemon_log("ERROR", "--etcd-endpoints %s: %s", etcd, rc == MESH_ERR_INVALID ? dns_err : mesh_strerror(rc));
      goto done;
    }
    daemon_log("INFO", "store: etcd %s, keys under %s", etcd, etcd_prefix ? etcd_prefix : DST_ETCD_DEFAULT_PREFIX);
  } else if ((rc = mesh_store_new(d.ctx, so, diags, &d.store)) < 0) {
    for (size_t i = 0; i < mesh_diags_count(diags); i++)
      daemon_log("ERROR", "%s", mesh_diags_text(diags, i));
    daemon_log("ERROR", "--store-dir %s: cannot load the store: %s", dir, mesh_strerror(rc));
    goto done;
  }
  for (size_t i = 0; i < mesh_diags_count(diags); i++)
    daemon_log("WARN", "%s", mesh_diags_text(diags, i));
  mesh_snapshot *snap;
  if (dir) {
    mesh_store_on_change(d.store, on_store_change, &d);
    if ((rc = mesh_store_watch(d.store, d.base)) < 0) {
      daemon_log("ERROR", "--store-dir %s: cannot watch: %s: %s", dir, mesh_strerror(rc), strerror(errno));
      goto done;
    }
    snap = mesh_store_snapshot(d.store);
    daemon_log("INFO", "store %s loaded: %zu documents", dir, mesh_snapshot_count(snap));
    mesh_snapshot_unref(snap);
  }

  if (dns_fallback) {
    dst_dns_opts dopts = {.cluster_domain = cd ? cd : MESH_STORE_DEFAULT_CLUSTER_DOMAIN,
                          .servers = *dns_servers ? dns_servers : NULL,
                          .max_names = (size_t)dns_names,
                          .max_resolving = (size_t)dns_resolving,
                          .metrics = d.metrics,
                          .log = dns_log};
    if (dst_dns_new(d.base, &dopts, dns_err, sizeof dns_err, &d.dns) < 0) {
      daemon_log("ERROR", "cannot set up the DNS fallback: %s", dns_err);
      goto done;
    }
    snap = mesh_store_snapshot(d.store);
    rc = dst_dns_set_snapshot(d.dns, snap);
    mesh_snapshot_unref(snap);
    if (rc < 0) {
      daemon_log("ERROR", "cannot set up the DNS fallback: %s", mesh_strerror(rc));
      goto done;
    }
    daemon_log("INFO", "names outside the store and the cluster domain are resolved by DNS (%s)",
           *dns_servers ? dns_servers : "the servers of /etc/resolv.conf");
  }
  if (identity_dir && !load_tls(&d, "start")) goto done;
  if ((rc = mesh_rpc_server_opts_new(d.ctx, &ro)) < 0 ||
      (d.creds && (rc = mesh_rpc_server_opts_set_tls_creds(ro, d.creds, client_auth)) < 0) ||
      (rc = mesh_rpc_server_opts_set_limit(ro, MESH_RPC_LIMIT_STREAMS, STREAMS_PER_CONN)) < 0 ||
      (rc = mesh_rpc_server_new(d.ctx, d.base, ro, &srv)) < 0 ||
      (rc = mesh_rpc_server_handle(srv, GET_PATH, on_get, &d)) < 0 ||
      (rc = mesh_rpc_server_handle(srv, PROFILE_PATH, on_profile, &d)) < 0 ||
      (rc = mesh_rpc_server_handle(srv, POLICY_PATH, on_policy, &d)) < 0 ||
      (rc = registry_start(&d, so, td, ns, srv)) < 0) {
    daemon_log("ERROR", "cannot set up the Destination server: %s", mesh_strerror(rc));
    goto done;
  }
  uint16_t port = 0;
  if ((rc = mesh_rpc_server_listen(srv, listen, &port)) < 0) {
    daemon_log("ERROR", "--listen %s: %s%s%s", listen, mesh_strerror(rc), rc == MESH_ERR_IO ? ": " : "",
           rc == MESH_ERR_IO ? strerror(errno) : "");
    goto done;
  }
  daemon_log("INFO", "Destination (Get, GetProfile) and InboundServerPolicies (WatchWorkload) "
                 "listening on %.*s:%u over %s",
         (int)(strrchr(listen, ':') - listen), listen, port,
         !d.creds ? "plaintext HTTP/2"
         : client_auth == MESH_TLS_CLIENT_AUTH_REQUIRED ? "mTLS (client certificates required)"
                                                        : "TLS (client certificates optional)");
  if (!(http = admin_start(&d, admin))) goto done;

  const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
  for (int i = 0; i < 3; i++) {
    sigs[i] = evsignal_new(d.base, signums[i], on_signal, &d);
    if (!sigs[i] || evsignal_add(sigs[i], NULL) < 0) goto done;
  }
  event_base_dispatch(d.base);
  status = 0;
done:
  for (int i = 0; i < 3; i++)
    if (sigs[i]) event_free(sigs[i]);
  if (http) evhttp_free(http);
  /* Ends every stream: their close callbacks free the watches. */
  mesh_rpc_server_free(srv);
  dst_dns_free(d.dns); /* after the watches, which hold its names */
  dst_registry_free(d.registry);
  mesh_rpc_server_opts_free(ro);
  mesh_tls_creds_free(d.creds);
  dst_etcd_free(d.etcd); /* before the store it feeds */
  mesh_store_free(d.store);
  mesh_store_opts_free(so);
  mesh_diags_free(diags);
  metrics_free(&d);
  if (d.base) event_base_free(d.base);
  mesh_ctx_free(d.ctx);
  if (status == 0) daemon_log("INFO", "stopped");
  return status;
}
