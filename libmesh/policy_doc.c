/* libmesh policy documents: one Server, authorization, authentication or HTTPRoute compiled and checked. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <mesh/error.h>
#include <mesh/identity.h>
#include "ctx_internal.h"
#include "manifest_internal.h"
#include "names_internal.h"
#include "node_internal.h"
#include "policy_internal.h"

/* Bounds on one document, so that a junk file cannot make decisions slow. */
#define MAX_ITEMS 4096

typedef struct {
  mesh__reader *r;
  mesh_ctx *ctx;
  mesh__pdoc *d;
  bool oom;
} compiler;

/* ---- networks ---- */

int mesh__cidr_parse(const char *s, size_t len, mesh__cidr *out, bool *host_bits, const char **why) {
  char buf[64];
  const char *slash = memchr(s, '/', len);
  size_t alen = slash ? (size_t)(slash - s) : len;
  if (alen == 0 || alen >= sizeof buf) return *why = "expected an address such as 10.0.0.0", MESH_ERR_PARSE;
  memcpy(buf, s, alen);
  buf[alen] = '\0';
  mesh__cidr c = {0};
  unsigned max;
  if (inet_pton(AF_INET, buf, c.addr) == 1) {
    c.family = 4;
    max = 32;
  } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
    c.family = 6;
    max = 128;
  } else {
    return *why = "not an IPv4 or IPv6 address", MESH_ERR_PARSE;
  }
  unsigned bits = max;
  if (slash) {
    size_t i = alen + 1;
    if (i == len || len - i > 3) return *why = "expected a prefix length after '/'", MESH_ERR_PARSE;
    bits = 0;
    for (; i < len; i++) {
      if (s[i] < '0' || s[i] > '9') return *why = "the prefix length is not a number", MESH_ERR_PARSE;
      bits = bits * 10 + (unsigned)(s[i] - '0');
    }
    if (bits > max)
      return *why = c.family == 4 ? "an IPv4 prefix length is at most 32"
                                  : "an IPv6 prefix length is at most 128",
             MESH_ERR_PARSE;
  }
  c.bits = (uint8_t)bits;
  bool extra = false;
  for (unsigned b = bits; b < max; b++) {
    uint8_t mask = (uint8_t)(0x80u >> (b % 8));
    if (c.addr[b / 8] & mask) extra = true;
    c.addr[b / 8] &= (uint8_t)~mask;
  }
  if (host_bits) *host_bits = extra;
  *out = c;
  return 0;
}

static void *c_calloc(compiler *c, size_t n, size_t size) {
  void *p = mesh__calloc(c->ctx, n ? n : 1, size);
  if (!p) c->oom = true;
  return p;
}

static char *c_strdup(compiler *c, const char *s) {
  char *d = mesh__strdup(c->ctx, s);
  if (!d) c->oom = true;
  return d;
}

static char *c_strndup(compiler *c, const char *s, size_t n) {
  char *d = mesh__strndup(c->ctx, s, n);
  if (!d) c->oom = true;
  return d;
}

/* A list that must not be absurdly long; false (with an error) otherwise. */
static bool want_list(compiler *c, const mesh__node *v) {
  if (!mesh__want_seq(c->r, v)) return false;
  if (v->n > MAX_ITEMS) {
    mesh__error(c->r, v, "at most %d items are allowed, found %zu", MAX_ITEMS, v->n);
    return false;
  }
  return true;
}

static bool read_cidr(compiler *c, const mesh__node *map, const char *key, mesh__cidr *out) {
  const char *s = NULL;
  if (!mesh__read_string(c->r, map, key, true, &s) || !s) return false;
  const mesh__node *v = mesh__node_get(map, key);
  bool host = false;
  const char *why;
  if (mesh__cidr_parse(s, v->len, out, &host, &why) < 0) {
    mesh__error(c->r, v, "invalid CIDR '%s': %s", s, why);
    return false;
  }
  if (host) {
    char a[INET6_ADDRSTRLEN];
    inet_ntop(out->family == 4 ? AF_INET : AF_INET6, out->addr, a, sizeof a);
    mesh__warn(c->r, v, "'%s' has host bits set past the prefix; it means %s/%u", s, a,
               (unsigned)out->bits);
  }
  return true;
}

static const char *const network_keys[] = {"cidr", "except", NULL};

static void compile_networks(compiler *c, const mesh__node *v, mesh__clause *cl) {
  if (!want_list(c, v)) return;
  if (v->n == 0) {
    mesh__error(c->r, v, "an empty networks list lets no one in (leave it out to mean every network)");
    return;
  }
  if (!(cl->nets = c_calloc(c, v->n, sizeof *cl->nets))) return;
  for (size_t i = 0; i < v->n; i++) {
    const mesh__node *item = v->kids[i];
    if (!mesh__want_map(c->r, item)) continue;
    mesh__check_keys(c->r, item, network_keys);
    mesh__network *n = &cl->nets[cl->nnets];
    if (!read_cidr(c, item, "cidr", &n->net)) continue;
    cl->nnets++;
    const mesh__node *ex = mesh__node_get(item, "except");
    if (!ex || !want_list(c, ex) || ex->n == 0) continue;
    if (!(n->except = c_calloc(c, ex->n, sizeof *n->except))) return;
    for (size_t k = 0; k < ex->n; k++) {
      const mesh__node *e = ex->kids[k];
      if (!mesh__want_scalar(c->r, e)) continue;
      mesh__cidr x;
      bool host = false;
      const char *why;
      if (mesh__cidr_parse(e->str, e->len, &x, &host, &why) < 0) {
        mesh__error(c->r, e, "invalid CIDR '%s': %s", e->str, why);
        continue;
      }
      if (!mesh__cidr_within(&x, &n->net))
        mesh__warn(c->r, e, "'%s' is not inside %s, so it excludes nothing", e->str,
                   mesh__node_get(item, "cidr")->str);
      n->except[n->nexcept++] = x;
    }
  }
}

