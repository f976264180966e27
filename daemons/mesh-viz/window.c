/* mesh-viz's arithmetic: counter increases across resets, histogram quantiles as Prometheus', durations. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "viz.h"

void viz_counter_begin(viz_counter *c, double base) {
  c->last = base;
  c->sum = 0;
}

void viz_counter_step(viz_counter *c, double v) {
  if (isnan(v)) return; /* absent from this sample: the next present one carries on */
  if (isnan(c->last)) c->sum += v;      /* born inside the window: from 0 */
  else if (v >= c->last) c->sum += v - c->last;
  else c->sum += v;                     /* fell: a restart, counting again from 0 */
  c->last = v;
}

void viz_counter_restart(viz_counter *c) { c->last = NAN; }

double viz_increase(const double *vals, size_t n) {
  if (n == 0) return 0;
  viz_counter c;
  viz_counter_begin(&c, vals[0]);
  for (size_t i = 1; i < n; i++) viz_counter_step(&c, vals[i]);
  return c.sum;
}

double viz_histogram_quantile(double q, const double *les, const double *counts, size_t n) {
  if (isnan(q) || n < 2 || !isinf(les[n - 1])) return NAN;
  if (q < 0) return -INFINITY;
  if (q > 1) return INFINITY;
  /* Deltas of cumulative buckets taken across a reset can dip; Prometheus
   * makes them monotonic the same way before it looks. */
  double *c = malloc(n * sizeof *c);
  if (!c) return NAN;
  double hi = 0;
  for (size_t i = 0; i < n; i++) {
    hi = counts[i] > hi ? counts[i] : hi;
    c[i] = hi;
  }
  double total = c[n - 1], r = NAN;
  if (total <= 0) goto out;
  double rank = q * total;
  size_t b = 0;
  while (b < n - 1 && c[b] < rank) b++;
  if (b == n - 1) {
    r = les[n - 2];
    goto out;
  }
  if (b == 0 && les[0] <= 0) {
    r = les[0];
    goto out;
  }
  double start = 0, end = les[b], count = c[b];
  if (b > 0) {
    start = les[b - 1];
    count -= c[b - 1];
    rank -= c[b - 1];
  }
  r = count > 0 ? start + (end - start) * (rank / count) : start;
out:
  free(c);
  return r;
}

bool viz_parse_duration(const char *s, uint64_t max_ms, uint64_t *ret_ms) {
  uint64_t total = 0;
  if (!s || *s < '0' || *s > '9') return false; /* strtoull would take a sign or spaces */
  char *end;
  /* A bare number: seconds, as `linkerd viz stat -t 30` would read it. */
  unsigned long long bare = strtoull(s, &end, 10);
  if (*end == '\0' && end != s) {
    if (bare > max_ms / 1000) return false;
    *ret_ms = bare * 1000;
    return true;
  }
  while (*s) {
    if (*s < '0' || *s > '9') return false;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t unit;
    if (!strncmp(end, "ms", 2)) unit = 1, end += 2;
    else if (*end == 's') unit = 1000, end++;
    else if (*end == 'm') unit = 60000, end++;
    else if (*end == 'h') unit = 3600000, end++;
    else return false;
    if (v > max_ms / unit || total > max_ms - v * unit) return false;
    total += v * unit;
    s = end;
  }
  *ret_ms = total;
  return true;
}
