/* meshctl: the mesh's command-line tool; this file parses the command name and dispatches. */
#include <stdio.h>
#include <string.h>

#include "meshctl.h"

/* Every subcommand, in the order `meshctl help` lists them. To add one
 * (install, check, identity, viz...): write cmd_<name>.c defining
 * meshctl_cmd_<name>, declare it in meshctl.h, list it here and in
 * meson.build. "help" is handled below, since it reads this table. */
static const meshctl_command *const commands[] = {
    &meshctl_cmd_validate,
    &meshctl_cmd_apply, &meshctl_cmd_delete,
    &meshctl_cmd_profile,
    &meshctl_cmd_get,
    &meshctl_cmd_authz,
    &meshctl_cmd_identity, &meshctl_cmd_diagnostics,
    &meshctl_cmd_check,
    &meshctl_cmd_viz,
    &meshctl_cmd_version,
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const meshctl_command *find(const char *name) {
  for (size_t i = 0; i < NCOMMANDS; i++)
    if (strcmp(commands[i]->name, name) == 0) return commands[i];
  return NULL;
}

static void usage(FILE *out) {
  fprintf(out, "meshctl manages the libmesh service mesh.\n\n"
               "Usage:\n  meshctl COMMAND [flags]\n\nCommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(out, "  %-12s %s\n", commands[i]->name, commands[i]->summary);
  fprintf(out, "  %-12s %s\n", "help", "show help for meshctl or for a command");
  fprintf(out, "\nRun 'meshctl help COMMAND' or 'meshctl COMMAND --help' for a command's flags.\n");
}

static int help(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "help") == 0) {
    usage(stdout);
    return MESHCTL_OK;
  }
  const meshctl_command *c = find(argv[1]);
  if (!c) {
    fprintf(stderr, "meshctl help: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return MESHCTL_USAGE;
  }
  c->usage(stdout);
  return MESHCTL_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return MESHCTL_USAGE;
  }
  const char *name = argv[1];
  if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h"))
    return help(argc - 1, argv + 1);
  if (!strcmp(name, "--version")) name = "version";
  const meshctl_command *c = find(name);
  if (!c) {
    fprintf(stderr, "meshctl: unknown command '%s'\n\n", name);
    usage(stderr);
    return MESHCTL_USAGE;
  }
  /* The command sees itself as argv[0], so getopt's messages name it. */
  char prog[64];
  snprintf(prog, sizeof prog, "meshctl %s", c->name);
  argv[1] = prog;
  return c->run(argc - 1, argv + 1);
}