/* ---- identities ---- */

static bool spiffe_path_ok(const char *p, size_t n) {
  /* "/seg/seg...": segments of [A-Za-z0-9._-], none empty, "." or "..". */
  size_t i = 0;
  while (i < n) {
    if (p[i] != '/') return false;
    size_t j = ++i;
    while (j < n && p[j] != '/') {
      char ch = p[j];
      if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '.' || ch == '_' || ch == '-'))
        return false;
      j++;
    }
    if (j == i || (j - i == 1 && p[i] == '.') || (j - i == 2 && p[i] == '.' && p[i + 1] == '.'))
      return false;
    i = j;
  }
  return true;
}

/* "*", "*.suffix", a DNS-like name, "spiffe://td/path" or "spiffe://td/path/ *". */
static bool compile_identity(compiler *c, const mesh__node *v, mesh__idm *out) {
  if (!mesh__want_scalar(c->r, v)) return false;
  const char *s = v->str;
  size_t n = v->len;
  if (n == 1 && s[0] == '*') {
    out->type = MESH__ID_ANY;
    return true;
  }
  if (n > 2 && s[0] == '*' && s[1] == '.') {
    if (!mesh__dns_name_ok(s + 2, n - 2)) {
      mesh__error(c->r, v, "'%s' is not a valid identity suffix (\"*.\" and a DNS name such as "
                           "*.production.serviceaccount.identity.linkerd.cluster.local)", s);
      return false;
    }
    out->type = MESH__ID_SUFFIX;
    out->s = c_strndup(c, s + 1, n - 1);
    out->len = n - 1;
    return out->s != NULL;
  }
  if (n >= 9 && strncmp(s, "spiffe://", 9) == 0) {
    const char *td = s + 9, *slash = memchr(td, '/', n - 9);
    size_t tdlen = slash ? (size_t)(slash - td) : n - 9;
    bool prefix = n >= 2 && s[n - 1] == '*' && s[n - 2] == '/';
    size_t plen = slash ? (size_t)(s + n - slash) - (prefix ? 2 : 0) : 0;
    if (tdlen == 0 || !mesh__dns_name_ok(td, tdlen) || (slash && plen && !spiffe_path_ok(slash, plen)) ||
        (!slash && prefix) || n > MESH_IDENTITY_SPIFFE_MAX) {
      mesh__error(c->r, v, "'%s' is not a valid SPIFFE ID (spiffe://<trust domain>/<path>, "
                           "optionally ending in /* to match every ID below it)", s);
      return false;
    }
    out->type = prefix ? MESH__ID_SPIFFE_PREFIX : MESH__ID_SPIFFE;
    out->len = prefix ? n - 1 : n;
    out->s = c_strndup(c, s, out->len);
    out->hash = mesh__hash(s, out->len);
    return out->s != NULL;
  }
  if (strchr(s, '*')) {
    mesh__error(c->r, v, "'%s': a wildcard is only allowed as \"*\" or a leading \"*.\"", s);
    return false;
  }
  if (!mesh__dns_name_ok(s, n)) {
    mesh__error(c->r, v, "'%s' is not a valid identity (a DNS-like name such as "
                         "web.production.serviceaccount.identity.linkerd.cluster.local, or a "
                         "spiffe:// ID)", s);
    return false;
  }
  out->type = MESH__ID_EXACT;
  out->s = c_strndup(c, s, n);
  out->len = n;
  out->hash = mesh__hash(s, n);
  return out->s != NULL;
}

static void compile_identities(compiler *c, const mesh__node *v, mesh__clause *cl) {
  if (!want_list(c, v) || v->n == 0) return;
  if (!(cl->ids = c_calloc(c, v->n, sizeof *cl->ids))) return;
  for (size_t i = 0; i < v->n; i++)
    if (compile_identity(c, v->kids[i], &cl->ids[cl->nids])) cl->nids++;
}

/* A list of {name, namespace} (serviceAccounts) or {kind, name, namespace}
 * (identityRefs) into d->ids. */
static void compile_sa_refs(compiler *c, const mesh__node *v, bool with_kind) {
  static const char *const sa_keys[] = {"name", "namespace", NULL};
  static const char *const ref_keys[] = {"group", "kind", "name", "namespace", NULL};
  if (!want_list(c, v) || v->n == 0) return;
  mesh__pdoc *d = c->d;
  if (!(d->ids = c_calloc(c, v->n, sizeof *d->ids))) return;
  for (size_t i = 0; i < v->n; i++) {
    const mesh__node *item = v->kids[i];
    if (!mesh__want_map(c->r, item)) continue;
    mesh__check_keys(c->r, item, with_kind ? ref_keys : sa_keys);
    const char *name = NULL, *ns = d->ns, *kind = "ServiceAccount";
    bool ok = mesh__read_string(c->r, item, "name", true, &name);
    ok = mesh__read_string(c->r, item, "namespace", false, &ns) && ok;
    if (with_kind) ok = mesh__read_string(c->r, item, "kind", true, &kind) && ok;
    if (!ok || !name) continue;
    int k;
    if (strcmp(kind, "ServiceAccount") == 0) k = MESH__REF_SERVICE_ACCOUNT;
    else if (strcmp(kind, "Namespace") == 0) k = MESH__REF_NAMESPACE;
    else {
      mesh__error(c->r, mesh__node_get(item, "kind"),
                  "identityRefs kind must be ServiceAccount or Namespace, found '%s'", kind);
      continue;
    }
    if (!mesh__dns_label_ok(name, strlen(name)) || !mesh__dns_label_ok(ns, strlen(ns))) {
      mesh__error(c->r, item, "'%s/%s' is not a valid %s (namespace and name are DNS labels)", ns,
                  name, kind);
      continue;
    }
    if (k == MESH__REF_NAMESPACE) ns = name;
    mesh__ref *ref = &d->ids[d->nids];
    ref->kind = k;
    ref->at = item;
    ref->name = c_strdup(c, name);
    ref->ns = c_strdup(c, ns);
    d->nids++; /* freed with the document, whole or not */
  }
}

