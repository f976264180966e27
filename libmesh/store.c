/* libmesh store: Services, Workloads, profiles and splits as refcounted snapshots; authority resolution; the watched directory and the fed store. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <limits.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/error.h>
#include <mesh/profile.h>
#include <mesh/split.h>
#include <mesh/store.h>
#include "annotations_internal.h"
#include "ctx_internal.h"
#include "diag_internal.h"
#include "manifest_internal.h"
#include "node_internal.h"
#include "store_internal.h"

#define MAX_ADDRS 64        /* addresses of one Workload */
#define MAX_WORKLOAD_WEIGHT 1000u /* as meshd's endpoints file (MESH_PROXY_WEIGHT_MAX) */
#define STORM_FACTOR 10u    /* a change storm is read after this many debounce periods at most */
#define MAX_WRITING 16u     /* files known to be half-written; past that, every change waits */

/* ---- Options ------------------------------------------------------------- */

struct mesh_store_opts {
  mesh_ctx *ctx;
  char *dir, *cluster_domain, *trust_domain, *cp_ns;
  uint32_t debounce_ms;
};

void mesh_store_opts_free(mesh_store_opts *o) {
  if (!o) return;
  mesh__free(o->ctx, o->dir);
  mesh__free(o->ctx, o->cluster_domain);
  mesh__free(o->ctx, o->trust_domain);
  mesh__free(o->ctx, o->cp_ns);
  mesh__free(o->ctx, o);
}

static int set_str(mesh_ctx *ctx, char **slot, const char *v) {
  char *d = mesh__strdup(ctx, v);
  if (!d) return MESH_ERR_NOMEM;
  mesh__free(ctx, *slot);
  *slot = d;
  return 0;
}

int mesh_store_opts_new(mesh_ctx *ctx, mesh_store_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_store_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  o->debounce_ms = MESH_STORE_DEFAULT_DEBOUNCE_MS;
  if (set_str(ctx, &o->cluster_domain, MESH_STORE_DEFAULT_CLUSTER_DOMAIN) < 0 ||
      set_str(ctx, &o->trust_domain, MESH_STORE_DEFAULT_TRUST_DOMAIN) < 0 ||
      set_str(ctx, &o->cp_ns, MESH_STORE_DEFAULT_CP_NAMESPACE) < 0) {
    mesh_store_opts_free(o);
    return MESH_ERR_NOMEM;
  }
  *ret = o;
  return 0;
}

int mesh_store_opts_set_dir(mesh_store_opts *o, const char *dir) {
  if (!o || !dir || !*dir) return MESH_ERR_INVALID;
  return set_str(o->ctx, &o->dir, dir);
}

/* Names compare without regard to case: keep them in lower case. */
static int set_lower_name(mesh_store_opts *o, char **slot, const char *v, bool label) {
  if (!o || !v) return MESH_ERR_INVALID;
  char buf[254];
  size_t n = strlen(v);
  if (n >= sizeof buf) return MESH_ERR_INVALID;
  for (size_t i = 0; i <= n; i++) buf[i] = (char)(v[i] >= 'A' && v[i] <= 'Z' ? v[i] + 32 : v[i]);
  if (label ? !mesh_dns_label_valid(buf) : !mesh_dns_name_valid(buf)) return MESH_ERR_INVALID;
  return set_str(o->ctx, slot, buf);
}

int mesh_store_opts_set_cluster_domain(mesh_store_opts *o, const char *d) {
  return set_lower_name(o, o ? &o->cluster_domain : NULL, d, false);
}
int mesh_store_opts_set_trust_domain(mesh_store_opts *o, const char *d) {
  return set_lower_name(o, o ? &o->trust_domain : NULL, d, false);
}
int mesh_store_opts_set_cp_namespace(mesh_store_opts *o, const char *ns) {
  return set_lower_name(o, o ? &o->cp_ns : NULL, ns, true);
}
int mesh_store_opts_set_debounce_ms(mesh_store_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (ms > 10000) return MESH_ERR_RANGE;
  o->debounce_ms = ms;
  return 0;
}

/* ---- Services and Workloads ------------------------------------------------ */

/* Strings borrow from the document tree, which the snapshot owns. */
typedef struct {
  const char *k, *v;
} label;

typedef struct {
  const char *name;        /* NULL when unnamed */
  uint16_t port;
  const char *target_name; /* a workload port's name, or NULL */
  uint16_t target_port;    /* used when target_name is NULL */
  int hint;
} svc_port;

typedef struct {
  const char *name, *ns;
  svc_port *ports;
  size_t nports;
  uint16_t *opaque;
  size_t nopaque;
  label *sel;
  size_t nsel;
  /* metadata.annotations: Linkerd's retry.linkerd.io/ and timeout.linkerd.io/
   * ones, checked at load, passed on in GetProfile (nann of them; NULL: none). */
  const mesh__node *ann;
  size_t nann;
} service;

typedef struct {
  const char *name;
  uint16_t port;
} wl_port;

typedef struct {
  const char *name, *ns, *sa;
  label *labels;
  size_t nlabels;
  const char **addrs;
  size_t naddrs;
  wl_port *ports;
  size_t nports;
  uint16_t proxy_port; /* 0: no proxy */
  uint32_t weight;
} workload;

static void service_clear(mesh_ctx *ctx, service *s) {
  mesh__free(ctx, s->ports);
  mesh__free(ctx, s->opaque);
  mesh__free(ctx, s->sel);
}

static void workload_clear(mesh_ctx *ctx, workload *w) {
  mesh__free(ctx, w->labels);
  mesh__free(ctx, w->addrs);
  mesh__free(ctx, w->ports);
}

static const char *const root_keys[] = {"apiVersion", "kind", "metadata", "spec", NULL};
static const char *const service_keys[] = {"ports", "opaquePorts", "selector", NULL};
static const char *const svc_port_keys[] = {"name", "port", "targetPort", "protocol", NULL};
static const char *const workload_keys[] = {"serviceAccount", "address", "addresses", "ports",
                                            "proxyPort", "adminPort", "weight", NULL};
static const char *const wl_port_keys[] = {"name", "port", NULL};

static const char *scalar(const mesh__node *n) {
  return n && n->type == MESH_NODE_SCALAR ? n->str : NULL;
}

static void *r_calloc(mesh__reader *r, size_t n, size_t size) {
  void *p = mesh__calloc(r->ctx, n ? n : 1, size);
  if (!p) r->nomem = 1;
  return p;
}

/* A map of text to text (selector, labels). */
static void read_labels(mesh__reader *r, const mesh__node *m, label **out, size_t *n) {
  if (!m || !mesh__want_map(r, m) || m->n == 0) return;
  label *l = r_calloc(r, m->n, sizeof *l);
  if (!l) return;
  size_t k = 0;
  for (size_t i = 0; i < m->n; i++) {
    const mesh__node *key = m->kids[2 * i], *val = m->kids[2 * i + 1];
    if (!mesh__want_scalar(r, val)) continue;
    if (key->len == 0 || key->len > 253) {
      mesh__error(r, key, "a label key must be 1 to 253 characters");
      continue;
    }
    if (val->len > 63) {
      mesh__error(r, val, "a label value must be at most 63 characters");
      continue;
    }
    l[k].k = key->str;
    l[k].v = val->str;
    k++;
  }
  *out = l;
  *n = k;
}

static bool read_port(mesh__reader *r, const mesh__node *map, const char *key, bool required,
                      int64_t min, uint16_t *out) {
  int64_t v = -1;
  if (!mesh__node_get(map, key)) {
    if (required) mesh__error(r, map, "missing required field '%s'", key);
    return !required;
  }
  if (!mesh__read_int(r, map, key, min, 65535, &v)) return false;
  *out = (uint16_t)v;
  return true;
}

static bool all_digits(const mesh__node *n) {
  if (n->len == 0) return false;
  for (size_t i = 0; i < n->len; i++)
    if (n->str[i] < '0' || n->str[i] > '9') return false;
  return true;
}

/* Linkerd's retry and timeout annotations of a Service, each value checked
 * by the parser the proxy applies them with: a bad one is an error at its
 * line, and the store keeps its last good state. Other annotations are not
 * ours and are ignored. */
static void read_annotations(mesh__reader *r, const mesh__node *m, service *s) {
  if (!m || !mesh__want_map(r, m)) return;
  mesh__ann a;
  mesh__ann_init(&a);
  for (size_t i = 0; i < m->n; i++) {
    const mesh__node *key = m->kids[2 * i], *val = m->kids[2 * i + 1];
    if (!key->str || (strncmp(key->str, "retry.linkerd.io/", 17) &&
                      strncmp(key->str, "timeout.linkerd.io/", 19)))
      continue;
    if (!mesh__want_scalar(r, val)) continue;
    char why[300];
    if (mesh__ann_set(&a, key->str, val->str, why, sizeof why) == 0) s->nann++;
    else mesh__error(r, val, "%s", why);
  }
  if (s->nann) s->ann = m;
}

/* warn: report unknown fields (at load; the snapshot's second pass over a
 * valid document skips it: it is the costly part). */
static void compile_service(mesh__reader *r, const mesh__node *doc, service *s, bool warn) {
  const mesh__node *meta = mesh__node_get(doc, "metadata");
  s->name = scalar(mesh__node_get(meta, "name"));
  s->ns = scalar(mesh__node_get(meta, "namespace"));
  if (!s->ns) s->ns = "default";
  if (warn) mesh__check_keys(r, doc, root_keys);
  if (meta) read_annotations(r, mesh__node_get(meta, "annotations"), s);
  const mesh__node *spec = mesh__node_get(doc, "spec"), *v;
  if (!spec) {
    mesh__error(r, doc, "missing required field 'spec'");
    return;
  }
  if (!mesh__want_map(r, spec)) return;
  if (warn) mesh__check_keys(r, spec, service_keys);
  if (s->name && !mesh_dns_label_valid(s->name))
    mesh__error(r, mesh__node_get(meta, "name"),
                "a Service name is a DNS label (lower-case letters, digits and '-', at most 63), "
                "found '%s'",
                s->name);
  if ((v = mesh__node_get(spec, "ports")) && mesh__want_seq(r, v) && v->n) {
    if (!(s->ports = r_calloc(r, v->n, sizeof *s->ports))) return;
    for (size_t i = 0; i < v->n; i++) {
      const mesh__node *p = v->kids[i], *t;
      svc_port *sp = &s->ports[s->nports];
      memset(sp, 0, sizeof *sp); /* a slot may hold a refused entry */
      if (!mesh__want_map(r, p)) continue;
      if (warn) mesh__check_keys(r, p, svc_port_keys);
      bool ok = mesh__read_string(r, p, "name", false, &sp->name);
      if (sp->name && !mesh_dns_label_valid(sp->name)) {
        mesh__error(r, mesh__node_get(p, "name"), "a port name is a DNS label, found '%s'",
                    sp->name);
        ok = false;
      }
      ok = read_port(r, p, "port", true, 1, &sp->port) && ok;
      sp->target_port = sp->port;
      if ((t = mesh__node_get(p, "targetPort"))) {
        if (!mesh__want_scalar(r, t)) {
          ok = false;
        } else if (all_digits(t)) {
          ok = read_port(r, p, "targetPort", true, 1, &sp->target_port) && ok;
        } else if (mesh_dns_label_valid(t->str)) {
          sp->target_name = t->str;
        } else {
          mesh__error(r, t, "targetPort is a port number or the name of a workload port, found '%s'",
                      t->str);
          ok = false;
        }
      }
      const char *proto = NULL;
      if (mesh__read_string(r, p, "protocol", false, &proto) && proto) {
        static const char *const names[] = {"http", "h2", "grpc", "opaque"};
        static const int hints[] = {MESH_HINT_HTTP, MESH_HINT_H2, MESH_HINT_GRPC, MESH_HINT_OPAQUE};
        for (size_t k = 0; k < 4; k++)
          if (strcasecmp(proto, names[k]) == 0) sp->hint = hints[k];
        if (!sp->hint) {
          mesh__error(r, mesh__node_get(p, "protocol"),
                      "protocol is one of http, h2, grpc, opaque, found '%s'", proto);
          ok = false;
        }
      }
      for (size_t k = 0; ok && k < s->nports; k++)
        if (s->ports[k].port == sp->port) {
          mesh__error(r, mesh__node_get(p, "port"), "port %u is already listed at ports[%zu]",
                      (unsigned)sp->port, k);
          ok = false;
        }
      if (ok) s->nports++;
    }
  }
  if ((v = mesh__node_get(spec, "opaquePorts")) && mesh__want_seq(r, v) && v->n) {
    if (!(s->opaque = r_calloc(r, v->n, sizeof *s->opaque))) return;
    for (size_t i = 0; i < v->n; i++) {
      const mesh__node *p = v->kids[i];
      if (!mesh__want_scalar(r, p)) continue;
      unsigned long x = all_digits(p) && p->len <= 5 ? strtoul(p->str, NULL, 10) : 0;
      if (x < 1 || x > 65535) {
        mesh__error(r, p, "expected a port number from 1 to 65535, found '%s'", p->str);
        continue;
      }
      s->opaque[s->nopaque++] = (uint16_t)x;
    }
  }
  if ((v = mesh__node_get(spec, "selector"))) read_labels(r, v, &s->sel, &s->nsel);
}

