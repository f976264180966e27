/* mesh-viz: scrapes every meshd's /metrics (the Workloads of the store), keeps samples over a retention, serves golden metrics as JSON. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include <mesh/mesh.h>

#include "daemon_flag.h"
#include "daemon_http.h"
#include "daemon_log.h"
#include <mesh/metrics.h>
#include <mesh/store.h>

#include "state.h"

#define MAX_PROXY_FLAGS 256u
#define SCRAPE_TIMEOUT_MAX_MS 10000u /* Prometheus' default scrape_timeout */
#define HEADERS_MAX 16384            /* bytes of a scrape answer's head, of a request's */

static const char *const metric_names[VIZ_M_COUNT] = {
    [VIZ_M_RESPONSE_TOTAL] = "response_total",
    [VIZ_M_LATENCY_BUCKET] = "response_latency_ms_bucket",
    [VIZ_M_RT_RESPONSE_TOTAL] = "route_response_total",
    [VIZ_M_RT_LATENCY_BUCKET] = "route_response_latency_ms_bucket",
    [VIZ_M_RT_ACTUAL_RESPONSE_TOTAL] = "route_actual_response_total",
    [VIZ_M_TCP_OPEN_CONNECTIONS] = "tcp_open_connections",
    [VIZ_M_TCP_OPEN_TOTAL] = "tcp_open_total",
};
static const char *const label_names[VIZ_L_COUNT] = {
    [VIZ_L_DIRECTION] = "direction",   [VIZ_L_TARGET_ADDR] = "target_addr",
    [VIZ_L_TLS] = "tls",               [VIZ_L_CLIENT_ID] = "client_id",
    [VIZ_L_SERVER_ID] = "server_id",   [VIZ_L_CLASSIFICATION] = "classification",
    [VIZ_L_PEER] = "peer",             [VIZ_L_DST] = "dst",
    [VIZ_L_RT_ROUTE] = "rt_route",     [VIZ_L_DST_SERVICE] = "dst_service",
};

typedef struct {
  const char *name, *addr; /* NAME ([NS/]WORKLOAD) = ADDR */
} proxy_flag;

typedef struct {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_store *store;
  viz_state st;
  proxy_flag proxies[MAX_PROXY_FLAGS];
  size_t nproxies;
  struct event *tick;
  mesh_metrics *metrics;
  mesh_metric_series *scrapes_ok, *scrapes_failed, *targets_g, *reachable_g, *series_g,
      *queries_ok, *queries_bad;
} daemon_state;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- Targets ----------------------------------------------------------- */

static void target_reset_data(viz_target *t) {
  for (size_t i = 0; i < t->nseries; i++) {
    for (int k = 0; k < VIZ_L_COUNT; k++) free(t->series[i].l[k]);
    free(t->series[i].key);
  }
  free(t->series);
  free(t->index);
  for (size_t k = 0; k < t->ring_len; k++) free(t->ring[(t->ring_start + k) % t->ring_cap].v);
  t->series = NULL;
  t->index = NULL;
  t->nseries = t->cap_series = t->cap_index = 0;
  t->ring_start = t->ring_len = 0;
}

static void target_free_ident(viz_target *t) {
  free(t->ns);
  free(t->name);
  free(t->deploy);
  free(t->sa);
  for (size_t i = 0; i < t->nips; i++) free(t->ips[i]);
  free(t->ips);
  json_decref(t->labels);
  t->ns = t->name = t->deploy = t->sa = NULL;
  t->ips = NULL;
  t->nips = 0;
  t->labels = NULL;
}

static void target_free(viz_target *t) {
  if (!t) return;
  /* Frees a request in flight without calling its callback. */
  if (t->conn) evhttp_connection_free(t->conn);
  free(t->pending);
  target_reset_data(t);
  free(t->ring);
  target_free_ident(t);
  free(t);
}

