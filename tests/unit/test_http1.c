/* Unit tests for http1: the HTTP/1 codec over socketpairs, client against server and raw bytes against each side. */
#include "testutil.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http_internal.h"

/* One test's world: a server connection and a client connection (or a
 * raw socket in place of one of them), driven by one event_base. */
static struct {
  test_alloc a;
  mesh_ctx *ctx;
  struct event_base *base;
  struct event *tick;
  mh_limits lim;
  char log[4096];
  /* server side */
  mh_conn *sc;
  struct bufferevent *sbev;
  int s_closed, s_close_err, nreq, s_resets, s_reset_err;
  mh_stream *ss;
  mh_head sreq;
  struct evbuffer *sbody;
  size_t s_trailers;
  struct bufferevent *upg;
  /* slow sink */
  struct evbuffer *slow_in;
  struct event *slow_timer;
  size_t sunk, max_in, max_input;
  /* client side */
  mh_conn *cc;
  int c_closed, c_close_err;
  mh_stream *cs;
  int status, c_heads, c_end_stream, c_end, c_reset, c_reset_err, c_upgraded, c_xa, c_xb;
  struct evbuffer *cbody;
  char c_trailer[64];
  size_t send_left, max_pending;
  struct bufferevent *cupg;
} T;

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
  size_t n = strlen(T.log);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(T.log + n, sizeof T.log - n, fmt, ap);
  va_end(ap);
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

/* Run the loop until *flag or ms have passed; returns *flag. */
static int spin(int *flag, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (!*flag && now_ms() < end) event_base_loop(T.base, EVLOOP_ONCE);
  return *flag;
}

/* ---- The server application ----------------------------------------------------------- */

static void srv_respond(void);

static void s_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  (void)ud;
  size_t n = evbuffer_get_length(buf);
  if (n > T.max_in) T.max_in = n;
  if (T.sbev) {
    size_t in = evbuffer_get_length(bufferevent_get_input(T.sbev));
    if (in > T.max_input) T.max_input = in;
  }
  if (T.sreq.path && strcmp(T.sreq.path, "/sink") == 0) {
    T.slow_in = buf; /* the slow timer takes it */
    return;
  }
  evbuffer_add_buffer(T.sbody, buf);
  mh_stream_consumed(s, n);
}

static void s_on_end(mh_stream *s, mh_head *tr, void *ud) {
  (void)s;
  (void)ud;
  T.s_trailers = tr ? tr->n : 0;
  logf_("end;");
  srv_respond();
}

static void s_on_reset(mh_stream *s, int err, void *ud) {
  (void)s;
  (void)ud;
  logf_("sreset %d;", err);
  T.s_resets++;
  T.s_reset_err = err;
  T.ss = NULL;
  T.slow_in = NULL;
}

static const mh_stream_cbs srv_scbs = {.on_data = s_on_data, .on_end = s_on_end, .on_reset = s_on_reset};

static void on_request(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud) {
  (void)c;
  (void)ud;
  T.nreq++;
  logf_("req %s %s;", req->method, req->path);
  if (mh_head_copy(T.ctx, &T.sreq, req)) { /* allocation failure injected */
    ck_assert_int_ge(T.a.fail_after, 0);
    mh_stream_reset(s, 0);
    return;
  }
  T.ss = s;
  evbuffer_drain(T.sbody, evbuffer_get_length(T.sbody));
  mh_stream_set_cbs(s, &srv_scbs, NULL);
  if (strcmp(req->path, "/reset") == 0) {
    mh_stream_reset(s, 0);
    T.ss = NULL;
    return;
  }
  if (end_stream || strcmp(req->path, "/early") == 0) srv_respond();
}

static void s_on_close(mh_conn *c, int err, void *ud) {
  (void)c;
  (void)ud;
  logf_("sclose %d;", err);
  T.s_closed = 1;
  T.s_close_err = err;
  T.sc = NULL;
  T.sbev = NULL;
}

static void upg_read(struct bufferevent *bev, void *arg) {
  (void)arg;
  struct evbuffer *in = bufferevent_get_input(bev);
  if (!evbuffer_get_length(in)) return;
  bufferevent_write(bev, "got:", 4);
  bufferevent_write_buffer(bev, in);
}

static void s_on_upgrade(mh_conn *c, struct bufferevent *bev, void *ud) {
  (void)c;
  (void)ud;
  logf_("upgrade;");
  T.upg = bev;
  T.sc = NULL;
  T.sbev = NULL;
  bufferevent_setcb(bev, upg_read, NULL, NULL, NULL);
  bufferevent_enable(bev, EV_READ | EV_WRITE);
  upg_read(bev, NULL); /* bytes that came behind the head */
}

static const mh_conn_cbs srv_ccbs = {.on_request = on_request, .on_close = s_on_close,
                                     .on_upgrade = s_on_upgrade};

