/* libmesh proxy internals: the engine's state, shared by proxy.c, proxy_conn.c and proxy_admin.c. */
#ifndef MESH_PROXY_CONN_INTERNAL_H
#define MESH_PROXY_CONN_INTERNAL_H

#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <mesh/balance.h>
#include <mesh/metrics.h>
#include <mesh/policy.h>
#include <mesh/proxy.h>
#include <mesh/tls.h>

#include "http_internal.h"

struct event;
struct evhttp;
struct evconnlistener;
struct mesh_proxy_conn;
struct hsrv;
struct mesh_pool;

struct mesh_proxy_opts {
  mesh_ctx *ctx;
  char *out_addr, *in_addr, *admin_addr; /* "" = off */
  struct {
    char *listen, *authority;
  } maps[MESH_PROXY_PORT_MAPS_MAX];
  size_t nmaps;
  char *endpoints_file, *profiles_dir, *identity_dir, *cert, *key, *anchors, *ports;
  char *destination_addr, *destination_id; /* discovery (NULL: the endpoints file only) */
  /* Self-certification with mesh-identity (NULL addr: credentials from files);
   * the trust anchors are in anchors. */
  char *identity_addr, *identity_token_file, *identity_sa, *identity_svc_name;
  /* Inbound policy: the manifests, this workload (namespace, labels), the
   * default for ports no Server selects, the cluster networks. */
  char *policy_dir, *workload_ns, *labels_str, *labels_buf, *cluster_networks;
  char *workload_name; /* the Workload in the store: the policy stream's (NULL: none) */
  /* Registration with mesh-destination (proxy_register.c): on, its lease,
   * the application's ports "name=port,..." (NULL: none). */
  int reg_on;
  uint32_t reg_lease_s;
  char *reg_ports;
  mesh_policy_label labels[MESH_PROXY_LABELS_MAX];
  size_t nlabels;
  int32_t default_policy;
  int allow_unauth;
  uint32_t connect_ms, header_ms, grace_ms, max_conns, buffer, max_in_flight;
  uint32_t detect_ms, response_ms, inbound_connect_ms, max_head_bytes, max_fields;
  uint32_t failfast_ms[2], queue_cap[2]; /* [0] outbound, [1] inbound */
  char *opaque;          /* the opaque ports as given */
  /* Inbound traffic goes to the application at this address ("[v6]" with
   * brackets) and the port the transport header names. */
  char inbound_host[48];
  struct sockaddr_storage inbound_ip; /* the same, port 0 */
  socklen_t inbound_iplen;
  uint8_t opaque_bits[8192];
  uint64_t idle_ms;
  mesh_proxy_done_fn done_fn;
  void *done_ud;
};

enum { LST_TRANSPARENT = 0, LST_PORT_MAP = 1, LST_INBOUND = 2 };

typedef struct {
  mesh_proxy *p;
  const char *direction;
} pool_side;

typedef struct {
  mesh_proxy *p;
  struct evconnlistener *l;
  int kind;
  char *authority; /* port maps */
  struct sockaddr_storage bound;
  char text[64];
} proxy_listener;

/* An endpoints file and a balancer per service: swapped whole on reload;
 * connections picking an endpoint hold a reference until the pick is done. */
typedef struct {
  mesh_ctx *ctx;
  long refs;
  mesh_proxy_endpoints *eps;
  mesh_balance **bal;
  size_t n;
} proxy_snapshot;

