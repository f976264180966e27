/* libmesh discovery internals: endpoint sets kept from mesh-destination's Get streams, for the proxy. */
#ifndef MESH_DISCOVERY_INTERNAL_H
#define MESH_DISCOVERY_INTERNAL_H

#include <sys/socket.h>

#include <mesh/balance.h>
#include <mesh/ctx.h>
#include <mesh/metrics.h>
#include <mesh/tls.h>

struct event_base;

/* Bounds on what the control plane may make us hold. */
#define DISC_AUTHORITIES_MAX 10000u
#define DISC_ENDPOINTS_MAX 1000u
#define DISC_MESSAGE_MAX 1048576u /* one Get message (a line), as the rpc client bounds it */
#define DISC_AUTHORITY_MAX 512u   /* doc/protocol.md: path */
#define DISC_IDLE_MS 5000u        /* Linkerd's outbound idle cache */
#define DISC_BACKOFF_MIN_MS 100u
#define DISC_BACKOFF_MAX_MS 10000u

/* What is known of an authority. */
enum { DISC_PENDING = 0, DISC_READY = 1, DISC_NOT_FOUND = 2 };

/* One authority's endpoints and their balancer, changed in place by
 * add/remove/no_endpoints messages. Refcounted: the cache holds one
 * reference, every request that picked one of its endpoints holds one until
 * its pick is done, so the balancer outlives every outstanding pick. Used
 * from the loop's thread only. */
typedef struct disc_set disc_set;

/* An endpoint as a pick hands it out (copied: the set may change after). */
typedef struct {
  struct sockaddr_storage sa;
  socklen_t len;
  char identity[256]; /* the peer proxy's DNS identity; "" when not meshed */
  uint16_t port;      /* target_port (0: the authority's port) */
} disc_endpoint;

/* A set on its own (for tests and for the cache). MESH_ERR_NOMEM. */
int mesh__disc_set_new(mesh_ctx *ctx, disc_set **ret);
void mesh__disc_set_unref(disc_set *s); /* NULL is a no-op */
/* Apply one Get message (a JSON line of len bytes). The whole message is
 * checked before anything changes: on error the set is as it was. first:
 * the stream's first message, the whole current state (a reconnected
 * stream): an add then also removes the endpoints it does not name.
 * 0; MESH_ERR_PARSE (malformed; *why says what), MESH_ERR_LIMIT (more than
 * DISC_ENDPOINTS_MAX endpoints, or the message over DISC_MESSAGE_MAX),
 * MESH_ERR_NOMEM. */
int mesh__disc_set_apply(disc_set *s, const char *line, size_t len, int first,
                         const char **why);
/* DISC_PENDING (no message yet), DISC_READY, DISC_NOT_FOUND. */
int mesh__disc_set_state(const disc_set *s);
size_t mesh__disc_set_count(const disc_set *s);
/* The endpoint with address addr ("ip:port" as the message wrote it); 0 or
 * MESH_ERR_NOT_FOUND. For tests and diagnostics. */
int mesh__disc_set_get(const disc_set *s, const char *addr, disc_endpoint *out,
                       uint32_t *weight);
mesh_balance *mesh__disc_set_balance(disc_set *s);
/* Pick an endpoint (P2C as the endpoints file's balancers): 0 with *ret_ep
 * (to mesh_balance_done) and *out, and a reference on s for the caller
 * (mesh__disc_set_unref once the pick is done). MESH_ERR_UNAVAILABLE. */
int mesh__disc_set_pick(disc_set *s, uint64_t now_ns, uint32_t a, uint32_t b,
                        mesh_endpoint **ret_ep, disc_endpoint *out);

/* ---- The client of mesh-destination ---- */

typedef struct mesh_discovery mesh_discovery;
typedef struct disc_wait disc_wait;

typedef struct {
  const char *addr;      /* mesh-destination, "127.0.0.1:8086" */
  const char *ns;        /* the proxy's namespace (context_token) */
  mesh_metrics *reg;     /* destination_* metrics (NULL: none) */
  uint32_t wait_ms;      /* bounded wait for a first answer (0: 1000) */
  const char *server_id; /* expected identity: mTLS even on loopback (NULL: derived) */
} disc_opts;

/* Plaintext h2c when addr is a loopback address and no server_id is given;
 * otherwise mTLS with the
 * configuration given to mesh__discovery_set_tls (streams wait for it).
 * MESH_ERR_PARSE (addr), MESH_ERR_NOMEM, MESH_ERR_INVALID. */
int mesh__discovery_new(mesh_ctx *ctx, struct event_base *base, const disc_opts *o,
                        mesh_discovery **ret);
/* Cancel every stream and wait; sets stay alive while picks hold them. */
void mesh__discovery_free(mesh_discovery *d); /* NULL is a no-op */
/* The client's TLS configuration (ALPN h2) and the server identity expected
 * (NULL: derived from the configuration's own identity,
 * linkerd-destination.<cp-ns>.serviceaccount.identity.<cp-ns>.<td>). */
void mesh__discovery_set_tls(mesh_discovery *d, mesh_tls_config *cfg, const char *server_id);

/* The set of authority (lowercase host:port), in *ret (borrowed: take a
 * pick to hold it). Starts a watch for an authority not known yet and marks
 * the authority used (the idle cache). DISC_READY, DISC_NOT_FOUND,
 * DISC_PENDING (*ret NULL: wait), or a negative MESH_ERR_* (too many
 * authorities, an authority too long, no memory): treat as not found. */
int mesh__discovery_find(mesh_discovery *d, const char *authority, disc_set **ret);

/* Wait for authority's first answer, at most the wait bound: fn runs once
 * from the loop (answered 1 when there is an answer now, 0 on timeout),
 * unless cancelled first. MESH_ERR_NOMEM, MESH_ERR_NOT_FOUND (no watch). */
typedef void (*disc_wait_fn)(void *ud, int answered);
int mesh__discovery_wait(mesh_discovery *d, const char *authority, disc_wait_fn fn, void *ud,
                         disc_wait **ret);
void mesh__discovery_wait_cancel(disc_wait *w); /* NULL is a no-op */

/* Authorities in the cache and open streams (tests, metrics). */
size_t mesh__discovery_authorities(const mesh_discovery *d);

#endif
