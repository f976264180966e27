/* libmesh discovery: mesh-destination's Get and GetProfile streams kept per authority, as endpoint sets with a balancer each and profiles, for the proxy. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/error.h>
#include <mesh/identity.h>
#include <mesh/profile.h>
#include <mesh/rpc.h>
#include <mesh/split.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "proxy_internal.h"
#include "proxy_profiles_internal.h"

#define GET_PATH "/io.linkerd.proxy.destination.Destination/Get"
#define PROFILE_PATH "/io.linkerd.proxy.destination.Destination/GetProfile"
#define BUCKETS 1024u
#define SWEEP_MS 1000u

/* ---- Endpoint sets ---------------------------------------------------------------- */

typedef struct {
  char addr[64]; /* canonical "ip:port" */
  disc_endpoint e;
  uint32_t weight;
  mesh_endpoint *bep; /* in the balancer; its userdata is this entry */
} dep;

struct disc_set {
  mesh_ctx *ctx;
  long refs;
  int state;
  mesh_balance *bal;
  dep **v;
  size_t n, cap;
};

int mesh__disc_set_new(mesh_ctx *ctx, disc_set **ret) {
  disc_set *s = mesh__calloc(ctx, 1, sizeof *s);
  if (!s) return MESH_ERR_NOMEM;
  s->ctx = ctx;
  s->refs = 1;
  int rc = mesh_balance_new(ctx, NULL, &s->bal);
  if (rc) {
    mesh__free(ctx, s);
    return rc;
  }
  *ret = s;
  return 0;
}

void mesh__disc_set_unref(disc_set *s) {
  if (!s || --s->refs > 0) return;
  for (size_t i = 0; i < s->n; i++) mesh__free(s->ctx, s->v[i]);
  mesh__free(s->ctx, s->v);
  mesh_balance_free(s->bal); /* every pick is done: each held a reference */
  mesh__free(s->ctx, s);
}

int mesh__disc_set_state(const disc_set *s) { return s->state; }
size_t mesh__disc_set_count(const disc_set *s) { return s->n; }
mesh_balance *mesh__disc_set_balance(disc_set *s) { return s->bal; }

static ssize_t find_addr(const disc_set *s, const char *addr) {
  for (size_t i = 0; i < s->n; i++)
    if (!strcmp(s->v[i]->addr, addr)) return (ssize_t)i;
  return -1;
}

int mesh__disc_set_get(const disc_set *s, const char *addr, disc_endpoint *out,
                       uint32_t *weight) {
  ssize_t i = find_addr(s, addr);
  if (i < 0) return MESH_ERR_NOT_FOUND;
  if (out) *out = s->v[i]->e;
  if (weight) *weight = s->v[i]->weight;
  return 0;
}

/* Take entry i out: the balancer stops picking it; requests in flight keep
 * their handle (its userdata is not read after a pick). */
static void drop(disc_set *s, size_t i) {
  mesh_balance_remove(s->bal, s->v[i]->bep);
  mesh__free(s->ctx, s->v[i]);
  s->v[i] = s->v[--s->n];
}

static int parse_addr(json_t *j, dep *d, const char **why) {
  const char *a = json_string_value(json_object_get(j, "addr"));
  struct sockaddr_storage ss;
  socklen_t len;
  if (!json_is_object(j) || !a) {
    *why = "an endpoint without an addr";
    return MESH_ERR_PARSE;
  }
  if (mesh__proxy_addr_parse(a, 0, &ss, &len, why)) return MESH_ERR_PARSE;
  mesh__proxy_addr_format((struct sockaddr *)&ss, d->addr, sizeof d->addr);
  d->e.sa = ss;
  d->e.len = len;
  return 0;
}

static int parse_weighted(mesh_ctx *ctx, json_t *j, dep *d, const char **why) {
  int rc = parse_addr(j, d, why);
  if (rc) return rc;
  json_t *w = json_object_get(j, "weight"), *tp = json_object_get(j, "target_port");
  d->weight = 1;
  if (w) {
    if (!json_is_integer(w) || json_integer_value(w) < 1 || json_integer_value(w) > 1000) {
      *why = "weight is not an integer in 1..1000";
      return MESH_ERR_PARSE;
    }
    d->weight = (uint32_t)json_integer_value(w);
  }
  if (tp) {
    if (!json_is_integer(tp) || json_integer_value(tp) < 1 || json_integer_value(tp) > 65535) {
      *why = "target_port is not a port";
      return MESH_ERR_PARSE;
    }
    d->e.port = (uint16_t)json_integer_value(tp);
  }
  json_t *tls = json_object_get(j, "tls_identity");
  if (tls && !json_is_null(tls)) {
    const char *name =
        json_string_value(json_object_get(json_object_get(tls, "dns_like_identity"), "name"));
    mesh_identity *id = NULL;
    const char *bad;
    if (!name || !*name || strlen(name) >= sizeof d->e.identity ||
        mesh_identity_parse(ctx, name, NULL, &bad, &id)) {
      *why = "tls_identity is not {\"dns_like_identity\": {\"name\": <an identity>}}";
      return MESH_ERR_PARSE;
    }
    mesh_identity_free(id);
    snprintf(d->e.identity, sizeof d->e.identity, "%s", name);
  }
  return 0;
}

