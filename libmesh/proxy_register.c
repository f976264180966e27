/* libmesh proxy: meshd registers its Workload with mesh-destination under a lease, renews it, and deregisters before a graceful shutdown drains. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "proxy_conn_internal.h"

#define REGISTER_PATH "/mesh.Registry/Register"
#define DEREGISTER_PATH "/mesh.Registry/Deregister"
#define REG_CALL_MS 5000u   /* one Register call, connecting included */
#define DEREG_WAIT_MS 1000u /* how long a shutdown waits for its Deregister */
#define REG_BACKOFF_MIN_MS 200u
#define REG_BACKOFF_MAX_MS 5000u

struct proxy_register {
  mesh_proxy *p;
  struct event *timer;       /* the next Register: a renewal, or a retry */
  struct event *dereg_timer; /* bounds the shutdown's wait for Deregister */
  uint32_t backoff_ms;
  int registered, in_call, stopping, detached;
  void (*then)(mesh_proxy *p); /* what the shutdown does once deregistered */
  char lease_id[40];
};

static void after_ms(struct event *ev, uint32_t ms) {
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)((ms % 1000u) * 1000u)};
  event_add(ev, &tv);
}

int mesh_proxy_opts_set_register(mesh_proxy_opts *o, int on, uint32_t lease_s, const char *ports,
                                 const char **why) {
  if (!o) return MESH_ERR_INVALID;
  if (lease_s &&
      (lease_s < MESH_PROXY_REGISTER_LEASE_MIN_S || lease_s > MESH_PROXY_REGISTER_LEASE_MAX_S)) {
    if (why) *why = "the lease is 3 to 300 seconds";
    return MESH_ERR_RANGE;
  }
  /* "name=port,...": checked here so that a typo stops meshd at start. */
  size_t n = 0;
  for (const char *s = ports ? ports : ""; *s;) {
    const char *comma = strchr(s, ',');
    size_t len = comma ? (size_t)(comma - s) : strlen(s);
    const char *eq = memchr(s, '=', len);
    char num[8];
    size_t nl = eq ? len - (size_t)(eq - s) - 1 : 0;
    char *end = NULL;
    long port = 0;
    if (eq && nl && nl < sizeof num && eq[1] >= '0' && eq[1] <= '9') {
      memcpy(num, eq + 1, nl);
      num[nl] = 0;
      port = strtol(num, &end, 10);
    }
    if (!eq || eq == s || (size_t)(eq - s) > 15 || !end || *end || port < 1 || port > 65535 ||
        ++n > 64 || (comma && !comma[1])) {
      if (why)
        *why = "workload ports are name=port,... (names of 1-15 bytes, ports 1-65535, 64 at most)";
      return MESH_ERR_PARSE;
    }
    s += len + (comma ? 1 : 0);
  }
  char *copy = NULL;
  if (ports && *ports && !(copy = mesh__strdup(o->ctx, ports))) return MESH_ERR_NOMEM;
  mesh__free(o->ctx, o->reg_ports);
  o->reg_ports = copy;
  o->reg_on = on ? 1 : 0;
  o->reg_lease_s = lease_s ? lease_s : MESH_PROXY_REGISTER_DEFAULT_LEASE_S;
  return 0;
}

/* The address and port a listener of kind is bound to; 0 when there is none. */
static uint16_t bound(const mesh_proxy *p, int kind, char *ip, size_t cap) {
  for (size_t i = 0; p->lst && i < 2 + p->o->nmaps; i++) {
    if (!p->lst[i].l || p->lst[i].kind != kind) continue;
    const struct sockaddr *sa = (const struct sockaddr *)&p->lst[i].bound;
    if (sa->sa_family == AF_INET6) {
      const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
      inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)cap);
      return ntohs(s6->sin6_port);
    }
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &s4->sin_addr, ip, (socklen_t)cap);
    return ntohs(s4->sin_port);
  }
  return 0;
}

/* The service account: the option's, else the certificate's (its first
 * label), else Kubernetes' default. */
static void service_account(const mesh_proxy *p, char *sa, size_t cap) {
  const char *s = p->o->identity_sa;
  if (s)
    snprintf(sa, cap, "%s", s);
  else if (p->identity[0])
    snprintf(sa, cap, "%.*s", (int)strcspn(p->identity, "."), p->identity);
  else
    snprintf(sa, cap, "default");
}

