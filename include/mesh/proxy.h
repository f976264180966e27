/* libmesh proxy: the meshd data plane (opaque TCP over mTLS between proxies), its endpoints file and admin server. */
#ifndef MESH_PROXY_H
#define MESH_PROXY_H

#include <mesh/ctx.h>
#include <mesh/diag.h>

/* The engine runs on the application's libevent loop; only this type
 * crosses the API, and only as a pointer. */
struct event_base;

MESH_BEGIN_DECLS

/* Thread safety: a mesh_proxy_endpoints is immutable once parsed and may be
 * read from any thread; ref/unref are not atomic (one thread owns the
 * references). A mesh_proxy and its options belong to the thread that runs
 * the event_base given to mesh_proxy_new: v0 runs one event loop, one
 * worker, for every listener and connection. doc/meshd.md describes the
 * behaviour (listeners, transport header, metrics, admin endpoints). */

/* ---- The endpoints file ------------------------------------------------ */

/* A static endpoints file, JSON:
 *   {"services": {
 *      "web.default.svc.cluster.local:80": {"endpoints": [
 *         {"addr": "127.0.0.2:4143",
 *          "identity": "web.default.serviceaccount.identity.linkerd.cluster.local",
 *          "weight": 1}]},
 *      "127.0.0.2:8080": {"endpoints": [...]}}}
 * Keys are authorities host:port (a DNS name, an IPv4 address or an [IPv6]
 * address; lowercase), looked up by port-map listeners, or plain addresses
 * looked up by a connection's original destination in transparent mode.
 * addr is a numeric IP:port ([v6]:port). identity (either form; optional)
 * is the peer proxy's workload identity: an endpoint without one is not
 * meshed and gets plain TCP. weight is 1..MESH_PROXY_WEIGHT_MAX (default
 * 1). port (optional, meshed endpoints only) is the port the peer proxy
 * connects to on its host, sent in the transport header; by default the
 * port of the service's key. Unknown fields are errors, so that typos do
 * not go unnoticed. */
typedef struct mesh_proxy_endpoints mesh_proxy_endpoints;

#define MESH_PROXY_ENDPOINTS_MAX_BYTES 4194304u /* 4 MiB of file */
#define MESH_PROXY_SERVICES_MAX 10000u
#define MESH_PROXY_SERVICE_ENDPOINTS_MAX 1000u
#define MESH_PROXY_WEIGHT_MAX 1000u

/* Parse len bytes of buf. file names the input in diagnostics (NULL:
 * "<endpoints>"); diags (may be NULL) gets every problem found, with
 * line:column for JSON syntax errors and the JSON path otherwise.
 * MESH_ERR_PARSE (invalid), MESH_ERR_LIMIT (over a bound above),
 * MESH_ERR_INVALID (NULL ctx, buf or ret), MESH_ERR_NOMEM. *ret untouched
 * on failure. */
MESH_API int mesh_proxy_endpoints_parse(mesh_ctx *ctx, const char *buf, size_t len,
                                        const char *file, mesh_diags *diags,
                                        mesh_proxy_endpoints **ret);
/* The same, reading path. Adds MESH_ERR_IO (with a diagnostic). */
MESH_API int mesh_proxy_endpoints_load(mesh_ctx *ctx, const char *path, mesh_diags *diags,
                                       mesh_proxy_endpoints **ret);
MESH_API mesh_proxy_endpoints *mesh_proxy_endpoints_ref(mesh_proxy_endpoints *e);
MESH_API void mesh_proxy_endpoints_unref(mesh_proxy_endpoints *e); /* NULL is a no-op */

/* Services in the file, sorted by key; the i-th key (NULL out of range). */
MESH_API size_t mesh_proxy_endpoints_service_count(const mesh_proxy_endpoints *e);
MESH_API const char *mesh_proxy_endpoints_service(const mesh_proxy_endpoints *e, size_t i);
/* The index of the service keyed key (compared exactly, after lowercasing
 * key), in *ret_index. MESH_ERR_NOT_FOUND, MESH_ERR_INVALID. O(log n). */
