/* libmesh http internals: one request/response abstraction over HTTP/1 (http-parser) and HTTP/2 (nghttp2). */
#ifndef MESH_HTTP_INTERNAL_H
#define MESH_HTTP_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <mesh/ctx.h>

struct bufferevent;
struct event_base;
struct evbuffer;

/* The proxy speaks to both sides through this interface and never sees
 * which protocol is underneath: a connection (mh_conn) carries exchanges
 * (mh_stream), each a request head, a body, optional trailers, and the
 * response the same way. HTTP/1 runs one exchange at a time per connection
 * (pipelined requests wait in the input buffer until the previous response
 * has been written); HTTP/2 runs many.
 *
 * Everything runs on the one thread of the connection's event_base.
 * Callbacks never run from inside the mh_* call that caused them: a codec
 * that has news while inside such a call defers it to the next loop turn.
 * After an on_reset or on_close callback the object it names is gone. */

/* ---- Heads ----------------------------------------------------------------- */

typedef struct {
  char *name; /* lowercase */
  char *value;
} mh_field;

enum { MH_V10 = 10, MH_V11 = 11, MH_V2 = 20 };

/* A request or response head, or trailers. Strings are owned by the head
 * (freed by mh_head_clear). Hop-by-hop fields (connection, keep-alive,
 * proxy-connection, te other than "trailers", transfer-encoding, upgrade,
 * http2-settings) never appear in fields: codecs strip them on receipt and
 * generate what their own framing needs when sending. HTTP/2 pseudo-headers,
 * host (authority) and content-length (content_length) are the struct
 * members, never fields. */
typedef struct {
  /* Requests. authority: Host or :authority (NULL when absent); path: the
   * origin-form target ("/a?b"), also for an absolute-form HTTP/1 target,
   * whose scheme and authority land in scheme and authority. */
  char *method, *scheme, *authority, *path;
  int status;            /* responses: 100..599 */
  int version;           /* MH_V10, MH_V11 or MH_V2: how it arrived */
  int64_t content_length; /* -1: not known (chunked, h2 without one, or until close) */
  unsigned upgrade : 1;   /* h1 request with Upgrade (value in upgrade_proto) */
  unsigned expect_continue : 1;
  unsigned close : 1;     /* h1: the sender asked to close after this exchange */
  char *upgrade_proto;
  mh_field *fields;
  size_t n, cap;
  mesh_ctx *ctx; /* the allocator: set by the first mh_head_* call that allocates */
} mh_head;

void mh_head_init(mh_head *h);
void mh_head_clear(mh_head *h); /* frees everything; the head may be reused */
/* The functions below take the ctx whose allocator the head uses (not NULL;
 * one ctx per head). */
/* Copy src into dst (cleared first). MESH_ERR_NOMEM. */
int mh_head_copy(mesh_ctx *ctx, mh_head *dst, const mh_head *src);
/* Append a field (name lowercased, both copied). MESH_ERR_NOMEM. */
int mh_head_add(mesh_ctx *ctx, mh_head *h, const char *name, const char *value);
int mh_head_addn(mesh_ctx *ctx, mh_head *h, const char *name, size_t nlen, const char *value,
                 size_t vlen);
/* Replace every field named name with one field (add when absent). */
int mh_head_set(mesh_ctx *ctx, mh_head *h, const char *name, const char *value);
/* The first value of name (case-insensitive), NULL when absent. */
const char *mh_head_get(const mh_head *h, const char *name);
/* Remove every field named name; returns how many. */
size_t mh_head_del(mesh_ctx *ctx, mh_head *h, const char *name);
/* Set a string member of h (method, scheme, authority, path, upgrade_proto),
 * e.g. mh_head_setstr(ctx, h, &h->path, "/"); value NULL clears it. */
int mh_head_setstr(mesh_ctx *ctx, mh_head *h, char **member, const char *value);

/* ---- Limits ------------------------------------------------------------------ */

