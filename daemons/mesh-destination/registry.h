/* mesh-destination's workload registrations: meshds register their Workload under a lease (Registry.Register/Deregister), served with the store's manifests. */
#ifndef MESH_DESTINATION_REGISTRY_H
#define MESH_DESTINATION_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include <mesh/rpc.h>
#include <mesh/store.h>

struct event_base;

#define REGISTER_PATH "/mesh.Registry/Register"
#define DEREGISTER_PATH "/mesh.Registry/Deregister"
/* Bounds on a lease, and what a registration without lease_seconds gets. */
#define DST_LEASE_MIN_S 3u
#define DST_LEASE_MAX_S 300u
#define DST_LEASE_DEFAULT_S 30u
#define DST_REGISTRATIONS_MAX 10000u /* live registrations: each is a Workload of every snapshot */
#define DST_REGISTER_BODY_MAX 65536u
/* The annotation naming the mTLS identity that registered a Workload (none over plaintext). */
#define REGISTERED_BY "mesh.libmesh.io/registered-by"

/* A registration request made into a Workload manifest. */
typedef struct {
  char ns[64], name[254], sa[64];
  uint32_t lease_s;
  char *manifest; /* JSON, malloc'd */
  size_t len;
} dst_registration;

/* Check a Register body (doc/protocol.md) as a Workload manifest is
 * checked (mesh_snapshot_builder_add with the naming options so; NULL:
 * the defaults), and the lease bounds. peer (NULL or "": plaintext) goes
 * into the manifest as the REGISTERED_BY annotation. 0 with *out filled
 * (free its manifest with dst_registration_clear); MESH_ERR_PARSE with
 * why[0..cap) saying what is wrong; MESH_ERR_NOMEM. */
int dst_registration_parse(mesh_ctx *ctx, const mesh_store_opts *so, const char *body, size_t len,
                           const char *peer, dst_registration *out, char *why, size_t cap);
void dst_registration_clear(dst_registration *r);

/* The registrations. With a directory store they are held in memory:
 * every change hands the whole set to mesh_store_set_extra, and each lease
 * is a timer on base; they are gone when the daemon stops. With etcd they
 * are keys <prefix>registrations/<ns>/<name> bound to etcd leases, which
 * every replica's follower feeds to its store and a restarted replica
 * reads back. Used from the loop's thread only. */
typedef struct dst_registry dst_registry;

struct dst_etcd;

typedef struct {
  mesh_store *store;         /* the store served (a fed store with etcd) */
  struct dst_etcd *etcd;     /* NULL: registrations in memory, into store */
  const mesh_store_opts *so; /* naming options, as the store's */
  /* A caller's identity must be <sa>.<ns>.serviceaccount.identity.<cp_ns>.<trust_domain>. */
  const char *trust_domain, *cp_ns;
  void (*log)(const char *level, const char *line);
} dst_registry_opts;

/* MESH_ERR_NOMEM, MESH_ERR_INVALID. */
int dst_registry_new(mesh_ctx *ctx, struct event_base *base, const dst_registry_opts *o,
                     dst_registry **ret);
/* Serve Register and Deregister on srv. */
int dst_registry_handle(dst_registry *r, mesh_rpc_server *srv);
size_t dst_registry_count(const dst_registry *r);
/* Drops every registration without touching the store, and abandons calls
 * to etcd in flight (shutdown, after the rpc server is gone). NULL is a no-op. */
void dst_registry_free(dst_registry *r);

#endif
