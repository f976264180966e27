/* mesh-destination's etcd backend: a range read then a watch through etcd's v3 JSON gateway (evhttp), failover across members, the key set fed to the store. */
#include <arpa/inet.h>
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

#include <mesh/error.h>

#include "daemon_etcd.h"
#include "etcd.h"

typedef struct {
  char host[64]; /* an IP address: names would need a resolver that does not block */
  uint16_t port;
  char text[96]; /* "http://host:port", as logged */
} endpoint;

typedef struct {
  char *key; /* the whole key, NUL-terminated (keys with a NUL byte are skipped) */
  char *val;
  size_t len;
  char *src; /* a registration's source name ("registration ns/name"), else NULL */
} kv;

enum { ST_IDLE, ST_RANGE, ST_WATCH };

struct dst_etcd {
  struct event_base *base;
  mesh_store *store;
  dst_etcd_log_fn log;
  char *prefix, *key_b64, *end_b64;
  size_t prefix_len;
  endpoint eps[DST_ETCD_MAX_ENDPOINTS];
  size_t neps, cur;
  /* rconn: range reads and probes (short timeouts); wconn: the watch,
   * idle for as long as nothing changes, so its timeout is long and the
   * probes tell whether the member still serves. */
  struct evhttp_connection *rconn, *wconn;
  int state; /* ST_* */
  bool connected, synced, need_full, failing, probing;
  uint32_t failures; /* in a row, since the last established watch */
  kv *kvs;           /* sorted by key */
  size_t nkvs, cap;
  int64_t rev;
  struct evbuffer *msg; /* the watch message being received */
  struct event *retry, *probe, *feed;
  uint32_t debounce_ms;  /* at most one feed a period */
  uint64_t last_feed_ms; /* monotonic */
  dst_etcd_req *reqs; /* single requests in flight */
  /* Their finished connections, freed from the loop: a connection may not
   * be freed inside its own request's callback. */
  struct dead_conn *dead;
  struct event *reap;
};

struct dead_conn {
  struct evhttp_connection *conn;
  struct dead_conn *next;
};

static void logf_(dst_etcd *e, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(dst_etcd *e, const char *level, const char *fmt, ...) {
  if (!e->log) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  e->log(level, line);
}

/* ---- Endpoints -------------------------------------------------------------- */

static bool parse_endpoint(const char *s, size_t n, endpoint *ep, char *err, size_t esize) {
  char item[128];
  if (n == 0 || n >= sizeof item) {
    snprintf(err, esize, "'%.*s': expected http://IP:PORT", (int)(n > 100 ? 100 : n), s);
    return false;
  }
  memcpy(item, s, n);
  item[n] = '\0';
  const char *p = item;
  if (!strncmp(p, "https://", 8)) {
    snprintf(err, esize, "'%s': TLS to etcd is not supported: give http:// endpoints", item);
    return false;
  }
  if (!strncmp(p, "http://", 7)) p += 7;
  size_t pl = strlen(p);
  if (pl && p[pl - 1] == '/') pl--;
  const char *colon = memrchr(p, ':', pl);
  char host[64];
  const char *h = p;
  size_t hl = colon ? (size_t)(colon - p) : 0;
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  char *end = NULL;
  unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
  unsigned char ab[16];
  if (!colon || hl == 0 || hl >= sizeof host || end != p + pl || port == 0 || port > 65535 ||
      (memcpy(host, h, hl), host[hl] = '\0',
       inet_pton(AF_INET, host, ab) != 1 && inet_pton(AF_INET6, host, ab) != 1)) {
    snprintf(err, esize, "'%s': expected http://IP:PORT (an IP address: names are not resolved)",
             item);
    return false;
  }
  snprintf(ep->host, sizeof ep->host, "%s", host);
  ep->port = (uint16_t)port;
  snprintf(ep->text, sizeof ep->text, "http://%s%s%s:%lu", strchr(host, ':') ? "[" : "", host,
           strchr(host, ':') ? "]" : "", port);
  return true;
}

static bool parse_endpoints(const char *list, endpoint *eps, size_t *n, char *err, size_t esize) {
  *n = 0;
  for (const char *p = list;;) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (*n == DST_ETCD_MAX_ENDPOINTS) {
      snprintf(err, esize, "more than %u endpoints", DST_ETCD_MAX_ENDPOINTS);
      return false;
    }
    if (!parse_endpoint(p, len, &eps[*n], err, esize)) return false;
    (*n)++;
    if (!comma) return true;
    p = comma + 1;
  }
}