struct mesh_proxy {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_proxy_opts *o;
  uint8_t ports[8192]; /* inbound allowlist bitmap */
  int ports_all;
  uint64_t rng;
  proxy_listener *lst;
  size_t nlst;
  struct evhttp *http;
  uint16_t admin_port;
  mesh_tls_creds *creds;
  int ready, cred_stat_ok, cred_warned;
  struct timespec cred_mtime;
  ino_t cred_ino;
  char identity[256];
  uint64_t not_after;
  char *chain_pem; /* the certificates in use (public), for /env.json: meshctl check verifies them */
  proxy_snapshot *snap;
  struct mesh_discovery *disc; /* mesh-destination's Get streams (discovery.c); NULL: none */
  struct proxy_identity *ident; /* Certify with mesh-identity (proxy_identity.c); NULL: files */
  struct proxy_register *reg;   /* the Workload's registration (proxy_register.c); NULL: none */
  struct proxy_profiles *profiles; /* ServiceProfiles and TrafficSplits (proxy_profiles.c) */
  uint64_t prof_stamp;
  mesh_policy *policy; /* inbound authorization (proxy_policy.c); NULL: everything allowed */
  uint64_t pol_stamp;
  struct disc_policy *polw; /* the policy stream (discovery_policy.c); NULL: none */
  /* The namespace and labels the policy stream's last good message gave
   * this workload (decisions use them instead of the options'); NULL: none. */
  struct proxy_workload *pwl;
  int policy_pending; /* the policy stream's first policy has not come: not ready, inbound refused */
  int ep_stat_ok;
  struct timespec ep_mtime;
  ino_t ep_ino;
  off_t ep_size;
  uint64_t reloads, accept_errors;
  struct event *poll_timer, *resume_timer, *grace_timer, *finish_timer;
  struct mesh_proxy_conn *conns; /* every open connection, for shutdown and sweeps */
  struct hsrv *hsrvs;            /* every accepted HTTP connection (proxy_http.c) */
  struct http_queue *hq;         /* requests waiting to fail fast (proxy_http.c) */
  uint32_t nconns;               /* accepted connections, opaque and HTTP */
  uint32_t in_flight;            /* HTTP requests being handled */
  struct mesh_pool *out_pool, *in_pool;
  pool_side pool_sides[2]; /* which proxy and direction a pool's connections count under */
  mh_limits http_limits;
  uint32_t http_window;
  int limit_paused, emfile_paused, shutting_down, finish_armed, finished;
  struct {
    mesh_metrics *reg;
    mesh_metric_family *open_total, *open_conns, *read_bytes, *write_bytes, *close_total,
        *in_errors, *out_errors, *req_total, *rsp_total, *rsp_latency, *rt_req, *rt_rsp,
        *rt_latency, *rt_actual_req, *rt_actual_rsp, *rt_retryable, *authz_http_allow,
        *authz_http_deny, *http_route_not_found, *authz_tcp_allow, *authz_tcp_deny;
    mesh_metric_series *cert_expiry, *cert_refresh;
  } m;
};

mesh_ctx *mesh__proxy_opts_ctx(const mesh_proxy_opts *o);
uint64_t mesh__proxy_now_ns(void);
uint32_t mesh__proxy_rand(mesh_proxy *p);
void mesh__proxy_timer(struct event *ev, uint64_t ms);
void mesh__proxy_snapshot_unref(proxy_snapshot *s);
void mesh__proxy_listeners_enable(mesh_proxy *p);
void mesh__proxy_limit_check(mesh_proxy *p);
void mesh__proxy_drain_check(mesh_proxy *p);

/* proxy_conn.c */
void mesh__proxy_inbound_accept(mesh_proxy *p, proxy_listener *pl, int fd);
/* key: the authority or original destination; dst (transparent mode): where
 * to connect when key is unknown (NULL: close). */
void mesh__proxy_outbound_accept(mesh_proxy *p, proxy_listener *pl, int fd, const char *key,
                                 const struct sockaddr *dst, socklen_t dstlen);
void mesh__proxy_conns_close_all(mesh_proxy *p);
void mesh__proxy_idle_sweep(mesh_proxy *p);
/* Count a connection that failed before it was proxied. */
void mesh__proxy_error(mesh_proxy *p, int inbound, const char *error, const char *target);

/* An accepted connection (opaque or HTTP) is gone: accepting may resume,
 * a shutdown may finish. */
void mesh__proxy_conn_gone(mesh_proxy *p);
/* 1 when port is one of the opaque ports (no protocol detection). */
int mesh__proxy_opaque_port(const mesh_proxy *p, uint16_t port);

/* proxy_http.c: HTTP connections handed over after detection (outbound:
 * the application's plaintext bev, key/dst as for opaque connections, key
 * NULL in explicit mode) or after an inbound transport header naming h2. */
int mesh__proxy_http_init(mesh_proxy *p);
void mesh__proxy_http_free(mesh_proxy *p);
void mesh__proxy_http_outbound(mesh_proxy *p, struct bufferevent *bev, int proto, const char *key,
                               const struct sockaddr *dst, socklen_t dstlen);
void mesh__proxy_http_inbound(mesh_proxy *p, mesh_tls_conn *tls, uint16_t port, const char *peer);
void mesh__proxy_http_shutdown(mesh_proxy *p);
/* An upgraded HTTP/1 exchange (101) becomes an opaque outbound connection:
 * down is the application's bufferevent, up the upstream's (owned by tls
 * when set); both are taken (freed on failure). */
void mesh__proxy_splice(mesh_proxy *p, struct bufferevent *down, struct bufferevent *up,
                        mesh_tls_conn *tls, const char *target, const char *server_id);