static int same(const dep *a, const dep *b) {
  return a->weight == b->weight && a->e.port == b->e.port && !strcmp(a->e.identity, b->e.identity);
}

static int apply_add(disc_set *s, json_t *addrs, int first, const char **why) {
  size_t k = json_array_size(addrs);
  if (!json_is_array(addrs)) {
    *why = "add.addrs is not a list";
    return MESH_ERR_PARSE;
  }
  if (k > DISC_ENDPOINTS_MAX) {
    *why = "too many endpoints";
    return MESH_ERR_LIMIT;
  }
  dep *tmp = k ? mesh__calloc(s->ctx, k, sizeof *tmp) : NULL;
  if (k && !tmp) return MESH_ERR_NOMEM;
  int rc = 0;
  size_t fresh = 0;
  for (size_t i = 0; i < k && !rc; i++)
    rc = parse_weighted(s->ctx, json_array_get(addrs, i), &tmp[i], why);
  /* The whole state: what it does not name has gone (while we were away). */
  for (size_t i = s->n; first && !rc && i-- > 0;) {
    size_t j = 0;
    while (j < k && strcmp(tmp[j].addr, s->v[i]->addr)) j++;
    if (j == k) drop(s, i);
  }
  for (size_t i = 0; i < k && !rc; i++) {
    int dup = find_addr(s, tmp[i].addr) >= 0;
    for (size_t j = 0; j < i && !dup; j++) dup = !strcmp(tmp[j].addr, tmp[i].addr);
    fresh += !dup;
  }
  if (!rc && s->n + fresh > DISC_ENDPOINTS_MAX) {
    *why = "too many endpoints";
    rc = MESH_ERR_LIMIT;
  }
  if (!rc && s->n + fresh > s->cap) {
    size_t cap = s->n + fresh < 8 ? 8 : s->n + fresh;
    dep **v = mesh__realloc(s->ctx, s->v, cap * sizeof *v);
    if (!v) rc = MESH_ERR_NOMEM;
    else {
      s->v = v;
      s->cap = cap;
    }
  }
  /* Checked: from here the message is applied (an address already known
   * is replaced by its new description). */
  for (size_t i = 0; i < k && !rc; i++) {
    ssize_t at = find_addr(s, tmp[i].addr);
    if (at >= 0 && same(s->v[at], &tmp[i])) continue;
    if (at >= 0) drop(s, (size_t)at);
    dep *d = mesh__malloc(s->ctx, sizeof *d);
    if (!d) {
      rc = MESH_ERR_NOMEM;
      break;
    }
    *d = tmp[i];
    rc = mesh_balance_add(s->bal, d->addr, d->weight * MESH_BALANCE_WEIGHT_DEFAULT, d, &d->bep);
    if (rc) {
      mesh__free(s->ctx, d);
      break;
    }
    s->v[s->n++] = d;
  }
  mesh__free(s->ctx, tmp);
  if (!rc) s->state = DISC_READY;
  return rc;
}

static int apply_remove(disc_set *s, json_t *addrs, const char **why) {
  size_t k = json_array_size(addrs);
  if (!json_is_array(addrs)) {
    *why = "remove.addrs is not a list";
    return MESH_ERR_PARSE;
  }
  if (k > DISC_ENDPOINTS_MAX) {
    *why = "too many endpoints";
    return MESH_ERR_LIMIT;
  }
  dep d;
  for (size_t i = 0; i < k; i++) { /* all or nothing */
    memset(&d, 0, sizeof d);
    if (parse_addr(json_array_get(addrs, i), &d, why)) return MESH_ERR_PARSE;
  }
  for (size_t i = 0; i < k; i++) {
    memset(&d, 0, sizeof d);
    (void)parse_addr(json_array_get(addrs, i), &d, why);
    ssize_t at = find_addr(s, d.addr);
    if (at >= 0) drop(s, (size_t)at);
  }
  return 0;
}

