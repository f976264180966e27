/* mesh-viz internals: the Prometheus text parser (prom.c) and the rate and quantile math (window.c), apart so the unit tests can reach them. */
#ifndef MESH_VIZ_H
#define MESH_VIZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- prom.c: the Prometheus text format 0.0.4 ---------------------------- */

/* Bounds on one exposition, which comes from the network. */
#define VIZ_PROM_MAX_LINE 65536u  /* bytes of one sample line */
#define VIZ_PROM_MAX_NAME 256u    /* bytes of a metric or label name */
#define VIZ_PROM_MAX_VALUE 1024u  /* bytes of one label value, unescaped (meshd's bound) */
#define VIZ_PROM_MAX_LABELS 32u   /* labels of one sample (meshd's bound) */

typedef struct {
  const char *name, *value; /* NUL-terminated, valid during the callback only */
} viz_label;

/* Called for each sample line: the metric name, its labels in written order,
 * and the value. Returning false stops the parse (viz_prom_parse then
 * returns -1 with the reason the callback wrote into why). */
typedef bool (*viz_prom_fn)(void *ud, const char *name, const viz_label *labels, size_t nlabels,
                            double value, char *why, size_t size);

/* Parses len bytes of text: comment lines (# HELP, # TYPE, others) and
 * blank lines are skipped; each sample line is name{l="v",...} value
 * [timestamp]. Values may be NaN, +Inf, -Inf. 0, or -1 with
 * "line N: reason" in why (the first bad line stops it: an exposition
 * that is not well formed is not trusted in part). */
int viz_prom_parse(const char *text, size_t len, viz_prom_fn fn, void *ud, char *why, size_t size);

/* ---- window.c: counters over a window, histogram quantiles -------------- */

/* A counter's increase over successive samples, as Prometheus' increase()
 * without extrapolation: each step adds the difference, or, when the value
 * fell (the process restarted and its counters began again at 0), the new
 * value. A series first seen after the window's start counts from 0 (the
 * proxy creates it at its first increment). NaN marks a sample where the
 * series is absent: it is skipped. */
typedef struct {
  double last; /* NaN until the first value */
  double sum;
} viz_counter;

/* Start at the window's base sample (NaN: the series did not exist then). */
void viz_counter_begin(viz_counter *c, double base);
/* The next sample's value (NaN: absent from it). */
void viz_counter_step(viz_counter *c, double v);
/* The process restarted before the next sample (its start time changed):
 * that sample's value is counted from 0 even when it is above the last one,
 * which the fall alone cannot tell. */
void viz_counter_restart(viz_counter *c);
/* The increase over vals[0..n) (vals[0] the base). */
double viz_increase(const double *vals, size_t n);

/* histogram_quantile(q, ...) as Prometheus computes it over cumulative
 * buckets: les[] increasing upper bounds (the last may be +Inf), counts[]
 * the cumulative observations <= each. Linear interpolation inside the
 * bucket holding rank q * total; the first bucket starts at 0 (when its
 * bound is positive); a rank in the +Inf bucket gives the highest finite
 * bound. NaN when there are no observations, n is 0, q is NaN; -Inf / +Inf
 * for q < 0 / q > 1. */
double viz_histogram_quantile(double q, const double *les, const double *counts, size_t n);

/* "10s", "1m", "1h30m", "500ms" (a bare number is seconds) into milliseconds.
 * false for anything else, or above max_ms. */
bool viz_parse_duration(const char *s, uint64_t max_ms, uint64_t *ret_ms);

#endif
