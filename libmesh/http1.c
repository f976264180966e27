/* libmesh HTTP/1 codec: http-parser for what arrives, hand-written heads for what leaves, one exchange at a time over a bufferevent. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <http_parser.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "http_internal.h"

/* Bytes handed to the parser at once: bounds how far a body runs ahead of
 * the window check (the window is checked between calls). */
#define H1_FEED_MAX 16384u
/* Read-ahead in the bufferevent's input beyond the window (pipelined
 * requests, the next head): reading stops there. */
#define H1_INPUT_MIN 16384u
/* After an answer that the peer may still be sending into (an error, an
 * early response), wait this long for its end before closing: closing
 * with unread input makes the kernel send a reset, which can destroy the
 * answer before the peer reads it. */
#define H1_LINGER_MS 1000u

typedef struct h1_conn h1_conn;
typedef struct h1_stream h1_stream;

typedef struct {
  char *p;
  size_t n, cap;
} gbuf;

struct h1_stream {
  struct mh_stream base;
  h1_stream *next;     /* on the done list */
  mh_head head;        /* server: the request; client: the latest response head */
  mh_head trailers;    /* received */
  struct evbuffer *in; /* body received and not taken yet */
  int64_t tx_left;     /* content-length bytes still to send; -1: not length-framed */
  int req_version;     /* server: how the request came */
  unsigned announced : 1; /* the owner knows it (server: on_request ran; client: always) */
  unsigned detached : 1;  /* no callback for it any more */
  unsigned rx_begun : 1, rx_end : 1, rx_nobody : 1, rx_interim : 1;
  unsigned tx_head : 1, tx_end : 1, tx_chunked : 1, tx_nobody : 1, tx_eof : 1, tx_bad : 1;
  unsigned head_req : 1;    /* the request is a HEAD */
  unsigned upgrade_req : 1; /* client: we asked for an upgrade */
  unsigned upgrade : 1;     /* 101 sent (server) or received (client) */
  unsigned sent_100 : 1, above : 1;
  unsigned end_pending : 1; /* the message is complete but body bytes wait in in */
};

struct h1_conn {
  struct mh_conn base;
  struct bufferevent *bev;
  struct event *defer; /* deferred work: finished exchanges, resumed parsing, close */
  struct event *timer; /* head, idle and close-flush timeouts */
  http_parser p;
  int server;
  int depth;      /* libevent callbacks of ours on the stack */
  h1_stream *cur; /* the exchange on the wire */
  h1_stream *done, **done_tail; /* finished, waiting for their on_reset(MH_OK) */
  int err, serr;  /* on_close's and the live stream's error when failing */
  unsigned dead : 1;       /* freed, or about to be: no callback any more */
  unsigned failing : 1;    /* closing now (deferred) */
  unsigned flush_close : 1; /* close once the output is written */
  unsigned upgrading : 1;  /* hand the bev over once the output is written */
  unsigned stop : 1;       /* parse no more */
  unsigned close_after : 1; /* close after the current exchange */
  unsigned eof : 1, eof_fed : 1, blocked : 1, shutdown : 1, running : 1;
  unsigned in_head : 1, in_trailers : 1, last_value : 1, head_timer : 1;
  unsigned linger : 1, lingering : 1; /* see H1_LINGER_MS */
  int ev; /* what the parser paused for */
  size_t hbytes, nfields;
  gbuf url, name, value, conntok;
  int perr_status;        /* a callback's verdict: the answer to send (server) */
  int perr_mh;            /* ... and the MH_ERR_* it means */
  const char *perr_why;
};

enum { EV_NONE, EV_HEAD, EV_END };

static const mh_stream_ops h1_stream_ops;
static const mh_conn_ops h1_conn_ops;
static const http_parser_settings h1_settings;

static void run(h1_conn *c);

/* ---- Small helpers -------------------------------------------------------------------- */