static void compile_workload(mesh__reader *r, const mesh__node *doc, workload *w, bool warn) {
  const mesh__node *meta = mesh__node_get(doc, "metadata");
  w->name = scalar(mesh__node_get(meta, "name"));
  w->ns = scalar(mesh__node_get(meta, "namespace"));
  if (!w->ns) w->ns = "default";
  w->sa = "default";
  w->proxy_port = MESH_STORE_DEFAULT_PROXY_PORT;
  w->weight = 1;
  if (warn) mesh__check_keys(r, doc, root_keys);
  if (meta) read_labels(r, mesh__node_get(meta, "labels"), &w->labels, &w->nlabels);
  const mesh__node *spec = mesh__node_get(doc, "spec"), *v, *a;
  if (!spec) {
    mesh__error(r, doc, "missing required field 'spec'");
    return;
  }
  if (!mesh__want_map(r, spec)) return;
  if (warn) mesh__check_keys(r, spec, workload_keys);
  if (mesh__read_string(r, spec, "serviceAccount", false, &w->sa) &&
      !mesh_dns_label_valid(w->sa))
    mesh__error(r, mesh__node_get(spec, "serviceAccount"),
                "a service account is a DNS label (lower-case letters, digits and '-'), found '%s'",
                w->sa);
  read_port(r, spec, "proxyPort", false, 0, &w->proxy_port);
  /* Only checked: mesh-viz reads it from the document (0: not scraped). */
  uint16_t admin_port;
  read_port(r, spec, "adminPort", false, 0, &admin_port);
  int64_t weight = 1;
  if (mesh__read_int(r, spec, "weight", 1, MAX_WORKLOAD_WEIGHT, &weight)) w->weight = (uint32_t)weight;
  a = mesh__node_get(spec, "address");
  v = mesh__node_get(spec, "addresses");
  if (a && v) mesh__error(r, v, "give either address or addresses, not both");
  size_t n = a ? 1 : v && v->type == MESH_NODE_SEQ ? v->n : 0;
  if (!a && !v) mesh__error(r, spec, "missing required field 'address' (or 'addresses')");
  if (v && !a && mesh__want_seq(r, v) && n == 0) mesh__error(r, v, "addresses must not be empty");
  if (n > MAX_ADDRS) {
    mesh__error(r, v, "at most %d addresses, found %zu", MAX_ADDRS, n);
    n = 0;
  }
  if (n && (w->addrs = r_calloc(r, n, sizeof *w->addrs))) {
    for (size_t i = 0; i < n; i++) {
      const mesh__node *x = a ? a : v->kids[i];
      if (!mesh__want_scalar(r, x)) continue;
      unsigned char bin[16];
      if (inet_pton(AF_INET, x->str, bin) != 1 && inet_pton(AF_INET6, x->str, bin) != 1) {
        mesh__error(r, x, "'%s' is not an IPv4 or IPv6 address", x->str);
        continue;
      }
      bool dup = false;
      for (size_t k = 0; k < w->naddrs && !dup; k++) dup = strcmp(w->addrs[k], x->str) == 0;
      if (dup) mesh__error(r, x, "address '%s' is listed twice", x->str);
      else w->addrs[w->naddrs++] = x->str;
    }
  }
  if ((v = mesh__node_get(spec, "ports")) && mesh__want_seq(r, v) && v->n) {
    if (!(w->ports = r_calloc(r, v->n, sizeof *w->ports))) return;
    for (size_t i = 0; i < v->n; i++) {
      const mesh__node *p = v->kids[i];
      wl_port *wp = &w->ports[w->nports];
      memset(wp, 0, sizeof *wp);
      if (!mesh__want_map(r, p)) continue;
      if (warn) mesh__check_keys(r, p, wl_port_keys);
      bool ok = mesh__read_string(r, p, "name", false, &wp->name);
      if (wp->name && !mesh_dns_label_valid(wp->name)) {
        mesh__error(r, mesh__node_get(p, "name"), "a port name is a DNS label, found '%s'",
                    wp->name);
        ok = false;
      }
      ok = read_port(r, p, "port", true, 1, &wp->port) && ok;
      for (size_t k = 0; ok && wp->name && k < w->nports; k++)
        if (w->ports[k].name && strcmp(w->ports[k].name, wp->name) == 0) {
          mesh__error(r, mesh__node_get(p, "name"), "port name '%s' is already used at ports[%zu]",
                      wp->name, k);
          ok = false;
        }
      if (ok) w->nports++;
    }
  }
}

int mesh__store_check_doc(mesh__reader *r, const mesh__node *doc, int kind) {
  size_t errors0 = r->errors;
  int nomem0 = r->nomem;
  if (kind == MESH_KIND_SERVICE) {
    service s = {0};
    compile_service(r, doc, &s, true);
    service_clear(r->ctx, &s);
  } else if (kind == MESH_KIND_WORKLOAD) {
    workload w = {0};
    compile_workload(r, doc, &w, true);
    workload_clear(r->ctx, &w);
  }
  if (r->nomem && !nomem0) return MESH_ERR_NOMEM;
  return r->errors != errors0 ? MESH_ERR_PARSE : 0;
}

/* ---- Snapshots ------------------------------------------------------------- */

/* One parsed input (a file), shared by the snapshots that hold it: a reload
 * parses only the files that changed. */
typedef struct {
  mesh_ctx *ctx;
  atomic_uint refs;
  char *name;
  mesh_manifest *m;
  uint64_t hash; /* of the bytes it was parsed from */
} source;

static void source_unref(source *src) {
  if (!src || atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1) return;
  mesh__free(src->ctx, src->name);
  mesh_manifest_free(src->m);
  mesh__free(src->ctx, src);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  return h;
}
#define FNV_BASIS 1469598103934665603ull

typedef struct {
  size_t src, idx;
} docref;

struct mesh_snapshot {
  mesh_ctx *ctx;
  atomic_uint refs;
  uint64_t gen;
  char *cluster_domain, *trust_domain, *cp_ns;
  source **srcs;
  size_t nsrcs;
  docref *docs;
  size_t ndocs;
  service *svcs; /* sorted by namespace, then name */
  size_t nsvcs;
  workload *wls; /* sorted by namespace, then name */
  size_t nwls;
  /* Every workload label as (namespace, key, value) -> workload, sorted: a
   * Service finds its candidates by its first selector label. */
  struct label_ref {
    const char *ns, *k, *v;
    size_t w;
  } * labels;
  size_t nlabels;
  /* ServiceProfiles by (namespace, name) and TrafficSplits by (namespace,
   * service), both in document order among equals: indexes into docs. */
  size_t *profiles, *splits;
  size_t nprofiles, nsplits;
};

struct mesh_snapshot_builder {
  mesh_ctx *ctx;
  char *cluster_domain, *trust_domain, *cp_ns;
  source **srcs;
  size_t nsrcs, cap;
};

void mesh_snapshot_builder_free(mesh_snapshot_builder *b) {
  if (!b) return;
  for (size_t i = 0; i < b->nsrcs; i++) source_unref(b->srcs[i]);
  mesh__free(b->ctx, b->srcs);
  mesh__free(b->ctx, b->cluster_domain);
  mesh__free(b->ctx, b->trust_domain);
  mesh__free(b->ctx, b->cp_ns);
  mesh__free(b->ctx, b);
}

int mesh_snapshot_builder_new(mesh_ctx *ctx, const mesh_store_opts *opts,
                              mesh_snapshot_builder **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_snapshot_builder *b = mesh__calloc(ctx, 1, sizeof *b);
  if (!b) return MESH_ERR_NOMEM;
  b->ctx = ctx;
  b->cluster_domain =
      mesh__strdup(ctx, opts ? opts->cluster_domain : MESH_STORE_DEFAULT_CLUSTER_DOMAIN);
  b->trust_domain = mesh__strdup(ctx, opts ? opts->trust_domain : MESH_STORE_DEFAULT_TRUST_DOMAIN);
  b->cp_ns = mesh__strdup(ctx, opts ? opts->cp_ns : MESH_STORE_DEFAULT_CP_NAMESPACE);
  if (!b->cluster_domain || !b->trust_domain || !b->cp_ns) {
    mesh_snapshot_builder_free(b);
    return MESH_ERR_NOMEM;
  }
  *ret = b;
  return 0;
}

static int builder_grow(mesh_snapshot_builder *b) {
  if (b->nsrcs < b->cap) return 0;
  size_t cap = b->cap ? b->cap * 2 : 8;
  source **s = mesh__realloc(b->ctx, b->srcs, cap * sizeof *s);
  if (!s) return MESH_ERR_NOMEM;
  b->srcs = s;
  b->cap = cap;
  return 0;
}

int mesh_snapshot_builder_add(mesh_snapshot_builder *b, const char *src, const char *buf,
                              size_t len, mesh_diags *diags) {
  if (!b || !src || (!buf && len)) return MESH_ERR_INVALID;
  if (builder_grow(b) < 0) return MESH_ERR_NOMEM;
  source *so = mesh__calloc(b->ctx, 1, sizeof *so);
  if (!so) return MESH_ERR_NOMEM;
  so->ctx = b->ctx;
  atomic_init(&so->refs, 1u);
  so->hash = fnv(FNV_BASIS, buf, len);
  if (!(so->name = mesh__strdup(b->ctx, src))) {
    source_unref(so);
    return MESH_ERR_NOMEM;
  }
  int rc = mesh_manifest_load_buffer(b->ctx, so->name, buf, len, diags, &so->m);
  if (rc < 0) {
    source_unref(so);
    return rc;
  }
  b->srcs[b->nsrcs++] = so;
  return 0;
}

