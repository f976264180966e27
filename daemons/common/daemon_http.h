/* The daemons' HTTP listeners (admin, mesh-viz's API): one way to read an
 * address flag and bind libevent's evhttp to it. */
#ifndef DAEMON_HTTP_H
#define DAEMON_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evhttp;

/* "host:port" or "[v6]:port" into host (NUL-terminated, at most hsize - 1
 * bytes; may be empty for ":port") and port. */
bool daemon_split_addr(const char *addr, char *host, size_t hsize, uint16_t *port);

/* An evhttp server on base bound to addr, answering GET and HEAD only; the
 * port it got in *bound (addr may say port 0). NULL after logging why,
 * naming flag ("--admin"). */
struct evhttp *daemon_http_listen(struct event_base *base, const char *flag, const char *addr,
                                  uint16_t *bound);

#endif
