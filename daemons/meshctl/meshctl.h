/* meshctl internals: the command table's entry type and helpers the commands share. */
#ifndef MESHCTL_H
#define MESHCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include <mesh/mesh.h>

/* Exit codes, as every command returns them. */
enum { MESHCTL_OK = 0, MESHCTL_FAILED = 1, MESHCTL_USAGE = 2 };

/* One subcommand. run gets argv[0] == "meshctl <name>" (so getopt's messages
 * name the command) and the command's own arguments after it. */
typedef struct {
  const char *name;
  const char *summary; /* one line for `meshctl help` */
  int (*run)(int argc, char **argv);
  void (*usage)(FILE *out); /* the command's --help text */
} meshctl_command;

/* Each lives in cmd_<name>.c; main.c lists them in its dispatch table. */
extern const meshctl_command meshctl_cmd_validate;
extern const meshctl_command meshctl_cmd_profile;
extern const meshctl_command meshctl_cmd_version;
extern const meshctl_command meshctl_cmd_identity, meshctl_cmd_diagnostics;
extern const meshctl_command meshctl_cmd_get;
extern const meshctl_command meshctl_cmd_authz;
extern const meshctl_command meshctl_cmd_check;
extern const meshctl_command meshctl_cmd_viz;
extern const meshctl_command meshctl_cmd_apply, meshctl_cmd_delete;

/* diagnostics endpoints / profile (diag_destination.c): clients of
 * mesh-destination. argv[0] names the subcommand; usage prints the whole
 * diagnostics help. */
int meshctl_diagnostics_endpoints(int argc, char **argv, void (*usage)(FILE *));
int meshctl_diagnostics_profile(int argc, char **argv, void (*usage)(FILE *));
void meshctl_diagnostics_destination_usage(FILE *out); /* their usage lines */
void meshctl_diagnostics_destination_help(FILE *out);  /* their descriptions and flags */

/* A context with the default hooks; prints why and returns NULL on failure. */
mesh_ctx *meshctl_ctx(const char *prog);

/* Reads all of path ("-": standard input) into a NUL-terminated buffer that
 * the caller frees. Reads at most limit + 1 bytes, so that libmesh reports
 * an oversized input as such. Prints why and returns false on failure. */
bool meshctl_read(const char *prog, const char *path, size_t limit, char **buf, size_t *len);

/* Prints every diagnostic ("file:line:col: error: ...") to out. */
void meshctl_print_diags(FILE *out, const mesh_diags *d);


/* Outcomes of a check, and their marks as `linkerd check` prints them. */
enum { MESHCTL_ST_OK, MESHCTL_ST_WARN, MESHCTL_ST_ERR };
#define MESHCTL_MARK_OK "\u221a"   /* √ */
#define MESHCTL_MARK_WARN "\u203c" /* ‼ */
#define MESHCTL_MARK_ERR "\u00d7"  /* × */
/* Anchors and issuers: warn this long before they expire. */
#define MESHCTL_WARN_WITHIN_S (60ull * 86400)

/* certs.c. t (seconds since the epoch) as "2026-01-02T03:04:05Z". */
void meshctl_rfc3339(uint64_t t, char buf[32]);
/* A certificate's dates at now: MESHCTL_ST_ERR when expired or not yet valid,
 * MESHCTL_ST_WARN for a CA that expires within 60 days, else MESHCTL_ST_OK.
 * msg gets why ("issuer expired on ..."; empty when ok); kind names it. */
int meshctl_cert_dates(const char *kind, uint64_t not_before, uint64_t not_after, bool ca,
                       uint64_t now, char *msg, size_t size);
/* Reads and parses a PEM file (text: its bytes, NUL-terminated, freed by the
 * caller). False with why ("PATH: reason") and nothing to free on failure. */
bool meshctl_certs_load(mesh_ctx *ctx, const char *path, char **text, size_t *len,
                        mesh_certs **ret, char *why, size_t size);


/* http.c: GET http://addr/path (addr "HOST:PORT", "[V6]:PORT"), all within
 * timeout_ms, reading at most limit bytes of body. 0 with the status and
 * body (NUL-terminated, freed by the caller), or -1 with why. */
int meshctl_http_get(const char *addr, const char *path, int timeout_ms, size_t limit,
                     int *status, char **body, size_t *len, char *why, size_t size);
/* The same with any method and, unless rbody is NULL, an application/json
 * body of rlen bytes (etcd's JSON gateway). A chunked answer is decoded. */
int meshctl_http_request(const char *method, const char *addr, const char *path, const char *rbody,
                         size_t rlen, int timeout_ms, size_t limit, int *status, char **body,
                         size_t *len, char *why, size_t size);

/* Prints "Run 'meshctl <cmd> --help' for usage." and returns MESHCTL_USAGE. */
int meshctl_usage_error(const char *prog);

/* ---- etcd, through its v3 JSON gateway (apply, delete, get) ---- */
#define MESHCTL_ETCD_MAX_ENDPOINTS 16
#define MESHCTL_ETCD_DEFAULT_PREFIX "/libmesh/"
typedef struct {
  const char *prog, *prefix;
  char eps[MESHCTL_ETCD_MAX_ENDPOINTS][128]; /* "IP:PORT" */
  size_t neps;
  int timeout_ms;
} meshctl_etcd;
/* --etcd-endpoints into t->eps; false after saying why. */
bool meshctl_etcd_endpoints(meshctl_etcd *t, const char *list);
/* POSTs body (taken) to path on the first member that answers; the
 * answer's JSON, or NULL after saying why. */
json_t *meshctl_etcd_call(const meshctl_etcd *t, const char *path, json_t *body);
/* Each key under the prefix that holds a manifest or a registration
 * (kind: ETCD_KEY_* of daemon_etcd.h), read at one revision (*rev): the
 * key, how diagnostics name it (the key, or "registration ns/name") and
 * its value (malloc'd, taken by fn). false after saying why, or when fn does. */
typedef bool (*meshctl_etcd_kv_fn)(void *ud, int kind, const char *key, const char *source, char *val,
                                   size_t len);
bool meshctl_etcd_read(const meshctl_etcd *t, long long *rev, meshctl_etcd_kv_fn fn, void *ud);
/* -o text|json: false (after saying why on stderr) for anything else. */
bool meshctl_parse_output(const char *prog, const char *arg, bool *json);

#endif
