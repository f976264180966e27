/* libmesh proxy: meshd's engine: listeners, opaque TCP over mTLS with a transport header, limits, reloads, shutdown. */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include <jansson.h>

#include <mesh/balance.h>
#include <mesh/error.h>
#include <mesh/metrics.h>
#include <mesh/profile.h>
#include <mesh/proxy.h>
#include <mesh/tls.h>

#include "ctx_internal.h"
#include "discovery_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_internal.h"
#include "proxy_profiles_internal.h"

/* Linux's netfilter ask for the destination before REDIRECT; both
 * constants are 80 and the kernel headers that define them do not mix
 * with glibc's. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define POLL_MS 1000u        /* endpoints file and credentials mtime poll */
#define RESUME_MS 250u       /* accept pause after EMFILE/ENFILE */
#define FINISH_MS 50u        /* lets the /shutdown answer flush before on_shutdown */
#define CRED_FILE_MAX 1048576u
#define BACKLOG 1024

/* Reasons of a failed mesh_proxy_new outlive the proxy it freed. */
static _Thread_local char start_why[512];

/* ---- Options --------------------------------------------------------------- */

mesh_ctx *mesh__proxy_opts_ctx(const mesh_proxy_opts *o) { return o->ctx; }

int mesh_proxy_opts_new(mesh_ctx *ctx, mesh_proxy_opts **ret) {
  if (!ctx || !ret) return MESH_ERR_INVALID;
  mesh_proxy_opts *o = mesh__calloc(ctx, 1, sizeof *o);
  if (!o) return MESH_ERR_NOMEM;
  o->ctx = ctx;
  o->out_addr = mesh__strdup(ctx, MESH_PROXY_DEFAULT_OUTBOUND_ADDR);
  o->in_addr = mesh__strdup(ctx, MESH_PROXY_DEFAULT_INBOUND_ADDR);
  o->admin_addr = mesh__strdup(ctx, MESH_PROXY_DEFAULT_ADMIN_ADDR);
  o->ports = mesh__strdup(ctx, "");
  mesh_proxy_opts_set_inbound_forward_ip(o, "127.0.0.1", NULL);
  o->connect_ms = MESH_PROXY_DEFAULT_CONNECT_TIMEOUT_MS;
  o->header_ms = MESH_PROXY_DEFAULT_HEADER_TIMEOUT_MS;
  o->idle_ms = MESH_PROXY_DEFAULT_IDLE_TIMEOUT_MS;
  o->grace_ms = MESH_PROXY_DEFAULT_SHUTDOWN_GRACE_MS;
  o->max_conns = MESH_PROXY_DEFAULT_MAX_CONNECTIONS;
  o->buffer = MESH_PROXY_DEFAULT_BUFFER_BYTES;
  o->detect_ms = MESH_PROXY_DEFAULT_DETECT_TIMEOUT_MS;
  o->max_in_flight = MESH_PROXY_DEFAULT_MAX_IN_FLIGHT;
  o->failfast_ms[0] = MESH_PROXY_DEFAULT_OUTBOUND_FAILFAST_MS;
  o->failfast_ms[1] = MESH_PROXY_DEFAULT_INBOUND_FAILFAST_MS;
  o->queue_cap[0] = o->queue_cap[1] = MESH_PROXY_DEFAULT_QUEUE_CAPACITY;
  o->inbound_connect_ms = MESH_PROXY_DEFAULT_INBOUND_CONNECT_TIMEOUT_MS;
  o->max_head_bytes = MESH_PROXY_DEFAULT_MAX_HEAD_BYTES;
  o->max_fields = MESH_PROXY_DEFAULT_MAX_FIELDS;
  o->opaque = mesh__strdup(ctx, MESH_PROXY_DEFAULT_OPAQUE_PORTS);
  if (!o->out_addr || !o->in_addr || !o->admin_addr || !o->ports || !o->opaque) {
    mesh_proxy_opts_free(o);
    return MESH_ERR_NOMEM;
  }
  *ret = o;
  return 0;
}

void mesh_proxy_opts_free(mesh_proxy_opts *o) {
  if (!o) return;
  mesh_ctx *ctx = o->ctx;
  mesh__free(ctx, o->out_addr);
  mesh__free(ctx, o->in_addr);
  mesh__free(ctx, o->admin_addr);
  for (size_t i = 0; i < o->nmaps; i++) {
    mesh__free(ctx, o->maps[i].listen);
    mesh__free(ctx, o->maps[i].authority);
  }
  mesh__free(ctx, o->endpoints_file);
  mesh__free(ctx, o->destination_addr);
  mesh__free(ctx, o->destination_id);
  mesh__free(ctx, o->profiles_dir);
  mesh__free(ctx, o->policy_dir);
  mesh__free(ctx, o->workload_ns);
  mesh__free(ctx, o->workload_name);
  mesh__free(ctx, o->reg_ports);
  mesh__free(ctx, o->labels_str);
  mesh__free(ctx, o->labels_buf);
  mesh__free(ctx, o->cluster_networks);
  mesh__free(ctx, o->identity_dir);
  mesh__free(ctx, o->cert);
  mesh__free(ctx, o->key);
  mesh__free(ctx, o->anchors);
  mesh__free(ctx, o->identity_addr);
  mesh__free(ctx, o->identity_token_file);
  mesh__free(ctx, o->identity_sa);
  mesh__free(ctx, o->identity_svc_name);
  mesh__free(ctx, o->ports);
  mesh__free(ctx, o->opaque);
  mesh__free(ctx, o);
}

/* Replace *slot with a copy of s (NULL stays NULL). */
static int set_str(mesh_ctx *ctx, char **slot, const char *s) {
  char *c = NULL;
  if (s && !(c = mesh__strdup(ctx, s))) return MESH_ERR_NOMEM;
  mesh__free(ctx, *slot);
  *slot = c;
  return 0;
}

/* An identity name (checked as one), or NULL / "" for none. */
static int set_identity(mesh_ctx *ctx, char **slot, const char *name, const char **why) {
  if (name && *name) {
    mesh_identity *id = NULL;
    int rc = mesh_identity_parse(ctx, name, NULL, why, &id);
    mesh_identity_free(id);
    if (rc) return rc;
  }
  return set_str(ctx, slot, name && *name ? name : NULL);
}

static int set_listen(mesh_proxy_opts *o, char **slot, const char *addr, const char **why) {
  if (!o || !addr) return MESH_ERR_INVALID;
  struct sockaddr_storage ss;
  socklen_t len;
  if (*addr && mesh__proxy_addr_parse(addr, 1, &ss, &len, why)) return MESH_ERR_PARSE;
  return set_str(o->ctx, slot, addr);
}

int mesh_proxy_opts_set_outbound_addr(mesh_proxy_opts *o, const char *addr, const char **why) {
  return set_listen(o, o ? &o->out_addr : NULL, addr, why);
}
int mesh_proxy_opts_set_inbound_addr(mesh_proxy_opts *o, const char *addr, const char **why) {
  return set_listen(o, o ? &o->in_addr : NULL, addr, why);
}
int mesh_proxy_opts_set_admin_addr(mesh_proxy_opts *o, const char *addr, const char **why) {
  return set_listen(o, o ? &o->admin_addr : NULL, addr, why);
}

