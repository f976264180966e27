/* libmesh typed field readers over the document tree, with path-naming diagnostics. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/error.h>
#include <mesh/manifest.h>
#include "ctx_internal.h"
#include "diag_internal.h"
#include "node_internal.h"

static void report(mesh__reader *r, int sev, const mesh__node *at, const char *fmt, va_list ap) {
  char path[256], msg[768];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (at) mesh__node_path(at, path, sizeof path);
  int rc = at ? mesh__diag_add(r->diags, sev, r->file, at->line, at->col, "%s: %s", path, msg)
              : mesh__diag_add(r->diags, sev, r->file, 0, 0, "%s", msg);
  if (rc < 0) r->nomem = 1;
}

void mesh__error(mesh__reader *r, const mesh__node *at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report(r, MESH_DIAG_ERROR, at, fmt, ap);
  va_end(ap);
  r->errors++;
}

void mesh__warn(mesh__reader *r, const mesh__node *at, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report(r, MESH_DIAG_WARNING, at, fmt, ap);
  va_end(ap);
}

/* Optimal string alignment distance, bounded: enough to catch typos. */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 40 || lb > 40) return 99;
  size_t d[41][41];
  for (size_t i = 0; i <= la; i++) d[i][0] = i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      size_t v = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < v) v = d[i][j - 1] + 1;
      if (d[i - 1][j - 1] + cost < v) v = d[i - 1][j - 1] + cost;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
        v = d[i - 2][j - 2] + 1;
      d[i][j] = v;
    }
  return d[la][lb];
}

void mesh__check_keys(mesh__reader *r, const mesh__node *map, const char *const *allowed) {
  if (!map || map->type != MESH_NODE_MAP) return;
  for (size_t i = 0; i < map->n; i++) {
    const mesh__node *k = map->kids[2 * i];
    const char *best = NULL;
    size_t bestd = 3;
    bool known = false;
    for (const char *const *a = allowed; *a; a++) {
      if (strcmp(*a, k->str) == 0) {
        known = true;
        break;
      }
      size_t dist = edit_distance(*a, k->str);
      if (dist < bestd) {
        bestd = dist;
        best = *a;
      }
    }
    if (known) continue;
    if (best)
      mesh__warn(r, map->kids[2 * i + 1], "unknown field '%s' is ignored (did you mean '%s'?)",
                 k->str, best);
    else
      mesh__warn(r, map->kids[2 * i + 1], "unknown field '%s' is ignored", k->str);
  }
}

static bool want(mesh__reader *r, const mesh__node *n, int type, const char *what) {
  if (n && n->type == type) return true;
  mesh__error(r, n, "expected %s, found %s", what, mesh__node_type_name(n));
  return false;
}

bool mesh__want_map(mesh__reader *r, const mesh__node *n) { return want(r, n, MESH_NODE_MAP, "a map"); }
bool mesh__want_seq(mesh__reader *r, const mesh__node *n) { return want(r, n, MESH_NODE_SEQ, "a list"); }
bool mesh__want_scalar(mesh__reader *r, const mesh__node *n) {
  return want(r, n, MESH_NODE_SCALAR, "a value");
}

/* Finds key in map; reports a missing required field at the map itself. */
static const mesh__node *field(mesh__reader *r, const mesh__node *map, const char *key,
                               bool required, bool *ok) {
  const mesh__node *v = mesh__node_get(map, key);
  *ok = true;
  if (!v && required) {
    mesh__error(r, map, "missing required field '%s'", key);
    *ok = false;
  }
  return v;
}

bool mesh__read_string(mesh__reader *r, const mesh__node *map, const char *key, bool required,
                       const char **out) {
  bool ok;
  const mesh__node *v = field(r, map, key, required, &ok);
  if (!v) return ok;
  if (v->type != MESH_NODE_SCALAR) {
    mesh__error(r, v, "expected text, found %s", mesh__node_type_name(v));
    return false;
  }
  if (required && v->len == 0) {
    mesh__error(r, v, "'%s' must not be empty", key);
    return false;
  }
  *out = v->str;
  return true;
}