MESH_API int mesh_proxy_endpoints_find(const mesh_proxy_endpoints *e, const char *key,
                                       size_t *ret_index);
/* Endpoints of service svc, and endpoint i's fields (strings live as long
 * as e; NULL / 0 out of range). identity is the DNS form, NULL when the
 * endpoint is not meshed. */
MESH_API size_t mesh_proxy_endpoints_count(const mesh_proxy_endpoints *e, size_t svc);
MESH_API const char *mesh_proxy_endpoints_addr(const mesh_proxy_endpoints *e, size_t svc,
                                               size_t i);
MESH_API const char *mesh_proxy_endpoints_identity(const mesh_proxy_endpoints *e, size_t svc,
                                                   size_t i);
MESH_API uint32_t mesh_proxy_endpoints_weight(const mesh_proxy_endpoints *e, size_t svc,
                                              size_t i);
/* The endpoint's transport-header port; 0 when not given (the key's port). */
MESH_API uint16_t mesh_proxy_endpoints_port(const mesh_proxy_endpoints *e, size_t svc, size_t i);

/* ---- Options ------------------------------------------------------------ */

typedef struct mesh_proxy_opts mesh_proxy_opts;

#define MESH_PROXY_DEFAULT_OUTBOUND_ADDR "127.0.0.1:4140"
#define MESH_PROXY_DEFAULT_INBOUND_ADDR "0.0.0.0:4143"
#define MESH_PROXY_DEFAULT_ADMIN_ADDR "127.0.0.1:4191"
#define MESH_PROXY_DEFAULT_CONNECT_TIMEOUT_MS 1000u
#define MESH_PROXY_DEFAULT_HEADER_TIMEOUT_MS 10000u  /* TLS handshake + transport header */
#define MESH_PROXY_DEFAULT_IDLE_TIMEOUT_MS 3600000u  /* 1 h without a byte either way */
#define MESH_PROXY_DEFAULT_SHUTDOWN_GRACE_MS 5000u
#define MESH_PROXY_DEFAULT_MAX_CONNECTIONS 10000u    /* accepted, inbound + outbound */
#define MESH_PROXY_DEFAULT_BUFFER_BYTES 65536u       /* buffered per direction */
#define MESH_PROXY_HEADER_MAX 1024u                  /* transport header JSON bytes */
#define MESH_PROXY_PORT_MAPS_MAX 64u
#define MESH_PROXY_ALPN "transport.l5d.io/v1"

/* New options with the defaults above, no credentials, no endpoints file,
 * no port maps. MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_new(mesh_ctx *ctx, mesh_proxy_opts **ret);
MESH_API void mesh_proxy_opts_free(mesh_proxy_opts *o); /* NULL is a no-op */

