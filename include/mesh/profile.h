/* libmesh ServiceProfiles: routes, response classes, timeouts, retry budgets, dstOverrides. */
#ifndef MESH_PROFILE_H
#define MESH_PROFILE_H

#include <mesh/manifest.h>

MESH_BEGIN_DECLS

/* A compiled ServiceProfile (linkerd.io/v1alpha1 or v1alpha2). Immutable and
 * reference-counted: match and classify may run from many threads at once
 * (thread-safe), and never allocate. */
typedef struct mesh_route mesh_route; /* borrowed from its profile */

/* Route timeout when a route sets none, as Linkerd: 10 s. */
#define MESH_ROUTE_DEFAULT_TIMEOUT_MS 10000u
/* Retry budget when a profile sets none, as Linkerd. */
#define MESH_BUDGET_DEFAULT_RATIO 0.2
#define MESH_BUDGET_DEFAULT_MIN_PER_SEC 10u
#define MESH_BUDGET_DEFAULT_TTL_MS 10000u
/* dstOverrides weights are normalised so that they add up to this. */
#define MESH_WEIGHT_TOTAL 10000u

/* Parse exactly one ServiceProfile document from buf (YAML or JSON).
 * Errors: MESH_ERR_PARSE (diagnostics say where and why; a document of
 * another kind, or more than one document, is also a parse error),
 * MESH_ERR_LIMIT, MESH_ERR_NOMEM, MESH_ERR_INVALID. */
MESH_API int mesh_profile_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                                mesh_diags *diags, mesh_profile **ret);
/* Take and drop references; unref of NULL is a no-op. Thread-safe. */
MESH_API mesh_profile *mesh_profile_ref(const mesh_profile *p);
MESH_API void mesh_profile_unref(mesh_profile *p);

MESH_API const char *mesh_profile_name(const mesh_profile *p);      /* metadata.name */
MESH_API const char *mesh_profile_namespace(const mesh_profile *p); /* "default" if absent */

MESH_API size_t mesh_profile_route_count(const mesh_profile *p);
MESH_API const mesh_route *mesh_profile_route(const mesh_profile *p, size_t i); /* NULL past end */

/* The first route whose condition matches the request, or NULL when none
 * does (the request then counts under the route "[DEFAULT]"). path is the
 * request's path without the query string; path_len bytes are read. */
MESH_API const mesh_route *mesh_profile_match(const mesh_profile *p, const char *method,
                                              const char *path, size_t path_len);

MESH_API const char *mesh_route_name(const mesh_route *r);
/* The route's timeout in milliseconds (MESH_ROUTE_DEFAULT_TIMEOUT_MS unless set). */
MESH_API uint64_t mesh_route_timeout_ms(const mesh_route *r);
MESH_API int mesh_route_is_retryable(const mesh_route *r); /* 1 or 0 */
MESH_API size_t mesh_route_index(const mesh_route *r);     /* position in its profile */

/* Classify a response: 1 when it is a failure, 0 when a success. The first
 * response class whose condition matches decides; otherwise gRPC responses
 * (grpc_status >= 0) fail on DataLoss, DeadlineExceeded, Internal,
 * PermissionDenied, Unavailable and Unknown, and HTTP responses fail on 5xx.
 * r may be NULL (the [DEFAULT] route: default classification only). */
MESH_API int mesh_route_classify(const mesh_route *r, uint32_t http_status, int32_t grpc_status);

/* The retry budget that governs a route's retries: the profile's
 * spec.retryBudget, or the route's own when written inside the route (as the
 * seed does; loaded with a warning). Returns 1 when the route has its own,
 * 0 when it shares the profile's. Any out-parameter may be NULL. */
MESH_API int mesh_route_retry_budget(const mesh_route *r, double *ratio, uint32_t *min_per_sec,
                                     uint64_t *ttl_ms);
MESH_API void mesh_profile_retry_budget(const mesh_profile *p, double *ratio,
                                        uint32_t *min_per_sec, uint64_t *ttl_ms);

/* spec.dstOverrides as a split over authorities, or NULL when there are none. */
MESH_API const mesh_split *mesh_profile_dst_overrides(const mesh_profile *p);

MESH_API size_t mesh_profile_opaque_port_count(const mesh_profile *p);
MESH_API uint16_t mesh_profile_opaque_port(const mesh_profile *p, size_t i);

/* A new profile equal to base (which may be NULL: no routes, default budget)
 * with its dstOverrides replaced by split's backends, each as the authority
 * "<backend>.<namespace>.svc.<cluster_domain>:<port>" (cluster_domain NULL
 * means "cluster.local"). This is how a TrafficSplit reaches the proxy. */
MESH_API int mesh_profile_with_split(mesh_ctx *ctx, const mesh_profile *base,
                                     const mesh_split *split, const char *cluster_domain,
                                     uint16_t port, mesh_profile **ret);

/* Generate a ServiceProfile (YAML text) from an OpenAPI 2 or 3 document (JSON
 * or YAML), the way `linkerd profile --open-api` does: one route per
 * operation named "METHOD /path", {param} as [^/]*, documented responses of
 * 500 and above marked as failures, x-linkerd-retryable and x-linkerd-timeout
 * honoured. name is the service's FQDN, e.g. "web.default.svc.cluster.local".
 * *ret is allocated with the context's allocator: free it with mesh_free_string. */
MESH_API int mesh_profile_from_openapi(mesh_ctx *ctx, const char *file, const char *buf,
                                       size_t len, const char *name, const char *ns,
                                       mesh_diags *diags, char **ret);

MESH_END_DECLS

#endif
