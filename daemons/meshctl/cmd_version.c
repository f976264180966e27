/* meshctl version: the client's version (the server's comes with the control-plane client). */
#include <getopt.h>

#include "meshctl.h"

static void usage(FILE *out) {
  fprintf(out, "Print the meshctl version.\n\n"
               "Usage:\n  meshctl version [--short]\n\n"
               "Flags:\n"
               "      --short   print the version number only\n"
               "  -h, --help    show this help\n");
}

static int run(int argc, char **argv) {
  static const struct option opts[] = {
      {"short", no_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int short_form = 0, c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 's': short_form = 1; break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(argv[0]);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", argv[0], argv[optind]);
    return meshctl_usage_error(argv[0]);
  }
  if (short_form)
    printf("%s\n", mesh_version_string());
  else
    printf("Client version: %s\n", mesh_version_string());
  return MESHCTL_OK;
}

const meshctl_command meshctl_cmd_version = {
    .name = "version",
    .summary = "print the client version",
    .run = run,
    .usage = usage,
};
