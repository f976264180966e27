/* Fuzz target: bytes from untrusted peers into the HTTP/2 codec: a server connection after the client preface, a client connection reading the server's frames. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#include <mesh/mesh.h>

#include "http_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Input: flags, opts, then the payload.
 *   flags bit 0: 0 server (payload: what a client sends after its preface),
 *                1 client (payload: what the server sends);
 *         bit 1: socketpair (1) or bufferevent pair (0);
 *         bit 2: small limits; bit 3: half-close once the payload is taken;
 *         bit 4: slow consumer (64 bytes of body a turn);
 *         bits 5-7: the payload goes in pieces of CHUNK[] bytes, one a turn.
 *   opts (server) bit 0: mh_conn_shutdown after the first request;
 *        bit 1: mh_conn_close after the first request;
 *        (client) bits 0-1: requests (1-3); bit 2: they carry a body;
 *        bit 3: reset the first as soon as its head arrives; bit 4: a
 *        content-length on the body; bit 5: mh_conn_shutdown after sending;
 *   opts bit 7: timeouts of a few milliseconds, and a few turns that wait
 *        for them once the input is taken (the only inputs that depend on time).
 * Server requests are answered by their path, as in fuzz_http1.c: /r reset
 * (/rf refused), /e mh_respond_error, /n 204, /c no length and trailers,
 * /x at once (before the body), /i a 103 first, /b a body larger than the
 * window; others 200 with a small body once the request has ended. */

#define MAX_TURNS 3000
#define IDLE_TURNS 3
#define TIMED_TURNS 4 /* opts bit 7: turns that wait up to TIMED_MS for a timer */
#define TIMED_MS 3
#define SPIN_TURNS 500 /* turns with events firing and nothing moving: a busy loop */
#define SLOW_BYTES 64u
#define OUT_HIGH 65536u /* http2.c: frames queued before it stops asking nghttp2 */
static const size_t CHUNK[8] = {0, 1, 2, 5, 13, 64, 300, 1500};
static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

typedef struct st st;
struct st {
  st *prev, *next;
  mh_stream *s;
  struct evbuffer *held;
  char mode;
  int ended, answered, is_head, reset_first, got_head;
  int64_t clen;
  uint64_t got;
  size_t big_left;
};

/* What our server sent on one stream, read back from the wire. */
typedef struct {
  int32_t id;
  int status;  /* the final one */
  int64_t clen;
  uint64_t data;
  int err;     /* l5d-proxy-error */
} wire_stream;

static struct {
  mesh_ctx *ctx;
  struct event_base *base;
  mh_limits lim;
  int client, slow;
  uint8_t opts;
  mh_conn *conn;
  struct bufferevent *cbev;
  struct bufferevent *peer;
  int closed, nreq;
  uint64_t events;
  uint64_t peer_bytes; /* what the codec wrote to us */
  st *streams;
  int reqs_left;
  /* The server's frames, checked as they arrive. */
  struct evbuffer *wire;
  nghttp2_hd_inflater *inf;
  int frames;
  int32_t hb_id;      /* a header block in progress (CONTINUATION follows) */
  int hb_end_stream;
  struct evbuffer *hb;
  wire_stream ws[64];
} H;

/* ---- Per-exchange state ------------------------------------------------------------ */

static st *st_new(mh_stream *s) {
  st *t = calloc(1, sizeof *t);
  if (!t) abort();
  t->s = s;
  t->clen = -1;
  t->next = H.streams;
  if (H.streams) H.streams->prev = t;
  H.streams = t;
  return t;
}

static void st_free(st *t) {
  if (t->prev) t->prev->next = t->next;
  else H.streams = t->next;
  if (t->next) t->next->prev = t->prev;
  free(t);
}

static void check_head(const mh_head *h, int trailers) {
  if (h->n > h->cap) __builtin_trap();
  if (h->version != MH_V2 || h->content_length < -1) __builtin_trap();
  for (size_t i = 0; i < h->n; i++) {
    const char *n = h->fields[i].name, *v = h->fields[i].value;
    if (!n || !v || !n[0] || n[0] == ':' || strpbrk(n, "\r\n") || strpbrk(v, "\r\n"))
      __builtin_trap();
    for (const char *p = n; *p; p++)
      if (*p >= 'A' && *p <= 'Z') __builtin_trap();
    if (mh__hop_by_hop(n, strlen(n)) && (trailers || strcmp(n, "te") || strcmp(v, "trailers")))
      __builtin_trap();
  }
}

