/* libmesh proxy identity: the proxy certifies itself with mesh-identity (key in memory, CSR, token) and renews before expiry. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include <jansson.h>

#include <mesh/certify.h>
#include <mesh/error.h>
#include <mesh/identity.h>
#include <mesh/rpc.h>
#include <mesh/tls.h>

#include "ctx_internal.h"
#include "proxy_conn_internal.h"

typedef struct proxy_identity proxy_identity;

/* One certification at a time: the timer starts a call, its answer arms the
 * timer again (renewal or retry). Nothing else of the proxy waits on it:
 * until the first certificate is installed the proxy is simply not ready. */
struct proxy_identity {
  mesh_proxy *p;
  mesh_identity *local; /* what we ask for */
  mesh_identity *svc;   /* what mesh-identity must present */
  struct event *timer;
  /* The call in flight (all NULL between calls). The key lives in memory
   * only, from the CSR until its certificate is installed; the anchors are
   * those the TLS connection trusted, so the answer is checked against the
   * same ones. */
  mesh_rpc_client *cl;
  mesh_key *key;
  char *anchors;
  size_t anchors_len;
  uint32_t failures; /* in a row, for the backoff */
  int freeing;
};

static void rfc3339(uint64_t t, char buf[32]) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, 32, "@%llu", (unsigned long long)t);
}

/* Drop what the finished call held (the client may be the one calling us:
 * it is then freed once its callback returns). */
static void call_done(proxy_identity *id) {
  mesh_rpc_client_free(id->cl);
  id->cl = NULL;
  mesh_key_free(id->key);
  id->key = NULL;
  mesh__free(id->p->ctx, id->anchors);
  id->anchors = NULL;
}

/* Every failure is retried, not only unavailable and internal as
 * doc/protocol.md says of unchanged requests: each attempt re-reads the
 * token and the anchors and makes a new key, so a fixed token file or a
 * rotated anchor bundle is picked up, as Linkerd's proxy keeps retrying. */
