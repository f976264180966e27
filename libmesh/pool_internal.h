/* libmesh pool internals: client connections per target (HTTP/1 keep-alive, one multiplexed HTTP/2), connect timeouts, backoff. */
#ifndef MESH_POOL_INTERNAL_H
#define MESH_POOL_INTERNAL_H

#include <sys/socket.h>

#include <mesh/tls.h>

#include "http_internal.h"

struct bufferevent;
struct event_base;

/* A target is where requests go: an address, how to speak to it (plain,
 * or mTLS to a peer proxy with the transport header naming hdr_port and
 * HTTP/2 inside), and the protocol. Requests for one target share its
 * connections. */
typedef struct {
  struct sockaddr_storage addr;
  socklen_t addrlen;
  const char *identity; /* the peer proxy's identity: mTLS; NULL: plain */
  uint16_t hdr_port;    /* meshed: the port the peer proxy forwards to */
  int proto;            /* MH_H1 or MH_H2 (always MH_H2 when meshed) */
  /* A connection of its own, never shared, for a request that will
   * upgrade (WebSocket): HTTP/1 end to end, meshed ones through an opaque
   * transport header ({"port": N}). */
  int fresh;
} pool_key;

/* Told of each connection the pool opens (open: once it is ready; token
 * is handed back to close) and closes (err: "" or an errno name); the
 * proxy counts them in tcp_*. bev lives until close returns. */
typedef struct {
  void *(*open)(void *ud, struct bufferevent *bev, const pool_key *k);
  void (*close)(void *ud, void *token, const char *err);
  /* A fresh connection switched protocols (101): from now on its bytes
   * are the caller's. bev is its plaintext bufferevent, tls (NULL: plain)
   * owns bev when set; both now belong to the callee. c is about to go. */
  void (*upgraded)(void *ud, mh_conn *c, struct bufferevent *bev, mesh_tls_conn *tls);
  void *ud;
} pool_observer;

typedef struct {
  pool_observer obs;        /* all NULL: none */
  uint32_t connect_ms;      /* TCP connect (the TLS handshake has its own timeout) */
  uint32_t max_idle;        /* HTTP/1: idle keep-alive connections kept per target */
  uint32_t max_conns;       /* connections per target (open + connecting) */
  uint32_t max_waiting;     /* requests waiting per target for a connection */
  mh_limits limits;         /* for the connections; idle_timeout_ms closes idle ones */
} pool_opts;

typedef struct mesh_pool mesh_pool;
typedef struct pool_wait pool_wait;

/* A connection for the request that waited: c can take one request now --
 * start it (mh_client_request) before returning. Or c NULL, err a
 * MESH_ERR_* (MESH_ERR_CONNECT, MESH_ERR_TIMEOUT, MESH_ERR_IDENTITY,
 * MESH_ERR_TLS, MESH_ERR_LIMIT, MESH_ERR_CLOSED), why for a person, and
 * code one of the proxy's error labels ("connect_refused", ...). */
typedef void (*pool_fn)(void *ud, mh_conn *c, int err, const char *code, const char *why);

/* creds (borrowed; outlives the pool) gives the client certificate for
 * meshed targets. MESH_ERR_NOMEM. */
int mesh__pool_new(mesh_ctx *ctx, struct event_base *base, const pool_opts *o,
                   mesh_tls_creds *creds, mesh_pool **ret);
/* Close every connection at once; waiters are dropped without a callback. */
void mesh__pool_free(mesh_pool *pl);

/* A connection to k for one request. 0 with *ret_conn (start the request
 * now) or with *ret_wait (fn runs later, from the loop, exactly once unless
 * cancelled). With too many waiting, fails at once: the error, with *code
 * and *why. A target that failed is tried again on demand: the balancer's
 * failure accrual, not the pool, keeps requests away from a dead endpoint
 * (and lets its probe through). */
int mesh__pool_get(mesh_pool *pl, const pool_key *k, pool_fn fn, void *ud, mh_conn **ret_conn,
                   pool_wait **ret_wait, const char **code, const char **why);
void mesh__pool_cancel(pool_wait *w);
/* An exchange on c (from this pool) has ended: c may serve the next waiter
 * or go idle. */
void mesh__pool_done(mesh_pool *pl, mh_conn *c);
/* No new requests: connections close as their exchanges end. */
void mesh__pool_shutdown(mesh_pool *pl);
/* Open connections (all targets). */
uint32_t mesh__pool_connections(const mesh_pool *pl);

#endif
