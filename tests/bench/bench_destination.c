/* Benchmark driver: many Destination.Get watch streams on mesh-destination; the fan-out latency of store changes.
 * A change is a file written into the store directory or, with --etcd, a key put into etcd. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <mesh/mesh.h>

#include "daemon_etcd.h"

#define GET_PATH "/io.linkerd.proxy.destination.Destination/Get"
#define PER_CONNECTION 100 /* streams a proxy might watch on its one connection */
#define ROUND_TIMEOUT_MS 5000

typedef struct bench bench;

typedef struct {
  bench *b;
  size_t i;
  uint64_t last_ms; /* arrival of the last message */
  unsigned messages;
} stream;

struct bench {
  struct event_base *base;
  const char *change; /* the file written, or with etcd the key put */
  struct evhttp_connection *etcd; /* the puts; NULL: the store is a directory */
  struct evhttp_connection *etcd_watch; /* a watch of the key, as mesh-destination's */
  char etcd_host[64];                   /* the Host header etcd's gateway requires */
  char *key_b64;
  struct evbuffer *watch_msg; /* the watch message being received */
  uint64_t t_put;
  double *watch_ms; /* each round's put until its watch event arrived: etcd's part of the fan-out */
  size_t nwatch;
  size_t nstreams, nservices, rounds, round;
  stream *streams;
  size_t first_pending, round_pending;
  uint64_t t0;
  double *lat; /* this round's latencies, ms */
  size_t nlat;
  double *all;
  size_t nall;
  struct event *timer;
  uint64_t t_open;
  int failed, closing;
};

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
  if (!n) return 0;
  size_t k = (size_t)(p * (double)(n - 1) + 0.5);
  return v[k];
}

/* Every watched service gets one more workload (round r): the text of the change. malloc'd. */
static char *round_manifest(const bench *b, size_t *len) {
  char *text = NULL;
  FILE *f = open_memstream(&text, len);
  if (!f) return NULL;
  size_t n = b->nstreams < b->nservices ? b->nstreams : b->nservices;
  for (size_t i = 0; i < n; i++)
    fprintf(f,
            "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\n"
            "metadata: {name: bench-%zu-%zu, namespace: ns%zu, labels: {app: s%zu}}\n"
            "spec: {address: 10.%zu.%zu.%zu}\n---\n",
            b->round, i, i % 10, i, 100 + b->round % 100, i / 256, i % 256);
  if (fclose(f) != 0) {
    free(text);
    return NULL;
  }
  return text;
}

/* Written whole: a temporary file renamed into the directory. */
static int write_file(const bench *b, const char *text, size_t len) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", b->change);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  size_t wrote = fwrite(text, 1, len, f);
  if (fclose(f) != 0 || wrote != len) return -1;
  return rename(tmp, b->change);
}

static void on_put(struct evhttp_request *req, void *ud) {
  bench *b = ud;
  int code = req ? evhttp_request_get_response_code(req) : 0;
  if (code == 200) return;
  fprintf(stderr, "bench_destination: etcd put %s: %s %d\n", b->change,
          code ? "HTTP" : "no answer", code);
  b->failed = 1;
  event_base_loopbreak(b->base);
}

/* POST /v3/kv/put through etcd's JSON gateway (key and value in base64); the
 * answer comes to on_put while the streams are being timed. */
static int put_key(bench *b, const char *text, size_t len) {
  char *val = etcd_b64_encode(text, len);
  struct evhttp_request *req = val ? evhttp_request_new(on_put, b) : NULL;
  if (!req) {
    free(val);
    return -1;
  }
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Host", b->etcd_host);
  evhttp_add_header(h, "Content-Type", "application/json");
  evbuffer_add_printf(evhttp_request_get_output_buffer(req), "{\"key\":\"%s\",\"value\":\"%s\"}",
                      b->key_b64, val);
  free(val);
  b->t_put = now_us();
  return evhttp_make_request(b->etcd, req, EVHTTP_REQ_POST, "/v3/kv/put");
}

/* Watch messages are JSON lines; one with events is a put arriving (the first
 * message only says the watch was created). Timed at the end of the message,
 * when mesh-destination too can start decoding it. */
static void on_watch_chunk(struct evhttp_request *req, void *ud) {
  bench *b = ud;
  evbuffer_add_buffer(b->watch_msg, evhttp_request_get_input_buffer(req));
  for (;;) {
    struct evbuffer_ptr nl = evbuffer_search_eol(b->watch_msg, NULL, NULL, EVBUFFER_EOL_LF);
    if (nl.pos < 0) return;
    const char *line = (const char *)evbuffer_pullup(b->watch_msg, nl.pos + 1);
    if (line && memmem(line, (size_t)nl.pos, "\"events\"", 8) && b->nwatch < b->rounds)
      b->watch_ms[b->nwatch++] = (double)(now_us() - b->t_put) / 1000.0;
    evbuffer_drain(b->watch_msg, (size_t)nl.pos + 1);
  }
}

