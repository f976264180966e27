/* libmesh http: heads, protocol detection, synthesized errors, and the dispatch to the HTTP/1 and HTTP/2 codecs. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "http_internal.h"

/* ---- Heads ---------------------------------------------------------------------- */

void mh_head_init(mh_head *h) {
  memset(h, 0, sizeof *h);
  h->content_length = -1;
}

/* A head remembers the ctx that allocated its strings, so that it can be
 * cleared without one at hand. */
static void str_free(mh_head *h, char **p) {
  if (*p) mesh__free(h->ctx, *p);
  *p = NULL;
}

void mh_head_clear(mh_head *h) {
  str_free(h, &h->method);
  str_free(h, &h->scheme);
  str_free(h, &h->authority);
  str_free(h, &h->path);
  str_free(h, &h->upgrade_proto);
  for (size_t i = 0; i < h->n; i++) {
    mesh__free(h->ctx, h->fields[i].name); /* name and value share one allocation */
  }
  if (h->fields) mesh__free(h->ctx, h->fields);
  mh_head_init(h);
}

int mh_head_setstr(mesh_ctx *ctx, mh_head *h, char **member, const char *value) {
  h->ctx = ctx;
  char *d = NULL;
  if (value && !(d = mesh__strdup(ctx, value))) return MESH_ERR_NOMEM;
  if (*member) mesh__free(ctx, *member);
  *member = d;
  return 0;
}

int mh_head_addn(mesh_ctx *ctx, mh_head *h, const char *name, size_t nlen, const char *value,
                 size_t vlen) {
  h->ctx = ctx;
  if (h->n == h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 16;
    mh_field *f = mesh__calloc(ctx, cap, sizeof *f);
    if (!f) return MESH_ERR_NOMEM;
    if (h->n) memcpy(f, h->fields, h->n * sizeof *f);
    if (h->fields) mesh__free(ctx, h->fields);
    h->fields = f;
    h->cap = cap;
  }
  char *buf = mesh__malloc(ctx, nlen + vlen + 2);
  if (!buf) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < nlen; i++) buf[i] = (char)tolower((unsigned char)name[i]);
  buf[nlen] = 0;
  memcpy(buf + nlen + 1, value, vlen);
  buf[nlen + 1 + vlen] = 0;
  h->fields[h->n].name = buf;
  h->fields[h->n].value = buf + nlen + 1;
  h->n++;
  return 0;
}

int mh_head_add(mesh_ctx *ctx, mh_head *h, const char *name, const char *value) {
  return mh_head_addn(ctx, h, name, strlen(name), value, strlen(value));
}

const char *mh_head_get(const mh_head *h, const char *name) {
  for (size_t i = 0; i < h->n; i++)
    if (strcasecmp(h->fields[i].name, name) == 0) return h->fields[i].value;
  return NULL;
}

size_t mh_head_del(mesh_ctx *ctx, mh_head *h, const char *name) {
  (void)ctx; /* the head's own */
  size_t kept = 0, gone = 0;
  for (size_t i = 0; i < h->n; i++) {
    if (strcasecmp(h->fields[i].name, name) == 0) {
      mesh__free(h->ctx, h->fields[i].name);
      gone++;
    } else {
      h->fields[kept++] = h->fields[i];
    }
  }
  h->n = kept;
  return gone;
}

int mh_head_set(mesh_ctx *ctx, mh_head *h, const char *name, const char *value) {
  mh_head_del(ctx, h, name);
  return mh_head_add(ctx, h, name, value);
}

int mh_head_copy(mesh_ctx *ctx, mh_head *dst, const mh_head *src) {
  mh_head_clear(dst);
  dst->ctx = ctx;
  dst->status = src->status;
  dst->version = src->version;
  dst->content_length = src->content_length;
  dst->upgrade = src->upgrade;
  dst->expect_continue = src->expect_continue;
  dst->close = src->close;
  if (mh_head_setstr(ctx, dst, &dst->method, src->method) ||
      mh_head_setstr(ctx, dst, &dst->scheme, src->scheme) ||
      mh_head_setstr(ctx, dst, &dst->authority, src->authority) ||
      mh_head_setstr(ctx, dst, &dst->path, src->path) ||
      mh_head_setstr(ctx, dst, &dst->upgrade_proto, src->upgrade_proto))
    goto nomem;
  for (size_t i = 0; i < src->n; i++)
    if (mh_head_add(ctx, dst, src->fields[i].name, src->fields[i].value)) goto nomem;
  return 0;
nomem:
  mh_head_clear(dst);
  return MESH_ERR_NOMEM;
}

