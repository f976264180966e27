/* libmesh proxy HTTP: requests from the application (outbound) and from peer proxies (inbound), forwarded through the pools with l5d-orig-proto and synthesized errors. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "http_internal.h"
#include "pool_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_internal.h"
#include "proxy_profiles_internal.h"

enum { REQ = 0, RSP = 1 };

/* Both connections of an upgraded exchange must be handed over by then. */
#define UPGRADE_MS 5000u
/* Request bodies are kept for retries up to this (Linkerd's 64 KiB). */
#define REPLAY_MAX 65536u
/* Attempts of one request, whatever the budget says. */
#define ATTEMPTS_MAX 10u
/* A gRPC response that could still fail in its trailers is held from the
 * caller while its body fits this (Linkerd buffers gRPC responses for
 * retries similarly), and at most this long once its first message is
 * complete without the trailers: a stream that goes on is let through. */
#define HOLD_MAX 65536u
#define HOLD_MS 100u
#define PORT_MAX 65535ul
#define HTTP_PORT 80u
#define HTTPS_PORT 443u

typedef struct hsrv hsrv;
typedef struct hreq hreq;

/* A connection's tcp_* series, fed by callbacks on its bufferevent's
 * buffers (bytes read into the input, bytes written from the output). */
typedef struct {
  mesh_proxy *p;
  struct bufferevent *bev;
  struct evbuffer_cb_entry *in_cb, *out_cb;
  const char *lv[6];
  char target[64], server_id[256];
  mesh_metric_series *conns, *rd, *wr;
} tcp_track;

/* One accepted HTTP connection: from the application (outbound) or from a
 * peer proxy over mTLS (inbound, HTTP/2). */
struct hsrv {
  mesh_proxy *p;
  hsrv *prev, *next;
  mh_conn *mc;
  int inbound;
  int has_dst;                  /* transparent mode: the original destination */
  struct sockaddr_storage dst;
  socklen_t dstlen;
  char key[300];                /* the listener's logical destination ("" explicit mode) */
  uint16_t port;                /* inbound: the local port requests go to */
  char peer_id[256];            /* inbound: the client proxy's identity ("" none) */
  struct sockaddr_storage peer; /* inbound: the client proxy's address */
  tcp_track trk;
  hreq *reqs;
};

/* One request/response exchange between a server stream (ss) and the
 * upstream stream (us) it was forwarded on. */
struct hreq {
  hsrv *sv;
  hreq *prev, *next;
  mh_stream *ss, *us;
  mh_conn *uc;
  mesh_pool *pool;
  pool_wait *w;
  mh_head req;
  proxy_snapshot *snap; /* held while ep is */
  disc_set *dset;       /* or the discovery set ep is from, held while ep is */
  disc_wait *dw;        /* waiting for discovery's first answer */
  int disc_gave_up;     /* it did not come: transparent mode goes straight on */
  mesh_endpoint *ep;
  uint64_t start_ns;
  struct event *timer;
  struct evbuffer *buf[2]; /* the codecs' body buffers: request (from ss), response (from us) */
  mh_head trailers[2];
  unsigned ended[2], sent_end[2];
  unsigned head_sent : 1, discard : 1, counted : 1, meshed : 1, upgrading : 1;
  /* An upgrade (101): each side's connection, handed over, until both are
   * here and become one spliced byte stream. */
  struct bufferevent *down_bev, *up_bev;
  mesh_tls_conn *up_tls;
  /* Outbound routing: the logical destination, its profile and route, the
   * backend this attempt went to, and what a retry needs. */
  unsigned h1 : 1, replayable : 1, overridden : 1, profile_waited : 1;
  uint32_t attempts;
  uint64_t attempt_ns;
  proxy_profiles *profiles; /* held while dst and route are used (the directory's or discovery's) */
  const proxy_dst *dst;
  const mesh_route *route;
  struct evbuffer *replay;  /* the request body so far, while it fits REPLAY_MAX */
  struct evbuffer *rest;    /* response bytes left when the upstream stream went first */
  /* A held response (holding): its head and body so far, kept from the
   * caller until its trailers say whether it is a failure to retry;
   * hold_cut: why a response was let through before them (its failure is
   * then counted as a retry skipped for that reason). */
  unsigned holding : 1, htimer_on : 1;
  mh_head hhead;
  struct evbuffer *hold;
  struct event *htimer;
  const char *hold_cut;
  char dst_key[300], backend[300];
  int status;
  char authority[300], target[64], server_id[256];
  /* Fail-fast: waiting for a ready endpoint (queued, in the proxy's queue)
   * or for a connection (w), until ff fires; from_queue: this attempt was
   * released from the queue, so a connection it cannot make means the
   * endpoint is still not ready, not that the request failed. */
  hreq *qprev, *qnext;
  struct event *ff;
  unsigned queued : 1, ff_on : 1, from_queue : 1, waiting : 1;
  /* A Service's retry and timeout annotations (in dst, held with profiles;
   * NULL: none): a timer per attempt (retry.linkerd.io/timeout,
   * timeout.linkerd.io/response), one for the backoff before a retry, one
   * for an idle stream; each made when first needed. */
  const mesh__ann *ann;
  struct event *atimer, *btimer, *itimer;
};

/* The requests waiting for a ready endpoint, oldest first, and what wakes
 * them: a kick (an endpoints file or discovery update, a probation's
 * outcome) or the timer at the earliest end of a breaker's penalty among
 * their balancers. No polling: nothing runs while nothing changes. */
typedef struct http_queue {
  hreq *head, *tail;
  size_t n;
  uint32_t waiting[2]; /* per side (0 outbound, 1 inbound): queued or waiting for a connection */
  struct event *kick_ev, *wake_ev;
  uint64_t wake_ns; /* when wake_ev fires (UINT64_MAX: not armed) */
  mesh_metric_family *f_gauge, *f_failfast, *f_shed;
  mesh_metric_series *gauge[2], *failfast[2], *shed[2];
} http_queue;

static const mh_stream_cbs ss_cbs, us_cbs;
static void sv_free(hsrv *sv, const char *err);
static int retry(hreq *r);
static void fail(hreq *r, int status, const char *error, const char *why);

/* ---- Metrics ------------------------------------------------------------------- */

static void sv_labels(const hreq *r, const char **v) {
  const hsrv *sv = r->sv;
  v[0] = sv->inbound ? "inbound" : "outbound";
  v[1] = r->authority;
  v[2] = r->target;
  v[3] = sv->inbound ? (*sv->peer_id ? "true" : "no_identity") : (r->meshed ? "true" : "no_identity");
  v[4] = sv->inbound ? sv->peer_id : "";
  v[5] = sv->inbound ? "" : r->server_id;
}

/* Route metrics, only for destinations with a profile: labels direction,
 * dst (the logical destination), rt_route ("[DEFAULT]" when none matched). */
static int rt_labels(const hreq *r, const char **v) {
  if (!r->dst) return 0; /* a TrafficSplit alone is a profile without routes */
  v[0] = r->sv->inbound ? "inbound" : "outbound";
  v[1] = r->dst_key;
  v[2] = r->route ? mesh_route_name(r->route) : "[DEFAULT]";
  return 1;
}