/* Listen addresses, numeric "IP:port" or "[IPv6]:port" (port 0: any free
 * port); "" turns the listener off. MESH_ERR_PARSE (with *why),
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_outbound_addr(mesh_proxy_opts *o, const char *addr,
                                               const char **why);
MESH_API int mesh_proxy_opts_set_inbound_addr(mesh_proxy_opts *o, const char *addr,
                                              const char **why);
MESH_API int mesh_proxy_opts_set_admin_addr(mesh_proxy_opts *o, const char *addr,
                                            const char **why);

/* An explicit outbound listener: "LISTEN=AUTHORITY", e.g.
 * "127.0.0.1:5000=web.default.svc.cluster.local:80": connections accepted
 * on LISTEN go to AUTHORITY's endpoints (closed when the endpoints file
 * does not know it). MESH_ERR_PARSE (with *why), MESH_ERR_LIMIT (over
 * MESH_PROXY_PORT_MAPS_MAX), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_add_port_map(mesh_proxy_opts *o, const char *map, const char **why);

/* The endpoints file (NULL: none, every destination is unknown).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_endpoints_file(mesh_proxy_opts *o, const char *path);

/* Discovery: mesh-destination's address ("127.0.0.1:8086", "[::1]:8086",
 * "localhost:8086"; NULL or "": none). Authorities the endpoints file does
 * not know are looked up through Get streams (doc/meshd.md, Discovery):
 * plaintext h2c to a loopback address, else mTLS with the proxy's own
 * credentials, expecting linkerd-destination.<cp-ns>.serviceaccount.identity.<cp-ns>.<td>.
 * The workload's namespace (mesh_proxy_opts_set_workload; "default") is
 * sent as the context token: the namespace of short names. MESH_ERR_PARSE
 * (with *why), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_destination_addr(mesh_proxy_opts *o, const char *addr,
                                                  const char **why);
/* The identity mesh-destination must present (either form; NULL: the
 * derived one above). When set, the proxy speaks mTLS to it even on a
 * loopback address (Linkerd's LINKERD2_PROXY_DESTINATION_SVC_NAME).
 * MESH_ERR_PARSE (with *why), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_destination_identity(mesh_proxy_opts *o, const char *name,
                                                      const char **why);

/* ServiceProfiles and TrafficSplits (NULL: none): every *.yaml, *.yml and
 * *.json file of dir, read at start (a bad set fails mesh_proxy_new), on
 * mesh_proxy_reload and when a file changes (polled every second); a bad
 * set later is logged and the previous one kept. MESH_ERR_INVALID,
 * MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_profiles_dir(mesh_proxy_opts *o, const char *dir);

/* Inbound authorization (Linkerd's policy kinds: Server, ServerAuthorization,
 * AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication,
 * HTTPRoute), from every manifest file of dir, read and re-read as the
 * profiles are. Decisions are for this workload: its namespace and labels
 * ("app=web,tier=front", at most MESH_PROXY_LABELS_MAX), against the
 * application port each connection goes to. The default policy for ports
 * no Server selects is one of Linkerd's names ("all-unauthenticated", the
 * default, "all-authenticated", "cluster-authenticated",
 * "cluster-unauthenticated", "deny", "audit"); cluster networks are CIDRs
 * ("10.0.0.0/8,..."; Linkerd's by default). Without a policy directory
 * every peer is allowed. MESH_ERR_PARSE (with *why), MESH_ERR_INVALID,
 * MESH_ERR_NOMEM. */
#define MESH_PROXY_LABELS_MAX 64u
MESH_API int mesh_proxy_opts_set_policy_dir(mesh_proxy_opts *o, const char *dir);
MESH_API int mesh_proxy_opts_set_workload(mesh_proxy_opts *o, const char *ns, const char *labels,
                                          const char **why);
MESH_API int mesh_proxy_opts_set_default_inbound_policy(mesh_proxy_opts *o, const char *name,
                                                        const char **why);
