/* libmesh TLS: mTLS configurations with workload-identity checks, ALPN and session reuse, over libevent. */
#ifndef MESH_TLS_H
#define MESH_TLS_H

#include <mesh/ctx.h>
#include <mesh/identity.h>

/* The I/O adapter works on the application's libevent loop; only these two
 * types cross the API, and only as pointers. */
struct bufferevent;
struct event_base;

MESH_BEGIN_DECLS

/* TLS 1.2 only, with ECDHE-ECDSA-AES128-GCM-SHA256 and
 * ECDHE-ECDSA-CHACHA20-POLY1305 (mbedTLS 2.28 has no stable TLS 1.3).
 * Both sides present a workload certificate; the client checks that the
 * server's certificate names the identity it expected (DNS SAN
 * <sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain> and/or the
 * SPIFFE URI SAN), the server reports the client's identity.
 *
 * Thread safety: a mesh_tls_opts is used by one thread at a time. A
 * mesh_tls_config is immutable and may be shared by any number of threads
 * and connections (its session cache, ticket keys and random generator
 * lock internally). mesh_tls_creds is thread-safe. A mesh_tls_conn belongs
 * to the thread that runs its event_base.
 *
 * Errors: functions that reject input also set *why (when why is not NULL)
 * to a static, human-readable reason; *why is left alone on success. */

/* ---- Options ---------------------------------------------------------- */

typedef struct mesh_tls_opts mesh_tls_opts;

/* Server-side client authentication, chosen per connection. */
enum {
  MESH_TLS_CLIENT_AUTH_REQUIRED = 0, /* no or a bad client certificate fails the handshake */
  MESH_TLS_CLIENT_AUTH_OPTIONAL = 1  /* no certificate: connected with no identity; a bad one fails */
};

#define MESH_TLS_DEFAULT_ALPN "h2,http/1.1"
#define MESH_TLS_ALPN_MAX 8u                          /* protocols in one list */
#define MESH_TLS_DEFAULT_HANDSHAKE_TIMEOUT_MS 10000u
#define MESH_TLS_DEFAULT_SESSION_LIFETIME_S 3600u     /* tickets and cached sessions */
#define MESH_TLS_DEFAULT_SERVER_SESSIONS 1024u        /* server session-ID cache entries */
#define MESH_TLS_DEFAULT_CLIENT_SESSIONS 256u         /* client sessions kept for reuse */
/* Ciphertext buffered on either side of a connection before reading from
 * or writing to the socket pauses (plaintext then waits in the TLS
 * bufferevent, under the caller's own watermarks). */
#define MESH_TLS_BUFFER_MAX 65536u

/* New options with the defaults above and no credentials.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_tls_opts_new(mesh_ctx *ctx, mesh_tls_opts **ret);
MESH_API void mesh_tls_opts_free(mesh_tls_opts *opts); /* NULL is a no-op */

/* The workload's certificate chain (leaf first, then intermediates) and its
 * private key, both PEM in memory; the bytes are copied (the key copy is
 * zeroed when released). Required for servers. Without them the
 * configuration is client-only: it presents no certificate (how a workload
 * reaches the identity service before it has one), mesh_tls_conn_server
 * refuses it with MESH_ERR_INVALID, and mesh_tls_config_identity gives NULL.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_tls_opts_set_credentials(mesh_tls_opts *opts, const char *chain_pem,
                                           size_t chain_len, const char *key_pem, size_t key_len);

/* Trust anchors: a PEM bundle of one or more CA certificates (several
 * during a rotation). Required. MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_tls_opts_set_anchors(mesh_tls_opts *opts, const char *pem, size_t len);

/* ALPN protocols in preference order, comma-separated ("h2,http/1.1");
 * "" offers none. MESH_ERR_PARSE (empty item, over MESH_TLS_ALPN_MAX items
 * or 255 bytes an item), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_tls_opts_set_alpn(mesh_tls_opts *opts, const char *list);

/* 0 disables the timeout. MESH_ERR_INVALID for a NULL opts. */
MESH_API int mesh_tls_opts_set_handshake_timeout(mesh_tls_opts *opts, uint32_t ms);

/* Session resumption: server_sessions entries in the server's session-ID
 * cache, client_sessions sessions the client keeps (0 disables either),
 * lifetime_s of sessions and tickets (0: the default), and whether the
 * server issues RFC 5077 tickets. MESH_ERR_INVALID, MESH_ERR_RANGE
 * (lifetime over 7 days, over 1 << 20 entries). */
