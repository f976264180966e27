/* libmesh proxy policy: the inbound authorization meshd enforces (Servers, authorizations, routes) from a directory of manifests or from mesh-destination's policy stream, and its metrics. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include <mesh/error.h>
#include <mesh/manifest.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_profiles_internal.h"

/* A Workload's labels in one policy message at most (the message itself is
 * bounded at 1 MiB by the rpc client). */
#define STREAM_LABELS_MAX 1024u

/* The workload as the policy stream describes it: one allocation, the
 * labels and strings after the struct. */
typedef struct proxy_workload {
  const char *ns;
  mesh_policy_label *labels;
  size_t nlabels;
} proxy_workload;

/* What every compile of meshd's policy uses, from a directory or from the
 * control plane: one meaning whatever the source. */
static int policy_opts(mesh_proxy *p, mesh_policy_opts **ret, const char **why) {
  mesh_policy_opts *po = NULL;
  int rc = mesh_policy_opts_new(p->ctx, &po);
  if (!rc && p->o->default_policy) rc = mesh_policy_opts_set_default(po, p->o->default_policy);
  if (!rc && p->o->cluster_networks)
    rc = mesh_policy_opts_set_cluster_networks(po, p->o->cluster_networks, why);
  /* The inbound peer is always another proxy, often on this host: its
   * verified identity decides, not that it comes from loopback. */
  if (!rc) rc = mesh_policy_opts_set_allow_localhost(po, 0);
  if (rc) {
    mesh_policy_opts_free(po);
    return rc;
  }
  *ret = po;
  return 0;
}

