/* Unit tests for the HTTP/2 codec: our client and our server over socketpairs on one event loop. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http_internal.h"

#define BIG_BYTES (4u << 20)
#define HELD_MAX 8

typedef struct world world;

/* One server-side exchange. */
typedef struct {
  world *w;
  mh_stream *s;
  struct evbuffer *body;
  int ended, reset_err;
  size_t big_sent;
} sreq;

/* One client-side exchange. */
typedef struct {
  world *w;
  mh_stream *s;
  int status, heads, end_on_head, ended, reset_err;
  struct evbuffer *body;
  char grpc_status[8];
  char proxy_error[64];
  int slow;
  size_t max_in;
  struct evbuffer *slow_buf;
} creq;

struct world {
  test_alloc a;
  mesh_ctx *ctx;
  struct event_base *base;
  mh_limits sl, cl;
  mh_conn *sc, *cc;
  int s_closed, c_closed, s_close_err, c_close_err;
  int nreq, sdone, cdone;
  sreq *held[HELD_MAX];
  int nheld;
  char last_method[16], last_path[64], last_authority[64];
  sreq *last_sreq;
};

static void on_flag(evutil_socket_t fd, short what, void *p) {
  (void)fd;
  (void)what;
  *(int *)p = 1;
}

/* Run the loop until *counter reaches want; fails the test after ms. */
static void run_until(struct event_base *base, const int *counter, int want, int ms) {
  int expired = 0;
  struct event *t = evtimer_new(base, on_flag, &expired);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (*counter < want && !expired) event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
  ck_assert_msg(!expired, "timed out after %d ms (%d of %d)", ms, *counter, want);
}

/* Run the loop for ms. */
static void run_for(struct event_base *base, int ms) {
  int expired = 0;
  struct event *t = evtimer_new(base, on_flag, &expired);
  struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
  evtimer_add(t, &tv);
  while (!expired) event_base_loop(base, EVLOOP_ONCE);
  event_free(t);
}

/* ---- Server side --------------------------------------------------------------- */

static void sreq_free(sreq *r) {
  if (r->body) evbuffer_free(r->body);
  free(r);
}

static void s_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  sreq *r = ud;
  size_t n = evbuffer_get_length(buf);
  evbuffer_add_buffer(r->body, buf);
  mh_stream_consumed(s, n);
}

static void respond(mh_stream *s, int status, const char *body, const mh_head *trailers) {
  world *w = ((sreq *)s->ud)->w;
  mh_head h;
  mh_head_init(&h);
  h.status = status;
  if (!trailers) h.content_length = body ? (int64_t)strlen(body) : 0;
  ck_assert_int_eq(mh_head_add(w->ctx, &h, "x-test", "yes"), 0);
  ck_assert_int_eq(mh_head_add(w->ctx, &h, "connection", "close"), 0); /* hop-by-hop: dropped */
  if (trailers) ck_assert_int_eq(mh_head_add(w->ctx, &h, "content-type", "application/grpc"), 0);
  int rc = mh_stream_send_head(s, &h, !body && !trailers);
  ck_assert_int_eq(rc, 0);
  mh_head_clear(&h);
  if (body || trailers) {
    struct evbuffer *b = evbuffer_new();
    if (body) evbuffer_add(b, body, strlen(body));
    ck_assert_int_eq(mh_stream_send_data(s, b, !trailers), 0);
    ck_assert_int_eq(evbuffer_get_length(b), 0);
    evbuffer_free(b);
    if (trailers) ck_assert_int_eq(mh_stream_send_end(s, trailers), 0);
  }
}

static void s_on_end(mh_stream *s, mh_head *trailers, void *ud) {
  (void)trailers;
  sreq *r = ud;
  r->ended = 1;
  if (r->body && evbuffer_get_length(r->body) > 0) { /* /echo */
    mh_head h;
    mh_head_init(&h);
    h.status = 200;
    h.content_length = (int64_t)evbuffer_get_length(r->body);
    ck_assert_int_eq(mh_stream_send_head(s, &h, 0), 0);
    ck_assert_int_eq(mh_stream_send_data(s, r->body, 1), 0);
    mh_head_clear(&h);
  }
}

static void big_pump(mh_stream *s, sreq *r) {
  world *w = r->w;
  static char chunk[16384];
  while (r->big_sent < BIG_BYTES && mh_stream_pending(s) < w->sl.window_bytes) {
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, chunk, sizeof chunk);
    r->big_sent += sizeof chunk;
    ck_assert_int_eq(mh_stream_send_data(s, b, r->big_sent >= BIG_BYTES), 0);
    evbuffer_free(b);
  }
}

