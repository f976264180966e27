/* libmesh document tree: YAML/JSON parsed into positioned nodes, and the typed
 * readers that compilers of manifest kinds use to report precise diagnostics. */
#ifndef MESH_NODE_INTERNAL_H
#define MESH_NODE_INTERNAL_H

#include <stdbool.h>
#include <mesh/diag.h>

/* Bounds on untrusted documents (see include/mesh/manifest.h). */
#define MESH__NODE_MAX_DEPTH 64
#define MESH__NODE_MAX_NODES 200000

enum { MESH_NODE_SCALAR, MESH_NODE_MAP, MESH_NODE_SEQ };

typedef struct mesh__node mesh__node;
struct mesh__node {
  int type;
  bool quoted;           /* scalar written in quotes: a string even if it looks like a number */
  uint32_t line, col;    /* 1-based position of the node's first character */
  mesh__node *parent;    /* NULL for a document root */
  const char *key;       /* the key this node is the value of, in a map parent */
  size_t index;          /* the index of this node, in a sequence parent */
  char *str;             /* scalar text (NUL-terminated), NULL otherwise */
  size_t len;            /* scalar length */
  size_t n;              /* MAP: number of pairs; SEQ: number of items */
  mesh__node **kids;     /* SEQ: items; MAP: keys at 2i, values at 2i+1 */
};

/* Parse buf (YAML 1.1, or JSON, which is checked strictly by jansson first)
 * into documents. file names the input in diagnostics. Empty documents are
 * skipped. On error, diagnostics are appended and MESH_ERR_PARSE or
 * MESH_ERR_LIMIT is returned with *docs untouched. */
int mesh__node_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len, mesh_diags *d,
                     mesh__node ***docs, size_t *ndocs);
void mesh__node_free(mesh_ctx *ctx, mesh__node *n);
void mesh__node_free_docs(mesh_ctx *ctx, mesh__node **docs, size_t ndocs);

/* The value for key in a MAP node, NULL when absent or n is not a map. */
const mesh__node *mesh__node_get(const mesh__node *map, const char *key);
/* Path from the document root, e.g. "spec.routes[0].condition". */
void mesh__node_path(const mesh__node *n, char *buf, size_t size);
/* A short name for the node's type for messages ("a map", "a list", "text"). */
const char *mesh__node_type_name(const mesh__node *n);

/* A reader reports diagnostics about one document. Every mesh__read_* call
 * that finds a problem records an error naming the field path and position,
 * counts it, and returns false; callers keep going so one run reports all. */
typedef struct {
  mesh_ctx *ctx;
  mesh_diags *diags;
  const char *file;
  size_t errors;
  int nomem; /* an allocation failed somewhere: the result is MESH_ERR_NOMEM */
} mesh__reader;

void mesh__error(mesh__reader *r, const mesh__node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mesh__warn(mesh__reader *r, const mesh__node *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Warn about keys of map that are not in allowed (NULL-terminated), with a
 * "did you mean" for near misses. */
void mesh__check_keys(mesh__reader *r, const mesh__node *map, const char *const *allowed);

/* Type checks: true when n has the type; otherwise an error "<path>: expected
 * a map, found a list". */
bool mesh__want_map(mesh__reader *r, const mesh__node *n);
bool mesh__want_seq(mesh__reader *r, const mesh__node *n);
bool mesh__want_scalar(mesh__reader *r, const mesh__node *n);

/* Field readers on a MAP. When the key is absent: required → error, else
 * *out is left unchanged and true is returned. The "present" result is
 * reported through the return of mesh__node_get by callers who need it. */
bool mesh__read_string(mesh__reader *r, const mesh__node *map, const char *key, bool required,
                       const char **out);
bool mesh__read_bool(mesh__reader *r, const mesh__node *map, const char *key, bool *out);
bool mesh__read_int(mesh__reader *r, const mesh__node *map, const char *key, int64_t min,
                    int64_t max, int64_t *out);
bool mesh__read_double(mesh__reader *r, const mesh__node *map, const char *key, double min,
                       double max, double *out);
/* A Go duration ("5s", "300ms", "1m30s") in milliseconds, rounded up. */
bool mesh__read_duration_ms(mesh__reader *r, const mesh__node *map, const char *key,
                            uint64_t *out);
/* A Kubernetes quantity ("1", "900m", "0.5", "2k") in thousandths. */
bool mesh__read_quantity_milli(mesh__reader *r, const mesh__node *map, const char *key,
                               int64_t *out);

/* The plain parsers behind the readers; they return 0 or MESH_ERR_PARSE /
 * MESH_ERR_RANGE and, on error, a static reason in *why. */
int mesh__parse_duration_ns(const char *s, size_t len, uint64_t *out, const char **why);
int mesh__parse_quantity_milli(const char *s, size_t len, int64_t *out, const char **why);

#endif
