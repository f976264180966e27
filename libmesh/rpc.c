/* libmesh rpc: JSON calls and line-delimited JSON streams over nghttp2 on libevent, plaintext or through the tls module. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>

#include <mesh/rpc.h>

#include "ctx_internal.h"

/* Bytes of HTTP/2 frames queued on a connection's bufferevent before we stop
 * asking nghttp2 for more: what is not written stays in the per-stream
 * buffers, where MESH_RPC_LIMIT_OUTBOUND bounds it. */
#define OUT_HIGH 65536u
/* A connection closing gracefully gets this long to flush before it is dropped. */
#define DRAIN_MS 5000u
#define REQUEST_BODY_MAX (16u << 20)
#define PATH_MAX_LEN 1024u

/* ---- Shared helpers ------------------------------------------------------ */

static void *h2_malloc(size_t n, void *ud) { return mesh__malloc(ud, n); }
static void h2_free(void *p, void *ud) { mesh__free(ud, p); }
static void *h2_calloc(size_t n, size_t s, void *ud) { return mesh__calloc(ud, n, s); }
static void *h2_realloc(void *p, size_t n, void *ud) { return mesh__realloc(ud, p, n); }

static void timer_ms(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
  event_add(ev, &tv);
}

/* "1.2.3.4:80", "[::1]:80", "localhost:80" -> sockaddr. Numeric only: name
 * resolution belongs to discovery, and a blocking resolver has no place on
 * an event loop. */
static int parse_addr(const char *s, int allow_zero_port, struct sockaddr_storage *ss,
                      socklen_t *len) {
  char host[64];
  const char *port;
  if (!s) return MESH_ERR_INVALID;
  if (s[0] == '[') {
    const char *e = strchr(s, ']');
    if (!e || e[1] != ':' || (size_t)(e - s - 1) >= sizeof host) return MESH_ERR_PARSE;
    memcpy(host, s + 1, (size_t)(e - s - 1));
    host[e - s - 1] = '\0';
    port = e + 2;
  } else {
    const char *c = strrchr(s, ':');
    if (!c || (size_t)(c - s) >= sizeof host || memchr(s, ':', (size_t)(c - s)))
      return MESH_ERR_PARSE;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = '\0';
    port = c + 1;
  }
  if (!*port || strlen(port) > 5) return MESH_ERR_PARSE;
  unsigned long p = 0;
  for (const char *q = port; *q; q++) {
    if (*q < '0' || *q > '9') return MESH_ERR_PARSE;
    p = p * 10 + (unsigned long)(*q - '0');
  }
  if (p > 65535 || (p == 0 && !allow_zero_port)) return MESH_ERR_PARSE;
  memset(ss, 0, sizeof *ss);
  if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
  struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)p);
    *len = sizeof *v4;
  } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)p);
    *len = sizeof *v6;
  } else {
    return MESH_ERR_PARSE;
  }
  return 0;
}

/* Small frames (a unary answer, one streamed line) must leave at once, not
 * wait for Nagle's algorithm and the peer's delayed ACK. */
static void no_delay(evutil_socket_t fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void format_addr(const struct sockaddr *sa, char *buf, size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
    port = ntohs(v4->sin_port);
    snprintf(buf, cap, "%s:%u", host, port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
    port = ntohs(v6->sin6_port);
    snprintf(buf, cap, "[%s]:%u", host, port);
  } else {
    snprintf(buf, cap, "unknown");
  }
}

/* Feed everything read so far to nghttp2. stop() lets a caller end the loop
 * when a callback tore the connection down. Returns 0 or nghttp2's error. */
static int h2_recv(nghttp2_session *h2, struct bufferevent *bev, int (*stop)(void *), void *arg) {
  struct evbuffer *in = bufferevent_get_input(bev);
  while (evbuffer_get_length(in) > 0 && !stop(arg)) {
    struct evbuffer_iovec v;
    if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0) break;
    ssize_t n = nghttp2_session_mem_recv(h2, v.iov_base, v.iov_len);
    if (n < 0) return (int)n;
    evbuffer_drain(in, (size_t)n);
  }
  return 0;
}

/* Move frames from nghttp2 to the socket while the socket keeps up. */
static int h2_send(nghttp2_session *h2, struct bufferevent *bev) {
  struct evbuffer *out = bufferevent_get_output(bev);
  while (evbuffer_get_length(out) < OUT_HIGH) {
    const uint8_t *d;
    ssize_t n = nghttp2_session_mem_send(h2, &d);
    if (n < 0) return (int)n;
    if (n == 0) break;
    if (evbuffer_add(out, d, (size_t)n)) return NGHTTP2_ERR_NOMEM;
  }
  return 0;
}

static const char *status_text(int status, char *buf) {
  snprintf(buf, 4, "%03d", status);
  return buf;
}

/* Minimal JSON string escaping for error bodies (control bytes, quote, backslash). */
static int json_escape(struct evbuffer *b, const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    int rc;
    if (*p == '"' || *p == '\\')
      rc = evbuffer_add_printf(b, "\\%c", *p);
    else if (*p < 0x20)
      rc = evbuffer_add_printf(b, "\\u%04x", *p);
    else
      rc = evbuffer_add(b, p, 1) ? -1 : 1;
    if (rc < 0) return -1;
  }
  return 0;
}

/* The "code" of {"error":{"code":...}} into buf, or "unknown". */
static void error_code_of(const char *body, size_t len, char *buf, size_t cap) {
  snprintf(buf, cap, "unknown");
  if (!body || !len) return;
  json_t *root = json_loadb(body, len, 0, NULL);
  if (!root) return;
  json_t *err = json_object_get(root, "error");
  const char *code = json_string_value(json_object_get(err, "code"));
  if (code && *code) snprintf(buf, cap, "%s", code);
  json_decref(root);
}

/* ==== Server ============================================================== */

struct mesh_rpc_server_opts {
  mesh_ctx *ctx;
  mesh_tls_config *tls;
  mesh_tls_creds *creds;
  int client_auth;
  uint64_t lim[8];
};

static const struct {
  uint64_t def, min, max;
} limits[8] = {
    [MESH_RPC_LIMIT_BODY] = {MESH_RPC_DEFAULT_BODY_MAX, 1, 16u << 20},
    [MESH_RPC_LIMIT_STREAMS] = {MESH_RPC_DEFAULT_STREAMS_MAX, 1, 65536},
    [MESH_RPC_LIMIT_HEADER_LIST] = {MESH_RPC_DEFAULT_HEADER_LIST_MAX, 1024, 1u << 20},
    [MESH_RPC_LIMIT_CONNECTIONS] = {MESH_RPC_DEFAULT_CONNECTIONS_MAX, 1, 1000000},
    [MESH_RPC_LIMIT_IDLE_MS] = {MESH_RPC_DEFAULT_IDLE_MS, 0, UINT32_MAX},
    [MESH_RPC_LIMIT_REQUEST_MS] = {MESH_RPC_DEFAULT_REQUEST_MS, 0, UINT32_MAX},
    [MESH_RPC_LIMIT_OUTBOUND] = {MESH_RPC_DEFAULT_OUTBOUND_MAX, 65536, 1u << 30},
};

typedef struct route {
  char *path;
  mesh_rpc_handler_fn fn;
  void *ud;
} route;

/* What calls need to know about their client after its connection is gone. */
typedef struct peer {
  mesh_ctx *ctx;
  int refs;
  char addr[64];
  char *dns;
  mesh_identity *id;
} peer;

typedef struct sconn sconn;

struct mesh_rpc_server {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_tls_config *tls;
  mesh_tls_creds *creds;
  int client_auth;
  uint64_t lim[8];
  struct evconnlistener **listeners;
  size_t nlisteners;
  route *routes;
  size_t nroutes;
  sconn *conns;
  uint32_t nconns;
  mesh_rpc_call *orphans;    /* app-owned calls whose stream is gone */
  mesh_rpc_call *notify;     /* orphans whose close callback is due */
  struct event *notify_ev;
};

struct sconn {
  mesh_rpc_server *srv;
  sconn *prev, *next;
  struct bufferevent *bev;
  mesh_tls_conn *tls;
  nghttp2_session *h2;
  peer *peer;
  struct event *flush_ev, *idle_ev;
  mesh_rpc_call *calls;
  uint32_t nstreams;
  int draining;
};

