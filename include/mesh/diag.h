/* libmesh diagnostics: errors and warnings about input, with file:line:column. */
#ifndef MESH_DIAG_H
#define MESH_DIAG_H

#include <mesh/ctx.h>

MESH_BEGIN_DECLS

/* A list of diagnostics that parsers append to. One thread at a time. */
typedef struct mesh_diags mesh_diags;

enum { MESH_DIAG_ERROR = 0, MESH_DIAG_WARNING = 1 };

/* Parsers keep at most this many diagnostics per list; the last one then
 * says how many more were dropped, so a junk file cannot exhaust memory. */
#define MESH_DIAGS_MAX 256

MESH_API int mesh_diags_new(mesh_ctx *ctx, mesh_diags **ret);
MESH_API void mesh_diags_free(mesh_diags *d); /* NULL is a no-op */
MESH_API void mesh_diags_clear(mesh_diags *d);

MESH_API size_t mesh_diags_count(const mesh_diags *d);
MESH_API size_t mesh_diags_errors(const mesh_diags *d); /* how many are errors */

/* Fields of diagnostic i (< count). Strings live as long as the list is not
 * cleared or freed. Out of range: severity -1, NULL strings, 0 numbers.
 * line and column are 1-based; 0 means the whole input. */
MESH_API int mesh_diags_severity(const mesh_diags *d, size_t i);
MESH_API const char *mesh_diags_file(const mesh_diags *d, size_t i);
MESH_API uint32_t mesh_diags_line(const mesh_diags *d, size_t i);
MESH_API uint32_t mesh_diags_column(const mesh_diags *d, size_t i);
MESH_API const char *mesh_diags_message(const mesh_diags *d, size_t i);
/* "file:line:col: error: message", as compilers print it. NULL out of range. */
MESH_API const char *mesh_diags_text(const mesh_diags *d, size_t i);

MESH_END_DECLS

#endif