int mesh_proxy_opts_add_port_map(mesh_proxy_opts *o, const char *map, const char **why) {
  if (!o || !map) return MESH_ERR_INVALID;
  if (o->nmaps >= MESH_PROXY_PORT_MAPS_MAX) {
    if (why) *why = "too many port maps";
    return MESH_ERR_LIMIT;
  }
  const char *eq = strchr(map, '=');
  if (!eq) {
    if (why) *why = "a port map is LISTEN=AUTHORITY, e.g. 127.0.0.1:5000=web.default.svc.cluster.local:80";
    return MESH_ERR_PARSE;
  }
  char *listen = mesh__strndup(o->ctx, map, (size_t)(eq - map));
  if (!listen) return MESH_ERR_NOMEM;
  struct sockaddr_storage ss;
  socklen_t len;
  if (mesh__proxy_addr_parse(listen, 0, &ss, &len, why)) {
    mesh__free(o->ctx, listen);
    return MESH_ERR_PARSE;
  }
  /* The authority must be something the endpoints file could name. */
  const char *auth = eq + 1;
  const char *colon = strrchr(auth, ':');
  size_t hostlen = colon ? (size_t)(colon - auth) : 0;
  int port_ok = colon && colon[1] && strspn(colon + 1, "0123456789") == strlen(colon + 1) &&
                strlen(colon + 1) <= 5 && atoi(colon + 1) > 0 && atoi(colon + 1) < 65536;
  if (!hostlen || !port_ok || hostlen > 255) {
    mesh__free(o->ctx, listen);
    if (why) *why = "the authority of a port map is host:port";
    return MESH_ERR_PARSE;
  }
  char *a = mesh__strdup(o->ctx, auth);
  if (!a) {
    mesh__free(o->ctx, listen);
    return MESH_ERR_NOMEM;
  }
  o->maps[o->nmaps].listen = listen;
  o->maps[o->nmaps].authority = a;
  o->nmaps++;
  return 0;
}