static void s_on_drain(mh_stream *s, void *ud) {
  sreq *r = ud;
  if (r->big_sent) big_pump(s, r);
}

static void s_on_reset(mh_stream *s, int err, void *ud) {
  (void)s;
  sreq *r = ud;
  r->reset_err = err;
  r->w->sdone++;
  for (int i = 0; i < r->w->nheld; i++)
    if (r->w->held[i] == r) r->w->held[i] = NULL;
  if (r->w->last_sreq == r) r->w->last_sreq = NULL;
  sreq_free(r);
}

static const mh_stream_cbs s_cbs = {NULL, s_on_data, s_on_end, s_on_reset, s_on_drain};

static void on_request(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud) {
  world *w = ud;
  w->nreq++;
  ck_assert_int_eq(req->version, MH_V2);
  snprintf(w->last_method, sizeof w->last_method, "%s", req->method ? req->method : "");
  snprintf(w->last_path, sizeof w->last_path, "%s", req->path ? req->path : "");
  snprintf(w->last_authority, sizeof w->last_authority, "%s",
           req->authority ? req->authority : "");
  sreq *r = calloc(1, sizeof *r);
  r->w = w;
  r->s = s;
  r->reset_err = -1;
  w->last_sreq = r;
  mh_stream_set_cbs(s, &s_cbs, r);
  if (strcmp(req->path, "/get") == 0) {
    respond(s, 200, "hello", NULL);
  } else if (strcmp(req->path, "/echo") == 0) {
    ck_assert_int_eq(end_stream, 0);
    r->body = evbuffer_new();
  } else if (strcmp(req->path, "/trailers") == 0) {
    mh_head t;
    mh_head_init(&t);
    ck_assert_int_eq(mh_head_add(w->ctx, &t, "grpc-status", "0"), 0);
    ck_assert_int_eq(mh_head_add(w->ctx, &t, "grpc-message", "fine"), 0);
    respond(s, 200, "abc", &t);
    mh_head_clear(&t);
  } else if (strcmp(req->path, "/big") == 0) {
    mh_head h;
    mh_head_init(&h);
    h.status = 200;
    h.content_length = BIG_BYTES;
    ck_assert_int_eq(mh_stream_send_head(s, &h, 0), 0);
    mh_head_clear(&h);
    big_pump(s, r);
  } else if (strcmp(req->path, "/shut") == 0) {
    mh_conn_shutdown(c);
    respond(s, 200, "last", NULL);
  } else if (strcmp(req->path, "/refuse") == 0) {
    mh_stream_reset(s, 1); /* no callback follows: free our side now */
    w->last_sreq = NULL;
    sreq_free(r);
  } else if (strcmp(req->path, "/early") == 0) {
    mh_head h;
    mh_head_init(&h);
    h.status = 103;
    ck_assert_int_eq(mh_head_add(w->ctx, &h, "link", "</a.css>; rel=preload"), 0);
    ck_assert_int_eq(mh_stream_send_head(s, &h, 0), 0);
    mh_head_clear(&h);
    respond(s, 200, "late", NULL);
  } else if (strcmp(req->path, "/hold") == 0) {
    ck_assert_int_lt(w->nheld, HELD_MAX);
    w->held[w->nheld++] = r;
  } else {
    respond(s, 404, "no\n", NULL);
  }
}

static void s_on_close(mh_conn *c, int err, void *ud) {
  (void)c;
  world *w = ud;
  w->s_closed++;
  w->s_close_err = err;
  w->sc = NULL;
}

static const mh_conn_cbs s_conn_cbs = {on_request, s_on_close, NULL};

/* ---- Client side ---------------------------------------------------------------- */

static void c_on_head(mh_stream *s, mh_head *h, int end_stream, void *ud) {
  (void)s;
  creq *r = ud;
  ck_assert_int_eq(h->version, MH_V2);
  r->status = h->status;
  r->heads++;
  r->end_on_head = end_stream;
  ck_assert_ptr_null(mh_head_get(h, "connection"));
  const char *pe = mh_head_get(h, "l5d-proxy-error");
  if (pe) snprintf(r->proxy_error, sizeof r->proxy_error, "%s", pe);
  if (end_stream) r->ended = 1;
}

