/* mesh-viz's reader of the Prometheus text exposition format 0.0.4, bounded line by line. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "viz.h"

static bool name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
static bool name_char(char c) { return name_start(c) || (c >= '0' && c <= '9'); }

/* The value of a sample ("NaN", "+Inf", "-Inf" or a float); false if bad. */
static bool parse_value(const char *s, size_t n, double *ret) {
  char buf[64];
  if (n == 0 || n >= sizeof buf) return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  if (!strcasecmp(buf, "nan")) *ret = NAN;
  else if (!strcasecmp(buf, "+inf") || !strcasecmp(buf, "inf")) *ret = INFINITY;
  else if (!strcasecmp(buf, "-inf")) *ret = -INFINITY;
  else {
    char *end;
    errno = 0;
    *ret = strtod(buf, &end);
    /* strtod also takes "infinity", hex and "nan(...)": the format has none of them. */
    if (*end || errno == ERANGE || strpbrk(buf, "xXnN")) return false;
  }
  return true;
}

/* One sample line (not NUL-terminated: [p, e)). Storage for the unescaped
 * name and values is buf; false with why. */
static bool parse_line(const char *p, const char *e, char *buf, viz_label *labels, size_t *nl,
                       const char **name, double *value, char *why, size_t size) {
  size_t used = 0;
  const char *s = p;
  if (!name_start(*s)) {
    snprintf(why, size, "a metric name must start with a letter, '_' or ':'");
    return false;
  }
  while (s < e && name_char(*s)) s++;
  if ((size_t)(s - p) > VIZ_PROM_MAX_NAME) {
    snprintf(why, size, "a metric name longer than %u bytes", VIZ_PROM_MAX_NAME);
    return false;
  }
  memcpy(buf, p, (size_t)(s - p));
  buf[s - p] = '\0';
  *name = buf;
  used = (size_t)(s - p) + 1;
  *nl = 0;
  while (s < e && (*s == ' ' || *s == '\t')) s++;
  if (s < e && *s == '{') {
    s++;
    for (;;) {
      while (s < e && (*s == ' ' || *s == '\t')) s++;
      if (s < e && *s == '}') {
        s++;
        break;
      }
      if (*nl == VIZ_PROM_MAX_LABELS) {
        snprintf(why, size, "more than %u labels", VIZ_PROM_MAX_LABELS);
        return false;
      }
      const char *k = s;
      if (s >= e || !name_start(*s) || *s == ':') {
        snprintf(why, size, "expected a label name at column %zu", (size_t)(s - p) + 1);
        return false;
      }
      while (s < e && name_char(*s) && *s != ':') s++;
      size_t kl = (size_t)(s - k);
      if (kl > VIZ_PROM_MAX_NAME) {
        snprintf(why, size, "a label name longer than %u bytes", VIZ_PROM_MAX_NAME);
        return false;
      }
      while (s < e && (*s == ' ' || *s == '\t')) s++;
      bool eq = s < e && *s == '=';
      if (eq) s++;
      while (s < e && (*s == ' ' || *s == '\t')) s++;
      if (!eq || s >= e || *s != '"') {
        snprintf(why, size, "expected =\" after label %.*s", (int)kl, k);
        return false;
      }
      s++;
      char *kv = buf + used;
      memcpy(kv, k, kl);
      kv[kl] = '\0';
      used += kl + 1;
      char *v = buf + used;
      size_t vl = 0;
      for (;;) {
        if (s >= e) {
          snprintf(why, size, "label %s: unterminated value", kv);
          return false;
        }
        char c = *s++;
        if (c == '"') break;
        if (c == '\\') {
          if (s >= e) continue; /* reported as unterminated on the next turn */
          c = *s++;
          if (c == 'n') c = '\n';
          else if (c != '\\' && c != '"') {
            snprintf(why, size, "label %s: unknown escape \\%c", kv, c);
            return false;
          }
        }
        if (vl == VIZ_PROM_MAX_VALUE) {
          snprintf(why, size, "label %s: value longer than %u bytes", kv, VIZ_PROM_MAX_VALUE);
          return false;
        }
        v[vl++] = c;
      }
      v[vl] = '\0';
      used += vl + 1;
      labels[*nl].name = kv;
      labels[*nl].value = v;
      (*nl)++;
      while (s < e && (*s == ' ' || *s == '\t')) s++;
      if (s < e && *s == ',') s++;
      else if (!(s < e && *s == '}')) {
        snprintf(why, size, "expected ',' or '}' after label %s", kv);
        return false;
      }
    }
  }
  while (s < e && (*s == ' ' || *s == '\t')) s++;
  const char *vs = s;
  while (s < e && *s != ' ' && *s != '\t') s++;
  if (!parse_value(vs, (size_t)(s - vs), value)) {
    snprintf(why, size, "bad value '%.*s'", (int)((s - vs) > 40 ? 40 : (s - vs)), vs);
    return false;
  }
  /* An optional timestamp (milliseconds): the time of the scrape is used instead. */
  while (s < e && (*s == ' ' || *s == '\t')) s++;
  if (s < e) {
    const char *ts = s;
    if (*s == '-') s++;
    while (s < e && *s >= '0' && *s <= '9') s++;
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    if (s != e || ts == s) {
      snprintf(why, size, "unexpected text after the value");
      return false;
    }
  }
  return true;
}

int viz_prom_parse(const char *text, size_t len, viz_prom_fn fn, void *ud, char *why, size_t size) {
  /* Unescaped names and values never exceed the line they come from. */
  char *buf = malloc(VIZ_PROM_MAX_LINE + VIZ_PROM_MAX_LABELS * 2 + 2);
  viz_label labels[VIZ_PROM_MAX_LABELS];
  if (!buf) {
    snprintf(why, size, "out of memory");
    return -1;
  }
  const char *p = text, *end = text + len;
  size_t lineno = 0;
  int rc = 0;
  while (p < end) {
    lineno++;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *e = nl ? nl : end;
    const char *next = nl ? nl + 1 : end;
    if (e > p && e[-1] == '\r') e--;
    while (p < e && (*p == ' ' || *p == '\t')) p++;
    if (p == e || *p == '#') {
      p = next;
      continue;
    }
    char reason[200];
    size_t n = 0;
    const char *name;
    double value;
    if ((size_t)(e - p) > VIZ_PROM_MAX_LINE) {
      snprintf(why, size, "line %zu: longer than %u bytes", lineno, VIZ_PROM_MAX_LINE);
      rc = -1;
      break;
    }
    if (memchr(p, '\0', (size_t)(e - p))) {
      snprintf(why, size, "line %zu: a NUL byte", lineno);
      rc = -1;
      break;
    }
    if (!parse_line(p, e, buf, labels, &n, &name, &value, reason, sizeof reason)) {
      snprintf(why, size, "line %zu: %s", lineno, reason);
      rc = -1;
      break;
    }
    if (!fn(ud, name, labels, n, value, reason, sizeof reason)) {
      snprintf(why, size, "line %zu: %s", lineno, reason);
      rc = -1;
      break;
    }
    p = next;
  }
  free(buf);
  return rc;
}
