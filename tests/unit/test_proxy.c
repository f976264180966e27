/* Unit tests for proxy: the endpoints file (parsing, validation, lookups, bounds), options, and an in-process proxy's admin and lifecycle. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "proxy_internal.h"

#define WEB "web.default.serviceaccount.identity.linkerd.cluster.local"

static const char GOOD[] =
    "{\"services\": {\n"
    "  \"web.default.svc.cluster.local:80\": {\"endpoints\": [\n"
    "    {\"addr\": \"127.0.0.2:4143\", \"identity\": \"" WEB "\", \"weight\": 3},\n"
    "    {\"addr\": \"127.0.0.3:4143\", \"identity\": \"spiffe://cluster.local/ns/default/sa/web\","
    " \"port\": 8080}]},\n"
    "  \"127.0.0.2:8080\": {\"endpoints\": [{\"addr\": \"127.0.0.2:4143\", \"identity\": \"" WEB
    "\"}]},\n"
    "  \"[::1]:9090\": {\"endpoints\": [{\"addr\": \"[::1]:9091\"}]},\n"
    "  \"Legacy.Example.COM:443\": {\"endpoints\": []}\n"
    "}}\n";

/* Parse buf; on failure return the first diagnostic in *msg (static buffer). */
static int parse(mesh_ctx *ctx, const char *buf, mesh_proxy_endpoints **ret, const char **msg) {
  static char text[1024];
  mesh_diags *d;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  int rc = mesh_proxy_endpoints_parse(ctx, buf, strlen(buf), "eps.json", d, ret);
  snprintf(text, sizeof text, "%s", mesh_diags_count(d) ? mesh_diags_text(d, 0) : "");
  if (msg) *msg = text;
  if (rc == 0) ck_assert_int_eq(mesh_diags_errors(d), 0);
  else ck_assert_uint_gt(mesh_diags_errors(d), 0);
  mesh_diags_free(d);
  return rc;
}

START_TEST(endpoints_good) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_proxy_endpoints *e = NULL;
  const char *msg;
  int rc = parse(ctx, GOOD, &e, &msg);
  ck_assert_msg(rc == 0, "%s", msg);
  ck_assert_uint_eq(mesh_proxy_endpoints_service_count(e), 4);
  /* Sorted, canonical, lowercased keys. */
  ck_assert_str_eq(mesh_proxy_endpoints_service(e, 0), "127.0.0.2:8080");
  ck_assert_str_eq(mesh_proxy_endpoints_service(e, 1), "[::1]:9090");
  ck_assert_str_eq(mesh_proxy_endpoints_service(e, 2), "legacy.example.com:443");
  ck_assert_str_eq(mesh_proxy_endpoints_service(e, 3), "web.default.svc.cluster.local:80");
  ck_assert_ptr_null(mesh_proxy_endpoints_service(e, 4));
  size_t i;
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, "WEB.default.svc.cluster.local:80", &i), 0);
  ck_assert_uint_eq(i, 3);
  ck_assert_uint_eq(mesh_proxy_endpoints_count(e, i), 2);
  ck_assert_str_eq(mesh_proxy_endpoints_addr(e, i, 0), "127.0.0.2:4143");
  ck_assert_str_eq(mesh_proxy_endpoints_identity(e, i, 0), WEB);
  ck_assert_uint_eq(mesh_proxy_endpoints_weight(e, i, 0), 3);
  ck_assert_uint_eq(mesh_proxy_endpoints_port(e, i, 0), 0);
  /* The SPIFFE form is kept in DNS form. */
  ck_assert_str_eq(mesh_proxy_endpoints_identity(e, i, 1), WEB);
  ck_assert_uint_eq(mesh_proxy_endpoints_weight(e, i, 1), 1);
  ck_assert_uint_eq(mesh_proxy_endpoints_port(e, i, 1), 8080);
  /* An original destination in IPv6 form finds its key. */
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, "[0:0::1]:9090", &i), 0);
  ck_assert_uint_eq(i, 1);
  ck_assert_ptr_null(mesh_proxy_endpoints_identity(e, i, 0));
  ck_assert_str_eq(mesh_proxy_endpoints_addr(e, i, 0), "[::1]:9091");
  socklen_t len;
  const struct sockaddr *sa = mesh__proxy_endpoints_sockaddr(e, i, 0, &len);
  ck_assert_ptr_nonnull(sa);
  ck_assert_int_eq(sa->sa_family, AF_INET6);
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, "127.0.0.2:8081", &i), MESH_ERR_NOT_FOUND);
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, "garbage", &i), MESH_ERR_NOT_FOUND);
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, NULL, &i), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_endpoints_find(e, "legacy.example.com:443", &i), 0);
  ck_assert_uint_eq(mesh_proxy_endpoints_count(e, i), 0);
  /* Out of range. */
  ck_assert_ptr_null(mesh_proxy_endpoints_addr(e, 99, 0));
  ck_assert_uint_eq(mesh_proxy_endpoints_weight(e, 0, 99), 0);
  ck_assert_uint_eq(mesh_proxy_endpoints_count(NULL, 0), 0);
  /* References. */
  ck_assert_ptr_eq(mesh_proxy_endpoints_ref(e), e);
  mesh_proxy_endpoints_unref(e);
  mesh_proxy_endpoints_unref(e);
  mesh_proxy_endpoints_unref(NULL);
  mesh_ctx_free(ctx);
}
END_TEST