struct mesh_rpc_call {
  mesh_ctx *ctx;
  mesh_rpc_server *srv;
  sconn *conn;                 /* NULL once the stream is gone */
  mesh_rpc_call *prev, *next;  /* in conn->calls, or in srv->orphans */
  mesh_rpc_call *notify_next;
  int32_t sid;
  peer *peer;
  char *path;
  int post;
  size_t hdr_bytes;
  char *body;
  size_t body_len, body_cap;
  struct evbuffer *out;
  struct event *req_timer;
  mesh_rpc_handler_fn fn;
  void *fn_ud;
  mesh_rpc_close_fn on_close;
  void *close_ud;
  unsigned app : 1;       /* handed to the application and not finished */
  unsigned answered : 1;  /* response HEADERS submitted */
  unsigned streaming : 1;
  unsigned eof : 1;       /* no more data after out */
  unsigned deferred : 1;  /* the data provider is waiting for resume */
  unsigned reset : 1;     /* we reset the stream */
  unsigned rejected : 1;  /* answered by the server itself; body ignored */
  unsigned queued : 1;    /* in srv->notify */
  unsigned closed_cb : 1; /* the close callback has run */
};

static void peer_unref(peer *p) {
  if (!p || --p->refs > 0) return;
  mesh__free(p->ctx, p->dns);
  mesh_identity_free(p->id);
  mesh__free(p->ctx, p);
}

int mesh_rpc_server_opts_new(mesh_ctx *ctx, mesh_rpc_server_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_rpc_server_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  o->client_auth = MESH_TLS_CLIENT_AUTH_REQUIRED;
  for (int i = 1; i < 8; i++) o->lim[i] = limits[i].def;
  *ret = o;
  return 0;
}

void mesh_rpc_server_opts_free(mesh_rpc_server_opts *o) {
  if (!o) return;
  mesh_tls_config_unref(o->tls);
  mesh__free(o->ctx, o);
}

static int valid_auth(int a) {
  return a == MESH_TLS_CLIENT_AUTH_REQUIRED || a == MESH_TLS_CLIENT_AUTH_OPTIONAL;
}

int mesh_rpc_server_opts_set_tls(mesh_rpc_server_opts *o, mesh_tls_config *cfg, int client_auth) {
  if (!o || !valid_auth(client_auth)) return MESH_ERR_INVALID;
  mesh_tls_config_unref(o->tls);
  o->tls = cfg ? mesh_tls_config_ref(cfg) : NULL;
  o->client_auth = client_auth;
  return 0;
}

int mesh_rpc_server_opts_set_tls_creds(mesh_rpc_server_opts *o, mesh_tls_creds *creds,
                                       int client_auth) {
  if (!o || !valid_auth(client_auth)) return MESH_ERR_INVALID;
  o->creds = creds;
  o->client_auth = client_auth;
  return 0;
}

int mesh_rpc_server_opts_set_limit(mesh_rpc_server_opts *o, int limit, uint64_t value) {
  if (!o || limit < MESH_RPC_LIMIT_BODY || limit > MESH_RPC_LIMIT_OUTBOUND) return MESH_ERR_INVALID;
  if (value < limits[limit].min || value > limits[limit].max) return MESH_ERR_RANGE;
  o->lim[limit] = value;
  return 0;
}

static void notify_run(evutil_socket_t fd, short what, void *arg);

int mesh_rpc_server_new(mesh_ctx *ctx, struct event_base *base, const mesh_rpc_server_opts *opts,
                        mesh_rpc_server **ret) {
  if (!ctx || !base || !ret) return MESH_ERR_INVALID;
  mesh_rpc_server *s = mesh__calloc(ctx, 1, sizeof *s);
  if (!s) return MESH_ERR_NOMEM;
  s->ctx = ctx;
  s->base = base;
  s->client_auth = MESH_TLS_CLIENT_AUTH_REQUIRED;
  for (int i = 1; i < 8; i++) s->lim[i] = opts ? opts->lim[i] : limits[i].def;
  if (opts) {
    s->tls = opts->tls ? mesh_tls_config_ref(opts->tls) : NULL;
    s->creds = opts->creds;
    s->client_auth = opts->client_auth;
  }
  s->notify_ev = event_new(base, -1, 0, notify_run, s);
  if (!s->notify_ev) {
    mesh_tls_config_unref(s->tls);
    mesh__free(ctx, s);
    return MESH_ERR_NOMEM;
  }
  *ret = s;
  return 0;
}

uint32_t mesh_rpc_server_connections(const mesh_rpc_server *s) { return s ? s->nconns : 0; }

int mesh_rpc_server_handle(mesh_rpc_server *s, const char *path, mesh_rpc_handler_fn fn, void *ud) {
  if (!s || !path || path[0] != '/' || !fn) return MESH_ERR_INVALID;
  for (size_t i = 0; i < s->nroutes; i++) {
    if (strcmp(s->routes[i].path, path) == 0) {
      s->routes[i].fn = fn;
      s->routes[i].ud = ud;
      return 0;
    }
  }
  char *p = mesh__strdup(s->ctx, path);
  if (!p) return MESH_ERR_NOMEM;
  route *r = mesh__realloc(s->ctx, s->routes, (s->nroutes + 1) * sizeof *r);
  if (!r) {
    mesh__free(s->ctx, p);
    return MESH_ERR_NOMEM;
  }
  s->routes = r;
  r[s->nroutes++] = (route){p, fn, ud};
  return 0;
}

/* ---- Calls --------------------------------------------------------------- */

static void call_free(mesh_rpc_call *c) {
  if (c->req_timer) event_free(c->req_timer);
  if (c->out) evbuffer_free(c->out);
  peer_unref(c->peer);
  mesh__free(c->ctx, c->path);
  mesh__free(c->ctx, c->body);
  mesh__free(c->ctx, c);
}