static char *register_body(const mesh_proxy *p) {
  char ip[INET6_ADDRSTRLEN] = "", sa[64];
  uint16_t in_port = bound(p, LST_INBOUND, ip, sizeof ip);
  service_account(p, sa, sizeof sa);
  json_t *labels = json_object(), *ports = json_array();
  for (const char *s = p->o->labels_str ? p->o->labels_str : ""; labels && *s;) {
    size_t len = strcspn(s, ",");
    const char *eq = memchr(s, '=', len);
    if (eq) {
      char k[320], v[320];
      snprintf(k, sizeof k, "%.*s", (int)(eq - s), s);
      snprintf(v, sizeof v, "%.*s", (int)(len - (size_t)(eq - s) - 1), eq + 1);
      json_object_set_new(labels, k, json_string(v));
    }
    s += len + (s[len] == ',');
  }
  for (const char *s = p->o->reg_ports ? p->o->reg_ports : ""; ports && *s;) {
    size_t len = strcspn(s, ",");
    const char *eq = memchr(s, '=', len);
    char name[16];
    snprintf(name, sizeof name, "%.*s", (int)(eq - s), s);
    json_array_append_new(ports, json_pack("{s:s,s:i}", "name", name, "port", atoi(eq + 1)));
    s += len + (s[len] == ',');
  }
  json_t *req =
      labels && ports
          ? json_pack("{s:s,s:s,s:O,s:s,s:s,s:O,s:i,s:i,s:i}", "namespace",
                      p->o->workload_ns ? p->o->workload_ns : "default", "name",
                      p->o->workload_name, "labels", labels, "serviceAccount", sa, "address", ip,
                      "ports", ports, "proxyPort", (int)in_port, "adminPort", (int)p->admin_port,
                      "lease_seconds", (int)p->o->reg_lease_s)
          : NULL;
  char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  json_decref(labels);
  json_decref(ports);
  return body;
}

static void send_register(proxy_register *r);

static void on_timer(evutil_socket_t fd, short what, void *ud) {
  (void)fd;
  (void)what;
  send_register(ud);
}

static void retry(proxy_register *r, const char *why) {
  mesh__log(r->p->ctx, MESH_LOG_WARN, "register %s/%s: %s; again in %u ms",
            r->p->o->workload_ns ? r->p->o->workload_ns : "default", r->p->o->workload_name, why,
            (unsigned)r->backoff_ms);
  after_ms(r->timer, r->backoff_ms);
  r->backoff_ms = r->backoff_ms * 2 > REG_BACKOFF_MAX_MS ? REG_BACKOFF_MAX_MS : r->backoff_ms * 2;
}

static void on_registered(void *ud, int status, const char *body, size_t len, const char *error) {
  proxy_register *r = ud;
  r->in_call = 0;
  if (r->detached || r->stopping) return; /* a late answer: the shutdown deregisters */
  if (status != 200) {
    char why[600];
    snprintf(why, sizeof why, "%s%s%.*s",
             status ? "refused: " : "mesh-destination unreachable: ", error ? error : "",
             (int)(status && !error ? len : 0), body ? body : "");
    retry(r, why);
    return;
  }
  json_error_t je;
  json_t *rsp = json_loadb(body, len, 0, &je);
  const char *id = json_string_value(json_object_get(rsp, "lease_id"));
  json_int_t secs = json_integer_value(json_object_get(rsp, "lease_seconds"));
  if (!id || secs <= 0) {
    json_decref(rsp);
    retry(r, "a Register answer without lease_id and lease_seconds");
    return;
  }
  if (!r->registered || strcmp(r->lease_id, id))
    mesh__log(r->p->ctx, MESH_LOG_INFO, "registered %s/%s with mesh-destination: lease %s, %lld s",
              r->p->o->workload_ns ? r->p->o->workload_ns : "default", r->p->o->workload_name, id,
              (long long)secs);
  snprintf(r->lease_id, sizeof r->lease_id, "%s", id);
  json_decref(rsp);
  r->registered = 1;
  r->backoff_ms = REG_BACKOFF_MIN_MS;
  /* Renew at a third of the lease: two renewals may fail before it lapses. */
  after_ms(r->timer, (uint32_t)secs * 1000u / 3u);
}

static void send_register(proxy_register *r) {
  mesh_proxy *p = r->p;
  if (r->stopping || r->detached || r->in_call) return;
  char *body = register_body(p);
  int rc = body ? mesh__discovery_call(p->disc, REGISTER_PATH, body, REG_CALL_MS, on_registered, r)
                : MESH_ERR_NOMEM;
  free(body);
  if (rc == 0)
    r->in_call = 1;
  else
    retry(r, rc == MESH_ERR_UNAVAILABLE ? "no credentials yet" : mesh_strerror(rc));
}

