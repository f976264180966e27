/* libmesh metrics: counters, gauges and histograms with labels, Prometheus text exposition. */
#ifndef MESH_METRICS_H
#define MESH_METRICS_H

#include <mesh/ctx.h>

MESH_BEGIN_DECLS

/* A registry holds metric families; a family holds series, one for each set
 * of label values. meshd, mesh-identity and the control plane each keep one
 * registry and serve mesh_metrics_render() on /metrics, with Linkerd's names
 * (request_total, response_total, response_latency_ms, route_*, tcp_*) so
 * that existing dashboards and alert rules work unchanged.
 *
 * Thread safety: every function here is thread-safe, except mesh_metrics_free
 * which must not run concurrently with any other call on the registry or its
 * families. Registration, series lookup, removal and rendering take the
 * registry's mutex; updates on a series handle (inc, dec, set, observe) take
 * no lock and never allocate: they are relaxed C11 atomics. */
typedef struct mesh_metrics mesh_metrics;
/* Borrowed from the registry: valid until mesh_metrics_free. */
typedef struct mesh_metric_family mesh_metric_family;
/* Reference-counted: see mesh_metrics_series. */
typedef struct mesh_metric_series mesh_metric_series;

enum {
  MESH_METRIC_COUNTER = 1,
  MESH_METRIC_GAUGE = 2,
  MESH_METRIC_HISTOGRAM = 3
};

/* Bounds. Label values often come from the network (an authority, a path),
 * so a family refuses new series past its limit rather than grow without end. */
#define MESH_METRICS_DEFAULT_MAX_SERIES 10000 /* per family; see _set_max_series */
#define MESH_METRICS_MAX_LABELS 32            /* label names per family */
#define MESH_METRICS_MAX_LABEL_VALUE 1024     /* bytes of one label value */
#define MESH_METRICS_MAX_NAME 256             /* bytes of a metric or label name */
#define MESH_METRICS_MAX_HELP 4096            /* bytes of a help text */
#define MESH_METRICS_MAX_BOUNDS 128           /* histogram buckets, +Inf not counted */

/* A new, empty registry. Returns MESH_ERR_INVALID or MESH_ERR_NOMEM (ret
 * untouched on failure). */
MESH_API int mesh_metrics_new(mesh_ctx *ctx, mesh_metrics **ret);

/* Frees the registry and its families; NULL is a no-op. Series references
 * still held stay valid (updates on them go nowhere); release them with
 * mesh_metrics_series_unref. The context must outlive them all. */
MESH_API void mesh_metrics_free(mesh_metrics *reg);

/* Register a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]*, each label
 * name [a-zA-Z_][a-zA-Z0-9_]* without a leading "__", all distinct (and not
 * "le" for a histogram). help (NULL: none) is UTF-8 and is escaped on output.
 * labels is an array of nlabels names (NULL when nlabels is 0).
 * Registering the same name again with the same type, help, labels and
 * bounds returns the family already there; any other reuse of a name, or a
 * name one of the family's samples would clash with (a histogram "x" owns
 * x_bucket, x_sum and x_count), is MESH_ERR_INVALID. *ret is borrowed from
 * the registry. Returns MESH_ERR_INVALID, MESH_ERR_LIMIT (too many labels,
 * names too long) or MESH_ERR_NOMEM. */
MESH_API int mesh_metrics_counter(mesh_metrics *reg, const char *name, const char *help,
                                  const char *const *labels, size_t nlabels,
                                  mesh_metric_family **ret);
MESH_API int mesh_metrics_gauge(mesh_metrics *reg, const char *name, const char *help,
                                const char *const *labels, size_t nlabels,
                                mesh_metric_family **ret);
/* A histogram with nbounds strictly increasing upper bounds (inclusive, as
 * Prometheus' le); +Inf is implied. nbounds 0 (bounds ignored) selects
 * Linkerd's latency buckets, mesh_metrics_latency_bounds(). */
MESH_API int mesh_metrics_histogram(mesh_metrics *reg, const char *name, const char *help,
                                    const char *const *labels, size_t nlabels,
                                    const uint64_t *bounds, size_t nbounds,
                                    mesh_metric_family **ret);

/* Linkerd's response_latency_ms buckets: 1, 2, 3, 4, 5, 10, 20, ..., 50000
 * (25 bounds, +Inf not included). Static; *count gets the number (may be NULL). */
MESH_API const uint64_t *mesh_metrics_latency_bounds(size_t *count);

/* Change a family's series limit (at least 1). Series already there stay,
 * even past a lowered limit; only new ones are refused. MESH_ERR_INVALID. */