int mesh_proxy_opts_set_endpoints_file(mesh_proxy_opts *o, const char *path) {
  return o ? set_str(o->ctx, &o->endpoints_file, path) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_destination_addr(mesh_proxy_opts *o, const char *addr, const char **why) {
  if (!o) return MESH_ERR_INVALID;
  if (addr && *addr && strncmp(addr, "localhost:", 10)) {
    struct sockaddr_storage ss;
    socklen_t len;
    const char *w = NULL;
    if (mesh__proxy_addr_parse(addr, 0, &ss, &len, &w)) {
      if (why) *why = w;
      return MESH_ERR_PARSE;
    }
  }
  return set_str(o->ctx, &o->destination_addr, addr && *addr ? addr : NULL);
}

int mesh_proxy_opts_set_destination_identity(mesh_proxy_opts *o, const char *name,
                                             const char **why) {
  return o ? set_identity(o->ctx, &o->destination_id, name, why) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_profiles_dir(mesh_proxy_opts *o, const char *dir) {
  return o ? set_str(o->ctx, &o->profiles_dir, dir) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_policy_dir(mesh_proxy_opts *o, const char *dir) {
  return o ? set_str(o->ctx, &o->policy_dir, dir) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_workload(mesh_proxy_opts *o, const char *ns, const char *labels,
                                 const char **why) {
  if (!o || !ns || !labels) return MESH_ERR_INVALID;
  if (!mesh_dns_label_valid(ns)) {
    if (why) *why = "the namespace must be a DNS label";
    return MESH_ERR_PARSE;
  }
  const char *w = NULL;
  int rc = mesh__proxy_labels_parse(o, labels, &w);
  if (rc) {
    if (why) *why = w;
    return rc;
  }
  if (set_str(o->ctx, &o->workload_ns, ns) || set_str(o->ctx, &o->labels_str, labels))
    return MESH_ERR_NOMEM;
  return 0;
}

/* A DNS subdomain, as the store names things (a pod's name may hold dots):
 * labels of 1..63 of [a-z0-9-], not starting or ending with '-'. */
static int dns_name_valid(const char *s) {
  size_t n = strlen(s), label = 0;
  if (!n || n > 253) return 0;
  for (size_t i = 0; i <= n; i++) {
    char c = s[i];
    if (c == '.' || c == '\0') {
      if (!label || s[i - 1] == '-') return 0;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && label)) {
      if (++label > 63) return 0;
    } else {
      return 0;
    }
  }
  return 1;
}

int mesh_proxy_opts_set_workload_name(mesh_proxy_opts *o, const char *name, const char **why) {
  if (!o) return MESH_ERR_INVALID;
  if (name && *name && !dns_name_valid(name)) {
    if (why) *why = "the Workload's name must be a DNS name (lower-case letters, digits, '-', '.')";
    return MESH_ERR_PARSE;
  }
  return set_str(o->ctx, &o->workload_name, name && *name ? name : NULL);
}

int mesh_proxy_opts_set_default_inbound_policy(mesh_proxy_opts *o, const char *name,
                                               const char **why) {
  if (!o || !name) return MESH_ERR_INVALID;
  int v = mesh_policy_default_parse(name);
  if (v <= 0) {
    if (why)
      *why = "one of all-unauthenticated, all-authenticated, cluster-authenticated, "
             "cluster-unauthenticated, deny, audit";
    return MESH_ERR_PARSE;
  }
  o->default_policy = v;
  return 0;
}

int mesh_proxy_opts_set_cluster_networks(mesh_proxy_opts *o, const char *cidrs) {
  return o && cidrs ? set_str(o->ctx, &o->cluster_networks, cidrs) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_identity_dir(mesh_proxy_opts *o, const char *dir) {
  return o ? set_str(o->ctx, &o->identity_dir, dir) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_credential_files(mesh_proxy_opts *o, const char *cert, const char *key,
                                         const char *anchors) {
  if (!o || !cert || !key || !anchors) return MESH_ERR_INVALID;
  if (set_str(o->ctx, &o->cert, cert) || set_str(o->ctx, &o->key, key) ||
      set_str(o->ctx, &o->anchors, anchors))
    return MESH_ERR_NOMEM;
  return 0;
}

int mesh_proxy_opts_set_identity_service(mesh_proxy_opts *o, const char *addr,
                                         const char *token_file, const char *service_account,
                                         const char *anchors, const char **why) {
  if (!o) return MESH_ERR_INVALID;
  if (!addr || !*addr) return set_str(o->ctx, &o->identity_addr, NULL);
  if (!token_file || !service_account || !anchors) return MESH_ERR_INVALID;
  /* The rpc client takes numeric addresses and localhost, nothing that
   * needs a resolver. */
  char numeric[80];
  const char *a = addr, *w = NULL;
  if (!strncmp(addr, "localhost:", 10) && strlen(addr) < 60) {
    snprintf(numeric, sizeof numeric, "127.0.0.1:%s", addr + 10);
    a = numeric;
  }
  struct sockaddr_storage ss;
  socklen_t len;
  if (mesh__proxy_addr_parse(a, 0, &ss, &len, &w)) {
    if (why) *why = "the identity service's address is IP:PORT, [IPv6]:PORT or localhost:PORT";
    return MESH_ERR_PARSE;
  }
  if (!mesh_dns_label_valid(service_account)) {
    if (why) *why = "the service account must be a DNS label (lower-case letters, digits, '-')";
    return MESH_ERR_PARSE;
  }
  if (set_str(o->ctx, &o->identity_addr, addr) ||
      set_str(o->ctx, &o->identity_token_file, token_file) ||
      set_str(o->ctx, &o->identity_sa, service_account) || set_str(o->ctx, &o->anchors, anchors))
    return MESH_ERR_NOMEM;
  return 0;
}

int mesh_proxy_opts_set_identity_service_name(mesh_proxy_opts *o, const char *name,
                                              const char **why) {
  return o ? set_identity(o->ctx, &o->identity_svc_name, name, why) : MESH_ERR_INVALID;
}

int mesh_proxy_opts_set_inbound_allow_unauthenticated(mesh_proxy_opts *o, int allow) {
  if (!o) return MESH_ERR_INVALID;
  o->allow_unauth = allow != 0;
  return 0;
}

/* "8080,9090" into a bitmap; "" allows all. */
static int ports_parse(const char *s, uint8_t *bits, int *all, const char **why) {
  memset(bits, 0, 8192);
  *all = *s == '\0';
  while (*s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || errno || v < 1 || v > 65535 || (*end && *end != ',')) {
      if (why) *why = "ports are a comma-separated list of ports 1-65535";
      return MESH_ERR_PARSE;
    }
    bits[v >> 3] |= (uint8_t)(1u << (v & 7));
    s = end;
    if (*s == ',' && !*++s) { /* a trailing comma */
      if (why) *why = "ports are a comma-separated list of ports 1-65535";
      return MESH_ERR_PARSE;
    }
  }
  return 0;
}

int mesh_proxy_opts_set_inbound_ports(mesh_proxy_opts *o, const char *ports, const char **why) {
  if (!o || !ports) return MESH_ERR_INVALID;
  uint8_t *bits = mesh__malloc(o->ctx, 8192);
  if (!bits) return MESH_ERR_NOMEM;
  int all, rc = ports_parse(ports, bits, &all, why);
  mesh__free(o->ctx, bits);
  return rc ? rc : set_str(o->ctx, &o->ports, ports);
}

int mesh_proxy_opts_set_inbound_forward_ip(mesh_proxy_opts *o, const char *ip, const char **why) {
  if (!o || !ip) return MESH_ERR_INVALID;
  struct sockaddr_storage ss = {0};
  struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    o->inbound_iplen = sizeof *s4;
    snprintf(o->inbound_host, sizeof o->inbound_host, "%s", ip);
  } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    o->inbound_iplen = sizeof *s6;
    snprintf(o->inbound_host, sizeof o->inbound_host, "[%s]", ip);
  } else {
    if (why) *why = "the inbound forward address is an IPv4 or IPv6 literal, e.g. 10.0.0.5";
    return MESH_ERR_PARSE;
  }
  o->inbound_ip = ss;
  return 0;
}

socklen_t mesh__proxy_inbound_addr(const mesh_proxy *p, uint16_t port, struct sockaddr_storage *ss) {
  *ss = p->o->inbound_ip;
  if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
  else ((struct sockaddr_in *)ss)->sin_port = htons(port);
  return p->o->inbound_iplen;
}

int mesh_proxy_opts_set_connect_timeout(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->connect_ms = ms;
  return 0;
}
int mesh_proxy_opts_set_header_timeout(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->header_ms = ms;
  return 0;
}
int mesh_proxy_opts_set_idle_timeout(mesh_proxy_opts *o, uint64_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (ms > UINT64_C(1) << 40) return MESH_ERR_RANGE;
  o->idle_ms = ms;
  return 0;
}
int mesh_proxy_opts_set_shutdown_grace(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->grace_ms = ms;
  return 0;
}
int mesh_proxy_opts_set_max_connections(mesh_proxy_opts *o, uint32_t n) {
  if (!o) return MESH_ERR_INVALID;
  if (!n) return MESH_ERR_RANGE;
  o->max_conns = n;
  return 0;
}
int mesh_proxy_opts_set_buffer_bytes(mesh_proxy_opts *o, uint32_t bytes) {
  if (!o) return MESH_ERR_INVALID;
  if (bytes < 4096u || bytes > 16777216u) return MESH_ERR_RANGE;
  o->buffer = bytes;
  return 0;
}
int mesh_proxy_opts_set_on_shutdown(mesh_proxy_opts *o, mesh_proxy_done_fn fn, void *ud) {
  if (!o) return MESH_ERR_INVALID;
  o->done_fn = fn;
  o->done_ud = ud;
  return 0;
}

int mesh_proxy_opts_set_max_in_flight(mesh_proxy_opts *o, uint32_t n) {
  if (!o) return MESH_ERR_INVALID;
  if (!n) return MESH_ERR_RANGE;
  o->max_in_flight = n;
  return 0;
}

int mesh_proxy_opts_set_failfast_timeout(mesh_proxy_opts *o, int32_t inbound, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->failfast_ms[inbound != 0] = ms;
  return 0;
}

int mesh_proxy_opts_set_queue_capacity(mesh_proxy_opts *o, int32_t inbound, uint32_t n) {
  if (!o) return MESH_ERR_INVALID;
  if (!n) return MESH_ERR_RANGE;
  o->queue_cap[inbound != 0] = n;
  return 0;
}

int mesh_proxy_opts_set_detect_timeout(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->detect_ms = ms;
  return 0;
}

int mesh_proxy_opts_set_response_timeout(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  o->response_ms = ms;
  return 0;
}

int mesh_proxy_opts_set_inbound_connect_timeout(mesh_proxy_opts *o, uint32_t ms) {
  if (!o) return MESH_ERR_INVALID;
  if (!ms) return MESH_ERR_RANGE;
  o->inbound_connect_ms = ms;
  return 0;
}

int mesh_proxy_opts_set_http_limits(mesh_proxy_opts *o, uint32_t max_head_bytes,
                                    uint32_t max_fields) {
  if (!o) return MESH_ERR_INVALID;
  if (max_head_bytes < 1024 || max_head_bytes > 1048576 || !max_fields || max_fields > 10000)
    return MESH_ERR_RANGE;
  o->max_head_bytes = max_head_bytes;
  o->max_fields = max_fields;
  return 0;
}

int mesh_proxy_opts_set_opaque_ports(mesh_proxy_opts *o, const char *ports, const char **why) {
  if (!o || !ports) return MESH_ERR_INVALID;
  uint8_t bits[8192];
  int all;
  int rc = ports_parse(ports, bits, &all, why);
  if (rc) return rc;
  return set_str(o->ctx, &o->opaque, ports);
}

static int opts_copy(const mesh_proxy_opts *s, mesh_proxy_opts **ret) {
  mesh_proxy_opts *o;
  int rc = mesh_proxy_opts_new(s->ctx, &o);
  if (rc) return rc;
  mesh_ctx *ctx = s->ctx;
  if (set_str(ctx, &o->out_addr, s->out_addr) || set_str(ctx, &o->in_addr, s->in_addr) ||
      set_str(ctx, &o->admin_addr, s->admin_addr) ||
      set_str(ctx, &o->endpoints_file, s->endpoints_file) ||
      set_str(ctx, &o->destination_addr, s->destination_addr) ||
      set_str(ctx, &o->destination_id, s->destination_id) ||
      set_str(ctx, &o->profiles_dir, s->profiles_dir) ||
      set_str(ctx, &o->policy_dir, s->policy_dir) ||
      set_str(ctx, &o->workload_ns, s->workload_ns) ||
      set_str(ctx, &o->workload_name, s->workload_name) ||
      set_str(ctx, &o->reg_ports, s->reg_ports) ||
      set_str(ctx, &o->labels_str, s->labels_str) ||
      set_str(ctx, &o->cluster_networks, s->cluster_networks) ||
      set_str(ctx, &o->identity_dir, s->identity_dir) || set_str(ctx, &o->cert, s->cert) ||
      set_str(ctx, &o->key, s->key) || set_str(ctx, &o->anchors, s->anchors) ||
      set_str(ctx, &o->identity_addr, s->identity_addr) ||
      set_str(ctx, &o->identity_token_file, s->identity_token_file) ||
      set_str(ctx, &o->identity_sa, s->identity_sa) ||
      set_str(ctx, &o->identity_svc_name, s->identity_svc_name) ||
      set_str(ctx, &o->ports, s->ports) || set_str(ctx, &o->opaque, s->opaque))
    goto nomem;
  for (size_t i = 0; i < s->nmaps; i++) {
    o->maps[i].listen = mesh__strdup(ctx, s->maps[i].listen);
    o->maps[i].authority = mesh__strdup(ctx, s->maps[i].authority);
    o->nmaps++;
    if (!o->maps[i].listen || !o->maps[i].authority) goto nomem;
  }
  o->allow_unauth = s->allow_unauth;
  o->reg_on = s->reg_on;
  o->reg_lease_s = s->reg_lease_s;
  memcpy(o->inbound_host, s->inbound_host, sizeof o->inbound_host);
  o->inbound_ip = s->inbound_ip;
  o->inbound_iplen = s->inbound_iplen;
  o->connect_ms = s->connect_ms;
  o->header_ms = s->header_ms;
  o->idle_ms = s->idle_ms;
  o->grace_ms = s->grace_ms;
  o->max_conns = s->max_conns;
  o->buffer = s->buffer;
  o->detect_ms = s->detect_ms;
  o->max_in_flight = s->max_in_flight;
  memcpy(o->failfast_ms, s->failfast_ms, sizeof o->failfast_ms);
  memcpy(o->queue_cap, s->queue_cap, sizeof o->queue_cap);
  o->default_policy = s->default_policy;
  const char *lwhy;
  if (o->labels_str && mesh__proxy_labels_parse(o, o->labels_str, &lwhy)) goto nomem;
  o->response_ms = s->response_ms;
  o->inbound_connect_ms = s->inbound_connect_ms;
  o->max_head_bytes = s->max_head_bytes;
  o->max_fields = s->max_fields;
  o->done_fn = s->done_fn;
  o->done_ud = s->done_ud;
  *ret = o;
  return 0;
nomem:
  mesh_proxy_opts_free(o);
  return MESH_ERR_NOMEM;
}

/* ---- Time and randomness ---------------------------------------------------- */

uint64_t mesh__proxy_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: the balancer's coin flips need no cryptographic strength,
 * and a syscall per pick would not be free. Seeded from the context. */
uint32_t mesh__proxy_rand(mesh_proxy *p) {
  uint64_t x = p->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  p->rng = x;
  return (uint32_t)((x * UINT64_C(2685821657736338717)) >> 32);
}

void mesh__proxy_timer(struct event *ev, uint64_t ms) {
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
  event_add(ev, &tv);
}

/* ---- Endpoint snapshots -------------------------------------------------------- */

/* A discovery update may have brought endpoints that requests wait for. */
static void disc_changed(void *ud) { mesh__proxy_http_kick(ud); }

void mesh__proxy_snapshot_unref(proxy_snapshot *s) {
  if (!s || --s->refs > 0) return;
  for (size_t i = 0; i < s->n; i++) mesh_balance_free(s->bal[i]);
  mesh__free(s->ctx, s->bal);
  mesh_proxy_endpoints_unref(s->eps);
  mesh__free(s->ctx, s);
}

static int snapshot_new(mesh_ctx *ctx, mesh_proxy_endpoints *eps, proxy_snapshot **ret) {
  proxy_snapshot *s = mesh__calloc(ctx, 1, sizeof *s);
  if (!s) return MESH_ERR_NOMEM;
  s->ctx = ctx;
  s->refs = 1;
  s->eps = eps;
  size_t n = mesh_proxy_endpoints_service_count(eps);
  s->bal = n ? mesh__calloc(ctx, n, sizeof *s->bal) : NULL;
  if (n && !s->bal) goto fail;
  for (size_t i = 0; i < n; i++) {
    int rc = mesh_balance_new(ctx, NULL, &s->bal[i]);
    if (rc) goto fail;
    s->n++;
    for (size_t j = 0; j < mesh_proxy_endpoints_count(eps, i); j++) {
      rc = mesh_balance_add(s->bal[i], mesh_proxy_endpoints_addr(eps, i, j),
                            mesh_proxy_endpoints_weight(eps, i, j) * MESH_BALANCE_WEIGHT_DEFAULT,
                            (void *)(uintptr_t)j, NULL);
      if (rc) goto fail;
    }
  }
  *ret = s;
  return 0;
fail:
  s->eps = NULL; /* the caller keeps its reference on failure */
  mesh__proxy_snapshot_unref(s);
  return MESH_ERR_NOMEM;
}

/* Load the endpoints file when it changed (or when forced). */
static int endpoints_reload(mesh_proxy *p, int force) {
  const char *path = p->o->endpoints_file;
  if (!path) return 0;
  struct stat st;
  if (stat(path, &st) != 0) {
    if (force || p->ep_stat_ok) {
      mesh__log(p->ctx, MESH_LOG_WARN, "endpoints file %s: %s; keeping the previous endpoints",
                path, strerror(errno));
    }
    p->ep_stat_ok = 0;
    return MESH_ERR_IO;
  }
  if (!force && p->ep_stat_ok && st.st_mtim.tv_sec == p->ep_mtime.tv_sec &&
      st.st_mtim.tv_nsec == p->ep_mtime.tv_nsec && st.st_ino == p->ep_ino &&
      st.st_size == p->ep_size)
    return 0;
  p->ep_stat_ok = 1;
  p->ep_mtime = st.st_mtim;
  p->ep_ino = st.st_ino;
  p->ep_size = st.st_size;
  mesh_diags *d = NULL;
  mesh_proxy_endpoints *eps = NULL;
  int rc = mesh_diags_new(p->ctx, &d);
  if (!rc) rc = mesh_proxy_endpoints_load(p->ctx, path, d, &eps);
  if (rc) {
    const char *first = d && mesh_diags_count(d) ? mesh_diags_text(d, 0) : mesh_strerror(rc);
    mesh__log(p->ctx, MESH_LOG_ERROR, "endpoints file rejected, keeping the previous endpoints: %s%s",
              first, d && mesh_diags_count(d) > 1 ? " (and more)" : "");
    mesh_diags_free(d);
    return rc;
  }
  mesh_diags_free(d);
  proxy_snapshot *s;
  rc = snapshot_new(p->ctx, eps, &s);
  if (rc) {
    mesh_proxy_endpoints_unref(eps);
    mesh__log(p->ctx, MESH_LOG_ERROR, "endpoints: %s; keeping the previous endpoints",
              mesh_strerror(rc));
    return rc;
  }
  /* Connections being set up hold their own reference: the swap drops nothing. */
  mesh__proxy_snapshot_unref(p->snap);
  p->snap = s;
  p->reloads++;
  mesh__proxy_http_kick(p); /* requests waiting for an endpoint look again */
  mesh__log(p->ctx, MESH_LOG_INFO, "endpoints file %s loaded: %zu services", path,
            mesh_proxy_endpoints_service_count(eps));
  return 0;
}

/* A directory (profiles, policy) that did not load: at start the reason
 * goes to *start_err and mesh_proxy_new fails; later it is logged and the
 * previous set stays. The reason is the first error, not a warning. */
static void dir_rejected(mesh_proxy *p, const char *what, const char *dir, int rc,
                         const char *why, mesh_diags *d, const char **start_err) {
  const char *first = why ? why : mesh_strerror(rc);
  for (size_t i = 0; d && !why && i < mesh_diags_count(d); i++)
    if (mesh_diags_severity(d, i) == MESH_DIAG_ERROR) {
      first = mesh_diags_text(d, i);
      break;
    }
  if (start_err) {
    snprintf(start_why, sizeof start_why, "%s %s: %s", what, dir, first);
    *start_err = start_why;
  } else {
    mesh__log(p->ctx, MESH_LOG_ERROR, "%s %s rejected, keeping the previous set: %s%s", what, dir,
              first, d && mesh_diags_errors(d) > 1 ? " (and more)" : "");
  }
}

/* Load the profiles directory when it changed (or when forced). */
static int profiles_reload(mesh_proxy *p, int force, const char **start_err) {
  const char *dir = p->o->profiles_dir;
  if (!dir) return 0;
  uint64_t stamp = mesh__proxy_dir_stamp(dir);
  if (!force && stamp == p->prof_stamp) return 0;
  p->prof_stamp = stamp;
  mesh_diags *d = NULL;
  proxy_profiles *t = NULL;
  const char *why = NULL;
  int rc = mesh_diags_new(p->ctx, &d);
  if (!rc) rc = mesh__proxy_profiles_load(p->ctx, dir, d, &t, &why);
  if (rc) {
    dir_rejected(p, "profiles", dir, rc, why, d, start_err);
    mesh_diags_free(d);
    return rc;
  }
  mesh_diags_free(d);
  mesh__proxy_profiles_unref(p->profiles); /* requests in flight hold their own reference */
  p->profiles = t;
  mesh__log(p->ctx, MESH_LOG_INFO, "profiles %s loaded: %zu destinations", dir, t->n);
  return 0;
}

/* Load the policy directory when it changed (or when forced). */
static int policy_reload(mesh_proxy *p, int force, const char **start_err) {
  const char *dir = p->o->policy_dir;
  if (!dir) return 0;
  uint64_t stamp = mesh__proxy_dir_stamp(dir);
  if (!force && stamp == p->pol_stamp) return 0;
  p->pol_stamp = stamp;
  mesh_diags *d = NULL;
  mesh_policy *pol = NULL;
  const char *why = NULL;
  int rc = mesh_diags_new(p->ctx, &d);
  if (!rc) rc = mesh__proxy_policy_load(p, d, &pol, &why);
  if (rc) {
    dir_rejected(p, "policy", dir, rc, why, d, start_err);
    mesh_diags_free(d);
    return rc;
  }
  for (size_t i = 0; i < mesh_diags_count(d); i++)
    mesh__log(p->ctx, MESH_LOG_WARN, "policy: %s", mesh_diags_text(d, i));
  mesh_diags_free(d);
  mesh__proxy_policy_install(p, pol, dir);
  return 0;
}

/* ---- Credentials ------------------------------------------------------------------ */

static void cred_paths(const mesh_proxy *p, char *cert, char *key, char *anchors, size_t cap) {
  if (p->o->identity_dir) {
    snprintf(cert, cap, "%s/leaf.crt", p->o->identity_dir);
    snprintf(key, cap, "%s/key.pem", p->o->identity_dir);
    snprintf(anchors, cap, "%s/ca.crt", p->o->identity_dir);
  } else {
    snprintf(cert, cap, "%s", p->o->cert ? p->o->cert : "");
    snprintf(key, cap, "%s", p->o->key ? p->o->key : "");
    snprintf(anchors, cap, "%s", p->o->anchors ? p->o->anchors : "");
  }
}

/* path whole into a NUL-terminated allocation of at most max bytes; on
 * failure *why gets a reason. */
char *mesh__proxy_read_file(mesh_ctx *ctx, const char *path, size_t max, size_t *len,
                            const char **why) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    *why = strerror(errno);
    return NULL;
  }
  char *buf = mesh__malloc(ctx, max + 1);
  size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
  int err = buf && ferror(f);
  fclose(f);
  if (!buf || err || n > max) {
    *why = !buf ? "out of memory" : err ? "read error" : "too large";
    if (buf) memset(buf, 0, n < max + 1 ? n : max + 1);
    mesh__free(ctx, buf);
    return NULL;
  }
  buf[n] = '\0';
  *len = n;
  return buf;
}

