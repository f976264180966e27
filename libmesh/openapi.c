/* libmesh OpenAPI to ServiceProfile: what `linkerd profile --open-api` does, as a library call. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/profile.h>
#include "ctx_internal.h"
#include "diag_internal.h"
#include "node_internal.h"
#include "regex_internal.h"

/* A generated profile has at most this many routes: every request walks the
 * route list, so a spec with more operations wants a hand-made profile. */
#define MAX_ROUTES 10000

/* The operations Linkerd turns into routes, in the order it emits them
 * (it tests the PathItem fields alphabetically; TRACE is not one of them). */
static const struct {
  const char *key, *method;
} operations[] = {
    {"delete", "DELETE"}, {"get", "GET"},   {"head", "HEAD"}, {"options", "OPTIONS"},
    {"patch", "PATCH"},   {"post", "POST"}, {"put", "PUT"},
};
#define NOPS (sizeof operations / sizeof operations[0])

/* The YAML text being written, and what it will cost the manifest loader
 * to read back: the output must load, so it must fit the loader's limits. */
typedef struct {
  mesh_ctx *ctx;
  char *s;
  size_t len, cap;
  size_t nodes;
  bool nomem, too_big;
} out;

static void put(out *o, const char *s, size_t n) {
  if (o->nomem || o->too_big) return;
  if (n > MESH_MANIFEST_MAX_BYTES - o->len) {
    o->too_big = true; /* stops growth long before memory does */
    return;
  }
  if (o->cap - o->len <= n) {
    size_t cap = o->cap ? o->cap : 4096;
    while (cap - o->len <= n) cap *= 2;
    char *p = mesh__realloc(o->ctx, o->s, cap);
    if (!p) {
      o->nomem = true;
      return;
    }
    o->s = p;
    o->cap = cap;
  }
  memcpy(o->s + o->len, s, n);
  o->len += n;
  o->s[o->len] = '\0';
}

static void put_str(out *o, const char *s) { put(o, s, strlen(s)); }

static void put_uint(out *o, unsigned v) {
  char buf[16];
  int n = snprintf(buf, sizeof buf, "%u", v);
  put(o, buf, (size_t)n);
}

/* Decodes one UTF-8 sequence at s (n bytes left); returns its length, or 0
 * when the bytes are not valid UTF-8. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
  if (s[0] < 0x80) return *cp = s[0], 1;
  size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
  if (len == 0 || len > n || s[0] > 0xf4) return 0;
  uint32_t v = s[0] & (0x7f >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    v = (v << 6) | (s[i] & 0x3f);
  }
  static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < min[len] || v > 0x10ffff) return 0;
  return *cp = v, len;
}

/* Text for the inside of a YAML double-quoted scalar. Everything that is
 * not printable in YAML, and every line break (NEL, LS and PS included,
 * which YAML would fold), is written as an escape, so that any text comes
 * back byte for byte. */
static void put_escaped(out *o, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  size_t run = 0; /* start of the pending run of bytes that need no escape */
  for (size_t i = 0; i < n;) {
    uint32_t cp;
    size_t len = utf8_decode(s + i, n - i, &cp);
    bool plain = len > 0 && cp != '"' && cp != '\\' && cp != 0x2028 && cp != 0x2029 &&
                 cp != 0xfeff &&
                 ((cp >= 0x20 && cp < 0x7f) || (cp >= 0xa0 && cp < 0xd800) ||
                  (cp >= 0xe000 && cp < 0xfffe) || cp >= 0x10000);
    if (plain) {
      i += len;
      continue;
    }
    put(o, str + run, i - run);
    char esc[16];
    if (len == 0) {
      snprintf(esc, sizeof esc, "\\x%02X", s[i]); /* cannot come from libyaml; kept visible */
      len = 1;
    } else if (cp == '"' || cp == '\\') {
      snprintf(esc, sizeof esc, "\\%c", (char)cp);
    } else if (cp == '\n') {
      snprintf(esc, sizeof esc, "\\n");
    } else if (cp == '\t') {
      snprintf(esc, sizeof esc, "\\t");
    } else if (cp < 0x100) {
      snprintf(esc, sizeof esc, "\\x%02X", (unsigned)cp);
    } else if (cp < 0x10000) {
      snprintf(esc, sizeof esc, "\\u%04X", (unsigned)cp);
    } else {
      snprintf(esc, sizeof esc, "\\U%08X", (unsigned)cp);
    }
    put_str(o, esc);
    i += len;
    run = i;
  }
  put(o, str + run, n - run);
}

