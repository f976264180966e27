/* libmesh store internals: checking the mesh's own kinds (Service, Workload) for the manifest loader. */
#ifndef MESH_STORE_INTERNAL_H
#define MESH_STORE_INTERNAL_H

#include <mesh/store.h>
#include "node_internal.h"

/* Check a Service or Workload document (kind MESH_KIND_SERVICE or
 * MESH_KIND_WORKLOAD; apiVersion, kind and metadata already checked) in
 * full, reporting every problem through r. Returns 0, MESH_ERR_PARSE when
 * r->errors grew, or MESH_ERR_NOMEM. */
int mesh__store_check_doc(mesh__reader *r, const mesh__node *doc, int kind);

/* Document i of a snapshot as its manifest and the index there (for the
 * modules that compile more kinds from a snapshot: policy). NULL out of
 * range. Borrowed from s. */
const mesh_manifest *mesh__snapshot_manifest(const mesh_snapshot *s, size_t i, size_t *ret_idx);
/* The context a snapshot allocates with (its answers are freed there). */
mesh_ctx *mesh__snapshot_ctx(const mesh_snapshot *s);

#endif