/* Each invalid file and a piece of the diagnostic it must give. */
static const struct {
  const char *json, *says;
  int rc;
} BAD[] = {
    {"{\"services\": {", "invalid JSON", MESH_ERR_PARSE},
    {"[]", "top level", MESH_ERR_PARSE},
    {"{}", "\"services\": required", MESH_ERR_PARSE},
    {"{\"services\": {}, \"extra\": 1}", "unknown top-level field \"extra\"", MESH_ERR_PARSE},
    {"{\"services\": {\"web\": {\"endpoints\": []}}}", "not an authority", MESH_ERR_PARSE},
    {"{\"services\": {\"web:0\": {\"endpoints\": []}}}", "not an authority", MESH_ERR_PARSE},
    {"{\"services\": {\"web:65536\": {\"endpoints\": []}}}", "not an authority", MESH_ERR_PARSE},
    {"{\"services\": {\"we_b:80\": {\"endpoints\": []}}}", "not an authority", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": []}}", "not an object", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {}}}", "endpoints: required", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [], \"x\": 1}}}", "unknown field \"x\"",
     MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [1]}}}", "not an object", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{}]}}}", "addr: required", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"web:80\"}]}}}", "numeric",
     MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:0\"}]}}}", "numeric",
     MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4\"}]}}}", "numeric",
     MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"identity\": "
     "\"web\"}]}}}",
     "not a workload identity", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"weight\": 0}]}}}",
     "weight", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"weight\": 1.5}]}}}",
     "weight", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"port\": 80}]}}}",
     "needs an identity", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"identity\": \"" WEB
     "\", \"port\": 0}]}}}",
     "port", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\", \"adr\": 1}]}}}",
     "unknown field \"adr\"", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": [{\"addr\": \"1.2.3.4:1\"}, {\"addr\": "
     "\"1.2.3.4:1\"}]}}}",
     "listed twice", MESH_ERR_PARSE},
    {"{\"services\": {\"WEB:80\": {\"endpoints\": []}, \"web:80\": {\"endpoints\": []}}}",
     "listed twice", MESH_ERR_PARSE},
    {"{\"services\": {\"web:80\": {\"endpoints\": []}, \"web:80\": {\"endpoints\": []}}}",
     "duplicate", MESH_ERR_PARSE},
};

