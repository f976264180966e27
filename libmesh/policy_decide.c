/* libmesh inbound policy decisions: a compiled snapshot applied to one connection or request, without allocating. */
#include <netinet/in.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <mesh/error.h>
#include <mesh/identity.h>
#include <mesh/policy.h>
#include "policy_internal.h"

/* ---- networks and selectors ---- */

bool mesh__cidr_contains(const mesh__cidr *net, int family, const uint8_t *addr) {
  if (net->family != family) return false;
  unsigned full = net->bits / 8, rest = net->bits % 8;
  for (unsigned i = 0; i < full; i++) /* a few bytes: cheaper than a call to memcmp */
    if (net->addr[i] != addr[i]) return false;
  if (!rest) return true;
  uint8_t mask = (uint8_t)(0xffu << (8 - rest));
  return (addr[full] & mask) == net->addr[full];
}

bool mesh__cidr_within(const mesh__cidr *inner, const mesh__cidr *outer) {
  return inner->bits >= outer->bits && mesh__cidr_contains(outer, inner->family, inner->addr);
}

bool mesh__selector_matches(const mesh__selector *s, const mesh_policy_label *labels, size_t n) {
  for (size_t i = 0; i < s->n; i++) {
    const mesh__selreq *q = &s->reqs[i];
    const char *val = NULL;
    for (size_t k = 0; k < n; k++)
      if (labels[k].name && strcmp(labels[k].name, q->key) == 0) {
        val = labels[k].value ? labels[k].value : "";
        break;
      }
    switch (q->op) {
    case MESH__SEL_EXISTS:
      if (!val) return false;
      break;
    case MESH__SEL_NOT_EXISTS:
      if (val) return false;
      break;
    case MESH__SEL_IN:
    case MESH__SEL_NOT_IN: {
      bool in = false;
      for (size_t k = 0; val && k < q->nvalues && !in; k++) in = strcmp(q->values[k], val) == 0;
      /* NotIn also selects workloads without the label, as in Kubernetes. */
      if (in != (q->op == MESH__SEL_IN)) return false;
      break;
    }
    }
  }
  return true;
}

/* ---- deciding (no allocation from here on) ---- */

typedef struct {
  int family; /* 0: unknown */
  uint8_t addr[16];
  bool tls;
  const char *id; /* the peer identity as presented, NULL when none (or not TLS) */
  const mesh_policy *p;
  bool forms; /* dns and spiffe below are worked out (on first need) */
  const char *dns, *spiffe; /* the identity in both forms, when it has them */
  size_t dns_len, spiffe_len;
  uint64_t dns_hash, spiffe_hash;
  char dns_buf[MESH_IDENTITY_DNS_MAX + 1], spiffe_buf[600];
} client;

static bool is_label(const char *s, size_t n) { return n > 0 && n <= 63 && !memchr(s, '.', n); }

/* Appends parts to buf (size bytes); the length, or 0 when they do not fit. */
static size_t concat(char *buf, size_t size, const char *const *parts, const size_t *lens, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (lens[i] >= size - len) return 0;
    memcpy(buf + len, parts[i], lens[i]);
    len += lens[i];
  }
  buf[len] = '\0';
  return len;
}

/* Both forms of a workload identity, without allocating: a SPIFFE ID
 * spiffe://<td>/ns/<ns>/sa/<sa> is also <sa>.<ns>.serviceaccount.identity.<cp-ns>.<td>
 * (cp-ns from the options), and the other way round. */