/* Every bound on what a peer sends, named and documented in doc/meshd.md. */
typedef struct {
  uint32_t max_head_bytes;   /* request/status line + headers (h1), or the decoded header
                                list (h2): over it -> 431 (h1 request), RST (h2) */
  uint32_t max_fields;       /* header fields in one head: over it -> 431 */
  uint32_t head_timeout_ms;  /* h1 server: a request head must arrive within this
                                from its first byte (or from keep-alive idle start):
                                408 + close */
  uint32_t idle_timeout_ms;  /* no exchange in flight and no byte for this long: close
                                (h1 keep-alive, h2 GOAWAY) */
  uint32_t max_streams;      /* h2: concurrent streams we allow the peer to open */
  uint32_t window_bytes;     /* h2: per-stream receive window; h1: input bytes read
                                ahead of what the other side has taken */
  uint32_t ping_interval_ms; /* h2: keepalive PING when idle this long; 0 off */
} mh_limits;

#define MH_DEFAULT_MAX_HEAD_BYTES 65536u
#define MH_DEFAULT_MAX_FIELDS 100u
#define MH_DEFAULT_HEAD_TIMEOUT_MS 10000u
#define MH_DEFAULT_IDLE_TIMEOUT_MS 90000u
#define MH_DEFAULT_MAX_STREAMS 1000u
#define MH_DEFAULT_WINDOW_BYTES 65536u
#define MH_DEFAULT_PING_INTERVAL_MS 10000u

void mh_limits_default(mh_limits *l);

/* ---- Streams -------------------------------------------------------------------- */

typedef struct mh_stream mh_stream;
typedef struct mh_conn mh_conn;

/* Errors a stream or a connection ends with. */
enum {
  MH_OK = 0,
  MH_ERR_PROTOCOL = 1, /* the peer broke the protocol */
  MH_ERR_RESET = 2,    /* the peer reset the stream (h2 RST_STREAM) or closed mid-message */
  MH_ERR_CLOSED = 3,   /* the connection closed (EOF, GOAWAY past this stream, socket error) */
  MH_ERR_REFUSED = 4,  /* h2 REFUSED_STREAM / GOAWAY before processing: safe to retry */
  MH_ERR_LIMIT = 5,    /* a limit above */
  MH_ERR_TIMEOUT = 6,
  MH_ERR_CANCEL = 7    /* we reset it */
};

typedef struct {
  /* Client streams: the response head (1xx heads other than 101 are
   * delivered too, with end_stream 0: forward them and wait for the next).
   * Server streams never get on_head (the request comes with
   * mh_server_cbs.on_request). end_stream: no body follows. */
  void (*on_head)(mh_stream *s, mh_head *h, int end_stream, void *ud);
  /* Body bytes, in buf: take what you can (evbuffer_remove_buffer /
   * evbuffer_add_buffer); what remains counts against the window and is
   * offered again with the next bytes. Call mh_stream_consumed after
   * taking them so that the peer may send more. */
  void (*on_data)(mh_stream *s, struct evbuffer *buf, void *ud);
  /* The message is complete; trailers (may be NULL) are the peer's. */
  void (*on_end)(mh_stream *s, mh_head *trailers, void *ud);
  /* The stream ended abnormally (MH_ERR_*); s is gone after this returns.
   * A stream that ended normally (both directions complete) gets
   * on_reset(MH_OK) as its last callback: the single place to let go. */
  void (*on_reset)(mh_stream *s, int err, void *ud);
  /* What we sent has drained below the low-water mark (half of
   * window_bytes): more body may be sent. */
  void (*on_drain)(mh_stream *s, void *ud);
} mh_stream_cbs;

void mh_stream_set_cbs(mh_stream *s, const mh_stream_cbs *cbs, void *ud);

/* Send our head. A server stream sends the response (1xx heads first when
 * wanted); a client stream's head was given to mh_client_request.
 * end_stream: no body. MESH_ERR_INVALID (already sent, or the stream is
 * gone), MESH_ERR_NOMEM. */
int mh_stream_send_head(mh_stream *s, const mh_head *h, int end_stream);
/* Send body bytes: every byte of buf is moved. end_stream ends the message.
 * HTTP/1 frames as the head said: content-length, chunked, or until close. */
