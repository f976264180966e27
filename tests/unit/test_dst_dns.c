/* Unit tests for mesh-destination's DNS fallback: which names go to DNS, server lists, and the resolver against a DNS responder on loopback (answers, NXDOMAIN, SERVFAIL, sharing, bounds, messages). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include <mesh/mesh.h>

#include "dns.h"

/* ---- Which names are DNS's ----------------------------------------------------- */

static struct event_base *base;
static dst_dns *r;
static mesh_ctx *ctx;
static mesh_metrics *metrics;
static char logged[4096];

static void keep_log(const char *level, const char *line) {
  size_t used = strlen(logged);
  snprintf(logged + used, sizeof logged - used, "%s %s\n", level, line);
}

static void setup_with(const char *servers, size_t max_names, size_t max_resolving) {
  char err[300];
  base = event_base_new();
  ck_assert_ptr_nonnull(base);
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_metrics_new(ctx, &metrics), 0);
  logged[0] = '\0';
  dst_dns_opts o = {.cluster_domain = "cluster.local", .servers = servers, .max_names = max_names,
                    .max_resolving = max_resolving, .metrics = metrics, .log = keep_log};
  ck_assert_msg(dst_dns_new(base, &o, err, sizeof err, &r) == 0, "%s", err);
}

static void teardown_all(void) {
  dst_dns_free(r);
  r = NULL;
  mesh_metrics_free(metrics);
  mesh_ctx_free(ctx);
  event_base_free(base);
}

static bool wants(const char *authority, char *host, uint16_t *port) {
  char h[256];
  uint16_t p = 0;
  bool ok = dst_dns_wants(r, authority, h, sizeof h, &p);
  if (ok && host) strcpy(host, h);
  if (ok && port) *port = p;
  return ok;
}

