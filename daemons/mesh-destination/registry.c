/* mesh-destination's workload registrations: Register/Deregister checked as Workload manifests, held under leases: in memory and merged into a directory store, or as keys bound to etcd leases. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/mesh.h>

#include "daemon_etcd.h"
#include "etcd.h"
#include "registry.h"

#define SOURCE_PREFIX REGISTRATION_SOURCE /* a registration's source in the snapshot */

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

typedef struct op op; /* a Register or Deregister in progress on etcd */

struct dst_registry {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_store *store;
  dst_etcd *etcd;
  op *ops;
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
                           const char *peer, dst_registration *out, char *why, size_t cap) {
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
    /* Who may renew or end it, kept with it (an etcd key outlives a replica). */
    if (meta && peer && *peer)
      json_object_set_new(meta, "annotations", json_pack("{s:s}", REGISTERED_BY, peer));
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
  if (!ctx || !base || !o || !o->store || !o->trust_domain || !o->cp_ns || !ret)
    return MESH_ERR_INVALID;
  dst_registry *r = calloc(1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->ctx = ctx;
  r->base = base;
  r->store = o->store;
  r->etcd = o->etcd;
  r->so = o->so;
  r->log = o->log;
  snprintf(r->td, sizeof r->td, "%s", o->trust_domain);
  snprintf(r->cp_ns, sizeof r->cp_ns, "%s", o->cp_ns);
  *ret = r;
  return 0;
}

size_t dst_registry_count(const dst_registry *r) {
  return !r ? 0 : r->etcd ? dst_etcd_registrations(r->etcd) : r->n;
}

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

static void op_free(op *o);

void dst_registry_free(dst_registry *r) {
  if (!r) return;
  while (r->ops) op_free(r->ops);
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
 * plaintext (loopback only, see main.c) there is nobody to check. holder:
 * who registered it ("" over plaintext), NULL when it is not registered. */
static bool allowed(dst_registry *r, mesh_rpc_call *call, const char *ns, const char *name,
                    const char *sa, const char *holder) {
  const char *peer = mesh_rpc_call_peer_identity(call);
  char want[400];
  if (!peer) {
    if (holder && holder[0]) {
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
  if (holder && strcmp(holder, peer)) {
    char why[800];
    snprintf(why, sizeof why, "%s/%s is registered by %s, not %s", ns, name,
             holder[0] ? holder : "a plaintext caller", peer);
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

static void reply_lease(mesh_rpc_call *call, const char *lease_id, uint32_t lease_s, bool renewed) {
  char out[200];
  snprintf(out, sizeof out, "{\"lease_id\":\"%s\",\"lease_seconds\":%u,\"renewed\":%s}",
           lease_id, lease_s, renewed ? "true" : "false");
  mesh_rpc_reply(call, 200, out);
}

static void store_refused(dst_registry *r, mesh_rpc_call *call, int rc) {
  char why[800];
  const char *e = mesh_store_last_error(r->store);
  snprintf(why, sizeof why, "the store refused the change: %s",
           e && rc != MESH_ERR_NOMEM ? e : mesh_strerror(rc));
  mesh_rpc_reply_error(call, 503, MESH_RPC_CODE_UNAVAILABLE, why);
}

static void etcd_register(dst_registry *r, mesh_rpc_call *call, dst_registration *in);
static void etcd_deregister(dst_registry *r, mesh_rpc_call *call, const char *ns, const char *name);

static void on_register(void *ud, mesh_rpc_call *call) {
  dst_registry *r = ud;
  size_t len = 0;
  const char *body = mesh_rpc_call_body(call, &len);
  dst_registration in;
  char why[600];
  int rc = dst_registration_parse(r->ctx, r->so, body, len, mesh_rpc_call_peer_identity(call), &in,
                                  why, sizeof why);
  if (rc) {
    mesh_rpc_reply_error(
        call, rc == MESH_ERR_PARSE ? 400 : 500,
        rc == MESH_ERR_PARSE ? MESH_RPC_CODE_INVALID_ARGUMENT : MESH_RPC_CODE_INTERNAL, why);
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
  if (r->etcd) {
    etcd_register(r, call, &in); /* takes in */
    return;
  }
  reg *g = find(r, in.ns, in.name);
  if (!allowed(r, call, in.ns, in.name, in.sa, g ? g->peer : NULL)) {
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
    reply_lease(call, g->lease_id, g->lease_s, true);
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
  reply_lease(call, g->lease_id, g->lease_s, false);
}

static void on_deregister(void *ud, mesh_rpc_call *call) {
  dst_registry *r = ud;
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
  if (r->etcd) {
    etcd_deregister(r, call, ns, name);
    json_decref(req);
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
  if (!allowed(r, call, g->ns, g->name, NULL, g->peer)) return;
  unlink_reg(r, g);
  rlog(r, "INFO", "registration %s/%s deregistered (lease %s)", g->ns, g->name, g->lease_id);
  reg_free(g);
  int rc = publish(r);
  if (rc < 0)
    rlog(r, "WARN", "registrations: the store refused the change (%s): %s", mesh_strerror(rc),
         mesh_store_last_error(r->store) ? mesh_store_last_error(r->store) : "");
  mesh_rpc_reply(call, 200, "{}");
}

/* ---- On etcd ------------------------------------------------------------ */

/* A registration is the key <prefix>registrations/<ns>/<name> holding its
 * Workload manifest, bound to an etcd lease of lease_seconds: etcd deletes
 * it when the lease lapses, every replica's watch sees it come and go, and
 * a restarted replica reads it back. Register reads the key (who holds it,
 * under which lease), then either keeps that lease alive (nothing changed:
 * one request) or grants a new one and writes the key in a transaction
 * that fails if the key changed since the read, then revokes the old lease.
 * Deregister reads the key, then revokes its lease, which deletes it. */
struct op {
  dst_registry *r;
  mesh_rpc_call *call;
  dst_registration in; /* Register; a Deregister has in.manifest NULL */
  char ns[64], name[254];
  char *key;           /* base64 */
  long long mod, lease, new_lease; /* the key's mod_revision and lease as read (0: none) */
  char *held;          /* the manifest as read, NULL when the key is absent */
  size_t held_len;
  dst_etcd_req *req;
  op *prev, *next;
};

static void op_free(op *o) {
  dst_registry *r = o->r;
  dst_etcd_cancel(o->req);
  if (o->prev) o->prev->next = o->next;
  else r->ops = o->next;
  if (o->next) o->next->prev = o->prev;
  dst_registration_clear(&o->in);
  free(o->key);
  free(o->held);
  free(o);
}

/* The call is answered: the op ends. */
static void op_error(op *o, int status, const char *code, const char *why) {
  mesh_rpc_reply_error(o->call, status, code, why);
  op_free(o);
}

static void op_send(op *o, const char *path, json_t *body, dst_etcd_reply_fn then) {
  if (dst_etcd_request(o->r->etcd, path, body, then, o, &o->req) < 0)
    op_error(o, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
}

/* Nobody waits for a revoke: a lease left behind lapses by itself. */
static void revoke(dst_registry *r, long long lease) {
  if (lease > 0)
    dst_etcd_request(r->etcd, "/v3/lease/revoke", json_pack("{s:I}", "ID", (json_int_t)lease),
                     NULL, NULL, NULL);
}

/* Who registered the held manifest: its REGISTERED_BY annotation, "" when
 * none (plaintext, or a key written by hand). */
static void holder_of(const op *o, char *out, size_t cap) {
  json_error_t je;
  json_t *m = json_loadb(o->held, o->held_len, 0, &je);
  const char *p = json_string_value(
      json_object_get(json_object_get(json_object_get(m, "metadata"), "annotations"), REGISTERED_BY));
  snprintf(out, cap, "%s", p ? p : "");
  json_decref(m);
}

static void lease_text(long long id, char *out, size_t cap) {
  snprintf(out, cap, "%016llx", (unsigned long long)id);
}

static void on_written(void *ud, json_t *answer, const char *why) {
  op *o = ud;
  dst_registry *r = o->r;
  o->req = NULL;
  if (!answer || !json_is_true(json_object_get(answer, "succeeded"))) {
    revoke(r, o->new_lease);
    if (!answer) op_error(o, 503, MESH_RPC_CODE_UNAVAILABLE, why);
    else
      op_error(o, 409, MESH_RPC_CODE_ABORTED,
               "the registration changed meanwhile (another replica or caller): try again");
    return;
  }
  if (o->lease != o->new_lease) revoke(r, o->lease);
  char id[24];
  lease_text(o->new_lease, id, sizeof id);
  const char *peer = mesh_rpc_call_peer_identity(o->call);
  rlog(r, peer ? "INFO" : "WARN", "registration %s/%s%s (%s) from %s: etcd lease %s, %u s", o->ns,
       o->name, o->held ? " changed" : "", peer ? peer : "plaintext: no peer identity",
       mesh_rpc_call_peer_address(o->call), id, o->in.lease_s);
  reply_lease(o->call, id, o->in.lease_s, o->held != NULL);
  op_free(o);
}

/* The key, bound to the new lease, if nobody wrote it since it was read. */
static void on_granted(void *ud, json_t *answer, const char *why) {
  op *o = ud;
  o->req = NULL;
  o->new_lease = etcd_i64(json_object_get(answer, "ID"));
  if (o->new_lease <= 0) {
    op_error(o, 503, MESH_RPC_CODE_UNAVAILABLE, answer ? "etcd granted no lease" : why);
    return;
  }
  char *val = etcd_b64_encode(o->in.manifest, o->in.len);
  json_t *cmp = o->held ? json_pack("{s:s,s:s,s:s,s:I}", "key", o->key, "target", "MOD", "result",
                                    "EQUAL", "mod_revision", (json_int_t)o->mod)
                        : json_pack("{s:s,s:s,s:s,s:I}", "key", o->key, "target", "CREATE",
                                    "result", "EQUAL", "create_revision", (json_int_t)0);
  json_t *body = val && cmp ? json_pack("{s:[o],s:[{s:{s:s,s:s,s:I}}]}", "compare", cmp, "success",
                                        "request_put", "key", o->key, "value", val, "lease",
                                        (json_int_t)o->new_lease)
                            : NULL;
  free(val);
  if (!body) {
    revoke(o->r, o->new_lease);
    op_error(o, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
    return;
  }
  op_send(o, "/v3/kv/txn", body, on_written);
}

static void grant(op *o) {
  op_send(o, "/v3/lease/grant", json_pack("{s:I}", "TTL", (json_int_t)o->in.lease_s), on_granted);
}

static void on_kept_alive(void *ud, json_t *answer, const char *why) {
  op *o = ud;
  o->req = NULL;
  (void)why;
  /* A lease that lapsed since the read has no TTL, and took the key with
   * it: write it anew (the transaction checks that it is gone). */
  if (etcd_i64(json_object_get(json_object_get(answer, "result"), "TTL")) <= 0) {
    free(o->held);
    o->held = NULL;
    o->lease = 0;
    grant(o);
    return;
  }
  char id[24];
  lease_text(o->lease, id, sizeof id);
  reply_lease(o->call, id, o->in.lease_s, true);
  op_free(o);
}

static void on_removed(void *ud, json_t *answer, const char *why) {
  op *o = ud;
  o->req = NULL;
  if (!answer) {
    op_error(o, 503, MESH_RPC_CODE_UNAVAILABLE, why);
    return;
  }
  char id[24];
  lease_text(o->lease, id, sizeof id);
  rlog(o->r, "INFO", "registration %s/%s deregistered (etcd lease %s)", o->ns, o->name, id);
  mesh_rpc_reply(o->call, 200, "{}");
  op_free(o);
}

static void on_read(void *ud, json_t *answer, const char *why) {
  op *o = ud;
  dst_registry *r = o->r;
  o->req = NULL;
  json_t *kv = json_array_get(json_object_get(answer, "kvs"), 0);
  if (!answer) {
    op_error(o, 503, MESH_RPC_CODE_UNAVAILABLE, why);
    return;
  }
  if (kv) {
    const char *v = json_string_value(json_object_get(kv, "value"));
    o->held = etcd_b64_decode(v ? v : "", &o->held_len);
    o->mod = etcd_i64(json_object_get(kv, "mod_revision"));
    o->lease = etcd_i64(json_object_get(kv, "lease"));
    if (o->lease < 0) o->lease = 0; /* absent: a key without a lease */
    if (!o->held || o->mod <= 0) {
      op_error(o, 503, MESH_RPC_CODE_UNAVAILABLE, "etcd: not a range answer");
      return;
    }
  }
  char holder[400];
  if (o->held) holder_of(o, holder, sizeof holder);
  if (!o->in.manifest) { /* Deregister */
    if (!o->held) {
      char msg[400];
      snprintf(msg, sizeof msg, "no registration %s/%s", o->ns, o->name);
      op_error(o, 404, MESH_RPC_CODE_NOT_FOUND, msg);
    } else if (!allowed(r, o->call, o->ns, o->name, NULL, holder)) {
      op_free(o); /* answered */
    } else if (o->lease > 0) {
      op_send(o, "/v3/lease/revoke", json_pack("{s:I}", "ID", (json_int_t)o->lease), on_removed);
    } else {
      op_send(o, "/v3/kv/deleterange", json_pack("{s:s}", "key", o->key), on_removed);
    }
    return;
  }
  if (!allowed(r, o->call, o->ns, o->name, o->in.sa, o->held ? holder : NULL)) {
    op_free(o);
    return;
  }
  if (!o->held && dst_etcd_registrations(r->etcd) >= DST_REGISTRATIONS_MAX) {
    op_error(o, 429, MESH_RPC_CODE_RESOURCE_EXHAUSTED, "too many registrations");
    return;
  }
  bool same = o->held && o->held_len == o->in.len && !memcmp(o->held, o->in.manifest, o->in.len);
  if (same && o->lease > 0)
    op_send(o, "/v3/lease/keepalive", json_pack("{s:I}", "ID", (json_int_t)o->lease),
            on_kept_alive);
  else
    grant(o);
}

/* in.manifest set: a Register (taken from in); else a Deregister. */
static void etcd_start(dst_registry *r, mesh_rpc_call *call, dst_registration *in, const char *ns,
                       const char *name) {
  op *o = calloc(1, sizeof *o);
  char *key = o ? etcd_registration_key(dst_etcd_prefix(r->etcd), ns, name) : NULL;
  if (o) o->key = key ? etcd_b64_encode(key, strlen(key)) : NULL;
  free(key);
  if (!o || !o->key) {
    if (o) free(o);
    if (in) dst_registration_clear(in);
    mesh_rpc_reply_error(call, 500, MESH_RPC_CODE_INTERNAL, "out of memory");
    return;
  }
  o->r = r;
  o->call = call;
  if (in) {
    o->in = *in;
    in->manifest = NULL;
  }
  snprintf(o->ns, sizeof o->ns, "%s", ns);
  snprintf(o->name, sizeof o->name, "%s", name);
  o->next = r->ops;
  if (r->ops) r->ops->prev = o;
  r->ops = o;
  op_send(o, "/v3/kv/range", json_pack("{s:s}", "key", o->key), on_read);
}

static void etcd_register(dst_registry *r, mesh_rpc_call *call, dst_registration *in) {
  etcd_start(r, call, in, in->ns, in->name);
}

static void etcd_deregister(dst_registry *r, mesh_rpc_call *call, const char *ns, const char *name) {
  if (strlen(ns) >= 64 || strlen(name) >= 254) {
    mesh_rpc_reply_error(call, 404, MESH_RPC_CODE_NOT_FOUND, "no such registration");
    return;
  }
  etcd_start(r, call, NULL, ns, name);
}

int dst_registry_handle(dst_registry *r, mesh_rpc_server *srv) {
  int rc = mesh_rpc_server_handle(srv, REGISTER_PATH, on_register, r);
  return rc ? rc : mesh_rpc_server_handle(srv, DEREGISTER_PATH, on_deregister, r);
}