static void put_quoted(out *o, const char *s) {
  put(o, "\"", 1);
  put_escaped(o, s, strlen(s));
  put(o, "\"", 1);
}

/* "<indent>key: " with a plain value; two nodes when read back. */
static void put_plain_field(out *o, const char *indent, const char *key, const char *value) {
  put_str(o, indent);
  put_str(o, key);
  put_str(o, ": ");
  put_str(o, value);
  put_str(o, "\n");
  o->nodes += 2;
}

static void put_quoted_field(out *o, const char *indent, const char *key, const char *value) {
  put_str(o, indent);
  put_str(o, key);
  put_str(o, ": ");
  put_quoted(o, value);
  put_str(o, "\n");
  o->nodes += 2;
}

/* "<indent>key:" opening a nested map or list; two nodes. */
static void put_open(out *o, const char *indent, const char *key) {
  put_str(o, indent);
  put_str(o, key);
  put_str(o, ":\n");
  o->nodes += 2;
}

/* Go's path.Join(base, rel): the non-empty parts joined with '/', then
 * cleaned as path.Clean does ("//" and "." dropped, ".." applied, no
 * trailing '/'). Linkerd names and matches routes by this path. */
static char *join_path(mesh_ctx *ctx, const char *base, const char *rel) {
  size_t bl = strlen(base), rl = strlen(rel);
  if (bl == 0 && rl == 0) return mesh__strdup(ctx, "");
  char *p = mesh__malloc(ctx, bl + rl + 2);
  char *q = mesh__malloc(ctx, bl + rl + 2);
  if (!p || !q) {
    mesh__free(ctx, p);
    mesh__free(ctx, q);
    return NULL;
  }
  size_t n = 0;
  memcpy(p, base, bl);
  n = bl;
  if (bl && rl) p[n++] = '/';
  memcpy(p + n, rel, rl);
  n += rl;

  bool rooted = p[0] == '/';
  size_t r = 0, w = 0, dotdot = 0;
  if (rooted) {
    q[w++] = '/';
    r = 1;
    dotdot = 1;
  }
  while (r < n) {
    if (p[r] == '/') {
      r++;
    } else if (p[r] == '.' && (r + 1 == n || p[r + 1] == '/')) {
      r++;
    } else if (p[r] == '.' && p[r + 1] == '.' && (r + 2 == n || p[r + 2] == '/')) {
      r += 2;
      if (w > dotdot) {
        w--;
        while (w > dotdot && q[w] != '/') w--;
      } else if (!rooted) {
        if (w > 0) q[w++] = '/';
        q[w++] = '.';
        q[w++] = '.';
        dotdot = w;
      }
    } else {
      if ((rooted && w != 1) || (!rooted && w != 0)) q[w++] = '/';
      while (r < n && p[r] != '/') q[w++] = p[r++];
    }
  }
  if (w == 0) q[w++] = '.';
  q[w] = '\0';
  mesh__free(ctx, p);
  return q;
}

/* Linkerd's PathToRegex: regexp.QuoteMeta of the path, then each escaped
 * "{param}" replaced by [^/]*. Writes to dst when it is not NULL; returns
 * the length either way. */