bool mesh__read_bool(mesh__reader *r, const mesh__node *map, const char *key, bool *out) {
  bool ok;
  const mesh__node *v = field(r, map, key, false, &ok);
  if (!v) return ok;
  if (v->type == MESH_NODE_SCALAR && !v->quoted) {
    if (!strcmp(v->str, "true") || !strcmp(v->str, "True") || !strcmp(v->str, "TRUE")) {
      *out = true;
      return true;
    }
    if (!strcmp(v->str, "false") || !strcmp(v->str, "False") || !strcmp(v->str, "FALSE")) {
      *out = false;
      return true;
    }
  }
  mesh__error(r, v, "expected true or false, found %s%s%s%s", mesh__node_type_name(v),
              v->type == MESH_NODE_SCALAR ? " '" : "", v->type == MESH_NODE_SCALAR ? v->str : "",
              v->type == MESH_NODE_SCALAR ? "'" : "");
  return false;
}

static bool plain_number(mesh__reader *r, const mesh__node *v, const char *what) {
  if (v->type == MESH_NODE_SCALAR && !v->quoted && v->len > 0) return true;
  mesh__error(r, v, "expected %s, found %s%s%s%s", what, mesh__node_type_name(v),
              v->type == MESH_NODE_SCALAR ? " '" : "", v->type == MESH_NODE_SCALAR ? v->str : "",
              v->type == MESH_NODE_SCALAR ? "'" : "");
  return false;
}

bool mesh__read_int(mesh__reader *r, const mesh__node *map, const char *key, int64_t min,
                    int64_t max, int64_t *out) {
  bool ok;
  const mesh__node *v = field(r, map, key, false, &ok);
  if (!v) return ok;
  if (!plain_number(r, v, "a whole number")) return false;
  char *end;
  errno = 0;
  long long x = strtoll(v->str, &end, 10);
  if (*end != '\0' || end == v->str) {
    mesh__error(r, v, "expected a whole number, found '%s'", v->str);
    return false;
  }
  if (errno == ERANGE || x < min || x > max) {
    mesh__error(r, v, "%s must be between %lld and %lld, found %s", key, (long long)min,
                (long long)max, v->str);
    return false;
  }
  *out = x;
  return true;
}

bool mesh__read_double(mesh__reader *r, const mesh__node *map, const char *key, double min,
                       double max, double *out) {
  bool ok;
  const mesh__node *v = field(r, map, key, false, &ok);
  if (!v) return ok;
  if (!plain_number(r, v, "a number")) return false;
  char *end;
  errno = 0;
  double x = strtod(v->str, &end);
  if (*end != '\0' || end == v->str || !isfinite(x) || strpbrk(v->str, "xXnN")) {
    mesh__error(r, v, "expected a number, found '%s'", v->str);
    return false;
  }
  if (errno == ERANGE || x < min || x > max) {
    mesh__error(r, v, "%s must be between %g and %g, found %s", key, min, max, v->str);
    return false;
  }
  *out = x;
  return true;
}

bool mesh__read_duration_ms(mesh__reader *r, const mesh__node *map, const char *key,
                            uint64_t *out) {
  bool ok;
  const mesh__node *v = field(r, map, key, false, &ok);
  if (!v) return ok;
  if (v->type != MESH_NODE_SCALAR) {
    mesh__error(r, v, "expected a duration such as 5s or 300ms, found %s", mesh__node_type_name(v));
    return false;
  }
  uint64_t ns;
  const char *why;
  if (mesh__parse_duration_ns(v->str, v->len, &ns, &why) < 0) {
    mesh__error(r, v, "invalid duration '%s': %s", v->str, why);
    return false;
  }
  *out = ns / 1000000 + (ns % 1000000 ? 1 : 0);
  return true;
}

bool mesh__read_quantity_milli(mesh__reader *r, const mesh__node *map, const char *key,
                               int64_t *out) {
  bool ok;
  const mesh__node *v = field(r, map, key, false, &ok);
  if (!v) return ok;
  if (v->type != MESH_NODE_SCALAR) {
    mesh__error(r, v, "expected a quantity such as 1, 900m or 0.5, found %s",
                mesh__node_type_name(v));
    return false;
  }
  const char *why;
  if (mesh__parse_quantity_milli(v->str, v->len, out, &why) < 0) {
    mesh__error(r, v, "invalid quantity '%s': %s", v->str, why);
    return false;
  }
  return true;
}