bool dst_etcd_endpoints_valid(const char *endpoints, char *err, size_t esize) {
  endpoint eps[DST_ETCD_MAX_ENDPOINTS];
  size_t n;
  return endpoints && parse_endpoints(endpoints, eps, &n, err, esize);
}

/* ---- The copy of the keys --------------------------------------------------- */

static void kvs_clear(dst_etcd *e) {
  for (size_t i = 0; i < e->nkvs; i++) {
    free(e->kvs[i].key);
    free(e->kvs[i].val);
    free(e->kvs[i].src);
  }
  e->nkvs = 0;
}

/* Where key is, or where it would go (*found 0). */
static size_t kv_find(const dst_etcd *e, const char *key, bool *found) {
  size_t lo = 0, hi = e->nkvs;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(e->kvs[mid].key, key);
    if (c == 0) {
      *found = true;
      return mid;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  *found = false;
  return lo;
}

/* Takes key and val (malloc'd). false when out of memory (both freed). */
static bool kv_put(dst_etcd *e, char *key, char *val, size_t len) {
  bool found = false;
  size_t i = kv_find(e, key, &found);
  if (found) {
    free(key);
    free(e->kvs[i].val);
    e->kvs[i].val = val;
    e->kvs[i].len = len;
    return true;
  }
  if (e->nkvs == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 64;
    kv *k = realloc(e->kvs, cap * sizeof *k);
    if (!k) {
      free(key);
      free(val);
      return false;
    }
    e->kvs = k;
    e->cap = cap;
  }
  char src[400], *rsrc = NULL;
  if (etcd_key_kind(e->prefix, key, src, sizeof src) == ETCD_KEY_REGISTRATION &&
      !(rsrc = strdup(src))) {
    free(key);
    free(val);
    return false;
  }
  memmove(e->kvs + i + 1, e->kvs + i, (e->nkvs - i) * sizeof *e->kvs);
  e->kvs[i] = (kv){key, val, len, rsrc};
  e->nkvs++;
  return true;
}

static void kv_delete(dst_etcd *e, const char *key) {
  bool found;
  size_t i = kv_find(e, key, &found);
  if (!found) return;
  free(e->kvs[i].key);
  free(e->kvs[i].val);
  free(e->kvs[i].src);
  memmove(e->kvs + i, e->kvs + i + 1, (e->nkvs - i - 1) * sizeof *e->kvs);
  e->nkvs--;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Hands the whole set to the store; the store logs what it made of it.
 * Manifests first, then registrations (as a directory store serves them),
 * so that a duplicate is reported at the registration. */
static void feed_store(dst_etcd *e) {
  e->last_feed_ms = mono_ms();
  size_t n = 0;
  const char **src = malloc((e->nkvs ? e->nkvs : 1) * sizeof *src);
  const char **bufs = malloc((e->nkvs ? e->nkvs : 1) * sizeof *bufs);
  size_t *lens = malloc((e->nkvs ? e->nkvs : 1) * sizeof *lens);
  if (src && bufs && lens) {
    for (int pass = 0; pass < 2; pass++)
      for (size_t i = 0; i < e->nkvs; i++) {
        const kv *k = &e->kvs[i];
        if (pass == 0 ? etcd_key_kind(e->prefix, k->key, NULL, 0) != ETCD_KEY_MANIFEST : !k->src)
          continue;
        src[n] = pass == 0 ? k->key : k->src;
        bufs[n] = k->val;
        lens[n++] = k->len;
      }
    int rc = mesh_store_load_buffers(e->store, n, src, bufs, lens);
    if (rc == MESH_ERR_NOMEM || rc == MESH_ERR_INVALID)
      logf_(e, "ERROR", "etcd revision %lld: cannot load: %s", (long long)e->rev, mesh_strerror(rc));
  } else {
    logf_(e, "ERROR", "etcd revision %lld: out of memory", (long long)e->rev);
  }
  free(src);
  free(bufs);
  free(lens);
}

static void on_feed(evutil_socket_t fd, short what, void *ud) { feed_store(ud); }

/* A watch message is a whole change (a transaction's writes arrive
 * together), so it is fed at once; but at most once a debounce period,
 * so that a burst (proxies registering in a rollout) makes one state a
 * period, and changes that arrive while the store is busy go together. */
static void schedule_feed(dst_etcd *e) {
  if (evtimer_pending(e->feed, NULL)) return;
  uint64_t now = mono_ms(), next = e->last_feed_ms + e->debounce_ms;
  uint64_t wait = next > now ? next - now : 0;
  struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000};
  evtimer_add(e->feed, &tv);
}

/* ---- JSON ------------------------------------------------------------------- */

/* A kv object's key and value, decoded. false when malformed (or a NUL in the key). */
static bool decode_kv(const json_t *o, char **key, char **val, size_t *len) {
  const char *k = json_string_value(json_object_get(o, "key"));
  const char *v = json_string_value(json_object_get(o, "value"));
  size_t kl = 0;
  *key = k ? etcd_b64_decode(k, &kl) : NULL;
  *val = NULL;
  if (!*key || strlen(*key) != kl) {
    free(*key);
    return false;
  }
  *val = etcd_b64_decode(v ? v : "", len); /* an empty value is left out */
  if (!*val) {
    free(*key);
    return false;
  }
  return true;
}

/* ---- Requests --------------------------------------------------------------- */

static void start(dst_etcd *e);

static const char *here(const dst_etcd *e) { return e->eps[e->cur].text; }

/* Gives up on the current member: the connections go (from the loop, not
 * from inside their callbacks), then the next member is tried. Only the
 * first failure of a connection counts. */
static void fail(dst_etcd *e, bool next, const char *why) {
  if (e->failing) return;
  e->failing = true;
  bool was = e->connected;
  e->connected = false;
  e->state = ST_IDLE;
  e->failures++;
  uint32_t delay = 0;
  if (e->failures >= e->neps) {
    uint32_t shift = e->failures - (uint32_t)e->neps;
    delay = shift >= 5 ? DST_ETCD_RETRY_MAX_MS : DST_ETCD_RETRY_MIN_MS << shift;
    if (delay > DST_ETCD_RETRY_MAX_MS) delay = DST_ETCD_RETRY_MAX_MS;
  }
  size_t to = next ? (e->cur + 1) % e->neps : e->cur;
  logf_(e, was ? "WARN" : "INFO", "etcd %s: %s; %s %s in %u ms (serving revision %lld)", here(e),
        why, e->need_full || !e->synced ? "reading everything from" : "resuming the watch on",
        e->eps[to].text, delay, (long long)e->rev);
  e->cur = to;
  struct timeval tv = {(time_t)(delay / 1000), (suseconds_t)(delay % 1000) * 1000};
  evtimer_add(e->retry, &tv);
}

static struct evhttp_request *new_request(dst_etcd *e, void (*cb)(struct evhttp_request *, void *),
                                          json_t *body) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  struct evhttp_request *req = text ? evhttp_request_new(cb, e) : NULL;
  if (!req) {
    free(text);
    return NULL;
  }
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  char hostport[96];
  snprintf(hostport, sizeof hostport, "%s", here(e) + 7);
  evhttp_add_header(h, "Host", hostport);
  evhttp_add_header(h, "Content-Type", "application/json");
  evbuffer_add(evhttp_request_get_output_buffer(req), text, strlen(text));
  free(text);
  return req;
}

