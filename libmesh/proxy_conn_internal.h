/* libmesh proxy internals: the engine's state, shared by proxy.c, proxy_conn.c and proxy_admin.c. */
#ifndef MESH_PROXY_CONN_INTERNAL_H
#define MESH_PROXY_CONN_INTERNAL_H

#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include <mesh/balance.h>
#include <mesh/metrics.h>
#include <mesh/proxy.h>
#include <mesh/tls.h>

struct event;
struct evhttp;
struct evconnlistener;
struct mesh_proxy_conn;

struct mesh_proxy_opts {
  mesh_ctx *ctx;
  char *out_addr, *in_addr, *admin_addr; /* "" = off */
  struct {
    char *listen, *authority;
  } maps[MESH_PROXY_PORT_MAPS_MAX];
  size_t nmaps;
  char *endpoints_file, *identity_dir, *cert, *key, *anchors, *ports;
  int allow_unauth;
  uint32_t connect_ms, header_ms, grace_ms, max_conns, buffer;
  uint64_t idle_ms;
  mesh_proxy_done_fn done_fn;
  void *done_ud;
};

enum { LST_TRANSPARENT = 0, LST_PORT_MAP = 1, LST_INBOUND = 2 };

typedef struct {
  mesh_proxy *p;
  struct evconnlistener *l;
  int kind;
  char *authority; /* port maps */
  struct sockaddr_storage bound;
  char text[64];
} proxy_listener;

/* An endpoints file and a balancer per service: swapped whole on reload;
 * connections picking an endpoint hold a reference until the pick is done. */
typedef struct {
  mesh_ctx *ctx;
  long refs;
  mesh_proxy_endpoints *eps;
  mesh_balance **bal;
  size_t n;
} proxy_snapshot;

struct mesh_proxy {
  mesh_ctx *ctx;
  struct event_base *base;
  mesh_proxy_opts *o;
  uint8_t ports[8192]; /* inbound allowlist bitmap */
  int ports_all;
  uint64_t rng;
  proxy_listener *lst;
  size_t nlst;
  struct evhttp *http;
  uint16_t admin_port;
  mesh_tls_creds *creds;
  int ready, cred_stat_ok, cred_warned;
  struct timespec cred_mtime;
  ino_t cred_ino;
  char identity[256];
  uint64_t not_after;
  proxy_snapshot *snap;
  int ep_stat_ok;
  struct timespec ep_mtime;
  ino_t ep_ino;
  off_t ep_size;
  uint64_t reloads, accept_errors;
  struct event *poll_timer, *resume_timer, *grace_timer, *finish_timer;
  struct mesh_proxy_conn *conns; /* every open connection, for shutdown and sweeps */
  uint32_t nconns;
  int limit_paused, emfile_paused, shutting_down, finish_armed, finished;
  struct {
    mesh_metrics *reg;
    mesh_metric_family *open_total, *open_conns, *read_bytes, *write_bytes, *close_total,
        *in_errors, *out_errors;
    mesh_metric_series *cert_expiry;
  } m;
};

mesh_ctx *mesh__proxy_opts_ctx(const mesh_proxy_opts *o);
uint64_t mesh__proxy_now_ns(void);
uint32_t mesh__proxy_rand(mesh_proxy *p);
void mesh__proxy_timer(struct event *ev, uint64_t ms);
void mesh__proxy_snapshot_unref(proxy_snapshot *s);
void mesh__proxy_listeners_enable(mesh_proxy *p);
void mesh__proxy_limit_check(mesh_proxy *p);
void mesh__proxy_drain_check(mesh_proxy *p);

/* proxy_conn.c */
void mesh__proxy_inbound_accept(mesh_proxy *p, proxy_listener *pl, int fd);
/* key: the authority or original destination; dst (transparent mode): where
 * to connect when key is unknown (NULL: close). */
void mesh__proxy_outbound_accept(mesh_proxy *p, proxy_listener *pl, int fd, const char *key,
                                 const struct sockaddr *dst, socklen_t dstlen);
void mesh__proxy_conns_close_all(mesh_proxy *p);
void mesh__proxy_idle_sweep(mesh_proxy *p);
/* Count a connection that failed before it was proxied. */
void mesh__proxy_error(mesh_proxy *p, int inbound, const char *error, const char *target);

/* proxy_admin.c */
int mesh__proxy_admin_start(mesh_proxy *p, const char **why);
void mesh__proxy_admin_stop(mesh_proxy *p);

#endif
