/* libmesh document tree: libyaml events (and jansson's strict JSON check) into positioned nodes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <yaml.h>

#include <mesh/error.h>
#include <mesh/manifest.h>
#include "ctx_internal.h"
#include "diag_internal.h"
#include "node_internal.h"

void mesh__node_free(mesh_ctx *ctx, mesh__node *n) {
  if (!n) return;
  /* An open map (parse stopped inside it) counts its pushed kids in len. */
  size_t kids = n->type != MESH_NODE_MAP ? n->n : n->len > 2 * n->n ? n->len : 2 * n->n;
  for (size_t i = 0; i < kids; i++) mesh__node_free(ctx, n->kids[i]);
  mesh__free(ctx, n->kids);
  mesh__free(ctx, n->str);
  mesh__free(ctx, n);
}

void mesh__node_free_docs(mesh_ctx *ctx, mesh__node **docs, size_t ndocs) {
  if (!docs) return;
  for (size_t i = 0; i < ndocs; i++) mesh__node_free(ctx, docs[i]);
  mesh__free(ctx, docs);
}

/* Builder state: the open containers and the documents done so far. */
typedef struct {
  mesh_ctx *ctx;
  mesh_diags *d;
  const char *file;
  mesh__node *stack[MESH__NODE_MAX_DEPTH];
  size_t depth;
  mesh__node *root;
  mesh__node **docs;
  size_t ndocs, capdocs;
  size_t nodes;
  int rc;
} builder;

static int fail(builder *b, int rc, uint32_t line, uint32_t col, const char *fmt, const char *arg) {
  if (mesh__diag_add(b->d, MESH_DIAG_ERROR, b->file, line, col, fmt, arg) < 0) rc = MESH_ERR_NOMEM;
  b->rc = rc;
  return rc;
}

static int push_kid(builder *b, mesh__node *parent, mesh__node *kid) {
  /* While a map is open, len counts the keys and values pushed so far. */
  size_t used = parent->type == MESH_NODE_MAP ? parent->len : parent->n;
  if (used == 0 || (used >= 4 && (used & (used - 1)) == 0)) { /* capacity 4, 8, 16, ... */
    size_t cap = used ? used * 2 : 4;
    mesh__node **k = mesh__realloc(b->ctx, parent->kids, cap * sizeof *k);
    if (!k) return MESH_ERR_NOMEM;
    parent->kids = k;
  }
  parent->kids[used] = kid;
  kid->parent = parent;
  if (parent->type == MESH_NODE_MAP) {
    parent->len++;
    if ((parent->len & 1) == 0) {
      kid->key = parent->kids[used - 1]->str;
      parent->n++;
    }
  } else {
    kid->index = parent->n++;
  }
  return 0;
}

static int attach(builder *b, mesh__node *n, const yaml_mark_t *m) {
  if (++b->nodes > MESH__NODE_MAX_NODES) {
    mesh__node_free(b->ctx, n);
    return fail(b, MESH_ERR_LIMIT, (uint32_t)m->line + 1, (uint32_t)m->column + 1,
                "document has more than %s nodes", "200000");
  }
  if (b->depth == 0) {
    if (b->root) { /* cannot happen with libyaml's event grammar */
      mesh__node_free(b->ctx, n);
      return fail(b, MESH_ERR_PARSE, n->line, n->col, "%s", "two roots in one document");
    }
    b->root = n;
    return 0;
  }
  mesh__node *parent = b->stack[b->depth - 1];
  if (parent->type == MESH_NODE_MAP && (parent->len & 1) == 0 && n->type != MESH_NODE_SCALAR) {
    mesh__node_free(b->ctx, n);
    return fail(b, MESH_ERR_PARSE, (uint32_t)m->line + 1, (uint32_t)m->column + 1, "%s",
                "a map key must be plain text, not a map or a list");
  }
  if (push_kid(b, parent, n) < 0) {
    mesh__node_free(b->ctx, n);
    b->rc = MESH_ERR_NOMEM;
    return b->rc;
  }
  return 0;
}

static mesh__node *new_node(builder *b, int type, const yaml_mark_t *m) {
  mesh__node *n = mesh__calloc(b->ctx, 1, sizeof *n);
  if (!n) {
    b->rc = MESH_ERR_NOMEM;
    return NULL;
  }
  n->type = type;
  n->line = (uint32_t)m->line + 1;
  n->col = (uint32_t)m->column + 1;
  return n;
}