static void take(st *t, struct evbuffer *buf, size_t max) {
  size_t n = evbuffer_get_length(buf);
  if (n > max) n = max;
  if (!n) return;
  evbuffer_drain(buf, n);
  t->got += n;
  H.events++;
  mh_stream_consumed(t->s, n);
}

static void on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  (void)s;
  st *t = ud;
  H.events++;
  if (t->ended) __builtin_trap();
  /* Flow control bounds what waits: the stream window. */
  if (evbuffer_get_length(buf) > H.lim.window_bytes) __builtin_trap();
  if (H.slow) {
    t->held = buf;
    take(t, buf, SLOW_BYTES);
  } else {
    take(t, buf, SIZE_MAX);
  }
}

static void on_reset(mh_stream *s, int err, void *ud) {
  (void)s;
  H.events++;
  if (err < MH_OK || err > MH_ERR_CANCEL) __builtin_trap();
  st_free(ud);
}

/* ---- Server application ----------------------------------------------------------- */

static void send_body(st *t, const char *body, int end) {
  struct evbuffer *b = evbuffer_new();
  if (!b) abort();
  evbuffer_add(b, body, strlen(body));
  mh_stream_send_data(t->s, b, end);
  evbuffer_free(b);
}

static void send_big(st *t) {
  static const char piece[1024];
  while (t->big_left && mh_stream_pending(t->s) < H.lim.window_bytes) {
    size_t n = t->big_left < sizeof piece ? t->big_left : sizeof piece;
    struct evbuffer *b = evbuffer_new();
    if (!b) abort();
    evbuffer_add(b, piece, n);
    t->big_left -= n;
    if (mh_stream_send_data(t->s, b, t->big_left == 0)) t->big_left = 0;
    evbuffer_free(b);
  }
}

static void answer(st *t) {
  if (t->answered) return;
  t->answered = 1;
  mh_head h;
  mh_head_init(&h);
  h.status = 200;
  switch (t->mode) {
  case 'e':
    mh_respond_error(t->s, NULL, 503, "fuzz");
    break;
  case 'n':
    h.status = 204;
    mh_stream_send_head(t->s, &h, 1);
    break;
  case 'c':
    mh_head_add(H.ctx, &h, "x-mode", "trailers");
    if (mh_stream_send_head(t->s, &h, 0) == 0) {
      send_body(t, "body", 0);
      mh_head tr;
      mh_head_init(&tr);
      mh_head_add(H.ctx, &tr, "x-trailer", "1");
      mh_stream_send_end(t->s, &tr);
      mh_head_clear(&tr);
    }
    break;
  case 'i':
    h.status = 103;
    mh_head_add(H.ctx, &h, "link", "</a>; rel=preload");
    mh_stream_send_head(t->s, &h, 0);
    mh_head_clear(&h);
    h.status = 200;
    h.content_length = 3;
    if (mh_stream_send_head(t->s, &h, t->is_head) == 0 && !t->is_head) send_body(t, "ok\n", 1);
    break;
  case 'b':
    t->big_left = 3u * H.lim.window_bytes;
    h.content_length = (int64_t)t->big_left;
    if (mh_stream_send_head(t->s, &h, t->is_head) || t->is_head) t->big_left = 0;
    send_big(t);
    break;
  default:
    h.content_length = 3;
    if (mh_stream_send_head(t->s, &h, t->is_head) == 0 && !t->is_head) send_body(t, "ok\n", 1);
    break;
  }
  mh_head_clear(&h);
}

static void s_on_end(mh_stream *s, mh_head *tr, void *ud) {
  (void)s;
  st *t = ud;
  H.events++;
  if (t->ended) __builtin_trap();
  t->ended = 1;
  if (tr) check_head(tr, 1);
  if (t->clen >= 0 && t->got != (uint64_t)t->clen) __builtin_trap(); /* nghttp2 checks it */
  answer(t);
}

