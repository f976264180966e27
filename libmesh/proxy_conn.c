/* libmesh proxy connections: accept, pick, connect (mTLS + transport header), splice with bounded buffers and half-close. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <mesh/error.h>
#include <mesh/identity.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "http_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_internal.h"
#include "sockio_internal.h"

enum {
  ST_DETECT,     /* outbound: the first bytes, to tell HTTP from opaque TCP */
  ST_HEADER,     /* inbound: TLS handshake and transport header */
  ST_CONNECTING, /* TCP connect to the upstream */
  ST_HANDSHAKE,  /* outbound, meshed: TLS handshake with the peer proxy */
  ST_OPEN        /* splicing */
};

typedef struct mesh_proxy_conn conn;

typedef struct {
  conn *c;
  struct bufferevent *bev; /* plaintext (the TLS bufferevent when tls) */
  struct bufferevent *raw; /* the socket's bufferevent */
  mesh_tls_conn *tls;
  struct evbuffer_cb_entry *drain;
  int ready;     /* connected (and TLS established): writes may be shut */
  int eof;       /* its peer finished sending */
  int shut;      /* its write side is shut (after the other side's EOF) */
  int want_shut; /* shut once ready */
  int paused;    /* reading paused: the other side's output is full */
  int opened;    /* counted in tcp_open_total; closed in tcp_close_total */
  const char *lv[6];
  mesh_metric_series *conns, *rd, *wr;
} side;

struct mesh_proxy_conn {
  mesh_proxy *p;
  conn *prev, *next;
  int inbound, state, meshed, closing;
  side a, b; /* a: the accepted connection; b: the one we made */
  struct event *timer;
  uint64_t last_ns;
  proxy_snapshot *snap; /* held while an endpoint pick is outstanding */
  disc_set *dset;       /* or the discovery set the pick is from */
  disc_wait *dw;        /* waiting for discovery's first answer */
  mesh_endpoint *ep;
  uint64_t pick_ns;
  uint16_t hdr_port;
  int has_dst;                  /* transparent mode: the original destination */
  struct sockaddr_storage dst;
  socklen_t dstlen;
  char key[300];     /* outbound: the destination looked up ("" explicit mode) */
  char target[64];   /* b's address */
  char peer_id[256]; /* outbound: the expected server; inbound: the client ("" none) */
};

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);
static void on_timer(evutil_socket_t fd, short what, void *arg);
static void opaque_route(conn *c);

/* ---- Metrics ------------------------------------------------------------------ */