/* ---- selectors ---- */

static bool label_value_ok(const char *s, size_t n) {
  if (n > 63) return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    bool alnum = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9');
    if (!alnum && !((ch == '-' || ch == '_' || ch == '.') && i > 0 && i + 1 < n)) return false;
  }
  return true;
}

static bool label_key_ok(const char *s, size_t n) {
  const char *slash = memchr(s, '/', n);
  if (slash) {
    size_t plen = (size_t)(slash - s);
    if (plen == 0 || !mesh__dns_name_ok(s, plen)) return false;
    s = slash + 1;
    n -= plen + 1;
  }
  return n > 0 && label_value_ok(s, n);
}

static const char *const selector_keys[] = {"matchLabels", "matchExpressions", NULL};
static const char *const expr_keys[] = {"key", "operator", "values", NULL};

static void compile_selector(compiler *c, const mesh__node *v, mesh__selector *sel) {
  if (!mesh__want_map(c->r, v)) return;
  mesh__check_keys(c->r, v, selector_keys);
  const mesh__node *ml = mesh__node_get(v, "matchLabels"), *me = mesh__node_get(v, "matchExpressions");
  if (ml && !mesh__want_map(c->r, ml)) ml = NULL;
  if (me && !want_list(c, me)) me = NULL;
  size_t cap = (ml ? ml->n : 0) + (me ? me->n : 0);
  if (cap == 0) return; /* {} selects every workload, as in Kubernetes */
  if (cap > MAX_ITEMS) {
    mesh__error(c->r, v, "at most %d selector requirements are allowed", MAX_ITEMS);
    return;
  }
  if (!(sel->reqs = c_calloc(c, cap, sizeof *sel->reqs))) return;
  for (size_t i = 0; ml && i < ml->n; i++) {
    const mesh__node *k = ml->kids[2 * i], *val = ml->kids[2 * i + 1];
    if (!label_key_ok(k->str, k->len)) {
      mesh__error(c->r, val, "'%s' is not a valid label key", k->str);
      continue;
    }
    if (!mesh__want_scalar(c->r, val)) continue;
    if (!label_value_ok(val->str, val->len)) {
      mesh__error(c->r, val, "'%s' is not a valid label value (at most 63 of [A-Za-z0-9._-], "
                             "alphanumeric at both ends)", val->str);
      continue;
    }
    mesh__selreq *q = &sel->reqs[sel->n];
    q->op = MESH__SEL_IN;
    q->key = c_strndup(c, k->str, k->len);
    q->values = c_calloc(c, 1, sizeof *q->values);
    if (!q->key || !q->values || !(q->values[0] = c_strndup(c, val->str, val->len))) {
      sel->n++; /* freed with the rest */
      continue;
    }
    q->nvalues = 1;
    sel->n++;
  }
  for (size_t i = 0; me && i < me->n; i++) {
    const mesh__node *e = me->kids[i];
    if (!mesh__want_map(c->r, e)) continue;
    mesh__check_keys(c->r, e, expr_keys);
    const char *key = NULL, *op = NULL;
    bool ok = mesh__read_string(c->r, e, "key", true, &key);
    ok = mesh__read_string(c->r, e, "operator", true, &op) && ok;
    if (!ok || !key || !op) continue;
    if (!label_key_ok(key, strlen(key))) {
      mesh__error(c->r, mesh__node_get(e, "key"), "'%s' is not a valid label key", key);
      continue;
    }
    int o;
    if (strcmp(op, "In") == 0) o = MESH__SEL_IN;
    else if (strcmp(op, "NotIn") == 0) o = MESH__SEL_NOT_IN;
    else if (strcmp(op, "Exists") == 0) o = MESH__SEL_EXISTS;
    else if (strcmp(op, "DoesNotExist") == 0) o = MESH__SEL_NOT_EXISTS;
    else {
      mesh__error(c->r, mesh__node_get(e, "operator"),
                  "unknown operator '%s' (known: In, NotIn, Exists, DoesNotExist)", op);
      continue;
    }
    const mesh__node *vals = mesh__node_get(e, "values");
    bool want_values = o == MESH__SEL_IN || o == MESH__SEL_NOT_IN;
    if (want_values && (!vals || (vals->type == MESH_NODE_SEQ && vals->n == 0))) {
      mesh__error(c->r, vals ? vals : e, "operator %s needs a non-empty 'values' list", op);
      continue;
    }
    if (!want_values && vals && !(vals->type == MESH_NODE_SEQ && vals->n == 0)) {
      mesh__error(c->r, vals, "operator %s takes no values", op);
      continue;
    }
    mesh__selreq *q = &sel->reqs[sel->n++];
    q->op = o;
    q->key = c_strdup(c, key);
    if (!want_values || !want_list(c, vals)) continue;
    if (!(q->values = c_calloc(c, vals->n, sizeof *q->values))) continue;
    for (size_t k = 0; k < vals->n; k++) {
      const mesh__node *x = vals->kids[k];
      if (!mesh__want_scalar(c->r, x)) continue;
      if (!label_value_ok(x->str, x->len)) {
        mesh__error(c->r, x, "'%s' is not a valid label value", x->str);
        continue;
      }
      if ((q->values[q->nvalues] = c_strndup(c, x->str, x->len))) q->nvalues++;
    }
  }
}

