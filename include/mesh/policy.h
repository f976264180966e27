/* libmesh inbound authorization policy: Servers, authorizations and routes compiled into a snapshot. */
#ifndef MESH_POLICY_H
#define MESH_POLICY_H

#include <mesh/manifest.h>

MESH_BEGIN_DECLS

/* A compiled policy: every Server, ServerAuthorization, AuthorizationPolicy,
 * MeshTLSAuthentication, NetworkAuthentication and HTTPRoute of a set of
 * manifests, linked together. Immutable and reference-counted: decisions
 * may run from many threads at once (thread-safe) and never allocate.
 * Options are used by one thread at a time. */
typedef struct mesh_policy mesh_policy;
typedef struct mesh_policy_opts mesh_policy_opts;

/* Decisions. DENY is 0 so that a zeroed result denies. */
enum {
  MESH_POLICY_DENY = 0,      /* HTTP: 403 (gRPC PERMISSION_DENIED); TCP: refuse */
  MESH_POLICY_ALLOW = 1,     /* pass on; see mesh_policy_result.audit */
  MESH_POLICY_NOT_FOUND = 2  /* HTTP only: the Server has routes and none matches: 404 */
};

/* Default inbound policies, for ports no Server selects and for a Server's
 * accessPolicy, with Linkerd's names (mesh_policy_default_name). */
enum {
  MESH_POLICY_DEFAULT_UNSET = 0,                   /* use the snapshot's default */
  MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED = 1,     /* everyone (the default) */
  MESH_POLICY_DEFAULT_ALL_AUTHENTICATED = 2,       /* any mesh identity */
  MESH_POLICY_DEFAULT_CLUSTER_AUTHENTICATED = 3,   /* a mesh identity from the cluster networks */
  MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED = 4, /* anyone from the cluster networks */
  MESH_POLICY_DEFAULT_DENY = 5,                    /* no one (but localhost, see opts) */
  MESH_POLICY_DEFAULT_AUDIT = 6                    /* everyone, reported as audit */
};

/* A Server's proxyProtocol. */
enum {
  MESH_POLICY_PROTO_UNKNOWN = 0, /* detect (also every default server) */
  MESH_POLICY_PROTO_HTTP1 = 1,
  MESH_POLICY_PROTO_HTTP2 = 2,
  MESH_POLICY_PROTO_GRPC = 3,
  MESH_POLICY_PROTO_OPAQUE = 4,
  MESH_POLICY_PROTO_TLS = 5
};

/* Linkerd's default cluster networks (proxy.clusterNetworks). */
#define MESH_POLICY_CLUSTER_NETWORKS "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"

/* ---- options ---- */

/* Defaults: all-unauthenticated, MESH_POLICY_CLUSTER_NETWORKS, identities
 * under control-plane namespace "linkerd" and trust domain "cluster.local",
 * localhost always allowed (as Linkerd's proxy does).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_policy_opts_new(mesh_ctx *ctx, mesh_policy_opts **ret);
MESH_API void mesh_policy_opts_free(mesh_policy_opts *o); /* NULL is a no-op */
/* One of MESH_POLICY_DEFAULT_* but UNSET; MESH_ERR_INVALID otherwise. */
MESH_API int mesh_policy_opts_set_default(mesh_policy_opts *o, int32_t policy);
/* Comma-separated CIDRs ("10.0.0.0/8,fd00::/8"); MESH_ERR_PARSE (with a
 * static reason in *why when why is not NULL) leaves the setting unchanged. */
MESH_API int mesh_policy_opts_set_cluster_networks(mesh_policy_opts *o, const char *cidrs,
                                                   const char **why);
/* What serviceAccounts and identityRefs become: the DNS identity
 * <sa>.<ns>.serviceaccount.identity.<cp_ns>.<trust_domain>. NULL keeps a
 * part as it is. MESH_ERR_PARSE when a part is not a DNS name. */
MESH_API int mesh_policy_opts_set_identity_domain(mesh_policy_opts *o, const char *cp_ns,
                                                  const char *trust_domain);
