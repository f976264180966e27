/* Fuzz target: bytes from the network into the rpc server (as a client sent them) and the rpc client (as a server sent them). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/util.h>

#include <mesh/mesh.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Input: one byte choosing the side (even: server, odd: client), then the
 * bytes the peer sends, cut at MAX_INPUT so that a write never blocks. */
#define MAX_INPUT 200000u

static mesh_ctx *ctx;
static struct event_base *base;
static mesh_rpc_server *srv;
static uint16_t srv_port;
static int fake_fd = -1; /* a plain listener that plays the server for the client side */
static uint16_t fake_port;

static void h_unary(void *ud, mesh_rpc_call *call) {
  (void)ud;
  size_t len;
  mesh_rpc_call_body(call, &len);
  mesh_rpc_call_peer_address(call);
  mesh_rpc_reply(call, 200, len % 2 ? "{\"odd\":true}" : "{}");
}

static void h_stream(void *ud, mesh_rpc_call *call) {
  (void)ud;
  for (int i = 0; i < 3; i++) mesh_rpc_send(call, "{\"i\":1}");
  mesh_rpc_end(call);
}

static void on_close(void *ud, mesh_rpc_call *call) {
  (void)ud;
  mesh_rpc_end(call);
}

/* Keeps the stream open until the client goes (the subscription path). */
static void h_hold(void *ud, mesh_rpc_call *call) {
  (void)ud;
  mesh_rpc_call_on_close(call, on_close, NULL);
  mesh_rpc_send(call, "{\"held\":true}");
}

static int listen_plain(uint16_t *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 16) ||
      getsockname(fd, (struct sockaddr *)&sa, &len))
    abort();
  evutil_make_socket_nonblocking(fd);
  *port = ntohs(sa.sin_port);
  return fd;
}

static void setup(void) {
  signal(SIGPIPE, SIG_IGN);
  mesh_rpc_server_opts *o;
  if (mesh_ctx_new(&ctx) || !(base = event_base_new()) || mesh_rpc_server_opts_new(ctx, &o) ||
      mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_BODY, 4096) ||
      mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_HEADER_LIST, 2048) ||
      mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_STREAMS, 8) ||
      mesh_rpc_server_opts_set_limit(o, MESH_RPC_LIMIT_REQUEST_MS, 100) ||
      mesh_rpc_server_new(ctx, base, o, &srv) ||
      mesh_rpc_server_listen(srv, "127.0.0.1:0", &srv_port) ||
      mesh_rpc_server_handle(srv, "/a", h_unary, NULL) ||
      mesh_rpc_server_handle(srv, "/s", h_stream, NULL) ||
      mesh_rpc_server_handle(srv, "/h", h_hold, NULL))
    abort();
  mesh_rpc_server_opts_free(o);
  fake_fd = listen_plain(&fake_port);
}

/* Closes with a reset rather than a FIN: at thousands of runs a second,
 * TIME_WAIT would otherwise use up the ephemeral ports within seconds. */
static void close_now(int fd) {
  struct linger l = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  close(fd);
}

/* -1 when the machine cannot give a connection now (the run is skipped;
 * it says nothing about the code under test). */
static int connect_to(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
  if (fd >= 0) close(fd);
  return -1;
}

static void send_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t k = write(fd, p, n);
    if (k <= 0) return; /* the peer closed early: fine */
    p += k;
    n -= (size_t)k;
  }
}

static uint64_t now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what, (void)arg;
}

/* One loop turn, woken at least every 5 ms. */
static void turn(void) {
  struct event *t = evtimer_new(base, on_tick, NULL);
  struct timeval tv = {0, 5000};
  evtimer_add(t, &tv);
  event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
}

/* Server side: the input is what a client sends; then it half-closes and
 * waits for the server to finish with the connection. */
static void as_client_of_server(const uint8_t *data, size_t size) {
  int fd = connect_to(srv_port);
  if (fd < 0) return;
  send_all(fd, data, size);
  shutdown(fd, SHUT_WR);
  evutil_make_socket_nonblocking(fd);
  uint64_t end = now_ms() + 2000;
  char buf[65536];
  for (;;) {
    turn();
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
    }
    if (n == 0 || now_ms() > end) break;
  }
  close_now(fd);
  while (mesh_rpc_server_connections(srv) > 0 && now_ms() < end + 1000) turn();
  if (mesh_rpc_server_connections(srv) > 0) abort(); /* a connection that never ends */
}

static int results;

static void on_reply(void *ud, int status, const char *body, size_t len, const char *err) {
  (void)ud, (void)status, (void)err;
  if (body && body[len] != '\0') abort(); /* NUL-terminated (and may hold NULs) */
  results++;
}

static void on_message(void *ud, const char *line, size_t len) {
  (void)ud;
  if (line[len] != '\0' || len == 0 || len > MESH_RPC_CLIENT_LINE_MAX) abort();
}

static void on_end(void *ud, int status, const char *err) {
  (void)ud, (void)status, (void)err;
  results++;
}

/* Client side: the input is what the server sends to a unary call and a
 * stream; then the server closes. */
static void as_server_of_client(const uint8_t *data, size_t size) {
  mesh_rpc_client *cl;
  char addr[32];
  snprintf(addr, sizeof addr, "127.0.0.1:%u", fake_port);
  if (mesh_rpc_client_new(ctx, base, NULL, addr, NULL, &cl)) abort();
  results = 0;
  if (mesh_rpc_client_call(cl, "/a", "{}", 2, 1000, on_reply, NULL) ||
      mesh_rpc_client_stream(cl, "/s", "{}", 2, on_message, on_end, NULL, NULL))
    abort();
  uint64_t end = now_ms() + 2000;
  int fd = -1;
  while (fd < 0 && now_ms() < end) {
    turn();
    fd = accept(fake_fd, NULL, NULL);
  }
  if (fd < 0) abort();
  send_all(fd, data, size);
  shutdown(fd, SHUT_WR);
  evutil_make_socket_nonblocking(fd);
  char buf[65536];
  while (results < 2 && now_ms() < end) {
    turn();
    while (read(fd, buf, sizeof buf) > 0) {
    }
  }
  close_now(fd);
  while (results < 2 && now_ms() < end + 1000) turn();
  if (results != 2) abort(); /* every call ends, whatever the server says */
  mesh_rpc_client_free(cl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ctx) setup();
  if (size < 1) return 0;
  size_t n = size - 1 > MAX_INPUT ? MAX_INPUT : size - 1;
  if (data[0] % 2 == 0) as_client_of_server(data + 1, n);
  else as_server_of_client(data + 1, n);
  return 0;
}