int mesh__disc_set_apply(disc_set *s, const char *line, size_t len, int first,
                         const char **why) {
  const char *ignored;
  if (!why) why = &ignored;
  *why = "";
  if (len > DISC_MESSAGE_MAX) {
    *why = "message too large";
    return MESH_ERR_LIMIT;
  }
  json_error_t je;
  json_t *j = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
  if (!j || !json_is_object(j) || json_object_size(j) != 1) {
    *why = j ? "not an object with exactly one of add, remove, no_endpoints" : "not JSON";
    json_decref(j);
    return MESH_ERR_PARSE;
  }
  int rc;
  json_t *v;
  if ((v = json_object_get(j, "add"))) {
    rc = apply_add(s, json_object_get(v, "addrs"), first, why);
  } else if ((v = json_object_get(j, "remove"))) {
    rc = apply_remove(s, json_object_get(v, "addrs"), why);
  } else if ((v = json_object_get(j, "no_endpoints"))) {
    json_t *e = json_object_get(v, "exists");
    if (!json_is_boolean(e)) {
      *why = "no_endpoints.exists is not a boolean";
      rc = MESH_ERR_PARSE;
    } else {
      while (s->n) drop(s, s->n - 1);
      s->state = json_is_true(e) ? DISC_READY : DISC_NOT_FOUND;
      rc = 0;
    }
  } else {
    *why = "not one of add, remove, no_endpoints";
    rc = MESH_ERR_PARSE;
  }
  json_decref(j);
  return rc;
}

int mesh__disc_set_pick(disc_set *s, uint64_t now_ns, uint32_t a, uint32_t b,
                        mesh_endpoint **ret_ep, disc_endpoint *out) {
  mesh_endpoint *ep;
  int rc = mesh_balance_pick(s->bal, now_ns, a, b, &ep);
  if (rc) return rc;
  *out = ((const dep *)mesh_endpoint_userdata(ep))->e;
  s->refs++;
  *ret_ep = ep;
  return 0;
}

/* ---- The client ------------------------------------------------------------------- */

typedef struct auth auth;

/* The two streams an authority may have: Get (its endpoints, asked for
 * whenever a request goes to it) and GetProfile (its profile, asked for
 * when it is a request's logical destination). */
enum { W_GET = 0, W_PROFILE = 1 };

typedef struct {
  auth *a;
  int kind;
  int on; /* asked for: kept open, and opened again after failures, while the authority lives */
  mesh_rpc_stream *st;
  struct event *timer; /* reconnect, after backoff */
  uint32_t backoff_ms;
  uint64_t opened_ns;
  int first; /* the stream's next message is its first: the whole state */
} watch;

struct disc_wait {
  auth *a;
  disc_wait *prev, *next;
  struct event *ev;
  disc_wait_fn fn;
  void *ud;
  int kind; /* W_GET: endpoints; W_PROFILE: the profile */
  int answered;
};

struct auth {
  mesh_discovery *d;
  auth *hnext, *prev, *next;
  char *name;
  disc_set *set;
  watch w[2];
  proxy_profiles *prof; /* the last good profile (one destination); NULL: none */
  int pstate;           /* DISC_PENDING until the first GetProfile answer, then DISC_READY */
  int pgave_up;         /* a first wait for the profile ran out: later requests do not wait */
  int shadow_logged;    /* the local profile's precedence was logged */
  uint64_t used_ns;
  uint32_t idle_ms; /* the longest idle timeout of the sides that looked it up */
  int inbound;      /* looked up by the inbound side: counted in n_inbound */
  disc_wait *waiters;
};

struct mesh_discovery {
  mesh_ctx *ctx;
  struct event_base *base;
  char *addr, *ns;
  int plaintext, fixed_id;
  mesh_tls_config *tls;
  char server_id[300];
  mesh_rpc_client *cl;
  auth *buckets[BUCKETS];
  auth *all;
  size_t n, n_inbound;
  struct event *sweep;
  uint32_t wait_ms;
  void (*changed)(void *ud); /* after an endpoints update */
  void *changed_ud;
  uint64_t rng;
  /* Per stream kind (W_GET, W_PROFILE); rejects: GetProfile messages ignored. */
  mesh_metric_series *streams[2], *updates[2], *reconnects[2], *rejects;
  mesh_metric_series *inbound; /* gauge: n_inbound */
};

static const char *const kind_path[2] = {GET_PATH, PROFILE_PATH};
static const char *const kind_what[2] = {"", "profile "}; /* in log lines */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t rnd(mesh_discovery *d) { /* xorshift: jitter only */
  d->rng ^= d->rng << 13;
  d->rng ^= d->rng >> 7;
  d->rng ^= d->rng << 17;
  return (uint32_t)(d->rng >> 32);
}