/* RFC 9110 7.6.1 plus the HTTP/2 connection-specific fields (RFC 9113 8.2.2);
 * host and content-length live in the head's members. */
int mh__hop_by_hop(const char *name, size_t len) {
  static const char *const names[] = {"connection", "keep-alive", "proxy-connection",
                                      "transfer-encoding", "upgrade", "http2-settings",
                                      "host", "content-length", "te"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strlen(names[i]) == len && strncasecmp(names[i], name, len) == 0) return 1;
  return 0;
}

void mh_limits_default(mh_limits *l) {
  l->max_head_bytes = MH_DEFAULT_MAX_HEAD_BYTES;
  l->max_fields = MH_DEFAULT_MAX_FIELDS;
  l->head_timeout_ms = MH_DEFAULT_HEAD_TIMEOUT_MS;
  l->idle_timeout_ms = MH_DEFAULT_IDLE_TIMEOUT_MS;
  l->max_streams = MH_DEFAULT_MAX_STREAMS;
  l->window_bytes = MH_DEFAULT_WINDOW_BYTES;
  l->ping_interval_ms = MH_DEFAULT_PING_INTERVAL_MS;
}

/* ---- Detection ------------------------------------------------------------------ */

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static int tchar(unsigned char c) {
  return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

int mh_detect(const uint8_t *buf, size_t len) {
  size_t plen = sizeof h2_preface - 1;
  size_t n = len < plen ? len : plen;
  if (memcmp(buf, h2_preface, n) == 0) return len >= plen ? MH_DETECT_H2 : MH_DETECT_MORE;
  /* METHOD SP target SP HTTP/1.x CRLF: methods are tokens of at most 20
   * characters here (the longest registered one is 17). */
  size_t i = 0;
  while (i < len && i <= 20 && tchar(buf[i])) i++;
  if (i == len) return len < MH_DETECT_MAX_BYTES && i <= 20 ? MH_DETECT_MORE : MH_DETECT_OPAQUE;
  if (i == 0 || i > 20 || buf[i] != ' ') return MH_DETECT_OPAQUE;
  size_t t = ++i;
  while (i < len && buf[i] > ' ' && buf[i] < 0x7f) i++;
  if (i == len) return len < MH_DETECT_MAX_BYTES ? MH_DETECT_MORE : MH_DETECT_OPAQUE;
  if (i == t || buf[i] != ' ') return MH_DETECT_OPAQUE;
  i++;
  static const char v[] = "HTTP/1.";
  size_t rest = len - i < 7 ? len - i : 7;
  if (memcmp(buf + i, v, rest) != 0) return MH_DETECT_OPAQUE;
  return rest == 7 ? MH_DETECT_H1 : MH_DETECT_MORE;
}

/* ---- Synthesized responses ------------------------------------------------------------ */

/* gRPC status codes for the HTTP statuses the proxy synthesizes (the
 * mapping gRPC itself documents for HTTP errors). */
static int grpc_status_of(int status) {
  switch (status) {
  case 400: return 13; /* INTERNAL */
  case 401: return 16; /* UNAUTHENTICATED */
  case 403: return 7;  /* PERMISSION_DENIED */
  case 404: return 12; /* UNIMPLEMENTED */
  case 429: case 502: case 503: return 14; /* UNAVAILABLE */
  case 504: return 4;  /* DEADLINE_EXCEEDED */
  default: return 2;   /* UNKNOWN */
  }
}

static int is_grpc(const mh_head *req) {
  const char *ct = req ? mh_head_get(req, "content-type") : NULL;
  return ct && strncasecmp(ct, "application/grpc", 16) == 0;
}

int mh_respond_error(mh_stream *s, const mh_head *req, int status, const char *why) {
  mesh_ctx *ctx = s->conn->ctx;
  mh_head h;
  mh_head_init(&h);
  char num[16];
  int rc = 0;
  if (is_grpc(req)) {
    snprintf(num, sizeof num, "%d", grpc_status_of(status));
    h.status = 200;
    h.content_length = 0;
    if (mh_head_add(ctx, &h, "content-type", "application/grpc") ||
        mh_head_add(ctx, &h, "grpc-status", num) || mh_head_add(ctx, &h, "grpc-message", why) ||
        mh_head_add(ctx, &h, "l5d-proxy-error", why))
      rc = MESH_ERR_NOMEM;
    if (!rc) rc = mh_stream_send_head(s, &h, 1);
    mh_head_clear(&h);
    return rc;
  }
  h.status = status;
  size_t wlen = strlen(why);
  h.content_length = (int64_t)wlen + 1;
  if (mh_head_add(ctx, &h, "content-type", "text/plain") ||
      mh_head_add(ctx, &h, "l5d-proxy-error", why))
    rc = MESH_ERR_NOMEM;
  if (!rc && req && req->method && strcmp(req->method, "HEAD") == 0) {
    rc = mh_stream_send_head(s, &h, 1);
  } else if (!rc) {
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add(b, why, wlen) || evbuffer_add(b, "\n", 1)) rc = MESH_ERR_NOMEM;
    if (!rc) rc = mh_stream_send_head(s, &h, 0);
    if (!rc) rc = mh_stream_send_data(s, b, 1);
    if (b) evbuffer_free(b);
  }
  mh_head_clear(&h);
  return rc;
}