static uint64_t fnv(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* The series of key (labels taken from lv), created when new; -1 past VIZ_MAX_SERIES. */
static long intern(viz_target *t, const char *key, int metric, char *const lv[VIZ_L_COUNT], double le) {
  if (t->cap_index) {
    for (size_t i = fnv(key) & (t->cap_index - 1);; i = (i + 1) & (t->cap_index - 1)) {
      if (!t->index[i]) break;
      if (!strcmp(t->series[t->index[i] - 1].key, key)) return (long)t->index[i] - 1;
    }
  }
  if (t->nseries == VIZ_MAX_SERIES) return -1;
  if (t->nseries == t->cap_series) {
    size_t cap = t->cap_series ? t->cap_series * 2 : 64;
    viz_series *s = realloc(t->series, cap * sizeof *s);
    if (!s) return -1;
    t->series = s;
    t->cap_series = cap;
  }
  if ((t->nseries + 1) * 2 > t->cap_index) {
    size_t cap = t->cap_index ? t->cap_index * 2 : 256;
    uint32_t *ix = calloc(cap, sizeof *ix);
    if (!ix) return -1;
    for (size_t n = 0; n < t->nseries; n++) {
      size_t i = fnv(t->series[n].key) & (cap - 1);
      while (ix[i]) i = (i + 1) & (cap - 1);
      ix[i] = (uint32_t)n + 1;
    }
    free(t->index);
    t->index = ix;
    t->cap_index = cap;
  }
  viz_series *s = &t->series[t->nseries];
  memset(s, 0, sizeof *s);
  s->metric = metric;
  s->le = le;
  s->key = strdup(key);
  bool ok = s->key != NULL;
  for (int k = 0; k < VIZ_L_COUNT; k++) ok = (s->l[k] = strdup(lv[k] ? lv[k] : "")) && ok;
  if (!ok) {
    for (int k = 0; k < VIZ_L_COUNT; k++) free(s->l[k]);
    free(s->key);
    return -1;
  }
  size_t i = fnv(key) & (t->cap_index - 1);
  while (t->index[i]) i = (i + 1) & (t->cap_index - 1);
  t->index[i] = (uint32_t)t->nseries + 1;
  return (long)t->nseries++;
}

/* ---- Scraping ---------------------------------------------------------- */

typedef struct {
  viz_target *t;
  double *v;
  size_t cap;
  double start_s;
} scrape_acc;

static bool on_sample(void *ud, const char *name, const viz_label *labels, size_t nl, double value,
                      char *why, size_t size) {
  scrape_acc *a = ud;
  int m = -1;
  for (int i = 0; i < VIZ_M_COUNT && m < 0; i++)
    if (!strcmp(name, metric_names[i])) m = i;
  if (!strcmp(name, "process_start_time_seconds")) a->start_s = value;
  if (m < 0 || isnan(value)) return true;
  char *lv[VIZ_L_COUNT] = {0};
  double le = NAN;
  char key[8192];
  for (size_t i = 0; i < nl; i++) {
    if (!strcmp(labels[i].name, "le")) {
      le = !strcmp(labels[i].value, "+Inf") ? INFINITY : strtod(labels[i].value, NULL);
      continue;
    }
    for (int k = 0; k < VIZ_L_COUNT; k++)
      if (!strcmp(labels[i].name, label_names[k])) lv[k] = (char *)labels[i].value;
  }
  if ((m == VIZ_M_LATENCY_BUCKET || m == VIZ_M_RT_LATENCY_BUCKET) && isnan(le)) {
    snprintf(why, size, "%s without an le label", name);
    return false;
  }
  /* The key: metric, le and the kept labels; \x1f cannot appear in meshd's values. */
  int n = snprintf(key, sizeof key, "%d\x1f%.17g", m, le);
  for (int k = 0; k < VIZ_L_COUNT && n > 0 && (size_t)n < sizeof key; k++)
    n += snprintf(key + n, sizeof key - (size_t)n, "\x1f%s", lv[k] ? lv[k] : "");
  if (n < 0 || (size_t)n >= sizeof key) {
    snprintf(why, size, "%s: labels longer than %zu bytes", name, sizeof key);
    return false;
  }
  long idx = intern(a->t, key, m, lv, le);
  if (idx < 0) {
    snprintf(why, size, "more than %u series of the families mesh-viz reads", VIZ_MAX_SERIES);
    return false;
  }
  if ((size_t)idx >= a->cap) {
    size_t cap = a->cap ? a->cap : 256;
    while (cap <= (size_t)idx) cap *= 2;
    double *v = realloc(a->v, cap * sizeof *v);
    if (!v) {
      snprintf(why, size, "out of memory");
      return false;
    }
    for (size_t i = a->cap; i < cap; i++) v[i] = NAN;
    a->v = v;
    a->cap = cap;
  }
  /* Series that differ only in labels summed away add up. */
  a->v[idx] = isnan(a->v[idx]) ? value : a->v[idx] + value;
  return true;
}

static void ring_push(viz_target *t, uint64_t at, double *v, size_t n, double start_s) {
  if (t->ring_len == t->ring_cap) {
    free(t->ring[t->ring_start].v);
    t->ring_start = (t->ring_start + 1) % t->ring_cap;
    t->ring_len--;
  }
  t->ring[(t->ring_start + t->ring_len) % t->ring_cap] = (viz_sample){at, n, v, start_s};
  t->ring_len++;
}

static void update_gauges(daemon_state *d) {
  size_t reachable = 0, series = 0;
  for (viz_target *t = d->st.targets; t; t = t->next) {
    reachable += t->state == 1;
    series += t->nseries;
  }
  mesh_metrics_set(d->targets_g, (int64_t)d->st.ntargets);
  mesh_metrics_set(d->reachable_g, (int64_t)reachable);
  mesh_metrics_set(d->series_g, (int64_t)series);
}

static void scrape_failed(daemon_state *d, viz_target *t, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void scrape_failed(daemon_state *d, viz_target *t, const char *fmt, ...) {
  char why[sizeof t->error];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  /* Logged when it starts failing or fails otherwise, not every interval. */
  if (t->state != -1 || strcmp(why, t->error) != 0)
    daemon_log("WARN", "scrape %s/%s (%s): %s", t->ns, t->name, t->admin, why);
  snprintf(t->error, sizeof t->error, "%s", why);
  t->state = -1;
  t->scrapes_failed++;
  mesh_metrics_inc(d->scrapes_failed, 1);
}

typedef struct {
  daemon_state *d;
  viz_target *t;
} scrape_ctx;

static void on_scrape_error(enum evhttp_request_error err, void *ud) {
  scrape_ctx *sc = ud;
  sc->t->pending_error = (int)err;
}

static const char *request_error(int err, uint64_t timeout_ms, char *buf, size_t size) {
  switch (err) {
  case EVREQ_HTTP_TIMEOUT:
    snprintf(buf, size, "no answer within %llu ms", (unsigned long long)timeout_ms);
    return buf;
  case EVREQ_HTTP_EOF: return "connection refused or closed";
  case EVREQ_HTTP_INVALID_HEADER: return "not an HTTP answer";
  case EVREQ_HTTP_BUFFER_ERROR: return "connection failed";
  case EVREQ_HTTP_DATA_TOO_LONG:
    snprintf(buf, size, "answer larger than %u bytes", VIZ_SCRAPE_MAX_BYTES);
    return buf;
  /* libevent calls no error callback when the connection cannot be made. */
  default: return "cannot connect (refused or unreachable)";
  }
}

static uint64_t scrape_timeout(const daemon_state *d) {
  return d->st.interval_ms < SCRAPE_TIMEOUT_MAX_MS ? d->st.interval_ms : SCRAPE_TIMEOUT_MAX_MS;
}

static void on_scrape(struct evhttp_request *req, void *ud) {
  scrape_ctx *sc = ud;
  daemon_state *d = sc->d;
  viz_target *t = sc->t;
  free(sc);
  t->pending = NULL;
  t->inflight = false;
  t->last_scrape_ms = now_ms();
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 0) {
    char buf[96];
    scrape_failed(d, t, "%s", request_error(t->pending_error, scrape_timeout(d), buf, sizeof buf));
  } else if (code != 200) {
    scrape_failed(d, t, "/metrics answered %d", code);
  } else {
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(b);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    scrape_acc a = {t, NULL, 0, NAN};
    char why[256];
    if (len && !text) {
      scrape_failed(d, t, "out of memory");
    } else if (viz_prom_parse(text ? text : "", len, on_sample, &a, why, sizeof why) < 0) {
      scrape_failed(d, t, "/metrics: %s", why);
    } else {
      /* The sample covers every series known now; a.v may be shorter. */
      double *v = realloc(a.v, (t->nseries ? t->nseries : 1) * sizeof *v);
      if (!v) {
        scrape_failed(d, t, "out of memory");
      } else {
        for (size_t i = a.cap; i < t->nseries; i++) v[i] = NAN;
        a.v = NULL;
        ring_push(t, t->last_scrape_ms, v, t->nseries, a.start_s);
        if (t->state != 1) daemon_log("INFO", "scrape %s/%s (%s): ok", t->ns, t->name, t->admin);
        t->state = 1;
        t->error[0] = '\0';
        t->scrapes_ok++;
        mesh_metrics_inc(d->scrapes_ok, 1);
      }
    }
    free(a.v);
  }
  update_gauges(d);
}

static void scrape(daemon_state *d, viz_target *t) {
  if (t->inflight || !t->admin[0]) return;
  char host[256];
  const char *colon = strrchr(t->admin, ':');
  size_t hl = (size_t)(colon - t->admin);
  const char *h = t->admin;
  if (*h == '[') h++, hl -= 2;
  snprintf(host, sizeof host, "%.*s", (int)hl, h);
  uint16_t port = (uint16_t)atoi(colon + 1);
  if (!t->conn) {
    struct evhttp_connection *c = evhttp_connection_base_new(d->base, NULL, host, port);
    if (!c) {
      scrape_failed(d, t, "cannot make a connection: out of memory");
      return;
    }
    uint64_t to = scrape_timeout(d);
    struct timeval tv = {(time_t)(to / 1000), (suseconds_t)(to % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c, &tv);
    evhttp_connection_set_retries(c, 0);
    evhttp_connection_set_max_body_size(c, VIZ_SCRAPE_MAX_BYTES);
    evhttp_connection_set_max_headers_size(c, HEADERS_MAX);
    t->conn = c;
  }
  scrape_ctx *sc = malloc(sizeof *sc);
  struct evhttp_request *req = sc ? evhttp_request_new(on_scrape, sc) : NULL;
  if (!req) {
    free(sc);
    scrape_failed(d, t, "out of memory");
    return;
  }
  *sc = (scrape_ctx){d, t};
  t->pending_error = -1;
  evhttp_request_set_error_cb(req, on_scrape_error);
  struct evkeyvalq *hdr = evhttp_request_get_output_headers(req);
  evhttp_add_header(hdr, "Host", t->admin);
  evhttp_add_header(hdr, "User-Agent", "mesh-viz");
  evhttp_add_header(hdr, "Accept", "text/plain;version=0.0.4");
  /* On failure libevent frees the request without calling back. */
  if (evhttp_make_request(t->conn, req, EVHTTP_REQ_GET, "/metrics") < 0) {
    free(sc);
    scrape_failed(d, t, "cannot send the request");
    return;
  }
  t->pending = sc;
  t->inflight = true;
}

static void on_tick(evutil_socket_t fd, short what, void *ud) {
  daemon_state *d = ud;
  for (viz_target *t = d->st.targets; t; t = t->next) scrape(d, t);
}

/* ---- The store: targets, splits, profiles, services ---------------------- */

static char *dup_or(const char *s, const char *dflt) { return strdup(s && *s ? s : dflt); }

static void free_catalog(viz_state *st) {
  for (size_t i = 0; i < st->nsplits; i++) {
    viz_split *s = &st->splits[i];
    for (size_t k = 0; k < s->nleaves; k++) free(s->leaves[k]), free(s->weights[k]);
    free(s->leaves);
    free(s->weights);
    free(s->ns), free(s->name), free(s->apex);
  }
  for (size_t i = 0; i < st->nprofiles; i++) {
    viz_profile *p = &st->profiles[i];
    for (size_t k = 0; k < p->nroutes; k++) free(p->routes[k]);
    free(p->routes);
    free(p->ns), free(p->name);
  }
  for (size_t i = 0; i < st->nservices; i++) {
    free(st->services[i].ns), free(st->services[i].name);
    json_decref(st->services[i].selector);
  }
  free(st->splits), free(st->profiles), free(st->services);
  st->splits = NULL, st->profiles = NULL, st->services = NULL;
  st->nsplits = st->nprofiles = st->nservices = 0;
}

/* A weight as written (900m, 1, "50"): a number or a string. */
static char *weight_text(const json_t *w) {
  char buf[64];
  if (json_is_string(w)) return strdup(json_string_value(w));
  if (json_is_integer(w)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(w));
  else if (json_is_real(w)) snprintf(buf, sizeof buf, "%g", json_real_value(w));
  else snprintf(buf, sizeof buf, "-");
  return strdup(buf);
}

static bool add_catalog(viz_state *st, int kind, const char *ns, const char *name, json_t *doc) {
  json_t *spec = json_object_get(doc, "spec");
  if (kind == MESH_KIND_TRAFFIC_SPLIT) {
    viz_split *v = realloc(st->splits, (st->nsplits + 1) * sizeof *v);
    if (!v) return false;
    st->splits = v;
    viz_split *s = &v[st->nsplits++];
    memset(s, 0, sizeof *s);
    s->ns = dup_or(ns, "default"), s->name = dup_or(name, "");
    s->apex = dup_or(json_string_value(json_object_get(spec, "service")), "");
    json_t *bs = json_object_get(spec, "backends");
    size_t n = json_array_size(bs);
    s->leaves = calloc(n ? n : 1, sizeof *s->leaves);
    s->weights = calloc(n ? n : 1, sizeof *s->weights);
    if (!s->ns || !s->name || !s->apex || !s->leaves || !s->weights) return false;
    for (size_t i = 0; i < n; i++) {
      json_t *b = json_array_get(bs, i);
      s->leaves[s->nleaves] = dup_or(json_string_value(json_object_get(b, "service")), "");
      s->weights[s->nleaves] = weight_text(json_object_get(b, "weight"));
      if (!s->leaves[s->nleaves] || !s->weights[s->nleaves]) return false;
      s->nleaves++;
    }
  } else if (kind == MESH_KIND_SERVICE_PROFILE) {
    viz_profile *v = realloc(st->profiles, (st->nprofiles + 1) * sizeof *v);
    if (!v) return false;
    st->profiles = v;
    viz_profile *p = &v[st->nprofiles++];
    memset(p, 0, sizeof *p);
    p->ns = dup_or(ns, "default"), p->name = dup_or(name, "");
    json_t *rs = json_object_get(spec, "routes");
    size_t n = json_array_size(rs);
    p->routes = calloc(n ? n : 1, sizeof *p->routes);
    if (!p->ns || !p->name || !p->routes) return false;
    for (size_t i = 0; i < n; i++) {
      const char *rn = json_string_value(json_object_get(json_array_get(rs, i), "name"));
      if (rn && !(p->routes[p->nroutes++] = strdup(rn))) return false;
    }
  } else if (kind == MESH_KIND_SERVICE) {
    viz_service *v = realloc(st->services, (st->nservices + 1) * sizeof *v);
    if (!v) return false;
    st->services = v;
    viz_service *s = &v[st->nservices++];
    s->ns = dup_or(ns, "default"), s->name = dup_or(name, "");
    s->selector = json_incref(json_object_get(spec, "selector"));
    if (!s->ns || !s->name) return false;
  }
  return true;
}

/* The deployment of a Workload: its label app (what Linkerd's charts and
 * most Deployments set), else the Workload's own name. */
static const char *deployment_of(json_t *labels, const char *name) {
  const char *app = json_string_value(json_object_get(labels, "app"));
  return app && *app ? app : name;
}

/* A --proxy NAME: "[NS/]WORKLOAD" into ns and name. */
static void proxy_name(const char *s, char *ns, size_t nsz, char *name, size_t nmz) {
  const char *slash = strchr(s, '/');
  snprintf(ns, nsz, "%.*s", slash ? (int)(slash - s) : 7, slash ? s : "default");
  snprintf(name, nmz, "%s", slash ? slash + 1 : s);
}

/* Makes a target, or refreshes the one of that name: its samples stay
 * unless its admin address changed (another process). */
static viz_target *upsert(daemon_state *d, viz_target **list, viz_target **old, const char *ns,
                          const char *name, const char *admin) {
  viz_target *t = NULL;
  for (viz_target **pp = old; *pp; pp = &(*pp)->next)
    if (!strcmp((*pp)->ns, ns) && !strcmp((*pp)->name, name)) {
      t = *pp;
      *pp = t->next;
      break;
    }
  if (t && strcmp(t->admin, admin) != 0) {
    target_free(t);
    t = NULL;
  }
  if (!t) {
    size_t cap = d->st.retention_ms / d->st.interval_ms + 2;
    t = calloc(1, sizeof *t);
    if (t) t->ring = calloc(cap, sizeof *t->ring);
    if (!t || !t->ring) {
      free(t);
      return NULL;
    }
    t->ring_cap = cap;
    snprintf(t->admin, sizeof t->admin, "%s", admin);
  }
  target_free_ident(t);
  t->next = *list;
  *list = t;
  return t;
}

/* The targets, splits, profiles and services of snap, and the --proxy flags. */
static void rebuild(daemon_state *d, mesh_snapshot *snap) {
  viz_target *old = d->st.targets, *list = NULL;
  size_t n = 0, skipped = 0;
  free_catalog(&d->st);
  for (size_t i = 0; i < mesh_snapshot_count(snap); i++) {
    int kind = mesh_snapshot_kind(snap, i);
    if (kind != MESH_KIND_WORKLOAD && kind != MESH_KIND_TRAFFIC_SPLIT &&
        kind != MESH_KIND_SERVICE_PROFILE && kind != MESH_KIND_SERVICE)
      continue;
    char *text = NULL;
    if (mesh_snapshot_document_json(snap, i, &text) < 0) continue;
    json_t *doc = json_loads(text, 0, NULL);
    mesh_free_string(d->ctx, text);
    const char *ns = mesh_snapshot_namespace(snap, i), *name = mesh_snapshot_name(snap, i);
    if (!ns || !*ns) ns = "default";
    if (!doc || !name) {
      json_decref(doc);
      continue;
    }
    if (kind != MESH_KIND_WORKLOAD) {
      if (!add_catalog(&d->st, kind, ns, name, doc)) daemon_log("ERROR", "out of memory");
      json_decref(doc);
      continue;
    }
    if (n == VIZ_MAX_TARGETS) {
      skipped++;
      json_decref(doc);
      continue;
    }
    json_t *spec = json_object_get(doc, "spec"), *labels = json_object_get(json_object_get(doc, "metadata"), "labels");
    json_t *addrs = json_object_get(spec, "addresses"), *ap = json_object_get(spec, "adminPort");
    const char *addr1 = json_string_value(json_object_get(spec, "address"));
    if (!addr1) addr1 = json_string_value(json_array_get(addrs, 0));
    long long port = json_is_integer(ap) ? json_integer_value(ap) : MESH_STORE_DEFAULT_ADMIN_PORT;
    char admin[300] = "";
    for (size_t k = 0; k < d->nproxies; k++) {
      char pns[256], pname[256];
      proxy_name(d->proxies[k].name, pns, sizeof pns, pname, sizeof pname);
      if (!strcmp(pns, ns) && !strcmp(pname, name)) snprintf(admin, sizeof admin, "%s", d->proxies[k].addr);
    }
    if (!admin[0] && port > 0 && addr1)
      snprintf(admin, sizeof admin, strchr(addr1, ':') ? "[%s]:%lld" : "%s:%lld", addr1, port);
    viz_target *t = upsert(d, &list, &old, ns, name, admin);
    if (!t) {
      daemon_log("ERROR", "out of memory");
      json_decref(doc);
      continue;
    }
    n++;
    t->from_store = true;
    t->ns = strdup(ns), t->name = strdup(name);
    t->labels = json_is_object(labels) ? json_incref(labels) : json_object();
    t->deploy = strdup(deployment_of(labels, name));
    t->sa = dup_or(json_string_value(json_object_get(spec, "serviceAccount")), "default");
    size_t na = json_string_value(json_object_get(spec, "address")) ? 1 : json_array_size(addrs);
    t->ips = calloc(na ? na : 1, sizeof *t->ips);
    for (size_t k = 0; t->ips && k < na; k++) {
      const char *a = na == 1 && addr1 ? addr1 : json_string_value(json_array_get(addrs, k));
      if (a && (t->ips[t->nips] = strdup(a))) t->nips++;
    }
    json_decref(doc);
  }
  /* --proxy names that no Workload has: targets of their own. */
  for (size_t k = 0; k < d->nproxies && n < VIZ_MAX_TARGETS; k++) {
    char pns[256], pname[256];
    proxy_name(d->proxies[k].name, pns, sizeof pns, pname, sizeof pname);
    bool known = false;
    for (viz_target *t = list; t && !known; t = t->next)
      known = !strcmp(t->ns, pns) && !strcmp(t->name, pname);
    if (known) continue;
    viz_target *t = upsert(d, &list, &old, pns, pname, d->proxies[k].addr);
    if (!t) continue;
    n++;
    t->ns = strdup(pns), t->name = strdup(pname), t->deploy = strdup(pname), t->sa = strdup("");
    t->labels = json_object();
  }
  while (old) {
    viz_target *t = old;
    old = t->next;
    target_free(t);
  }
  d->st.targets = list;
  d->st.ntargets = n;
  if (skipped)
    daemon_log("WARN", "%zu Workloads past the first %u are not scraped", skipped, VIZ_MAX_TARGETS);
  for (viz_target *t = list; t; t = t->next)
    if (!t->ns || !t->name || !t->deploy || !t->sa || !t->labels) daemon_log("ERROR", "out of memory");
  update_gauges(d);
}

static void on_store_change(void *ud, mesh_store *st) {
  daemon_state *d = ud;
  mesh_snapshot *snap = mesh_store_snapshot(st);
  rebuild(d, snap);
  daemon_log("INFO", "store generation %llu: %zu targets", (unsigned long long)mesh_snapshot_generation(snap),
         d->st.ntargets);
  mesh_snapshot_unref(snap);
  on_tick(-1, 0, d); /* new targets get their first sample now */
}

/* ---- Serving ------------------------------------------------------------ */

static void reply_text(struct evhttp_request *req, int status, const char *ctype, const char *text,
                       size_t len) {
  struct evbuffer *b = evbuffer_new();
  if (!b || evbuffer_add(b, text, len) < 0) {
    if (b) evbuffer_free(b);
    evhttp_send_error(req, 500, NULL);
    return;
  }
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
  evhttp_send_reply(req, status, status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request", b);
  evbuffer_free(b);
}

static void serve_api(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  const char *uri = evhttp_request_get_uri(req);
  char path[64];
  int status = 400;
  json_t *j = NULL;
  if (strlen(uri) > VIZ_MAX_QUERY) {
    j = json_pack("{s:s}", "error", "request URI longer than 2048 bytes");
  } else {
    const char *q = strchr(uri, '?');
    size_t pl = q ? (size_t)(q - uri) : strlen(uri);
    snprintf(path, sizeof path, "%.*s", (int)(pl < sizeof path ? pl : sizeof path - 1), uri);
    j = viz_api(&d->st, path, q ? q + 1 : "", now_ms(), &status);
  }
  mesh_metrics_inc(status == 200 ? d->queries_ok : d->queries_bad, 1);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  reply_text(req, status, "application/json", text, strlen(text));
  free(text);
}

static void serve_metrics(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  char *text = NULL;
  size_t len = 0;
  update_gauges(d);
  if (mesh_metrics_render(d->metrics, &text, &len) < 0) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  reply_text(req, 200, "text/plain; version=0.0.4", text, len);
  mesh_free_string(d->ctx, text);
}

/* Ready once every target has been tried: the answers then say something. */
static void serve_ready(struct evhttp_request *req, void *ud) {
  daemon_state *d = ud;
  size_t untried = 0;
  for (viz_target *t = d->st.targets; t; t = t->next) untried += t->admin[0] && t->state == 0;
  if (untried) {
    char msg[64];
    int n = snprintf(msg, sizeof msg, "not ready: %zu targets not scraped yet\n", untried);
    reply_text(req, 503, "text/plain", msg, (size_t)n);
  } else {
    reply_text(req, 200, "text/plain", "ready\n", 6);
  }
}

static void serve_live(struct evhttp_request *req, void *ud) {
  reply_text(req, 200, "text/plain", "live\n", 5);
}

static void serve_other(struct evhttp_request *req, void *ud) {
  static const char msg[] = "not found: try /api/stat, /api/routes, /api/edges, /api/targets, "
                            "/metrics, /ready or /live\n";
  reply_text(req, 404, "text/plain", msg, sizeof msg - 1);
}

static bool metrics_setup(daemon_state *d) {
  mesh_metric_family *scrapes, *targets, *reachable, *series, *queries;
  const char *result = "result";
  int rc = mesh_metrics_new(d->ctx, &d->metrics);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "viz_scrapes_total",
                              "Scrapes of proxies' /metrics, by result (ok, failure).", &result, 1,
                              &scrapes);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "viz_targets", "Proxies to scrape (Workloads and --proxy).",
                            NULL, 0, &targets);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "viz_targets_reachable",
                            "Proxies whose last scrape worked.", NULL, 0, &reachable);
  if (!rc)
    rc = mesh_metrics_gauge(d->metrics, "viz_series", "Series kept, all proxies together.", NULL, 0,
                            &series);
  if (!rc)
    rc = mesh_metrics_counter(d->metrics, "viz_queries_total",
                              "API queries, by result (ok, bad: refused with 400/404).", &result, 1,
                              &queries);
  const char *ok = "ok", *failure = "failure", *bad = "bad";
  if (!rc) rc = mesh_metrics_series(scrapes, &ok, 1, &d->scrapes_ok);
  if (!rc) rc = mesh_metrics_series(scrapes, &failure, 1, &d->scrapes_failed);
  if (!rc) rc = mesh_metrics_series(targets, NULL, 0, &d->targets_g);
  if (!rc) rc = mesh_metrics_series(reachable, NULL, 0, &d->reachable_g);
  if (!rc) rc = mesh_metrics_series(series, NULL, 0, &d->series_g);
  if (!rc) rc = mesh_metrics_series(queries, &ok, 1, &d->queries_ok);
  if (!rc) rc = mesh_metrics_series(queries, &bad, 1, &d->queries_bad);
  if (!rc) rc = mesh_metrics_process(d->metrics);
  if (rc) daemon_log("ERROR", "cannot set up the metrics: %s", mesh_strerror(rc));
  return rc == 0;
}

