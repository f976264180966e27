/* libmesh names: the RFC 1123 rules that Kubernetes (and so the mesh) applies to names, in one place. */
#include <string.h>

#include <mesh/manifest.h>
#include "names_internal.h"

static int lower_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

int mesh__dns_label_ok(const char *s, size_t n) {
  if (n == 0 || n > 63 || !lower_alnum(s[0]) || !lower_alnum(s[n - 1])) return 0;
  for (size_t i = 0; i < n; i++)
    if (!lower_alnum(s[i]) && s[i] != '-') return 0;
  return 1;
}

int mesh__dns_name_ok(const char *s, size_t n) {
  if (n == 0 || n > 253) return 0;
  size_t start = 0;
  for (size_t i = 0; i <= n; i++) {
    if (i == n || s[i] == '.') {
      if (!mesh__dns_label_ok(s + start, i - start)) return 0;
      start = i + 1;
    }
  }
  return 1;
}

int mesh_dns_label_valid(const char *s) { return s && mesh__dns_label_ok(s, strlen(s)); }
int mesh_dns_name_valid(const char *s) { return s && mesh__dns_name_ok(s, strlen(s)); }