static void on_watch_end(struct evhttp_request *req, void *ud) {
  bench *b = ud;
  if (b->closing) return;
  fprintf(stderr, "bench_destination: etcd watch ended\n");
  b->failed = 1;
  event_base_loopbreak(b->base);
}

static int make_change(bench *b) {
  size_t len = 0;
  char *text = round_manifest(b, &len);
  if (!text) return -1;
  int rc = b->etcd ? put_key(b, text, len) : write_file(b, text, len);
  free(text);
  return rc;
}

static void next_round(evutil_socket_t fd, short what, void *ud);

static void end_round(bench *b) {
  qsort(b->lat, b->nlat, sizeof *b->lat, cmp_double);
  printf("round %zu: %zu streams updated, fan-out p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
         b->round + 1, b->nlat, pct(b->lat, b->nlat, 0.5), pct(b->lat, b->nlat, 0.99),
         b->nlat ? b->lat[b->nlat - 1] : 0.0);
  memcpy(b->all + b->nall, b->lat, b->nlat * sizeof *b->lat);
  b->nall += b->nlat;
  if (b->nlat < b->nstreams) b->failed = 1;
  b->round++;
  struct timeval tv = {0, 300000};
  if (b->round < b->rounds) event_add(b->timer, &tv);
  else event_base_loopbreak(b->base);
}

static void on_timeout(bench *b) {
  fprintf(stderr, "bench_destination: round %zu: %zu streams got nothing within %d ms\n",
          b->round + 1, b->round_pending, ROUND_TIMEOUT_MS);
  end_round(b);
}

static void next_round(evutil_socket_t fd, short what, void *ud) {
  bench *b = ud;
  if (b->t0 && b->round_pending) { /* the timeout of the round in progress */
    b->round_pending = 0;
    b->t0 = 0;
    on_timeout(b);
    return;
  }
  b->nlat = 0;
  b->round_pending = b->nstreams;
  b->t0 = now_us();
  if (make_change(b) < 0) {
    fprintf(stderr, "bench_destination: %s: %s\n", b->change, strerror(errno));
    b->failed = 1;
    event_base_loopbreak(b->base);
    return;
  }
  struct timeval tv = {ROUND_TIMEOUT_MS / 1000, 0};
  event_add(b->timer, &tv);
}

static void on_message(void *ud, const char *line, size_t len) {
  stream *s = ud;
  bench *b = s->b;
  s->messages++;
  if (s->messages == 1) {
    if (--b->first_pending == 0) {
      printf("%zu streams opened, every first message in %.1f ms\n", b->nstreams,
             (double)(now_us() - b->t_open) / 1000.0);
      struct timeval tv = {0, 300000};
      event_add(b->timer, &tv);
    }
    return;
  }
  if (!b->t0 || s->last_ms == b->round + 1) return; /* one sample per stream and round */
  s->last_ms = b->round + 1;
  b->lat[b->nlat++] = (double)(now_us() - b->t0) / 1000.0;
  if (--b->round_pending == 0) {
    b->t0 = 0;
    event_del(b->timer);
    end_round(b);
  }
}

static void on_end(void *ud, int status, const char *error) {
  stream *s = ud;
  if (s->b->closing) return;
  fprintf(stderr, "bench_destination: stream %zu ended: %d %s\n", s->i, status, error ? error : "");
  s->b->failed = 1;
  event_base_loopbreak(s->b->base);
}

/* --etcd http://IP:PORT: a connection for the puts, and one for a watch of
 * the key (evhttp sends one request at a time on a connection). */
static int open_etcd(bench *b, const char *url) {
  struct evhttp_uri *u = evhttp_uri_parse(url);
  const char *host = u ? evhttp_uri_get_host(u) : NULL;
  int port = u ? evhttp_uri_get_port(u) : -1;
  if (host && port > 0) {
    snprintf(b->etcd_host, sizeof b->etcd_host, "%s:%d", host, port);
    b->etcd = evhttp_connection_base_new(b->base, NULL, host, (uint16_t)port);
    b->etcd_watch = evhttp_connection_base_new(b->base, NULL, host, (uint16_t)port);
  }
  if (u) evhttp_uri_free(u);
  b->key_b64 = etcd_b64_encode(b->change, strlen(b->change));
  b->watch_msg = evbuffer_new();
  b->watch_ms = calloc(b->rounds, sizeof *b->watch_ms);
  struct evhttp_request *req = evhttp_request_new(on_watch_end, b);
  if (!b->etcd || !b->etcd_watch || !b->key_b64 || !b->watch_msg || !b->watch_ms || !req) {
    if (req) evhttp_request_free(req);
    return -1;
  }
  /* The watch stays idle between rounds: it keeps evhttp's default timeout (50 s). */
  evhttp_connection_set_timeout(b->etcd, ROUND_TIMEOUT_MS / 1000);
  evhttp_request_set_chunked_cb(req, on_watch_chunk);
  struct evkeyvalq *h = evhttp_request_get_output_headers(req);
  evhttp_add_header(h, "Host", b->etcd_host);
  evhttp_add_header(h, "Content-Type", "application/json");
  evbuffer_add_printf(evhttp_request_get_output_buffer(req), "{\"create_request\":{\"key\":\"%s\"}}",
                      b->key_b64);
  return evhttp_make_request(b->etcd_watch, req, EVHTTP_REQ_POST, "/v3/watch");
}

