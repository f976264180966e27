/* libmesh inbound policy: options, checks across documents, documents linked into a snapshot. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/identity.h>
#include <mesh/policy.h>
#include "ctx_internal.h"
#include "manifest_internal.h"
#include "names_internal.h"
#include "policy_internal.h"

struct mesh_policy_opts {
  mesh_ctx *ctx;
  int default_policy;
  bool allow_localhost;
  mesh__network nets[MESH__POLICY_MAX_NETWORKS];
  size_t nnets;
  char cp_ns[64];
  char td[254];
};

static const char *const default_names[] = {
    NULL, "all-unauthenticated", "all-authenticated", "cluster-authenticated",
    "cluster-unauthenticated", "deny", "audit"};

const char *mesh_policy_default_name(int32_t policy) {
  return policy > 0 && policy <= MESH_POLICY_DEFAULT_AUDIT ? default_names[policy] : NULL;
}

int mesh_policy_default_parse(const char *name) {
  if (!name) return MESH_ERR_PARSE;
  for (int i = 1; i <= MESH_POLICY_DEFAULT_AUDIT; i++)
    if (strcmp(default_names[i], name) == 0) return i;
  return MESH_ERR_PARSE;
}

/* ---- options ---- */

static int parse_networks(const char *s, mesh__network *out, size_t *n, const char **why) {
  size_t count = 0, len = strlen(s), i = 0;
  while (i <= len) {
    size_t end = i;
    while (end < len && s[end] != ',') end++;
    size_t a = i, b = end;
    while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
    i = end + 1;
    if (a == b) {
      if (len == 0) break;
      return *why = "an empty entry in the list", MESH_ERR_PARSE;
    }
    if (count == MESH__POLICY_MAX_NETWORKS) return *why = "more than 64 networks", MESH_ERR_PARSE;
    mesh__network net = {0};
    if (mesh__cidr_parse(s + a, b - a, &net.net, NULL, why) < 0) return MESH_ERR_PARSE;
    out[count++] = net;
  }
  *n = count;
  return 0;
}

int mesh_policy_opts_new(mesh_ctx *ctx, mesh_policy_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_policy_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  o->default_policy = MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED;
  o->allow_localhost = true;
  const char *why;
  parse_networks(MESH_POLICY_CLUSTER_NETWORKS, o->nets, &o->nnets, &why);
  snprintf(o->cp_ns, sizeof o->cp_ns, "%s", MESH_IDENTITY_DEFAULT_CP_NS);
  snprintf(o->td, sizeof o->td, "%s", MESH_IDENTITY_DEFAULT_TRUST_DOMAIN);
  *ret = o;
  return 0;
}

void mesh_policy_opts_free(mesh_policy_opts *o) {
  if (o) mesh__free(o->ctx, o);
}

int mesh_policy_opts_set_default(mesh_policy_opts *o, int32_t policy) {
  if (!o || !mesh_policy_default_name(policy)) return MESH_ERR_INVALID;
  o->default_policy = policy;
  return 0;
}

int mesh_policy_opts_set_cluster_networks(mesh_policy_opts *o, const char *cidrs, const char **why) {
  const char *unused;
  if (!why) why = &unused;
  if (!o || !cidrs) return *why = "no networks", MESH_ERR_INVALID;
  mesh__network nets[MESH__POLICY_MAX_NETWORKS];
  size_t n = 0;
  int rc = parse_networks(cidrs, nets, &n, why);
  if (rc < 0) return rc;
  memcpy(o->nets, nets, n * sizeof *nets);
  o->nnets = n;
  return 0;
}

