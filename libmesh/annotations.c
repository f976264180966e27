/* libmesh annotations: Linkerd's retry.linkerd.io and timeout.linkerd.io Service annotations, one parser for the store and the proxy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/retry.h>

#include "annotations_internal.h"

#define DURATION_MAX_MS 86400000ull /* a day: longer is a mistake, not a timeout */

void mesh__ann_init(mesh__ann *a) {
  memset(a, 0, sizeof *a);
  a->limit = MESH_ANN_LIMIT_DEFAULT;
}

static const char *const keys[] = {MESH_ANN_RETRY_HTTP,      MESH_ANN_RETRY_GRPC,
                                   MESH_ANN_RETRY_LIMIT,     MESH_ANN_RETRY_TIMEOUT,
                                   MESH_ANN_TIMEOUT_REQUEST, MESH_ANN_TIMEOUT_RESPONSE,
                                   MESH_ANN_TIMEOUT_IDLE};

int mesh__ann_known(const char *key) {
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (!strcmp(key, keys[i])) return 1;
  return 0;
}

int mesh__ann_duration(const char *s, uint64_t *ms) {
  uint64_t total = 0;
  const char *p = s;
  if (!*p) return MESH_ERR_PARSE;
  while (*p) {
    size_t n = strspn(p, "0123456789");
    if (n == 0 || n > 9) return MESH_ERR_PARSE;
    uint64_t x = strtoull(p, NULL, 10);
    p += n;
    uint64_t unit;
    if (!strncmp(p, "ms", 2)) unit = 1, p += 2;
    else if (*p == 's') unit = 1000, p++;
    else if (*p == 'm') unit = 60000, p++;
    else if (*p == 'h') unit = 3600000, p++;
    else return MESH_ERR_PARSE; /* a unit is required, as Linkerd's parser wants */
    total += x * unit;
    if (total > DURATION_MAX_MS) return MESH_ERR_PARSE;
  }
  *ms = total;
  return 0;
}

static void set_range(uint64_t *bits, unsigned lo, unsigned hi) {
  for (unsigned s = lo; s <= hi; s++) bits[s / 64] |= 1ull << (s % 64);
}

/* One comma-separated item, trimmed, into buf; the rest after it in *next. */
static int item(const char **next, char *buf, size_t cap) {
  const char *p = *next;
  while (*p == ' ') p++;
  const char *end = strchr(p, ',');
  size_t n = end ? (size_t)(end - p) : strlen(p);
  while (n && p[n - 1] == ' ') n--;
  if (n == 0 || n >= cap) return -1;
  if (end && !end[strspn(end + 1, " ") + 1]) return -1; /* a trailing comma: an empty item */
  memcpy(buf, p, n);
  buf[n] = 0;
  *next = end ? end + 1 : p + strlen(p);
  return 0;
}

static int status_of(const char *s, unsigned *out) {
  if (strlen(s) != 3 || strspn(s, "0123456789") != 3) return -1;
  unsigned v = (unsigned)atoi(s);
  if (v < 100 || v > 599) return -1;
  *out = v;
  return 0;
}

static int parse_http(const char *v, uint64_t *bits, char *why, size_t cap) {
  char it[32];
  const char *p = v;
  if (!*v) goto bad;
  while (*p) {
    if (item(&p, it, sizeof it)) goto bad;
    unsigned lo, hi;
    char *dash = strchr(it, '-');
    if (!strcmp(it, "5xx")) {
      set_range(bits, 500, 599);
    } else if (!strcmp(it, "gateway-error")) {
      set_range(bits, 502, 504);
    } else if (dash) {
      *dash = 0;
      if (status_of(it, &lo) || status_of(dash + 1, &hi) || lo > hi) goto bad;
      set_range(bits, lo, hi);
    } else if (!status_of(it, &lo)) {
      set_range(bits, lo, lo);
    } else {
      goto bad;
    }
  }
  return 0;
bad:
  snprintf(why, cap,
           "%s is a comma-separated list of HTTP statuses: 'xxx', 'xxx-yyy', 'gateway-error' "
           "(502-504) or '5xx', found '%s'",
           MESH_ANN_RETRY_HTTP, v);
  return MESH_ERR_PARSE;
}

