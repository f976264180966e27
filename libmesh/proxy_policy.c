/* libmesh proxy policy: the inbound authorization meshd enforces (Servers, authorizations, routes) from a directory of manifests, and its metrics. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <mesh/error.h>

#include "ctx_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_profiles_internal.h"

int mesh__proxy_policy_load(mesh_proxy *p, mesh_diags *diags, mesh_policy **ret, const char **why) {
  mesh_ctx *ctx = p->ctx;
  char **files = NULL;
  size_t n = 0;
  int rc = mesh__proxy_dir_files(ctx, p->o->policy_dir, &files, &n, why);
  if (rc) return rc;
  mesh_manifest **ms = mesh__calloc(ctx, n ? n : 1, sizeof *ms);
  mesh_policy_opts *po = NULL;
  rc = ms ? mesh_policy_opts_new(ctx, &po) : MESH_ERR_NOMEM;
  for (size_t i = 0; !rc && i < n; i++) rc = mesh_manifest_load_file(ctx, files[i], diags, &ms[i]);
  if (!rc && p->o->default_policy) rc = mesh_policy_opts_set_default(po, p->o->default_policy);
  if (!rc && p->o->cluster_networks)
    rc = mesh_policy_opts_set_cluster_networks(po, p->o->cluster_networks, why);
  /* The inbound peer is always another proxy, often on this host: its
   * verified identity decides, not that it comes from loopback. */
  if (!rc) rc = mesh_policy_opts_set_allow_localhost(po, 0);
  if (!rc) rc = mesh_policy_compile(ctx, (const mesh_manifest *const *)ms, n, po, diags, ret);
  mesh_policy_opts_free(po);
  for (size_t i = 0; ms && i < n; i++) mesh_manifest_free(ms[i]);
  mesh__free(ctx, ms);
  mesh__proxy_dir_files_free(ctx, files, n);
  return rc;
}

/* "app=web,tier=front" into the workload's labels, owned by o. */
int mesh__proxy_labels_parse(mesh_proxy_opts *o, const char *s, const char **why) {
  o->nlabels = 0;
  char *copy = mesh__strdup(o->ctx, s);
  if (!copy) return MESH_ERR_NOMEM;
  mesh__free(o->ctx, o->labels_buf);
  o->labels_buf = copy;
  for (char *save = NULL, *kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(kv, '=');
    if (!eq || eq == kv || o->nlabels == MESH_PROXY_LABELS_MAX) {
      *why = o->nlabels == MESH_PROXY_LABELS_MAX ? "more than 64 labels"
                                                 : "labels are name=value pairs separated by commas";
      o->nlabels = 0;
      return MESH_ERR_PARSE;
    }
    *eq = 0;
    o->labels[o->nlabels].name = kv;
    o->labels[o->nlabels].value = eq + 1;
    o->nlabels++;
  }
  return 0;
}

