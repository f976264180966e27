/* libmesh split internals: compiling a TrafficSplit document. */
#ifndef MESH_SPLIT_INTERNAL_H
#define MESH_SPLIT_INTERNAL_H

#include <mesh/split.h>
#include "node_internal.h"

/* Compile the TrafficSplit in doc (apiVersion and kind already checked) into
 * a sealed split. Same contract as mesh__profile_compile. */
int mesh__split_compile(mesh__reader *r, const mesh__node *doc, mesh_split **ret);

#endif
