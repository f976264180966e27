/* libmesh store: the policy documents that apply to one Workload (InboundServerPolicies.WatchWorkload). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include <mesh/error.h>
#include <mesh/store.h>
#include "ctx_internal.h"
#include "manifest_internal.h"
#include "policy_internal.h"
#include "store_internal.h"

/* The selection is done on the documents' compiled forms (the same
 * selectors and references mesh_policy_compile links), so that what the
 * stream carries is exactly what the client's compile will link: no
 * second reading of the YAML. */

typedef struct {
  size_t n;
  const mesh__pdoc **pd; /* by document index; NULL: not a policy document */
  bool *take;
  const char *ns;
} selection;

static bool in_ns(const mesh__pdoc *d, const char *ns) { return strcmp(d->ns, ns) == 0; }

/* A Server taken in this namespace named name. */
static bool server_taken(const selection *x, const char *ns, const char *name) {
  for (size_t i = 0; i < x->n; i++)
    if (x->take[i] && x->pd[i]->kind == MESH_KIND_SERVER && strcmp(x->pd[i]->ns, ns) == 0 &&
        strcmp(x->pd[i]->name, name) == 0)
      return true;
  return false;
}

static bool route_taken(const selection *x, const char *ns, const char *name) {
  for (size_t i = 0; i < x->n; i++)
    if (x->take[i] && x->pd[i]->kind == MESH_KIND_HTTP_ROUTE && strcmp(x->pd[i]->ns, ns) == 0 &&
        strcmp(x->pd[i]->name, name) == 0)
      return true;
  return false;
}

/* A ServerAuthorization's selector over the labels of a Server taken. */
static bool selects_taken_server(const selection *x, const mesh__pdoc *az) {
  for (size_t i = 0; i < x->n; i++) {
    const mesh__pdoc *d = x->pd[i];
    if (x->take[i] && d->kind == MESH_KIND_SERVER && in_ns(d, az->ns) &&
        mesh__selector_matches(&az->srv_sel, d->labels, d->nlabels))
      return true;
  }
  return false;
}

static void select_docs(selection *x, const mesh_policy_label *labels, size_t nlabels) {
  bool any_server = false;
  /* Servers of the namespace whose selector holds for the labels, whatever their port. */
  for (size_t i = 0; i < x->n; i++) {
    const mesh__pdoc *d = x->pd[i];
    if (d && d->kind == MESH_KIND_SERVER && in_ns(d, x->ns) &&
        mesh__selector_matches(&d->sel, labels, nlabels))
      x->take[i] = any_server = true;
  }
  if (!any_server) return; /* nothing attaches: the default policy decides every port */
  /* What attaches to them: routes and ServerAuthorizations. */
  for (size_t i = 0; i < x->n; i++) {
    const mesh__pdoc *d = x->pd[i];
    if (!d || x->take[i] || !in_ns(d, x->ns)) continue;
    if (d->kind == MESH_KIND_HTTP_ROUTE) {
      for (size_t k = 0; k < d->nrefs && !x->take[i]; k++)
        x->take[i] = d->refs[k].kind == MESH__REF_SERVER &&
                     server_taken(x, d->refs[k].ns, d->refs[k].name);
    } else if (d->kind == MESH_KIND_SERVER_AUTHORIZATION && d->target.kind == MESH__REF_SERVER) {
      x->take[i] = d->by_selector ? selects_taken_server(x, d)
                                  : server_taken(x, d->ns, d->target.name);
    }
  }
  /* AuthorizationPolicies on those Servers, routes, or the namespace. */
  for (size_t i = 0; i < x->n; i++) {
    const mesh__pdoc *d = x->pd[i];
    if (!d || d->kind != MESH_KIND_AUTHORIZATION_POLICY || !in_ns(d, x->ns)) continue;
    const mesh__ref *t = &d->target;
    x->take[i] = (t->kind == MESH__REF_SERVER && server_taken(x, t->ns, t->name)) ||
                 (t->kind == MESH__REF_HTTPROUTE && route_taken(x, t->ns, t->name)) ||
                 (t->kind == MESH__REF_NAMESPACE && strcmp(t->ns, x->ns) == 0);
  }
  /* The authentications those policies require, in whatever namespace. */
  for (size_t i = 0; i < x->n; i++) {
    const mesh__pdoc *d = x->pd[i];
    if (!d || !x->take[i] || d->kind != MESH_KIND_AUTHORIZATION_POLICY) continue;
    for (size_t k = 0; k < d->nrefs; k++) {
      const mesh__ref *r = &d->refs[k];
      int kind = r->kind == MESH__REF_MESHTLS   ? MESH_KIND_MESH_TLS_AUTHENTICATION
                 : r->kind == MESH__REF_NETWORK ? MESH_KIND_NETWORK_AUTHENTICATION
                                                : MESH_KIND_OTHER;
      if (kind == MESH_KIND_OTHER || !r->name) continue;
      for (size_t j = 0; j < x->n; j++)
        if (x->pd[j] && x->pd[j]->kind == kind && strcmp(x->pd[j]->ns, r->ns) == 0 &&
            strcmp(x->pd[j]->name, r->name) == 0)
          x->take[j] = true;
    }
  }
}

/* The part of the Workload the message repeats. Labels are text as the
 * selectors read them (a YAML `version: 1` is the label "1", not a number). */