static void srv_respond(void) {
  mh_stream *s = T.ss;
  const char *path = T.sreq.path;
  mh_head h;
  mh_head_init(&h);
  struct evbuffer *b = evbuffer_new();
  if (strcmp(path, "/hold") == 0) {
    /* the test answers */
  } else if (strcmp(path, "/early") == 0) {
    h.status = 403;
    h.content_length = 0;
    ck_assert_int_eq(mh_stream_send_head(s, &h, 1), 0);
  } else if (strcmp(path, "/ws") == 0) {
    h.status = 101;
    ck_assert_int_eq(mh_stream_send_head(s, &h, 1), 0);
  } else if (strcmp(path, "/204") == 0) {
    h.status = 204;
    ck_assert_int_eq(mh_stream_send_head(s, &h, 1), 0);
  } else if (strcmp(path, "/echo") == 0) {
    h.status = 200;
    mh_head_add(T.ctx, &h, "x-echo", "1");
    ck_assert_int_eq(mh_stream_send_head(s, &h, 0), 0);
    size_t n = evbuffer_get_length(T.sbody);
    evbuffer_add_buffer(b, T.sbody);
    ck_assert_int_eq(mh_stream_send_data(s, b, 0), 0);
    mh_head tr;
    mh_head_init(&tr);
    char num[32];
    snprintf(num, sizeof num, "%zu", n);
    mh_head_add(T.ctx, &tr, "x-len", num);
    ck_assert_int_eq(mh_stream_send_end(s, &tr), 0);
    mh_head_clear(&tr);
  } else {
    char body[64];
    if (strcmp(path, "/sink") == 0) snprintf(body, sizeof body, "%zu", T.sunk);
    else snprintf(body, sizeof body, "%s", path);
    h.status = 200;
    h.content_length = (int64_t)strlen(body);
    if (strcmp(T.sreq.method, "HEAD") == 0) {
      ck_assert_int_eq(mh_stream_send_head(s, &h, 1), 0);
    } else {
      ck_assert_int_eq(mh_stream_send_head(s, &h, 0), 0);
      evbuffer_add(b, body, strlen(body));
      ck_assert_int_eq(mh_stream_send_data(s, b, 1), 0);
    }
  }
  evbuffer_free(b);
  mh_head_clear(&h);
}

/* Takes 32 KiB from the sink's body every millisecond. */
static void on_slow(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
  if (!T.slow_in || !T.ss) return;
  size_t n = evbuffer_get_length(T.slow_in);
  if (n > 32768) n = 32768;
  if (!n) return;
  evbuffer_drain(T.slow_in, n);
  T.sunk += n;
  mh_stream_consumed(T.ss, n);
}

/* ---- The client application ----------------------------------------------------------- */

static void c_on_head(mh_stream *s, mh_head *h, int end_stream, void *ud) {
  (void)s;
  (void)ud;
  T.status = h->status;
  T.c_heads++;
  T.c_end_stream = end_stream;
  T.c_xa = mh_head_get(h, "x-a") != NULL;
  T.c_xb = mh_head_get(h, "x-b") != NULL;
  ck_assert_ptr_null(mh_head_get(h, "connection"));
  logf_("head %d %d;", h->status, end_stream);
}

static void c_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  (void)ud;
  size_t n = evbuffer_get_length(buf);
  evbuffer_add_buffer(T.cbody, buf);
  mh_stream_consumed(s, n);
}

static void c_on_end(mh_stream *s, mh_head *tr, void *ud) {
  (void)s;
  (void)ud;
  T.c_end = 1;
  const char *v = tr ? mh_head_get(tr, "x-len") : NULL;
  snprintf(T.c_trailer, sizeof T.c_trailer, "%s", v ? v : "");
  logf_("cend;");
}

static void c_on_reset(mh_stream *s, int err, void *ud) {
  (void)s;
  (void)ud;
  T.c_reset = 1;
  T.c_reset_err = err;
  T.cs = NULL;
  logf_("creset %d;", err);
}

static void send_more(mh_stream *s);

static void c_on_drain(mh_stream *s, void *ud) {
  (void)ud;
  send_more(s);
}

static const mh_stream_cbs cli_scbs = {.on_head = c_on_head, .on_data = c_on_data, .on_end = c_on_end,
                                       .on_reset = c_on_reset, .on_drain = c_on_drain};

static void c_on_close(mh_conn *c, int err, void *ud) {
  (void)c;
  (void)ud;
  T.c_closed = 1;
  T.c_close_err = err;
  T.cc = NULL;
  logf_("cclose %d;", err);
}

static void c_on_upgrade(mh_conn *c, struct bufferevent *bev, void *ud) {
  (void)c;
  (void)ud;
  T.cupg = bev;
  T.cc = NULL;
  T.c_upgraded = 1;
}

static const mh_conn_cbs cli_ccbs = {.on_close = c_on_close, .on_upgrade = c_on_upgrade};

/* Body sender: 16 KiB pieces while less than a window is pending. */
static void send_more(mh_stream *s) {
  static char piece[16384];
  while (T.send_left) {
    size_t p = mh_stream_pending(s);
    if (p > T.max_pending) T.max_pending = p;
    if (p >= T.lim.window_bytes) return;
    size_t n = T.send_left < sizeof piece ? T.send_left : sizeof piece;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, piece, n);
    T.send_left -= n;
    ck_assert_int_eq(mh_stream_send_data(s, b, T.send_left == 0), 0);
    evbuffer_free(b);
  }
}