static void retry(proxy_identity *id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void retry(proxy_identity *id, const char *fmt, ...) {
  mesh_proxy *p = id->p;
  /* Formatted before call_done: an argument may live in the call's state. */
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  call_done(id);
  uint64_t now = (uint64_t)time(NULL);
  uint64_t ms = mesh_identity_retry_delay_ms(id->failures, now, p->ready ? p->not_after : 0,
                                             mesh__proxy_rand(p));
  if (id->failures < 64) id->failures++;
  mesh__log(p->ctx, MESH_LOG_ERROR, "identity: %s; %s; retrying in %llu ms (failure %u)", msg,
            !p->ready ? "not ready" : now < p->not_after ? "keeping the current certificate"
                                                         : "the current certificate has expired",
            (unsigned long long)ms, (unsigned)id->failures);
  mesh__proxy_timer(id->timer, ms);
}

/* mesh-identity's reason, from its error body {"error":{"code","message"}},
 * on one line: it comes from the network and goes to the log. */
static void refusal(const char *body, size_t len, char *buf, size_t cap) {
  json_t *j = body ? json_loadb(body, len, 0, NULL) : NULL;
  const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
  snprintf(buf, cap, "%s", m && *m ? m : "no reason given");
  json_decref(j);
  for (char *c = buf; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

static void on_reply(void *ud, int status, const char *body, size_t len, const char *error) {
  proxy_identity *id = ud;
  mesh_proxy *p = id->p;
  const char *addr = p->o->identity_addr, *svc = mesh_identity_dns(id->svc);
  if (id->freeing) return;
  if (status < 0) {
    retry(id, "no answer from mesh-identity at %s (expected as %s): %s: %s", addr, svc,
          mesh_strerror(status), error ? error : "");
    return;
  }
  if (status != 200) {
    char reason[512];
    refusal(body, len, reason, sizeof reason);
    retry(id, "mesh-identity at %s refused to certify %s: %s (HTTP %d): %s", addr,
          mesh_identity_dns(id->local), error ? error : "unknown", status, reason);
    return;
  }
  mesh_certs *chain = NULL, *anchors = NULL;
  uint64_t valid_until = 0, now = (uint64_t)time(NULL);
  const char *why = NULL;
  int rc = mesh_certify_response_parse(p->ctx, body, len, &chain, &valid_until, &why);
  if (rc) {
    retry(id, "mesh-identity at %s answered with a malformed certificate: %s", addr,
          why ? why : mesh_strerror(rc));
    return;
  }
  /* The service is trusted for issuing, but what it issued is still
   * checked: a chain to our anchors, for exactly the identity we asked. */
  rc = mesh_certs_parse(p->ctx, id->anchors, id->anchors_len, &why, &anchors);
  if (!rc) rc = mesh_certs_verify_peer(chain, anchors, now, id->local, &why, NULL);
  mesh_certs_free(anchors);
  if (rc) {
    mesh_certs_free(chain);
    retry(id, "the certificate from mesh-identity at %s does not verify against %s: %s", addr,
          p->o->anchors, why ? why : mesh_strerror(rc));
    return;
  }
  const char *pem = mesh_certs_bundle_pem(chain, 0), *key = mesh_key_pem(id->key);
  rc = mesh__proxy_creds_install(p, pem, strlen(pem), key, strlen(key), id->anchors,
                                 id->anchors_len, &why);
  if (rc) {
    mesh_certs_free(chain);
    retry(id, "the certificate from mesh-identity at %s cannot be used: %s", addr,
          why ? why : mesh_strerror(rc));
    return;
  }
  uint64_t nb = mesh_certs_not_before(chain, 0), na = mesh_certs_not_after(chain, 0);
  uint64_t at = mesh_identity_renew_at(nb, na, now);
  char until[32];
  rfc3339(na, until);
  mesh__log(p->ctx, MESH_LOG_INFO,
            "identity: certified %s by mesh-identity at %s: serial %s, valid until %s (%llu); "
            "renewing in %llu s",
            p->identity, addr, mesh_certs_serial(chain, 0), until, (unsigned long long)na,
            (unsigned long long)(at - now));
  mesh_certs_free(chain);
  id->failures = 0;
  call_done(id);
  mesh__proxy_timer(id->timer, (at - now) * 1000u);
}

/* One Certify: a new key and CSR, the token as it is now, over TLS
 * checked against the anchors as they are now. */
static void certify(evutil_socket_t fd, short what, void *arg) {
  proxy_identity *id = arg;
  mesh_proxy *p = id->p;
  mesh_ctx *ctx = p->ctx;
  (void)fd;
  (void)what;
  const char *why = NULL;
  size_t tlen = 0, traw = 0;
  char *token = NULL, *req = NULL;
  mesh_tls_opts *to = NULL;
  mesh_tls_config *tls = NULL;
  int rc;
  id->anchors = mesh__proxy_read_file(ctx, p->o->anchors, MESH_CERTS_MAX_BYTES, &id->anchors_len, &why);
  if (!id->anchors) {
    retry(id, "trust anchors %s: %s", p->o->anchors, why);
    return;
  }
  token = mesh__proxy_read_file(ctx, p->o->identity_token_file, MESH_TOKEN_MAX_LEN, &tlen, &why);
  if (!token) {
    retry(id, "token file %s: %s", p->o->identity_token_file, why);
    return;
  }
  traw = tlen;
  /* A token written with echo or by `meshctl identity token > F` ends with a newline. */
  while (tlen && (token[tlen - 1] == '\n' || token[tlen - 1] == '\r' || token[tlen - 1] == ' '))
    token[--tlen] = '\0';
  if ((rc = mesh_key_generate(ctx, &id->key))) {
    mesh__wipe_free(ctx, token, traw);
    retry(id, "cannot generate a key: %s", mesh_strerror(rc));
    return;
  }
  rc = mesh_certify_request(id->key, id->local, token, &req);
  mesh__wipe_free(ctx, token, traw);
  if (rc) {
    retry(id, "cannot build the Certify request: %s%s", mesh_strerror(rc),
          rc == MESH_ERR_PARSE || rc == MESH_ERR_LIMIT
              ? ": the token file does not hold a JWS (meshctl identity token)"
              : "");
    return;
  }
  /* Client-only TLS: no certificate is presented, not even a current one,
   * so that an expired certificate can never lock the proxy out of its
   * renewal. The service's certificate is still checked. */
  rc = mesh_tls_opts_new(ctx, &to);
  if (!rc) rc = mesh_tls_opts_set_anchors(to, id->anchors, id->anchors_len);
  if (!rc) rc = mesh_tls_opts_set_alpn(to, "h2");
  if (!rc) rc = mesh_tls_opts_set_handshake_timeout(to, p->o->header_ms);
  if (!rc) rc = mesh_tls_config_new(to, &why, &tls);
  mesh_tls_opts_free(to);
  if (!rc) rc = mesh_rpc_client_new(ctx, p->base, tls, p->o->identity_addr,
                                    mesh_identity_dns(id->svc), &id->cl);
  mesh_tls_config_unref(tls); /* the client holds its own reference */
  if (!rc) rc = mesh_rpc_client_call(id->cl, MESH_CERTIFY_PATH, req, strlen(req),
                                     MESH_PROXY_IDENTITY_TIMEOUT_MS, on_reply, id);
  memset(req, 0, strlen(req)); /* it carries the token */
  mesh_free_string(ctx, req);
  if (rc) retry(id, "cannot call mesh-identity at %s: %s%s%s", p->o->identity_addr,
                mesh_strerror(rc), why ? ": " : "", why ? why : "");
}

int mesh__proxy_identity_start(mesh_proxy *p, const char **why, proxy_identity **ret) {
  mesh_ctx *ctx = p->ctx;
  proxy_identity *id = mesh__calloc(ctx, 1, sizeof *id);
  if (!id) return MESH_ERR_NOMEM;
  id->p = p;
  const char *name = p->o->identity_svc_name ? p->o->identity_svc_name
                                             : MESH_PROXY_DEFAULT_IDENTITY_SVC_NAME;
  /* Linkerd's local name, <sa>.<ns>.serviceaccount.identity.<cp-ns>.<td>,
   * shares its control plane and trust domain with the identity service. */
  int rc = mesh_identity_parse(ctx, name, NULL, why, &id->svc);
  if (!rc)
    rc = mesh_identity_new(ctx, p->o->workload_ns ? p->o->workload_ns : "default",
                           p->o->identity_sa, mesh_identity_cp_ns(id->svc),
                           mesh_identity_trust_domain(id->svc), why, &id->local);
  if (!rc && !(id->timer = evtimer_new(p->base, certify, id))) rc = MESH_ERR_NOMEM;
  if (rc) {
    mesh__proxy_identity_free(id);
    return rc;
  }
  mesh__log(ctx, MESH_LOG_INFO, "identity: certifying %s with mesh-identity at %s (expected as %s)",
            mesh_identity_dns(id->local), p->o->identity_addr, mesh_identity_dns(id->svc));
  mesh__proxy_timer(id->timer, 0);
  *ret = id;
  return 0;
}

void mesh__proxy_identity_free(proxy_identity *id) {
  if (!id) return;
  id->freeing = 1; /* the pending call's callback runs during mesh_rpc_client_free */
  call_done(id);
  if (id->timer) event_free(id->timer);
  mesh_identity_free(id->local);
  mesh_identity_free(id->svc);
  mesh__free(id->p->ctx, id);
}