/* Adds old's source of that name when it was parsed from the same bytes:
 * 1 when reused, 0 when it must be parsed, MESH_ERR_NOMEM. */
static int builder_reuse(mesh_snapshot_builder *b, const mesh_snapshot *old, const char *name,
                         uint64_t hash) {
  for (size_t i = 0; old && i < old->nsrcs; i++) {
    source *so = old->srcs[i];
    if (so->hash != hash || strcmp(so->name, name) != 0) continue;
    if (builder_grow(b) < 0) return MESH_ERR_NOMEM;
    atomic_fetch_add_explicit(&so->refs, 1u, memory_order_relaxed);
    b->srcs[b->nsrcs++] = so;
    return 1;
  }
  return 0;
}

static void snapshot_free(mesh_snapshot *s) {
  mesh_ctx *ctx = s->ctx;
  for (size_t i = 0; i < s->nsvcs; i++) service_clear(ctx, &s->svcs[i]);
  for (size_t i = 0; i < s->nwls; i++) workload_clear(ctx, &s->wls[i]);
  mesh__free(ctx, s->svcs);
  mesh__free(ctx, s->wls);
  mesh__free(ctx, s->labels);
  mesh__free(ctx, s->profiles);
  mesh__free(ctx, s->splits);
  mesh__free(ctx, s->docs);
  for (size_t i = 0; i < s->nsrcs; i++) source_unref(s->srcs[i]);
  mesh__free(ctx, s->srcs);
  mesh__free(ctx, s->cluster_domain);
  mesh__free(ctx, s->trust_domain);
  mesh__free(ctx, s->cp_ns);
  mesh__free(ctx, s);
}

mesh_snapshot *mesh_snapshot_ref(const mesh_snapshot *s) {
  if (!s) return NULL;
  mesh_snapshot *m = (mesh_snapshot *)s;
  atomic_fetch_add_explicit(&m->refs, 1u, memory_order_relaxed);
  return m;
}

void mesh_snapshot_unref(mesh_snapshot *s) {
  if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
  snapshot_free(s);
}

static int cmp_nsname(const char *ns1, const char *n1, const char *ns2, const char *n2) {
  int c = strcmp(ns1, ns2);
  return c ? c : strcmp(n1 ? n1 : "", n2 ? n2 : "");
}
static int cmp_svc(const void *a, const void *b) {
  const service *x = a, *y = b;
  return cmp_nsname(x->ns, x->name, y->ns, y->name);
}
static int cmp_wl(const void *a, const void *b) {
  const workload *x = a, *y = b;
  return cmp_nsname(x->ns, x->name, y->ns, y->name);
}

/* The group of an apiVersion ("policy.linkerd.io/v1beta1"), as length. */
static size_t group_len(const char *api) {
  const char *slash = api ? strchr(api, '/') : NULL;
  return slash ? (size_t)(slash - api) : 0;
}

/* What makes a resource the same resource: kind, API group, namespace and
 * name. Kinds the mesh does not read are never the same (unknown). */
typedef struct {
  int kind;
  bool unknown;
  const char *api, *ns, *name;
  size_t glen, doc;
} doc_key;

static int cmp_doc_key(const void *a, const void *b) {
  const doc_key *x = a, *y = b;
  int c = 0;
  if (x->unknown != y->unknown) return x->unknown ? 1 : -1;
  if (!x->unknown) {
    if (x->kind != y->kind) return x->kind < y->kind ? -1 : 1;
    c = strncmp(x->api, y->api, x->glen < y->glen ? x->glen : y->glen);
    if (!c && x->glen != y->glen) c = x->glen < y->glen ? -1 : 1;
    if (!c) c = strcmp(x->ns, y->ns);
    if (!c) c = strcmp(x->name, y->name);
  }
  return c ? c : (x->doc < y->doc ? -1 : x->doc > y->doc); /* the first written stays first */
}

static bool same_doc_key(const doc_key *x, const doc_key *y) {
  return !x->unknown && !y->unknown && x->kind == y->kind && x->glen == y->glen &&
         strncmp(x->api, y->api, x->glen) == 0 && strcmp(x->ns, y->ns) == 0 &&
         strcmp(x->name, y->name) == 0;
}

static int cmp_label_ref(const void *a, const void *b) {
  const struct label_ref *x = a, *y = b;
  int c = strcmp(x->ns, y->ns);
  if (!c) c = strcmp(x->k, y->k);
  if (!c) c = strcmp(x->v, y->v);
  return c ? c : (x->w < y->w ? -1 : x->w > y->w);
}

/* Profiles by (ns, name), splits by (ns, service); document order among equals. */
static const char *index_key(const mesh_snapshot *s, size_t doc, const char **ns) {
  const docref *d = &s->docs[doc];
  const mesh_manifest *m = s->srcs[d->src]->m;
  if (mesh_manifest_kind(m, d->idx) == MESH_KIND_TRAFFIC_SPLIT) {
    const mesh_split *sp = mesh_manifest_split(m, d->idx);
    *ns = mesh_split_namespace(sp);
    return mesh_split_service(sp);
  }
  *ns = mesh_manifest_namespace(m, d->idx);
  return mesh_manifest_name(m, d->idx);
}

static int cmp_index(const void *a, const void *b, void *snap) {
  size_t i = *(const size_t *)a, j = *(const size_t *)b;
  const char *ns1, *ns2, *k1 = index_key(snap, i, &ns1), *k2 = index_key(snap, j, &ns2);
  int c = cmp_nsname(ns1, k1, ns2, k2);
  return c ? c : (i < j ? -1 : i > j);
}

static int build_indexes(mesh_snapshot *s) {
  mesh_ctx *ctx = s->ctx;
  size_t n = 0;
  for (size_t i = 0; i < s->nwls; i++) n += s->wls[i].nlabels;
  s->labels = mesh__calloc(ctx, n ? n : 1, sizeof *s->labels);
  if (!s->labels) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < s->nwls; i++)
    for (size_t k = 0; k < s->wls[i].nlabels; k++)
      s->labels[s->nlabels++] = (struct label_ref){s->wls[i].ns, s->wls[i].labels[k].k,
                                                   s->wls[i].labels[k].v, i};
  qsort(s->labels, s->nlabels, sizeof *s->labels, cmp_label_ref);
  size_t np = 0, ns = 0;
  for (size_t i = 0; i < s->ndocs; i++) {
    const mesh_manifest *m = s->srcs[s->docs[i].src]->m;
    int kind = mesh_manifest_kind(m, s->docs[i].idx);
    np += kind == MESH_KIND_SERVICE_PROFILE && mesh_manifest_profile(m, s->docs[i].idx);
    ns += kind == MESH_KIND_TRAFFIC_SPLIT && mesh_manifest_split(m, s->docs[i].idx);
  }
  s->profiles = mesh__calloc(ctx, np ? np : 1, sizeof *s->profiles);
  s->splits = mesh__calloc(ctx, ns ? ns : 1, sizeof *s->splits);
  if (!s->profiles || !s->splits) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < s->ndocs; i++) {
    const mesh_manifest *m = s->srcs[s->docs[i].src]->m;
    int kind = mesh_manifest_kind(m, s->docs[i].idx);
    if (kind == MESH_KIND_SERVICE_PROFILE && mesh_manifest_profile(m, s->docs[i].idx))
      s->profiles[s->nprofiles++] = i;
    else if (kind == MESH_KIND_TRAFFIC_SPLIT && mesh_manifest_split(m, s->docs[i].idx))
      s->splits[s->nsplits++] = i;
  }
  qsort_r(s->profiles, s->nprofiles, sizeof *s->profiles, cmp_index, s);
  qsort_r(s->splits, s->nsplits, sizeof *s->splits, cmp_index, s);
  return 0;
}

/* The first entry of a sorted index (of nidx docs) whose key is (ns, name). */
static const size_t *index_find(const mesh_snapshot *s, const size_t *idx, size_t nidx,
                                const char *ns, const char *name) {
  size_t lo = 0, hi = nidx;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const char *mns, *mk = index_key(s, idx[mid], &mns);
    if (cmp_nsname(mns, mk, ns, name) < 0) lo = mid + 1;
    else hi = mid;
  }
  if (lo == nidx) return NULL;
  const char *mns, *mk = index_key(s, idx[lo], &mns);
  return cmp_nsname(mns, mk, ns, name) == 0 ? &idx[lo] : NULL;
}

int mesh_snapshot_builder_finish(mesh_snapshot_builder *b, mesh_diags *diags,
                                 mesh_snapshot **ret) {
  if (!b || !ret) {
    mesh_snapshot_builder_free(b);
    return MESH_ERR_INVALID;
  }
  mesh_ctx *ctx = b->ctx;
  mesh_snapshot *s = mesh__calloc(ctx, 1, sizeof *s);
  if (!s) {
    mesh_snapshot_builder_free(b);
    return MESH_ERR_NOMEM;
  }
  s->ctx = ctx;
  atomic_init(&s->refs, 1u);
  /* The builder's parts move into the snapshot. */
  s->srcs = b->srcs;
  s->nsrcs = b->nsrcs;
  s->cluster_domain = b->cluster_domain;
  s->trust_domain = b->trust_domain;
  s->cp_ns = b->cp_ns;
  mesh__free(ctx, b);
  size_t n = 0, nsvc = 0, nwl = 0;
  for (size_t i = 0; i < s->nsrcs; i++) {
    size_t c = mesh_manifest_count(s->srcs[i]->m);
    n += c;
    for (size_t k = 0; k < c; k++) {
      int kind = mesh_manifest_kind(s->srcs[i]->m, k);
      nsvc += kind == MESH_KIND_SERVICE;
      nwl += kind == MESH_KIND_WORKLOAD;
    }
  }
  s->docs = mesh__calloc(ctx, n ? n : 1, sizeof *s->docs);
  s->svcs = mesh__calloc(ctx, nsvc ? nsvc : 1, sizeof *s->svcs);
  s->wls = mesh__calloc(ctx, nwl ? nwl : 1, sizeof *s->wls);
  mesh__reader r = {.ctx = ctx, .diags = diags};
  if (!s->docs || !s->svcs || !s->wls) r.nomem = 1;
  for (size_t i = 0; i < s->nsrcs && !r.nomem; i++) {
    const mesh_manifest *m = s->srcs[i]->m;
    r.file = s->srcs[i]->name;
    for (size_t k = 0; k < mesh_manifest_count(m) && !r.nomem; k++) {
      s->docs[s->ndocs++] = (docref){i, k};
      const mesh__node *root = mesh__manifest_node(m, k);
      int kind = mesh_manifest_kind(m, k);
      if (kind == MESH_KIND_SERVICE) compile_service(&r, root, &s->svcs[s->nsvcs++], false);
      else if (kind == MESH_KIND_WORKLOAD) compile_workload(&r, root, &s->wls[s->nwls++], false);
    }
  }
  /* The same resource twice: the second place is the error, naming the first.
   * Sorted by identity (stable on document order), so neighbours are duplicates. */
  doc_key *order = r.nomem ? NULL : mesh__calloc(ctx, s->ndocs ? s->ndocs : 1, sizeof *order);
  if (!order) r.nomem = 1;
  for (size_t i = 0; order && i < s->ndocs; i++) {
    const mesh_manifest *m = s->srcs[s->docs[i].src]->m;
    size_t k = s->docs[i].idx;
    doc_key *dk = &order[i];
    dk->doc = i;
    dk->kind = mesh_manifest_kind(m, k);
    dk->name = mesh_manifest_name(m, k);
    dk->unknown = dk->kind == MESH_KIND_OTHER || !dk->name;
    dk->api = mesh_manifest_api_version(m, k);
    dk->glen = group_len(dk->api);
    dk->ns = mesh_manifest_namespace(m, k);
  }
  if (order) qsort(order, s->ndocs, sizeof *order, cmp_doc_key);
  for (size_t i = 1; order && i < s->ndocs; i++) {
    if (!same_doc_key(&order[i - 1], &order[i])) continue;
    const docref *d = &s->docs[order[i].doc], *e = &s->docs[order[i - 1].doc];
    const mesh_manifest *m = s->srcs[d->src]->m, *me = s->srcs[e->src]->m;
    r.file = s->srcs[d->src]->name;
    mesh__error(&r, mesh__manifest_node(m, d->idx), "%s %s/%s is already defined at %s:%u",
                mesh_manifest_kind_name(m, d->idx), mesh_manifest_namespace(m, d->idx),
                mesh_manifest_name(m, d->idx), s->srcs[e->src]->name,
                (unsigned)mesh_manifest_line(me, e->idx));
  }
  mesh__free(ctx, order);
  int rc = r.nomem ? MESH_ERR_NOMEM : r.errors ? MESH_ERR_PARSE : 0;
  if (rc < 0) {
    snapshot_free(s);
    return rc;
  }
  qsort(s->svcs, s->nsvcs, sizeof *s->svcs, cmp_svc);
  qsort(s->wls, s->nwls, sizeof *s->wls, cmp_wl);
  if (build_indexes(s) < 0) {
    snapshot_free(s);
    return MESH_ERR_NOMEM;
  }
  *ret = s;
  return 0;
}

