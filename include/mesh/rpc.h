/* libmesh rpc: the control plane's transport, JSON over HTTP/2 (mTLS or loopback plaintext) on libevent. */
#ifndef MESH_RPC_H
#define MESH_RPC_H

#include <mesh/ctx.h>
#include <mesh/error.h>
#include <mesh/tls.h>

/* Both ends run on the application's libevent loop; only this type crosses
 * the API, and only as a pointer. */
struct event_base;

MESH_BEGIN_DECLS

/* The control-plane protocol (doc/protocol.md): every call is an HTTP/2
 * POST to "/<package>.<Service>/<Method>" whose request body is one JSON
 * object (content-type application/json). The answer is either
 *   unary    a status and one JSON object (content-type application/json), or
 *   stream   status 200 and a sequence of JSON objects, one per line, each
 *            ended by '\n' (content-type application/x-ndjson), sent as the
 *            server produces them, until the server ends the stream or the
 *            client cancels it.
 * Errors are any non-2xx status with the body
 *   {"error":{"code":"<one of MESH_RPC_CODE_*>","message":"<for a person>"}}
 * (doc/protocol.md has the status that goes with each code).
 * Transport: HTTP/2 with prior knowledge (h2c) when no TLS configuration is
 * given -- for tests and loopback bootstrapping only -- else TLS with ALPN
 * "h2" through the tls module (a TLS client that negotiates no ALPN is
 * still spoken to in HTTP/2; one that negotiates http/1.1 is closed).
 *
 * Thread safety: a server or a client, and every call and stream made from
 * it, belong to the one thread that runs its event_base; use them from
 * that thread only (several servers and clients may share a loop). Several
 * threads may each run their own. mesh_rpc_call_sync is thread-safe (it
 * runs a private loop), given a thread-safe ctx.
 *
 * Callbacks (handlers, close, reply, message, end) always run from the
 * event loop, never from inside the mesh_rpc_* function that caused them,
 * except where said (mesh_rpc_server_free, mesh_rpc_client_free).
 *
 * Strings handed to callbacks are NUL-terminated (the length excludes the
 * NUL; bodies and lines come from the network and may hold NUL bytes
 * themselves, so parse len bytes) and live until the callback returns
 * unless said otherwise. */

/* ---- Error codes in error bodies -------------------------------------- */

#define MESH_RPC_CODE_INVALID_ARGUMENT "invalid_argument"       /* 400 */
#define MESH_RPC_CODE_FAILED_PRECONDITION "failed_precondition" /* 412 */
#define MESH_RPC_CODE_UNAVAILABLE "unavailable"                 /* 503 (408) */
#define MESH_RPC_CODE_UNAUTHENTICATED "unauthenticated"         /* 401 */
#define MESH_RPC_CODE_PERMISSION_DENIED "permission_denied"     /* 403 */
#define MESH_RPC_CODE_NOT_FOUND "not_found"                     /* 404 */
#define MESH_RPC_CODE_RESOURCE_EXHAUSTED "resource_exhausted"   /* 413 / 429 */
#define MESH_RPC_CODE_INTERNAL "internal"                       /* 500 */
#define MESH_RPC_CODE_ABORTED "aborted"                         /* 409: a concurrent change; try again */

/* What the server answers by itself:
 *   unknown path                    404 not_found
 *   method other than POST          405 invalid_argument
 *   body over MESH_RPC_LIMIT_BODY   413 resource_exhausted
 *   request not whole in time       408 unavailable
 * A malformed frame or header block resets that stream (or, for a
 * connection-level protocol error, closes that connection with GOAWAY);
 * other streams and connections are not affected. */

/* ---- Server limits ---------------------------------------------------- */

/* Everything that comes from the network is bounded. Set with
 * mesh_rpc_server_opts_set_limit(opts, MESH_RPC_LIMIT_*, value). */
