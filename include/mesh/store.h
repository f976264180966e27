/* libmesh store: the mesh's resources as immutable snapshots (from a watched directory), and authority resolution. */
#ifndef MESH_STORE_H
#define MESH_STORE_H

#include <mesh/manifest.h>

/* The directory store runs on the application's libevent loop; only this
 * type crosses the API, and only as a pointer. */
struct event_base;

MESH_BEGIN_DECLS

/* What mesh-destination knows: Services and Workloads
 * (mesh.libmesh.io/v1alpha1, doc/manifests.md), ServiceProfiles and
 * TrafficSplits, and every other manifest kept as written (policy kinds,
 * for the modules that will read them).
 *
 * A snapshot (mesh_snapshot) is one consistent state: immutable and
 * reference-counted, so it may be read from several threads at once
 * (thread-safe; ref/unref are atomic). It is built from manifest buffers by
 * a builder, which is how every backend (the directory here; etcd keys and
 * workload registrations later) produces one.
 *
 * A store (mesh_store) holds the current snapshot of a directory of
 * manifest files (*.yaml, *.yml, *.json; other files and subdirectories are
 * ignored) and replaces it when the files change: watched with inotify on
 * the caller's event loop, debounced, and swapped only when every file is
 * valid. Otherwise the last good snapshot stays and the error is kept. A
 * store belongs to the thread that runs its loop.
 *
 * Resolution (mesh_snapshot_resolve) turns an authority into endpoints in
 * the forms Linkerd's proxies ask for: "svc.ns.svc.<cluster-domain>:port",
 * "svc.ns:port", "svc:port" (in the caller's namespace), compared without
 * regard to case, with an optional trailing dot. */

typedef struct mesh_store_opts mesh_store_opts;
typedef struct mesh_store mesh_store;
typedef struct mesh_snapshot mesh_snapshot;
typedef struct mesh_snapshot_builder mesh_snapshot_builder;
typedef struct mesh_resolution mesh_resolution;

/* Defaults, as Linkerd's. */
#define MESH_STORE_DEFAULT_CLUSTER_DOMAIN "cluster.local"
#define MESH_STORE_DEFAULT_TRUST_DOMAIN "cluster.local"
#define MESH_STORE_DEFAULT_CP_NAMESPACE "linkerd"
#define MESH_STORE_DEFAULT_DEBOUNCE_MS 100u
#define MESH_STORE_DEFAULT_PROXY_PORT 4143u
/* A Workload's spec.adminPort when absent: where its meshd serves /metrics. */
#define MESH_STORE_DEFAULT_ADMIN_PORT 4191u
/* Bounds on a directory: files read, and bytes of one file
 * (MESH_MANIFEST_MAX_BYTES). More files is an error of that load. */
#define MESH_STORE_MAX_FILES 10000u

/* Protocol hints of a Service port (spec.ports[].protocol). */
enum {
  MESH_HINT_UNKNOWN = 0, /* not said: detected by the proxy */
  MESH_HINT_HTTP = 1,    /* HTTP/1 */
  MESH_HINT_H2 = 2,      /* HTTP/2 */
  MESH_HINT_GRPC = 3,    /* gRPC (HTTP/2) */
  MESH_HINT_OPAQUE = 4   /* opaque TCP: no protocol detection */
};

/* ---- Options ---------------------------------------------------------- */

/* Options with the defaults above and no directory.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_store_opts_new(mesh_ctx *ctx, mesh_store_opts **ret);
MESH_API void mesh_store_opts_free(mesh_store_opts *opts); /* NULL is a no-op */
/* Each copies its string. MESH_ERR_INVALID (NULL, or not a valid DNS name /
 * label: cluster and trust domains are names, the control-plane namespace a
 * label), MESH_ERR_NOMEM. */
MESH_API int mesh_store_opts_set_dir(mesh_store_opts *opts, const char *dir);
MESH_API int mesh_store_opts_set_cluster_domain(mesh_store_opts *opts, const char *domain);
MESH_API int mesh_store_opts_set_trust_domain(mesh_store_opts *opts, const char *domain);
MESH_API int mesh_store_opts_set_cp_namespace(mesh_store_opts *opts, const char *ns);
/* How long a change must be quiet before the directory is read again
 * (0..10000 ms). MESH_ERR_RANGE. */
MESH_API int mesh_store_opts_set_debounce_ms(mesh_store_opts *opts, uint32_t ms);

/* ---- Building a snapshot ---------------------------------------------- */

