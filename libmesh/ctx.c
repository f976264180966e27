/* libmesh context: allocator hooks, log hook and random source. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <mesh/error.h>
#include "ctx_internal.h"

static void *libc_malloc(void *ud, size_t n) { (void)ud; return malloc(n); }
static void *libc_realloc(void *ud, void *p, size_t n) { (void)ud; return realloc(p, n); }
static void libc_free(void *ud, void *p) { (void)ud; free(p); }

static int getrandom_fill(void *ud, uint8_t *buf, size_t len) {
  (void)ud;
  while (len > 0) {
    ssize_t n = getrandom(buf, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MESH_ERR_IO;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

int mesh_ctx_new_with_allocator(mesh_malloc_fn m, mesh_realloc_fn r, mesh_free_fn f, void *ud,
                                mesh_ctx **ret) {
  if (!m || !r || !f || !ret) return MESH_ERR_INVALID;
  mesh_ctx *ctx = m(ud, sizeof *ctx);
  if (!ctx) return MESH_ERR_NOMEM;
  memset(ctx, 0, sizeof *ctx);
  ctx->malloc_fn = m;
  ctx->realloc_fn = r;
  ctx->free_fn = f;
  ctx->alloc_ud = ud;
  ctx->random_fn = getrandom_fill;
  *ret = ctx;
  return 0;
}

int mesh_ctx_new(mesh_ctx **ret) {
  return mesh_ctx_new_with_allocator(libc_malloc, libc_realloc, libc_free, NULL, ret);
}

void mesh_ctx_free(mesh_ctx *ctx) {
  if (ctx) ctx->free_fn(ctx->alloc_ud, ctx);
}

int mesh_ctx_set_log(mesh_ctx *ctx, int max_level, mesh_log_fn fn, void *ud) {
  if (!ctx) return MESH_ERR_INVALID;
  ctx->log_fn = fn;
  ctx->log_ud = ud;
  ctx->log_level = max_level;
  return 0;
}

int mesh_ctx_set_random(mesh_ctx *ctx, mesh_random_fn fn, void *ud) {
  if (!ctx) return MESH_ERR_INVALID;
  ctx->random_fn = fn ? fn : getrandom_fill;
  ctx->random_ud = fn ? ud : NULL;
  return 0;
}

int mesh_ctx_random(mesh_ctx *ctx, uint8_t *buf, size_t len) {
  if (!ctx || (!buf && len)) return MESH_ERR_INVALID;
  return ctx->random_fn(ctx->random_ud, buf, len);
}

void mesh_free_string(mesh_ctx *ctx, char *s) {
  if (ctx && s) mesh__free(ctx, s);
}

void *mesh__malloc(mesh_ctx *ctx, size_t n) { return ctx->malloc_fn(ctx->alloc_ud, n ? n : 1); }

void *mesh__calloc(mesh_ctx *ctx, size_t count, size_t size) {
  if (size && count > SIZE_MAX / size) return NULL;
  void *p = mesh__malloc(ctx, count * size);
  if (p) memset(p, 0, count * size);
  return p;
}

void *mesh__realloc(mesh_ctx *ctx, void *p, size_t n) {
  return ctx->realloc_fn(ctx->alloc_ud, p, n ? n : 1);
}

void mesh__free(mesh_ctx *ctx, void *p) {
  if (p) ctx->free_fn(ctx->alloc_ud, p);
}

void mesh__wipe_free(mesh_ctx *ctx, void *p, size_t n) {
  if (!p) return;
  volatile unsigned char *v = p; /* volatile: the stores are not optimised away */
  for (size_t i = 0; i < n; i++) v[i] = 0;
  mesh__free(ctx, p);
}

char *mesh__strndup(mesh_ctx *ctx, const char *s, size_t n) {
  char *d = mesh__malloc(ctx, n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

char *mesh__strdup(mesh_ctx *ctx, const char *s) { return mesh__strndup(ctx, s, strlen(s)); }

char *mesh__vsprintf(mesh_ctx *ctx, const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) return NULL;
  char *s = mesh__malloc(ctx, (size_t)n + 1);
  if (s) vsnprintf(s, (size_t)n + 1, fmt, ap);
  return s;
}

char *mesh__sprintf(mesh_ctx *ctx, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = mesh__vsprintf(ctx, fmt, ap);
  va_end(ap);
  return s;
}

void mesh__log(mesh_ctx *ctx, int level, const char *fmt, ...) {
  if (!ctx || !ctx->log_fn || level > ctx->log_level) return;
  /* A fixed buffer: logging must work when memory is short. */
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  ctx->log_fn(ctx->log_ud, level, line);
}