uint64_t mesh_snapshot_generation(const mesh_snapshot *s) { return s ? s->gen : 0; }
size_t mesh_snapshot_count(const mesh_snapshot *s) { return s ? s->ndocs : 0; }

static const mesh_manifest *doc_at(const mesh_snapshot *s, size_t i, size_t *idx) {
  if (!s || i >= s->ndocs) return NULL;
  *idx = s->docs[i].idx;
  return s->srcs[s->docs[i].src]->m;
}

const mesh_manifest *mesh__snapshot_manifest(const mesh_snapshot *s, size_t i, size_t *ret_idx) {
  size_t k = 0;
  const mesh_manifest *m = doc_at(s, i, &k);
  if (m && ret_idx) *ret_idx = k;
  return m;
}

mesh_ctx *mesh__snapshot_ctx(const mesh_snapshot *s) { return s ? s->ctx : NULL; }

int mesh_snapshot_kind(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_kind(m, k) : MESH_KIND_OTHER;
}
const char *mesh_snapshot_kind_name(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_kind_name(m, k) : NULL;
}
const char *mesh_snapshot_api_version(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_api_version(m, k) : NULL;
}
const char *mesh_snapshot_name(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_name(m, k) : NULL;
}
const char *mesh_snapshot_namespace(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_namespace(m, k) : NULL;
}
const char *mesh_snapshot_source(const mesh_snapshot *s, size_t i) {
  return s && i < s->ndocs ? s->srcs[s->docs[i].src]->name : NULL;
}
uint32_t mesh_snapshot_line(const mesh_snapshot *s, size_t i) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  return m ? mesh_manifest_line(m, k) : 0;
}

/* A plain scalar as YAML 1.1's core schema reads it; quoted text stays text. */
static json_t *scalar_json(const mesh__node *n) {
  if (!n->quoted) {
    const char *s = n->str;
    if (n->len == 0 || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
        !strcmp(s, "NULL"))
      return json_null();
    if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) return json_true();
    if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) return json_false();
    char *end;
    errno = 0;
    long long ll = strtoll(s, &end, 10);
    if (*end == '\0' && errno == 0 && (s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9')))
      return json_integer(ll);
    double d = strtod(s, &end);
    if (*end == '\0' && errno == 0 && strpbrk(s, ".eE") && !strpbrk(s, "xXnN"))
      return json_real(d);
  }
  return json_stringn(n->str, n->len);
}

static json_t *node_json(const mesh__node *n) {
  if (n->type == MESH_NODE_SCALAR) return scalar_json(n);
  json_t *j = n->type == MESH_NODE_MAP ? json_object() : json_array();
  for (size_t i = 0; j && i < n->n; i++) {
    json_t *kid = node_json(n->type == MESH_NODE_MAP ? n->kids[2 * i + 1] : n->kids[i]);
    int rc = !kid ? -1
             : n->type == MESH_NODE_MAP ? json_object_set_new(j, n->kids[2 * i]->str, kid)
                                        : json_array_append_new(j, kid);
    if (rc != 0) {
      json_decref(j);
      return NULL;
    }
  }
  return j;
}

/* Dump j compactly into ctx's allocator; j is released. */
static int dump(mesh_ctx *ctx, json_t *j, char **ret) {
  char *text = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
  json_decref(j);
  if (!text) return MESH_ERR_NOMEM;
  *ret = mesh__strdup(ctx, text);
  free(text);
  return *ret ? 0 : MESH_ERR_NOMEM;
}

int mesh_snapshot_document_json(const mesh_snapshot *s, size_t i, char **ret) {
  size_t k;
  const mesh_manifest *m = doc_at(s, i, &k);
  if (!m || !ret) return MESH_ERR_INVALID;
  return dump(s->ctx, node_json(mesh__manifest_node(m, k)), ret);
}

/* ---- Authorities ----------------------------------------------------------- */

typedef struct {
  char host[254];
  uint16_t port;
  bool is_ip;
  bool named; /* svc and ns below are set */
  char svc[64], ns[64];
} authority;

/* Splits "host:port" and reads the host as a Service name in one of
 * Linkerd's forms, for a caller in default_ns. */
static int parse_authority(const mesh_snapshot *s, const char *a, const char *default_ns,
                           authority *out) {
  memset(out, 0, sizeof *out);
  size_t len = strlen(a);
  const char *host = a, *colon = NULL;
  size_t hl;
  if (a[0] == '[') {
    const char *close = strchr(a, ']');
    if (!close) return MESH_ERR_PARSE;
    host = a + 1;
    hl = (size_t)(close - host);
    if (close[1] == ':') colon = close + 1;
    else if (close[1]) return MESH_ERR_PARSE;
  } else {
    colon = strrchr(a, ':');
    if (colon && memchr(a, ':', (size_t)(colon - a))) return MESH_ERR_PARSE; /* bare IPv6 */
    hl = colon ? (size_t)(colon - a) : len;
  }
  out->port = 80;
  if (colon) {
    const char *p = colon + 1;
    unsigned long v = 0;
    size_t pl = strlen(p);
    if (pl == 0 || pl > 5) return MESH_ERR_PARSE;
    for (size_t i = 0; i < pl; i++) {
      if (p[i] < '0' || p[i] > '9') return MESH_ERR_PARSE;
      v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v < 1 || v > 65535) return MESH_ERR_PARSE;
    out->port = (uint16_t)v;
  }
  if (hl > 0 && host[hl - 1] == '.' && a[0] != '[') hl--; /* "web.ns.svc.cluster.local." */
  if (hl == 0 || hl >= sizeof out->host) return MESH_ERR_PARSE;
  for (size_t i = 0; i < hl; i++) {
    char c = host[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
          (c == ':' && a[0] == '[')))
      return MESH_ERR_PARSE;
    out->host[i] = c;
  }
  out->host[hl] = '\0';
  unsigned char bin[16];
  if (inet_pton(AF_INET, out->host, bin) == 1 || inet_pton(AF_INET6, out->host, bin) == 1) {
    out->is_ip = true;
    return 0;
  }
  if (a[0] == '[') return MESH_ERR_PARSE;
  /* Strip ".svc.<cluster-domain>" or ".svc"; what is left is svc.ns or svc. */
  char name[254];
  snprintf(name, sizeof name, "%s", out->host);
  size_t nl = strlen(name);
  char suffix[270];
  snprintf(suffix, sizeof suffix, ".svc.%s", s->cluster_domain);
  size_t sl = strlen(suffix);
  bool qualified = false;
  if (nl > sl && strcmp(name + nl - sl, suffix) == 0) {
    name[nl - sl] = '\0';
    qualified = true;
  } else if (nl > 4 && strcmp(name + nl - 4, ".svc") == 0) {
    name[nl - 4] = '\0';
    qualified = true;
  }
  char *dot = strchr(name, '.');
  if (dot && strchr(dot + 1, '.')) return 0; /* some other name: not a Service */
  if (!dot && qualified) return 0;
  if (dot) *dot = '\0';
  const char *ns = dot ? dot + 1 : default_ns ? default_ns : "default";
  if (!mesh_dns_label_valid(name) || !mesh_dns_label_valid(ns)) return 0;
  snprintf(out->svc, sizeof out->svc, "%s", name);
  snprintf(out->ns, sizeof out->ns, "%s", ns);
  out->named = true;
  return 0;
}

static const service *find_service(const mesh_snapshot *s, const char *ns, const char *name) {
  service key = {.name = name, .ns = ns};
  return bsearch(&key, s->svcs, s->nsvcs, sizeof *s->svcs, cmp_svc);
}

static bool selects(const service *svc, const workload *w) {
  if (svc->nsel == 0 || strcmp(svc->ns, w->ns) != 0) return false;
  for (size_t i = 0; i < svc->nsel; i++) {
    bool hit = false;
    for (size_t k = 0; k < w->nlabels && !hit; k++)
      hit = strcmp(svc->sel[i].k, w->labels[k].k) == 0 && strcmp(svc->sel[i].v, w->labels[k].v) == 0;
    if (!hit) return false;
  }
  return true;
}

static bool port_opaque(const service *svc, const svc_port *sp, uint16_t port) {
  if (sp && sp->hint == MESH_HINT_OPAQUE) return true;
  for (size_t i = 0; i < svc->nopaque; i++)
    if (svc->opaque[i] == port) return true;
  return false;
}

/* ---- Resolutions ------------------------------------------------------------ */

typedef struct {
  char addr[64], ip[48];
  uint16_t target, proxy_port;
  uint32_t weight;
  int hint;
  char *identity, *pod, *sa; /* identity NULL: no proxy */
  size_t seq;                /* creation order: the first of equal addresses wins */
} endpoint;

struct mesh_resolution {
  mesh_ctx *ctx;
  bool exists, opaque;
  char *svc, *ns, *fqdn;
  uint16_t port;
  endpoint *eps;
  size_t n;
};

void mesh_resolution_free(mesh_resolution *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n; i++) {
    mesh__free(r->ctx, r->eps[i].identity);
    mesh__free(r->ctx, r->eps[i].pod);
    mesh__free(r->ctx, r->eps[i].sa);
  }
  mesh__free(r->ctx, r->eps);
  mesh__free(r->ctx, r->svc);
  mesh__free(r->ctx, r->ns);
  mesh__free(r->ctx, r->fqdn);
  mesh__free(r->ctx, r);
}

