/* Prints a Linkerd-shaped /metrics exposition from libmesh's metrics module, for promtool to judge. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mesh/mesh.h>

static mesh_ctx *ctx;

static void die(const char *what, int rc) {
  fprintf(stderr, "metrics_tool: %s: %s\n", what, mesh_strerror(rc));
  exit(1);
}

#define CHECK(call)                    \
  do {                                 \
    int rc_ = (call);                  \
    if (rc_ < 0) die(#call, rc_);      \
  } while (0)

static mesh_metric_series *get(mesh_metric_family *f, const char *const *v, size_t n) {
  mesh_metric_series *s;
  CHECK(mesh_metrics_series(f, v, n, &s));
  return s;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

int main(void) {
  mesh_metrics *reg;
  CHECK(mesh_ctx_new(&ctx));
  CHECK(mesh_metrics_new(ctx, &reg));

  /* Linkerd 2 proxy families, with its label names. */
  const char *req_l[] = {"direction", "authority", "target_addr", "tls", "server_id", "client_id",
                         "dst_namespace", "dst_service"};
  const char *rsp_l[] = {"direction", "authority", "target_addr", "tls", "server_id", "client_id",
                         "dst_namespace", "dst_service", "status_code", "classification"};
  const char *lat_l[] = {"direction", "authority", "target_addr", "tls", "server_id", "client_id",
                         "dst_namespace", "dst_service", "status_code"};
  const char *rt_l[] = {"direction", "dst", "rt_route"};
  const char *rt_rsp_l[] = {"direction", "dst", "rt_route", "status_code", "classification"};
  const char *tcp_l[] = {"direction", "peer", "tls", "client_id", "server_id"};
  const char *close_l[] = {"direction", "peer", "tls", "client_id", "server_id", "errno"};
  mesh_metric_family *request_total, *response_total, *latency, *route_req, *route_rsp, *route_lat,
      *tcp_open, *tcp_close, *tcp_conns, *tcp_read, *tcp_write, *tcp_dur;
  CHECK(mesh_metrics_counter(reg, "request_total", "Total count of HTTP requests.", req_l,
                             N(req_l), &request_total));
  CHECK(mesh_metrics_counter(reg, "response_total", "Total count of HTTP responses.", rsp_l,
                             N(rsp_l), &response_total));
  CHECK(mesh_metrics_histogram(reg, "response_latency_ms",
                               "Elapsed times between a request's headers being received and its "
                               "response stream completing",
                               lat_l, N(lat_l), NULL, 0, &latency));
  CHECK(mesh_metrics_counter(reg, "route_request_total", "Total count of HTTP requests.", rt_l,
                             N(rt_l), &route_req));
  CHECK(mesh_metrics_counter(reg, "route_response_total", "Total count of HTTP responses.",
                             rt_rsp_l, N(rt_rsp_l), &route_rsp));
  CHECK(mesh_metrics_histogram(reg, "route_response_latency_ms",
                               "Elapsed times between a request's headers being received and its "
                               "response stream completing",
                               rt_rsp_l, N(rt_rsp_l) - 1, NULL, 0, &route_lat));
  CHECK(mesh_metrics_counter(reg, "tcp_open_total", "Total count of opened connections", tcp_l,
                             N(tcp_l), &tcp_open));
  CHECK(mesh_metrics_counter(reg, "tcp_close_total", "Total count of closed connections", close_l,
                             N(close_l), &tcp_close));
  CHECK(mesh_metrics_gauge(reg, "tcp_open_connections", "Number of currently-open connections",
                           tcp_l, N(tcp_l), &tcp_conns));
  CHECK(mesh_metrics_counter(reg, "tcp_read_bytes_total", "Total count of bytes read from peers",
                             tcp_l, N(tcp_l), &tcp_read));
  CHECK(mesh_metrics_counter(reg, "tcp_write_bytes_total", "Total count of bytes written to peers",
                             tcp_l, N(tcp_l), &tcp_write));
  CHECK(mesh_metrics_histogram(reg, "tcp_connection_duration_ms",
                               "Connection lifetimes", close_l, N(close_l), NULL, 0, &tcp_dur));
  CHECK(mesh_metrics_process(reg));

  /* Label values that need care: quotes, backslashes, newlines, non-ASCII,
   * empty, and a value at the length limit. */
  char longv[MESH_METRICS_MAX_LABEL_VALUE + 1];
  memset(longv, 'a', sizeof longv - 1);
  longv[sizeof longv - 1] = '\0';
  const char *id_web = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
  const char *id_bot = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";
  const char *authorities[] = {"web-svc.emojivoto.svc.cluster.local:80", "we\"ird\\host\nname:80",
                               "\xc3\xa9xamen.\xe6\x97\xa5\xe6\x9c\xac.example:443", "", longv};
  for (size_t i = 0; i < N(authorities); i++) {
    const char *rv[] = {"outbound", authorities[i], "10.42.0.7:8080", "true", id_web, "",
                        "emojivoto", "web-svc"};
    mesh_metric_series *s = get(request_total, rv, N(rv));
    mesh_metrics_inc(s, 10 + i);
    mesh_metrics_series_unref(s);
    const char *ok[] = {"outbound", authorities[i], "10.42.0.7:8080", "true", id_web, "",
                        "emojivoto", "web-svc", "200", "success"};
    const char *bad[] = {"outbound", authorities[i], "10.42.0.7:8080", "true", id_web, "",
                         "emojivoto", "web-svc", "503", "failure"};
    mesh_metric_series *a = get(response_total, ok, N(ok)), *b = get(response_total, bad, N(bad));
    mesh_metrics_inc(a, 8 + i);
    mesh_metrics_inc(b, 2);
    mesh_metrics_series_unref(a);
    mesh_metrics_series_unref(b);
    const char *lv[] = {"outbound", authorities[i], "10.42.0.7:8080", "true", id_web, "",
                        "emojivoto", "web-svc", "200"};
    mesh_metric_series *l = get(latency, lv, N(lv));
    const uint64_t obs[] = {0, 1, 3, 5, 7, 50, 51, 999, 50000, 70000};
    for (size_t k = 0; k < N(obs); k++) mesh_metrics_observe(l, obs[k]);
    mesh_metrics_series_unref(l);
  }
  /* Inbound, with the client's identity. */
  const char *in_rv[] = {"inbound", "web-svc.emojivoto.svc.cluster.local:80", "10.42.0.9:4143",
                         "true", "", id_bot, "", ""};
  mesh_metric_series *in = get(request_total, in_rv, N(in_rv));
  mesh_metrics_inc(in, 3);
  mesh_metrics_series_unref(in);

  /* Routes from a ServiceProfile: their names hold spaces, braces and slashes. */
  const char *routes[] = {"GET /api/v1/exams/{id}", "POST /api/v1/exams/{id}/answers", "[DEFAULT]"};
  for (size_t i = 0; i < N(routes); i++) {
    const char *v[] = {"outbound", "exam-api.edtech.svc.cluster.local:8080", routes[i], "500",
                       "failure"};
    mesh_metric_series *r = get(route_req, v, 3), *f = get(route_rsp, v, 5), *l = get(route_lat, v, 4);
    mesh_metrics_inc(r, 100);
    mesh_metrics_inc(f, 5);
    mesh_metrics_observe(l, 120);
    mesh_metrics_observe(l, 4000);
    mesh_metrics_series_unref(r);
    mesh_metrics_series_unref(f);
    mesh_metrics_series_unref(l);
  }

  /* TCP, and the cardinality pattern callers follow: a small limit on a
   * family keyed by untrusted peers, past which they count into "overflow". */
  CHECK(mesh_metrics_family_set_max_series(tcp_open, 4));
  const char *ov[] = {"inbound", "overflow", "true", "", ""};
  mesh_metric_series *overflow = get(tcp_open, ov, N(ov));
  for (int i = 0; i < 10; i++) {
    char peer[32];
    snprintf(peer, sizeof peer, "10.0.0.%d:5%d", i, i);
    const char *tv[] = {"inbound", peer, "true", id_bot, ""};
    mesh_metric_series *s;
    int rc = mesh_metrics_series(tcp_open, tv, N(tv), &s);
    if (rc == MESH_ERR_LIMIT) {
      mesh_metrics_inc(overflow, 1);
      continue;
    }
    CHECK(rc);
    mesh_metrics_inc(s, 1);
    mesh_metrics_series_unref(s);
  }
  mesh_metrics_series_unref(overflow);
  const char *tv[] = {"outbound", "10.42.0.7:8080", "true", "", id_web};
  const char *cv[] = {"outbound", "10.42.0.7:8080", "true", "", id_web, "ECONNRESET"};
  mesh_metric_series *conns = get(tcp_conns, tv, N(tv)), *rd = get(tcp_read, tv, N(tv)),
                     *wr = get(tcp_write, tv, N(tv)), *cl = get(tcp_close, cv, N(cv)),
                     *du = get(tcp_dur, cv, N(cv));
  mesh_metrics_inc(conns, 3);
  mesh_metrics_dec(conns, 1);
  mesh_metrics_inc(rd, 123456);
  mesh_metrics_inc(wr, 654321);
  mesh_metrics_inc(cl, 1);
  mesh_metrics_observe(du, 30000);
  /* An endpoint that went away is no longer exposed. */
  const char *gone[] = {"outbound", "10.42.0.99:8080", "true", "", id_web};
  mesh_metric_series *g = get(tcp_conns, gone, N(gone));
  mesh_metrics_set(g, 7);
  CHECK(mesh_metrics_series_remove(g));
  mesh_metrics_series_unref(g);
  mesh_metric_series *all[] = {conns, rd, wr, cl, du};
  for (size_t i = 0; i < N(all); i++) mesh_metrics_series_unref(all[i]);

  char *text;
  size_t len;
  CHECK(mesh_metrics_render(reg, &text, &len));
  if (fwrite(text, 1, len, stdout) != len) return 1;
  mesh_free_string(ctx, text);
  mesh_metrics_free(reg);
  mesh_ctx_free(ctx);
  return 0;
}