enum {
  /* Bytes of one request body; beyond it the stream gets 413 (the
   * connection keeps serving). Default 64 KiB, 1..16 MiB. */
  MESH_RPC_LIMIT_BODY = 1,
  /* Concurrent streams a connection may open, advertised in SETTINGS
   * (SETTINGS_MAX_CONCURRENT_STREAMS); excess streams are refused
   * (RST_STREAM REFUSED_STREAM). Default 100, 1..65536. */
  MESH_RPC_LIMIT_STREAMS = 2,
  /* Bytes of one request's header list (name + value + 32 per field, as
   * RFC 9113 counts), advertised in SETTINGS_MAX_HEADER_LIST_SIZE; a larger
   * header block resets the stream. Default 16 KiB, 1 KiB..1 MiB. */
  MESH_RPC_LIMIT_HEADER_LIST = 3,
  /* Open connections for the whole server; one more is accepted and
   * closed at once. Default 1024, 1..1000000. */
  MESH_RPC_LIMIT_CONNECTIONS = 4,
  /* Milliseconds a connection may stay open with no stream in progress
   * (including a connection that never sends anything); it then gets
   * GOAWAY and is closed. Default 300000 (5 min); 0 disables. */
  MESH_RPC_LIMIT_IDLE_MS = 5,
  /* Milliseconds from a request's HEADERS to the end of its body; a
   * slower request gets 408 unavailable. Default 30000; 0 disables. */
  MESH_RPC_LIMIT_REQUEST_MS = 6,
  /* Bytes of response data buffered for one stream that the client is not
   * reading (flow control closed, or the socket full). When a send would
   * go beyond it, the stream is reset (RST_STREAM CANCEL) and its close
   * callback runs: a server never buffers without bound for a slow or
   * stuck client. Default 1 MiB, 64 KiB..1 GiB. */
  MESH_RPC_LIMIT_OUTBOUND = 7
};

#define MESH_RPC_DEFAULT_BODY_MAX 65536u
#define MESH_RPC_DEFAULT_STREAMS_MAX 100u
#define MESH_RPC_DEFAULT_HEADER_LIST_MAX 16384u
#define MESH_RPC_DEFAULT_CONNECTIONS_MAX 1024u
#define MESH_RPC_DEFAULT_IDLE_MS 300000u
#define MESH_RPC_DEFAULT_REQUEST_MS 30000u
#define MESH_RPC_DEFAULT_OUTBOUND_MAX 1048576u

/* Client-side bounds (fixed): a unary response body, and one streamed line
 * (without its '\n'). Beyond either the call ends with MESH_ERR_LIMIT. */
#define MESH_RPC_CLIENT_BODY_MAX 1048576u
#define MESH_RPC_CLIENT_LINE_MAX 1048576u
/* TCP connect timeout of a client (TLS adds its own handshake timeout). */
#define MESH_RPC_CONNECT_TIMEOUT_MS 10000u

/* ---- Server ----------------------------------------------------------- */

typedef struct mesh_rpc_server_opts mesh_rpc_server_opts;
typedef struct mesh_rpc_server mesh_rpc_server;
/* One request on a server, from its handler until the application finishes it. */
typedef struct mesh_rpc_call mesh_rpc_call;

/* Options with the defaults above and no TLS (plaintext).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_server_opts_new(mesh_ctx *ctx, mesh_rpc_server_opts **ret);
MESH_API void mesh_rpc_server_opts_free(mesh_rpc_server_opts *opts); /* NULL is a no-op */

/* Serve over TLS with cfg (the options take their own reference; cfg NULL
 * returns to plaintext). client_auth is MESH_TLS_CLIENT_AUTH_REQUIRED or
 * _OPTIONAL (optional: clients without a certificate are served with no
 * peer identity -- what mesh-identity needs for workloads that do not have
 * one yet). MESH_ERR_INVALID. */
MESH_API int mesh_rpc_server_opts_set_tls(mesh_rpc_server_opts *opts, mesh_tls_config *cfg,
                                          int client_auth);

/* Serve over TLS with the holder's current configuration, taken for each
 * new connection (so a renewed certificate applies to new connections
 * without restarting the server). The holder must outlive the server.
 * Overrides set_tls; creds NULL returns to set_tls's choice.
 * MESH_ERR_INVALID. */
MESH_API int mesh_rpc_server_opts_set_tls_creds(mesh_rpc_server_opts *opts,
                                                mesh_tls_creds *creds, int client_auth);

/* One of MESH_RPC_LIMIT_*. MESH_ERR_INVALID (unknown limit, NULL opts),
 * MESH_ERR_RANGE (value outside the range documented for that limit). */
MESH_API int mesh_rpc_server_opts_set_limit(mesh_rpc_server_opts *opts, int limit,
                                            uint64_t value);