/* Fills ep for address ip of w serving target; false on allocation failure. */
static bool make_endpoint(const mesh_snapshot *s, const workload *w, const char *ip,
                          uint16_t target, bool opaque, endpoint *ep) {
  bool v6 = strchr(ip, ':') != NULL;
  uint16_t port = w->proxy_port ? w->proxy_port : target;
  snprintf(ep->ip, sizeof ep->ip, "%s", ip);
  snprintf(ep->addr, sizeof ep->addr, v6 ? "[%s]:%u" : "%s:%u", ip, (unsigned)port);
  ep->target = target;
  ep->proxy_port = w->proxy_port;
  ep->weight = w->weight;
  ep->hint = !w->proxy_port ? MESH_HINT_UNKNOWN : opaque ? MESH_HINT_OPAQUE : MESH_HINT_H2;
  ep->pod = mesh__strdup(s->ctx, w->name ? w->name : "");
  ep->sa = mesh__strdup(s->ctx, w->sa);
  if (w->proxy_port)
    ep->identity = mesh__sprintf(s->ctx, "%s.%s.serviceaccount.identity.%s.%s", w->sa, w->ns,
                                 s->cp_ns, s->trust_domain);
  return ep->pod && ep->sa && (!w->proxy_port || ep->identity);
}

/* The workload with address host (an IP literal), and the address as it wrote it. */
static const workload *find_by_ip(const mesh_snapshot *s, const char *host, const char **ret_ip) {
  unsigned char x[16], y[16];
  int fam = strchr(host, ':') ? AF_INET6 : AF_INET;
  if (inet_pton(fam, host, x) != 1) return NULL;
  for (size_t i = 0; i < s->nwls; i++) {
    const workload *w = &s->wls[i];
    for (size_t k = 0; k < w->naddrs; k++)
      if (inet_pton(fam, w->addrs[k], y) == 1 && memcmp(x, y, fam == AF_INET ? 4 : 16) == 0) {
        *ret_ip = w->addrs[k];
        return w;
      }
  }
  return NULL;
}

static int cmp_ep(const void *a, const void *b) {
  return strcmp(((const endpoint *)a)->addr, ((const endpoint *)b)->addr);
}

static int cmp_ep_seq(const void *a, const void *b) {
  int c = cmp_ep(a, b);
  if (c) return c;
  size_t x = ((const endpoint *)a)->seq, y = ((const endpoint *)b)->seq;
  return x < y ? -1 : x > y;
}

int mesh_snapshot_resolve(const mesh_snapshot *s, const char *authority_text,
                          const char *default_ns, mesh_resolution **ret) {
  if (!s || !authority_text || !ret) return MESH_ERR_INVALID;
  authority a;
  int rc = parse_authority(s, authority_text, default_ns, &a);
  if (rc < 0) return rc;
  mesh_resolution *r = mesh__calloc(s->ctx, 1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->ctx = s->ctx;
  r->port = a.port;
  const service *svc = a.named ? find_service(s, a.ns, a.svc) : NULL;
  const workload *w0;
  const char *ip;
  if (!svc && a.is_ip && (w0 = find_by_ip(s, a.host, &ip))) {
    /* The address of a known workload: that one endpoint, as Linkerd answers for a pod IP. */
    r->exists = true;
    r->svc = mesh__strdup(s->ctx, "");
    r->ns = mesh__strdup(s->ctx, w0->ns);
    r->eps = mesh__calloc(s->ctx, 1, sizeof *r->eps);
    if (!r->svc || !r->ns || !r->eps) goto nomem;
    r->n = 1;
    if (!make_endpoint(s, w0, ip, a.port, false, &r->eps[0])) goto nomem;
  }
  if (!svc) {
    *ret = r;
    return 0;
  }
  r->exists = true;
  r->svc = mesh__strdup(s->ctx, svc->name);
  r->ns = mesh__strdup(s->ctx, svc->ns);
  r->fqdn = mesh__sprintf(s->ctx, "%s.%s.svc.%s", svc->name, svc->ns, s->cluster_domain);
  if (!r->svc || !r->ns || !r->fqdn) goto nomem;
  const svc_port *sp = NULL;
  for (size_t i = 0; i < svc->nports && !sp; i++)
    if (svc->ports[i].port == a.port) sp = &svc->ports[i];
  r->opaque = port_opaque(svc, sp, a.port);
  /* The candidates: workloads with the selector's first label, in order. */
  size_t first = 0, last = 0, max = 0;
  if (svc->nsel) {
    struct label_ref key = {svc->ns, svc->sel[0].k, svc->sel[0].v, 0};
    size_t lo = 0, hi = s->nlabels;
    while (lo < hi) {
      size_t mid = lo + (hi - lo) / 2;
      if (cmp_label_ref(&s->labels[mid], &key) < 0) lo = mid + 1;
      else hi = mid;
    }
    first = last = lo;
    key.w = SIZE_MAX;
    while (last < s->nlabels && cmp_label_ref(&s->labels[last], &key) < 0) last++;
  }
  for (size_t i = first; i < last; i++)
    if (selects(svc, &s->wls[s->labels[i].w])) max += s->wls[s->labels[i].w].naddrs;
  if (max && !(r->eps = mesh__calloc(s->ctx, max, sizeof *r->eps))) goto nomem;
  for (size_t i = first; i < last; i++) {
    const workload *w = &s->wls[s->labels[i].w];
    if (!selects(svc, w)) continue;
    /* A port the Service does not declare goes to the same port on the workload. */
    uint16_t target = sp ? sp->target_port : a.port;
    if (sp && sp->target_name) {
      target = 0;
      for (size_t k = 0; k < w->nports && !target; k++)
        if (w->ports[k].name && strcmp(w->ports[k].name, sp->target_name) == 0)
          target = w->ports[k].port;
      if (!target) continue; /* as Kubernetes: no such named port, not an endpoint */
    }
    for (size_t k = 0; k < w->naddrs; k++) {
      r->eps[r->n].seq = r->n;
      if (!make_endpoint(s, w, w->addrs[k], target, r->opaque, &r->eps[r->n++])) goto nomem;
    }
  }
  if (r->n) qsort(r->eps, r->n, sizeof *r->eps, cmp_ep_seq);
  /* One endpoint per address: the first workload (by namespace/name) wins. */
  size_t k = 0;
  for (size_t i = 0; i < r->n; i++) {
    if (k > 0 && strcmp(r->eps[k - 1].addr, r->eps[i].addr) == 0) {
      mesh__free(s->ctx, r->eps[i].identity);
      mesh__free(s->ctx, r->eps[i].pod);
      mesh__free(s->ctx, r->eps[i].sa);
      continue;
    }
    r->eps[k++] = r->eps[i];
  }
  r->n = k;
  *ret = r;
  return 0;
nomem:
  mesh_resolution_free(r);
  return MESH_ERR_NOMEM;
}

int mesh_resolution_exists(const mesh_resolution *r) { return r && r->exists; }
const char *mesh_resolution_service(const mesh_resolution *r) { return r ? r->svc : NULL; }
const char *mesh_resolution_namespace(const mesh_resolution *r) { return r ? r->ns : NULL; }
const char *mesh_resolution_fqdn(const mesh_resolution *r) { return r ? r->fqdn : NULL; }
uint16_t mesh_resolution_port(const mesh_resolution *r) { return r && r->exists ? r->port : 0; }
int mesh_resolution_opaque(const mesh_resolution *r) { return r && r->opaque; }
size_t mesh_resolution_count(const mesh_resolution *r) { return r ? r->n : 0; }

static const endpoint *ep_at(const mesh_resolution *r, size_t i) {
  return r && i < r->n ? &r->eps[i] : NULL;
}
const char *mesh_resolution_addr(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->addr : NULL;
}
const char *mesh_resolution_ip(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->ip : NULL;
}
uint16_t mesh_resolution_target_port(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->target : 0;
}
uint32_t mesh_resolution_weight(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->weight : 0;
}
const char *mesh_resolution_identity(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->identity : NULL;
}
int mesh_resolution_hint(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->hint : MESH_HINT_UNKNOWN;
}
const char *mesh_resolution_pod(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->pod : NULL;
}
const char *mesh_resolution_service_account(const mesh_resolution *r, size_t i) {
  const endpoint *e = ep_at(r, i);
  return e ? e->sa : NULL;
}

/* ---- Destination messages -------------------------------------------------- */

/* A WeightedAddr (destination.proto), addr as "ip:port". */
static json_t *ep_json(const endpoint *e, const char *ns, const char *svc) {
  json_t *labels = json_pack("{s:s, s:s, s:s, s:s}", "namespace", ns ? ns : "", "service",
                             svc ? svc : "", "pod", e->pod, "serviceaccount", e->sa);
  json_t *o = labels ? json_pack("{s:s, s:I, s:o}", "addr", e->addr, "weight",
                                 (json_int_t)e->weight, "metric_labels", labels)
                     : NULL;
  if (!o) return NULL;
  int rc = 0;
  if (e->identity)
    rc |= json_object_set_new(o, "tls_identity",
                              json_pack("{s:{s:s}}", "dns_like_identity", "name", e->identity));
  if (e->hint == MESH_HINT_H2)
    rc |= json_object_set_new(o, "protocol_hint", json_pack("{s:{}}", "h2"));
  else if (e->hint == MESH_HINT_OPAQUE)
    rc |= json_object_set_new(o, "protocol_hint",
                              json_pack("{s:{}, s:{s:I}}", "opaque", "opaque_transport",
                                        "inbound_port", (json_int_t)e->proxy_port));
  rc |= json_object_set_new(o, "target_port", json_integer(e->target));
  if (rc) {
    json_decref(o);
    return NULL;
  }
  return o;
}

static json_t *add_json(const mesh_resolution *r, const endpoint *const *eps, size_t n) {
  json_t *addrs = json_array();
  for (size_t i = 0; addrs && i < n; i++) {
    json_t *e = ep_json(eps[i], r->ns, r->svc);
    if (!e || json_array_append_new(addrs, e) != 0) {
      json_decref(addrs);
      addrs = NULL;
    }
  }
  if (!addrs) return NULL;
  return json_pack("{s:{s:o, s:{s:s, s:s}}}", "add", "addrs", addrs, "metric_labels", "namespace",
                   r->ns, "service", r->svc);
}

static json_t *no_endpoints_json(bool exists) {
  return json_pack("{s:{s:b}}", "no_endpoints", "exists", exists);
}

int mesh_resolution_json_first(const mesh_resolution *r, char **ret) {
  if (!r || !ret) return MESH_ERR_INVALID;
  if (r->n == 0) return dump(r->ctx, no_endpoints_json(r->exists), ret);
  const endpoint **all = mesh__calloc(r->ctx, r->n, sizeof *all);
  if (!all) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < r->n; i++) all[i] = &r->eps[i];
  int rc = dump(r->ctx, add_json(r, all, r->n), ret);
  mesh__free(r->ctx, all);
  return rc;
}

static const endpoint *find_ep(const mesh_resolution *r, const char *addr) {
  endpoint key;
  snprintf(key.addr, sizeof key.addr, "%s", addr);
  return r->n ? bsearch(&key, r->eps, r->n, sizeof *r->eps, cmp_ep) : NULL;
}

static bool same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool same_ep(const endpoint *a, const endpoint *b) {
  return a->target == b->target && a->proxy_port == b->proxy_port && a->weight == b->weight &&
         a->hint == b->hint && same_str(a->identity, b->identity) && same_str(a->pod, b->pod) &&
         same_str(a->sa, b->sa);
}

