/* daemons' HTTP listeners: address flags parsed and bound one way for every daemon. */
#include "daemon_http.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/http.h>

#include "daemon_log.h"

bool daemon_split_addr(const char *addr, char *host, size_t hsize, uint16_t *port) {
  const char *colon = strrchr(addr, ':');
  if (!colon || colon == addr) return false;
  const char *h = addr;
  size_t hl = (size_t)(colon - addr);
  if (*h == '[') {
    if (hl < 2 || h[hl - 1] != ']') return false;
    h++;
    hl -= 2;
  }
  char *end;
  errno = 0;
  unsigned long p = strtoul(colon + 1, &end, 10);
  if (!colon[1] || *end || errno || p > 65535 || hl >= hsize) return false;
  memcpy(host, h, hl);
  host[hl] = '\0';
  *port = (uint16_t)p;
  return true;
}

struct evhttp *daemon_http_listen(struct event_base *base, const char *flag, const char *addr,
                                  uint16_t *bound) {
  char host[256];
  uint16_t port;
  if (!daemon_split_addr(addr, host, sizeof host, &port)) {
    daemon_log("ERROR", "%s %s: expected HOST:PORT", flag, addr);
    return NULL;
  }
  struct evhttp *http = evhttp_new(base);
  struct evhttp_bound_socket *s = http ? evhttp_bind_socket_with_handle(http, host, port) : NULL;
  if (!s) {
    daemon_log("ERROR", "%s %s: cannot listen: %s", flag, addr, strerror(errno));
    if (http) evhttp_free(http);
    return NULL;
  }
  evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  *bound = port;
  if (getsockname(evhttp_bound_socket_get_fd(s), (struct sockaddr *)&ss, &sl) == 0)
    *bound = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  return http;
}
