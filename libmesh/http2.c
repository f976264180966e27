/* libmesh http2: the HTTP/2 codec behind http_internal.h, nghttp2 over a libevent bufferevent (prior knowledge). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <nghttp2/nghttp2.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "http_internal.h"

/* Bytes of frames queued on the bufferevent before we stop asking nghttp2
 * for more: the rest waits in the per-stream buffers, whose owners watch
 * mh_stream_pending. */
#define OUT_HIGH 65536u
/* The connection receive window: enough for several streams at full speed,
 * bounded so that slow readers on many streams cannot hold much memory. */
#define CONN_WINDOW_MAX (1u << 20)
/* A connection that has said its last word gets this long to flush it. */
#define LINGER_MS 1000u
/* Heads with more fields than this build their nghttp2_nv array on the heap. */
#define NV_STACK 48

typedef struct h2_conn h2_conn;
typedef struct h2_stream h2_stream;

struct h2_stream {
  mh_stream base; /* first: the dispatch in http.c casts */
  h2_conn *c;
  h2_stream *prev, *next; /* in c->streams */
  h2_stream *qnext;       /* in c's event queue */
  int32_t id;
  mh_head head;     /* the peer's head (request or response) */
  mh_head trailers; /* the peer's trailers */
  mh_head out_trailers;
  struct evbuffer *in;  /* DATA received, not yet taken by the user */
  struct evbuffer *out; /* body queued by the user, not yet taken by nghttp2 */
  size_t hdr_bytes;     /* in the header block being received */
  uint32_t hdr_fields;
  const char *over;     /* server: why the request head broke a limit (answered 431) */
  int fail;             /* MH_ERR_* decided by us before nghttp2 closed it */
  int final_err;
  unsigned head_done : 1;  /* the peer's final head arrived */
  unsigned remote_done : 1; /* the peer ended its message */
  unsigned head_sent : 1;  /* our final head is submitted (client: the request) */
  unsigned out_end : 1;    /* the user ended our message */
  unsigned has_trailers : 1;
  unsigned deferred : 1;   /* the data provider waits for resume */
  unsigned above : 1;      /* pending went over the low-water mark */
  unsigned gone : 1;       /* the user let go (reset) or never had it: no callbacks */
  unsigned internal : 1;   /* answered by the codec itself */
  unsigned user : 1;       /* counted in c->nuser */
  unsigned closed : 1;     /* nghttp2 closed it */
  unsigned queued : 1;
  unsigned q_drain : 1;
  unsigned q_final : 1;
  unsigned rst_recv : 1;
  unsigned final_wait : 1; /* ended well, but the user has not taken all of in yet */
  unsigned end_pending : 1; /* the peer ended; on_end waits until in is taken */
  unsigned end_trailers : 1; /* ... and it sent trailers */
};

struct h2_conn {
  mh_conn base; /* first */
  int server;
  struct bufferevent *bev;
  struct event_base *evbase;
  nghttp2_session *h2;
  struct event *run_ev, *idle_ev, *ping_ev, *linger_ev;
  h2_stream *streams;
  h2_stream *qhead, **qtail;
  uint32_t nlive; /* streams nghttp2 has not closed */
  uint32_t nuser; /* streams the user holds */
  uint32_t nwait; /* streams with final_wait */
  int busy;       /* nesting of entries from libevent */
  int err;        /* what the connection ends with */
  int32_t goaway_last; /* server: the last stream id our GOAWAY lets through */
  int close_req;  /* nonzero: tear down with this (MH_OK + 100 for a clean one) */
  unsigned doomed : 1;    /* mh_conn_free inside a callback: destroy on the way out */
  unsigned done : 1;      /* on_close delivered (or freed by the user): no callbacks */
  unsigned lingering : 1; /* flushing the last frames after on_close */
  unsigned shutdown : 1;  /* we sent (or will send) GOAWAY */
  unsigned goaway_recv : 1;
  unsigned ping_out : 1;
  unsigned got_bytes : 1;
  unsigned idle_armed : 1;
  unsigned eof : 1;
};

#define CLOSE_OK 100   /* close_req for a clean close (MH_OK is 0, "no request") */
#define CLOSE_USER 101 /* mh_conn_close: streams get MH_ERR_CLOSED, the connection MH_OK (as h1) */

static const mh_stream_ops stream_ops;
static const mh_conn_ops conn_ops;

/* ---- Helpers --------------------------------------------------------------------- */

static void *h2_malloc(size_t n, void *ud) { return mesh__malloc(ud, n); }
static void h2_free(void *p, void *ud) { mesh__free(ud, p); }
static void *h2_calloc(size_t n, size_t s, void *ud) { return mesh__calloc(ud, n, s); }
static void *h2_realloc(void *p, size_t n, void *ud) { return mesh__realloc(ud, p, n); }

static void timer_ms(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  event_add(ev, &tv);
}

static mesh_ctx *ctx_of(h2_conn *c) { return c->base.ctx; }

