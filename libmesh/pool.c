/* libmesh pool: client connections per target, shared by requests (HTTP/1 keep-alive, HTTP/2 multiplexed), with connect timeouts. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <mesh/error.h>
#include <mesh/proxy.h>

#include "ctx_internal.h"
#include "pool_internal.h"
#include "proxy_internal.h"

#define POOL_BUCKETS 256u

typedef struct target target;
typedef struct pconn pconn;

enum { PC_CONNECTING, PC_HANDSHAKE, PC_READY };

struct pconn {
  target *t;
  pconn *prev, *next;
  int state;
  struct bufferevent *raw;
  mesh_tls_conn *tls;
  mh_conn *mc;
  struct event *timer; /* connect timeout */
  void *token;         /* the observer's */
  int claimed;         /* fresh: handed to its one request */
};

struct pool_wait {
  target *t;
  pool_wait *prev, *next;
  pool_fn fn;
  void *ud;
};

struct target {
  mesh_pool *pl;
  target *chain;
  pool_key k;
  char key[400];
  char identity[256];
  pconn *conns;
  uint32_t nconns, nconnecting;
  pool_wait *wq, *wq_tail;
  uint32_t nwait;
  const char *last_code;
  char last_why[160];
  int last_err;
  struct event *serve_ev; /* hands ready connections to waiters, from the loop */
};

struct mesh_pool {
  mesh_ctx *ctx;
  struct event_base *base;
  pool_opts o;
  mesh_tls_creds *creds;
  target *buckets[POOL_BUCKETS];
  uint32_t nconns;
  int shutting_down;
};

static const mh_conn_cbs conn_cbs;

static uint32_t hash(const char *s) {
  uint32_t h = 2166136261u;
  while (*s) h = (h ^ (uint8_t)*s++) * 16777619u;
  return h;
}

static void key_text(const pool_key *k, char *buf, size_t cap) {
  char addr[64];
  mesh__proxy_addr_format((const struct sockaddr *)&k->addr, addr, sizeof addr);
  snprintf(buf, cap, "%s|%s|%u|%d%s", addr, k->identity ? k->identity : "", (unsigned)k->hdr_port,
           k->proto, k->fresh ? "|fresh" : "");
}

/* ---- Connections ------------------------------------------------------------------ */

static void serve_later(target *t) { event_active(t->serve_ev, EV_TIMEOUT, 1); }

static void pconn_free(pconn *pc, const char *err) {
  target *t = pc->t;
  if (pc->token) t->pl->o.obs.close(t->pl->o.obs.ud, pc->token, err);
  if (pc->prev) pc->prev->next = pc->next;
  else t->conns = pc->next;
  if (pc->next) pc->next->prev = pc->prev;
  t->nconns--;
  t->pl->nconns--;
  if (pc->state != PC_READY) t->nconnecting--;
  if (pc->timer) event_free(pc->timer);
  if (pc->mc) mh_conn_free(pc->mc); /* releases the bufferevents */
  else if (pc->tls) mesh_tls_conn_free(pc->tls);
  else if (pc->raw) bufferevent_free(pc->raw);
  mesh__free(t->pl->ctx, pc);
}

/* Every waiter fails with the target's last error. */
static void fail_waiters(target *t) {
  while (t->wq) {
    pool_wait *w = t->wq;
    t->wq = w->next;
    if (t->wq) t->wq->prev = NULL;
    else t->wq_tail = NULL;
    t->nwait--;
    pool_fn fn = w->fn;
    void *ud = w->ud;
    mesh__free(t->pl->ctx, w);
    fn(ud, NULL, t->last_err, t->last_code, t->last_why);
  }
}

/* A connect or handshake failed: fail the requests waiting (the balancer
 * counts it against the endpoint and picks another for the next ones). */
static void pconn_failed(pconn *pc, int err, const char *code, const char *why) {
  target *t = pc->t;
  mesh_pool *pl = t->pl;
  t->last_err = err;
  t->last_code = code;
  snprintf(t->last_why, sizeof t->last_why, "%s", why ? why : code);
  mesh__log(pl->ctx, MESH_LOG_INFO, "connection to %s failed: %s (%s)", t->key, code,
            t->last_why);
  pconn_free(pc, "");
  if (!t->nconnecting) fail_waiters(t);
}

static void release_tls(struct bufferevent *bev, void *arg) {
  (void)bev;
  mesh_tls_conn_free(arg);
}