static json_t *range_body(const dst_etcd *e, bool count_only) {
  return json_pack("{s:s,s:s,s:b}", "key", e->key_b64, "range_end", e->end_b64, "count_only",
                   count_only);
}

/* Reads a whole body (bounded by the connection's max body size) as JSON. */
static json_t *body_json(struct evhttp_request *req) {
  struct evbuffer *b = evhttp_request_get_input_buffer(req);
  size_t n = evbuffer_get_length(b);
  const char *p = (const char *)evbuffer_pullup(b, (ev_ssize_t)n);
  json_error_t je;
  return p || n == 0 ? json_loadb(p ? p : "", n, 0, &je) : NULL;
}

static void start_watch(dst_etcd *e);

static void on_range(struct evhttp_request *req, void *ud) {
  dst_etcd *e = ud;
  if (e->failing || e->state != ST_RANGE) return;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code != 200) {
    char why[64];
    snprintf(why, sizeof why, code ? "range read: HTTP %d" : "range read: no answer", code);
    fail(e, true, why);
    return;
  }
  json_t *j = body_json(req);
  int64_t rev = etcd_i64(json_object_get(json_object_get(j, "header"), "revision"));
  json_t *kvs = json_object_get(j, "kvs");
  if (rev <= 0 || (kvs && !json_is_array(kvs))) {
    json_decref(j);
    fail(e, true, "range read: not an etcd answer");
    return;
  }
  kvs_clear(e);
  bool ok = true;
  size_t i;
  json_t *o;
  json_array_foreach(kvs, i, o) {
    char *key, *val;
    size_t len;
    if (!decode_kv(o, &key, &val, &len)) continue;
    if (!kv_put(e, key, val, len)) ok = false;
  }
  json_decref(j);
  if (!ok) {
    fail(e, false, "range read: out of memory");
    return;
  }
  e->rev = rev;
  e->need_full = false;
  e->synced = true;
  logf_(e, "INFO", "etcd %s: read %zu keys under %s at revision %lld", here(e), e->nkvs,
        e->prefix, (long long)rev);
  if (evtimer_pending(e->feed, NULL)) evtimer_del(e->feed);
  feed_store(e);
  start_watch(e);
}