/* A builder with the naming options of opts (copied; NULL: defaults).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_builder_new(mesh_ctx *ctx, const mesh_store_opts *opts,
                                       mesh_snapshot_builder **ret);
/* Parse len bytes of buf (multi-document YAML or JSON) as coming from
 * source (a file name, an etcd key; copied; it names the input in
 * diagnostics). Every document is checked in full, Services and Workloads
 * included. MESH_ERR_PARSE / MESH_ERR_LIMIT with diagnostics appended to
 * diags (may be NULL); the builder then still holds what was added before
 * and may go on. MESH_ERR_NOMEM, MESH_ERR_INVALID. */
MESH_API int mesh_snapshot_builder_add(mesh_snapshot_builder *b, const char *source,
                                       const char *buf, size_t len, mesh_diags *diags);
/* Check the whole set (the same kind, namespace and name twice is an
 * error naming both places) and seal it into a snapshot. The builder is
 * consumed whatever the result. MESH_ERR_PARSE (with diagnostics),
 * MESH_ERR_NOMEM, MESH_ERR_INVALID. */
MESH_API int mesh_snapshot_builder_finish(mesh_snapshot_builder *b, mesh_diags *diags,
                                          mesh_snapshot **ret);
MESH_API void mesh_snapshot_builder_free(mesh_snapshot_builder *b); /* NULL is a no-op */

/* Take and drop references (thread-safe); unref of NULL is a no-op. */
MESH_API mesh_snapshot *mesh_snapshot_ref(const mesh_snapshot *s);
MESH_API void mesh_snapshot_unref(mesh_snapshot *s);

/* The store's count of snapshots, 1 for the first (0 for one built by
 * hand): a newer snapshot has a larger number. */
MESH_API uint64_t mesh_snapshot_generation(const mesh_snapshot *s);

/* Every document of the snapshot, in source order then document order
 * (the raw manifests: policy kinds included). Out of range: NULL / 0 /
 * MESH_KIND_OTHER. The strings live as long as the snapshot. */
MESH_API size_t mesh_snapshot_count(const mesh_snapshot *s);
MESH_API int mesh_snapshot_kind(const mesh_snapshot *s, size_t i);          /* MESH_KIND_* */
MESH_API const char *mesh_snapshot_kind_name(const mesh_snapshot *s, size_t i);
MESH_API const char *mesh_snapshot_api_version(const mesh_snapshot *s, size_t i);
MESH_API const char *mesh_snapshot_name(const mesh_snapshot *s, size_t i);
MESH_API const char *mesh_snapshot_namespace(const mesh_snapshot *s, size_t i);
MESH_API const char *mesh_snapshot_source(const mesh_snapshot *s, size_t i); /* file or key */
MESH_API uint32_t mesh_snapshot_line(const mesh_snapshot *s, size_t i);
/* Document i as compact JSON (what `meshctl get -o json` prints): numbers,
 * booleans and null as YAML 1.1 core scalars unless quoted. *ret is
 * allocated with ctx's allocator: free it with mesh_free_string.
 * MESH_ERR_INVALID (out of range), MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_document_json(const mesh_snapshot *s, size_t i, char **ret);

/* ---- Resolution ------------------------------------------------------- */

/* Resolve authority ("host:port"; no port means 80) for a caller in
 * default_ns (NULL: "default"). Always succeeds for a well-formed
 * authority: a name the snapshot does not know gives a resolution that
 * does not exist (count 0). An IP address that is a Workload's gives that
 * one endpoint (the service then reads "", the namespace the workload's,
 * the FQDN NULL), as Linkerd answers for a pod IP. MESH_ERR_PARSE (not host:port, port out of
 * range, over 253 bytes of host), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_resolve(const mesh_snapshot *s, const char *authority,
                                   const char *default_ns, mesh_resolution **ret);
MESH_API void mesh_resolution_free(mesh_resolution *r); /* NULL is a no-op */

/* 1 when the authority names a Service (or a Workload's address) of the
 * snapshot, else 0. */
MESH_API int mesh_resolution_exists(const mesh_resolution *r);
/* The Service's name, namespace, fully qualified name
 * ("web.ns.svc.cluster.local"), and the port asked for. NULL / 0 when it
 * does not exist. */
MESH_API const char *mesh_resolution_service(const mesh_resolution *r);
MESH_API const char *mesh_resolution_namespace(const mesh_resolution *r);
MESH_API const char *mesh_resolution_fqdn(const mesh_resolution *r);
MESH_API uint16_t mesh_resolution_port(const mesh_resolution *r);
/* 1 when traffic to this port is opaque TCP (spec.opaquePorts, a port
 * with protocol opaque, or the ServiceProfile's opaquePorts). */
MESH_API int mesh_resolution_opaque(const mesh_resolution *r);

/* The endpoints, sorted by address, one per distinct address: for each
 * Workload in the Service's namespace whose labels hold every label of
 * spec.selector, each of its addresses. Out of range: NULL / 0. */