/* Appends one message and a newline to *buf. */
static int append(mesh_ctx *ctx, char **buf, json_t *j) {
  char *text = NULL;
  int rc = dump(ctx, j, &text);
  if (rc < 0) return rc;
  size_t old = *buf ? strlen(*buf) : 0, add = strlen(text);
  char *nb = mesh__realloc(ctx, *buf, old + add + 2);
  if (!nb) {
    mesh__free(ctx, text);
    return MESH_ERR_NOMEM;
  }
  memcpy(nb + old, text, add);
  nb[old + add] = '\n';
  nb[old + add + 1] = '\0';
  *buf = nb;
  mesh__free(ctx, text);
  return 0;
}

int mesh_resolution_json_diff(const mesh_resolution *old, const mesh_resolution *cur, char **ret) {
  if (!old || !cur || !ret) return MESH_ERR_INVALID;
  mesh_ctx *ctx = cur->ctx;
  char *out = NULL;
  int rc = 0;
  if (cur->n == 0) {
    /* Nothing left: one no_endpoints says it all, unless it was said already. */
    bool said = old->n == 0 && old->exists == cur->exists;
    if (!said) rc = append(ctx, &out, no_endpoints_json(cur->exists));
  } else {
    const endpoint **list = mesh__calloc(ctx, old->n > cur->n ? old->n : cur->n, sizeof *list);
    if (!list) return MESH_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < old->n; i++)
      if (!find_ep(cur, old->eps[i].addr)) list[k++] = &old->eps[i];
    if (k) {
      json_t *addrs = json_array();
      for (size_t i = 0; addrs && i < k; i++)
        if (json_array_append_new(addrs, json_pack("{s:s}", "addr", list[i]->addr)) != 0) {
          json_decref(addrs);
          addrs = NULL;
        }
      rc = addrs ? append(ctx, &out, json_pack("{s:{s:o}}", "remove", "addrs", addrs))
                 : MESH_ERR_NOMEM;
    }
    k = 0;
    for (size_t i = 0; i < cur->n; i++) {
      const endpoint *was = find_ep(old, cur->eps[i].addr);
      if (!was || !same_ep(was, &cur->eps[i])) list[k++] = &cur->eps[i];
    }
    if (k && rc == 0) rc = append(ctx, &out, add_json(cur, list, k));
    mesh__free(ctx, list);
  }
  if (rc < 0) {
    mesh__free(ctx, out);
    return rc;
  }
  *ret = out;
  return 0;
}

/* ---- Profiles --------------------------------------------------------------- */

/* A proto3 JSON Duration: "5s", "0.250s". */
static json_t *duration_json(uint64_t ms) {
  char buf[40];
  if (ms % 1000 == 0) snprintf(buf, sizeof buf, "%llus", (unsigned long long)(ms / 1000));
  else snprintf(buf, sizeof buf, "%llu.%03llus", (unsigned long long)(ms / 1000),
                (unsigned long long)(ms % 1000));
  return json_string(buf);
}

static json_t *budget_json(double ratio, uint32_t mps, uint64_t ttl_ms) {
  return json_pack("{s:f, s:I, s:o}", "retry_ratio", ratio, "min_retries_per_second",
                   (json_int_t)mps, "ttl", duration_json(ttl_ms));
}

/* A RequestMatch or ResponseMatch from a (validated) condition: one field
 * as itself, several as "all". */
static json_t *cond_json(mesh__reader *r, const mesh__node *n, bool request) {
  json_t *parts = json_array();
  const mesh__node *v;
  if (!parts || !n || n->type != MESH_NODE_MAP) return parts;
  if (request) {
    if ((v = mesh__node_get(n, "method")) && v->type == MESH_NODE_SCALAR)
      json_array_append_new(parts, json_pack("{s:s}", "method", v->str));
    if ((v = mesh__node_get(n, "pathRegex")) && v->type == MESH_NODE_SCALAR)
      json_array_append_new(parts, json_pack("{s:{s:s}}", "path", "regex", v->str));
  } else if ((v = mesh__node_get(n, "status"))) {
    int64_t min = -1, max = -1;
    mesh__read_int(r, v, "min", 100, 599, &min);
    mesh__read_int(r, v, "max", 100, 599, &max);
    if (min < 0) min = max;
    if (max < 0) max = min;
    json_array_append_new(parts, json_pack("{s:{s:I, s:I}}", "status", "min", (json_int_t)min,
                                           "max", (json_int_t)max));
  }
  static const char *const seqs[] = {"all", "any"};
  for (int s = 0; s < 2; s++) {
    if (!(v = mesh__node_get(n, seqs[s])) || v->type != MESH_NODE_SEQ) continue;
    json_t *m = json_array();
    for (size_t i = 0; m && i < v->n; i++) json_array_append_new(m, cond_json(r, v->kids[i], request));
    json_array_append_new(parts, json_pack("{s:{s:o}}", seqs[s], "matches", m));
  }
  if ((v = mesh__node_get(n, "not")))
    json_array_append_new(parts, json_pack("{s:o}", "not", cond_json(r, v, request)));
  if (json_array_size(parts) == 1) {
    json_t *one = json_incref(json_array_get(parts, 0));
    json_decref(parts);
    return one;
  }
  return json_pack("{s:{s:o}}", "all", "matches", parts);
}

static json_t *routes_json(const mesh_profile *p, const mesh__node *doc) {
  json_t *routes = json_array();
  const mesh__node *list = mesh__node_get(mesh__node_get(doc, "spec"), "routes");
  mesh__reader r = {0}; /* the document is valid: nothing is reported */
  for (size_t i = 0; routes && i < mesh_profile_route_count(p); i++) {
    const mesh_route *rt = mesh_profile_route(p, i);
    const mesh__node *n = list && list->type == MESH_NODE_SEQ && i < list->n ? list->kids[i] : NULL;
    json_t *classes = json_array();
    const mesh__node *rc = mesh__node_get(n, "responseClasses");
    for (size_t k = 0; classes && rc && rc->type == MESH_NODE_SEQ && k < rc->n; k++) {
      bool failure = false;
      mesh__read_bool(&r, rc->kids[k], "isFailure", &failure);
      json_t *cond = cond_json(&r, mesh__node_get(rc->kids[k], "condition"), false);
      json_array_append_new(classes,
                            json_pack("{s:o, s:b}", "condition", cond, "is_failure", failure));
    }
    json_t *o = json_pack("{s:o, s:o, s:{s:s}, s:b, s:o}", "condition",
                          cond_json(&r, mesh__node_get(n, "condition"), true), "response_classes",
                          classes, "metrics_labels", "route", mesh_route_name(rt), "is_retryable",
                          mesh_route_is_retryable(rt), "timeout",
                          duration_json(mesh_route_timeout_ms(rt)));
    double ratio;
    uint32_t mps;
    uint64_t ttl;
    if (o && mesh_route_retry_budget(rt, &ratio, &mps, &ttl))
      json_object_set_new(o, "retry_budget", budget_json(ratio, mps, ttl));
    if (!o || json_array_append_new(routes, o) != 0) {
      json_decref(routes);
      routes = NULL;
    }
  }
  return routes;
}

static json_t *split_json(const mesh_split *sp, const char *ns, const char *cd, uint16_t port,
                          bool authorities) {
  json_t *list = json_array();
  for (size_t i = 0; list && i < mesh_split_count(sp); i++) {
    char auth[600];
    if (authorities) snprintf(auth, sizeof auth, "%s", mesh_split_backend(sp, i));
    else snprintf(auth, sizeof auth, "%s.%s.svc.%s:%u", mesh_split_backend(sp, i), ns, cd,
                  (unsigned)port);
    if (json_array_append_new(list, json_pack("{s:s, s:I}", "authority", auth, "weight",
                                              (json_int_t)mesh_split_weight(sp, i))) != 0) {
      json_decref(list);
      list = NULL;
    }
  }
  return list;
}

/* The ServiceProfile (by FQDN, or by the Service's own name as the seed
 * writes it) and the first TrafficSplit of a named authority, in the
 * authority's namespace. */
static void find_profile(const mesh_snapshot *s, const authority *a, const mesh_profile **prof,
                         const mesh__node **prof_doc, const mesh_split **split) {
  char full[400];
  snprintf(full, sizeof full, "%s.%s.svc.%s", a->svc, a->ns, s->cluster_domain);
  const size_t *p = index_find(s, s->profiles, s->nprofiles, a->ns, full);
  if (!p) p = index_find(s, s->profiles, s->nprofiles, a->ns, a->svc);
  if (p) {
    const docref *d = &s->docs[*p];
    *prof = mesh_manifest_profile(s->srcs[d->src]->m, d->idx);
    *prof_doc = mesh__manifest_node(s->srcs[d->src]->m, d->idx);
  }
  const size_t *sp = index_find(s, s->splits, s->nsplits, a->ns, a->svc);
  if (sp) *split = mesh_manifest_split(s->srcs[s->docs[*sp].src]->m, s->docs[*sp].idx);
}

int mesh_snapshot_profile(const mesh_snapshot *s, const char *authority_text,
                          const char *default_ns, mesh_profile **ret) {
  if (!s || !authority_text || !ret) return MESH_ERR_INVALID;
  authority a;
  int rc = parse_authority(s, authority_text, default_ns, &a);
  if (rc < 0) return rc;
  if (!a.named) return MESH_ERR_NOT_FOUND;
  const mesh_profile *prof = NULL;
  const mesh__node *doc = NULL;
  const mesh_split *split = NULL;
  find_profile(s, &a, &prof, &doc, &split);
  if (!prof && !split) return MESH_ERR_NOT_FOUND;
  if (split && !mesh_profile_dst_overrides(prof))
    return mesh_profile_with_split(s->ctx, prof, split, s->cluster_domain, a.port, ret);
  *ret = mesh_profile_ref(prof);
  return 0;
}

