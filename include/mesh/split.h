/* libmesh traffic splits: weighted backends (SMI TrafficSplit, dstOverrides), alloc-free pick. */
#ifndef MESH_SPLIT_H
#define MESH_SPLIT_H

#include <mesh/manifest.h>

MESH_BEGIN_DECLS

/* A split of one logical service between weighted backends. Built with
 * mesh_split_new/_add, then sealed; a sealed split is immutable,
 * reference-counted and thread-safe to read and pick from. */

/* Parse exactly one TrafficSplit (split.smi-spec.io v1alpha1..v1alpha4;
 * weights as integers or quantities such as "900m"). MESH_ERR_PARSE with
 * diagnostics on error, e.g. when every weight is zero. */
MESH_API int mesh_split_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                              mesh_diags *diags, mesh_split **ret);

/* Build one by hand: service is the apex (logical) service, ns its namespace
 * (NULL: "default"). */
MESH_API int mesh_split_new(mesh_ctx *ctx, const char *service, const char *ns,
                            mesh_split **ret);
/* Add a backend with a weight in thousandths (1000 = weight 1). Zero is
 * allowed (the backend is listed but never picked). MESH_ERR_INVALID once
 * sealed; MESH_ERR_LIMIT past 256 backends; MESH_ERR_RANGE when the total
 * would overflow. */
MESH_API int mesh_split_add(mesh_split *s, const char *backend, uint64_t weight_milli);
/* Freeze and normalise. MESH_ERR_INVALID when every weight is zero (or none). */
MESH_API int mesh_split_seal(mesh_split *s);

MESH_API mesh_split *mesh_split_ref(const mesh_split *s);
MESH_API void mesh_split_unref(mesh_split *s); /* NULL is a no-op */

MESH_API const char *mesh_split_service(const mesh_split *s);
MESH_API const char *mesh_split_namespace(const mesh_split *s);
MESH_API size_t mesh_split_count(const mesh_split *s);
MESH_API const char *mesh_split_backend(const mesh_split *s, size_t i); /* NULL past end */
MESH_API uint64_t mesh_split_weight_milli(const mesh_split *s, size_t i); /* as written */
/* Normalised weight: all weights add up to MESH_WEIGHT_TOTAL (10000). */
MESH_API uint32_t mesh_split_weight(const mesh_split *s, size_t i);

/* Pick a backend index with the caller's 32 uniformly random bits; the
 * chance of each backend is its weight over the total. Never allocates;
 * thread-safe. Returns (size_t)-1 for an unsealed split. */
MESH_API size_t mesh_split_pick(const mesh_split *s, uint32_t rnd);

MESH_END_DECLS

#endif