/* One message of the watch stream. false when the stream is to be left
 * (fail has run). */
static bool watch_message(dst_etcd *e, const char *text, size_t len) {
  json_error_t je;
  json_t *j = json_loadb(text, len, 0, &je);
  json_t *err = json_object_get(j, "error");
  json_t *res = json_object_get(j, "result");
  if (!json_is_object(res)) {
    char why[300];
    const char *m = json_string_value(json_object_get(err, "message"));
    snprintf(why, sizeof why, "watch: %s", m ? m : j ? "an answer without a result" : "not JSON");
    json_decref(j);
    fail(e, true, why);
    return false;
  }
  int64_t compact = etcd_i64(json_object_get(res, "compact_revision"));
  if (compact > 0 || json_is_true(json_object_get(res, "canceled"))) {
    char why[200];
    snprintf(why, sizeof why, "watch canceled (%s%lld)",
             compact > 0 ? "revision compacted up to " : "", (long long)(compact > 0 ? compact : 0));
    json_decref(j);
    e->need_full = true; /* what changed in between is gone from etcd's history */
    fail(e, false, why);
    return false;
  }
  if (json_is_true(json_object_get(res, "created")) && !e->connected) {
    e->connected = true;
    e->failures = 0;
    logf_(e, "INFO", "etcd %s: watching %s from revision %lld", here(e), e->prefix,
          (long long)e->rev + 1);
  }
  json_t *events = json_object_get(res, "events");
  size_t i;
  json_t *ev;
  bool changed = false;
  json_array_foreach(events, i, ev) {
    json_t *o = json_object_get(ev, "kv");
    int64_t mod = etcd_i64(json_object_get(o, "mod_revision"));
    char *key, *val;
    size_t vlen;
    if (!decode_kv(o, &key, &val, &vlen)) continue;
    if (mod > e->rev) e->rev = mod; /* resume after the last event seen, never before */
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (type && !strcmp(type, "DELETE")) {
      char src[400];
      if (etcd_key_kind(e->prefix, key, src, sizeof src) == ETCD_KEY_REGISTRATION)
        logf_(e, "INFO", "%s: gone from etcd (deregistered, or its lease lapsed)", src);
      kv_delete(e, key);
      free(key);
      free(val);
    } else if (!kv_put(e, key, val, vlen)) {
      json_decref(j);
      e->need_full = true; /* the copy missed a change */
      fail(e, false, "watch: out of memory");
      return false;
    }
    changed = true;
  }
  json_decref(j);
  if (changed) schedule_feed(e);
  return true;
}

static void on_watch_chunk(struct evhttp_request *req, void *ud) {
  dst_etcd *e = ud;
  if (e->failing || e->state != ST_WATCH) return;
  if (evhttp_request_get_response_code(req) != 200) return; /* the end callback says why */
  evbuffer_add_buffer(e->msg, evhttp_request_get_input_buffer(req));
  for (;;) {
    struct evbuffer_ptr nl = evbuffer_search_eol(e->msg, NULL, NULL, EVBUFFER_EOL_LF);
    if (nl.pos < 0) break;
    size_t n = (size_t)nl.pos;
    const char *p = (const char *)evbuffer_pullup(e->msg, (ev_ssize_t)n + 1);
    bool go = !p || watch_message(e, p, n);
    evbuffer_drain(e->msg, n + 1);
    if (!go) return;
  }
  if (evbuffer_get_length(e->msg) > DST_ETCD_MAX_WATCH_BYTES) {
    e->need_full = true; /* a change is lost with the message */
    fail(e, false, "watch: a message over 32 MiB");
  }
}

