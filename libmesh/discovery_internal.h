/* libmesh discovery internals: endpoint sets and profiles kept from mesh-destination's Get and GetProfile streams, for the proxy. */
#ifndef MESH_DISCOVERY_INTERNAL_H
#define MESH_DISCOVERY_INTERNAL_H

#include <sys/socket.h>

#include <mesh/balance.h>
#include <mesh/ctx.h>
#include <mesh/metrics.h>
#include <mesh/profile.h>
#include <mesh/rpc.h>
#include <mesh/tls.h>

#include "annotations_internal.h"

struct event_base;
struct proxy_profiles;

/* Bounds on what the control plane may make us hold. */
#define DISC_AUTHORITIES_MAX 10000u
#define DISC_ENDPOINTS_MAX 1000u
#define DISC_MESSAGE_MAX 1048576u /* one Get message (a line), as the rpc client bounds it */
#define DISC_AUTHORITY_MAX 512u   /* doc/protocol.md: path */
/* How long an authority nobody looks up stays in the cache, per side that
 * looked it up (an entry keeps the longest of its users'): Linkerd's
 * outbound and inbound discovery idle timeouts. The inbound side keeps
 * profiles longer because it never waits for one (a dropped entry costs
 * the route metrics of the requests until the next answer). */
#define DISC_OUTBOUND_IDLE_MS 5000u
#define DISC_INBOUND_IDLE_MS 90000u
/* Entries the inbound side may hold: its names come from peers
 * (l5d-dst-canonical, the authority), not from this workload's own calls.
 * Past it, new names get no profile (no route metrics). */
#define DISC_INBOUND_AUTHORITIES_MAX 1000u
#define DISC_BACKOFF_MIN_MS 100u
#define DISC_BACKOFF_MAX_MS 10000u

/* What is known of an authority. */
enum { DISC_PENDING = 0, DISC_READY = 1, DISC_NOT_FOUND = 2 };

/* Who looks an authority up: the outbound side (a request's logical
 * destination, its backends) or the inbound side (the destination a peer's
 * request names, for the server's route metrics). */
typedef enum { DISC_OUTBOUND = 0, DISC_INBOUND = 1 } disc_side;

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

/* One GetProfile message (a DestinationProfile, a JSON line of len bytes)
 * as the profile the proxy routes by: routes (conditions, response classes,
 * is_retryable, timeout, a route's own retry_budget), the retry budget and
 * dst_overrides, compiled by the profile module exactly as the same
 * ServiceProfile read from a file (one set of rules, one route parser).
 * 0 with *ret, which is NULL for the default profile (no
 * fully_qualified_name, or neither routes nor dst_overrides); otherwise
 * MESH_ERR_PARSE (malformed, or a bad regex, weight, duration...),
 * MESH_ERR_LIMIT (over DISC_MESSAGE_MAX), MESH_ERR_NOMEM, with why[0..cap)
 * saying what (the compiler's first error). */
int mesh__disc_profile_parse(mesh_ctx *ctx, const char *line, size_t len, mesh_profile **ret,
                             char *why, size_t cap);
/* The same, and the Service's retry and timeout annotations (the message's
 * "annotations" object, checked by the store's parser: a bad value is
 * MESH_ERR_PARSE): *has_ann set, with *ann, when the message has some and
 * no routes -- a ServiceProfile's routes win over annotations, as in
 * Linkerd; dst_overrides alone do not. ann and has_ann may be NULL. */
int mesh__disc_profile_parse_ann(mesh_ctx *ctx, const char *line, size_t len, mesh_profile **ret,
                                 mesh__ann *ann, int *has_ann, char *why, size_t cap);

/* ---- The client of mesh-destination ---- */

typedef struct mesh_discovery mesh_discovery;
typedef struct disc_wait disc_wait;

typedef struct {
  const char *addr;      /* mesh-destination, "127.0.0.1:8086" */
  const char *ns;        /* the proxy's namespace (context_token) */
  mesh_metrics *reg;     /* destination_* metrics (NULL: none) */
  uint32_t wait_ms;      /* bounded wait for a first answer (0: 1000) */
  const char *server_id; /* expected identity: mTLS even on loopback (NULL: derived) */
  /* Called after an endpoints update was applied (NULL: none): requests
   * waiting for a ready endpoint look again. */
  void (*changed)(void *ud);
  void *changed_ud;
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
 * pick to hold it). Starts the authority's Get watch when not started yet
 * and marks the authority used (the idle cache). DISC_READY, DISC_NOT_FOUND,
 * DISC_PENDING (*ret NULL: wait), or a negative MESH_ERR_* (too many
 * authorities, an authority too long, no memory): treat as not found. */
int mesh__discovery_find(mesh_discovery *d, const char *authority, disc_set **ret);