int mesh_snapshot_profile_json(const mesh_snapshot *s, const char *authority_text,
                               const char *default_ns, char **ret) {
  if (!s || !authority_text || !ret) return MESH_ERR_INVALID;
  authority a;
  int rc = parse_authority(s, authority_text, default_ns, &a);
  if (rc < 0) return rc;
  char fqdn[400] = "";
  const mesh_profile *prof = NULL;
  const mesh__node *prof_doc = NULL;
  const mesh_split *split = NULL;
  const service *svc = a.named ? find_service(s, a.ns, a.svc) : NULL;
  if (a.named) {
    find_profile(s, &a, &prof, &prof_doc, &split);
    if (svc || prof || split)
      snprintf(fqdn, sizeof fqdn, "%s.%s.svc.%s", a.svc, a.ns, s->cluster_domain);
  }
  double ratio;
  uint32_t mps;
  uint64_t ttl;
  mesh_profile_retry_budget(prof, &ratio, &mps, &ttl);
  bool opaque = false;
  if (svc) {
    const svc_port *sp = NULL;
    for (size_t i = 0; i < svc->nports && !sp; i++)
      if (svc->ports[i].port == a.port) sp = &svc->ports[i];
    opaque = port_opaque(svc, sp, a.port);
  }
  for (size_t i = 0; prof && i < mesh_profile_opaque_port_count(prof); i++)
    opaque = opaque || mesh_profile_opaque_port(prof, i) == a.port;
  const mesh_split *dst = mesh_profile_dst_overrides(prof);
  json_t *overrides = dst ? split_json(dst, a.ns, s->cluster_domain, a.port, true)
                      : split ? split_json(split, a.ns, s->cluster_domain, a.port, false)
                              : json_array();
  json_t *o = json_pack("{s:s, s:o, s:o, s:o, s:b}", "fully_qualified_name", fqdn, "routes",
                        prof ? routes_json(prof, prof_doc) : json_array(), "retry_budget",
                        budget_json(ratio, mps, ttl), "dst_overrides", overrides,
                        "opaque_protocol", opaque);
  /* The Service's retry and timeout annotations, as text: the proxy parses
   * them as the store checked them. A ServiceProfile wins (Linkerd: its
   * retries and timeouts replace the annotations'), so they are not sent
   * along with one. */
  if (o && svc && svc->ann && !prof) {
    json_t *ann = json_object();
    for (size_t i = 0; ann && i < svc->ann->n; i++) {
      const mesh__node *key = svc->ann->kids[2 * i], *val = svc->ann->kids[2 * i + 1];
      if (key->str && val->str && mesh__ann_known(key->str) &&
          json_object_set_new(ann, key->str, json_string(val->str))) {
        json_decref(ann);
        ann = NULL;
      }
    }
    if (!ann || json_object_set_new(o, "annotations", ann)) {
      json_decref(o);
      return MESH_ERR_NOMEM;
    }
  }
  const workload *w;
  const char *ip;
  if (o && a.is_ip && (w = find_by_ip(s, a.host, &ip))) {
    /* An address of a known workload: its endpoint, so the proxy skips discovery. */
    endpoint ep;
    memset(&ep, 0, sizeof ep);
    bool ok = make_endpoint(s, w, ip, a.port, false, &ep);
    json_t *e = ok ? ep_json(&ep, w->ns, "") : NULL;
    mesh__free(s->ctx, ep.identity);
    mesh__free(s->ctx, ep.pod);
    mesh__free(s->ctx, ep.sa);
    if (!e || json_object_set_new(o, "endpoint", e) != 0) {
      json_decref(o);
      return MESH_ERR_NOMEM;
    }
  }
  return dump(s->ctx, o, ret);
}

/* ---- The directory store ---------------------------------------------------- */

typedef struct {
  char *path;
  char *buf;
  size_t len;
  uint64_t hash; /* of the bytes */
} file_buf;

struct mesh_store {
  mesh_ctx *ctx;
  mesh_store_opts *opts; /* a copy */
  mesh_snapshot *snap;
  uint64_t hash;         /* of the files behind snap */
  uint64_t gen;
  mesh_store_change_fn on_change;
  void *ud;
  int ifd;
  struct event *ev, *timer;
  uint64_t pending_since; /* ms of the first change not yet read; 0: none */
  uint64_t last_read_ms;  /* when the watch last read the directory */
  /* Files modified and not yet closed: a read now would see them half-written. */
  char writing[MAX_WRITING][NAME_MAX + 1];
  size_t nwriting;
  uint64_t ok, failed, last_change_ms;
  int failing;
  char *last_error;
  char *name; /* a fed store's name in logs (mesh_store_new_fed); NULL: a directory's */
  file_buf *extra; /* manifests added after the directory's (mesh_store_set_extra) */
  size_t nextra;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}


static void files_free(mesh_ctx *ctx, file_buf *f, size_t n) {
  for (size_t i = 0; f && i < n; i++) {
    mesh__free(ctx, f[i].path);
    mesh__free(ctx, f[i].buf);
  }
  mesh__free(ctx, f);
}

/* The file, bounded as manifests are (mesh__manifest_read_fd). */
static int read_whole(mesh_ctx *ctx, const char *path, mesh_diags *diags, file_buf *f) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 1; /* gone since the listing: skipped */
    mesh__diag_add(diags, MESH_DIAG_ERROR, path, 0, 0, "cannot open: %s", strerror(errno));
    return MESH_ERR_IO;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
    close(fd);
    return 1; /* a directory named x.yaml: not a manifest */
  }
  int rc = mesh__manifest_read_fd(ctx, fd, path, diags, &f->buf, &f->len);
  close(fd);
  return rc;
}

/* Reads every manifest file of the directory (sorted by name) and their hash. */
static int read_dir(mesh_store *st, mesh_diags *diags, file_buf **ret, size_t *ret_n,
                    uint64_t *ret_hash) {
  mesh_ctx *ctx = st->ctx;
  const char *dir = st->opts->dir;
  DIR *d = opendir(dir);
  if (!d) {
    mesh__diag_add(diags, MESH_DIAG_ERROR, dir, 0, 0, "cannot read the directory: %s",
                   strerror(errno));
    return MESH_ERR_IO;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d))) {
    if (!mesh_manifest_file_name(e->d_name)) continue;
    if (n == MESH_STORE_MAX_FILES) {
      mesh__diag_add(diags, MESH_DIAG_ERROR, dir, 0, 0, "more than %u manifest files",
                     (unsigned)MESH_STORE_MAX_FILES);
      rc = MESH_ERR_LIMIT;
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = mesh__realloc(ctx, names, cap * sizeof *nn);
      if (!nn) {
        rc = MESH_ERR_NOMEM;
        break;
      }
      names = nn;
    }
    if (!(names[n] = mesh__strdup(ctx, e->d_name))) rc = MESH_ERR_NOMEM;
    else n++;
  }
  closedir(d);
  file_buf *files = rc == 0 ? mesh__calloc(ctx, n ? n : 1, sizeof *files) : NULL;
  if (rc == 0 && !files) rc = MESH_ERR_NOMEM;
  if (rc == 0 && n) qsort(names, n, sizeof *names, cmp_str);
  size_t nf = 0;
  uint64_t h = FNV_BASIS;
  int bad = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    size_t dl = strlen(dir);
    char *path = mesh__sprintf(ctx, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", names[i]);
    if (!path) {
      rc = MESH_ERR_NOMEM;
      break;
    }
    file_buf f = {.path = path};
    int r = read_whole(ctx, path, diags, &f);
    if (r == MESH_ERR_NOMEM) rc = r;
    if (r != 0) {
      if (r < 0 && !bad) bad = r;
      mesh__free(ctx, path);
      continue;
    }
    f.hash = fnv(FNV_BASIS, f.buf, f.len);
    h = fnv(h, names[i], strlen(names[i]) + 1);
    h = fnv(h, &f.hash, sizeof f.hash); /* the directory's hash: names and contents */
    files[nf++] = f;
  }
  for (size_t i = 0; i < n; i++) mesh__free(ctx, names[i]);
  mesh__free(ctx, names);
  if (rc == 0) rc = bad;
  if (rc < 0) {
    files_free(ctx, files, nf);
    return rc;
  }
  *ret = files;
  *ret_n = nf;
  *ret_hash = h;
  return 0;
}

static int build(mesh_store *st, file_buf *files, size_t n, mesh_diags *diags,
                 mesh_snapshot **ret) {
  mesh_snapshot_builder *b = NULL;
  int rc = mesh_snapshot_builder_new(st->ctx, st->opts, &b);
  int bad = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    /* A file that did not change is not parsed again: its source is shared. */
    int r = builder_reuse(b, st->snap, files[i].path, files[i].hash);
    if (r == 0) r = mesh_snapshot_builder_add(b, files[i].path, files[i].buf, files[i].len, diags);
    else if (r == 1) r = 0;
    if (r == MESH_ERR_NOMEM || r == MESH_ERR_INVALID) rc = r;
    else if (r < 0 && !bad) bad = r; /* go on: report every file's problems */
  }
  if (rc < 0) {
    mesh_snapshot_builder_free(b);
    return rc;
  }
  if (bad) {
    mesh_snapshot_builder_free(b);
    return bad;
  }
  return mesh_snapshot_builder_finish(b, diags, ret);
}

/* One load: 1 when unchanged, 0 when *ret is a new snapshot, else an error. */
static int load(mesh_store *st, mesh_diags *diags, mesh_snapshot **ret, uint64_t *ret_hash) {
  file_buf *files = NULL;
  size_t n = 0;
  uint64_t h = 0;
  int rc = read_dir(st, diags, &files, &n, &h);
  if (rc < 0) return rc;
  if (st->nextra) { /* after the files, so that a duplicate names the file first */
    file_buf *all = mesh__realloc(st->ctx, files, (n + st->nextra) * sizeof *all);
    if (!all) {
      files_free(st->ctx, files, n);
      return MESH_ERR_NOMEM;
    }
    files = all;
    for (size_t i = 0; i < st->nextra; i++) {
      file_buf *f = &files[n], *x = &st->extra[i];
      *f = (file_buf){.path = mesh__strdup(st->ctx, x->path), .len = x->len, .hash = x->hash};
      f->buf = f->path ? mesh__malloc(st->ctx, x->len ? x->len : 1) : NULL;
      if (!f->buf) {
        mesh__free(st->ctx, f->path);
        files_free(st->ctx, files, n);
        return MESH_ERR_NOMEM;
      }
      memcpy(f->buf, x->buf, x->len);
      n++;
      h = fnv(h, x->path, strlen(x->path) + 1);
      h = fnv(h, &x->hash, sizeof x->hash);
    }
  }
  if (st->snap && h == st->hash) rc = 1;
  else rc = build(st, files, n, diags, ret);
  files_free(st->ctx, files, n);
  *ret_hash = h;
  return rc;
}

static int copy_opts(mesh_ctx *ctx, const mesh_store_opts *src, mesh_store_opts **ret) {
  mesh_store_opts *o = NULL;
  int rc = mesh_store_opts_new(ctx, &o);
  if (rc == 0) rc = mesh_store_opts_set_dir(o, src->dir);
  if (rc == 0) rc = set_str(ctx, &o->cluster_domain, src->cluster_domain);
  if (rc == 0) rc = set_str(ctx, &o->trust_domain, src->trust_domain);
  if (rc == 0) rc = set_str(ctx, &o->cp_ns, src->cp_ns);
  if (rc < 0) {
    mesh_store_opts_free(o);
    return rc;
  }
  o->debounce_ms = src->debounce_ms;
  *ret = o;
  return 0;
}

void mesh_store_free(mesh_store *st) {
  if (!st) return;
  if (st->ev) event_free(st->ev);
  if (st->timer) event_free(st->timer);
  if (st->ifd >= 0) close(st->ifd);
  mesh_snapshot_unref(st->snap);
  mesh_store_opts_free(st->opts);
  mesh__free(st->ctx, st->last_error);
  mesh__free(st->ctx, st->name);
  files_free(st->ctx, st->extra, st->nextra);
  mesh__free(st->ctx, st);
}

int mesh_store_new(mesh_ctx *ctx, const mesh_store_opts *opts, mesh_diags *diags,
                   mesh_store **ret) {
  if (!ctx || !opts || !opts->dir || !ret) return MESH_ERR_INVALID;
  mesh_store *st = mesh__calloc(ctx, 1, sizeof *st);
  if (!st) return MESH_ERR_NOMEM;
  st->ctx = ctx;
  st->ifd = -1;
  int rc = copy_opts(ctx, opts, &st->opts);
  mesh_snapshot *snap = NULL;
  uint64_t h = 0;
  if (rc == 0) rc = load(st, diags, &snap, &h);
  if (rc < 0) {
    mesh_store_free(st);
    return rc;
  }
  snap->gen = st->gen = 1;
  st->snap = snap;
  st->hash = h;
  st->last_change_ms = now_ms();
  *ret = st;
  return 0;
}