static void s_on_drain(mh_stream *s, void *ud) {
  (void)s;
  H.events++;
  send_big(ud);
}

static const mh_stream_cbs srv_scbs = {.on_data = on_data, .on_end = s_on_end, .on_reset = on_reset,
                                       .on_drain = s_on_drain};

static void on_request(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud) {
  (void)ud;
  H.events++;
  if (H.closed || c != H.conn || !req->method || !req->path) __builtin_trap();
  check_head(req, 0);
  int nreq = H.nreq++;
  if (nreq == 0 && (H.opts & 1)) mh_conn_shutdown(c);
  if (nreq == 0 && (H.opts & 2)) mh_conn_close(c);
  char mode = req->path[0] == '/' ? req->path[1] : 0;
  if (mode == 'r') {
    mh_stream_reset(s, req->path[2] == 'f');
    return;
  }
  st *t = st_new(s);
  t->mode = mode;
  t->is_head = strcmp(req->method, "HEAD") == 0;
  t->clen = req->content_length;
  mh_stream_set_cbs(s, &srv_scbs, t);
  if (end_stream) {
    t->ended = 1;
    if (req->content_length > 0) __builtin_trap(); /* nghttp2 checks it */
  }
  if (end_stream || mode == 'x' || mode == 'e') answer(t);
}

static void on_close(mh_conn *c, int err, void *ud) {
  (void)ud;
  H.events++;
  if (H.closed || c != H.conn || err < MH_OK || err > MH_ERR_CANCEL) __builtin_trap();
  if (H.streams) __builtin_trap(); /* every stream hears on_reset first */
  H.closed = 1;
  H.conn = NULL;
  H.cbev = NULL;
}

static const mh_conn_cbs conn_cbs = {.on_request = on_request, .on_close = on_close};

/* ---- Checking the server's frames ------------------------------------------------------ */

/* The slot of stream id; create: take it over (another stream's state is
 * dropped); otherwise NULL when it holds another stream. */
static wire_stream *wire_of(int32_t id, int create) {
  wire_stream *w = &H.ws[(uint32_t)id % 64u];
  if (w->id != id) {
    if (!create) return NULL;
    memset(w, 0, sizeof *w);
    w->id = id;
    w->clen = -1;
  }
  return w;
}

/* A header block from our server: valid HPACK, a sane :status, and a
 * synthesized answer well-formed. */
static void wire_headers(int32_t id, const uint8_t *p, size_t n, int end_stream) {
  wire_stream *w = wire_of(id, 1);
  int status = -1, err = 0;
  int64_t clen = -1;
  for (;;) {
    nghttp2_nv nv;
    int fl = 0;
    ssize_t k = nghttp2_hd_inflate_hd2(H.inf, &nv, &fl, p, n, 1);
    if (k < 0) __builtin_trap(); /* our HPACK is broken */
    p += k;
    n -= (size_t)k;
    if (fl & NGHTTP2_HD_INFLATE_EMIT) {
      if (nv.namelen == 7 && !memcmp(nv.name, ":status", 7)) {
        if (nv.valuelen != 3) __builtin_trap();
        status = atoi((const char *)nv.value);
        if (status < 100 || status > 599) __builtin_trap();
      } else if (nv.namelen == 14 && !memcmp(nv.name, "content-length", 14)) {
        clen = strtoll((const char *)nv.value, NULL, 10);
      } else if (nv.namelen == 15 && !memcmp(nv.name, "l5d-proxy-error", 15)) {
        err = 1;
      }
      for (size_t i = 0; i < nv.namelen; i++)
        if (nv.name[i] >= 'A' && nv.name[i] <= 'Z') __builtin_trap();
    }
    if (fl & NGHTTP2_HD_INFLATE_FINAL) {
      nghttp2_hd_inflate_end_headers(H.inf);
      break;
    }
    if (!(fl & NGHTTP2_HD_INFLATE_EMIT) && n == 0) break;
  }
  if (status >= 200) {
    w->status = status;
    w->clen = clen;
    w->data = 0;
    w->err = err;
    if (err && status < 400) __builtin_trap(); /* a synthesized answer is an error */
    if (err && clen < 0) __builtin_trap();
  }
  (void)end_stream;
}

