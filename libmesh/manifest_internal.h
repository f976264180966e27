/* libmesh manifest internals: what later compilers (policy, store) read. */
#ifndef MESH_MANIFEST_INTERNAL_H
#define MESH_MANIFEST_INTERNAL_H

#include <mesh/manifest.h>
#include "node_internal.h"

/* The API group of the mesh's own kinds (what Kubernetes would supply). */
#define MESH__OWN_GROUP "mesh.libmesh.io"

/* The tree of document i, owned by m. */
const mesh__node *mesh__manifest_node(const mesh_manifest *m, size_t i);

#endif