static void schedule(h2_conn *c) {
  if (!c->done || c->lingering) event_active(c->run_ev, EV_WRITE, 0);
}

static void enqueue(h2_stream *s) {
  h2_conn *c = s->c;
  if (!s->queued) {
    s->queued = 1;
    s->qnext = NULL;
    *c->qtail = s;
    c->qtail = &s->qnext;
  }
  schedule(c);
}

static void stream_unuser(h2_stream *s) {
  if (s->user) {
    s->user = 0;
    s->c->nuser--;
  }
}

/* Free s (no callback). The session may be gone (destroy). */
static void stream_free(h2_stream *s) {
  h2_conn *c = s->c;
  size_t left = evbuffer_get_length(s->in);
  /* Bytes the user never took still hold connection window. */
  if (left && c->h2 && !c->done) nghttp2_session_consume_connection(c->h2, left);
  if (c->h2 && !s->closed) nghttp2_session_set_stream_user_data(c->h2, s->id, NULL);
  if (s->prev) s->prev->next = s->next;
  else c->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  if (!s->closed && c->nlive) c->nlive--;
  if (s->final_wait) c->nwait--;
  stream_unuser(s);
  evbuffer_free(s->in);
  evbuffer_free(s->out);
  mh_head_clear(&s->head);
  mh_head_clear(&s->trailers);
  mh_head_clear(&s->out_trailers);
  mesh__free(ctx_of(c), s);
}

static h2_stream *stream_new(h2_conn *c, int32_t id) {
  h2_stream *s = mesh__calloc(ctx_of(c), 1, sizeof *s);
  if (!s) return NULL;
  s->in = evbuffer_new();
  s->out = evbuffer_new();
  if (!s->in || !s->out) {
    if (s->in) evbuffer_free(s->in);
    if (s->out) evbuffer_free(s->out);
    mesh__free(ctx_of(c), s);
    return NULL;
  }
  s->base.ops = &stream_ops;
  s->base.conn = &c->base;
  s->c = c;
  s->id = id;
  mh_head_init(&s->head);
  mh_head_init(&s->trailers);
  mh_head_init(&s->out_trailers);
  s->head.version = MH_V2;
  s->head.content_length = -1;
  s->trailers.version = MH_V2;
  s->trailers.content_length = -1;
  s->next = c->streams;
  if (c->streams) c->streams->prev = s;
  c->streams = s;
  c->nlive++;
  return s;
}

/* Whether the user may hear about s now. */
static int can_call(const h2_stream *s) {
  return !s->gone && !s->c->done && !s->c->doomed && !s->c->close_req && s->base.cbs;
}

/* ---- Heads out -------------------------------------------------------------------- */

enum { OUT_REQUEST, OUT_RESPONSE, OUT_TRAILERS };

static void nv_add(nghttp2_nv *nv, size_t *n, const char *name, const char *value) {
  nv[*n] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                        NGHTTP2_NV_FLAG_NONE};
  (*n)++;
}

static int field_passes(const mh_field *f) {
  size_t len = strlen(f->name);
  if (len == 0 || f->name[0] == ':') return 0;
  if (strcmp(f->name, "te") == 0) return strcmp(f->value, "trailers") == 0;
  if (strcmp(f->name, "host") == 0 || strcmp(f->name, "content-length") == 0) return 0;
  return !mh__hop_by_hop(f->name, len);
}

/* Build h's nv list into stack (or a heap array returned in *heap). The
 * strings stay h's (nghttp2 copies them on submit). */
static int head_nv(h2_conn *c, const mh_head *h, int kind, nghttp2_nv *stack, nghttp2_nv **heap,
                   char *st, char *clen, nghttp2_nv **ret, size_t *ret_n) {
  size_t cap = h->n + 5;
  nghttp2_nv *nv = stack;
  *heap = NULL;
  if (cap > NV_STACK) {
    nv = *heap = mesh__calloc(ctx_of(c), cap, sizeof *nv);
    if (!nv) return MESH_ERR_NOMEM;
  }
  size_t n = 0;
  if (kind == OUT_REQUEST) {
    if (!h->method || !h->path) {
      mesh__free(ctx_of(c), *heap);
      *heap = NULL;
      return MESH_ERR_INVALID;
    }
    nv_add(nv, &n, ":method", h->method);
    nv_add(nv, &n, ":scheme", h->scheme ? h->scheme : "http");
    if (h->authority) nv_add(nv, &n, ":authority", h->authority);
    nv_add(nv, &n, ":path", h->path);
  } else if (kind == OUT_RESPONSE) {
    if (h->status < 100 || h->status > 999) {
      mesh__free(ctx_of(c), *heap);
      *heap = NULL;
      return MESH_ERR_INVALID;
    }
    snprintf(st, 4, "%03d", h->status);
    nv_add(nv, &n, ":status", st);
  }
  if (kind != OUT_TRAILERS && h->content_length >= 0 && h->status != 204 &&
      (h->status == 0 || h->status >= 200)) {
    snprintf(clen, 24, "%lld", (long long)h->content_length);
    nv_add(nv, &n, "content-length", clen);
  }
  for (size_t i = 0; i < h->n; i++)
    if (field_passes(&h->fields[i])) nv_add(nv, &n, h->fields[i].name, h->fields[i].value);
  *ret = nv;
  *ret_n = n;
  return 0;
}