static void wire_data(int32_t id, size_t n, int end_stream) {
  wire_stream *w = wire_of(id, 0);
  if (!w) return;
  if (!w->status) __builtin_trap(); /* DATA before a final head */
  w->data += n;
  if (w->clen >= 0 && w->data > (uint64_t)w->clen) __builtin_trap();
  if (end_stream && w->clen >= 0 && w->data != (uint64_t)w->clen) __builtin_trap();
}

static void wire_frames(void) {
  for (;;) {
    uint8_t hd[9];
    if (evbuffer_copyout(H.wire, hd, 9) < 9) return;
    size_t len = (size_t)hd[0] << 16 | (size_t)hd[1] << 8 | hd[2];
    uint8_t type = hd[3], fl = hd[4];
    int32_t id = (int32_t)(((uint32_t)hd[5] & 0x7f) << 24 | (uint32_t)hd[6] << 16 |
                           (uint32_t)hd[7] << 8 | hd[8]);
    if (evbuffer_get_length(H.wire) < 9 + len) return;
    evbuffer_drain(H.wire, 9);
    uint8_t *p = evbuffer_pullup(H.wire, (ssize_t)len);
    if (H.frames++ == 0 && (type != NGHTTP2_SETTINGS || (fl & NGHTTP2_FLAG_ACK)))
      __builtin_trap(); /* the server preface */
    if (H.hb_id && type != NGHTTP2_CONTINUATION) __builtin_trap();
    size_t off = 0, pad = 0;
    if ((type == NGHTTP2_DATA || type == NGHTTP2_HEADERS) && (fl & NGHTTP2_FLAG_PADDED)) {
      if (len < 1) __builtin_trap();
      pad = p[0];
      off = 1;
    }
    if (type == NGHTTP2_HEADERS && (fl & NGHTTP2_FLAG_PRIORITY)) off += 5;
    if (off + pad > len) __builtin_trap();
    const uint8_t *body = p ? p + off : (const uint8_t *)"";
    size_t blen = len - off - pad;
    switch (type) {
    case NGHTTP2_DATA:
      if (id == 0) __builtin_trap();
      wire_data(id, blen, fl & NGHTTP2_FLAG_END_STREAM);
      break;
    case NGHTTP2_HEADERS:
    case NGHTTP2_CONTINUATION:
      if (id == 0 || (type == NGHTTP2_CONTINUATION && id != H.hb_id)) __builtin_trap();
      if (type == NGHTTP2_HEADERS) H.hb_end_stream = fl & NGHTTP2_FLAG_END_STREAM;
      evbuffer_add(H.hb, body, blen);
      if (fl & NGHTTP2_FLAG_END_HEADERS) {
        size_t n = evbuffer_get_length(H.hb);
        wire_headers(id, evbuffer_pullup(H.hb, -1), n, H.hb_end_stream);
        evbuffer_drain(H.hb, n);
        H.hb_id = 0;
      } else {
        H.hb_id = id;
      }
      break;
    case NGHTTP2_PUSH_PROMISE:
      __builtin_trap(); /* we never push */
    default:
      break;
    }
    evbuffer_drain(H.wire, len);
  }
}

/* ---- Our side of the wire ------------------------------------------------------------ */

static void peer_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t n = evbuffer_get_length(in);
  if (!n) return;
  H.events++;
  H.peer_bytes += n;
  if (!H.client) {
    evbuffer_add_buffer(H.wire, in);
    wire_frames();
  }
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void peer_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  (void)what;
  (void)arg;
  H.events++;
}

/* ---- Client application ------------------------------------------------------------ */

static void c_on_head(mh_stream *s, mh_head *h, int end_stream, void *ud) {
  st *t = ud;
  H.events++;
  if (t->ended || t->got_head) __builtin_trap();
  if (h->status < 100 || h->status > 599) __builtin_trap(); /* mh_head: responses 100..599 */
  check_head(h, 0);
  int final = h->status >= 200 || h->status == 101;
  if (!final && end_stream) __builtin_trap();
  if (final) {
    t->got_head = 1;
    t->clen = t->is_head || h->status == 204 || h->status == 304 ? -1 : h->content_length;
    if (end_stream) t->ended = 1;
  }
  if (t->reset_first && final) {
    mh_stream_reset(s, 0);
    st_free(t);
  }
}