static void list_unlink(mesh_rpc_call **head, mesh_rpc_call *c) {
  if (c->prev) c->prev->next = c->next;
  else *head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

static void list_push(mesh_rpc_call **head, mesh_rpc_call *c) {
  c->prev = NULL;
  c->next = *head;
  if (*head) (*head)->prev = c;
  *head = c;
}

static void notify_remove(mesh_rpc_server *s, mesh_rpc_call *c) {
  if (!c->queued) return;
  for (mesh_rpc_call **pp = &s->notify; *pp; pp = &(*pp)->notify_next) {
    if (*pp == c) {
      *pp = c->notify_next;
      break;
    }
  }
  c->queued = 0;
}

static void notify_queue(mesh_rpc_call *c) {
  if (c->queued || c->closed_cb || !c->on_close) return;
  c->queued = 1;
  c->notify_next = c->srv->notify;
  c->srv->notify = c;
  event_active(c->srv->notify_ev, 0, 0);
}

/* Close callbacks run here, from the loop, so that a stream reset inside
 * mesh_rpc_send never calls back into the application re-entrantly. */
static void notify_run(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  mesh_rpc_server *s = arg;
  while (s->notify) {
    mesh_rpc_call *c = s->notify;
    s->notify = c->notify_next;
    c->queued = 0;
    if (c->on_close && !c->closed_cb) {
      c->closed_cb = 1;
      c->on_close(c->close_ud, c); /* may finish (free) c */
    }
  }
}

/* The stream is gone: the call either dies with it or becomes an orphan the
 * application still holds. */
static void call_detach(mesh_rpc_call *c) {
  sconn *k = c->conn;
  list_unlink(&k->calls, c);
  k->nstreams--;
  c->conn = NULL;
  if (c->req_timer) event_del(c->req_timer);
  if (c->app) {
    list_push(&c->srv->orphans, c);
    notify_queue(c);
  } else {
    call_free(c);
  }
}

static void sconn_schedule(sconn *k) {
  if (k) event_active(k->flush_ev, 0, 0);
}

static ssize_t call_read(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)h2;
  (void)sid;
  (void)ud;
  mesh_rpc_call *c = src->ptr;
  int n = evbuffer_remove(c->out, buf, len);
  if (n < 0) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (evbuffer_get_length(c->out) == 0) {
    if (c->eof) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
      c->deferred = 1;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return n;
}

/* Submit response HEADERS (and the body in c->out, ended when eof). */
static int call_respond(mesh_rpc_call *c, int status, const char *ctype, int with_body) {
  char st[4], clen[24];
  nghttp2_nv nv[3];
  size_t n = 0;
#define NV(nm, val) \
  nv[n++] = (nghttp2_nv) { (uint8_t *)(nm), (uint8_t *)(val), strlen(nm), strlen(val), 0 }
  NV(":status", status_text(status, st));
  NV("content-type", ctype);
  if (c->eof) {
    snprintf(clen, sizeof clen, "%zu", evbuffer_get_length(c->out));
    NV("content-length", clen);
  }
#undef NV
  nghttp2_data_provider prd = {.source.ptr = c, .read_callback = call_read};
  int rv = nghttp2_submit_response(c->conn->h2, c->sid, nv, n, with_body ? &prd : NULL);
  if (rv) return rv == NGHTTP2_ERR_NOMEM ? MESH_ERR_NOMEM : MESH_ERR_CLOSED;
  c->answered = 1;
  sconn_schedule(c->conn);
  return 0;
}

static int error_body(struct evbuffer *b, const char *code, const char *msg) {
  if (evbuffer_add_printf(b, "{\"error\":{\"code\":\"") < 0 || json_escape(b, code ? code : "") ||
      evbuffer_add_printf(b, "\",\"message\":\"") < 0 || json_escape(b, msg ? msg : "") ||
      evbuffer_add_printf(b, "\"}}") < 0)
    return MESH_ERR_NOMEM;
  return 0;
}

/* An answer of the server's own (404, 405, 408, 413): the request body is
 * ignored from now on. The request timer stays armed for a client that
 * never finishes sending it. */
static void call_reject(mesh_rpc_call *c, int status, const char *code, const char *msg) {
  c->rejected = 1;
  c->eof = 1;
  if (error_body(c->out, code, msg) || call_respond(c, status, "application/json", 1))
    nghttp2_submit_rst_stream(c->conn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
  sconn_schedule(c->conn);
}

static void call_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  mesh_rpc_call *c = arg;
  if (!c->conn || c->app) return;
  if (!c->rejected) {
    call_reject(c, 408, MESH_RPC_CODE_UNAVAILABLE, "request not received in time");
  } else if (nghttp2_session_get_stream_remote_close(c->conn->h2, c->sid) == 0) {
    /* Answered long ago and the client still holds the stream open: free
     * the slot. (Not at once after the answer: RFC 9113 allows RST_STREAM
     * NO_ERROR there, but curl reports it as a failed transfer.) */
    nghttp2_submit_rst_stream(c->conn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_NO_ERROR);
    sconn_schedule(c->conn);
  }
}

const char *mesh_rpc_call_path(const mesh_rpc_call *c) { return c ? c->path : NULL; }

const char *mesh_rpc_call_body(const mesh_rpc_call *c, size_t *len) {
  if (!c) return NULL;
  if (len) *len = c->body_len;
  return c->body ? c->body : "";
}

const char *mesh_rpc_call_peer_identity(const mesh_rpc_call *c) {
  return c && c->peer ? c->peer->dns : NULL;
}

const mesh_identity *mesh_rpc_call_peer(const mesh_rpc_call *c) {
  return c && c->peer ? c->peer->id : NULL;
}

const char *mesh_rpc_call_peer_address(const mesh_rpc_call *c) {
  return c && c->peer ? c->peer->addr : NULL;
}

int mesh_rpc_call_on_close(mesh_rpc_call *c, mesh_rpc_close_fn fn, void *ud) {
  if (!c) return MESH_ERR_INVALID;
  c->on_close = fn;
  c->close_ud = ud;
  if (!fn) notify_remove(c->srv, c);
  else if (!c->conn) notify_queue(c);
  return 0;
}

int mesh_rpc_call_open(const mesh_rpc_call *c) { return c && c->conn && !c->reset; }

size_t mesh_rpc_call_buffered(const mesh_rpc_call *c) {
  return c && c->out ? evbuffer_get_length(c->out) : 0;
}

/* The application is done with c: free it now if its stream is gone. */
static int call_finish(mesh_rpc_call *c) {
  c->app = 0;
  if (c->conn) return c->reset ? MESH_ERR_CLOSED : 0;
  notify_remove(c->srv, c);
  list_unlink(&c->srv->orphans, c);
  call_free(c);
  return MESH_ERR_CLOSED;
}

static int reply_with(mesh_rpc_call *c, int status, int (*fill)(mesh_rpc_call *, const void *),
                      const void *arg) {
  if (!c || status < 100 || status > 599 || c->answered) return MESH_ERR_INVALID;
  if (!c->conn || c->reset) return call_finish(c);
  c->eof = 1;
  int rc = fill(c, arg);
  if (!rc) rc = call_respond(c, status, "application/json", evbuffer_get_length(c->out) > 0);
  if (rc) {
    nghttp2_submit_rst_stream(c->conn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
    c->reset = 1;
    sconn_schedule(c->conn);
  }
  int frc = call_finish(c);
  return rc ? rc : frc;
}

static int fill_json(mesh_rpc_call *c, const void *json) {
  return json && evbuffer_add(c->out, json, strlen(json)) ? MESH_ERR_NOMEM : 0;
}

int mesh_rpc_reply(mesh_rpc_call *c, int status, const char *json) {
  return reply_with(c, status, fill_json, json);
}

typedef struct {
  const char *code, *msg;
} err_arg;

static int fill_error(mesh_rpc_call *c, const void *arg) {
  const err_arg *e = arg;
  return error_body(c->out, e->code, e->msg);
}

int mesh_rpc_reply_error(mesh_rpc_call *c, int status, const char *code, const char *message) {
  if (status < 400 || !code) return MESH_ERR_INVALID;
  err_arg e = {code, message};
  return reply_with(c, status, fill_error, &e);
}

int mesh_rpc_send_n(mesh_rpc_call *c, const char *json, size_t len) {
  if (!c || !json || memchr(json, '\n', len) || (c->answered && !c->streaming) || c->eof)
    return MESH_ERR_INVALID;
  if (!c->conn || c->reset) return MESH_ERR_CLOSED;
  if (evbuffer_get_length(c->out) + len + 1 > c->srv->lim[MESH_RPC_LIMIT_OUTBOUND]) {
    nghttp2_submit_rst_stream(c->conn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_CANCEL);
    c->reset = 1;
    sconn_schedule(c->conn);
    return MESH_ERR_LIMIT;
  }
  if (evbuffer_expand(c->out, len + 1) || evbuffer_add(c->out, json, len) ||
      evbuffer_add(c->out, "\n", 1))
    return MESH_ERR_NOMEM;
  if (!c->answered) {
    c->streaming = 1;
    int rc = call_respond(c, 200, "application/x-ndjson", 1);
    if (rc) return rc;
  } else if (c->deferred) {
    c->deferred = 0;
    nghttp2_session_resume_data(c->conn->h2, c->sid);
  }
  sconn_schedule(c->conn);
  return 0;
}

int mesh_rpc_send(mesh_rpc_call *c, const char *json) {
  return json ? mesh_rpc_send_n(c, json, strlen(json)) : MESH_ERR_INVALID;
}

int mesh_rpc_end(mesh_rpc_call *c) {
  if (!c) return MESH_ERR_INVALID;
  if (c->conn && !c->reset && !c->eof) {
    c->eof = 1;
    if (!c->answered) {
      c->streaming = 1;
      if (call_respond(c, 200, "application/x-ndjson", 0)) {
        nghttp2_submit_rst_stream(c->conn->h2, NGHTTP2_FLAG_NONE, c->sid, NGHTTP2_INTERNAL_ERROR);
        c->reset = 1;
      }
    } else if (c->deferred) {
      c->deferred = 0;
      nghttp2_session_resume_data(c->conn->h2, c->sid);
    }
    sconn_schedule(c->conn);
  }
  return call_finish(c);
}

/* ---- Server connections -------------------------------------------------- */

static void sconn_free(sconn *k) {
  mesh_rpc_server *s = k->srv;
  while (k->calls) call_detach(k->calls);
  if (k->h2) nghttp2_session_del(k->h2);
  if (k->flush_ev) event_free(k->flush_ev);
  if (k->idle_ev) event_free(k->idle_ev);
  if (k->tls) mesh_tls_conn_free(k->tls);
  else if (k->bev) bufferevent_free(k->bev);
  peer_unref(k->peer);
  if (k->prev) k->prev->next = k->next;
  else s->conns = k->next;
  if (k->next) k->next->prev = k->prev;
  s->nconns--;
  mesh__free(s->ctx, k);
}

/* Close once what is queued has been written (bounded by DRAIN_MS). */
static void sconn_drain(sconn *k) {
  if (k->draining) return;
  k->draining = 1;
  bufferevent_disable(k->bev, EV_READ);
  bufferevent_setwatermark(k->bev, EV_WRITE, 0, 0);
  timer_ms(k->idle_ev, DRAIN_MS);
  if (evbuffer_get_length(bufferevent_get_output(k->bev)) == 0) event_active(k->flush_ev, 0, 0);
}

static void sconn_idle_arm(sconn *k) {
  uint64_t ms = k->srv->lim[MESH_RPC_LIMIT_IDLE_MS];
  if (k->draining) return;
  if (k->nstreams == 0 && ms) timer_ms(k->idle_ev, ms);
  else event_del(k->idle_ev);
}

/* Write what nghttp2 has; close when the session is over. Returns 1 if k is gone. */
static int sconn_flush(sconn *k) {
  if (k->draining) {
    if (evbuffer_get_length(bufferevent_get_output(k->bev)) > 0) return 0;
    if (k->tls) {
      /* The TLS layer sends close_notify and frees itself once flushed. */
      mesh_tls_conn *t = k->tls;
      k->tls = NULL;
      k->bev = NULL;
      sconn_free(k);
      mesh_tls_conn_close(t);
    } else {
      sconn_free(k);
    }
    return 1;
  }
  if (h2_send(k->h2, k->bev) < 0) {
    sconn_free(k);
    return 1;
  }
  if (!nghttp2_session_want_read(k->h2) && !nghttp2_session_want_write(k->h2)) sconn_drain(k);
  return 0;
}

static void sconn_flush_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  sconn_flush(arg);
}

static void sconn_idle_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  sconn *k = arg;
  if (k->draining) { /* the drain deadline */
    sconn_free(k);
    return;
  }
  nghttp2_session_terminate_session(k->h2, NGHTTP2_NO_ERROR);
  sconn_flush(k);
}

