/* mesh-destination's DNS fallback: names outside the store resolved with c-ares on the daemon's libevent loop, shared, bounded and kept fresh by their TTL. */
#ifndef MESH_DESTINATION_DNS_H
#define MESH_DESTINATION_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mesh/metrics.h>
#include <mesh/store.h>

struct event_base;

/* A resolver (dst_dns) holds one entry per name (a dst_dns_name, private),
 * shared by every stream that watches the name (a dst_dns_watch each) and
 * re-resolved when its answer's TTL runs out. Answers (dst_dns_answer) are
 * immutable and reference-counted, so a stream keeps the one it last sent
 * and diffs the next against it. Everything runs on the loop's thread; no
 * call blocks. */
typedef struct dst_dns dst_dns;
typedef struct dst_dns_watch dst_dns_watch;
typedef struct dst_dns_answer dst_dns_answer;

/* Bounds and timings (doc/protocol.md, "Names outside the store"). */
#define DST_DNS_DEFAULT_MAX_NAMES 1000u   /* names held: watched, or cached until their TTL */
#define DST_DNS_DEFAULT_MAX_RESOLVING 16u /* names being resolved at once; others queue */
#define DST_DNS_MAX_ADDRS 64u             /* addresses kept from one answer (the lowest) */
#define DST_DNS_TTL_MIN_MS 5000u          /* re-resolve no sooner than this (Linkerd's floor) */
#define DST_DNS_TTL_MAX_MS 300000u        /* and no later than this */
#define DST_DNS_NEGATIVE_MS 30000u        /* NXDOMAIN / no records: asked again after this */
#define DST_DNS_RETRY_MIN_MS 1000u        /* a temporary failure: retried after this, */
#define DST_DNS_RETRY_MAX_MS 30000u       /* doubling up to this */
#define DST_DNS_SERVERS_MAX 8u            /* --dns-server entries */

typedef void (*dst_dns_log_fn)(const char *level, const char *line);

typedef struct {
  const char *cluster_domain; /* names in it are the store's, never asked to DNS */
  const char *servers;        /* "IP[:PORT],..." ; NULL: the system's (resolv.conf) */
  size_t max_names, max_resolving;
  mesh_metrics *metrics; /* where its series go (they are unref'd by dst_dns_free) */
  dst_dns_log_fn log;
} dst_dns_opts;

/* Checks a --dns-server list ("IP[:PORT],...", IPv6 as [v6]:port or bare);
 * false with the reason in err. */
bool dst_dns_servers_valid(const char *servers, char *err, size_t esize);

/* A resolver on base. 0; MESH_ERR_INVALID (bad opts: err says why),
 * MESH_ERR_IO (c-ares could not start: err says why), MESH_ERR_NOMEM. */
int dst_dns_new(struct event_base *base, const dst_dns_opts *opts, char *err, size_t esize,
                dst_dns **ret);
/* Frees every name. The watches must be freed first. NULL is a no-op. */
void dst_dns_free(dst_dns *r);

/* The namespaces of snap, kept (copied) for dst_dns_wants: call it with
 * each snapshot that takes over. MESH_ERR_NOMEM (the last set stays). */
int dst_dns_set_snapshot(dst_dns *r, const mesh_snapshot *snap);

/* Whether authority ("host:port", as the store accepted it) is for DNS:
 * a name of two labels or more outside the cluster domain (not ending in
 * ".svc" or ".<cluster-domain>"), not an IP address, and not "svc.ns" for
 * a namespace ns of the store. Single labels and those "svc.ns" are short
 * Service names and stay the store's. On true, host (lowercase, no
 * trailing dot) and port (80 when absent). */
bool dst_dns_wants(const dst_dns *r, const char *authority, char *host, size_t hsize,
                   uint16_t *port);

/* Called when the watched name's answer changes (not for a temporary
 * failure: the last answer stays). fn must not free the watch. */
typedef void (*dst_dns_change_fn)(void *ud);

/* Watch host (from dst_dns_wants): joins the name's entry, or makes one
 * and resolves it from the loop. 0; MESH_ERR_LIMIT (max_names names are
 * held and every one is watched or being resolved), MESH_ERR_NOMEM. */
int dst_dns_watch_new(dst_dns *r, const char *host, dst_dns_change_fn fn, void *ud,
                      dst_dns_watch **ret);
void dst_dns_watch_free(dst_dns_watch *w); /* NULL is a no-op */

/* The name's current answer (borrowed), NULL until the first one. */
const dst_dns_answer *dst_dns_watch_answer(const dst_dns_watch *w);

dst_dns_answer *dst_dns_answer_ref(const dst_dns_answer *a); /* NULL gives NULL */
void dst_dns_answer_unref(dst_dns_answer *a);                /* NULL is a no-op */

/* The Destination.Get messages that take a client from old (NULL: it has
 * nothing from DNS) to cur (NULL: take old's addresses back), as ndjson
 * text (malloc'd, each message ended by '\n'; *ret NULL when nothing is to
 * be said): "add" for new addresses (ip:port, weight 1, target_port port;
 * no tls_identity: they are not meshed), "remove" for those gone,
 * "no_endpoints {exists: false}" for NXDOMAIN or no records.
 * MESH_ERR_NOMEM. */
int dst_dns_messages(const dst_dns_answer *old, const dst_dns_answer *cur, uint16_t port,
                     char **ret);

#endif