/* A server on base, configured by opts (copied: opts may be freed after).
 * opts NULL: plaintext with the default limits. It serves nothing until
 * mesh_rpc_server_listen. MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_server_new(mesh_ctx *ctx, struct event_base *base,
                                 const mesh_rpc_server_opts *opts, mesh_rpc_server **ret);

/* Listen on addr: "127.0.0.1:8080", "[::1]:0", "0.0.0.0:8086", "[::]:8086"
 * (numeric addresses only; port 0 picks a free port). *ret_port (may be
 * NULL) gets the bound port. May be called several times for several
 * addresses. MESH_ERR_PARSE (address), MESH_ERR_IO (socket, bind, listen;
 * see errno), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_server_listen(mesh_rpc_server *srv, const char *addr, uint16_t *ret_port);

/* The handler gets a call once its whole request body has arrived (and is
 * within MESH_RPC_LIMIT_BODY). It answers now or later (the call stays
 * valid until finished: see mesh_rpc_reply / mesh_rpc_end) with exactly
 * one of: mesh_rpc_reply, mesh_rpc_reply_error, or mesh_rpc_send* then
 * mesh_rpc_end. ud is the one given to mesh_rpc_server_handle. */
typedef void (*mesh_rpc_handler_fn)(void *ud, mesh_rpc_call *call);

/* Route an exact path ("/identity.Identity/Certify") to fn. Registering a
 * path again replaces its handler. The path is copied. MESH_ERR_INVALID
 * (NULLs, a path not starting with '/'), MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_server_handle(mesh_rpc_server *srv, const char *path,
                                    mesh_rpc_handler_fn fn, void *ud);

/* Open connections right now (for metrics and tests). */
MESH_API uint32_t mesh_rpc_server_connections(const mesh_rpc_server *srv);

/* Close the listeners and every connection at once (no graceful drain).
 * Unfinished calls first get their close callback (which may call
 * mesh_rpc_end), then are released: no call of this server may be used
 * afterwards. Must not be called from one of the server's own handlers or
 * callbacks. NULL is a no-op. */
MESH_API void mesh_rpc_server_free(mesh_rpc_server *srv);

/* ---- A call on the server --------------------------------------------- */

/* The request: path, and body (NUL-terminated, *len without the NUL; len
 * may be NULL). The body is JSON text as the client sent it: parse and
 * validate it. Live as long as the call. */
MESH_API const char *mesh_rpc_call_path(const mesh_rpc_call *call);
MESH_API const char *mesh_rpc_call_body(const mesh_rpc_call *call, size_t *len);

/* The client: its identity from its certificate (DNS form and as an
 * object), NULL over plaintext or when a TLS client sent no certificate
 * (MESH_TLS_CLIENT_AUTH_OPTIONAL); its address "10.0.0.5:41234" or
 * "[::1]:41234". Live as long as the call. */
MESH_API const char *mesh_rpc_call_peer_identity(const mesh_rpc_call *call);
MESH_API const mesh_identity *mesh_rpc_call_peer(const mesh_rpc_call *call);
MESH_API const char *mesh_rpc_call_peer_address(const mesh_rpc_call *call);

/* Tell the application that a call's stream is gone before the
 * application finished it: the client cancelled or disconnected, the
 * stream was reset (MESH_RPC_LIMIT_OUTBOUND), or the server is being
 * freed. It runs at most once per call. The call itself stays valid until
 * the application finishes it, so the usual close callback unsubscribes
 * and then calls mesh_rpc_end(call). */
typedef void (*mesh_rpc_close_fn)(void *ud, mesh_rpc_call *call);
/* Set (or with fn NULL clear) the close callback. If the stream is already
 * gone, fn runs from the event loop soon after. MESH_ERR_INVALID. */
MESH_API int mesh_rpc_call_on_close(mesh_rpc_call *call, mesh_rpc_close_fn fn, void *ud);

/* 1 while the client can still receive the answer, 0 once the stream is
 * gone (the close callback then has run or is about to). */
MESH_API int mesh_rpc_call_open(const mesh_rpc_call *call);

/* Response bytes of this call not yet taken by the connection (compare
 * with MESH_RPC_LIMIT_OUTBOUND: a producer may coalesce updates rather
 * than queue them). */
MESH_API size_t mesh_rpc_call_buffered(const mesh_rpc_call *call);