static int never_stop(void *arg) {
  (void)arg;
  return 0;
}

static void sconn_read_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  sconn *k = arg;
  if (k->draining) {
    struct evbuffer *in = bufferevent_get_input(k->bev);
    evbuffer_drain(in, evbuffer_get_length(in));
    return;
  }
  if (h2_recv(k->h2, k->bev, never_stop, NULL) < 0) {
    /* Not HTTP/2 at all (bad preface) or a fatal session error: say GOAWAY
     * if nghttp2 still can, then go. */
    nghttp2_session_terminate_session(k->h2, NGHTTP2_PROTOCOL_ERROR);
    h2_send(k->h2, k->bev);
    sconn_drain(k);
    return;
  }
  sconn_flush(k);
}

static void sconn_write_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  sconn_flush(arg);
}

static void sconn_event_cb(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  sconn *k = arg;
  if (what & BEV_EVENT_CONNECTED) {
    if (k->tls) {
      const char *alpn = mesh_tls_conn_alpn(k->tls);
      if (alpn && strcmp(alpn, "h2") != 0) { /* http/1.1 has nothing to say here */
        sconn_free(k);
        return;
      }
      const char *dns = mesh_tls_conn_peer_identity(k->tls);
      if (dns) {
        k->peer->dns = mesh__strdup(k->srv->ctx, dns);
        if (!k->peer->dns ||
            mesh_identity_parse(k->srv->ctx, dns, NULL, NULL, &k->peer->id) != 0) {
          sconn_free(k);
          return;
        }
      }
    }
    return;
  }
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) sconn_free(k);
}

/* nghttp2 callbacks (server) */

static int s_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  sconn *k = ud;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  mesh_rpc_server *s = k->srv;
  mesh_rpc_call *c = mesh__calloc(s->ctx, 1, sizeof *c);
  if (!c) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  c->ctx = s->ctx;
  c->srv = s;
  c->conn = k;
  c->sid = f->hd.stream_id;
  c->out = evbuffer_new();
  if (s->lim[MESH_RPC_LIMIT_REQUEST_MS]) c->req_timer = evtimer_new(s->base, call_timeout, c);
  if (!c->out || (s->lim[MESH_RPC_LIMIT_REQUEST_MS] && !c->req_timer)) {
    call_free(c);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  c->peer = k->peer;
  k->peer->refs++;
  list_push(&k->calls, c);
  k->nstreams++;
  nghttp2_session_set_stream_user_data(h2, c->sid, c);
  if (c->req_timer) timer_ms(c->req_timer, s->lim[MESH_RPC_LIMIT_REQUEST_MS]);
  event_del(k->idle_ev);
  return 0;
}

static int s_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                    const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)flags;
  sconn *k = ud;
  mesh_rpc_call *c = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
  if (!c || c->rejected) return 0;
  c->hdr_bytes += nlen + vlen + 32;
  if (c->hdr_bytes > k->srv->lim[MESH_RPC_LIMIT_HEADER_LIST])
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
    if (c->path || vlen > PATH_MAX_LEN) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    c->path = mesh__strndup(c->ctx, (const char *)value, vlen);
    if (!c->path) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  } else if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
    c->post = vlen == 4 && memcmp(value, "POST", 4) == 0;
  }
  return 0;
}

static void call_dispatch(mesh_rpc_call *c) {
  if (c->rejected || c->app || c->answered) return;
  if (c->req_timer) event_del(c->req_timer);
  if (!c->body) {
    c->body = mesh__strdup(c->ctx, "");
    if (!c->body) {
      call_reject(c, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
      return;
    }
  }
  c->app = 1;
  c->fn(c->fn_ud, c);
}

static int s_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  sconn *k = ud;
  if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) return 0;
  mesh_rpc_call *c = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
  if (!c) return 0;
  if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST && !c->rejected) {
    mesh_rpc_server *s = k->srv;
    if (!c->post) {
      call_reject(c, 405, MESH_RPC_CODE_INVALID_ARGUMENT, "only POST is allowed");
      return 0;
    }
    for (size_t i = 0; c->path && i < s->nroutes; i++) {
      if (strcmp(s->routes[i].path, c->path) == 0) {
        c->fn = s->routes[i].fn;
        c->fn_ud = s->routes[i].ud;
      }
    }
    if (!c->fn) {
      call_reject(c, 404, MESH_RPC_CODE_NOT_FOUND, "no such method");
      return 0;
    }
  }
  if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) call_dispatch(c);
  return 0;
}

static int s_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data,
                        size_t len, void *ud) {
  (void)flags;
  sconn *k = ud;
  mesh_rpc_call *c = nghttp2_session_get_stream_user_data(h2, sid);
  if (!c || c->rejected || c->app || c->answered) return 0;
  uint64_t max = k->srv->lim[MESH_RPC_LIMIT_BODY];
  if (c->body_len + len > max) {
    call_reject(c, 413, MESH_RPC_CODE_RESOURCE_EXHAUSTED, "request body too large");
    return 0;
  }
  if (c->body_len + len + 1 > c->body_cap) {
    size_t cap = c->body_cap ? c->body_cap : 1024;
    while (cap < c->body_len + len + 1) cap *= 2;
    if (cap > max + 1) cap = (size_t)max + 1;
    char *b = mesh__realloc(c->ctx, c->body, cap);
    if (!b) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    c->body = b;
    c->body_cap = cap;
  }
  memcpy(c->body + c->body_len, data, len);
  c->body_len += len;
  c->body[c->body_len] = '\0';
  return 0;
}

