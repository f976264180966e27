/* Benchmark driver: many Destination.Get watch streams on mesh-destination; the fan-out latency of store changes. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include <mesh/mesh.h>

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
  const char *file;
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

/* Every watched service gets one more workload (round r), written whole. */
static int write_round(bench *b) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", b->file);
  FILE *f = fopen(tmp, "w");
  if (!f) return -1;
  size_t n = b->nstreams < b->nservices ? b->nstreams : b->nservices;
  for (size_t i = 0; i < n; i++)
    fprintf(f,
            "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Workload\n"
            "metadata: {name: bench-%zu-%zu, namespace: ns%zu, labels: {app: s%zu}}\n"
            "spec: {address: 10.%zu.%zu.%zu}\n---\n",
            b->round, i, i % 10, i, 100 + b->round % 100, i / 256, i % 256);
  if (fclose(f) != 0) return -1;
  return rename(tmp, b->file);
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
  if (write_round(b) < 0) {
    fprintf(stderr, "bench_destination: %s: %s\n", b->file, strerror(errno));
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

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: bench_destination ADDR STREAMS SERVICES CHANGE_FILE ROUNDS\n");
    return 2;
  }
  bench b = {.file = argv[4]};
  const char *addr = argv[1];
  b.nstreams = strtoul(argv[2], NULL, 10);
  b.nservices = strtoul(argv[3], NULL, 10);
  b.rounds = strtoul(argv[5], NULL, 10);
  if (!b.nstreams || !b.nservices || !b.rounds) return 2;
  mesh_ctx *ctx = NULL;
  if (mesh_ctx_new(&ctx) < 0 || !(b.base = event_base_new())) return 1;
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
  b.closing = 1;
  for (size_t c = 0; c < nconn; c++) mesh_rpc_client_free(cl[c]);
  event_free(b.timer);
  event_base_free(b.base);
  mesh_ctx_free(ctx);
  free(cl);
  free(b.streams);
  free(b.lat);
  free(b.all);
  return b.failed ? 1 : 0;
}