static void c_on_data(mh_stream *s, struct evbuffer *buf, void *ud) {
  creq *r = ud;
  size_t n = evbuffer_get_length(buf);
  if (n > r->max_in) r->max_in = n;
  if (r->slow) { /* taken later, by the slow reader's timer */
    r->slow_buf = buf;
    return;
  }
  evbuffer_add_buffer(r->body, buf);
  mh_stream_consumed(s, n);
}

static void c_on_end(mh_stream *s, mh_head *trailers, void *ud) {
  (void)s;
  creq *r = ud;
  r->ended = 1;
  if (r->slow_buf) ck_assert_uint_eq(evbuffer_get_length(r->slow_buf), 0); /* body taken first */
  const char *gs = trailers ? mh_head_get(trailers, "grpc-status") : NULL;
  if (gs) snprintf(r->grpc_status, sizeof r->grpc_status, "%s", gs);
}

static void c_on_reset(mh_stream *s, int err, void *ud) {
  (void)s;
  creq *r = ud;
  r->reset_err = err;
  r->s = NULL;
  r->slow_buf = NULL;
  r->w->cdone++;
}

static const mh_stream_cbs c_cbs = {c_on_head, c_on_data, c_on_end, c_on_reset, NULL};

static void c_on_close(mh_conn *c, int err, void *ud) {
  (void)c;
  world *w = ud;
  w->c_closed++;
  w->c_close_err = err;
  w->cc = NULL;
}

static const mh_conn_cbs c_conn_cbs = {NULL, c_on_close, NULL};

/* ---- The world ---------------------------------------------------------------- */

static void world_make(world *w) {
  memset(w, 0, sizeof *w);
  w->ctx = test_ctx(&w->a);
  w->base = event_base_new();
  ck_assert_ptr_nonnull(w->base);
  mh_limits_default(&w->sl);
  mh_limits_default(&w->cl);
  w->sl.ping_interval_ms = w->cl.ping_interval_ms = 0;
}

static struct bufferevent *bev_of(world *w, int fd) {
  evutil_make_socket_nonblocking(fd);
  struct bufferevent *b = bufferevent_socket_new(w->base, fd, BEV_OPT_CLOSE_ON_FREE);
  ck_assert_ptr_nonnull(b);
  return b;
}

/* Our server and our client, connected. */
static void world_connect(world *w) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ck_assert_int_eq(mh_conn_server(w->ctx, bev_of(w, sv[0]), MH_H2, &w->sl, &s_conn_cbs, w, &w->sc), 0);
  ck_assert_int_eq(mh_conn_client(w->ctx, bev_of(w, sv[1]), MH_H2, &w->cl, &c_conn_cbs, w, &w->cc), 0);
  ck_assert_int_eq(mh_conn_proto(w->cc), MH_H2);
}

static void world_free(world *w) {
  mh_conn_free(w->sc);
  mh_conn_free(w->cc);
  for (int i = 0; i < 8; i++) event_base_loop(w->base, EVLOOP_NONBLOCK);
  event_base_free(w->base);
  ck_assert_msg(w->a.live == 1, "%ld blocks leaked", w->a.live - 1);
  mesh_ctx_free(w->ctx);
}

static creq *creq_new(world *w) {
  creq *r = calloc(1, sizeof *r);
  r->w = w;
  r->reset_err = -1;
  r->body = evbuffer_new();
  return r;
}

static void creq_free(creq *r) {
  evbuffer_free(r->body);
  free(r);
}

static int request(world *w, creq *r, const char *method, const char *path, int end_stream,
                   mh_head *extra) {
  mh_head h;
  mh_head_init(&h);
  if (extra) ck_assert_int_eq(mh_head_copy(w->ctx, &h, extra), 0);
  ck_assert_int_eq(mh_head_setstr(w->ctx, &h, &h.method, method), 0);
  ck_assert_int_eq(mh_head_setstr(w->ctx, &h, &h.scheme, "http"), 0);
  ck_assert_int_eq(mh_head_setstr(w->ctx, &h, &h.authority, "web.test:80"), 0);
  ck_assert_int_eq(mh_head_setstr(w->ctx, &h, &h.path, path), 0);
  int rc = mh_client_request(w->cc, &h, end_stream, &c_cbs, r, &r->s);
  mh_head_clear(&h);
  return rc;
}

static int body_is(struct evbuffer *b, const char *want) {
  size_t n = evbuffer_get_length(b);
  return n == strlen(want) && memcmp(evbuffer_pullup(b, -1), want, n) == 0;
}

/* ---- Tests ------------------------------------------------------------------------ */

