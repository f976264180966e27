/* libmesh proxy internals: address parsing shared by the endpoints file, the options and the engine. */
#ifndef MESH_PROXY_INTERNAL_H
#define MESH_PROXY_INTERNAL_H

#include <sys/socket.h>

#include <mesh/proxy.h>

/* "IP:port" or "[IPv6]:port", numeric only; port 0 allowed when any_port.
 * Fills *ss and *len. 0, or MESH_ERR_PARSE with *why. */
int mesh__proxy_addr_parse(const char *s, int any_port, struct sockaddr_storage *ss,
                           socklen_t *len, const char **why);
/* The canonical text of an address ("1.2.3.4:80", "[::1]:80") into buf (>= 64 bytes). */
void mesh__proxy_addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* The socket address of endpoint i of service svc (parsed once, at load). */
const struct sockaddr *mesh__proxy_endpoints_sockaddr(const mesh_proxy_endpoints *e, size_t svc,
                                                      size_t i, socklen_t *len);

#endif