int mesh__proxy_creds_install(mesh_proxy *p, const char *chain, size_t chain_len, const char *key,
                              size_t key_len, const char *anchors, size_t anchors_len,
                              const char **why) {
  mesh_tls_opts *o = NULL;
  mesh_tls_config *cfg = NULL;
  int rc = mesh_tls_opts_new(p->ctx, &o);
  if (!rc) rc = mesh_tls_opts_set_credentials(o, chain, chain_len, key, key_len);
  if (!rc) rc = mesh_tls_opts_set_anchors(o, anchors, anchors_len);
  if (!rc) rc = mesh_tls_opts_set_alpn(o, MESH_PROXY_ALPN);
  if (!rc) rc = mesh_tls_opts_set_handshake_timeout(o, p->o->header_ms);
  if (!rc) rc = mesh_tls_config_new(o, why, &cfg);
  if (!rc) rc = mesh_tls_creds_set(p->creds, cfg);
  if (!rc) {
    const mesh_identity *id = mesh_tls_config_identity(cfg);
    snprintf(p->identity, sizeof p->identity, "%s", mesh_identity_dns(id));
    p->not_after = mesh_tls_config_not_after(cfg);
    char *pem = mesh__malloc(p->ctx, chain_len + 1);
    if (pem) {
      memcpy(pem, chain, chain_len);
      pem[chain_len] = 0;
      mesh__free(p->ctx, p->chain_pem);
      p->chain_pem = pem;
    }
    mesh_metrics_set(p->m.cert_expiry, (int64_t)p->not_after);
    mesh_metrics_inc(p->m.cert_refresh, 1);
    p->ready = 1;
    /* mesh-destination speaks HTTP/2 over mTLS: the same identity, ALPN h2. */
    mesh_tls_config *dc = NULL;
    const char *dwhy = NULL;
    if (p->disc && !mesh_tls_opts_set_alpn(o, "h2") && !mesh_tls_config_new(o, &dwhy, &dc))
      mesh__discovery_set_tls(p->disc, dc, NULL);
    mesh_tls_config_unref(dc);
    mesh__proxy_register_kick(p->reg); /* it waited for an identity to present */
  }
  mesh_tls_config_unref(cfg);
  mesh_tls_opts_free(o);
  return rc;
}