int mh_stream_send_data(mh_stream *s, struct evbuffer *buf, int end_stream);
/* End the message, with trailers (NULL: none; h1 sends them only when chunked). */
int mh_stream_send_end(mh_stream *s, const mh_head *trailers);
/* Bytes we queued that the peer has not taken yet (backpressure). */
size_t mh_stream_pending(const mh_stream *s);
/* The caller took n bytes from on_data's buffer (h2: returns window). */
void mh_stream_consumed(mh_stream *s, size_t n);
/* Abort: h2 RST_STREAM (CANCEL, or REFUSED_STREAM when refused), h1 closes
 * the connection unless the exchange was complete. No callback follows for
 * s (not even on_reset). */
void mh_stream_reset(mh_stream *s, int refused);
/* The connection the stream belongs to. */
mh_conn *mh_stream_conn(const mh_stream *s);

/* ---- Connections ------------------------------------------------------------------- */

enum { MH_H1 = 1, MH_H2 = 2 };

typedef struct {
  /* A new request on a server connection; end_stream: no body. Set the
   * stream's callbacks at once (mh_stream_set_cbs) to get its body. A
   * request that breaks a limit is answered by the codec itself (400, 408,
   * 413, 431 with l5d-proxy-error) and never reaches this callback. */
  void (*on_request)(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud);
  /* The connection is gone (err: MH_OK for a clean close): every stream on it
   * got its on_reset first. The codec frees c after this returns. */
  void (*on_close)(mh_conn *c, int err, void *ud);
  /* HTTP/1 only: a 101 Switching Protocols was sent (server) or received
   * (client) for the current exchange: from now on the connection is a
   * byte stream. The codec lets go of bev (its callbacks are cleared, not
   * freed, with any bytes after the head left in its input) and then frees
   * c; the receiver owns bev. NULL: such connections are closed. */
  void (*on_upgrade)(mh_conn *c, struct bufferevent *bev, void *ud);
} mh_conn_cbs;

/* Run a codec over bev (connected; plain or a TLS bufferevent), which the
 * connection then owns (freed with it). proto: MH_H1 or MH_H2 (h2: prior
 * knowledge; the server expects the client preface). bytes already in bev's
 * input (e.g. read during protocol detection) are parsed first.
 * MESH_ERR_NOMEM, MESH_ERR_INVALID. */
int mh_conn_server(mesh_ctx *ctx, struct bufferevent *bev, int proto, const mh_limits *l,
                   const mh_conn_cbs *cbs, void *ud, mh_conn **ret);
int mh_conn_client(mesh_ctx *ctx, struct bufferevent *bev, int proto, const mh_limits *l,
                   const mh_conn_cbs *cbs, void *ud, mh_conn **ret);

/* Start a request on a client connection. req->authority and req->scheme are
 * used as :authority/:scheme (h2) or Host (h1). Fails when
 * the connection cannot take one now (MESH_ERR_AGAIN; h1: an exchange is in flight or the
 * connection will close; h2: at the peer's stream limit or after GOAWAY).
 * cbs/ud get the response. */
int mh_client_request(mh_conn *c, const mh_head *req, int end_stream, const mh_stream_cbs *cbs,
                      void *ud, mh_stream **ret);
/* How many more requests c can take now: 0 when busy or closing. */
uint32_t mh_conn_capacity(const mh_conn *c);
/* Exchanges in flight. */
uint32_t mh_conn_active(const mh_conn *c);
int mh_conn_proto(const mh_conn *c);
/* Graceful: no new exchanges (h2: GOAWAY with the last stream id; h1: the
 * current response gets "connection: close"); on_close once those in
 * flight have finished. */
void mh_conn_shutdown(mh_conn *c);
/* Close now: every stream gets on_reset(MH_ERR_CLOSED), then on_close. */
void mh_conn_close(mh_conn *c);
/* Free without any callback (teardown). */
void mh_conn_free(mh_conn *c);
/* Replace "freed with it" for c's bufferevent: release(bev, arg) runs
 * instead of bufferevent_free when c lets go of it (e.g. mesh_tls_conn_free
 * for a TLS bufferevent). */
