/* meshctl certificate helpers for `diagnostics certificates` and `check`: loading, judging dates. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "meshctl.h"

void meshctl_rfc3339(uint64_t t, char buf[32]) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, 32, "@%llu", (unsigned long long)t);
}

int meshctl_cert_dates(const char *kind, uint64_t not_before, uint64_t not_after, bool ca,
                       uint64_t now, char *msg, size_t size) {
  char when[32];
  if (now > not_after) {
    meshctl_rfc3339(not_after, when);
    snprintf(msg, size, "%s expired on %s", kind, when);
    return MESHCTL_ST_ERR;
  }
  if (now < not_before) {
    meshctl_rfc3339(not_before, when);
    snprintf(msg, size, "%s is not valid until %s", kind, when);
    return MESHCTL_ST_ERR;
  }
  if (ca && not_after - now < MESHCTL_WARN_WITHIN_S) {
    meshctl_rfc3339(not_after, when);
    snprintf(msg, size, "%s expires on %s, within 60 days: rotate it", kind, when);
    return MESHCTL_ST_WARN;
  }
  if (size) msg[0] = '\0';
  return MESHCTL_ST_OK;
}

bool meshctl_certs_load(mesh_ctx *ctx, const char *path, char **text, size_t *len,
                        mesh_certs **ret, char *why, size_t size) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(why, size, "%s: %s", path, strerror(errno));
    return false;
  }
  /* One byte past the limit, so that libmesh reports an oversized file as such. */
  size_t cap = MESH_CERTS_MAX_BYTES + 1;
  char *b = malloc(cap + 1);
  size_t n = b ? fread(b, 1, cap, f) : 0;
  int err = errno;
  bool failed = !b || ferror(f);
  fclose(f);
  if (failed) {
    snprintf(why, size, "%s: %s", path, b ? strerror(err) : "out of memory");
    free(b);
    return false;
  }
  b[n] = '\0';
  const char *reason = NULL;
  int rc = mesh_certs_parse(ctx, b, n, &reason, ret);
  if (rc < 0) {
    snprintf(why, size, "%s: not a PEM certificate file: %s", path,
             reason ? reason : mesh_strerror(rc));
    free(b);
    return false;
  }
  *text = b;
  *len = n;
  return true;
}
