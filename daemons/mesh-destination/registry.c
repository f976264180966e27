/* mesh-destination's workload registrations: Register/Deregister checked as Workload manifests, held under leases, merged into the directory store. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/mesh.h>

#include "registry.h"

#define SOURCE_PREFIX "registration " /* a registration's source in the snapshot */

typedef struct reg reg;
struct reg {
  dst_registry *r;
  char ns[64], name[254];
  char peer[300]; /* the identity that registered it; "" over plaintext */
  char source[340];
  char lease_id[17];
  char *manifest;
  size_t len;
  uint32_t lease_s;
  struct event *timer;
  reg *prev, *next;
};

struct dst_registry {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_store *store;
  const mesh_store_opts *so;
  char td[254], cp_ns[64];
  void (*log)(const char *level, const char *line);
  reg *regs;
  size_t n;
};

static void rlog(const dst_registry *r, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rlog(const dst_registry *r, const char *level, const char *fmt, ...) {
  if (!r->log) return;
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  r->log(level, line);
}

void dst_registration_clear(dst_registration *r) {
  if (!r) return;
  free(r->manifest);
  r->manifest = NULL;
  r->len = 0;
}

/* A string field copied into dst[cap]: absent gives def (NULL: required). */
static int str_field(json_t *o, const char *key, const char *def, char *dst, size_t cap, char *why,
                     size_t wcap) {
  json_t *v = json_object_get(o, key);
  const char *s = v ? json_string_value(v) : def;
  if (!s || !*s) {
    snprintf(why, wcap, "%s: %s", key, v ? "must be a non-empty string" : "is required");
    return MESH_ERR_PARSE;
  }
  if (strlen(s) >= cap) {
    snprintf(why, wcap, "%s: longer than %zu bytes", key, cap - 1);
    return MESH_ERR_PARSE;
  }
  snprintf(dst, cap, "%s", s);
  return 0;
}

int dst_registration_parse(mesh_ctx *ctx, const mesh_store_opts *so, const char *body, size_t len,
                           dst_registration *out, char *why, size_t cap) {
  static const char *const known[] = {"namespace", "name",      "labels",       "serviceAccount",
                                      "address",   "addresses", "ports",        "proxyPort",
                                      "adminPort", "weight",    "lease_seconds"};
  memset(out, 0, sizeof *out);
  if (len > DST_REGISTER_BODY_MAX) {
    snprintf(why, cap, "the body is over %u bytes", DST_REGISTER_BODY_MAX);
    return MESH_ERR_PARSE;
  }
  json_error_t je;
  json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  if (!json_is_object(req)) {
    snprintf(why, cap, "expected a JSON object: %s", req ? "not an object" : je.text);
    json_decref(req);
    return MESH_ERR_PARSE;
  }
  int rc = 0;
  const char *key;
  json_t *v;
  json_object_foreach(req, key, v) {
    size_t k = 0;
    while (k < sizeof known / sizeof *known && strcmp(key, known[k])) k++;
    if (k == sizeof known / sizeof *known) { /* a typo must not pass as a default */
      snprintf(why, cap, "unknown field \"%.64s\"", key);
      rc = MESH_ERR_PARSE;
      break;
    }
  }
  if (!rc) rc = str_field(req, "namespace", NULL, out->ns, sizeof out->ns, why, cap);
  if (!rc) rc = str_field(req, "name", NULL, out->name, sizeof out->name, why, cap);
  if (!rc) rc = str_field(req, "serviceAccount", "default", out->sa, sizeof out->sa, why, cap);
  if (!rc && !json_object_get(req, "address") && !json_object_get(req, "addresses")) {
    snprintf(why, cap, "address: is required");
    rc = MESH_ERR_PARSE;
  }
  json_t *lease = json_object_get(req, "lease_seconds");
  out->lease_s = DST_LEASE_DEFAULT_S;
  if (!rc && lease) {
    json_int_t l = json_is_integer(lease) ? json_integer_value(lease) : -1;
    if (l < DST_LEASE_MIN_S || l > DST_LEASE_MAX_S) {
      snprintf(why, cap, "lease_seconds: an integer from %u to %u", DST_LEASE_MIN_S,
               DST_LEASE_MAX_S);
      rc = MESH_ERR_PARSE;
    }
    out->lease_s = (uint32_t)l;
  }
  json_t *m = NULL;
  char *text = NULL;
  if (!rc) {
    /* The Workload a manifest would be, checked by the store's own parser:
     * one set of rules for files, etcd keys and registrations. */
    json_t *meta = json_pack("{s:s,s:s}", "name", out->name, "namespace", out->ns);
    json_t *spec = json_pack("{s:s}", "serviceAccount", out->sa);
    static const char *const spec_keys[] = {"address",   "addresses", "ports",
                                            "proxyPort", "adminPort", "weight"};
    for (size_t i = 0; spec && i < sizeof spec_keys / sizeof *spec_keys; i++)
      if ((v = json_object_get(req, spec_keys[i]))) json_object_set(spec, spec_keys[i], v);
    if (meta && (v = json_object_get(req, "labels"))) json_object_set(meta, "labels", v);
    m = meta && spec ? json_pack("{s:s,s:s,s:O,s:O}", "apiVersion", "mesh.libmesh.io/v1alpha1",
                                 "kind", "Workload", "metadata", meta, "spec", spec)
                     : NULL;
    json_decref(meta);
    json_decref(spec);
    text = m ? json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (!text) rc = MESH_ERR_NOMEM;
  }
  mesh_snapshot_builder *b = NULL;
  mesh_diags *diags = NULL;
  mesh_snapshot *snap = NULL;
  if (!rc) {
    char src[340];
    snprintf(src, sizeof src, SOURCE_PREFIX "%s/%s", out->ns, out->name);
    rc = mesh_diags_new(ctx, &diags);
    if (!rc) rc = mesh_snapshot_builder_new(ctx, so, &b);
    if (!rc) rc = mesh_snapshot_builder_add(b, src, text, strlen(text), diags);
    if (!rc) {
      rc = mesh_snapshot_builder_finish(b, diags, &snap);
      b = NULL; /* consumed */
    }
    if (rc == MESH_ERR_PARSE || rc == MESH_ERR_LIMIT) {
      const char *first = NULL;
      for (size_t i = 0; i < mesh_diags_count(diags) && !first; i++)
        if (mesh_diags_severity(diags, i) == MESH_DIAG_ERROR) first = mesh_diags_text(diags, i);
      snprintf(why, cap, "%s", first ? first : "not a valid Workload");
      rc = MESH_ERR_PARSE;
    }
  }
  mesh_snapshot_unref(snap);
  mesh_snapshot_builder_free(b);
  mesh_diags_free(diags);
  json_decref(m);
  json_decref(req);
  if (rc) {
    free(text);
    if (rc == MESH_ERR_NOMEM) snprintf(why, cap, "out of memory");
    return rc;
  }
  out->manifest = text;
  out->len = strlen(text);
  return 0;
}

/* ---- The registry ------------------------------------------------------- */

int dst_registry_new(mesh_ctx *ctx, struct event_base *base, const dst_registry_opts *o,
                     dst_registry **ret) {
  if (!ctx || !base || !o || !o->trust_domain || !o->cp_ns || !ret) return MESH_ERR_INVALID;
  dst_registry *r = calloc(1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->ctx = ctx;
  r->base = base;
  r->store = o->store;
  r->so = o->so;
  r->log = o->log;
  snprintf(r->td, sizeof r->td, "%s", o->trust_domain);
  snprintf(r->cp_ns, sizeof r->cp_ns, "%s", o->cp_ns);
  *ret = r;
  return 0;
}

size_t dst_registry_count(const dst_registry *r) { return r ? r->n : 0; }

static void reg_free(reg *g) {
  if (g->timer) event_free(g->timer);
  free(g->manifest);
  free(g);
}

static void unlink_reg(dst_registry *r, reg *g) {
  if (g->prev)
    g->prev->next = g->next;
  else
    r->regs = g->next;
  if (g->next) g->next->prev = g->prev;
  r->n--;
}

void dst_registry_free(dst_registry *r) {
  if (!r) return;
  while (r->regs) {
    reg *g = r->regs;
    unlink_reg(r, g);
    reg_free(g);
  }
  free(r);
}

static reg *find(dst_registry *r, const char *ns, const char *name) {
  for (reg *g = r->regs; g; g = g->next)
    if (!strcmp(g->ns, ns) && !strcmp(g->name, name)) return g;
  return NULL;
}

/* Hand the whole set to the store: its next snapshot has them all. */
static int publish(dst_registry *r) {
  const char **srcs = calloc(r->n ? r->n : 1, sizeof *srcs);
  const char **bufs = calloc(r->n ? r->n : 1, sizeof *bufs);
  size_t *lens = calloc(r->n ? r->n : 1, sizeof *lens);
  int rc = srcs && bufs && lens ? 0 : MESH_ERR_NOMEM;
  size_t i = 0;
  for (reg *g = r->regs; !rc && g; g = g->next, i++) {
    srcs[i] = g->source;
    bufs[i] = g->manifest;
    lens[i] = g->len;
  }
  if (!rc) rc = mesh_store_set_extra(r->store, r->n, srcs, bufs, lens);
  free(srcs);
  free(bufs);
  free(lens);
  return rc;
}

static void on_expire(evutil_socket_t fd, short what, void *ud) {
  reg *g = ud;
  dst_registry *r = g->r;
  (void)fd;
  (void)what;
  unlink_reg(r, g);
  rlog(r, "INFO", "registration %s/%s: lease %s expired after %u s without a renewal", g->ns,
       g->name, g->lease_id, g->lease_s);
  reg_free(g);
  int rc = publish(r);
  if (rc < 0)
    rlog(r, "WARN", "registrations: the store refused the change (%s): %s", mesh_strerror(rc),
         mesh_store_last_error(r->store) ? mesh_store_last_error(r->store) : "");
}

static void arm(reg *g) {
  struct timeval tv = {(time_t)g->lease_s, 0};
  event_add(g->timer, &tv); /* re-adding moves it: a renewal */
}

/* Over mTLS the caller must be the workload's service account; over
 * plaintext (loopback only, see main.c) there is nobody to check. */
static bool allowed(dst_registry *r, mesh_rpc_call *call, const char *ns, const char *name,
                    const char *sa, const reg *existing) {
  const char *peer = mesh_rpc_call_peer_identity(call);
  char want[400];
  if (!peer) {
    if (existing && existing->peer[0]) {
      mesh_rpc_reply_error(call, 403, MESH_RPC_CODE_PERMISSION_DENIED,
                           "registered over mTLS: only its identity may change it");
      return false;
    }
    return true;
  }
  if (sa) {
    snprintf(want, sizeof want, "%s.%s.serviceaccount.identity.%s.%s", sa, ns, r->cp_ns, r->td);
    if (strcmp(peer, want)) {
      char why[800];
      snprintf(why, sizeof why, "the caller is %s, not %s (serviceAccount %s in %s)", peer, want,
               sa, ns);
      rlog(r, "WARN", "registration %s/%s refused: %s", ns, name, why);
      mesh_rpc_reply_error(call, 403, MESH_RPC_CODE_PERMISSION_DENIED, why);
      return false;
    }
  }
  if (existing && strcmp(existing->peer, peer)) {
    char why[800];
    snprintf(why, sizeof why, "%s/%s is registered by %s, not %s", ns, name,
             existing->peer[0] ? existing->peer : "a plaintext caller", peer);
    rlog(r, "WARN", "registration change refused: %s", why);
    mesh_rpc_reply_error(call, 403, MESH_RPC_CODE_PERMISSION_DENIED, why);
    return false;
  }
  return true;
}

/* A Workload of the same namespace and name from the manifests. */
static const char *manifest_source(dst_registry *r, const char *ns, const char *name) {
  static char where[600];
  mesh_snapshot *s = mesh_store_snapshot(r->store);
  const char *found = NULL;
  for (size_t i = 0; s && i < mesh_snapshot_count(s) && !found; i++) {
    const char *src = mesh_snapshot_source(s, i);
    if (mesh_snapshot_kind(s, i) != MESH_KIND_WORKLOAD ||
        strcmp(mesh_snapshot_namespace(s, i), ns) || strcmp(mesh_snapshot_name(s, i), name) ||
        !strncmp(src, SOURCE_PREFIX, strlen(SOURCE_PREFIX)))
      continue;
    snprintf(where, sizeof where, "%s:%u", src, (unsigned)mesh_snapshot_line(s, i));
    found = where;
  }
  mesh_snapshot_unref(s);
  return found;
}

static void reply_lease(mesh_rpc_call *call, const reg *g, bool renewed) {
  char out[200];
  snprintf(out, sizeof out, "{\"lease_id\":\"%s\",\"lease_seconds\":%u,\"renewed\":%s}",
           g->lease_id, g->lease_s, renewed ? "true" : "false");
  mesh_rpc_reply(call, 200, out);
}

static void store_refused(dst_registry *r, mesh_rpc_call *call, int rc) {
  char why[800];
  const char *e = mesh_store_last_error(r->store);
  snprintf(why, sizeof why, "the store refused the change: %s",
           e && rc != MESH_ERR_NOMEM ? e : mesh_strerror(rc));
  mesh_rpc_reply_error(call, 503, MESH_RPC_CODE_UNAVAILABLE, why);
}

static void on_register(void *ud, mesh_rpc_call *call) {
  dst_registry *r = ud;
  if (!r->store) {
    mesh_rpc_reply_error(call, 412, MESH_RPC_CODE_FAILED_PRECONDITION,
                         "registrations need --store-dir: the etcd store does not take them");
    return;
  }
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len);
  dst_registration in;
  char why[600];
  int rc = dst_registration_parse(r->ctx, r->so, body, len, &in, why, sizeof why);
  if (rc) {
    mesh_rpc_reply_error(
        call, rc == MESH_ERR_PARSE ? 400 : 500,
        rc == MESH_ERR_PARSE ? MESH_RPC_CODE_INVALID_ARGUMENT : MESH_RPC_CODE_INTERNAL, why);
    return;
  }
  reg *g = find(r, in.ns, in.name);
  if (!allowed(r, call, in.ns, in.name, in.sa, g)) {
    dst_registration_clear(&in);
    return;
  }
  const char *where = manifest_source(r, in.ns, in.name);
  if (where) {
    char msg[1200];
    snprintf(msg, sizeof msg,
             "Workload %s/%s is a manifest (%s): a manifest is not replaced by a registration",
             in.ns, in.name, where);
    mesh_rpc_reply_error(call, 412, MESH_RPC_CODE_FAILED_PRECONDITION, msg);
    dst_registration_clear(&in);
    return;
  }
  if (g) { /* a renewal: the lease moves on, the Workload may change */
    bool same = g->len == in.len && !memcmp(g->manifest, in.manifest, in.len);
    char *old = g->manifest;
    size_t old_len = g->len;
    g->manifest = in.manifest;
    g->len = in.len;
    g->lease_s = in.lease_s;
    in.manifest = NULL;
    if (!same && (rc = publish(r)) < 0) {
      free(g->manifest);
      g->manifest = old;
      g->len = old_len;
      publish(r);
      store_refused(r, call, rc);
      return;
    }
    free(old);
    arm(g);
    if (!same)
      rlog(r, "INFO", "registration %s/%s changed (lease %s)", g->ns, g->name, g->lease_id);
    reply_lease(call, g, true);
    return;
  }
  if (r->n >= DST_REGISTRATIONS_MAX) {
    dst_registration_clear(&in);
    mesh_rpc_reply_error(call, 429, MESH_RPC_CODE_RESOURCE_EXHAUSTED, "too many registrations");
    return;
  }
  g = calloc(1, sizeof *g);
  if (g) g->timer = evtimer_new(r->base, on_expire, g);
  if (!g || !g->timer) {
    if (g) reg_free(g);
    dst_registration_clear(&in);
    mesh_rpc_reply_error(call, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
    return;
  }
  g->r = r;
  snprintf(g->ns, sizeof g->ns, "%s", in.ns);
  snprintf(g->name, sizeof g->name, "%s", in.name);
  snprintf(g->source, sizeof g->source, SOURCE_PREFIX "%s/%s", in.ns, in.name);
  const char *peer = mesh_rpc_call_peer_identity(call);
  snprintf(g->peer, sizeof g->peer, "%s", peer ? peer : "");
  uint64_t id = 0;
  if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
    id = (uint64_t)(uintptr_t)g ^ (uint64_t)time(NULL);
  snprintf(g->lease_id, sizeof g->lease_id, "%016llx", (unsigned long long)id);
  g->manifest = in.manifest;
  g->len = in.len;
  g->lease_s = in.lease_s;
  g->next = r->regs;
  if (r->regs) r->regs->prev = g;
  r->regs = g;
  r->n++;
  if ((rc = publish(r)) < 0) {
    unlink_reg(r, g);
    reg_free(g);
    publish(r);
    store_refused(r, call, rc);
    return;
  }
  arm(g);
  if (g->peer[0])
    rlog(r, "INFO", "registration %s/%s (%s) from %s: lease %s, %u s", g->ns, g->name, g->peer,
         mesh_rpc_call_peer_address(call), g->lease_id, g->lease_s);
  else
    rlog(r, "WARN",
         "registration %s/%s from %s accepted without a peer identity (plaintext): "
         "lease %s, %u s",
         g->ns, g->name, mesh_rpc_call_peer_address(call), g->lease_id, g->lease_s);
  reply_lease(call, g, false);
}

static void on_deregister(void *ud, mesh_rpc_call *call) {
  dst_registry *r = ud;
  if (!r->store) {
    mesh_rpc_reply_error(call, 412, MESH_RPC_CODE_FAILED_PRECONDITION,
                         "registrations need --store-dir: the etcd store does not take them");
    return;
  }
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len);
  json_error_t je;
  json_t *req = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  const char *ns = json_string_value(json_object_get(req, "namespace"));
  const char *name = json_string_value(json_object_get(req, "name"));
  if (!json_is_object(req) || !ns || !name) {
    json_decref(req);
    mesh_rpc_reply_error(call, 400, MESH_RPC_CODE_INVALID_ARGUMENT,
                         "expected {\"namespace\": \"...\", \"name\": \"...\"}");
    return;
  }
  reg *g = find(r, ns, name);
  if (!g) {
    char why[400];
    snprintf(why, sizeof why, "no registration %.64s/%.253s", ns, name);
    json_decref(req);
    mesh_rpc_reply_error(call, 404, MESH_RPC_CODE_NOT_FOUND, why);
    return;
  }
  json_decref(req);
  /* The service account is the registration's: only its holder may end it. */
  if (!allowed(r, call, g->ns, g->name, NULL, g)) return;
  unlink_reg(r, g);
  rlog(r, "INFO", "registration %s/%s deregistered (lease %s)", g->ns, g->name, g->lease_id);
  reg_free(g);
  int rc = publish(r);
  if (rc < 0)
    rlog(r, "WARN", "registrations: the store refused the change (%s): %s", mesh_strerror(rc),
         mesh_store_last_error(r->store) ? mesh_store_last_error(r->store) : "");
  mesh_rpc_reply(call, 200, "{}");
}

int dst_registry_handle(dst_registry *r, mesh_rpc_server *srv) {
  int rc = mesh_rpc_server_handle(srv, REGISTER_PATH, on_register, r);
  return rc ? rc : mesh_rpc_server_handle(srv, DEREGISTER_PATH, on_deregister, r);
}