void mh_conn_set_bev_release(mh_conn *c, void (*release)(struct bufferevent *bev, void *arg),
                             void *arg);
void *mh_conn_userdata(const mh_conn *c);
void mh_conn_set_userdata(mh_conn *c, const mh_conn_cbs *cbs, void *ud);

/* ---- Detection ------------------------------------------------------------------------ */

enum { MH_DETECT_MORE = 0, MH_DETECT_H1 = MH_H1, MH_DETECT_H2 = MH_H2, MH_DETECT_OPAQUE = 3 };
#define MH_DETECT_MAX_BYTES 1024u

/* Classify the first bytes a client sent: the HTTP/2 connection preface,
 * an HTTP/1 request line (a method token, a space, a target, a space and
 * "HTTP/1."), or neither. MH_DETECT_MORE while len < MH_DETECT_MAX_BYTES
 * and the bytes so far could still be either. */
int mh_detect(const uint8_t *buf, size_t len);

/* ---- Synthesized responses --------------------------------------------------------------- */

/* Answer s with status and an l5d-proxy-error header naming why (plain-text
 * body "why\n"); for a gRPC request (content-type application/grpc*) the
 * answer is 200 with grpc-status / grpc-message instead (trailers-only). */
int mh_respond_error(mh_stream *s, const mh_head *req, int status, const char *why);

/* ---- For codecs (http1.c, http2.c) ------------------------------------------------------------ */

/* The mh_stream_* and mh_conn_* functions above (http.c) dispatch through
 * these tables: each codec's stream and connection structs start with the
 * base struct below. */
typedef struct {
  int (*send_head)(mh_stream *s, const mh_head *h, int end_stream);
  int (*send_data)(mh_stream *s, struct evbuffer *buf, int end_stream);
  int (*send_end)(mh_stream *s, const mh_head *trailers);
  size_t (*pending)(const mh_stream *s);
  void (*consumed)(mh_stream *s, size_t n);
  void (*reset)(mh_stream *s, int refused);
} mh_stream_ops;

typedef struct {
  int (*request)(mh_conn *c, const mh_head *req, int end_stream, const mh_stream_cbs *cbs,
                 void *ud, mh_stream **ret);
  uint32_t (*capacity)(const mh_conn *c);
  uint32_t (*active)(const mh_conn *c);
  void (*shutdown)(mh_conn *c);
  void (*close)(mh_conn *c);
  void (*free)(mh_conn *c);
} mh_conn_ops;

struct mh_stream {
  const mh_stream_ops *ops;
  mh_conn *conn;
  const mh_stream_cbs *cbs; /* NULL until set: events are dropped (data consumed) */
  void *ud;
};

struct mh_conn {
  const mh_conn_ops *ops;
  mesh_ctx *ctx;
  int proto;
  mh_limits limits;
  const mh_conn_cbs *cbs;
  void *ud;
  /* How the bufferevent is let go of (mh__bev_free); NULL: bufferevent_free. */
  void (*bev_release)(struct bufferevent *bev, void *arg);
  void *bev_release_arg;
};

/* Codecs free their bufferevent only through this: a TLS bufferevent
 * belongs to its mesh_tls_conn, which the owner releases in the hook. */
void mh__bev_free(mh_conn *c, struct bufferevent *bev);

/* Codec constructors (mh_conn_server / mh_conn_client dispatch on proto). */
int mh__h1_new(mesh_ctx *ctx, struct bufferevent *bev, int server, const mh_limits *l,
               const mh_conn_cbs *cbs, void *ud, mh_conn **ret);
int mh__h2_new(mesh_ctx *ctx, struct bufferevent *bev, int server, const mh_limits *l,
               const mh_conn_cbs *cbs, void *ud, mh_conn **ret);

/* Hop-by-hop header names that never cross the abstraction (see mh_head). */
int mh__hop_by_hop(const char *name, size_t len);

#endif