/* Go's time.ParseDuration grammar, without negative values:
 * ([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+ or a bare "0". */
int mesh__parse_duration_ns(const char *s, size_t len, uint64_t *out, const char **why) {
  static const struct {
    const char *name;
    uint64_t ns;
  } units[] = {{"ns", 1ULL},           {"us", 1000ULL},          {"\xc2\xb5s", 1000ULL},
               {"\xce\xbcs", 1000ULL}, {"ms", 1000000ULL},       {"s", 1000000000ULL},
               {"m", 60000000000ULL},  {"h", 3600000000000ULL}};
  size_t i = 0;
  uint64_t total = 0;
  if (len == 0) return *why = "empty duration", MESH_ERR_PARSE;
  if (s[0] == '-') return *why = "durations must not be negative", MESH_ERR_RANGE;
  if (s[0] == '+') i++;
  if (len - i == 1 && s[i] == '0') return *out = 0, 0;
  if (i == len) return *why = "expected a number", MESH_ERR_PARSE;
  while (i < len) {
    uint64_t whole = 0, frac = 0, scale = 1;
    size_t digits = 0;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
      if (__builtin_mul_overflow(whole, 10, &whole) ||
          __builtin_add_overflow(whole, (uint64_t)(s[i] - '0'), &whole))
        return *why = "duration is too large", MESH_ERR_RANGE;
      i++, digits++;
    }
    if (i < len && s[i] == '.') {
      i++;
      while (i < len && s[i] >= '0' && s[i] <= '9') {
        if (scale < 1000000000000000000ULL) { /* beyond 18 digits, precision is moot */
          frac = frac * 10 + (uint64_t)(s[i] - '0');
          scale *= 10;
        }
        i++, digits++;
      }
    }
    if (digits == 0) return *why = "expected a number before the unit", MESH_ERR_PARSE;
    size_t u = 0, ulen = 0;
    for (; u < sizeof units / sizeof units[0]; u++) {
      ulen = strlen(units[u].name);
      /* "ms" must win over "m": longer names come first where they share a prefix */
      if (len - i >= ulen && memcmp(s + i, units[u].name, ulen) == 0 &&
          !(ulen == 1 && units[u].name[0] == 'm' && i + 1 < len && s[i + 1] == 's'))
        break;
    }
    if (u == sizeof units / sizeof units[0])
      return *why = i < len ? "unknown unit (use ns, us, ms, s, m or h)"
                            : "missing unit (use ns, us, ms, s, m or h)",
             MESH_ERR_PARSE;
    i += ulen;
    uint64_t part;
    if (__builtin_mul_overflow(whole, units[u].ns, &part) ||
        __builtin_add_overflow(part, (uint64_t)((double)frac * (double)units[u].ns / (double)scale),
                               &part) ||
        __builtin_add_overflow(total, part, &total))
      return *why = "duration is too large", MESH_ERR_RANGE;
  }
  *out = total;
  return 0;
}

int mesh_duration_parse_s(const char *s, uint64_t *ret_s, const char **why) {
  const char *unused;
  if (!why) why = &unused;
  if (!s || !ret_s) return *why = "no duration", MESH_ERR_INVALID;
  uint64_t ns;
  int rc = mesh__parse_duration_ns(s, strlen(s), &ns, why);
  if (rc < 0) return rc;
  if (ns % 1000000000u) return *why = "not a whole number of seconds", MESH_ERR_RANGE;
  *ret_s = ns / 1000000000u;
  return 0;
}

static int pow10_u64(unsigned e, uint64_t *out) {
  uint64_t v = 1;
  while (e--)
    if (__builtin_mul_overflow(v, 10, &v)) return -1;
  *out = v;
  return 0;
}

/* Kubernetes resource.Quantity: <sign><digits>[.<digits>]<suffix>, suffix one of
 * the binary (Ki..Ei), decimal (m, k, M..E) or exponent (e3, E-2) forms.
 * Values are returned in thousandths, rounded up as Quantity.MilliValue does. */
