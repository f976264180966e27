/* Fuzz target: bytes from untrusted peers into the HTTP/1 codec: a server connection reading requests, a client connection reading a response. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <http_parser.h>

#include <mesh/mesh.h>

#include "http_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Input: flags, opts, then the payload.
 *   flags bit 0: 0 server (payload: what a client sends), 1 client (payload:
 *                a request spec up to the first NUL, then what the server sends);
 *         bit 1: socketpair (1) or bufferevent pair (0);
 *         bit 2: small limits; bit 3: half-close once the payload is taken;
 *         bit 4: slow consumer (64 bytes of body a turn);
 *         bits 5-7: the payload goes in pieces of CHUNK[] bytes, one a turn.
 *   opts (server) bit 0: mh_conn_shutdown after the first request;
 *        (client) bits 0-1: requests to send one after the other (1-3);
 *        bit 2: reset the first exchange as soon as its head arrives;
 *   opts bit 7: timeouts of a few milliseconds, and a few turns that wait
 *        for them once the input is taken (the only inputs that depend on time).
 * A request spec: "METHOD PATH\n" then "name: value\n" lines; host,
 * content-length and upgrade set the head's members.
 * Server requests are answered by path: /r reset, /e mh_respond_error,
 * /n 204, /c chunked with trailers, /x at once (before the body), /u 101
 * when an upgrade was asked for, /b a body larger than the window; others
 * 200 with a small body once the request has ended. */

#define MAX_TURNS 3000
#define IDLE_TURNS 3
#define TIMED_TURNS 4 /* opts bit 7: turns that wait up to TIMED_MS for a timer */
#define TIMED_MS 3
#define SPIN_TURNS 500 /* turns with events firing and nothing moving: a busy loop */
#define SLOW_BYTES 64u
#define H1_FEED_MAX 16384u  /* http1.c: bytes handed to the parser at once */
#define H1_INPUT_MIN 16384u /* http1.c: read-ahead */
static const size_t CHUNK[8] = {0, 1, 2, 5, 13, 64, 300, 1500};

typedef struct st st;
struct st {
  st *prev, *next;
  mh_stream *s;
  struct evbuffer *held; /* slow consumer: the body buffer not yet taken */
  char mode;
  int ended, answered, is_head, reset_first;
  int64_t clen;
  uint64_t got;
  size_t big_left;
};

static struct {
  mesh_ctx *ctx;
  struct event_base *base;
  mh_limits lim;
  int client, slow;
  uint8_t opts;
  mh_conn *conn;
  struct bufferevent *cbev; /* the codec's, while it has it */
  struct bufferevent *peer; /* ours: plays the other side */
  struct bufferevent *upg;  /* handed over by on_upgrade */
  int closed, upgraded, nreq;
  uint64_t events; /* any callback: progress */
  uint64_t peer_bytes; /* what the codec wrote to us */
  st *streams;
  /* Client side */
  mh_head req;
  int reqs_left;
  /* Server side: the responses we read back, checked with http-parser. */
  http_parser rp;
  int rp_dead;         /* parse no more (after a 101) */
  int rp_closed;       /* a complete response said close: nothing may follow */
  char methods[256];    /* 'H' for HEAD, 'O' other, in request order */
  int mhead, mtail;
  int rp_is_err;       /* the response being read carries l5d-proxy-error */
  int rp_hdr_err;      /* header-field state: the name was l5d-proxy-error */
  int rp_lost;         /* more requests than methods[] holds: stop pairing */
} H;

static const mh_stream_cbs srv_scbs;
static const mh_stream_cbs cli_scbs;

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

