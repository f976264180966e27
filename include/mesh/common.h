/* libmesh common definitions: export macro and C++ linkage guards. */
#ifndef MESH_COMMON_H
#define MESH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(MESH_BUILDING) && defined(__GNUC__)
#define MESH_API __attribute__((visibility("default")))
#else
#define MESH_API
#endif

#ifdef __cplusplus
#define MESH_BEGIN_DECLS extern "C" {
#define MESH_END_DECLS }
#else
#define MESH_BEGIN_DECLS
#define MESH_END_DECLS
#endif

#endif
