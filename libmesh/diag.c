/* libmesh diagnostics: a bounded list of errors and warnings with positions. */
#include <stdio.h>
#include <string.h>

#include <mesh/error.h>
#include "ctx_internal.h"
#include "diag_internal.h"

typedef struct {
  int severity;
  uint32_t line, col;
  char *file;
  char *message;
  char *text;
} diag;

struct mesh_diags {
  mesh_ctx *ctx;
  diag *items;
  size_t n, cap;
  size_t errors;
  size_t dropped;
};

int mesh_diags_new(mesh_ctx *ctx, mesh_diags **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_diags *d = mesh__calloc(ctx, 1, sizeof *d);
  if (!d) return MESH_ERR_NOMEM;
  d->ctx = ctx;
  *ret = d;
  return 0;
}

void mesh_diags_clear(mesh_diags *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) {
    mesh__free(d->ctx, d->items[i].file);
    mesh__free(d->ctx, d->items[i].message);
    mesh__free(d->ctx, d->items[i].text);
  }
  d->n = d->errors = d->dropped = 0;
}

void mesh_diags_free(mesh_diags *d) {
  if (!d) return;
  mesh_diags_clear(d);
  mesh__free(d->ctx, d->items);
  mesh__free(d->ctx, d);
}

int mesh__diag_vadd(mesh_diags *d, int severity, const char *file, uint32_t line, uint32_t col,
                    const char *fmt, va_list ap) {
  if (!d) return 0;
  if (severity == MESH_DIAG_ERROR) d->errors++;
  if (d->n >= MESH_DIAGS_MAX) {
    /* Keep the last slot saying how much was dropped. */
    d->dropped++;
    diag *last = &d->items[d->n - 1];
    char *msg = mesh__sprintf(d->ctx, "%zu more diagnostics not shown", d->dropped + 1);
    char *text = msg ? mesh__sprintf(d->ctx, "%s: note: %s", last->file, msg) : NULL;
    if (!msg || !text) {
      mesh__free(d->ctx, msg);
      return MESH_ERR_NOMEM;
    }
    mesh__free(d->ctx, last->message);
    mesh__free(d->ctx, last->text);
    last->message = msg;
    last->text = text;
    return 0;
  }
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 8;
    diag *items = mesh__realloc(d->ctx, d->items, cap * sizeof *items);
    if (!items) return MESH_ERR_NOMEM;
    d->items = items;
    d->cap = cap;
  }
  diag *g = &d->items[d->n];
  memset(g, 0, sizeof *g);
  g->severity = severity;
  g->line = line;
  g->col = col;
  g->file = mesh__strdup(d->ctx, file ? file : "<input>");
  g->message = mesh__vsprintf(d->ctx, fmt, ap);
  const char *sev = severity == MESH_DIAG_ERROR ? "error" : "warning";
  if (g->file && g->message) {
    if (line)
      g->text = mesh__sprintf(d->ctx, "%s:%u:%u: %s: %s", g->file, line, col, sev, g->message);
    else
      g->text = mesh__sprintf(d->ctx, "%s: %s: %s", g->file, sev, g->message);
  }
  if (!g->file || !g->message || !g->text) {
    mesh__free(d->ctx, g->file);
    mesh__free(d->ctx, g->message);
    mesh__free(d->ctx, g->text);
    return MESH_ERR_NOMEM;
  }
  d->n++;
  return 0;
}

int mesh__diag_add(mesh_diags *d, int severity, const char *file, uint32_t line, uint32_t col,
                   const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = mesh__diag_vadd(d, severity, file, line, col, fmt, ap);
  va_end(ap);
  return rc;
}

size_t mesh_diags_count(const mesh_diags *d) { return d ? d->n : 0; }
size_t mesh_diags_errors(const mesh_diags *d) { return d ? d->errors : 0; }

static const diag *at(const mesh_diags *d, size_t i) { return d && i < d->n ? &d->items[i] : NULL; }

int mesh_diags_severity(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->severity : -1;
}
const char *mesh_diags_file(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->file : NULL;
}
uint32_t mesh_diags_line(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->line : 0;
}
uint32_t mesh_diags_column(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->col : 0;
}
const char *mesh_diags_message(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->message : NULL;
}
const char *mesh_diags_text(const mesh_diags *d, size_t i) {
  const diag *g = at(d, i);
  return g ? g->text : NULL;
}