static void pconn_ready(pconn *pc) {
  target *t = pc->t;
  struct bufferevent *bev = pc->tls ? mesh_tls_conn_bev(pc->tls) : pc->raw;
  if (pc->tls) {
    uint8_t hdr[48];
    size_t n;
    if (mesh__proxy_header_write(t->k.hdr_port, !t->k.fresh, hdr, sizeof hdr, &n) == 0)
      bufferevent_write(bev, hdr, n);
  }
  bufferevent_setcb(bev, NULL, NULL, NULL, NULL); /* the codec sets its own */
  if (mh_conn_client(t->pl->ctx, bev, t->k.proto, &t->pl->o.limits, &conn_cbs, pc, &pc->mc)) {
    pconn_failed(pc, MESH_ERR_NOMEM, "no_memory", "out of memory");
    return;
  }
  if (pc->tls) mh_conn_set_bev_release(pc->mc, release_tls, pc->tls);
  if (t->pl->o.obs.open) pc->token = t->pl->o.obs.open(t->pl->o.obs.ud, bev, &t->k);
  pc->state = PC_READY;
  t->nconnecting--;
  event_del(pc->timer);
  serve_later(t);
}

static const char *tls_code(int rc) {
  switch (rc) {
  case MESH_ERR_IDENTITY: return "tls_identity";
  case MESH_ERR_TIMEOUT: return "tls_handshake_timeout";
  case MESH_ERR_EXPIRED: return "tls_expired";
  case MESH_ERR_CLOSED: return "tls_closed";
  case MESH_ERR_IO: return "tls_io";
  default: return "tls_handshake";
  }
}

static void on_tls_event(struct bufferevent *bev, short what, void *arg) {
  pconn *pc = arg;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) {
    pconn_ready(pc);
    return;
  }
  const char *why = NULL;
  int rc = mesh_tls_conn_error(pc->tls, &why);
  pconn_failed(pc, rc == MESH_ERR_IDENTITY ? MESH_ERR_IDENTITY : MESH_ERR_TLS, tls_code(rc), why);
}

static void start_tls(pconn *pc) {
  target *t = pc->t;
  mesh_tls_config *cfg = t->pl->creds ? mesh_tls_creds_get(t->pl->creds) : NULL;
  if (!cfg) {
    pconn_failed(pc, MESH_ERR_UNAVAILABLE, "no_credentials", "this proxy has no identity yet");
    return;
  }
  char addr[64];
  mesh__proxy_addr_format((const struct sockaddr *)&t->k.addr, addr, sizeof addr);
  const char *why = NULL;
  int rc = mesh_tls_conn_client(cfg, pc->raw, t->identity, MESH_PROXY_ALPN, addr, &why, &pc->tls);
  mesh_tls_config_unref(cfg);
  if (rc) {
    pconn_failed(pc, MESH_ERR_TLS, "tls_handshake", why ? why : mesh_strerror(rc));
    return;
  }
  pc->state = PC_HANDSHAKE;
  event_del(pc->timer); /* the TLS layer times the handshake */
  bufferevent_setcb(mesh_tls_conn_bev(pc->tls), NULL, NULL, on_tls_event, pc);
}

static const char *connect_code(int e) {
  return e == ECONNREFUSED ? "connect_refused" : e == ETIMEDOUT ? "connect_timeout" : "connect_error";
}

static void on_raw_event(struct bufferevent *bev, short what, void *arg) {
  pconn *pc = arg;
  (void)bev;
  if (what & BEV_EVENT_CONNECTED) {
    if (pc->t->k.identity) start_tls(pc);
    else pconn_ready(pc);
    return;
  }
  int e = EVUTIL_SOCKET_ERROR();
  pconn_failed(pc, MESH_ERR_CONNECT, connect_code(e), e ? strerror(e) : "closed");
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  pconn_failed(arg, MESH_ERR_TIMEOUT, "connect_timeout", "connect timed out");
}