static void on_watch_end(struct evhttp_request *req, void *ud) {
  dst_etcd *e = ud;
  if (e->failing || e->state != ST_WATCH) return;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  char why[64];
  snprintf(why, sizeof why, code && code != 200 ? "watch: HTTP %d" : "watch stream ended", code);
  fail(e, true, why);
}

static void start_watch(dst_etcd *e) {
  json_t *body = json_pack("{s:{s:s,s:s,s:I}}", "create_request", "key", e->key_b64, "range_end",
                           e->end_b64, "start_revision", (json_int_t)(e->rev + 1));
  struct evhttp_request *req = new_request(e, on_watch_end, body);
  if (!req) {
    fail(e, false, "out of memory");
    return;
  }
  evhttp_request_set_chunked_cb(req, on_watch_chunk);
  evbuffer_drain(e->msg, evbuffer_get_length(e->msg));
  e->state = ST_WATCH;
  if (evhttp_make_request(e->wconn, req, EVHTTP_REQ_POST, "/v3/watch") < 0)
    fail(e, true, "watch: cannot send");
}

static void on_probe(struct evhttp_request *req, void *ud) {
  dst_etcd *e = ud;
  e->probing = false;
  if (e->failing || e->state != ST_WATCH) return;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 200) return;
  char why[80];
  if (code) snprintf(why, sizeof why, "quorum read: HTTP %d", code);
  else snprintf(why, sizeof why, "quorum read: no answer within %d s", DST_ETCD_REQUEST_TIMEOUT_S);
  fail(e, true, why);
}

/* A watch on a member cut off from the others stays open and silent: a
 * linearizable read needs the quorum, so its failure says so. */
static void on_probe_timer(evutil_socket_t fd, short what, void *ud) {
  dst_etcd *e = ud;
  if (e->state != ST_WATCH || e->failing || e->probing) return;
  struct evhttp_request *req = new_request(e, on_probe, range_body(e, true));
  if (!req) return;
  e->probing = true;
  if (evhttp_make_request(e->rconn, req, EVHTTP_REQ_POST, "/v3/kv/range") < 0) {
    e->probing = false;
    fail(e, true, "quorum read: cannot send");
  }
}

static void close_conns(dst_etcd *e) {
  /* Pending requests go with their connection, without their callbacks. */
  if (e->rconn) evhttp_connection_free(e->rconn);
  if (e->wconn) evhttp_connection_free(e->wconn);
  e->rconn = e->wconn = NULL;
  e->probing = false;
}

static void start(dst_etcd *e) {
  close_conns(e);
  e->failing = false;
  const endpoint *ep = &e->eps[e->cur];
  e->rconn = evhttp_connection_base_new(e->base, NULL, ep->host, ep->port);
  e->wconn = evhttp_connection_base_new(e->base, NULL, ep->host, ep->port);
  if (!e->rconn || !e->wconn) {
    fail(e, false, "out of memory");
    return;
  }
  evhttp_connection_set_timeout(e->rconn, DST_ETCD_REQUEST_TIMEOUT_S);
  evhttp_connection_set_max_body_size(e->rconn, DST_ETCD_MAX_RANGE_BYTES);
  evhttp_connection_set_max_headers_size(e->rconn, 65536);
  evhttp_connection_set_max_headers_size(e->wconn, 65536);
  /* Idle is normal for a watch; a silent dead member is the probe's to find. */
  evhttp_connection_set_timeout(e->wconn, 24 * 3600);
  evhttp_connection_set_retries(e->rconn, 0);
  evhttp_connection_set_retries(e->wconn, 0);
  if (!e->synced || e->need_full) {
    struct evhttp_request *req = new_request(e, on_range, range_body(e, false));
    e->state = ST_RANGE;
    if (!req) fail(e, false, "out of memory");
    else if (evhttp_make_request(e->rconn, req, EVHTTP_REQ_POST, "/v3/kv/range") < 0)
      fail(e, true, "range read: cannot send");
    return;
  }
  start_watch(e);
}

static void on_retry(evutil_socket_t fd, short what, void *ud) { start(ud); }

/* ---- Single requests (registrations) ----------------------------------------- */

