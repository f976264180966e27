/* meshctl internals: the command table's entry type and helpers the commands share. */
#ifndef MESHCTL_H
#define MESHCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

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


/* Prints "Run 'meshctl <cmd> --help' for usage." and returns MESHCTL_USAGE. */
int meshctl_usage_error(const char *prog);
/* -o text|json: false (after saying why on stderr) for anything else. */
bool meshctl_parse_output(const char *prog, const char *arg, bool *json);

#endif