int mesh__proxy_policy_load(mesh_proxy *p, mesh_diags *diags, mesh_policy **ret, const char **why) {
  mesh_ctx *ctx = p->ctx;
  char **files = NULL;
  size_t n = 0;
  int rc = mesh__proxy_dir_files(ctx, p->o->policy_dir, &files, &n, why);
  if (rc) return rc;
  mesh_manifest **ms = mesh__calloc(ctx, n ? n : 1, sizeof *ms);
  mesh_policy_opts *po = NULL;
  rc = ms ? policy_opts(p, &po, why) : MESH_ERR_NOMEM;
  for (size_t i = 0; !rc && i < n; i++) rc = mesh_manifest_load_file(ctx, files[i], diags, &ms[i]);
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

void mesh__proxy_policy_install(mesh_proxy *p, mesh_policy *pol, const char *from) {
  mesh_policy_unref(p->policy); /* requests deciding hold no reference: one thread */
  p->policy = pol;
  mesh__proxy_conns_reauthorize(p);
  mesh__log(p->ctx, MESH_LOG_INFO, "policy %s loaded: %zu servers, %zu authorizations, %zu routes",
            from, mesh_policy_server_count(pol), mesh_policy_authorization_count(pol),
            mesh_policy_route_count(pol));
}

/* ---- From the control plane ---------------------------------------------------- */

/* The message's workload.namespace and workload.labels, which decisions
 * use from now on (the store's labels, not --workload-labels). */
static int workload_of(mesh_ctx *ctx, const char *line, size_t len, proxy_workload **ret,
                       char *why, size_t cap) {
  json_t *msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
  json_t *wl = json_object_get(msg, "workload");
  json_t *ns = json_object_get(wl, "namespace"), *labels = json_object_get(wl, "labels");
  int rc = 0;
  size_t n = json_object_size(labels), bytes = 0;
  const char *k;
  json_t *v;
  if (!json_is_string(ns) || !mesh_dns_label_valid(json_string_value(ns)) ||
      (labels && !json_is_object(labels))) {
    snprintf(why, cap, "workload is not {\"namespace\": <a DNS label>, \"labels\": {...}}");
    rc = MESH_ERR_PARSE;
  } else if (n > STREAM_LABELS_MAX) {
    snprintf(why, cap, "more than %u labels", STREAM_LABELS_MAX);
    rc = MESH_ERR_LIMIT;
  }
  json_object_foreach(labels, k, v) {
    if (rc) break;
    if (!json_is_string(v)) {
      snprintf(why, cap, "the value of label %.100s is not a string", k);
      rc = MESH_ERR_PARSE;
      break;
    }
    bytes += strlen(k) + strlen(json_string_value(v)) + 2;
  }
  proxy_workload *w = NULL;
  if (!rc) {
    bytes += sizeof *w + n * sizeof(mesh_policy_label) + strlen(json_string_value(ns)) + 1;
    if (!(w = mesh__malloc(ctx, bytes))) rc = MESH_ERR_NOMEM;
  }
  if (!rc) {
    w->labels = (mesh_policy_label *)(w + 1);
    w->nlabels = 0;
    char *at = (char *)(w->labels + n);
    size_t l = strlen(json_string_value(ns)) + 1;
    w->ns = memcpy(at, json_string_value(ns), l);
    at += l;
    json_object_foreach(labels, k, v) {
      mesh_policy_label *lb = &w->labels[w->nlabels++];
      l = strlen(k) + 1;
      lb->name = memcpy(at, k, l);
      at += l;
      l = strlen(json_string_value(v)) + 1;
      lb->value = memcpy(at, json_string_value(v), l);
      at += l;
    }
    *ret = w;
  }
  json_decref(msg);
  return rc;
}

/* One WatchWorkload message: compiled whole with the options the
 * directory uses, then put in force through the same path. */
static int on_policy_message(void *ud, const char *line, size_t len, char *why, size_t cap) {
  mesh_proxy *p = ud;
  mesh_diags *d = NULL;
  mesh_policy_opts *po = NULL;
  mesh_policy *pol = NULL;
  proxy_workload *wl = NULL;
  const char *w = NULL;
  int rc = mesh_diags_new(p->ctx, &d);
  if (!rc) rc = policy_opts(p, &po, &w);
  if (!rc) rc = mesh_policy_compile_message(p->ctx, line, len, po, d, &pol);
  if (!rc) rc = workload_of(p->ctx, line, len, &wl, why, cap);
  if (rc && !*why) {
    const char *first = w ? w : mesh_strerror(rc);
    for (size_t i = 0; !w && d && i < mesh_diags_count(d); i++)
      if (mesh_diags_severity(d, i) == MESH_DIAG_ERROR) {
        first = mesh_diags_text(d, i);
        break;
      }
    snprintf(why, cap, "%s%s", first, d && mesh_diags_errors(d) > 1 ? " (and more)" : "");
  }
  if (!rc) {
    for (size_t i = 0; i < mesh_diags_count(d); i++)
      mesh__log(p->ctx, MESH_LOG_WARN, "policy: %s", mesh_diags_text(d, i));
    mesh__free(p->ctx, p->pwl);
    p->pwl = wl;
    p->policy_pending = 0;
    char from[600];
    snprintf(from, sizeof from, "from mesh-destination (Workload %s:%s)", wl->ns,
             p->o->workload_name);
    mesh__proxy_policy_install(p, pol, from);
  }
  mesh_policy_opts_free(po);
  mesh_diags_free(d);
  if (rc) mesh_policy_unref(pol);
  return rc;
}

int mesh__proxy_policy_stream_start(mesh_proxy *p, const char **why) {
  /* Options every message will be compiled with: a bad one fails the
   * start, as it does with a directory, not every message. */
  static _Thread_local char bad[300];
  mesh_policy_opts *po = NULL;
  const char *w = NULL;
  int rc = policy_opts(p, &po, &w);
  mesh_policy_opts_free(po);
  if (rc) {
    snprintf(bad, sizeof bad, "the inbound policy's options: %s", w ? w : mesh_strerror(rc));
    if (why) *why = bad;
    return rc;
  }
  char workload[600];
  snprintf(workload, sizeof workload, "%s:%s", p->o->workload_ns ? p->o->workload_ns : "default",
           p->o->workload_name);
  /* Linkerd's proxy serves no port before it has the port's policy: the
   * default policy must not admit what a Server would have denied. */
  p->policy_pending = 1;
  return mesh__discovery_policy_new(p->disc, p->base, workload, p->m.reg, on_policy_message, p,
                                    &p->polw);
}

void mesh__proxy_policy_stream_free(mesh_proxy *p) {
  mesh__discovery_policy_free(p->polw);
  p->polw = NULL;
  mesh__free(p->ctx, p->pwl);
  p->pwl = NULL;
}

/* ---- Deciding ----------------------------------------------------------------------- */

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
  if (p->policy_pending) {
    *why = "the inbound policy has not come from mesh-destination yet";
    return MESH_ERR_UNAVAILABLE;
  }
  mesh_policy *pol = p->policy;
  if (!pol) return MESH_POLICY_ALLOW;
  const proxy_workload *pw = p->pwl;
  mesh_policy_workload wl = {.ns = pw                ? pw->ns
                                   : p->o->workload_ns ? p->o->workload_ns
                                                       : "default",
                             .labels = pw ? pw->labels : p->o->labels,
                             .nlabels = pw ? pw->nlabels : p->o->nlabels,
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