static void count(mesh_metric_family *f, const char *const *v, size_t n) {
  mesh_metric_series *s;
  if (mesh_metrics_series(f, v, n, &s) == 0) {
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
}

static const char *or_empty(const char *s) { return s ? s : ""; }

int mesh__proxy_authorize(mesh_proxy *p, uint16_t port, const char *client_id,
                          const struct sockaddr *peer, const mh_head *req, int count_it,
                          const char **why) {
  mesh_policy *pol = p->policy;
  if (!pol) return MESH_POLICY_ALLOW;
  mesh_policy_workload wl = {.ns = p->o->workload_ns ? p->o->workload_ns : "default",
                             .labels = p->o->labels,
                             .nlabels = p->o->nlabels,
                             .port = port};
  mesh_policy_request rq = {.client_id = client_id && *client_id ? client_id : NULL,
                            .tls = 1,
                            .sockaddr = peer};
  mesh_policy_header stack[128], *hs = stack;
  if (req) {
    rq.method = req->method ? req->method : "";
    rq.path = req->path ? req->path : "/";
    rq.path_len = strlen(rq.path);
    size_t n = req->n + (req->authority != NULL);
    if (n > 128 && !(hs = mesh__calloc(p->ctx, n, sizeof *hs))) {
      *why = "out of memory";
      return MESH_POLICY_DENY;
    }
    for (size_t i = 0; i < req->n; i++)
      hs[i] = (mesh_policy_header){req->fields[i].name, strlen(req->fields[i].name),
                                   req->fields[i].value, strlen(req->fields[i].value)};
    if (req->authority) hs[req->n] = (mesh_policy_header){"host", 4, req->authority, strlen(req->authority)};
    rq.headers = hs;
    rq.nheaders = n;
  }
  mesh_policy_result res;
  int rc = mesh_policy_decide(pol, &wl, &rq, &res);
  if (hs != stack) mesh__free(p->ctx, hs);
  if (rc) {
    *why = "the policy could not decide";
    return MESH_POLICY_DENY;
  }
  const char *v[6] = {or_empty(res.server_kind), or_empty(res.server_name),
                      or_empty(res.route_kind),  or_empty(res.route_name),
                      or_empty(res.authz_kind),  or_empty(res.authz_name)};
  const char *tv[4] = {v[0], v[1], v[4], v[5]};
  int decision = res.decision;
  if (!count_it) {
    if (decision != MESH_POLICY_ALLOW) *why = "no longer authorized";
    return decision;
  }
  if (decision == MESH_POLICY_ALLOW && res.audit) {
    /* audit: allowed, and counted as the denial it would have been */
    if (req) count(p->m.authz_http_deny, v, 4);
    else count(p->m.authz_tcp_deny, tv, 2);
  }
  if (decision == MESH_POLICY_ALLOW) {
    if (req) count(p->m.authz_http_allow, v, 6);
    else count(p->m.authz_tcp_allow, tv, 4);
    return decision;
  }
  if (decision == MESH_POLICY_NOT_FOUND) {
    count(p->m.http_route_not_found, v, 2);
    *why = "no route of the server matches the request";
    return decision;
  }
  if (req) count(p->m.authz_http_deny, v, 4);
  else count(p->m.authz_tcp_deny, tv, 2);
  static _Thread_local char msg[320];
  snprintf(msg, sizeof msg, "%s %s does not authorize %s", or_empty(res.server_kind),
           or_empty(res.server_name), rq.client_id ? rq.client_id : "an unauthenticated client");
  *why = msg;
  return MESH_POLICY_DENY;
}

int mesh__proxy_policy_metrics(mesh_proxy *p) {
  static const char *const http[] = {"srv_kind", "srv_name", "route_kind", "route_name",
                                     "authz_kind", "authz_name"};
  static const char *const tcp[] = {"srv_kind", "srv_name", "authz_kind", "authz_name"};
  int rc;
  if ((rc = mesh_metrics_counter(p->m.reg, "inbound_http_authz_allow_total",
                                 "Inbound HTTP requests authorized", http, 6,
                                 &p->m.authz_http_allow)) ||
      (rc = mesh_metrics_counter(p->m.reg, "inbound_http_authz_deny_total",
                                 "Inbound HTTP requests denied (403), audit ones included", http, 4,
                                 &p->m.authz_http_deny)) ||
      (rc = mesh_metrics_counter(p->m.reg, "inbound_http_route_not_found_total",
                                 "Inbound HTTP requests no route of their Server matched (404)",
                                 http, 2, &p->m.http_route_not_found)) ||
      (rc = mesh_metrics_counter(p->m.reg, "inbound_tcp_authz_allow_total",
                                 "Inbound opaque connections authorized", tcp, 4,
                                 &p->m.authz_tcp_allow)) ||
      (rc = mesh_metrics_counter(p->m.reg, "inbound_tcp_authz_deny_total",
                                 "Inbound opaque connections refused, audit ones included", tcp, 2,
                                 &p->m.authz_tcp_deny)))
    return rc;
  return 0;
}