/* 1 (the default, as Linkerd): clients on 127.0.0.0/8 and ::1 are always
 * allowed ("localhost" authorization); 0: they are judged like others. */
MESH_API int mesh_policy_opts_set_allow_localhost(mesh_policy_opts *o, int32_t allow);

/* "all-unauthenticated", ... for MESH_POLICY_DEFAULT_*; NULL for others. */
MESH_API const char *mesh_policy_default_name(int32_t policy);
/* The MESH_POLICY_DEFAULT_* a name stands for (as written in Linkerd's
 * config.linkerd.io/default-inbound-policy annotation), or MESH_ERR_PARSE. */
MESH_API int mesh_policy_default_parse(const char *name);

/* ---- compiling ---- */

/* Compile the policy kinds of n manifests (others are skipped); opts may
 * be NULL (defaults) and is copied. Across all documents: a resource
 * defined twice, and two Servers whose pod selectors are the same and
 * select the same port, are errors; an authorization or route whose Server,
 * HTTPRoute or authentication is missing is a warning (the authorization
 * then authorizes nothing); Servers that may select the same pods' port
 * are a warning. Diagnostics carry file:line:column and the field path.
 * Returns 0, MESH_ERR_PARSE (*ret untouched), MESH_ERR_NOMEM, MESH_ERR_INVALID. */
MESH_API int mesh_policy_compile(mesh_ctx *ctx, const mesh_manifest *const *manifests, size_t n,
                                 const mesh_policy_opts *opts, mesh_diags *diags,
                                 mesh_policy **ret);
/* Take and drop references; unref of NULL is a no-op. Thread-safe. */
MESH_API mesh_policy *mesh_policy_ref(const mesh_policy *p);
MESH_API void mesh_policy_unref(mesh_policy *p);

MESH_API size_t mesh_policy_server_count(const mesh_policy *p);
MESH_API size_t mesh_policy_authorization_count(const mesh_policy *p); /* both kinds */
MESH_API size_t mesh_policy_route_count(const mesh_policy *p);

/* ---- deciding ---- */

typedef struct mesh_policy_label {
  const char *name, *value; /* NUL-terminated */
} mesh_policy_label;

/* The workload that received the connection, and the port it was sent to. */
typedef struct mesh_policy_workload {
  const char *ns;                  /* required */
  const mesh_policy_label *labels; /* may be NULL when nlabels is 0 */
  size_t nlabels;
  uint32_t port;                   /* 1..65535 */
  const char *port_name;           /* the container port's name, or NULL */
  int32_t default_policy;          /* the workload's own default, or MESH_POLICY_DEFAULT_UNSET */
} mesh_policy_workload;

typedef struct mesh_policy_header {
  const char *name;  /* compared case-insensitively */
  size_t name_len;
  const char *value;
  size_t value_len;
} mesh_policy_header;

/* The client and, for an HTTP decision, the request. A request with
 * neither method nor path is a TCP-level decision (connection accepted or
 * refused): the Server's authorizations decide, routes do not take part. */
typedef struct mesh_policy_request {
  const char *client_id; /* the verified mTLS peer identity, DNS or SPIFFE form; NULL: none */
  uint32_t tls;          /* 1 when the connection is TLS; client_id counts only then */
  uint32_t addr_family;  /* 4 or 6 with addr; 0: read sockaddr instead */
  uint8_t addr[16];      /* IPv4 in the first 4 bytes */
  const void *sockaddr;  /* a struct sockaddr_in or _in6 when addr_family is 0; may be NULL */
  const char *method;    /* NUL-terminated; NULL for a TCP-level decision */
  const char *path;      /* path_len bytes; a "?query" in it is split off when query is NULL */
  size_t path_len;
  const char *query;     /* query_len bytes, without the '?' */
  size_t query_len;
  const mesh_policy_header *headers; /* may be NULL when nheaders is 0 */
  size_t nheaders;
} mesh_policy_request;

/* What decided. Strings are borrowed from the policy (valid while a
 * reference is held; server_ns may be the workload's own ns pointer) and
 * name the resources for metrics labels. */
