/* libmesh context: allocator hooks, log hook and random source. */
#ifndef MESH_CTX_H
#define MESH_CTX_H

#include <mesh/common.h>

MESH_BEGIN_DECLS

/* A context carries the hooks every other object uses. Create one per
 * application (or per test); objects made with it borrow it and it must
 * outlive them. A context is thread-safe once configured: set its hooks
 * before sharing it, and the hooks themselves must then be thread-safe. */
typedef struct mesh_ctx mesh_ctx;

/* Allocator hooks. realloc(ud, NULL, n) must behave as malloc; free(ud, NULL)
 * must be a no-op. Any hook may fail by returning NULL: libmesh then returns
 * MESH_ERR_NOMEM and leaks nothing (tests inject failures this way). */
typedef void *(*mesh_malloc_fn)(void *ud, size_t size);
typedef void *(*mesh_realloc_fn)(void *ud, void *ptr, size_t size);
typedef void (*mesh_free_fn)(void *ud, void *ptr);

/* Log hook: gets the level and one formatted line (no trailing newline). */
typedef void (*mesh_log_fn)(void *ud, int level, const char *line);

/* Random source: fill buf with len unpredictable bytes; return 0 or a
 * negative MESH_ERR_*. The default reads getrandom(2). */
typedef int (*mesh_random_fn)(void *ud, uint8_t *buf, size_t len);

enum {
  MESH_LOG_ERROR = 3,
  MESH_LOG_WARN = 4,
  MESH_LOG_INFO = 6,
  MESH_LOG_DEBUG = 7
};

/* A context with the C library's allocator, no log hook and getrandom(2).
 * Returns MESH_ERR_INVALID (ret NULL) or MESH_ERR_NOMEM. */
MESH_API int mesh_ctx_new(mesh_ctx **ret);

/* The same with caller allocator hooks (all three required); the context
 * itself is allocated with them. */
MESH_API int mesh_ctx_new_with_allocator(mesh_malloc_fn m, mesh_realloc_fn r, mesh_free_fn f,
                                         void *ud, mesh_ctx **ret);

/* NULL is a no-op. Every object made with ctx must be freed first. */
MESH_API void mesh_ctx_free(mesh_ctx *ctx);

/* Lines at or below max_level (more severe) go to fn; fn NULL turns logging
 * off. Returns MESH_ERR_INVALID for a NULL ctx. */
MESH_API int mesh_ctx_set_log(mesh_ctx *ctx, int max_level, mesh_log_fn fn, void *ud);

/* fn NULL restores getrandom(2). Returns MESH_ERR_INVALID for a NULL ctx. */
MESH_API int mesh_ctx_set_random(mesh_ctx *ctx, mesh_random_fn fn, void *ud);

/* Free a string that libmesh allocated for the caller with ctx's allocator
 * (generated profiles, rendered metrics, RPC replies). NULL is a no-op. */
MESH_API void mesh_free_string(mesh_ctx *ctx, char *s);

/* Fill buf from the context's random source. */
MESH_API int mesh_ctx_random(mesh_ctx *ctx, uint8_t *buf, size_t len);

MESH_END_DECLS

#endif