static void client_forms(client *cl) {
  static const char marker[] = ".serviceaccount.identity.";
  const size_t mlen = sizeof marker - 1;
  const char *id = cl->id;
  size_t len = strlen(id);
  cl->forms = true;
  if (len > 9 && memcmp(id, "spiffe://", 9) == 0) {
    cl->spiffe = id;
    cl->spiffe_len = len;
    const char *td = id + 9, *end = id + len;
    const char *nsp = memchr(td, '/', (size_t)(end - td));
    if (!nsp || (size_t)(end - nsp) < 4 || memcmp(nsp, "/ns/", 4) != 0) goto hash;
    const char *ns = nsp + 4, *sap = memchr(ns, '/', (size_t)(end - ns));
    if (!sap || (size_t)(end - sap) < 4 || memcmp(sap, "/sa/", 4) != 0) goto hash;
    const char *sa = sap + 4;
    if (!is_label(ns, (size_t)(sap - ns)) || !is_label(sa, (size_t)(end - sa)) ||
        memchr(sa, '/', (size_t)(end - sa)))
      goto hash;
    const char *parts[] = {sa, ".", ns, marker, cl->p->cp_ns, ".", td};
    const size_t lens[] = {(size_t)(end - sa), 1, (size_t)(sap - ns), mlen, strlen(cl->p->cp_ns), 1,
                           (size_t)(nsp - td)};
    if ((cl->dns_len = concat(cl->dns_buf, sizeof cl->dns_buf, parts, lens, 7))) cl->dns = cl->dns_buf;
    goto hash;
  }
  cl->dns = id;
  cl->dns_len = len;
  const char *m = strstr(id, marker);
  const char *dot = m ? memchr(id, '.', (size_t)(m - id)) : NULL;
  const char *cp = m ? m + mlen : NULL, *cpdot = cp ? strchr(cp, '.') : NULL;
  if (dot && cpdot && is_label(id, (size_t)(dot - id)) && is_label(dot + 1, (size_t)(m - dot - 1))) {
    const char *td = cpdot + 1;
    const char *parts[] = {"spiffe://", td, "/ns/", dot + 1, "/sa/", id};
    const size_t lens[] = {9, strlen(td), 4, (size_t)(m - dot - 1), 4, (size_t)(dot - id)};
    if ((cl->spiffe_len = concat(cl->spiffe_buf, sizeof cl->spiffe_buf, parts, lens, 6)))
      cl->spiffe = cl->spiffe_buf;
  }
hash:
  if (cl->dns) cl->dns_hash = mesh__hash(cl->dns, cl->dns_len);
  if (cl->spiffe) cl->spiffe_hash = mesh__hash(cl->spiffe, cl->spiffe_len);
}