/* What the codec hands up never carries framing or a broken line. */
static void check_head(const mh_head *h, int trailers) {
  if (h->n > h->cap) __builtin_trap();
  if (!trailers && h->n > H.lim.max_fields) __builtin_trap();
  for (size_t i = 0; i < h->n; i++) {
    const char *n = h->fields[i].name, *v = h->fields[i].value;
    if (!n || !v || !n[0] || strpbrk(n, "\r\n: ") || strpbrk(v, "\r\n")) __builtin_trap();
    for (const char *p = n; *p; p++)
      if (*p >= 'A' && *p <= 'Z') __builtin_trap();
    if (mh__hop_by_hop(n, strlen(n)) && (trailers || strcmp(n, "te") || strcmp(v, "trailers")))
      __builtin_trap();
  }
  if (h->content_length < -1) __builtin_trap();
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
  st *t = ud;
  H.events++;
  if (t->ended) __builtin_trap(); /* body after the end */
  /* The window bounds what waits: one parser feed beyond it. */
  uint32_t w = H.lim.window_bytes;
  if (evbuffer_get_length(buf) > (size_t)w + H1_FEED_MAX) __builtin_trap();
  (void)s;
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
  if (evbuffer_get_length(b)) __builtin_trap(); /* every byte is moved */
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
    mh_head_add(H.ctx, &h, "x-mode", "chunked");
    if (mh_stream_send_head(t->s, &h, 0) == 0) {
      send_body(t, "chunk", 0);
      mh_head tr;
      mh_head_init(&tr);
      mh_head_add(H.ctx, &tr, "x-trailer", "1");
      mh_stream_send_end(t->s, &tr);
      mh_head_clear(&tr);
    }
    break;
  case 'u':
    h.status = 101;
    if (mh_stream_send_head(t->s, &h, 1)) {
      h.status = 200;
      mh_stream_send_head(t->s, &h, 1);
    }
    break;
  case 'b':
    t->big_left = 3u * H.lim.window_bytes;
    h.content_length = (int64_t)t->big_left;
    if (mh_stream_send_head(t->s, &h, t->is_head)) t->big_left = 0;
    if (t->is_head) t->big_left = 0;
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
  if (t->clen >= 0 && t->got != (uint64_t)t->clen) __builtin_trap(); /* framing */
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
  if (req->version != MH_V10 && req->version != MH_V11) __builtin_trap();
  if (req->path[0] != '/' && strcmp(req->path, "*")) __builtin_trap();
  check_head(req, 0);
  int is_head = strcmp(req->method, "HEAD") == 0;
  if (H.mtail - H.mhead < (int)sizeof H.methods)
    H.methods[H.mtail++ % (int)sizeof H.methods] = is_head ? 'H' : 'O';
  else
    H.rp_lost = 1;
  if (H.nreq++ == 0 && (H.opts & 1)) mh_conn_shutdown(c);
  char mode = req->path[0] == '/' ? req->path[1] : 0;
  if (mode == 'u' && !req->upgrade) mode = 0;
  if (mode == 'r') {
    mh_stream_reset(s, 0);
    return;
  }
  st *t = st_new(s);
  t->mode = mode;
  t->is_head = is_head;
  t->clen = req->content_length;
  mh_stream_set_cbs(s, &srv_scbs, t);
  if (end_stream) {
    t->ended = 1;
    if (req->content_length > 0) __builtin_trap();
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

static void upg_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  evbuffer_drain(in, evbuffer_get_length(in));
}

static void on_upgrade(mh_conn *c, struct bufferevent *bev, void *ud) {
  (void)ud;
  H.events++;
  if (H.closed || c != H.conn || !bev || bev != H.cbev) __builtin_trap();
  H.upgraded = 1;
  H.conn = NULL;
  H.cbev = NULL;
  H.upg = bev;
  bufferevent_setcb(bev, upg_read, NULL, NULL, NULL);
  upg_read(bev, NULL);
}

static const mh_conn_cbs conn_cbs = {.on_request = on_request, .on_close = on_close,
                                     .on_upgrade = on_upgrade};

/* ---- Checking the server's answers ---------------------------------------------------- */

static int rp_begin(http_parser *p) {
  (void)p;
  if (H.rp_closed) __builtin_trap(); /* bytes after a response that said close */
  H.rp_is_err = H.rp_hdr_err = 0;
  return 0;
}

static int rp_field(http_parser *p, const char *at, size_t n) {
  (void)p;
  H.rp_hdr_err = n == 15 && strncasecmp(at, "l5d-proxy-error", 15) == 0;
  if (H.rp_hdr_err) H.rp_is_err = 1;
  return 0;
}

static int rp_headers(http_parser *p) {
  int status = p->status_code;
  if (status < 100 || status > 599 || p->http_major != 1 || p->http_minor != 1) __builtin_trap();
  if (H.rp_is_err && status < 400 && status != 200) __builtin_trap();
  if (status == 101) {
    H.rp_dead = 1;
    return 2;
  }
  if (status < 200) return 0; /* interim: the request still waits */
  if (H.mhead == H.mtail && !H.rp_is_err && !H.rp_lost)
    __builtin_trap(); /* a final response that no request asked for, and not the codec's own */
  int is_head = H.mhead < H.mtail && H.methods[H.mhead % (int)sizeof H.methods] == 'H';
  if (H.mhead < H.mtail) H.mhead++;
  return is_head ? 1 : 0;
}

static int rp_complete(http_parser *p) {
  if (p->status_code >= 200 && !http_should_keep_alive(p)) H.rp_closed = 1;
  return 0;
}

static const http_parser_settings rp_settings = {
    .on_message_begin = rp_begin,
    .on_header_field = rp_field,
    .on_headers_complete = rp_headers,
    .on_message_complete = rp_complete,
};

/* ---- Our side of the wire ------------------------------------------------------------ */

static void peer_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  size_t n = evbuffer_get_length(in);
  if (!n) return;
  H.events++;
  H.peer_bytes += n;
  if (!H.client && !H.rp_dead) {
    unsigned char *p = evbuffer_pullup(in, -1);
    size_t used = http_parser_execute(&H.rp, &rp_settings, (const char *)p, n);
    if (HTTP_PARSER_ERRNO(&H.rp) != HPE_OK) __builtin_trap(); /* a malformed response */
    if (used != n && !H.rp_dead) __builtin_trap();
  }
  evbuffer_drain(in, n);
}