static int parse_grpc(const char *v, uint32_t *bits, char *why, size_t cap) {
  static const struct {
    const char *name;
    unsigned code;
  } codes[] = {{"cancelled", 1},
               {"deadline-exceeded", 4},
               {"resource-exhausted", 8},
               {"internal", 13},
               {"unavailable", 14}};
  char it[32];
  const char *p = v;
  if (!*v) goto bad;
  while (*p) {
    if (item(&p, it, sizeof it)) goto bad;
    size_t k = 0;
    while (k < sizeof codes / sizeof codes[0] && strcmp(it, codes[k].name)) k++;
    if (k == sizeof codes / sizeof codes[0]) goto bad;
    *bits |= 1u << codes[k].code;
  }
  return 0;
bad:
  snprintf(why, cap,
           "%s is a comma-separated list of cancelled, deadline-exceeded, internal, "
           "resource-exhausted, unavailable; found '%s'",
           MESH_ANN_RETRY_GRPC, v);
  return MESH_ERR_PARSE;
}

int mesh__ann_set(mesh__ann *a, const char *key, const char *value, char *why, size_t cap) {
  int retry_ns = !strncmp(key, "retry.linkerd.io/", 17);
  if (!retry_ns && strncmp(key, "timeout.linkerd.io/", 19)) return 1;
  mesh__ann n = *a;
  uint64_t *dur = NULL;
  if (!strcmp(key, MESH_ANN_RETRY_HTTP)) {
    if (parse_http(value, n.http, why, cap)) return MESH_ERR_PARSE;
  } else if (!strcmp(key, MESH_ANN_RETRY_GRPC)) {
    if (parse_grpc(value, &n.grpc, why, cap)) return MESH_ERR_PARSE;
  } else if (!strcmp(key, MESH_ANN_RETRY_LIMIT)) {
    size_t d = strspn(value, "0123456789");
    if (d == 0 || d > 3 || value[d] || strtoul(value, NULL, 10) > MESH_ANN_LIMIT_MAX) {
      snprintf(why, cap, "%s is a number of retries from 0 to %u, found '%s'",
               MESH_ANN_RETRY_LIMIT, MESH_ANN_LIMIT_MAX, value);
      return MESH_ERR_PARSE;
    }
    n.limit = (uint32_t)strtoul(value, NULL, 10);
  } else if (!strcmp(key, MESH_ANN_RETRY_TIMEOUT)) {
    dur = &n.retry_timeout_ms;
  } else if (!strcmp(key, MESH_ANN_TIMEOUT_REQUEST)) {
    dur = &n.request_ms;
  } else if (!strcmp(key, MESH_ANN_TIMEOUT_RESPONSE)) {
    dur = &n.response_ms;
  } else if (!strcmp(key, MESH_ANN_TIMEOUT_IDLE)) {
    dur = &n.idle_ms;
  } else {
    snprintf(why, cap, "'%s' is not a Linkerd annotation (retry.linkerd.io/: http, grpc, "
                       "limit, timeout; timeout.linkerd.io/: request, response, idle)",
             key);
    return MESH_ERR_PARSE;
  }
  if (dur && mesh__ann_duration(value, dur)) {
    snprintf(why, cap, "%s is a duration with a unit, such as 300ms, 5s or 1m (at most 24h), "
                       "found '%s'",
             key, value);
    return MESH_ERR_PARSE;
  }
  if (retry_ns) n.has_retry = 1;
  else n.has_timeout = 1;
  *a = n;
  return 0;
}

int mesh__ann_retryable(const mesh__ann *a, uint32_t status, int32_t grpc) {
  if (grpc >= 0 && grpc < 32 && (a->grpc >> grpc & 1u)) return 1;
  return status < 640 && (a->http[status / 64] >> (status % 64) & 1u);
}

uint64_t mesh__ann_backoff_ms(uint32_t n, uint32_t rnd) {
  return mesh_backoff_ms(MESH_BACKOFF_BASE_MS, MESH_BACKOFF_MAX_MS, n, rnd);
}
