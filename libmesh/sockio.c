/* libmesh socket reads past libevent's per-event cap, shared by the TLS layer and the proxy. */
#include <errno.h>
#include <sys/uio.h>

#include <event2/buffer.h>

#include "sockio_internal.h"

int mesh__sock_read_more(evutil_socket_t fd, struct evbuffer *in, size_t room) {
  int ret = 0;
  evbuffer_unfreeze(in, 0); /* a socket bufferevent freezes its input's end */
  while (room > 0) {
    struct evbuffer_iovec v[2];
    struct iovec iov[2];
    int nv = evbuffer_reserve_space(in, (ev_ssize_t)room, v, 2);
    if (nv < 1) break; /* out of memory: libevent's own reads go on */
    size_t want = 0;
    for (int i = 0; i < nv; i++) {
      if (v[i].iov_len > room - want) v[i].iov_len = room - want;
      iov[i].iov_base = v[i].iov_base;
      iov[i].iov_len = v[i].iov_len;
      want += v[i].iov_len;
    }
    ssize_t n = readv(fd, iov, nv);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) ret = 1;
      else if (errno != EAGAIN && errno != EWOULDBLOCK) ret = -1;
      break;
    }
    size_t left = (size_t)n;
    int used = 0;
    for (; used < nv && left > 0; used++) {
      if (v[used].iov_len > left) v[used].iov_len = left;
      left -= v[used].iov_len;
    }
    int e = errno;
    evbuffer_commit_space(in, v, used);
    errno = e;
    room -= (size_t)n;
    if ((size_t)n < want) break; /* a short read: the socket is drained */
  }
  int e = errno;
  evbuffer_freeze(in, 0);
  errno = e;
  return ret;
}
