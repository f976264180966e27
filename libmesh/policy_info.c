/* libmesh inbound policy: introspection of a compiled snapshot, for tools that show what it authorizes. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/policy.h>
#include "policy_internal.h"

/* The public handle is the snapshot's own authorization: never dereferenced as such. */
static const mesh__authz *authz_of(const mesh_policy_authz *a) { return (const mesh__authz *)a; }
static const mesh_policy_authz *handle(const mesh__authz *a) { return (const mesh_policy_authz *)a; }

int mesh_policy_server_describe(const mesh_policy *p, size_t i, mesh_policy_server_info *ret) {
  if (!p || !ret) return MESH_ERR_INVALID;
  if (i >= p->nservers) return MESH_ERR_RANGE;
  const mesh__sserver *s = &p->servers[i];
  const mesh__pdoc *d = s->doc;
  *ret = (mesh_policy_server_info){.name = d->name,
                                   .ns = d->ns,
                                   .port = d->port_name ? 0 : d->port,
                                   .port_name = d->port_name,
                                   .protocol = d->proto,
                                   .access_policy = d->access,
                                   .nroutes = s->nroutes,
                                   .nauthz = s->nauthz};
  return 0;
}

int mesh_policy_server_selects(const mesh_policy *p, size_t i, const mesh_policy_workload *wl) {
  if (!p || !wl || !wl->ns || i >= p->nservers || (wl->nlabels && !wl->labels)) return 0;
  const mesh__pdoc *d = p->servers[i].doc;
  if (strcmp(d->ns, wl->ns) != 0 || !mesh__selector_matches(&d->sel, wl->labels, wl->nlabels))
    return 0;
  if (wl->port == 0 && !wl->port_name) return 1;
  /* As mesh_policy_decide: a named port by the name alone, a number by the number. */
  if (d->port_name) return wl->port_name && strcmp(d->port_name, wl->port_name) == 0;
  return d->port == wl->port;
}

int mesh_policy_server_find(const mesh_policy *p, const mesh_policy_workload *wl, size_t *ret) {
  if (!p || !wl || !wl->ns || !ret || wl->port > 65535) return MESH_ERR_INVALID;
  if (wl->port == 0 && !wl->port_name) return MESH_ERR_INVALID; /* a port is what is asked about */
  for (size_t i = 0; i < p->nservers; i++)
    if (mesh_policy_server_selects(p, i, wl)) {
      *ret = i;
      return 0;
    }
  return MESH_ERR_NOT_FOUND;
}

int mesh_policy_route_describe(const mesh_policy *p, size_t server, size_t j,
                               mesh_policy_route_info *ret) {
  if (!p || !ret) return MESH_ERR_INVALID;
  if (server >= p->nservers || j >= p->servers[server].nroutes) return MESH_ERR_RANGE;
  const mesh__sroute *rt = p->servers[server].routes[j];
  *ret = (mesh_policy_route_info){.name = rt->doc->name,
                                  .ns = rt->doc->ns,
                                  .nrules = rt->doc->nrules ? rt->doc->nrules : 1,
                                  .nauthz = rt->nauthz};
  return 0;
}

const mesh_policy_authz *mesh_policy_server_authz(const mesh_policy *p, size_t server, size_t j) {
  if (!p || server >= p->nservers || j >= p->servers[server].nauthz) return NULL;
  return handle(p->servers[server].authz[j]);
}

const mesh_policy_authz *mesh_policy_route_authz(const mesh_policy *p, size_t server, size_t route,
                                                 size_t j) {
  if (!p || server >= p->nservers || route >= p->servers[server].nroutes) return NULL;
  const mesh__sroute *rt = p->servers[server].routes[route];
  return j < rt->nauthz ? handle(rt->authz[j]) : NULL;
}

int32_t mesh_policy_default(const mesh_policy *p) { return p ? p->default_policy : 0; }

const mesh_policy_authz *mesh_policy_default_authz(const mesh_policy *p, int32_t policy) {
  if (!p || !mesh_policy_default_name(policy)) return NULL;
  return handle(&p->defaults[policy]);
}

int mesh_policy_authz_describe(const mesh_policy_authz *h, mesh_policy_authz_info *ret) {
  const mesh__authz *a = authz_of(h);
  if (!a || !ret) return MESH_ERR_INVALID;
  *ret = (mesh_policy_authz_info){.kind = a->kind, .name = a->name, .never = a->never,
                                  .nclauses = a->n};
  return 0;
}

static const mesh__sclause *clause_at(const mesh_policy_authz *h, size_t k, int *rc) {
  const mesh__authz *a = authz_of(h);
  *rc = !a ? MESH_ERR_INVALID : k >= a->n ? MESH_ERR_RANGE : 0;
  return *rc ? NULL : &a->clauses[k];
}

int mesh_policy_authz_clause(const mesh_policy_authz *h, size_t k, mesh_policy_clause_info *ret) {
  int rc;
  const mesh__sclause *c = clause_at(h, k, &rc);
  if (!c) return rc;
  if (!ret) return MESH_ERR_INVALID;
  *ret = (mesh_policy_clause_info){
      .authn = c->authn == MESH__AUTHN_MESH  ? MESH_POLICY_AUTHN_MESH
               : c->authn == MESH__AUTHN_TLS ? MESH_POLICY_AUTHN_TLS
                                             : MESH_POLICY_AUTHN_ANY,
      .nidentities = c->nids,
      .nnetworks = c->nnets};
  return 0;
}

static int out(char *buf, size_t size, const char *pre, const char *s, size_t len, const char *post) {
  int n = snprintf(buf, size, "%s%.*s%s", pre, (int)len, s ? s : "", post);
  return n < 0 || (size_t)n >= size ? MESH_ERR_LIMIT : 0;
}

int mesh_policy_authz_identity(const mesh_policy_authz *h, size_t k, size_t m, char *buf,
                               size_t size) {
  int rc;
  const mesh__sclause *c = clause_at(h, k, &rc);
  if (!c) return rc;
  if (!buf || !size) return MESH_ERR_INVALID;
  if (m >= c->nids) return MESH_ERR_RANGE;
  const mesh__idm *id = &c->ids[m];
  switch (id->type) {
  case MESH__ID_ANY: return out(buf, size, "*", NULL, 0, "");
  case MESH__ID_SUFFIX: return out(buf, size, "*", id->s, id->len, ""); /* s is ".suffix" */
  case MESH__ID_SPIFFE_PREFIX: return out(buf, size, "", id->s, id->len, "*");
  default: return out(buf, size, "", id->s, id->len, "");
  }
}

int mesh_policy_authz_network(const mesh_policy_authz *h, size_t k, size_t m, size_t e, char *buf,
                              size_t size) {
  int rc;
  const mesh__sclause *c = clause_at(h, k, &rc);
  if (!c) return rc;
  if (!buf || !size) return MESH_ERR_INVALID;
  if (m >= c->nnets || e > c->nets[m].nexcept) return MESH_ERR_RANGE;
  const mesh__cidr *net = e ? &c->nets[m].except[e - 1] : &c->nets[m].net;
  char addr[INET6_ADDRSTRLEN];
  if (!inet_ntop(net->family == 6 ? AF_INET6 : AF_INET, net->addr, addr, sizeof addr))
    return MESH_ERR_INVALID;
  int n = snprintf(buf, size, "%s/%u", addr, (unsigned)net->bits);
  return n < 0 || (size_t)n >= size ? MESH_ERR_LIMIT : 0;
}