START_TEST(endpoints_bad) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  const char *json = BAD[_i].json, *says = BAD[_i].says;
  mesh_proxy_endpoints *e = (mesh_proxy_endpoints *)0x1;
  const char *msg;
  int rc = parse(ctx, json, &e, &msg);
  ck_assert_msg(rc == BAD[_i].rc, "%s: rc %d", json, rc);
  ck_assert_ptr_eq(e, (mesh_proxy_endpoints *)0x1); /* untouched on failure */
  ck_assert_msg(strstr(msg, says) != NULL, "%s: '%s' lacks '%s'", json, msg, says);
  ck_assert_msg(strncmp(msg, "eps.json:", 9) == 0, "diagnostic names the file: %s", msg);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(endpoints_syntax_position) {
  mesh_ctx *ctx;
  mesh_diags *d;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  const char *j = "{\"services\": {\n  \"web:80\": {\"endpoints\": [}\n}}";
  mesh_proxy_endpoints *e;
  ck_assert_int_eq(mesh_proxy_endpoints_parse(ctx, j, strlen(j), "f.json", d, &e), MESH_ERR_PARSE);
  ck_assert_uint_eq(mesh_diags_line(d, 0), 2);
  ck_assert_uint_gt(mesh_diags_column(d, 0), 0);
  mesh_diags_free(d);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(endpoints_limits) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  mesh_proxy_endpoints *e;
  /* Too many endpoints in a service. */
  size_t cap = 64 * (MESH_PROXY_SERVICE_ENDPOINTS_MAX + 2) + 64, n = 0;
  char *buf = malloc(cap);
  n += (size_t)snprintf(buf + n, cap - n, "{\"services\": {\"web:80\": {\"endpoints\": [");
  for (unsigned i = 0; i <= MESH_PROXY_SERVICE_ENDPOINTS_MAX; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s{\"addr\": \"10.%u.%u.1:80\"}", i ? "," : "",
                          i / 256, i % 256);
  snprintf(buf + n, cap - n, "]}}}");
  const char *msg;
  ck_assert_int_eq(parse(ctx, buf, &e, &msg), MESH_ERR_PARSE);
  ck_assert_msg(strstr(msg, "over the limit") != NULL, "%s", msg);
  free(buf);
  /* Too large a file: refused before parsing. */
  mesh_diags *d;
  ck_assert_int_eq(mesh_diags_new(ctx, &d), 0);
  ck_assert_int_eq(mesh_proxy_endpoints_parse(ctx, "{}", MESH_PROXY_ENDPOINTS_MAX_BYTES + 1, NULL,
                                              d, &e),
                   MESH_ERR_LIMIT);
  ck_assert_uint_eq(mesh_diags_errors(d), 1);
  mesh_diags_free(d);
  ck_assert_int_eq(mesh_proxy_endpoints_parse(NULL, "{}", 2, NULL, NULL, &e), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_endpoints_parse(ctx, NULL, 2, NULL, NULL, &e), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_endpoints_load(ctx, "/nonexistent/eps.json", NULL, &e), MESH_ERR_IO);
  mesh_ctx_free(ctx);
}
END_TEST

static int op_parse(mesh_ctx *ctx, void *arg) {
  mesh_proxy_endpoints *e = NULL;
  int rc = mesh_proxy_endpoints_parse(ctx, arg, strlen(arg), NULL, NULL, &e);
  mesh_proxy_endpoints_unref(e);
  return rc;
}

START_TEST(endpoints_alloc_failures) {
  ck_assert_int_gt(test_alloc_failures(op_parse, (void *)GOOD), 5);
}
END_TEST

START_TEST(endpoints_load_file) {
  mesh_ctx *ctx;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  char path[] = "/tmp/test_proxy_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, GOOD, strlen(GOOD)), (ssize_t)strlen(GOOD));
  close(fd);
  mesh_proxy_endpoints *e;
  ck_assert_int_eq(mesh_proxy_endpoints_load(ctx, path, NULL, &e), 0);
  ck_assert_uint_eq(mesh_proxy_endpoints_service_count(e), 4);
  mesh_proxy_endpoints_unref(e);
  unlink(path);
  mesh_ctx_free(ctx);
}
END_TEST

START_TEST(addresses) {
  struct sockaddr_storage ss;
  socklen_t len;
  const char *why = NULL;
  char buf[64];
  ck_assert_int_eq(mesh__proxy_addr_parse("127.0.0.1:4140", 0, &ss, &len, &why), 0);
  mesh__proxy_addr_format((struct sockaddr *)&ss, buf, sizeof buf);
  ck_assert_str_eq(buf, "127.0.0.1:4140");
  ck_assert_int_eq(mesh__proxy_addr_parse("[::ffff:1.2.3.4]:1", 0, &ss, &len, &why), 0);
  ck_assert_int_eq(mesh__proxy_addr_parse("0.0.0.0:0", 1, &ss, &len, &why), 0);
  ck_assert_int_eq(mesh__proxy_addr_parse("0.0.0.0:0", 0, &ss, &len, &why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  const char *bad[] = {"", ":80", "1.2.3.4:", "1.2.3.4:080", "1.2.3.4:99999", "[::1]80",
                       "[::1:80", "localhost:80", "1.2.3.4:8a", "1.2.3:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    ck_assert_msg(mesh__proxy_addr_parse(bad[i], 1, &ss, &len, NULL) == MESH_ERR_PARSE, "%s",
                  bad[i]);
}
END_TEST

START_TEST(transport_header) {
  uint8_t buf[2 + MESH_PROXY_HEADER_MAX + 8];
  size_t len, used;
  uint16_t port = 0;
  int h2 = -1;
  ck_assert_int_eq(mesh__proxy_header_write(8080, 0, buf, sizeof buf, &len), 0);
  ck_assert_uint_eq(len, 2 + strlen("{\"port\":8080}"));
  ck_assert_int_eq(buf[0], 0);
  ck_assert_int_eq(buf[1], (int)len - 2);
  ck_assert_int_eq(mesh__proxy_header_write(0, 0, buf, sizeof buf, &len), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh__proxy_header_write(1, 0, buf, 4, &len), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh__proxy_header_write(8080, 0, buf, sizeof buf, &len), 0);
  /* Every prefix needs more; the whole parses, trailing bytes untouched. */
  for (size_t i = 0; i < len; i++)
    ck_assert_int_eq(mesh__proxy_header_parse(buf, i, &used, &port, &h2), 1);
  memcpy(buf + len, "app", 3);
  ck_assert_int_eq(mesh__proxy_header_parse(buf, len + 3, &used, &port, &h2), 0);
  ck_assert_uint_eq(used, len);
  ck_assert_uint_eq(port, 8080);
  ck_assert_int_eq(h2, 0);
  /* HTTP/2 between the proxies. */
  ck_assert_int_eq(mesh__proxy_header_write(8081, 1, buf, sizeof buf, &len), 0);
  ck_assert_int_eq(mesh__proxy_header_parse(buf, len, &used, &port, &h2), 0);
  ck_assert_uint_eq(port, 8081);
  ck_assert_int_eq(h2, 1);
  /* Other fields are ignored (later versions may add some). */
  const char *ext = "{\"name\":\"web.default.svc.cluster.local:80\",\"port\":9}";
  buf[0] = 0;
  buf[1] = (uint8_t)strlen(ext);
  memcpy(buf + 2, ext, strlen(ext));
  ck_assert_int_eq(mesh__proxy_header_parse(buf, 2 + strlen(ext), &used, &port, &h2), 0);
  ck_assert_uint_eq(port, 9);
  /* Invalid: lengths out of range, no port, a bad port, not JSON. */
  const char *bad[] = {"{}", "{\"port\":0}", "{\"port\":65536}", "{\"port\":\"80\"}",
                       "[80]", "{\"port\":80", "{\"port\":80,\"port\":81}", "x",
                       "{\"port\":80,\"proto\":\"h3\"}", "{\"port\":80,\"proto\":2}"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t n = strlen(bad[i]);
    buf[0] = 0;
    buf[1] = (uint8_t)n;
    memcpy(buf + 2, bad[i], n);
    ck_assert_msg(mesh__proxy_header_parse(buf, 2 + n, &used, &port, &h2) == MESH_ERR_PARSE, "%s",
                  bad[i]);
  }
  buf[0] = 0;
  buf[1] = 0;
  ck_assert_int_eq(mesh__proxy_header_parse(buf, 2, &used, &port, &h2), MESH_ERR_PARSE);
  buf[0] = (uint8_t)((MESH_PROXY_HEADER_MAX + 1) >> 8);
  buf[1] = (uint8_t)(MESH_PROXY_HEADER_MAX + 1);
  ck_assert_int_eq(mesh__proxy_header_parse(buf, 2, &used, &port, &h2), MESH_ERR_PARSE);
  /* The largest allowed header: a port padded with spaces to 1 KiB. */
  memset(buf + 2, ' ', MESH_PROXY_HEADER_MAX);
  memcpy(buf + 2, "{\"port\":7}", 10);
  buf[0] = (uint8_t)(MESH_PROXY_HEADER_MAX >> 8);
  buf[1] = (uint8_t)MESH_PROXY_HEADER_MAX;
  ck_assert_int_eq(mesh__proxy_header_parse(buf, 2 + MESH_PROXY_HEADER_MAX, &used, &port, &h2), 0);
  ck_assert_uint_eq(port, 7);
}
END_TEST

START_TEST(options) {
  mesh_ctx *ctx;
  mesh_proxy_opts *o;
  const char *why = NULL;
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_proxy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "localhost:4143", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_add_port_map(o, "127.0.0.1:5000=web.default.svc:80", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_add_port_map(o, "127.0.0.1:5000", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_add_port_map(o, "127.0.0.1:5000=web", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_add_port_map(o, "127.0.0.1:0=web:80", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_ports(o, "8080,9090", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_ports(o, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_ports(o, "8080,", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_ports(o, "0", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_ports(o, "65536", &why), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_connect_timeout(o, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_idle_timeout(o, 0), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_max_connections(o, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_buffer_bytes(o, 100), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_buffer_bytes(o, 65536), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_connect_timeout(NULL, 1), MESH_ERR_INVALID);
  /* Fail-fast: either side, never 0 (a request must be able to wait at all). */
  ck_assert_int_eq(mesh_proxy_opts_set_failfast_timeout(o, 0, 3000), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_failfast_timeout(o, 1, 1), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_failfast_timeout(o, 1, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_failfast_timeout(NULL, 0, 1), MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_opts_set_queue_capacity(o, 0, 1), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_queue_capacity(o, 0, 0), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_queue_capacity(NULL, 1, 5), MESH_ERR_INVALID);
  /* Self-certification: an address the rpc client can dial without a
   * resolver, a service account that can be part of an identity. */
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "127.0.0.1:8080", "t", "web", "ca", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "localhost:8080", "t", "web", "ca", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "[::1]:8080", "t", "web", "ca", &why), 0);
  why = NULL;
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "identity.linkerd:8080", "t", "web", "ca",
                                                        &why), MESH_ERR_PARSE);
  ck_assert_ptr_nonnull(why);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "localhost:x", "t", "web", "ca", &why),
                   MESH_ERR_PARSE);
  why = NULL;
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "127.0.0.1:8080", "t", "Web_1", "ca", &why),
                   MESH_ERR_PARSE);
  ck_assert_msg(why && strstr(why, "service account"), "%s", why ? why : "(null)");
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "127.0.0.1:8080", NULL, "web", "ca", &why),
                   MESH_ERR_INVALID);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "", NULL, NULL, NULL, &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service_name(o, "identity.linkerd", &why),
                   MESH_ERR_PARSE);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service_name(
                       o, "identity.mesh.serviceaccount.identity.mesh.example.org", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service_name(o, NULL, &why), 0);
  mesh_proxy_opts_free(o);
  mesh_proxy_opts_free(NULL);
  mesh_ctx_free(ctx);
}
END_TEST

/* An in-process proxy on free ports, without credentials: not ready, the
 * listeners bound, an outbound connection to an unknown port map closed and
 * counted, shutdown finishing at once with no connections. */
static int finished;
static void on_done(void *ud) {
  finished = 1;
  event_base_loopbreak(ud);
}

static void stop_loop(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  event_base_loopbreak(arg);
}

START_TEST(proxy_lifecycle) {
  mesh_ctx *ctx;
  mesh_proxy_opts *o;
  mesh_proxy *p;
  const char *why = NULL;
  struct event_base *base = event_base_new();
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_proxy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_admin_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_dir(o, "/nonexistent"), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_on_shutdown(o, on_done, base), 0);
  int rc = mesh_proxy_new(ctx, base, o, &why, &p);
  ck_assert_msg(rc == 0, "%s: %s", mesh_strerror(rc), why ? why : "");
  mesh_proxy_opts_free(o);
  ck_assert_uint_gt(mesh_proxy_port(p, MESH_PROXY_LISTENER_OUTBOUND), 0);
  ck_assert_uint_gt(mesh_proxy_port(p, MESH_PROXY_LISTENER_INBOUND), 0);
  ck_assert_uint_gt(mesh_proxy_port(p, MESH_PROXY_LISTENER_ADMIN), 0);
  ck_assert_int_eq(mesh_proxy_ready(p), 0);

  /* A direct connection to the transparent listener has no original
   * destination: explicit mode, where only HTTP can be routed; anything
   * else is closed and counted once detection has seen it. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(mesh_proxy_port(p, MESH_PROXY_LISTENER_OUTBOUND));
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
  ck_assert_int_eq(write(fd, "hello\n", 6), 6);
  struct timeval tv = {0, 200000};
  struct event *t = evtimer_new(base, stop_loop, base);
  evtimer_add(t, &tv);
  event_base_dispatch(base);
  char c;
  ck_assert_int_eq(read(fd, &c, 1), 0); /* closed by the proxy */
  close(fd);
  char *text;
  size_t len;
  ck_assert_int_eq(mesh_proxy_metrics(p, &text, &len), 0);
  ck_assert_msg(strstr(text, "outbound_tcp_errors_total{error=\"no_original_dst\"") != NULL, "%s",
                text);
  mesh_free_string(ctx, text);
  ck_assert_uint_eq(mesh_proxy_connections(p), 0);

  mesh_proxy_shutdown(p);
  mesh_proxy_shutdown(p); /* harmless */
  tv.tv_sec = 5;
  evtimer_add(t, &tv);
  event_base_dispatch(base);
  ck_assert_int_eq(finished, 1);
  event_free(t);
  mesh_proxy_free(p);
  mesh_proxy_free(NULL);
  event_base_free(base);
  mesh_ctx_free(ctx);
}
END_TEST

/* --register: its options, and the starts it refuses (nothing to name the
 * workload by, or a wildcard address that is no workload's). */
START_TEST(register_options) {
  mesh_ctx *ctx;
  mesh_proxy_opts *o;
  mesh_proxy *p = NULL;
  const char *why = NULL;
  struct event_base *base = event_base_new();
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_proxy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 1, 0, "http=8080,grpc=9090", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 1, 3, NULL, &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 1, 300, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 1, 2, NULL, &why), MESH_ERR_RANGE);
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 1, 301, NULL, &why), MESH_ERR_RANGE);
  static const char *const bad[] = {"http", "http=", "=8080", "http=0", "http=65536", "http=80x",
                                    "http=8080,", "a-name-over-15-bytes=80"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    why = NULL;
    ck_assert_msg(mesh_proxy_opts_set_register(o, 1, 0, bad[i], &why) == MESH_ERR_PARSE, "%s", bad[i]);
    ck_assert_ptr_nonnull(why);
  }
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_admin_addr(o, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_destination_addr(o, "127.0.0.1:1", &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), MESH_ERR_INVALID);
  ck_assert_ptr_null(p);
  ck_assert_ptr_nonnull(strstr(why, "workload name"));
  ck_assert_int_eq(mesh_proxy_opts_set_workload_name(o, "web-1", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "0.0.0.0:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), MESH_ERR_INVALID);
  ck_assert_ptr_nonnull(strstr(why, "not 0.0.0.0"));
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), 0);
  mesh_proxy_free(p);
  /* Off: none of that is needed. */
  ck_assert_int_eq(mesh_proxy_opts_set_register(o, 0, 0, NULL, &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "0.0.0.0:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), 0);
  mesh_proxy_free(p);
  mesh_proxy_opts_free(o);
  mesh_ctx_free(ctx);
  event_base_free(base);
}
END_TEST

START_TEST(proxy_bad_start) {
  mesh_ctx *ctx;
  mesh_proxy_opts *o;
  mesh_proxy *p = NULL;
  const char *why = NULL;
  struct event_base *base = event_base_new();
  ck_assert_int_eq(mesh_ctx_new(&ctx), 0);
  ck_assert_int_eq(mesh_proxy_opts_new(ctx, &o), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_inbound_addr(o, "", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_admin_addr(o, "", &why), 0);
  /* A bad endpoints file refuses to start, with the diagnostic. */
  char path[] = "/tmp/test_proxy_XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_eq(write(fd, "{\"services\": 1}", 15), 15);
  close(fd);
  ck_assert_int_eq(mesh_proxy_opts_set_endpoints_file(o, path), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), MESH_ERR_PARSE);
  ck_assert_ptr_null(p);
  ck_assert_msg(strstr(why, path) != NULL, "%s", why);
  unlink(path);
  /* A port already taken. */
  ck_assert_int_eq(mesh_proxy_opts_set_endpoints_file(o, NULL), 0);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sin = {0};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(l, (struct sockaddr *)&sin, sizeof sin), 0);
  ck_assert_int_eq(listen(l, 1), 0);
  socklen_t sl = sizeof sin;
  getsockname(l, (struct sockaddr *)&sin, &sl);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", (unsigned)ntohs(sin.sin_port));
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, addr, &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), MESH_ERR_IO);
  ck_assert_msg(strstr(why, addr) != NULL, "%s", why);
  close(l);
  /* Credentials from mesh-identity and from files at once: two sources
   * would overwrite each other's certificate. */
  ck_assert_int_eq(mesh_proxy_opts_set_outbound_addr(o, "127.0.0.1:0", &why), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_dir(o, "/nonexistent"), 0);
  ck_assert_int_eq(mesh_proxy_opts_set_identity_service(o, "127.0.0.1:1", "t", "web", "ca", &why), 0);
  ck_assert_int_eq(mesh_proxy_new(ctx, base, o, &why, &p), MESH_ERR_INVALID);
  ck_assert_ptr_null(p);
  ck_assert_msg(strstr(why, "not both") != NULL, "%s", why);
  mesh_proxy_opts_free(o);
  event_base_free(base);
  mesh_ctx_free(ctx);
}
END_TEST