static int pconn_open(target *t) {
  mesh_pool *pl = t->pl;
  pconn *pc = mesh__calloc(pl->ctx, 1, sizeof *pc);
  if (!pc) return MESH_ERR_NOMEM;
  pc->t = t;
  pc->next = t->conns;
  if (t->conns) t->conns->prev = pc;
  t->conns = pc;
  t->nconns++;
  t->nconnecting++;
  pl->nconns++;
  pc->timer = evtimer_new(pl->base, on_connect_timeout, pc);
  int fd = socket(t->k.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pc->raw = bufferevent_socket_new(pl->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!pc->raw) close(fd);
  }
  if (!pc->timer || !pc->raw) {
    int e = errno;
    pconn_failed(pc, MESH_ERR_CONNECT, "connect_error", fd < 0 ? strerror(e) : "out of memory");
    return MESH_ERR_CONNECT;
  }
  bufferevent_setcb(pc->raw, NULL, NULL, on_raw_event, pc);
  if (bufferevent_socket_connect(pc->raw, (struct sockaddr *)&t->k.addr, (int)t->k.addrlen) < 0) {
    int e = errno;
    pconn_failed(pc, MESH_ERR_CONNECT, connect_code(e), strerror(e));
    return MESH_ERR_CONNECT;
  }
  struct timeval tv = {pl->o.connect_ms / 1000, (pl->o.connect_ms % 1000) * 1000};
  evtimer_add(pc->timer, &tv);
  return 0;
}

/* A ready connection with room for one more request, NULL if none. */
static pconn *pconn_available(target *t) {
  for (pconn *pc = t->conns; pc; pc = pc->next)
    if (pc->state == PC_READY && !pc->claimed && mh_conn_capacity(pc->mc) > 0) return pc;
  return NULL;
}

/* Hand ready connections to waiters; open another when they run out. */
static void serve(target *t) {
  while (t->wq) {
    pconn *pc = pconn_available(t);
    if (!pc) break;
    pool_wait *w = t->wq;
    t->wq = w->next;
    if (t->wq) t->wq->prev = NULL;
    else t->wq_tail = NULL;
    t->nwait--;
    pool_fn fn = w->fn;
    void *ud = w->ud;
    mesh__free(t->pl->ctx, w);
    pc->claimed = t->k.fresh;
    fn(ud, pc->mc, 0, NULL, NULL);
  }
  /* HTTP/2 multiplexes: a second connection only when the first is full.
   * Fresh connections: one for each waiting request. */
  while (t->wq && (t->nconnecting == 0 || (t->k.fresh && t->nconnecting < t->nwait)) &&
         t->nconns < t->pl->o.max_conns && !t->pl->shutting_down)
    if (pconn_open(t)) break;
}

static void on_serve(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  serve(arg);
}

static void on_conn_close(mh_conn *c, int err, void *ud) {
  pconn *pc = ud;
  (void)c;
  pc->mc = NULL; /* the codec frees it (and its bufferevent) after this */
  pc->tls = NULL;
  pc->raw = NULL;
  target *t = pc->t;
  pconn_free(pc, err == MH_OK ? "" : err == MH_ERR_PROTOCOL ? "EPROTO" : "ECONNRESET");
  if (t->wq) serve_later(t);
}

static void on_conn_upgrade(mh_conn *c, struct bufferevent *bev, void *ud) {
  pconn *pc = ud;
  mesh_pool *pl = pc->t->pl;
  mesh_tls_conn *tls = pc->tls;
  /* The bytes, the socket and the TLS session now belong to the callee. */
  pc->mc = NULL;
  pc->tls = NULL;
  pc->raw = NULL;
  pconn_free(pc, "");
  if (pl->o.obs.upgraded) pl->o.obs.upgraded(pl->o.obs.ud, c, bev, tls);
  else if (tls) mesh_tls_conn_free(tls);
  else bufferevent_free(bev);
}

static const mh_conn_cbs conn_cbs = {.on_close = on_conn_close, .on_upgrade = on_conn_upgrade};

/* ---- Targets ------------------------------------------------------------------------- */

static target *target_get(mesh_pool *pl, const pool_key *k) {
  char key[400];
  key_text(k, key, sizeof key);
  uint32_t b = hash(key) % POOL_BUCKETS;
  for (target *t = pl->buckets[b]; t; t = t->chain)
    if (strcmp(t->key, key) == 0) return t;
  target *t = mesh__calloc(pl->ctx, 1, sizeof *t);
  if (!t) return NULL;
  t->serve_ev = event_new(pl->base, -1, 0, on_serve, t);
  if (!t->serve_ev) {
    mesh__free(pl->ctx, t);
    return NULL;
  }
  t->pl = pl;
  t->k = *k;
  snprintf(t->key, sizeof t->key, "%s", key);
  if (k->identity) {
    snprintf(t->identity, sizeof t->identity, "%s", k->identity);
    t->k.identity = t->identity;
  }
  t->chain = pl->buckets[b];
  pl->buckets[b] = t;
  return t;
}