MESH_API int mesh_proxy_opts_set_cluster_networks(mesh_proxy_opts *o, const char *cidrs);
/* This proxy's Workload in the store (NULL or "": none): with the
 * workload's namespace (mesh_proxy_opts_set_workload) it is the
 * "namespace:name" of Linkerd's LINKERD2_PROXY_POLICY_WORKLOAD. With a
 * destination address and no policy directory (the directory wins), the
 * proxy watches that Workload's inbound policy on mesh-destination's
 * InboundServerPolicies.WatchWorkload stream (doc/protocol.md) for its
 * whole life, reconnecting with the discovery streams' backoff: each
 * message is compiled with the options above and put in force as a
 * reloaded directory is, and decisions use the namespace and labels the
 * message gives (not those of mesh_proxy_opts_set_workload). A message
 * that does not compile, one saying the Workload left the store, and the
 * control plane going away all keep the policy in force. Until the first
 * policy the proxy is not ready (mesh_proxy_ready, /ready) and refuses
 * inbound traffic: HTTP 503 with l5d-proxy-error: policy_pending, opaque
 * connections closed. MESH_ERR_PARSE (with *why: not a DNS name),
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_workload_name(mesh_proxy_opts *o, const char *name,
                                               const char **why);

/* Credentials: a directory holding leaf.crt (chain, leaf first), key.pem
 * and ca.crt (what `meshctl identity certify --out-dir` writes), or three
 * files. Read at start, on mesh_proxy_reload and when leaf.crt's mtime
 * changes; until they load the proxy is not ready and refuses meshed
 * connections. MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_identity_dir(mesh_proxy_opts *o, const char *dir);
MESH_API int mesh_proxy_opts_set_credential_files(mesh_proxy_opts *o, const char *cert,
                                                  const char *key, const char *anchors);

/* Credentials from the identity service instead (Linkerd's proxy identity;
 * doc/meshd.md, Identity): at start the proxy makes a P-256 key in memory
 * (it is never written anywhere), sends a CSR with the workload's token to
 * mesh-identity at addr ("127.0.0.1:8080", "[::1]:8080", "localhost:8080")
 * over TLS, checks the answer against the trust anchors of anchors (a PEM
 * file), and installs it as the identity-dir credentials are installed;
 * it certifies again, with a new key, at 70 % of the certificate's life
 * (mesh_identity_renew_at), and retries failures with
 * mesh_identity_retry_delay_ms. token_file (read again for every request,
 * like a projected service-account token) holds the token of
 * `meshctl identity token`. The identity asked for is
 *   <service_account>.<workload ns>.serviceaccount.identity.<cp-ns>.<trust-domain>
 * with the workload's namespace (mesh_proxy_opts_set_workload; "default")
 * and the control-plane namespace and trust domain of the identity
 * service's own name (below). Exclusive with the identity directory and
 * the credential files: mesh_proxy_new refuses both (MESH_ERR_INVALID).
 * addr NULL or "" turns it off. MESH_ERR_PARSE (with *why: address or
 * service account), MESH_ERR_INVALID (NULLs when addr is set),
 * MESH_ERR_NOMEM. */
#define MESH_PROXY_DEFAULT_IDENTITY_SVC_NAME \
  "identity.linkerd.serviceaccount.identity.linkerd.cluster.local"
#define MESH_PROXY_IDENTITY_TIMEOUT_MS 10000u /* one Certify call, connecting included */
MESH_API int mesh_proxy_opts_set_identity_service(mesh_proxy_opts *o, const char *addr,
                                                  const char *token_file,
                                                  const char *service_account,
                                                  const char *anchors, const char **why);
/* The identity the identity service must present (either form; NULL: the
 * default above, what mesh-identity presents with Linkerd's names:
 * identity.<cp-ns>.serviceaccount.identity.<cp-ns>.<trust-domain>).
 * MESH_ERR_PARSE (with *why), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_identity_service_name(mesh_proxy_opts *o, const char *name,
                                                       const char **why);

/* Inbound connections without a client certificate: refused (0, the
 * default) or accepted as tls="no_identity" (1). MESH_ERR_INVALID. */
MESH_API int mesh_proxy_opts_set_inbound_allow_unauthenticated(mesh_proxy_opts *o, int allow);

/* Register this workload with mesh-destination (on nonzero; doc/meshd.md,
 * Registration): its Workload is the workload name and namespace, labels
 * and service account (the option's, else the certificate's), the inbound
 * listener's address as address and its port as proxyPort, the admin port
 * as adminPort, and ports ("http=8080,grpc=9090"; NULL or "": none) as the
 * application's ports. Registered at start, or at the first certificate
 * when there is an identity; renewed at a third of lease_s (3..300; 0: 30);
 * deregistered when a graceful shutdown starts. Needs a destination
 * address and a workload name (mesh_proxy_new: MESH_ERR_INVALID).
 * MESH_ERR_RANGE (lease), MESH_ERR_PARSE (ports, with *why),
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
#define MESH_PROXY_REGISTER_DEFAULT_LEASE_S 30u
#define MESH_PROXY_REGISTER_LEASE_MIN_S 3u
#define MESH_PROXY_REGISTER_LEASE_MAX_S 300u
MESH_API int mesh_proxy_opts_set_register(mesh_proxy_opts *o, int on, uint32_t lease_s,
                                          const char *ports, const char **why);

/* Inbound allowlist: "8080,9090" (ports the transport header may name);
 * "" (the default) allows every port. MESH_ERR_PARSE (with *why),
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_opts_set_inbound_ports(mesh_proxy_opts *o, const char *ports,
                                               const char **why);

/* Where inbound traffic reaches the application: an IP literal ("10.0.0.5",
 * "::1"; default 127.0.0.1), with the port the transport header names. Give
 * the workload's own address when its application listens there rather than
 * on loopback, as Linkerd forwards to the pod IP. MESH_ERR_PARSE (with *why),
 * MESH_ERR_INVALID. */