/* ---- Setup -------------------------------------------------------------------------------- */

static void setup(void) {
  memset(&T, 0, sizeof T);
  T.ctx = test_ctx(&T.a);
  T.base = event_base_new();
  ck_assert_ptr_nonnull(T.base);
  T.tick = event_new(T.base, -1, EV_PERSIST, on_tick, NULL);
  struct timeval ms = {0, 1000};
  event_add(T.tick, &ms);
  mh_limits_default(&T.lim);
  mh_head_init(&T.sreq);
  T.sbody = evbuffer_new();
  T.cbody = evbuffer_new();
}

static void teardown(void) {
  if (T.sc) mh_conn_free(T.sc);
  if (T.cc) mh_conn_free(T.cc);
  if (T.upg) bufferevent_free(T.upg);
  if (T.cupg) bufferevent_free(T.cupg);
  if (T.slow_timer) event_free(T.slow_timer);
  mh_head_clear(&T.sreq);
  evbuffer_free(T.sbody);
  evbuffer_free(T.cbody);
  event_free(T.tick);
  event_base_free(T.base);
  ck_assert_msg(T.a.live == 1, "%ld blocks leaked", T.a.live - 1);
  mesh_ctx_free(T.ctx);
}

static struct bufferevent *bev_of(int fd) {
  evutil_make_socket_nonblocking(fd);
  struct bufferevent *b = bufferevent_socket_new(T.base, fd, BEV_OPT_CLOSE_ON_FREE);
  ck_assert_ptr_nonnull(b);
  return b;
}

static void make_server(int fd) {
  T.sbev = bev_of(fd);
  ck_assert_int_eq(mh_conn_server(T.ctx, T.sbev, MH_H1, &T.lim, &srv_ccbs, NULL, &T.sc), 0);
}

static void make_client(int fd) {
  ck_assert_int_eq(mh_conn_client(T.ctx, bev_of(fd), MH_H1, &T.lim, &cli_ccbs, NULL, &T.cc), 0);
}