static size_t path_regex(const char *path, char *dst) {
  size_t w = 0;
  for (const char *s = path; *s; s++) {
    const char *close = *s == '{' ? strchr(s, '}') : NULL;
    if (close) {
      if (dst) memcpy(dst + w, "[^/]*", 5);
      w += 5;
      s = close;
      continue;
    }
    if (strchr("\\.+*?()|[]{}^$", *s)) {
      if (dst) dst[w] = '\\';
      w++;
    }
    if (dst) dst[w] = *s;
    w++;
  }
  if (dst) dst[w] = '\0';
  return w;
}

static bool is_null(const mesh__node *n) {
  return n->type == MESH_NODE_SCALAR && !n->quoted &&
         (n->len == 0 || strcmp(n->str, "~") == 0 || strcmp(n->str, "null") == 0);
}


/* State of one generation. */
typedef struct {
  mesh__reader r;
  out o;
  size_t routes;
  bool limit; /* more operations than MAX_ROUTES */
} gen;

/* Documented status codes as Linkerd reads them: the keys that are whole
 * numbers ("default", "x-…" and OpenAPI 3's "5XX" ranges are not). */
static void collect_statuses(gen *g, const mesh__node *responses, bool seen[600]) {
  if (!responses || is_null(responses)) return;
  if (!mesh__want_map(&g->r, responses)) return;
  for (size_t i = 0; i < responses->n; i++) {
    const char *k = responses->kids[2 * i]->str;
    size_t kl = strlen(k);
    if (kl == 0 || strspn(k, "0123456789") != kl) continue;
    size_t zeros = strspn(k, "0"); /* Go's Atoi reads "0404" as 404 */
    unsigned long code = kl - zeros > 3 ? 1000 : strtoul(k + zeros, NULL, 10);
    if (code >= 100 && code <= 599)
      seen[code] = true;
    else
      mesh__warn(&g->r, responses->kids[2 * i + 1],
                 "%s is not an HTTP status code (100-599); no response class is made for it", k);
  }
}

static void emit_route(gen *g, const char *method, const char *path, const char *regex,
                       const mesh__node *op) {
  out *o = &g->o;
  bool retryable = false;
  const mesh__node *rn = mesh__node_get(op, "x-linkerd-retryable");
  if (rn && !is_null(rn)) mesh__read_bool(&g->r, op, "x-linkerd-retryable", &retryable);
  const char *timeout = NULL;
  const mesh__node *tn = mesh__node_get(op, "x-linkerd-timeout");
  if (tn && !is_null(tn)) {
    uint64_t ns;
    const char *why;
    if (tn->type != MESH_NODE_SCALAR)
      mesh__error(&g->r, tn, "expected a duration such as 10s or 300ms, found %s",
                  mesh__node_type_name(tn));
    else if (tn->len == 0)
      ; /* Linkerd takes an empty timeout as none */
    else if (mesh__parse_duration_ns(tn->str, tn->len, &ns, &why) < 0)
      mesh__error(&g->r, tn, "invalid duration '%s': %s", tn->str, why);
    else if (ns == 0)
      mesh__error(&g->r, tn, "a route timeout must be greater than zero");
    else
      timeout = tn->str;
  }
  bool seen[600] = {false};
  collect_statuses(g, mesh__node_get(op, "responses"), seen);

  /* Keys in the order Linkerd's YAML marshalling writes them: sorted. */
  put_str(o, "  - condition:\n");
  o->nodes += 3; /* the route map, the key and its map */
  put_plain_field(o, "      ", "method", method);
  put_quoted_field(o, "      ", "pathRegex", regex);
  if (retryable) put_plain_field(o, "    ", "isRetryable", "true");
  /* "METHOD /path": one scalar, quoted as a whole since the path is the user's. */
  put_str(o, "    name: \"");
  put_str(o, method);
  put_str(o, " ");
  put_escaped(o, path, strlen(path));
  put_str(o, "\"\n");
  o->nodes += 2;
  bool any = false;
  for (unsigned code = 100; code < 600; code++) {
    if (!seen[code]) continue;
    if (!any) put_open(o, "    ", "responseClasses");
    any = true;
    put_str(o, "    - condition:\n        status:\n          max: ");
    put_uint(o, code);
    put_str(o, "\n          min: ");
    put_uint(o, code);
    put_str(o, code >= 500 ? "\n      isFailure: true\n" : "\n      isFailure: false\n");
    o->nodes += 11;
  }
  if (timeout) put_quoted_field(o, "    ", "timeout", timeout);
}