static int creds_reload(mesh_proxy *p, int force) {
  if (!p->o->identity_dir && !p->o->cert) return 0;
  char cert[4096], key[4096], anchors[4096];
  cred_paths(p, cert, key, anchors, sizeof cert);
  struct stat st;
  int have = stat(cert, &st) == 0;
  if (!force && have && p->cred_stat_ok && st.st_mtim.tv_sec == p->cred_mtime.tv_sec &&
      st.st_mtim.tv_nsec == p->cred_mtime.tv_nsec && st.st_ino == p->cred_ino)
    return 0;
  if (!have) {
    if (force || p->cred_stat_ok || !p->cred_warned)
      mesh__log(p->ctx, MESH_LOG_WARN, "credentials: %s: %s; %s", cert, strerror(errno),
                p->ready ? "keeping the current ones" : "not ready until they appear");
    p->cred_warned = 1;
    p->cred_stat_ok = 0;
    return MESH_ERR_IO;
  }
  p->cred_stat_ok = 1;
  p->cred_mtime = st.st_mtim;
  p->cred_ino = st.st_ino;
  size_t cl = 0, kl = 0, al = 0;
  const char *why = NULL, *file = cert;
  char *c = mesh__proxy_read_file(p->ctx, cert, CRED_FILE_MAX, &cl, &why), *k = NULL, *a = NULL;
  if (c) {
    file = key;
    k = mesh__proxy_read_file(p->ctx, key, CRED_FILE_MAX, &kl, &why);
  }
  if (k) {
    file = anchors;
    a = mesh__proxy_read_file(p->ctx, anchors, CRED_FILE_MAX, &al, &why);
  }
  int rc = MESH_ERR_IO;
  if (!a) goto out;
  file = cert;
  rc = mesh__proxy_creds_install(p, c, cl, k, kl, a, al, &why);
out:
  if (rc) {
    mesh__log(p->ctx, MESH_LOG_ERROR, "credentials from %s rejected (%s%s%s); %s", file,
              mesh_strerror(rc), why ? ": " : "", why ? why : "",
              p->ready ? "keeping the current ones" : "not ready");
  } else {
    mesh__log(p->ctx, MESH_LOG_INFO, "credentials loaded: identity %s, valid until %llu",
              p->identity, (unsigned long long)p->not_after);
  }
  mesh__free(p->ctx, c);
  mesh__wipe_free(p->ctx, k, kl);
  mesh__free(p->ctx, a);
  return rc;
}