static void pair(void) {
  int fds[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  make_server(fds[0]);
  make_client(fds[1]);
}

/* A server connection with a raw socket as its client. */
static int raw_client(void) {
  int fds[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  make_server(fds[0]);
  evutil_make_socket_nonblocking(fds[1]);
  return fds[1];
}

/* A client connection with a raw socket as its server. */
static int raw_server(void) {
  int fds[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  make_client(fds[0]);
  evutil_make_socket_nonblocking(fds[1]);
  return fds[1];
}

static void raw_write(int fd, const char *p, size_t n) {
  uint64_t end = now_ms() + 5000;
  while (n && now_ms() < end) {
    ssize_t w = write(fd, p, n);
    if (w > 0) {
      p += w;
      n -= (size_t)w;
    } else {
      ck_assert(errno == EAGAIN);
      event_base_loop(T.base, EVLOOP_ONCE);
    }
  }
  ck_assert_uint_eq(n, 0);
}

static void raw_puts(int fd, const char *s) { raw_write(fd, s, strlen(s)); }

/* Read from fd until the text holds needle (NULL: until EOF) or ms pass. */
static char rbuf[1 << 16];
static size_t rlen;
static int reof;

static int raw_read_until(int fd, const char *needle, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  for (;;) {
    ssize_t r = -1;
    while (rlen < sizeof rbuf - 1 && (r = read(fd, rbuf + rlen, sizeof rbuf - 1 - rlen)) > 0)
      rlen += (size_t)r;
    if (r == 0 || (r < 0 && errno != EAGAIN)) reof = 1;
    rbuf[rlen] = 0;
    if (needle ? strstr(rbuf, needle) != NULL : reof) return 1;
    if (reof || now_ms() >= end) return 0;
    event_base_loop(T.base, EVLOOP_ONCE);
  }
}

static void raw_reset(void) {
  rlen = 0;
  reof = 0;
  rbuf[0] = 0;
}

static int count_str(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

/* ---- Client against server ---------------------------------------------------------------- */

static void request(const char *method, const char *path, const char *body, int chunked) {
  mh_head h;
  mh_head_init(&h);
  mh_head_setstr(T.ctx, &h, &h.method, method);
  mh_head_setstr(T.ctx, &h, &h.path, path);
  mh_head_setstr(T.ctx, &h, &h.scheme, "http");
  mh_head_setstr(T.ctx, &h, &h.authority, "web:80");
  mh_head_add(T.ctx, &h, "x-test", "yes");
  if (body && !chunked) h.content_length = (int64_t)strlen(body);
  T.c_end = T.c_reset = T.status = T.c_heads = 0;
  evbuffer_drain(T.cbody, evbuffer_get_length(T.cbody));
  ck_assert_int_eq(mh_client_request(T.cc, &h, body == NULL, &cli_scbs, NULL, &T.cs), 0);
  mh_head_clear(&h);
  if (body) {
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    ck_assert_int_eq(mh_stream_send_data(T.cs, b, !chunked), 0);
    evbuffer_free(b);
    if (chunked) {
      mh_head tr;
      mh_head_init(&tr);
      mh_head_add(T.ctx, &tr, "x-t", "1");
      ck_assert_int_eq(mh_stream_send_end(T.cs, &tr), 0);
      mh_head_clear(&tr);
    }
  }
}

static char *cbody(void) {
  static char b[256];
  size_t n = evbuffer_copyout(T.cbody, b, sizeof b - 1);
  b[n] = 0;
  return b;
}

START_TEST(client_server) {
  setup();
  pair();
  /* GET */
  request("GET", "/get?x=1", NULL, 0);
  ck_assert_uint_eq(mh_conn_capacity(T.cc), 0);
  ck_assert_uint_eq(mh_conn_active(T.cc), 1);
  mh_stream *again;
  mh_head h;
  mh_head_init(&h);
  mh_head_setstr(T.ctx, &h, &h.method, "GET");
  mh_head_setstr(T.ctx, &h, &h.path, "/");
  ck_assert_int_eq(mh_client_request(T.cc, &h, 1, &cli_scbs, NULL, &again), MESH_ERR_AGAIN);
  mh_head_clear(&h);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.c_reset_err, MH_OK);
  ck_assert_int_eq(T.status, 200);
  ck_assert_str_eq(cbody(), "/get?x=1");
  ck_assert_str_eq(T.sreq.method, "GET");
  ck_assert_str_eq(T.sreq.authority, "web:80");
  ck_assert_str_eq(T.sreq.scheme, "http");
  ck_assert_str_eq(mh_head_get(&T.sreq, "x-test"), "yes");
  ck_assert_int_eq(T.sreq.version, MH_V11);
  ck_assert_int_eq(T.sreq.content_length, -1);
  ck_assert_uint_eq(mh_conn_capacity(T.cc), 1);
  /* POST with a length */
  request("POST", "/echo", "hello world", 0);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.c_reset_err, MH_OK);
  ck_assert_int_eq(T.sreq.content_length, 11);
  ck_assert_str_eq(cbody(), "hello world");
  ck_assert_str_eq(T.c_trailer, "11"); /* the echo is chunked, with trailers */
  /* chunked with trailers both ways */
  request("PUT", "/echo", "streamed", 1);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.sreq.content_length, -1);
  ck_assert_uint_eq(T.s_trailers, 1);
  ck_assert_str_eq(cbody(), "streamed");
  ck_assert_str_eq(T.c_trailer, "8");
  /* HEAD: a length, no body */
  request("HEAD", "/head", NULL, 0);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.status, 200);
  ck_assert_int_eq(T.c_end_stream, 1);
  ck_assert_uint_eq(evbuffer_get_length(T.cbody), 0);
  /* 204 */
  request("GET", "/204", NULL, 0);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.status, 204);
  ck_assert_int_eq(T.c_end_stream, 1);
  /* keep-alive: the same connection took them all */
  for (int i = 0; i < 3; i++) {
    request("GET", "/again", NULL, 0);
    ck_assert(spin(&T.c_reset, 3000));
    ck_assert_str_eq(cbody(), "/again");
  }
  ck_assert_int_eq(T.nreq, 8);
  ck_assert_int_eq(T.s_resets, 8);
  ck_assert_int_eq(T.s_closed, 0);
  ck_assert_int_eq(T.c_closed, 0);
  /* graceful shutdown of an idle client connection */
  mh_conn_shutdown(T.cc);
  ck_assert_uint_eq(mh_conn_capacity(T.cc), 0);
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_int_eq(T.c_close_err, MH_OK);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.s_close_err, MH_OK);
  teardown();
}
END_TEST

START_TEST(client_upgrade) {
  setup();
  pair();
  mh_head h;
  mh_head_init(&h);
  mh_head_setstr(T.ctx, &h, &h.method, "GET");
  mh_head_setstr(T.ctx, &h, &h.path, "/ws");
  mh_head_setstr(T.ctx, &h, &h.authority, "web");
  mh_head_setstr(T.ctx, &h, &h.upgrade_proto, "websocket");
  h.upgrade = 1;
  ck_assert_int_eq(mh_client_request(T.cc, &h, 1, &cli_scbs, NULL, &T.cs), 0);
  mh_head_clear(&h);
  ck_assert(spin(&T.c_upgraded, 3000));
  ck_assert_int_eq(T.status, 101);
  ck_assert_int_eq(T.sreq.upgrade, 1);
  ck_assert_str_eq(T.sreq.upgrade_proto, "websocket");
  ck_assert_ptr_nonnull(T.upg);
  ck_assert_int_eq(T.c_reset, 1); /* on_reset(MH_OK) came first */
  /* Bytes flow both ways over the handed-over bufferevents. */
  bufferevent_enable(T.cupg, EV_READ);
  bufferevent_write(T.cupg, "ping", 4);
  uint64_t end = now_ms() + 3000;
  while (evbuffer_get_length(bufferevent_get_input(T.cupg)) < 8 && now_ms() < end)
    event_base_loop(T.base, EVLOOP_ONCE);
  char b[16] = {0};
  evbuffer_copyout(bufferevent_get_input(T.cupg), b, 8);
  ck_assert_str_eq(b, "got:ping");
  teardown();
}
END_TEST