struct dst_etcd_req {
  dst_etcd *e;
  struct evhttp_connection *conn;
  char path[48];
  char *body;          /* JSON text, kept to try the next member with */
  size_t member, tries;
  dst_etcd_reply_fn cb; /* NULL: nobody waits for the answer */
  void *ud;
  dst_etcd_req *prev, *next;
};

static void req_free(dst_etcd_req *q) {
  dst_etcd *e = q->e;
  if (q->prev) q->prev->next = q->next;
  else e->reqs = q->next;
  if (q->next) q->next->prev = q->prev;
  free(q->body);
  free(q);
}

static void on_reap(evutil_socket_t fd, short what, void *ud) {
  dst_etcd *e = ud;
  while (e->dead) {
    struct dead_conn *d = e->dead;
    e->dead = d->next;
    evhttp_connection_free(d->conn);
    free(d);
  }
}

/* A connection whose request is done, freed from the loop soon. */
static void retire(dst_etcd *e, struct evhttp_connection *conn) {
  struct dead_conn *d = malloc(sizeof *d);
  if (!d) return; /* a leak rather than a free under libevent's feet */
  *d = (struct dead_conn){conn, e->dead};
  e->dead = d;
  struct timeval now = {0, 0};
  evtimer_add(e->reap, &now);
}

static bool req_send(dst_etcd_req *q);

static void on_req_done(struct evhttp_request *req, void *ud) {
  dst_etcd_req *q = ud;
  dst_etcd *e = q->e;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  retire(e, q->conn);
  q->conn = NULL;
  /* A member that does not answer: the next one, each member once. */
  if (code == 0 && ++q->tries < e->neps) {
    q->member = (q->member + 1) % e->neps;
    if (req_send(q)) return;
  }
  json_t *j = code ? body_json(req) : NULL;
  char why[300] = "";
  if (code != 200 || !json_is_object(j)) {
    const char *m = json_string_value(json_object_get(j, "message"));
    if (!code)
      snprintf(why, sizeof why, "no answer from etcd (%zu members tried)", q->tries);
    else
      snprintf(why, sizeof why, "etcd %s%s: HTTP %d%s%.200s", e->eps[q->member].text, q->path,
               code, m ? ": " : "", m ? m : "");
    json_decref(j);
    j = NULL;
  }
  dst_etcd_reply_fn cb = q->cb;
  void *cud = q->ud;
  req_free(q);
  if (cb) cb(cud, j, why);
  json_decref(j);
}

static bool req_send(dst_etcd_req *q) {
  dst_etcd *e = q->e;
  const endpoint *ep = &e->eps[q->member];
  struct evhttp_request *req = evhttp_request_new(on_req_done, q);
  q->conn = req ? evhttp_connection_base_new(e->base, NULL, ep->host, ep->port) : NULL;
  if (!q->conn) {
    if (req) evhttp_request_free(req);
    return false;
  }
  evhttp_connection_set_timeout(q->conn, DST_ETCD_REQUEST_TIMEOUT_S);
  evhttp_connection_set_retries(q->conn, 0);
  evhttp_connection_set_max_body_size(q->conn, DST_ETCD_MAX_REQUEST_ANSWER);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Host", ep->text + 7);
  evhttp_add_header(h, "Content-Type", "application/json");
  evhttp_add_header(h, "Connection", "close"); /* one request a connection */
  evbuffer_add(evhttp_request_get_output_buffer(req), q->body, strlen(q->body));
  if (evhttp_make_request(q->conn, req, EVHTTP_REQ_POST, q->path) < 0) {
    evhttp_connection_free(q->conn); /* the request went with it */
    q->conn = NULL;
    return false;
  }
  return true;
}

int dst_etcd_request(dst_etcd *e, const char *path, json_t *body, dst_etcd_reply_fn cb, void *ud,
                     dst_etcd_req **ret) {
  char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
  json_decref(body);
  dst_etcd_req *q = text && strlen(path) < sizeof q->path ? calloc(1, sizeof *q) : NULL;
  if (!q) {
    free(text);
    return MESH_ERR_NOMEM;
  }
  *q = (dst_etcd_req){.e = e, .body = text, .member = e->cur, .cb = cb, .ud = ud, .next = e->reqs};
  snprintf(q->path, sizeof q->path, "%s", path);
  if (e->reqs) e->reqs->prev = q;
  e->reqs = q;
  if (!req_send(q)) {
    req_free(q);
    return MESH_ERR_NOMEM;
  }
  if (ret) *ret = q;
  return 0;
}

