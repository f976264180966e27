/* mesh-destination's etcd backend: the manifests under a key prefix, read and watched through etcd's v3 JSON gateway on the daemon's libevent loop, fed to a store. */
#ifndef MESH_DESTINATION_ETCD_H
#define MESH_DESTINATION_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include <mesh/store.h>

struct event_base;

/* A follower (dst_etcd) keeps a copy of every key under the prefix, as of
 * one etcd revision: a full range read, then a watch from the next
 * revision. After each change it hands the whole set to a fed store
 * (mesh_store_load_buffers), which swaps its snapshot only when every
 * manifest is valid. A failing member (connection lost, a watch that
 * ends, a quorum read that fails or times out) makes it move to the next
 * endpoint and resume the watch after the last revision it saw; a
 * compacted revision makes it read everything again. Everything runs on
 * the loop's thread; no call blocks. Bounds below. */
typedef struct dst_etcd dst_etcd;

#define DST_ETCD_MAX_ENDPOINTS 16u
#define DST_ETCD_MAX_RANGE_BYTES (64u << 20)   /* one range answer */
#define DST_ETCD_MAX_WATCH_BYTES (32u << 20)   /* one watch message */
#define DST_ETCD_REQUEST_TIMEOUT_S 3           /* a range read or a probe */
#define DST_ETCD_PROBE_MS 1000u                /* a quorum read on the watched member */
#define DST_ETCD_RETRY_MIN_MS 100u             /* once every member failed in a row, */
#define DST_ETCD_RETRY_MAX_MS 2000u            /* retried after this, doubling up to this */
#define DST_ETCD_MAX_REQUEST_ANSWER (1u << 20) /* the answer to a single request */
#define DST_ETCD_DEFAULT_PREFIX "/libmesh/"

typedef void (*dst_etcd_log_fn)(const char *level, const char *line);

typedef struct {
  const char *endpoints; /* "http://IP:PORT,..." (the scheme may be left out) */
  const char *prefix;    /* manifests are keys "<prefix>...*.{yaml,yml,json}", registrations
                          * "<prefix>registrations/<ns>/<name>"; other keys are skipped */
  uint32_t debounce_ms;  /* a watched change is fed at once, but at most once a period */
  dst_etcd_log_fn log;
} dst_etcd_opts;

/* Checks an --etcd-endpoints list; false with the reason in err. */
bool dst_etcd_endpoints_valid(const char *endpoints, char *err, size_t esize);

/* A follower feeding st (a fed store, mesh_store_new_fed; borrowed: it
 * must outlive the follower), started at once. 0; MESH_ERR_INVALID (bad
 * opts: err says why), MESH_ERR_NOMEM. */
int dst_etcd_new(struct event_base *base, mesh_store *st, const dst_etcd_opts *opts, char *err,
                 size_t esize, dst_etcd **ret);
/* Closes the connections. NULL is a no-op. */
void dst_etcd_free(dst_etcd *e);

/* 1 while a watch is established on a member, else 0. */
int dst_etcd_connected(const dst_etcd *e);
/* 1 once a full read was handed to the store (whatever the store made of it). */
int dst_etcd_synced(const dst_etcd *e);
/* The etcd revision the copy is at (0 before the first read). */
int64_t dst_etcd_revision(const dst_etcd *e);
/* A line for /store: "etcd http://IP:PORT (connected), prefix /libmesh/, revision 12, 5 keys". */
void dst_etcd_describe(const dst_etcd *e, char *buf, size_t size);
/* Read every key again now (SIGHUP), from the current member. */
void dst_etcd_resync(dst_etcd *e);
/* The key prefix ("/libmesh/"). */
const char *dst_etcd_prefix(const dst_etcd *e);
/* Registrations in the copy (keys under <prefix>registrations/). */
size_t dst_etcd_registrations(const dst_etcd *e);

/* A single request to the gateway (a lease, a transaction), on a connection
 * of its own to the member the follower uses; a member that does not
 * answer within DST_ETCD_REQUEST_TIMEOUT_S passes it to the next, each
 * member once. cb (may be NULL) then runs once from the loop with etcd's
 * answer (borrowed), or NULL and why ("etcd http://...: HTTP 400: ..."). */
typedef struct dst_etcd_req dst_etcd_req;
typedef void (*dst_etcd_reply_fn)(void *ud, json_t *answer, const char *why);
/* Takes body. *ret (may be NULL) lets the caller cancel it until cb runs.
 * 0, MESH_ERR_NOMEM. */
int dst_etcd_request(dst_etcd *e, const char *path, json_t *body, dst_etcd_reply_fn cb, void *ud,
                     dst_etcd_req **ret);
/* Drops a request: its callback never runs. */
void dst_etcd_cancel(dst_etcd_req *q);

#endif