static void metrics_free(daemon_state *d) {
  mesh_metric_series *all[] = {d->scrapes_ok, d->scrapes_failed, d->targets_g, d->reachable_g,
                               d->series_g,   d->queries_ok,     d->queries_bad};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mesh_metrics_series_unref(all[i]);
  mesh_metrics_free(d->metrics);
}

static struct evhttp *serve_start(daemon_state *d, const char *addr) {
  char host[256];
  uint16_t port;
  if (!daemon_split_addr(addr, host, sizeof host, &port) || !*host) {
    daemon_log("ERROR", "--listen %s: expected HOST:PORT", addr);
    return NULL;
  }
  struct evhttp *http = daemon_http_listen(d->base, "--listen", addr, &port);
  if (!http) return NULL;
  evhttp_set_max_headers_size(http, HEADERS_MAX);
  evhttp_set_max_body_size(http, 0);
  evhttp_set_timeout(http, 10);
  const char *api[] = {"/api/stat", "/api/routes", "/api/edges", "/api/targets"};
  for (size_t i = 0; i < 4; i++) evhttp_set_cb(http, api[i], serve_api, d);
  evhttp_set_cb(http, "/metrics", serve_metrics, d);
  evhttp_set_cb(http, "/ready", serve_ready, d);
  evhttp_set_cb(http, "/live", serve_live, d);
  evhttp_set_gencb(http, serve_other, d);
  daemon_log("INFO", "API (/api/stat /api/routes /api/edges /api/targets), /metrics, /ready, /live on %s", addr);
  return http;
}