/* The inbound side's logical destination: l5d-dst-canonical when it is a
 * host:port within the bound, else the authority with the scheme's port. */
START_TEST(inbound_dst) {
  char out[300];
  const char *fqdn = "web.default.svc.cluster.local:80";
  ck_assert_int_eq(mesh__proxy_inbound_dst("Web.Default.svc.cluster.local:80", "ignored:8080", NULL,
                                           out, sizeof out),
                   0);
  ck_assert_str_eq(out, fqdn);
  const char *host = "web.default.svc.cluster.local";
  ck_assert_int_eq(mesh__proxy_inbound_dst(NULL, host, NULL, out, sizeof out), 0);
  ck_assert_str_eq(out, fqdn);
  ck_assert_int_eq(mesh__proxy_inbound_dst(NULL, host, "https", out, sizeof out), 0);
  ck_assert_str_eq(out, "web.default.svc.cluster.local:443");
  ck_assert_int_eq(mesh__proxy_inbound_dst(NULL, "WEB:8080", "http", out, sizeof out), 0);
  ck_assert_str_eq(out, "web:8080");
  ck_assert_int_eq(mesh__proxy_inbound_dst("[fd00::7]:8080", NULL, NULL, out, sizeof out), 0);
  ck_assert_str_eq(out, "[fd00::7]:8080");
  /* Forged or malformed values are not destinations: the authority is used. */
  static const char *const bad[] = {"web.default.svc.cluster.local", "web:0", "web:65536",
                                    "web:80x", "web:", ":80", "web/../x:80", "web :80",
                                    "we\r\nb:80", "[fd00::7:80", "web:80:80", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(mesh__proxy_inbound_dst(bad[i], "web.default.svc.cluster.local:80", NULL, out,
                                          sizeof out) == 0 && !strcmp(out, fqdn),
                  "%s", bad[i]);
    ck_assert_msg(mesh__proxy_inbound_dst(NULL, bad[i], NULL, out, sizeof out) == MESH_ERR_PARSE ||
                      !strcmp(bad[i], "web.default.svc.cluster.local"),
                  "authority %s", bad[i]);
  }
  /* The bound: PROXY_INBOUND_DST_MAX bytes in all, a longer value is ignored whole. */
  char big[4096];
  memset(big, 'a', sizeof big);
  memcpy(big + sizeof big - 4, ":80", 4);
  const char *end = big + sizeof big - 1; /* the NUL */
  ck_assert_int_eq(mesh__proxy_inbound_dst(big, "web:80", NULL, out, sizeof out), 0);
  ck_assert_str_eq(out, "web:80");
  ck_assert_int_eq(mesh__proxy_inbound_dst(end - PROXY_INBOUND_DST_MAX, NULL, NULL, out, sizeof out),
                   0);
  ck_assert_uint_eq(strlen(out), PROXY_INBOUND_DST_MAX);
  ck_assert_int_eq(
      mesh__proxy_inbound_dst(end - PROXY_INBOUND_DST_MAX - 1, NULL, NULL, out, sizeof out),
      MESH_ERR_PARSE);
  ck_assert_int_eq(mesh__proxy_inbound_dst(NULL, NULL, NULL, out, sizeof out), MESH_ERR_PARSE);
  ck_assert_int_eq(mesh__proxy_inbound_dst(fqdn, NULL, NULL, out, 8), MESH_ERR_PARSE);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("proxy");
  TCase *tc = tcase_create("endpoints");
  tcase_add_test(tc, endpoints_good);
  tcase_add_loop_test(tc, endpoints_bad, 0, (int)(sizeof BAD / sizeof BAD[0]));
  tcase_add_test(tc, endpoints_syntax_position);
  tcase_add_test(tc, endpoints_limits);
  tcase_add_test(tc, endpoints_alloc_failures);
  tcase_add_test(tc, endpoints_load_file);
  tcase_add_test(tc, addresses);
  tcase_add_test(tc, transport_header);
  tcase_add_test(tc, inbound_dst);
  tcase_add_test(tc, options);
  suite_add_tcase(s, tc);
  TCase *tp = tcase_create("proxy");
  tcase_add_test(tp, proxy_lifecycle);
  tcase_add_test(tp, proxy_bad_start);
  tcase_add_test(tp, register_options);
  suite_add_tcase(s, tp);
  return s;
}

int main(void) { return test_main(make_suite()); }