/* ---- Raw bytes against a server ------------------------------------------------------------- */

START_TEST(server_pipelined) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"
               "GET http://b:8080/three?q HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  ck_assert(raw_read_until(fd, NULL, 3000));
  const char *one = strstr(rbuf, "\r\n\r\n/one"), *two = strstr(rbuf, "\r\n\r\n/two"),
             *three = strstr(rbuf, "\r\n\r\n/three?q");
  ck_assert_msg(one && two && three && one < two && two < three, "%s", rbuf);
  ck_assert_int_eq(count_str(rbuf, "HTTP/1.1 200 OK\r\n"), 3);
  ck_assert_str_eq(T.sreq.authority, "b:8080");
  ck_assert_str_eq(T.sreq.path, "/three?q");
  ck_assert_ptr_nonnull(strstr(rbuf, "connection: close"));
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.s_close_err, MH_OK);
  ck_assert_int_eq(T.s_resets, 3);
  close(fd);
  teardown();
}
END_TEST

static void expect_error(const char *bytes, size_t n, const char *status, int nreq) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_write(fd, bytes, n);
  ck_assert_msg(raw_read_until(fd, NULL, 3000), "%s | %s", rbuf, T.log);
  ck_assert_msg(strncmp(rbuf, status, strlen(status)) == 0, "%s", rbuf);
  ck_assert_ptr_nonnull(strstr(rbuf, "l5d-proxy-error: "));
  ck_assert_ptr_nonnull(strstr(rbuf, "connection: close"));
  close(fd); /* the server lingers for our end */
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.nreq, nreq);
  teardown();
}

START_TEST(server_malformed) {
  const char bad[] = "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n";
  expect_error(bad, sizeof bad - 1, "HTTP/1.1 400 ", 0);
  const char bad2[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\nFOO\x01 / HTTP/1.1\r\n\r\n";
  expect_error(bad2, sizeof bad2 - 1, "HTTP/1.1 200 ", 1); /* the first one is fine */
  const char bad3[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n";
  expect_error(bad3, sizeof bad3 - 1, "HTTP/1.1 400 ", 0);
  const char bad4[] = "\x01\x02\r\n\r\n";
  expect_error(bad4, sizeof bad4 - 1, "HTTP/1.1 400 ", 0);
  const char bad5[] = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
  expect_error(bad5, sizeof bad5 - 1, "HTTP/1.1 400 ", 0);
}
END_TEST

START_TEST(server_big_head) {
  size_t n = 70 * 1024;
  char *req = malloc(n + 100);
  int k = snprintf(req, n + 100, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ");
  memset(req + k, 'a', n);
  memcpy(req + k + n, "\r\n\r\n", 4);
  expect_error(req, (size_t)k + n + 4, "HTTP/1.1 431 ", 0);
  /* 101 fields */
  char *p = req;
  p += sprintf(p, "GET / HTTP/1.1\r\n");
  for (int i = 0; i < 101; i++) p += sprintf(p, "X-F%d: v\r\n", i);
  p += sprintf(p, "\r\n");
  expect_error(req, (size_t)(p - req), "HTTP/1.1 431 ", 0);
  /* 100 fields in all are fine */
  setup();
  int fd = raw_client();
  raw_reset();
  p = req;
  p += sprintf(p, "GET /ok HTTP/1.1\r\nHost: a\r\n");
  for (int i = 0; i < 99; i++) p += sprintf(p, "X-F%d: v\r\n", i);
  p += sprintf(p, "\r\n");
  raw_write(fd, req, (size_t)(p - req));
  ck_assert(raw_read_until(fd, "/ok", 3000));
  ck_assert_uint_eq(T.sreq.n, 99);
  close(fd);
  free(req);
  ck_assert(spin(&T.s_closed, 3000));
  teardown();
}
END_TEST

START_TEST(server_slow_head) {
  setup();
  T.lim.head_timeout_ms = 100;
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "GET / HTTP/1.1\r\nHost: a\r\n");
  uint64_t t0 = now_ms();
  ck_assert(raw_read_until(fd, NULL, 3000));
  ck_assert_uint_ge(now_ms() - t0, 90);
  ck_assert_msg(strncmp(rbuf, "HTTP/1.1 408 ", 13) == 0, "%s", rbuf);
  close(fd);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.nreq, 0);
  teardown();
  /* Idle between requests: just closed. */
  setup();
  T.lim.idle_timeout_ms = 100;
  fd = raw_client();
  raw_reset();
  raw_puts(fd, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
  ck_assert(raw_read_until(fd, NULL, 3000));
  ck_assert_int_eq(count_str(rbuf, "HTTP/1.1"), 1);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.s_close_err, MH_OK);
  close(fd);
  teardown();
}
END_TEST

START_TEST(server_expect_continue) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  ck_assert(raw_read_until(fd, "HTTP/1.1 100 Continue\r\n\r\n", 3000));
  ck_assert_ptr_null(mh_head_get(&T.sreq, "expect"));
  ck_assert_int_eq(T.sreq.expect_continue, 1);
  raw_puts(fd, "hello");
  ck_assert(raw_read_until(fd, "0\r\nx-len: 5\r\n\r\n", 3000));
  ck_assert_ptr_nonnull(strstr(rbuf, "HTTP/1.1 200 OK\r\n"));
  ck_assert_ptr_nonnull(strstr(rbuf, "hello"));
  ck_assert_int_eq(count_str(rbuf, "100 Continue"), 1);
  close(fd);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.s_close_err, MH_OK);
  teardown();
}
END_TEST

