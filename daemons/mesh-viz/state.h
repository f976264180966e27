/* mesh-viz's state: the scrape targets (one a meshd), their series and rings of samples; shared by main.c (scraping, serving) and api.c (queries). */
#ifndef MESH_VIZ_STATE_H
#define MESH_VIZ_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "viz.h"

/* Bounds. */
#define VIZ_SCRAPE_MAX_BYTES (8u << 20) /* of one /metrics answer */
#define VIZ_MAX_SERIES 10000u           /* distinct kept series of one target over its life */
#define VIZ_MAX_TARGETS 2000u           /* Workloads and --proxy targets */
#define VIZ_MAX_SAMPLES 4096u           /* samples kept per target: retention / interval */
#define VIZ_MAX_QUERY 2048u             /* bytes of a request's URI */
#define VIZ_MAX_BUCKETS 64u             /* distinct histogram bounds merged in one row */

/* The families a query needs; everything else in an exposition is skipped. */
enum {
  VIZ_M_RESPONSE_TOTAL,
  VIZ_M_LATENCY_BUCKET,
  VIZ_M_RT_RESPONSE_TOTAL,
  VIZ_M_RT_LATENCY_BUCKET,
  VIZ_M_RT_ACTUAL_RESPONSE_TOTAL,
  VIZ_M_TCP_OPEN_CONNECTIONS, /* a gauge: read at the newest sample */
  VIZ_M_TCP_OPEN_TOTAL,
  VIZ_M_COUNT
};

/* The labels kept; the others (authority, status_code, grpc_status, error,
 * errno) are summed away when a scrape is read, which keeps a target's
 * series few (meshd makes one series per status code and authority). */
enum {
  VIZ_L_DIRECTION,
  VIZ_L_TARGET_ADDR,
  VIZ_L_TLS,
  VIZ_L_CLIENT_ID,
  VIZ_L_SERVER_ID,
  VIZ_L_CLASSIFICATION,
  VIZ_L_PEER,
  VIZ_L_DST,
  VIZ_L_RT_ROUTE,
  VIZ_L_DST_SERVICE,
  VIZ_L_COUNT
};

typedef struct {
  int metric;                /* VIZ_M_* */
  char *l[VIZ_L_COUNT];      /* "" when absent */
  double le;                 /* histogram buckets: the bound */
  char *key;                 /* the interning key */
} viz_series;

typedef struct {
  uint64_t t_ms; /* monotonic */
  size_t n;      /* series known at the scrape: values of later ones are absent */
  double *v;     /* NaN: absent from that scrape */
  double start_s; /* the proxy's process_start_time_seconds (NaN: not said): a change is a restart */
} viz_sample;

typedef struct viz_target viz_target;
struct viz_target {
  /* Who: a Workload's identity, as Prometheus' target labels would say it. */
  char *ns, *name, *deploy, *sa;
  char **ips; /* the Workload's addresses, to map target_addr back to it */
  size_t nips;
  json_t *labels; /* metadata.labels (an object; never NULL) */
  char admin[300]; /* "host:port" of /metrics; "" when not scraped */
  bool from_store;

  /* Scraping. */
  void *conn; /* struct evhttp_connection */
  void *pending; /* the request in flight's context, freed with the target */
  bool inflight;
  int state; /* 0: not yet scraped, 1: the last scrape worked, -1: it failed */
  char error[256];
  int pending_error; /* from libevent's error callback, -1: none */
  uint64_t last_scrape_ms, scrapes_ok, scrapes_failed;

  /* Series, interned by key, and the ring of samples. */
  viz_series *series;
  size_t nseries, cap_series;
  uint32_t *index; /* open addressing: series number + 1, 0 empty */
  size_t cap_index;
  viz_sample *ring;
  size_t ring_cap, ring_start, ring_len;

  viz_target *next;
};

/* A TrafficSplit, a ServiceProfile's routes and a Service's selector, as the store has them. */
typedef struct {
  char *ns, *name, *apex;
  size_t nleaves;
  char **leaves, **weights;
} viz_split;

typedef struct {
  char *ns, *name; /* metadata.name: an FQDN or the Service's name */
  size_t nroutes;
  char **routes;
} viz_profile;

typedef struct {
  char *ns, *name;
  json_t *selector; /* an object; NULL: selects nothing */
} viz_service;

typedef struct {
  viz_target *targets;
  size_t ntargets;
  viz_split *splits;
  size_t nsplits;
  viz_profile *profiles;
  size_t nprofiles;
  viz_service *services;
  size_t nservices;
  uint64_t interval_ms, retention_ms;
} viz_state;

/* api.c: answers GET path?query with a JSON document (status 200) or an
 * error (400 with {"error": why}). now_ms: the monotonic clock. */
json_t *viz_api(const viz_state *st, const char *path, const char *query, uint64_t now_ms,
                int *status);

/* The workload (target) one of whose addresses is the host of addr
 * ("10.0.0.1:4143", "[fd00::1]:4143"); NULL when none. */
const viz_target *viz_target_by_addr(const viz_state *st, const char *addr);

#endif