int mesh__proxy_register_start(mesh_proxy *p, const char **why, proxy_register **ret) {
  if (!p->disc || !p->o->workload_name) {
    if (why) *why = "registering needs a destination address and a workload name";
    return MESH_ERR_INVALID;
  }
  char ip[INET6_ADDRSTRLEN] = "";
  if (!bound(p, LST_INBOUND, ip, sizeof ip) || !strcmp(ip, "0.0.0.0") || !strcmp(ip, "::")) {
    if (why)
      *why =
          "registering needs an inbound listener on the workload's own address (not 0.0.0.0 or ::)";
    return MESH_ERR_INVALID;
  }
  proxy_register *r = mesh__calloc(p->ctx, 1, sizeof *r);
  if (!r) return MESH_ERR_NOMEM;
  r->p = p;
  r->backoff_ms = REG_BACKOFF_MIN_MS;
  r->timer = evtimer_new(p->base, on_timer, r);
  if (!r->timer) {
    mesh__free(p->ctx, r);
    return MESH_ERR_NOMEM;
  }
  *ret = r;
  /* With an identity to present, the first call waits for the first
   * certificate (mesh__proxy_register_kick); without one, now. */
  if (p->ready || (!p->o->identity_dir && !p->o->cert && !p->o->identity_addr))
    after_ms(r->timer, 0);
  return 0;
}

void mesh__proxy_register_kick(proxy_register *r) {
  if (r && !r->registered && !r->in_call && !r->stopping) {
    r->backoff_ms = REG_BACKOFF_MIN_MS;
    after_ms(r->timer, 0);
  }
}

static void finish_stop(proxy_register *r) {
  void (*then)(mesh_proxy *) = r->then;
  r->then = NULL;
  if (r->dereg_timer) event_del(r->dereg_timer);
  if (then) then(r->p);
}

static void on_deregistered(void *ud, int status, const char *body, size_t len, const char *error) {
  proxy_register *r = ud;
  if (r->detached) return;
  if (status == 200)
    mesh__log(r->p->ctx, MESH_LOG_INFO, "deregistered %s/%s (lease %s)",
              r->p->o->workload_ns ? r->p->o->workload_ns : "default", r->p->o->workload_name,
              r->lease_id);
  else
    mesh__log(r->p->ctx, MESH_LOG_WARN, "deregister %s/%s: %s%.*s: its lease will lapse instead",
              r->p->o->workload_ns ? r->p->o->workload_ns : "default", r->p->o->workload_name,
              error ? error : "failed ", (int)(error ? 0 : len), body ? body : "");
  finish_stop(r);
}

static void on_dereg_timeout(evutil_socket_t fd, short what, void *ud) {
  proxy_register *r = ud;
  (void)fd;
  (void)what;
  mesh__log(r->p->ctx, MESH_LOG_WARN, "deregister: no answer within %u ms: draining anyway",
            (unsigned)DEREG_WAIT_MS);
  finish_stop(r);
}

int mesh__proxy_register_stop(proxy_register *r, void (*then)(mesh_proxy *p)) {
  if (!r || r->stopping) return 0;
  r->stopping = 1;
  event_del(r->timer);
  /* A Register in flight may yet succeed: the Deregister follows it on the
   * same connection, so it cannot overtake it. */
  if (!r->registered && !r->in_call) return 0;
  mesh_proxy *p = r->p;
  json_t *req =
      json_pack("{s:s,s:s}", "namespace", p->o->workload_ns ? p->o->workload_ns : "default", "name",
                p->o->workload_name);
  char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  r->dereg_timer = evtimer_new(p->base, on_dereg_timeout, r);
  int rc = body && r->dereg_timer ? mesh__discovery_call(p->disc, DEREGISTER_PATH, body,
                                                         DEREG_WAIT_MS, on_deregistered, r)
                                  : MESH_ERR_NOMEM;
  free(body);
  if (rc) {
    mesh__log(p->ctx, MESH_LOG_WARN, "deregister: %s: its lease will lapse instead",
              mesh_strerror(rc));
    return 0;
  }
  r->then = then;
  after_ms(r->dereg_timer, DEREG_WAIT_MS);
  return 1;
}

void mesh__proxy_register_detach(proxy_register *r) {
  if (r) r->detached = 1;
}

void mesh__proxy_register_free(proxy_register *r) {
  if (!r) return;
  if (r->timer) event_free(r->timer);
  if (r->dereg_timer) event_free(r->dereg_timer);
  mesh__free(r->p->ctx, r);
}