int mesh__parse_quantity_milli(const char *s, size_t len, int64_t *out, const char **why) {
  size_t i = 0;
  bool neg = false;
  if (len == 0) return *why = "empty quantity", MESH_ERR_PARSE;
  if (s[0] == '-' || s[0] == '+') neg = s[i++] == '-';
  uint64_t mant = 0;
  int frac_digits = 0;
  size_t digits = 0;
  bool overflow = false, dropped = false; /* dropped: nonzero fraction digits not kept */
  for (; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++)
    if (__builtin_mul_overflow(mant, 10, &mant) ||
        __builtin_add_overflow(mant, (uint64_t)(s[i] - '0'), &mant))
      overflow = true;
  if (i < len && s[i] == '.') {
    for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++, digits++) {
      /* Digits past what mant can hold only decide rounding up: a long
       * fraction ("99.999999999999999999") is not an overflow. */
      uint64_t next;
      if (frac_digits >= 18 || __builtin_mul_overflow(mant, 10, &next) ||
          __builtin_add_overflow(next, (uint64_t)(s[i] - '0'), &next)) {
        dropped = dropped || s[i] != '0';
        continue;
      }
      mant = next;
      frac_digits++;
    }
  }
  if (digits == 0) return *why = "expected a number", MESH_ERR_PARSE;
  int exp10 = 3 - frac_digits; /* to thousandths */
  unsigned bin = 0;            /* power of 1024 */
  const char *suf = s + i;
  size_t slen = len - i;
  if (slen == 0) {
  } else if (slen == 1 && *suf == 'm') exp10 -= 3;
  else if (slen == 1 && *suf == 'k') exp10 += 3;
  else if (slen == 1 && *suf == 'M') exp10 += 6;
  else if (slen == 1 && *suf == 'G') exp10 += 9;
  else if (slen == 1 && *suf == 'T') exp10 += 12;
  else if (slen == 1 && *suf == 'P') exp10 += 15;
  else if (slen == 1 && *suf == 'E') exp10 += 18;
  else if (slen == 2 && suf[1] == 'i' && strchr("KMGTPE", suf[0]) && suf[0])
    bin = (unsigned)(strchr("KMGTPE", suf[0]) - "KMGTPE") + 1;
  else if (slen >= 2 && (*suf == 'e' || *suf == 'E')) {
    /* Read by hand rather than with strtol, which would take leading
     * spaces ("1e 3") and read past len when s is not NUL-terminated there. */
    size_t d = suf[1] == '+' || suf[1] == '-' ? 2 : 1;
    int e = 0;
    if (d == slen) return *why = "bad exponent", MESH_ERR_PARSE;
    for (; d < slen; d++) {
      if (suf[d] < '0' || suf[d] > '9' || e > 30) return *why = "bad exponent", MESH_ERR_PARSE;
      e = e * 10 + (suf[d] - '0');
    }
    if (e > 30) return *why = "bad exponent", MESH_ERR_PARSE;
    exp10 += suf[1] == '-' ? -e : e;
  } else
    return *why = "unknown suffix (use m, k, M, G, Ki, Mi, Gi or an exponent)", MESH_ERR_PARSE;
  if (overflow) return *why = "quantity is too large", MESH_ERR_RANGE;
  while (bin--)
    if (__builtin_mul_overflow(mant, 1024, &mant)) return *why = "quantity is too large", MESH_ERR_RANGE;
  uint64_t v;
  if (exp10 >= 0) {
    uint64_t p;
    if (pow10_u64((unsigned)exp10, &p) < 0 || __builtin_mul_overflow(mant, p, &v))
      return *why = "quantity is too large", MESH_ERR_RANGE;
  } else {
    uint64_t p;
    if (pow10_u64((unsigned)-exp10, &p) < 0) v = mant || dropped ? 1 : 0;
    else v = mant / p + (mant % p || dropped ? 1 : 0);
  }
  if (v > (uint64_t)INT64_MAX) return *why = "quantity is too large", MESH_ERR_RANGE;
  *out = neg ? -(int64_t)v : (int64_t)v;
  return 0;
}
