/* libmesh proxy internals: address parsing shared by the endpoints file, the options and the engine. */
#ifndef MESH_PROXY_INTERNAL_H
#define MESH_PROXY_INTERNAL_H

#include <sys/socket.h>

#include <mesh/proxy.h>

/* "IP:port" or "[IPv6]:port", numeric only; port 0 allowed when any_port.
 * Fills *ss and *len. 0, or MESH_ERR_PARSE with *why. */
/* The application's address for inbound traffic to port (--inbound-forward-ip). */
socklen_t mesh__proxy_inbound_addr(const mesh_proxy *p, uint16_t port, struct sockaddr_storage *ss);
int mesh__proxy_addr_parse(const char *s, int any_port, struct sockaddr_storage *ss,
                           socklen_t *len, const char **why);
/* The canonical text of an address ("1.2.3.4:80", "[::1]:80") into buf (>= 64 bytes). */
void mesh__proxy_addr_format(const struct sockaddr *sa, char *buf, size_t cap);

/* The socket address of endpoint i of service svc (parsed once, at load). */
const struct sockaddr *mesh__proxy_endpoints_sockaddr(const mesh_proxy_endpoints *e, size_t svc,
                                                      size_t i, socklen_t *len);

/* The transport header: 2 bytes of length (big-endian, 1..MESH_PROXY_HEADER_MAX)
 * then a JSON object {"port": N} or {"port": N, "proto": "h2"} (HTTP/2
 * between the proxies follows instead of opaque bytes; other fields are
 * ignored). write: into buf (cap >= 48), MESH_ERR_INVALID for port 0.
 * parse: 1 when more bytes are needed, 0 with *port, *h2 and *consumed,
 * MESH_ERR_PARSE when invalid (an unknown proto too). */
int mesh__proxy_header_write(uint16_t port, int h2, uint8_t *buf, size_t cap, size_t *len);
/* 1 when port is one of p's own listening ports (inbound, outbound, port maps). */
int mesh__proxy_listens_on(const mesh_proxy *p, uint16_t port);
int mesh__proxy_header_parse(const uint8_t *buf, size_t len, size_t *consumed, uint16_t *port,
                             int *h2);

/* The longest destination a peer's request may name for the server's
 * route metrics: a DNS name (253 bytes), ':' and a port. */
#define PROXY_INBOUND_DST_MAX 259u

/* The logical destination of a peer's request, as the inbound side's
 * profile lookup and route metrics name it, lowercase "host:port" into
 * out: canonical (l5d-dst-canonical, NULL when absent) when it is such a
 * name with its port, else authority (NULL: none) with the scheme's port
 * when it names none. A name is a host of DNS name characters or a
 * bracketed IPv6 address and a port 1..65535, at most
 * PROXY_INBOUND_DST_MAX bytes in all (anything else comes from a peer
 * that does not mean a destination). 0; MESH_ERR_PARSE when neither is
 * such a name or it does not fit cap. */
int mesh__proxy_inbound_dst(const char *canonical, const char *authority, const char *scheme,
                            char *out, size_t cap);

#endif