static void peer_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  (void)what;
  (void)arg;
  H.events++;
}

/* ---- Client application ------------------------------------------------------------ */

static void start_request(void);

static void c_on_head(mh_stream *s, mh_head *h, int end_stream, void *ud) {
  st *t = ud;
  H.events++;
  if (t->ended) __builtin_trap();
  if (h->status < 100 || h->status > 599) __builtin_trap(); /* mh_head: responses 100..599 */
  if (h->version != MH_V10 && h->version != MH_V11) __builtin_trap();
  check_head(h, 0);
  if (h->status >= 200 || h->status == 101) {
    t->clen = t->is_head || h->status == 204 || h->status == 304 ? -1 : h->content_length;
    t->answered = 1;
    if (end_stream) t->ended = 1; /* no body, and no on_end */
  } else if (end_stream) {
    __builtin_trap(); /* an interim head is never the end */
  }
  if (t->reset_first && h->status >= 200) {
    mh_stream_reset(s, 0);
    st_free(t);
  }
}

static void c_on_end(mh_stream *s, mh_head *tr, void *ud) {
  (void)s;
  st *t = ud;
  H.events++;
  if (t->ended || !t->answered) __builtin_trap();
  t->ended = 1;
  if (tr) check_head(tr, 1);
  if (t->clen >= 0 && t->got != (uint64_t)t->clen) __builtin_trap();
}

static void c_on_reset(mh_stream *s, int err, void *ud) {
  st *t = ud;
  int clean = err == MH_OK;
  if (clean && !t->ended) __builtin_trap(); /* a clean end comes after on_end */
  on_reset(s, err, ud);
  if (clean && H.reqs_left > 0 && H.conn) start_request();
}

static const mh_stream_cbs cli_scbs = {.on_head = c_on_head, .on_data = on_data, .on_end = c_on_end,
                                       .on_reset = c_on_reset};