static int ng_err(int rv) {
  if (rv == NGHTTP2_ERR_NOMEM) return MESH_ERR_NOMEM;
  return MESH_ERR_INVALID;
}

/* The data provider: body from s->out, then END_STREAM or trailers. */
static ssize_t data_read(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)sid;
  h2_conn *c = ud;
  h2_stream *s = src->ptr;
  int n = evbuffer_remove(s->out, buf, len);
  if (n < 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  size_t left = evbuffer_get_length(s->out);
  if (s->above && left < c->base.limits.window_bytes / 2) {
    s->above = 0;
    s->q_drain = 1;
    enqueue(s);
  }
  if (left == 0) {
    if (s->out_end) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      if (s->has_trailers && s->out_trailers.n > 0) {
        nghttp2_nv stack[NV_STACK], *heap, *nv;
        size_t nvn;
        char st[4], clen[24];
        if (head_nv(c, &s->out_trailers, OUT_TRAILERS, stack, &heap, st, clen, &nv, &nvn) == 0) {
          if (nghttp2_submit_trailer(h2, s->id, nv, nvn) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
          mesh__free(ctx_of(c), heap);
        }
      }
    } else if (n == 0) {
      s->deferred = 1;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return n;
}

static void resume(h2_stream *s) {
  if (s->deferred && !s->closed) {
    s->deferred = 0;
    nghttp2_session_resume_data(s->c->h2, s->id);
  }
  schedule(s->c);
}

/* ---- Stream ops ------------------------------------------------------------------- */

static int s_send_head(mh_stream *base, const mh_head *h, int end_stream) {
  h2_stream *s = (h2_stream *)base;
  h2_conn *c = s->c;
  if (!h || c->server == 0 || s->head_sent || s->closed || s->gone || c->done || c->close_req)
    return MESH_ERR_INVALID;
  nghttp2_nv stack[NV_STACK], *heap, *nv;
  size_t n;
  char st[4], clen[24];
  int rc = head_nv(c, h, OUT_RESPONSE, stack, &heap, st, clen, &nv, &n);
  if (rc) return rc;
  int rv;
  if (h->status < 200) {
    rv = nghttp2_submit_headers(c->h2, NGHTTP2_FLAG_NONE, s->id, NULL, nv, n, NULL);
  } else {
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
    rv = nghttp2_submit_response(c->h2, s->id, nv, n, end_stream ? NULL : &prd);
  }
  mesh__free(ctx_of(c), heap);
  if (rv < 0) return ng_err(rv);
  if (h->status >= 200) {
    s->head_sent = 1;
    if (end_stream) s->out_end = 1;
  }
  schedule(c);
  return 0;
}

static void note_above(h2_stream *s) {
  if (evbuffer_get_length(s->out) >= s->c->base.limits.window_bytes / 2) s->above = 1;
}

static int s_send_data(mh_stream *base, struct evbuffer *buf, int end_stream) {
  h2_stream *s = (h2_stream *)base;
  if (s->out_end || s->gone || s->c->done) return MESH_ERR_INVALID;
  if (buf && evbuffer_add_buffer(s->out, buf)) return MESH_ERR_NOMEM;
  if (end_stream) s->out_end = 1;
  note_above(s);
  resume(s);
  return 0;
}

static int s_send_end(mh_stream *base, const mh_head *trailers) {
  h2_stream *s = (h2_stream *)base;
  if (s->out_end || s->gone || s->c->done) return MESH_ERR_INVALID;
  if (trailers && trailers->n > 0) {
    int rc = mh_head_copy(ctx_of(s->c), &s->out_trailers, trailers);
    if (rc) return rc;
    s->has_trailers = 1;
  }
  s->out_end = 1;
  resume(s);
  return 0;
}

static size_t s_pending(const mh_stream *base) {
  const h2_stream *s = (const h2_stream *)base;
  return evbuffer_get_length(s->out);
}

static void s_consumed(mh_stream *base, size_t n) {
  h2_stream *s = (h2_stream *)base;
  h2_conn *c = s->c;
  if (!n || c->done) return;
  nghttp2_session_consume(c->h2, s->id, n);
  if ((s->final_wait || s->end_pending) && evbuffer_get_length(s->in) == 0) {
    if (s->final_wait) c->nwait--;
    s->final_wait = 0;
    enqueue(s);
  }
  schedule(c);
}

static void s_reset(mh_stream *base, int refused) {
  h2_stream *s = (h2_stream *)base;
  h2_conn *c = s->c;
  if (s->gone) return;
  s->gone = 1;
  stream_unuser(s);
  size_t left = evbuffer_get_length(s->in);
  evbuffer_drain(s->in, left);
  if (c->done) return;
  if (left) nghttp2_session_consume(c->h2, s->id, left);
  if (!s->closed)
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id,
                              refused ? NGHTTP2_REFUSED_STREAM : NGHTTP2_CANCEL);
  else
    enqueue(s); /* closed, final pending: free it there */
  schedule(c);
}

static const mh_stream_ops stream_ops = {s_send_head, s_send_data, s_send_end,
                                         s_pending,   s_consumed,  s_reset};

/* ---- Receiving --------------------------------------------------------------------- */

static h2_stream *stream_of(h2_conn *c, int32_t id) {
  return id > 0 ? nghttp2_session_get_stream_user_data(c->h2, id) : NULL;
}

static int cb_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  h2_conn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  h2_stream *s;
  if (c->server && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
    s = stream_new(c, f->hd.stream_id);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(h2, s->id, s);
  } else {
    s = stream_of(c, f->hd.stream_id);
    if (!s) return 0;
  }
  s->hdr_bytes = 0;
  s->hdr_fields = 0;
  return 0;
}