MESH_API int mesh_proxy_opts_set_inbound_forward_ip(mesh_proxy_opts *o, const char *ip,
                                                    const char **why);

/* Timeouts in milliseconds (idle 0: none; the others must be > 0) and
 * limits (> 0). MESH_ERR_INVALID, MESH_ERR_RANGE. */
MESH_API int mesh_proxy_opts_set_connect_timeout(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_header_timeout(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_idle_timeout(mesh_proxy_opts *o, uint64_t ms);
MESH_API int mesh_proxy_opts_set_shutdown_grace(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_max_connections(mesh_proxy_opts *o, uint32_t n);
/* Bytes buffered per direction of a connection before reading pauses
 * (4 KiB .. 16 MiB). */
MESH_API int mesh_proxy_opts_set_buffer_bytes(mesh_proxy_opts *o, uint32_t bytes);

/* HTTP. Protocol detection: the first bytes of an outbound connection are
 * read for up to ms (default 10 s, Linkerd's) to tell HTTP/2, HTTP/1 and
 * anything else apart; a connection that sends nothing in time is opaque.
 * Ports listed as opaque ("25,587,3306", Linkerd's default list when never
 * set; "" none) skip detection. The response timeout (0, the default:
 * none) answers 504 when no response head arrived in time. Heads are
 * limited to max_head_bytes (1 KiB .. 1 MiB; default 64 KiB; over it 431)
 * and max_fields fields (1 .. 10000; default 100; over it 431); a request
 * head must arrive within the header timeout. The inbound connect timeout
 * (default 300 ms, Linkerd's) bounds connecting to the local application.
 * MESH_ERR_INVALID, MESH_ERR_RANGE, MESH_ERR_PARSE (ports, with *why). */
#define MESH_PROXY_DEFAULT_DETECT_TIMEOUT_MS 10000u
#define MESH_PROXY_DEFAULT_INBOUND_CONNECT_TIMEOUT_MS 300u
#define MESH_PROXY_DEFAULT_MAX_HEAD_BYTES 65536u
#define MESH_PROXY_DEFAULT_MAX_FIELDS 100u
#define MESH_PROXY_DEFAULT_OPAQUE_PORTS "25,587,3306,4444,5432,6379,9300,11211"
/* HTTP requests handled at once, inbound and outbound together (default
 * 100,000, Linkerd's): past it, 503 at once (l5d-proxy-error: load_shed).
 * MESH_ERR_INVALID, MESH_ERR_RANGE (0). */
#define MESH_PROXY_DEFAULT_MAX_IN_FLIGHT 100000u
MESH_API int mesh_proxy_opts_set_max_in_flight(mesh_proxy_opts *o, uint32_t n);
/* Fail-fast (Linkerd's HTTP request queues), per side (inbound nonzero:
 * the inbound side). An outbound request that finds no ready endpoint (every
 * breaker open, or discovery knows none yet) waits for one, and a request
 * waits for a connection to its endpoint, up to the fail-fast timeout
 * (default outbound 3 s, inbound 1 s): then 503, l5d-proxy-error:
 * fail_fast. At most capacity requests of a side wait at once (default
 * 10,000 each): past it, 503 at once (load_shed). MESH_ERR_INVALID,
 * MESH_ERR_RANGE (0). */
#define MESH_PROXY_DEFAULT_OUTBOUND_FAILFAST_MS 3000u
#define MESH_PROXY_DEFAULT_INBOUND_FAILFAST_MS 1000u
#define MESH_PROXY_DEFAULT_QUEUE_CAPACITY 10000u
MESH_API int mesh_proxy_opts_set_failfast_timeout(mesh_proxy_opts *o, int32_t inbound, uint32_t ms);
MESH_API int mesh_proxy_opts_set_queue_capacity(mesh_proxy_opts *o, int32_t inbound, uint32_t n);
MESH_API int mesh_proxy_opts_set_detect_timeout(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_response_timeout(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_inbound_connect_timeout(mesh_proxy_opts *o, uint32_t ms);
MESH_API int mesh_proxy_opts_set_http_limits(mesh_proxy_opts *o, uint32_t max_head_bytes,
                                             uint32_t max_fields);
MESH_API int mesh_proxy_opts_set_opaque_ports(mesh_proxy_opts *o, const char *ports,
                                              const char **why);

/* Called once a graceful shutdown has finished (connections drained or the
 * grace period over): the application then stops its loop and frees the
 * proxy. fn NULL: none. MESH_ERR_INVALID. */
typedef void (*mesh_proxy_done_fn)(void *ud);
MESH_API int mesh_proxy_opts_set_on_shutdown(mesh_proxy_opts *o, mesh_proxy_done_fn fn, void *ud);

/* ---- The proxy ---------------------------------------------------------- */

typedef struct mesh_proxy mesh_proxy;

/* Bind every listener on base and load the endpoints file and the
 * credentials (missing credentials are not an error: the proxy waits for
 * them, /ready says 503). opts may be freed afterwards. On failure *why
 * (when not NULL) says what, in a static or thread-local buffer valid until
 * the next call. MESH_ERR_IO (bind), MESH_ERR_PARSE (a bad endpoints file
 * at start), MESH_ERR_INVALID, MESH_ERR_NOMEM, or a TLS error from the
 * credentials. */
MESH_API int mesh_proxy_new(mesh_ctx *ctx, struct event_base *base, const mesh_proxy_opts *opts,
                            const char **why, mesh_proxy **ret);

/* Close everything at once (listeners, connections, admin); NULL is a no-op. */
MESH_API void mesh_proxy_free(mesh_proxy *p);

/* Re-read the endpoints file and the credentials now (SIGHUP). A bad
 * endpoints file or bad credentials are logged and the previous ones kept;
 * live connections are never dropped. Returns 0 when both loaded (or have
 * no source), else the first error. */
MESH_API int mesh_proxy_reload(mesh_proxy *p);

/* Graceful shutdown (SIGTERM, POST /shutdown): stop accepting, let open
 * connections finish within the grace period, then close them and call the
 * on_shutdown function. Calling it again is harmless. */
MESH_API void mesh_proxy_shutdown(mesh_proxy *p);

enum {
  MESH_PROXY_LISTENER_OUTBOUND = 0,
  MESH_PROXY_LISTENER_INBOUND = 1,
  MESH_PROXY_LISTENER_ADMIN = 2
};
/* The port a listener is bound to (useful with port 0), 0 when it is off. */
MESH_API uint16_t mesh_proxy_port(const mesh_proxy *p, int listener);
/* Open proxied connections (accepted, inbound + outbound). */
MESH_API uint32_t mesh_proxy_connections(const mesh_proxy *p);
/* 1 once credentials are loaded (and, with the policy stream, its first
 * policy has come). */
MESH_API int mesh_proxy_ready(const mesh_proxy *p);

/* The /metrics text, as served (free it with mesh_free_string).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_proxy_metrics(mesh_proxy *p, char **text, size_t *len);

MESH_END_DECLS

#endif