/* ---- Listeners ------------------------------------------------------------------------ */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg);

static void listeners_set(mesh_proxy *p, int on) {
  for (size_t i = 0; i < p->nlst; i++) {
    if (!p->lst[i].l) continue;
    if (on) evconnlistener_enable(p->lst[i].l);
    else evconnlistener_disable(p->lst[i].l);
  }
}

/* Accepting resumes when below the limit and not in an EMFILE pause. */
void mesh__proxy_listeners_enable(mesh_proxy *p) {
  if (p->shutting_down || p->emfile_paused || p->nconns >= p->o->max_conns) return;
  if (p->limit_paused) {
    p->limit_paused = 0;
    listeners_set(p, 1);
  }
}

void mesh__proxy_limit_check(mesh_proxy *p) {
  if (p->nconns >= p->o->max_conns && !p->limit_paused) {
    p->limit_paused = 1;
    listeners_set(p, 0);
    mesh__log(p->ctx, MESH_LOG_WARN, "%u connections: at the limit, accepting paused",
              (unsigned)p->nconns);
  }
}

static void on_resume(evutil_socket_t fd, short what, void *arg) {
  mesh_proxy *p = arg;
  (void)fd;
  (void)what;
  p->emfile_paused = 0;
  if (p->shutting_down) return;
  if (p->nconns < p->o->max_conns) {
    p->limit_paused = 0;
    listeners_set(p, 1);
  } else {
    p->limit_paused = 1;
  }
}

/* EMFILE and friends: accept would fail at once forever; pause (not spin)
 * and retry later, when connections may have closed. */
static void on_accept_error(struct evconnlistener *l, void *arg) {
  proxy_listener *pl = arg;
  mesh_proxy *p = pl->p;
  int e = EVUTIL_SOCKET_ERROR();
  (void)l;
  p->accept_errors++;
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
    if (!p->emfile_paused) {
      mesh__log(p->ctx, MESH_LOG_WARN, "accept on %s: %s; pausing for %u ms", pl->text,
                strerror(e), RESUME_MS);
      p->emfile_paused = 1;
      listeners_set(p, 0);
      mesh__proxy_timer(p->resume_timer, RESUME_MS);
    }
    return;
  }
  mesh__log(p->ctx, MESH_LOG_WARN, "accept on %s: %s", pl->text, strerror(e));
}

static int listener_open(mesh_proxy *p, int kind, const char *addr, const char *authority,
                         const char **why) {
  proxy_listener *pl = &p->lst[p->nlst];
  struct sockaddr_storage ss;
  socklen_t len;
  if (mesh__proxy_addr_parse(addr, 1, &ss, &len, why)) return MESH_ERR_PARSE;
  pl->p = p;
  pl->kind = kind;
  if (authority && !(pl->authority = mesh__strdup(p->ctx, authority))) return MESH_ERR_NOMEM;
  pl->l = evconnlistener_new_bind(p->base, on_accept, pl,
                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                  BACKLOG, (struct sockaddr *)&ss, (int)len);
  if (!pl->l) {
    snprintf(start_why, sizeof start_why, "cannot listen on %s: %s", addr, strerror(errno));
    if (why) *why = start_why;
    mesh__free(p->ctx, pl->authority);
    pl->authority = NULL;
    return MESH_ERR_IO;
  }
  evconnlistener_set_error_cb(pl->l, on_accept_error);
  len = sizeof pl->bound;
  getsockname(evconnlistener_get_fd(pl->l), (struct sockaddr *)&pl->bound, &len);
  mesh__proxy_addr_format((struct sockaddr *)&pl->bound, pl->text, sizeof pl->text);
  p->nlst++;
  mesh__log(p->ctx, MESH_LOG_INFO, "%s listener on %s%s%s",
            kind == LST_INBOUND ? "inbound" : "outbound", pl->text, authority ? " -> " : "",
            authority ? authority : "");
  return 0;
}

static void listeners_close(mesh_proxy *p) {
  for (size_t i = 0; i < p->nlst; i++) {
    if (p->lst[i].l) evconnlistener_free(p->lst[i].l);
    p->lst[i].l = NULL;
  }
}