static int name_is(const uint8_t *name, size_t len, const char *lit) {
  return len == strlen(lit) && memcmp(name, lit, len) == 0;
}

static int cb_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)h2;
  (void)flags;
  h2_conn *c = ud;
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  h2_stream *s = stream_of(c, f->hd.stream_id);
  if (!s || s->over) return 0;
  const mh_limits *l = &c->base.limits;
  int pseudo = nlen > 0 && name[0] == ':';
  s->hdr_bytes += nlen + vlen + 32;
  if (!pseudo) s->hdr_fields++;
  const char *over = NULL;
  if (s->hdr_fields > l->max_fields) over = "too many header fields";
  else if (s->hdr_bytes > l->max_head_bytes) over = "header list too large";
  if (over) {
    if (c->server && !s->head_done) {
      s->over = over; /* answered 431 once the head is complete */
      return 0;
    }
    s->fail = MH_ERR_LIMIT;
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  if (s->gone) return 0;
  mesh_ctx *ctx = ctx_of(c);
  const char *v = (const char *)value;
  int rc = 0;
  if (s->head_done) { /* trailers */
    if (!pseudo) rc = mh_head_addn(ctx, &s->trailers, (const char *)name, nlen, v, vlen);
  } else if (pseudo) {
    mh_head *h = &s->head;
    if (name_is(name, nlen, ":method")) rc = mh_head_setstr(ctx, h, &h->method, v);
    else if (name_is(name, nlen, ":scheme")) rc = mh_head_setstr(ctx, h, &h->scheme, v);
    else if (name_is(name, nlen, ":authority")) rc = mh_head_setstr(ctx, h, &h->authority, v);
    else if (name_is(name, nlen, ":path")) rc = mh_head_setstr(ctx, h, &h->path, v);
    else if (name_is(name, nlen, ":status")) {
      /* Exactly three digits, 100..599 (nghttp2 lets 027 or 999 through). */
      int ok = vlen == 3 && v[0] >= '1' && v[0] <= '5' && v[1] >= '0' && v[1] <= '9' &&
               v[2] >= '0' && v[2] <= '9';
      if (!ok) {
        s->fail = MH_ERR_PROTOCOL;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
      h->status = atoi(v);
    }
  } else if (name_is(name, nlen, "content-length")) {
    char *end;
    long long n = strtoll(v, &end, 10);
    s->head.content_length = (*end || n < 0) ? -1 : (int64_t)n;
  } else if (name_is(name, nlen, "host")) {
    if (!s->head.authority) rc = mh_head_setstr(ctx, &s->head, &s->head.authority, v);
  } else if (name_is(name, nlen, "te") ? (vlen == 8 && memcmp(v, "trailers", 8) == 0)
                                       : !mh__hop_by_hop((const char *)name, nlen)) {
    rc = mh_head_addn(ctx, &s->head, (const char *)name, nlen, v, vlen);
  }
  return rc ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

/* The codec's own answer to a request that broke a limit. */
static void answer_431(h2_conn *c, h2_stream *s) {
  s->gone = s->internal = 1;
  s->out_end = 1;
  char clen[24];
  size_t blen = strlen(s->over) + 1;
  snprintf(clen, sizeof clen, "%zu", blen);
  nghttp2_nv nv[4];
  size_t n = 0;
  nv_add(nv, &n, ":status", "431");
  nv_add(nv, &n, "content-type", "text/plain");
  nv_add(nv, &n, "content-length", clen);
  nv_add(nv, &n, "l5d-proxy-error", s->over);
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
  if (evbuffer_add_printf(s->out, "%s\n", s->over) < 0 ||
      nghttp2_submit_response(c->h2, s->id, nv, n, &prd) != 0)
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
  s->head_sent = 1;
}

static int cb_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)h2;
  h2_conn *c = ud;
  switch (f->hd.type) {
  case NGHTTP2_GOAWAY:
    c->goaway_recv = 1;
    return 0;
  case NGHTTP2_PING:
    if (f->hd.flags & NGHTTP2_FLAG_ACK) c->ping_out = 0;
    return 0;
  case NGHTTP2_RST_STREAM: {
    h2_stream *s = stream_of(c, f->hd.stream_id);
    if (s) s->rst_recv = 1;
    return 0;
  }
  case NGHTTP2_HEADERS:
  case NGHTTP2_DATA:
    break;
  default:
    return 0;
  }
  h2_stream *s = stream_of(c, f->hd.stream_id);
  if (!s) return 0;
  int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (f->hd.type == NGHTTP2_DATA || s->head_done) { /* body or trailers */
    if (!end) return 0;
    s->remote_done = 1;
    s->end_trailers = f->hd.type == NGHTTP2_HEADERS && s->trailers.n > 0;
    if (evbuffer_get_length(s->in) > 0 && can_call(s)) {
      /* The message ends once the user has taken its body (as with HTTP/1):
       * mh_stream_consumed brings it to conn_deliver. */
      s->end_pending = 1;
      return 0;
    }
    if (can_call(s) && s->base.cbs->on_end)
      s->base.cbs->on_end(&s->base, s->end_trailers ? &s->trailers : NULL, s->base.ud);
    return 0;
  }
  if (c->server) {
    s->head_done = 1;
    s->remote_done = end;
    if (s->over) {
      answer_431(c, s);
      return 0;
    }
    if (c->shutdown && s->id > c->goaway_last) {
      /* Past our GOAWAY: the client will retry it elsewhere (nghttp2 refuses
       * it once the GOAWAY is out), so it must not be acted on here. */
      s->gone = s->internal = 1;
      return 0;
    }
    s->user = 1;
    c->nuser++;
    if (!c->done && !c->doomed && !c->close_req && c->base.cbs && c->base.cbs->on_request) {
      c->base.cbs->on_request(&c->base, &s->base, &s->head, end, c->base.ud);
    } else {
      s->gone = 1; /* nobody will answer it */
      stream_unuser(s);
      nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM);
    }
    return 0;
  }
  /* Client: a response head; 1xx (not 101) heads come first and are not final. */
  int interim = s->head.status >= 100 && s->head.status < 200 && s->head.status != 101;
  if (!interim) {
    s->head_done = 1;
    s->remote_done = end;
  }
  if (can_call(s) && s->base.cbs->on_head)
    s->base.cbs->on_head(&s->base, &s->head, interim ? 0 : end, s->base.ud);
  if (interim) {
    mh_head_clear(&s->head);
    s->head.version = MH_V2;
    s->head.content_length = -1;
  }
  return 0;
}

