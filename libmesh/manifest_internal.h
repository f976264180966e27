/* libmesh manifest internals: what later compilers (policy, store) read. */
#ifndef MESH_MANIFEST_INTERNAL_H
#define MESH_MANIFEST_INTERNAL_H

#include <stdbool.h>

#include <mesh/manifest.h>
#include "node_internal.h"

/* The API group of the mesh's own kinds (what Kubernetes would supply). */
#define MESH__OWN_GROUP "mesh.libmesh.io"

/* The tree of document i, owned by m. */
const mesh__node *mesh__manifest_node(const mesh_manifest *m, size_t i);
/* All of fd, at most MESH_MANIFEST_MAX_BYTES (MESH_ERR_LIMIT past it),
 * into *ret (freed with mesh__free) and *ret_len; name is for diagnostics.
 * MESH_ERR_IO, MESH_ERR_NOMEM. The caller closes fd. */
int mesh__manifest_read_fd(mesh_ctx *ctx, int fd, const char *name, mesh_diags *diags,
                           char **ret, size_t *ret_len);

#endif