START_TEST(server_upgrade) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, x-hop\r\nX-Hop: 1\r\n"
               "Upgrade: websocket\r\n\r\nEXTRA");
  ck_assert(raw_read_until(fd, "got:EXTRA", 3000));
  ck_assert_msg(strncmp(rbuf, "HTTP/1.1 101 Switching Protocols\r\n", 34) == 0, "%s", rbuf);
  ck_assert_ptr_nonnull(strstr(rbuf, "connection: upgrade\r\nupgrade: websocket\r\n"));
  ck_assert_ptr_null(mh_head_get(&T.sreq, "x-hop"));
  ck_assert_ptr_null(mh_head_get(&T.sreq, "connection"));
  ck_assert_ptr_null(mh_head_get(&T.sreq, "upgrade"));
  raw_puts(fd, "MORE");
  ck_assert(raw_read_until(fd, "got:MORE", 3000));
  ck_assert_int_eq(T.s_closed, 0); /* no on_close after a handover */
  ck_assert_int_eq(T.s_resets, 1);
  close(fd);
  teardown();
}
END_TEST

/* ---- Backpressure ------------------------------------------------------------------------- */

START_TEST(backpressure) {
  setup();
  pair();
  T.slow_timer = event_new(T.base, -1, EV_PERSIST, on_slow, NULL);
  struct timeval ms = {0, 1000};
  event_add(T.slow_timer, &ms);
  const size_t total = 4u << 20;
  mh_head h;
  mh_head_init(&h);
  mh_head_setstr(T.ctx, &h, &h.method, "POST");
  mh_head_setstr(T.ctx, &h, &h.path, "/sink");
  mh_head_setstr(T.ctx, &h, &h.authority, "web");
  h.content_length = (int64_t)total;
  ck_assert_int_eq(mh_client_request(T.cc, &h, 0, &cli_scbs, NULL, &T.cs), 0);
  mh_head_clear(&h);
  T.send_left = total;
  send_more(T.cs);
  ck_assert(spin(&T.c_reset, 20000));
  ck_assert_int_eq(T.c_reset_err, MH_OK);
  ck_assert_uint_eq(T.sunk, total);
  char want[32];
  snprintf(want, sizeof want, "%zu", total);
  ck_assert_str_eq(cbody(), want);
  /* Bounded: the window plus one parser feed; the input to its watermark. */
  ck_assert_uint_le(T.max_in, T.lim.window_bytes + 16384);
  ck_assert_uint_le(T.max_input, T.lim.window_bytes + 16384);
  ck_assert_uint_le(T.max_pending, T.lim.window_bytes + 16384);
  teardown();
}
END_TEST

/* ---- Errors --------------------------------------------------------------------------------- */