void mesh__proxy_http_close_all(mesh_proxy *p);
/* Endpoints may have become ready (an endpoints file or a discovery update):
 * the requests waiting for one try again, from the loop. */
void mesh__proxy_http_kick(mesh_proxy *p);

/* proxy_policy.c */
int mesh__proxy_policy_load(mesh_proxy *p, mesh_diags *diags, mesh_policy **ret, const char **why);
/* Put pol in force (taking the reference), from where it came (a
 * directory, the control plane) for the log: what the directory reload and
 * the policy stream both go through. Open opaque connections pol no longer
 * authorizes are closed. */
void mesh__proxy_policy_install(mesh_proxy *p, mesh_policy *pol, const char *from);
/* Open the policy stream of the Workload o->workload_ns:o->workload_name
 * (p->disc set); the proxy is not ready until its first policy.
 * MESH_ERR_PARSE (the policy options, with *why), MESH_ERR_NOMEM,
 * MESH_ERR_LIMIT. free: stops it (no stream: a no-op). */
int mesh__proxy_policy_stream_start(mesh_proxy *p, const char **why);
void mesh__proxy_policy_stream_free(mesh_proxy *p);
int mesh__proxy_policy_metrics(mesh_proxy *p);
int mesh__proxy_labels_parse(mesh_proxy_opts *o, const char *s, const char **why);
/* The inbound decision for a request (req) or a connection (req NULL) to
 * the local port from the verified client (NULL or "": none) at peer:
 * MESH_POLICY_ALLOW, _DENY or _NOT_FOUND (with *why), counted in the
 * inbound_*_authz_* metrics when count_it. Allows everything when no
 * policy is loaded -- except while the policy stream's first policy is
 * awaited: MESH_ERR_UNAVAILABLE (with *why), refuse (HTTP 503). */
int mesh__proxy_authorize(mesh_proxy *p, uint16_t port, const char *client_id,
                          const struct sockaddr *peer, const mh_head *req, int count_it,
                          const char **why);
/* A new policy: open inbound opaque connections it no longer authorizes
 * are closed (HTTP requests are decided one by one anyway). */
void mesh__proxy_conns_reauthorize(mesh_proxy *p);

/* path whole into a NUL-terminated allocation of at most max bytes (keys
 * and tokens included: what is read past the limit is zeroed); NULL with
 * *why on failure. */
char *mesh__proxy_read_file(mesh_ctx *ctx, const char *path, size_t max, size_t *len,
                            const char **why);
/* Install a certificate chain (leaf first), its key and the trust anchors,
 * all PEM in memory, as the proxy's credentials for new handshakes (and
 * discovery's): what credentials from files and from mesh-identity both
 * go through. The proxy is ready from the first success on. 0, or the
 * error of mesh_tls_config_new with *why. */
int mesh__proxy_creds_install(mesh_proxy *p, const char *chain, size_t chain_len, const char *key,
                              size_t key_len, const char *anchors, size_t anchors_len,
                              const char **why);

/* proxy_identity.c: certify with mesh-identity now and keep renewing
 * (p->o->identity_addr set). MESH_ERR_PARSE (with *why: the identity
 * asked for or the service's name), MESH_ERR_NOMEM. free: stops it; NULL
 * is a no-op. */
int mesh__proxy_identity_start(mesh_proxy *p, const char **why, struct proxy_identity **ret);
void mesh__proxy_identity_free(struct proxy_identity *id);

/* proxy_register.c: register the Workload (o->workload_ns/name, the
 * inbound listener's address) with mesh-destination over discovery's
 * client, now or at the first certificate (kick), and renew at a third of
 * the lease, retrying with backoff. MESH_ERR_INVALID (with *why: no
 * destination, no workload name, or an inbound listener on a wildcard
 * address), MESH_ERR_NOMEM. stop: no more renewals; when registered, a
 * Deregister is sent and then(p) runs once it is answered (or after 1 s):
 * 1; otherwise 0 and then is not called. detach: before discovery's
 * client is freed (its pending callbacks then do nothing); free: after.
 * NULL is a no-op for kick, stop, detach and free. */
typedef struct proxy_register proxy_register;
int mesh__proxy_register_start(mesh_proxy *p, const char **why, proxy_register **ret);
void mesh__proxy_register_kick(proxy_register *r);
int mesh__proxy_register_stop(proxy_register *r, void (*then)(mesh_proxy *p));
void mesh__proxy_register_detach(proxy_register *r);
void mesh__proxy_register_free(proxy_register *r);

/* proxy_admin.c */
int mesh__proxy_admin_start(mesh_proxy *p, const char **why);
void mesh__proxy_admin_stop(mesh_proxy *p);

#endif
