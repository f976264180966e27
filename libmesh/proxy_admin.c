/* libmesh proxy admin server: /live, /ready, /metrics, /env.json and POST /shutdown over HTTP/1.1 (libevent's evhttp). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <jansson.h>

#include <mesh/error.h>
#include <mesh/profile.h>
#include <mesh/version.h>

#include "ctx_internal.h"
#include "proxy_conn_internal.h"
#include "proxy_internal.h"

#define ADMIN_HEADERS_MAX 8192
#define ADMIN_BODY_MAX 4096
#define ADMIN_TIMEOUT_S 10

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type,
                  const char *body, size_t len) {
  struct evbuffer *b = evbuffer_new();
  if (!b) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  evbuffer_add(b, body, len);
  evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
  evhttp_send_reply(req, code, reason, b);
  evbuffer_free(b);
}

static void text(struct evhttp_request *req, int code, const char *reason, const char *body) {
  reply(req, code, reason, "text/plain; charset=utf-8", body, strlen(body));
}

/* Whether the request came over loopback (POST /shutdown is local only). */
static int from_loopback(struct evhttp_request *req) {
  char *host = NULL;
  ev_uint16_t port;
  evhttp_connection_get_peer(evhttp_request_get_connection(req), &host, &port);
  if (!host) return 0;
  struct in_addr a4;
  struct in6_addr a6;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host, &a6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return 1;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
  }
  return 0;
}

static json_t *str_or_null(const char *s) { return s ? json_string(s) : json_null(); }

static void env_json(mesh_proxy *p, struct evhttp_request *req) {
  const mesh_proxy_opts *o = p->o;
  json_t *j = json_object(), *maps = json_array();
  for (size_t i = 0; maps && i < o->nmaps; i++) {
    json_t *m = json_object();
    json_object_set_new(m, "listen", json_string(o->maps[i].listen));
    json_object_set_new(m, "authority", json_string(o->maps[i].authority));
    json_array_append_new(maps, m);
  }
  /* Paths and settings only: the key itself never leaves the process. */
  json_object_set_new(j, "MESH_PROXY_OUTBOUND_LISTEN_ADDR", json_string(o->out_addr));
  json_object_set_new(j, "MESH_PROXY_INBOUND_LISTEN_ADDR", json_string(o->in_addr));
  json_object_set_new(j, "MESH_PROXY_ADMIN_LISTEN_ADDR", json_string(o->admin_addr));
  json_object_set_new(j, "MESH_PROXY_OUTBOUND_PORT_MAP", maps);
  json_object_set_new(j, "MESH_PROXY_ENDPOINTS", str_or_null(o->endpoints_file));
  json_object_set_new(j, "MESH_PROXY_PROFILES", str_or_null(o->profiles_dir));
  json_object_set_new(j, "MESH_PROXY_IDENTITY_DIR", str_or_null(o->identity_dir));
  json_object_set_new(j, "MESH_PROXY_CERT", str_or_null(o->cert));
  json_object_set_new(j, "MESH_PROXY_KEY", str_or_null(o->key));
  json_object_set_new(j, "MESH_PROXY_ANCHORS", str_or_null(o->anchors));
  json_object_set_new(j, "MESH_PROXY_IDENTITY_ADDR", str_or_null(o->identity_addr));
  json_object_set_new(j, "MESH_PROXY_IDENTITY_TOKEN_FILE", str_or_null(o->identity_token_file));
  json_object_set_new(j, "MESH_PROXY_SERVICE_ACCOUNT", str_or_null(o->identity_sa));
  json_object_set_new(j, "MESH_PROXY_IDENTITY_SVC_NAME",
                      str_or_null(o->identity_addr ? (o->identity_svc_name
                                                           ? o->identity_svc_name
                                                           : MESH_PROXY_DEFAULT_IDENTITY_SVC_NAME)
                                                   : NULL));
  json_object_set_new(j, "MESH_PROXY_INBOUND_ALLOW_UNAUTHENTICATED", json_boolean(o->allow_unauth));
  json_object_set_new(j, "MESH_PROXY_INBOUND_PORTS", json_string(o->ports));
  json_object_set_new(j, "MESH_PROXY_CONNECT_TIMEOUT_MS", json_integer(o->connect_ms));
  json_object_set_new(j, "MESH_PROXY_HEADER_TIMEOUT_MS", json_integer(o->header_ms));
  json_object_set_new(j, "MESH_PROXY_IDLE_TIMEOUT_MS", json_integer((json_int_t)o->idle_ms));
  json_object_set_new(j, "MESH_PROXY_SHUTDOWN_GRACE_MS", json_integer(o->grace_ms));
  json_object_set_new(j, "MESH_PROXY_MAX_CONNECTIONS", json_integer(o->max_conns));
  json_object_set_new(j, "MESH_PROXY_BUFFER_BYTES", json_integer(o->buffer));
  json_object_set_new(j, "identity", p->ready ? json_string(p->identity) : json_null());
  json_object_set_new(j, "identity_not_after", json_integer((json_int_t)p->not_after));
  json_object_set_new(j, "identity_chain_pem", p->ready ? str_or_null(p->chain_pem) : json_null());
  json_object_set_new(j, "ready", json_boolean(p->ready));
  json_object_set_new(j, "MESH_PROXY_WORKLOAD_NAME", str_or_null(o->workload_name));
  /* The policy stream's first policy has not come: /ready says 503 for it. */
  json_object_set_new(j, "inbound_policy_pending", json_boolean(p->policy_pending));
  json_object_set_new(j, "endpoints_services",
                      json_integer(p->snap ? (json_int_t)mesh_proxy_endpoints_service_count(
                                                 p->snap->eps)
                                           : 0));
  json_object_set_new(j, "endpoints_reloads", json_integer((json_int_t)p->reloads));
  json_object_set_new(j, "open_connections", json_integer(p->nconns));
  json_object_set_new(j, "threads", json_integer(1));
  json_object_set_new(j, "version", json_string(MESH_VERSION_STRING));
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(j);
  if (!s) {
    evhttp_send_error(req, 500, NULL);
    return;
  }
  reply(req, 200, "OK", "application/json", s, strlen(s));
  free(s);
}