/* Unary answer: status (100..599; 200 for success) and one JSON object
 * (json NULL: an empty body), sent with content-type application/json.
 * This finishes the call: it is released and must not be used again,
 * whatever the result. 0, MESH_ERR_CLOSED (the stream was already gone;
 * the call is released all the same), MESH_ERR_INVALID (NULL call, bad
 * status, or the call was already streaming: then nothing is released),
 * MESH_ERR_NOMEM (the stream is reset and the call released). */
MESH_API int mesh_rpc_reply(mesh_rpc_call *call, int status, const char *json);

/* An error answer {"error":{"code":code,"message":message}} with status
 * (400..599); code should be one of MESH_RPC_CODE_*, message may be NULL
 * (""). Both are JSON-escaped here. Finishes the call as mesh_rpc_reply. */
MESH_API int mesh_rpc_reply_error(mesh_rpc_call *call, int status, const char *code,
                                  const char *message);

/* Streaming answer: the first send starts a 200 response with
 * content-type application/x-ndjson; each send appends json and a '\n'.
 * json must be one compact JSON value without a raw newline (escaped
 * newlines in strings are fine). The call stays open.
 * 0; MESH_ERR_INVALID (NULL, json containing '\n', or the call already
 * answered with mesh_rpc_reply); MESH_ERR_CLOSED (the stream is gone:
 * stop sending and call mesh_rpc_end); MESH_ERR_LIMIT (this message would
 * take the call's buffered bytes over MESH_RPC_LIMIT_OUTBOUND: the stream
 * is reset and the close callback will run); MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_send(mesh_rpc_call *call, const char *json);

/* The same for len bytes that need not be NUL-terminated. */
MESH_API int mesh_rpc_send_n(mesh_rpc_call *call, const char *json, size_t len);

/* End a streaming answer cleanly (END_STREAM after the buffered lines) and
 * release the call. Also the way to release a call whose stream is gone
 * (from its close callback, for example), or one that never sent anything
 * (the client then sees 200 and no lines). The call must not be used
 * again. 0, MESH_ERR_CLOSED (already gone; released all the same).
 * NULL is a no-op returning MESH_ERR_INVALID. */
MESH_API int mesh_rpc_end(mesh_rpc_call *call);

/* ---- Client ----------------------------------------------------------- */

typedef struct mesh_rpc_client mesh_rpc_client;
/* A server stream in progress on a client. */
typedef struct mesh_rpc_stream mesh_rpc_stream;

/* The outcome of a unary call, or the end of a stream:
 *   status > 0  the server answered with this HTTP status. body/len: the
 *               response body (unary; NULL/0 for a stream's end). error:
 *               NULL for 2xx, else the "code" of the error body
 *               (MESH_RPC_CODE_*), or "unknown" when the body carries none.
 *   status < 0  no answer: a MESH_ERR_* code, body NULL, len 0, error a
 *               reason a person can act on (valid during the callback):
 *                 MESH_ERR_CONNECT   TCP connect failed or timed out
 *                 MESH_ERR_TLS       handshake failed (untrusted, alert, ALPN)
 *                 MESH_ERR_IDENTITY  the server is not the expected identity
 *                 MESH_ERR_EXPIRED   the server's certificate is out of date
 *                 MESH_ERR_TIMEOUT   timeout_ms elapsed (the stream is reset)
 *                 MESH_ERR_CLOSED    the connection closed or the stream was
 *                                    reset before the answer; or the client
 *                                    was freed
 *                 MESH_ERR_LIMIT     a body or line over the client bounds
 *                 MESH_ERR_PARSE     the server broke the protocol
 *                 MESH_ERR_NOMEM, MESH_ERR_IO */
typedef void (*mesh_rpc_reply_fn)(void *ud, int status, const char *body, size_t len,
                                  const char *error);
/* One streamed JSON object: the line without its '\n' (NUL-terminated). */
typedef void (*mesh_rpc_message_fn)(void *ud, const char *line, size_t len);
/* The end of a stream, as mesh_rpc_reply_fn without a body. */
typedef void (*mesh_rpc_end_fn)(void *ud, int status, const char *error);