static int cmp_keys(const void *a, const void *b) {
  const mesh__node *x = *(mesh__node *const *)a, *y = *(mesh__node *const *)b;
  int c = strcmp(x->str, y->str);
  if (c) return c;
  return x->line != y->line ? (x->line < y->line ? -1 : 1) : (x->col < y->col ? -1 : 1);
}

/* Duplicate keys are an error (YAML forbids them; silently keeping one hides typos). */
static int check_duplicates(builder *b, mesh__node *map) {
  if (map->n < 2) return 0;
  mesh__node **keys = mesh__calloc(b->ctx, map->n, sizeof *keys);
  if (!keys) return b->rc = MESH_ERR_NOMEM;
  for (size_t i = 0; i < map->n; i++) keys[i] = map->kids[2 * i];
  qsort(keys, map->n, sizeof *keys, cmp_keys);
  int rc = 0;
  for (size_t i = 1; i < map->n && rc == 0; i++)
    if (strcmp(keys[i - 1]->str, keys[i]->str) == 0)
      rc = fail(b, MESH_ERR_PARSE, keys[i]->line, keys[i]->col, "duplicate key '%s'", keys[i]->str);
  mesh__free(b->ctx, keys);
  return rc;
}

static bool is_null_scalar(const mesh__node *n) {
  return n->type == MESH_NODE_SCALAR && !n->quoted &&
         (n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0);
}

static int end_document(builder *b) {
  mesh__node *root = b->root;
  b->root = NULL;
  if (!root || is_null_scalar(root)) {
    mesh__node_free(b->ctx, root);
    return 0;
  }
  if (b->ndocs == b->capdocs) {
    size_t cap = b->capdocs ? b->capdocs * 2 : 4;
    mesh__node **d = mesh__realloc(b->ctx, b->docs, cap * sizeof *d);
    if (!d) {
      mesh__node_free(b->ctx, root);
      return b->rc = MESH_ERR_NOMEM;
    }
    b->docs = d;
    b->capdocs = cap;
  }
  b->docs[b->ndocs++] = root;
  return 0;
}

static int on_event(builder *b, const yaml_event_t *ev) {
  const yaml_mark_t *m = &ev->start_mark;
  mesh__node *n;
  switch (ev->type) {
  case YAML_DOCUMENT_END_EVENT:
    return end_document(b);
  case YAML_ALIAS_EVENT:
    return fail(b, MESH_ERR_UNSUPPORTED, (uint32_t)m->line + 1, (uint32_t)m->column + 1,
                "YAML alias '*%s' is not supported (aliases allow exponential expansion)",
                (const char *)ev->data.alias.anchor);
  case YAML_SCALAR_EVENT:
    if (!(n = new_node(b, MESH_NODE_SCALAR, m))) return b->rc;
    n->str = mesh__strndup(b->ctx, (const char *)ev->data.scalar.value, ev->data.scalar.length);
    if (!n->str) {
      mesh__node_free(b->ctx, n);
      return b->rc = MESH_ERR_NOMEM;
    }
    n->len = ev->data.scalar.length;
    n->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE ||
                (ev->data.scalar.tag && strcmp((const char *)ev->data.scalar.tag, YAML_STR_TAG) == 0);
    if (strlen(n->str) != n->len) {
      mesh__node_free(b->ctx, n);
      return fail(b, MESH_ERR_PARSE, (uint32_t)m->line + 1, (uint32_t)m->column + 1, "%s",
                  "text contains a NUL character");
    }
    return attach(b, n, m);
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT:
    if (b->depth == MESH__NODE_MAX_DEPTH)
      return fail(b, MESH_ERR_LIMIT, (uint32_t)m->line + 1, (uint32_t)m->column + 1,
                  "nesting deeper than %s levels", "64");
    if (!(n = new_node(b, ev->type == YAML_MAPPING_START_EVENT ? MESH_NODE_MAP : MESH_NODE_SEQ, m)))
      return b->rc;
    if (attach(b, n, m) < 0) return b->rc;
    b->stack[b->depth++] = n;
    return 0;
  case YAML_SEQUENCE_END_EVENT:
    b->depth--;
    return 0;
  case YAML_MAPPING_END_EVENT:
    n = b->stack[--b->depth];
    n->len = 0;
    return check_duplicates(b, n);
  default:
    return 0;
  }
}

static size_t skip_space(const char *buf, size_t len) {
  size_t i = 0;
  while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r' || buf[i] == '\n')) i++;
  return i;
}