static int cb_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud) {
  (void)flags;
  h2_conn *c = ud;
  h2_stream *s = stream_of(c, sid);
  if (!s || !can_call(s) || !s->base.cbs->on_data) {
    /* Nobody reads it: give the window back at once. */
    nghttp2_session_consume(h2, sid, len);
    return 0;
  }
  if (evbuffer_add(s->in, data, len)) {
    nghttp2_session_consume(h2, sid, len);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  s->base.cbs->on_data(&s->base, s->in, s->base.ud);
  return 0;
}

static int cb_stream_close(nghttp2_session *h2, int32_t sid, uint32_t code, void *ud) {
  h2_conn *c = ud;
  h2_stream *s = stream_of(c, sid);
  if (!s) return 0;
  nghttp2_session_set_stream_user_data(h2, sid, NULL);
  s->closed = 1;
  if (c->nlive) c->nlive--;
  int err;
  if (s->fail) err = s->fail;
  else if (s->rst_recv) err = code == NGHTTP2_REFUSED_STREAM ? MH_ERR_REFUSED : MH_ERR_RESET;
  else if (code == NGHTTP2_REFUSED_STREAM) err = MH_ERR_REFUSED; /* GOAWAY before it */
  else if (code == NGHTTP2_NO_ERROR) err = s->remote_done ? MH_OK : MH_ERR_RESET;
  else if (code == NGHTTP2_CANCEL) err = MH_ERR_CANCEL;
  else err = MH_ERR_PROTOCOL;
  s->final_err = err;
  s->q_final = 1;
  enqueue(s);
  return 0;
}

static int cb_frame_send(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)h2;
  h2_conn *c = ud;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    c->shutdown = 1;
    if (f->goaway.error_code != NGHTTP2_NO_ERROR && !c->err) c->err = MH_ERR_PROTOCOL;
  }
  return 0;
}

/* ---- The connection engine --------------------------------------------------------- */