START_TEST(get) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/get", 1, NULL), 0);
  ck_assert_uint_eq(mh_conn_active(w.cc), 1);
  ck_assert_int_eq(w.cdone, 0); /* nothing happens inside the call */
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->status, 200);
  ck_assert_int_eq(r->ended, 1);
  ck_assert(body_is(r->body, "hello"));
  ck_assert_int_eq(r->reset_err, MH_OK);
  ck_assert_str_eq(w.last_method, "GET");
  ck_assert_str_eq(w.last_path, "/get");
  ck_assert_str_eq(w.last_authority, "web.test:80");
  run_until(w.base, &w.sdone, 1, 2000);
  ck_assert_uint_eq(mh_conn_active(w.cc), 0);
  ck_assert_uint_gt(mh_conn_capacity(w.cc), 0);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(post_body) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  /* Larger than the 64 KiB window: flow control has to work both ways. */
  size_t len = 200000;
  char *body = malloc(len + 1);
  for (size_t i = 0; i < len; i++) body[i] = (char)('a' + i % 26);
  body[len] = 0;
  ck_assert_int_eq(request(&w, r, "POST", "/echo", 0, NULL), 0);
  struct evbuffer *b = evbuffer_new();
  evbuffer_add(b, body, len);
  ck_assert_int_eq(mh_stream_send_data(r->s, b, 1), 0);
  ck_assert_int_eq(evbuffer_get_length(b), 0);
  ck_assert_int_eq(mh_stream_send_data(r->s, b, 0), MESH_ERR_INVALID); /* ended */
  evbuffer_free(b);
  run_until(w.base, &w.cdone, 1, 5000);
  ck_assert_int_eq(r->status, 200);
  ck_assert_int_eq(r->reset_err, MH_OK);
  ck_assert(body_is(r->body, body));
  free(body);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(trailers) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  mh_head extra;
  mh_head_init(&extra);
  ck_assert_int_eq(mh_head_add(w.ctx, &extra, "te", "trailers"), 0);
  ck_assert_int_eq(mh_head_add(w.ctx, &extra, "content-type", "application/grpc"), 0);
  ck_assert_int_eq(request(&w, r, "POST", "/trailers", 1, &extra), 0);
  mh_head_clear(&extra);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->status, 200);
  ck_assert_int_eq(r->end_on_head, 0);
  ck_assert(body_is(r->body, "abc"));
  ck_assert_str_eq(r->grpc_status, "0");
  ck_assert_int_eq(r->reset_err, MH_OK);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(concurrent) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r[50];
  for (int i = 0; i < 50; i++) {
    r[i] = creq_new(&w);
    ck_assert_int_eq(request(&w, r[i], "GET", "/get", 1, NULL), 0);
  }
  ck_assert_uint_eq(mh_conn_active(w.cc), 50);
  run_until(w.base, &w.cdone, 50, 5000);
  for (int i = 0; i < 50; i++) {
    ck_assert_int_eq(r[i]->status, 200);
    ck_assert_int_eq(r[i]->reset_err, MH_OK);
    ck_assert(body_is(r[i]->body, "hello"));
    creq_free(r[i]);
  }
  ck_assert_int_eq(w.nreq, 50);
  world_free(&w);
}
END_TEST

/* The slow reader takes 8 KiB a millisecond. */
static void slow_take(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  creq *r = arg;
  if (!r->s || !r->slow_buf) return;
  size_t n = evbuffer_get_length(r->slow_buf);
  if (n > 8192) n = 8192;
  if (!n) return;
  evbuffer_remove_buffer(r->slow_buf, r->body, n);
  mh_stream_consumed(r->s, n);
}