int mesh__node_parse(mesh_ctx *ctx, const char *file, const char *buf, size_t len, mesh_diags *d,
                     mesh__node ***docs, size_t *ndocs) {
  if (!ctx || (!buf && len) || !docs || !ndocs) return MESH_ERR_INVALID;
  if (!file) file = "<input>";
  if (len > MESH_MANIFEST_MAX_BYTES) {
    char size[32];
    snprintf(size, sizeof size, "%zu", len);
    mesh__diag_add(d, MESH_DIAG_ERROR, file, 0, 0,
                   "input is %s bytes; manifests are limited to %u bytes", size,
                   (unsigned)MESH_MANIFEST_MAX_BYTES);
    return MESH_ERR_LIMIT;
  }
  size_t start = skip_space(buf, len);
  if (start < len && (buf[start] == '{' || buf[start] == '[')) {
    /* JSON: jansson is the strict judge of syntax; the tree (with positions)
     * still comes from libyaml, since YAML's flow style is a superset. */
    json_error_t err;
    json_t *j = json_loadb(buf, len, 0, &err);
    if (!j) {
      mesh__diag_add(d, MESH_DIAG_ERROR, file, err.line > 0 ? (uint32_t)err.line : 0,
                     err.column > 0 ? (uint32_t)err.column : 0, "JSON syntax error: %s", err.text);
      return MESH_ERR_PARSE;
    }
    json_decref(j);
  }

  builder b = {.ctx = ctx, .d = d, .file = file};
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) return MESH_ERR_NOMEM;
  yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
  bool done = false;
  while (!done && b.rc == 0) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      if (p.error == YAML_MEMORY_ERROR) {
        b.rc = MESH_ERR_NOMEM;
        break;
      }
      const char *problem = p.problem ? p.problem : "unknown problem";
      yaml_mark_t at = p.problem_mark;
      if (p.context)
        mesh__diag_add(d, MESH_DIAG_ERROR, file, (uint32_t)at.line + 1, (uint32_t)at.column + 1,
                       "YAML syntax error: %s %s (line %u)", problem, p.context,
                       (unsigned)p.context_mark.line + 1);
      else
        mesh__diag_add(d, MESH_DIAG_ERROR, file, (uint32_t)at.line + 1, (uint32_t)at.column + 1,
                       "YAML syntax error: %s", problem);
      b.rc = MESH_ERR_PARSE;
      break;
    }
    done = ev.type == YAML_STREAM_END_EVENT;
    on_event(&b, &ev);
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  if (b.rc < 0) {
    /* Free the open document: its root owns every open container. */
    mesh__node_free(ctx, b.root);
    mesh__node_free_docs(ctx, b.docs, b.ndocs);
    return b.rc;
  }
  *docs = b.docs;
  *ndocs = b.ndocs;
  return 0;
}

const mesh__node *mesh__node_get(const mesh__node *map, const char *key) {
  if (!map || map->type != MESH_NODE_MAP) return NULL;
  for (size_t i = 0; i < map->n; i++)
    if (strcmp(map->kids[2 * i]->str, key) == 0) return map->kids[2 * i + 1];
  return NULL;
}

void mesh__node_path(const mesh__node *n, char *buf, size_t size) {
  /* Walk up collecting the chain, then print it root first. */
  const mesh__node *chain[MESH__NODE_MAX_DEPTH + 1];
  size_t k = 0;
  for (const mesh__node *p = n; p && p->parent && k < MESH__NODE_MAX_DEPTH + 1; p = p->parent)
    chain[k++] = p;
  size_t off = 0;
  buf[0] = '\0';
  while (k-- > 0 && off < size) {
    const mesh__node *c = chain[k];
    int w;
    if (c->parent->type == MESH_NODE_MAP)
      w = snprintf(buf + off, size - off, "%s%s", off ? "." : "", c->key ? c->key : "?");
    else
      w = snprintf(buf + off, size - off, "[%zu]", c->index);
    if (w < 0) break;
    off += (size_t)w;
  }
  if (off == 0) snprintf(buf, size, "(document)");
}

const char *mesh__node_type_name(const mesh__node *n) {
  if (!n) return "nothing";
  switch (n->type) {
  case MESH_NODE_MAP: return "a map";
  case MESH_NODE_SEQ: return "a list";
  default: return n->quoted ? "quoted text" : "a plain value";
  }
}