MESH_API size_t mesh_resolution_count(const mesh_resolution *r);
/* "127.0.0.2:4143": the address and the workload's proxyPort when meshed,
 * else its target port. IPv6 as "[::1]:4143". */
MESH_API const char *mesh_resolution_addr(const mesh_resolution *r, size_t i);
MESH_API const char *mesh_resolution_ip(const mesh_resolution *r, size_t i);
/* The application's port on the workload (the Service port's targetPort,
 * a number or the name of a workload port). */
MESH_API uint16_t mesh_resolution_target_port(const mesh_resolution *r, size_t i);
MESH_API uint32_t mesh_resolution_weight(const mesh_resolution *r, size_t i);
/* The proxy's DNS identity "<sa>.<ns>.serviceaccount.identity.<cp-ns>.<td>";
 * NULL for a workload without a proxy (spec.proxyPort 0). */
MESH_API const char *mesh_resolution_identity(const mesh_resolution *r, size_t i);
/* The protocol hint sent for endpoint i: MESH_HINT_H2 for a meshed
 * endpoint, MESH_HINT_OPAQUE for a meshed endpoint of an opaque port,
 * MESH_HINT_UNKNOWN for one without a proxy. */
MESH_API int mesh_resolution_hint(const mesh_resolution *r, size_t i);
MESH_API const char *mesh_resolution_pod(const mesh_resolution *r, size_t i); /* workload name */
MESH_API const char *mesh_resolution_service_account(const mesh_resolution *r, size_t i);

/* The Destination.Get messages (doc/protocol.md), compact JSON:
 * _json_first: what a new stream gets at once: "add" with every endpoint,
 * or "no_endpoints" {exists}. _json_diff: what turns the state old into
 * cur, as ndjson text (each message ended by '\n'): "remove" for the
 * addresses that went, "add" for those that came or changed, or
 * "no_endpoints" once none is left; *ret NULL when nothing changed. Both
 * allocate *ret with ctx's allocator (mesh_free_string).
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_resolution_json_first(const mesh_resolution *r, char **ret);
MESH_API int mesh_resolution_json_diff(const mesh_resolution *old, const mesh_resolution *cur,
                                       char **ret);

/* The Destination.GetProfile message for authority (doc/protocol.md):
 * fully_qualified_name, routes from the Service's ServiceProfile (named
 * "<fqdn>", or the Service's own name, in its namespace), retry_budget,
 * dst_overrides (the profile's, else the TrafficSplits whose spec.service
 * is this Service, weights out of MESH_WEIGHT_TOTAL), opaque_protocol, and
 * endpoint when the authority is an address of a known workload. An
 * unknown name gives the default profile with an empty
 * fully_qualified_name. Compact JSON in *ret (mesh_free_string).
 * MESH_ERR_PARSE (authority), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_profile_json(const mesh_snapshot *s, const char *authority,
                                        const char *default_ns, char **ret);

/* The same profile as a compiled object, for an in-process proxy: the
 * ServiceProfile, with the TrafficSplit folded into its dstOverrides
 * (mesh_profile_with_split) when it has none of its own. A new reference:
 * unref it. MESH_ERR_NOT_FOUND (neither a profile nor a split for this
 * name, or an IP address), MESH_ERR_PARSE (authority), MESH_ERR_INVALID,
 * MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_profile(const mesh_snapshot *s, const char *authority,
                                   const char *default_ns, mesh_profile **ret);

/* ---- Inbound policy ----------------------------------------------------- */

/* The InboundServerPolicies.WatchWorkload message for Workload ns/name
 * (doc/protocol.md), compact JSON:
 *   {"workload":{"namespace","name","labels":{...},"ports":[...]},
 *    "exists":true,"documents":[...]}
 * documents: the policy documents that apply to it, each as
 * mesh_snapshot_document_json writes it, in snapshot order: the Servers of
 * its namespace whose selector holds for its labels (whatever their port),
 * and, when there is one, the HTTPRoutes whose parentRefs name one of
 * them, the ServerAuthorizations that name or select one of them, the
 * AuthorizationPolicies that target one of them, one of those routes or
 * the namespace, and the MeshTLSAuthentications and
 * NetworkAuthentications those policies require (any namespace). Each
 * document loads back with mesh_manifest_load_buffer (JSON is YAML), and
 * mesh_policy_compile_message compiles the whole message. *ret is
 * allocated with ctx's allocator (mesh_free_string).
 * MESH_ERR_NOT_FOUND (no such Workload), MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_snapshot_policy_json(const mesh_snapshot *s, const char *ns, const char *name,
                                       char **ret);

/* ---- The directory store ---------------------------------------------- */

/* A store of opts's directory (required), loaded at once. The first load
 * must succeed: MESH_ERR_PARSE / MESH_ERR_LIMIT with diagnostics in diags
 * (may be NULL), MESH_ERR_IO (the directory cannot be read; a diagnostic
 * says why), MESH_ERR_INVALID, MESH_ERR_NOMEM; *ret untouched. */