static json_t *workload_json(const mesh_snapshot *s, size_t w, const char *ns, const char *name,
                             const mesh_policy_label *labels, size_t nlabels) {
  char *text = NULL;
  if (mesh_snapshot_document_json(s, w, &text) < 0) return NULL;
  json_t *doc = json_loads(text, 0, NULL);
  mesh_free_string(mesh__snapshot_ctx(s), text);
  json_t *ports = json_object_get(json_object_get(doc, "spec"), "ports");
  json_t *lj = json_object();
  json_t *out = json_pack("{s:s, s:s}", "namespace", ns, "name", name);
  bool ok = out && lj && doc;
  for (size_t i = 0; ok && i < nlabels; i++)
    ok = json_object_set_new(lj, labels[i].name, json_string(labels[i].value)) == 0;
  ok = ok && json_object_set(out, "labels", lj) == 0 &&
       json_object_set_new(out, "ports", json_is_array(ports) ? json_incref(ports) : json_array()) == 0;
  json_decref(lj);
  json_decref(doc);
  if (!ok) {
    json_decref(out);
    return NULL;
  }
  return out;
}

/* A growing text; oom is set (and later appends are dropped) when memory runs out. */
typedef struct {
  mesh_ctx *ctx;
  char *buf;
  size_t len, cap;
  bool oom;
} text;

static void put(text *t, const char *s, size_t len) {
  if (t->oom) return;
  if (t->len + len + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 1024;
    while (cap < t->len + len + 1) cap *= 2;
    char *b = mesh__realloc(t->ctx, t->buf, cap);
    if (!b) {
      t->oom = true;
      return;
    }
    t->buf = b;
    t->cap = cap;
  }
  memcpy(t->buf + t->len, s, len);
  t->len += len;
  t->buf[t->len] = '\0';
}

static void put_str(text *t, const char *s) { put(t, s, strlen(s)); }

static void put_json(text *t, json_t *j) {
  char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
  if (!s) t->oom = true;
  else put(t, s, strlen(s));
  free(s);
}

int mesh_snapshot_policy_json(const mesh_snapshot *s, const char *ns, const char *name, char **ret) {
  if (!s || !ns || !name || !ret) return MESH_ERR_INVALID;
  mesh_ctx *ctx = mesh__snapshot_ctx(s);
  size_t n = mesh_snapshot_count(s), w = n;
  for (size_t i = 0; i < n && w == n; i++) {
    const char *dns = mesh_snapshot_namespace(s, i), *dname = mesh_snapshot_name(s, i);
    if (mesh_snapshot_kind(s, i) == MESH_KIND_WORKLOAD && dns && dname && strcmp(dns, ns) == 0 &&
        strcmp(dname, name) == 0)
      w = i;
  }
  if (w == n) return MESH_ERR_NOT_FOUND;

  /* The Workload's labels as the policy module reads them. */
  size_t k = 0;
  const mesh_manifest *wm = mesh__snapshot_manifest(s, w, &k);
  const mesh__node *ml = mesh__node_get(mesh__node_get(mesh__manifest_node(wm, k), "metadata"), "labels");
  size_t nl = ml && ml->type == MESH_NODE_MAP ? ml->n : 0;
  selection x = {.n = n, .ns = ns};
  mesh_policy_label *labels = mesh__calloc(ctx, nl ? nl : 1, sizeof *labels);
  x.pd = mesh__calloc(ctx, n ? n : 1, sizeof *x.pd);
  x.take = mesh__calloc(ctx, n ? n : 1, sizeof *x.take);
  json_t *wl = NULL;
  text t = {.ctx = ctx};
  int rc = labels && x.pd && x.take ? 0 : MESH_ERR_NOMEM;
  for (size_t i = 0; !rc && i < nl; i++)
    labels[i] = (mesh_policy_label){ml->kids[2 * i]->str, ml->kids[2 * i + 1]->str};
  for (size_t i = 0; !rc && i < n; i++) {
    const mesh_manifest *m = mesh__snapshot_manifest(s, i, &k);
    const mesh__pdoc *d = mesh__manifest_pdoc(m, k);
    x.pd[i] = d && d->ok ? d : NULL;
  }
  if (!rc) {
    select_docs(&x, labels, nl);
    if (!(wl = workload_json(s, w, ns, name, labels, nl))) rc = MESH_ERR_NOMEM;
  }
  if (!rc) {
    put_str(&t, "{\"workload\":");
    put_json(&t, wl);
    put_str(&t, ",\"exists\":true,\"documents\":[");
    bool first = true;
    for (size_t i = 0; i < n && !t.oom; i++) {
      if (!x.take[i]) continue;
      char *doc = NULL;
      if (mesh_snapshot_document_json(s, i, &doc) < 0) {
        t.oom = true;
        break;
      }
      if (!first) put_str(&t, ",");
      put(&t, doc, strlen(doc));
      mesh_free_string(ctx, doc);
      first = false;
    }
    put_str(&t, "]}");
    if (t.oom) rc = MESH_ERR_NOMEM;
  }
  json_decref(wl);
  mesh__free(ctx, labels);
  mesh__free(ctx, x.pd);
  mesh__free(ctx, x.take);
  if (rc < 0) {
    mesh__free(ctx, t.buf);
    return rc;
  }
  *ret = t.buf;
  return 0;
}
