/* meshctl's HTTP/1.1 client for admin endpoints and etcd's JSON gateway: one blocking request, bounded in time and size. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "meshctl.h"

#define HEAD_MAX 16384 /* response head bytes */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline; false (errno ETIMEDOUT) when it passes. */
static bool wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) {
      errno = ETIMEDOUT;
      return false;
    }
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, (int)left);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

static int connect_to(const char *addr, int64_t deadline, char *why, size_t size) {
  char host[256];
  const char *colon = strrchr(addr, ':');
  size_t hl = colon ? (size_t)(colon - addr) : 0;
  if (!colon || hl == 0 || hl >= sizeof host || !colon[1]) {
    snprintf(why, size, "%s: expected HOST:PORT", addr);
    return -1;
  }
  memcpy(host, addr, hl);
  host[hl] = '\0';
  if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
    memmove(host, host + 1, hl - 2);
    host[hl - 2] = '\0';
  }
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res = NULL;
  int rc = getaddrinfo(host, colon + 1, &hints, &res);
  if (rc != 0) {
    snprintf(why, size, "%s: %s", addr, gai_strerror(rc));
    return -1;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(why, size, "%s: %s", addr, strerror(errno));
    freeaddrinfo(res);
    return -1;
  }
  rc = connect(fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (rc < 0 && errno == EINPROGRESS) {
    int err = 0;
    socklen_t el = sizeof err;
    if (!wait_fd(fd, POLLOUT, deadline)) err = errno;
    else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
    rc = err ? -1 : 0;
    errno = err;
  }
  if (rc < 0) {
    snprintf(why, size, "cannot connect to %s: %s", addr, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

/* A chunked body decoded in place; false when malformed. */
static bool unchunk(char *b, size_t *len) {
  size_t in = 0, out = 0, n = *len;
  for (;;) {
    char *end;
    if (in >= n) return false;
    unsigned long long c = strtoull(b + in, &end, 16);
    char *crlf = memmem(end, n - (size_t)(end - b), "\r\n", 2);
    if (end == b + in || !crlf) return false;
    in = (size_t)(crlf - b) + 2;
    if (c == 0) break;
    if (c > n - in || n - in - c < 2) return false;
    memmove(b + out, b + in, c);
    out += c;
    in += c + 2;
  }
  b[out] = '\0';
  *len = out;
  return true;
}

int meshctl_http_get(const char *addr, const char *path, int timeout_ms, size_t limit,
                     int *status, char **body, size_t *len, char *why, size_t size) {
  return meshctl_http_request("GET", addr, path, NULL, 0, timeout_ms, limit, status, body, len, why,
                              size);
}

int meshctl_http_request(const char *method, const char *addr, const char *path, const char *rbody,
                         size_t rlen, int timeout_ms, size_t limit, int *status, char **body,
                         size_t *len, char *why, size_t size) {
  int64_t deadline = now_ms() + timeout_ms;
  int fd = connect_to(addr, deadline, why, size);
  if (fd < 0) return -1;
  char req[768];
  char clen_line[64] = "";
  if (rbody) snprintf(clen_line, sizeof clen_line, "Content-Length: %zu\r\n", rlen);
  int rl = snprintf(req, sizeof req,
                    "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: meshctl\r\nAccept: */*\r\n"
                    "%s%sConnection: close\r\n\r\n",
                    method, path, addr, rbody ? "Content-Type: application/json\r\n" : "", clen_line);
  size_t sent = 0, cap = HEAD_MAX + limit, n = 0;
  char *buf = NULL;
  bool chunked = false;
  if (rl < 0 || (size_t)rl >= sizeof req) {
    snprintf(why, size, "%s%s: request too long", addr, path);
    goto fail;
  }
  /* The head, then the body: both go out before the answer is read. */
  for (int part = 0; part < 2; part++) {
    const char *p = part ? rbody : req;
    size_t pl = part ? (rbody ? rlen : 0) : (size_t)rl;
    for (sent = 0; sent < pl;) {
      ssize_t w = send(fd, p + sent, pl - sent, MSG_NOSIGNAL);
      if (w > 0) sent += (size_t)w;
      else if (w < 0 && errno == EAGAIN && wait_fd(fd, POLLOUT, deadline)) continue;
      else if (w < 0 && errno == EINTR) continue;
      else {
        snprintf(why, size, "%s: sending the request: %s", addr, strerror(errno));
        goto fail;
      }
    }
  }
  /* Connection: close, so the answer ends where the stream does (or at Content-Length). */
  if (!(buf = malloc(cap + 1))) {
    snprintf(why, size, "out of memory");
    goto fail;
  }
  char *head_end = NULL;
  long long clen = -1;
  for (;;) {
    if (head_end && clen >= 0 && n >= (size_t)(head_end + 4 - buf) + (size_t)clen) break;
    if (n == cap) {
      snprintf(why, size, "%s%s: answer larger than %zu bytes", addr, path, cap);
      goto fail;
    }
    ssize_t r = recv(fd, buf + n, cap - n, 0);
    if (r > 0) {
      n += (size_t)r;
      buf[n] = '\0';
      if (!head_end && (head_end = strstr(buf, "\r\n\r\n"))) {
        for (char *h = strstr(buf, "\r\n"); h && h < head_end; h = strstr(h + 2, "\r\n"))
          if (!strncasecmp(h + 2, "content-length:", 15)) clen = strtoll(h + 17, NULL, 10);
          else if (!strncasecmp(h + 2, "transfer-encoding:", 18))
            chunked = true; /* Connection: close: read to the end, then decode */
      }
      if (!head_end && n > HEAD_MAX) {
        snprintf(why, size, "%s%s: response head larger than %d bytes", addr, path, HEAD_MAX);
        goto fail;
      }
    } else if (r == 0) {
      break;
    } else if (errno == EINTR || (errno == EAGAIN && wait_fd(fd, POLLIN, deadline))) {
      continue;
    } else {
      snprintf(why, size, "%s%s: %s", addr, path,
               errno == ETIMEDOUT ? "no answer within the timeout" : strerror(errno));
      goto fail;
    }
  }
  close(fd);
  fd = -1;
  int code = 0;
  if (!head_end || sscanf(buf, "HTTP/1.%*1[01] %3d", &code) != 1 || code < 100) {
    snprintf(why, size, "%s%s: not an HTTP/1.1 answer", addr, path);
    goto fail;
  }
  size_t off = (size_t)(head_end + 4 - buf), bl = n - off;
  if (clen >= 0 && (size_t)clen < bl) bl = (size_t)clen;
  memmove(buf, buf + off, bl);
  buf[bl] = '\0';
  if (chunked && !unchunk(buf, &bl)) {
    snprintf(why, size, "%s%s: a malformed chunked answer", addr, path);
    goto fail;
  }
  *status = code;
  *body = buf;
  *len = bl;
  return 0;
fail:
  if (fd >= 0) close(fd);
  free(buf);
  return -1;
}