/* OpenAPI 3's servers carry the prefix that Swagger 2 put in basePath, but
 * Linkerd reads only basePath: say so when a server URL has a path. */
static void check_servers(gen *g, const mesh__node *servers) {
  if (!servers || servers->type != MESH_NODE_SEQ) return;
  for (size_t i = 0; i < servers->n; i++) {
    const mesh__node *url = mesh__node_get(servers->kids[i], "url");
    if (!url || url->type != MESH_NODE_SCALAR) continue;
    const char *p = url->str, *scheme = strstr(p, "://");
    if (scheme) p = scheme + 3;
    else if (p[0] == '/' && p[1] == '/') p += 2;
    else p = NULL; /* a relative URL is all path */
    if (p) p = strchr(p, '/');
    else p = url->str;
    if (p && *p && strcmp(p, "/") != 0) {
      mesh__warn(&g->r, url,
                 "route paths do not include this server's path '%s' (as with linkerd profile "
                 "--open-api, only Swagger 2's basePath is prefixed)",
                 p);
      return;
    }
  }
}

static void check_version(gen *g, const mesh__node *root) {
  const mesh__node *sw = mesh__node_get(root, "swagger"), *oa = mesh__node_get(root, "openapi");
  if (!sw && !oa) {
    mesh__error(&g->r, root,
                "not an OpenAPI document: expected a field swagger: \"2.0\" or openapi: 3.x");
    return;
  }
  if (sw) {
    if (sw->type != MESH_NODE_SCALAR || (strcmp(sw->str, "2.0") != 0 && strcmp(sw->str, "2") != 0))
      mesh__error(&g->r, sw, "unsupported Swagger version%s%s%s (expected \"2.0\")",
                  sw->type == MESH_NODE_SCALAR ? " '" : "",
                  sw->type == MESH_NODE_SCALAR ? sw->str : "",
                  sw->type == MESH_NODE_SCALAR ? "'" : "");
  } else {
    if (oa->type != MESH_NODE_SCALAR || oa->str[0] != '3' || (oa->str[1] && oa->str[1] != '.'))
      mesh__error(&g->r, oa, "unsupported OpenAPI version%s%s%s (expected 3.x)",
                  oa->type == MESH_NODE_SCALAR ? " '" : "",
                  oa->type == MESH_NODE_SCALAR ? oa->str : "",
                  oa->type == MESH_NODE_SCALAR ? "'" : "");
    else
      check_servers(g, mesh__node_get(root, "servers"));
  }
}

/* One path item, once its path is joined and cleaned. Two items can clean
 * to one path ("/a" and "/a/"): Linkerd would then print two routes of one
 * name, which a profile may not have, and the second could never match. */
typedef struct {
  const mesh__node *item;
  char *path;                  /* NULL when the item makes no route */
  unsigned methods;            /* bit m: operations[m] is written */
  const char *made_by[NOPS];   /* the earlier item that made the same route, if any */
} entry;

static int cmp_entries(const void *a, const void *b) {
  const entry *x = a, *y = b;
  return strcmp(x->item->key, y->item->key); /* byte order, as Go's sort.Strings */
}

static int cmp_by_path(const void *a, const void *b) {
  const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
  int c = strcmp(x->path, y->path);
  return c ? c : (x > y) - (x < y); /* ties keep the order routes are written in */
}