static void rt_inc(hreq *r, mesh_metric_family *f, const char *x, const char *y) {
  const char *v[5];
  if (!rt_labels(r, v)) return;
  v[3] = x;
  v[4] = y;
  mesh_metric_series *s;
  size_t n = 3 + (x != NULL) + (y != NULL);
  if (mesh_metrics_series(f, v, n, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
}

/* Failure by the route's response classes (or Linkerd's defaults). */
static int rt_failure(const hreq *r, int status, const char *grpc) {
  return mesh_route_classify(r->route, (uint32_t)status, grpc ? (int32_t)atoi(grpc) : -1);
}

/* An attempt's response: route_actual_response_total. Outbound only: the
 * inbound side makes one attempt, and the client's proxy counts its own. */
static void rt_actual(hreq *r, int status, const char *grpc) {
  if (r->sv->inbound) return;
  char code[8];
  snprintf(code, sizeof code, "%d", status);
  const char *v[6];
  if (!rt_labels(r, v)) return;
  v[3] = r->backend;
  v[4] = status && !rt_failure(r, status, grpc) ? "success" : "failure";
  v[5] = status ? code : "";
  mesh_metric_series *s;
  if (mesh_metrics_series(r->sv->p->m.rt_actual_rsp, v, 6, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
}

static void count_request(hreq *r) {
  const char *v[6];
  sv_labels(r, v);
  mesh_metric_series *s;
  if (mesh_metrics_series(r->sv->p->m.req_total, v, 6, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
}

/* The response as the caller saw it: status, gRPC status, classification
 * (failure: 5xx, a gRPC status other than 0, or a proxy error). */
static void count_response(hreq *r, const char *grpc, const char *error) {
  if (r->counted) return;
  r->counted = 1;
  char code[8];
  snprintf(code, sizeof code, "%d", r->status);
  int ok = r->status && !*error && !rt_failure(r, r->status, grpc);
  const char *v[10];
  sv_labels(r, v);
  v[6] = ok ? "success" : "failure";
  v[7] = r->status ? code : "";
  v[8] = grpc ? grpc : "";
  v[9] = error;
  mesh_metric_series *s;
  mesh_proxy *p = r->sv->p;
  if (mesh_metrics_series(p->m.rsp_total, v, 10, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
  rt_inc(r, p->m.rt_rsp, v[6], v[7]);
}

/* Linkerd's response_latency_ms: from the request's head to the response's. */
static void observe_latency(hreq *r) {
  const char *v[6];
  sv_labels(r, v);
  mesh_metric_series *s;
  uint64_t ms = (mesh__proxy_now_ns() - r->start_ns) / 1000000u;
  if (mesh_metrics_series(r->sv->p->m.rsp_latency, v, 6, &s) == 0) {
    mesh_metrics_observe(s, ms);
    mesh_metrics_series_unref(s);
  }
  if (rt_labels(r, v) && mesh_metrics_series(r->sv->p->m.rt_latency, v, 3, &s) == 0) {
    mesh_metrics_observe(s, ms);
    mesh_metrics_series_unref(s);
  }
}

static void on_in(struct evbuffer *b, const struct evbuffer_cb_info *i, void *arg) {
  (void)b;
  if (i->n_added) mesh_metrics_inc(((tcp_track *)arg)->rd, i->n_added);
}

static void on_out(struct evbuffer *b, const struct evbuffer_cb_info *i, void *arg) {
  (void)b;
  if (i->n_deleted) mesh_metrics_inc(((tcp_track *)arg)->wr, i->n_deleted);
}

/* lv: direction, peer, tls, client_id, server_id, target_addr (copied
 * where they do not outlive the call: server_id and target_addr). */
static void track_open(tcp_track *t, mesh_proxy *p, struct bufferevent *bev, const char **lv) {
  t->p = p;
  t->bev = bev;
  snprintf(t->server_id, sizeof t->server_id, "%s", lv[4]);
  snprintf(t->target, sizeof t->target, "%s", lv[5]);
  for (int i = 0; i < 4; i++) t->lv[i] = lv[i];
  t->lv[4] = t->server_id;
  t->lv[5] = t->target;
  mesh_metric_series *open;
  if (mesh_metrics_series(p->m.open_total, t->lv, 6, &open) == 0) {
    mesh_metrics_inc(open, 1);
    mesh_metrics_series_unref(open);
  }
  if (mesh_metrics_series(p->m.open_conns, t->lv, 6, &t->conns) == 0) mesh_metrics_inc(t->conns, 1);
  (void)mesh_metrics_series(p->m.read_bytes, t->lv, 6, &t->rd);
  (void)mesh_metrics_series(p->m.write_bytes, t->lv, 6, &t->wr);
  t->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), on_in, t);
  t->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), on_out, t);
}

/* Before the bufferevent goes. */
static void track_close(tcp_track *t, const char *err) {
  if (!t->p) return;
  if (t->in_cb) evbuffer_remove_cb_entry(bufferevent_get_input(t->bev), t->in_cb);
  if (t->out_cb) evbuffer_remove_cb_entry(bufferevent_get_output(t->bev), t->out_cb);
  const char *v[7] = {t->lv[0], t->lv[1], t->lv[2], t->lv[3], t->lv[4], t->lv[5], err};
  mesh_metric_series *cl;
  if (mesh_metrics_series(t->p->m.close_total, v, 7, &cl) == 0) {
    mesh_metrics_inc(cl, 1);
    mesh_metrics_series_unref(cl);
  }
  mesh_metrics_dec(t->conns, 1);
  mesh_metrics_series_unref(t->conns);
  mesh_metrics_series_unref(t->rd);
  mesh_metrics_series_unref(t->wr);
  t->p = NULL;
}

/* The pools' connections (peer="dst"); the observer's ud is a pool_side. */

static void *pool_open(void *ud, struct bufferevent *bev, const pool_key *k) {
  pool_side *ps = ud;
  tcp_track *t = mesh__calloc(ps->p->ctx, 1, sizeof *t);
  if (!t) return NULL;
  char target[64];
  mesh__proxy_addr_format((const struct sockaddr *)&k->addr, target, sizeof target);
  const char *lv[6] = {ps->direction, "dst", k->identity ? "true" : "no_identity", "",
                       k->identity ? k->identity : "", target};
  track_open(t, ps->p, bev, lv);
  return t;
}

static void pool_close(void *ud, void *token, const char *err) {
  pool_side *ps = ud;
  track_close(token, err);
  mesh__free(ps->p->ctx, token);
}

/* ---- Exchanges ---------------------------------------------------------------------- */

static void pick_done(hreq *r, int success) {
  if (!r->ep) return;
  /* A probation's outcome closes the breaker (requests waiting for the
   * endpoint may go) or opens it again (their wake-up moves). */
  int probation = mesh_endpoint_state(r->ep) == MESH_ENDPOINT_PROBATION;
  mesh_balance_done(r->ep, mesh__proxy_now_ns(), r->attempt_ns, success,
                    mesh__proxy_rand(r->sv->p));
  r->ep = NULL;
  mesh__proxy_snapshot_unref(r->snap);
  r->snap = NULL;
  mesh__disc_set_unref(r->dset);
  r->dset = NULL;
  if (probation) mesh__proxy_http_kick(r->sv->p);
}

/* ---- Fail-fast ------------------------------------------------------------------------------- */

static int side(const hreq *r) { return r->sv->inbound ? 1 : 0; }

/* The gauge and the capacity count a request while it is queued or waits
 * for a connection. */
static void sync_waiting(hreq *r) {
  unsigned on = r->queued || r->w;
  if (r->waiting == on) return;
  http_queue *q = r->sv->p->hq;
  int s = side(r);
  r->waiting = on;
  if (on) {
    q->waiting[s]++;
    mesh_metrics_inc(q->gauge[s], 1);
  } else {
    q->waiting[s]--;
    mesh_metrics_dec(q->gauge[s], 1);
  }
}

static void queue_remove(hreq *r) {
  if (!r->queued) return;
  http_queue *q = r->sv->p->hq;
  if (r->qprev) r->qprev->qnext = r->qnext;
  else q->head = r->qnext;
  if (r->qnext) r->qnext->qprev = r->qprev;
  else q->tail = r->qprev;
  r->qprev = r->qnext = NULL;
  r->queued = 0;
  q->n--;
  sync_waiting(r);
}

/* The request has its connection, or is answered: its fail-fast window is over. */
static void ff_off(hreq *r) {
  if (r->ff_on) event_del(r->ff);
  r->ff_on = 0;
  r->from_queue = 0;
}

/* Out of every wait: the queue, the pool's, the fail-fast timer. */
static void unwait(hreq *r) {
  queue_remove(r);
  if (r->w) {
    mesh__pool_cancel(r->w);
    r->w = NULL;
  }
  sync_waiting(r);
  ff_off(r);
}

static void on_failfast(evutil_socket_t fd, short what, void *arg) {
  hreq *r = arg;
  (void)fd;
  (void)what;
  mesh_proxy *p = r->sv->p;
  r->ff_on = 0;
  mesh_metrics_inc(p->hq->failfast[side(r)], 1);
  char why[400];
  snprintf(why, sizeof why, "service in fail-fast: %s %s within %u ms",
           r->queued ? "no endpoint ready for" : "no connection to",
           r->queued ? r->backend : r->target, (unsigned)p->o->failfast_ms[side(r)]);
  if (r->queued) count_request(r); /* no attempt was sent: count the request once */
  fail(r, 503, "fail_fast", why);
}

/* Start the request's fail-fast window unless it is open already: 0, or
 * -1 when the side's queue is full (answered 503 load_shed at once) or no
 * timer could be had (answered too). counted: request_total has it. */
static int ff_arm(hreq *r, int counted) {
  if (r->ff_on) return 0;
  mesh_proxy *p = r->sv->p;
  http_queue *q = p->hq;
  int s = side(r);
  if (!r->waiting && q->waiting[s] >= p->o->queue_cap[s]) {
    mesh_metrics_inc(q->shed[s], 1);
    if (!counted) count_request(r);
    char why[120];
    snprintf(why, sizeof why, "the request queue is full (%u waiting)", (unsigned)q->waiting[s]);
    fail(r, 503, "load_shed", why);
    return -1;
  }
  if (!r->ff && !(r->ff = evtimer_new(p->base, on_failfast, r))) {
    if (!counted) count_request(r);
    fail(r, 503, "no_memory", "out of memory");
    return -1;
  }
  mesh__proxy_timer(r->ff, p->o->failfast_ms[s]);
  r->ff_on = 1;
  return 0;
}

/* No endpoint of r->backend is ready (every breaker of bal open or on a
 * probation in flight, or none known yet): wait for one, oldest first,
 * within the fail-fast window. The route's timeout keeps running. */
static void queue_wait(hreq *r, mesh_balance *bal) {
  mesh_proxy *p = r->sv->p;
  http_queue *q = p->hq;
  if (ff_arm(r, 0)) return;
  r->qprev = q->tail;
  r->qnext = NULL;
  if (q->tail) q->tail->qnext = r;
  else q->head = r;
  q->tail = r;
  q->n++;
  r->queued = 1;
  sync_waiting(r);
  uint64_t next = mesh_balance_next_ready_ns(bal), now = mesh__proxy_now_ns();
  if (next < q->wake_ns) {
    q->wake_ns = next;
    /* Rounded up: at the wake-up the penalty has passed, and a pick finds
     * the endpoint on probation. */
    mesh__proxy_timer(q->wake_ev, next > now ? (next - now + 999999u) / 1000000u : 0);
  }
}

static void dispatch(hreq *r);

/* Each request waiting now gets one more pick, oldest first; those that
 * still find nothing ready go back to the end of the queue, in order. */
static void on_kick(evutil_socket_t fd, short what, void *arg) {
  http_queue *q = arg;
  (void)fd;
  (void)what;
  for (size_t n = q->n; n > 0 && q->head; n--) {
    hreq *r = q->head;
    queue_remove(r);
    r->from_queue = 1;
    dispatch(r);
  }
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  http_queue *q = arg;
  q->wake_ns = UINT64_MAX;
  on_kick(fd, what, arg);
}

void mesh__proxy_http_kick(mesh_proxy *p) {
  if (p->hq && p->hq->head) event_active(p->hq->kick_ev, EV_TIMEOUT, 1);
}

/* A held response goes with its stream: nothing of it reached the caller. */
static void hold_drop(hreq *r) {
  r->holding = 0;
  if (r->htimer_on) event_del(r->htimer);
  r->htimer_on = 0;
  mh_head_clear(&r->hhead);
  if (r->hold) evbuffer_drain(r->hold, evbuffer_get_length(r->hold));
  r->buf[RSP] = NULL; /* the codec's, freed with the stream */
}

static void upstream_release(hreq *r) {
  if (r->us) {
    mh_stream_reset(r->us, 0);
    r->us = NULL;
  }
  if (r->uc) {
    mesh__pool_done(r->pool, r->uc);
    r->uc = NULL;
  }
  if (r->holding) hold_drop(r);
}

static void req_free(hreq *r) {
  hsrv *sv = r->sv;
  mesh_ctx *ctx = sv->p->ctx;
  unwait(r);
  if (r->ff) event_free(r->ff);
  if (r->atimer) event_free(r->atimer);
  if (r->btimer) event_free(r->btimer);
  if (r->itimer) event_free(r->itimer);
  if (r->htimer) event_free(r->htimer);
  mesh__discovery_wait_cancel(r->dw);
  upstream_release(r);
  if (r->ss) mh_stream_reset(r->ss, 0);
  pick_done(r, 1); /* abandoned by the caller: not the endpoint's failure */
  if (r->timer) event_free(r->timer);
  if (r->down_bev) bufferevent_free(r->down_bev);
  if (r->up_tls) mesh_tls_conn_free(r->up_tls);
  else if (r->up_bev) bufferevent_free(r->up_bev);
  if (r->replay) evbuffer_free(r->replay);
  if (r->rest) evbuffer_free(r->rest);
  if (r->hold) evbuffer_free(r->hold);
  mesh__proxy_profiles_unref(r->profiles);
  mh_head_clear(&r->req);
  mh_head_clear(&r->hhead);
  mh_head_clear(&r->trailers[REQ]);
  mh_head_clear(&r->trailers[RSP]);
  if (r->prev) r->prev->next = r->next;
  else sv->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  sv->p->in_flight--;
  mesh__free(ctx, r);
}

/* Answer the caller ourselves (502, 503, 504, ...), naming why in
 * l5d-proxy-error; the rest of the request body is read and dropped. */
static void fail(hreq *r, int status, const char *error, const char *why) {
  mesh_proxy *p = r->sv->p;
  if (r->upgrading) { /* past the 101: nothing to answer, the exchange is over */
    hsrv *sv = r->sv;
    req_free(r);
    if (!sv->mc) sv_free(sv, "ECONNRESET");
    return;
  }
  mesh__log(p->ctx, MESH_LOG_INFO, "%s %s %s%s: %d %s (%s)", r->sv->inbound ? "inbound" : "outbound",
            r->req.method ? r->req.method : "?", r->authority, r->req.path ? r->req.path : "",
            status, error, why);
  mesh__discovery_wait_cancel(r->dw);
  r->dw = NULL;
  unwait(r);
  if (r->atimer) event_del(r->atimer);
  if (r->btimer) event_del(r->btimer);
  if (r->itimer) event_del(r->itimer);
  upstream_release(r);
  if (r->head_sent) { /* too late for an answer: the caller sees a reset */
    count_response(r, NULL, error);
    if (r->ss) mh_stream_reset(r->ss, 0);
    r->ss = NULL;
    req_free(r);
    return;
  }
  r->head_sent = 1;
  r->status = status;
  observe_latency(r);
  count_response(r, NULL, error);
  char msg[400];
  snprintf(msg, sizeof msg, "%s: %s", error, why);
  r->discard = 1;
  if (r->buf[REQ]) {
    size_t n = evbuffer_get_length(r->buf[REQ]);
    evbuffer_drain(r->buf[REQ], n);
    mh_stream_consumed(r->ss, n);
  }
  if (mh_respond_error(r->ss, &r->req, status, msg)) req_free(r);
}

static int evbuffer_copy(struct evbuffer *dst, struct evbuffer *src);

/* timeout.linkerd.io/idle: nothing moved either way for that long. */
static void on_idle(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  fail(arg, 504, "idle_timeout", "the stream was idle longer than timeout.linkerd.io/idle");
}

static void idle_touch(hreq *r) {
  if (!r->ann || !r->ann->idle_ms) return;
  if (!r->itimer && !(r->itimer = evtimer_new(r->sv->p->base, on_idle, r))) return;
  mesh__proxy_timer(r->itimer, r->ann->idle_ms);
}

/* A copy of the request body while it fits: what a retry sends again. */
static void keep_for_replay(hreq *r, struct evbuffer *b) {
  if (!r->replay || !r->replayable) return;
  size_t n = evbuffer_get_length(b);
  if (evbuffer_get_length(r->replay) + n > REPLAY_MAX) {
    r->replayable = 0; /* too large to retry: let it go */
    evbuffer_drain(r->replay, evbuffer_get_length(r->replay));
    return;
  }
  if (evbuffer_copy(r->replay, b)) r->replayable = 0;
}

/* Move what a body buffer holds to the other side while it has room, and
 * end that side once the source has ended and drained. */
static void pump(hreq *r, int d) {
  mh_stream *from = d == REQ ? r->ss : r->us, *to = d == REQ ? r->us : r->ss;
  if (!to || r->sent_end[d]) return;
  if (d == RSP && !r->head_sent) return;
  struct evbuffer *b = r->buf[d];
  size_t n = b ? evbuffer_get_length(b) : 0;
  if (n && mh_stream_pending(to) < r->sv->p->http_window) {
    if (d == REQ) keep_for_replay(r, b);
    if (mh_stream_send_data(to, b, 0)) {
      fail(r, 502, "io", "could not forward the body");
      return;
    }
    if (from) mh_stream_consumed(from, n);
    n = 0;
    idle_touch(r);
  }
  if (r->ended[d] && n == 0) {
    r->sent_end[d] = 1;
    if (d == RSP && r->itimer) event_del(r->itimer); /* over: nothing left to be idle */
    mh_stream_send_end(to, r->trailers[d].n ? &r->trailers[d] : NULL);
  }
}

/* ---- The server side (the caller) ---------------------------------------------------- */

static void ss_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  hreq *r = ud;
  r->buf[REQ] = buf;
  if (r->discard) {
    size_t n = evbuffer_get_length(buf);
    evbuffer_drain(buf, n);
    mh_stream_consumed(s, n);
    return;
  }
  pump(r, REQ);
}

static void ss_on_end(mh_stream *s, mh_head *trailers, void *ud) {
  hreq *r = ud;
  (void)s;
  r->ended[REQ] = 1;
  if (trailers && !r->discard) mh_head_copy(r->sv->p->ctx, &r->trailers[REQ], trailers);
  if (!r->discard) pump(r, REQ);
}

static void ss_on_reset(mh_stream *s, int err, void *ud) {
  hreq *r = ud;
  (void)s;
  r->ss = NULL;
  if (r->upgrading && err == MH_OK) return;
  if (err && !r->counted) count_response(r, NULL, "caller_reset");
  req_free(r);
}

static void ss_on_drain(mh_stream *s, void *ud) {
  (void)s;
  pump(ud, RSP);
}

static const mh_stream_cbs ss_cbs = {.on_data = ss_on_data, .on_end = ss_on_end,
                                     .on_reset = ss_on_reset, .on_drain = ss_on_drain};

/* ---- The upstream side -------------------------------------------------------------------- */

/* Attempts a request may make, the first included. */
static uint32_t attempts_max(const hreq *r) { return r->ann ? r->ann->limit + 1 : ATTEMPTS_MAX; }

/* Whether an attempt's answer is a failure to retry: what the annotations
 * name, else the route's response classes. grpc: the gRPC status, if any. */
static int retry_failure(const hreq *r, int status, const char *grpc) {
  if (r->ann) return mesh__ann_retryable(r->ann, (uint32_t)status, grpc ? (int32_t)atoi(grpc) : -1);
  return rt_failure(r, status, grpc);
}

/* Whether a response head that is no failure yet should be held for its
 * trailers: a gRPC response without its status (not trailers-only) to a
 * request that could be retried now -- whole and kept, attempts and budget
 * left -- and whose status in the trailers could make it a failure to
 * retry. Only requests with retries have a replay: the others never get
 * here, and stream as they always did. */
static int hold_worthy(const hreq *r, const mh_head *h, int end_stream) {
  if (end_stream || !r->replay || !r->replayable || !r->sent_end[REQ] ||
      r->attempts + 1 >= attempts_max(r))
    return 0;
  const char *ct = mh_head_get(h, "content-type");
  if (!ct || strncasecmp(ct, "application/grpc", 16) || mh_head_get(h, "grpc-status")) return 0;
  if (r->ann) return r->ann->grpc != 0;
  /* Any failing gRPC status would do: a response class matching the HTTP
   * status decides alone, whatever the trailers say. */
  return rt_failure(r, h->status, "14") &&
         mesh_budget_balance(mesh__proxy_dst_budget(r->dst, r->route),
                             mesh__proxy_now_ns() / 1000000u) > 0;
}

static void on_hold(evutil_socket_t fd, short what, void *arg);

/* Keep the head from the caller; the body follows into r->hold. -1 when
 * there is no memory for it (then the response is not held). */
static int hold_start(hreq *r, const mh_head *h) {
  mesh_proxy *p = r->sv->p;
  if ((!r->hold && !(r->hold = evbuffer_new())) ||
      (!r->htimer && !(r->htimer = evtimer_new(p->base, on_hold, r))) ||
      mh_head_copy(p->ctx, &r->hhead, h))
    return -1;
  r->holding = 1;
  r->hold_cut = NULL;
  return 0;
}

/* The response head goes to the caller: the request's timeouts stop
 * (they run to the response head, retries included: Linkerd's). -1 when r
 * is gone. */
static int forward_head(hreq *r, mh_head *h, int end_stream, const char *grpc) {
  event_del(r->timer);
  r->status = h->status;
  observe_latency(r);
  mesh_ctx *ctx = r->sv->p->ctx;
  mh_head_del(ctx, h, "l5d-orig-proto");
  /* l5d-proxy-connection: close carries "the application closed its
   * connection" across the proxies' shared HTTP/2 connection, so that the
   * caller's own connection closes too (Linkerd's). */
  const char *pc = mh_head_get(h, "l5d-proxy-connection");
  int peer_closes = pc && !strcasecmp(pc, "close");
  mh_head_del(ctx, h, "l5d-proxy-connection");
  if (r->sv->inbound && h->close) mh_head_add(ctx, h, "l5d-proxy-connection", "close");
  else if (!r->sv->inbound && peer_closes && r->sv->mc) mh_conn_shutdown(r->sv->mc);
  r->head_sent = 1;
  if (end_stream) {
    r->ended[RSP] = r->sent_end[RSP] = 1;
    count_response(r, grpc, "");
  }
  if (mh_stream_send_head(r->ss, h, end_stream)) {
    fail(r, 502, "io", "could not forward the response");
    return -1;
  }
  return 0;
}

/* Stop holding: the caller gets the head and the body held so far, and
 * the rest streams as it comes. cut: why this happened before the
 * trailers (NULL: they came); a failure in them can no longer be retried.
 * -1 when r is gone. */
static int hold_release(hreq *r, const char *cut) {
  r->holding = 0;
  r->hold_cut = cut;
  if (r->htimer_on) event_del(r->htimer);
  r->htimer_on = 0;
  if (cut) rt_actual(r, r->hhead.status, NULL);
  int rc = forward_head(r, &r->hhead, 0, NULL);
  if (rc) return rc;
  mh_head_clear(&r->hhead);
  if (evbuffer_get_length(r->hold)) {
    if (mh_stream_send_data(r->ss, r->hold, 0)) {
      fail(r, 502, "io", "could not forward the body");
      return -1;
    }
    idle_touch(r);
  }
  return 0;
}

/* The first message of a held response has been complete for HOLD_MS
 * without the trailers: a stream, let through. */
static void on_hold(evutil_socket_t fd, short what, void *arg) {
  hreq *r = arg;
  (void)fd;
  (void)what;
  r->htimer_on = 0;
  if (hold_release(r, "response_stream") == 0) pump(r, RSP);
}

/* Body bytes of a held response: taken (the window goes back to the peer)
 * while they fit HOLD_MAX and make one gRPC message at most (5 bytes of
 * flag and length, then the message). 1 when taken or r is gone; 0 when
 * the response was let through and buf is for pump. */
static int hold_data(hreq *r, mh_stream *s, struct evbuffer *buf) {
  size_t n = evbuffer_get_length(buf), held = evbuffer_get_length(r->hold) + n;
  if (held > HOLD_MAX) return hold_release(r, "response_too_large") ? 1 : 0;
  if (evbuffer_add_buffer(r->hold, buf)) return hold_release(r, "response_too_large") ? 1 : 0;
  mh_stream_consumed(s, n);
  idle_touch(r);
  unsigned char pre[5];
  if (evbuffer_copyout(r->hold, pre, 5) != 5) return 1;
  size_t first = 5 + ((size_t)pre[1] << 24 | (size_t)pre[2] << 16 | (size_t)pre[3] << 8 | pre[4]);
  if (held > first) return hold_release(r, "response_stream") ? 1 : 0;
  if (held == first && !r->htimer_on) {
    mesh__proxy_timer(r->htimer, HOLD_MS);
    r->htimer_on = 1;
  }
  return 1;
}

/* The trailers of a held response: a failure to retry is dropped with its
 * stream and tried again, as one in a head is; anything else goes to the
 * caller whole. 1 when retried or r is gone. */
static int hold_end(hreq *r, const char *grpc) {
  int status = r->hhead.status;
  rt_actual(r, status, grpc);
  if (retry_failure(r, status, grpc) && retry(r)) return 1;
  return hold_release(r, NULL) ? 1 : 0;
}

static void us_on_head(mh_stream *s, mh_head *h, int end_stream, void *ud) {
  hreq *r = ud;
  (void)s;
  if (h->status == 101 && r->req.upgrade) { /* switching protocols: both sides hand over */
    event_del(r->timer);
    if (r->atimer) event_del(r->atimer); /* a spliced stream has no attempts or idle bound */
    if (r->itimer) event_del(r->itimer);
    r->upgrading = 1; /* the streams end; the exchange waits for both connections */
    mesh__proxy_timer(r->timer, UPGRADE_MS);
    r->status = 101;
    pick_done(r, 1);
    observe_latency(r);
    count_response(r, NULL, "");
    r->head_sent = 1;
    if (mh_stream_send_head(r->ss, h, 0)) fail(r, 502, "io", "could not forward the 101");
    return;
  }
  if (h->status < 200) return; /* interim: the caller's codec sends its own 100 Continue */
  const char *grpc = mh_head_get(h, "grpc-status"); /* trailers-only answers */
  int failed = rt_failure(r, h->status, grpc);
  if (r->atimer) event_del(r->atimer); /* the attempt answered in time */
  idle_touch(r);
  /* With annotations, what is retried is what they name (HTTP and gRPC
   * statuses), not the response classes. */
  if (r->ann) failed = retry_failure(r, h->status, grpc);
  /* A gRPC answer's status may still come in its trailers: held until
   * then when it could be retried (the attempt is counted then). */
  int hold = !failed && hold_worthy(r, h, end_stream) && hold_start(r, h) == 0;
  if (!hold) rt_actual(r, h->status, grpc);
  /* The endpoint answered: a success for its breaker, whatever the status
   * (as Linkerd's default, failure accrual counts connection failures, not
   * the application's 5xx: a service failing 30% would otherwise eject
   * every endpoint in turn). */
  pick_done(r, 1);
  if (hold) return;
  /* A failure the caller has not seen yet may be retried (not when its
   * request is still being sent: then the body is not all here). */
  if (failed && r->sent_end[REQ] && retry(r)) return;
  if (forward_head(r, h, end_stream, grpc) == 0) pump(r, RSP);
}

static void us_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  hreq *r = ud;
  r->buf[RSP] = buf;
  if (r->holding && hold_data(r, s, buf)) return;
  pump(r, RSP);
}

static void us_on_end(mh_stream *s, mh_head *trailers, void *ud) {
  hreq *r = ud;
  (void)s;
  const char *grpc = trailers ? mh_head_get(trailers, "grpc-status") : NULL;
  if (r->holding) {
    if (hold_end(r, grpc)) return;
  } else if (r->hold_cut && retry_failure(r, r->status, grpc)) {
    rt_inc(r, r->sv->p->m.rt_retryable, r->hold_cut, NULL); /* let through before it was known */
  }
  r->ended[RSP] = 1;
  if (trailers) mh_head_copy(r->sv->p->ctx, &r->trailers[RSP], trailers);
  count_response(r, grpc, "");
  pump(r, RSP);
}

static void us_on_reset(mh_stream *s, int err, void *ud) {
  hreq *r = ud;
  (void)s;
  r->us = NULL;
  /* The codec's body buffer goes with its stream: what the caller has not
   * taken yet moves to one of ours. */
  if (r->buf[RSP] && r->buf[RSP] != r->rest && evbuffer_get_length(r->buf[RSP])) {
    if (!r->rest) r->rest = evbuffer_new();
    if (r->rest) evbuffer_add_buffer(r->rest, r->buf[RSP]);
  }
  r->buf[RSP] = r->rest;
  if (r->ended[RSP]) err = MH_OK; /* the whole response is here: how the stream ends no longer matters */
  if (r->upgrading && err == MH_OK) return; /* the connection comes next (pool_upgraded) */
  if (r->uc) {
    mesh__pool_done(r->pool, r->uc);
    r->uc = NULL;
  }
  if (err == MH_OK) {
    pump(r, RSP);
    return;
  }
  pick_done(r, 0);
  if (!r->head_sent) {
    rt_actual(r, 0, NULL);
    if (retry(r)) return;
  }
  fail(r, 502, err == MH_ERR_REFUSED ? "upstream_refused" : "upstream_reset",
       err == MH_ERR_PROTOCOL ? "the upstream broke the HTTP protocol"
       : err == MH_ERR_LIMIT  ? "the upstream's response head is over the limit"
                              : "the upstream closed or reset the stream");
}

static void us_on_drain(mh_stream *s, void *ud) {
  (void)s;
  pump(ud, REQ);
}

static const mh_stream_cbs us_cbs = {.on_head = us_on_head, .on_data = us_on_data,
                                     .on_end = us_on_end, .on_reset = us_on_reset,
                                     .on_drain = us_on_drain};

/* ---- Forwarding ------------------------------------------------------------------------------ */

static void dispatch(hreq *r);

/* dst gets a copy of src's bytes (src unchanged). */
static int evbuffer_copy(struct evbuffer *dst, struct evbuffer *src) {
  struct evbuffer_ptr pos;
  evbuffer_ptr_set(src, &pos, 0, EVBUFFER_PTR_SET);
  struct evbuffer_iovec v;
  while (evbuffer_peek(src, -1, &pos, &v, 1) > 0 && v.iov_len) {
    if (evbuffer_add(dst, v.iov_base, v.iov_len)) return -1;
    if (evbuffer_ptr_set(src, &pos, v.iov_len, EVBUFFER_PTR_ADD)) break;
  }
  return 0;
}

static void start_upstream(hreq *r, mh_conn *c) {
  int retry = r->attempts > 0;
  /* A retry sends the kept body again; a first attempt what has arrived. */
  size_t body = retry ? evbuffer_get_length(r->replay)
                      : r->buf[REQ] ? evbuffer_get_length(r->buf[REQ]) : 0;
  int end = r->ended[REQ] && !body && !r->trailers[REQ].n;
  ff_off(r);
  int rc = mh_client_request(c, &r->req, end, &us_cbs, r, &r->us);
  if (rc) {
    fail(r, 502, "connect_error", "the connection could not take the request");
    return;
  }
  r->uc = c;
  if (end) r->sent_end[REQ] = 1;
  if (retry && !end) {
    struct evbuffer *copy = evbuffer_new();
    if (!copy || evbuffer_copy(copy, r->replay) ||
        mh_stream_send_data(r->us, copy, 0) ||
        mh_stream_send_end(r->us, r->trailers[REQ].n ? &r->trailers[REQ] : NULL)) {
      if (copy) evbuffer_free(copy);
      fail(r, 502, "io", "could not send the request again");
      return;
    }
    evbuffer_free(copy);
    r->sent_end[REQ] = 1;
    return;
  }
  pump(r, REQ);
}

static void on_backoff(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  dispatch(arg);
}

/* Try again on a freshly picked endpoint, when the route is retryable (or
 * the Service's annotations ask for retries), the whole request was sent
 * and kept, nothing reached the caller yet, and the budget allows it (a
 * refusal is counted, skipped="no_budget"). Annotation retries are bounded
 * by their limit instead of a budget (Linkerd's), and each waits its
 * backoff first: 25 ms .. 250 ms with full jitter, on a timer. */
static int retry(hreq *r) {
  const mesh__ann *a = r->ann;
  if (r->sv->inbound) return 0; /* the client's proxy retries, not the server's */
  if (a ? !a->has_retry : !r->route || !mesh_route_is_retryable(r->route)) return 0;
  if (r->head_sent || r->upgrading) return 0;
  mesh_proxy *p = r->sv->p;
  uint32_t max = attempts_max(r);
  /* Body bytes not sent yet (the attempt failed before taking them) belong
   * to the replay too, or it would go out short. */
  size_t unsent = r->buf[REQ] ? evbuffer_get_length(r->buf[REQ]) : 0;
  if (!r->replay || !r->replayable || !r->ended[REQ] || r->attempts + 1 >= max ||
      evbuffer_get_length(r->replay) + unsent > REPLAY_MAX) {
    rt_inc(r, p->m.rt_retryable, r->attempts + 1 >= max ? "attempts" : "body", NULL);
    return 0;
  }
  if (!a && !mesh_budget_withdraw(mesh__proxy_dst_budget(r->dst, r->route),
                                  mesh__proxy_now_ns() / 1000000u)) {
    rt_inc(r, p->m.rt_retryable, "no_budget", NULL);
    return 0;
  }
  rt_inc(r, p->m.rt_retryable, "", NULL);
  if (unsent) {
    if (evbuffer_copy(r->replay, r->buf[REQ])) return 0;
    evbuffer_drain(r->buf[REQ], unsent);
    if (r->ss) mh_stream_consumed(r->ss, unsent);
  }
  unwait(r);
  if (r->atimer) event_del(r->atimer);
  upstream_release(r);
  pick_done(r, 0);
  r->attempts++;
  r->sent_end[REQ] = 0;
  if (a) {
    if (!r->btimer && !(r->btimer = evtimer_new(p->base, on_backoff, r))) {
      dispatch(r); /* no timer to wait on: at once rather than not at all */
      return 1;
    }
    mesh__proxy_timer(r->btimer, mesh__ann_backoff_ms(r->attempts - 1, mesh__proxy_rand(p)));
    return 1;
  }
  dispatch(r);
  return 1;
}

/* An attempt released from the queue could not connect: its endpoint is
 * still not ready (its breaker counts the failure), so the request picks
 * again, or waits again, within the window it already has (Linkerd's
 * requests wait out an endpoint's reconnects rather than fail on them). */
static int wait_again(hreq *r, int err) {
  if (!r->from_queue || !r->ff_on || (err != MESH_ERR_CONNECT && err != MESH_ERR_TIMEOUT))
    return 0;
  upstream_release(r);
  dispatch(r);
  return 1;
}

static void on_pool(void *ud, mh_conn *c, int err, const char *code, const char *why) {
  hreq *r = ud;
  r->w = NULL;
  sync_waiting(r);
  if (c) {
    start_upstream(r, c);
    return;
  }
  pick_done(r, 0);
  rt_actual(r, 0, NULL);
  if (wait_again(r, err)) return;
  if (retry(r)) return;
  fail(r, err == MESH_ERR_UNAVAILABLE ? 503 : 502, code, why);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg) {
  hreq *r = arg;
  (void)fd;
  (void)what;
  if (r->upgrading) { /* a side never handed its connection over */
    hsrv *sv = r->sv;
    mesh__log(sv->p->ctx, MESH_LOG_INFO, "outbound %s: upgrade not completed", r->authority);
    req_free(r);
    if (!sv->mc) sv_free(sv, "ETIMEDOUT");
    return;
  }
  pick_done(r, 0);
  if (r->ann && r->ann->request_ms) {
    fail(r, 504, "request_timeout", "timeout.linkerd.io/request expired (retries included)");
    return;
  }
  /* Inbound, a route only labels metrics: its timeout is the client's. */
  int route = r->route && !r->sv->inbound;
  fail(r, 504, route ? "route_timeout" : "response_timeout",
       route ? "the route's timeout expired (retries included)"
             : "no response within the response timeout");
}

/* An attempt's own timer: retry.linkerd.io/timeout (the attempt is cut and
 * retried while the limit allows) or timeout.linkerd.io/response (not
 * retried), whichever is sooner. */
static void on_attempt(evutil_socket_t fd, short what, void *arg) {
  hreq *r = arg;
  (void)fd;
  (void)what;
  const mesh__ann *a = r->ann;
  int retryable = a->retry_timeout_ms && (!a->response_ms || a->retry_timeout_ms <= a->response_ms);
  pick_done(r, 0);
  rt_actual(r, 0, NULL);
  if (retryable && r->sent_end[REQ] && retry(r)) return;
  fail(r, 504, "response_timeout",
       retryable ? "retry.linkerd.io/timeout expired and no retry is left"
                 : "no response within timeout.linkerd.io/response");
}

static void attempt_timer(hreq *r) {
  const mesh__ann *a = r->ann;
  if (!a || (!a->retry_timeout_ms && !a->response_ms)) return;
  uint64_t ms = a->retry_timeout_ms && (!a->response_ms || a->retry_timeout_ms < a->response_ms)
                    ? a->retry_timeout_ms
                    : a->response_ms;
  if (!r->atimer && !(r->atimer = evtimer_new(r->sv->p->base, on_attempt, r))) return;
  mesh__proxy_timer(r->atimer, ms);
}

static void forward(hreq *r, const pool_key *k) {
  mesh__proxy_addr_format((const struct sockaddr *)&k->addr, r->target, sizeof r->target);
  r->attempt_ns = mesh__proxy_now_ns();
  count_request(r);
  if (!r->sv->inbound) rt_inc(r, r->sv->p->m.rt_actual_req, r->backend, NULL);
  attempt_timer(r);
  idle_touch(r);
  mh_conn *c = NULL;
  const char *code = NULL, *why = NULL;
  int rc = mesh__pool_get(r->pool, k, on_pool, r, &c, &r->w, &code, &why);
  if (rc) {
    pick_done(r, 0);
    rt_actual(r, 0, NULL);
    if (wait_again(r, rc)) return;
    if (retry(r)) return;
    fail(r, rc == MESH_ERR_UNAVAILABLE ? 503 : 502, code, why);
    return;
  }
  if (c) {
    start_upstream(r, c);
    return;
  }
  /* Waiting for a connection is waiting too: within the fail-fast window,
   * and counted against the side's queue capacity. */
  if (ff_arm(r, 1)) return;
  sync_waiting(r);
}

static uint16_t port_of(const char *authority) {
  const char *colon = strrchr(authority, ':');
  if (!colon || strchr(colon, ']')) return 0;
  return (uint16_t)atoi(colon + 1);
}

/* Destinations are compared lowercase (DNS names are case-insensitive). */
static void lowercase(char *s) {
  for (; *s; s++) *s = (char)(*s >= 'A' && *s <= 'Z' ? *s + 32 : *s);
}

static uint16_t default_port(const char *scheme) {
  return scheme && !strcmp(scheme, "https") ? HTTPS_PORT : HTTP_PORT;
}

/* The logical destination of an outbound request: l5d-dst-override, else
 * the listener's (port map, or the original destination in transparent
 * mode), else the request's authority with the scheme's default port. */
static void logical_dst(hreq *r, char *key, size_t cap) {
  const char *o = mh_head_get(&r->req, "l5d-dst-override");
  const char *a = r->req.authority ? r->req.authority : "";
  if (o) snprintf(key, cap, "%s", o);
  else if (*r->sv->key) snprintf(key, cap, "%s", r->sv->key);
  else if (port_of(a)) snprintf(key, cap, "%s", a);
  else snprintf(key, cap, "%s:%u", a, (unsigned)default_port(r->req.scheme));
  lowercase(key);
}

/* The length of s's host: a DNS name (or IPv4 address) of name characters,
 * or a bracketed IPv6 address; 0 when it has none. */
static size_t host_len(const char *s) {
  if (*s == '[') {
    size_t n = strspn(s + 1, "0123456789abcdefABCDEF:.");
    return s[1 + n] == ']' ? n + 2 : 0;
  }
  return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_");
}

static int port_valid(const char *s) {
  size_t n = strspn(s, "0123456789");
  if (n == 0 || n > 5 || s[n]) return 0;
  unsigned long v = strtoul(s, NULL, 10);
  return v >= 1 && v <= PORT_MAX;
}

/* s as a destination key, "host:port" lowercase, into out: port dflt when
 * s names none (0: it must). -1 when s is not such a name or too long. */
static int dst_key_of(const char *s, uint16_t dflt, char *out, size_t cap) {
  if (!s || strnlen(s, PROXY_INBOUND_DST_MAX + 1) > PROXY_INBOUND_DST_MAX) return -1;
  size_t h = host_len(s);
  if (!h || (s[h] == ':' ? !port_valid(s + h + 1) : s[h] || !dflt)) return -1;
  int n = s[h] ? snprintf(out, cap, "%s", s) : snprintf(out, cap, "%s:%u", s, (unsigned)dflt);
  if (n < 0 || (size_t)n >= cap) return -1;
  lowercase(out);
  return 0;
}

int mesh__proxy_inbound_dst(const char *canonical, const char *authority, const char *scheme,
                            char *out, size_t cap) {
  /* The outbound proxy writes the whole key, port included. */
  if (dst_key_of(canonical, 0, out, cap) == 0) return 0;
  return dst_key_of(authority, default_port(scheme), out, cap) ? MESH_ERR_PARSE : 0;
}

/* A backend's authority: a TrafficSplit names services in the apex's
 * namespace, dstOverrides name authorities. */
static void backend_authority(const hreq *r, const mesh_split *sp, size_t i, char *out, size_t cap) {
  const char *b = mesh_split_backend(sp, i);
  if (r->dst->split == sp && !strchr(b, '.'))
    snprintf(out, cap, "%s.%s.svc.cluster.local:%u", b, mesh_split_namespace(sp),
             (unsigned)port_of(r->dst_key));
  else snprintf(out, cap, "%s", b);
}

/* Whether the endpoints file can serve authority now: 1 with the service index. */
static int has_ready(mesh_proxy *p, const char *authority, size_t *svc) {
  const proxy_snapshot *s = p->snap;
  disc_set *ds;
  if (s && mesh_proxy_endpoints_find(s->eps, authority, svc) == 0)
    return mesh_balance_ready_count(s->bal[*svc]) > 0;
  return p->disc && mesh__discovery_find(p->disc, authority, &ds) == DISC_READY &&
         mesh_balance_ready_count(mesh__disc_set_balance(ds)) > 0;
}

/* The backend for this attempt: the split's pick by weight; when it has no
 * ready endpoint, the first other backend with weight that has one. */
static void pick_backend(hreq *r) {
  mesh_proxy *p = r->sv->p;
  snprintf(r->backend, sizeof r->backend, "%s", r->dst_key);
  const mesh_split *sp = NULL;
  if (r->dst) sp = r->dst->split ? r->dst->split : mesh_profile_dst_overrides(r->dst->prof);
  if (!sp || !mesh_split_count(sp)) return;
  size_t svc, n = mesh_split_count(sp), i = mesh_split_pick(sp, mesh__proxy_rand(p));
  backend_authority(r, sp, i, r->backend, sizeof r->backend);
  if (has_ready(p, r->backend, &svc)) return;
  char alt[300];
  for (size_t j = 0; j < n; j++) {
    if (j == i || !mesh_split_weight(sp, j)) continue;
    backend_authority(r, sp, j, alt, sizeof alt);
    if (has_ready(p, alt, &svc)) {
      snprintf(r->backend, sizeof r->backend, "%s", alt);
      return;
    }
  }
}

/* The pool key of a picked endpoint (k->addr set): meshed when id is given
 * (mTLS to its proxy, HTTP/2, the transport header naming hdr_port), else
 * the caller's protocol. -1 when the request was answered. */
static int endpoint_key(hreq *r, pool_key *k, const char *id, uint16_t hdr_port) {
  if (id) {
    snprintf(r->server_id, sizeof r->server_id, "%s", id);
    k->identity = r->server_id; /* the pool copies it */
    k->hdr_port = hdr_port;
    k->proto = MH_H2;
    r->meshed = 1;
    /* HTTP/1 rides the proxies' HTTP/2 connection; the inbound proxy
     * restores it (Linkerd's orig-proto upgrade). The logical destination
     * goes along (Linkerd's l5d-dst-canonical): the server's proxy labels
     * its route metrics with it. */
    mesh_ctx *ctx = r->sv->p->ctx;
    if ((r->h1 && !r->req.upgrade &&
         mh_head_set(ctx, &r->req, "l5d-orig-proto",
                     r->req.version == MH_V10 ? "HTTP/1.0" : "HTTP/1.1")) ||
        mh_head_set(ctx, &r->req, "l5d-dst-canonical", r->dst_key)) {
      fail(r, 502, "no_memory", "out of memory");
      return -1;
    }
  } else {
    k->proto = r->h1 ? MH_H1 : MH_H2;
  }
  if (r->req.upgrade) { /* a connection of its own, HTTP/1 to the application */
    k->fresh = 1;
    k->proto = MH_H1;
  }
  return 0;
}

/* Discovery answered (or the bounded wait ran out): try the attempt again. */
static void on_discovered(void *ud, int answered) {
  hreq *r = ud;
  r->dw = NULL;
  if (answered) {
    dispatch(r);
    return;
  }
  if (r->sv->has_dst && !r->overridden && !strcmp(r->backend, r->sv->key)) {
    r->disc_gave_up = 1; /* the original destination, unmeshed, as for an unknown one */
    dispatch(r);
    return;
  }
  count_request(r);
  char why[400];
  snprintf(why, sizeof why, "no answer from the destination service about %s in time", r->backend);
  fail(r, 503, "unknown_destination", why);
}

/* The backend through discovery, when the endpoints file does not know it:
 * DISC_READY with k set, DISC_NOT_FOUND when the control plane does not
 * know it either (or is over a bound), DISC_PENDING when the request now
 * waits for a first answer or has been answered. */
static int discovered(hreq *r, pool_key *k) {
  mesh_proxy *p = r->sv->p;
  disc_set *set;
  if (r->disc_gave_up) return DISC_NOT_FOUND;
  int st = mesh__discovery_find(p->disc, r->backend, &set);
  if (st < 0 || st == DISC_NOT_FOUND) return DISC_NOT_FOUND;
  if (st == DISC_PENDING) {
    if (mesh__discovery_wait(p->disc, r->backend, on_discovered, r, &r->dw)) {
      count_request(r);
      fail(r, 502, "no_memory", "out of memory");
    }
    return DISC_PENDING;
  }
  disc_endpoint e;
  if (mesh__disc_set_pick(set, mesh__proxy_now_ns(), mesh__proxy_rand(p), mesh__proxy_rand(p),
                          &r->ep, &e)) {
    queue_wait(r, mesh__disc_set_balance(set));
    return DISC_PENDING;
  }
  r->dset = set;
  memcpy(&k->addr, &e.sa, e.len);
  k->addrlen = e.len;
  if (endpoint_key(r, k, *e.identity ? e.identity : NULL, e.port ? e.port : port_of(r->backend)))
    return DISC_PENDING;
  return DISC_READY;
}

/* One attempt: a backend, an endpoint of it, and a connection to it. */
static void dispatch(hreq *r) {
  mesh_proxy *p = r->sv->p;
  mesh_ctx *ctx = p->ctx;
  pool_key k = {0};
  proxy_snapshot *s = p->snap;
  size_t svc;
  int drc;
  pick_backend(r);
  r->meshed = 0;
  r->server_id[0] = 0;
  /* The proxies' own headers, set again if this attempt goes to a meshed
   * endpoint; an application's l5d-dst-canonical never passes. */
  mh_head_del(ctx, &r->req, "l5d-orig-proto");
  mh_head_del(ctx, &r->req, "l5d-dst-canonical");
  if (s && mesh_proxy_endpoints_find(s->eps, r->backend, &svc) == 0) {
    mesh_endpoint *ep;
    if (mesh_balance_pick(s->bal[svc], mesh__proxy_now_ns(), mesh__proxy_rand(p),
                          mesh__proxy_rand(p), &ep)) {
      queue_wait(r, s->bal[svc]);
      return;
    }
    size_t i = (size_t)(uintptr_t)mesh_endpoint_userdata(ep);
    s->refs++;
    r->snap = s;
    r->ep = ep;
    socklen_t len;
    const struct sockaddr *sa = mesh__proxy_endpoints_sockaddr(s->eps, svc, i, &len);
    memcpy(&k.addr, sa, len);
    k.addrlen = len;
    uint16_t port = mesh_proxy_endpoints_port(s->eps, svc, i);
    if (endpoint_key(r, &k, mesh_proxy_endpoints_identity(s->eps, svc, i),
                     port ? port : port_of(mesh_proxy_endpoints_service(s->eps, svc))))
      return;
  } else if (p->disc && (drc = discovered(r, &k)) != DISC_NOT_FOUND) {
    if (drc != DISC_READY) return; /* waiting for discovery's answer, or answered */
  } else if (r->sv->has_dst && !r->overridden && !strcmp(r->backend, r->sv->key)) {
    /* Transparent mode, a destination the mesh does not know: straight
     * there, unmeshed, in the caller's protocol. */
    memcpy(&k.addr, &r->sv->dst, r->sv->dstlen);
    k.addrlen = r->sv->dstlen;
    k.proto = r->h1 ? MH_H1 : MH_H2;
    k.fresh = r->req.upgrade;
  } else {
    count_request(r);
    char why[360];
    snprintf(why, sizeof why, "%s is not a known destination", r->backend);
    fail(r, 503, "unknown_destination", why);
    return;
  }
  r->pool = p->out_pool;
  forward(r, &k);
}

/* gRPC's deadline header: at most 8 digits and a unit (H, M, S, m, u, n),
 * in ms rounded up; 0 when absent or malformed. */
static uint64_t grpc_timeout_ms(const char *v) {
  if (!v) return 0;
  size_t n = strspn(v, "0123456789");
  if (n == 0 || n > 8 || strlen(v) != n + 1) return 0;
  uint64_t x = strtoull(v, NULL, 10);
  switch (v[n]) {
  case 'H': return x * 3600000u;
  case 'M': return x * 60000u;
  case 'S': return x * 1000u;
  case 'm': return x;
  case 'u': return (x + 999u) / 1000u;
  case 'n': return (x + 999999u) / 1000000u;
  default: return 0;
  }
}

static void route_profile(hreq *r);

/* Discovery's first profile for the destination came, or the bounded wait
 * ran out: route with what is known now. */
static void on_profiled(void *ud, int answered) {
  hreq *r = ud;
  (void)answered;
  r->dw = NULL;
  r->profile_waited = 1;
  route_profile(r);
}

static void route_outbound(hreq *r) {
  mesh_proxy *p = r->sv->p;
  mesh_ctx *ctx = p->ctx;
  int overridden = mh_head_get(&r->req, "l5d-dst-override") != NULL;
  logical_dst(r, r->dst_key, sizeof r->dst_key);
  snprintf(r->authority, sizeof r->authority, "%s", r->req.authority ? r->req.authority : r->dst_key);
  mh_head_del(ctx, &r->req, "l5d-dst-override");
  r->overridden = overridden;
  if ((!r->req.authority && mh_head_setstr(ctx, &r->req, &r->req.authority, r->dst_key)) ||
      (!r->req.scheme && mh_head_setstr(ctx, &r->req, &r->req.scheme, "http"))) {
    fail(r, 502, "no_memory", "out of memory");
    return;
  }
  route_profile(r);
}

/* The profile of the logical destination key as side sees it, in *t's
 * destination: the profiles directory's entry, which wins for a
 * destination it names (a local override), else the control plane's
 * (NULL: none). DISC_PENDING when discovery has not answered yet (and the
 * directory does not name it), else DISC_READY. */
static int profile_of(mesh_proxy *p, const char *key, disc_side side, proxy_profiles **t,
                      const proxy_dst **ret) {
  const char *colon = strrchr(key, ':');
  size_t hlen = colon ? (size_t)(colon - key) : strlen(key);
  *t = p->profiles;
  *ret = mesh__proxy_profiles_find(*t, key, hlen);
  if (!p->disc) return DISC_READY;
  proxy_profiles *dt;
  int st = mesh__discovery_profile(p->disc, key, side, *ret != NULL, &dt);
  if (*ret) return DISC_READY;
  if (dt) {
    *t = dt;
    *ret = &dt->d[0];
  }
  return st == DISC_PENDING ? DISC_PENDING : DISC_READY;
}

/* The request's destination d (in t, which the request then holds) and
 * the route its method and path (without the query) match. */
static void use_profile(hreq *r, proxy_profiles *t, const proxy_dst *d) {
  r->profiles = t;
  r->profiles->refs++;
  r->dst = d;
  if (!d->prof) return;
  const char *path = r->req.path ? r->req.path : "/";
  const char *q = strchr(path, '?');
  r->route = mesh_profile_match(d->prof, r->req.method ? r->req.method : "", path,
                                q ? (size_t)(q - path) : strlen(path));
}

/* The destination's profile (routes, timeouts, retries, splits), then the
 * first attempt. A first request waits for the control plane's profile,
 * as for endpoints, within the same bound. */
static void route_profile(hreq *r) {
  mesh_proxy *p = r->sv->p;
  proxy_profiles *t;
  const proxy_dst *d;
  if (profile_of(p, r->dst_key, DISC_OUTBOUND, &t, &d) == DISC_PENDING && !r->profile_waited) {
    if (mesh__discovery_profile_wait(p->disc, r->dst_key, on_profiled, r, &r->dw))
      fail(r, 502, "no_memory", "out of memory");
    return;
  }
  uint64_t timeout = p->o->response_ms;
  if (d) {
    use_profile(r, t, d);
    mesh_budget_deposit(mesh__proxy_dst_budget(d, r->route), mesh__proxy_now_ns() / 1000000u);
    rt_inc(r, p->m.rt_req, NULL, NULL);
    if (r->route) timeout = mesh_route_timeout_ms(r->route);
    /* A Service's annotations (only ever without a profile): its request
     * timeout covers every attempt, as a route's does. */
    if (d->has_ann) {
      r->ann = &d->ann;
      if (d->ann.request_ms) timeout = d->ann.request_ms;
    }
    int retries = r->ann ? r->ann->has_retry && r->ann->limit > 0
                         : r->route && mesh_route_is_retryable(r->route);
    if (retries && !r->req.upgrade) {
      r->replay = evbuffer_new();
      r->replayable = r->replay != NULL;
    }
  }
  /* A gRPC client's own deadline, when sooner, wins. */
  uint64_t g = grpc_timeout_ms(mh_head_get(&r->req, "grpc-timeout"));
  if (g && (!timeout || g < timeout)) timeout = g;
  if (timeout) mesh__proxy_timer(r->timer, timeout);
  dispatch(r);
}

/* The server side's route metrics (Linkerd's inbound route metrics): the
 * profile of the destination the request names -- l5d-dst-canonical, which
 * the client's proxy set, else the request's authority -- looked up as the
 * outbound side does, and the route it matches. The name only selects a
 * profile and labels metrics; routing and authorization never read it.
 * Only a ServiceProfile with routes counts (a TrafficSplit means nothing
 * here), and only its routes and response classes: retries and timeouts
 * are the client proxy's. The request never waits for the control plane
 * (nor does Linkerd's inbound): without an answer yet it goes on without
 * route metrics, and later requests get them. l5d-dst-canonical is left on
 * the request, as Linkerd leaves it: the application may read it. */
static void profile_inbound(hreq *r) {
  mesh_proxy *p = r->sv->p;
  proxy_profiles *t;
  const proxy_dst *d;
  if (mesh__proxy_inbound_dst(mh_head_get(&r->req, "l5d-dst-canonical"), r->req.authority,
                              r->req.scheme, r->dst_key, sizeof r->dst_key))
    return;
  if (profile_of(p, r->dst_key, DISC_INBOUND, &t, &d) != DISC_READY || !d || !d->prof ||
      !mesh_profile_route_count(d->prof))
    return;
  use_profile(r, t, d);
  rt_inc(r, p->m.rt_req, NULL, NULL);
}

static void route_inbound(hreq *r) {
  mesh_proxy *p = r->sv->p;
  mesh_ctx *ctx = p->ctx;
  hsrv *sv = r->sv;
  snprintf(r->authority, sizeof r->authority, "%s", r->req.authority ? r->req.authority : "");
  /* The caller's identity as this proxy verified it, and nothing else:
   * a value set by anyone upstream is dropped. */
  mh_head_del(ctx, &r->req, "l5d-client-id");
  if (*sv->peer_id && mh_head_add(ctx, &r->req, "l5d-client-id", sv->peer_id)) {
    fail(r, 502, "no_memory", "out of memory");
    return;
  }
  pool_key k = {0};
  const char *orig = mh_head_get(&r->req, "l5d-orig-proto");
  k.proto = MH_H2;
  if (orig && (!strcasecmp(orig, "HTTP/1.1") || !strcasecmp(orig, "HTTP/1.0"))) {
    r->req.version = strcasecmp(orig, "HTTP/1.0") ? MH_V11 : MH_V10;
    k.proto = MH_H1;
  }
  mh_head_del(ctx, &r->req, "l5d-orig-proto");
  /* Authorization, per request, with the policy in force now (a change
   * applies to connections already open). */
  const char *why = NULL;
  int d = mesh__proxy_authorize(p, sv->port, sv->peer_id,
                                sv->peer.ss_family == AF_UNSPEC ? NULL : (struct sockaddr *)&sv->peer,
                                &r->req, 1, &why);
  if (d < 0) { /* nothing reached the application: the caller may retry */
    fail(r, 503, "policy_pending", why);
    return;
  }
  if (d == MESH_POLICY_DENY) {
    fail(r, 403, "unauthorized", why);
    return;
  }
  if (d == MESH_POLICY_NOT_FOUND) {
    fail(r, 404, "route_not_found", why);
    return;
  }
  profile_inbound(r);
  k.addrlen = mesh__proxy_inbound_addr(p, sv->port, &k.addr);
  r->pool = p->in_pool;
  if (p->o->response_ms) mesh__proxy_timer(r->timer, p->o->response_ms);
  forward(r, &k);
}

static void on_request(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud) {
  hsrv *sv = ud;
  mesh_proxy *p = sv->p;
  (void)c;
  hreq *r = mesh__calloc(p->ctx, 1, sizeof *r);
  if (!r || !(r->timer = evtimer_new(p->base, on_timeout, r)) ||
      mh_head_copy(p->ctx, &r->req, req)) {
    if (r) {
      if (r->timer) event_free(r->timer);
      mesh__free(p->ctx, r);
    }
    mh_stream_reset(s, 1);
    return;
  }
  mh_head_init(&r->trailers[REQ]);
  mh_head_init(&r->trailers[RSP]);
  mh_head_init(&r->hhead);
  r->sv = sv;
  r->ss = s;
  r->h1 = req->version != MH_V2;
  r->start_ns = r->attempt_ns = mesh__proxy_now_ns();
  r->ended[REQ] = end_stream ? 1 : 0;
  r->next = sv->reqs;
  if (sv->reqs) sv->reqs->prev = r;
  sv->reqs = r;
  p->in_flight++;
  mh_stream_set_cbs(s, &ss_cbs, r);
  if (p->in_flight > p->o->max_in_flight) { /* load shedding: answer at once */
    snprintf(r->authority, sizeof r->authority, "%s", req->authority ? req->authority : "");
    fail(r, 503, "load_shed", "too many requests in flight");
    return;
  }
  if (sv->inbound) route_inbound(r);
  else route_outbound(r);
}

/* ---- Upgrades ----------------------------------------------------------------------------------- */

/* Both sides have switched protocols: one opaque connection from here on. */
static void maybe_splice(hreq *r) {
  if (!r->down_bev || !r->up_bev) return;
  hsrv *sv = r->sv;
  mesh_proxy *p = sv->p;
  struct bufferevent *down = r->down_bev, *up = r->up_bev;
  mesh_tls_conn *tls = r->up_tls;
  r->down_bev = r->up_bev = NULL;
  r->up_tls = NULL;
  mesh__proxy_splice(p, down, up, tls, r->target, r->meshed ? r->server_id : "");
  req_free(r);
  if (!sv->mc) { /* its connection was handed over with the request */
    sv_free(sv, "");
  }
}

static void sv_on_upgrade(mh_conn *c, struct bufferevent *bev, void *ud) {
  hsrv *sv = ud;
  (void)c;
  sv->mc = NULL; /* the codec frees it after this */
  hreq *r = sv->reqs;
  if (!r) { /* nothing to join it to */
    bufferevent_free(bev);
    sv_free(sv, "");
    return;
  }
  r->ss = NULL;
  r->down_bev = bev;
  maybe_splice(r);
}

static void pool_upgraded(void *ud, mh_conn *c, struct bufferevent *bev, mesh_tls_conn *tls) {
  pool_side *ps = ud;
  for (hsrv *sv = ps->p->hsrvs; sv; sv = sv->next)
    for (hreq *r = sv->reqs; r; r = r->next)
      if (r->uc == c) {
        r->uc = NULL;
        r->us = NULL;
        r->up_bev = bev;
        r->up_tls = tls;
        maybe_splice(r);
        return;
      }
  if (tls) mesh_tls_conn_free(tls);
  else bufferevent_free(bev);
}

/* ---- Connections ------------------------------------------------------------------------------ */

static void sv_free(hsrv *sv, const char *err) {
  mesh_proxy *p = sv->p;
  while (sv->reqs) req_free(sv->reqs);
  track_close(&sv->trk, err);
  if (sv->prev) sv->prev->next = sv->next;
  else p->hsrvs = sv->next;
  if (sv->next) sv->next->prev = sv->prev;
  mesh__free(p->ctx, sv);
  mesh__proxy_conn_gone(p);
}

static void on_close(mh_conn *c, int err, void *ud) {
  (void)c;
  hsrv *sv = ud;
  sv->mc = NULL; /* the codec frees it after this */
  sv_free(sv, err == MH_OK ? "" : err == MH_ERR_PROTOCOL ? "EPROTO" : "ECONNRESET");
}

static const mh_conn_cbs sv_cbs = {.on_request = on_request, .on_close = on_close,
                                   .on_upgrade = sv_on_upgrade};

static void release_tls(struct bufferevent *bev, void *arg) {
  (void)bev;
  mesh_tls_conn_free(arg);
}

static hsrv *sv_new(mesh_proxy *p, int inbound) {
  hsrv *sv = mesh__calloc(p->ctx, 1, sizeof *sv);
  if (!sv) return NULL;
  sv->p = p;
  sv->inbound = inbound;
  sv->next = p->hsrvs;
  if (p->hsrvs) p->hsrvs->prev = sv;
  p->hsrvs = sv;
  p->nconns++;
  return sv;
}

/* The accepted connection in tcp_* (peer="src"). */
static void sv_open(hsrv *sv, struct bufferevent *bev, const char *tls, const char *target) {
  const char *lv[6] = {sv->inbound ? "inbound" : "outbound", "src", tls, sv->peer_id, "", target};
  track_open(&sv->trk, sv->p, bev, lv);
}

void mesh__proxy_http_outbound(mesh_proxy *p, struct bufferevent *bev, int proto, const char *key,
                               const struct sockaddr *dst, socklen_t dstlen) {
  hsrv *sv = sv_new(p, 0);
  if (!sv) {
    bufferevent_free(bev);
    return;
  }
  snprintf(sv->key, sizeof sv->key, "%s", key ? key : "");
  if (dst) {
    memcpy(&sv->dst, dst, dstlen);
    sv->dstlen = dstlen;
    sv->has_dst = 1;
  }
  bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
  sv_open(sv, bev, "no_identity", sv->key);
  if (mh_conn_server(p->ctx, bev, proto, &p->http_limits, &sv_cbs, sv, &sv->mc)) {
    bufferevent_free(bev);
    sv_free(sv, "ENOMEM");
  }
}

void mesh__proxy_http_inbound(mesh_proxy *p, mesh_tls_conn *tls, uint16_t port, const char *peer) {
  hsrv *sv = sv_new(p, 1);
  if (!sv) {
    mesh_tls_conn_free(tls);
    return;
  }
  sv->port = port;
  snprintf(sv->peer_id, sizeof sv->peer_id, "%s", peer ? peer : "");
  socklen_t plen = sizeof sv->peer;
  struct bufferevent *raw = bufferevent_get_underlying(mesh_tls_conn_bev(tls));
  if (!raw || getpeername(bufferevent_getfd(raw), (struct sockaddr *)&sv->peer, &plen) != 0)
    sv->peer.ss_family = AF_UNSPEC;
  char target[64];
  snprintf(target, sizeof target, "%s:%u", p->o->inbound_host, (unsigned)port);
  struct bufferevent *bev = mesh_tls_conn_bev(tls);
  bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
  sv_open(sv, bev, *sv->peer_id ? "true" : "no_identity", target);
  if (mh_conn_server(p->ctx, bev, MH_H2, &p->http_limits, &sv_cbs, sv, &sv->mc)) {
    mesh_tls_conn_free(tls);
    sv_free(sv, "ENOMEM");
    return;
  }
  mh_conn_set_bev_release(sv->mc, release_tls, tls);
}

void mesh__proxy_http_shutdown(mesh_proxy *p) {
  for (hsrv *sv = p->hsrvs; sv; sv = sv->next)
    if (sv->mc) mh_conn_shutdown(sv->mc);
  if (p->out_pool) mesh__pool_shutdown(p->out_pool);
  if (p->in_pool) mesh__pool_shutdown(p->in_pool);
}

void mesh__proxy_http_close_all(mesh_proxy *p) {
  while (p->hsrvs) {
    hsrv *sv = p->hsrvs;
    mh_conn *mc = sv->mc;
    sv->mc = NULL;
    sv_free(sv, "");
    mh_conn_free(mc);
  }
}

static void queue_free(mesh_proxy *p) {
  http_queue *q = p->hq;
  if (!q) return;
  if (q->kick_ev) event_free(q->kick_ev);
  if (q->wake_ev) event_free(q->wake_ev);
  for (int s = 0; s < 2; s++) {
    mesh_metrics_series_unref(q->gauge[s]);
    mesh_metrics_series_unref(q->failfast[s]);
    mesh_metrics_series_unref(q->shed[s]);
  }
  mesh__free(p->ctx, q);
  p->hq = NULL;
}

static int queue_init(mesh_proxy *p) {
  static const char *const dir[] = {"direction"};
  static const char *const sides[2] = {"outbound", "inbound"};
  http_queue *q = mesh__calloc(p->ctx, 1, sizeof *q);
  if (!q) return MESH_ERR_NOMEM;
  p->hq = q;
  q->wake_ns = UINT64_MAX;
  q->kick_ev = event_new(p->base, -1, 0, on_kick, q);
  q->wake_ev = evtimer_new(p->base, on_wake, q);
  if (!q->kick_ev || !q->wake_ev) return MESH_ERR_NOMEM;
  int rc;
  if ((rc = mesh_metrics_gauge(p->m.reg, "http_queue_requests",
                               "HTTP requests waiting for a ready endpoint or a connection "
                               "(fail-fast queue)",
                               dir, 1, &q->f_gauge)) ||
      (rc = mesh_metrics_counter(p->m.reg, "http_failfast_total",
                                 "HTTP requests answered 503 fail_fast: nothing became ready "
                                 "within the fail-fast timeout",
                                 dir, 1, &q->f_failfast)) ||
      (rc = mesh_metrics_counter(p->m.reg, "http_queue_load_shed_total",
                                 "HTTP requests answered 503 load_shed at once: the queue was full",
                                 dir, 1, &q->f_shed)))
    return rc;
  for (int s = 0; s < 2; s++)
    if ((rc = mesh_metrics_series(q->f_gauge, &sides[s], 1, &q->gauge[s])) ||
        (rc = mesh_metrics_series(q->f_failfast, &sides[s], 1, &q->failfast[s])) ||
        (rc = mesh_metrics_series(q->f_shed, &sides[s], 1, &q->shed[s])))
      return rc;
  return 0;
}

int mesh__proxy_http_init(mesh_proxy *p) {
  static const char *const req[] = {"direction", "authority", "target_addr", "tls", "client_id",
                                    "server_id"};
  static const char *const rsp[] = {"direction", "authority",      "target_addr", "tls",
                                    "client_id", "server_id",      "classification",
                                    "status_code", "grpc_status",  "error"};
  int rc;
  static const char *const rt[] = {"direction", "dst", "rt_route", "classification",
                                   "status_code"};
  static const char *const rt_actual[] = {"direction", "dst", "rt_route", "dst_service",
                                          "classification", "status_code"};
  static const char *const rt_retry[] = {"direction", "dst", "rt_route", "skipped"};
  if ((rc = mesh_metrics_counter(p->m.reg, "route_request_total",
                                 "Requests per ServiceProfile route, as the caller made them", rt, 3,
                                 &p->m.rt_req)) ||
      (rc = mesh_metrics_counter(p->m.reg, "route_response_total",
                                 "Responses per route, as the caller saw them (after retries)", rt,
                                 5, &p->m.rt_rsp)) ||
      (rc = mesh_metrics_histogram(p->m.reg, "route_response_latency_ms",
                                   "Time to a route's response head, retries included, in ms", rt,
                                   3, NULL, 0, &p->m.rt_latency)) ||
      (rc = mesh_metrics_counter(p->m.reg, "route_actual_request_total",
                                 "Requests per route as sent, retries included, per backend",
                                 rt_actual, 4, &p->m.rt_actual_req)) ||
      (rc = mesh_metrics_counter(p->m.reg, "route_actual_response_total",
                                 "Responses per route per attempt, per backend", rt_actual, 6,
                                 &p->m.rt_actual_rsp)) ||
      (rc = mesh_metrics_counter(p->m.reg, "route_retryable_total",
                                 "Failed requests of retryable routes: retried (skipped=\"\") or "
                                 "not, and why (no_budget, body, attempts, response_too_large, "
                                 "response_stream)",
                                 rt_retry, 4, &p->m.rt_retryable)))
    return rc;
  if ((rc = mesh_metrics_counter(p->m.reg, "request_total", "Total HTTP requests", req, 6,
                                 &p->m.req_total)) ||
      (rc = mesh_metrics_counter(p->m.reg, "response_total", "Total HTTP responses", rsp, 10,
                                 &p->m.rsp_total)) ||
      (rc = mesh_metrics_histogram(p->m.reg, "response_latency_ms",
                                   "Time from a request's head to its response's head, in ms", req,
                                   6, NULL, 0, &p->m.rsp_latency)))
    return rc;
  if ((rc = queue_init(p))) return rc;
  mh_limits_default(&p->http_limits);
  p->http_limits.max_head_bytes = p->o->max_head_bytes;
  p->http_limits.max_fields = p->o->max_fields;
  p->http_limits.head_timeout_ms = p->o->header_ms;
  p->http_window = p->http_limits.window_bytes;
  p->pool_sides[0] = (pool_side){p, "outbound"};
  p->pool_sides[1] = (pool_side){p, "inbound"};
  pool_opts po = {.obs = {.open = pool_open, .close = pool_close, .upgraded = pool_upgraded,
                          .ud = &p->pool_sides[0]},
                  .connect_ms = p->o->connect_ms, .max_idle = 100, .max_conns = 1000,
                  .max_waiting = p->o->queue_cap[0], .limits = p->http_limits};
  po.limits.idle_timeout_ms = 3000; /* an idle client connection: Linkerd's 3 s */
  if ((rc = mesh__pool_new(p->ctx, p->base, &po, p->creds, &p->out_pool))) return rc;
  po.connect_ms = p->o->inbound_connect_ms;
  po.max_waiting = p->o->queue_cap[1];
  po.obs.ud = &p->pool_sides[1];
  return mesh__pool_new(p->ctx, p->base, &po, NULL, &p->in_pool);
}

void mesh__proxy_http_free(mesh_proxy *p) {
  mesh__proxy_http_close_all(p);
  mesh__pool_free(p->out_pool);
  mesh__pool_free(p->in_pool);
  p->out_pool = p->in_pool = NULL;
  queue_free(p);
}