MESH_API int mesh_tls_opts_set_sessions(mesh_tls_opts *opts, uint32_t server_sessions,
                                        uint32_t client_sessions, uint32_t lifetime_s,
                                        int tickets);

/* ---- Configurations --------------------------------------------------- */

/* An immutable configuration: credentials, anchors, ALPN, the server's
 * session cache and ticket keys, the client's kept sessions. Connections
 * hold a reference, so a renewed configuration only affects new handshakes.
 * Sessions do not outlive their configuration: after a swap, peers make
 * one full handshake under the new credentials. */
typedef struct mesh_tls_config mesh_tls_config;

/* Build a configuration from opts (which may be freed afterwards). The
 * key must match the leaf, which must carry a workload identity.
 * MESH_ERR_INVALID (NULL, anchors missing, or a chain without a key or the
 * reverse), MESH_ERR_PARSE
 * (bad PEM), MESH_ERR_IDENTITY (leaf without a workload identity),
 * MESH_ERR_UNSUPPORTED (key type), MESH_ERR_TLS (key does not match),
 * MESH_ERR_LIMIT, MESH_ERR_NOMEM, or the random source's error. */
MESH_API int mesh_tls_config_new(const mesh_tls_opts *opts, const char **why,
                                 mesh_tls_config **ret);

/* Reference counting; thread-safe. ref returns its argument; unref of NULL
 * is a no-op, the last unref frees the configuration. */
MESH_API mesh_tls_config *mesh_tls_config_ref(mesh_tls_config *cfg);
MESH_API void mesh_tls_config_unref(mesh_tls_config *cfg);

/* The workload's own identity (from its leaf), and the leaf's validity end
 * (seconds since the epoch); NULL and 0 for a client-only configuration.
 * Live as long as the configuration. */
MESH_API const mesh_identity *mesh_tls_config_identity(const mesh_tls_config *cfg);
MESH_API uint64_t mesh_tls_config_not_after(const mesh_tls_config *cfg);

/* ---- Credential holder ------------------------------------------------ */

/* The current configuration of a workload, swapped on renewal: listeners
 * and pools take the current one for each new handshake. Thread-safe. */
typedef struct mesh_tls_creds mesh_tls_creds;

/* cfg may be NULL (set later); the holder takes its own reference.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM, MESH_ERR_IO (mutex). */
MESH_API int mesh_tls_creds_new(mesh_ctx *ctx, mesh_tls_config *cfg, mesh_tls_creds **ret);
/* NULL is a no-op; drops the holder's reference only. */
MESH_API void mesh_tls_creds_free(mesh_tls_creds *creds);
/* Replace the current configuration (cfg may be NULL); live connections
 * keep theirs. MESH_ERR_INVALID for a NULL creds. */
MESH_API int mesh_tls_creds_set(mesh_tls_creds *creds, mesh_tls_config *cfg);
/* A new reference to the current configuration (unref it), or NULL. */
MESH_API mesh_tls_config *mesh_tls_creds_get(mesh_tls_creds *creds);

/* ---- Connections on libevent ------------------------------------------ */

/* A TLS connection is a libevent filter bufferevent over the caller's
 * socket bufferevent: the application reads and writes plaintext on
 * mesh_tls_conn_bev(conn) with the usual bufferevent calls and callbacks.
 *   BEV_EVENT_CONNECTED   the handshake completed (and the peer is checked)
 *   BEV_EVENT_ERROR       the handshake or the connection failed: see
 *                         mesh_tls_conn_error for the code and the reason
 *   BEV_EVENT_EOF         the peer closed (close_notify or TCP FIN)
 *   BEV_EVENT_TIMEOUT     the caller's own bufferevent timeouts
 * Plaintext written before the handshake completes is sent after it.
 * Callbacks are always deferred to the event loop (BEV_OPT_DEFER_CALLBACKS),
 * so they never run inside libmesh. The TLS bufferevent is created with
 * EV_READ|EV_WRITE enabled; the handshake needs reading. Ciphertext
 * buffering is bounded by MESH_TLS_BUFFER_MAX each way; decrypted input
 * exceeds the TLS bufferevent's read high watermark by at most one record
 * (16 KiB).
 *
 * The connection owns the TLS bufferevent, which owns the underlying one
 * (and its socket): release them with mesh_tls_conn_free or
 * mesh_tls_conn_close, never with bufferevent_free. As with any libevent
 * socket code, the application must ignore SIGPIPE. */