/* ---- Server ---- */

static const char *const proto_names[] = {"unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS", NULL};

static bool port_name_ok(const char *s, size_t n) {
  bool letter = false;
  if (n == 0 || n > 15 || s[0] == '-' || s[n - 1] == '-') return false;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch >= 'a' && ch <= 'z') letter = true;
    else if (!(ch >= '0' && ch <= '9') && !(ch == '-' && s[i + 1] != '-')) return false;
  }
  return letter;
}

static void compile_port(compiler *c, const mesh__node *spec) {
  mesh__pdoc *d = c->d;
  const mesh__node *v = mesh__node_get(spec, "port");
  d->port_at = v;
  if (!v) {
    mesh__error(c->r, spec, "missing required field 'port'");
    return;
  }
  if (!mesh__want_scalar(c->r, v)) return;
  bool digits = v->len > 0 && strspn(v->str, "0123456789") == v->len;
  if (digits && !v->quoted) {
    int64_t port = 0;
    if (mesh__read_int(c->r, spec, "port", 1, 65535, &port)) d->port = (uint32_t)port;
    return;
  }
  if (!port_name_ok(v->str, v->len)) {
    mesh__error(c->r, v, digits ? "'%s' is quoted: a port number is written without quotes"
                                : "'%s' is not a port number (1-65535) or a port name (at most 15 "
                                  "of [a-z0-9-], with a letter)",
                v->str);
    return;
  }
  d->port_name = c_strndup(c, v->str, v->len);
}

static int default_from_node(compiler *c, const mesh__node *v) {
  if (!mesh__want_scalar(c->r, v)) return -1;
  int p = mesh_policy_default_parse(v->str);
  if (p < 0)
    mesh__error(c->r, v, "unknown accessPolicy '%s' (known: deny, audit, all-authenticated, "
                         "all-unauthenticated, cluster-authenticated, cluster-unauthenticated)",
                v->str);
  return p;
}

static void compile_labels(compiler *c) {
  mesh__pdoc *d = c->d;
  const mesh__node *ml = mesh__node_get(mesh__node_get(d->root, "metadata"), "labels");
  if (!ml || !mesh__want_map(c->r, ml) || ml->n == 0) return;
  if (ml->n > MAX_ITEMS) return;
  if (!(d->labels = c_calloc(c, ml->n, sizeof *d->labels))) return;
  for (size_t i = 0; i < ml->n; i++) {
    const mesh__node *k = ml->kids[2 * i], *v = ml->kids[2 * i + 1];
    if (!mesh__want_scalar(c->r, v)) continue;
    mesh_policy_label *l = &d->labels[d->nlabels];
    l->name = c_strndup(c, k->str, k->len);
    l->value = c_strndup(c, v->str, v->len);
    d->nlabels++;
  }
}

static void compile_server(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"podSelector", "externalWorkloadSelector", "port",
                                     "proxyProtocol", "accessPolicy", NULL};
  mesh__pdoc *d = c->d;
  d->access = MESH_POLICY_DEFAULT_DENY;
  mesh__check_keys(c->r, spec, keys);
  const mesh__node *ps = mesh__node_get(spec, "podSelector"),
                   *ws = mesh__node_get(spec, "externalWorkloadSelector");
  if (ps && ws)
    mesh__error(c->r, ws, "a Server selects with podSelector or externalWorkloadSelector, not both");
  else if (!ps && !ws)
    mesh__error(c->r, spec, "missing required field 'podSelector'");
  else
    compile_selector(c, ps ? ps : ws, &d->sel);
  compile_port(c, spec);
  const mesh__node *v = mesh__node_get(spec, "proxyProtocol");
  if (v && mesh__want_scalar(c->r, v)) {
    size_t i = 0;
    for (; proto_names[i]; i++)
      if (strcmp(proto_names[i], v->str) == 0) break;
    if (proto_names[i]) {
      d->proto = (int)i;
    } else {
      size_t k = 0;
      for (; proto_names[k]; k++)
        if (strcasecmp(proto_names[k], v->str) == 0) break;
      if (proto_names[k])
        mesh__error(c->r, v, "unknown proxyProtocol '%s' (did you mean '%s'? known: unknown, "
                             "HTTP/1, HTTP/2, gRPC, opaque, TLS)", v->str, proto_names[k]);
      else
        mesh__error(c->r, v, "unknown proxyProtocol '%s' (known: unknown, HTTP/1, HTTP/2, gRPC, "
                             "opaque, TLS)", v->str);
    }
  }
  if ((v = mesh__node_get(spec, "accessPolicy"))) {
    int p = default_from_node(c, v);
    if (p > 0) d->access = p;
  }
  compile_labels(c);
}

/* ---- ServerAuthorization ---- */