static uint32_t hash(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
  return h % BUCKETS;
}

static void arm(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
  event_add(ev, &tv);
}

static void open_stream(watch *w);

/* Reconnect later: 100 ms doubling to 10 s, each delay drawn in [d/2, d]. */
uint32_t mesh__discovery_backoff(mesh_discovery *d, uint32_t *backoff_ms) {
  uint32_t b = *backoff_ms ? *backoff_ms : DISC_BACKOFF_MIN_MS;
  *backoff_ms = b * 2 > DISC_BACKOFF_MAX_MS ? DISC_BACKOFF_MAX_MS : b * 2;
  return b / 2 + rnd(d) % (b / 2 + 1);
}

static void backoff(watch *w) { arm(w->timer, mesh__discovery_backoff(w->a->d, &w->backoff_ms)); }

/* Tell the waiters of kind that their wait is over (answered: there is an answer now). */
static void wake(auth *a, int kind, int answered) {
  for (disc_wait *w = a->waiters; w; w = w->next) {
    if (w->kind != kind) continue;
    w->answered = answered;
    event_del(w->ev);
    event_active(w->ev, EV_TIMEOUT, 1);
  }
}

static void on_endpoints(watch *w, const char *line, size_t len) {
  auth *a = w->a;
  const char *why = NULL;
  int rc = mesh__disc_set_apply(a->set, line, len, w->first, &why);
  w->first = 0;
  if (rc) { /* the state is kept: a bad message changes nothing */
    mesh__log(a->d->ctx, MESH_LOG_WARN, "destination %s: update ignored (%s: %s)", a->name,
              mesh_strerror(rc), why);
    return;
  }
  mesh_metrics_inc(a->d->updates[W_GET], 1);
  mesh__log(a->d->ctx, MESH_LOG_DEBUG, "destination %s: %zu endpoints%s", a->name, a->set->n,
            a->set->state == DISC_NOT_FOUND ? " (no such service)" : "");
  /* A remove before any add: still nothing known. */
  if (a->set->state != DISC_PENDING) wake(a, W_GET, 1);
  if (a->d->changed) a->d->changed(a->d->changed_ud);
}

/* A GetProfile message is the whole profile: checked whole, then swapped
 * in; requests in flight keep the one they started with (their reference). */
static void on_profile(watch *w, const char *line, size_t len) {
  auth *a = w->a;
  mesh_discovery *d = a->d;
  mesh_profile *prof = NULL;
  proxy_profiles *t = NULL;
  char why[512];
  mesh__ann ann;
  int has_ann = 0;
  int rc = mesh__disc_profile_parse_ann(d->ctx, line, len, &prof, &ann, &has_ann, why, sizeof why);
  if (!rc && prof && (rc = mesh__proxy_profiles_one(d->ctx, prof, &t)))
    snprintf(why, sizeof why, "out of memory");
  else if (!rc && !prof && has_ann && (rc = mesh__proxy_profiles_ann(d->ctx, a->name, &ann, &t)))
    snprintf(why, sizeof why, "out of memory");
  if (!rc && prof && has_ann) { /* a split without a ServiceProfile: the annotations apply too */
    t->d[0].ann = ann;
    t->d[0].has_ann = 1;
  }
  w->first = 0;
  if (rc) {
    mesh_metrics_inc(d->rejects, 1);
    mesh__log(d->ctx, MESH_LOG_WARN, "destination %s: profile update ignored, keeping %s (%s: %s)",
              a->name, a->prof ? "the last good profile" : "none", mesh_strerror(rc), why);
  } else {
    mesh__proxy_profiles_unref(a->prof);
    a->prof = t;
    mesh_metrics_inc(d->updates[W_PROFILE], 1);
    const mesh_split *sp = mesh_profile_dst_overrides(prof);
    mesh__log(d->ctx, MESH_LOG_DEBUG, "destination %s: profile %s: %zu routes, %zu dst_overrides",
              a->name, prof ? mesh_profile_name(prof) : "(none)", mesh_profile_route_count(prof),
              sp ? mesh_split_count(sp) : 0);
  }
  mesh_profile_unref(prof);
  /* A rejected message is an answer too: nothing better is on its way, so
   * a first request does not wait it out. */
  a->pstate = DISC_READY;
  wake(a, W_PROFILE, 1);
}

static void on_message(void *ud, const char *line, size_t len) {
  watch *w = ud;
  if (w->kind == W_GET) on_endpoints(w, line, len);
  else on_profile(w, line, len);
}