static void conn_destroy(h2_conn *c) {
  if (c->h2) nghttp2_session_del(c->h2);
  c->h2 = NULL;
  while (c->streams) stream_free(c->streams);
  if (c->run_ev) event_free(c->run_ev);
  if (c->idle_ev) event_free(c->idle_ev);
  if (c->ping_ev) event_free(c->ping_ev);
  if (c->linger_ev) event_free(c->linger_ev);
  if (c->bev) mh__bev_free(&c->base, c->bev);
  mesh__free(ctx_of(c), c);
}

static void enter(h2_conn *c) { c->busy++; }

/* Returns 1 when c is gone. */
static int leave(h2_conn *c) {
  if (--c->busy == 0 && c->doomed) {
    conn_destroy(c);
    return 1;
  }
  return 0;
}

static int stopped(const h2_conn *c) { return c->doomed || c->done; }

/* Feed the input to nghttp2. */
static void conn_recv(h2_conn *c) {
  struct evbuffer *in = bufferevent_get_input(c->bev);
  while (evbuffer_get_length(in) > 0 && !stopped(c) && !c->close_req) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) break;
    c->got_bytes = 1;
    ssize_t n = nghttp2_session_mem_recv(c->h2, v.iov_base, v.iov_len);
    if (n < 0) {
      /* Not HTTP/2 (bad preface) or a fatal session error: GOAWAY if nghttp2
       * still can, then go. */
      mesh__log(ctx_of(c), MESH_LOG_DEBUG, "http2: %s", nghttp2_strerror((int)n));
      evbuffer_drain(in, evbuffer_get_length(in));
      nghttp2_session_terminate_session(c->h2, NGHTTP2_PROTOCOL_ERROR);
      if (!c->err) c->err = MH_ERR_PROTOCOL;
      c->close_req = MH_ERR_PROTOCOL;
      return;
    }
    evbuffer_drain(in, (size_t)n);
  }
}

/* Move frames from nghttp2 to the socket while the socket keeps up. */
static void conn_send(h2_conn *c) {
  struct evbuffer *out = bufferevent_get_output(c->bev);
  while (evbuffer_get_length(out) < OUT_HIGH && !c->doomed) {
    const uint8_t *d;
    ssize_t n = nghttp2_session_mem_send(c->h2, &d);
    if (n < 0) {
      if (!c->close_req) c->close_req = c->err ? c->err : MH_ERR_CLOSED;
      return;
    }
    if (n == 0) break;
    if (evbuffer_add(out, d, (size_t)n)) {
      if (!c->close_req) c->close_req = MH_ERR_CLOSED;
      return;
    }
  }
}

/* Drain callbacks and stream endings queued by nghttp2 callbacks. */
static void conn_deliver(h2_conn *c) {
  /* After a close request, teardown tells every stream instead. */
  while (c->qhead && !c->doomed && !c->close_req) {
    h2_stream *s = c->qhead;
    c->qhead = s->qnext;
    if (!c->qhead) c->qtail = &c->qhead;
    s->queued = 0;
    if (s->end_pending && evbuffer_get_length(s->in) == 0 && can_call(s)) {
      s->end_pending = 0;
      if (s->base.cbs->on_end)
        s->base.cbs->on_end(&s->base, s->end_trailers ? &s->trailers : NULL, s->base.ud);
      if (c->doomed || c->close_req) break;
      if (s->queued) continue; /* the callback queued it again (a reset): handled there */
    }
    if (s->q_final || (s->gone && s->closed)) {
      /* A clean end waits until the user has taken the body: on_reset frees
       * the buffer it reads from (mh_stream_consumed brings it back here). */
      if (s->final_err == MH_OK && can_call(s) &&
          (evbuffer_get_length(s->in) > 0 || s->end_pending)) {
        if (!s->final_wait) c->nwait++;
        s->final_wait = 1;
        continue;
      }
      int call = can_call(s) && s->base.cbs->on_reset;
      int err = s->final_err;
      s->gone = 1;
      stream_unuser(s);
      if (call) s->base.cbs->on_reset(&s->base, err, s->base.ud);
      if (c->doomed) break; /* destroy frees it */
      stream_free(s);
    } else if (s->q_drain) {
      s->q_drain = 0;
      if (can_call(s) && s->base.cbs->on_drain) s->base.cbs->on_drain(&s->base, s->base.ud);
    }
  }
}

static void linger_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h2_conn *c = arg;
  if (c->busy) c->doomed = 1;
  else conn_destroy(c);
}