static void compile_server_authz(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"server", "client", NULL};
  static const char *const server_keys[] = {"name", "selector", NULL};
  static const char *const client_keys[] = {"meshTLS", "unauthenticated", "networks", NULL};
  static const char *const mtls_keys[] = {"unauthenticatedTLS", "identities", "serviceAccounts",
                                          NULL};
  mesh__pdoc *d = c->d;
  size_t errors0 = c->r->errors;
  mesh__check_keys(c->r, spec, keys);
  const mesh__node *srv = mesh__node_get(spec, "server"), *cl = mesh__node_get(spec, "client");
  if (!srv) mesh__error(c->r, spec, "missing required field 'server'");
  else if (mesh__want_map(c->r, srv)) {
    mesh__check_keys(c->r, srv, server_keys);
    const mesh__node *sel = mesh__node_get(srv, "selector");
    const char *name = NULL;
    mesh__read_string(c->r, srv, "name", false, &name);
    if (name && sel) {
      mesh__error(c->r, sel, "server is chosen by name or by selector, not both");
    } else if (name) {
      d->target.kind = MESH__REF_SERVER;
      d->target.name = c_strdup(c, name);
      d->target.ns = c_strdup(c, d->ns);
      d->target.at = mesh__node_get(srv, "name");
    } else if (sel) {
      d->by_selector = true;
      d->target.kind = MESH__REF_SERVER;
      d->target.at = sel;
      compile_selector(c, sel, &d->srv_sel);
    } else {
      mesh__error(c->r, srv, "server needs a name or a selector");
    }
  }
  if (!cl) {
    mesh__error(c->r, spec, "missing required field 'client'");
    return;
  }
  if (!mesh__want_map(c->r, cl)) return;
  mesh__check_keys(c->r, cl, client_keys);
  bool unauth = false;
  mesh__read_bool(c->r, cl, "unauthenticated", &unauth);
  const mesh__node *mtls = mesh__node_get(cl, "meshTLS"), *nets = mesh__node_get(cl, "networks");
  if (nets) compile_networks(c, nets, &d->clause);
  if (unauth) {
    d->clause.authn = MESH__AUTHN_ANY;
    if (mtls)
      mesh__warn(c->r, mtls, "ignored: 'unauthenticated: true' already lets every client in, "
                             "with or without TLS");
    return;
  }
  if (!mtls) {
    mesh__error(c->r, cl, "client must set 'meshTLS' or 'unauthenticated: true'; as written it "
                          "authorizes no one");
    return;
  }
  if (!mesh__want_map(c->r, mtls)) return;
  mesh__check_keys(c->r, mtls, mtls_keys);
  bool tls = false;
  mesh__read_bool(c->r, mtls, "unauthenticatedTLS", &tls);
  const mesh__node *ids = mesh__node_get(mtls, "identities"),
                   *sas = mesh__node_get(mtls, "serviceAccounts");
  if (tls) {
    d->clause.authn = MESH__AUTHN_TLS;
    if (ids || sas)
      mesh__warn(c->r, ids ? ids : sas, "ignored: 'unauthenticatedTLS: true' already lets in "
                                        "every TLS client, whatever its identity");
    return;
  }
  d->clause.authn = MESH__AUTHN_MESH;
  if (ids) compile_identities(c, ids, &d->clause);
  if (sas) compile_sa_refs(c, sas, false);
  if (d->clause.nids + d->nids == 0 && c->r->errors == errors0)
    mesh__error(c->r, mtls, "meshTLS names no identities or serviceAccounts (and does not set "
                            "unauthenticatedTLS): it authorizes no one");
}

/* ---- AuthorizationPolicy ---- */

static const char *const ref_keys[] = {"group", "kind", "name", "namespace", "sectionName", "port",
                                       NULL};

static bool group_is(const char *g, const char *want) { return strcmp(g, want) == 0; }

static void compile_ref(compiler *c, const mesh__node *v, bool target, mesh__ref *out) {
  out->kind = MESH__REF_OTHER;
  out->at = v;
  if (!mesh__want_map(c->r, v)) return;
  mesh__check_keys(c->r, v, ref_keys);
  const char *group = "", *kind = NULL, *name = NULL, *ns = c->d->ns;
  bool ok = mesh__read_string(c->r, v, "group", false, &group);
  ok = mesh__read_string(c->r, v, "kind", true, &kind) && ok;
  ok = mesh__read_string(c->r, v, "name", true, &name) && ok;
  ok = mesh__read_string(c->r, v, "namespace", false, &ns) && ok;
  if (!ok || !kind || !name) return;
  const mesh__node *kn = mesh__node_get(v, "kind");
  int k = MESH__REF_OTHER;
  bool core = !*group || group_is(group, "core");
  if (target) {
    if (strcasecmp(kind, "Server") == 0 && group_is(group, "policy.linkerd.io")) k = MESH__REF_SERVER;
    else if (strcasecmp(kind, "HTTPRoute") == 0 &&
             (group_is(group, "policy.linkerd.io") || group_is(group, "gateway.networking.k8s.io")))
      k = MESH__REF_HTTPROUTE;
    else if (strcmp(kind, "Namespace") == 0 && core) k = MESH__REF_NAMESPACE;
    else {
      mesh__error(c->r, kn, "targetRef must be a Server or HTTPRoute (group policy.linkerd.io or "
                            "gateway.networking.k8s.io) or a Namespace, found %s%s%s",
                  group, *group ? "/" : "", kind);
      return;
    }
  } else {
    if (strcmp(kind, "MeshTLSAuthentication") == 0 && group_is(group, "policy.linkerd.io"))
      k = MESH__REF_MESHTLS;
    else if (strcmp(kind, "NetworkAuthentication") == 0 && group_is(group, "policy.linkerd.io"))
      k = MESH__REF_NETWORK;
    else if (strcmp(kind, "ServiceAccount") == 0 && core) k = MESH__REF_SERVICE_ACCOUNT;
    else {
      mesh__error(c->r, kn, "requiredAuthenticationRefs must name a MeshTLSAuthentication or "
                            "NetworkAuthentication (group policy.linkerd.io) or a ServiceAccount, "
                            "found %s%s%s", group, *group ? "/" : "", kind);
      return;
    }
  }
  if (k == MESH__REF_NAMESPACE && strcmp(name, c->d->ns) != 0) {
    mesh__error(c->r, mesh__node_get(v, "name"), "an AuthorizationPolicy may only target its own "
                                                 "namespace ('%s'), found '%s'", c->d->ns, name);
    return;
  }
  if (target && strcmp(ns, c->d->ns) != 0) {
    mesh__error(c->r, mesh__node_get(v, "namespace"), "targetRef must be in the policy's own "
                                                      "namespace ('%s')", c->d->ns);
    return;
  }
  out->kind = k;
  out->name = c_strdup(c, name);
  out->ns = c_strdup(c, ns);
}