void dst_etcd_cancel(dst_etcd_req *q) {
  if (!q) return;
  if (q->conn) evhttp_connection_free(q->conn); /* its request goes without its callback */
  req_free(q);
}

const char *dst_etcd_prefix(const dst_etcd *e) { return e->prefix; }

size_t dst_etcd_registrations(const dst_etcd *e) {
  size_t n = 0;
  for (size_t i = 0; e && i < e->nkvs; i++) n += e->kvs[i].src != NULL;
  return n;
}

/* ---- The follower ------------------------------------------------------------ */

void dst_etcd_free(dst_etcd *e) {
  if (!e) return;
  while (e->reqs) dst_etcd_cancel(e->reqs); /* only those nobody waits for are left */
  on_reap(-1, 0, e);
  if (e->reap) event_free(e->reap);
  close_conns(e);
  if (e->retry) event_free(e->retry);
  if (e->probe) event_free(e->probe);
  if (e->feed) event_free(e->feed);
  if (e->msg) evbuffer_free(e->msg);
  kvs_clear(e);
  free(e->kvs);
  free(e->prefix);
  free(e->key_b64);
  free(e->end_b64);
  free(e);
}

int dst_etcd_new(struct event_base *base, mesh_store *st, const dst_etcd_opts *o, char *err,
                 size_t esize, dst_etcd **ret) {
  if (!base || !st || !o || !o->endpoints || !ret) {
    snprintf(err, esize, "no endpoints");
    return MESH_ERR_INVALID;
  }
  const char *prefix = o->prefix ? o->prefix : DST_ETCD_DEFAULT_PREFIX;
  if (!*prefix || strlen(prefix) > 512) {
    snprintf(err, esize, "the prefix is 1 to 512 bytes");
    return MESH_ERR_INVALID;
  }
  dst_etcd *e = calloc(1, sizeof *e);
  if (!e) return MESH_ERR_NOMEM;
  if (!parse_endpoints(o->endpoints, e->eps, &e->neps, err, esize)) {
    free(e);
    return MESH_ERR_INVALID;
  }
  e->base = base;
  e->store = st;
  e->log = o->log;
  e->debounce_ms = o->debounce_ms;
  e->prefix = strdup(prefix);
  e->prefix_len = strlen(prefix);
  char *end = etcd_range_end(prefix); /* every key that starts with the prefix */
  e->key_b64 = etcd_b64_encode(prefix, e->prefix_len);
  e->end_b64 = end ? etcd_b64_encode(end, e->prefix_len) : NULL;
  free(end);
  e->msg = evbuffer_new();
  e->retry = evtimer_new(base, on_retry, e);
  e->probe = event_new(base, -1, EV_PERSIST, on_probe_timer, e);
  e->feed = evtimer_new(base, on_feed, e);
  e->reap = evtimer_new(base, on_reap, e);
  struct timeval ptv = {DST_ETCD_PROBE_MS / 1000, (DST_ETCD_PROBE_MS % 1000) * 1000};
  if (!e->prefix || !e->key_b64 || !e->end_b64 || !e->msg || !e->retry || !e->probe || !e->feed || !e->reap ||
      event_add(e->probe, &ptv) < 0) {
    dst_etcd_free(e);
    return MESH_ERR_NOMEM;
  }
  start(e);
  *ret = e;
  return 0;
}

int dst_etcd_connected(const dst_etcd *e) { return e && e->connected; }
int dst_etcd_synced(const dst_etcd *e) { return e && e->synced; }
int64_t dst_etcd_revision(const dst_etcd *e) { return e ? e->rev : 0; }

void dst_etcd_describe(const dst_etcd *e, char *buf, size_t size) {
  snprintf(buf, size, "etcd %s (%s), prefix %s, revision %lld, %zu keys", here(e),
           e->connected ? "connected" : "not connected", e->prefix, (long long)e->rev, e->nkvs);
}

void dst_etcd_resync(dst_etcd *e) {
  if (!e) return;
  e->need_full = true;
  if (e->failing) return; /* the retry on its way reads everything */
  e->failing = true;      /* start() from the loop, not from a signal callback's stack */
  e->connected = false;
  e->state = ST_IDLE;
  struct timeval tv = {0, 0};
  evtimer_add(e->retry, &tv);
}