mesh_snapshot *mesh_store_snapshot(const mesh_store *st) {
  return st ? mesh_snapshot_ref(st->snap) : NULL;
}

int mesh_store_on_change(mesh_store *st, mesh_store_change_fn fn, void *ud) {
  if (!st) return MESH_ERR_INVALID;
  st->on_change = fn;
  st->ud = ud;
  return 0;
}

static const char *store_name(const mesh_store *st) {
  return st->name ? st->name : st->opts->dir;
}

/* What a load (rc from load or load_fed) does to the store: swap and tell,
 * or keep the last good snapshot and the error. */
static int settle(mesh_store *st, int rc, mesh_snapshot *snap, uint64_t h, mesh_diags *diags) {
  if (rc == 1) {
    st->failing = 0; /* back to what is served */
    rc = 0;
  } else if (rc == 0) {
    snap->gen = ++st->gen;
    mesh_snapshot_unref(st->snap);
    st->snap = snap;
    st->hash = h;
    st->failing = 0;
    st->ok++;
    st->last_change_ms = now_ms();
    mesh__log(st->ctx, MESH_LOG_INFO, "store %s: loaded generation %llu (%zu documents)",
              store_name(st), (unsigned long long)st->gen, mesh_snapshot_count(snap));
    if (st->on_change) st->on_change(st->ud, st);
  } else if (rc != MESH_ERR_NOMEM) {
    st->failed++;
    st->failing = 1;
    const char *first = NULL;
    for (size_t i = 0; i < mesh_diags_count(diags) && !first; i++)
      if (mesh_diags_severity(diags, i) == MESH_DIAG_ERROR) first = mesh_diags_text(diags, i);
    char *e = mesh__strdup(st->ctx, first ? first : mesh_strerror(rc));
    if (e) {
      mesh__free(st->ctx, st->last_error);
      st->last_error = e;
    }
    mesh__log(st->ctx, MESH_LOG_ERROR, "store %s: change refused, still serving generation %llu: %s",
              store_name(st), (unsigned long long)st->gen, e ? e : mesh_strerror(rc));
  }
  return rc;
}

int mesh_store_reload(mesh_store *st) {
  if (!st || !st->opts->dir) return MESH_ERR_INVALID;
  mesh_diags *diags = NULL;
  int rc = mesh_diags_new(st->ctx, &diags);
  if (rc < 0) return rc;
  mesh_snapshot *snap = NULL;
  uint64_t h = 0;
  rc = load(st, diags, &snap, &h);
  rc = settle(st, rc, snap, h, diags);
  mesh_diags_free(diags);
  return rc;
}

int mesh_store_set_extra(mesh_store *st, size_t n, const char *const *sources,
                         const char *const *bufs, const size_t *lens) {
  if (!st || !st->opts->dir || (n && (!sources || !bufs || !lens))) return MESH_ERR_INVALID;
  if (n > MESH_STORE_MAX_FILES) return MESH_ERR_LIMIT;
  for (size_t i = 0; i < n; i++)
    if (!sources[i] || (!bufs[i] && lens[i])) return MESH_ERR_INVALID;
  file_buf *x = mesh__calloc(st->ctx, n ? n : 1, sizeof *x);
  if (!x) return MESH_ERR_NOMEM;
  for (size_t i = 0; i < n; i++) {
    x[i].path = mesh__strdup(st->ctx, sources[i]);
    x[i].buf = mesh__malloc(st->ctx, lens[i] ? lens[i] : 1);
    if (!x[i].path || !x[i].buf) {
      files_free(st->ctx, x, i + 1);
      return MESH_ERR_NOMEM;
    }
    memcpy(x[i].buf, bufs[i], lens[i]);
    x[i].len = lens[i];
    x[i].hash = fnv(FNV_BASIS, bufs[i], lens[i]);
  }
  file_buf *old = st->extra;
  size_t nold = st->nextra;
  st->extra = x;
  st->nextra = n;
  files_free(st->ctx, old, nold);
  /* Kept even when this load is refused: a removal must not come back, and
   * the next good load of the directory serves the set. */
  return mesh_store_reload(st);
}

/* ---- The fed store ------------------------------------------------------------ */

int mesh_store_new_fed(mesh_ctx *ctx, const mesh_store_opts *opts, const char *name,
                       mesh_store **ret) {
  if (!ctx || !opts || !name || !ret) return MESH_ERR_INVALID;
  mesh_store *st = mesh__calloc(ctx, 1, sizeof *st);
  if (!st) return MESH_ERR_NOMEM;
  st->ctx = ctx;
  st->ifd = -1;
  mesh_snapshot_builder *b = NULL;
  int rc = mesh_store_opts_new(ctx, &st->opts);
  /* Only the naming options: without a directory, reload and watch refuse. */
  if (rc == 0) rc = set_str(ctx, &st->opts->cluster_domain, opts->cluster_domain);
  if (rc == 0) rc = set_str(ctx, &st->opts->trust_domain, opts->trust_domain);
  if (rc == 0) rc = set_str(ctx, &st->opts->cp_ns, opts->cp_ns);
  if (rc == 0) rc = set_str(ctx, &st->name, name);
  if (rc == 0) rc = mesh_snapshot_builder_new(ctx, st->opts, &b);
  if (rc == 0) rc = mesh_snapshot_builder_finish(b, NULL, &st->snap);
  if (rc < 0) {
    mesh_store_free(st);
    return rc;
  }
  st->snap->gen = st->gen = 1;
  st->hash = FNV_BASIS; /* what read_dir gives for no file */
  st->last_change_ms = now_ms();
  *ret = st;
  return 0;
}

int mesh_store_load_buffers(mesh_store *st, size_t n, const char *const *sources,
                            const char *const *bufs, const size_t *lens) {
  if (!st || st->opts->dir || (n && (!sources || !bufs || !lens))) return MESH_ERR_INVALID;
  for (size_t i = 0; i < n; i++)
    if (!sources[i] || (!bufs[i] && lens[i])) return MESH_ERR_INVALID;
  mesh_diags *diags = NULL;
  int rc = mesh_diags_new(st->ctx, &diags);
  if (rc < 0) return rc;
  if (n > MESH_STORE_MAX_FILES) { /* refused like any bad set: counted, and the error kept */
    mesh__diag_add(diags, MESH_DIAG_ERROR, st->name, 0, 0, "more than %u manifests",
                   (unsigned)MESH_STORE_MAX_FILES);
    rc = settle(st, MESH_ERR_LIMIT, NULL, 0, diags);
    mesh_diags_free(diags);
    return rc;
  }
  /* The caller's bytes, borrowed (never freed here): build reads file_bufs. */
  file_buf *files = mesh__calloc(st->ctx, n ? n : 1, sizeof *files);
  if (!files) {
    mesh_diags_free(diags);
    return MESH_ERR_NOMEM;
  }
  uint64_t h = FNV_BASIS;
  for (size_t i = 0; i < n; i++) {
    files[i] = (file_buf){.path = (char *)sources[i], .buf = (char *)bufs[i], .len = lens[i]};
    files[i].hash = fnv(FNV_BASIS, bufs[i], lens[i]);
    h = fnv(h, sources[i], strlen(sources[i]) + 1);
    h = fnv(h, &files[i].hash, sizeof files[i].hash);
  }
  mesh_snapshot *snap = NULL;
  rc = h == st->hash ? 1 : build(st, files, n, diags, &snap);
  rc = settle(st, rc, snap, h, diags);
  mesh__free(st->ctx, files);
  mesh_diags_free(diags);
  return rc;
}

static void on_timer(evutil_socket_t fd, short what, void *ud) {
  mesh_store *st = ud;
  st->pending_since = 0;
  st->last_read_ms = now_ms();
  mesh_store_reload(st);
}

/* When every changed file is whole (closed, renamed in, deleted), the
 * directory is read at once, but at most once a debounce period, so that
 * a burst of changes makes one snapshot a period. While a file is being
 * written, the read waits for the debounce time of quiet (and at most
 * STORM_FACTOR periods): reading it half-written would only be refused. */
static void arm(mesh_store *st, bool whole) {
  uint64_t now = now_ms(), period = st->opts->debounce_ms, wait;
  if (!st->pending_since) st->pending_since = now;
  if (whole) wait = st->last_read_ms + period > now ? st->last_read_ms + period - now : 0;
  else if (now - st->pending_since >= period * STORM_FACTOR) wait = 0;
  else wait = period;
  struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)((wait % 1000) * 1000)};
  event_add(st->timer, &tv); /* re-adding a pending timer moves it */
}

/* Tracks which files are half-written; false when it lost count (too many,
 * or the kernel's queue overflowed): then every change waits. */
static bool track_writes(mesh_store *st, const struct inotify_event *ev) {
  if (ev->mask & IN_Q_OVERFLOW) {
    st->nwriting = 0;
    return false;
  }
  if ((ev->mask & IN_ISDIR) || !ev->len) return true;
  size_t i = 0;
  while (i < st->nwriting && strcmp(st->writing[i], ev->name)) i++;
  if (ev->mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE)) {
    if (i < st->nwriting) memmove(st->writing[i], st->writing[--st->nwriting], sizeof st->writing[i]);
  } else if ((ev->mask & (IN_MODIFY | IN_CREATE)) && i == st->nwriting) {
    if (st->nwriting == MAX_WRITING || strlen(ev->name) > NAME_MAX) return false;
    snprintf(st->writing[st->nwriting++], sizeof st->writing[0], "%s", ev->name);
  }
  return true;
}

static void on_inotify(evutil_socket_t fd, short what, void *ud) {
  mesh_store *st = ud;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  bool any = false, counted = true;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* EAGAIN: drained */
    any = true;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)p;
      counted = track_writes(st, ev) && counted;
      p += sizeof *ev + ev->len;
    }
  }
  if (any) arm(st, counted && st->nwriting == 0);
}

int mesh_store_watch(mesh_store *st, struct event_base *base) {
  if (!st || !base || st->ifd >= 0 || !st->opts->dir) return MESH_ERR_INVALID;
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0) return MESH_ERR_IO;
  if (inotify_add_watch(fd, st->opts->dir,
                        IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE |
                            IN_DELETE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0) {
    int e = errno;
    close(fd);
    errno = e;
    return MESH_ERR_IO;
  }
  st->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_inotify, st);
  st->timer = evtimer_new(base, on_timer, st);
  if (!st->ev || !st->timer || event_add(st->ev, NULL) < 0) {
    if (st->ev) event_free(st->ev);
    if (st->timer) event_free(st->timer);
    st->ev = st->timer = NULL;
    close(fd);
    return MESH_ERR_NOMEM;
  }
  st->ifd = fd;
  return 0;
}

uint64_t mesh_store_reloads_ok(const mesh_store *st) { return st ? st->ok : 0; }
uint64_t mesh_store_reloads_failed(const mesh_store *st) { return st ? st->failed : 0; }
int mesh_store_failing(const mesh_store *st) { return st ? st->failing : 0; }
const char *mesh_store_last_error(const mesh_store *st) { return st ? st->last_error : NULL; }
uint64_t mesh_store_last_change_ms(const mesh_store *st) { return st ? st->last_change_ms : 0; }