static void compile_authz_policy(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"targetRef", "requiredAuthenticationRefs", NULL};
  mesh__pdoc *d = c->d;
  mesh__check_keys(c->r, spec, keys);
  const mesh__node *t = mesh__node_get(spec, "targetRef"),
                   *refs = mesh__node_get(spec, "requiredAuthenticationRefs");
  d->target.kind = MESH__REF_OTHER;
  if (!t) mesh__error(c->r, spec, "missing required field 'targetRef'");
  else compile_ref(c, t, true, &d->target);
  if (!refs) {
    mesh__error(c->r, spec, "missing required field 'requiredAuthenticationRefs' (an empty list "
                            "lets every client in)");
    return;
  }
  if (!want_list(c, refs)) return;
  if (refs->n == 0) {
    mesh__warn(c->r, refs, "no required authentications: every client is authorized");
    return;
  }
  if (!(d->refs = c_calloc(c, refs->n, sizeof *d->refs))) return;
  d->nrefs = refs->n;
  for (size_t i = 0; i < refs->n; i++) compile_ref(c, refs->kids[i], false, &d->refs[i]);
}

/* ---- MeshTLSAuthentication, NetworkAuthentication ---- */

static void compile_meshtls(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"identities", "identityRefs", NULL};
  mesh__pdoc *d = c->d;
  size_t errors0 = c->r->errors;
  mesh__check_keys(c->r, spec, keys);
  d->clause.authn = MESH__AUTHN_MESH;
  const mesh__node *ids = mesh__node_get(spec, "identities"),
                   *refs = mesh__node_get(spec, "identityRefs");
  if (ids && refs)
    mesh__error(c->r, refs, "set identities or identityRefs, not both");
  if (ids) compile_identities(c, ids, &d->clause);
  if (refs) compile_sa_refs(c, refs, true);
  if (!ids && !refs) mesh__error(c->r, spec, "missing required field 'identities' or 'identityRefs'");
  else if (d->clause.nids + d->nids == 0 && c->r->errors == errors0)
    mesh__error(c->r, ids ? ids : refs, "no identities: this authentication matches no client");
}

static void compile_netauthn(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"networks", NULL};
  mesh__check_keys(c->r, spec, keys);
  const mesh__node *nets = mesh__node_get(spec, "networks");
  c->d->clause.authn = MESH__AUTHN_ANY;
  if (!nets) mesh__error(c->r, spec, "missing required field 'networks'");
  else compile_networks(c, nets, &c->d->clause);
}

/* ---- HTTPRoute ---- */