int main(int argc, char **argv) {
  const char *etcd_url = NULL;
  if (argc == 8 && !strcmp(argv[1], "--etcd")) {
    etcd_url = argv[2];
    argv += 2;
    argc -= 2;
  }
  if (argc != 6) {
    fprintf(stderr,
            "usage: bench_destination [--etcd http://IP:PORT] ADDR STREAMS SERVICES CHANGE ROUNDS\n"
            "  CHANGE: the file written into the store directory each round,\n"
            "  or with --etcd the key put\n");
    return 2;
  }
  bench b = {.change = argv[4]};
  const char *addr = argv[1];
  b.nstreams = strtoul(argv[2], NULL, 10);
  b.nservices = strtoul(argv[3], NULL, 10);
  b.rounds = strtoul(argv[5], NULL, 10);
  if (!b.nstreams || !b.nservices || !b.rounds) return 2;
  mesh_ctx *ctx = NULL;
  if (mesh_ctx_new(&ctx) < 0 || !(b.base = event_base_new())) return 1;
  if (etcd_url && open_etcd(&b, etcd_url) < 0) {
    fprintf(stderr, "bench_destination: --etcd %s: expected http://IP:PORT\n", etcd_url);
    return 2;
  }
  b.streams = calloc(b.nstreams, sizeof *b.streams);
  b.lat = calloc(b.nstreams, sizeof *b.lat);
  b.all = calloc(b.nstreams * b.rounds, sizeof *b.all);
  size_t nconn = (b.nstreams + PER_CONNECTION - 1) / PER_CONNECTION;
  mesh_rpc_client **cl = calloc(nconn, sizeof *cl);
  b.timer = evtimer_new(b.base, next_round, &b);
  if (!b.streams || !b.lat || !b.all || !cl || !b.timer) return 1;
  for (size_t c = 0; c < nconn; c++)
    if (mesh_rpc_client_new(ctx, b.base, NULL, addr, NULL, &cl[c]) < 0) return 1;
  b.first_pending = b.nstreams;
  b.t_open = now_us();
  for (size_t i = 0; i < b.nstreams; i++) {
    size_t svc = i % b.nservices;
    char body[128];
    snprintf(body, sizeof body, "{\"path\":\"s%zu.ns%zu.svc.cluster.local:80\"}", svc, svc % 10);
    b.streams[i] = (stream){.b = &b, .i = i};
    if (mesh_rpc_client_stream(cl[i / PER_CONNECTION], GET_PATH, body, strlen(body), on_message,
                               on_end, &b.streams[i], NULL) < 0)
      return 1;
  }
  event_base_dispatch(b.base);
  qsort(b.all, b.nall, sizeof *b.all, cmp_double);
  printf("overall: %zu samples, fan-out p50 %.1f ms, p99 %.1f ms, max %.1f ms\n", b.nall,
         pct(b.all, b.nall, 0.5), pct(b.all, b.nall, 0.99), b.nall ? b.all[b.nall - 1] : 0.0);
  if (b.etcd) {
    qsort(b.watch_ms, b.nwatch, sizeof *b.watch_ms, cmp_double);
    printf("etcd put to watch event: %zu events, p50 %.1f ms, max %.1f ms\n", b.nwatch,
           pct(b.watch_ms, b.nwatch, 0.5), b.nwatch ? b.watch_ms[b.nwatch - 1] : 0.0);
  }
  b.closing = 1;
  for (size_t c = 0; c < nconn; c++) mesh_rpc_client_free(cl[c]);
  event_free(b.timer);
  if (b.etcd) evhttp_connection_free(b.etcd);
  if (b.etcd_watch) evhttp_connection_free(b.etcd_watch);
  if (b.watch_msg) evbuffer_free(b.watch_msg);
  free(b.key_b64);
  free(b.watch_ms);
  event_base_free(b.base);
  mesh_ctx_free(ctx);
  free(cl);
  free(b.streams);
  free(b.lat);
  free(b.all);
  return b.failed ? 1 : 0;
}