/* The end: every stream the user holds hears err, then the connection. */
static void conn_teardown(h2_conn *c, int err) {
  if (c->done) return;
  int stream_err = err ? err : MH_ERR_CLOSED;
  if (err == CLOSE_USER) err = MH_OK;
  if (!c->eof && c->h2 && (err || !c->shutdown)) {
    /* Best effort: tell the peer (no-op when GOAWAY went already). */
    nghttp2_session_terminate_session(c->h2, err == MH_ERR_PROTOCOL ? NGHTTP2_PROTOCOL_ERROR
                                                                    : NGHTTP2_NO_ERROR);
    conn_send(c);
  }
  c->close_req = err ? err : CLOSE_OK; /* no other callbacks from now on */
  if (stream_err == CLOSE_USER) stream_err = MH_ERR_CLOSED;
  for (;;) {
    h2_stream *s = c->streams;
    while (s && (s->gone || !s->base.cbs || !s->base.cbs->on_reset)) s = s->next;
    if (!s || c->doomed) break;
    s->gone = 1;
    stream_unuser(s);
    s->base.cbs->on_reset(&s->base, stream_err, s->base.ud);
  }
  if (c->doomed) return;
  c->done = 1;
  if (c->base.cbs && c->base.cbs->on_close) c->base.cbs->on_close(&c->base, err, c->base.ud);
  if (c->doomed) return;
  /* c is the codec's alone now: flush the last frames, then go. */
  event_del(c->idle_ev);
  event_del(c->ping_ev);
  if (c->eof || evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
    c->doomed = 1;
    return;
  }
  c->lingering = 1;
  bufferevent_disable(c->bev, EV_READ);
  bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
  timer_ms(c->linger_ev, LINGER_MS);
}

/* One turn: read, write, deliver, and decide whether the connection is over.
 * Runs only from libevent callbacks, never from an mh_* call. */
static void conn_progress(h2_conn *c) {
  if (c->lingering) {
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) c->doomed = 1;
    return;
  }
  if (stopped(c)) return;
  for (int round = 0; round < 4 && !stopped(c); round++) {
    if (!c->close_req) conn_recv(c);
    if (stopped(c)) return;
    conn_send(c);
    conn_deliver(c);
    if (!c->qhead) break;
  }
  if (stopped(c)) return;
  if (c->close_req) {
    conn_teardown(c, c->close_req == CLOSE_OK ? MH_OK : c->close_req);
    return;
  }
  if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2) && !c->nwait) {
    conn_teardown(c, c->err);
    return;
  }
  const mh_limits *l = &c->base.limits;
  if (c->nlive == 0 && c->nuser == 0 && l->idle_timeout_ms) {
    if (!c->idle_armed || c->got_bytes) timer_ms(c->idle_ev, l->idle_timeout_ms);
    c->idle_armed = 1;
  } else if (c->idle_armed) {
    event_del(c->idle_ev);
    c->idle_armed = 0;
  }
  if (c->got_bytes && l->ping_interval_ms) {
    c->ping_out = 0; /* the peer is alive */
    timer_ms(c->ping_ev, l->ping_interval_ms);
  }
  c->got_bytes = 0;
  if (c->qhead) schedule(c);
}

static void run_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h2_conn *c = arg;
  enter(c);
  conn_progress(c);
  leave(c);
}

static void read_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  run_cb(-1, 0, arg);
}

static void write_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  run_cb(-1, 0, arg);
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  h2_conn *c = arg;
  if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))) return;
  enter(c);
  if (c->lingering) {
    c->doomed = 1;
  } else if (!stopped(c)) {
    conn_progress(c); /* what arrived before the end */
    if (!stopped(c)) {
      c->eof = 1;
      int err = c->err;
      if (!err && (c->nuser > 0 || (what & BEV_EVENT_ERROR))) err = MH_ERR_CLOSED;
      conn_teardown(c, err);
    }
  }
  leave(c);
}

static void submit_goaway(h2_conn *c) {
  c->shutdown = 1;
  c->goaway_last = nghttp2_session_get_last_proc_stream_id(c->h2);
  nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, c->goaway_last, NGHTTP2_NO_ERROR, NULL, 0);
}

static void idle_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h2_conn *c = arg;
  c->idle_armed = 0;
  if (stopped(c) || c->nlive > 0 || c->nuser > 0) return;
  enter(c);
  submit_goaway(c);
  conn_progress(c);
  leave(c);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  h2_conn *c = arg;
  if (stopped(c)) return;
  enter(c);
  if (c->ping_out) {
    if (!c->close_req) c->close_req = MH_ERR_TIMEOUT;
  } else {
    c->ping_out = 1;
    nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
    timer_ms(c->ping_ev, c->base.limits.ping_interval_ms);
  }
  conn_progress(c);
  leave(c);
}

/* ---- Connection ops --------------------------------------------------------------- */