static bool is_tchar(char ch) {
  return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
         (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static bool compile_regex(compiler *c, const mesh__node *v, mesh__regex **out) {
  char why[256];
  size_t off = 0;
  int rc = mesh__regex_compile(c->ctx, v->str, v->len, out, why, sizeof why, &off);
  if (rc == MESH_ERR_NOMEM) c->oom = true;
  else if (rc < 0) mesh__error(c->r, v, "invalid regular expression '%s': %s (at offset %zu)", v->str, why, off);
  return rc == 0;
}

static void compile_kv(compiler *c, const mesh__node *list, bool header, mesh__kvmatch **out,
                       size_t *n) {
  static const char *const keys[] = {"name", "type", "value", NULL};
  if (!want_list(c, list) || list->n == 0) return;
  if (!(*out = c_calloc(c, list->n, sizeof **out))) return;
  for (size_t i = 0; i < list->n; i++) {
    const mesh__node *item = list->kids[i];
    if (!mesh__want_map(c->r, item)) continue;
    mesh__check_keys(c->r, item, keys);
    const char *name = NULL, *type = "Exact", *value = NULL;
    bool ok = mesh__read_string(c->r, item, "name", true, &name);
    ok = mesh__read_string(c->r, item, "type", false, &type) && ok;
    ok = mesh__read_string(c->r, item, "value", false, &value) && ok;
    if (!ok || !name) continue;
    const mesh__node *vn = mesh__node_get(item, "value"), *nn = mesh__node_get(item, "name");
    if (!vn) {
      mesh__error(c->r, item, "missing required field 'value'");
      continue;
    }
    for (size_t k = 0; header && k < nn->len; k++)
      if (!is_tchar(name[k])) {
        mesh__error(c->r, nn, "'%s' is not a valid header name", name);
        ok = false;
        break;
      }
    if (!ok) continue;
    mesh__kvmatch *m = &(*out)[*n];
    if (strcmp(type, "Exact") == 0) {
      m->type = MESH__VAL_EXACT;
    } else if (strcmp(type, "RegularExpression") == 0) {
      m->type = MESH__VAL_REGEX;
      if (!compile_regex(c, vn, &m->re)) continue;
    } else {
      mesh__error(c->r, mesh__node_get(item, "type"),
                  "unknown match type '%s' (known: Exact, RegularExpression)", type);
      continue;
    }
    m->name = c_strndup(c, name, nn->len);
    m->name_len = nn->len;
    m->value = c_strndup(c, value, vn->len);
    m->value_len = vn->len;
    (*n)++;
  }
}

static void compile_path(compiler *c, const mesh__node *v, mesh__rmatch *m) {
  static const char *const keys[] = {"type", "value", NULL};
  if (!mesh__want_map(c->r, v)) return;
  mesh__check_keys(c->r, v, keys);
  const char *type = "PathPrefix", *value = "/";
  bool ok = mesh__read_string(c->r, v, "type", false, &type);
  ok = mesh__read_string(c->r, v, "value", false, &value) && ok;
  if (!ok) return;
  const mesh__node *vn = mesh__node_get(v, "value"), *tn = mesh__node_get(v, "type");
  size_t len = vn ? vn->len : 1;
  if (strcmp(type, "RegularExpression") == 0) {
    if (!vn) {
      mesh__error(c->r, v, "a RegularExpression path needs a 'value'");
      return;
    }
    if (compile_regex(c, vn, &m->path_re)) m->path_type = MESH__PATH_REGEX;
    return;
  }
  bool exact = strcmp(type, "Exact") == 0;
  if (!exact && strcmp(type, "PathPrefix") != 0) {
    mesh__error(c->r, tn, "unknown path match type '%s' (known: Exact, PathPrefix, "
                          "RegularExpression)", type);
    return;
  }
  if (len == 0 || value[0] != '/') {
    mesh__error(c->r, vn ? vn : v, "a path must start with '/', found '%s'", value);
    return;
  }
  if (!exact)
    while (len > 0 && value[len - 1] == '/') len--; /* "/api/" and "/api" mean the same prefix */
  m->path_type = exact ? MESH__PATH_EXACT : MESH__PATH_PREFIX;
  m->path = c_strndup(c, value, len);
  m->path_len = len;
}

static void compile_match(compiler *c, const mesh__node *v, mesh__rmatch *m) {
  static const char *const keys[] = {"path", "headers", "queryParams", "method", NULL};
  if (!mesh__want_map(c->r, v)) return;
  mesh__check_keys(c->r, v, keys);
  const mesh__node *x;
  if ((x = mesh__node_get(v, "path"))) compile_path(c, x, m);
  if ((x = mesh__node_get(v, "headers"))) compile_kv(c, x, true, &m->headers, &m->nheaders);
  if ((x = mesh__node_get(v, "queryParams"))) compile_kv(c, x, false, &m->query, &m->nquery);
  const char *method = NULL;
  if (mesh__read_string(c->r, v, "method", false, &method) && method) {
    x = mesh__node_get(v, "method");
    bool ok = x->len > 0, lower = false;
    for (size_t i = 0; i < x->len && ok; i++) {
      ok = is_tchar(method[i]);
      lower = lower || (method[i] >= 'a' && method[i] <= 'z');
    }
    if (!ok) mesh__error(c->r, x, "'%s' is not a valid HTTP method", method);
    else {
      if (lower) mesh__warn(c->r, x, "methods are compared exactly: '%s' is not GET, POST...", method);
      m->method = c_strndup(c, method, x->len);
      m->method_len = x->len;
    }
  }
}

static void compile_route(compiler *c, const mesh__node *spec) {
  static const char *const keys[] = {"parentRefs", "hostnames", "rules", NULL};
  static const char *const rule_keys[] = {"name", "matches", "filters", "backendRefs", "timeouts",
                                          "retry", "sessionPersistence", NULL};
  mesh__pdoc *d = c->d;
  mesh__check_keys(c->r, spec, keys);
  const mesh__node *parents = mesh__node_get(spec, "parentRefs"), *rules = mesh__node_get(spec, "rules");
  if (mesh__node_get(spec, "hostnames"))
    mesh__warn(c->r, mesh__node_get(spec, "hostnames"),
               "hostnames are not checked by inbound policy (the Server already names the port)");
  if (!parents) mesh__error(c->r, spec, "missing required field 'parentRefs'");
  else if (want_list(c, parents) && parents->n > 0 &&
           (d->refs = c_calloc(c, parents->n, sizeof *d->refs))) {
    for (size_t i = 0; i < parents->n; i++) {
      const mesh__node *p = parents->kids[i];
      mesh__ref *ref = &d->refs[d->nrefs++];
      ref->kind = MESH__REF_OTHER;
      ref->at = p;
      if (!mesh__want_map(c->r, p)) continue;
      mesh__check_keys(c->r, p, ref_keys);
      const char *group = "gateway.networking.k8s.io", *kind = "Gateway", *name = NULL, *ns = d->ns;
      bool ok = mesh__read_string(c->r, p, "group", false, &group);
      ok = mesh__read_string(c->r, p, "kind", false, &kind) && ok;
      ok = mesh__read_string(c->r, p, "name", true, &name) && ok;
      ok = mesh__read_string(c->r, p, "namespace", false, &ns) && ok;
      if (!ok || !name) continue;
      if (strcmp(kind, "Server") != 0 || strcmp(group, "policy.linkerd.io") != 0) {
        mesh__warn(c->r, p, "parent %s%s%s '%s' is not a Server (policy.linkerd.io): ignored by "
                            "inbound policy", group, *group ? "/" : "", kind, name);
        continue;
      }
      if (strcmp(ns, d->ns) != 0) {
        mesh__warn(c->r, mesh__node_get(p, "namespace"), "a route only attaches to Servers in its "
                                                         "own namespace ('%s'): ignored", d->ns);
        continue;
      }
      ref->kind = MESH__REF_SERVER;
      ref->name = c_strdup(c, name);
      ref->ns = c_strdup(c, ns);
    }
  }
  if (!rules) {
    /* Gateway API: no rules is one rule that matches every request. */
    if (!(d->rules = c_calloc(c, 1, sizeof *d->rules))) return;
    d->nrules = 1;
    return;
  }
  if (!want_list(c, rules)) return;
  if (rules->n == 0) {
    mesh__error(c->r, rules, "an empty rules list matches nothing (leave it out to match every request)");
    return;
  }
  if (!(d->rules = c_calloc(c, rules->n, sizeof *d->rules))) return;
  d->nrules = rules->n;
  for (size_t i = 0; i < rules->n; i++) {
    const mesh__node *rule = rules->kids[i];
    if (!mesh__want_map(c->r, rule)) continue;
    mesh__check_keys(c->r, rule, rule_keys);
    const mesh__node *ms = mesh__node_get(rule, "matches");
    if (!ms || !want_list(c, ms) || ms->n == 0) continue; /* matches every request */
    mesh__rule *ru = &d->rules[i];
    if (!(ru->matches = c_calloc(c, ms->n, sizeof *ru->matches))) return;
    ru->n = ms->n;
    for (size_t k = 0; k < ms->n; k++) compile_match(c, ms->kids[k], &ru->matches[k]);
  }
}

/* ---- the document ---- */

static void clause_clear(mesh_ctx *ctx, mesh__clause *cl) {
  for (size_t i = 0; i < cl->nids; i++) mesh__free(ctx, cl->ids[i].s);
  mesh__free(ctx, cl->ids);
  for (size_t i = 0; i < cl->nnets; i++) mesh__free(ctx, cl->nets[i].except);
  mesh__free(ctx, cl->nets);
}

static void selector_clear(mesh_ctx *ctx, mesh__selector *s) {
  for (size_t i = 0; i < s->n; i++) {
    mesh__free(ctx, s->reqs[i].key);
    for (size_t k = 0; k < s->reqs[i].nvalues; k++) mesh__free(ctx, s->reqs[i].values[k]);
    mesh__free(ctx, s->reqs[i].values);
  }
  mesh__free(ctx, s->reqs);
}

static void refs_free(mesh_ctx *ctx, mesh__ref *refs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mesh__free(ctx, refs[i].name);
    mesh__free(ctx, refs[i].ns);
  }
  mesh__free(ctx, refs);
}

static void kv_free(mesh_ctx *ctx, mesh__kvmatch *kv, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mesh__free(ctx, kv[i].name);
    mesh__free(ctx, kv[i].value);
    mesh__regex_free(kv[i].re);
  }
  mesh__free(ctx, kv);
}