/* ---- Dispatch --------------------------------------------------------------------------- */

void mh_stream_set_cbs(mh_stream *s, const mh_stream_cbs *cbs, void *ud) {
  s->cbs = cbs;
  s->ud = ud;
}
int mh_stream_send_head(mh_stream *s, const mh_head *h, int end_stream) {
  return s->ops->send_head(s, h, end_stream);
}
int mh_stream_send_data(mh_stream *s, struct evbuffer *buf, int end_stream) {
  return s->ops->send_data(s, buf, end_stream);
}
int mh_stream_send_end(mh_stream *s, const mh_head *trailers) {
  return s->ops->send_end(s, trailers);
}
size_t mh_stream_pending(const mh_stream *s) { return s->ops->pending(s); }
void mh_stream_consumed(mh_stream *s, size_t n) { s->ops->consumed(s, n); }
void mh_stream_reset(mh_stream *s, int refused) { s->ops->reset(s, refused); }
mh_conn *mh_stream_conn(const mh_stream *s) { return s->conn; }

int mh_conn_server(mesh_ctx *ctx, struct bufferevent *bev, int proto, const mh_limits *l,
                   const mh_conn_cbs *cbs, void *ud, mh_conn **ret) {
  if (!bev || !l || !cbs || !ret) return MESH_ERR_INVALID;
  if (proto == MH_H1) return mh__h1_new(ctx, bev, 1, l, cbs, ud, ret);
  if (proto == MH_H2) return mh__h2_new(ctx, bev, 1, l, cbs, ud, ret);
  return MESH_ERR_INVALID;
}

int mh_conn_client(mesh_ctx *ctx, struct bufferevent *bev, int proto, const mh_limits *l,
                   const mh_conn_cbs *cbs, void *ud, mh_conn **ret) {
  if (!bev || !l || !cbs || !ret) return MESH_ERR_INVALID;
  if (proto == MH_H1) return mh__h1_new(ctx, bev, 0, l, cbs, ud, ret);
  if (proto == MH_H2) return mh__h2_new(ctx, bev, 0, l, cbs, ud, ret);
  return MESH_ERR_INVALID;
}

int mh_client_request(mh_conn *c, const mh_head *req, int end_stream, const mh_stream_cbs *cbs,
                      void *ud, mh_stream **ret) {
  return c->ops->request(c, req, end_stream, cbs, ud, ret);
}
uint32_t mh_conn_capacity(const mh_conn *c) { return c->ops->capacity(c); }
uint32_t mh_conn_active(const mh_conn *c) { return c->ops->active(c); }
int mh_conn_proto(const mh_conn *c) { return c->proto; }
void mh_conn_shutdown(mh_conn *c) { c->ops->shutdown(c); }
void mh_conn_close(mh_conn *c) { c->ops->close(c); }
void mh_conn_free(mh_conn *c) {
  if (c) c->ops->free(c);
}
void mh_conn_set_bev_release(mh_conn *c, void (*release)(struct bufferevent *bev, void *arg),
                             void *arg) {
  c->bev_release = release;
  c->bev_release_arg = arg;
}
void mh__bev_free(mh_conn *c, struct bufferevent *bev) {
  if (!bev) return;
  if (c->bev_release) c->bev_release(bev, c->bev_release_arg);
  else bufferevent_free(bev);
}
void *mh_conn_userdata(const mh_conn *c) { return c->ud; }
void mh_conn_set_userdata(mh_conn *c, const mh_conn_cbs *cbs, void *ud) {
  c->cbs = cbs;
  c->ud = ud;
}
