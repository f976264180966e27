/* libmesh profile internals: compiling a ServiceProfile document. */
#ifndef MESH_PROFILE_INTERNAL_H
#define MESH_PROFILE_INTERNAL_H

#include <mesh/profile.h>
#include "node_internal.h"

/* Compile the ServiceProfile in doc (apiVersion and kind already checked).
 * Reports every problem through r; returns 0 with *ret set, MESH_ERR_PARSE
 * when r->errors grew, or MESH_ERR_NOMEM. */
int mesh__profile_compile(mesh__reader *r, const mesh__node *doc, mesh_profile **ret);

#endif