static void start_request(void) {
  H.reqs_left--;
  mh_stream *s;
  st *t = st_new(NULL);
  t->is_head = H.req.method && strcmp(H.req.method, "HEAD") == 0;
  t->reset_first = (H.opts & 4) && H.nreq == 0;
  int body = H.req.content_length != -1 || (H.req.method && !strcmp(H.req.method, "POST"));
  if (mh_client_request(H.conn, &H.req, !body, &cli_scbs, t, &s)) {
    st_free(t);
    H.reqs_left = 0;
    return;
  }
  H.nreq++;
  t->s = s;
  if (body) {
    struct evbuffer *b = evbuffer_new();
    if (!b) abort();
    int64_t n = H.req.content_length >= 0 && H.req.content_length < 64 ? H.req.content_length : 5;
    evbuffer_add(b, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", (size_t)n);
    if (H.req.content_length >= 0) {
      mh_stream_send_data(s, b, 1);
    } else {
      mh_stream_send_data(s, b, 0);
      mh_stream_send_end(s, NULL);
    }
    evbuffer_free(b);
  }
}

/* "METHOD PATH\nname: value\n..." into H.req. */
static void parse_spec(const char *p, size_t n) {
  mh_head *h = &H.req;
  h->content_length = -1;
  const char *end = p + n;
  int first = 1;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    if (first) {
      const char *sp = memchr(p, ' ', (size_t)(le - p));
      char *m = strndup(p, (size_t)((sp ? sp : le) - p));
      char *u = sp ? strndup(sp + 1, (size_t)(le - sp - 1)) : strdup("/");
      if (!m || !u) abort();
      mh_head_setstr(H.ctx, h, &h->method, m);
      mh_head_setstr(H.ctx, h, &h->path, u);
      free(m);
      free(u);
      first = 0;
    } else {
      const char *col = memchr(p, ':', (size_t)(le - p));
      if (col) {
        const char *v = col + 1;
        while (v < le && *v == ' ') v++;
        char *name = strndup(p, (size_t)(col - p)), *val = strndup(v, (size_t)(le - v));
        if (!name || !val) abort();
        if (!strcasecmp(name, "host")) {
          mh_head_setstr(H.ctx, h, &h->authority, val);
        } else if (!strcasecmp(name, "content-length")) {
          h->content_length = strtoll(val, NULL, 10);
          if (h->content_length < -1) h->content_length = -1;
        } else if (!strcasecmp(name, "upgrade")) {
          h->upgrade = 1;
          mh_head_setstr(H.ctx, h, &h->upgrade_proto, val);
        } else if (h->n < 64) {
          mh_head_add(H.ctx, h, name, val);
        }
        free(name);
        free(val);
      }
    }
    p = nl ? nl + 1 : end;
  }
  if (!h->method) mh_head_setstr(H.ctx, h, &h->method, "GET");
  if (!h->path) mh_head_setstr(H.ctx, h, &h->path, "/");
}

/* ---- The driver ---------------------------------------------------------------------- */

static void setup_once(void) {
  if (H.ctx) return;
  signal(SIGPIPE, SIG_IGN); /* as meshd: a write to a closed peer is an error, not a death */
  if (mesh_ctx_new(&H.ctx)) abort();
}

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
    /* A flush ignores the other side's read watermark: only when nothing waits. */
    bufferevent_flush(H.peer, EV_WRITE, BEV_FINISHED);
  }
}

/* Takes a slow consumer's next bytes. */
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
  setup_once();
  mesh_ctx *ctx = H.ctx;
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
    H.lim.max_head_bytes = 256;
    H.lim.max_fields = 4;
    H.lim.window_bytes = 1024;
  }
  mh_head_init(&H.req);
  if (H.client) {
    const uint8_t *z = memchr(data, 0, size);
    size_t n = z ? (size_t)(z - data) : size;
    parse_spec((const char *)data, n);
    data += z ? n + 1 : n;
    size -= z ? n + 1 : n;
    H.reqs_left = 1 + (H.opts & 3) % 3;
  } else {
    http_parser_init(&H.rp, HTTP_RESPONSE);
  }

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
  int rc = H.client ? mh_conn_client(H.ctx, H.cbev, MH_H1, &H.lim, &conn_cbs, NULL, &H.conn)
                    : mh_conn_server(H.ctx, H.cbev, MH_H1, &H.lim, &conn_cbs, NULL, &H.conn);
  if (rc) __builtin_trap();
  if (H.client) start_request();

  size_t off = 0;
  int idle = 0, spin = 0, eof_sent = !(flags & 8);
  uint64_t last = 0;
  uint32_t hw = H.lim.window_bytes > H1_INPUT_MIN ? H.lim.window_bytes : H1_INPUT_MIN;
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
    /* Read-ahead stops at the high-water mark. */
    if (H.cbev && evbuffer_get_length(bufferevent_get_input(H.cbev)) > hw) __builtin_trap();
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
  if (H.upg) bufferevent_free(H.upg);
  bufferevent_free(mine);
  while (H.streams) st_free(H.streams);
  mh_head_clear(&H.req);
  event_base_free(H.base);
  return 0;
}