typedef struct mesh_policy_result {
  int32_t decision;         /* MESH_POLICY_ALLOW, _DENY, _NOT_FOUND */
  int32_t audit;            /* 1 when allowed only because of an audit policy */
  int32_t protocol;         /* MESH_POLICY_PROTO_* of the server */
  int32_t default_policy;   /* MESH_POLICY_DEFAULT_* when no Server selected the port, else 0 */
  const char *server_kind;  /* "server", or "default" when no Server selected the port */
  const char *server_name;  /* the Server's name, or the default policy's name */
  const char *server_ns;    /* the Server's namespace, or the workload's */
  const char *route_kind;   /* "httproute", "default" (no routes), NULL (TCP, not found) */
  const char *route_name;
  int32_t route_rule;       /* the rule's index within its route, -1 when none */
  const char *authz_kind;   /* "serverauthorization", "authorizationpolicy", "default"; NULL: denied */
  const char *authz_name;   /* its name, or "localhost", "audit", or a default policy's name */
} mesh_policy_result;

/* Decide. Fills *ret (every field) and returns 0; MESH_ERR_INVALID (NULL
 * arguments, no namespace, port out of range) leaves *ret untouched.
 * Never allocates; thread-safe. */
MESH_API int mesh_policy_decide(const mesh_policy *p, const mesh_policy_workload *wl,
                                const mesh_policy_request *req, mesh_policy_result *ret);

/* ---- a control-plane message ---- */

/* Documents in one InboundServerPolicies.WatchWorkload message at most. */
#define MESH_POLICY_MESSAGE_MAX_DOCS 10000u

/* Compile the policy a mesh-destination InboundServerPolicies.WatchWorkload
 * message carries (doc/protocol.md; len bytes of one JSON line, what
 * mesh_snapshot_policy_json writes): each element of its "documents" is
 * loaded as a manifest (named "documents[i]" in diagnostics) and all are
 * compiled by mesh_policy_compile with opts (may be NULL). Decide with
 * the message's workload.namespace and workload.labels.
 * Returns 0; MESH_ERR_NOT_FOUND when the message says "exists": false
 * (the Workload left the store: keep the policy in force);
 * MESH_ERR_PARSE (not such a message, or a document that does not load
 * or compile; diagnostics in diags), MESH_ERR_LIMIT (more than
 * MESH_POLICY_MESSAGE_MAX_DOCS documents), MESH_ERR_NOMEM,
 * MESH_ERR_INVALID. *ret is untouched on failure. */
MESH_API int mesh_policy_compile_message(mesh_ctx *ctx, const char *json, size_t len,
                                         const mesh_policy_opts *opts, mesh_diags *diags,
                                         mesh_policy **ret);

/* ---- introspection, for tools (meshctl authz) ----
 * What a snapshot holds, in the terms decisions use. Servers are numbered
 * 0..mesh_policy_server_count()-1 in decision order (namespace, then
 * name); a Server's routes and authorizations in the order a decision
 * tries them. Strings and authorizations are borrowed from the policy
 * (valid while a reference is held). Thread-safe; nothing allocates.
 * Out-of-range indexes: MESH_ERR_RANGE (NULL for the pointer getters);
 * NULL arguments: MESH_ERR_INVALID. */

typedef struct mesh_policy_server_info {
  const char *name, *ns;
  uint32_t port;          /* 0 when the Server names its port */
  const char *port_name;  /* NULL when it gives a number */
  int32_t protocol;       /* MESH_POLICY_PROTO_* */
  int32_t access_policy;  /* MESH_POLICY_DEFAULT_*: decides when no authorization holds */
  size_t nroutes;         /* HTTPRoutes attached (none: every request is the route "default") */
  size_t nauthz;          /* authorizations for every route: ServerAuthorizations, and
                           * AuthorizationPolicies on the Server or its namespace */
} mesh_policy_server_info;

typedef struct mesh_policy_route_info {
  const char *name, *ns;
  size_t nrules;
  size_t nauthz;          /* AuthorizationPolicies that target the route: tried first */
} mesh_policy_route_info;