static bool client_addr(client *cl, const mesh_policy_request *req) {
  if (req->addr_family == 4) {
    cl->family = 4;
    memcpy(cl->addr, req->addr, 4);
  } else if (req->addr_family == 6) {
    cl->family = 6;
    memcpy(cl->addr, req->addr, 16);
  } else if (req->addr_family != 0) {
    return false;
  } else if (req->sockaddr) {
    const struct sockaddr *sa = req->sockaddr;
    if (sa->sa_family == AF_INET) {
      const struct sockaddr_in *in = req->sockaddr;
      cl->family = 4;
      memcpy(cl->addr, &in->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
      const struct sockaddr_in6 *in6 = req->sockaddr;
      cl->family = 6;
      memcpy(cl->addr, &in6->sin6_addr, 16);
    }
  }
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (cl->family == 6 && memcmp(cl->addr, mapped, 12) == 0) {
    memmove(cl->addr, cl->addr + 12, 4);
    cl->family = 4;
  }
  return true;
}

static bool id_matches(const mesh__idm *m, client *cl) {
  if (m->type == MESH__ID_ANY) return true;
  if (!cl->forms) client_forms(cl);
  switch (m->type) {
  case MESH__ID_EXACT:
    return cl->dns && cl->dns_hash == m->hash && cl->dns_len == m->len &&
           memcmp(cl->dns, m->s, m->len) == 0;
  case MESH__ID_SUFFIX:
    return cl->dns && cl->dns_len > m->len &&
           memcmp(cl->dns + cl->dns_len - m->len, m->s, m->len) == 0;
  case MESH__ID_SPIFFE:
    return cl->spiffe && cl->spiffe_hash == m->hash && cl->spiffe_len == m->len &&
           memcmp(cl->spiffe, m->s, m->len) == 0;
  case MESH__ID_SPIFFE_PREFIX:
    return cl->spiffe && cl->spiffe_len > m->len && memcmp(cl->spiffe, m->s, m->len) == 0;
  default: return false;
  }
}

static bool clause_holds(const mesh__sclause *c, client *cl) {
  if (c->nnets) {
    bool in = false;
    for (size_t i = 0; i < c->nnets && !in && cl->family; i++) {
      const mesh__network *n = &c->nets[i];
      if (!mesh__cidr_contains(&n->net, cl->family, cl->addr)) continue;
      in = true;
      for (size_t k = 0; k < n->nexcept && in; k++)
        if (mesh__cidr_contains(&n->except[k], cl->family, cl->addr)) in = false;
    }
    if (!in) return false;
  }
  switch (c->authn) {
  case MESH__AUTHN_ANY: return true;
  case MESH__AUTHN_TLS: return cl->tls;
  default:
    if (!cl->id) return false;
    for (size_t i = 0; i < c->nids; i++)
      if (id_matches(&c->ids[i], cl)) return true;
    return false;
  }
}

static bool authz_allows(const mesh__authz *a, client *cl) {
  if (a->never) return false;
  for (size_t i = 0; i < a->n; i++)
    if (!clause_holds(&a->clauses[i], cl)) return false;
  return true;
}

/* ---- route matching ---- */

typedef struct {
  const char *method, *path, *query;
  size_t method_len, path_len, query_len;
  const mesh_policy_header *headers;
  size_t nheaders;
} http_req;

typedef struct {
  size_t path;
  bool method;
  size_t headers, query;
} score;

static int score_cmp(const score *a, const score *b) {
  if (a->path != b->path) return a->path < b->path ? -1 : 1;
  if (a->method != b->method) return a->method ? 1 : -1;
  if (a->headers != b->headers) return a->headers < b->headers ? -1 : 1;
  if (a->query != b->query) return a->query < b->query ? -1 : 1;
  return 0;
}

static bool value_matches(const mesh__kvmatch *m, const char *v, size_t len) {
  if (m->type == MESH__VAL_REGEX) return mesh__regex_match(m->re, v, len) == 1;
  return len == m->value_len && memcmp(v, m->value, len) == 0;
}

static bool header_matches(const mesh__kvmatch *m, const http_req *h) {
  for (size_t i = 0; i < h->nheaders; i++) {
    const mesh_policy_header *x = &h->headers[i];
    if (x->name_len == m->name_len && x->name && strncasecmp(x->name, m->name, m->name_len) == 0 &&
        value_matches(m, x->value ? x->value : "", x->value ? x->value_len : 0))
      return true;
  }
  return false;
}

static bool query_matches(const mesh__kvmatch *m, const http_req *h) {
  const char *q = h->query, *end = h->query + h->query_len;
  while (q && q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    const char *pe = amp ? amp : end;
    const char *eq = memchr(q, '=', (size_t)(pe - q));
    const char *ke = eq ? eq : pe;
    if ((size_t)(ke - q) == m->name_len && memcmp(q, m->name, m->name_len) == 0) {
      const char *v = eq ? eq + 1 : pe;
      if (value_matches(m, v, (size_t)(pe - v))) return true;
    }
    q = amp ? amp + 1 : end;
  }
  return false;
}

static bool path_matches(const mesh__rmatch *m, const http_req *h, size_t *len) {
  switch (m->path_type) {
  case MESH__PATH_EXACT:
    *len = m->path_len;
    return h->path_len == m->path_len && mesh__eq(h->path, m->path, m->path_len);
  case MESH__PATH_PREFIX: {
    *len = m->path_len ? m->path_len : 1;
    size_t plen = h->path_len;
    while (plen > 0 && h->path[plen - 1] == '/') plen--;
    if (m->path_len == 0) return true;
    return plen >= m->path_len && mesh__eq(h->path, m->path, m->path_len) &&
           (plen == m->path_len || h->path[m->path_len] == '/');
  }
  case MESH__PATH_REGEX:
    *len = h->path_len;
    return mesh__regex_match(m->path_re, h->path, h->path_len) == 1;
  default:
    *len = 1; /* no path: a prefix match on "/" */
    return true;
  }
}

static bool request_matches(const mesh__rmatch *m, const http_req *h, score *s) {
  if (m->method && (m->method_len != h->method_len || !h->method ||
                    !mesh__eq(m->method, h->method, h->method_len)))
    return false;
  if (!path_matches(m, h, &s->path)) return false;
  for (size_t i = 0; i < m->nheaders; i++)
    if (!header_matches(&m->headers[i], h)) return false;
  for (size_t i = 0; i < m->nquery; i++)
    if (!query_matches(&m->query[i], h)) return false;
  s->method = m->method != NULL;
  s->headers = m->nheaders;
  s->query = m->nquery;
  return true;
}

/* The most specific match over every rule of every route, as Linkerd and
 * the Gateway API rank them; the first wins a tie. */
static const mesh__sroute *best_route(const mesh__sserver *srv, const http_req *h, int32_t *rule) {
  const mesh__rentry *best = NULL;
  score top = {0};
  for (size_t i = 0; i < srv->nentries; i++) {
    const mesh__rentry *e = &srv->entries[i];
    score s = {.path = 1};
    if (e->m && !request_matches(e->m, h, &s)) continue;
    if (!best || score_cmp(&s, &top) > 0) {
      best = e;
      top = s;
    }
  }
  if (best) *rule = best->rule;
  return best ? best->rt : NULL;
}

static bool port_selected(const mesh__pdoc *d, const mesh_policy_workload *wl) {
  if (d->port_name) return wl->port_name && strcmp(d->port_name, wl->port_name) == 0;
  return d->port == wl->port;
}

static const mesh__authz *first_allowing(const mesh__authz *const *list, size_t n, client *cl) {
  for (size_t i = 0; i < n; i++)
    if (authz_allows(list[i], cl)) return list[i];
  return NULL;
}

static void allow(mesh_policy_result *res, const mesh__authz *a) {
  res->decision = MESH_POLICY_ALLOW;
  res->authz_kind = a->kind;
  res->authz_name = a->name;
}

int mesh_policy_decide(const mesh_policy *p, const mesh_policy_workload *wl,
                       const mesh_policy_request *req, mesh_policy_result *ret) {
  if (!p || !wl || !req || !ret || !wl->ns || wl->port < 1 || wl->port > 65535 ||
      (wl->nlabels && !wl->labels) || (req->nheaders && !req->headers) ||
      (req->path_len && !req->path) || (req->query_len && !req->query) ||
      wl->default_policy < 0 || wl->default_policy > MESH_POLICY_DEFAULT_AUDIT)
    return MESH_ERR_INVALID;
  client cl;
  cl.family = 0;
  cl.tls = req->tls != 0;
  cl.id = cl.tls && req->client_id && *req->client_id ? req->client_id : NULL;
  cl.p = p;
  cl.forms = false;
  cl.dns = cl.spiffe = NULL;
  cl.dns_len = cl.spiffe_len = 0;
  if (!client_addr(&cl, req)) return MESH_ERR_INVALID;

  mesh_policy_result res = {.decision = MESH_POLICY_DENY, .route_rule = -1, .server_ns = wl->ns};
  const mesh__sserver *srv = NULL;
  for (size_t i = 0; i < p->nservers && !srv; i++) {
    const mesh__pdoc *d = p->servers[i].doc;
    if (port_selected(d, wl) && strcmp(d->ns, wl->ns) == 0 &&
        mesh__selector_matches(&d->sel, wl->labels, wl->nlabels))
      srv = &p->servers[i];
  }
  bool http = req->method || req->path;
  const mesh__authz *local = p->allow_localhost ? &p->localhost : NULL;

  if (!srv) {
    int dp = wl->default_policy ? wl->default_policy : p->default_policy;
    res.default_policy = dp;
    res.protocol = MESH_POLICY_PROTO_UNKNOWN;
    res.server_kind = "default";
    res.server_name = mesh_policy_default_name(dp);
    if (http) {
      res.route_kind = "default";
      res.route_name = "default";
    }
    const mesh__authz *a = &p->defaults[dp];
    if (authz_allows(a, &cl)) allow(&res, a);
    else if (local && authz_allows(local, &cl)) allow(&res, local);
    else if (dp == MESH_POLICY_DEFAULT_AUDIT) {
      allow(&res, a);
      res.audit = 1;
    }
    *ret = res;
    return 0;
  }

  const mesh__pdoc *sd = srv->doc;
  res.protocol = sd->proto;
  res.server_kind = "server";
  res.server_name = sd->name;
  res.server_ns = sd->ns;
  const mesh__sroute *rt = NULL;
  if (http && sd->proto != MESH_POLICY_PROTO_OPAQUE && sd->proto != MESH_POLICY_PROTO_TLS) {
    if (srv->nroutes == 0) {
      res.route_kind = "default";
      res.route_name = "default";
    } else {
      http_req h = {.method = req->method, .path = req->path ? req->path : "",
                    .path_len = req->path ? req->path_len : 0, .query = req->query,
                    .query_len = req->query_len, .headers = req->headers,
                    .nheaders = req->nheaders};
      h.method_len = h.method ? strlen(h.method) : 0;
      const char *qm = memchr(h.path, '?', h.path_len);
      if (qm) {
        if (!h.query) {
          h.query = qm + 1;
          h.query_len = (size_t)(h.path + h.path_len - qm - 1);
        }
        h.path_len = (size_t)(qm - h.path);
      }
      rt = best_route(srv, &h, &res.route_rule);
      if (!rt) {
        res.decision = MESH_POLICY_NOT_FOUND;
        *ret = res;
        return 0;
      }
      res.route_kind = "httproute";
      res.route_name = rt->doc->name;
    }
  }
  const mesh__authz *a = rt ? first_allowing((const mesh__authz *const *)rt->authz, rt->nauthz, &cl) : NULL;
  if (!a) a = first_allowing((const mesh__authz *const *)srv->authz, srv->nauthz, &cl);
  if (!a && sd->access != MESH_POLICY_DEFAULT_DENY && authz_allows(&p->defaults[sd->access], &cl))
    a = &p->defaults[sd->access];
  if (!a && local && authz_allows(local, &cl)) a = local;
  if (a) allow(&res, a);
  else if (sd->access == MESH_POLICY_DEFAULT_AUDIT) {
    allow(&res, &p->defaults[MESH_POLICY_DEFAULT_AUDIT]);
    res.audit = 1;
  }
  *ret = res;
  return 0;
}