int mesh__pool_new(mesh_ctx *ctx, struct event_base *base, const pool_opts *o,
                   mesh_tls_creds *creds, mesh_pool **ret) {
  mesh_pool *pl = mesh__calloc(ctx, 1, sizeof *pl);
  if (!pl) return MESH_ERR_NOMEM;
  pl->ctx = ctx;
  pl->base = base;
  pl->o = *o;
  pl->creds = creds;
  *ret = pl;
  return 0;
}

void mesh__pool_free(mesh_pool *pl) {
  if (!pl) return;
  for (size_t b = 0; b < POOL_BUCKETS; b++) {
    while (pl->buckets[b]) {
      target *t = pl->buckets[b];
      pl->buckets[b] = t->chain;
      while (t->conns) pconn_free(t->conns, "");
      while (t->wq) {
        pool_wait *w = t->wq;
        t->wq = w->next;
        mesh__free(pl->ctx, w);
      }
      event_free(t->serve_ev);
      mesh__free(pl->ctx, t);
    }
  }
  mesh__free(pl->ctx, pl);
}

int mesh__pool_get(mesh_pool *pl, const pool_key *k, pool_fn fn, void *ud, mh_conn **ret_conn,
                   pool_wait **ret_wait, const char **code, const char **why) {
  *ret_conn = NULL;
  *ret_wait = NULL;
  if (pl->shutting_down) {
    *code = "shutting_down";
    *why = "the proxy is shutting down";
    return MESH_ERR_CLOSED;
  }
  target *t = target_get(pl, k);
  if (!t) {
    *code = "no_memory";
    *why = "out of memory";
    return MESH_ERR_NOMEM;
  }
  pconn *pc = t->wq ? NULL : pconn_available(t);
  if (pc) {
    *ret_conn = pc->mc;
    return 0;
  }
  if (t->nwait >= pl->o.max_waiting) {
    *code = "pool_full";
    *why = "too many requests waiting for a connection to this endpoint";
    return MESH_ERR_LIMIT;
  }
  pool_wait *w = mesh__calloc(pl->ctx, 1, sizeof *w);
  if (!w) {
    *code = "no_memory";
    *why = "out of memory";
    return MESH_ERR_NOMEM;
  }
  w->t = t;
  w->fn = fn;
  w->ud = ud;
  w->prev = t->wq_tail;
  if (t->wq_tail) t->wq_tail->next = w;
  else t->wq = w;
  t->wq_tail = w;
  t->nwait++;
  *ret_wait = w;
  serve_later(t); /* opens a connection when none can take it */
  return 0;
}

void mesh__pool_cancel(pool_wait *w) {
  if (!w) return;
  target *t = w->t;
  if (w->prev) w->prev->next = w->next;
  else t->wq = w->next;
  if (w->next) w->next->prev = w->prev;
  else t->wq_tail = w->prev;
  t->nwait--;
  mesh__free(t->pl->ctx, w);
}

void mesh__pool_done(mesh_pool *pl, mh_conn *c) {
  pconn *pc = mh_conn_userdata(c);
  if (!pc) return;
  target *t = pc->t;
  if (pl->shutting_down) {
    if (mh_conn_active(c) == 0) mh_conn_close(c);
    return;
  }
  if (t->wq) {
    serve_later(t);
    return;
  }
  /* HTTP/1: keep at most max_idle idle connections. */
  if (mh_conn_proto(c) == MH_H1 && mh_conn_active(c) == 0) {
    uint32_t idle = 0;
    for (pconn *x = t->conns; x; x = x->next)
      if (x->state == PC_READY && mh_conn_active(x->mc) == 0) idle++;
    if (idle > pl->o.max_idle) mh_conn_shutdown(c);
  }
}

/* Client connections just stop being handed out and close once their
 * exchanges are over: a GOAWAY from the client side would tell the peer
 * nothing it needs. */
void mesh__pool_shutdown(mesh_pool *pl) {
  pl->shutting_down = 1;
  for (size_t b = 0; b < POOL_BUCKETS; b++)
    for (target *t = pl->buckets[b]; t; t = t->chain)
      for (pconn *pc = t->conns; pc; pc = pc->next)
        if (pc->state == PC_READY && mh_conn_active(pc->mc) == 0) mh_conn_close(pc->mc);
}

uint32_t mesh__pool_connections(const mesh_pool *pl) { return pl ? pl->nconns : 0; }
