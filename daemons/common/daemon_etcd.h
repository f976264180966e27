/* What mesh-destination and meshctl share about etcd: the JSON gateway's
 * encodings (bytes as base64, int64 as strings) and where things live under
 * the key prefix (doc/etcd.md). */
#ifndef DAEMON_ETCD_H
#define DAEMON_ETCD_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* <prefix>registrations/<namespace>/<name>: a workload registration (a
 * Workload manifest in JSON), bound to an etcd lease. No file suffix, so no
 * manifest key is ever taken for one. */
#define ETCD_REGISTRATIONS "registrations/"
/* How a registration is named in diagnostics and mesh_snapshot_source. */
#define REGISTRATION_SOURCE "registration "

/* malloc'd, NUL-terminated; NULL when out of memory (decode: or not base64). */
char *etcd_b64_encode(const char *p, size_t n);
char *etcd_b64_decode(const char *s, size_t *ret_len);
/* The gateway writes int64 as strings; numbers are taken too. -1 when absent or bad. */
long long etcd_i64(const json_t *j);
/* The range_end that makes a range "every key starting with prefix": the
 * prefix with its last byte plus one (prefixes are text: never 0xff). malloc'd. */
char *etcd_range_end(const char *prefix);

enum { ETCD_KEY_OTHER, ETCD_KEY_MANIFEST, ETCD_KEY_REGISTRATION };
/* What the key holds: a manifest (a name ending in .yaml, .yml or .json,
 * not hidden, as the directory store reads files), a registration (then src
 * gets "registration <ns>/<name>"; src may be NULL), or nothing of ours. */
int etcd_key_kind(const char *prefix, const char *key, char *src, size_t cap);
/* <prefix>registrations/<ns>/<name>, malloc'd. */
char *etcd_registration_key(const char *prefix, const char *ns, const char *name);

#endif