START_TEST(peer_closes_mid_body) {
  /* Server side: the client goes away in the request body. */
  setup();
  int fd = raw_client();
  raw_puts(fd, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc");
  int got = 0;
  uint64_t end = now_ms() + 3000;
  while (!T.nreq && now_ms() < end) event_base_loop(T.base, EVLOOP_ONCE);
  ck_assert_int_eq(T.nreq, 1);
  close(fd);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_msg(strstr(T.log, "sreset 2;sclose 3;") != NULL, "%s", T.log);
  teardown();
  /* Client side: the server goes away in the response body. */
  setup();
  fd = raw_server();
  request("GET", "/x", NULL, 0);
  raw_reset();
  ck_assert(raw_read_until(fd, "\r\n\r\n", 3000));
  ck_assert_ptr_nonnull(strstr(rbuf, "GET /x HTTP/1.1\r\nhost: web:80\r\nx-test: yes\r\n"));
  raw_puts(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
  spin(&got, 50);
  close(fd);
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_msg(strstr(T.log, "head 200 0;creset 2;cclose 3;") != NULL, "%s", T.log);
  ck_assert_str_eq(cbody(), "abc");
  teardown();
}
END_TEST

START_TEST(client_close_delimited) {
  setup();
  int fd = raw_server();
  request("GET", "/x", NULL, 0);
  raw_reset();
  ck_assert(raw_read_until(fd, "\r\n\r\n", 3000));
  raw_puts(fd, "HTTP/1.0 200 OK\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\nX-B: 2\r\n\r\nall of it");
  close(fd);
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_msg(strstr(T.log, "head 200 0;cend;creset 0;cclose 0;") != NULL, "%s", T.log);
  ck_assert_str_eq(cbody(), "all of it");
  ck_assert_int_eq(T.c_xa, 0); /* named in Connection: hop-by-hop */
  ck_assert_int_eq(T.c_xb, 1);
  teardown();
  /* A response head over the field limit resets the stream with MH_ERR_LIMIT. */
  setup();
  T.lim.max_fields = 3;
  fd = raw_server();
  request("GET", "/x", NULL, 0);
  raw_reset();
  ck_assert(raw_read_until(fd, "\r\n\r\n", 3000));
  raw_puts(fd, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nContent-Length: 0\r\n\r\n");
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_msg(strstr(T.log, "creset 5;cclose 5;") != NULL, "%s", T.log);
  close(fd);
  teardown();
}
END_TEST

START_TEST(client_interim_and_reset) {
  setup();
  int fd = raw_server();
  request("POST", "/x", NULL, 0);
  raw_reset();
  ck_assert(raw_read_until(fd, "\r\n\r\n", 3000));
  ck_assert_ptr_nonnull(strstr(rbuf, "content-length: 0\r\n"));
  raw_puts(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n0\r\nX-Len: 3\r\n\r\n");
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_msg(strstr(T.log, "head 100 0;head 200 0;cend;creset 0;") != NULL, "%s", T.log);
  ck_assert_str_eq(T.c_trailer, "3");
  /* A reset of an exchange in flight closes the connection; no on_reset follows. */
  request("GET", "/y", NULL, 0);
  mh_stream_reset(T.cs, 0);
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_int_eq(T.c_reset, 0);
  close(fd);
  teardown();
}
END_TEST

START_TEST(free_inside) {
  /* mh_conn_free from inside a callback, and with work deferred. */
  setup();
  pair();
  request("GET", "/z", NULL, 0);
  mh_conn_free(T.cc);
  T.cc = NULL;
  ck_assert(spin(&T.s_closed, 3000));
  teardown();
}
END_TEST

START_TEST(server_http10) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ck_assert(raw_read_until(fd, "\r\n\r\n/k", 3000));
  ck_assert_ptr_nonnull(strstr(rbuf, "connection: keep-alive\r\n"));
  ck_assert_int_eq(T.sreq.version, MH_V10);
  ck_assert_ptr_null(T.sreq.authority);
  /* Unknown length to an HTTP/1.0 client: delimited by the close. */
  raw_reset();
  raw_puts(fd, "POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
  ck_assert(raw_read_until(fd, NULL, 3000));
  ck_assert_ptr_null(strstr(rbuf, "transfer-encoding"));
  ck_assert_ptr_nonnull(strstr(rbuf, "connection: close\r\n\r\nhi"));
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_int_eq(T.s_close_err, MH_OK);
  close(fd);
  teardown();
}
END_TEST

START_TEST(server_early_response) {
  setup();
  int fd = raw_client();
  raw_reset();
  raw_puts(fd, "POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc");
  ck_assert(raw_read_until(fd, NULL, 3000));
  ck_assert_msg(strncmp(rbuf, "HTTP/1.1 403 Forbidden\r\n", 24) == 0, "%s", rbuf);
  /* The server lingers: the rest of the body goes nowhere, then our end ends it. */
  char junk[4096] = {0};
  raw_write(fd, junk, sizeof junk);
  int one = 0;
  spin(&one, 20);
  ck_assert_int_eq(T.s_closed, 0);
  close(fd);
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_msg(strstr(T.log, "req POST /early;sreset 0;sclose 0;") != NULL, "%s", T.log);
  teardown();
}
END_TEST

static void hold_request(int fd) {
  raw_reset();
  raw_puts(fd, "GET /hold HTTP/1.1\r\nHost: a\r\n\r\n");
  uint64_t end = now_ms() + 3000;
  while (!T.nreq && now_ms() < end) event_base_loop(T.base, EVLOOP_ONCE);
  ck_assert_int_eq(T.nreq, 1);
}

START_TEST(server_shutdown_close_reset) {
  /* shutdown: the response in flight carries the close. */
  setup();
  int fd = raw_client();
  hold_request(fd);
  mh_conn_shutdown(T.sc);
  mh_head h;
  mh_head_init(&h);
  h.status = 200;
  ck_assert_int_eq(mh_stream_send_head(T.ss, &h, 1), 0);
  ck_assert_int_eq(mh_stream_send_head(T.ss, &h, 1), MESH_ERR_INVALID);
  ck_assert(raw_read_until(fd, NULL, 3000));
  ck_assert_ptr_nonnull(strstr(rbuf, "content-length: 0\r\nconnection: close\r\n\r\n"));
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_msg(strstr(T.log, "sreset 0;sclose 0;") != NULL, "%s", T.log);
  close(fd);
  teardown();
  /* close: the stream gets MH_ERR_CLOSED, later, then the connection. */
  setup();
  fd = raw_client();
  hold_request(fd);
  mh_conn_close(T.sc);
  ck_assert_ptr_null(strstr(T.log, "sreset"));
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_msg(strstr(T.log, "sreset 3;sclose 0;") != NULL, "%s", T.log);
  close(fd);
  teardown();
  /* the application resets: the connection closes, no on_reset. */
  setup();
  fd = raw_client();
  raw_puts(fd, "GET /reset HTTP/1.1\r\nHost: a\r\n\r\n");
  ck_assert(spin(&T.s_closed, 3000));
  ck_assert_msg(strstr(T.log, "req GET /reset;sclose 7;") != NULL, "%s", T.log);
  close(fd);
  teardown();
}
END_TEST

START_TEST(client_early_response) {
  setup();
  int fd = raw_server();
  mh_head h;
  mh_head_init(&h);
  mh_head_setstr(T.ctx, &h, &h.method, "POST");
  mh_head_setstr(T.ctx, &h, &h.path, "/up");
  h.content_length = 10;
  ck_assert_int_eq(mh_client_request(T.cc, &h, 0, &cli_scbs, NULL, &T.cs), 0);
  mh_head_clear(&h);
  struct evbuffer *b = evbuffer_new();
  evbuffer_add(b, "abc", 3);
  ck_assert_int_eq(mh_stream_send_data(T.cs, b, 0), 0);
  raw_reset();
  ck_assert(raw_read_until(fd, "abc", 3000));
  raw_puts(fd, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
  ck_assert(spin(&T.c_heads, 3000));
  ck_assert_int_eq(T.status, 413);
  ck_assert_int_eq(T.c_end_stream, 1);
  int one = 0;
  spin(&one, 20);
  ck_assert_int_eq(T.c_reset, 0);
  ck_assert_uint_eq(mh_conn_capacity(T.cc), 0);
  evbuffer_add(b, "defghij", 7);
  ck_assert_int_eq(mh_stream_send_data(T.cs, b, 1), 0);
  evbuffer_free(b);
  ck_assert(spin(&T.c_reset, 3000));
  ck_assert_int_eq(T.c_reset_err, MH_OK);
  ck_assert_uint_eq(mh_conn_capacity(T.cc), 1);
  ck_assert(raw_read_until(fd, "abcdefghij", 3000)); /* unread bytes would make the close a reset */
  close(fd);
  ck_assert(spin(&T.c_closed, 3000));
  ck_assert_int_eq(T.c_close_err, MH_OK);
  teardown();
}
END_TEST

/* Every allocation of a server exchange failing in turn: no crash, no
 * leak, and the connection always ends. */
START_TEST(server_alloc_failures) {
  for (long n = 0;; n++) {
    ck_assert_int_lt(n, 1000);
    setup();
    long start = T.a.calls;
    T.a.fail_after = start + n;
    int fds[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    evutil_make_socket_nonblocking(fds[1]);
    struct bufferevent *b = bev_of(fds[0]);
    int rc = mh_conn_server(T.ctx, b, MH_H1, &T.lim, &srv_ccbs, NULL, &T.sc);
    if (rc) {
      ck_assert_int_eq(rc, MESH_ERR_NOMEM);
      bufferevent_free(b);
    } else {
      T.sbev = b;
      raw_reset();
      raw_puts(fds[1], "POST /echo HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nTE: trailers\r\nConnection: close\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
      raw_read_until(fds[1], NULL, 2000); /* the request asked to close */
      shutdown(fds[1], SHUT_WR);
      ck_assert(spin(&T.s_closed, 2000));
    }
    close(fds[1]);
    int injected = T.a.calls >= T.a.fail_after;
    T.a.fail_after = -1;
    int ok = strstr(rbuf, "x-len: 3") != NULL;
    teardown();
    if (!injected) {
      ck_assert(ok);
      ck_assert_int_gt(n, 10); /* the exchange did allocate: failures were exercised */
      break;
    }
  }
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("http1");
  TCase *t = tcase_create("core");
  tcase_set_timeout(t, 60);
  tcase_add_test(t, client_server);
  tcase_add_test(t, client_upgrade);
  tcase_add_test(t, server_pipelined);
  tcase_add_test(t, server_malformed);
  tcase_add_test(t, server_big_head);
  tcase_add_test(t, server_slow_head);
  tcase_add_test(t, server_expect_continue);
  tcase_add_test(t, server_upgrade);
  tcase_add_test(t, backpressure);
  tcase_add_test(t, peer_closes_mid_body);
  tcase_add_test(t, client_close_delimited);
  tcase_add_test(t, client_interim_and_reset);
  tcase_add_test(t, free_inside);
  tcase_add_test(t, server_http10);
  tcase_add_test(t, server_early_response);
  tcase_add_test(t, server_shutdown_close_reset);
  tcase_add_test(t, client_early_response);
  tcase_add_test(t, server_alloc_failures);
  suite_add_tcase(s, t);
  return s;
}

int main(void) { return test_main(make_suite()); }