MESH_API int mesh_metrics_family_set_max_series(mesh_metric_family *f, size_t max);
/* The number of series in the family now (removed ones not counted); 0 for NULL. */
MESH_API size_t mesh_metrics_family_series_count(mesh_metric_family *f);
/* MESH_METRIC_*, or 0 for NULL. */
MESH_API int mesh_metrics_family_type(const mesh_metric_family *f);
MESH_API const char *mesh_metrics_family_name(const mesh_metric_family *f); /* NULL for NULL */

/* The series of f for these label values (nvalues must equal the family's
 * label count; values NULL when it is 0), created the first time. Values are
 * UTF-8, at most MESH_METRICS_MAX_LABEL_VALUE bytes; empty is allowed.
 * *ret is a new reference: release it with mesh_metrics_series_unref. This
 * allocates and takes a lock: look series up when a route or endpoint is
 * configured and keep the handle for the hot path.
 * Returns MESH_ERR_INVALID (bad UTF-8, wrong count, NULL),
 * MESH_ERR_LIMIT (too long a value, or a new series past the family's
 * limit: count into an overflow series or skip) or MESH_ERR_NOMEM. */
MESH_API int mesh_metrics_series(mesh_metric_family *f, const char *const *values, size_t nvalues,
                                 mesh_metric_series **ret);
/* Another reference (returns s; NULL for NULL). */
MESH_API mesh_metric_series *mesh_metrics_series_ref(mesh_metric_series *s);
/* Release a reference; NULL is a no-op. */
MESH_API void mesh_metrics_series_unref(mesh_metric_series *s);
/* Take the series out of its family (when an endpoint goes away): it is no
 * longer rendered nor counted against the limit, and a later lookup of the
 * same values makes a fresh series from zero. Handles other threads hold
 * stay valid; updates on them go nowhere. Removing twice is harmless.
 * The caller's own reference is not released. MESH_ERR_INVALID for NULL. */
MESH_API int mesh_metrics_series_remove(mesh_metric_series *s);

/* Hot-path updates: lock-free, never allocate. Each returns 0, or
 * MESH_ERR_INVALID for NULL or a series of the wrong type (leaving it as it
 * was). Counters wrap modulo 2^64. */
MESH_API int mesh_metrics_inc(mesh_metric_series *s, uint64_t n); /* counter or gauge: += n */
MESH_API int mesh_metrics_dec(mesh_metric_series *s, uint64_t n); /* gauge: -= n */
/* Gauges hold a double: integers are exact up to 2^53. */
MESH_API int mesh_metrics_set(mesh_metric_series *s, int64_t v);  /* gauge */
MESH_API int mesh_metrics_set_double(mesh_metric_series *s, double v); /* gauge */
/* Histogram: v lands in the first bucket whose bound is >= v (or +Inf);
 * the sum (modulo 2^64) and count grow with it. */
MESH_API int mesh_metrics_observe(mesh_metric_series *s, uint64_t v);

/* Reading back (tests, bindings, in-process dashboards); 0 for NULL or the
 * wrong type. Counter: its value; histogram: the number of observations. */
MESH_API uint64_t mesh_metrics_count(const mesh_metric_series *s);
/* Gauge: its value; counter: its value as a double. */
MESH_API double mesh_metrics_value(const mesh_metric_series *s);
/* Histogram: the sum of observations. */
MESH_API uint64_t mesh_metrics_sum(const mesh_metric_series *s);
/* Histogram: observations <= the i-th bound (cumulative, as rendered);
 * i == the number of bounds gives the +Inf bucket, the count. */
MESH_API uint64_t mesh_metrics_bucket(const mesh_metric_series *s, size_t i);

/* Render every family in the Prometheus text format 0.0.4: # HELP and
 * # TYPE lines, then one sample a line; histograms as cumulative
 * name_bucket{...,le="..."} (with le="+Inf"), name_sum and name_count.
 * Families in registration order, series in creation order; families
 * without series are left out. Values are read atomically one by one while
 * updates go on (a histogram's _sum may lag its buckets by in-flight
 * observations; its _count always equals the +Inf bucket).
 * *text is NUL-terminated, allocated with the registry's context: free it
 * with mesh_free_string (mesh/ctx.h). len may be NULL. Returns
 * MESH_ERR_INVALID or MESH_ERR_NOMEM (text untouched). */
MESH_API int mesh_metrics_render(mesh_metrics *reg, char **text, size_t *len);

/* Add the process collector, rendered where it is registered:
 * process_cpu_seconds_total, process_resident_memory_bytes,
 * process_virtual_memory_bytes, process_open_fds, process_max_fds and
 * process_start_time_seconds, read from /proc/self at render time (a value
 * that cannot be read is left out). Calling it again is harmless.
 * MESH_ERR_INVALID when one of those names is taken; MESH_ERR_NOMEM. */
MESH_API int mesh_metrics_process(mesh_metrics *reg);

MESH_END_DECLS

#endif