START_TEST(slow_reader) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  r->slow = 1;
  struct event *t = event_new(w.base, -1, EV_PERSIST, slow_take, r);
  struct timeval ms = {0, 1000};
  event_add(t, &ms);
  ck_assert_int_eq(request(&w, r, "GET", "/big", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 30000);
  event_free(t);
  ck_assert_int_eq(r->status, 200);
  ck_assert_int_eq(r->reset_err, MH_OK);
  ck_assert_uint_eq(evbuffer_get_length(r->body), BIG_BYTES);
  ck_assert_int_eq(r->ended, 1);
  /* Never more than the window plus one frame waited in the stream's buffer. */
  ck_assert_uint_le(r->max_in, w.cl.window_bytes + 16384);
  ck_assert_uint_gt(r->max_in, 0);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(client_cancel) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/hold", 1, NULL), 0);
  run_until(w.base, &w.nreq, 1, 2000);
  mh_stream_reset(r->s, 0);
  run_until(w.base, &w.sdone, 1, 2000);
  ck_assert_int_eq(w.cdone, 0); /* no callback after a reset of our own */
  ck_assert_uint_eq(mh_conn_active(w.cc), 0);
  /* The connection still works. */
  creq *r2 = creq_new(&w);
  ck_assert_int_eq(request(&w, r2, "GET", "/get", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r2->status, 200);
  creq_free(r);
  creq_free(r2);
  world_free(&w);
}
END_TEST

static int last_reset_err;
static void s_on_reset_record(mh_stream *s, int err, void *ud) {
  last_reset_err = err;
  s_on_reset(s, err, ud);
}
static const mh_stream_cbs s_cbs_record = {NULL, s_on_data, s_on_end, s_on_reset_record, NULL};

START_TEST(cancel_is_reset) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/hold", 1, NULL), 0);
  run_until(w.base, &w.nreq, 1, 2000);
  mh_stream_set_cbs(w.held[0]->s, &s_cbs_record, w.held[0]);
  last_reset_err = -1;
  mh_stream_reset(r->s, 0);
  run_until(w.base, &w.sdone, 1, 2000);
  ck_assert_int_eq(last_reset_err, MH_ERR_RESET);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(refused) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/refuse", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->reset_err, MH_ERR_REFUSED);
  ck_assert_int_eq(w.sdone, 0);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(interim) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/early", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->heads, 2); /* 103, then 200 */
  ck_assert_int_eq(r->status, 200);
  ck_assert(body_is(r->body, "late"));
  ck_assert_int_eq(r->reset_err, MH_OK);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(goaway) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r1 = creq_new(&w), *r2 = creq_new(&w), *r3 = creq_new(&w);
  ck_assert_int_eq(request(&w, r1, "GET", "/hold", 1, NULL), 0);
  ck_assert_int_eq(request(&w, r2, "GET", "/hold", 1, NULL), 0);
  run_until(w.base, &w.nreq, 2, 2000);
  mh_conn_shutdown(w.sc);
  ck_assert_int_eq(w.s_closed, 0);
  /* Wait until the client has heard the GOAWAY. */
  int expired = 0;
  struct event *t = evtimer_new(w.base, on_flag, &expired);
  struct timeval tv = {2, 0};
  evtimer_add(t, &tv);
  while (mh_conn_capacity(w.cc) > 0 && !expired) event_base_loop(w.base, EVLOOP_ONCE);
  event_free(t);
  ck_assert(!expired);
  ck_assert_int_eq(request(&w, r3, "GET", "/get", 1, NULL), MESH_ERR_AGAIN);
  /* In-flight streams finish. */
  respond(w.held[0]->s, 200, "one", NULL);
  respond(w.held[1]->s, 200, "two", NULL);
  run_until(w.base, &w.cdone, 2, 2000);
  ck_assert_int_eq(r1->reset_err, MH_OK);
  ck_assert_int_eq(r2->reset_err, MH_OK);
  ck_assert(body_is(r1->body, "one"));
  ck_assert(body_is(r2->body, "two"));
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(w.s_close_err, MH_OK);
  run_until(w.base, &w.c_closed, 1, 2000);
  ck_assert_int_eq(w.c_close_err, MH_OK);
  creq_free(r1);
  creq_free(r2);
  creq_free(r3);
  world_free(&w);
}
END_TEST

/* A request that crosses the server's GOAWAY is refused on both sides. */
START_TEST(goaway_race) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r1 = creq_new(&w), *r2 = creq_new(&w);
  ck_assert_int_eq(request(&w, r1, "GET", "/shut", 1, NULL), 0);
  ck_assert_int_eq(request(&w, r2, "GET", "/get", 1, NULL), 0);
  run_until(w.base, &w.cdone, 2, 2000);
  ck_assert_int_eq(r1->reset_err, MH_OK);
  ck_assert(body_is(r1->body, "last"));
  ck_assert_int_eq(r2->reset_err, MH_ERR_REFUSED);
  ck_assert_int_eq(w.nreq, 1);
  run_until(w.base, &w.s_closed, 1, 2000);
  run_until(w.base, &w.c_closed, 1, 2000);
  ck_assert_int_eq(w.s_close_err, MH_OK);
  ck_assert_int_eq(w.c_close_err, MH_OK);
  creq_free(r1);
  creq_free(r2);
  world_free(&w);
}
END_TEST

