/* The etcd JSON gateway's encodings and the key layout under the prefix, shared by mesh-destination and meshctl. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/manifest.h>

#include "daemon_etcd.h"

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *etcd_b64_encode(const char *p, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
  if (!out) return NULL;
  const unsigned char *s = (const unsigned char *)p;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
                 (i + 2 < n ? s[i + 2] : 0);
    *o++ = b64chars[v >> 18 & 63];
    *o++ = b64chars[v >> 12 & 63];
    *o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
    *o++ = i + 2 < n ? b64chars[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

char *etcd_b64_decode(const char *s, size_t *ret_len) {
  size_t n = strlen(s);
  while (n && s[n - 1] == '=') n--;
  char *out = malloc(n * 3 / 4 + 1);
  if (!out) return NULL;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    const char *c = strchr(b64chars, s[i]);
    if (!c) {
      free(out);
      return NULL;
    }
    acc = acc << 6 | (uint32_t)(c - b64chars);
    if ((bits += 6) >= 8) {
      bits -= 8;
      out[o++] = (char)(acc >> bits & 0xff);
    }
  }
  out[o] = '\0';
  *ret_len = o;
  return out;
}

long long etcd_i64(const json_t *j) {
  if (json_is_integer(j)) return json_integer_value(j);
  const char *s = json_string_value(j);
  if (!s || !*s) return -1;
  char *end;
  long long v = strtoll(s, &end, 10);
  return *end ? -1 : v;
}

char *etcd_range_end(const char *prefix) {
  char *end = strdup(prefix);
  size_t n = end ? strlen(end) : 0;
  if (n) end[n - 1] = (char)(end[n - 1] + 1);
  return end;
}

int etcd_key_kind(const char *prefix, const char *key, char *src, size_t cap) {
  size_t pl = strlen(prefix), rl = strlen(ETCD_REGISTRATIONS);
  if (strncmp(key, prefix, pl) || !key[pl]) return ETCD_KEY_OTHER;
  const char *rest = key + pl;
  if (!strncmp(rest, ETCD_REGISTRATIONS, rl)) {
    const char *ns = rest + rl, *slash = strchr(ns, '/');
    if (!slash || slash == ns || !slash[1] || strchr(slash + 1, '/')) return ETCD_KEY_OTHER;
    if (src) snprintf(src, cap, REGISTRATION_SOURCE "%s", ns);
    return ETCD_KEY_REGISTRATION;
  }
  const char *base = strrchr(rest, '/');
  base = base ? base + 1 : rest;
  return mesh_manifest_file_name(base) ? ETCD_KEY_MANIFEST : ETCD_KEY_OTHER;
}

char *etcd_registration_key(const char *prefix, const char *ns, const char *name) {
  size_t n = strlen(prefix) + strlen(ETCD_REGISTRATIONS) + strlen(ns) + strlen(name) + 2;
  char *k = malloc(n);
  if (k) snprintf(k, n, "%s" ETCD_REGISTRATIONS "%s/%s", prefix, ns, name);
  return k;
}