/* The profile of authority as a request's logical destination, in *ret
 * (borrowed: take a reference on the set to hold it; NULL: none). Starts
 * the authority's GetProfile watch when not started yet (its Get watch
 * starts when its endpoints are looked up: one cache entry holds both, and
 * they live, and go idle, together) and marks the authority used by side:
 * the entry then stays at least that side's idle timeout. DISC_INBOUND
 * entries are at most DISC_INBOUND_AUTHORITIES_MAX (MESH_ERR_LIMIT past
 * it, for a name that is not one of them yet).
 * shadowed: the caller has a local profile for it, which wins (logged once
 * per entry when the control plane has one too). DISC_READY (go on with
 * *ret), DISC_PENDING (no answer yet: wait with
 * mesh__discovery_profile_wait; once a first wait ran out, DISC_READY with
 * no profile until one comes), or a negative MESH_ERR_* (go on without). */
int mesh__discovery_profile(mesh_discovery *d, const char *authority, disc_side side,
                            int shadowed, struct proxy_profiles **ret);

/* Wait for authority's first answer, at most the wait bound: fn runs once
 * from the loop (answered 1 when there is an answer now, 0 on timeout),
 * unless cancelled first. MESH_ERR_NOMEM, MESH_ERR_NOT_FOUND (no watch). */
typedef void (*disc_wait_fn)(void *ud, int answered);
int mesh__discovery_wait(mesh_discovery *d, const char *authority, disc_wait_fn fn, void *ud,
                         disc_wait **ret);
/* The same for its first profile answer; a GetProfile stream that ends
 * before any answer ends the wait at once (answered 0). */
int mesh__discovery_profile_wait(mesh_discovery *d, const char *authority, disc_wait_fn fn,
                                 void *ud, disc_wait **ret);
void mesh__discovery_wait_cancel(disc_wait *w); /* NULL is a no-op */

/* Authorities in the cache and open streams (tests, metrics). */
size_t mesh__discovery_authorities(const mesh_discovery *d);
/* How long authority's entry stays once idle, in ms (0: not in the cache).
 * For tests and diagnostics. */
uint32_t mesh__discovery_idle_ms(const mesh_discovery *d, const char *authority);
/* A discovery metric without labels: a gauge (gauge 1) or a counter, in reg.
 * MESH_ERR_NOMEM, or the registry's error. */
int mesh__disc_metric(mesh_metrics *reg, int gauge, const char *name, const char *help,
                      mesh_metric_series **ret);
mesh_ctx *mesh__discovery_ctx(const mesh_discovery *d);

/* A unary call of another module (registrations) over the same client:
 * as mesh_rpc_client_call; MESH_ERR_UNAVAILABLE while mTLS has no
 * credentials yet. */
int mesh__discovery_call(mesh_discovery *d, const char *path, const char *body, uint32_t timeout_ms,
                         mesh_rpc_reply_fn on_reply, void *ud);

/* A stream of another module (the policy stream) over the client's one
 * connection: POST body (JSON text) to path; callbacks as
 * mesh_rpc_client_stream. MESH_ERR_UNAVAILABLE while mTLS has no
 * credentials yet, else the errors of mesh_rpc_client_new and
 * mesh_rpc_client_stream. */
int mesh__discovery_stream(mesh_discovery *d, const char *path, const char *body,
                           mesh_rpc_message_fn on_message, mesh_rpc_end_fn on_end, void *ud,
                           mesh_rpc_stream **ret);
/* The delay before the next reconnect, as every stream of the client
 * backs off (100 ms doubling to 10 s, jittered); *backoff_ms is the
 * stream's state (0: start over). */
uint32_t mesh__discovery_backoff(mesh_discovery *d, uint32_t *backoff_ms);

/* ---- The inbound policy stream (discovery_policy.c) ---- */

typedef struct disc_policy disc_policy;

/* One WatchWorkload message (a JSON line of len bytes, NUL-terminated):
 * 0 when it was applied; MESH_ERR_NOT_FOUND when it says the Workload
 * left the store (kept, not counted); another MESH_ERR_* when it was
 * ignored as invalid (a reject), with why[0..cap) saying what. */
typedef int (*disc_policy_fn)(void *ud, const char *line, size_t len, char *why, size_t cap);

/* Watch workload ("namespace:name") on
 * InboundServerPolicies.WatchWorkload for the life of the watch: opened
 * now, opened again with the client's backoff whenever it ends (a 404
 * while the store has no such Workload too); every message goes to fn.
 * The destination_policy_* metrics go to reg (NULL: none).
 * MESH_ERR_NOMEM, MESH_ERR_LIMIT (workload over 512 bytes), and the
 * errors of the metrics registry. */
int mesh__discovery_policy_new(mesh_discovery *d, struct event_base *base, const char *workload,
                               mesh_metrics *reg, disc_policy_fn fn, void *ud, disc_policy **ret);
/* Cancel the stream; before mesh__discovery_free. NULL is a no-op. */
void mesh__discovery_policy_free(disc_policy *w);

#endif