/* A client of the server at addr ("127.0.0.1:8080", "[::1]:8086",
 * "localhost:8080"; numeric addresses or localhost: discovery resolves
 * names, not this module). tls NULL: plaintext HTTP/2 (loopback
 * bootstrapping and tests); else mTLS with that configuration (the client
 * takes a reference) and expected_server_identity is required: the
 * server's certificate must name it (either identity form; it is also the
 * SNI). With plaintext, expected_server_identity must be NULL.
 * The client connects on the first call, multiplexes every call on one
 * HTTP/2 connection, and does not reconnect by itself: when the
 * connection fails or closes, its pending calls get the error, and the
 * next call opens a new connection.
 * MESH_ERR_INVALID, MESH_ERR_PARSE (address or identity), MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_client_new(mesh_ctx *ctx, struct event_base *base, mesh_tls_config *tls,
                                 const char *addr, const char *expected_server_identity,
                                 mesh_rpc_client **ret);

/* Use cfg (a renewed certificate) for the next connection; the current one
 * keeps its own. cfg must be non-NULL exactly when the client was made
 * with TLS. MESH_ERR_INVALID. */
MESH_API int mesh_rpc_client_set_tls(mesh_rpc_client *cl, mesh_tls_config *cfg);

/* A unary call: POST body (len bytes of JSON; copied) to path. on_reply
 * runs exactly once, from the event loop, if and only if this returns 0.
 * timeout_ms covers connecting and the whole answer; 0 means none.
 * MESH_ERR_INVALID (NULLs, path not starting with '/'), MESH_ERR_LIMIT
 * (body over 16 MiB, path over 1024 bytes), MESH_ERR_CLOSED (the client is
 * being freed), MESH_ERR_NOMEM. */
MESH_API int mesh_rpc_client_call(mesh_rpc_client *cl, const char *path, const char *body,
                                  size_t len, uint32_t timeout_ms, mesh_rpc_reply_fn on_reply,
                                  void *ud);

/* A server stream: POST body to path, then on_message once per received
 * line (as soon as its '\n' arrives; empty lines are skipped), then on_end
 * exactly once -- unless the stream is cancelled first, after which
 * neither runs. A non-2xx answer calls on_end only (with the error code of
 * its body). *ret (may be NULL) is valid until on_end returns or
 * mesh_rpc_stream_cancel. No timeout: streams live until either side ends
 * them. Errors as mesh_rpc_client_call; on failure nothing runs. */
MESH_API int mesh_rpc_client_stream(mesh_rpc_client *cl, const char *path, const char *body,
                                    size_t len, mesh_rpc_message_fn on_message,
                                    mesh_rpc_end_fn on_end, void *ud, mesh_rpc_stream **ret);

/* Stop a stream (RST_STREAM CANCEL to the server, whose close callback
 * then runs). No callback of this stream runs afterwards; stream is
 * invalid. Allowed inside the stream's own on_message. NULL is a no-op. */
MESH_API void mesh_rpc_stream_cancel(mesh_rpc_stream *stream);

/* Calls and streams in progress (for tests and back-pressure). */
MESH_API uint32_t mesh_rpc_client_pending(const mesh_rpc_client *cl);

/* Close the connection; every pending call and stream not cancelled gets
 * its callback with MESH_ERR_CLOSED during this call. May be called from
 * one of the client's own callbacks (the client is then freed once that
 * callback returns). NULL is a no-op. */
MESH_API void mesh_rpc_client_free(mesh_rpc_client *cl);

/* ---- Blocking convenience --------------------------------------------- */

/* One unary call on a private event loop, for command-line tools and
 * tests; blocks the calling thread up to timeout_ms (0: no limit).
 * Arguments as mesh_rpc_client_new and mesh_rpc_client_call.
 * Returns 0 when the server answered (whatever the status): *ret_status
 * gets the HTTP status and *ret_response (may be NULL) the body,
 * NUL-terminated, allocated with ctx's allocator: free it with
 * mesh_free_string(ctx, s) (mesh/ctx.h). Otherwise one of the
 * mesh_rpc_reply_fn error codes (or an argument error of
 * mesh_rpc_client_new), *why (may be NULL) gets a reason (valid until the
 * thread's next mesh_rpc_call_sync), and the ret_ pointers are left alone. */
MESH_API int mesh_rpc_call_sync(mesh_ctx *ctx, mesh_tls_config *tls, const char *addr,
                                const char *expected_server_identity, const char *path,
                                const char *body, size_t len, uint32_t timeout_ms,
                                int *ret_status, char **ret_response, const char **why);

MESH_END_DECLS

#endif