START_TEST(close_resets) {
  world w;
  world_make(&w);
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/hold", 1, NULL), 0);
  run_until(w.base, &w.nreq, 1, 2000);
  mh_conn_close(w.cc);
  ck_assert_int_eq(w.cdone, 0); /* deferred */
  run_until(w.base, &w.c_closed, 1, 2000);
  ck_assert_int_eq(r->reset_err, MH_ERR_CLOSED);
  ck_assert_int_eq(w.c_close_err, MH_OK); /* closed on purpose */
  /* The server sees its stream go and the connection end. */
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(w.sdone, 1);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(header_limit) {
  world w;
  world_make(&w);
  w.sl.max_fields = 10;
  world_connect(&w);
  creq *r = creq_new(&w);
  mh_head extra;
  mh_head_init(&extra);
  for (int i = 0; i < 20; i++) {
    char name[16];
    snprintf(name, sizeof name, "x-f%d", i);
    ck_assert_int_eq(mh_head_add(w.ctx, &extra, name, "v"), 0);
  }
  ck_assert_int_eq(request(&w, r, "GET", "/get", 1, &extra), 0);
  mh_head_clear(&extra);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->status, 431);
  ck_assert_str_eq(r->proxy_error, "too many header fields");
  ck_assert(body_is(r->body, "too many header fields\n"));
  ck_assert_int_eq(w.nreq, 0);
  ck_assert_int_eq(r->reset_err, MH_OK);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(response_limit) {
  world w;
  world_make(&w);
  w.cl.max_head_bytes = 100; /* the response head ("x-test", :status) is bigger */
  world_connect(&w);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/get", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->reset_err, MH_ERR_LIMIT);
  ck_assert_int_eq(r->heads, 0);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(garbage) {
  world w;
  world_make(&w);
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02garbage garbage garbage";
  ck_assert_int_eq(write(sv[1], junk, sizeof junk), (ssize_t)sizeof junk);
  ck_assert_int_eq(mh_conn_server(w.ctx, bev_of(&w, sv[0]), MH_H2, &w.sl, &s_conn_cbs, &w, &w.sc), 0);
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(w.s_close_err, MH_ERR_PROTOCOL);
  ck_assert_int_eq(w.nreq, 0);
  world_free(&w);
  close(sv[1]);
}
END_TEST

/* A stream in flight when the peer breaks the protocol: it and the connection end with PROTOCOL. */
START_TEST(protocol_error) {
  world w;
  world_make(&w);
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  /* Preface, SETTINGS, HEADERS on stream 1: GET (82), http (86), :authority "x"
   * and :path "/hold" (literals, indexed names). */
  const char hello[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
                       "\x00\x00\x0c\x01\x04\x00\x00\x00\x01\x82\x86\x01\x01x\x04\x05/hold";
  ck_assert_int_eq(write(sv[1], hello, sizeof hello - 1), (ssize_t)sizeof hello - 1);
  ck_assert_int_eq(mh_conn_server(w.ctx, bev_of(&w, sv[0]), MH_H2, &w.sl, &s_conn_cbs, &w, &w.sc), 0);
  run_until(w.base, &w.nreq, 1, 2000);
  mh_stream_set_cbs(w.held[0]->s, &s_cbs_record, w.held[0]);
  last_reset_err = -1;
  /* DATA on stream 0 is a connection error. */
  const char bad[] = "\x00\x00\x00\x00\x00\x00\x00\x00\x00";
  ck_assert_int_eq(write(sv[1], bad, sizeof bad - 1), (ssize_t)sizeof bad - 1);
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(last_reset_err, MH_ERR_PROTOCOL);
  ck_assert_int_eq(w.s_close_err, MH_ERR_PROTOCOL);
  world_free(&w);
  close(sv[1]);
}
END_TEST

/* The client keeps to the server's MAX_CONCURRENT_STREAMS. */
START_TEST(stream_limit) {
  world w;
  world_make(&w);
  w.sl.max_streams = 2;
  world_connect(&w);
  creq *r0 = creq_new(&w), *r1 = creq_new(&w), *r2 = creq_new(&w), *r3 = creq_new(&w);
  ck_assert_int_eq(request(&w, r0, "GET", "/get", 1, NULL), 0); /* learn the settings */
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_uint_eq(mh_conn_capacity(w.cc), 2);
  ck_assert_int_eq(request(&w, r1, "GET", "/hold", 1, NULL), 0);
  ck_assert_int_eq(request(&w, r2, "GET", "/hold", 1, NULL), 0);
  ck_assert_uint_eq(mh_conn_capacity(w.cc), 0);
  ck_assert_int_eq(request(&w, r3, "GET", "/get", 1, NULL), MESH_ERR_AGAIN);
  run_until(w.base, &w.nreq, 3, 2000);
  respond(w.held[0]->s, 200, "x", NULL);
  run_until(w.base, &w.cdone, 2, 2000);
  ck_assert_uint_eq(mh_conn_capacity(w.cc), 1);
  ck_assert_int_eq(request(&w, r3, "GET", "/get", 1, NULL), 0);
  respond(w.held[1]->s, 200, "y", NULL);
  run_until(w.base, &w.cdone, 4, 2000);
  ck_assert_int_eq(r3->status, 200);
  creq_free(r0);
  creq_free(r1);
  creq_free(r2);
  creq_free(r3);
  world_free(&w);
}
END_TEST

START_TEST(ping_keepalive) {
  world w;
  world_make(&w);
  w.sl.ping_interval_ms = w.cl.ping_interval_ms = 30;
  world_connect(&w);
  run_for(w.base, 400); /* many intervals: each side pings, the other answers */
  ck_assert_int_eq(w.s_closed, 0);
  ck_assert_int_eq(w.c_closed, 0);
  creq *r = creq_new(&w);
  ck_assert_int_eq(request(&w, r, "GET", "/get", 1, NULL), 0);
  run_until(w.base, &w.cdone, 1, 2000);
  ck_assert_int_eq(r->status, 200);
  creq_free(r);
  world_free(&w);
}
END_TEST

START_TEST(ping_timeout) {
  world w;
  world_make(&w);
  w.sl.ping_interval_ms = 30;
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  /* A peer that says the preface and an empty SETTINGS, then nothing. */
  const char hello[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
  ck_assert_int_eq(write(sv[1], hello, sizeof hello - 1), (ssize_t)sizeof hello - 1);
  ck_assert_int_eq(mh_conn_server(w.ctx, bev_of(&w, sv[0]), MH_H2, &w.sl, &s_conn_cbs, &w, &w.sc), 0);
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(w.s_close_err, MH_ERR_TIMEOUT);
  world_free(&w);
  close(sv[1]);
}
END_TEST

START_TEST(idle_timeout) {
  world w;
  world_make(&w);
  w.sl.idle_timeout_ms = 50;
  world_connect(&w);
  run_until(w.base, &w.s_closed, 1, 2000);
  ck_assert_int_eq(w.s_close_err, MH_OK);
  run_until(w.base, &w.c_closed, 1, 2000);
  world_free(&w);
}
END_TEST

/* Free the connection from inside its own callback: no crash, no callback after. */
static void on_request_free(mh_conn *c, mh_stream *s, mh_head *req, int end_stream, void *ud) {
  (void)s;
  (void)req;
  (void)end_stream;
  world *w = ud;
  w->nreq++;
  mh_conn_free(c);
  w->sc = NULL;
}
static const mh_conn_cbs s_conn_cbs_free = {on_request_free, s_on_close, NULL};

START_TEST(free_in_callback) {
  world w;
  world_make(&w);
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  ck_assert_int_eq(mh_conn_server(w.ctx, bev_of(&w, sv[0]), MH_H2, &w.sl, &s_conn_cbs_free, &w, &w.sc), 0);
  ck_assert_int_eq(mh_conn_client(w.ctx, bev_of(&w, sv[1]), MH_H2, &w.cl, &c_conn_cbs, &w, &w.cc), 0);
  creq *r1 = creq_new(&w), *r2 = creq_new(&w);
  ck_assert_int_eq(request(&w, r1, "GET", "/a", 1, NULL), 0);
  ck_assert_int_eq(request(&w, r2, "GET", "/b", 1, NULL), 0);
  run_until(w.base, &w.c_closed, 1, 2000);
  ck_assert_int_eq(w.nreq, 1);
  ck_assert_int_eq(w.s_closed, 0);
  ck_assert_int_eq(r1->reset_err, MH_ERR_CLOSED);
  ck_assert_int_eq(r2->reset_err, MH_ERR_CLOSED);
  creq_free(r1);
  creq_free(r2);
  world_free(&w);
}
END_TEST

/* Allocation failures while making a connection: MESH_ERR_NOMEM and nothing left behind. */
static int make_conns(mesh_ctx *ctx, void *arg) {
  (void)arg;
  struct event_base *base = event_base_new();
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  struct bufferevent *a = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
  struct bufferevent *b = bufferevent_socket_new(base, sv[1], BEV_OPT_CLOSE_ON_FREE);
  mh_limits l;
  mh_limits_default(&l);
  mh_conn *sc = NULL, *cc = NULL;
  int rc = mh_conn_server(ctx, a, MH_H2, &l, &s_conn_cbs, NULL, &sc);
  if (rc == 0) rc = mh_conn_client(ctx, b, MH_H2, &l, &c_conn_cbs, NULL, &cc);
  if (sc) mh_conn_free(sc);
  else bufferevent_free(a);
  if (cc) mh_conn_free(cc);
  else bufferevent_free(b);
  event_base_free(base);
  return rc;
}

START_TEST(alloc_failures) {
  ck_assert_int_gt(test_alloc_failures(make_conns, NULL), 2);
}
END_TEST

/* ---- A real peer: nghttp(1) against a server connection ---------------------------- */

static void accept_cb(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  world *w = arg;
  int cfd = accept(fd, NULL, NULL);
  if (cfd < 0) return;
  ck_assert_int_eq(mh_conn_server(w->ctx, bev_of(w, cfd), MH_H2, &w->sl, &s_conn_cbs, w, &w->sc), 0);
}

static void child_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

START_TEST(nghttp_client) {
  world w;
  world_make(&w);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  ck_assert_int_eq(listen(lfd, 4), 0);
  socklen_t sl = sizeof sa;
  getsockname(lfd, (struct sockaddr *)&sa, &sl);
  struct event *acc = event_new(w.base, lfd, EV_READ | EV_PERSIST, accept_cb, &w);
  event_add(acc, NULL);
  int out[2];
  ck_assert_int_eq(pipe(out), 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%u/trailers", (unsigned)ntohs(sa.sin_port));
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    execlp("nghttp", "nghttp", "-v", "-t", "5", url, (char *)NULL);
    _exit(127);
  }
  close(out[1]);
  struct evbuffer *got = evbuffer_new();
  int done = 0;
  struct event *rd = event_new(w.base, out[0], EV_READ | EV_PERSIST, child_cb, NULL);
  event_add(rd, NULL);
  int expired = 0;
  struct event *t = evtimer_new(w.base, on_flag, &expired);
  struct timeval tv = {10, 0};
  evtimer_add(t, &tv);
  while (!done && !expired) {
    event_base_loop(w.base, EVLOOP_ONCE);
    char buf[4096];
    for (;;) {
      evutil_make_socket_nonblocking(out[0]);
      ssize_t n = read(out[0], buf, sizeof buf);
      if (n > 0) {
        evbuffer_add(got, buf, (size_t)n);
        continue;
      }
      if (n == 0) done = 1;
      break;
    }
  }
  int status = -1;
  waitpid(pid, &status, 0);
  event_free(t);
  event_free(rd);
  event_free(acc);
  close(lfd);
  close(out[0]);
  ck_assert(!expired);
  evbuffer_add(got, "", 1);
  const char *text = (const char *)evbuffer_pullup(got, -1);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nghttp failed:\n%s", text);
  ck_assert_msg(strstr(text, ":status: 200") != NULL, "%s", text);
  ck_assert_msg(strstr(text, "grpc-status: 0") != NULL, "%s", text);
  ck_assert_msg(strstr(text, "abc") != NULL, "%s", text);
  evbuffer_free(got);
  run_until(w.base, &w.s_closed, 1, 2000);
  world_free(&w);
}
END_TEST

static Suite *make_suite(void) {
  Suite *s = suite_create("http2");
  TCase *tc = tcase_create("codec");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, get);
  tcase_add_test(tc, post_body);
  tcase_add_test(tc, trailers);
  tcase_add_test(tc, concurrent);
  tcase_add_test(tc, slow_reader);
  tcase_add_test(tc, client_cancel);
  tcase_add_test(tc, cancel_is_reset);
  tcase_add_test(tc, refused);
  tcase_add_test(tc, interim);
  tcase_add_test(tc, goaway);
  tcase_add_test(tc, goaway_race);
  tcase_add_test(tc, close_resets);
  tcase_add_test(tc, header_limit);
  tcase_add_test(tc, response_limit);
  tcase_add_test(tc, garbage);
  tcase_add_test(tc, protocol_error);
  tcase_add_test(tc, stream_limit);
  tcase_add_test(tc, ping_keepalive);
  tcase_add_test(tc, ping_timeout);
  tcase_add_test(tc, idle_timeout);
  tcase_add_test(tc, free_in_callback);
  tcase_add_test(tc, alloc_failures);
  tcase_add_test(tc, nghttp_client);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  return test_main(make_suite());
}