mesh__pdoc *mesh__pdoc_ref(mesh__pdoc *d) {
  if (d) atomic_fetch_add_explicit(&d->refcnt, 1u, memory_order_relaxed);
  return d;
}

void mesh__pdoc_unref(mesh__pdoc *d) {
  if (!d || atomic_fetch_sub_explicit(&d->refcnt, 1, memory_order_acq_rel) != 1) return;
  mesh_ctx *ctx = d->ctx;
  selector_clear(ctx, &d->sel);
  selector_clear(ctx, &d->srv_sel);
  for (size_t i = 0; i < d->nlabels; i++) {
    mesh__free(ctx, (char *)d->labels[i].name);
    mesh__free(ctx, (char *)d->labels[i].value);
  }
  mesh__free(ctx, d->labels);
  mesh__free(ctx, d->port_name);
  mesh__free(ctx, d->target.name);
  mesh__free(ctx, d->target.ns);
  clause_clear(ctx, &d->clause);
  refs_free(ctx, d->refs, d->nrefs);
  refs_free(ctx, d->ids, d->nids);
  for (size_t i = 0; i < d->nrules; i++) {
    mesh__rule *ru = &d->rules[i];
    for (size_t k = 0; k < ru->n; k++) {
      mesh__rmatch *m = &ru->matches[k];
      mesh__free(ctx, m->path);
      mesh__regex_free(m->path_re);
      mesh__free(ctx, m->method);
      kv_free(ctx, m->headers, m->nheaders);
      kv_free(ctx, m->query, m->nquery);
    }
    mesh__free(ctx, ru->matches);
  }
  mesh__free(ctx, d->rules);
  mesh__free(ctx, d->file);
  mesh__free(ctx, d->name);
  mesh__free(ctx, d->ns);
  mesh__free(ctx, d);
}

static const char *scalar_or(const mesh__node *n, const char *dflt) {
  return n && n->type == MESH_NODE_SCALAR && n->len ? n->str : dflt;
}

int mesh__pdoc_compile(mesh__reader *r, const mesh__node *root, int kind, mesh__pdoc **ret) {
  mesh__pdoc *d = mesh__calloc(r->ctx, 1, sizeof *d);
  if (!d) return MESH_ERR_NOMEM;
  d->ctx = r->ctx;
  atomic_init(&d->refcnt, 1u);
  d->kind = kind;
  d->root = root;
  const mesh__node *meta = mesh__node_get(root, "metadata");
  d->file = mesh__strdup(r->ctx, r->file ? r->file : "<input>");
  d->name = mesh__strdup(r->ctx, scalar_or(mesh__node_get(meta, "name"), ""));
  d->ns = mesh__strdup(r->ctx, scalar_or(mesh__node_get(meta, "namespace"), "default"));
  if (!d->file || !d->name || !d->ns) {
    mesh__pdoc_unref(d);
    return MESH_ERR_NOMEM;
  }
  compiler c = {.r = r, .ctx = r->ctx, .d = d};
  size_t errors0 = r->errors;
  int nomem0 = r->nomem;
  const mesh__node *spec = mesh__node_get(root, "spec");
  if (!spec) mesh__error(r, root, "missing required field 'spec'");
  else if (mesh__want_map(r, spec)) {
    switch (kind) {
    case MESH_KIND_SERVER: compile_server(&c, spec); break;
    case MESH_KIND_SERVER_AUTHORIZATION: compile_server_authz(&c, spec); break;
    case MESH_KIND_AUTHORIZATION_POLICY: compile_authz_policy(&c, spec); break;
    case MESH_KIND_MESH_TLS_AUTHENTICATION: compile_meshtls(&c, spec); break;
    case MESH_KIND_NETWORK_AUTHENTICATION: compile_netauthn(&c, spec); break;
    case MESH_KIND_HTTP_ROUTE: compile_route(&c, spec); break;
    default: break;
    }
  }
  if (c.oom || (r->nomem && !nomem0)) {
    mesh__pdoc_unref(d);
    return MESH_ERR_NOMEM;
  }
  d->ok = r->errors == errors0;
  *ret = d;
  return 0;
}