static int s_stream_close(nghttp2_session *h2, int32_t sid, uint32_t err, void *ud) {
  (void)err;
  sconn *k = ud;
  mesh_rpc_call *c = nghttp2_session_get_stream_user_data(h2, sid);
  if (!c) return 0;
  call_detach(c);
  sconn_idle_arm(k);
  return 0;
}

static nghttp2_session_callbacks *server_callbacks(void) {
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb)) return NULL;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, s_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, s_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, s_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, s_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, s_stream_close);
  return cb;
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg) {
  (void)l;
  (void)salen;
  mesh_rpc_server *s = arg;
  if (s->nconns >= s->lim[MESH_RPC_LIMIT_CONNECTIONS]) {
    evutil_closesocket(fd);
    return;
  }
  no_delay(fd);
  sconn *k = mesh__calloc(s->ctx, 1, sizeof *k);
  peer *p = mesh__calloc(s->ctx, 1, sizeof *p);
  nghttp2_session_callbacks *cb = server_callbacks();
  mesh_tls_config *cfg = s->creds ? mesh_tls_creds_get(s->creds)
                                  : (s->tls ? mesh_tls_config_ref(s->tls) : NULL);
  int ok = k && p && cb && (cfg || (!s->creds && !s->tls));
  if (ok) {
    k->srv = s;
    k->peer = p;
    p->ctx = s->ctx;
    p->refs = 1;
    format_addr(sa, p->addr, sizeof p->addr);
    k->next = s->conns;
    if (s->conns) s->conns->prev = k;
    s->conns = k;
    s->nconns++;
    if (cfg) {
      ok = mesh_tls_conn_server_fd(cfg, s->base, fd, s->client_auth, &k->tls) == 0;
      fd = -1; /* the TLS connection owns it now, also on failure */
      if (ok) k->bev = mesh_tls_conn_bev(k->tls);
    } else {
      k->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
      if (k->bev) fd = -1;
      ok = k->bev != NULL;
    }
  }
  mesh_tls_config_unref(cfg);
  nghttp2_mem mem = {s->ctx, h2_malloc, h2_free, h2_calloc, h2_realloc};
  nghttp2_option *opt = NULL;
  if (ok) ok = nghttp2_option_new(&opt) == 0;
  if (ok) {
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    ok = nghttp2_session_server_new3(&k->h2, cb, k, opt, &mem) == 0;
  }
  nghttp2_option_del(opt);
  if (ok) {
    k->flush_ev = event_new(s->base, -1, 0, sconn_flush_cb, k);
    k->idle_ev = evtimer_new(s->base, sconn_idle_cb, k);
    ok = k->flush_ev && k->idle_ev;
  }
  if (ok) {
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)s->lim[MESH_RPC_LIMIT_STREAMS]},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)s->lim[MESH_RPC_LIMIT_HEADER_LIST]},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    ok = nghttp2_submit_settings(k->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) == 0;
  }
  if (cb) nghttp2_session_callbacks_del(cb);
  if (!ok) {
    if (fd >= 0) evutil_closesocket(fd);
    if (k && k->srv) sconn_free(k); /* takes the peer with it */
    else {
      mesh__free(s->ctx, k);
      mesh__free(s->ctx, p);
    }
    return;
  }
  bufferevent_setcb(k->bev, sconn_read_cb, sconn_write_cb, sconn_event_cb, k);
  bufferevent_setwatermark(k->bev, EV_WRITE, OUT_HIGH / 2, 0);
  bufferevent_enable(k->bev, EV_READ | EV_WRITE);
  sconn_idle_arm(k);
  sconn_flush(k);
}

int mesh_rpc_server_listen(mesh_rpc_server *s, const char *addr, uint16_t *ret_port) {
  if (!s || !addr) return MESH_ERR_INVALID;
  struct sockaddr_storage ss;
  socklen_t len;
  int rc = parse_addr(addr, 1, &ss, &len);
  if (rc) return rc;
  struct evconnlistener **ls =
      mesh__realloc(s->ctx, s->listeners, (s->nlisteners + 1) * sizeof *ls);
  if (!ls) return MESH_ERR_NOMEM;
  s->listeners = ls;
  struct evconnlistener *l =
      evconnlistener_new_bind(s->base, accept_cb, s,
                              LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                              128, (struct sockaddr *)&ss, (int)len);
  if (!l) return MESH_ERR_IO;
  if (ret_port) {
    struct sockaddr_storage b;
    socklen_t blen = sizeof b;
    if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&b, &blen)) {
      evconnlistener_free(l);
      return MESH_ERR_IO;
    }
    *ret_port = ntohs(b.ss_family == AF_INET ? ((struct sockaddr_in *)&b)->sin_port
                                             : ((struct sockaddr_in6 *)&b)->sin6_port);
  }
  ls[s->nlisteners++] = l;
  return 0;
}

void mesh_rpc_server_free(mesh_rpc_server *s) {
  if (!s) return;
  for (size_t i = 0; i < s->nlisteners; i++) evconnlistener_free(s->listeners[i]);
  s->nlisteners = 0;
  while (s->conns) sconn_free(s->conns);
  /* Every unfinished call is an orphan now: tell it, then release it. */
  for (mesh_rpc_call *c = s->orphans; c; c = c->next) notify_queue(c);
  notify_run(-1, 0, s);
  while (s->orphans) {
    mesh_rpc_call *c = s->orphans;
    list_unlink(&s->orphans, c);
    call_free(c);
  }
  event_free(s->notify_ev);
  for (size_t i = 0; i < s->nroutes; i++) mesh__free(s->ctx, s->routes[i].path);
  mesh__free(s->ctx, s->routes);
  mesh__free(s->ctx, s->listeners);
  mesh_tls_config_unref(s->tls);
  mesh__free(s->ctx, s);
}

/* ==== Client ============================================================== */

typedef struct cconn cconn;
typedef struct mesh_rpc_stream creq;

enum { C_TCP, C_TLS, C_READY, C_DEAD };

struct mesh_rpc_client {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_tls_config *tls;
  char *addr, *expected;
  struct sockaddr_storage sa;
  socklen_t salen;
  cconn *conn;  /* the one new calls go to */
  cconn *conns; /* all, including draining and dead ones */
  int depth;    /* nesting of entries from the loop or the API */
  int dead;
};

struct cconn {
  mesh_rpc_client *cl;
  cconn *next;
  struct bufferevent *tcp, *bev;
  mesh_tls_conn *tls;
  nghttp2_session *h2;
  struct event *flush_ev, *connect_ev;
  creq *reqs;
  int state;
  int goaway;
  int fail_code; /* set when a failure must be reported from the loop */
  const char *fail_why;
};

/* A unary call or a stream. nghttp2 never holds a pointer to one: callbacks
 * find it by stream id, so that it can be released at any time. */
struct mesh_rpc_stream {
  mesh_rpc_client *cl;
  cconn *conn;
  creq *next;
  int32_t sid;
  int stream;
  char *path;
  char *body;
  size_t body_len, body_off;
  int status;
  struct evbuffer *in;
  struct event *timer;
  mesh_rpc_reply_fn on_reply;
  mesh_rpc_message_fn on_message;
  mesh_rpc_end_fn on_end;
  void *ud;
  int done; /* callbacks are over: waiting to be reaped */
  int retries;
  char code[64];
};

static void cl_enter(mesh_rpc_client *cl) { cl->depth++; }
static void cl_leave(mesh_rpc_client *cl);

static creq *req_find(cconn *k, int32_t sid) {
  for (creq *r = k->reqs; r; r = r->next)
    if (r->sid == sid && !r->done) return r;
  return NULL;
}

static void cconn_schedule(cconn *k) {
  if (k && k->state != C_DEAD) event_active(k->flush_ev, 0, 0);
}

/* End a request: its last callback (unless cancelled: cb 0), and a reset of
 * its stream if it may still be open. */
static void req_done(creq *r, int cb, int status, const char *body, size_t len, const char *err,
                     int rst) {
  if (r->done) return;
  r->done = 1;
  if (r->timer) event_del(r->timer);
  cconn *k = r->conn;
  if (rst && k && k->state != C_DEAD && r->sid > 0) {
    nghttp2_submit_rst_stream(k->h2, NGHTTP2_FLAG_NONE, r->sid, NGHTTP2_CANCEL);
    cconn_schedule(k);
  }
  if (!cb) return;
  if (r->stream) {
    if (r->on_end) r->on_end(r->ud, status, err);
  } else if (r->on_reply) {
    r->on_reply(r->ud, status, body, len, err);
  }
}