static int original_dst(int fd, struct sockaddr_storage *ss, socklen_t *len) {
  struct sockaddr_storage local;
  socklen_t ll = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &ll) != 0) return -1;
  *len = sizeof *ss;
  if (local.ss_family == AF_INET6)
    return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, ss, len);
  return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, ss, len);
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  char x[64], y[64];
  mesh__proxy_addr_format((const struct sockaddr *)a, x, sizeof x);
  mesh__proxy_addr_format((const struct sockaddr *)b, y, sizeof y);
  return strcmp(x, y) == 0;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg) {
  proxy_listener *pl = arg;
  mesh_proxy *p = pl->p;
  (void)l;
  (void)sa;
  (void)len;
  if (p->shutting_down) {
    close(fd);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (pl->kind == LST_INBOUND) {
    mesh__proxy_inbound_accept(p, pl, fd);
    return;
  }
  if (pl->kind == LST_PORT_MAP) {
    mesh__proxy_outbound_accept(p, pl, fd, pl->authority, NULL, 0);
    return;
  }
  struct sockaddr_storage dst, local;
  socklen_t dl, ll = sizeof local;
  char key[64];
  /* Without an original destination (not redirected), or with the
   * listener itself as one (forwarding would loop), the connection is in
   * explicit mode: HTTP requests name their destination, anything else is
   * closed after detection. */
  if (original_dst(fd, &dst, &dl) != 0 ||
      (getsockname(fd, (struct sockaddr *)&local, &ll) == 0 && same_addr(&dst, &local))) {
    mesh__proxy_outbound_accept(p, pl, fd, NULL, NULL, 0);
    return;
  }
  mesh__proxy_addr_format((struct sockaddr *)&dst, key, sizeof key);
  mesh__proxy_outbound_accept(p, pl, fd, key, (struct sockaddr *)&dst, dl);
}

/* ---- Lifecycle --------------------------------------------------------------------------- */

static void on_poll(evutil_socket_t fd, short what, void *arg) {
  mesh_proxy *p = arg;
  (void)fd;
  (void)what;
  endpoints_reload(p, 0);
  profiles_reload(p, 0, NULL);
  policy_reload(p, 0, NULL);
  creds_reload(p, 0);
  mesh__proxy_idle_sweep(p);
  mesh__proxy_timer(p->poll_timer, POLL_MS);
}

static void on_finish(evutil_socket_t fd, short what, void *arg) {
  mesh_proxy *p = arg;
  (void)fd;
  (void)what;
  if (p->finished) return;
  p->finished = 1;
  mesh__log(p->ctx, MESH_LOG_INFO, "shutdown complete");
  if (p->o->done_fn) p->o->done_fn(p->o->done_ud);
}

void mesh__proxy_conn_gone(mesh_proxy *p) {
  p->nconns--;
  mesh__proxy_listeners_enable(p);
  mesh__proxy_drain_check(p);
}

int mesh__proxy_opaque_port(const mesh_proxy *p, uint16_t port) {
  return (p->o->opaque_bits[port >> 3] >> (port & 7)) & 1;
}

void mesh__proxy_drain_check(mesh_proxy *p) {
  if (p->shutting_down && p->nconns == 0 && !p->finish_armed) {
    p->finish_armed = 1;
    event_del(p->grace_timer);
    mesh__proxy_timer(p->finish_timer, FINISH_MS);
  }
}

static void on_grace(evutil_socket_t fd, short what, void *arg) {
  mesh_proxy *p = arg;
  (void)fd;
  (void)what;
  mesh__log(p->ctx, MESH_LOG_WARN, "shutdown grace period over: closing %u connections",
            (unsigned)p->nconns);
  mesh__proxy_conns_close_all(p);
  mesh__proxy_http_close_all(p);
  mesh__proxy_drain_check(p);
}

static void shutdown_drain(mesh_proxy *p) {
  mesh__log(p->ctx, MESH_LOG_INFO, "shutting down: %u connections to drain within %u ms",
            (unsigned)p->nconns, (unsigned)p->o->grace_ms);
  listeners_close(p);
  mesh__proxy_http_shutdown(p);
  mesh__proxy_timer(p->grace_timer, p->o->grace_ms);
  mesh__proxy_drain_check(p);
}

void mesh_proxy_shutdown(mesh_proxy *p) {
  if (!p || p->shutting_down) return;
  p->shutting_down = 1;
  /* Out of the endpoints first, so that clients stop picking this proxy
   * before its listeners close: draining waits for the Deregister answer. */
  if (mesh__proxy_register_stop(p->reg, shutdown_drain)) return;
  shutdown_drain(p);
}

static int metrics_init(mesh_proxy *p) {
  static const char *const tcp[] = {"direction", "peer", "tls", "client_id", "server_id",
                                    "target_addr"};
  static const char *const tcp_close[] = {"direction", "peer",        "tls",  "client_id",
                                          "server_id", "target_addr", "errno"};
  static const char *const errs[] = {"error", "target_addr"};
  int rc;
  if ((rc = mesh_metrics_new(p->ctx, &p->m.reg))) return rc;
  if ((rc = mesh_metrics_counter(p->m.reg, "tcp_open_total", "Total TCP connections opened",
                                 tcp, 6, &p->m.open_total)) ||
      (rc = mesh_metrics_gauge(p->m.reg, "tcp_open_connections", "TCP connections now open", tcp,
                               6, &p->m.open_conns)) ||
      (rc = mesh_metrics_counter(p->m.reg, "tcp_read_bytes_total",
                                 "Bytes read from the peer of a TCP connection", tcp, 6,
                                 &p->m.read_bytes)) ||
      (rc = mesh_metrics_counter(p->m.reg, "tcp_write_bytes_total",
                                 "Bytes written to the peer of a TCP connection", tcp, 6,
                                 &p->m.write_bytes)) ||
      (rc = mesh_metrics_counter(p->m.reg, "tcp_close_total",
                                 "Total TCP connections closed (errno set on a socket error)",
                                 tcp_close, 7, &p->m.close_total)) ||
      (rc = mesh_metrics_counter(p->m.reg, "inbound_tcp_errors_total",
                                 "Inbound connections that failed before they were proxied", errs,
                                 2, &p->m.in_errors)) ||
      (rc = mesh_metrics_counter(p->m.reg, "outbound_tcp_errors_total",
                                 "Outbound connections that failed before they were proxied", errs,
                                 2, &p->m.out_errors)))
    return rc;
  mesh_metric_family *f;
  if ((rc = mesh_metrics_gauge(p->m.reg, "identity_cert_expiration_timestamp_seconds",
                               "When the proxy's certificate expires (seconds since the epoch)",
                               NULL, 0, &f)) ||
      (rc = mesh_metrics_series(f, NULL, 0, &p->m.cert_expiry)))
    return rc;
  if ((rc = mesh_metrics_counter(p->m.reg, "identity_cert_refresh_total",
                                 "Certificates installed (from mesh-identity or from files)", NULL,
                                 0, &f)) ||
      (rc = mesh_metrics_series(f, NULL, 0, &p->m.cert_refresh)))
    return rc;
  if ((rc = mesh__proxy_policy_metrics(p))) return rc;
  return mesh_metrics_process(p->m.reg);
}

int mesh_proxy_new(mesh_ctx *ctx, struct event_base *base, const mesh_proxy_opts *opts,
                   const char **why, mesh_proxy **ret) {
  if (!ctx || !base || !opts || !ret) return MESH_ERR_INVALID;
  mesh_proxy *p = mesh__calloc(ctx, 1, sizeof *p);
  if (!p) return MESH_ERR_NOMEM;
  p->ctx = ctx;
  p->base = base;
  int rc = opts_copy(opts, &p->o);
  if (rc) goto fail;
  if (p->o->identity_addr && (p->o->identity_dir || p->o->cert)) {
    rc = MESH_ERR_INVALID;
    if (why) *why = "credentials come from the identity service or from files, not both";
    goto fail;
  }
  if ((rc = ports_parse(p->o->ports, p->ports, &p->ports_all, why))) goto fail;
  int none;
  if ((rc = ports_parse(p->o->opaque, p->o->opaque_bits, &none, why))) goto fail;
  uint8_t seed[8];
  if ((rc = mesh_ctx_random(ctx, seed, sizeof seed))) goto fail;
  memcpy(&p->rng, seed, sizeof p->rng);
  p->rng |= 1;
  if ((rc = metrics_init(p))) goto fail;
  if ((rc = mesh_tls_creds_new(ctx, NULL, &p->creds))) goto fail;
  if ((rc = mesh__proxy_http_init(p))) goto fail;
  if (p->o->destination_addr) {
    disc_opts dopt = {.addr = p->o->destination_addr,
                      .ns = p->o->workload_ns ? p->o->workload_ns : "default", .reg = p->m.reg,
                      .server_id = p->o->destination_id, .changed = disc_changed, .changed_ud = p};
    if ((rc = mesh__discovery_new(ctx, base, &dopt, &p->disc))) goto fail;
  }
  p->poll_timer = evtimer_new(base, on_poll, p);
  p->resume_timer = evtimer_new(base, on_resume, p);
  p->grace_timer = evtimer_new(base, on_grace, p);
  p->finish_timer = evtimer_new(base, on_finish, p);
  size_t nl = 2 + p->o->nmaps;
  p->lst = mesh__calloc(ctx, nl, sizeof *p->lst);
  rc = MESH_ERR_NOMEM;
  if (!p->poll_timer || !p->resume_timer || !p->grace_timer || !p->finish_timer || !p->lst)
    goto fail;
  if (p->o->endpoints_file) {
    mesh_diags *d = NULL;
    mesh_proxy_endpoints *eps = NULL;
    if ((rc = mesh_diags_new(ctx, &d))) goto fail;
    rc = mesh_proxy_endpoints_load(ctx, p->o->endpoints_file, d, &eps);
    if (rc) {
      snprintf(start_why, sizeof start_why, "%s",
               mesh_diags_count(d) ? mesh_diags_text(d, 0) : mesh_strerror(rc));
      if (why) *why = start_why;
      mesh_diags_free(d);
      goto fail;
    }
    mesh_diags_free(d);
    if ((rc = snapshot_new(ctx, eps, &p->snap))) {
      mesh_proxy_endpoints_unref(eps);
      goto fail;
    }
    struct stat st;
    if (stat(p->o->endpoints_file, &st) == 0) {
      p->ep_stat_ok = 1;
      p->ep_mtime = st.st_mtim;
      p->ep_ino = st.st_ino;
      p->ep_size = st.st_size;
    }
  }
  if ((rc = profiles_reload(p, 1, why)) || (rc = policy_reload(p, 1, why))) goto fail;
  creds_reload(p, 1); /* missing credentials: not ready yet, not an error */
  /* After the credentials: the stream's first try can then speak mTLS. */
  if (p->o->workload_name && p->o->policy_dir)
    mesh__log(ctx, MESH_LOG_INFO, "policy: the directory %s wins; the control plane's policy of "
              "Workload %s is not watched", p->o->policy_dir, p->o->workload_name);
  else if (p->o->workload_name && !p->disc)
    mesh__log(ctx, MESH_LOG_WARN, "policy: --workload-name without a destination address: no "
              "policy stream, every peer is allowed");
  else if (p->o->workload_name && (rc = mesh__proxy_policy_stream_start(p, why)))
    goto fail;
  if (p->o->identity_addr && (rc = mesh__proxy_identity_start(p, why, &p->ident))) goto fail;
  if (*p->o->out_addr && (rc = listener_open(p, LST_TRANSPARENT, p->o->out_addr, NULL, why)))
    goto fail;
  if (*p->o->in_addr && (rc = listener_open(p, LST_INBOUND, p->o->in_addr, NULL, why))) goto fail;
  for (size_t i = 0; i < p->o->nmaps; i++)
    if ((rc = listener_open(p, LST_PORT_MAP, p->o->maps[i].listen, p->o->maps[i].authority, why)))
      goto fail;
  if (*p->o->admin_addr && (rc = mesh__proxy_admin_start(p, why))) goto fail;
  /* After the listeners: the registration carries their ports. */
  if (p->o->reg_on && (rc = mesh__proxy_register_start(p, why, &p->reg))) goto fail;
  mesh__proxy_timer(p->poll_timer, POLL_MS);
  *ret = p;
  return 0;
fail:
  mesh_proxy_free(p);
  return rc;
}

void mesh_proxy_free(mesh_proxy *p) {
  if (!p) return;
  mesh_ctx *ctx = p->ctx;
  mesh__proxy_identity_free(p->ident); /* first: its call's callback must not see a torn-down proxy */
  mesh__proxy_http_free(p);
  mesh__free(ctx, p->chain_pem);
  mesh__proxy_conns_close_all(p);
  mesh__proxy_admin_stop(p);
  listeners_close(p);
  for (size_t i = 0; p->lst && i < 2 + (p->o ? p->o->nmaps : 0); i++)
    mesh__free(ctx, p->lst[i].authority);
  mesh__free(ctx, p->lst);
  if (p->poll_timer) event_free(p->poll_timer);
  if (p->resume_timer) event_free(p->resume_timer);
  if (p->grace_timer) event_free(p->grace_timer);
  if (p->finish_timer) event_free(p->finish_timer);
  mesh__proxy_policy_stream_free(p); /* its stream is one of discovery's client */
  mesh__proxy_register_detach(p->reg); /* its call is one of discovery's client */
  mesh__discovery_free(p->disc); /* after the requests and connections: they hold its sets */
  mesh__proxy_register_free(p->reg);
  mesh__proxy_snapshot_unref(p->snap);
  mesh__proxy_profiles_unref(p->profiles);
  mesh_policy_unref(p->policy);
  mesh_tls_creds_free(p->creds);
  mesh_metrics_series_unref(p->m.cert_expiry);
  mesh_metrics_series_unref(p->m.cert_refresh);
  mesh_metrics_free(p->m.reg);
  mesh_proxy_opts_free(p->o);
  mesh__free(ctx, p);
}

int mesh_proxy_reload(mesh_proxy *p) {
  if (!p) return MESH_ERR_INVALID;
  mesh__log(p->ctx, MESH_LOG_INFO, "reloading the endpoints file, the profiles and the credentials");
  int a = endpoints_reload(p, 1), b = profiles_reload(p, 1, NULL), c = policy_reload(p, 1, NULL),
      d = creds_reload(p, 1);
  return a ? a : b ? b : c ? c : d;
}

int mesh__proxy_listens_on(const mesh_proxy *p, uint16_t port) {
  for (size_t i = 0; i < p->nlst; i++) {
    const struct sockaddr *sa = (const struct sockaddr *)&p->lst[i].bound;
    uint16_t bound = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                                     : ((const struct sockaddr_in *)sa)->sin_port);
    if (bound == port) return 1;
  }
  return 0;
}

uint16_t mesh_proxy_port(const mesh_proxy *p, int which) {
  if (!p) return 0;
  if (which == MESH_PROXY_LISTENER_ADMIN) return p->admin_port;
  int kind = which == MESH_PROXY_LISTENER_INBOUND ? LST_INBOUND : LST_TRANSPARENT;
  for (size_t i = 0; i < p->nlst; i++) {
    if (p->lst[i].kind != kind) continue;
    const struct sockaddr *sa = (const struct sockaddr *)&p->lst[i].bound;
    return ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                           : ((const struct sockaddr_in *)sa)->sin_port);
  }
  return 0;
}

uint32_t mesh_proxy_connections(const mesh_proxy *p) { return p ? p->nconns : 0; }

int mesh_proxy_ready(const mesh_proxy *p) { return p ? p->ready && !p->policy_pending : 0; }

int mesh_proxy_metrics(mesh_proxy *p, char **text, size_t *len) {
  if (!p || !text) return MESH_ERR_INVALID;
  return mesh_metrics_render(p->m.reg, text, len);
}