static void on_end(void *ud, int status, const char *error) {
  watch *w = ud;
  auth *a = w->a;
  w->st = NULL;
  mesh_metrics_dec(a->d->streams[w->kind], 1);
  /* The backoff starts over after a stream that lived; one that keeps
   * ending at once (a server that answers and hangs up) backs off. */
  if (now_ns() - w->opened_ns > (uint64_t)DISC_BACKOFF_MAX_MS * 1000000u) w->backoff_ms = 0;
  /* Keep serving from the last known state while the control plane is away. */
  int known = w->kind == W_GET ? a->set->state != DISC_PENDING : a->pstate != DISC_PENDING;
  char keep[64];
  if (w->kind == W_GET) snprintf(keep, sizeof keep, "%zu endpoints", a->set->n);
  else snprintf(keep, sizeof keep, "%s", a->prof ? "the last profile" : "no profile");
  mesh__log(a->d->ctx, known ? MESH_LOG_INFO : MESH_LOG_WARN,
            "destination %s: %sstream ended (%s: %s); keeping %s, reconnecting", a->name,
            kind_what[w->kind], status < 0 ? mesh_strerror(status) : "answered",
            status < 0 ? (error ? error : "") : (error ? error : "end of stream"), keep);
  /* A profile never came: the requests waiting for one go on without it
   * rather than sit out the wait (the endpoints wait has its own bound). */
  if (w->kind == W_PROFILE && !known) {
    a->pgave_up = 1;
    wake(a, W_PROFILE, 0);
  }
  backoff(w);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
  watch *w = arg;
  (void)fd;
  (void)what;
  mesh_metrics_inc(w->a->d->reconnects[w->kind], 1);
  open_stream(w);
}

static int client(mesh_discovery *d) {
  if (d->cl) {
    if (!d->plaintext) mesh_rpc_client_set_tls(d->cl, d->tls);
    return 0;
  }
  if (!d->plaintext && !d->tls) return MESH_ERR_UNAVAILABLE; /* no credentials yet */
  return mesh_rpc_client_new(d->ctx, d->base, d->plaintext ? NULL : d->tls, d->addr,
                             d->plaintext ? NULL : d->server_id, &d->cl);
}

int mesh__discovery_stream(mesh_discovery *d, const char *path, const char *body,
                           mesh_rpc_message_fn message_fn, mesh_rpc_end_fn end_fn, void *ud,
                           mesh_rpc_stream **ret) {
  int rc = client(d);
  return rc ? rc : mesh_rpc_client_stream(d->cl, path, body, strlen(body), message_fn, end_fn, ud, ret);
}

int mesh__discovery_call(mesh_discovery *d, const char *path, const char *body, uint32_t timeout_ms,
                         mesh_rpc_reply_fn on_reply, void *ud) {
  int rc = client(d);
  return rc ? rc : mesh_rpc_client_call(d->cl, path, body, strlen(body), timeout_ms, on_reply, ud);
}

static void open_stream(watch *w) {
  auth *a = w->a;
  mesh_discovery *d = a->d;
  json_t *tok = json_pack("{s:s}", "ns", d->ns);
  char *token = tok ? json_dumps(tok, JSON_COMPACT) : NULL;
  json_t *req = token ? json_pack("{s:s,s:s}", "path", a->name, "context_token", token) : NULL;
  char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
  int rc = body ? client(d) : MESH_ERR_NOMEM;
  if (!rc)
    rc = mesh_rpc_client_stream(d->cl, kind_path[w->kind], body, strlen(body), on_message, on_end,
                                w, &w->st);
  free(body);
  json_decref(req);
  free(token);
  json_decref(tok);
  if (rc) {
    mesh__log(d->ctx, MESH_LOG_WARN, "destination %s: cannot watch %s(%s); retrying", a->name,
              kind_what[w->kind], mesh_strerror(rc));
    backoff(w);
    return;
  }
  w->opened_ns = now_ns();
  w->first = 1;
  mesh_metrics_inc(d->streams[w->kind], 1);
}

/* The stream of kind, opened the first time it is asked for. */
static void want(auth *a, int kind) {
  watch *w = &a->w[kind];
  if (w->on) return;
  w->on = 1;
  open_stream(w);
}

static void wait_free(disc_wait *w) {
  if (w->prev) w->prev->next = w->next;
  else w->a->waiters = w->next;
  if (w->next) w->next->prev = w->prev;
  event_free(w->ev);
  mesh__free(w->a->d->ctx, w);
}