/* ---- Main --------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *ud) {
  daemon_state *d = ud;
  if (sig == SIGHUP) {
    mesh_store_reload(d->store);
    return;
  }
  daemon_log("INFO", "%s: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  event_base_loopexit(d->base, NULL);
}

static void usage(FILE *out) {
  fprintf(out,
          "mesh-viz: golden metrics without Prometheus. Scrapes the /metrics of every\n"
          "meshd (each Workload of the store at its address and adminPort), keeps the\n"
          "samples for the retention, and answers `meshctl viz` (doc/viz.md).\n\n"
          "Usage:\n  mesh-viz --store-dir DIR [flags]\n\n"
          "Flags:\n"
          "      --store-dir DIR          the manifests: Workloads (scraped), Services,\n"
          "                               ServiceProfiles, TrafficSplits; watched\n"
          "      --listen ADDR            the JSON API, /metrics, /ready, /live\n"
          "                               (default 127.0.0.1:8085)\n"
          "      --scrape-interval D      time between scrapes of a proxy (default 10s;\n"
          "                               1s..5m); a scrape times out after D, at most 10s\n"
          "      --retention D            how long samples are kept (default 1h; at most\n"
          "                               %u scrape intervals)\n"
          "      --proxy NAME=ADDR        scrape ADDR (host:port) for the Workload NAME\n"
          "                               ([NS/]NAME; namespace default), or as a proxy of\n"
          "                               its own when no Workload has that name (repeatable)\n"
          "      --debounce-ms MS         at most one store read a period; a file being\n"
          "                               written waits for this much quiet (default 100)\n"
          "  -h, --help                   show this help\n\n"
          "Durations: 500ms, 10s, 1m, 1h. SIGHUP reads the store at once; SIGTERM or SIGINT\n"
          "stops. Logs go to standard error.\n",
          VIZ_MAX_SAMPLES);
}

int main(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_LISTEN, OPT_INTERVAL, OPT_RETENTION, OPT_PROXY, OPT_DEBOUNCE };
  static const struct option opts[] = {
      {"store-dir", required_argument, NULL, OPT_DIR},
      {"listen", required_argument, NULL, OPT_LISTEN},
      {"scrape-interval", required_argument, NULL, OPT_INTERVAL},
      {"retention", required_argument, NULL, OPT_RETENTION},
      {"proxy", required_argument, NULL, OPT_PROXY},
      {"debounce-ms", required_argument, NULL, OPT_DEBOUNCE},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  static daemon_state d; /* static: large, and zeroed */
  const char *listen = "127.0.0.1:8085", *dir = NULL;
  uint64_t interval = 10000, retention = 3600000;
  long debounce = -1;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case OPT_LISTEN: listen = optarg; break;
    case OPT_INTERVAL:
      if (!viz_parse_duration(optarg, 300000, &interval) || interval < 1000) {
        fprintf(stderr, "mesh-viz: --scrape-interval is a duration from 1s to 5m\n");
        return 2;
      }
      break;
    case OPT_RETENTION:
      if (!viz_parse_duration(optarg, 7 * 86400000ull, &retention) || retention < 1000) {
        fprintf(stderr, "mesh-viz: --retention is a duration from 1s to 168h\n");
        return 2;
      }
      break;
    case OPT_PROXY: {
      const char *eq = strchr(optarg, '=');
      char host[256];
      uint16_t port;
      if (!eq || eq == optarg || !daemon_split_addr(eq + 1, host, sizeof host, &port) || !*host || port == 0 ||
          (size_t)(eq - optarg) > 253) {
        fprintf(stderr, "mesh-viz: --proxy %s: expected [NS/]NAME=HOST:PORT\n", optarg);
        return 2;
      }
      if (d.nproxies == MAX_PROXY_FLAGS) {
        fprintf(stderr, "mesh-viz: at most %u --proxy flags\n", MAX_PROXY_FLAGS);
        return 2;
      }
      *(char *)eq = '\0';
      d.proxies[d.nproxies++] = (proxy_flag){optarg, eq + 1};
      break;
    }
    case OPT_DEBOUNCE:
      if (!daemon_flag_long("mesh-viz", "debounce-ms", optarg, 0, 10000, &debounce)) return 2;
      break;
    case 'h': usage(stdout); return 0;
    default: fprintf(stderr, "Run 'mesh-viz --help' for usage.\n"); return 2;
    }
  }
  if (optind < argc || !dir) {
    fprintf(stderr, "mesh-viz: %s\nRun 'mesh-viz --help' for usage.\n",
            dir ? "unexpected argument" : "give the manifest directory with --store-dir DIR");
    return 2;
  }
  if (retention / interval + 1 > VIZ_MAX_SAMPLES) {
    fprintf(stderr, "mesh-viz: --retention / --scrape-interval is at most %u samples\n",
            VIZ_MAX_SAMPLES - 1);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  d.st.interval_ms = interval;
  d.st.retention_ms = retention;
  int status = 1, rc;
  mesh_store_opts *so = NULL;
  mesh_diags *diags = NULL;
  struct evhttp *http = NULL;
  struct event *sigs[3] = {NULL};
  if (mesh_ctx_new(&d.ctx) < 0 || !(d.base = event_base_new())) {
    daemon_log("ERROR", "out of memory");
    goto done;
  }
  mesh_ctx_set_log(d.ctx, MESH_LOG_INFO, daemon_log_lib, "libmesh: ");
  if (!metrics_setup(&d)) goto done;
  if ((rc = mesh_store_opts_new(d.ctx, &so)) < 0 || (rc = mesh_store_opts_set_dir(so, dir)) < 0 ||
      (rc = mesh_diags_new(d.ctx, &diags)) < 0 ||
      (debounce >= 0 && (rc = mesh_store_opts_set_debounce_ms(so, (uint32_t)debounce)) < 0)) {
    daemon_log("ERROR", "cannot set up the store: %s", mesh_strerror(rc));
    goto done;
  }
  if ((rc = mesh_store_new(d.ctx, so, diags, &d.store)) < 0) {
    for (size_t i = 0; i < mesh_diags_count(diags); i++) daemon_log("ERROR", "%s", mesh_diags_text(diags, i));
    daemon_log("ERROR", "--store-dir %s: cannot load the store: %s", dir, mesh_strerror(rc));
    goto done;
  }
  mesh_store_on_change(d.store, on_store_change, &d);
  if ((rc = mesh_store_watch(d.store, d.base)) < 0) {
    daemon_log("ERROR", "--store-dir %s: cannot watch: %s: %s", dir, mesh_strerror(rc), strerror(errno));
    goto done;
  }
  if (!(http = serve_start(&d, listen))) goto done;
  mesh_snapshot *snap = mesh_store_snapshot(d.store);
  rebuild(&d, snap);
  mesh_snapshot_unref(snap);
  daemon_log("INFO", "store %s: %zu targets; scraping every %llu ms, keeping %llu ms", dir, d.st.ntargets,
         (unsigned long long)interval, (unsigned long long)retention);
  struct timeval tv = {(time_t)(interval / 1000), (suseconds_t)(interval % 1000) * 1000};
  if (!(d.tick = event_new(d.base, -1, EV_PERSIST, on_tick, &d)) || event_add(d.tick, &tv) < 0) goto done;
  on_tick(-1, 0, &d);
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
  if (d.tick) event_free(d.tick);
  if (http) evhttp_free(http);
  while (d.st.targets) {
    viz_target *t = d.st.targets;
    d.st.targets = t->next;
    target_free(t);
  }
  free_catalog(&d.st);
  mesh_store_free(d.store);
  mesh_store_opts_free(so);
  mesh_diags_free(diags);
  metrics_free(&d);
  if (d.base) event_base_free(d.base);
  mesh_ctx_free(d.ctx);
  if (status == 0) daemon_log("INFO", "stopped");
  return status;
}