MESH_API int mesh_store_new(mesh_ctx *ctx, const mesh_store_opts *opts, mesh_diags *diags,
                            mesh_store **ret);
/* Close the watch and drop the store's snapshot (snapshots others hold
 * stay valid). NULL is a no-op. */
MESH_API void mesh_store_free(mesh_store *st);

/* The current snapshot, a new reference: unref it. */
MESH_API mesh_snapshot *mesh_store_snapshot(const mesh_store *st);

/* Called after a new snapshot took over (from the event loop). Set before
 * mesh_store_watch; fn NULL clears. MESH_ERR_INVALID. */
typedef void (*mesh_store_change_fn)(void *ud, mesh_store *st);
MESH_API int mesh_store_on_change(mesh_store *st, mesh_store_change_fn fn, void *ud);

/* Watch the directory with inotify on base and mesh_store_reload on a
 * change: at once when every changed file is whole (closed by its writer,
 * moved in or out, deleted), but at most once a debounce period; while a
 * file is being written (modified, not yet closed), once the directory has
 * been quiet for the debounce time (at most ten periods in a storm). MESH_ERR_IO (inotify; see errno),
 * MESH_ERR_INVALID (already watching), MESH_ERR_NOMEM. */
MESH_API int mesh_store_watch(mesh_store *st, struct event_base *base);

/* Read the directory again now. 0 when a new snapshot took over (the
 * change callback ran) or nothing changed (identical files: nothing runs);
 * MESH_ERR_PARSE / MESH_ERR_LIMIT / MESH_ERR_IO when a file is bad or
 * unreadable: the current snapshot stays and the error is kept (below);
 * MESH_ERR_NOMEM. */
MESH_API int mesh_store_reload(mesh_store *st);

/* Manifests served with the directory's, as if they were more files read
 * after them (mesh-destination's workload registrations): n buffers named
 * sources[i] (diagnostics, mesh_snapshot_source), copied; they replace the
 * previous set and stay until the next call. The directory is then read
 * again as by mesh_store_reload, with the same results; when that load is
 * refused the new set is still kept, and served by the next good load.
 * A fed store refuses this (MESH_ERR_INVALID). MESH_ERR_LIMIT (more than
 * MESH_STORE_MAX_FILES), MESH_ERR_NOMEM. */
MESH_API int mesh_store_set_extra(mesh_store *st, size_t n, const char *const *sources,
                                  const char *const *bufs, const size_t *lens);

/* Loads since the start that took over / were refused. */
MESH_API uint64_t mesh_store_reloads_ok(const mesh_store *st);
MESH_API uint64_t mesh_store_reloads_failed(const mesh_store *st);
/* 1 when the last load was refused (the files on disk are not what is
 * served), else 0. */
MESH_API int mesh_store_failing(const mesh_store *st);
/* The first error of the last refused load, "file:line:col: error: why"
 * (NULL if none was ever refused); valid until the next load. */
MESH_API const char *mesh_store_last_error(const mesh_store *st);
/* Milliseconds (monotonic clock) of the last snapshot swap. */
MESH_API uint64_t mesh_store_last_change_ms(const mesh_store *st);

/* ---- The fed store ------------------------------------------------------ */

/* A store whose manifests its caller hands over (an etcd watch), with the
 * naming options of opts (its directory and debounce are not used) and
 * name for its log lines ("etcd /libmesh/"; copied). It starts with an
 * empty snapshot (generation 1). mesh_store_reload and mesh_store_watch
 * refuse it (MESH_ERR_INVALID); everything else is as for a directory.
 * MESH_ERR_INVALID, MESH_ERR_NOMEM. */
MESH_API int mesh_store_new_fed(mesh_ctx *ctx, const mesh_store_opts *opts, const char *name,
                                mesh_store **ret);
/* Replace the whole set of manifests with n buffers: bufs[i], lens[i]
 * bytes, named sources[i] in diagnostics and mesh_snapshot_source (a file
 * name, an etcd key), in that order; nothing is kept after the call.
 * The same checks, swap and results as mesh_store_reload: 0 when a new
 * snapshot took over or nothing changed (the same names and bytes),
 * MESH_ERR_PARSE / MESH_ERR_LIMIT (a bad manifest, or more than
 * MESH_STORE_MAX_FILES) keeping the current snapshot and the error,
 * MESH_ERR_INVALID (NULLs, or a directory store), MESH_ERR_NOMEM. */
MESH_API int mesh_store_load_buffers(mesh_store *st, size_t n, const char *const *sources,
                                     const char *const *bufs, const size_t *lens);

MESH_END_DECLS

#endif