static void auth_free(auth *a) {
  mesh_discovery *d = a->d;
  for (int k = 0; k < 2; k++) {
    if (a->w[k].st) {
      mesh_rpc_stream_cancel(a->w[k].st);
      mesh_metrics_dec(d->streams[k], 1);
    }
    if (a->w[k].timer) event_free(a->w[k].timer);
  }
  while (a->waiters) wait_free(a->waiters);
  auth **pp = &d->buckets[hash(a->name)];
  while (*pp && *pp != a) pp = &(*pp)->hnext;
  if (*pp) *pp = a->hnext;
  if (a->prev) a->prev->next = a->next;
  else d->all = a->next;
  if (a->next) a->next->prev = a->prev;
  d->n--;
  if (a->inbound) {
    d->n_inbound--;
    mesh_metrics_dec(d->inbound, 1);
  }
  mesh__disc_set_unref(a->set);
  mesh__proxy_profiles_unref(a->prof); /* requests in flight hold their own reference */
  mesh__free(d->ctx, a->name);
  mesh__free(d->ctx, a);
}

/* The idle cache: an authority nobody looked up for its idle timeout
 * (DISC_OUTBOUND_IDLE_MS, or DISC_INBOUND_IDLE_MS once the inbound side
 * used it) goes, both of its streams with it. */
static void on_sweep(evutil_socket_t fd, short what, void *arg) {
  mesh_discovery *d = arg;
  (void)fd;
  (void)what;
  uint64_t now = now_ns();
  for (auth *a = d->all, *next; a; a = next) {
    next = a->next;
    if (!a->waiters && now - a->used_ns > (uint64_t)a->idle_ms * 1000000u) {
      mesh__log(d->ctx, MESH_LOG_DEBUG, "destination %s: idle, dropped", a->name);
      auth_free(a);
    }
  }
}

static auth *lookup(const mesh_discovery *d, const char *name) {
  for (auth *a = d->buckets[hash(name)]; a; a = a->hnext)
    if (!strcmp(a->name, name)) return a;
  return NULL;
}

/* The inbound side used a: one of its entries (counted against its
 * bound), kept as long as it wants (the longer of the two timeouts). */
static void used_inbound(mesh_discovery *d, auth *a) {
  if (!a->inbound) {
    a->inbound = 1;
    d->n_inbound++;
    mesh_metrics_inc(d->inbound, 1);
  }
  a->idle_ms = DISC_INBOUND_IDLE_MS;
}

/* The cache entry of authority, created (with no stream yet) when absent,
 * and marked used by side. */
static int entry(mesh_discovery *d, const char *authority, disc_side side, auth **ret) {
  if (strlen(authority) > DISC_AUTHORITY_MAX) return MESH_ERR_LIMIT;
  auth *a = lookup(d, authority);
  /* A name the inbound side does not hold yet needs room within its bound. */
  if (side == DISC_INBOUND && !(a && a->inbound) && d->n_inbound >= DISC_INBOUND_AUTHORITIES_MAX)
    return MESH_ERR_LIMIT;
  if (!a) {
    if (d->n >= DISC_AUTHORITIES_MAX) return MESH_ERR_LIMIT;
    a = mesh__calloc(d->ctx, 1, sizeof *a);
    if (!a) return MESH_ERR_NOMEM;
    a->d = d;
    a->name = mesh__strdup(d->ctx, authority);
    int ok = a->name && !mesh__disc_set_new(d->ctx, &a->set);
    for (int k = 0; k < 2; k++) {
      a->w[k].a = a;
      a->w[k].kind = k;
      ok = ok && (a->w[k].timer = evtimer_new(d->base, on_retry, &a->w[k]));
    }
    if (!ok) {
      for (int k = 0; k < 2; k++)
        if (a->w[k].timer) event_free(a->w[k].timer);
      mesh__disc_set_unref(a->set);
      mesh__free(d->ctx, a->name);
      mesh__free(d->ctx, a);
      return MESH_ERR_NOMEM;
    }
    uint32_t h = hash(authority);
    a->hnext = d->buckets[h];
    d->buckets[h] = a;
    a->next = d->all;
    if (d->all) d->all->prev = a;
    d->all = a;
    d->n++;
    a->idle_ms = DISC_OUTBOUND_IDLE_MS;
  }
  if (side == DISC_INBOUND) used_inbound(d, a);
  a->used_ns = now_ns();
  *ret = a;
  return 0;
}

int mesh__discovery_find(mesh_discovery *d, const char *authority, disc_set **ret) {
  *ret = NULL;
  auth *a;
  int rc = entry(d, authority, DISC_OUTBOUND, &a);
  if (rc) return rc;
  want(a, W_GET);
  if (a->set->state == DISC_READY) *ret = a->set;
  return a->set->state;
}