static void req_fail(creq *r, int code, const char *why) { req_done(r, 1, code, NULL, 0, why, 1); }

static void req_free(mesh_ctx *ctx, creq *r) {
  if (r->timer) event_free(r->timer);
  if (r->in) evbuffer_free(r->in);
  mesh__free(ctx, r->path);
  mesh__free(ctx, r->body);
  mesh__free(ctx, r);
}

static void cconn_release(cconn *k) {
  if (k->h2) nghttp2_session_del(k->h2);
  if (k->flush_ev) event_free(k->flush_ev);
  if (k->connect_ev) event_free(k->connect_ev);
  if (k->tls) mesh_tls_conn_free(k->tls);
  else if (k->tcp) bufferevent_free(k->tcp);
  mesh__free(k->cl->ctx, k);
}

/* Mark k dead and report code to its pending requests. Memory goes at the
 * next reap, since we may be inside one of nghttp2's callbacks. */
static void cconn_fail(cconn *k, int code, const char *why) {
  if (k->state == C_DEAD) return;
  k->state = C_DEAD;
  mesh_rpc_client *cl = k->cl;
  if (cl->conn == k) cl->conn = NULL;
  if (k->bev) bufferevent_disable(k->bev, EV_READ | EV_WRITE);
  if (k->tcp) bufferevent_disable(k->tcp, EV_READ | EV_WRITE);
  event_del(k->flush_ev);
  event_del(k->connect_ev);
  for (;;) { /* callbacks may add or cancel requests: rescan each time */
    creq *r = k->reqs;
    while (r && r->done) r = r->next;
    if (!r) break;
    req_done(r, 1, code, NULL, 0, why, 0);
  }
}

/* Free what is finished; the client itself when freed. Only at depth 0. */
static void cl_reap(mesh_rpc_client *cl) {
  for (cconn **kp = &cl->conns; *kp;) {
    cconn *k = *kp;
    for (creq **rp = &k->reqs; *rp;) {
      creq *r = *rp;
      if (r->done) {
        *rp = r->next;
        req_free(cl->ctx, r);
      } else {
        rp = &r->next;
      }
    }
    /* A connection that lost its place as the current one closes when its
     * last stream ends. */
    if (k->state != C_DEAD && k != cl->conn && !k->reqs) cconn_fail(k, MESH_ERR_CLOSED, "closed");
    if (k->state == C_DEAD && !k->reqs) {
      *kp = k->next;
      cconn_release(k);
    } else {
      kp = &k->next;
    }
  }
  if (cl->dead && !cl->conns) {
    mesh_tls_config_unref(cl->tls);
    mesh__free(cl->ctx, cl->addr);
    mesh__free(cl->ctx, cl->expected);
    mesh__free(cl->ctx, cl);
  }
}

static void cl_leave(mesh_rpc_client *cl) {
  if (--cl->depth == 0) cl_reap(cl);
}

static void cconn_flush(cconn *k) {
  if (k->state == C_DEAD) return;
  if (k->fail_code) {
    cconn_fail(k, k->fail_code, k->fail_why);
    return;
  }
  if (k->state != C_READY) return;
  if (h2_send(k->h2, k->bev) < 0) {
    cconn_fail(k, MESH_ERR_CLOSED, "HTTP/2 session failed");
    return;
  }
  if (!nghttp2_session_want_read(k->h2) && !nghttp2_session_want_write(k->h2))
    cconn_fail(k, MESH_ERR_CLOSED, "connection closed by the server");
}

static void cconn_flush_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  cconn_flush(k);
  cl_leave(cl);
}

static int cconn_stopped(void *arg) { return ((cconn *)arg)->state == C_DEAD; }

static void cconn_read_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  if (k->state == C_READY) {
    if (h2_recv(k->h2, k->bev, cconn_stopped, k) < 0)
      cconn_fail(k, MESH_ERR_PARSE, "the server broke the HTTP/2 protocol");
    else
      cconn_flush(k);
  }
  cl_leave(cl);
}

static void cconn_write_cb(struct bufferevent *bev, void *arg) {
  (void)bev;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  cconn_flush(k);
  cl_leave(cl);
}

static void cconn_ready(cconn *k) {
  k->state = C_READY;
  event_del(k->connect_ev);
  bufferevent_setcb(k->bev, cconn_read_cb, cconn_write_cb, NULL, k);
  bufferevent_setwatermark(k->bev, EV_WRITE, OUT_HIGH / 2, 0);
  bufferevent_enable(k->bev, EV_READ | EV_WRITE);
  cconn_flush(k);
}

static void cconn_tls_event_cb(struct bufferevent *bev, short what, void *arg);

static void cconn_event_after(cconn *k, short what) {
  if (what & BEV_EVENT_CONNECTED) return;
  if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
    cconn_fail(k, MESH_ERR_CLOSED, "connection closed");
}

static void cconn_plain_event_cb(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  if (k->state == C_TCP) {
    if (what & BEV_EVENT_CONNECTED) {
      no_delay(bufferevent_getfd(k->tcp));
      if (!cl->tls) {
        k->bev = k->tcp;
        cconn_ready(k);
        bufferevent_setcb(k->bev, cconn_read_cb, cconn_write_cb, cconn_plain_event_cb, k);
      } else {
        const char *why = "TLS setup failed";
        int rc = mesh_tls_conn_client(cl->tls, k->tcp, cl->expected, "h2", cl->addr, &why, &k->tls);
        if (rc) {
          cconn_fail(k, rc == MESH_ERR_NOMEM ? rc : MESH_ERR_TLS, why);
        } else {
          k->state = C_TLS;
          k->bev = mesh_tls_conn_bev(k->tls);
          bufferevent_setcb(k->bev, NULL, NULL, cconn_tls_event_cb, k);
        }
      }
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) {
      cconn_fail(k, MESH_ERR_CONNECT, "cannot connect to the server");
    }
  } else {
    cconn_event_after(k, what);
  }
  cl_leave(cl);
}

static void cconn_tls_event_cb(struct bufferevent *bev, short what, void *arg) {
  (void)bev;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  if (k->state == C_TLS) {
    if (what & BEV_EVENT_CONNECTED) {
      const char *alpn = mesh_tls_conn_alpn(k->tls);
      if (alpn && strcmp(alpn, "h2") != 0) {
        cconn_fail(k, MESH_ERR_TLS, "the server did not agree to HTTP/2 (ALPN)");
      } else {
        cconn_ready(k);
        bufferevent_setcb(k->bev, cconn_read_cb, cconn_write_cb, cconn_tls_event_cb, k);
      }
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_EOF | BEV_EVENT_TIMEOUT)) {
      const char *why = "TLS handshake failed";
      int rc = mesh_tls_conn_error(k->tls, &why);
      if (rc == 0 || rc == MESH_ERR_CLOSED) rc = MESH_ERR_TLS;
      if (rc == MESH_ERR_IO) rc = MESH_ERR_CONNECT;
      /* why lives with the TLS connection, which outlives the callbacks
       * (it is only freed at the reap, after them). */
      cconn_fail(k, rc, why && *why ? why : "TLS handshake failed");
    }
  } else {
    cconn_event_after(k, what);
  }
  cl_leave(cl);
}

static void cconn_connect_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  cconn *k = arg;
  mesh_rpc_client *cl = k->cl;
  cl_enter(cl);
  cconn_fail(k, MESH_ERR_CONNECT, "connect timed out");
  cl_leave(cl);
}

/* nghttp2 callbacks (client) */

static ssize_t req_read(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                        uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)h2;
  (void)src;
  creq *r = req_find(ud, sid);
  if (!r) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  size_t n = r->body_len - r->body_off;
  if (n > len) n = len;
  memcpy(buf, r->body + r->body_off, n);
  r->body_off += n;
  if (r->body_off == r->body_len) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static int c_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                    const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)h2;
  (void)flags;
  if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_RESPONSE) return 0;
  creq *r = req_find(ud, f->hd.stream_id);
  if (r && nlen == 7 && memcmp(name, ":status", 7) == 0 && vlen == 3) {
    r->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
  }
  return 0;
}