int mesh_policy_opts_set_identity_domain(mesh_policy_opts *o, const char *cp_ns,
                                         const char *trust_domain) {
  if (!o) return MESH_ERR_INVALID;
  if ((cp_ns && (!mesh__dns_label_ok(cp_ns, strlen(cp_ns)) || strlen(cp_ns) >= sizeof o->cp_ns)) ||
      (trust_domain && (!mesh__dns_name_ok(trust_domain, strlen(trust_domain)) ||
                        strlen(trust_domain) >= sizeof o->td)))
    return MESH_ERR_PARSE;
  if (cp_ns) snprintf(o->cp_ns, sizeof o->cp_ns, "%s", cp_ns);
  if (trust_domain) snprintf(o->td, sizeof o->td, "%s", trust_domain);
  return 0;
}

int mesh_policy_opts_set_allow_localhost(mesh_policy_opts *o, int32_t allow) {
  if (!o) return MESH_ERR_INVALID;
  o->allow_localhost = allow != 0;
  return 0;
}

/* ---- checks across documents ---- */

/* Report about document d (which may come from another file than r's). */
static void say(mesh__reader *r, bool error, const mesh__pdoc *d, const mesh__node *at,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void say(mesh__reader *r, bool error, const mesh__pdoc *d, const mesh__node *at,
                const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  mesh__reader dr = *r;
  dr.file = d->file;
  dr.errors = 0;
  dr.nomem = 0;
  if (error) mesh__error(&dr, at, "%s", msg);
  else mesh__warn(&dr, at, "%s", msg);
  r->errors += dr.errors;
  if (dr.nomem) r->nomem = 1;
}

static const mesh__node *name_node(const mesh__pdoc *d) {
  const mesh__node *n = mesh__node_get(mesh__node_get(d->root, "metadata"), "name");
  return n ? n : d->root;
}

static const char *kind_name(int kind) {
  switch (kind) {
  case MESH_KIND_SERVER: return "Server";
  case MESH_KIND_SERVER_AUTHORIZATION: return "ServerAuthorization";
  case MESH_KIND_AUTHORIZATION_POLICY: return "AuthorizationPolicy";
  case MESH_KIND_MESH_TLS_AUTHENTICATION: return "MeshTLSAuthentication";
  case MESH_KIND_NETWORK_AUTHENTICATION: return "NetworkAuthentication";
  default: return "HTTPRoute";
  }
}

static int by_kind_ns_name(const void *pa, const void *pb) {
  const mesh__pdoc *a = *(mesh__pdoc *const *)pa, *b = *(mesh__pdoc *const *)pb;
  if (a->kind != b->kind) return a->kind - b->kind;
  int c = strcmp(a->ns, b->ns);
  return c ? c : strcmp(a->name, b->name);
}

static bool same_values(const mesh__selreq *a, const mesh__selreq *b) {
  for (size_t i = 0; i < a->nvalues; i++) {
    bool found = false;
    for (size_t k = 0; k < b->nvalues && !found; k++) found = strcmp(a->values[i], b->values[k]) == 0;
    if (!found) return false;
  }
  return true;
}

static bool has_req(const mesh__selector *s, const mesh__selreq *q) {
  for (size_t i = 0; i < s->n; i++) {
    const mesh__selreq *x = &s->reqs[i];
    if (x->op == q->op && strcmp(x->key, q->key) == 0 && same_values(x, q) && same_values(q, x))
      return true;
  }
  return false;
}

static bool sel_identical(const mesh__selector *a, const mesh__selector *b) {
  for (size_t i = 0; i < a->n; i++)
    if (!has_req(b, &a->reqs[i])) return false;
  for (size_t i = 0; i < b->n; i++)
    if (!has_req(a, &b->reqs[i])) return false;
  return true;
}

static bool in_values(const mesh__selreq *q, const char *v) {
  for (size_t i = 0; i < q->nvalues; i++)
    if (strcmp(q->values[i], v) == 0) return true;
  return false;
}

/* Can one set of labels satisfy both selectors? Judged key by key. */
static bool sel_compatible(const mesh__selector *a, const mesh__selector *b) {
  const mesh__selector *both[2] = {a, b};
  for (int s = 0; s < 2; s++)
    for (size_t i = 0; i < both[s]->n; i++) {
      const char *key = both[s]->reqs[i].key;
      bool exists = false, absent = false;
      const mesh__selreq *first_in = NULL;
      for (int t = 0; t < 2; t++)
        for (size_t k = 0; k < both[t]->n; k++) {
          const mesh__selreq *q = &both[t]->reqs[k];
          if (strcmp(q->key, key) != 0) continue;
          if (q->op == MESH__SEL_EXISTS) exists = true;
          if (q->op == MESH__SEL_NOT_EXISTS) absent = true;
          if (q->op == MESH__SEL_IN && !first_in) first_in = q;
        }
      if (absent && (exists || first_in)) return false;
      if (!first_in) continue;
      bool some = false;
      for (size_t v = 0; v < first_in->nvalues && !some; v++) {
        const char *val = first_in->values[v];
        bool ok = true;
        for (int t = 0; t < 2 && ok; t++)
          for (size_t k = 0; k < both[t]->n && ok; k++) {
            const mesh__selreq *q = &both[t]->reqs[k];
            if (strcmp(q->key, key) != 0) continue;
            if (q->op == MESH__SEL_IN && !in_values(q, val)) ok = false;
            if (q->op == MESH__SEL_NOT_IN && in_values(q, val)) ok = false;
          }
        some = ok;
      }
      if (!some) return false;
    }
  return true;
}

static void describe_port(const mesh__pdoc *d, char *buf, size_t size) {
  if (d->port_name) snprintf(buf, size, "port '%s'", d->port_name);
  else snprintf(buf, size, "port %u", (unsigned)d->port);
}

void mesh__policy_check_docs(mesh__reader *r, mesh__pdoc *const *docs, size_t n) {
  if (n < 2) return;
  mesh__pdoc **v = mesh__calloc(r->ctx, n, sizeof *v);
  if (!v) {
    r->nomem = 1;
    return;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (docs[i] && docs[i]->ok) v[k++] = docs[i];
  qsort(v, k, sizeof *v, by_kind_ns_name);
  for (size_t i = 1; i < k; i++)
    if (by_kind_ns_name(&v[i - 1], &v[i]) == 0)
      say(r, true, v[i], name_node(v[i]), "%s %s/%s is already defined at %s:%u", kind_name(v[i]->kind),
          v[i]->ns, v[i]->name, v[i - 1]->file, (unsigned)name_node(v[i - 1])->line);
  /* Servers of one namespace and one port that may select the same pods. */
  for (size_t i = 0; i < k; i++) {
    const mesh__pdoc *a = v[i];
    if (a->kind != MESH_KIND_SERVER) continue;
    for (size_t j = i + 1; j < k && v[j]->kind == MESH_KIND_SERVER && strcmp(v[j]->ns, a->ns) == 0;
         j++) {
      const mesh__pdoc *b = v[j];
      bool same_port = a->port_name ? b->port_name && strcmp(a->port_name, b->port_name) == 0
                                    : !b->port_name && a->port == b->port;
      if (!same_port) continue;
      char port[64];
      describe_port(b, port, sizeof port);
      if (sel_identical(&a->sel, &b->sel))
        say(r, true, b, b->port_at ? b->port_at : name_node(b),
            "Servers %s and %s both select %s of the same pods (identical selectors): a port may "
            "have one Server (%s is at %s:%u)",
            a->name, b->name, port, a->name, a->file, (unsigned)name_node(a)->line);
      else if (sel_compatible(&a->sel, &b->sel))
        say(r, false, b, b->port_at ? b->port_at : name_node(b),
            "Servers %s and %s may both select %s of a pod that matches both selectors; such a "
            "pod's port would be decided by %s alone (%s is at %s:%u)",
            a->name, b->name, port, a->name, a->name, a->file, (unsigned)name_node(a)->line);
    }
  }
  mesh__free(r->ctx, v);
}

/* ---- the snapshot ---- */

typedef struct {
  mesh__reader *r;
  mesh_ctx *ctx;
  mesh_policy *p;
  bool oom;
} pcomp;

static void authz_clear(mesh_ctx *ctx, mesh__authz *a) {
  for (size_t i = 0; i < a->n; i++) mesh__free(ctx, a->clauses[i].ids);
  mesh__free(ctx, a->clauses);
}

mesh_policy *mesh_policy_ref(const mesh_policy *p) {
  if (!p) return NULL;
  mesh_policy *m = (mesh_policy *)p;
  atomic_fetch_add_explicit(&m->refs, 1u, memory_order_relaxed);
  return m;
}

void mesh_policy_unref(mesh_policy *p) {
  if (!p || atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
  mesh_ctx *ctx = p->ctx;
  for (size_t i = 0; i < p->nservers; i++) {
    mesh__free(ctx, p->servers[i].authz);
    mesh__free(ctx, p->servers[i].routes);
    mesh__free(ctx, p->servers[i].entries);
  }
  mesh__free(ctx, p->servers);
  for (size_t i = 0; i < p->nroutes; i++) mesh__free(ctx, p->routes[i].authz);
  mesh__free(ctx, p->routes);
  for (size_t i = 0; i < p->nauthzs; i++) authz_clear(ctx, &p->authzs[i]);
  mesh__free(ctx, p->authzs);
  for (size_t i = 0; i < p->ndocs; i++) mesh__pdoc_unref(p->docs[i]);
  mesh__free(ctx, p->docs);
  for (size_t i = 0; i < p->narena; i++) mesh__free(ctx, p->arena[i]);
  mesh__free(ctx, p->arena);
  mesh__free(ctx, p);
}

static bool grow(pcomp *c, void **arr, size_t n, size_t *cap, size_t size) {
  if (n < *cap) return true;
  size_t ncap = *cap ? *cap * 2 : 4;
  void *a = mesh__realloc(c->ctx, *arr, ncap * size);
  if (!a) {
    c->oom = true;
    return false;
  }
  *arr = a;
  *cap = ncap;
  return true;
}

/* Append a pointer to a list whose capacity is implied by its length:
 * 4, then the next power of two. */
static void push(pcomp *c, void ***arr, size_t *n, void *item) {
  size_t k = *n;
  if (k == 0 || (k >= 4 && (k & (k - 1)) == 0)) {
    void **a = mesh__realloc(c->ctx, *arr, (k ? k * 2 : 4) * sizeof *a);
    if (!a) {
      c->oom = true;
      return;
    }
    *arr = a;
  }
  (*arr)[(*n)++] = item;
}

static char *arena_sprintf(pcomp *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *arena_sprintf(pcomp *c, const char *fmt, ...) {
  mesh_policy *p = c->p;
  if (!grow(c, (void **)&p->arena, p->narena, &p->carena, sizeof *p->arena)) return NULL;
  va_list ap;
  va_start(ap, fmt);
  char *s = mesh__vsprintf(c->ctx, fmt, ap);
  va_end(ap);
  if (!s) c->oom = true;
  else p->arena[p->narena++] = s;
  return s;
}

/* A snapshot clause from a document's clause and its serviceAccount refs. */
static void build_clause(pcomp *c, const mesh__pdoc *d, mesh__sclause *out) {
  out->authn = d->clause.authn;
  out->nets = d->clause.nets;
  out->nnets = d->clause.nnets;
  size_t n = d->clause.nids + d->nids;
  if (!n) return;
  if (!(out->ids = mesh__calloc(c->ctx, n, sizeof *out->ids))) {
    c->oom = true;
    return;
  }
  for (size_t i = 0; i < d->clause.nids; i++) out->ids[out->nids++] = d->clause.ids[i];
  for (size_t i = 0; i < d->nids; i++) {
    const mesh__ref *ref = &d->ids[i];
    mesh__idm *m = &out->ids[out->nids];
    if (ref->kind == MESH__REF_NAMESPACE) {
      m->type = MESH__ID_SUFFIX;
      m->s = arena_sprintf(c, ".%s.serviceaccount.identity.%s.%s", ref->ns, c->p->cp_ns, c->p->td);
    } else {
      m->type = MESH__ID_EXACT;
      m->s = arena_sprintf(c, "%s.%s.serviceaccount.identity.%s.%s", ref->name, ref->ns,
                           c->p->cp_ns, c->p->td);
    }
    if (!m->s) return;
    m->len = strlen(m->s);
    m->hash = mesh__hash(m->s, m->len);
    out->nids++;
  }
}

static int by_ns_name(const char *ans, const char *aname, const char *bns, const char *bname) {
  int cmp = strcmp(ans, bns);
  return cmp ? cmp : strcmp(aname, bname);
}

static int cmp_server(const void *pa, const void *pb) {
  const mesh__sserver *a = pa, *b = pb;
  return by_ns_name(a->doc->ns, a->doc->name, b->doc->ns, b->doc->name);
}

static int cmp_route(const void *pa, const void *pb) {
  const mesh__sroute *a = pa, *b = pb;
  return by_ns_name(a->doc->ns, a->doc->name, b->doc->ns, b->doc->name);
}

static mesh__sserver *find_server(mesh_policy *p, const char *ns, const char *name) {
  size_t lo = 0, hi = p->nservers;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int cmp = by_ns_name(ns, name, p->servers[mid].doc->ns, p->servers[mid].doc->name);
    if (cmp == 0) return &p->servers[mid];
    if (cmp < 0) hi = mid;
    else lo = mid + 1;
  }
  return NULL;
}

static mesh__sroute *find_route(mesh_policy *p, const char *ns, const char *name) {
  for (size_t i = 0; i < p->nroutes; i++)
    if (by_ns_name(ns, name, p->routes[i].doc->ns, p->routes[i].doc->name) == 0) return &p->routes[i];
  return NULL;
}

static const mesh__pdoc *find_doc(mesh_policy *p, int kind, const char *ns, const char *name) {
  for (size_t i = 0; i < p->ndocs; i++) {
    const mesh__pdoc *d = p->docs[i];
    if (d->kind == kind && strcmp(d->ns, ns) == 0 && strcmp(d->name, name) == 0) return d;
  }
  return NULL;
}

static void link_server_authz(pcomp *c, const mesh__pdoc *d, mesh__authz *a) {
  mesh_policy *p = c->p;
  a->kind = "serverauthorization";
  a->name = d->name;
  if (!(a->clauses = mesh__calloc(c->ctx, 1, sizeof *a->clauses))) {
    c->oom = true;
    return;
  }
  a->n = 1;
  build_clause(c, d, &a->clauses[0]);
  if (d->target.kind != MESH__REF_SERVER) return;
  size_t hits = 0;
  for (size_t i = 0; i < p->nservers; i++) {
    mesh__sserver *s = &p->servers[i];
    if (strcmp(s->doc->ns, d->ns) != 0) continue;
    bool sel = d->by_selector ? mesh__selector_matches(&d->srv_sel, s->doc->labels, s->doc->nlabels)
                              : strcmp(s->doc->name, d->target.name) == 0;
    if (!sel) continue;
    push(c, (void ***)&s->authz, &s->nauthz, a);
    hits++;
  }
  if (hits == 0 && d->by_selector)
    say(c->r, false, d, d->target.at, "no Server in namespace '%s' has labels that match this "
                                      "selector: the authorization applies to nothing", d->ns);
  else if (hits == 0)
    say(c->r, false, d, d->target.at, "there is no Server '%s' in namespace '%s': the "
                                      "authorization applies to nothing", d->target.name, d->ns);
}

static void link_authz_policy(pcomp *c, const mesh__pdoc *d, mesh__authz *a) {
  mesh_policy *p = c->p;
  a->kind = "authorizationpolicy";
  a->name = d->name;
  size_t n = d->nrefs ? d->nrefs : 1;
  if (!(a->clauses = mesh__calloc(c->ctx, n, sizeof *a->clauses))) {
    c->oom = true;
    return;
  }
  a->n = n; /* with no refs: one clause that lets everyone in */
  for (size_t i = 0; i < d->nrefs; i++) {
    const mesh__ref *ref = &d->refs[i];
    mesh__sclause *cl = &a->clauses[i];
    if (ref->kind == MESH__REF_SERVICE_ACCOUNT) {
      cl->authn = MESH__AUTHN_MESH;
      if (!(cl->ids = mesh__calloc(c->ctx, 1, sizeof *cl->ids))) {
        c->oom = true;
        return;
      }
      cl->ids[0].type = MESH__ID_EXACT;
      cl->ids[0].s = arena_sprintf(c, "%s.%s.serviceaccount.identity.%s.%s", ref->name, ref->ns,
                                   p->cp_ns, p->td);
      if (!cl->ids[0].s) return;
      cl->ids[0].len = strlen(cl->ids[0].s);
      cl->ids[0].hash = mesh__hash(cl->ids[0].s, cl->ids[0].len);
      cl->nids = 1;
      continue;
    }
    int kind = ref->kind == MESH__REF_MESHTLS ? MESH_KIND_MESH_TLS_AUTHENTICATION
                                               : MESH_KIND_NETWORK_AUTHENTICATION;
    const mesh__pdoc *target = ref->name ? find_doc(p, kind, ref->ns, ref->name) : NULL;
    if (!target) {
      a->never = true;
      if (ref->name)
        say(c->r, false, d, ref->at, "there is no %s '%s' in namespace '%s': this policy "
                                     "authorizes nothing until there is",
            kind_name(kind), ref->name, ref->ns);
      continue;
    }
    build_clause(c, target, cl);
  }
  switch (d->target.kind) {
  case MESH__REF_SERVER: {
    mesh__sserver *s = find_server(p, d->target.ns, d->target.name);
    if (s) push(c, (void ***)&s->authz, &s->nauthz, a);
    else
      say(c->r, false, d, d->target.at, "there is no Server '%s' in namespace '%s': the policy "
                                        "applies to nothing", d->target.name, d->target.ns);
    break;
  }
  case MESH__REF_HTTPROUTE: {
    mesh__sroute *rt = find_route(p, d->target.ns, d->target.name);
    if (rt) push(c, (void ***)&rt->authz, &rt->nauthz, a);
    else
      say(c->r, false, d, d->target.at, "there is no HTTPRoute '%s' in namespace '%s': the "
                                        "policy applies to nothing", d->target.name, d->target.ns);
    break;
  }
  case MESH__REF_NAMESPACE:
    for (size_t i = 0; i < p->nservers; i++)
      if (strcmp(p->servers[i].doc->ns, d->ns) == 0)
        push(c, (void ***)&p->servers[i].authz, &p->servers[i].nauthz, a);
    break;
  default: break;
  }
}

static void link_route(pcomp *c, mesh__sroute *rt) {
  const mesh__pdoc *d = rt->doc;
  for (size_t i = 0; i < d->nrefs; i++) {
    const mesh__ref *ref = &d->refs[i];
    if (ref->kind != MESH__REF_SERVER) continue;
    mesh__sserver *s = find_server(c->p, ref->ns, ref->name);
    if (s && s->doc->proto == MESH_POLICY_PROTO_GRPC)
      say(c->r, false, d, ref->at, "Server '%s' is gRPC: as in Linkerd, HTTPRoutes do not apply "
                                   "to it (GRPCRoute is not supported yet); ignored", ref->name);
    else if (s) push(c, (void ***)&s->routes, &s->nroutes, rt);
    else
      say(c->r, false, d, ref->at, "there is no Server '%s' in namespace '%s': the route applies "
                                   "to nothing", ref->name, ref->ns);
  }
}

static void flatten_routes(pcomp *c, mesh__sserver *s) {
  size_t n = 0;
  for (size_t r = 0; r < s->nroutes; r++)
    for (size_t i = 0; i < s->routes[r]->doc->nrules; i++) {
      size_t m = s->routes[r]->doc->rules[i].n;
      n += m ? m : 1;
    }
  if (!n) return;
  if (!(s->entries = mesh__calloc(c->ctx, n, sizeof *s->entries))) {
    c->oom = true;
    return;
  }
  for (size_t r = 0; r < s->nroutes; r++) {
    const mesh__pdoc *d = s->routes[r]->doc;
    for (size_t i = 0; i < d->nrules; i++) {
      const mesh__rule *ru = &d->rules[i];
      for (size_t k = 0; k < (ru->n ? ru->n : 1); k++)
        s->entries[s->nentries++] = (mesh__rentry){ru->n ? &ru->matches[k] : NULL, s->routes[r], (int32_t)i};
    }
  }
}

static void set_defaults(mesh_policy *p) {
  static const struct {
    int policy, authn;
    bool cluster;
  } defs[] = {{MESH_POLICY_DEFAULT_ALL_UNAUTHENTICATED, MESH__AUTHN_ANY, false},
              {MESH_POLICY_DEFAULT_ALL_AUTHENTICATED, MESH__AUTHN_MESH, false},
              {MESH_POLICY_DEFAULT_CLUSTER_AUTHENTICATED, MESH__AUTHN_MESH, true},
              {MESH_POLICY_DEFAULT_CLUSTER_UNAUTHENTICATED, MESH__AUTHN_ANY, true}};
  p->any_id.type = MESH__ID_ANY;
  for (size_t i = 0; i < 4; i++) {
    mesh__sclause *cl = &p->default_clauses[i];
    cl->authn = defs[i].authn;
    if (cl->authn == MESH__AUTHN_MESH) {
      cl->ids = &p->any_id;
      cl->nids = 1;
    }
    if (defs[i].cluster) {
      cl->nets = p->cluster;
      cl->nnets = p->ncluster;
    }
    mesh__authz *a = &p->defaults[defs[i].policy];
    a->clauses = cl;
    a->n = 1;
  }
  for (int i = 1; i <= MESH_POLICY_DEFAULT_AUDIT; i++) {
    p->defaults[i].kind = "default";
    p->defaults[i].name = default_names[i];
  }
  p->defaults[MESH_POLICY_DEFAULT_DENY].never = true;
  p->defaults[MESH_POLICY_DEFAULT_AUDIT].never = true; /* audit is a fallback, not a match */
  mesh__cidr_parse("127.0.0.0/8", 11, &p->local[0].net, NULL, &(const char *){NULL});
  mesh__cidr_parse("::1/128", 7, &p->local[1].net, NULL, &(const char *){NULL});
  p->localhost_clause.authn = MESH__AUTHN_ANY;
  p->localhost_clause.nets = p->local;
  p->localhost_clause.nnets = 2;
  p->localhost.kind = "default";
  p->localhost.name = "localhost";
  p->localhost.clauses = &p->localhost_clause;
  p->localhost.n = 1;
}

int mesh_policy_compile(mesh_ctx *ctx, const mesh_manifest *const *manifests, size_t n,
                        const mesh_policy_opts *opts, mesh_diags *diags, mesh_policy **ret) {
  if (!ctx || (!manifests && n) || !ret) return MESH_ERR_INVALID;
  mesh_policy_opts dflt;
  if (!opts) {
    mesh_policy_opts *o = NULL;
    int rc = mesh_policy_opts_new(ctx, &o);
    if (rc < 0) return rc;
    dflt = *o;
    mesh_policy_opts_free(o);
    opts = &dflt;
  }
  mesh_policy *p = mesh__calloc(ctx, 1, sizeof *p);
  if (!p) return MESH_ERR_NOMEM;
  p->ctx = ctx;
  atomic_init(&p->refs, 1u);
  p->default_policy = opts->default_policy;
  p->allow_localhost = opts->allow_localhost;
  memcpy(p->cluster, opts->nets, opts->nnets * sizeof *opts->nets);
  p->ncluster = opts->nnets;
  memcpy(p->cp_ns, opts->cp_ns, sizeof p->cp_ns);
  memcpy(p->td, opts->td, sizeof p->td);
  set_defaults(p);

  mesh__reader r = {.ctx = ctx, .diags = diags, .file = "<policy>"};
  pcomp c = {.r = &r, .ctx = ctx, .p = p};
  size_t total = 0, nsrv = 0, nrt = 0, naz = 0;
  for (size_t m = 0; m < n; m++)
    for (size_t i = 0; manifests[m] && i < mesh_manifest_count(manifests[m]); i++)
      if (mesh__manifest_pdoc(manifests[m], i)) total++;
  if (total && !(p->docs = mesh__calloc(ctx, total, sizeof *p->docs))) c.oom = true;
  for (size_t m = 0; !c.oom && m < n; m++)
    for (size_t i = 0; manifests[m] && i < mesh_manifest_count(manifests[m]); i++) {
      mesh__pdoc *d = mesh__manifest_pdoc(manifests[m], i);
      if (!d || !d->ok) continue;
      p->docs[p->ndocs++] = mesh__pdoc_ref(d);
      nsrv += d->kind == MESH_KIND_SERVER;
      nrt += d->kind == MESH_KIND_HTTP_ROUTE;
      naz += d->kind == MESH_KIND_SERVER_AUTHORIZATION || d->kind == MESH_KIND_AUTHORIZATION_POLICY;
    }
  if (!c.oom) mesh__policy_check_docs(&r, p->docs, p->ndocs);
  if (!c.oom && nsrv && !(p->servers = mesh__calloc(ctx, nsrv, sizeof *p->servers))) c.oom = true;
  if (!c.oom && nrt && !(p->routes = mesh__calloc(ctx, nrt, sizeof *p->routes))) c.oom = true;
  if (!c.oom && naz && !(p->authzs = mesh__calloc(ctx, naz, sizeof *p->authzs))) c.oom = true;
  for (size_t i = 0; !c.oom && i < p->ndocs; i++) {
    const mesh__pdoc *d = p->docs[i];
    if (d->kind == MESH_KIND_SERVER) p->servers[p->nservers++].doc = d;
    if (d->kind == MESH_KIND_HTTP_ROUTE) p->routes[p->nroutes++].doc = d;
  }
  if (p->nservers) qsort(p->servers, p->nservers, sizeof *p->servers, cmp_server);
  if (p->nroutes) qsort(p->routes, p->nroutes, sizeof *p->routes, cmp_route);
  for (size_t i = 0; !c.oom && i < p->nroutes; i++) link_route(&c, &p->routes[i]);
  for (size_t i = 0; !c.oom && i < p->nservers; i++) flatten_routes(&c, &p->servers[i]);
  for (size_t i = 0; !c.oom && i < p->ndocs; i++) {
    const mesh__pdoc *d = p->docs[i];
    if (d->kind == MESH_KIND_SERVER_AUTHORIZATION) link_server_authz(&c, d, &p->authzs[p->nauthzs++]);
    else if (d->kind == MESH_KIND_AUTHORIZATION_POLICY)
      link_authz_policy(&c, d, &p->authzs[p->nauthzs++]);
  }
  int rc = c.oom || r.nomem ? MESH_ERR_NOMEM : r.errors ? MESH_ERR_PARSE : 0;
  if (rc < 0) {
    mesh_policy_unref(p);
    return rc;
  }
  *ret = p;
  return 0;
}

size_t mesh_policy_server_count(const mesh_policy *p) { return p ? p->nservers : 0; }
size_t mesh_policy_authorization_count(const mesh_policy *p) { return p ? p->nauthzs : 0; }
size_t mesh_policy_route_count(const mesh_policy *p) { return p ? p->nroutes : 0; }