void mesh__proxy_error(mesh_proxy *p, int inbound, const char *error, const char *target) {
  const char *v[2] = {error, target ? target : ""};
  mesh_metric_series *s;
  if (mesh_metrics_series(inbound ? p->m.in_errors : p->m.out_errors, v, 2, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
}

static void side_open(side *s, const char *dir, const char *peer, const char *tls,
                      const char *client_id, const char *server_id, const char *target) {
  mesh_proxy *p = s->c->p;
  s->lv[0] = dir;
  s->lv[1] = peer;
  s->lv[2] = tls;
  s->lv[3] = client_id;
  s->lv[4] = server_id;
  s->lv[5] = target;
  mesh_metric_series *open = NULL;
  /* A series refused (the family's limit) is NULL: updates on it are no-ops. */
  if (mesh_metrics_series(p->m.open_total, s->lv, 6, &open) == 0) {
    mesh_metrics_inc(open, 1);
    mesh_metrics_series_unref(open);
  }
  if (mesh_metrics_series(p->m.open_conns, s->lv, 6, &s->conns) == 0) mesh_metrics_inc(s->conns, 1);
  (void)mesh_metrics_series(p->m.read_bytes, s->lv, 6, &s->rd);
  (void)mesh_metrics_series(p->m.write_bytes, s->lv, 6, &s->wr);
  s->opened = 1;
}

static void side_close_metrics(side *s, const char *err) {
  if (!s->opened) return;
  mesh_proxy *p = s->c->p;
  const char *v[7] = {s->lv[0], s->lv[1], s->lv[2], s->lv[3], s->lv[4], s->lv[5], err};
  mesh_metric_series *cl;
  if (mesh_metrics_series(p->m.close_total, v, 7, &cl) == 0) {
    mesh_metrics_inc(cl, 1);
    mesh_metrics_series_unref(cl);
  }
  mesh_metrics_dec(s->conns, 1);
  mesh_metrics_series_unref(s->conns);
  mesh_metrics_series_unref(s->rd);
  mesh_metrics_series_unref(s->wr);
  s->conns = s->rd = s->wr = NULL;
  s->opened = 0;
}

static const char *errno_label(int e) {
  if (!e) return "";
  const char *n = strerrorname_np(e);
  return n ? n : "EIO";
}

/* ---- Lifecycle ------------------------------------------------------------------------ */

static conn *conn_new(mesh_proxy *p, int inbound) {
  conn *c = mesh__calloc(p->ctx, 1, sizeof *c);
  if (!c) return NULL;
  c->timer = evtimer_new(p->base, on_timer, c);
  if (!c->timer) {
    mesh__free(p->ctx, c);
    return NULL;
  }
  c->p = p;
  c->inbound = inbound;
  c->a.c = c->b.c = c;
  c->last_ns = mesh__proxy_now_ns();
  c->next = p->conns;
  if (p->conns) p->conns->prev = c;
  p->conns = c;
  p->nconns++;
  mesh__proxy_limit_check(p);
  return c;
}

static void pick_done(conn *c, int success) {
  if (!c->ep) return;
  mesh_balance_done(c->ep, mesh__proxy_now_ns(), c->pick_ns, success, mesh__proxy_rand(c->p));
  c->ep = NULL;
  mesh__proxy_snapshot_unref(c->snap);
  c->snap = NULL;
  mesh__disc_set_unref(c->dset);
  c->dset = NULL;
}

static void side_free(side *s) {
  if (s->drain) {
    evbuffer_remove_cb_entry(bufferevent_get_output(s->raw), s->drain);
    s->drain = NULL;
  }
  if (s->tls) mesh_tls_conn_free(s->tls); /* owns bev and raw */
  else if (s->raw) bufferevent_free(s->raw);
  s->tls = NULL;
  s->bev = s->raw = NULL;
}

/* Free now; err_side (may be NULL) gets errno e in tcp_close_total. */
static void conn_free(conn *c, side *err_side, int e) {
  mesh_proxy *p = c->p;
  side_close_metrics(&c->a, err_side == &c->a ? errno_label(e) : "");
  side_close_metrics(&c->b, err_side == &c->b ? errno_label(e) : "");
  side_free(&c->a);
  side_free(&c->b);
  pick_done(c, 1); /* abandoned before the endpoint answered: not its failure */
  mesh__discovery_wait_cancel(c->dw);
  event_free(c->timer);
  if (c->prev) c->prev->next = c->next;
  else p->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  mesh__free(p->ctx, c);
  mesh__proxy_conn_gone(p);
}

/* A connection that failed before it was proxied: counted, logged, closed. */
static void conn_fail(conn *c, const char *error, const char *why) {
  mesh_proxy *p = c->p;
  const char *target = c->inbound ? c->target : c->key;
  mesh__proxy_error(p, c->inbound, error, target);
  mesh__log(p->ctx, error[0] == 't' ? MESH_LOG_WARN : MESH_LOG_INFO, "%s %s: %s%s%s",
            c->inbound ? "inbound" : "outbound", *target ? target : "connection", error,
            why ? ": " : "", why ? why : "");
  pick_done(c, 0);
  conn_free(c, NULL, 0);
}

/* Close from a context where freeing the bufferevents is not safe (an
 * evbuffer callback): the timer does it on the next loop turn. */
static void conn_close_later(conn *c) {
  c->closing = 1;
  event_active(c->timer, EV_TIMEOUT, 1);
}

void mesh__proxy_conns_close_all(mesh_proxy *p) {
  while (p->conns) conn_free(p->conns, NULL, 0);
}

void mesh__proxy_conns_reauthorize(mesh_proxy *p) {
  for (conn *c = p->conns, *next; c; c = next) {
    next = c->next;
    if (!c->inbound || c->state != ST_OPEN || c->closing || !c->a.raw) continue;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int have = getpeername(bufferevent_getfd(c->a.raw), (struct sockaddr *)&peer, &plen) == 0;
    const char *why = NULL;
    if (mesh__proxy_authorize(p, c->hdr_port, c->peer_id, have ? (struct sockaddr *)&peer : NULL,
                              NULL, 0, &why) == MESH_POLICY_ALLOW)
      continue;
    mesh__log(p->ctx, MESH_LOG_INFO, "inbound %s from %s: closed, %s", c->target,
              *c->peer_id ? c->peer_id : "an unauthenticated client", why);
    mesh__proxy_error(p, 1, "unauthorized", c->target);
    conn_free(c, NULL, 0);
  }
}

void mesh__proxy_idle_sweep(mesh_proxy *p) {
  if (!p->o->idle_ms) return;
  uint64_t now = mesh__proxy_now_ns(), limit = p->o->idle_ms * 1000000u;
  for (conn *c = p->conns, *next; c; c = next) {
    next = c->next;
    if (c->state == ST_OPEN && !c->closing && now - c->last_ns > limit) {
      mesh__log(p->ctx, MESH_LOG_DEBUG, "%s %s: idle for %llu ms, closing",
                c->inbound ? "inbound" : "outbound", c->target,
                (unsigned long long)p->o->idle_ms);
      conn_free(c, NULL, 0);
    }
  }
}

/* ---- Splicing ---------------------------------------------------------------------------- */

static side *other(conn *c, side *s) { return s == &c->a ? &c->b : &c->a; }

static void relay(conn *c, side *x) {
  side *y = other(c, x);
  if (!x->bev || !y->bev) return;
  struct evbuffer *in = bufferevent_get_input(x->bev);
  size_t n = evbuffer_get_length(in);
  if (!n) return;
  struct evbuffer *out = bufferevent_get_output(y->bev);
  evbuffer_add_buffer(out, in);
  mesh_metrics_inc(x->rd, n);
  mesh_metrics_inc(y->wr, n);
  c->last_ns = mesh__proxy_now_ns();
  /* Backpressure: stop reading x until y's output drains to half. */
  if (evbuffer_get_length(out) >= c->p->o->buffer && !x->paused) {
    x->paused = 1;
    bufferevent_disable(x->bev, EV_READ);
    bufferevent_setwatermark(y->bev, EV_WRITE, c->p->o->buffer / 2, 0);
  }
}

static void check_done(conn *c) {
  if (c->a.eof && c->b.eof && c->a.shut && c->b.shut && !c->closing) conn_close_later(c);
}

static void do_shut(side *s) {
  if (s->drain) {
    evbuffer_remove_cb_entry(bufferevent_get_output(s->raw), s->drain);
    s->drain = NULL;
  }
  shutdown(bufferevent_getfd(s->raw), SHUT_WR);
  s->shut = 1;
  check_done(s->c);
}

static void on_drain(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg) {
  (void)info;
  if (evbuffer_get_length(buf) == 0) do_shut(arg);
}

/* Forward an EOF: send what is queued for s, then FIN. Over TLS the FIN
 * comes without close_notify: the TLS layer reads that as the peer's end
 * of data while still letting it write, which is what half-close needs. */
static void shut_write(side *s) {
  if (s->shut) return;
  if (!s->ready) {
    s->want_shut = 1;
    return;
  }
  s->want_shut = 0;
  if (s->tls) bufferevent_flush(s->bev, EV_WRITE, BEV_FLUSH);
  struct evbuffer *out = bufferevent_get_output(s->raw);
  if (evbuffer_get_length(out) == 0) {
    do_shut(s);
    return;
  }
  if (!s->drain) s->drain = evbuffer_add_cb(out, on_drain, s);
  if (!s->drain) conn_close_later(s->c); /* out of memory: give up on the connection */
}

static void side_eof(conn *c, side *x) {
  if (x->eof) return;
  x->eof = 1;
  relay(c, x);
  shut_write(other(c, x));
  check_done(c);
}

/* Reading resumes on both sides once the upstream is there. */
static void start_splice(conn *c) {
  c->state = ST_OPEN;
  c->last_ns = mesh__proxy_now_ns();
  event_del(c->timer);
  bufferevent_enable(c->a.bev, EV_READ);
  bufferevent_enable(c->b.bev, EV_READ);
  relay(c, &c->a); /* bytes that came with the transport header */
  relay(c, &c->b);
}

static void side_setup(conn *c, side *s) {
  bufferevent_setcb(s->bev, on_read, on_write, on_event, c);
  bufferevent_setwatermark(s->bev, EV_READ, 0, c->p->o->buffer);
}

/* ---- Connecting upstream ------------------------------------------------------------------ */

static void write_header(conn *c) {
  uint8_t hdr[48];
  size_t n;
  if (mesh__proxy_header_write(c->hdr_port, 0, hdr, sizeof hdr, &n) == 0)
    bufferevent_write(c->b.bev, hdr, n);
}

static const char *connect_error(int e) {
  return e == ECONNREFUSED ? "connect_refused" : e == ETIMEDOUT ? "connect_timeout" : "connect_error";
}

static int connect_upstream(conn *c, const struct sockaddr *sa, socklen_t len) {
  mesh_proxy *p = c->p;
  mesh__proxy_addr_format(sa, c->target, sizeof c->target);
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    conn_fail(c, "connect_error", strerror(errno));
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* The TLS layer drives its socket's callbacks itself: no deferral there. */
  c->b.raw = bufferevent_socket_new(p->base, fd,
                                    BEV_OPT_CLOSE_ON_FREE | (c->meshed ? 0 : BEV_OPT_DEFER_CALLBACKS));
  if (!c->b.raw) {
    close(fd);
    conn_fail(c, "connect_error", "out of memory");
    return -1;
  }
  if (c->meshed) {
    bufferevent_setcb(c->b.raw, NULL, NULL, on_event, c);
  } else {
    c->b.bev = c->b.raw;
    side_setup(c, &c->b);
  }
  c->state = ST_CONNECTING;
  if (bufferevent_socket_connect(c->b.raw, (struct sockaddr *)sa, (int)len) < 0) {
    int e = errno;
    conn_fail(c, connect_error(e), strerror(e));
    return -1;
  }
  mesh__proxy_timer(c->timer, p->o->connect_ms);
  return 0;
}

/* The TCP connection to the peer proxy is up: start TLS over it, with the
 * transport header queued behind the handshake. */
static void start_tls(conn *c) {
  mesh_proxy *p = c->p;
  mesh_tls_config *cfg = mesh_tls_creds_get(p->creds);
  if (!cfg) {
    conn_fail(c, "no_credentials", "this proxy has no identity yet");
    return;
  }
  const char *why = NULL;
  mesh_tls_conn *t;
  int rc = mesh_tls_conn_client(cfg, c->b.raw, c->peer_id, MESH_PROXY_ALPN, c->target, &why, &t);
  mesh_tls_config_unref(cfg);
  if (rc) {
    conn_fail(c, "tls_handshake", why ? why : mesh_strerror(rc));
    return;
  }
  c->b.tls = t;
  c->b.bev = mesh_tls_conn_bev(t);
  side_setup(c, &c->b);
  c->state = ST_HANDSHAKE;
  event_del(c->timer); /* the TLS layer times the handshake */
  write_header(c);
  /* The application's bytes queue behind the header, bounded by the
   * watermarks, while the handshake runs. */
  bufferevent_enable(c->a.bev, EV_READ);
}

static const char *tls_error(mesh_tls_conn *t, const char **why) {
  switch (mesh_tls_conn_error(t, why)) {
  case MESH_ERR_IDENTITY: return "tls_identity";
  case MESH_ERR_TIMEOUT: return "tls_handshake_timeout";
  case MESH_ERR_EXPIRED: return "tls_expired";
  case MESH_ERR_CLOSED: return "tls_closed";
  case MESH_ERR_IO: return "tls_io";
  default: return "tls_handshake";
  }
}

static void upstream_connected(conn *c) {
  side *b = &c->b;
  b->ready = 1;
  pick_done(c, 1);
  if (c->inbound) {
    side_open(b, "inbound", "dst", "no_identity", c->peer_id, "", c->target);
  } else {
    side_open(b, "outbound", "dst", c->meshed ? "true" : "no_identity", "",
              c->meshed ? c->peer_id : "", c->target);
  }
  start_splice(c);
  if (b->want_shut) shut_write(b);
}

/* ---- Outbound ---------------------------------------------------------------------------- */

static uint16_t key_port(const char *key) {
  const char *colon = strrchr(key, ':');
  return colon ? (uint16_t)atoi(colon + 1) : 0;
}

/* Opaque TCP: pick an endpoint of the destination and splice. */
static void outbound_opaque(conn *c) {
  if (!*c->key) {
    conn_fail(c, "no_original_dst", "not HTTP, and no original destination (not redirected)");
    return;
  }
  bufferevent_disable(c->a.bev, EV_READ); /* until the upstream can take bytes */
  side_open(&c->a, "outbound", "src", "no_identity", "", "", c->key);
  opaque_route(c);
}

/* Discovery answered (or the bounded wait ran out). */
static void on_discovered(void *ud, int answered) {
  conn *c = ud;
  c->dw = NULL;
  if (answered) opaque_route(c);
  else if (c->has_dst) /* as for a destination nobody knows: straight there, unmeshed */
    connect_upstream(c, (struct sockaddr *)&c->dst, c->dstlen);
  else conn_fail(c, "unknown_destination", "no answer from the destination service in time");
}

/* The endpoints file first, then discovery, then (transparent mode) the
 * original destination, unmeshed. */
static void opaque_route(conn *c) {
  mesh_proxy *p = c->p;
  size_t svc;
  proxy_snapshot *s = p->snap;
  if (s && mesh_proxy_endpoints_find(s->eps, c->key, &svc) == 0) {
    mesh_endpoint *ep;
    uint64_t now = mesh__proxy_now_ns();
    if (mesh_balance_pick(s->bal[svc], now, mesh__proxy_rand(p), mesh__proxy_rand(p), &ep)) {
      conn_fail(c, "no_endpoints", "no endpoint is available");
      return;
    }
    size_t i = (size_t)(uintptr_t)mesh_endpoint_userdata(ep);
    s->refs++;
    c->snap = s;
    c->ep = ep;
    c->pick_ns = now;
    const char *id = mesh_proxy_endpoints_identity(s->eps, svc, i);
    uint16_t port = mesh_proxy_endpoints_port(s->eps, svc, i);
    c->hdr_port = port ? port : key_port(mesh_proxy_endpoints_service(s->eps, svc));
    if (id) {
      c->meshed = 1;
      snprintf(c->peer_id, sizeof c->peer_id, "%s", id);
    }
    socklen_t len;
    const struct sockaddr *sa = mesh__proxy_endpoints_sockaddr(s->eps, svc, i, &len);
    connect_upstream(c, sa, len);
    return;
  }
  disc_set *ds;
  int st = p->disc ? mesh__discovery_find(p->disc, c->key, &ds) : DISC_NOT_FOUND;
  if (st == DISC_PENDING) {
    if (mesh__discovery_wait(p->disc, c->key, on_discovered, c, &c->dw))
      conn_fail(c, "no_memory", NULL);
    return;
  }
  if (st == DISC_READY) {
    disc_endpoint e;
    mesh_endpoint *ep;
    uint64_t now = mesh__proxy_now_ns();
    if (mesh__disc_set_pick(ds, now, mesh__proxy_rand(p), mesh__proxy_rand(p), &ep, &e)) {
      conn_fail(c, "no_endpoints", "no endpoint is available");
      return;
    }
    c->dset = ds;
    c->ep = ep;
    c->pick_ns = now;
    c->hdr_port = e.port ? e.port : key_port(c->key);
    if (*e.identity) {
      c->meshed = 1;
      snprintf(c->peer_id, sizeof c->peer_id, "%s", e.identity);
    }
    connect_upstream(c, (struct sockaddr *)&e.sa, e.len);
    return;
  }
  if (!c->has_dst) {
    conn_fail(c, "unknown_destination", "not in the endpoints file");
    return;
  }
  /* not meshed: straight to the original destination */
  connect_upstream(c, (struct sockaddr *)&c->dst, c->dstlen);
}

void mesh__proxy_outbound_accept(mesh_proxy *p, proxy_listener *pl, int fd, const char *key,
                                 const struct sockaddr *dst, socklen_t dstlen) {
  (void)pl;
  conn *c = conn_new(p, 0);
  if (!c) {
    close(fd);
    mesh__proxy_error(p, 0, "no_memory", key);
    return;
  }
  snprintf(c->key, sizeof c->key, "%s", key ? key : "");
  if (dst) {
    memcpy(&c->dst, dst, dstlen);
    c->dstlen = dstlen;
    c->has_dst = 1;
  }
  c->a.raw = c->a.bev = bufferevent_socket_new(p->base, fd, BEV_OPT_CLOSE_ON_FREE |
                                                                BEV_OPT_DEFER_CALLBACKS);
  if (!c->a.bev) {
    close(fd);
    conn_fail(c, "no_memory", NULL);
    return;
  }
  c->a.ready = 1;
  side_setup(c, &c->a);
  if (key && mesh__proxy_opaque_port(p, key_port(key))) {
    outbound_opaque(c);
    return;
  }
  /* Detection: one read of up to 1 KiB within the detect timeout. */
  c->state = ST_DETECT;
  bufferevent_enable(c->a.bev, EV_READ);
  mesh__proxy_timer(c->timer, p->o->detect_ms);
}

static void detect(conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->a.bev);
  size_t n = evbuffer_get_length(in);
  if (n > MH_DETECT_MAX_BYTES) n = MH_DETECT_MAX_BYTES;
  const uint8_t *b = evbuffer_pullup(in, (ev_ssize_t)n);
  int d = b ? mh_detect(b, n) : MH_DETECT_OPAQUE;
  if (d == MH_DETECT_MORE) return;
  event_del(c->timer);
  if (d == MH_DETECT_OPAQUE) {
    outbound_opaque(c);
    return;
  }
  struct bufferevent *bev = c->a.bev;
  c->a.bev = c->a.raw = NULL;
  mesh__proxy_http_outbound(c->p, bev, d, *c->key ? c->key : NULL,
                            c->has_dst ? (struct sockaddr *)&c->dst : NULL, c->dstlen);
  conn_free(c, NULL, 0);
}

void mesh__proxy_splice(mesh_proxy *p, struct bufferevent *down, struct bufferevent *up,
                        mesh_tls_conn *tls, const char *target, const char *server_id) {
  conn *c = conn_new(p, 0);
  if (!c) {
    bufferevent_free(down);
    if (tls) mesh_tls_conn_free(tls);
    else bufferevent_free(up);
    return;
  }
  c->a.raw = c->a.bev = down;
  c->b.tls = tls;
  c->b.bev = up;
  c->b.raw = tls ? bufferevent_get_underlying(up) : up;
  c->a.ready = c->b.ready = 1;
  c->meshed = tls != NULL;
  snprintf(c->key, sizeof c->key, "%s", target);
  snprintf(c->target, sizeof c->target, "%s", target);
  snprintf(c->peer_id, sizeof c->peer_id, "%s", server_id);
  side_setup(c, &c->a);
  side_setup(c, &c->b);
  side_open(&c->a, "outbound", "src", "no_identity", "", "", c->key);
  side_open(&c->b, "outbound", "dst", tls ? "true" : "no_identity", "", c->peer_id, c->target);
  start_splice(c);
}

/* ---- Inbound ------------------------------------------------------------------------------- */

void mesh__proxy_inbound_accept(mesh_proxy *p, proxy_listener *pl, int fd) {
  conn *c = conn_new(p, 1);
  if (!c) {
    close(fd);
    mesh__proxy_error(p, 1, "no_memory", pl->text);
    return;
  }
  snprintf(c->target, sizeof c->target, "%s", pl->text);
  mesh_tls_config *cfg = mesh_tls_creds_get(p->creds);
  if (!cfg) {
    close(fd);
    conn_fail(c, "no_credentials", "this proxy has no identity yet");
    return;
  }
  int rc = mesh_tls_conn_server_fd(cfg, p->base, fd,
                                   p->o->allow_unauth ? MESH_TLS_CLIENT_AUTH_OPTIONAL
                                                      : MESH_TLS_CLIENT_AUTH_REQUIRED,
                                   &c->a.tls);
  mesh_tls_config_unref(cfg);
  if (rc) {
    conn_fail(c, "tls_handshake", mesh_strerror(rc));
    return;
  }
  c->a.bev = mesh_tls_conn_bev(c->a.tls);
  c->a.raw = bufferevent_get_underlying(c->a.bev);
  side_setup(c, &c->a);
  c->state = ST_HEADER;
  mesh__proxy_timer(c->timer, p->o->header_ms);
}

/* The transport header (proxy_header.c), bounded by MESH_PROXY_HEADER_MAX
 * and by --header-timeout. Returns 1 when more bytes are needed. */
static int read_header(conn *c) {
  mesh_proxy *p = c->p;
  struct evbuffer *in = bufferevent_get_input(c->a.bev);
  size_t have = evbuffer_get_length(in), used = 0;
  if (have > 2 + MESH_PROXY_HEADER_MAX) have = 2 + MESH_PROXY_HEADER_MAX;
  const uint8_t *buf = evbuffer_pullup(in, (ev_ssize_t)have);
  uint16_t v = 0;
  int h2 = 0;
  int rc = buf ? mesh__proxy_header_parse(buf, have, &used, &v, &h2) : MESH_ERR_NOMEM;
  if (rc == 1) return 1;
  if (rc) {
    conn_fail(c, "header_invalid", "not a transport header (2-byte length, {\"port\": N})");
    return 0;
  }
  evbuffer_drain(in, used);
  c->hdr_port = (uint16_t)v;
  snprintf(c->target, sizeof c->target, "%s:%u", p->o->inbound_host, (unsigned)v);
  /* The proxy's own listeners are never a target, whatever --inbound-ports
   * says: a peer must not reach the admin server (/shutdown trusts loopback)
   * nor leave again through the outbound side with this proxy's identity. */
  if (mesh_proxy_port(p, MESH_PROXY_LISTENER_ADMIN) == v || mesh__proxy_listens_on(p, v)) {
    conn_fail(c, "port_forbidden", "the port is one of the proxy's own listeners");
    return 0;
  }
  if (!p->ports_all && !(p->ports[v >> 3] & (1u << (v & 7)))) {
    conn_fail(c, "port_forbidden", "the port is not in --inbound-ports");
    return 0;
  }
  const char *id = mesh_tls_conn_peer_identity(c->a.tls);
  snprintf(c->peer_id, sizeof c->peer_id, "%s", id ? id : "");
  if (h2) { /* HTTP/2 from the peer proxy: requests, not bytes */
    mesh_tls_conn *t = c->a.tls;
    c->a.tls = NULL;
    c->a.bev = c->a.raw = NULL;
    event_del(c->timer);
    mesh__proxy_http_inbound(p, t, (uint16_t)v, c->peer_id);
    conn_free(c, NULL, 0);
    return 0;
  }
  /* Authorization before a byte reaches the application. */
  struct sockaddr_storage peer;
  socklen_t plen = sizeof peer;
  int have_peer = getpeername(bufferevent_getfd(c->a.raw), (struct sockaddr *)&peer, &plen) == 0;
  const char *why = NULL;
  int d = mesh__proxy_authorize(p, (uint16_t)v, c->peer_id,
                                have_peer ? (struct sockaddr *)&peer : NULL, NULL, 1, &why);
  if (d != MESH_POLICY_ALLOW) {
    conn_fail(c, d < 0 ? "policy_pending" : "unauthorized", why);
    return 0;
  }
  side_open(&c->a, "inbound", "src", id ? "true" : "no_identity", c->peer_id, "", c->target);
  /* The rest waits in the TLS layer (bounded) until the application answers. */
  bufferevent_disable(c->a.bev, EV_READ);
  struct sockaddr_storage ss;
  socklen_t len = mesh__proxy_inbound_addr(p, (uint16_t)v, &ss);
  connect_upstream(c, (struct sockaddr *)&ss, len);
  return 0;
}

/* ---- Callbacks -------------------------------------------------------------------------------- */

static side *side_of(conn *c, struct bufferevent *bev) {
  if (bev == c->a.bev || bev == c->a.raw) return &c->a;
  return &c->b;
}

/* A plain side read: take what else the socket holds, up to the buffer
 * bound counting what already waits for the other side, relay it, and
 * only then pass on an EOF or an error seen at its end. */
static void plain_read(conn *c, side *x) {
  side *y = other(c, x);
  int more = 0, e = 0;
  evutil_socket_t fd = bufferevent_getfd(x->bev);
  if (!x->eof && !x->paused && y->bev && fd >= 0) {
    struct evbuffer *in = bufferevent_get_input(x->bev);
    size_t queued = evbuffer_get_length(in) + evbuffer_get_length(bufferevent_get_output(y->bev));
    if (queued < c->p->o->buffer)
      more = mesh__sock_read_more(fd, in, c->p->o->buffer - queued);
    e = errno;
  }
  relay(c, x);
  if (!more) return;
  bufferevent_disable(x->bev, EV_READ);
  if (more > 0) {
    side_eof(c, x);
    return;
  }
  conn_free(c, x, e ? e : EIO);
}

static void on_read(struct bufferevent *bev, void *arg) {
  conn *c = arg;
  side *x = side_of(c, bev);
  if (c->state == ST_DETECT) {
    detect(c);
    return;
  }
  if (c->state == ST_HEADER && x == &c->a) {
    read_header(c);
    return;
  }
  if (!c->closing && !x->tls && x->bev == x->raw) {
    plain_read(c, x);
    return;
  }
  relay(c, x);
}

static void on_write(struct bufferevent *bev, void *arg) {
  conn *c = arg;
  side *y = side_of(c, bev), *x = other(c, y);
  if (!x->paused) return;
  x->paused = 0;
  bufferevent_setwatermark(y->bev, EV_WRITE, 0, 0);
  if (!x->eof && x->bev) {
    bufferevent_enable(x->bev, EV_READ);
    relay(c, x);
  }
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  conn *c = arg;
  side *x = side_of(c, bev);
  if (c->closing) return;
  if (x == &c->b && c->state == ST_CONNECTING) {
    if (what & BEV_EVENT_CONNECTED) {
      if (c->meshed) start_tls(c);
      else upstream_connected(c);
      return;
    }
    int e = EVUTIL_SOCKET_ERROR();
    conn_fail(c, (what & BEV_EVENT_EOF) ? "connect_error" : connect_error(e),
              (what & BEV_EVENT_EOF) ? "closed" : strerror(e));
    return;
  }
  if (x == &c->b && c->state == ST_HANDSHAKE) {
    if (what & BEV_EVENT_CONNECTED) {
      upstream_connected(c);
      return;
    }
    const char *why = NULL;
    const char *err = tls_error(c->b.tls, &why);
    conn_fail(c, err, why);
    return;
  }
  if (c->state == ST_DETECT) { /* closed before it said what it speaks */
    conn_fail(c, "detect_eof", "closed during protocol detection");
    return;
  }
  if (x == &c->a && c->state == ST_HEADER) {
    if (what & BEV_EVENT_CONNECTED) {
      c->a.ready = 1;
      return;
    }
    const char *why = NULL;
    const char *err = (what & BEV_EVENT_EOF) && mesh_tls_conn_established(c->a.tls)
                          ? "header_eof"
                          : tls_error(c->a.tls, &why);
    conn_fail(c, err, why);
    return;
  }
  if (what & BEV_EVENT_CONNECTED) { /* inbound TLS done while the upstream connects */
    x->ready = 1;
    return;
  }
  if (what & BEV_EVENT_EOF) {
    side_eof(c, x);
    return;
  }
  if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
    int e = EVUTIL_SOCKET_ERROR();
    if (x->tls) {
      const char *why = NULL;
      int rc = mesh_tls_conn_error(x->tls, &why);
      if (rc != MESH_ERR_IO) e = EPROTO;
      mesh__log(c->p->ctx, MESH_LOG_DEBUG, "%s %s: %s", c->inbound ? "inbound" : "outbound",
                c->target, why);
    }
    if (!e) e = EIO;
    conn_free(c, x, e);
  }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  conn *c = arg;
  (void)fd;
  (void)what;
  if (c->closing) {
    conn_free(c, NULL, 0);
    return;
  }
  if (c->state == ST_DETECT) outbound_opaque(c); /* a server-speaks-first protocol */
  else if (c->state == ST_HEADER) conn_fail(c, "header_timeout", "no transport header in time");
  else if (c->state == ST_CONNECTING) conn_fail(c, "connect_timeout", c->target);
}