static int gbuf_add(mesh_ctx *ctx, gbuf *b, const char *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 128;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = mesh__realloc(ctx, b->p, cap);
    if (!q) return MESH_ERR_NOMEM;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

static void gbuf_free(mesh_ctx *ctx, gbuf *b) {
  mesh__free(ctx, b->p);
  memset(b, 0, sizeof *b);
}

static struct evbuffer *out_of(h1_conn *c) { return bufferevent_get_output(c->bev); }

static uint32_t window(const h1_conn *c) {
  return c->base.limits.window_bytes ? c->base.limits.window_bytes : MH_DEFAULT_WINDOW_BYTES;
}

static void schedule(h1_conn *c) {
  if (c->defer) event_active(c->defer, EV_TIMEOUT, 1);
}

static void arm(h1_conn *c, uint32_t ms, int head) {
  c->head_timer = head;
  if (!ms) {
    event_del(c->timer);
    return;
  }
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
  event_add(c->timer, &tv);
}

static int is_token(const char *s, size_t n, const char *tok) {
  return strlen(tok) == n && strncasecmp(s, tok, n) == 0;
}

static h1_stream *stream_new(h1_conn *c) {
  h1_stream *s = mesh__calloc(c->base.ctx, 1, sizeof *s);
  if (!s) return NULL;
  s->in = evbuffer_new();
  if (!s->in) {
    mesh__free(c->base.ctx, s);
    return NULL;
  }
  s->base.ops = &h1_stream_ops;
  s->base.conn = &c->base;
  mh_head_init(&s->head);
  mh_head_init(&s->trailers);
  s->tx_left = -1;
  return s;
}

static void stream_free(h1_conn *c, h1_stream *s) {
  if (!s) return;
  mh_head_clear(&s->head);
  mh_head_clear(&s->trailers);
  evbuffer_free(s->in);
  mesh__free(c->base.ctx, s);
}

static void destroy(h1_conn *c) {
  mesh_ctx *ctx = c->base.ctx;
  stream_free(c, c->cur);
  for (h1_stream *s = c->done, *n; s; s = n) {
    n = s->next;
    stream_free(c, s);
  }
  if (c->defer) event_free(c->defer);
  if (c->timer) event_free(c->timer);
  if (c->bev) {
    bufferevent_setcb(c->bev, NULL, NULL, NULL, NULL);
    mh__bev_free(&c->base, c->bev);
  }
  gbuf_free(ctx, &c->url);
  gbuf_free(ctx, &c->name);
  gbuf_free(ctx, &c->value);
  gbuf_free(ctx, &c->conntok);
  mesh__free(ctx, c);
}

static void maybe_free(h1_conn *c) {
  if (c->dead && c->depth == 0) destroy(c);
}

/* Close now (from the deferred handler): the live stream gets on_reset(serr),
 * the connection on_close(err). */
static void fail(h1_conn *c, int err, int serr) {
  if (c->failing || c->dead) return;
  c->failing = 1;
  c->stop = 1;
  c->err = err;
  c->serr = serr;
  if (c->bev) bufferevent_disable(c->bev, EV_READ);
  schedule(c);
}

/* Close once what is queued has been written (bounded by the idle timeout). */
static void close_when_flushed(h1_conn *c, int err) {
  if (c->flush_close || c->failing) return;
  c->flush_close = 1;
  c->stop = 1;
  c->err = err;
  bufferevent_disable(c->bev, EV_READ);
  arm(c, c->base.limits.idle_timeout_ms ? c->base.limits.idle_timeout_ms : 10000u, 0);
  schedule(c);
}

/* ---- Writing -------------------------------------------------------------------------- */

static int bad_text(const char *s) { return !s || strpbrk(s, "\r\n") != NULL; }

static void put_fields(struct evbuffer *out, const mh_head *h, int trailers) {
  for (size_t i = 0; i < h->n; i++) {
    const mh_field *f = &h->fields[i];
    size_t nl = strlen(f->name);
    if (!nl || bad_text(f->name) || bad_text(f->value) || strpbrk(f->name, " :\t")) continue;
    if (mh__hop_by_hop(f->name, nl)) {
      /* te: trailers is the one hop-by-hop value that a request carries on. */
      if (trailers || strcasecmp(f->name, "te") || strcasecmp(f->value, "trailers")) continue;
    }
    if (strcasecmp(f->name, "expect") == 0) continue; /* we never send Expect */
    evbuffer_add_printf(out, "%s: %s\r\n", f->name, f->value);
  }
}

static const char *reason(int status) {
  const char *r = http_status_str((enum http_status)status);
  return r && r[0] != '<' ? r : "Unknown";
}

static void note_pending(h1_conn *c, h1_stream *s) {
  if (evbuffer_get_length(out_of(c)) > window(c) / 2) s->above = 1;
}

static void check_done(h1_conn *c, h1_stream *s);

/* The peer finished sending and nothing of it waits to be parsed. */
static int peer_gone(h1_conn *c) {
  return c->eof && !evbuffer_get_length(bufferevent_get_input(c->bev));
}

static void tx_finish(h1_conn *c, h1_stream *s) {
  s->tx_end = 1;
  if (s->tx_left > 0) s->tx_bad = 1; /* the peer gets a short body: only a close tells it */
  if (s->tx_eof || s->tx_bad) c->close_after = 1;
  /* A server response that ends while the request body is still coming:
   * rather than read and discard an unbounded rest, close the connection
   * once the response is out (the simple correct option; the client sees
   * a complete response, then the close). A body-less request only waits
   * for its message-complete step, and an upgrade for its head's end. */
  if (c->server && !s->rx_end && !s->rx_nobody && !s->upgrade) {
    s->rx_end = 1;
    c->stop = 1;
    c->close_after = 1;
    c->linger = 1;
  }
  check_done(c, s);
}

/* The exchange is over on the wire: the stream goes to the done list (its
 * on_reset(MH_OK) is deferred); the connection is reused, upgraded or closed. */
static void check_done(h1_conn *c, h1_stream *s) {
  if (!s->rx_end || !s->tx_end || c->cur != s) return;
  c->cur = NULL;
  s->next = NULL;
  *c->done_tail = s;
  c->done_tail = &s->next;
  if (s->upgrade) {
    c->upgrading = 1;
    c->stop = 1;
    arm(c, c->base.limits.idle_timeout_ms ? c->base.limits.idle_timeout_ms : 10000u, 0);
  } else if (c->close_after || c->shutdown || s->head.close || peer_gone(c)) {
    close_when_flushed(c, MH_OK);
  } else {
    arm(c, c->base.limits.idle_timeout_ms, 0);
    if (c->server) bufferevent_enable(c->bev, EV_READ);
  }
  schedule(c);
}

static int stream_usable(const h1_stream *s) {
  const h1_conn *c = (const h1_conn *)s->base.conn;
  return !s->detached && !c->dead && !c->failing && c->cur == s && c->bev;
}

static int h1_send_head(mh_stream *ms, const mh_head *h, int end_stream) {
  h1_stream *s = (h1_stream *)ms;
  h1_conn *c = (h1_conn *)ms->conn;
  if (!h || !c->server || !stream_usable(s) || s->tx_head || h->status < 100 || h->status > 599)
    return MESH_ERR_INVALID;
  struct evbuffer *out = out_of(c);
  if (h->status < 200 && h->status != 101) {
    /* Interim: HTTP/1.0 clients do not know them; one 100 is enough. */
    if (s->req_version < MH_V11 || (h->status == 100 && s->sent_100)) return 0;
    if (h->status == 100) s->sent_100 = 1;
    evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", h->status, reason(h->status));
    put_fields(out, h, 0);
    evbuffer_add(out, "\r\n", 2);
    return 0;
  }
  if (h->status == 101 && !s->head.upgrade) return MESH_ERR_INVALID;
  /* h->close is not honoured: whether this connection lives on is this
   * codec's business (the request, shutdown, framing), not the origin's. */
  int closing = c->shutdown || c->close_after || s->head.close || peer_gone(c);
  int nobody = s->head_req || h->status == 101 || h->status == 204 || h->status == 304;
  evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\n", h->status, reason(h->status));
  put_fields(out, h, 0);
  if (h->status == 101) {
    const char *proto = h->upgrade_proto ? h->upgrade_proto : s->head.upgrade_proto;
    if (bad_text(proto)) proto = s->head.upgrade_proto;
    evbuffer_add_printf(out, "connection: upgrade\r\nupgrade: %s\r\n", proto);
    s->upgrade = 1;
    closing = 0;
  } else if (nobody) {
    if (h->content_length >= 0 && (s->head_req || h->status == 304))
      evbuffer_add_printf(out, "content-length: %" PRId64 "\r\n", h->content_length);
  } else if (end_stream) {
    evbuffer_add_printf(out, "content-length: 0\r\n");
  } else if (h->content_length >= 0) {
    evbuffer_add_printf(out, "content-length: %" PRId64 "\r\n", h->content_length);
    s->tx_left = h->content_length;
  } else if (s->req_version >= MH_V11) {
    evbuffer_add_printf(out, "transfer-encoding: chunked\r\n");
    s->tx_chunked = 1;
  } else {
    s->tx_eof = 1; /* HTTP/1.0 peer, unknown length: the close ends it */
    closing = 1;
  }
  if (closing) {
    evbuffer_add_printf(out, "connection: close\r\n");
    c->close_after = 1;
  } else if (s->req_version == MH_V10) {
    evbuffer_add_printf(out, "connection: keep-alive\r\n");
  }
  evbuffer_add(out, "\r\n", 2);
  s->tx_head = 1;
  s->tx_nobody = (unsigned)nobody;
  note_pending(c, s);
  /* A 101 ends our message: the rest of the bytes are the new protocol's. */
  if (end_stream || h->status == 101) tx_finish(c, s);
  return 0;
}

static int h1_send_data(mh_stream *ms, struct evbuffer *buf, int end_stream) {
  h1_stream *s = (h1_stream *)ms;
  h1_conn *c = (h1_conn *)ms->conn;
  if (!buf || !stream_usable(s) || !s->tx_head || s->tx_end) return MESH_ERR_INVALID;
  struct evbuffer *out = out_of(c);
  size_t n = evbuffer_get_length(buf);
  if (s->tx_nobody) {
    evbuffer_drain(buf, n);
  } else if (s->tx_chunked) {
    if (n) {
      evbuffer_add_printf(out, "%zx\r\n", n);
      evbuffer_add_buffer(out, buf);
      evbuffer_add(out, "\r\n", 2);
    }
    if (end_stream) evbuffer_add(out, "0\r\n\r\n", 5);
  } else if (s->tx_left >= 0) {
    size_t take = (uint64_t)s->tx_left < n ? (size_t)s->tx_left : n;
    evbuffer_remove_buffer(buf, out, take);
    s->tx_left -= (int64_t)take;
    if (n > take) {
      /* More than the head announced: the framing cannot carry it. */
      evbuffer_drain(buf, n - take);
      s->tx_bad = 1;
      c->close_after = 1;
    }
  } else {
    evbuffer_add_buffer(out, buf);
  }
  note_pending(c, s);
  if (end_stream) tx_finish(c, s);
  return 0;
}

static int h1_send_end(mh_stream *ms, const mh_head *trailers) {
  h1_stream *s = (h1_stream *)ms;
  h1_conn *c = (h1_conn *)ms->conn;
  if (!stream_usable(s) || !s->tx_head || s->tx_end) return MESH_ERR_INVALID;
  if (s->tx_chunked) {
    struct evbuffer *out = out_of(c);
    evbuffer_add(out, "0\r\n", 3);
    if (trailers) put_fields(out, trailers, 1);
    evbuffer_add(out, "\r\n", 2);
  }
  tx_finish(c, s);
  return 0;
}

static size_t h1_pending(const mh_stream *ms) {
  const h1_conn *c = (const h1_conn *)ms->conn;
  return c->bev && !c->dead ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

static void h1_consumed(mh_stream *ms, size_t n) {
  (void)n;
  h1_stream *s = (h1_stream *)ms;
  h1_conn *c = (h1_conn *)ms->conn;
  if (c->dead || c->cur != s || !c->blocked) return;
  /* A complete message's rest is offered again at once; a body in flight
   * waits until the window has room. */
  if (!s->end_pending && evbuffer_get_length(s->in) > window(c)) return;
  c->blocked = 0;
  if (!c->stop) bufferevent_enable(c->bev, EV_READ);
  schedule(c); /* bytes may wait in the input already */
}

static void h1_stream_reset(mh_stream *ms, int refused) {
  (void)refused;
  h1_stream *s = (h1_stream *)ms;
  h1_conn *c = (h1_conn *)ms->conn;
  s->detached = 1;
  if (c->cur != s) return; /* the exchange was complete */
  fail(c, MH_ERR_CANCEL, MH_ERR_CANCEL);
}

/* ---- Client requests ------------------------------------------------------------------- */

static int method_has_body(const char *m) {
  return strcmp(m, "GET") && strcmp(m, "HEAD") && strcmp(m, "DELETE") && strcmp(m, "OPTIONS") &&
         strcmp(m, "TRACE") && strcmp(m, "CONNECT");
}

static int h1_request(mh_conn *mc, const mh_head *req, int end_stream, const mh_stream_cbs *cbs,
                      void *ud, mh_stream **ret) {
  h1_conn *c = (h1_conn *)mc;
  if (c->server || !req || !req->method || !req->path || !ret || !req->method[0] ||
      !req->path[0] || strpbrk(req->method, " \r\n") ||
      strpbrk(req->path, " \r\n") || (req->authority && bad_text(req->authority)))
    return MESH_ERR_INVALID;
  if (c->cur || c->dead || c->failing || c->stop || c->shutdown || c->eof || c->flush_close)
    return MESH_ERR_AGAIN;
  h1_stream *s = stream_new(c);
  if (!s) return MESH_ERR_NOMEM;
  s->base.cbs = cbs;
  s->base.ud = ud;
  s->announced = 1;
  s->head_req = strcmp(req->method, "HEAD") == 0;
  struct evbuffer *out = out_of(c);
  evbuffer_add_printf(out, "%s %s HTTP/1.1\r\n", req->method, req->path);
  if (req->authority) evbuffer_add_printf(out, "host: %s\r\n", req->authority);
  put_fields(out, req, 0);
  if (req->upgrade && req->upgrade_proto && !bad_text(req->upgrade_proto)) {
    evbuffer_add_printf(out, "connection: upgrade\r\nupgrade: %s\r\n", req->upgrade_proto);
    s->upgrade_req = 1;
  }
  if (end_stream) {
    if (req->content_length >= 0 || method_has_body(req->method))
      evbuffer_add_printf(out, "content-length: 0\r\n");
  } else if (req->content_length >= 0) {
    evbuffer_add_printf(out, "content-length: %" PRId64 "\r\n", req->content_length);
    s->tx_left = req->content_length;
  } else {
    evbuffer_add_printf(out, "transfer-encoding: chunked\r\n");
    s->tx_chunked = 1;
  }
  evbuffer_add(out, "\r\n", 2);
  s->tx_head = 1;
  s->tx_end = (unsigned)!!end_stream;
  c->cur = s;
  event_del(c->timer);
  bufferevent_enable(c->bev, EV_READ);
  note_pending(c, s);
  *ret = &s->base;
  return 0;
}

/* ---- Connection operations ------------------------------------------------------------- */

static uint32_t h1_capacity(const mh_conn *mc) {
  const h1_conn *c = (const h1_conn *)mc;
  return !c->server && !c->cur && !c->dead && !c->failing && !c->stop && !c->shutdown &&
                 !c->eof && !c->flush_close
             ? 1
             : 0;
}

static uint32_t h1_active(const mh_conn *mc) { return ((const h1_conn *)mc)->cur ? 1 : 0; }

static void h1_shutdown(mh_conn *mc) {
  h1_conn *c = (h1_conn *)mc;
  if (c->dead) return;
  c->shutdown = 1;
  /* Server: a request whose head is still arriving gets answered (with a close). */
  if (!c->cur && !c->in_head) close_when_flushed(c, MH_OK);
}

static void h1_close(mh_conn *mc) { fail((h1_conn *)mc, MH_OK, MH_ERR_CLOSED); }

static void h1_free(mh_conn *mc) {
  h1_conn *c = (h1_conn *)mc;
  if (!c) return;
  c->dead = 1;
  maybe_free(c);
}

/* ---- Receiving: the parser's callbacks ------------------------------------------------------ */

static int perr(h1_conn *c, int status, int mh, const char *why) {
  c->perr_status = status;
  c->perr_mh = mh;
  c->perr_why = why;
  return 1;
}

static int count(h1_conn *c, size_t n) {
  c->hbytes += n;
  if (c->hbytes > c->base.limits.max_head_bytes)
    return perr(c, 431, MH_ERR_LIMIT, c->in_trailers ? "trailers too large" : "request header too large");
  return 0;
}

static int on_message_begin(http_parser *p) {
  h1_conn *c = p->data;
  c->hbytes = 16; /* the start line's fixed parts */
  c->nfields = 0;
  c->in_trailers = c->last_value = 0;
  c->url.n = c->name.n = c->value.n = c->conntok.n = 0;
  c->in_head = 1;
  if (c->server) {
    if (c->cur) return perr(c, 400, MH_ERR_PROTOCOL, "malformed HTTP request");
    c->cur = stream_new(c);
    if (!c->cur) return perr(c, 503, MH_ERR_LIMIT, "out of memory");
    arm(c, c->base.limits.head_timeout_ms, 1); /* from the head's first byte */
  } else {
    h1_stream *s = c->cur;
    if (!s || s->rx_end) return perr(c, 0, MH_ERR_PROTOCOL, NULL);
    mh_head_clear(&s->head);
    s->rx_begun = 1;
  }
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  h1_conn *c = p->data;
  if (count(c, n)) return 1;
  return gbuf_add(c->base.ctx, &c->url, at, n) ? perr(c, 503, MH_ERR_LIMIT, "out of memory") : 0;
}

static int on_status(http_parser *p, const char *at, size_t n) {
  (void)at;
  return count(p->data, n);
}

static void trim(const char **s, size_t *n) {
  while (*n && (**s == ' ' || **s == '\t')) (*s)++, (*n)--;
  while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t')) (*n)--;
}

/* One complete field of a head or of the trailers. */
static int field_done(h1_conn *c) {
  mesh_ctx *ctx = c->base.ctx;
  h1_stream *s = c->cur;
  const char *name = c->name.p ? c->name.p : "", *val = c->value.p ? c->value.p : "";
  size_t nl = c->name.n, vl = c->value.n;
  c->name.n = c->value.n = 0;
  c->last_value = 0;
  trim(&val, &vl);
  if (++c->nfields > c->base.limits.max_fields)
    return perr(c, 431, MH_ERR_LIMIT, "too many header fields");
  if (count(c, 4)) return 1;
  /* The packaged parser is built lenient: it lets a space into a name,
   * which another hop may read differently ("transfer-encoding : ..."). */
  if (!nl || memchr(name, ' ', nl) || memchr(name, '\t', nl))
    return perr(c, 400, MH_ERR_PROTOCOL, "malformed header field");
  if (!s) return 0;
  mh_head *h = c->in_trailers ? &s->trailers : &s->head;
  int rc = 0;
  if (c->in_trailers) {
    if (!mh__hop_by_hop(name, nl)) rc = mh_head_addn(ctx, h, name, nl, val, vl);
  } else if (is_token(name, nl, "host")) {
    if (h->authority) return perr(c, 400, MH_ERR_PROTOCOL, "duplicate host header");
    char *a = mesh__strndup(ctx, val, vl);
    if (!a) rc = MESH_ERR_NOMEM;
    else {
      rc = mh_head_setstr(ctx, h, &h->authority, a);
      mesh__free(ctx, a);
    }
  } else if (is_token(name, nl, "connection")) {
    rc = gbuf_add(ctx, &c->conntok, ",", 1);
    if (!rc) rc = gbuf_add(ctx, &c->conntok, val, vl);
  } else if (is_token(name, nl, "upgrade")) {
    if (!h->upgrade_proto) {
      char *a = mesh__strndup(ctx, val, vl);
      if (!a) rc = MESH_ERR_NOMEM;
      else {
        rc = mh_head_setstr(ctx, h, &h->upgrade_proto, a);
        mesh__free(ctx, a);
      }
    }
  } else if (is_token(name, nl, "te")) {
    if (is_token(val, vl, "trailers")) rc = mh_head_addn(ctx, h, "te", 2, "trailers", 8);
  } else if (c->server && is_token(name, nl, "expect") && is_token(val, vl, "100-continue")) {
    h->expect_continue = 1;
  } else if (!mh__hop_by_hop(name, nl)) {
    rc = mh_head_addn(ctx, h, name, nl, val, vl);
  }
  return rc ? perr(c, 503, MH_ERR_LIMIT, "out of memory") : 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n) {
  h1_conn *c = p->data;
  if (c->last_value && field_done(c)) return 1;
  if (count(c, n)) return 1;
  return gbuf_add(c->base.ctx, &c->name, at, n) ? perr(c, 503, MH_ERR_LIMIT, "out of memory") : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n) {
  h1_conn *c = p->data;
  c->last_value = 1;
  if (count(c, n)) return 1;
  return gbuf_add(c->base.ctx, &c->value, at, n) ? perr(c, 503, MH_ERR_LIMIT, "out of memory") : 0;
}

/* Names listed in Connection are hop-by-hop too. */
static void strip_connection_tokens(h1_conn *c, mh_head *h) {
  char *p = c->conntok.p;
  if (!p) return;
  for (char *save = NULL, *t = strtok_r(p, ", \t", &save); t; t = strtok_r(NULL, ", \t", &save)) {
    if (strcasecmp(t, "close") && strcasecmp(t, "keep-alive") && strcasecmp(t, "upgrade"))
      mh_head_del(c->base.ctx, h, t);
  }
  c->conntok.n = 0;
}

static int target_parse(h1_conn *c, mh_head *h) {
  mesh_ctx *ctx = c->base.ctx;
  const char *u = c->url.p ? c->url.p : "";
  size_t n = c->url.n;
  if (!n) return perr(c, 400, MH_ERR_PROTOCOL, "malformed HTTP request");
  if (u[0] == '/' || (n == 1 && u[0] == '*')) {
    if (mh_head_setstr(ctx, h, &h->path, u) || mh_head_setstr(ctx, h, &h->scheme, "http"))
      return perr(c, 503, MH_ERR_LIMIT, "out of memory");
    return 0;
  }
  struct http_parser_url pu;
  http_parser_url_init(&pu);
  if (n > UINT16_MAX || http_parser_parse_url(u, n, 0, &pu) || !(pu.field_set & (1 << UF_SCHEMA)) ||
      !(pu.field_set & (1 << UF_HOST)))
    return perr(c, 400, MH_ERR_PROTOCOL, "malformed request target");
  char scheme[16];
  size_t sl = pu.field_data[UF_SCHEMA].len;
  if (sl >= sizeof scheme) return perr(c, 400, MH_ERR_PROTOCOL, "malformed request target");
  for (size_t i = 0; i < sl; i++) scheme[i] = (char)tolower((unsigned char)u[pu.field_data[UF_SCHEMA].off + i]);
  scheme[sl] = 0;
  /* The authority runs from the host (or its '[') to the path. */
  size_t a0 = pu.field_data[UF_HOST].off, a1 = a0 + pu.field_data[UF_HOST].len;
  if (a0 > 0 && u[a0 - 1] == '[') a0--, a1++;
  if (pu.field_set & (1 << UF_PORT)) a1 = pu.field_data[UF_PORT].off + pu.field_data[UF_PORT].len;
  size_t p0 = pu.field_set & (1 << UF_PATH) ? pu.field_data[UF_PATH].off : n;
  if (!(pu.field_set & (1 << UF_PATH)) && (pu.field_set & (1 << UF_QUERY)))
    p0 = (size_t)pu.field_data[UF_QUERY].off - 1;
  size_t pend = pu.field_set & (1 << UF_FRAGMENT) ? (size_t)pu.field_data[UF_FRAGMENT].off - 1 : n;
  char *auth = mesh__strndup(ctx, u + a0, a1 - a0);
  char *path = p0 < pend ? (u[p0] == '/' ? mesh__strndup(ctx, u + p0, pend - p0)
                                         : mesh__sprintf(ctx, "/%.*s", (int)(pend - p0), u + p0))
                         : mesh__strdup(ctx, "/");
  int rc = !auth || !path || mh_head_setstr(ctx, h, &h->scheme, scheme) ||
           mh_head_setstr(ctx, h, &h->authority, auth) || mh_head_setstr(ctx, h, &h->path, path);
  mesh__free(ctx, auth);
  mesh__free(ctx, path);
  return rc ? perr(c, 503, MH_ERR_LIMIT, "out of memory") : 0;
}

static int on_headers_complete(http_parser *p) {
  h1_conn *c = p->data;
  h1_stream *s = c->cur;
  if (c->last_value && field_done(c)) return -1;
  mh_head *h = &s->head;
  c->in_head = 0;
  c->in_trailers = 1; /* header callbacks from now on are trailers, with their own budget */
  c->hbytes = 0;
  c->nfields = 0;
  strip_connection_tokens(c, h);
  if (p->http_major != 1) return perr(c, 400, MH_ERR_PROTOCOL, "unsupported HTTP version"), -1;
  h->version = p->http_minor == 0 ? MH_V10 : MH_V11;
  h->content_length = (p->flags & F_CHUNKED) || !(p->flags & F_CONTENTLENGTH)
                          ? -1
                          : (int64_t)p->content_length;
  int chunked = (p->flags & F_CHUNKED) != 0;
  int ka = p->http_minor >= 1 ? !(p->flags & F_CONNECTION_CLOSE)
                              : (p->flags & F_CONNECTION_KEEP_ALIVE) != 0;
  c->ev = EV_HEAD;
  if (c->server) {
    if (p->method == HTTP_CONNECT) return perr(c, 400, MH_ERR_PROTOCOL, "CONNECT is not supported"), -1;
    event_del(c->timer);
    c->head_timer = 0;
    if (mh_head_setstr(c->base.ctx, h, &h->method, http_method_str((enum http_method)p->method)))
      return perr(c, 503, MH_ERR_LIMIT, "out of memory"), -1;
    if (target_parse(c, h)) return -1;
    s->req_version = h->version;
    s->head_req = p->method == HTTP_HEAD;
    h->close = (unsigned)!ka;
    if (p->upgrade && h->upgrade_proto && strncasecmp(h->upgrade_proto, "h2c", 3) != 0) {
      h->upgrade = 1;
    } else {
      mh_head_setstr(c->base.ctx, h, &h->upgrade_proto, NULL);
    }
    s->rx_nobody = !chunked && h->content_length <= 0;
    http_parser_pause(p, 1);
    return 0;
  }
  h->status = p->status_code;
  /* http-parser takes any three digits; a head's status is 100..599. */
  if (h->status < 100 || h->status > 599) return perr(c, 0, MH_ERR_PROTOCOL, NULL), -1;
  int interim = h->status < 200 && h->status != 101;
  int nobody = s->head_req || h->status < 200 || h->status == 204 || h->status == 304;
  /* Close-delimited: no length and no chunking. */
  if (!nobody && !chunked && !(p->flags & F_CONTENTLENGTH)) ka = 0;
  h->close = (unsigned)!ka;
  s->rx_interim = (unsigned)interim;
  s->rx_nobody = (unsigned)(nobody || h->content_length == 0);
  http_parser_pause(p, 1);
  if (h->status == 101) {
    if (!s->upgrade_req) return perr(c, 0, MH_ERR_PROTOCOL, NULL), -1;
    s->upgrade = 1;
    return 2; /* no body, and what follows is another protocol */
  }
  return nobody ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  h1_conn *c = p->data;
  h1_stream *s = c->cur;
  if (!s) return 1;
  if (evbuffer_add(s->in, at, n)) return perr(c, 503, MH_ERR_LIMIT, "out of memory");
  if (evbuffer_get_length(s->in) > window(c)) http_parser_pause(p, 1); /* deliver first */
  return 0;
}

static int on_message_complete(http_parser *p) {
  h1_conn *c = p->data;
  if (c->last_value && field_done(c)) return 1;
  c->ev = EV_END;
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings h1_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- Receiving: delivery ------------------------------------------------------------------ */

/* A request we answer ourselves (it never reaches on_request), then close. */
static void respond_self(h1_conn *c, int status, int mh, const char *why) {
  h1_stream *s = c->cur;
  if ((s && s->announced) || !status || c->flush_close) {
    fail(c, mh, mh == MH_ERR_LIMIT ? MH_ERR_LIMIT : MH_ERR_PROTOCOL);
    return;
  }
  evbuffer_add_printf(out_of(c),
                      "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n"
                      "l5d-proxy-error: %s\r\nconnection: close\r\n\r\n%s\n",
                      status, reason(status), strlen(why) + 1, why, why);
  c->linger = 1;
  close_when_flushed(c, mh);
}

static void parse_failed(h1_conn *c, enum http_errno e) {
  if (c->perr_mh) {
    respond_self(c, c->server ? c->perr_status : 0, c->perr_mh, c->perr_why);
    return;
  }
  if (e == HPE_HEADER_OVERFLOW) {
    respond_self(c, c->server ? 431 : 0, MH_ERR_LIMIT, "request header too large");
    return;
  }
  respond_self(c, c->server ? 400 : 0, MH_ERR_PROTOCOL, "malformed HTTP request");
}

static void block_if_full(h1_conn *c, h1_stream *s) {
  if (evbuffer_get_length(s->in) > window(c) && !c->blocked) {
    c->blocked = 1;
    bufferevent_disable(c->bev, EV_READ);
  }
}

static void deliver_data(h1_conn *c, h1_stream *s) {
  if (!evbuffer_get_length(s->in)) return;
  if (s->detached || !s->base.cbs || !s->base.cbs->on_data) {
    evbuffer_drain(s->in, evbuffer_get_length(s->in));
    return;
  }
  s->base.cbs->on_data(&s->base, s->in, s->base.ud);
  if (!c->dead) block_if_full(c, s);
}

static int gone(const h1_conn *c) { return c->dead || c->failing; }

static void deliver(h1_conn *c) {
  h1_stream *s = c->cur;
  int ev = c->ev;
  c->ev = EV_NONE;
  if (!s) return;
  deliver_data(c, s);
  if (gone(c)) return;
  if (ev == EV_END && evbuffer_get_length(s->in)) {
    /* on_end only once the body is taken: wait for mh_stream_consumed. */
    s->end_pending = 1;
    c->blocked = 1;
    bufferevent_disable(c->bev, EV_READ);
    return;
  }
  s->end_pending = 0;
  if (ev == EV_HEAD && c->server) {
    s->announced = 1;
    if (c->base.cbs && c->base.cbs->on_request)
      c->base.cbs->on_request(&c->base, &s->base, &s->head, s->rx_nobody, c->base.ud);
    if (gone(c) || s->detached) return;
    if (s->head.expect_continue && !s->tx_head && !s->sent_100 && s->req_version >= MH_V11 &&
        c->cur == s) {
      s->sent_100 = 1;
      evbuffer_add(out_of(c), "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
  } else if (ev == EV_HEAD) {
    if (!s->detached && s->base.cbs && s->base.cbs->on_head)
      s->base.cbs->on_head(&s->base, &s->head, s->rx_interim ? 0 : s->rx_nobody, s->base.ud);
  } else if (ev == EV_END) {
    if (!c->server && s->rx_interim) {
      s->rx_interim = 0; /* the final head follows */
      return;
    }
    s->rx_end = 1;
    c->in_trailers = 0;
    if (c->server) bufferevent_disable(c->bev, EV_READ); /* one exchange at a time */
    if (!s->rx_nobody && !s->detached && s->base.cbs && s->base.cbs->on_end)
      s->base.cbs->on_end(&s->base, s->trailers.n ? &s->trailers : NULL, s->base.ud);
    if (gone(c) || c->cur != s) return;
    if (s->upgrade && !c->server) s->tx_end = 1; /* the rest is the new protocol's */
    check_done(c, s);
  }
}

static void at_eof(h1_conn *c) {
  if (!c->eof_fed) {
    c->eof_fed = 1;
    c->ev = EV_NONE;
    http_parser_execute(&c->p, &h1_settings, NULL, 0);
    if (HTTP_PARSER_ERRNO(&c->p) == HPE_PAUSED) http_parser_pause(&c->p, 0);
    deliver(c); /* a close-delimited body's end */
    if (gone(c)) return;
  }
  h1_stream *s = c->cur;
  if (!s) fail(c, MH_OK, 0);
  else if (s->rx_end) c->close_after = 1; /* finish the exchange, then close */
  else fail(c, MH_ERR_CLOSED, s->rx_begun || c->server ? MH_ERR_RESET : MH_ERR_CLOSED);
}

/* Feed the parser what the input holds, as far as the state allows. */
static void run(h1_conn *c) {
  if (c->running || !c->bev) return;
  c->running = 1;
  struct evbuffer *in = bufferevent_get_input(c->bev);
  if (c->cur && c->cur->end_pending && !c->blocked && !gone(c)) {
    c->ev = EV_END;
    deliver(c);
  }
  while (!gone(c) && !c->stop && !c->blocked) {
    h1_stream *s = c->cur;
    if (c->server) {
      if (c->done || (s && s->rx_end)) break;
    } else if (!s) {
      if (evbuffer_get_length(in)) fail(c, MH_ERR_PROTOCOL, 0); /* bytes nobody asked for */
      else if (c->eof) fail(c, MH_OK, 0);
      break;
    } else if (s->rx_end) {
      break;
    }
    if (!evbuffer_get_length(in)) {
      if (c->eof) at_eof(c);
      break;
    }
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1) break;
    size_t len = v.iov_len < H1_FEED_MAX ? v.iov_len : H1_FEED_MAX;
    c->ev = EV_NONE;
    size_t used = http_parser_execute(&c->p, &h1_settings, v.iov_base, len);
    evbuffer_drain(in, used);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    if (e == HPE_PAUSED) {
      http_parser_pause(&c->p, 0);
    } else if (e != HPE_OK) {
      parse_failed(c, e);
      break;
    }
    deliver(c);
  }
  c->running = 0;
}

/* ---- Closing and handing over ------------------------------------------------------------- */

static void deliver_done(h1_conn *c) {
  while (c->done && !c->dead) {
    h1_stream *s = c->done;
    c->done = s->next;
    if (!c->done) c->done_tail = &c->done;
    if (!s->detached && s->base.cbs && s->base.cbs->on_reset) {
      s->detached = 1;
      s->base.cbs->on_reset(&s->base, MH_OK, s->base.ud);
    }
    stream_free(c, s);
  }
}

static void finish(h1_conn *c) {
  h1_stream *s = c->cur;
  if (s && s->announced && !s->detached && s->base.cbs && s->base.cbs->on_reset) {
    s->detached = 1;
    s->base.cbs->on_reset(&s->base, c->serr ? c->serr : MH_ERR_CLOSED, s->base.ud);
  }
  if (!c->dead && c->base.cbs && c->base.cbs->on_close)
    c->base.cbs->on_close(&c->base, c->err, c->base.ud);
  c->dead = 1;
}

static void handover(h1_conn *c) {
  struct bufferevent *bev = c->bev;
  if (!c->base.cbs || !c->base.cbs->on_upgrade) {
    c->failing = 1;
    c->err = MH_OK;
    finish(c);
    return;
  }
  bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
  bufferevent_setwatermark(bev, EV_READ | EV_WRITE, 0, 0);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  c->bev = NULL;
  c->dead = 1;
  c->base.cbs->on_upgrade(&c->base, bev, c->base.ud);
}

/* Written out: send our FIN and read (and drop) until the peer's. Plain
 * sockets only; a TLS bufferevent's release hook closes its own way. */
static int start_linger(h1_conn *c) {
  evutil_socket_t fd = bufferevent_getfd(c->bev);
  if (!c->linger || c->eof || fd < 0 || bufferevent_get_underlying(c->bev)) return 0;
  shutdown(fd, SHUT_WR);
  c->lingering = 1;
  evbuffer_drain(bufferevent_get_input(c->bev), evbuffer_get_length(bufferevent_get_input(c->bev)));
  bufferevent_enable(c->bev, EV_READ);
  arm(c, H1_LINGER_MS, 0);
  return 1;
}

static void on_defer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h1_conn *c = arg;
  c->depth++;
  deliver_done(c);
  if (c->dead) {
  } else if (c->failing) {
    finish(c);
  } else if (c->lingering) {
    /* the peer's EOF or the timer ends it */
  } else if (c->upgrading || c->flush_close) {
    if (!evbuffer_get_length(out_of(c))) {
      if (c->upgrading) handover(c);
      else if (!start_linger(c)) {
        c->failing = 1;
        finish(c);
      }
    }
  } else {
    run(c);
  }
  c->depth--;
  maybe_free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h1_conn *c = arg;
  c->depth++;
  if (c->lingering) {
    fail(c, c->err, MH_ERR_CLOSED);
  } else if (c->flush_close || c->upgrading) {
    c->flush_close = c->upgrading = 0;
    fail(c, MH_ERR_TIMEOUT, MH_ERR_TIMEOUT);
  } else if (c->server && c->in_head) {
    respond_self(c, 408, MH_ERR_TIMEOUT, "request header timeout");
  } else if (!c->cur && !c->done) {
    fail(c, c->head_timer ? MH_ERR_TIMEOUT : MH_OK, 0); /* idle: just close */
  }
  c->depth--;
  maybe_free(c);
}

static void on_read(struct bufferevent *bev, void *arg) {
  h1_conn *c = arg;
  c->depth++;
  if (c->lingering) evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
  else run(c);
  c->depth--;
  maybe_free(c);
}

static void on_write(struct bufferevent *bev, void *arg) {
  h1_conn *c = arg;
  c->depth++;
  size_t len = evbuffer_get_length(bufferevent_get_output(bev));
  if (!len && (c->flush_close || c->upgrading)) schedule(c);
  h1_stream *s = c->cur;
  if (s && s->above && len <= window(c) / 2 && !gone(c)) {
    s->above = 0;
    if (!s->detached && s->base.cbs && s->base.cbs->on_drain) s->base.cbs->on_drain(&s->base, s->base.ud);
  }
  c->depth--;
  maybe_free(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  h1_conn *c = arg;
  c->depth++;
  if (what & BEV_EVENT_ERROR) {
    fail(c, c->lingering ? c->err : MH_ERR_CLOSED, MH_ERR_CLOSED);
  } else if (what & BEV_EVENT_EOF) {
    c->eof = 1;
    if (c->flush_close) fail(c, c->err, MH_ERR_CLOSED);
    else run(c);
  }
  c->depth--;
  maybe_free(c);
}

/* ---- Construction ------------------------------------------------------------------------- */

int mh__h1_new(mesh_ctx *ctx, struct bufferevent *bev, int server, const mh_limits *l,
               const mh_conn_cbs *cbs, void *ud, mh_conn **ret) {
  if (!ctx || !bev || !l || !cbs || !ret) return MESH_ERR_INVALID;
  h1_conn *c = mesh__calloc(ctx, 1, sizeof *c);
  if (!c) return MESH_ERR_NOMEM;
  c->base.ops = &h1_conn_ops;
  c->base.ctx = ctx;
  c->base.proto = MH_H1;
  c->base.limits = *l;
  c->base.cbs = cbs;
  c->base.ud = ud;
  c->server = server;
  c->done_tail = &c->done;
  struct event_base *base = bufferevent_get_base(bev);
  c->defer = event_new(base, -1, 0, on_defer, c);
  c->timer = evtimer_new(base, on_timer, c);
  if (!c->defer || !c->timer) {
    if (c->defer) event_free(c->defer);
    if (c->timer) event_free(c->timer);
    mesh__free(ctx, c);
    return MESH_ERR_NOMEM;
  }
  http_parser_init(&c->p, server ? HTTP_REQUEST : HTTP_RESPONSE);
  c->p.data = c;
  c->bev = bev;
  uint32_t hw = window(c) > H1_INPUT_MIN ? window(c) : H1_INPUT_MIN;
  bufferevent_setwatermark(bev, EV_READ, 0, hw);
  bufferevent_setwatermark(bev, EV_WRITE, window(c) / 2, 0);
  bufferevent_setcb(bev, on_read, on_write, on_event, c);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  /* A new server connection waits for its first request like a head in progress. */
  arm(c, server ? l->head_timeout_ms : l->idle_timeout_ms, server);
  if (evbuffer_get_length(bufferevent_get_input(bev))) schedule(c); /* read during detection */
  *ret = &c->base;
  return 0;
}

static const mh_stream_ops h1_stream_ops = {
    .send_head = h1_send_head,
    .send_data = h1_send_data,
    .send_end = h1_send_end,
    .pending = h1_pending,
    .consumed = h1_consumed,
    .reset = h1_stream_reset,
};

static const mh_conn_ops h1_conn_ops = {
    .request = h1_request,
    .capacity = h1_capacity,
    .active = h1_active,
    .shutdown = h1_shutdown,
    .close = h1_close,
    .free = h1_free,
};