static void c_on_end(mh_stream *s, mh_head *tr, void *ud) {
  (void)s;
  st *t = ud;
  H.events++;
  if (t->ended || !t->got_head) __builtin_trap();
  t->ended = 1;
  if (tr) check_head(tr, 1);
  if (t->clen >= 0 && t->got != (uint64_t)t->clen) __builtin_trap();
}

static void c_on_reset(mh_stream *s, int err, void *ud) {
  st *t = ud;
  if (err == MH_OK && !t->ended) __builtin_trap(); /* a clean end comes after the end */
  on_reset(s, err, ud);
}

static const mh_stream_cbs cli_scbs = {.on_head = c_on_head, .on_data = on_data, .on_end = c_on_end,
                                       .on_reset = c_on_reset};

static void start_requests(void) {
  int n = 1 + (H.opts & 3) % 3;
  for (int i = 0; i < n; i++) {
    mh_head req;
    mh_head_init(&req);
    int body = (H.opts & 4) != 0;
    mh_head_setstr(H.ctx, &req, &req.method, body ? "POST" : i == 2 ? "HEAD" : "GET");
    mh_head_setstr(H.ctx, &req, &req.path, "/");
    mh_head_setstr(H.ctx, &req, &req.authority, "fuzz.test");
    mh_head_setstr(H.ctx, &req, &req.scheme, "http");
    mh_head_add(H.ctx, &req, "te", "trailers");
    req.content_length = body && (H.opts & 16) ? 5 : -1;
    st *t = st_new(NULL);
    t->is_head = i == 2 && !body;
    t->reset_first = (H.opts & 8) && i == 0;
    mh_stream *s;
    if (mh_client_request(H.conn, &req, !body, &cli_scbs, t, &s)) {
      st_free(t);
      mh_head_clear(&req);
      break;
    }
    t->s = s;
    if (body) {
      struct evbuffer *b = evbuffer_new();
      if (!b) abort();
      evbuffer_add(b, "hello", 5);
      mh_stream_send_data(s, b, 1);
      evbuffer_free(b);
    }
    mh_head_clear(&req);
  }
  if (H.opts & 32) mh_conn_shutdown(H.conn);
}

/* ---- The driver ---------------------------------------------------------------------- */

static int make_pair(int sockets, struct bufferevent **a, struct bufferevent **b) {
  if (sockets) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds)) return -1;
    evutil_make_socket_nonblocking(fds[0]);
    evutil_make_socket_nonblocking(fds[1]);
    *a = bufferevent_socket_new(H.base, fds[0], BEV_OPT_CLOSE_ON_FREE);
    *b = bufferevent_socket_new(H.base, fds[1], BEV_OPT_CLOSE_ON_FREE);
    if (!*a || !*b) abort();
    return 0;
  }
  struct bufferevent *pair[2];
  if (bufferevent_pair_new(H.base, BEV_OPT_DEFER_CALLBACKS, pair)) return -1;
  *a = pair[0];
  *b = pair[1];
  return 0;
}

static void half_close(int sockets) {
  if (sockets) {
    shutdown(bufferevent_getfd(H.peer), SHUT_WR);
  } else if (!evbuffer_get_length(bufferevent_get_output(H.peer))) {
    bufferevent_flush(H.peer, EV_WRITE, BEV_FINISHED);
  }
}

