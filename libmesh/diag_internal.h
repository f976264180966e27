/* libmesh diagnostics internals: how parsers report. */
#ifndef MESH_DIAG_INTERNAL_H
#define MESH_DIAG_INTERNAL_H

#include <stdarg.h>
#include <mesh/diag.h>

/* Append one diagnostic; d may be NULL (nothing recorded). Returns 0 or
 * MESH_ERR_NOMEM. Past MESH_DIAGS_MAX entries only a count is kept. */
int mesh__diag_add(mesh_diags *d, int severity, const char *file, uint32_t line, uint32_t col,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
int mesh__diag_vadd(mesh_diags *d, int severity, const char *file, uint32_t line, uint32_t col,
                    const char *fmt, va_list ap);

#endif