static int ok_status(int st) { return st >= 200 && st < 300; }

/* Hand complete lines to on_message; stops as soon as the request ends. */
static void req_lines(creq *r, int final) {
  for (;;) {
    if (r->done) return;
    struct evbuffer_ptr p = evbuffer_search(r->in, "\n", 1, NULL);
    size_t n;
    if (p.pos >= 0) n = (size_t)p.pos;
    else if (final && evbuffer_get_length(r->in) > 0) n = evbuffer_get_length(r->in);
    else return;
    if (n > MESH_RPC_CLIENT_LINE_MAX) {
      req_fail(r, MESH_ERR_LIMIT, "streamed line too long");
      return;
    }
    char *line = (char *)evbuffer_pullup(r->in, (ssize_t)(p.pos >= 0 ? n + 1 : n));
    if (!line) {
      req_fail(r, MESH_ERR_NOMEM, "out of memory");
      return;
    }
    /* A line of its own (NUL-terminated), so that the buffer may change
     * while the application looks at it. */
    char *copy = mesh__strndup(r->cl->ctx, line, n);
    evbuffer_drain(r->in, p.pos >= 0 ? n + 1 : n);
    if (!copy) {
      req_fail(r, MESH_ERR_NOMEM, "out of memory");
      return;
    }
    if (n > 0 && r->on_message) r->on_message(r->ud, copy, n);
    mesh__free(r->cl->ctx, copy);
  }
}

static int c_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data,
                        size_t len, void *ud) {
  (void)h2;
  (void)flags;
  creq *r = req_find(ud, sid);
  if (!r) return 0;
  if (evbuffer_add(r->in, data, len)) {
    req_fail(r, MESH_ERR_NOMEM, "out of memory");
    return 0;
  }
  if (r->stream && ok_status(r->status)) {
    req_lines(r, 0);
    if (!r->done && evbuffer_get_length(r->in) > MESH_RPC_CLIENT_LINE_MAX)
      req_fail(r, MESH_ERR_LIMIT, "streamed line too long");
  } else if (evbuffer_get_length(r->in) > MESH_RPC_CLIENT_BODY_MAX) {
    req_fail(r, MESH_ERR_LIMIT, "response body too large");
  }
  return 0;
}

static void req_complete(creq *r) {
  if (r->stream && ok_status(r->status)) {
    req_lines(r, 1);
    if (!r->done) req_done(r, 1, r->status, NULL, 0, NULL, 0);
    return;
  }
  size_t len = evbuffer_get_length(r->in);
  if (evbuffer_add(r->in, "", 1)) { /* the NUL the callback is promised */
    req_fail(r, MESH_ERR_NOMEM, "out of memory");
    return;
  }
  char *body = (char *)evbuffer_pullup(r->in, -1);
  const char *err = NULL;
  if (!ok_status(r->status)) {
    error_code_of(body, len, r->code, sizeof r->code);
    err = r->code;
  }
  /* An answer before the whole body went out (413): stop sending it. */
  req_done(r, 1, r->status, r->stream ? NULL : (body ? body : ""), r->stream ? 0 : len, err,
           r->body_off < r->body_len);
}

static int c_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)h2;
  cconn *k = ud;
  if (f->hd.type == NGHTTP2_GOAWAY) {
    /* No new streams here; the next call opens another connection. */
    k->goaway = 1;
    if (k->cl->conn == k) k->cl->conn = NULL;
    return 0;
  }
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    creq *r = req_find(k, f->hd.stream_id);
    if (r && r->status >= 200) req_complete(r);
  }
  return 0;
}

static int req_submit(cconn *k, creq *r);

static int c_stream_close(nghttp2_session *h2, int32_t sid, uint32_t err, void *ud) {
  (void)h2;
  cconn *k = ud;
  creq *r = req_find(k, sid);
  /* REFUSED_STREAM promises that the server did nothing with the request
   * (typically: sent before its SETTINGS lowered the stream limit), so it is
   * safe to send again; nghttp2 now queues it under the known limit. */
  if (r && err == NGHTTP2_REFUSED_STREAM && r->retries < 3 && !k->goaway && r->status == 0) {
    r->retries++;
    r->body_off = 0;
    evbuffer_drain(r->in, evbuffer_get_length(r->in));
    if (req_submit(k, r) == 0) return 0;
  }
  if (r) {
    r->sid = -1; /* gone: no reset needed */
    req_fail(r, MESH_ERR_CLOSED,
             err == NGHTTP2_REFUSED_STREAM ? "stream refused by the server"
                                           : "stream reset by the server");
  }
  return 0;
}

int mesh_rpc_client_new(mesh_ctx *ctx, struct event_base *base, mesh_tls_config *tls,
                        const char *addr, const char *expected, mesh_rpc_client **ret) {
  if (!ctx || !base || !addr || !ret || (!tls) != (!expected)) return MESH_ERR_INVALID;
  mesh_rpc_client *cl = mesh__calloc(ctx, 1, sizeof *cl);
  if (!cl) return MESH_ERR_NOMEM;
  int rc = parse_addr(addr, 0, &cl->sa, &cl->salen);
  if (rc) {
    mesh__free(ctx, cl);
    return rc;
  }
  if (expected) {
    mesh_identity *id;
    rc = mesh_identity_parse(ctx, expected, NULL, NULL, &id);
    if (rc) {
      mesh__free(ctx, cl);
      return rc;
    }
    mesh_identity_free(id);
  }
  cl->ctx = ctx;
  cl->base = base;
  cl->addr = mesh__strdup(ctx, addr);
  cl->expected = expected ? mesh__strdup(ctx, expected) : NULL;
  if (!cl->addr || (expected && !cl->expected)) {
    mesh__free(ctx, cl->addr);
    mesh__free(ctx, cl->expected);
    mesh__free(ctx, cl);
    return MESH_ERR_NOMEM;
  }
  cl->tls = tls ? mesh_tls_config_ref(tls) : NULL;
  *ret = cl;
  return 0;
}

int mesh_rpc_client_set_tls(mesh_rpc_client *cl, mesh_tls_config *cfg) {
  if (!cl || (!cfg) != (!cl->tls)) return MESH_ERR_INVALID;
  mesh_tls_config *old = cl->tls;
  cl->tls = mesh_tls_config_ref(cfg);
  mesh_tls_config_unref(old);
  return 0;
}

static nghttp2_session_callbacks *client_callbacks(void) {
  nghttp2_session_callbacks *cb;
  if (nghttp2_session_callbacks_new(&cb)) return NULL;
  nghttp2_session_callbacks_set_on_header_callback(cb, c_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_stream_close);
  return cb;
}

static int cconn_open(mesh_rpc_client *cl, cconn **ret) {
  cconn *k = mesh__calloc(cl->ctx, 1, sizeof *k);
  if (!k) return MESH_ERR_NOMEM;
  k->cl = cl;
  nghttp2_session_callbacks *cb = client_callbacks();
  nghttp2_mem mem = {cl->ctx, h2_malloc, h2_free, h2_calloc, h2_realloc};
  int rc = MESH_ERR_NOMEM;
  if (!cb || nghttp2_session_client_new3(&k->h2, cb, k, NULL, &mem)) goto fail;
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                 {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0}};
  if (nghttp2_submit_settings(k->h2, NGHTTP2_FLAG_NONE, iv, 2)) goto fail;
  k->flush_ev = event_new(cl->base, -1, 0, cconn_flush_cb, k);
  k->connect_ev = evtimer_new(cl->base, cconn_connect_timeout, k);
  if (!k->flush_ev || !k->connect_ev) goto fail;
  k->tcp = bufferevent_socket_new(cl->base, -1, BEV_OPT_CLOSE_ON_FREE);
  if (!k->tcp) goto fail;
  bufferevent_setcb(k->tcp, NULL, NULL, cconn_plain_event_cb, k);
  if (bufferevent_socket_connect(k->tcp, (struct sockaddr *)&cl->sa, (int)cl->salen)) {
    /* Reported from the loop like any other connect failure. */
    k->fail_code = MESH_ERR_CONNECT;
    k->fail_why = "cannot connect to the server";
    event_active(k->flush_ev, 0, 0);
  }
  timer_ms(k->connect_ev, MESH_RPC_CONNECT_TIMEOUT_MS);
  nghttp2_session_callbacks_del(cb);
  k->next = cl->conns;
  cl->conns = k;
  *ret = k;
  return 0;
