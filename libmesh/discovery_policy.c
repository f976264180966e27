/* libmesh discovery policy: the proxy's InboundServerPolicies.WatchWorkload stream to mesh-destination, kept open for the proxy's life, with its metrics. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include <mesh/error.h>
#include <mesh/rpc.h>

#include "ctx_internal.h"
#include "discovery_internal.h"

#define POLICY_PATH "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchWorkload"
#define WORKLOAD_MAX 512u /* doc/protocol.md: the request's workload */

struct disc_policy {
  mesh_discovery *d;
  mesh_ctx *ctx;
  char *workload; /* "namespace:name", for log lines */
  char *body;     /* the request, the same on every reconnect */
  disc_policy_fn fn;
  void *ud;
  mesh_rpc_stream *st;
  struct event *timer; /* reconnect, after backoff */
  uint32_t backoff_ms;
  uint64_t opened_ns;
  int applied; /* a message was applied once: there is a policy to keep */
  mesh_metric_series *streams, *updates, *rejects, *reconnects;
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void backoff(disc_policy *w) {
  uint32_t ms = mesh__discovery_backoff(w->d, &w->backoff_ms);
  struct timeval tv = {(time_t)(ms / 1000u), (suseconds_t)(ms % 1000u) * 1000};
  event_add(w->timer, &tv);
}

/* Each message is the whole policy: the callback compiles it and swaps it
 * in, or says why not (the policy in force stays). */
static void on_message(void *ud, const char *line, size_t len) {
  disc_policy *w = ud;
  char why[512] = "";
  int rc = w->fn(w->ud, line, len, why, sizeof why);
  if (!rc) {
    w->applied = 1;
    mesh_metrics_inc(w->updates, 1);
    return;
  }
  if (rc == MESH_ERR_NOT_FOUND) {
    mesh__log(w->ctx, MESH_LOG_WARN, "policy %s: the Workload left the store; keeping %s",
              w->workload, w->applied ? "the last policy" : "no policy (not ready)");
    return;
  }
  mesh_metrics_inc(w->rejects, 1);
  mesh__log(w->ctx, MESH_LOG_WARN, "policy %s: update ignored, keeping %s (%s: %s)", w->workload,
            w->applied ? "the last good policy" : "no policy (not ready)", mesh_strerror(rc), why);
}

static void on_end(void *ud, int status, const char *error) {
  disc_policy *w = ud;
  w->st = NULL;
  mesh_metrics_dec(w->streams, 1);
  /* As the Get streams: the backoff starts over after a stream that lived. */
  if (now_ns() - w->opened_ns > (uint64_t)DISC_BACKOFF_MAX_MS * 1000000u) w->backoff_ms = 0;
  mesh__log(w->ctx, w->applied ? MESH_LOG_INFO : MESH_LOG_WARN,
            "policy %s: stream ended (%s: %s); keeping %s, reconnecting", w->workload,
            status < 0 ? mesh_strerror(status) : "answered",
            error ? error : status < 0 ? "" : "end of stream",
            w->applied ? "the last policy" : "no policy (not ready)");
  backoff(w);
}

static void open_stream(disc_policy *w) {
  int rc = mesh__discovery_stream(w->d, POLICY_PATH, w->body, on_message, on_end, w, &w->st);
  if (rc) {
    /* Credentials for mTLS not there yet, most often: the next try may have them. */
    mesh__log(w->ctx, MESH_LOG_DEBUG, "policy %s: cannot watch (%s); retrying", w->workload,
              mesh_strerror(rc));
    backoff(w);
    return;
  }
  w->opened_ns = now_ns();
  mesh_metrics_inc(w->streams, 1);
}

static void on_retry(evutil_socket_t fd, short what, void *arg) {
  disc_policy *w = arg;
  (void)fd;
  (void)what;
  mesh_metrics_inc(w->reconnects, 1);
  open_stream(w);
}

int mesh__discovery_policy_new(mesh_discovery *d, struct event_base *base, const char *workload,
                               mesh_metrics *reg, disc_policy_fn fn, void *ud, disc_policy **ret) {
  if (strlen(workload) > WORKLOAD_MAX) return MESH_ERR_LIMIT;
  mesh_ctx *ctx = mesh__discovery_ctx(d);
  disc_policy *w = mesh__calloc(ctx, 1, sizeof *w);
  if (!w) return MESH_ERR_NOMEM;
  w->d = d;
  w->ctx = ctx;
  w->fn = fn;
  w->ud = ud;
  json_t *req = json_pack("{s:s}", "workload", workload);
  char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
  json_decref(req);
  w->body = body ? mesh__strdup(ctx, body) : NULL;
  free(body);
  w->workload = mesh__strdup(ctx, workload);
  w->timer = evtimer_new(base, on_retry, w);
  int rc = MESH_ERR_NOMEM;
  if (!w->body || !w->workload || !w->timer) goto fail;
  if (reg &&
      ((rc = mesh__disc_metric(reg, 1, "destination_policy_streams",
                    "Open WatchWorkload (inbound policy) streams to mesh-destination", &w->streams)) ||
       (rc = mesh__disc_metric(reg, 0, "destination_policy_updates_total",
                    "WatchWorkload messages applied (an inbound policy swapped in)", &w->updates)) ||
       (rc = mesh__disc_metric(reg, 0, "destination_policy_rejects_total",
                    "WatchWorkload messages ignored as invalid (the last good policy kept)",
                    &w->rejects)) ||
       (rc = mesh__disc_metric(reg, 0, "destination_policy_reconnects_total",
                    "WatchWorkload streams opened again after a failure", &w->reconnects))))
    goto fail;
  open_stream(w);
  *ret = w;
  return 0;
fail:
  mesh__discovery_policy_free(w);
  return rc;
}

void mesh__discovery_policy_free(disc_policy *w) {
  if (!w) return;
  if (w->st) {
    mesh_rpc_stream_cancel(w->st);
    mesh_metrics_dec(w->streams, 1);
  }
  if (w->timer) event_free(w->timer);
  mesh_metrics_series_unref(w->streams);
  mesh_metrics_series_unref(w->updates);
  mesh_metrics_series_unref(w->rejects);
  mesh_metrics_series_unref(w->reconnects);
  mesh__free(w->ctx, w->workload);
  mesh__free(w->ctx, w->body);
  mesh__free(w->ctx, w);
}