/* One authorization: a ServerAuthorization, an AuthorizationPolicy or a
 * default policy. Opaque; borrowed from the policy. */
typedef struct mesh_policy_authz mesh_policy_authz;

typedef struct mesh_policy_authz_info {
  const char *kind;       /* "serverauthorization", "authorizationpolicy", "default" */
  const char *name;
  int32_t never;          /* 1: admits no one (a required authentication is missing; deny;
                           * audit, which allows flagged only as a fallback) */
  size_t nclauses;        /* each must hold (an AuthorizationPolicy's required refs) */
} mesh_policy_authz_info;

/* What a clause asks of a client. */
enum {
  MESH_POLICY_AUTHN_ANY = 0,  /* anyone, plaintext included (unauthenticated) */
  MESH_POLICY_AUTHN_TLS = 1,  /* a TLS connection, with or without identity (unauthenticatedTLS) */
  MESH_POLICY_AUTHN_MESH = 2  /* a verified mesh identity that matches one of the identities */
};

typedef struct mesh_policy_clause_info {
  int32_t authn;          /* MESH_POLICY_AUTHN_* */
  size_t nidentities;
  size_t nnetworks;       /* 0: from any network */
} mesh_policy_clause_info;

MESH_API int mesh_policy_server_describe(const mesh_policy *p, size_t i,
                                         mesh_policy_server_info *ret);
/* 1 when Server i selects wl (its namespace, its labels, and its port by
 * number or by wl->port_name; with wl->port 0 and no port_name, any port),
 * else 0 (also out of range or NULL). */
MESH_API int mesh_policy_server_selects(const mesh_policy *p, size_t i,
                                        const mesh_policy_workload *wl);
/* The Server that decides for wl's port, as mesh_policy_decide picks it,
 * into *ret. MESH_ERR_NOT_FOUND: none; the default policy decides. */
MESH_API int mesh_policy_server_find(const mesh_policy *p, const mesh_policy_workload *wl,
                                     size_t *ret);
MESH_API int mesh_policy_route_describe(const mesh_policy *p, size_t server, size_t j,
                                        mesh_policy_route_info *ret);
MESH_API const mesh_policy_authz *mesh_policy_server_authz(const mesh_policy *p, size_t server,
                                                           size_t j);
MESH_API const mesh_policy_authz *mesh_policy_route_authz(const mesh_policy *p, size_t server,
                                                          size_t route, size_t j);
/* The snapshot's default policy (for ports no Server selects), and the
 * authorization a MESH_POLICY_DEFAULT_* stands for (also a Server's
 * accessPolicy); NULL for UNSET or unknown values. */
MESH_API int32_t mesh_policy_default(const mesh_policy *p);
MESH_API const mesh_policy_authz *mesh_policy_default_authz(const mesh_policy *p, int32_t policy);

MESH_API int mesh_policy_authz_describe(const mesh_policy_authz *a, mesh_policy_authz_info *ret);
MESH_API int mesh_policy_authz_clause(const mesh_policy_authz *a, size_t k,
                                      mesh_policy_clause_info *ret);
/* Identity m of clause k as a rule reads: "*" (any), "*.suffix", a DNS-like
 * name (serviceAccounts already made whole), a SPIFFE ID, or a SPIFFE
 * prefix (an ID whose path ends in a slash and a star). NUL-terminated in buf.
 * MESH_ERR_LIMIT when size is too small. */
MESH_API int mesh_policy_authz_identity(const mesh_policy_authz *a, size_t k, size_t m, char *buf,
                                        size_t size);
/* Network m of clause k in CIDR form ("10.0.0.0/8", "fd00::/8"): e 0 the
 * network, e >= 1 its (e-1)th exception (MESH_ERR_RANGE past the last).
 * MESH_ERR_LIMIT when size is too small (64 bytes always do). */
MESH_API int mesh_policy_authz_network(const mesh_policy_authz *a, size_t k, size_t m, size_t e,
                                       char *buf, size_t size);

MESH_END_DECLS

#endif