typedef struct mesh_tls_conn mesh_tls_conn;

/* A client over `underlying` (connected, or connecting with
 * bufferevent_socket_connect). expected_identity (either form) is the
 * server's identity from discovery; it is also sent as SNI. alpn is a
 * comma-separated list overriding the configuration's (NULL: the
 * configuration's). session_key names the peer (for example "10.0.0.5:4143")
 * for session reuse across connections; NULL: no reuse. On failure the
 * caller still owns underlying. MESH_ERR_INVALID, MESH_ERR_PARSE (identity
 * or ALPN list, with *why), MESH_ERR_NOMEM, MESH_ERR_TLS. */
MESH_API int mesh_tls_conn_client(mesh_tls_config *cfg, struct bufferevent *underlying,
                                  const char *expected_identity, const char *alpn,
                                  const char *session_key, const char **why,
                                  mesh_tls_conn **ret);

/* A server over `underlying`; client_auth is MESH_TLS_CLIENT_AUTH_*.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM, MESH_ERR_TLS. */
MESH_API int mesh_tls_conn_server(mesh_tls_config *cfg, struct bufferevent *underlying,
                                  int client_auth, mesh_tls_conn **ret);

/* The same over a connected, non-blocking socket fd, which the connection
 * then owns (also on failure: fd is closed). */
MESH_API int mesh_tls_conn_client_fd(mesh_tls_config *cfg, struct event_base *base, int fd,
                                     const char *expected_identity, const char *alpn,
                                     const char *session_key, const char **why,
                                     mesh_tls_conn **ret);
MESH_API int mesh_tls_conn_server_fd(mesh_tls_config *cfg, struct event_base *base, int fd,
                                     int client_auth, mesh_tls_conn **ret);

/* The plaintext bufferevent (owned by the connection). */
MESH_API struct bufferevent *mesh_tls_conn_bev(const mesh_tls_conn *conn);

/* 1 once the handshake completed and the peer was checked, else 0. */
MESH_API int mesh_tls_conn_established(const mesh_tls_conn *conn);

/* After BEV_EVENT_ERROR: the MESH_ERR_* code and a reason a person can act
 * on (which lives as long as the connection); 0 and "" while healthy.
 *   MESH_ERR_IDENTITY  wrong, missing or unparsable peer identity
 *   MESH_ERR_EXPIRED   the peer's certificate is expired or not yet valid
 *   MESH_ERR_DENIED    the peer refused us (access_denied alert)
 *   MESH_ERR_TLS       any other TLS failure (untrusted chain, alert, ALPN)
 *   MESH_ERR_TIMEOUT   the handshake did not complete in time
 *   MESH_ERR_CLOSED    the peer closed the connection during the handshake
 *   MESH_ERR_IO        a socket error; MESH_ERR_NOMEM */
MESH_API int mesh_tls_conn_error(const mesh_tls_conn *conn, const char **why);

/* After BEV_EVENT_CONNECTED. The negotiated ALPN protocol (NULL: none);
 * the peer's identity (NULL: a server in optional mode whose client sent
 * no certificate), as an object and in DNS form; whether the session was
 * resumed (1) or fully negotiated (0); the cipher suite's name. Strings
 * live as long as the connection. */
MESH_API const char *mesh_tls_conn_alpn(const mesh_tls_conn *conn);
MESH_API const mesh_identity *mesh_tls_conn_peer(const mesh_tls_conn *conn);
MESH_API const char *mesh_tls_conn_peer_identity(const mesh_tls_conn *conn);
MESH_API int mesh_tls_conn_resumed(const mesh_tls_conn *conn);
MESH_API const char *mesh_tls_conn_cipher(const mesh_tls_conn *conn);

/* The peer's leaf certificate as a one-element mesh_certs (free it).
 * MESH_ERR_NOT_FOUND (none), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_tls_conn_peer_certs(const mesh_tls_conn *conn, mesh_certs **ret);

/* The configuration the connection was made with (borrowed). */
MESH_API const mesh_tls_config *mesh_tls_conn_config(const mesh_tls_conn *conn);

/* Graceful close: flush the plaintext already written, send close_notify,
 * and free the connection once the socket has taken it all (or after the
 * handshake timeout). No callbacks run after this call and conn is invalid. */
MESH_API void mesh_tls_conn_close(mesh_tls_conn *conn);

/* Immediate close; NULL is a no-op. */
MESH_API void mesh_tls_conn_free(mesh_tls_conn *conn);

MESH_END_DECLS

#endif