static void slow_turn(void) {
  for (st *t = H.streams, *n; t; t = n) {
    n = t->next;
    if (t->held && t->s) take(t, t->held, SLOW_BYTES);
  }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

/* One turn that may block, woken after TIMED_MS at the latest. */
static void timed_turn(void) {
  struct event *tick = evtimer_new(H.base, on_tick, NULL);
  struct timeval tv = {0, TIMED_MS * 1000};
  if (!tick) abort();
  evtimer_add(tick, &tv);
  event_base_loop(H.base, EVLOOP_ONCE);
  event_free(tick);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  mesh_ctx *ctx = H.ctx;
  if (!ctx) {
    signal(SIGPIPE, SIG_IGN); /* as meshd: a write to a closed peer is an error, not a death */
    if (mesh_ctx_new(&ctx)) abort();
  }
  memset(&H, 0, sizeof H);
  H.ctx = ctx;
  uint8_t flags = data[0];
  H.opts = data[1];
  data += 2;
  size -= 2;
  H.client = flags & 1;
  int sockets = (flags >> 1) & 1;
  H.slow = (flags >> 4) & 1;
  size_t chunk = CHUNK[flags >> 5];
  if (chunk && chunk < size / 300) chunk = size / 300;
  mh_limits_default(&H.lim);
  int timed = H.opts & 0x80 ? TIMED_TURNS : 0;
  if (timed) {
    H.lim.head_timeout_ms = 1;
    H.lim.idle_timeout_ms = 2;
    H.lim.ping_interval_ms = 1;
  }
  if (flags & 4) {
    H.lim.max_head_bytes = 512;
    H.lim.max_fields = 8;
    H.lim.window_bytes = 1024;
    H.lim.max_streams = 4;
  }
  H.wire = evbuffer_new();
  H.hb = evbuffer_new();
  if (!H.wire || !H.hb || nghttp2_hd_inflate_new(&H.inf)) abort();

  struct event_config *cfg = event_config_new();
  event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
  H.base = event_base_new_with_config(cfg);
  event_config_free(cfg);
  if (!H.base) abort();
  struct bufferevent *mine;
  if (make_pair(sockets, &H.cbev, &mine)) abort();
  H.peer = mine;
  bufferevent_setcb(mine, peer_read, NULL, peer_event, NULL);
  bufferevent_enable(mine, EV_READ | EV_WRITE);
  int rc = H.client ? mh_conn_client(H.ctx, H.cbev, MH_H2, &H.lim, &conn_cbs, NULL, &H.conn)
                    : mh_conn_server(H.ctx, H.cbev, MH_H2, &H.lim, &conn_cbs, NULL, &H.conn);
  if (rc) __builtin_trap();
  if (H.client) start_requests();
  else bufferevent_write(mine, PREFACE, sizeof PREFACE - 1);

  size_t off = 0;
  int idle = 0, spin = 0, eof_sent = !(flags & 8);
  uint64_t last = 0;
  for (int turn = 0; turn < MAX_TURNS; turn++) {
    struct evbuffer *out = bufferevent_get_output(mine);
    /* A client's peer answers what it was sent: never before the request. */
    int waiting = H.client && !H.peer_bytes;
    if (off < size && !evbuffer_get_length(out) && !waiting) {
      size_t n = chunk && chunk < size - off ? chunk : size - off;
      bufferevent_write(mine, data + off, n);
      off += n;
    }
    event_base_loop(H.base, EVLOOP_NONBLOCK);
    if (H.slow) slow_turn();
    /* Frames queued for the socket stay near OUT_HIGH: one frame beyond. */
    if (H.cbev && evbuffer_get_length(bufferevent_get_output(H.cbev)) > 2 * OUT_HIGH)
      __builtin_trap();
    uint64_t sig = H.events + off + evbuffer_get_length(out) * 7 +
                   (H.cbev ? evbuffer_get_length(bufferevent_get_input(H.cbev)) * 11 +
                                 evbuffer_get_length(bufferevent_get_output(H.cbev)) * 13
                           : 0);
    int active = event_base_get_num_events(H.base, EVENT_BASE_COUNT_ACTIVE);
    spin = sig == last && active ? spin + 1 : 0;
    if (spin > SPIN_TURNS) __builtin_trap(); /* the codec keeps waking itself for nothing */
    if (sig == last && !active && (off == size || evbuffer_get_length(out) || waiting)) {
      if (++idle < IDLE_TURNS) continue;
      if (timed) {
        timed--;
        idle = 0;
        timed_turn();
        continue;
      }
      if (!eof_sent) {
        half_close(sockets);
        eof_sent = 1;
        idle = 0;
        continue;
      }
      break;
    }
    idle = 0;
    last = sig;
  }

  if (H.conn) mh_conn_free(H.conn);
  H.conn = NULL;
  bufferevent_free(mine);
  while (H.streams) st_free(H.streams);
  event_base_free(H.base);
  nghttp2_hd_inflate_del(H.inf);
  evbuffer_free(H.wire);
  evbuffer_free(H.hb);
  return 0;
}