int mesh__discovery_profile(mesh_discovery *d, const char *authority, disc_side side,
                            int shadowed, proxy_profiles **ret) {
  *ret = NULL;
  auth *a;
  int rc = entry(d, authority, side, &a);
  if (rc) return rc;
  want(a, W_PROFILE);
  if (shadowed && a->prof && !a->shadow_logged) {
    a->shadow_logged = 1;
    mesh__log(d->ctx, MESH_LOG_INFO,
              "destination %s: the local profile (--profiles) overrides the control plane's",
              a->name);
  }
  *ret = a->prof;
  return a->pstate == DISC_PENDING && !a->pgave_up ? DISC_PENDING : DISC_READY;
}

static void on_wait(evutil_socket_t fd, short what, void *arg) {
  disc_wait *w = arg;
  (void)fd;
  (void)what;
  disc_wait_fn fn = w->fn;
  void *ud = w->ud;
  int answered = w->answered;
  /* The first wait for a profile is the only one: after it, requests go on
   * without a profile until one comes. */
  if (w->kind == W_PROFILE && !answered) w->a->pgave_up = 1;
  wait_free(w);
  fn(ud, answered);
}

static int wait_new(mesh_discovery *d, const char *authority, int kind, disc_wait_fn fn,
                    void *ud, disc_wait **ret) {
  auth *a = lookup(d, authority);
  if (!a) return MESH_ERR_NOT_FOUND;
  disc_wait *w = mesh__calloc(d->ctx, 1, sizeof *w);
  if (!w || !(w->ev = evtimer_new(d->base, on_wait, w))) {
    mesh__free(d->ctx, w);
    return MESH_ERR_NOMEM;
  }
  w->a = a;
  w->kind = kind;
  w->fn = fn;
  w->ud = ud;
  w->next = a->waiters;
  if (a->waiters) a->waiters->prev = w;
  a->waiters = w;
  int known = kind == W_GET ? a->set->state != DISC_PENDING : a->pstate != DISC_PENDING;
  if (known || (kind == W_PROFILE && a->pgave_up)) {
    w->answered = known;
    event_active(w->ev, EV_TIMEOUT, 1);
  } else {
    arm(w->ev, d->wait_ms);
  }
  *ret = w;
  return 0;
}

int mesh__discovery_wait(mesh_discovery *d, const char *authority, disc_wait_fn fn, void *ud,
                         disc_wait **ret) {
  return wait_new(d, authority, W_GET, fn, ud, ret);
}

int mesh__discovery_profile_wait(mesh_discovery *d, const char *authority, disc_wait_fn fn,
                                 void *ud, disc_wait **ret) {
  return wait_new(d, authority, W_PROFILE, fn, ud, ret);
}

void mesh__discovery_wait_cancel(disc_wait *w) {
  if (w) wait_free(w);
}

size_t mesh__discovery_authorities(const mesh_discovery *d) { return d->n; }
mesh_ctx *mesh__discovery_ctx(const mesh_discovery *d) { return d->ctx; }

uint32_t mesh__discovery_idle_ms(const mesh_discovery *d, const char *authority) {
  const auth *a = lookup(d, authority);
  return a ? a->idle_ms : 0;
}