fail:
  if (cb) nghttp2_session_callbacks_del(cb);
  cconn_release(k);
  return rc;
}

/* Send r's HEADERS and body on k (its stream id changes on a resubmission). */
static int req_submit(cconn *k, creq *r) {
  mesh_rpc_client *cl = k->cl;
  char clen[24];
  snprintf(clen, sizeof clen, "%zu", r->body_len);
  nghttp2_nv nv[] = {
#define NV(nm, val) {(uint8_t *)(nm), (uint8_t *)(val), strlen(nm), strlen(val), 0}
      NV(":method", "POST"),
      NV(":scheme", cl->tls ? "https" : "http"),
      NV(":authority", cl->addr),
      NV(":path", r->path),
      NV("content-type", "application/json"),
      NV("content-length", clen),
      NV("te", "trailers"),
#undef NV
  };
  nghttp2_data_provider prd = {.read_callback = req_read};
  int32_t sid = nghttp2_submit_request(k->h2, NULL, nv, sizeof nv / sizeof nv[0], &prd, NULL);
  if (sid < 0) return sid == NGHTTP2_ERR_NOMEM ? MESH_ERR_NOMEM : MESH_ERR_CLOSED;
  r->sid = sid;
  cconn_schedule(k);
  return 0;
}

static void req_timeout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  creq *r = arg;
  mesh_rpc_client *cl = r->cl;
  cl_enter(cl);
  req_fail(r, MESH_ERR_TIMEOUT, "no answer in time");
  cl_leave(cl);
}

static int start(mesh_rpc_client *cl, const char *path, const char *body, size_t len,
                 uint32_t timeout_ms, int stream, mesh_rpc_reply_fn on_reply,
                 mesh_rpc_message_fn on_message, mesh_rpc_end_fn on_end, void *ud, creq **ret) {
  if (!cl || !path || path[0] != '/' || (!body && len)) return MESH_ERR_INVALID;
  if (cl->dead) return MESH_ERR_CLOSED;
  if (len > REQUEST_BODY_MAX || strlen(path) > PATH_MAX_LEN) return MESH_ERR_LIMIT;
  creq *r = mesh__calloc(cl->ctx, 1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->cl = cl;
  r->stream = stream;
  r->on_reply = on_reply;
  r->on_message = on_message;
  r->on_end = on_end;
  r->ud = ud;
  r->sid = -1;
  r->path = mesh__strdup(cl->ctx, path);
  r->body = mesh__malloc(cl->ctx, len ? len : 1);
  r->in = evbuffer_new();
  if (timeout_ms) r->timer = evtimer_new(cl->base, req_timeout, r);
  if (!r->path || !r->body || !r->in || (timeout_ms && !r->timer)) {
    req_free(cl->ctx, r);
    return MESH_ERR_NOMEM;
  }
  if (len) memcpy(r->body, body, len);
  r->body_len = len;
  cl_enter(cl);
  int rc = 0;
  if (cl->conn && (cl->conn->goaway || cl->conn->state == C_DEAD)) cl->conn = NULL;
  if (!cl->conn) rc = cconn_open(cl, &cl->conn);
  if (rc) {
    req_free(cl->ctx, r);
    cl_leave(cl);
    return rc;
  }
  cconn *k = cl->conn;
  rc = req_submit(k, r);
  if (rc) {
    req_free(cl->ctx, r);
    cl_leave(cl);
    return rc;
  }
  r->conn = k;
  r->next = k->reqs;
  k->reqs = r;
  if (r->timer) timer_ms(r->timer, timeout_ms);
  cconn_schedule(k);
  if (ret) *ret = r;
  cl_leave(cl);
  return 0;
}

int mesh_rpc_client_call(mesh_rpc_client *cl, const char *path, const char *body, size_t len,
                         uint32_t timeout_ms, mesh_rpc_reply_fn on_reply, void *ud) {
  if (!on_reply) return MESH_ERR_INVALID;
  return start(cl, path, body, len, timeout_ms, 0, on_reply, NULL, NULL, ud, NULL);
}

int mesh_rpc_client_stream(mesh_rpc_client *cl, const char *path, const char *body, size_t len,
                           mesh_rpc_message_fn on_message, mesh_rpc_end_fn on_end, void *ud,
                           mesh_rpc_stream **ret) {
  if (!on_message || !on_end) return MESH_ERR_INVALID;
  return start(cl, path, body, len, 0, 1, NULL, on_message, on_end, ud, ret);
}

void mesh_rpc_stream_cancel(mesh_rpc_stream *r) {
  if (!r || r->done) return;
  mesh_rpc_client *cl = r->cl;
  cl_enter(cl);
  req_done(r, 0, 0, NULL, 0, NULL, 1);
  cl_leave(cl);
}

uint32_t mesh_rpc_client_pending(const mesh_rpc_client *cl) {
  uint32_t n = 0;
  if (!cl) return 0;
  for (const cconn *k = cl->conns; k; k = k->next)
    for (const creq *r = k->reqs; r; r = r->next) n += !r->done;
  return n;
}

void mesh_rpc_client_free(mesh_rpc_client *cl) {
  if (!cl || cl->dead) return;
  cl_enter(cl);
  cl->dead = 1;
  cl->conn = NULL;
  for (cconn *k = cl->conns; k; k = k->next) cconn_fail(k, MESH_ERR_CLOSED, "client freed");
  cl_leave(cl);
}

/* ==== Blocking convenience ================================================== */

typedef struct {
  struct event_base *base;
  mesh_ctx *ctx;
  int done, rc, status;
  char *body;
  const char *why;
} sync_state;

/* The reason of a failed mesh_rpc_call_sync outlives the client it came
 * from (a TLS reason lives with its connection), one per thread. */
static _Thread_local char sync_why[256];

static void sync_reply(void *ud, int status, const char *body, size_t len, const char *err) {
  sync_state *st = ud;
  st->done = 1;
  if (status < 0) {
    st->rc = status;
    snprintf(sync_why, sizeof sync_why, "%s", err ? err : mesh_strerror(status));
    st->why = sync_why;
  } else {
    st->status = status;
    st->body = mesh__strndup(st->ctx, body ? body : "", len);
    if (!st->body) {
      st->rc = MESH_ERR_NOMEM;
      st->why = "out of memory";
    }
  }
}

int mesh_rpc_call_sync(mesh_ctx *ctx, mesh_tls_config *tls, const char *addr, const char *expected,
                       const char *path, const char *body, size_t len, uint32_t timeout_ms,
                       int *ret_status, char **ret_response, const char **why) {
  if (!ctx || !ret_status) return MESH_ERR_INVALID;
  sync_state st = {.ctx = ctx};
  st.base = event_base_new();
  if (!st.base) return MESH_ERR_NOMEM;
  mesh_rpc_client *cl;
  int rc = mesh_rpc_client_new(ctx, st.base, tls, addr, expected, &cl);
  if (rc) {
    if (why) *why = rc == MESH_ERR_PARSE ? "bad address or identity" : "invalid arguments";
    event_base_free(st.base);
    return rc;
  }
  rc = mesh_rpc_client_call(cl, path, body, len, timeout_ms, sync_reply, &st);
  if (rc) {
    if (why) *why = "cannot start the call";
  } else {
    while (!st.done) event_base_loop(st.base, EVLOOP_ONCE);
    rc = st.rc;
  }
  mesh_rpc_client_free(cl);
  event_base_free(st.base);
  if (rc) {
    if (why && st.why) *why = st.why;
    mesh__free(ctx, st.body);
    return rc;
  }
  *ret_status = st.status;
  if (ret_response) *ret_response = st.body;
  else mesh__free(ctx, st.body);
  return 0;
}
