/* libmesh context internals: the hooks and the allocation helpers every module uses. */
#ifndef MESH_CTX_INTERNAL_H
#define MESH_CTX_INTERNAL_H

#include <stdarg.h>
#include <mesh/ctx.h>

struct mesh_ctx {
  mesh_malloc_fn malloc_fn;
  mesh_realloc_fn realloc_fn;
  mesh_free_fn free_fn;
  void *alloc_ud;
  mesh_log_fn log_fn;
  void *log_ud;
  int log_level;
  mesh_random_fn random_fn;
  void *random_ud;
};

void *mesh__malloc(mesh_ctx *ctx, size_t n);
void *mesh__calloc(mesh_ctx *ctx, size_t count, size_t size); /* overflow-checked */
void *mesh__realloc(mesh_ctx *ctx, void *p, size_t n);
void mesh__free(mesh_ctx *ctx, void *p);
/* Zeroes n bytes of p, then frees it: for keys and tokens. */
void mesh__wipe_free(mesh_ctx *ctx, void *p, size_t n);
char *mesh__strndup(mesh_ctx *ctx, const char *s, size_t n);
char *mesh__strdup(mesh_ctx *ctx, const char *s);
/* printf into a fresh allocation; NULL on failure. */
char *mesh__sprintf(mesh_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *mesh__vsprintf(mesh_ctx *ctx, const char *fmt, va_list ap);

void mesh__log(mesh_ctx *ctx, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