START_TEST(test_wants) {
  setup_with("127.0.0.1:1", 10, 1);
  char host[256];
  uint16_t port = 0;
  ck_assert(wants("api.example.test:8080", host, &port));
  ck_assert_str_eq(host, "api.example.test");
  ck_assert_uint_eq(port, 8080);
  ck_assert(wants("API.Example.COM.", host, &port)); /* no port: 80; the trailing dot goes */
  ck_assert_str_eq(host, "api.example.com");
  ck_assert_uint_eq(port, 80);
  ck_assert(wants("example.com:443", host, &port));
  /* The store's forms and addresses never go to DNS. */
  static const char *const no[] = {
      "web:80", "web.shop.svc:80", "web.shop.svc.cluster.local:80", "x.CLUSTER.local:80",
      "cluster.local:80", "web.shop.svc.cluster.local.:80", "10.0.0.1:80", "[::1]:80",
      "a..b:80", ".a.b:80", "a.b:0", "a.b:65536", "a.b:x", "a_b.c:80", "a.b:",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com:80" /* 65 */};
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
    ck_assert_msg(!wants(no[i], NULL, NULL), "%s", no[i]);
  /* "notcluster.local" is not in cluster.local. */
  ck_assert(wants("notcluster.local:80", host, &port));
  ck_assert(wants("web.shop:80", host, &port));
  /* Once the store has a namespace shop, "web.shop" is its short form. */
  static const char doc[] = "apiVersion: mesh.libmesh.io/v1alpha1\nkind: Service\n"
                            "metadata: {name: web, namespace: shop}\n"
                            "spec: {selector: {app: web}}\n";
  mesh_snapshot_builder *b = NULL;
  mesh_snapshot *snap = NULL;
  ck_assert_int_eq(mesh_snapshot_builder_new(ctx, NULL, &b), 0);
  ck_assert_int_eq(mesh_snapshot_builder_add(b, "t.yaml", doc, sizeof doc - 1, NULL), 0);
  ck_assert_int_eq(mesh_snapshot_builder_finish(b, NULL, &snap), 0);
  ck_assert_int_eq(dst_dns_set_snapshot(r, snap), 0);
  mesh_snapshot_unref(snap);
  ck_assert(!wants("web.shop:80", NULL, NULL));
  ck_assert(!wants("other.SHOP:80", NULL, NULL));
  ck_assert(wants("web.shop.example:80", host, &port)); /* three labels: not a short form */
  ck_assert(wants("web.shopping:80", host, &port));
  teardown_all();
}
END_TEST

START_TEST(test_servers) {
  char err[300];
  static const char *const good[] = {"127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1", "[::1]",
                                     "10.0.0.1,10.0.0.2:54,[fe80::1]:55"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    ck_assert_msg(dst_dns_servers_valid(good[i], err, sizeof err), "%s: %s", good[i], err);
  static const char *const bad[] = {"", "dns.example:53", "127.0.0.1:0", "127.0.0.1:70000",
                                    "127.0.0.1:", "[::1]x", "1.2.3.4,", ",1.2.3.4", "[::1]:53:1",
                                    "1,2,3,4,5,6,7,8,9"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    ck_assert_msg(!dst_dns_servers_valid(bad[i], err, sizeof err), "%s", bad[i]);
    ck_assert_msg(*err, "no reason for %s", bad[i]);
  }
  ck_assert(!dst_dns_servers_valid(
      "1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5,1.1.1.6,1.1.1.7,1.1.1.8,1.1.1.9", err, sizeof err));
  ck_assert_ptr_nonnull(strstr(err, "more than 8"));
}
END_TEST

/* ---- A DNS responder on loopback ----------------------------------------------- */

typedef struct {
  const char *name;
  int rcode; /* 0, 2 (SERVFAIL), 3 (NXDOMAIN) */
  const char *v4[3], *v6[2];
  uint32_t ttl;
  int queries; /* A queries seen */
} zone_entry;

static zone_entry zone[] = {
    {"a.test", 0, {"10.0.0.2", "10.0.0.1", NULL}, {"fd00::1", NULL}, 1, 0},
    {"b.test", 0, {"10.0.0.2", "10.0.0.3", NULL}, {NULL}, 1, 0},
    {"nx.test", 3, {NULL}, {NULL}, 1, 0},
    {"fail.test", 2, {NULL}, {NULL}, 1, 0},
    {"c.test", 0, {"10.0.0.9", NULL}, {NULL}, 1, 0},
    {"d.test", 0, {"10.0.0.8", NULL}, {NULL}, 1, 0},
};
static int server_fd = -1;
static struct event *server_ev;
static uint16_t server_port;

static zone_entry *find_zone(const char *name) {
  for (size_t i = 0; i < sizeof zone / sizeof zone[0]; i++)
    if (!strcmp(zone[i].name, name)) return &zone[i];
  return NULL;
}

static void put16(unsigned char *p, unsigned v) {
  p[0] = (unsigned char)(v >> 8);
  p[1] = (unsigned char)v;
}

/* Answers each query from zone: the header and question back, with the records. */
static void on_query(evutil_socket_t fd, short what, void *ud) {
  unsigned char q[512], out[1024];
  struct sockaddr_storage from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
  if (n < 17) return;
  char name[256] = "";
  size_t at = 12, nl = 0;
  while (at < (size_t)n && q[at]) {
    size_t l = q[at++];
    if (at + l > (size_t)n || nl + l + 1 >= sizeof name) return;
    if (nl) name[nl++] = '.';
    memcpy(name + nl, q + at, l);
    nl += l;
    at += l;
  }
  name[nl] = '\0';
  at += 1; /* the root label */
  if (at + 4 > (size_t)n) return;
  unsigned qtype = (unsigned)(q[at] << 8 | q[at + 1]);
  at += 4;
  zone_entry *z = find_zone(name);
  int rcode = z ? z->rcode : 3;
  if (z && qtype == 1) z->queries++;
  memcpy(out, q, at);
  put16(out + 2, 0x8400u | (q[2] & 1u) << 8 | 0x80u | (unsigned)rcode); /* QR AA RD RA */
  put16(out + 6, 0);
  put16(out + 8, 0);
  put16(out + 10, 0);
  size_t len = at;
  unsigned count = 0;
  const char *const *ips = !z || rcode ? NULL : qtype == 1 ? z->v4 : qtype == 28 ? z->v6 : NULL;
  for (size_t i = 0; ips && i < 3 && ips[i]; i++) {
    unsigned char bin[16];
    int v6 = qtype == 28;
    ck_assert_int_eq(inet_pton(v6 ? AF_INET6 : AF_INET, ips[i], bin), 1);
    put16(out + len, 0xc00c); /* the question's name */
    put16(out + len + 2, qtype);
    put16(out + len + 4, 1);
    put16(out + len + 6, z->ttl >> 16);
    put16(out + len + 8, z->ttl & 0xffff);
    put16(out + len + 10, v6 ? 16 : 4);
    memcpy(out + len + 12, bin, v6 ? 16 : 4);
    len += 12 + (v6 ? 16 : 4);
    count++;
  }
  put16(out + 6, count);
  sendto(fd, out, len, 0, (struct sockaddr *)&from, fl);
}

static void server_start(void) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  server_fd = socket(AF_INET, SOCK_DGRAM, 0);
  ck_assert_int_ge(server_fd, 0);
  ck_assert_int_eq(bind(server_fd, (struct sockaddr *)&sa, sizeof sa), 0);
  ck_assert_int_eq(getsockname(server_fd, (struct sockaddr *)&sa, &sl), 0);
  server_port = ntohs(sa.sin_port);
  for (size_t i = 0; i < sizeof zone / sizeof zone[0]; i++) zone[i].queries = 0;
}

static void setup_server(size_t max_names, size_t max_resolving) {
  char servers[64];
  server_start();
  snprintf(servers, sizeof servers, "127.0.0.1:%u", server_port);
  setup_with(servers, max_names, max_resolving);
  server_ev = event_new(base, server_fd, EV_READ | EV_PERSIST, on_query, NULL);
  ck_assert_int_eq(event_add(server_ev, NULL), 0);
}

static void teardown_server(void) {
  event_free(server_ev);
  teardown_all();
  close(server_fd);
}

/* ---- The resolver -------------------------------------------------------------- */

typedef struct {
  int changes;
} counter;

static void on_change(void *ud) { ((counter *)ud)->changes++; }

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs the loop until w has an answer (or 3 s). */
static const dst_dns_answer *answer_of(dst_dns_watch *w) {
  uint64_t end = now_ms() + 3000;
  while (!dst_dns_watch_answer(w) && now_ms() < end) {
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    usleep(1000);
  }
  return dst_dns_watch_answer(w);
}

static void run_for(uint64_t ms) {
  uint64_t end = now_ms() + ms;
  while (now_ms() < end) {
    event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    usleep(1000);
  }
}

static char *messages(const dst_dns_answer *old, const dst_dns_answer *cur, uint16_t port) {
  char *m = NULL;
  ck_assert_int_eq(dst_dns_messages(old, cur, port, &m), 0);
  return m;
}

static bool rendered(const char *sample) {
  char *text = NULL;
  size_t len = 0;
  ck_assert_int_eq(mesh_metrics_render(metrics, &text, &len), 0);
  bool found = strstr(text, sample) != NULL;
  mesh_free_string(ctx, text);
  return found;
}

START_TEST(test_resolve_and_messages) {
  setup_server(10, 4);
  counter ca = {0}, cb = {0}, cn = {0};
  dst_dns_watch *wa = NULL, *wb = NULL, *wn = NULL;
  ck_assert_int_eq(dst_dns_watch_new(r, "a.test", on_change, &ca, &wa), 0);
  ck_assert_ptr_null(dst_dns_watch_answer(wa)); /* resolved from the loop, not at once */
  ck_assert_int_eq(dst_dns_watch_new(r, "b.test", on_change, &cb, &wb), 0);
  ck_assert_int_eq(dst_dns_watch_new(r, "nx.test", on_change, &cn, &wn), 0);
  const dst_dns_answer *a = answer_of(wa), *b = answer_of(wb), *nx = answer_of(wn);
  ck_assert_ptr_nonnull(a);
  ck_assert_ptr_nonnull(b);
  ck_assert_ptr_nonnull(nx);
  ck_assert_int_eq(ca.changes, 1);
  ck_assert_int_eq(cn.changes, 1);

  /* First messages: every address, sorted; IPv6 in brackets; no identity. */
  char *m = messages(NULL, a, 8080);
  ck_assert_str_eq(m, "{\"add\":{\"addrs\":["
                      "{\"addr\":\"10.0.0.1:8080\",\"weight\":1,\"target_port\":8080},"
                      "{\"addr\":\"10.0.0.2:8080\",\"weight\":1,\"target_port\":8080},"
                      "{\"addr\":\"[fd00::1]:8080\",\"weight\":1,\"target_port\":8080}]}}\n");
  free(m);
  m = messages(NULL, nx, 80);
  ck_assert_str_eq(m, "{\"no_endpoints\":{\"exists\":false}}\n");
  free(m);
  /* a -> b: remove what went, then add what came. */
  m = messages(a, b, 80);
  ck_assert_str_eq(m, "{\"remove\":{\"addrs\":[{\"addr\":\"10.0.0.1:80\"},"
                      "{\"addr\":\"[fd00::1]:80\"}]}}\n"
                      "{\"add\":{\"addrs\":["
                      "{\"addr\":\"10.0.0.3:80\",\"weight\":1,\"target_port\":80}]}}\n");
  free(m);
  ck_assert_ptr_null(messages(a, a, 80));   /* nothing changed */
  ck_assert_ptr_null(messages(nx, nx, 80)); /* not found, said already */
  ck_assert_ptr_null(messages(nx, NULL, 80));
  ck_assert_ptr_null(messages(NULL, NULL, 80));
  m = messages(a, nx, 80);
  ck_assert_str_eq(m, "{\"no_endpoints\":{\"exists\":false}}\n");
  free(m);
  m = messages(nx, b, 80);
  ck_assert_str_eq(m, "{\"add\":{\"addrs\":["
                      "{\"addr\":\"10.0.0.2:80\",\"weight\":1,\"target_port\":80},"
                      "{\"addr\":\"10.0.0.3:80\",\"weight\":1,\"target_port\":80}]}}\n");
  free(m);
  m = messages(b, NULL, 80); /* the store took the name */
  ck_assert_str_eq(m, "{\"remove\":{\"addrs\":[{\"addr\":\"10.0.0.2:80\"},"
                      "{\"addr\":\"10.0.0.3:80\"}]}}\n");
  free(m);

  /* An answer outlives the name's change: a stream keeps what it was sent. */
  dst_dns_answer *kept = dst_dns_answer_ref(a);
  dst_dns_watch_free(wa);
  dst_dns_watch_free(wb);
  dst_dns_watch_free(wn);
  m = messages(NULL, kept, 1);
  ck_assert_ptr_nonnull(strstr(m, "\"10.0.0.1:1\""));
  free(m);
  dst_dns_answer_unref(kept);
  ck_assert(rendered("destination_dns_resolutions_total{result=\"found\"} 2"));
  ck_assert(rendered("destination_dns_resolutions_total{result=\"not_found\"} 1"));
  ck_assert(rendered("destination_dns_names 3")); /* unwatched, cached until their TTL */
  ck_assert_ptr_nonnull(strstr(logged, "INFO dns nx.test: no such name, asked again in 30 s"));
  ck_assert_ptr_nonnull(
      strstr(logged, "INFO dns a.test: 3 addresses (10.0.0.1, ...), asked again in 5 s"));
  teardown_server();
}
END_TEST

START_TEST(test_shared_and_failing) {
  setup_server(10, 1);
  counter c1 = {0}, c2 = {0}, cf = {0};
  dst_dns_watch *w1 = NULL, *w2 = NULL, *wf = NULL;
  ck_assert_int_eq(dst_dns_watch_new(r, "c.test", on_change, &c1, &w1), 0);
  ck_assert_int_eq(dst_dns_watch_new(r, "c.test", on_change, &c2, &w2), 0);
  ck_assert_ptr_nonnull(answer_of(w1));
  ck_assert_ptr_eq(dst_dns_watch_answer(w1), dst_dns_watch_answer(w2));
  ck_assert_int_eq(c1.changes, 1);
  ck_assert_int_eq(c2.changes, 1);
  ck_assert_int_eq(find_zone("c.test")->queries, 1);
  /* A third stream joins an answered name: the answer at once, no query. */
  dst_dns_watch *w3 = NULL;
  ck_assert_int_eq(dst_dns_watch_new(r, "c.test", on_change, &c1, &w3), 0);
  ck_assert_ptr_eq(dst_dns_watch_answer(w3), dst_dns_watch_answer(w1));
  run_for(50);
  ck_assert_int_eq(find_zone("c.test")->queries, 1);

  /* SERVFAIL: no answer, no change; retried after 1 s, then 2 s. */
  ck_assert_int_eq(dst_dns_watch_new(r, "fail.test", on_change, &cf, &wf), 0);
  run_for(300);
  ck_assert_ptr_null(dst_dns_watch_answer(wf));
  ck_assert_int_eq(cf.changes, 0);
  int first = find_zone("fail.test")->queries;
  ck_assert_int_ge(first, 1);
  ck_assert_ptr_nonnull(strstr(logged, "WARN dns fail.test: "));
  ck_assert_ptr_nonnull(strstr(logged, "no answer yet, retrying with backoff from 1000 ms"));
  run_for(1200);
  ck_assert_int_gt(find_zone("fail.test")->queries, first);
  ck_assert(rendered("destination_dns_resolutions_total{result=\"failed\"} 2"));
  /* The server answers again: the first answer comes by the next retry (2 s). */
  find_zone("fail.test")->rcode = 0;
  find_zone("fail.test")->v4[0] = "10.0.0.7";
  ck_assert_ptr_nonnull(answer_of(wf));
  ck_assert_int_eq(cf.changes, 1);
  find_zone("fail.test")->rcode = 2;
  find_zone("fail.test")->v4[0] = NULL;
  dst_dns_watch_free(w1);
  dst_dns_watch_free(w2);
  dst_dns_watch_free(w3);
  dst_dns_watch_free(wf);
  teardown_server();
}
END_TEST

START_TEST(test_bounds) {
  setup_server(2, 1);
  counter c = {0};
  dst_dns_watch *w1 = NULL, *w2 = NULL, *w3 = NULL;
  ck_assert_int_eq(dst_dns_watch_new(r, "c.test", on_change, &c, &w1), 0);
  ck_assert_int_eq(dst_dns_watch_new(r, "d.test", on_change, &c, &w2), 0);
  /* Full, and both watched (and queued): a third name is refused. */
  ck_assert_int_eq(dst_dns_watch_new(r, "a.test", on_change, &c, &w3), MESH_ERR_LIMIT);
  ck_assert_ptr_nonnull(answer_of(w1));
  ck_assert_ptr_nonnull(answer_of(w2)); /* one at a time, both answered */
  ck_assert_int_eq(dst_dns_watch_new(r, "a.test", on_change, &c, &w3), MESH_ERR_LIMIT);
  /* Once one is unwatched, it makes room. */
  dst_dns_watch_free(w1);
  ck_assert_int_eq(dst_dns_watch_new(r, "a.test", on_change, &c, &w3), 0);
  ck_assert_ptr_nonnull(answer_of(w3));
  ck_assert(rendered("destination_dns_names 2"));
  /* c.test was dropped: watching it again asks again. */
  dst_dns_watch_free(w3);
  ck_assert_int_eq(dst_dns_watch_new(r, "c.test", on_change, &c, &w1), 0);
  ck_assert_ptr_nonnull(answer_of(w1));
  ck_assert_int_eq(find_zone("c.test")->queries, 2);
  dst_dns_watch_free(w1);
  dst_dns_watch_free(w2);
  teardown_server();
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("dst_dns");
  TCase *t = tcase_create("dns");
  tcase_set_timeout(t, 30);
  tcase_add_test(t, test_wants);
  tcase_add_test(t, test_servers);
  tcase_add_test(t, test_resolve_and_messages);
  tcase_add_test(t, test_shared_and_failing);
  tcase_add_test(t, test_bounds);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