/* Marks the operations whose route an earlier item already made. */
static void find_repeats(gen *g, entry *e, size_t n) {
  entry **byp = mesh__calloc(g->r.ctx, n ? n : 1, sizeof *byp);
  if (!byp) {
    g->r.nomem = 1;
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (e[i].path) byp[k++] = &e[i];
  qsort(byp, k, sizeof *byp, cmp_by_path);
  const char *owner[NOPS] = {NULL};
  for (size_t i = 0; i < k; i++) {
    if (i == 0 || strcmp(byp[i - 1]->path, byp[i]->path) != 0)
      for (size_t m = 0; m < NOPS; m++) owner[m] = NULL;
    for (size_t m = 0; m < NOPS; m++) {
      if (!(byp[i]->methods & (1u << m))) continue;
      if (owner[m]) byp[i]->made_by[m] = owner[m];
      else owner[m] = byp[i]->item->key;
    }
  }
  mesh__free(g->r.ctx, byp);
}

/* Reads one path item: its cleaned path and which operations it has. */
static void read_entry(gen *g, const char *base, entry *e) {
  if (is_null(e->item) || !mesh__want_map(&g->r, e->item)) return;
  for (size_t m = 0; m < NOPS; m++) {
    const mesh__node *op = mesh__node_get(e->item, operations[m].key);
    if (op && !is_null(op)) e->methods |= 1u << m;
  }
  if (!e->methods) return;
  if (!(e->path = join_path(g->r.ctx, base, e->item->key))) g->r.nomem = 1;
}

/* The routes of one path item, in Linkerd's method order. */
static void emit_entry(gen *g, const entry *e) {
  size_t rlen = path_regex(e->path, NULL);
  if (rlen > MESH__REGEX_MAX_LEN) {
    mesh__error(&g->r, e->item, "the path is too long: its pathRegex would be %zu bytes (at most %u)",
                rlen, MESH__REGEX_MAX_LEN);
    return;
  }
  char *regex = mesh__malloc(g->r.ctx, rlen + 1);
  if (!regex) {
    g->r.nomem = 1;
    return;
  }
  path_regex(e->path, regex);
  for (size_t m = 0; m < NOPS && !g->limit; m++) {
    if (!(e->methods & (1u << m))) continue;
    const mesh__node *op = mesh__node_get(e->item, operations[m].key);
    if (!mesh__want_map(&g->r, op)) continue;
    if (e->made_by[m]) {
      mesh__warn(&g->r, op, "route '%s %s' is already made from paths.%s; ignored",
                 operations[m].method, e->path, e->made_by[m]);
      continue;
    }
    if (++g->routes > MAX_ROUTES) {
      mesh__error(&g->r, op, "more than %u operations: a generated profile is limited to %u routes",
                  MAX_ROUTES, MAX_ROUTES);
      g->limit = true;
      break;
    }
    emit_route(g, operations[m].method, e->path, regex, op);
  }
  mesh__free(g->r.ctx, regex);
}

static void emit_profile(gen *g, const mesh__node *root, const char *name, const char *ns) {
  if (!mesh__want_map(&g->r, root)) return;
  check_version(g, root);
  const char *base = "";
  const mesh__node *bn = mesh__node_get(root, "basePath");
  if (bn && !is_null(bn)) mesh__read_string(&g->r, root, "basePath", false, &base);
  const mesh__node *paths = mesh__node_get(root, "paths");
  if (paths && !is_null(paths) && !mesh__want_map(&g->r, paths)) return;
  if (g->r.errors) return;

  out *o = &g->o;
  put_str(o, "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\n");
  o->nodes += 5; /* the document map, apiVersion and kind */
  put_open(o, "", "metadata");
  put_quoted_field(o, "  ", "name", name);
  put_quoted_field(o, "  ", "namespace", ns);
  put_open(o, "", "spec");
  put_open(o, "  ", "routes");

  size_t n = paths && paths->type == MESH_NODE_MAP ? paths->n : 0, k = 0;
  entry *e = mesh__calloc(g->r.ctx, n ? n : 1, sizeof *e);
  if (!e) {
    g->r.nomem = 1;
    return;
  }
  for (size_t i = 0; i < n; i++) {
    const mesh__node *key = paths->kids[2 * i], *val = paths->kids[2 * i + 1];
    if (key->str[0] == '/')
      e[k++].item = val;
    else if (strncmp(key->str, "x-", 2) != 0 && strncmp(key->str, "X-", 2) != 0)
      mesh__warn(&g->r, val, "a path must start with '/'; ignored");
  }
  qsort(e, k, sizeof *e, cmp_entries);
  for (size_t i = 0; i < k && !g->r.nomem; i++) read_entry(g, base, &e[i]);
  if (!g->r.nomem) find_repeats(g, e, k);
  for (size_t i = 0; i < k && !g->limit && !g->r.nomem; i++)
    if (e[i].path) emit_entry(g, &e[i]);
  for (size_t i = 0; i < k; i++) mesh__free(g->r.ctx, e[i].path);
  mesh__free(g->r.ctx, e);
  if (g->routes == 0 && !g->r.errors)
    mesh__error(&g->r, paths ? paths : root,
                "no operations under 'paths': a ServiceProfile needs at least one route");
}

int mesh_profile_from_openapi(mesh_ctx *ctx, const char *file, const char *buf, size_t len,
                              const char *name, const char *ns, mesh_diags *diags, char **ret) {
  if (!ctx || (!buf && len) || !name || !ret) return MESH_ERR_INVALID;
  if (!file) file = "<input>";
  if (!ns) ns = "default";
  if (!mesh_dns_name_valid(name) || !mesh_dns_label_valid(ns)) {
    int rc = mesh__diag_add(diags, MESH_DIAG_ERROR, file, 0, 0,
                            "'%s' is not a valid %s (lower-case letters, digits%s)",
                            mesh_dns_name_valid(name) ? ns : name,
                            mesh_dns_name_valid(name) ? "namespace" : "profile name",
                            mesh_dns_name_valid(name) ? " and '-', at most 63"
                                                      : ", '-' and '.', at most 253");
    return rc < 0 ? rc : MESH_ERR_INVALID;
  }

  mesh__node **docs = NULL;
  size_t ndocs = 0;
  int rc = mesh__node_parse(ctx, file, buf, len, diags, &docs, &ndocs);
  if (rc < 0) return rc;
  gen g = {.r = {.ctx = ctx, .diags = diags, .file = file}, .o = {.ctx = ctx}};
  if (ndocs == 0) {
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, file, 0, 0, "no OpenAPI document in the input") < 0)
      g.r.nomem = 1;
    g.r.errors++;
  } else if (ndocs > 1) {
    mesh__error(&g.r, docs[1], "expected one OpenAPI document, found %zu", ndocs);
  } else {
    emit_profile(&g, docs[0], name, ns);
  }
  mesh__node_free_docs(ctx, docs, ndocs);

  if (!g.r.nomem && !g.o.nomem && !g.r.errors && (g.o.too_big || g.o.nodes > MESH_MANIFEST_MAX_NODES)) {
    if (mesh__diag_add(diags, MESH_DIAG_ERROR, file, 0, 0,
                       "the generated profile would be over the manifest limits (%u bytes, %u "
                       "nodes) and could not be loaded",
                       (unsigned)MESH_MANIFEST_MAX_BYTES, (unsigned)MESH_MANIFEST_MAX_NODES) < 0)
      g.r.nomem = 1;
    g.limit = true;
  }
  if (g.r.nomem || g.o.nomem) rc = MESH_ERR_NOMEM;
  else if (g.limit) rc = MESH_ERR_LIMIT;
  else if (g.r.errors) rc = MESH_ERR_PARSE;
  if (rc < 0) {
    mesh__free(ctx, g.o.s);
    return rc;
  }
  *ret = g.o.s;
  return 0;
}