static void on_request(struct evhttp_request *req, void *arg) {
  mesh_proxy *p = arg;
  const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
  const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
  enum evhttp_cmd_type m = evhttp_request_get_command(req);
  if (!path) path = "/";
  if (!strcmp(path, "/shutdown")) {
    if (m != EVHTTP_REQ_POST) {
      evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
      text(req, 405, "Method Not Allowed", "use POST\n");
      return;
    }
    if (!from_loopback(req)) {
      text(req, 403, "Forbidden", "shutdown is only accepted from loopback\n");
      return;
    }
    text(req, 200, "OK", "shutdown\n");
    mesh_proxy_shutdown(p);
    return;
  }
  if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
    text(req, 405, "Method Not Allowed", "use GET\n");
    return;
  }
  if (!strcmp(path, "/live")) {
    text(req, 200, "OK", "live\n");
  } else if (!strcmp(path, "/ready")) {
    if (mesh_proxy_ready(p) && !p->shutting_down) text(req, 200, "OK", "ready\n");
    else if (p->ready && p->policy_pending && !p->shutting_down)
      text(req, 503, "Service Unavailable", "not ready: waiting for the inbound policy\n");
    else text(req, 503, "Service Unavailable", "not ready\n");
  } else if (!strcmp(path, "/metrics")) {
    char *t = NULL;
    size_t len = 0;
    if (mesh_metrics_render(p->m.reg, &t, &len)) {
      evhttp_send_error(req, 500, NULL);
      return;
    }
    reply(req, 200, "OK", "text/plain; version=0.0.4", t, len);
    mesh_free_string(p->ctx, t);
  } else if (!strcmp(path, "/env.json")) {
    env_json(p, req);
  } else {
    text(req, 404, "Not Found", "not found: try /live, /ready, /metrics, /env.json\n");
  }
}

int mesh__proxy_admin_start(mesh_proxy *p, const char **why) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (mesh__proxy_addr_parse(p->o->admin_addr, 1, &ss, &len, why)) return MESH_ERR_PARSE;
  char host[64];
  uint16_t port;
  if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  } else {
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  p->http = evhttp_new(p->base);
  if (!p->http) return MESH_ERR_NOMEM;
  evhttp_set_max_headers_size(p->http, ADMIN_HEADERS_MAX);
  evhttp_set_max_body_size(p->http, ADMIN_BODY_MAX);
  evhttp_set_timeout(p->http, ADMIN_TIMEOUT_S);
  evhttp_set_allowed_methods(p->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST);
  evhttp_set_gencb(p->http, on_request, p);
  struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(p->http, host, port);
  if (!bs) {
    static _Thread_local char msg[300];
    snprintf(msg, sizeof msg, "cannot listen on %s (admin)", p->o->admin_addr);
    if (why) *why = msg;
    return MESH_ERR_IO;
  }
  struct sockaddr_storage bound;
  socklen_t bl = sizeof bound;
  getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&bound, &bl);
  p->admin_port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
  mesh__log(p->ctx, MESH_LOG_INFO, "admin listener on %s:%u", host, (unsigned)p->admin_port);
  return 0;
}

void mesh__proxy_admin_stop(mesh_proxy *p) {
  if (p->http) evhttp_free(p->http);
  p->http = NULL;
}