static int loopback(const char *addr) {
  if (!strncmp(addr, "localhost:", 10)) return 1;
  struct sockaddr_storage ss;
  socklen_t len;
  const char *why;
  if (mesh__proxy_addr_parse(addr, 0, &ss, &len, &why)) return -1;
  if (ss.ss_family == AF_INET)
    return (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127;
  return !memcmp(&((struct sockaddr_in6 *)&ss)->sin6_addr, &in6addr_loopback,
                 sizeof in6addr_loopback);
}

int mesh__disc_metric(mesh_metrics *reg, int gauge, const char *name, const char *help,
                      mesh_metric_series **ret) {
  mesh_metric_family *f;
  int rc = gauge ? mesh_metrics_gauge(reg, name, help, NULL, 0, &f)
                 : mesh_metrics_counter(reg, name, help, NULL, 0, &f);
  return rc ? rc : mesh_metrics_series(f, NULL, 0, ret);
}

int mesh__discovery_new(mesh_ctx *ctx, struct event_base *base, const disc_opts *o,
                        mesh_discovery **ret) {
  if (!ctx || !base || !o || !o->addr || !ret) return MESH_ERR_INVALID;
  int lb = loopback(o->addr);
  if (lb < 0) return MESH_ERR_PARSE;
  mesh_discovery *d = mesh__calloc(ctx, 1, sizeof *d);
  if (!d) return MESH_ERR_NOMEM;
  d->ctx = ctx;
  d->base = base;
  d->plaintext = lb && !(o->server_id && *o->server_id);
  if (!d->plaintext && o->server_id && *o->server_id) {
    d->fixed_id = 1;
    snprintf(d->server_id, sizeof d->server_id, "%s", o->server_id);
  }
  d->wait_ms = o->wait_ms ? o->wait_ms : 1000u;
  d->changed = o->changed;
  d->changed_ud = o->changed_ud;
  d->addr = mesh__strdup(ctx, o->addr);
  d->ns = mesh__strdup(ctx, o->ns && *o->ns ? o->ns : "default");
  d->sweep = event_new(base, -1, EV_PERSIST, on_sweep, d);
  uint8_t seed[8];
  int rc = MESH_ERR_NOMEM;
  if (!d->addr || !d->ns || !d->sweep) goto fail;
  if ((rc = mesh_ctx_random(ctx, seed, sizeof seed))) goto fail;
  memcpy(&d->rng, seed, sizeof d->rng);
  d->rng |= 1;
  if (o->reg &&
      ((rc = mesh__disc_metric(o->reg, 1, "destination_streams", "Open Get streams to mesh-destination",
                    &d->streams[W_GET])) ||
       (rc = mesh__disc_metric(o->reg, 0, "destination_updates_total",
                    "Get messages applied (add, remove, no_endpoints)", &d->updates[W_GET])) ||
       (rc = mesh__disc_metric(o->reg, 0, "destination_reconnects_total",
                    "Get streams opened again after a failure", &d->reconnects[W_GET])) ||
       (rc = mesh__disc_metric(o->reg, 1, "destination_profile_streams",
                    "Open GetProfile streams to mesh-destination", &d->streams[W_PROFILE])) ||
       (rc = mesh__disc_metric(o->reg, 0, "destination_profile_updates_total",
                    "GetProfile messages applied (a profile swapped in)", &d->updates[W_PROFILE])) ||
       (rc = mesh__disc_metric(o->reg, 0, "destination_profile_rejects_total",
                    "GetProfile messages ignored as invalid (the last good profile kept)",
                    &d->rejects)) ||
       (rc = mesh__disc_metric(o->reg, 0, "destination_profile_reconnects_total",
                    "GetProfile streams opened again after a failure",
                    &d->reconnects[W_PROFILE])) ||
       (rc = mesh__disc_metric(o->reg, 1, "destination_inbound_authorities",
                    "Destinations kept for the inbound side's route metrics",
                    &d->inbound))))
    goto fail;
  arm(d->sweep, SWEEP_MS);
  *ret = d;
  return 0;
fail:
  mesh__discovery_free(d);
  return rc;
}

void mesh__discovery_set_tls(mesh_discovery *d, mesh_tls_config *cfg, const char *server_id) {
  if (!d || d->plaintext) return;
  if (cfg) mesh_tls_config_ref(cfg);
  mesh_tls_config_unref(d->tls);
  d->tls = cfg;
  if (d->fixed_id) {
    /* given by the operator */
  } else if (server_id) {
    snprintf(d->server_id, sizeof d->server_id, "%s", server_id);
  } else if (cfg) {
    const char *me = mesh_identity_dns(mesh_tls_config_identity(cfg));
    const char *sfx = me ? strstr(me, ".serviceaccount.identity.") : NULL;
    if (sfx) {
      sfx += strlen(".serviceaccount.identity.");
      const char *dot = strchr(sfx, '.');
      int cpns = dot ? (int)(dot - sfx) : (int)strlen(sfx);
      snprintf(d->server_id, sizeof d->server_id,
               "linkerd-destination.%.*s.serviceaccount.identity.%s", cpns, sfx, sfx);
    }
  }
}

void mesh__discovery_free(mesh_discovery *d) {
  if (!d) return;
  while (d->all) auth_free(d->all);
  mesh_rpc_client_free(d->cl);
  if (d->sweep) event_free(d->sweep);
  mesh_tls_config_unref(d->tls);
  for (int k = 0; k < 2; k++) {
    mesh_metrics_series_unref(d->streams[k]);
    mesh_metrics_series_unref(d->updates[k]);
    mesh_metrics_series_unref(d->reconnects[k]);
  }
  mesh_metrics_series_unref(d->rejects);
  mesh_metrics_series_unref(d->inbound);
  mesh__free(d->ctx, d->addr);
  mesh__free(d->ctx, d->ns);
  mesh__free(d->ctx, d);
}
