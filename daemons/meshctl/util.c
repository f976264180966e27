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

static bool dns_name(const char *s, size_t max, bool dots) {
  size_t n = strlen(s);
  if (n == 0 || n > max) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) continue;
    bool edge = i == 0 || i == n - 1 || (dots && (s[i - 1] == '.' || s[i + 1] == '.'));
    if ((c == '-' || (dots && c == '.')) && !edge) continue;
    return false;
  }
  return true;
}

bool meshctl_dns_label(const char *s) { return dns_name(s, 63, false); }
bool meshctl_dns_subdomain(const char *s) { return dns_name(s, 253, true); }

int meshctl_usage_error(const char *prog) {
  fprintf(stderr, "Run '%s --help' for usage.\n", prog);
  return MESHCTL_USAGE;
}
