/* meshctl helpers shared by the commands: context, input, diagnostics, name checks. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "meshctl.h"

mesh_ctx *meshctl_ctx(const char *prog) {
  mesh_ctx *ctx = NULL;
  int rc = mesh_ctx_new(&ctx);
  if (rc < 0) {
    fprintf(stderr, "%s: %s\n", prog, mesh_strerror(rc));
    return NULL;
  }
  return ctx;
}

bool meshctl_read(const char *prog, const char *path, size_t limit, char **buf, size_t *len) {
  bool is_stdin = strcmp(path, "-") == 0;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
    return false;
  }
  size_t cap = 64 * 1024, n = 0;
  char *b = malloc(cap + 1);
  while (b) {
    if (n == cap) {
      if (cap > limit) break; /* one byte past the limit is enough to say it is too big */
      char *nb = realloc(b, cap * 2 + 1);
      if (!nb) {
        free(b);
        b = NULL;
        break;
      }
      b = nb;
      cap *= 2;
    }
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  bool failed = !b || ferror(f);
  int err = errno;
  if (!is_stdin) fclose(f);
  if (failed) {
    fprintf(stderr, "%s: %s: %s\n", prog, is_stdin ? "<stdin>" : path,
            b ? strerror(err) : "out of memory");
    free(b);
    return false;
  }
  b[n] = '\0';
  *buf = b;
  *len = n;
  return true;
}

void meshctl_print_diags(FILE *out, const mesh_diags *d) {
  for (size_t i = 0; i < mesh_diags_count(d); i++) fprintf(out, "%s\n", mesh_diags_text(d, i));
}


bool meshctl_parse_output(const char *prog, const char *arg, bool *json) {
  if (strcmp(arg, "json") == 0) *json = true;
  else if (strcmp(arg, "text") == 0) *json = false;
  else {
    fprintf(stderr, "%s: unknown output format '%s' (use text or json)\n", prog, arg);
    return false;
  }
  return true;
}

int meshctl_usage_error(const char *prog) {
  fprintf(stderr, "Run '%s --help' for usage.\n", prog);
  return MESHCTL_USAGE;
}
