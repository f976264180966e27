/* Benchmark driver: Certify calls per second against mesh-identity, with many calls in flight over multiplexed rpc clients. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include <mesh/mesh.h>

#define NREQ 32         /* distinct requests (keys and CSRs) cycled through */
#define MAX_CONNS 64
#define MAX_LAT 1000000 /* latency samples kept */

typedef struct {
  struct event_base *base;
  mesh_rpc_client *clients[MAX_CONNS];
  int nconns;
  char *req[NREQ];
  uint64_t deadline_ns, next;
  long ok, failed, in_flight;
  int first_status;
  const char *first_error;
  double *lat;
  long nlat;
} bench;

typedef struct {
  bench *b;
  int conn;
  uint64_t start_ns;
} call_ctx;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void start_call(bench *b, int conn);

static void on_reply(void *ud, int status, const char *body, size_t len, const char *error) {
  call_ctx *c = ud;
  bench *b = c->b;
  double ms = (double)(now_ns() - c->start_ns) / 1e6;
  b->in_flight--;
  if (status == 200) {
    b->ok++;
    if (b->nlat < MAX_LAT) b->lat[b->nlat++] = ms;
  } else {
    if (!b->failed++) {
      b->first_status = status;
      b->first_error = error;
    }
  }
  int conn = c->conn;
  free(c);
  if (now_ns() < b->deadline_ns) start_call(b, conn);
  else if (b->in_flight == 0) event_base_loopbreak(b->base);
}

static void start_call(bench *b, int conn) {
  call_ctx *c = malloc(sizeof *c);
  if (!c) return;
  *c = (call_ctx){b, conn, now_ns()};
  const char *req = b->req[b->next++ % NREQ];
  if (mesh_rpc_client_call(b->clients[conn], MESH_CERTIFY_PATH, req, strlen(req), 30000, on_reply,
                           c) < 0) {
    free(c);
    b->failed++;
    return;
  }
  b->in_flight++;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  fclose(f);
  if (buf) buf[n] = '\0';
  *len = n;
  return buf;
}

int main(int argc, char **argv) {
  if (argc != 9) {
    fprintf(stderr,
            "usage: bench_identity ADDR SERVER_IDENTITY ANCHORS TOKEN_FILE NS SA SECONDS "
            "CONNSxINFLIGHT\n");
    return 2;
  }
  const char *addr = argv[1], *server = argv[2];
  double secs = atof(argv[7]);
  int conns = 1, per = 1;
  if (sscanf(argv[8], "%dx%d", &conns, &per) != 2 || conns < 1 || conns > MAX_CONNS || per < 1) {
    fprintf(stderr, "bad CONNSxINFLIGHT '%s'\n", argv[8]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  size_t alen = 0, tlen = 0;
  char *anchors = slurp(argv[3], &alen), *token = slurp(argv[4], &tlen);
  if (!anchors || !token) {
    fprintf(stderr, "cannot read %s or %s\n", argv[3], argv[4]);
    return 1;
  }
  while (tlen && (token[tlen - 1] == '\n' || token[tlen - 1] == ' ')) token[--tlen] = '\0';

  mesh_ctx *ctx = NULL;
  mesh_tls_opts *o = NULL;
  mesh_tls_config *tls = NULL;
  mesh_identity *id = NULL;
  const char *why = NULL;
  bench b;
  memset(&b, 0, sizeof b);
  b.lat = malloc(sizeof(double) * MAX_LAT);
  if (mesh_ctx_new(&ctx) < 0 || mesh_tls_opts_new(ctx, &o) < 0 ||
      mesh_tls_opts_set_anchors(o, anchors, alen) < 0 || mesh_tls_opts_set_alpn(o, "h2") < 0 ||
      mesh_tls_config_new(o, &why, &tls) < 0 ||
      mesh_identity_new(ctx, argv[5], argv[6], NULL, NULL, &why, &id) < 0 || !b.lat) {
    fprintf(stderr, "setup failed: %s\n", why ? why : "");
    return 1;
  }
  /* Requests are made up front: the figure is the service's, not the
   * client's key generation. */
  for (int i = 0; i < NREQ; i++) {
    mesh_key *k = NULL;
    if (mesh_key_generate(ctx, &k) < 0 || mesh_certify_request(k, id, token, &b.req[i]) < 0) {
      fprintf(stderr, "cannot make request %d\n", i);
      return 1;
    }
    mesh_key_free(k);
  }
  b.base = event_base_new();
  b.nconns = conns;
  for (int i = 0; i < conns; i++) {
    if (mesh_rpc_client_new(ctx, b.base, tls, addr, server, &b.clients[i]) < 0) {
      fprintf(stderr, "cannot make client %d\n", i);
      return 1;
    }
  }
  uint64_t t0 = now_ns();
  b.deadline_ns = t0 + (uint64_t)(secs * 1e9);
  for (int i = 0; i < conns; i++)
    for (int j = 0; j < per; j++) start_call(&b, i);
  event_base_dispatch(b.base);
  double elapsed = (double)(now_ns() - t0) / 1e9;
  qsort(b.lat, (size_t)b.nlat, sizeof(double), cmp_double);
  double p50 = b.nlat ? b.lat[b.nlat / 2] : 0, p99 = b.nlat ? b.lat[b.nlat * 99 / 100] : 0;
  printf("%d connection(s) x %d in flight: %ld issued, %ld failed in %.2f s = %.0f/s; latency p50 "
         "%.1f ms, p99 %.1f ms\n",
         conns, per, b.ok, b.failed, elapsed, (double)b.ok / elapsed, p50, p99);
  if (b.failed)
    printf("  first failure: status %d, %s\n", b.first_status,
           b.first_error ? b.first_error : "(no code)");
  for (int i = 0; i < conns; i++) mesh_rpc_client_free(b.clients[i]);
  for (int i = 0; i < NREQ; i++) mesh_free_string(ctx, b.req[i]);
  event_base_free(b.base);
  mesh_identity_free(id);
  mesh_tls_config_unref(tls);
  mesh_tls_opts_free(o);
  mesh_ctx_free(ctx);
  free(b.lat);
  free(anchors);
  free(token);
  return 0;
}
