/* libmesh manifests: multi-document YAML/JSON files of Linkerd, SMI and mesh resources. */
#ifndef MESH_MANIFEST_H
#define MESH_MANIFEST_H

#include <mesh/diag.h>

MESH_BEGIN_DECLS

/* A loaded, validated set of documents. Immutable once loaded, so it may be
 * read from several threads at once. */
typedef struct mesh_manifest mesh_manifest;
typedef struct mesh_profile mesh_profile;
typedef struct mesh_split mesh_split;

/* Limits on untrusted input: a larger input, a deeper nesting or more nodes
 * is refused with a diagnostic (MESH_ERR_LIMIT). YAML aliases are refused. */
#define MESH_MANIFEST_MAX_BYTES (4u * 1024u * 1024u)
#define MESH_MANIFEST_MAX_DEPTH 64
#define MESH_MANIFEST_MAX_NODES 200000

/* What a document is, by apiVersion group and kind. */
enum {
  MESH_KIND_OTHER = 0,               /* a well-formed resource the mesh does not use */
  MESH_KIND_SERVICE_PROFILE = 1,     /* linkerd.io/v1alpha1, v1alpha2 */
  MESH_KIND_TRAFFIC_SPLIT = 2,       /* split.smi-spec.io/v1alpha1..v1alpha4 */
  MESH_KIND_SERVER = 3,              /* policy.linkerd.io/v1alpha1..v1beta3 */
  MESH_KIND_SERVER_AUTHORIZATION = 4,
  MESH_KIND_AUTHORIZATION_POLICY = 5,
  MESH_KIND_MESH_TLS_AUTHENTICATION = 6,
  MESH_KIND_NETWORK_AUTHENTICATION = 7,
  MESH_KIND_HTTP_ROUTE = 8,          /* policy.linkerd.io and gateway.networking.k8s.io */
  MESH_KIND_SERVICE = 9,             /* mesh.libmesh.io/v1: what Kubernetes' Service would say */
  MESH_KIND_WORKLOAD = 10            /* mesh.libmesh.io/v1: a workload and its endpoints */
};

/* Load every document of buf. file names the input in diagnostics (may be
 * NULL: "<input>"). Each document must have apiVersion, kind and
 * metadata.name; known kinds are compiled and checked in full. Warnings
 * (unknown fields, the seed's non-canonical spellings) do not fail a load.
 * Returns 0, or MESH_ERR_PARSE / MESH_ERR_LIMIT with diagnostics appended to
 * diags (which may be NULL) and *ret untouched; MESH_ERR_NOMEM; MESH_ERR_INVALID. */
MESH_API int mesh_manifest_load_buffer(mesh_ctx *ctx, const char *file, const char *buf,
                                       size_t len, mesh_diags *diags, mesh_manifest **ret);
/* The same for a file ("-" reads standard input). MESH_ERR_IO if unreadable
 * (a diagnostic says why). */
MESH_API int mesh_manifest_load_file(mesh_ctx *ctx, const char *path, mesh_diags *diags,
                                     mesh_manifest **ret);
MESH_API void mesh_manifest_free(mesh_manifest *m); /* NULL is a no-op */

MESH_API size_t mesh_manifest_count(const mesh_manifest *m);
/* Per document i (< count); out of range gives MESH_KIND_OTHER / NULL / 0. */
MESH_API int mesh_manifest_kind(const mesh_manifest *m, size_t i);
MESH_API const char *mesh_manifest_kind_name(const mesh_manifest *m, size_t i);  /* as written */
MESH_API const char *mesh_manifest_api_version(const mesh_manifest *m, size_t i);
MESH_API const char *mesh_manifest_name(const mesh_manifest *m, size_t i);
/* metadata.namespace, or "default" when absent. */
MESH_API const char *mesh_manifest_namespace(const mesh_manifest *m, size_t i);
MESH_API uint32_t mesh_manifest_line(const mesh_manifest *m, size_t i);
/* The compiled object of document i, borrowed from m (take a reference to
 * keep it longer); NULL when document i is of another kind. */
MESH_API const mesh_profile *mesh_manifest_profile(const mesh_manifest *m, size_t i);
MESH_API const mesh_split *mesh_manifest_split(const mesh_manifest *m, size_t i);

/* 1 when a file of that name is a manifest file, as the store, the
 * --profiles directory and meshctl read them: *.yaml, *.yml or *.json, not
 * hidden (a leading '.': editors' and tools' temporary files); else 0. */
MESH_API int mesh_manifest_file_name(const char *name);

/* The RFC 1123 rules for names, as Kubernetes applies them: 1 when s is a
 * label (a namespace or Service: [a-z0-9-], at most 63, no '-' at either
 * end), or a name (labels joined by '.', at most 253); 0 otherwise or NULL. */
MESH_API int mesh_dns_label_valid(const char *s);
MESH_API int mesh_dns_name_valid(const char *s);

/* A Go duration as manifests write them ("5s", "300ms", "1m30s", "24h0m0s")
 * in whole seconds: 0 with *ret_s set, or MESH_ERR_PARSE / MESH_ERR_RANGE
 * (negative, overflowing, or not a whole number of seconds) with *ret_s
 * untouched. *why, when not NULL, gets a static reason on failure. */
MESH_API int mesh_duration_parse_s(const char *s, uint64_t *ret_s, const char **why);

MESH_END_DECLS

#endif