static uint32_t c_capacity(const mh_conn *base) {
  const h2_conn *c = (const h2_conn *)base;
  if (c->server || c->done || c->close_req || c->shutdown || c->goaway_recv || c->doomed) return 0;
  uint32_t max =
      nghttp2_session_get_remote_settings(c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return max > c->nlive ? max - c->nlive : 0;
}

static int c_request(mh_conn *base, const mh_head *req, int end_stream, const mh_stream_cbs *cbs,
                     void *ud, mh_stream **ret) {
  h2_conn *c = (h2_conn *)base;
  if (!req || c->server) return MESH_ERR_INVALID;
  if (c_capacity(base) == 0) return MESH_ERR_AGAIN;
  h2_stream *s = stream_new(c, -1);
  if (!s) return MESH_ERR_NOMEM;
  nghttp2_nv stack[NV_STACK], *heap, *nv;
  size_t n;
  char st[4], clen[24];
  int rc = head_nv(c, req, OUT_REQUEST, stack, &heap, st, clen, &nv, &n);
  if (rc) {
    stream_free(s);
    return rc;
  }
  nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read};
  int32_t id = nghttp2_submit_request(c->h2, NULL, nv, n, end_stream ? NULL : &prd, s);
  mesh__free(ctx_of(c), heap);
  if (id < 0) {
    stream_free(s);
    return id == NGHTTP2_ERR_NOMEM ? MESH_ERR_NOMEM : MESH_ERR_AGAIN;
  }
  s->id = id;
  s->head_sent = 1;
  if (end_stream) s->out_end = 1;
  s->base.cbs = cbs;
  s->base.ud = ud;
  s->user = 1;
  c->nuser++;
  schedule(c);
  *ret = &s->base;
  return 0;
}

static uint32_t c_active(const mh_conn *base) { return ((const h2_conn *)base)->nuser; }

static void c_shutdown(mh_conn *base) {
  h2_conn *c = (h2_conn *)base;
  if (c->done || c->shutdown || c->close_req) return;
  submit_goaway(c);
  schedule(c);
}

static void c_close(mh_conn *base) {
  h2_conn *c = (h2_conn *)base;
  if (c->done || c->close_req) return;
  c->close_req = CLOSE_USER;
  schedule(c);
}

static void c_free(mh_conn *base) {
  h2_conn *c = (h2_conn *)base;
  if (!c) return;
  c->done = 1; /* no callback from now on */
  if (c->busy) c->doomed = 1;
  else conn_destroy(c);
}

static const mh_conn_ops conn_ops = {c_request, c_capacity, c_active, c_shutdown, c_close, c_free};

int mh__h2_new(mesh_ctx *ctx, struct bufferevent *bev, int server, const mh_limits *l,
               const mh_conn_cbs *cbs, void *ud, mh_conn **ret) {
  if (!ctx || !bev || !l || !ret || l->max_streams == 0 || l->window_bytes == 0)
    return MESH_ERR_INVALID;
  h2_conn *c = mesh__calloc(ctx, 1, sizeof *c);
  if (!c) return MESH_ERR_NOMEM;
  c->base.ops = &conn_ops;
  c->base.ctx = ctx;
  c->base.proto = MH_H2;
  c->base.limits = *l;
  c->base.cbs = cbs;
  c->base.ud = ud;
  c->server = server != 0;
  c->qtail = &c->qhead;
  c->evbase = bufferevent_get_base(bev);
  uint32_t window = l->window_bytes > NGHTTP2_MAX_WINDOW_SIZE ? NGHTTP2_MAX_WINDOW_SIZE
                                                               : l->window_bytes;
  c->base.limits.window_bytes = window;

  nghttp2_session_callbacks *cb = NULL;
  nghttp2_option *opt = NULL;
  nghttp2_mem mem = {ctx, h2_malloc, h2_free, h2_calloc, h2_realloc};
  int rc = MESH_ERR_NOMEM;
  if (nghttp2_session_callbacks_new(&cb) || nghttp2_option_new(&opt)) goto fail;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cb_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, cb_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cb_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cb_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, cb_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, cb_frame_send);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  if (server ? nghttp2_session_server_new3(&c->h2, cb, c, opt, &mem)
             : nghttp2_session_client_new3(&c->h2, cb, c, opt, &mem))
    goto fail;
  nghttp2_settings_entry iv[4] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, l->max_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, l->max_head_bytes},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, server ? 3 : 4)) goto fail;
  uint64_t cw = (uint64_t)window * l->max_streams;
  if (cw > CONN_WINDOW_MAX) cw = CONN_WINDOW_MAX;
  if (cw < window) cw = window;
  if (cw > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
      nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, (int32_t)cw))
    goto fail;
  c->run_ev = event_new(c->evbase, -1, 0, run_cb, c);
  c->idle_ev = evtimer_new(c->evbase, idle_cb, c);
  c->ping_ev = evtimer_new(c->evbase, ping_cb, c);
  c->linger_ev = evtimer_new(c->evbase, linger_cb, c);
  if (!c->run_ev || !c->idle_ev || !c->ping_ev || !c->linger_ev) goto fail;
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  c->bev = bev;
  bufferevent_setcb(bev, read_cb, write_cb, event_cb, c);
  bufferevent_setwatermark(bev, EV_WRITE, OUT_HIGH / 2, 0);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  if (l->ping_interval_ms) timer_ms(c->ping_ev, l->ping_interval_ms);
  schedule(c); /* the preface and SETTINGS, and bytes already read */
  *ret = &c->base;
  return 0;
fail:
  if (cb) nghttp2_session_callbacks_del(cb);
  if (opt) nghttp2_option_del(opt);
  conn_destroy(c);
  return rc;
}
